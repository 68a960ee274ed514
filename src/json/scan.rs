//! One pass over a JSON text that validates it and finds the top-level fields of its objects.
//!
//! The write path and restores need a document's top-level field names and each value's exact
//! text, nothing more. serde_json made that three passes over every byte (a UTF-8 check, its
//! parse into borrowed values, and `numbers_fit` for the numbers it checks only lexically) and
//! re-escaped every name it wrote back; restores spent a third of their CPU there. This scanner
//! takes a text already known to be UTF-8 and checks, in one pass, everything a later parse into
//! `serde_json::Value` would refuse: the grammar, escapes (surrogates in pairs), control
//! characters in strings, numbers that do not fit a double, and nesting deeper than serde_json's
//! limit. So what it accepts can always be read back.

use std::borrow::Cow;

/// Containers nested deeper than this are refused: serde_json refuses them when it parses a
/// document (its recursion limit), which the update path and checksums do.
pub const MAX_DEPTH: usize = 127;

/// Only a number with an exponent, or longer than this, can overflow a double.
const SAFE_NUMBER_LEN: usize = 300;

/// Why a text is not valid JSON, and where (a byte offset into it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub what: Cow<'static, str>,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset + 1)
    }
}

/// A top-level field of an object: its name (unescaped), the name as written (with its quotes)
/// and the value's exact text.
pub type Field<'a> = (Cow<'a, str>, &'a str, &'a str);

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Nonzero if a byte of `word` is a quote, a backslash or a control character; the lowest
/// flagged byte is always one of them (a borrow only flags bytes above a true hit).
#[inline]
fn special(word: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    zero(word ^ (ONES * u64::from(b'"')))
        | zero(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, ScanError> {
        Err(ScanError {
            offset: self.at,
            what: Cow::Borrowed(what),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Past the string starting at the quote under `at`; true if it holds an escape.
    fn string(&mut self) -> Result<bool, ScanError> {
        self.at += 1;
        let mut escaped = false;
        loop {
            while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
                let hits = special(word);
                if hits != 0 {
                    self.at += (hits.trailing_zeros() / 8) as usize;
                    break;
                }
                self.at += 8;
            }
            match self.peek() {
                None => return self.fail("end of text inside a string"),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(0..=0x1f) => return self.fail("control character in a string"),
                Some(_) => self.at += 1,
            }
        }
    }

    /// Past the escape whose backslash is under `at`.
    fn escape(&mut self) -> Result<(), ScanError> {
        self.at += 1;
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.at += 1;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                            return self.fail("lone leading surrogate in a \\u escape");
                        }
                        self.at += 1;
                        if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                            return self.fail("lone leading surrogate in a \\u escape");
                        }
                        Ok(())
                    }
                    0xDC00..=0xDFFF => self.fail("lone trailing surrogate in a \\u escape"),
                    _ => Ok(()),
                }
            }
            _ => self.fail("invalid escape"),
        }
    }

    /// The four hex digits after the `u` under `at`, moving past them.
    fn hex4(&mut self) -> Result<u32, ScanError> {
        let digits = self.bytes.get(self.at + 1..self.at + 5);
        let value = digits.and_then(|d| {
            d.iter()
                .try_fold(0u32, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?))
        });
        match value {
            Some(value) => {
                self.at += 5;
                Ok(value)
            }
            None => {
                self.at += 1;
                self.fail("invalid \\u escape")
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), ScanError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return self.fail("invalid number");
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return self.fail("invalid number");
            }
        }
        let number = &self.text[start..self.at];
        if (exponent || number.len() > SAFE_NUMBER_LEN)
            && !number.parse::<f64>().is_ok_and(f64::is_finite)
        {
            return Err(ScanError {
                offset: start,
                what: Cow::Owned(format!("number out of range: {number}")),
            });
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.bytes.get(self.at..self.at + word.len()) == Some(word) {
            self.at += word.len();
            Ok(())
        } else {
            self.fail("expected a value")
        }
    }

    /// Past one value (whitespace before it skipped); `depth` containers enclose it.
    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(depth + 1, |_| ()),
            Some(b'[') => self.array(depth + 1, |s, depth| s.value(depth)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            None => self.fail("end of text where a value belongs"),
            Some(_) => self.fail("expected a value"),
        }
    }

    /// Past the object under `at`, at nesting `depth`, handing each field to `field`.
    fn object(&mut self, depth: usize, mut field: impl FnMut(Field<'a>)) -> Result<(), ScanError> {
        if self.open(depth, b'}')? {
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return self.fail("expected a field name");
            }
            let start = self.at;
            let escaped = self.string()?;
            let raw_name = &self.text[start..self.at];
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return self.fail("expected ':'");
            }
            self.at += 1;
            self.skip_whitespace();
            let value_start = self.at;
            self.value(depth)?;
            let value = &self.text[value_start..self.at];
            let inner = &raw_name[1..raw_name.len() - 1];
            let name = if escaped {
                Cow::Owned(unescape(inner))
            } else {
                Cow::Borrowed(inner)
            };
            field((name, raw_name, value));
            if self.next_or_close(b'}', "expected ',' or '}'")? {
                return Ok(());
            }
        }
    }

    /// Past the array under `at`, at nesting `depth`, with `element` past each element.
    fn array(
        &mut self,
        depth: usize,
        mut element: impl FnMut(&mut Self, usize) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        if self.open(depth, b']')? {
            return Ok(());
        }
        loop {
            element(self, depth)?;
            if self.next_or_close(b']', "expected ',' or ']'")? {
                return Ok(());
            }
        }
    }

    /// Past the opening bracket under `at` of a container at nesting `depth`; true if it closes
    /// at once with `close` (then past that too).
    fn open(&mut self, depth: usize, close: u8) -> Result<bool, ScanError> {
        if depth > MAX_DEPTH {
            return self.fail("nested more deeply than 127 levels");
        }
        self.at += 1;
        self.skip_whitespace();
        Ok(self.eat(close))
    }

    /// After a container's member: past a ',' (false) or the closing `close` (true).
    fn next_or_close(&mut self, close: u8, what: &'static str) -> Result<bool, ScanError> {
        self.skip_whitespace();
        if self.eat(b',') {
            return Ok(false);
        }
        if self.eat(close) {
            return Ok(true);
        }
        self.fail(what)
    }

    /// Moves past `byte` if it is under `at`.
    fn eat(&mut self, byte: u8) -> bool {
        let here = self.peek() == Some(byte);
        if here {
            self.at += 1;
        }
        here
    }

    fn end(&mut self) -> Result<(), ScanError> {
        self.skip_whitespace();
        match self.peek() {
            None => Ok(()),
            Some(_) => self.fail("trailing characters after the value"),
        }
    }
}

/// The text of a string (valid, as the scanner checked it) without quotes and escapes.
fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    let hex4 = |chars: &mut std::str::Chars<'_>| -> u32 {
        (0..4).fold(0, |n, _| {
            n * 16 + chars.next().and_then(|c| c.to_digit(16)).unwrap_or(0)
        })
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('u') => {
                let mut unit = hex4(&mut chars);
                if (0xD800..0xDC00).contains(&unit) {
                    chars.next();
                    chars.next();
                    let low = hex4(&mut chars);
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3ff);
                }
                out.push(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The string a valid JSON string literal (with its quotes) stands for.
pub fn string_value(raw: &str) -> Cow<'_, str> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    if inner.contains('\\') {
        Cow::Owned(unescape(inner))
    } else {
        Cow::Borrowed(inner)
    }
}

/// The top-level fields of `text`, which must be one JSON object (whitespace around it).
pub fn object(text: &str) -> Result<Vec<Field<'_>>, ScanError> {
    let mut scanner = Scanner::new(text);
    scanner.skip_whitespace();
    if scanner.peek() != Some(b'{') {
        return scanner.fail("expected an object");
    }
    let mut fields = Vec::with_capacity(16);
    scanner.object(1, |f| fields.push(f))?;
    scanner.end()?;
    Ok(fields)
}

/// One element of a write body.
#[derive(Debug)]
pub enum Element<'a> {
    Object(Vec<Field<'a>>),
    /// A string, as written (with its quotes).
    String(&'a str),
    /// Any other value.
    Other,
}

/// `text` as one value or an array of them (`true`), each element an `Element`.
pub fn elements(text: &str) -> Result<(bool, Vec<Element<'_>>), ScanError> {
    let mut scanner = Scanner::new(text);
    scanner.skip_whitespace();
    let mut elements = Vec::new();
    let array = scanner.peek() == Some(b'[');
    if array {
        scanner.array(1, |s, depth| {
            elements.push(s.element(depth)?);
            Ok(())
        })?;
    } else {
        elements.push(scanner.element(0)?);
    }
    scanner.end()?;
    Ok((array, elements))
}

impl<'a> Scanner<'a> {
    /// One value at nesting `depth`, as an `Element`.
    fn element(&mut self, depth: usize) -> Result<Element<'a>, ScanError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => {
                let mut fields = Vec::with_capacity(16);
                self.object(depth + 1, |f| fields.push(f))?;
                Ok(Element::Object(fields))
            }
            Some(b'"') => {
                let start = self.at;
                self.string()?;
                Ok(Element::String(&self.text[start..self.at]))
            }
            _ => self.value(depth).map(|()| Element::Other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Whether serde_json, parsing into a `Value` as reads and merges do, takes `text`.
    fn serde_takes(text: &str) -> bool {
        serde_json::from_str::<Value>(text).is_ok()
    }

    fn agree(text: &str) {
        let scanned = elements(text);
        assert_eq!(
            scanned.is_ok(),
            serde_takes(text),
            "{text:?}: scan says {scanned:?}"
        );
        let Ok((_, found)) = scanned else { return };
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let values = match value {
            Value::Array(values) if text.trim_start().starts_with('[') => values,
            other => vec![other],
        };
        assert_eq!(found.len(), values.len(), "{text:?}");
        for (element, value) in found.iter().zip(&values) {
            match (element, value) {
                (Element::Object(fields), Value::Object(map)) => {
                    let mut seen = serde_json::Map::new();
                    for (name, raw_name, raw) in fields {
                        assert_eq!(string_value(raw_name), *name, "{text:?}");
                        let parsed: Value = serde_json::from_str(raw).expect("a value's text");
                        seen.insert(name.to_string(), parsed);
                    }
                    assert_eq!(&seen, map, "{text:?}");
                }
                (Element::String(raw), Value::String(s)) => {
                    assert_eq!(string_value(raw), s.as_str(), "{text:?}")
                }
                (Element::Other, v) => assert!(!v.is_object() && !v.is_string(), "{text:?}"),
                (e, v) => panic!("{text:?}: {e:?} against {v:?}"),
            }
        }
    }

    // Goal: the scan takes exactly what serde_json's parse into a `Value` takes (so a stored
    // document can always be read back), and finds the same fields and values.
    #[test]
    fn agrees_with_serde_json() {
        let deep_ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let deep_bad = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let deep_object = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        let long_number = "9".repeat(400);
        let long_fraction = format!("0.{}1", "0".repeat(400));
        let cases = [
            r#"{"_key":"a","n":1,"f":-0.5e-3,"t":true,"x":null,"o":{"p":[1,2,{"q":"r"}]}}"#,
            r#"{"a\"b":"c\\d","\u00e9":"\ud83d\ude00","e":"\/\b\f\n\r\t"}"#,
            r#"[{"a":1}, "key", 5, [], {}, null, "\u0041"]"#,
            r#"  {"a" : 1 , "a" : 2 }  "#,
            "{\"a\":\"é ü ✓ 😀\"}",
            r#"{"x": 1e308, "y": -0.5e-400, "z": 18446744073709551615, "w": -12, "v": 0e99999}"#,
            r#"{"x": 1e400}"#,
            r#"{"x": [1, {"y": -2.5E+309}]}"#,
            r#"{"x": 1e99999999999999999999}"#,
            r#"{"x": 1e-99999999999999999999}"#,
            r#"{"s": "a\\", "x": 1e400}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\udc00"}"#,
            r#"{"s":"\ud800\u0041"}"#,
            r#"{"s":"\ud800x"}"#,
            r#"{"s":"\uZZZZ"}"#,
            r#"{"s":"\u12"}"#,
            r#"{"s":"\q"}"#,
            "{\"s\":\"tab\there\"}",
            "{\"s\":\"nl\nhere\"}",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":+1}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":1}x"#,
            r#"{"a":1} {"b":2}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":[1,2}"#,
            r#"{"a":{"b":1]}"#,
            "",
            "   ",
            "\"just a string\"",
            "42",
            "[]",
            "{}",
            "{",
            "[",
            &deep_ok,
            &deep_bad,
            &deep_object,
            &format!("{{\"n\":{long_number}}}"),
            &format!("{{\"n\":{long_fraction}}}"),
        ];
        for case in cases {
            agree(case);
        }
    }

    // Goal: the same agreement over many damaged documents: every byte of a few documents
    // replaced, removed or duplicated in turn (deterministic, no seed to keep).
    #[test]
    fn agrees_with_serde_json_on_damaged_documents() {
        let seeds = [
            r#"{"_key":"k1","name":{"first":"Ann","last":"O\"Neil"},"n":[1,-2.5,3e5],"ok":true,"z":null,"u":"\u00e9\ud83d\ude00"}"#,
            r#"[{"_key":"a","v":"\\"},"b",12,[{"c":{}}]]"#,
        ];
        let replacements = b"{}[]\",:\\ 0-e.+tfnu\x01\x7fa";
        let mut checked = 0;
        for seed in seeds {
            let bytes = seed.as_bytes();
            for at in 0..bytes.len() {
                let mut variants: Vec<Vec<u8>> = Vec::new();
                for &r in replacements {
                    let mut v = bytes.to_vec();
                    v[at] = r;
                    variants.push(v);
                }
                let mut removed = bytes.to_vec();
                removed.remove(at);
                variants.push(removed);
                let mut doubled = bytes.to_vec();
                doubled.insert(at, bytes[at]);
                variants.push(doubled);
                variants.push(bytes[..at].to_vec());
                for variant in variants {
                    if let Ok(text) = std::str::from_utf8(&variant) {
                        agree(text);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 3000, "{checked}");
    }

    // Goal: errors say what is wrong and where.
    #[test]
    fn errors_name_the_byte() {
        let error = object(r#"{"a":1,"b" 2}"#).expect_err("no colon");
        assert_eq!(error.to_string(), "expected ':' at byte 12");
        let error = object(r#"{"x":  1e400}"#).expect_err("huge");
        assert_eq!(error.to_string(), "number out of range: 1e400 at byte 8");
        let error = object("[1]").expect_err("not an object");
        assert_eq!(error.to_string(), "expected an object at byte 1");
    }
}
