//! `segment_summary` documents as BSON, byte for byte what pymongo encodes for
//! `presence.io.mongo.segment_doc` (tests/test_segment_docs.py compares them).
//!
//! The row book takes segment rows as tuples (`presence.core.model.SegmentRows`);
//! an H3 definition makes tens of thousands per bucket, and building a dict
//! per row for pymongo to encode cost more than counting them. This writes
//! the documents straight from the tuples, one after another in one `bytes`
//! (the sink reads them back as `RawBSONDocument`s, which pymongo sends as they
//! are). Anything it does not expect (a key value that is not a `str`, a
//! string that is not UTF-8, a bucket without its text) raises, and the sink
//! then builds the documents in Python as before.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const BOOLEAN: u8 = 0x08;
const DATETIME: u8 = 0x09;
const INT32: u8 = 0x10;
const INT64: u8 = 0x12;

fn name(out: &mut Vec<u8>, kind: u8, field: &str) -> PyResult<()> {
    if field.as_bytes().contains(&0) {
        return Err(PyValueError::new_err("a BSON field name holds a NUL byte"));
    }
    out.push(kind);
    out.extend_from_slice(field.as_bytes());
    out.push(0);
    Ok(())
}

fn string(out: &mut Vec<u8>, field: &str, text: &str) -> PyResult<()> {
    name(out, STRING, field)?;
    out.extend_from_slice(&((text.len() + 1) as i32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Ok(())
}

/// A Python int as pymongo writes it: int32 when it fits, else int64.
fn integer(out: &mut Vec<u8>, field: &str, value: i64) -> PyResult<()> {
    if let Ok(small) = i32::try_from(value) {
        name(out, INT32, field)?;
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        name(out, INT64, field)?;
        out.extend_from_slice(&value.to_le_bytes());
    }
    Ok(())
}

fn datetime(out: &mut Vec<u8>, field: &str, millis: i64) -> PyResult<()> {
    name(out, DATETIME, field)?;
    out.extend_from_slice(&millis.to_le_bytes());
    Ok(())
}

/// Write a document's length over its placeholder at `start` and close it.
fn close(out: &mut Vec<u8>, start: usize) -> PyResult<()> {
    out.push(0);
    let size = i32::try_from(out.len() - start)
        .map_err(|_| PyValueError::new_err("a BSON document over 2 GiB"))?;
    out[start..start + 4].copy_from_slice(&size.to_le_bytes());
    Ok(())
}

/// The `_id` (`presence.core.model.segment_doc_id`): segment, key values and
/// time bucket joined by `|`, a `|` or `\` in a value escaped with `\`.
fn doc_id(id: &mut String, segment: &str, values: &[&str], time_bucket: &str) {
    id.clear();
    id.push_str(segment);
    for value in values {
        id.push('|');
        for c in value.chars() {
            if c == '|' || c == '\\' {
                id.push('\\');
            }
            id.push(c);
        }
    }
    id.push('|');
    id.push_str(time_bucket);
}

/// `encode_segment_docs(taken, names, bucket_texts, bucket_s, window_s, updated_ms)`:
/// the `segment_summary` documents of `taken` (`SegmentRows.taken`: tuples
/// `(bucket, number, key, online, available, revision, overflow)`), concatenated.
/// `names`: definition names by number; `bucket_texts`: `{bucket: timeBucket}`
/// for every bucket of `taken`; `updated_ms`: `updatedAt` in epoch milliseconds.
#[pyfunction]
pub fn encode_segment_docs<'py>(
    py: Python<'py>,
    taken: &Bound<'py, PyList>,
    names: Vec<String>,
    bucket_texts: &Bound<'py, PyDict>,
    bucket_s: i64,
    window_s: i64,
    updated_ms: i64,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out: Vec<u8> = Vec::with_capacity(taken.len() * 160);
    let mut id = String::new();
    let mut fields: Vec<Bound<'py, PyString>> = Vec::new();
    let mut texts: Vec<Bound<'py, PyString>> = Vec::new();
    let mut last: Option<(i64, Bound<'py, PyString>)> = None;
    for item in taken.iter() {
        let item = item.cast_into::<PyTuple>()?;
        if item.len() != 7 {
            return Err(PyValueError::new_err("a taken segment row is a 7-tuple"));
        }
        let bucket: i64 = item.get_borrowed_item(0)?.extract()?;
        let number: usize = item.get_borrowed_item(1)?.extract()?;
        let key = item.get_borrowed_item(2)?;
        let key = key.cast::<PyDict>()?;
        let online: i64 = item.get_borrowed_item(3)?.extract()?;
        let available: i64 = item.get_borrowed_item(4)?.extract()?;
        let revision: i64 = item.get_borrowed_item(5)?.extract()?;
        let overflow = item.get_borrowed_item(6)?.is_truthy()?;
        let segment = names
            .get(number)
            .ok_or_else(|| PyValueError::new_err("a segment row of an unknown definition"))?;
        let text = match &last {
            Some((b, text)) if *b == bucket => text.clone(),
            _ => {
                let text = bucket_texts
                    .get_item(bucket)?
                    .ok_or_else(|| PyValueError::new_err("a segment row bucket without its text"))?
                    .cast_into::<PyString>()?;
                last = Some((bucket, text.clone()));
                text
            }
        };
        let time_bucket = text.to_str()?;
        fields.clear();
        texts.clear();
        for (field, value) in key.iter() {
            fields.push(field.cast_into::<PyString>()?);
            texts.push(value.cast_into::<PyString>()?);
        }
        let values: Vec<&str> = texts.iter().map(|t| t.to_str()).collect::<PyResult<_>>()?;
        doc_id(&mut id, segment, &values, time_bucket);
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        string(&mut out, "_id", &id)?;
        string(&mut out, "segment", segment)?;
        name(&mut out, DOCUMENT, "key")?;
        let inner = out.len();
        out.extend_from_slice(&[0; 4]);
        for (field, value) in fields.iter().zip(&values) {
            string(&mut out, field.to_str()?, value)?;
        }
        close(&mut out, inner)?;
        string(&mut out, "timeBucket", time_bucket)?;
        let out_of_range = || PyValueError::new_err("a segment row bucket out of range");
        let end = bucket.checked_add(bucket_s).and_then(|e| e.checked_mul(1000)).ok_or_else(out_of_range)?;
        let start_ms = window_s.checked_mul(1000).and_then(|w| end.checked_sub(w)).ok_or_else(out_of_range)?;
        datetime(&mut out, "windowStart", start_ms)?;
        datetime(&mut out, "windowEnd", end)?;
        integer(&mut out, "driversOnlineCount", online)?;
        integer(&mut out, "driversAvailableCount", available)?;
        integer(&mut out, "revision", revision)?;
        datetime(&mut out, "updatedAt", updated_ms)?;
        if overflow {
            name(&mut out, BOOLEAN, "overflow")?;
            out.push(1);
        }
        close(&mut out, start)?;
    }
    Ok(PyBytes::new(py, &out))
}
