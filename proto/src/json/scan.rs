//! The JSON grammar of RFC 8259 §2–7 as a recursive-descent validator that
//! records nothing but positions. Recursion is bounded by [`MAX_DEPTH`].

use std::ops::Range;

use super::{JsonError, MAX_DEPTH};
use crate::swar;

/// JSON whitespace (RFC 8259 §2).
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where a string's plain run ends: the first `"`, `\\` or control
/// character in `rest`, or `None` when there is none (the string does not
/// end).
///
/// Most strings in a request body are a few bytes (keys, roles, model
/// names), so the first 32 bytes are searched eight at a time with word
/// arithmetic ([`swar`]), which needs no call or setup; longer strings
/// (message content) go on with SIMD memchr2 and a vectorised control check.
pub(super) fn plain_run(rest: &[u8]) -> Option<usize> {
    let short = rest.len().min(32) & !7;
    let mut i = 0;
    while i < short {
        let w = swar::word(&rest[i..i + 8]);
        let hits = swar::equal(w, b'"') | swar::equal(w, b'\\') | swar::below(w, 0x20);
        if hits != 0 {
            return Some(i + swar::first(hits));
        }
        i += 8;
    }
    let tail = &rest[i..];
    if tail.len() < 8 {
        return tail
            .iter()
            .position(|&b| matches!(b, b'"' | b'\\') || b < 0x20)
            .map(|p| i + p);
    }
    let stop = memchr::memchr2(b'"', b'\\', tail);
    let run = &tail[..stop.unwrap_or(tail.len())];
    // A branch-free fold, so long runs are checked at SIMD speed.
    if run.iter().fold(false, |any, &b| any | (b < 0x20)) {
        return run.iter().position(|&b| b < 0x20).map(|p| i + p);
    }
    stop.map(|p| i + p)
}

/// Recursive-descent validator over RFC 8259's grammar. Recursion depth is
/// bounded by [`MAX_DEPTH`].
pub(super) struct Scanner<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
    /// Met what the grammar allows but a strict reader may refuse: a
    /// `\u` escape (a lone surrogate is one), a number with an exponent
    /// or hundreds of digits (past f64's range is one), nesting within one
    /// level of [`MAX_DEPTH`]. A caller that must read exactly what
    /// serde_json reads sends such text to it instead.
    pub(super) unusual: bool,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            i: 0,
            unusual: false,
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(super) fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    pub(super) fn ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    pub(super) fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), JsonError> {
        if self.next() == Some(byte) {
            Ok(())
        } else {
            Err(JsonError::Malformed(what))
        }
    }

    pub(super) fn value(&mut self, depth: usize) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH - 1 && matches!(self.peek(), Some(b'{' | b'[')) {
            self.unusual = true;
        }
        match self.peek() {
            Some(b'{' | b'[') if depth > MAX_DEPTH => Err(JsonError::TooDeep),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err(JsonError::Malformed("expected a value")),
            None => Err(JsonError::Malformed("unexpected end")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), JsonError> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(JsonError::Malformed("expected a member name"));
            }
            self.string()?;
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            self.value(depth + 1)?;
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b'}') => return Ok(()),
                _ => return Err(JsonError::Malformed("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), JsonError> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth + 1)?;
            self.ws();
            match self.next() {
                Some(b',') => continue,
                Some(b']') => return Ok(()),
                _ => return Err(JsonError::Malformed("expected ',' or ']'")),
            }
        }
    }

    /// At `"`: skips the string and returns the range between its quotes.
    pub(super) fn string(&mut self) -> Result<Range<usize>, JsonError> {
        self.string_escaped().map(|(range, _)| range)
    }

    /// [`Self::string`], and whether the string holds an escape.
    pub(super) fn string_escaped(&mut self) -> Result<(Range<usize>, bool), JsonError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            let Some(off) = plain_run(rest) else {
                return Err(JsonError::Malformed("unterminated string"));
            };
            self.i += off;
            match self.next() {
                Some(b'"') => return Ok((start..self.i - 1, escaped)),
                Some(b'\\') => match self.next() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => escaped = true,
                    Some(b'u') => {
                        escaped = true;
                        self.unusual = true;
                        for _ in 0..4 {
                            if !self.next().is_some_and(|b| b.is_ascii_hexdigit()) {
                                return Err(JsonError::Malformed("bad \\u escape"));
                            }
                        }
                    }
                    _ => return Err(JsonError::Malformed("bad escape")),
                },
                _ => return Err(JsonError::Malformed("control character in string")),
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(JsonError::Malformed("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.one_or_more_digits()?;
            self.unusual = true;
        }
        if self.i - start > 300 {
            self.unusual = true;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        self.digits();
        if self.i == start {
            return Err(JsonError::Malformed("bad number"));
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(JsonError::Malformed("bad literal"))
        }
    }
}
