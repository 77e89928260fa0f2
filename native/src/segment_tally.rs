//! The row book's segment accounting in compiled code (`presence.core.segment_tally`
//! holds the pure-Python twin and says what each method means).
//!
//! Per row and per *partial key* (`u16 definition number` + the value's key bytes
//! of `presence/core/segment_records.py`): each shard's latest packed partial
//! (`online << 40 | available << 8 | overflow`, so partials add up field by
//! field), what was written (online, available, revision), and whether it is
//! pending (changed since it was last taken). Shards' reports come as packed
//! bytes (`row:i64 key_len:u16 key packed:u64`, little-endian, one per partial)
//! or as a dict `{row: {key: packed}}`; nothing Python is made per partial.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rustc_hash::FxHashMap;

const ONLINE_SHIFT: u32 = 40;
const AVAILABLE_SHIFT: u32 = 8;
const COUNT_MASK: u64 = 0xffff_ffff;
const OVERFLOW_MASK: u64 = 0xff;

#[derive(Default)]
struct KeyTally {
    /// (shard slot, packed partial), one per shard that reported the key
    parts: Vec<(u32, u64)>,
    /// (online, available, revision) last written; revision 0: never written
    written: (u64, u64, u64),
    pending: bool,
}

/// A partial key. Most are short (an H3 cell's is 10 bytes, a city's a few
/// more): up to 15 bytes it is one integer, its bytes big-endian from the top
/// and its length in the low byte, so it hashes and compares as a word (no
/// heap key, no `memcmp`), and two short keys compare as their bytes do (a
/// shorter key is a zero-padded prefix, then smaller by its length byte).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Short(u128),
    Long(Box<[u8]>),
}

/// A key's bytes: on the stack for a short one.
enum KeyBytes<'a> {
    Short([u8; 16]),
    Long(&'a [u8]),
}

impl KeyBytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBytes::Short(word) => &word[..word[15] as usize],
            KeyBytes::Long(bytes) => bytes,
        }
    }
}

impl Key {
    #[inline]
    fn of(bytes: &[u8]) -> Key {
        if bytes.len() <= 15 {
            let mut word = [0u8; 16];
            word[..bytes.len()].copy_from_slice(bytes);
            word[15] = bytes.len() as u8;
            Key::Short(u128::from_be_bytes(word))
        } else {
            Key::Long(bytes.into())
        }
    }

    fn bytes(&self) -> KeyBytes<'_> {
        match self {
            Key::Short(word) => KeyBytes::Short(word.to_be_bytes()),
            Key::Long(bytes) => KeyBytes::Long(bytes),
        }
    }
}

/// Byte order (the Python tally's `sorted` of bytes).
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Key::Short(a), Key::Short(b)) => a.cmp(b),
            _ => self.bytes().as_slice().cmp(other.bytes().as_slice()),
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct RowTally {
    keys: FxHashMap<Key, KeyTally>,
    pending: Vec<Key>,
    /// the row's part of the last snapshot, until the row changes: a snapshot
    /// every epoch rebuilds only the rows that changed (the latest few, and
    /// those a late ping corrected), not the whole correction horizon's
    snap: Option<Py<PyBytes>>,
}

impl RowTally {
    #[inline]
    fn add(&mut self, slot: u32, key: &[u8], packed: u64) {
        self.snap = None;
        let key = Key::of(key);
        let entry = match self.keys.get_mut(&key) {
            Some(entry) => entry,
            None => self.keys.entry(key.clone()).or_default(),
        };
        match entry.parts.iter_mut().find(|(s, _)| *s == slot) {
            Some(part) => part.1 = packed,
            None => entry.parts.push((slot, packed)),
        }
        if !entry.pending {
            entry.pending = true;
            self.pending.push(key);
        }
    }
}

#[pyclass(module = "presence._native")]
pub struct SegmentTally {
    rows: FxHashMap<i64, RowTally>,
    /// per definition: its key fields `(name, kind)`, kind 0 a string, 1 an H3 cell
    fields: Vec<Vec<(Py<PyString>, u8)>>,
}

const OTHER: &str = "other";
const OTHER_KEY: &[u8] = b"\x05\x00other";

/// The `key` document of a partial key (`SegmentDefinition.key` of its value):
/// `(definition number, {field: text})`.
fn key_document<'py>(
    py: Python<'py>,
    fields: &[Vec<(Py<PyString>, u8)>],
    key: &[u8],
) -> PyResult<(usize, Bound<'py, PyDict>)> {
    let bad = || PyValueError::new_err("malformed segment partial key");
    let number = read_u16(key, 0)? as usize;
    let dims = fields.get(number).ok_or_else(bad)?;
    let doc = PyDict::new(py);
    let value = &key[2..];
    if value == OTHER_KEY {
        for (name, _) in dims {
            doc.set_item(name.bind(py), OTHER)?;
        }
        return Ok((number, doc));
    }
    let mut at = 0;
    for (name, kind) in dims {
        if *kind == 1 {
            let cell = read_u64(value, at)?;
            doc.set_item(name.bind(py), format!("{cell:x}"))?;
            at += 8;
        } else {
            let size = read_u16(value, at)? as usize;
            let text = value.get(at + 2..at + 2 + size).ok_or_else(bad)?;
            match std::str::from_utf8(text) {
                Ok(text) => doc.set_item(name.bind(py), text)?,
                // lone surrogates (JSON escapes), encoded as Python's "surrogatepass"
                Err(_) => doc.set_item(
                    name.bind(py),
                    PyBytes::new(py, text).call_method1("decode", ("utf-8", "surrogatepass"))?,
                )?,
            }
            at += 2 + size;
        }
    }
    if at != value.len() {
        return Err(bad());
    }
    Ok((number, doc))
}

fn truncated() -> PyErr {
    PyValueError::new_err("truncated segment partials")
}

fn read_u16(blob: &[u8], at: usize) -> PyResult<u16> {
    blob.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or_else(truncated)
}

fn read_u64(blob: &[u8], at: usize) -> PyResult<u64> {
    blob.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
        .ok_or_else(truncated)
}

/// One row as snapshot bytes (`presence.core.segment_tally.encode_row`'s layout,
/// little-endian, per key: `key_len:u16 key online:u32 available:u32
/// revision:u32 pending:u8 parts:u16` then per part `slot:u32 packed:u64`;
/// revision 0: never written), keys in byte order.
fn row_snapshot<'py>(py: Python<'py>, tally: &RowTally) -> Bound<'py, PyBytes> {
    let mut keys: Vec<&Key> = tally.keys.keys().collect();
    keys.sort_unstable();
    let mut out: Vec<u8> = Vec::new();
    for key in keys {
        let entry = &tally.keys[key];
        let bytes = key.bytes();
        let bytes = bytes.as_slice();
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&(entry.written.0 as u32).to_le_bytes());
        out.extend_from_slice(&(entry.written.1 as u32).to_le_bytes());
        out.extend_from_slice(&(entry.written.2 as u32).to_le_bytes());
        out.push(entry.pending as u8);
        let mut parts = entry.parts.clone();
        parts.sort_unstable();
        out.extend_from_slice(&(parts.len() as u16).to_le_bytes());
        for (slot, packed) in parts {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&packed.to_le_bytes());
        }
    }
    PyBytes::new(py, &out)
}

fn read_u32(blob: &[u8], at: usize) -> PyResult<u32> {
    blob.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
        .ok_or_else(truncated)
}

#[pymethods]
impl SegmentTally {
    /// `fields`: per definition, its key fields `(name, kind)` (kind 0 a
    /// string, 1 an H3 cell), as `presence.core.segment_tally.key_fields` gives them.
    #[new]
    fn new(py: Python<'_>, fields: Vec<Vec<(String, u8)>>) -> Self {
        let fields = fields
            .into_iter()
            .map(|dims| dims.into_iter().map(|(n, k)| (PyString::new(py, &n).unbind(), k)).collect())
            .collect();
        SegmentTally { rows: FxHashMap::default(), fields }
    }

    /// A shard's partials as packed bytes (`row:i64 key_len:u16 key packed:u64`).
    fn add_packed(&mut self, slot: u32, blob: &[u8]) -> PyResult<()> {
        let mut at = 0;
        while at < blob.len() {
            let row = read_u64(blob, at)? as i64;
            let size = read_u16(blob, at + 8)? as usize;
            let key = blob.get(at + 10..at + 10 + size).ok_or_else(truncated)?;
            let packed = read_u64(blob, at + 10 + size)?;
            at += 18 + size;
            self.rows.entry(row).or_default().add(slot, key, packed);
        }
        Ok(())
    }

    /// A shard's partials as `{row: {key bytes: packed}}`.
    fn add_dict(&mut self, slot: u32, partials: &Bound<'_, PyDict>) -> PyResult<()> {
        for (row, by_key) in partials.iter() {
            let row: i64 = row.extract()?;
            let by_key = by_key.cast::<PyDict>()?;
            let tally = self.rows.entry(row).or_default();
            for (key, packed) in by_key.iter() {
                let key = key.cast::<PyBytes>()?;
                tally.add(slot, key.as_bytes(), packed.extract()?);
            }
        }
        Ok(())
    }

    /// Rows with a pending key, in no order.
    fn pending_rows(&self) -> Vec<i64> {
        self.rows.iter().filter(|(_, t)| !t.pending.is_empty()).map(|(&r, _)| r).collect()
    }

    fn has_pending(&self) -> bool {
        self.rows.values().any(|t| !t.pending.is_empty())
    }

    /// Take the pending keys of `rows` (in that order; keys in byte order):
    /// `[(row, definition number, key document, online, available, revision,
    /// overflow)]` of each whose sum is not zero online and differs from what
    /// was written (then recorded as written with the next revision).
    fn take<'py>(&mut self, py: Python<'py>, rows: Vec<i64>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for row in rows {
            let Some(tally) = self.rows.get_mut(&row) else { continue };
            if tally.pending.is_empty() {
                continue;
            }
            tally.snap = None;
            let mut pending = std::mem::take(&mut tally.pending);
            pending.sort_unstable();
            for key in pending {
                let Some(entry) = tally.keys.get_mut(&key) else { continue };
                entry.pending = false;
                let total: u64 = entry.parts.iter().map(|&(_, p)| p).sum();
                let online = total >> ONLINE_SHIFT;
                let available = (total >> AVAILABLE_SHIFT) & COUNT_MASK;
                let overflow = total & OVERFLOW_MASK != 0;
                if online == 0 {
                    continue;
                }
                let (w_online, w_available, w_revision) = entry.written;
                if w_revision != 0 && w_online == online && w_available == available {
                    continue;
                }
                let revision = w_revision + 1;
                entry.written = (online, available, revision);
                let (number, doc) = key_document(py, &self.fields, key.bytes().as_slice())?;
                let item = PyTuple::new(
                    py,
                    [
                        row.into_pyobject(py)?.into_any(),
                        number.into_pyobject(py)?.into_any(),
                        doc.into_any(),
                        online.into_pyobject(py)?.into_any(),
                        available.into_pyobject(py)?.into_any(),
                        revision.into_pyobject(py)?.into_any(),
                        pyo3::types::PyBool::new(py, overflow).to_owned().into_any(),
                    ],
                )?;
                out.append(item)?;
            }
        }
        Ok(out)
    }

    /// Forget rows before `cutoff` that have nothing pending; how many.
    fn forget_before(&mut self, cutoff: i64) -> usize {
        let before = self.rows.len();
        self.rows.retain(|&row, t| row >= cutoff || !t.pending.is_empty());
        before - self.rows.len()
    }

    fn __len__(&self) -> usize {
        self.rows.len()
    }

    /// `(parts, written, pending)` as the Python tally keeps them:
    /// `{row: {slot: {key: packed}}}`, `{row: {key: (online, available, revision)}}`,
    /// `{row: tuple of keys}`.
    fn snapshot<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (&row, tally) in self.rows.iter_mut() {
            if tally.keys.is_empty() {
                continue;
            }
            let blob = match &tally.snap {
                Some(blob) => blob.bind(py).clone(),
                None => {
                    let blob = row_snapshot(py, tally);
                    tally.snap = Some(blob.clone().unbind());
                    blob
                }
            };
            out.set_item(row, blob)?;
        }
        Ok(out)
    }

    /// The tally of a :meth:`snapshot` (`{row: bytes}`).
    #[staticmethod]
    fn restore(py: Python<'_>, fields: Vec<Vec<(String, u8)>>, rows: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut tally = SegmentTally::new(py, fields);
        for (row, blob) in rows.iter() {
            let row: i64 = row.extract()?;
            let blob = blob.cast::<PyBytes>()?.as_bytes();
            let entry = tally.rows.entry(row).or_default();
            let mut at = 0;
            while at < blob.len() {
                let size = read_u16(blob, at)? as usize;
                let key = Key::of(blob.get(at + 2..at + 2 + size).ok_or_else(truncated)?);
                at += 2 + size;
                let written = (
                    read_u32(blob, at)? as u64,
                    read_u32(blob, at + 4)? as u64,
                    read_u32(blob, at + 8)? as u64,
                );
                let pending = *blob.get(at + 12).ok_or_else(truncated)? != 0;
                let count = read_u16(blob, at + 13)? as usize;
                at += 15;
                let mut parts = Vec::with_capacity(count);
                for _ in 0..count {
                    parts.push((read_u32(blob, at)?, read_u64(blob, at + 4)?));
                    at += 12;
                }
                if pending {
                    entry.pending.push(key.clone());
                }
                entry.keys.insert(key, KeyTally { parts, written, pending });
            }
        }
        Ok(tally)
    }
}
