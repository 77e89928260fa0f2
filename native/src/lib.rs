//! presence's optional compiled partition reader: the hot loop of
//! `presence.core.partition.PartitionReader.read`, for a batch of messages.
//!
//! It reads a value only when it is sure of it (the strict fast path of
//! `parse_fast`): a JSON object of at most 64 KiB with the keys
//! `driver_id`, `timestamp` and `on_duty`, each once, no escapes, numbers
//! read to the double msgspec and Python give (Clinger's exact case, else
//! Rust's correctly rounded parser), raw UTF-8 only in other keys' string
//! values (checked), and a timestamp within
//! `[MIN_EVENT_TIME, latest_allowed]`; other keys (the SPEC's optional
//! `city`, `vehicle_type`, `lat`, `lng`, or any other) are skipped when their
//! value is a plain scalar (`skip_scalar`), which the Python reader ignores
//! too (without segments). Every other value is handed back to
//! Python (the `slow` callback, by index, in offset order), which judges it
//! exactly as the pure-Python reader does. Too-late pings are handed back too
//! (the `too_late` callback) for their dead letter. So the outcome is the
//! pure-Python reader's, proven by `tests/test_native_reader.py`.

mod segment_tally;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyDict, PyList, PySet, PyString};
use std::ffi::c_int;
use rustc_hash::FxHashMap;

mod segment_store;
mod segment_docs;

const EPOCH_MS_THRESHOLD: f64 = 1e11;
const MIN_EVENT_TIME: f64 = 946_684_800.0;
const MAX_DRIVER_ID_CHARS: usize = 128;
/// `presence.core.pings.MAX_VALUE_BYTES`: a larger value is `too_large`.
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The longest number token `skip_scalar` skips (lat/lng need about 20).
const MAX_SKIPPED_NUMBER: usize = 40;
/// 2**53: integers below it are exact as doubles.
const EXACT: u64 = 1 << 53;
const EXACT_F64: f64 = 9_007_199_254_740_992.0;

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

#[inline]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\n' || b == b'\r'
}

/// True if the byte at `at` (if any) cannot continue a number or literal token:
/// what may follow one is whitespace, ',' or '}' (checked by the caller).
#[inline]
fn token_ends(v: &[u8], at: usize) -> bool {
    match v.get(at) {
        Some(&b) => !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+'),
        None => true,
    }
}

/// The value of at most 18 ASCII digits (so no overflow), as Python's `int`; else None.
#[inline]
fn small_int(digits: &[u8]) -> Option<i64> {
    if digits.len() > 18 {
        return None;
    }
    let mut i: i64 = 0;
    for &d in digits {
        i = i * 10 + (d - b'0') as i64;
    }
    Some(i)
}

/// JSON's literals.
#[derive(Clone, Copy, PartialEq)]
enum Literal {
    True,
    False,
    Null,
}

struct Cursor<'a> {
    v: &'a [u8],
    p: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.p < self.v.len() && is_ws(self.v[self.p]) {
            self.p += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.v.get(self.p).copied()
    }

    #[inline]
    fn eat(&mut self, b: u8) -> Option<()> {
        if self.peek() == Some(b) {
            self.p += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string's content (after the opening quote): printable ASCII, no escapes.
    #[inline]
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.string(false)
    }

    /// A string's content (after the opening quote) with no escapes and no
    /// control characters: printable ASCII or any UTF-8 (a city such as
    /// `São Paulo` or `北京`, as every JSON encoder writes it); bytes that are
    /// not UTF-8: None (the Python reader rejects them).
    #[inline]
    fn text_string(&mut self) -> Option<&'a [u8]> {
        self.string(true)
    }

    /// `plain_string` (`utf8` false: ASCII only) or `text_string`.
    #[inline]
    fn string(&mut self, utf8: bool) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.p;
        let mut ascii = true;
        loop {
            let b = *self.v.get(self.p)?;
            if b == b'"' {
                let s = &self.v[start..self.p];
                if !ascii {
                    std::str::from_utf8(s).ok()?;
                }
                self.p += 1;
                return Some(s);
            }
            if b == b'\\' || b < 0x20 || (b >= 0x80 && !utf8) {
                return None;
            }
            ascii &= b < 0x80;
            self.p += 1;
        }
    }

    /// A JSON number token, strictly of the grammar, non-negative.
    #[inline]
    fn number(&mut self) -> Option<Number<'a>> {
        let v = self.v;
        let start = self.p;
        let mut p = self.p;
        // integer part: 0 | [1-9][0-9]*
        match v.get(p) {
            Some(b'0') => p += 1,
            Some(b'1'..=b'9') => {
                while matches!(v.get(p), Some(b'0'..=b'9')) {
                    p += 1;
                }
            }
            _ => return None,
        }
        let int_end = p;
        let mut frac = &v[0..0];
        if v.get(p) == Some(&b'.') {
            p += 1;
            let fs = p;
            while matches!(v.get(p), Some(b'0'..=b'9')) {
                p += 1;
            }
            if p == fs {
                return None;
            }
            frac = &v[fs..p];
        }
        let mut exp: i64 = 0;
        let mut has_exp = false;
        if matches!(v.get(p), Some(b'e') | Some(b'E')) {
            has_exp = true;
            p += 1;
            let mut negative = false;
            match v.get(p) {
                Some(b'+') => p += 1,
                Some(b'-') => {
                    negative = true;
                    p += 1
                }
                _ => {}
            }
            let es = p;
            while let Some(&d @ b'0'..=b'9') = v.get(p) {
                if exp < 100_000 {
                    exp = exp * 10 + (d - b'0') as i64;
                }
                p += 1;
            }
            if p == es {
                return None;
            }
            if negative {
                exp = -exp;
            }
        }
        if !token_ends(v, p) {
            return None;
        }
        self.p = p;
        Some(Number {
            int: &v[start..int_end],
            frac,
            exp,
            is_int: frac.is_empty() && !has_exp,
            text: &v[start..p],
        })
    }

    /// `true`, `false` or `null`, whole (not the start of a longer token).
    #[inline]
    fn literal(&mut self) -> Option<Literal> {
        let rest = &self.v[self.p..];
        let (literal, used) = if rest.starts_with(b"true") {
            (Literal::True, 4)
        } else if rest.starts_with(b"false") {
            (Literal::False, 5)
        } else if rest.starts_with(b"null") {
            (Literal::Null, 4)
        } else {
            return None;
        };
        if !token_ends(rest, used) {
            return None;
        }
        self.p += used;
        Some(literal)
    }

    /// Skips the value of a key the reader ignores, when it is a scalar that
    /// every Python parser reads (so the Python reader ignores it and judges
    /// the ping on its three fields alone): a string without escapes or
    /// control characters (printable ASCII or checked UTF-8), `true`, `false`,
    /// `null`, or a number of JSON's grammar of at most `MAX_SKIPPED_NUMBER`
    /// bytes whose exponent stays within a double's range. None (give the
    /// value to Python) for anything else: arrays, objects, escapes, bytes
    /// that are not UTF-8, odd numbers.
    #[inline]
    fn skip_scalar(&mut self) -> Option<()> {
        let v = self.v;
        match *v.get(self.p)? {
            b'"' => self.text_string().map(|_| ()),
            b't' | b'f' | b'n' => self.literal().map(|_| ()),
            b'-' | b'0'..=b'9' => {
                let start = self.p;
                if v[start] == b'-' {
                    self.p += 1;
                }
                let n = match self.number() {
                    Some(n) => n,
                    None => {
                        self.p = start;
                        return None;
                    }
                };
                if self.p - start > MAX_SKIPPED_NUMBER || !(-300..=300).contains(&n.exp) {
                    return None;
                }
                Some(())
            }
            _ => None,
        }
    }
}

/// An optional segment field's value as read on the fast path (with segments),
/// the Python value msgspec's `_SegmentShape` (typed `Any`) decodes.
#[derive(Clone, Copy)]
enum Field<'a> {
    Absent,
    Null,
    /// true or false: neither a string nor a coordinate
    Bool,
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
}

/// The optional fields (SPEC "Input"), in `ValueExtractor.values`' order.
const OPTIONAL: [&[u8]; 4] = [b"city", b"vehicle_type", b"lat", b"lng"];

impl<'a> Cursor<'a> {
    /// An optional field's value when it is sure of its Python value: a plain
    /// string, `true`, `false`, `null`, an integer of at most 18 digits, or a
    /// finite number (`Number::to_f64`); else None.
    fn field(&mut self) -> Option<Field<'a>> {
        let v = self.v;
        match *v.get(self.p)? {
            b'"' => self.text_string().map(Field::Str),
            b't' | b'f' | b'n' => Some(match self.literal()? {
                Literal::True | Literal::False => Field::Bool,
                Literal::Null => Field::Null,
            }),
            b'-' | b'0'..=b'9' => {
                let negative = v[self.p] == b'-';
                if negative {
                    self.p += 1;
                }
                let n = self.number()?;
                if n.is_int {
                    let i = small_int(n.int)?;
                    Some(Field::Int(if negative { -i } else { i }))
                } else {
                    let f = n.to_f64()?;
                    Some(Field::Float(if negative { -f } else { f }))
                }
            }
            _ => None,
        }
    }
}

struct Number<'a> {
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
    is_int: bool,
    /// the whole token
    text: &'a [u8],
}

impl Number<'_> {
    /// The double a correct parser gives, when it is sure of it (Clinger's
    /// exact case: mantissa below 2**53, |power of ten| <= 22); else None.
    fn exact_f64(&self) -> Option<f64> {
        let mut m: u64 = 0;
        for &d in self.int.iter().chain(self.frac.iter()) {
            m = m.checked_mul(10)?.checked_add((d - b'0') as u64)?;
            if m > EXACT {
                return None;
            }
        }
        let e = self.exp - self.frac.len() as i64;
        if m == 0 {
            return Some(0.0);
        }
        if (0..=22).contains(&e) {
            Some(m as f64 * POW10[e as usize])
        } else if (-22..0).contains(&e) {
            Some(m as f64 / POW10[(-e) as usize])
        } else {
            None
        }
    }

    /// The double Python's parsers give (msgspec's, orjson's and `float()`
    /// all round correctly, so they agree on every decimal): Clinger's exact
    /// case, else Rust's own correctly rounded parse of the token (a GPS
    /// coordinate or a timestamp printed with all 17 digits, as most
    /// serializers print a double); None if it is not finite.
    fn to_f64(&self) -> Option<f64> {
        if let Some(f) = self.exact_f64() {
            return Some(f);
        }
        let f: f64 = std::str::from_utf8(self.text).ok()?.parse().ok()?;
        f.is_finite().then_some(f)
    }
}

#[inline]
fn digit(b: u8) -> Option<u32> {
    if b.is_ascii_digit() {
        Some((b - b'0') as u32)
    } else {
        None
    }
}

#[inline]
fn two(s: &[u8], at: usize) -> Option<u32> {
    Some(digit(s[at])? * 10 + digit(s[at + 1])?)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// `presence.core.timestamps.usual_iso_instant`: the usual layout only, the
/// same double (whole microseconds / 10**6, correctly rounded); None otherwise.
pub fn usual_iso_instant(s: &[u8]) -> Option<f64> {
    if s.len() < 19 {
        return None;
    }
    // YYYY-MM-DDTHH:MM:SS
    if s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let year = two(s, 0)? * 100 + two(s, 2)?;
    let month = two(s, 5)?;
    let day = two(s, 8)?;
    let hour = two(s, 11)?;
    let minute = two(s, 14)?;
    let second = two(s, 17)?;
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year as i64, month, day) * 86_400
        + (hour * 3_600 + minute * 60 + second) as i64;
    // (?:\.([0-9]{1,6}))?(?:(Z)|([+-])HH:MM)?
    let mut t = &s[19..];
    let mut micros: i64 = 0;
    if t.first() == Some(&b'.') {
        let n = t[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 6 {
            return None;
        }
        let mut f: i64 = 0;
        for &d in &t[1..=n] {
            f = f * 10 + (d - b'0') as i64;
        }
        micros = f * 10_i64.pow(6 - n as u32);
        t = &t[1 + n..];
    }
    match t.first() {
        None => {}
        Some(b'Z') if t.len() == 1 => {}
        Some(&sign @ (b'+' | b'-')) if t.len() == 6 && t[3] == b':' => {
            let oh = two(t, 1)?;
            let om = two(t, 4)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 3_600 + om * 60) as i64 * 1_000_000;
            micros = if sign == b'+' { micros - offset } else { micros + offset };
        }
        _ => return None,
    }
    let total = seconds * 1_000_000 + micros;
    if total.unsigned_abs() >= EXACT {
        return None; // not sure of one rounding: Python's exact division decides
    }
    Some(total as f64 / 1_000_000.0)
}

/// The strict fast path: `(driver id text, event time, on duty)` of a value
/// it is sure of, exactly as the Python reader would have it; else None.
pub fn parse_fast(v: &[u8], latest_allowed: f64) -> Option<(&[u8], f64, bool)> {
    parse_fields(v, latest_allowed, None)
}

/// `parse_fast`, and with `fields` (segments configured) the optional fields'
/// values too (each at most once; any it is not sure of: None).
fn parse_fields<'a>(
    v: &'a [u8],
    latest_allowed: f64,
    mut fields: Option<&mut [Field<'a>; 4]>,
) -> Option<(&'a [u8], f64, bool)> {
    if v.len() > MAX_VALUE_BYTES {
        return None; // too_large, however well formed
    }
    let mut c = Cursor { v, p: 0 };
    c.ws();
    c.eat(b'{')?;
    let mut driver: Option<&[u8]> = None;
    let mut time: Option<f64> = None;
    let mut duty: Option<bool> = None;
    loop {
        c.ws();
        let key = c.plain_string()?;
        c.ws();
        c.eat(b':')?;
        c.ws();
        match key {
            b"driver_id" => {
                if driver.is_some() {
                    return None;
                }
                if c.peek()? == b'"' {
                    let s = c.plain_string()?;
                    if s.is_empty() || s.len() > MAX_DRIVER_ID_CHARS {
                        return None;
                    }
                    driver = Some(s);
                } else {
                    let n = c.number()?;
                    if !n.is_int || n.int.len() > 18 {
                        return None;
                    }
                    driver = Some(n.int);
                }
            }
            b"timestamp" => {
                if time.is_some() {
                    return None;
                }
                let t = if c.peek()? == b'"' {
                    usual_iso_instant(c.plain_string()?)?
                } else {
                    let n = c.number()?;
                    let stamp = if n.is_int {
                        // a Python int: exact below 2**53, else rounded as float(int)
                        small_int(n.int)? as f64
                    } else {
                        n.to_f64()?
                    };
                    if stamp >= EPOCH_MS_THRESHOLD {
                        stamp / 1000.0
                    } else {
                        stamp
                    }
                };
                if !(MIN_EVENT_TIME <= t && t <= latest_allowed) {
                    return None;
                }
                time = Some(t + 0.0);
            }
            b"on_duty" => {
                if duty.is_some() {
                    return None;
                }
                duty = Some(match c.peek()? {
                    digit @ (b'0' | b'1') if token_ends(v, c.p + 1) => {
                        c.p += 1;
                        digit == b'1'
                    }
                    b't' | b'f' => c.literal()? == Literal::True,
                    _ => return None,
                });
            }
            // a key Python ignores (without segments): skipped if its value is a plain scalar
            other => match (fields.as_deref_mut(), OPTIONAL.iter().position(|&o| o == other)) {
                (Some(f), Some(k)) => {
                    if !matches!(f[k], Field::Absent) {
                        return None;
                    }
                    f[k] = c.field()?;
                }
                _ => c.skip_scalar()?,
            },
        }
        c.ws();
        match c.peek()? {
            b',' => c.p += 1,
            b'}' => {
                c.p += 1;
                break;
            }
            _ => return None,
        }
    }
    c.ws();
    if c.p != v.len() {
        return None;
    }
    Some((driver?, time?, duty?))
}

/// `time // bucket` as Python computes it, for `0 <= time < 2**53` and a whole
/// `bucket >= 1` (what `read_batch` is given): there CPython's float floor
/// division (`_float_div_mod`: an exact `fmod`, then `(vx - mod) / wx`, both
/// exact since `vx - mod` is a whole multiple of `wx` below 2**53) is the exact
/// floor of the quotient, found here without `fmod`: a correctly rounded
/// division is off by at most one, and `q * bucket` is exact.
#[inline]
fn floor_div(time: f64, bucket: f64) -> f64 {
    let mut q = (time / bucket).floor();
    if q * bucket > time {
        q -= 1.0;
    } else if (q + 1.0) * bucket <= time {
        q += 1.0;
    }
    q
}

/// The driver ids one partition's reader has seen: each one's Python text and
/// CRC-32, kept across batches so a driver's text is made once (the Python
/// reader's shard cache, `PartitionReader._shard_cache`, likewise). Python
/// empties it between batches past a bound.
#[pyclass(module = "presence._native")]
struct Drivers {
    index: FxHashMap<Box<[u8]>, u32>,
    entries: Vec<(Py<PyString>, u32)>,
}

#[pymethods]
impl Drivers {
    #[new]
    fn new() -> Self {
        Drivers { index: FxHashMap::default(), entries: Vec::new() }
    }

    fn __len__(&self) -> usize {
        self.entries.len()
    }

    fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
    }
}

impl Drivers {
    /// The number of `key`'s entry; `text` makes its Python text when it is new.
    #[inline]
    fn who<'py>(&mut self, key: &[u8], text: impl FnOnce() -> Bound<'py, PyString>) -> u32 {
        if let Some(&who) = self.index.get(key) {
            return who;
        }
        let who = self.entries.len() as u32;
        self.entries.push((text().unbind(), crc32fast::hash(key)));
        self.index.insert(key.into(), who);
        who
    }
}

#[derive(Default)]
struct Group {
    start: i64,
    /// driver index -> on duty at least once in this bucket
    members: FxHashMap<u32, bool>,
    pings: u64,
    /// with segments: the packed records of each counted ping, in order
    records: Vec<u8>,
}

/// One dimension of a segment definition, as `read_batch`'s `record_kinds` gives it:
/// 0 city, 1 vehicle_type, `H3_KIND + R` an H3 cell at resolution R.
const CITY_KIND: u8 = 0;
const VEHICLE_TYPE_KIND: u8 = 1;
const H3_KIND: u8 = 16;
const UNKNOWN: &[u8] = b"unknown";

/// A string dimension's value as `ValueExtractor.values` makes it: the text if
/// it is a non-empty string of at most `most` characters (code points, as
/// Python's `len`; the text is UTF-8, `Cursor::text_string`), else `unknown`.
#[inline]
fn valid_text<'a>(field: Field<'a>, most: usize) -> &'a [u8] {
    match field {
        Field::Str(s) if !s.is_empty() && (s.len() <= most || characters(s) <= most) => s,
        _ => UNKNOWN,
    }
}

/// The code points of UTF-8 text: its bytes that do not continue a character.
#[inline]
fn characters(text: &[u8]) -> usize {
    text.iter().filter(|&&b| (b as i8) >= -0x40).count()
}

/// A coordinate as `valid_location` takes it: an int or float (not a bool).
#[inline]
fn coordinate(field: Field) -> Option<f64> {
    match field {
        Field::Int(i) => Some(i as f64),
        Field::Float(f) => Some(f),
        _ => None,
    }
}

/// h3's own `latlng_to_cell`, as `read_batch`'s `cell_of` gives it: the C
/// function of h3-py's Cython module (`h3._cy.latlng.__pyx_capi__`, the very
/// code `ValueExtractor` runs, without a Python call), or a Python callable.
enum CellOf<'a, 'py> {
    /// `H3Index latlng_to_cell(double, double, int, int skip_dispatch) except 1`
    C(unsafe extern "C" fn(f64, f64, c_int, c_int) -> u64),
    Py(&'a Bound<'py, PyAny>),
}

/// The capsule name Cython gives `latlng_to_cell` in `__pyx_capi__`.
const CELL_CAPSULE: &std::ffi::CStr = c"H3Index (double, double, int, int __pyx_skip_dispatch)";

impl<'a, 'py> CellOf<'a, 'py> {
    fn of(cell_of: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(capsule) = cell_of.cast::<PyCapsule>() {
            // SAFETY: the name is checked by PyCapsule_GetPointer; the pointer is
            // the Cython function of that signature, alive while h3 is imported
            // (the capsule holds its module).
            let pointer = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), CELL_CAPSULE.as_ptr()) };
            if pointer.is_null() {
                return Err(PyErr::take(cell_of.py())
                    .unwrap_or_else(|| PyValueError::new_err("not h3's latlng_to_cell capsule")));
            }
            // SAFETY: as above.
            return Ok(CellOf::C(unsafe { std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn(f64, f64, c_int, c_int) -> u64>(pointer) }));
        }
        Ok(CellOf::Py(cell_of))
    }

    /// The H3 cell of a valid location at `resolution`, or None where h3
    /// raises (as `ValueExtractor` takes it).
    #[inline]
    fn cell(&self, py: Python<'_>, lat: f64, lng: f64, resolution: u8) -> Option<u64> {
        match self {
            CellOf::C(f) => {
                // SAFETY: the GIL is held; `except 1` sets an exception with 1.
                let cell = unsafe { f(lat, lng, resolution as c_int, 1) };
                if cell == 1 && PyErr::take(py).is_some() {
                    return None;
                }
                Some(cell)
            }
            CellOf::Py(f) => match f.call1((lat, lng, resolution)) {
                Ok(cell) => cell.extract::<u64>().ok(),
                Err(_) => None,
            },
        }
    }
}

/// The segment values of a fast-path ping as packed record bytes (see
/// `presence/core/segment_records.py`), appended to `out`; true if unlocated
/// (a definition needs a location the ping does not have).
fn push_values(
    out: &mut Vec<u8>,
    fields: &[Field; 4],
    kinds: &[Vec<u8>],
    located: bool,
    cell_of: &CellOf,
    py: Python<'_>,
) -> bool {
    let city = valid_text(fields[0], 64);
    let vehicle_type = valid_text(fields[1], 32);
    let location = match (coordinate(fields[2]), coordinate(fields[3])) {
        (Some(lat), Some(lng)) if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng) => {
            Some((lat, lng))
        }
        _ => None,
    };
    let mut unlocated = false;
    for dims in kinds {
        // the cell first: a definition with a location it cannot have has no value
        let mut cell: Option<u64> = None;
        if let Some(&kind) = dims.iter().find(|&&k| k >= H3_KIND) {
            cell = location.and_then(|(lat, lng)| cell_of.cell(py, lat, lng, kind - H3_KIND));
            if cell.is_none() {
                out.push(0);
                unlocated = true;
                continue;
            }
        }
        out.push(1);
        for &kind in dims {
            let text = match kind {
                CITY_KIND => city,
                VEHICLE_TYPE_KIND => vehicle_type,
                _ => {
                    out.extend_from_slice(&cell.unwrap_or(0).to_le_bytes());
                    continue;
                }
            };
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text);
        }
    }
    located && unlocated
}

/// The hot loop of `PartitionReader.read`.
///
/// `messages`: a list of objects with `value()`. `slow(i)`: the Python
/// judgement of message `i` (a `(driver, time, on_duty)` tuple, or None for
/// a rejection it has already recorded). `too_late(i, time, max_event)`:
/// records the dead letter of a too-late ping. `drivers`: the partition's
/// `Drivers` (borrowed for the call). Returns
/// `(grouped, max_event, too_late, late)`, `grouped` as the Python loop
/// builds it: per shard `{bucket start: [online set, online - on duty, pings]}`.
///
/// With segments (`record_kinds`: per definition its dimensions, see
/// `CITY_KIND`), the fast path also reads the optional fields (`Field`) and
/// values them itself (`push_values`, H3 through `cell_of`); `slow(i)` gives
/// them as a fourth item (the 4-tuple `ValueExtractor.values` takes), valued
/// by `record_values`. Each counted ping's packed record (see
/// `presence/core/segment_records.py`) goes into `segments` (per shard
/// `{bucket start: bytes}`); `unlocated` counts those without a location a
/// definition needs. Returns `(grouped, max_event, too_late, late, segments
/// or None, unlocated)`.
#[pyfunction]
#[pyo3(signature = (messages, latest_allowed, max_event, lateness, horizon, shards, bucket, slow, too_late, drivers, located=false, record_kinds=None, record_values=None, cell_of=None))]
#[allow(clippy::too_many_arguments)]
fn read_batch<'py>(
    py: Python<'py>,
    messages: &Bound<'py, PyList>,
    latest_allowed: f64,
    mut max_event: f64,
    lateness: f64,
    horizon: f64,
    shards: u32,
    bucket: i64,
    slow: &Bound<'py, PyAny>,
    too_late: &Bound<'py, PyAny>,
    drivers: &Bound<'py, Drivers>,
    located: bool,
    record_kinds: Option<Vec<Vec<u8>>>,
    record_values: Option<&Bound<'py, PyAny>>,
    cell_of: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyList>, f64, u64, u64, Option<Bound<'py, PyList>>, u64)> {
    if shards == 0 || bucket <= 0 {
        return Err(PyValueError::new_err("shards and bucket must be positive"));
    }
    let bucket_f = bucket as f64;
    let mut late_before = max_event - lateness;
    let mut too_late_before = late_before - horizon;
    let mut n_too_late: u64 = 0;
    let mut n_late: u64 = 0;
    let n = messages.len();
    let mut cache = drivers.try_borrow_mut()?;
    let mut slots: Vec<FxHashMap<i64, usize>> = (0..shards).map(|_| FxHashMap::default()).collect();
    let mut groups: Vec<Vec<Group>> = (0..shards).map(|_| Vec::new()).collect();
    let value_name = intern!(py, "value");
    let segmented = record_kinds.is_some();
    if segmented && (record_values.is_none() || cell_of.is_none()) {
        return Err(PyValueError::new_err("record_kinds takes record_values and cell_of"));
    }
    let kinds = record_kinds.unwrap_or_default();
    let cell_of = match cell_of {
        Some(f) => Some(CellOf::of(f)?),
        None => None,
    };
    let mut n_unlocated: u64 = 0;

    for i in 0..n {
        let message = messages.get_item(i)?;
        let value = message.call_method0(value_name)?;
        let mut fields = [Field::Absent; 4];
        let fast = match value.cast::<PyBytes>() {
            Ok(bytes) => parse_fields(
                bytes.as_bytes(),
                latest_allowed,
                if segmented { Some(&mut fields) } else { None },
            ),
            Err(_) => None,
        };
        // with segments: the fields as the Python reader reads them (slow: Python's tuple)
        let mut slow_fields: Option<Bound<'py, PyAny>> = None;
        let mut slow_text: Option<Bound<'py, PyString>> = None;
        let (who, time, on_duty) = match fast {
            Some((key, time, on_duty)) => {
                // ASCII, checked by parse_fast
                let who = cache.who(key, || {
                    PyString::new(py, std::str::from_utf8(key).unwrap_or(""))
                });
                (who, time, on_duty)
            }
            None => {
                let judged = slow.call1((i,))?;
                if judged.is_none() {
                    continue;
                }
                let (text, time, on_duty) = if segmented {
                    let (text, time, on_duty, raw): (Bound<'py, PyString>, f64, bool, Bound<'py, PyAny>) =
                        judged.extract()?;
                    slow_fields = Some(raw);
                    (text, time, on_duty)
                } else {
                    judged.extract::<(Bound<'py, PyString>, f64, bool)>()?
                };
                let who = cache.who(text.to_str()?.as_bytes(), || text.clone());
                slow_text = Some(text);
                (who, time, on_duty)
            }
        };
        if time > max_event {
            max_event = time;
            late_before = time - lateness;
            too_late_before = late_before - horizon;
        } else if time < late_before {
            if time < too_late_before {
                n_too_late += 1;
                too_late.call1((i, time, max_event))?;
                continue;
            }
            n_late += 1;
        }
        let shard = (cache.entries[who as usize].1 % shards) as usize;
        if !(0.0..EXACT_F64).contains(&time) {
            return Err(PyValueError::new_err("event time out of the compiled reader's range"));
        }
        let number = floor_div(time, bucket_f);
        let number = number as i64;
        let slot = match slots[shard].get(&number) {
            Some(&slot) => slot,
            None => {
                let slot = groups[shard].len();
                groups[shard].push(Group { start: number * bucket, ..Default::default() });
                slots[shard].insert(number, slot);
                slot
            }
        };
        let group = &mut groups[shard][slot];
        *group.members.entry(who).or_insert(false) |= on_duty;
        group.pings += 1;
        if let Some(record_values) = record_values {
            let out = &mut group.records;
            out.push(on_duty as u8);
            // the driver's UTF-8: the value's own bytes on the fast path (ASCII)
            let text: &[u8] = match (&fast, &slow_text) {
                (Some((key, _, _)), _) => key,
                (None, Some(text)) => text.to_str()?.as_bytes(),
                (None, None) => unreachable!("a counted ping came from one path"),
            };
            if text.len() > u16::MAX as usize {
                return Err(PyValueError::new_err("driver id too long for a segment record"));
            }
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text);
            let unlocated = match slow_fields {
                Some(raw) => {
                    let (bytes, unlocated): (Bound<'py, PyBytes>, bool) =
                        record_values.call1(raw.cast_into::<pyo3::types::PyTuple>()?)?.extract()?;
                    out.extend_from_slice(bytes.as_bytes());
                    unlocated
                }
                None => push_values(out, &fields, &kinds, located, cell_of.as_ref().expect("checked above"), py),
            };
            if unlocated {
                n_unlocated += 1;
            }
        }
    }

    let grouped = PyList::empty(py);
    let segments = if segmented { Some(PyList::empty(py)) } else { None };
    for shard_groups in groups {
        let dict = PyDict::new(py);
        let seg_dict = PyDict::new(py);
        for group in shard_groups {
            if segmented {
                seg_dict.set_item(group.start, PyBytes::new(py, &group.records))?;
            }
            let online =
                PySet::new(py, group.members.keys().map(|&w| cache.entries[w as usize].0.bind(py)))?;
            let off = PySet::new(
                py,
                group
                    .members
                    .iter()
                    .filter(|(_, &duty)| !duty)
                    .map(|(&w, _)| cache.entries[w as usize].0.bind(py)),
            )?;
            let sets = PyList::new(py, [online.into_any(), off.into_any(), group.pings.into_pyobject(py)?.into_any()])?;
            dict.set_item(group.start, sets)?;
        }
        grouped.append(dict)?;
        if let Some(segments) = &segments {
            segments.append(seg_dict)?;
        }
    }
    Ok((grouped, max_event, n_too_late, n_late, segments, n_unlocated))
}

/// The fast path alone, for tests: `(driver, time, on_duty)` or None.
#[pyfunction]
fn parse_fast_py<'py>(
    py: Python<'py>,
    value: &[u8],
    latest_allowed: f64,
) -> Option<(Bound<'py, PyString>, f64, bool)> {
    parse_fast(value, latest_allowed)
        .map(|(d, t, o)| (PyString::new(py, std::str::from_utf8(d).unwrap_or("")), t, o))
}

/// `floor_div` alone, for tests (against Python's `time // bucket`).
#[pyfunction]
fn floor_div_py(time: f64, bucket: f64) -> f64 {
    floor_div(time, bucket)
}

/// The compiled reader's H3 cell (`cell_of` as `read_batch` takes it), for tests.
#[pyfunction]
fn h3_cell_py(py: Python<'_>, cell_of: &Bound<'_, PyAny>, lat: f64, lng: f64, resolution: u8) -> PyResult<Option<u64>> {
    Ok(CellOf::of(cell_of)?.cell(py, lat, lng, resolution))
}

/// `usual_iso_instant` alone, for tests.
#[pyfunction]
fn usual_iso_instant_py(text: &str) -> Option<f64> {
    usual_iso_instant(text.as_bytes())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_batch, m)?)?;
    m.add_class::<Drivers>()?;
    m.add_class::<segment_tally::SegmentTally>()?;
    m.add_class::<segment_store::SegmentStore>()?;
    m.add_function(wrap_pyfunction!(parse_fast_py, m)?)?;
    m.add_function(wrap_pyfunction!(usual_iso_instant_py, m)?)?;
    m.add_function(wrap_pyfunction!(floor_div_py, m)?)?;
    m.add_function(wrap_pyfunction!(h3_cell_py, m)?)?;
    m.add_function(wrap_pyfunction!(segment_docs::encode_segment_docs, m)?)?;
    m.add("ABI", 6)?;
    Ok(())
}

