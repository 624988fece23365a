//! Just enough Hessian 2.0 to route on: strings read, every other value skipped.
//!
//! Routing keys sit in a short prefix of an RPC body (Dubbo's four leading strings, the
//! `methodName` field of a SOFARPC request object), and a Dubbo request's attachments sit after
//! its arguments, which need skipping but never decoding. The reader therefore decodes strings,
//! ints and class definitions and walks past everything else by the grammar of the Hessian 2.0
//! serialization specification, checking every length against the bytes that are there.
//!
//! String lengths count UTF-16 code units, as Java's `String.length()` does: Java's encoder
//! writes each unit as one to three UTF-8 bytes (a supplementary character as two three-byte
//! surrogates), other encoders write it as one four-byte sequence, which counts as two units.

use std::borrow::Cow;
use std::fmt;

use smallvec::SmallVec;

/// Nesting deeper than this (lists in maps in objects…) is refused rather than followed, so a
/// hostile body cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Class definitions one body may hold at most: each costs memory, and a hostile body could
/// otherwise pack one into every three bytes.
const MAX_CLASSES: usize = 1024;
/// String pairs a map read by [`Reader::read_string_map`] may hold (Dubbo's attachments: a
/// client sends a handful).
pub const MAX_STRING_PAIRS: usize = 1024;

/// The longest draft class definition [`Reader::remembered_draft_definition`] keeps.
const MAX_REMEMBERED_DEFINITION: usize = 1024;

/// The draft class definition read last on this thread, what was looked for in it and what
/// was found: its bytes (empty until one is read), the field's name, the definition's field
/// count and the field's position.
#[derive(Default)]
struct RememberedDefinition {
    bytes: Vec<u8>,
    field: String,
    count: usize,
    found: Option<usize>,
}

thread_local! {
    static LAST_DRAFT_DEFINITION: std::cell::RefCell<RememberedDefinition> = std::cell::RefCell::default();
}

#[cfg(test)]
thread_local! {
    static REMEMBERED_HITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How often this thread read a definition it remembered.
#[cfg(test)]
pub(crate) fn remembered_hits() -> usize {
    REMEMBERED_HITS.get()
}

/// Why a Hessian value could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HessianError {
    /// Offset of the byte where reading failed, from the start of the input.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for HessianError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hessian2 at byte {}: {}", self.at, self.what)
    }
}

impl std::error::Error for HessianError {}

type Result<T> = std::result::Result<T, HessianError>;

/// String pairs (a map's, Dubbo's attachments), borrowed from the input where they can be.
pub type StringPairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// A cursor over Hessian 2.0 values.
#[derive(Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    /// Field count of each class definition seen so far, by definition number.
    classes: SmallVec<[usize; 4]>,
    /// Field names, for the definitions whose instances a caller reads field by field (kept
    /// only by a full decode: shorter than `classes` when the last definitions were skimmed).
    class_fields: Vec<Vec<String>>,
    /// Class names, by definition number, as `class_fields`.
    class_names: Vec<String>,
    /// Type names seen, by number (for full decoding).
    types: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input, pos: 0, classes: SmallVec::new(), class_fields: Vec::new(), class_names: Vec::new(), types: Vec::new() }
    }

    /// Where the next value starts.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn fail<T>(&self, what: &'static str) -> Result<T> {
        Err(HessianError { at: self.pos, what })
    }

    fn byte(&mut self) -> Result<u8> {
        let Some(&byte) = self.input.get(self.pos) else { return self.fail("the value is cut short") };
        self.pos += 1;
        Ok(byte)
    }

    fn peek(&self) -> Result<u8> {
        match self.input.get(self.pos) {
            Some(&byte) => Ok(byte),
            None => self.fail("the value is cut short"),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let Some(end) = self.pos.checked_add(len).filter(|end| *end <= self.input.len()) else {
            return self.fail("a length runs past the end of the body");
        };
        let bytes = &self.input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<usize> {
        let bytes = self.take(2)?;
        Ok(usize::from(bytes[0]) << 8 | usize::from(bytes[1]))
    }

    /// A string, or `None` for null: borrowed from the input when it is one chunk of ASCII.
    pub fn read_string(&mut self) -> Result<Option<Cow<'a, str>>> {
        // The common case, service and method names: one chunk of ASCII, where every byte is
        // one UTF-16 unit, taken as it is.
        let (len, head) = match self.input.get(self.pos..) {
            Some([tag @ 0x00..=0x1f, ..]) => (usize::from(*tag), 1),
            Some([tag @ 0x30..=0x33, low, ..]) => (usize::from(tag - 0x30) << 8 | usize::from(*low), 2),
            Some([b'S', high, low, ..]) => (usize::from(*high) << 8 | usize::from(*low), 3),
            _ => (usize::MAX, 0),
        };
        if let Some(text) = self.input.get(self.pos + head..).and_then(|it| it.get(..len)).filter(|it| it.is_ascii()) {
            self.pos += head + len;
            // ASCII is UTF-8.
            return Ok(std::str::from_utf8(text).ok().map(Cow::Borrowed));
        }
        let mut units: Vec<u16> = Vec::new();
        if !self.string_chunks(Some(&mut units))? {
            return Ok(None);
        }
        match String::from_utf16(&units) {
            Ok(text) => Ok(Some(Cow::Owned(text))),
            Err(_) => self.fail("a string holds an unpaired surrogate"),
        }
    }

    /// A string as [`Reader::read_string`] reads it, owned.
    fn read_owned_string(&mut self) -> Result<Option<String>> {
        Ok(self.read_string()?.map(Cow::into_owned))
    }

    /// Skips a string or null; anything else is an error.
    pub fn skip_string(&mut self) -> Result<()> {
        self.string_chunks(None).map(|_| ())
    }

    /// Walks a string (or null), collecting its UTF-16 units when asked; `false` for null.
    fn string_chunks(&mut self, mut units: Option<&mut Vec<u16>>) -> Result<bool> {
        loop {
            let tag = self.byte()?;
            let (len, last) = match tag {
                b'N' => return Ok(false),
                0x00..=0x1f => (usize::from(tag), true),
                0x30..=0x33 => (usize::from(tag - 0x30) << 8 | usize::from(self.byte()?), true),
                b'S' => (self.u16()?, true),
                b'R' => (self.u16()?, false),
                _ => {
                    self.pos -= 1;
                    return self.fail("expected a string");
                }
            };
            self.chars(len, units.as_deref_mut())?;
            if last {
                return Ok(true);
            }
        }
    }

    /// `len` UTF-16 units of UTF-8 (or CESU-8) text.
    fn chars(&mut self, len: usize, mut units: Option<&mut Vec<u16>>) -> Result<()> {
        // ASCII text, the usual kind, is `len` bytes: checked and taken in one step.
        if let Some(text) = self.input.get(self.pos..).and_then(|it| it.get(..len)).filter(|it| it.is_ascii()) {
            if let Some(units) = units {
                units.extend(text.iter().map(|it| u16::from(*it)));
            }
            self.pos += len;
            return Ok(());
        }
        let mut left = len;
        while left > 0 {
            let lead = self.byte()?;
            let (extra, initial) = match lead {
                0x00..=0x7f => (0, u32::from(lead)),
                0xc0..=0xdf => (1, u32::from(lead & 0x1f)),
                0xe0..=0xef => (2, u32::from(lead & 0x0f)),
                0xf0..=0xf7 if left >= 2 => (3, u32::from(lead & 0x07)),
                _ => {
                    self.pos -= 1;
                    return self.fail("a string holds a byte that starts no character");
                }
            };
            let mut code = initial;
            for _ in 0..extra {
                let next = self.byte()?;
                if next & 0xc0 != 0x80 {
                    self.pos -= 1;
                    return self.fail("a string holds a character cut short");
                }
                code = code << 6 | u32::from(next & 0x3f);
            }
            if extra == 3 {
                left -= 2;
                if let Some(units) = units.as_deref_mut() {
                    let mut pair = [0u16; 2];
                    match char::from_u32(code) {
                        Some(found) => units.extend_from_slice(found.encode_utf16(&mut pair)),
                        None => return self.fail("a string holds an invalid character"),
                    }
                }
            } else {
                left -= 1;
                if let Some(units) = units.as_deref_mut() {
                    // At most 16 bits: one to three bytes carry at most 16 bits of payload.
                    units.push(code as u16);
                }
            }
        }
        Ok(())
    }

    /// An int in any of its encodings.
    pub fn read_int(&mut self) -> Result<i32> {
        let tag = self.byte()?;
        let value = match tag {
            0x80..=0xbf => i32::from(tag) - 0x90,
            0xc0..=0xcf => (i32::from(tag) - 0xc8) << 8 | i32::from(self.byte()?),
            0xd0..=0xd7 => {
                let bytes = self.take(2)?;
                (i32::from(tag) - 0xd4) << 16 | i32::from(bytes[0]) << 8 | i32::from(bytes[1])
            }
            b'I' => {
                let bytes = self.take(4)?;
                i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
            }
            _ => {
                self.pos -= 1;
                return self.fail("expected an int");
            }
        };
        Ok(value)
    }

    /// A count or class reference: an int that may not be negative.
    fn read_count(&mut self) -> Result<usize> {
        let at = self.pos;
        let value = self.read_int()?;
        usize::try_from(value).map_err(|_| HessianError { at, what: "a count or reference is negative" })
    }

    /// A type name (string) or a reference to an earlier one (int).
    fn skip_type(&mut self) -> Result<()> {
        match self.peek()? {
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => self.string_chunks(None).map(|_| ()),
            _ => self.read_int().map(|_| ()),
        }
    }

    /// A class definition: `C`, its name, its field count and its field names, which are kept
    /// only for a full decode (`keep`); skipping needs the count alone.
    fn class_definition(&mut self, keep: bool) -> Result<()> {
        if self.classes.len() >= MAX_CLASSES {
            return self.fail("too many class definitions");
        }
        self.pos += 1;
        let name = if keep { self.read_owned_string()? } else { self.string_chunks(None)?.then(String::new) };
        let Some(name) = name else {
            return self.fail("a class definition has no name");
        };
        let count = self.read_count()?;
        let mut fields = Vec::new();
        for _ in 0..count {
            if keep {
                match self.read_owned_string()? {
                    Some(field) => fields.push(field),
                    None => return self.fail("a class definition has a null field name"),
                }
            } else if !self.string_chunks(None)? {
                return self.fail("a class definition has a null field name");
            }
        }
        self.push_class(count, keep.then_some((name, fields)));
        Ok(())
    }

    /// Records a definition: its field count, and its name and field names when they were
    /// kept (`named`). Skimmed definitions keep nothing more than their count, so that
    /// reading a routing key allocates nothing for the classes it passes.
    fn push_class(&mut self, count: usize, named: Option<(String, Vec<String>)>) {
        if let Some((name, fields)) = named {
            self.class_names.resize(self.classes.len(), String::new());
            self.class_fields.resize(self.classes.len(), Vec::new());
            self.class_names.push(name);
            self.class_fields.push(fields);
        }
        self.classes.push(count);
    }

    /// The definition number of an object instance (`O` or 0x60..0x6f), past its tag.
    fn instance(&mut self) -> Result<usize> {
        let tag = self.byte()?;
        let class = if tag == b'O' { self.read_count()? } else { usize::from(tag - 0x60) };
        if class >= self.classes.len() {
            return self.fail("an object refers to a class definition not seen");
        }
        Ok(class)
    }

    /// Skips one value, with the class definitions in front of it.
    pub fn skip(&mut self) -> Result<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.fail("values nest too deeply");
        }
        loop {
            let tag = self.peek()?;
            match tag {
                b'C' => self.class_definition(false)?,
                0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => return self.string_chunks(None).map(|_| ()),
                b'N' | b'T' | b'F' | 0x5b | 0x5c | 0x80..=0xbf | 0xd8..=0xef => {
                    self.pos += 1;
                    return Ok(());
                }
                0xc0..=0xcf | 0xf0..=0xff | 0x5d => return self.take(2).map(|_| ()),
                0xd0..=0xd7 | 0x38..=0x3f | 0x5e => return self.take(3).map(|_| ()),
                b'I' | b'Y' | b'K' | 0x5f => return self.take(5).map(|_| ()),
                b'L' | b'D' | b'J' => return self.take(9).map(|_| ()),
                b'Q' => {
                    self.pos += 1;
                    return self.read_count().map(|_| ());
                }
                0x20..=0x2f | 0x34..=0x37 | b'A' | b'B' => return self.binary(),
                b'H' => {
                    self.pos += 1;
                    return self.skip_until_end(depth, 2);
                }
                b'M' => {
                    self.pos += 1;
                    self.skip_type()?;
                    return self.skip_until_end(depth, 2);
                }
                b'U' => {
                    self.pos += 1;
                    self.skip_type()?;
                    return self.skip_until_end(depth, 1);
                }
                b'W' => {
                    self.pos += 1;
                    return self.skip_until_end(depth, 1);
                }
                b'V' => {
                    self.pos += 1;
                    self.skip_type()?;
                    let len = self.read_count()?;
                    return self.skip_values(depth, len);
                }
                b'X' => {
                    self.pos += 1;
                    let len = self.read_count()?;
                    return self.skip_values(depth, len);
                }
                0x70..=0x77 => {
                    self.pos += 1;
                    self.skip_type()?;
                    return self.skip_values(depth, usize::from(tag - 0x70));
                }
                0x78..=0x7f => {
                    self.pos += 1;
                    return self.skip_values(depth, usize::from(tag - 0x78));
                }
                b'O' | 0x60..=0x6f => {
                    let class = self.instance()?;
                    return self.skip_values(depth, self.classes[class]);
                }
                _ => return self.fail("a byte that starts no hessian2 value"),
            }
        }
    }

    /// Binary data: non-final `A` chunks, then a final chunk in any of the three forms.
    fn binary(&mut self) -> Result<()> {
        loop {
            let tag = self.byte()?;
            let (len, last) = match tag {
                0x20..=0x2f => (usize::from(tag - 0x20), true),
                0x34..=0x37 => (usize::from(tag - 0x34) << 8 | usize::from(self.byte()?), true),
                b'B' => (self.u16()?, true),
                b'A' => (self.u16()?, false),
                _ => {
                    self.pos -= 1;
                    return self.fail("a binary chunk is followed by something else");
                }
            };
            self.take(len)?;
            if last {
                return Ok(());
            }
        }
    }

    fn skip_values(&mut self, depth: usize, count: usize) -> Result<()> {
        for _ in 0..count {
            self.skip_at(depth + 1)?;
        }
        Ok(())
    }

    /// Values (`per_entry` at a time: 2 for a map's key and value) until the `Z` that ends a
    /// variable-length list or a map.
    fn skip_until_end(&mut self, depth: usize, per_entry: usize) -> Result<()> {
        loop {
            if self.peek()? == b'Z' {
                self.pos += 1;
                return Ok(());
            }
            self.skip_values(depth, per_entry)?;
        }
    }

    /// Reads a map (`H`, or `M` with its type) whose string keys map to string values, keeping
    /// those pairs and skipping entries of other kinds; `None` for null. More than
    /// [`MAX_STRING_PAIRS`] pairs is an error: each pair kept takes some twenty times the two
    /// bytes an empty one is written in.
    pub fn read_string_map(&mut self) -> Result<Option<StringPairs<'a>>> {
        match self.byte()? {
            b'N' => return Ok(None),
            b'H' => {}
            b'M' => self.skip_type()?,
            _ => {
                self.pos -= 1;
                return self.fail("expected a map");
            }
        }
        // Room for what Dubbo clients attach (path, interface, version, group, timeout…) without regrowing.
        let mut pairs = Vec::with_capacity(8);
        loop {
            if self.peek()? == b'Z' {
                self.pos += 1;
                return Ok(Some(pairs));
            }
            let key = if self.is_string()? { self.read_string()? } else { self.skip_at(1).map(|()| None)? };
            let value = if self.is_string()? { self.read_string()? } else { self.skip_at(1).map(|()| None)? };
            if let (Some(key), Some(value)) = (key, value) {
                if pairs.len() == MAX_STRING_PAIRS {
                    return self.fail("a map of more than 1024 string pairs");
                }
                pairs.push((key, value));
            }
        }
    }

    fn is_string(&self) -> Result<bool> {
        Ok(matches!(self.peek()?, 0x00..=0x1f | 0x30..=0x33 | b'S' | b'R'))
    }

    /// Reads one string field of an object (after any class definitions in front of it),
    /// skipping the other fields: `None` when the object has no such field or it is null.
    ///
    /// An object that starts the input with `O` is in the Hessian 2.0 draft that Caucho's
    /// Hessian 3.1 and hessian.js 1.x (under sofa-rpc-node) write, where `O` defines a class
    /// and `o` makes an instance; in the final specification `O` makes an instance of a class
    /// defined before it, which cannot be the first thing in the input.
    pub fn read_object_field(&mut self, field: &str) -> Result<Option<Cow<'a, str>>> {
        let draft = self.pos == 0 && self.peek()? == b'O';
        // Each definition's field count and where `field` is among its fields, without
        // keeping their names: this runs for every Bolt request without a method header.
        let mut wanted: SmallVec<[Option<usize>; 4]> = SmallVec::new();
        let class = if draft {
            wanted.push(self.remembered_draft_definition(field)?);
            if self.byte()? != b'o' {
                self.pos -= 1;
                return self.fail("expected an object instance after its class definition");
            }
            let class = self.read_count()?;
            if class >= self.classes.len() {
                return self.fail("an object refers to a class definition not seen");
            }
            class
        } else {
            while self.peek()? == b'C' {
                wanted.push(self.lean_definition(false, field)?);
            }
            if !matches!(self.peek()?, b'O' | 0x60..=0x6f) {
                return self.fail("expected an object");
            }
            self.instance()?
        };
        let target = wanted.get(class).copied().flatten();
        let skip: fn(&mut Reader<'a>, usize) -> Result<()> = if draft { Reader::skip_draft } else { Reader::skip_at };
        for index in 0..self.classes[class] {
            if Some(index) == target {
                return if self.is_string()? { self.read_string() } else { Ok(None) };
            }
            skip(self, 1)?;
        }
        Ok(None)
    }

    /// [`Reader::lean_definition`] of the draft definition that starts the input, remembered
    /// per thread: every request of a SOFA client starts with the same definition of its
    /// request class, so the bytes are compared with the last ones read instead of read
    /// again. Reading a definition looks at its own bytes only, so the same bytes give the
    /// same count and position and end at the same place.
    fn remembered_draft_definition(&mut self, field: &str) -> Result<Option<usize>> {
        let known = LAST_DRAFT_DEFINITION.with_borrow(|last| {
            (last.field == field && self.input.starts_with(&last.bytes)).then_some((last.bytes.len(), last.count, last.found))
        });
        if let Some((end, count, found)) = known
            && end > 0
        {
            #[cfg(test)]
            REMEMBERED_HITS.set(REMEMBERED_HITS.get() + 1);
            self.pos = end;
            self.push_class(count, None);
            return Ok(found);
        }
        let found = self.lean_definition(true, field)?;
        let bytes = &self.input[..self.pos];
        if bytes.len() <= MAX_REMEMBERED_DEFINITION
            && let Some(&count) = self.classes.last()
        {
            LAST_DRAFT_DEFINITION.with_borrow_mut(|last| {
                last.bytes.clear();
                last.bytes.extend_from_slice(bytes);
                last.field.clear();
                last.field.push_str(field);
                (last.count, last.found) = (count, found);
            });
        }
        Ok(found)
    }

    /// A class definition (draft `O`, or final `C`), recording its field count and returning
    /// the position of `field` among its fields; names are compared, not kept.
    fn lean_definition(&mut self, draft: bool, field: &str) -> Result<Option<usize>> {
        if self.classes.len() >= MAX_CLASSES {
            return self.fail("too many class definitions");
        }
        self.pos += 1;
        if draft {
            let len = self.read_count()?;
            self.chars(len, None)?;
        } else if !self.string_chunks(None)? {
            return self.fail("a class definition has no name");
        }
        let count = self.read_count()?;
        let mut found = None;
        for index in 0..count {
            if self.string_is(field)? && found.is_none() {
                found = Some(index);
            }
        }
        self.push_class(count, None);
        Ok(found)
    }

    /// Reads a string and says whether it is `text`, without allocating when it is one chunk
    /// of ASCII.
    fn string_is(&mut self, text: &str) -> Result<bool> {
        let (len, head) = match self.input.get(self.pos..) {
            Some([tag @ 0x00..=0x1f, ..]) => (usize::from(*tag), 1),
            Some([tag @ 0x30..=0x33, low, ..]) => (usize::from(tag - 0x30) << 8 | usize::from(*low), 2),
            Some([b'S', high, low, ..]) => (usize::from(*high) << 8 | usize::from(*low), 3),
            _ => (usize::MAX, 0),
        };
        if let Some(bytes) = self.input.get(self.pos + head..).and_then(|it| it.get(..len)).filter(|it| it.is_ascii()) {
            self.pos += head + len;
            return Ok(bytes == text.as_bytes());
        }
        match self.read_string()? {
            Some(name) => Ok(name == text),
            None => self.fail("a class definition has a null field name"),
        }
    }

    /// A draft class definition: `O`, the type's length as an int and its characters, the
    /// field count, the field names.
    fn draft_class_definition(&mut self) -> Result<()> {
        if self.classes.len() >= MAX_CLASSES {
            return self.fail("too many class definitions");
        }
        self.pos += 1;
        let len = self.read_count()?;
        let mut units = Vec::new();
        self.chars(len, Some(&mut units))?;
        let name = String::from_utf16_lossy(&units);
        let count = self.read_count()?;
        let mut fields = Vec::new();
        for _ in 0..count {
            match self.read_owned_string()? {
                Some(name) => fields.push(name),
                None => return self.fail("a class definition has a null field name"),
            }
        }
        self.push_class(count, Some((name, fields)));
        Ok(())
    }

    /// Skips one value of the Hessian 2.0 draft (see `read_object_field`): the same compact
    /// ints and strings as the final specification, but its own chunk, list, map, type,
    /// reference, long, double and object codes.
    fn skip_draft(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.fail("values nest too deeply");
        }
        let tag = self.byte()?;
        let fixed = match tag {
            b'N' | b'T' | b'F' | 0x80..=0xbf | 0xd8..=0xef | 0x67 | 0x68 => 0,
            0xc0..=0xcf | 0xf0..=0xff | 0x69 | b'J' => 1,
            0xd0..=0xd7 | 0x38..=0x3f | 0x6a | b'K' => 2,
            b'I' | 0x77 | 0x6b | b'R' => 4,
            b'L' | b'D' | 0x64 => 8,
            0x00..=0x1f => return self.chars(usize::from(tag), None),
            b's' | b'S' => {
                let mut last = tag == b'S';
                loop {
                    let len = self.u16()?;
                    self.chars(len, None)?;
                    if last {
                        return Ok(());
                    }
                    match self.byte()? {
                        b'S' => last = true,
                        b's' => {}
                        short @ 0x00..=0x1f => return self.chars(usize::from(short), None),
                        _ => {
                            self.pos -= 1;
                            return self.fail("a string chunk is followed by something else");
                        }
                    }
                }
            }
            0x20..=0x2f => return self.take(usize::from(tag - 0x20)).map(|_| ()),
            b'b' | b'B' => {
                let mut last = tag == b'B';
                loop {
                    let len = self.u16()?;
                    self.take(len)?;
                    if last {
                        return Ok(());
                    }
                    match self.byte()? {
                        b'B' => last = true,
                        b'b' => {}
                        short @ 0x20..=0x2f => return self.take(usize::from(short - 0x20)).map(|_| ()),
                        _ => {
                            self.pos -= 1;
                            return self.fail("a binary chunk is followed by something else");
                        }
                    }
                }
            }
            b'V' => {
                self.draft_type()?;
                match self.peek()? {
                    b'n' => self.take(2).map(|_| ())?,
                    b'l' => self.take(5).map(|_| ())?,
                    _ => {}
                }
                return self.skip_draft_until_end(depth, 1);
            }
            b'v' => {
                self.read_int()?;
                let len = self.read_count()?;
                for _ in 0..len {
                    self.skip_draft(depth + 1)?;
                }
                return Ok(());
            }
            b'M' => {
                self.draft_type()?;
                return self.skip_draft_until_end(depth, 2);
            }
            b'O' => {
                self.pos -= 1;
                self.draft_class_definition()?;
                // A definition stands before the value it defines: counted as a level, so a
                // run of definitions cannot recurse without bound.
                return self.skip_draft(depth + 1);
            }
            b'o' => {
                let class = self.read_count()?;
                let Some(&count) = self.classes.get(class) else {
                    return self.fail("an object refers to a class definition not seen");
                };
                for _ in 0..count {
                    self.skip_draft(depth + 1)?;
                }
                return Ok(());
            }
            _ => {
                self.pos -= 1;
                return self.fail("a byte that starts no hessian2 (draft) value");
            }
        };
        self.take(fixed).map(|_| ())
    }

    /// Skips one value of the Hessian 2.0 draft.
    #[cfg(test)]
    pub(super) fn skip_draft_value(&mut self) -> Result<()> {
        self.skip_draft(0)
    }

    /// An optional draft type: `t` with a u16 length and the characters, or `u` and a reference.
    fn draft_type(&mut self) -> Result<()> {
        match self.peek()? {
            b't' => {
                self.pos += 1;
                let len = self.u16()?;
                self.chars(len, None)
            }
            b'u' => {
                self.pos += 1;
                self.read_int().map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn skip_draft_until_end(&mut self, depth: usize, per_entry: usize) -> Result<()> {
        loop {
            if self.peek()? == b'z' {
                self.pos += 1;
                return Ok(());
            }
            for _ in 0..per_entry {
                self.skip_draft(depth + 1)?;
            }
        }
    }
}

/// A hessian2 value, fully decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    /// Milliseconds since the epoch.
    Date(i64),
    String(String),
    Binary(Vec<u8>),
    /// A list, with its type when it has one.
    List(Option<String>, Vec<Value>),
    /// A map, with its type when it has one; entries in order.
    Map(Option<String>, Vec<(Value, Value)>),
    /// An object: its class and its fields in order.
    Object(String, Vec<(String, Value)>),
    /// A reference to an earlier list, map or object, by number.
    Ref(usize),
}

impl Reader<'_> {
    /// Decodes one value of the final specification completely, as an RPC framework
    /// deserializing a whole request body would: the baseline that reading only routing keys
    /// (and skipping the rest) is measured against.
    pub fn read_value(&mut self) -> Result<Value> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return self.fail("values nest too deeply");
        }
        while self.peek()? == b'C' {
            self.class_definition(true)?;
        }
        let tag = self.peek()?;
        let value = match tag {
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => Value::String(self.read_owned_string()?.unwrap_or_default()),
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => Value::Int(self.read_int()?),
            b'N' => {
                self.pos += 1;
                Value::Null
            }
            b'T' | b'F' => {
                self.pos += 1;
                Value::Bool(tag == b'T')
            }
            0xd8..=0xef => {
                self.pos += 1;
                Value::Long(i64::from(tag) - 0xe0)
            }
            0xf0..=0xff => {
                self.pos += 1;
                Value::Long((i64::from(tag) - 0xf8) << 8 | i64::from(self.byte()?))
            }
            0x38..=0x3f => {
                self.pos += 1;
                let bytes = self.take(2)?;
                Value::Long((i64::from(tag) - 0x3c) << 16 | i64::from(bytes[0]) << 8 | i64::from(bytes[1]))
            }
            b'Y' => {
                self.pos += 1;
                Value::Long(i64::from(self.i32_bytes()?))
            }
            b'L' | b'J' => {
                self.pos += 1;
                let bytes = self.take(8)?;
                let value = i64::from_be_bytes(bytes.try_into().unwrap_or_default());
                if tag == b'L' { Value::Long(value) } else { Value::Date(value) }
            }
            b'K' => {
                self.pos += 1;
                Value::Date(i64::from(self.i32_bytes()?) * 60_000)
            }
            0x5b | 0x5c => {
                self.pos += 1;
                Value::Double(if tag == 0x5b { 0.0 } else { 1.0 })
            }
            0x5d => {
                self.pos += 1;
                Value::Double(f64::from(self.byte()? as i8))
            }
            0x5e => {
                self.pos += 1;
                let bytes = self.take(2)?;
                Value::Double(f64::from(i16::from_be_bytes([bytes[0], bytes[1]])))
            }
            0x5f => {
                self.pos += 1;
                Value::Double(f64::from(self.i32_bytes()?) / 1000.0)
            }
            b'D' => {
                self.pos += 1;
                let bytes = self.take(8)?;
                Value::Double(f64::from_be_bytes(bytes.try_into().unwrap_or_default()))
            }
            0x20..=0x2f | 0x34..=0x37 | b'A' | b'B' => {
                let start = self.pos;
                self.binary()?;
                Value::Binary(self.binary_bytes(start))
            }
            b'Q' => {
                self.pos += 1;
                Value::Ref(self.read_count()?)
            }
            b'H' | b'M' => {
                self.pos += 1;
                let kind = if tag == b'M' { Some(self.read_type()?) } else { None };
                let mut entries = Vec::new();
                while self.peek()? != b'Z' {
                    let key = self.value_at(depth + 1)?;
                    entries.push((key, self.value_at(depth + 1)?));
                }
                self.pos += 1;
                Value::Map(kind, entries)
            }
            b'U' | b'W' => {
                self.pos += 1;
                let kind = if tag == b'U' { Some(self.read_type()?) } else { None };
                let mut items = Vec::new();
                while self.peek()? != b'Z' {
                    items.push(self.value_at(depth + 1)?);
                }
                self.pos += 1;
                Value::List(kind, items)
            }
            b'V' | b'X' | 0x70..=0x7f => {
                self.pos += 1;
                let kind = if tag == b'V' || (0x70..=0x77).contains(&tag) { Some(self.read_type()?) } else { None };
                let len = match tag {
                    0x70..=0x77 => usize::from(tag - 0x70),
                    0x78..=0x7f => usize::from(tag - 0x78),
                    _ => self.read_count()?,
                };
                // Never trust a length for an allocation: the values must be there.
                let mut items = Vec::with_capacity(len.min(self.input.len() - self.pos));
                for _ in 0..len {
                    items.push(self.value_at(depth + 1)?);
                }
                Value::List(kind, items)
            }
            b'O' | 0x60..=0x6f => {
                let class = self.instance()?;
                let names = self.class_fields.get(class).cloned().unwrap_or_default();
                let mut fields = Vec::with_capacity(names.len());
                for name in names {
                    fields.push((name, self.value_at(depth + 1)?));
                }
                Value::Object(self.class_names.get(class).cloned().unwrap_or_default(), fields)
            }
            _ => return self.fail("a byte that starts no hessian2 value"),
        };
        Ok(value)
    }

    fn i32_bytes(&mut self) -> Result<i32> {
        let bytes = self.take(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A type: a string, or a reference to an earlier one.
    fn read_type(&mut self) -> Result<String> {
        if self.is_string()? {
            let name = self.read_owned_string()?.unwrap_or_default();
            self.types.push(name.clone());
            return Ok(name);
        }
        let at = self.pos;
        let index = self.read_count()?;
        self.types.get(index).cloned().ok_or(HessianError { at, what: "a type reference to a type not seen" })
    }

    /// The data of the binary value that starts at `start` and ends here, its chunks joined.
    fn binary_bytes(&self, start: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = start;
        while at < self.pos {
            let tag = self.input[at];
            let (len, head) = match tag {
                0x20..=0x2f => (usize::from(tag - 0x20), 1),
                0x34..=0x37 => (usize::from(tag - 0x34) << 8 | usize::from(self.input[at + 1]), 2),
                _ => (usize::from(self.input[at + 1]) << 8 | usize::from(self.input[at + 2]), 3),
            };
            out.extend_from_slice(&self.input[at + head..at + head + len]);
            at += head + len;
        }
        out
    }
}

/// How many arguments a JVM method descriptor's parameter list names
/// (`Ljava/lang/String;I[J` → 3).
pub fn descriptor_arity(descriptor: &str) -> Option<usize> {
    let bytes = descriptor.as_bytes();
    let (mut count, mut index) = (0, 0);
    while index < bytes.len() {
        while bytes.get(index) == Some(&b'[') {
            index += 1;
        }
        match bytes.get(index)? {
            b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S' | b'Z' => index += 1,
            b'L' => index += bytes[index..].iter().position(|it| *it == b';')? + 1,
            _ => return None,
        }
        count += 1;
    }
    Some(count)
}
