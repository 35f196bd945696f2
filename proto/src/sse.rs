//! Server-Sent Events framing (WHATWG HTML §9.2.5 "Parsing an event stream",
//! §9.2.6 "Interpreting an event stream").
//!
//! The framer only finds event boundaries; it hands each event out as its raw
//! bytes so a pass-through relay can forward them untouched, and field access
//! ([`SseEvent::data`], [`SseEvent::event_type`]) is lazy and borrows.
//!
//! Invariants:
//! - Lines end in CRLF, LF or CR; an event ends at an empty line. A CR that
//!   is the last byte of a feed is remembered, so an LF opening the next feed
//!   completes that line end instead of being read as an empty line.
//! - Every byte fed belongs to exactly one emitted event or to the pending
//!   tail: concatenating the raw events, then [`SseFramer::finish`], gives
//!   back the stream, however it was split. Empty lines between events come
//!   out as events with no fields (`is_comment_only()`), never silently.
//! - Events that lie wholly inside one `feed` input are not copied; only an
//!   unfinished tail is, and never more than `max_event_bytes` of it.
//!
//! One consequence of the CR rule: an event whose final empty line ends in a
//! lone CR that is also the last byte of a feed is held until the next feed
//! (or [`SseFramer::finish`]) shows whether an LF follows.

use std::borrow::Cow;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SseError {
    #[error("server-sent event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// Splits a byte stream into events. One per stream.
#[derive(Debug)]
pub struct SseFramer {
    max_event_bytes: usize,
    /// Bytes of the unfinished event.
    tail: Vec<u8>,
    /// Nothing of the current line has been seen yet.
    at_line_start: bool,
    /// The last byte fed was a CR ending a line; an LF next belongs to it.
    after_cr: bool,
    /// ... and that CR ended the empty line that completes the event in `tail`.
    event_complete: bool,
    /// What [`SseFramer::finish`] handed out.
    finished: Vec<u8>,
}

/// One event: its bytes INCLUDING its terminating blank line, exactly as
/// received.
#[derive(Clone, Copy, Debug)]
pub struct SseEvent<'a> {
    pub raw: &'a [u8],
}

impl SseFramer {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            tail: Vec::new(),
            at_line_start: true,
            after_cr: false,
            event_complete: false,
            finished: Vec::new(),
        }
    }

    /// Calls `on_event` for each complete event in order. Events wholly inside
    /// `input` (and not continuing a buffered partial) are handed out as
    /// slices of `input`, no copy. Only an incomplete tail is copied into the
    /// framer. After an error the stream is broken; stop feeding.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_event: impl FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        // Start in `input` of the bytes not yet emitted or buffered.
        let mut start = 0;
        let mut i = 0;
        if self.after_cr {
            let Some(&first) = input.first() else {
                return Ok(());
            };
            self.after_cr = false;
            if first == b'\n' {
                i = 1;
            }
            if self.event_complete {
                self.event_complete = false;
                self.emit_tail(&input[..i], &mut on_event)?;
                start = i;
            }
        }
        while i < input.len() {
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &input[i..]) else {
                self.at_line_start = false;
                break;
            };
            let line_end = i + offset;
            let empty_line = self.at_line_start && offset == 0;
            let next = if input[line_end] == b'\n' {
                line_end + 1
            } else {
                match input.get(line_end + 1) {
                    Some(b'\n') => line_end + 2,
                    Some(_) => line_end + 1,
                    None => {
                        // A CR at the end of the input: its LF may come next.
                        self.after_cr = true;
                        self.event_complete = empty_line;
                        line_end + 1
                    }
                }
            };
            i = next;
            self.at_line_start = true;
            if empty_line && !self.after_cr {
                if self.tail.is_empty() {
                    let raw = &input[start..next];
                    self.check_size(raw.len())?;
                    on_event(SseEvent { raw });
                } else {
                    self.emit_tail(&input[start..next], &mut on_event)?;
                }
                start = next;
            }
        }
        let rest = &input[start..];
        if !rest.is_empty() {
            self.check_size(self.tail.len() + rest.len())?;
            self.tail.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Bytes of an unfinished event held at end of stream (None if none).
    /// Per WHATWG §9.2.6 an unfinished event is not dispatched; a relay may
    /// still forward the bytes. This includes an event held only because its
    /// final empty line ended in a lone CR (see the module doc). Resets the
    /// framer for a new stream.
    pub fn finish(&mut self) -> Option<&[u8]> {
        self.at_line_start = true;
        self.after_cr = false;
        self.event_complete = false;
        // Swap rather than take: both buffers keep their capacity.
        std::mem::swap(&mut self.tail, &mut self.finished);
        self.tail.clear();
        if self.finished.is_empty() {
            None
        } else {
            Some(&self.finished)
        }
    }

    /// Bytes buffered for an unfinished event.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    fn emit_tail(
        &mut self,
        end: &[u8],
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        self.check_size(self.tail.len() + end.len())?;
        self.tail.extend_from_slice(end);
        on_event(SseEvent { raw: &self.tail });
        self.tail.clear();
        Ok(())
    }

    fn check_size(&self, len: usize) -> Result<(), SseError> {
        if len > self.max_event_bytes {
            return Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        Ok(())
    }
}

impl<'a> SseEvent<'a> {
    /// Value of the last `event:` field (WHATWG: a missing or empty type
    /// means "message"; that default is left to the caller).
    pub fn event_type(&self) -> Option<&'a [u8]> {
        self.fields()
            .filter(|(name, _)| *name == b"event")
            .last()
            .map(|(_, value)| value)
    }

    /// The `data:` field values joined by `\n` (WHATWG §9.2.6). Borrowed when
    /// there is at most one data line, which is the common case.
    pub fn data(&self) -> Cow<'a, [u8]> {
        let mut data: Option<Cow<'a, [u8]>> = None;
        for (_, value) in self.fields().filter(|(name, _)| *name == b"data") {
            data = Some(match data {
                None => Cow::Borrowed(value),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                    Cow::Owned(joined)
                }
            });
        }
        data.unwrap_or(Cow::Borrowed(&[]))
    }

    /// `data: [DONE]`, the end marker of OpenAI-style streams.
    pub fn is_done(&self) -> bool {
        self.data().as_ref() == b"[DONE]"
    }

    /// No fields at all: only `:` comment lines (keep-alive pings) or
    /// nothing but the blank line.
    pub fn is_comment_only(&self) -> bool {
        self.fields().next().is_none()
    }

    /// (name, value) of each field line, comments and blank lines skipped.
    /// A line without a colon is a field with an empty value; one space after
    /// the colon is not part of the value (WHATWG §9.2.6).
    fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        Lines(self.raw)
            .filter(|line| !line.is_empty() && !line.starts_with(b":"))
            .map(|line| match memchr::memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &[][..]),
            })
    }
}

/// Lines of an event, without their CRLF / LF / CR ends.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let (line, rest) = split_line(self.0);
        self.0 = rest;
        Some(line)
    }
}

/// Splits at the first line end: (line, bytes after its CRLF / LF / CR).
/// Without a line end the whole input is the line.
fn split_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr2(b'\n', b'\r', bytes) {
        None => (bytes, &[]),
        Some(end) => {
            let skip = if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            (&bytes[..end], &bytes[end + skip..])
        }
    }
}

/// Appends one event: `event: x\n` (when given), then one `data:` line per
/// line of `data` (split at CRLF, LF or CR, so the reader's `data()` gives
/// `data` back with LF line ends), then the blank line. Line ends inside
/// `event` are dropped so it cannot inject fields.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend(event.bytes().filter(|&b| b != b'\r' && b != b'\n'));
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let (line, after) = split_line(rest);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
        if after.len() == rest.len() - line.len() {
            // No line end was found: that was the last line.
            break;
        }
        rest = after;
    }
    out.push(b'\n');
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
