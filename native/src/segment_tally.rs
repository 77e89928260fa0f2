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

/// A row's part of a snapshot: (parts by slot, written, pending keys), each None when empty.
type RowSnapshot = (Option<Py<PyDict>>, Option<Py<PyDict>>, Option<Py<PyTuple>>);

#[derive(Default)]
struct RowTally {
    keys: FxHashMap<Box<[u8]>, KeyTally>,
    pending: Vec<Box<[u8]>>,
    /// the row's part of the last snapshot, until the row changes: a snapshot
    /// every epoch rebuilds only the rows that changed (the latest few, and
    /// those a late ping corrected), not the whole correction horizon's
    snap: Option<RowSnapshot>,
}

impl RowTally {
    #[inline]
    fn add(&mut self, slot: u32, key: &[u8], packed: u64) {
        self.snap = None;
        let entry = match self.keys.get_mut(key) {
            Some(entry) => entry,
            None => self.keys.entry(key.into()).or_default(),
        };
        match entry.parts.iter_mut().find(|(s, _)| *s == slot) {
            Some(part) => part.1 = packed,
            None => entry.parts.push((slot, packed)),
        }
        if !entry.pending {
            entry.pending = true;
            self.pending.push(key.into());
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

/// One row's part of a snapshot (shared by later snapshots until the row
/// changes: nothing mutates these dicts once made).
fn row_snapshot(py: Python<'_>, tally: &RowTally) -> PyResult<RowSnapshot> {
    let mut by_slot: FxHashMap<u32, Bound<'_, PyDict>> = FxHashMap::default();
    let row_written = PyDict::new(py);
    for (key, entry) in &tally.keys {
        let key_py = PyBytes::new(py, key);
        for &(slot, packed) in &entry.parts {
            let d = by_slot.entry(slot).or_insert_with(|| PyDict::new(py));
            d.set_item(&key_py, packed)?;
        }
        if entry.written.2 != 0 {
            row_written.set_item(&key_py, entry.written)?;
        }
    }
    let parts = if by_slot.is_empty() {
        None
    } else {
        let slots = PyDict::new(py);
        for (slot, d) in by_slot {
            slots.set_item(slot, d)?;
        }
        Some(slots.unbind())
    };
    let written = if row_written.is_empty() { None } else { Some(row_written.unbind()) };
    let pending = if tally.pending.is_empty() {
        None
    } else {
        let keys: Vec<Bound<'_, PyBytes>> = tally.pending.iter().map(|k| PyBytes::new(py, k)).collect();
        Some(PyTuple::new(py, keys)?.unbind())
    };
    Ok((parts, written, pending))
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
                let (number, doc) = key_document(py, &self.fields, &key)?;
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
    fn snapshot<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let parts = PyDict::new(py);
        let written = PyDict::new(py);
        let pending = PyDict::new(py);
        for (&row, tally) in self.rows.iter_mut() {
            if tally.snap.is_none() {
                tally.snap = Some(row_snapshot(py, tally)?);
            }
            let (row_parts, row_written, row_pending) = tally.snap.as_ref().expect("just made");
            if let Some(d) = row_parts {
                parts.set_item(row, d.bind(py))?;
            }
            if let Some(d) = row_written {
                written.set_item(row, d.bind(py))?;
            }
            if let Some(t) = row_pending {
                pending.set_item(row, t.bind(py))?;
            }
        }
        PyTuple::new(py, [parts.into_any(), written.into_any(), pending.into_any()])
    }

    /// The tally of a :meth:`snapshot`'s three dicts.
    #[staticmethod]
    fn restore(
        py: Python<'_>,
        fields: Vec<Vec<(String, u8)>>,
        parts: &Bound<'_, PyDict>,
        written: &Bound<'_, PyDict>,
        pending: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let mut tally = SegmentTally::new(py, fields);
        for (row, slots) in parts.iter() {
            let row: i64 = row.extract()?;
            let entry = tally.rows.entry(row).or_default();
            for (slot, by_key) in slots.cast::<PyDict>()?.iter() {
                let slot: u32 = slot.extract()?;
                for (key, packed) in by_key.cast::<PyDict>()?.iter() {
                    let key: Box<[u8]> = key.cast::<PyBytes>()?.as_bytes().into();
                    let packed: u64 = packed.extract()?;
                    entry.keys.entry(key).or_default().parts.push((slot, packed));
                }
            }
        }
        for (row, by_key) in written.iter() {
            let row: i64 = row.extract()?;
            let entry = tally.rows.entry(row).or_default();
            for (key, counts) in by_key.cast::<PyDict>()?.iter() {
                let key: Box<[u8]> = key.cast::<PyBytes>()?.as_bytes().into();
                entry.keys.entry(key).or_default().written = counts.extract()?;
            }
        }
        for (row, keys) in pending.iter() {
            let row: i64 = row.extract()?;
            let entry = tally.rows.entry(row).or_default();
            for key in keys.try_iter()? {
                let key = key?;
                let key = key.cast::<PyBytes>()?.as_bytes();
                let k = entry.keys.entry(key.into()).or_default();
                if !k.pending {
                    k.pending = true;
                    entry.pending.push(key.into());
                }
            }
        }
        Ok(tally)
    }
}
