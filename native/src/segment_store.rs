//! The compiled twin of `presence.core.segment_panes.SegmentPanes`: for one
//! driver shard, per segment definition, per pane (bucket) and per value, the
//! set of drivers online and the set available. Driven from Python by
//! `presence.core.native_segments.NativeSegmentPanes`, which gives it the
//! packed records of `presence.core.segment_records` (one per ping; a
//! value's *key* bytes identify it) and which `tests/test_native_segments.py`
//! holds to `SegmentPanes`' results, call for call.
//!
//! Layout: drivers are numbered (positions, `u32`) in the order first seen;
//! values are numbered per definition (codes, reused once no pane holds them).
//! Driver ids and value keys of at most 16 bytes are looked up as integers
//! (`KeyMap`). A pane maps codes to an `Entry`: the online `Set` and, only
//! when it differs, the available one (a subset, boxed). A set is one
//! position, up to `FEW` held in the entry (an H3 cell: one or two drivers),
//! a sorted `Vec<u32>`, or a bitset once that is smaller (a city:
//! thousands). A row's changed values are a bitset over codes. Row counts
//! are the sizes of unions over the row's panes. The snapshot is
//! `SegmentPanes.snapshot()`'s plain data; each pane's pickle is kept until
//! the pane changes, and `freeze_closed` keeps a closed pane as that pickle
//! alone (about 4 bytes per driver, bucket and value instead of about 20)
//! until a late ping or a report thaws it.

use std::collections::BTreeMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rustc_hash::{FxHashMap, FxHashSet};

/// `presence.core.segment_records.OTHER_KEY`: `OTHER`'s key in every definition.
const OTHER_KEY: &[u8] = b"\x05\x00other";
/// `presence.core.segment_records.CELL` (else a string dimension).
const CELL: u8 = 1;
/// `segment_panes._PARTIAL_SHIFT` (`online << 40 | available << 8 | overflow`).
const PARTIAL_SHIFT: u32 = 40;
/// `segment_panes._AVAILABLE_SHIFT`.
const AVAILABLE_SHIFT: u32 = 8;
const NO_PANE: i64 = i64::MIN;
/// A sorted set of at least this many positions becomes a bitset when that is smaller.
const DENSE_MIN: usize = 32;
/// `SegmentPanes._compact_index`: renumber drivers only past this many.
const COMPACT_MIN: usize = 1024;
/// `Set::merge` of at most this many positions into a sorted set: in place, no new vector.
const SMALL_ADD: usize = 8;

// --- sets of positions --------------------------------------------------------

// an inline set costs no more than a vector
const _: () = assert!(std::mem::size_of::<Set>() == 32);

/// A set of at most this many positions is held in itself (no vector to reach).
const FEW: usize = 5;

#[derive(Clone)]
enum Set {
    One(u32),
    /// 2 to `FEW` sorted, distinct positions (the count, then the positions)
    Few(u8, [u32; FEW]),
    /// more than `FEW` sorted, distinct (may be empty only while an entry is being filled)
    Sparse(Vec<u32>),
    /// bit words, count of set bits
    Dense(Vec<u64>, u32),
}

impl Set {
    fn empty() -> Set {
        Set::Sparse(Vec::new())
    }

    #[inline]
    fn len(&self) -> usize {
        match self {
            Set::One(_) => 1,
            Set::Few(n, _) => *n as usize,
            Set::Sparse(v) => v.len(),
            Set::Dense(_, n) => *n as usize,
        }
    }

    /// The set of these sorted, distinct positions (at least one), no vector if they are few.
    fn from_slice(v: &[u32]) -> Set {
        match v.len() {
            1 => Set::One(v[0]),
            n @ 2..=FEW => {
                let mut p = [0u32; FEW];
                p[..n].copy_from_slice(v);
                Set::Few(n as u8, p)
            }
            _ => Set::from_sorted(v.to_vec()),
        }
    }

    /// The set of these sorted, distinct positions, in its smaller form.
    fn from_sorted(v: Vec<u32>) -> Set {
        if (1..=FEW).contains(&v.len()) {
            return Set::from_slice(&v);
        }
        if v.len() >= DENSE_MIN {
            let top = *v.last().unwrap() as usize;
            if v.len() * 32 > top {
                let mut words = vec![0u64; (top >> 6) + 1];
                for &p in &v {
                    words[(p >> 6) as usize] |= 1u64 << (p & 63);
                }
                return Set::Dense(words, v.len() as u32);
            }
        }
        Set::Sparse(v)
    }

    /// The positions, ascending.
    fn positions(&self) -> Vec<u32> {
        match self {
            Set::One(p) => vec![*p],
            Set::Few(n, p) => p[..*n as usize].to_vec(),
            Set::Sparse(v) => v.clone(),
            Set::Dense(words, n) => {
                let mut out = Vec::with_capacity(*n as usize);
                for (i, &w) in words.iter().enumerate() {
                    let mut w = w;
                    while w != 0 {
                        out.push(((i as u32) << 6) | w.trailing_zeros());
                        w &= w - 1;
                    }
                }
                out
            }
        }
    }

    /// Add sorted, distinct positions; true if the set grew.
    fn merge(&mut self, add: &[u32]) -> bool {
        if add.is_empty() {
            return false;
        }
        match self {
            Set::Dense(words, count) => {
                let mut grew = false;
                for &p in add {
                    if set_bit(words, p) {
                        *count += 1;
                        grew = true;
                    }
                }
                grew
            }
            Set::One(x) => {
                let x = *x;
                if add.len() == 1 && add[0] == x {
                    return false;
                }
                self.merge_few(&[x], add)
            }
            Set::Few(n, p) => {
                let (n, p) = (*n as usize, *p);
                self.merge_few(&p[..n], add)
            }
            Set::Sparse(v) if v.is_empty() => {
                *self = Set::from_slice(add);
                true
            }
            Set::Sparse(v) => {
                if add.len() <= SMALL_ADD {
                    // the usual case (a driver's pings in its own pane): positions
                    // found by binary search, a missing one inserted in place
                    let missing = add.iter().filter(|p| v.binary_search(p).is_err()).count();
                    if missing == 0 {
                        return false;
                    }
                    v.reserve_exact(missing);
                    for &p in add {
                        if let Err(i) = v.binary_search(&p) {
                            v.insert(i, p);
                        }
                    }
                    if v.len() >= DENSE_MIN {
                        *self = Set::from_sorted(std::mem::take(v));
                    }
                    return true;
                }
                let merged = merge_sorted(v, add);
                if merged.len() == v.len() {
                    return false;
                }
                *self = Set::from_sorted(merged);
                true
            }
        }
    }

    /// `merge` into a set of the `cur` positions (at most `FEW`): no vector
    /// unless the result has more than `FEW`.
    fn merge_few(&mut self, cur: &[u32], add: &[u32]) -> bool {
        if add.len() <= FEW {
            let mut buf = [0u32; 2 * FEW];
            let m = merge_into(cur, add, &mut buf);
            if m == cur.len() {
                return false;
            }
            *self = Set::from_slice(&buf[..m]);
            return true;
        }
        let merged = merge_sorted(cur, add);
        if merged.len() == cur.len() {
            return false;
        }
        *self = Set::from_sorted(merged);
        true
    }

    #[inline]
    fn contains(&self, p: u32) -> bool {
        match self {
            Set::One(x) => *x == p,
            Set::Few(n, v) => v[..*n as usize].contains(&p),
            Set::Sparse(v) => v.binary_search(&p).is_ok(),
            Set::Dense(words, _) => words.get((p >> 6) as usize).is_some_and(|w| w & (1u64 << (p & 63)) != 0),
        }
    }

    fn remap(&self, renumber: &[u32]) -> Set {
        // renumbering keeps the order (kept positions are renumbered ascending)
        Set::from_sorted(self.positions().into_iter().map(|p| renumber[p as usize]).collect())
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Set::One(_) | Set::Few(..) => 0,
            Set::Sparse(v) => v.capacity() * 4,
            Set::Dense(w, _) => w.capacity() * 8,
        }
    }
}

/// `merge_sorted` into `out` (room for both); returns the length.
fn merge_into(a: &[u32], b: &[u32], out: &mut [u32]) -> usize {
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out[k] = x.min(y);
        i += (x <= y) as usize;
        j += (y <= x) as usize;
        k += 1;
    }
    for &x in &a[i..] {
        out[k] = x;
        k += 1;
    }
    for &y in &b[j..] {
        out[k] = y;
        k += 1;
    }
    k
}

fn merge_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        if x < y {
            out.push(x);
            i += 1;
        } else if y < x {
            out.push(y);
            j += 1;
        } else {
            out.push(x);
            i += 1;
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Set bit `p` of a bitset that grows as needed; true if it was not set.
#[inline]
fn set_bit(words: &mut Vec<u64>, p: u32) -> bool {
    let w = (p >> 6) as usize;
    if w >= words.len() {
        words.resize(w + 1, 0);
    }
    let bit = 1u64 << (p & 63);
    let new = words[w] & bit == 0;
    words[w] |= bit;
    new
}

/// How many distinct positions the entries' online sets (`available`: their
/// available sets) hold together.
fn union_len(entries: &[&Entry], available: bool, words: &mut Vec<u64>, list: &mut Vec<u32>) -> u32 {
    let sets = entries.iter().map(|e| if available { e.available() } else { &e.on });
    if entries.len() < 2 {
        return sets.map(|s| s.len() as u32).sum();
    }
    if sets.clone().any(|s| matches!(s, Set::Dense(..))) {
        words.clear();
        for s in sets.clone() {
            if let Set::Dense(w, _) = s {
                if w.len() > words.len() {
                    words.resize(w.len(), 0);
                }
                for (a, b) in words.iter_mut().zip(w.iter()) {
                    *a |= *b;
                }
            }
        }
        for s in sets {
            let mut set = |p: u32| {
                set_bit(words, p);
            };
            match s {
                Set::One(p) => set(*p),
                Set::Few(n, v) => v[..*n as usize].iter().for_each(|&p| set(p)),
                Set::Sparse(v) => v.iter().for_each(|&p| set(p)),
                Set::Dense(..) => {}
            }
        }
        return words.iter().map(|w| w.count_ones()).sum();
    }
    list.clear();
    for s in sets {
        match s {
            Set::One(p) => list.push(*p),
            Set::Few(n, v) => list.extend_from_slice(&v[..*n as usize]),
            Set::Sparse(v) => list.extend_from_slice(v),
            Set::Dense(..) => unreachable!(),
        }
    }
    list.sort_unstable();
    list.dedup();
    list.len() as u32
}

// --- byte-string keys -----------------------------------------------------------

/// Byte-string keys (driver ids, value keys) to numbers. A key of 8 bytes (an
/// H3 cell), of at most 7 (with its length in the top byte) or of 9 to 16 (its
/// first and last 8 bytes, and its length) is held in words: hashed and
/// compared as integers, no heap key, no memcmp. Longer keys are boxed.
#[derive(Default)]
struct KeyMap {
    eight: FxHashMap<u64, u32>,
    short: FxHashMap<u64, u32>,
    two: FxHashMap<(u64, u64, u8), u32>,
    long: FxHashMap<Box<[u8]>, u32>,
}

enum Word<'a> {
    Eight(u64),
    Short(u64),
    Two((u64, u64, u8)),
    Long(&'a [u8]),
}

#[inline]
fn word_of(key: &[u8]) -> Word<'_> {
    let n = key.len();
    let word = |at: usize| u64::from_le_bytes(key[at..at + 8].try_into().unwrap());
    match n {
        8 => Word::Eight(word(0)),
        0..=7 => {
            let mut w = (n as u64) << 56;
            for (i, &b) in key.iter().enumerate() {
                w |= (b as u64) << (8 * i);
            }
            Word::Short(w)
        }
        // the two words overlap below 16 bytes: with the length, they are the key
        9..=16 => Word::Two((word(0), word(n - 8), n as u8)),
        _ => Word::Long(key),
    }
}

impl KeyMap {
    #[inline]
    fn get(&self, key: &[u8]) -> Option<u32> {
        match word_of(key) {
            Word::Eight(w) => self.eight.get(&w).copied(),
            Word::Short(w) => self.short.get(&w).copied(),
            Word::Two(w) => self.two.get(&w).copied(),
            Word::Long(k) => self.long.get(k).copied(),
        }
    }

    fn insert(&mut self, key: &[u8], value: u32) {
        match word_of(key) {
            Word::Eight(w) => self.eight.insert(w, value),
            Word::Short(w) => self.short.insert(w, value),
            Word::Two(w) => self.two.insert(w, value),
            Word::Long(k) => self.long.insert(k.into(), value),
        };
    }

    fn remove(&mut self, key: &[u8]) {
        match word_of(key) {
            Word::Eight(w) => self.eight.remove(&w),
            Word::Short(w) => self.short.remove(&w),
            Word::Two(w) => self.two.remove(&w),
            Word::Long(k) => self.long.remove(k),
        };
    }
}

/// The changed `number << 32 | code` keys of one row: per definition, a
/// bitset over its codes (codes are small and dense), so marking is one bit,
/// no hashing, and the keys come out distinct and sorted with no sorting.
#[derive(Default)]
struct Dirty {
    bits: Vec<Vec<u64>>,
    count: usize,
}

impl Dirty {
    fn extend(&mut self, keys: &[u64]) {
        for &k in keys {
            let (number, code) = ((k >> 32) as usize, k as u32);
            if number >= self.bits.len() {
                self.bits.resize_with(number + 1, Vec::new);
            }
            if set_bit(&mut self.bits[number], code) {
                self.count += 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Append the keys, ascending.
    fn keys_into(&self, out: &mut Vec<u64>) {
        for (number, words) in self.bits.iter().enumerate() {
            for (i, &w) in words.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    out.push(((number as u64) << 32) | ((i as u64) << 6) | w.trailing_zeros() as u64);
                    w &= w - 1;
                }
            }
        }
    }

    fn keys(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.count);
        self.keys_into(&mut out);
        out
    }
}

/// True if every position of `on_add` not in `av_add` (both sorted, `av_add` a subset) is in `on`.
fn off_duty_online(on: &Set, on_add: &[u32], av_add: &[u32]) -> bool {
    let mut j = 0;
    for &p in on_add {
        if j < av_add.len() && av_add[j] == p {
            j += 1;
        } else if !on.contains(p) {
            return false;
        }
    }
    true
}

/// One value in one pane: the drivers online, and those available when not all of them.
#[derive(Clone)]
struct Entry {
    on: Set,
    /// None: every online driver is available (boxed: most entries have none,
    /// and a table slot is then 48 bytes, not 72)
    av: Option<Box<Set>>,
}

impl Entry {
    /// Add online positions `on_add` (sorted, distinct) of which `av_add` were on duty; true if a set grew.
    fn add(&mut self, on_add: &[u32], av_add: &[u32]) -> bool {
        match &mut self.av {
            None => {
                if av_add.len() == on_add.len() || off_duty_online(&self.on, on_add, av_add) {
                    // every off-duty position added is online already (so available):
                    // every online driver stays available
                    return self.on.merge(on_add);
                }
                let mut av = self.on.clone();
                av.merge(av_add);
                let grew = self.on.merge(on_add);
                if av.len() != self.on.len() {
                    self.av = Some(Box::new(av));
                }
                grew
            }
            Some(av) => {
                let grew_av = av.merge(av_add);
                let grew_on = self.on.merge(on_add);
                if av.len() == self.on.len() {
                    self.av = None;
                }
                grew_av || grew_on
            }
        }
    }

    fn available(&self) -> &Set {
        self.av.as_deref().unwrap_or(&self.on)
    }
}

struct Pane {
    table: FxHashMap<u32, Entry>,
    /// the pickle of the settled table (`SegmentPanes`' snapshot form), until the pane changes
    blob: Option<Py<PyBytes>>,
    /// true: `table` is empty and `blob` holds the pane (see `freeze_closed`)
    frozen: bool,
    /// online memberships of a frozen pane (for `sizes`; 0 when restored frozen)
    frozen_members: usize,
}

impl Pane {
    fn new() -> Pane {
        Pane { table: FxHashMap::default(), blob: None, frozen: false, frozen_members: 0 }
    }

    /// The pane's blob, made if the pane changed since the last.
    fn blob<'py>(&mut self, py: Python<'py>) -> PyResult<&Py<PyBytes>> {
        if self.blob.is_none() {
            self.blob = Some(encode_table(py, &self.table)?.unbind());
        }
        Ok(self.blob.as_ref().unwrap())
    }

    /// Its table back from its blob, if it is frozen.
    fn thaw(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.frozen {
            self.table = decode_table(py, self.blob.as_ref().unwrap().bind(py))?;
            self.frozen = false;
        }
        Ok(())
    }
}

/// `pickle.dumps(settled(table), 5)` of `SegmentPanes`: `{code: entry}`.
fn encode_table<'py>(py: Python<'py>, table: &FxHashMap<u32, Entry>) -> PyResult<Bound<'py, PyBytes>> {
    let from_bytes = py.get_type::<pyo3::types::PyInt>().getattr("from_bytes")?;
    let out = PyDict::new(py);
    let mut codes: Vec<&u32> = table.keys().collect();
    codes.sort_unstable();
    for &code in codes {
        let e = &table[&code];
        let on = encode_positions(py, &from_bytes, &e.on.positions())?;
        let entry = match &e.av {
            None => on,
            Some(av) if av.len() == 0 => PyTuple::new(py, [on, py.None().into_bound(py)])?.into_any(),
            Some(av) => {
                let av = encode_positions(py, &from_bytes, &av.positions())?;
                PyTuple::new(py, [on, av])?.into_any()
            }
        };
        out.set_item(code, entry)?;
    }
    py.import("pickle")?.getattr("dumps")?.call1((out, 5))?.cast_into::<PyBytes>().map_err(Into::into)
}

/// `encode_table`'s inverse (any table `SegmentPanes` pickles).
fn decode_table(py: Python<'_>, blob: &Bound<'_, PyBytes>) -> PyResult<FxHashMap<u32, Entry>> {
    let table = py.import("pickle")?.getattr("loads")?.call1((blob,))?.cast_into::<PyDict>()?;
    let mut out = FxHashMap::default();
    for (code, entry) in table.iter() {
        let code: u32 = code.extract()?;
        let e = if let Ok(pair) = entry.cast::<PyTuple>() {
            let on = Set::from_sorted(decode_positions(&pair.get_item(0)?)?);
            let av_obj = pair.get_item(1)?;
            let av = if av_obj.is_none() { Set::empty() } else { Set::from_sorted(decode_positions(&av_obj)?) };
            if av.len() == on.len() {
                Entry { on, av: None }
            } else {
                Entry { on, av: Some(Box::new(av)) }
            }
        } else {
            Entry { on: Set::from_sorted(decode_positions(&entry)?), av: None }
        };
        out.insert(code, e);
    }
    Ok(out)
}

/// One definition's values and panes.
struct Def {
    kinds: Vec<u8>,
    codes: KeyMap,
    /// per code: its key (None: free)
    keys: Vec<Option<Box<[u8]>>>,
    /// per code: the value's Python tuple and `(number, value)`, made when first needed
    tuples: Vec<Option<(Py<PyTuple>, Py<PyTuple>)>>,
    /// per code: the latest pane holding it
    code_last: Vec<i64>,
    free: Vec<u32>,
    panes: FxHashMap<i64, Pane>,
    overflow: FxHashSet<i64>,
    other_pings: u64,
}

impl Def {
    fn new(kinds: Vec<u8>) -> Def {
        Def {
            kinds,
            codes: KeyMap::default(),
            keys: Vec::new(),
            tuples: Vec::new(),
            code_last: Vec::new(),
            free: Vec::new(),
            panes: FxHashMap::default(),
            overflow: FxHashSet::default(),
            other_pings: 0,
        }
    }

    fn allocate(&mut self, key: &[u8]) -> u32 {
        let code = match self.free.pop() {
            Some(code) => {
                self.keys[code as usize] = Some(key.into());
                self.tuples[code as usize] = None;
                self.code_last[code as usize] = NO_PANE;
                code
            }
            None => {
                self.keys.push(Some(key.into()));
                self.tuples.push(None);
                self.code_last.push(NO_PANE);
                (self.keys.len() - 1) as u32
            }
        };
        self.codes.insert(key, code);
        code
    }

    /// The length of the key starting at `data[at..]`, or None if it is cut short.
    fn key_len(&self, data: &[u8], at: usize) -> Option<usize> {
        // records hold OTHER's key only as a real "other" of a one-string definition
        let mut p = at;
        for &kind in &self.kinds {
            if kind == CELL {
                p += 8;
            } else {
                let b = data.get(p..p + 2)?;
                p += 2 + u16::from_le_bytes([b[0], b[1]]) as usize;
            }
            if p > data.len() {
                return None;
            }
        }
        Some(p - at)
    }

    /// The value tuple and `(number, value)` of a code.
    fn tuples_of<'py>(&mut self, py: Python<'py>, number: usize, code: u32) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyTuple>)> {
        let c = code as usize;
        if let Some((v, k)) = &self.tuples[c] {
            return Ok((v.bind(py).clone(), k.bind(py).clone()));
        }
        let key = self.keys[c].as_deref().unwrap_or(OTHER_KEY);
        let value = value_of(py, key, &self.kinds)?;
        let pair = PyTuple::new(py, [number.into_pyobject(py)?.into_any(), value.clone().into_any()])?;
        self.tuples[c] = Some((value.clone().unbind(), pair.clone().unbind()));
        Ok((value, pair))
    }

    /// `SegmentPanes._free_codes`.
    fn free_codes(&mut self, oldest: f64) {
        for code in 0..self.keys.len() {
            if self.keys[code].is_some() && (self.code_last[code] as f64) < oldest {
                let key = self.keys[code].take().unwrap();
                self.codes.remove(&key);
                self.tuples[code] = None;
                self.code_last[code] = NO_PANE;
                self.free.push(code as u32);
            }
        }
        if !self.free.is_empty() && self.free.len() * 2 > self.keys.len() {
            while matches!(self.keys.last(), Some(None)) {
                self.keys.pop();
                self.tuples.pop();
                self.code_last.pop();
            }
            let limit = self.keys.len() as u32;
            self.free.retain(|&c| c < limit);
        }
    }
}

fn text_of<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(PyString::new(py, s)),
        Err(_) => PyBytes::new(py, bytes)
            .call_method1("decode", ("utf-8", "surrogatepass"))?
            .cast_into::<PyString>()
            .map_err(Into::into),
    }
}

/// A driver id or a text dimension as utf-8 (lone surrogates as "surrogatepass").
fn text_bytes<'a>(text: &'a Bound<'_, PyString>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    match text.to_str() {
        Ok(s) => Ok(std::borrow::Cow::Borrowed(s.as_bytes())),
        Err(_) => {
            let b = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(std::borrow::Cow::Owned(b.cast::<PyBytes>()?.as_bytes().to_vec()))
        }
    }
}

fn push_text(buf: &mut Vec<u8>, text: &Bound<'_, PyString>) -> PyResult<()> {
    let b = text_bytes(text)?;
    if b.len() > u16::MAX as usize {
        return Err(PyValueError::new_err("a segment text is longer than 65535 bytes"));
    }
    buf.extend_from_slice(&(b.len() as u16).to_le_bytes());
    buf.extend_from_slice(&b);
    Ok(())
}

/// `segment_records.encode_key`: OTHER's key in every definition, else each dimension's.
fn push_key(buf: &mut Vec<u8>, value: &Bound<'_, PyTuple>, kinds: &[u8]) -> PyResult<()> {
    if value.len() == 1 {
        let only = value.get_borrowed_item(0)?;
        if let Ok(text) = only.cast::<PyString>() {
            if text.to_str().map(|t| t == "other").unwrap_or(false) {
                buf.extend_from_slice(OTHER_KEY);
                return Ok(());
            }
        }
    }
    for (part, &kind) in value.iter().zip(kinds) {
        if kind == CELL {
            buf.extend_from_slice(&part.extract::<u64>()?.to_le_bytes());
        } else {
            push_text(buf, part.cast::<PyString>()?)?;
        }
    }
    Ok(())
}

/// `segment_records.decode_key`.
fn value_of<'py>(py: Python<'py>, key: &[u8], kinds: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    if key == OTHER_KEY {
        return PyTuple::new(py, [PyString::new(py, "other")]);
    }
    let mut parts: Vec<Bound<'py, PyAny>> = Vec::with_capacity(kinds.len());
    let mut p = 0;
    for &kind in kinds {
        if kind == CELL {
            let b: [u8; 8] = key[p..p + 8].try_into().unwrap();
            parts.push(u64::from_le_bytes(b).into_pyobject(py)?.into_any());
            p += 8;
        } else {
            let n = u16::from_le_bytes([key[p], key[p + 1]]) as usize;
            parts.push(text_of(py, &key[p + 2..p + 2 + n])?.into_any());
            p += 2 + n;
        }
    }
    PyTuple::new(py, parts)
}

/// `segment_panes.encode` of sorted positions: a bitmap int or sorted u16 / u32 (+ pad) bytes.
fn encode_positions<'py>(py: Python<'py>, from_bytes: &Bound<'py, PyAny>, pos: &[u32]) -> PyResult<Bound<'py, PyAny>> {
    let count = pos.len() as u64;
    let top = *pos.last().unwrap() as u64;
    if count == 1 {
        if top < 16 {
            return Ok((1u64 << top).into_pyobject(py)?.into_any());
        }
        if top < 65536 {
            return Ok(PyBytes::new(py, &(top as u16).to_le_bytes()).into_any());
        }
    }
    let bitmap = if top < 65536 { top < count << 4 } else { top < count << 5 };
    if bitmap {
        let mut bits = vec![0u8; (top as usize >> 3) + 1];
        for &p in pos {
            bits[(p >> 3) as usize] |= 1 << (p & 7);
        }
        return from_bytes.call1((PyBytes::new(py, &bits), "little"));
    }
    let mut out = Vec::with_capacity(pos.len() * 4 + 1);
    if top < 65536 {
        for &p in pos {
            out.extend_from_slice(&(p as u16).to_le_bytes());
        }
    } else {
        for &p in pos {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.push(0);
    }
    Ok(PyBytes::new(py, &out).into_any())
}

/// `segment_panes.decode`: the positions of a bitmap int or sorted-positions bytes.
fn decode_positions(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        let b = bytes.as_bytes();
        let mut out = Vec::new();
        if b.len() & 1 == 1 {
            for c in b[..b.len() - 1].chunks_exact(4) {
                out.push(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        } else {
            for c in b.chunks_exact(2) {
                out.push(u16::from_le_bytes([c[0], c[1]]) as u32);
            }
        }
        return Ok(out);
    }
    let bits: usize = obj.call_method0("bit_length")?.extract()?;
    let data = obj.call_method1("to_bytes", (bits.div_ceil(8), "little"))?;
    let data = data.cast::<PyBytes>()?.as_bytes();
    let mut out = Vec::new();
    for (i, &byte) in data.iter().enumerate() {
        let mut b = byte;
        while b != 0 {
            out.push(((i as u32) << 3) | b.trailing_zeros());
            b &= b - 1;
        }
    }
    Ok(out)
}

/// (online, available): sizes of the unions of one code's sets over these
/// panes' tables; `found`: a buffer (for the entries holding the code).
fn counts_in<'a>(
    tables: &[&'a FxHashMap<u32, Entry>],
    code: u32,
    found: &mut Vec<&'a Entry>,
    words: &mut Vec<u64>,
    list: &mut Vec<u32>,
) -> (u32, u32) {
    found.clear();
    found.extend(tables.iter().filter_map(|t| t.get(&code)));
    match found.len() {
        0 => (0, 0),
        1 => (found[0].on.len() as u32, found[0].available().len() as u32),
        _ => {
            let online = union_len(found, false, words, list);
            if found.iter().all(|e| e.av.is_none()) {
                return (online, online);
            }
            (online, union_len(found, true, words, list))
        }
    }
}

// --- the store ------------------------------------------------------------------

/// Segment pane state of one driver shard, for every definition (see the module doc).
#[pyclass(module = "presence._native")]
pub struct SegmentStore {
    bucket: i64,
    window: i64,
    max_values: usize,
    defs: Vec<Def>,
    index: KeyMap,
    ids: Vec<Box<[u8]>>,
    /// the Python text of `ids[..id_texts.len()]`, made when first snapshotted
    id_texts: Vec<Py<PyString>>,
    /// per position: the latest pane it is in
    last_pane: Vec<i64>,
    /// `{row: {number << 32 | code}}` whose counts may have changed
    dirty: BTreeMap<i64, Dirty>,
    /// (definition number, pane) changed since the last `freeze_closed`
    touched: FxHashSet<(usize, i64)>,
    /// per definition: `code << 33 | position << 1 | on duty` of one call's pings
    stage: Vec<u64>,
    /// per (ping, definition) of one call: its key's `(start, length)`, or `(NONE, 0)`
    offsets: Vec<(u32, u32)>,
    scratch_words: Vec<u64>,
    scratch_list: Vec<u32>,
    /// `add_parsed`'s buffers, kept between calls
    scratch_valued: Vec<bool>,
    scratch_positions: Vec<u32>,
    scratch_keys: Vec<u64>,
    scratch_on: Vec<u32>,
    scratch_av: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl SegmentStore {
    fn position(&mut self, driver: &[u8], pane: i64) -> u32 {
        if let Some(pos) = self.index.get(driver) {
            let last = &mut self.last_pane[pos as usize];
            if *last < pane {
                *last = pane;
            }
            return pos;
        }
        let pos = self.ids.len() as u32;
        self.ids.push(driver.into());
        self.index.insert(driver, pos);
        self.last_pane.push(pane);
        pos
    }

    /// The value tables of the panes of row `row` that exist, in one definition.
    fn row_tables(&self, number: usize, row: i64) -> Vec<&FxHashMap<u32, Entry>> {
        let def = &self.defs[number];
        let mut out = Vec::new();
        let mut pane = row + self.bucket - self.window;
        while pane < row + self.bucket {
            if let Some(p) = def.panes.get(&pane) {
                out.push(&p.table);
            }
            pane += self.bucket;
        }
        out
    }

    /// Thaw the frozen panes of row `row` in one definition.
    fn thaw_row(&mut self, py: Python<'_>, number: usize, row: i64) -> PyResult<()> {
        let def = &mut self.defs[number];
        let mut pane = row + self.bucket - self.window;
        while pane < row + self.bucket {
            if let Some(p) = def.panes.get_mut(&pane) {
                p.thaw(py)?;
            }
            pane += self.bucket;
        }
        Ok(())
    }

    /// One row's (online, available) of a code in one definition (its panes thawed).
    fn counts(&mut self, number: usize, code: u32, row: i64) -> (u32, u32) {
        let mut words = std::mem::take(&mut self.scratch_words);
        let mut list = std::mem::take(&mut self.scratch_list);
        let out = counts_in(&self.row_tables(number, row), code, &mut Vec::new(), &mut words, &mut list);
        self.scratch_words = words;
        self.scratch_list = list;
        out
    }

    fn row_overflow(&self, number: usize, row: i64) -> bool {
        let overflow = &self.defs[number].overflow;
        if overflow.is_empty() {
            return false;
        }
        let mut pane = row + self.bucket - self.window;
        while pane < row + self.bucket {
            if overflow.contains(&pane) {
                return true;
            }
            pane += self.bucket;
        }
        false
    }

    /// Add one pane's parsed pings: `pings` `(driver start, length, on duty)` in
    /// `blob`, keys at `self.offsets`; true if any set grew.
    fn add_parsed(&mut self, py: Python<'_>, pane: i64, blob: &[u8], pings: &[(u32, u32, bool)]) -> PyResult<bool> {
        let ndef = self.defs.len();
        // the definitions some ping has a value of
        let mut valued = std::mem::take(&mut self.scratch_valued);
        valued.clear();
        valued.resize(ndef, false);
        for (i, &(off, _)) in self.offsets.iter().enumerate() {
            if off != NONE {
                valued[i % ndef] = true;
            }
        }
        for number in 0..ndef {
            if valued[number] {
                if let Some(p) = self.defs[number].panes.get_mut(&pane) {
                    p.thaw(py)?;
                }
            }
        }
        let mut positions = std::mem::take(&mut self.scratch_positions);
        positions.clear();
        for &(start, size, _) in pings {
            let driver = &blob[start as usize..(start + size) as usize];
            positions.push(self.position(driver, pane));
        }
        let mut changed_any = false;
        let max_values = self.max_values;
        let bucket = self.bucket;
        let mut changed_keys = std::mem::take(&mut self.scratch_keys);
        let mut on_add = std::mem::take(&mut self.scratch_on);
        let mut av_add = std::mem::take(&mut self.scratch_av);
        for number in 0..ndef {
            if !valued[number] {
                continue;
            }
            let def = &mut self.defs[number];
            let mut table = def.panes.remove(&pane).unwrap_or_else(Pane::new);
            self.stage.clear();
            // no ping can overflow the pane (each adds at most one value): no check per ping
            let roomy = table.table.len() + pings.len() <= max_values;
            for (i, &(_, _, on)) in pings.iter().enumerate() {
                let (off, n) = self.offsets[i * ndef + number];
                if off == NONE {
                    continue;
                }
                let mut key = &blob[off as usize..(off + n) as usize];
                let mut code = def.codes.get(key);
                if !roomy {
                    let present = code.is_some_and(|c| table.table.contains_key(&c));
                    let fits = present || table.table.len() < max_values;
                    // a new value in a full pane goes to OTHER (unless it is OTHER)
                    if !fits && key != OTHER_KEY {
                        def.overflow.insert(pane);
                        def.other_pings += 1;
                        key = OTHER_KEY;
                        code = def.codes.get(key);
                    }
                    if !present {
                        let c = match code {
                            Some(c) => c,
                            None => def.allocate(key),
                        };
                        code = Some(c);
                        table.table.entry(c).or_insert_with(|| Entry { on: Set::empty(), av: None });
                    }
                }
                let code = match code {
                    Some(c) => c,
                    None => def.allocate(key),
                };
                if roomy {
                    table.table.entry(code).or_insert_with(|| Entry { on: Set::empty(), av: None });
                }
                let last = &mut def.code_last[code as usize];
                if *last < pane {
                    *last = pane;
                }
                self.stage.push(((code as u64) << 33) | ((positions[i] as u64) << 1) | on as u64);
            }
            self.stage.sort_unstable();
            let mut i = 0;
            let stage = &self.stage;
            while i < stage.len() {
                let code = (stage[i] >> 33) as u32;
                on_add.clear();
                av_add.clear();
                while i < stage.len() && (stage[i] >> 33) as u32 == code {
                    let pos = ((stage[i] >> 1) & 0xFFFF_FFFF) as u32;
                    if on_add.last() != Some(&pos) {
                        on_add.push(pos);
                    }
                    if stage[i] & 1 == 1 && av_add.last() != Some(&pos) {
                        av_add.push(pos);
                    }
                    i += 1;
                }
                let entry = table.table.get_mut(&code).expect("entered above");
                if entry.add(&on_add, &av_add) {
                    changed_keys.push(((number as u64) << 32) | code as u64);
                }
            }
            let changed = !changed_keys.is_empty();
            if changed {
                self.touched.insert((number, pane));
                let mut row = pane;
                while row < pane + self.window {
                    self.dirty.entry(row).or_default().extend(&changed_keys);
                    row += bucket;
                }
                changed_keys.clear();
                table.blob = None;
                changed_any = true;
            }
            def.panes.insert(pane, table);
        }
        self.scratch_valued = valued;
        self.scratch_positions = positions;
        self.scratch_keys = changed_keys;
        self.scratch_on = on_add;
        self.scratch_av = av_add;
        Ok(changed_any)
    }


    /// Parse a records blob: per ping `(driver range, on duty)` and per (ping, definition) the key offset (or NONE).
    fn parse(&mut self, data: &[u8]) -> PyResult<Vec<(u32, u32, bool)>> {
        let bad = |at: usize| PyValueError::new_err(format!("segment records are malformed at byte {at}"));
        let ndef = self.defs.len();
        let mut pings = Vec::new();
        self.offsets.clear();
        let mut at = 0;
        while at < data.len() {
            let head = data.get(at..at + 3).ok_or_else(|| bad(at))?;
            let on = head[0] & 1 == 1;
            let size = u16::from_le_bytes([head[1], head[2]]) as usize;
            let start = at + 3;
            at = start + size;
            if at > data.len() {
                return Err(bad(start));
            }
            pings.push((start as u32, size as u32, on));
            for number in 0..ndef {
                match data.get(at) {
                    Some(0) => {
                        self.offsets.push((NONE, 0));
                        at += 1;
                    }
                    Some(1) => {
                        at += 1;
                        let n = self.defs[number].key_len(data, at).ok_or_else(|| bad(at))?;
                        self.offsets.push((at as u32, n as u32));
                        at += n;
                    }
                    _ => return Err(bad(at)),
                }
            }
        }
        Ok(pings)
    }
}

#[pymethods]
impl SegmentStore {
    /// `SegmentStore(bucket_s, window_s, max_values, kinds)`; `kinds`: per
    /// definition, per dimension, `segment_records.STRING` or `CELL`.
    #[new]
    fn new(bucket: i64, window: i64, max_values: usize, kinds: Vec<Vec<u8>>) -> PyResult<Self> {
        if bucket <= 0 || window <= 0 || window % bucket != 0 {
            return Err(PyValueError::new_err("window must be a positive whole multiple of bucket"));
        }
        Ok(SegmentStore {
            bucket,
            window,
            max_values,
            defs: kinds.into_iter().map(Def::new).collect(),
            index: KeyMap::default(),
            ids: Vec::new(),
            id_texts: Vec::new(),
            last_pane: Vec::new(),
            dirty: BTreeMap::new(),
            touched: FxHashSet::default(),
            stage: Vec::new(),
            offsets: Vec::new(),
            scratch_words: Vec::new(),
            scratch_list: Vec::new(),
            scratch_valued: Vec::new(),
            scratch_positions: Vec::new(),
            scratch_keys: Vec::new(),
            scratch_on: Vec::new(),
            scratch_av: Vec::new(),
        })
    }

    /// Add one pane's pings as packed records; true if any set grew.
    /// A malformed blob raises ValueError and changes nothing.
    fn add_records(&mut self, pane: i64, blob: &Bound<'_, PyBytes>) -> PyResult<bool> {
        let pings = self.parse(blob.as_bytes())?;
        self.add_parsed(blob.py(), pane, blob.as_bytes(), &pings)
    }

    /// Add one pane's pings as `(driver, on_duty, values)` tuples (as
    /// `SegmentPanes.add_pings` takes them); true if any set grew. A bad
    /// ping raises (TypeError or ValueError) and changes nothing.
    fn add_pings(&mut self, pane: i64, pings: &Bound<'_, PyAny>) -> PyResult<bool> {
        let ndef = self.defs.len();
        let mut buf: Vec<u8> = Vec::new();
        let mut parsed = Vec::new();
        self.offsets.clear();
        for item in pings.try_iter()? {
            let item = item?;
            let ping = item.cast::<PyTuple>()?;
            if ping.len() != 3 {
                return Err(PyValueError::new_err("a segment ping is (driver, on_duty, values)"));
            }
            let start = buf.len();
            let driver = ping.get_borrowed_item(0)?;
            let driver = driver.cast::<PyString>()?;
            push_text(&mut buf, &driver)?;
            let on = ping.get_borrowed_item(1)?.is_truthy()?;
            // the driver's bytes, after their length
            parsed.push((start as u32 + 2, (buf.len() - start - 2) as u32, on));
            let values = ping.get_borrowed_item(2)?;
            let values = values.cast::<PyTuple>()?;
            if values.len() < ndef {
                return Err(PyValueError::new_err("a segment ping has a value (or None) per definition"));
            }
            for number in 0..ndef {
                let value = values.get_borrowed_item(number)?;
                if value.is_none() {
                    self.offsets.push((NONE, 0));
                    continue;
                }
                let start = buf.len();
                let value = value.cast::<PyTuple>()?;
                push_key(&mut buf, &value, &self.defs[number].kinds)?;
                self.offsets.push((start as u32, (buf.len() - start) as u32));
            }
        }
        self.add_parsed(pings.py(), pane, &buf, &parsed)
    }
    /// `SegmentPanes.take_row_partials`: `{row: {(number, value): packed}}`.
    #[pyo3(signature = (watermark=None))]
    fn take_row_partials<'py>(&mut self, py: Python<'py>, watermark: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let mut current: Option<(i64, Bound<'py, PyDict>)> = None;
        for (row, number, code, packed) in self.closed_partials(py, watermark)? {
            if current.as_ref().map(|(r, _)| *r) != Some(row) {
                let by_key = PyDict::new(py);
                out.set_item(row, &by_key)?;
                current = Some((row, by_key));
            }
            let (_, pair) = self.defs[number].tuples_of(py, number, code)?;
            current.as_ref().expect("set above").1.set_item(pair, packed)?;
        }
        Ok(out)
    }

    /// `take_row_partials` as packed bytes (`presence.core.segment_tally.pack_partials`:
    /// `row:i64 key_len:u16 key packed:u64` per partial, the key a partial key:
    /// `number:u16` and the value's key bytes), no Python object per partial.
    fn take_packed_partials<'py>(&mut self, py: Python<'py>, watermark: Option<f64>) -> PyResult<Bound<'py, PyBytes>> {
        let parts = self.closed_partials(py, watermark)?;
        // row, key length, number, a key (mostly at most 16 bytes), packed
        let mut out: Vec<u8> = Vec::with_capacity(parts.len() * 36);
        for (row, number, code, packed) in parts {
            let key = self.defs[number].keys[code as usize].as_deref().unwrap_or(OTHER_KEY);
            out.extend_from_slice(&row.to_le_bytes());
            out.extend_from_slice(&((key.len() + 2) as u16).to_le_bytes());
            out.extend_from_slice(&(number as u16).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&packed.to_le_bytes());
        }
        Ok(PyBytes::new(py, &out))
    }

    /// (online, available) of a value (by its key) in a row.
    fn row_counts(&mut self, py: Python<'_>, number: usize, key: &[u8], row: i64) -> PyResult<(u32, u32)> {
        match self.defs[number].codes.get(key) {
            None => Ok((0, 0)),
            Some(code) => {
                self.thaw_row(py, number, row)?;
                Ok(self.counts(number, code, row))
            }
        }
    }

    /// `SegmentPanes.freeze_closed`: keep the panes no open row holds (all
    /// their rows ended before `watermark`) and not changed since the last
    /// call as their snapshot pickle only; returns how many. A late ping or a
    /// report of one of their rows thaws them again.
    fn freeze_closed(&mut self, py: Python<'_>, watermark: f64) -> PyResult<usize> {
        let mut frozen = 0;
        for (number, def) in self.defs.iter_mut().enumerate() {
            for (&pane, p) in def.panes.iter_mut() {
                if p.frozen || ((pane + self.window) as f64) > watermark || self.touched.contains(&(number, pane)) {
                    continue;
                }
                p.blob(py)?;
                p.frozen_members = p.table.values().map(|e| e.on.len()).sum();
                p.table = FxHashMap::default();
                p.frozen = true;
                frozen += 1;
            }
        }
        self.touched.clear();
        Ok(frozen)
    }

    fn row_overflow_of(&self, number: usize, row: i64) -> bool {
        self.row_overflow(number, row)
    }

    fn first_dirty_row(&self) -> Option<i64> {
        self.dirty.iter().find(|(_, d)| !d.is_empty()).map(|(r, _)| *r)
    }

    /// `[(number, value, row)]` whose counts may have changed.
    fn dirty_keys<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        let all: Vec<(i64, u64)> = self.dirty.iter().flat_map(|(r, d)| d.keys().into_iter().map(move |k| (*r, k))).collect();
        for (row, k) in all {
            let number = (k >> 32) as usize;
            let (value, _) = self.defs[number].tuples_of(py, number, k as u32)?;
            out.push((number, value, row).into_pyobject(py)?);
        }
        PyList::new(py, out)
    }

    fn other_pings(&self) -> Vec<u64> {
        self.defs.iter().map(|d| d.other_pings).collect()
    }

    /// `SegmentPanes.drop_before`.
    fn drop_before(&mut self, py: Python<'_>, oldest: f64) -> PyResult<usize> {
        let mut dropped = 0;
        for def in &mut self.defs {
            let old: Vec<i64> = def.panes.keys().copied().filter(|&p| (p as f64) < oldest).collect();
            for p in &old {
                def.panes.remove(p);
            }
            def.overflow.retain(|&p| (p as f64) >= oldest);
            dropped += old.len();
            if !old.is_empty() {
                def.free_codes(oldest);
            }
        }
        if dropped > 0 {
            let shift = self.bucket - self.window;
            self.dirty.retain(|&r, _| ((r + shift) as f64) >= oldest);
            self.compact_index(py, oldest)?;
        }
        Ok(dropped)
    }

    /// Bytes held by the sets and tables (an estimate, for the docs and benchmarks).
    fn memory(&self, py: Python<'_>) -> usize {
        let entry = std::mem::size_of::<(u32, Entry)>() + 1;
        let mut total = 0;
        for def in &self.defs {
            for pane in def.panes.values() {
                if pane.frozen {
                    total += pane.blob.as_ref().map_or(0, |b| b.bind(py).as_bytes().len());
                }
                total += pane.table.capacity() * entry;
                for e in pane.table.values() {
                    total += e.on.heap_bytes() + e.av.as_ref().map_or(0, |s| std::mem::size_of::<Set>() + s.heap_bytes());
                }
            }
        }
        total
    }

    /// `(entries, memberships)`: (value, pane) entries and (driver, pane, value) online memberships held.
    fn sizes(&self) -> (usize, usize) {
        let mut entries = 0;
        let mut members = 0;
        for def in &self.defs {
            for pane in def.panes.values() {
                entries += pane.table.len();
                members += pane.table.values().map(|e| e.on.len()).sum::<usize>();
                if pane.frozen {
                    members += pane.frozen_members;
                }
            }
        }
        (entries, members)
    }

    /// The parts of `SegmentPanes.snapshot()`: `(ids, last_pane, values,
    /// code_last, panes, overflow, other_pings, dirty_by_row)`.
    #[allow(clippy::type_complexity)]
    fn snapshot_parts<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        while self.id_texts.len() < self.ids.len() {
            let t = text_of(py, &self.ids[self.id_texts.len()])?;
            self.id_texts.push(t.unbind());
        }
        let ids = PyTuple::new(py, self.id_texts.iter().map(|t| t.bind(py)))?;
        let mut last = Vec::with_capacity(self.last_pane.len() * 8);
        for p in &self.last_pane {
            last.extend_from_slice(&p.to_ne_bytes());
        }
        let last = PyBytes::new(py, &last);
        let values = PyList::empty(py);
        let code_last = PyList::empty(py);
        let panes = PyList::empty(py);
        let overflow = PyList::empty(py);
        let other = PyList::empty(py);
        for number in 0..self.defs.len() {
            let mut vals: Vec<Bound<'py, PyAny>> = Vec::new();
            for code in 0..self.defs[number].keys.len() {
                if self.defs[number].keys[code].is_some() {
                    vals.push(self.defs[number].tuples_of(py, number, code as u32)?.0.into_any());
                } else {
                    vals.push(py.None().into_bound(py));
                }
            }
            values.append(PyTuple::new(py, vals)?)?;
            let def = &mut self.defs[number];
            let cl = PyDict::new(py);
            for (code, key) in def.keys.iter().enumerate() {
                if key.is_some() {
                    cl.set_item(code, def.code_last[code])?;
                }
            }
            code_last.append(cl)?;
            let out = PyDict::new(py);
            for (&pane, p) in def.panes.iter_mut() {
                out.set_item(pane, p.blob(py)?.bind(py))?;
            }
            panes.append(out)?;
            let mut ovf: Vec<i64> = def.overflow.iter().copied().collect();
            ovf.sort_unstable();
            overflow.append(PyTuple::new(py, ovf)?)?;
            other.append(def.other_pings)?;
        }
        let dirty = PyDict::new(py);
        let rows: Vec<(i64, Vec<u64>)> = self.dirty.iter().map(|(r, d)| (*r, d.keys())).collect();
        for (row, ks) in rows {
            let mut keys = Vec::with_capacity(ks.len());
            for k in ks {
                let number = (k >> 32) as usize;
                keys.push(self.defs[number].tuples_of(py, number, k as u32)?.1);
            }
            dirty.set_item(row, PyTuple::new(py, keys)?)?;
        }
        PyTuple::new(
            py,
            [
                ids.into_any(),
                last.into_any(),
                values.into_any(),
                code_last.into_any(),
                panes.into_any(),
                overflow.into_any(),
                other.into_any(),
                dirty.into_any(),
            ],
        )
    }

    /// Load `SegmentPanes.snapshot()`'s parts into this (new) store. `ids`:
    /// driver ids as (utf-8 surrogatepass bytes, str); `values`: per
    /// definition, per code, `(key bytes, value)` or None; `dirty`:
    /// `[(row, number, key bytes, value)]`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn restore_parts<'py>(
        &mut self,
        py: Python<'py>,
        ids: Vec<(Bound<'py, PyBytes>, Bound<'py, PyString>)>,
        last_pane: &[u8],
        values: Vec<Vec<Option<(Bound<'py, PyBytes>, Bound<'py, PyTuple>)>>>,
        code_last: Vec<FxHashMap<u32, i64>>,
        panes: Vec<FxHashMap<i64, Bound<'py, PyBytes>>>,
        overflow: Vec<Vec<i64>>,
        other_pings: Vec<u64>,
        dirty: Vec<(i64, usize, Bound<'py, PyBytes>, Bound<'py, PyTuple>)>,
    ) -> PyResult<()> {
        let ndef = self.defs.len();
        if values.len() != ndef || code_last.len() != ndef || panes.len() != ndef || overflow.len() != ndef || other_pings.len() != ndef {
            return Err(PyValueError::new_err("segment state has another number of definitions"));
        }
        if last_pane.len() != ids.len() * 8 {
            return Err(PyValueError::new_err("segment state: last_pane does not match ids"));
        }
        for (i, (key, text)) in ids.into_iter().enumerate() {
            let key: Box<[u8]> = key.as_bytes().into();
            self.index.insert(&key, i as u32);
            self.ids.push(key);
            self.id_texts.push(text.unbind());
        }
        self.last_pane = last_pane.chunks_exact(8).map(|c| i64::from_ne_bytes(c.try_into().unwrap())).collect();
        for (number, vals) in values.into_iter().enumerate() {
            let def = &mut self.defs[number];
            for (code, v) in vals.into_iter().enumerate() {
                match v {
                    Some((key, value)) => {
                        let pair = PyTuple::new(py, [number.into_pyobject(py)?.into_any(), value.clone().into_any()])?;
                        let key: Box<[u8]> = key.as_bytes().into();
                        def.codes.insert(&key, code as u32);
                        def.keys.push(Some(key));
                        def.tuples.push(Some((value.unbind(), pair.unbind())));
                        def.code_last.push(NO_PANE);
                    }
                    None => {
                        def.keys.push(None);
                        def.tuples.push(None);
                        def.code_last.push(NO_PANE);
                        def.free.push(code as u32);
                    }
                }
            }
            for (&code, &pane) in &code_last[number] {
                if let Some(slot) = def.code_last.get_mut(code as usize) {
                    *slot = pane;
                }
            }
            for (pane, blob) in &panes[number] {
                // frozen: thawed when first needed, as SegmentPanes does
                let p = Pane { table: FxHashMap::default(), blob: Some(blob.clone().unbind()), frozen: true, frozen_members: 0 };
                def.panes.insert(*pane, p);
            }
            def.overflow = overflow[number].iter().copied().collect();
            def.other_pings = other_pings[number];
        }
        for (row, number, key, value) in dirty {
            if number >= ndef {
                return Err(PyValueError::new_err("segment state: dirty key of an unknown definition"));
            }
            let def = &mut self.defs[number];
            let code = match def.codes.get(key.as_bytes()) {
                Some(c) => c,
                None => {
                    // no pane holds it (SegmentPanes reports it as 0, 0): a code that
                    // frees itself once the row's first pane is dropped
                    let c = def.allocate(key.as_bytes());
                    let pair = PyTuple::new(py, [number.into_pyobject(py)?.into_any(), value.clone().into_any()])?;
                    def.tuples[c as usize] = Some((value.unbind(), pair.unbind()));
                    def.code_last[c as usize] = row + self.bucket - self.window;
                    c
                }
            };
            self.dirty.entry(row).or_default().extend(&[((number as u64) << 32) | code as u64]);
        }
        Ok(())
    }
}

impl SegmentStore {
    /// `SegmentPanes._compact_index`: renumber drivers when most positions are in no kept pane.
    fn compact_index(&mut self, py: Python<'_>, oldest: f64) -> PyResult<()> {
        let size = self.ids.len();
        if size < COMPACT_MIN {
            return Ok(());
        }
        let kept: Vec<usize> = (0..size).filter(|&p| (self.last_pane[p] as f64) >= oldest).collect();
        if kept.len() * 2 > size {
            return Ok(());
        }
        for def in &mut self.defs {
            for pane in def.panes.values_mut() {
                pane.thaw(py)?;
            }
        }
        let mut renumber = vec![u32::MAX; size];
        for (new, &old) in kept.iter().enumerate() {
            renumber[old] = new as u32;
        }
        let ids: Vec<Box<[u8]>> = kept.iter().map(|&p| std::mem::take(&mut self.ids[p])).collect();
        let texts: Vec<Py<PyString>> = if self.id_texts.len() == size {
            let mut old: Vec<Option<Py<PyString>>> = std::mem::take(&mut self.id_texts).into_iter().map(Some).collect();
            kept.iter().map(|&p| old[p].take().unwrap()).collect()
        } else {
            Vec::new()
        };
        self.last_pane = kept.iter().map(|&p| self.last_pane[p]).collect();
        self.index = KeyMap::default();
        for (i, d) in ids.iter().enumerate() {
            self.index.insert(d, i as u32);
        }
        self.ids = ids;
        self.id_texts = texts;
        for def in &mut self.defs {
            for pane in def.panes.values_mut() {
                for e in pane.table.values_mut() {
                    e.on = e.on.remap(&renumber);
                    if let Some(av) = &e.av {
                        e.av = Some(Box::new(av.remap(&renumber)));
                    }
                }
                pane.blob = None;
            }
        }
        Ok(())
    }
}

impl SegmentStore {
    /// The partials of the closed dirty rows (all of them if `watermark` is
    /// None), no longer dirty: `(row, definition number, code, packed)` in row order.
    fn closed_partials(&mut self, py: Python<'_>, watermark: Option<f64>) -> PyResult<Vec<(i64, usize, u32, u64)>> {
        let closed: Vec<i64> = match watermark {
            None => self.dirty.keys().copied().collect(),
            Some(w) => {
                let last_row = w - self.bucket as f64;
                self.dirty.keys().copied().take_while(|&r| (r as f64) <= last_row).collect()
            }
        };
        let mut out = Vec::new();
        let mut keys: Vec<u64> = Vec::new();
        let mut words: Vec<u64> = Vec::new();
        let mut list: Vec<u32> = Vec::new();
        for row in closed {
            let dirty = self.dirty.remove(&row).unwrap();
            keys.clear();
            dirty.keys_into(&mut keys);
            let mut at = 0;
            while at < keys.len() {
                let number = (keys[at] >> 32) as usize;
                let end = at + keys[at..].iter().take_while(|&&k| (k >> 32) as usize == number).count();
                let overflow = self.row_overflow(number, row) as u64;
                self.thaw_row(py, number, row)?;
                let tables = self.row_tables(number, row);
                let mut found = Vec::with_capacity(tables.len());
                for &k in &keys[at..end] {
                    let (online, available) = counts_in(&tables, k as u32, &mut found, &mut words, &mut list);
                    let packed = ((online as u64) << PARTIAL_SHIFT) | ((available as u64) << AVAILABLE_SHIFT) | overflow;
                    out.push((row, number, k as u32, packed));
                }
                at = end;
            }
        }
        Ok(out)
    }
}
