//! The JSON grammar of RFC 8259 §2–7 as a recursive-descent validator that
//! records nothing but positions. Recursion is bounded by [`MAX_DEPTH`].

use std::ops::Range;

use super::{JsonError, MAX_DEPTH};

/// JSON whitespace (RFC 8259 §2).
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Recursive-descent validator over RFC 8259's grammar. Recursion depth is
/// bounded by [`MAX_DEPTH`].
pub(super) struct Scanner<'a> {
    pub(super) b: &'a [u8],
    pub(super) i: usize,
}

impl Scanner<'_> {
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
        self.i += 1;
        let start = self.i;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            // memchr2 is vectorized; the control-character check over the
            // run is a branch-free fold, so long strings scan at SIMD speed.
            let Some(quote_or_escape) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(JsonError::Malformed("unterminated string"));
            };
            let run = &rest[..quote_or_escape];
            let off = if run.iter().fold(false, |any, &b| any | (b < 0x20)) {
                run.iter()
                    .position(|&b| b < 0x20)
                    .unwrap_or(quote_or_escape)
            } else {
                quote_or_escape
            };
            self.i += off;
            match self.next() {
                Some(b'"') => return Ok(start..self.i - 1),
                Some(b'\\') => match self.next() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                    Some(b'u') => {
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
