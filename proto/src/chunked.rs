//! Chunked transfer coding (RFC 9112 §7.1), decoding and encoding.
//!
//! The decoder is a byte-driven state machine that never asks for bytes
//! twice: a size line, a CRLF or a trailer section split across reads is
//! carried in a few words of state, and body data is handed back as a range
//! into the caller's input (zero-copy). Only the framing bytes are looked at
//! one by one; data is skipped in bulk.
//!
//! Strictness (anti-smuggling, like the head parser): every line ends in CRLF
//! (a bare LF is an error, not a line end), chunk sizes are 1*HEXDIG with an
//! overflow check, only BWS may sit between the size and `;`, and the size
//! line and trailer section are bounded so a peer cannot make us buffer or
//! scan without limit. Extensions and trailers are skipped, never interpreted.
//!
//! Invariants: `decode` consumes at most `input.len()` bytes, its data range
//! lies within the consumed prefix, and it consumes nothing once done (bytes
//! after the final CRLF belong to the next message). A call with non-empty
//! input consumes at least one byte unless the decoder is done or failed.
//! Errors are sticky; an error found after data in the same call is
//! reported by the next call, so the data is not lost.

use std::ops::Range;

/// Bounds on the parts of the coding that are not data.
#[derive(Clone, Copy, Debug)]
pub struct ChunkedLimits {
    /// Longest chunk-size line (size and extensions, without CRLF).
    pub max_line_bytes: usize,
    /// Largest trailer section, including its CRLFs.
    pub max_trailer_bytes: usize,
}

impl Default for ChunkedLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 4096,
            max_trailer_bytes: 16384,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    InvalidSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk size line longer than the limit")]
    LineTooLong,
    #[error("trailer section larger than the limit")]
    TrailersTooLarge,
    #[error("expected CRLF")]
    MissingCrlf,
    #[error("bare LF where CRLF is required")]
    BareLf,
}

/// One step of decoding: `input[..consumed]` was used up, and
/// `input[data]` is body data (possibly empty) found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub consumed: usize,
    pub data: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size,
    /// BWS after the size, before `;` or CR.
    SizeWs,
    /// Inside chunk extensions, until CR.
    Ext,
    /// CR of the size line seen.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Data ended; CRLF must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
    Failed(ChunkedError),
}

/// Decoder for one chunked body. Create one per message.
#[derive(Debug)]
pub struct ChunkedDecoder {
    limits: ChunkedLimits,
    state: State,
    /// Size being read, or data left in the current chunk.
    size: u64,
    /// Bytes of the current size line, or of the trailer section.
    line_len: usize,
}

impl ChunkedDecoder {
    pub fn new(limits: ChunkedLimits) -> Self {
        Self {
            limits,
            state: State::Size,
            size: 0,
            line_len: 0,
        }
    }

    /// Decode from `input`: returns bytes consumed and the range (within
    /// `input`) of body data found (possibly empty). Zero-copy: data is a
    /// sub-slice of input. Call again on `&input[consumed..]` while
    /// `consumed > 0`; `consumed == 0` means more input is needed (or
    /// [`is_done`](Self::is_done)).
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkedError> {
        let mut i = 0;
        let mut data = 0..0;
        while i < input.len() {
            // The framing of nearly every chunk, read whole rather than a
            // byte a step: a bare `hex CRLF` size line, and the CRLF after
            // the data. Anything else takes the steps below.
            match self.state {
                State::Size if self.line_len == 0 => {
                    if let Some((size, used)) = size_line(&input[i..], self.limits.max_line_bytes) {
                        self.size = size;
                        self.state = if size == 0 {
                            State::TrailerStart
                        } else {
                            State::Data
                        };
                        i += used;
                        continue;
                    }
                }
                State::DataCr if input[i..].starts_with(CHUNK_END) => {
                    self.state = State::Size;
                    i += CHUNK_END.len();
                    continue;
                }
                _ => {}
            }
            match self.state {
                State::Data => {
                    // One contiguous range per call: stop at a second chunk.
                    if !data.is_empty() {
                        break;
                    }
                    let available = (input.len() - i) as u64;
                    let n = self.size.min(available) as usize;
                    data = i..i + n;
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::Done => break,
                State::Failed(ref e) => return Err(e.clone()),
                _ => {
                    if let Err(e) = self.step(input[i]) {
                        self.state = State::Failed(e.clone());
                        // Data already found stays valid; the error comes
                        // with the next call, so how the input was split
                        // never changes which body bytes are delivered.
                        if data.is_empty() {
                            return Err(e);
                        }
                        break;
                    }
                    i += 1;
                }
            }
        }
        Ok(Decoded { consumed: i, data })
    }

    /// True after the last chunk and the trailer section's final CRLF.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances over one framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size => match hex_value(b) {
                Some(d) => {
                    self.count_line()?;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .ok_or(ChunkedError::SizeOverflow)?;
                    State::Size
                }
                // chunk-size = 1*HEXDIG
                None if self.line_len == 0 => return Err(ChunkedError::InvalidSize),
                None => return self.after_size(b),
            },
            State::SizeWs => return self.after_size(b),
            State::Ext => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError::BareLf),
                _ => {
                    self.count_line()?;
                    State::Ext
                }
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => {
                    // last-chunk: the trailer section follows.
                    self.line_len = 0;
                    State::TrailerStart
                }
                b'\n' => {
                    self.line_len = 0;
                    State::Data
                }
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                b'\n' => return Err(ChunkedError::BareLf),
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match b {
                b'\n' => State::Size,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(ChunkedError::BareLf),
                _ => {
                    self.count_trailer()?;
                    State::Trailer
                }
            },
            State::Trailer => {
                self.count_trailer()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkedError::BareLf),
                    _ => State::Trailer,
                }
            }
            State::TrailerLf => {
                self.count_trailer()?;
                match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkedError::MissingCrlf),
                }
            }
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkedError::MissingCrlf),
            },
            // Data, Done and Failed are handled by `decode`.
            State::Data | State::Done | State::Failed(_) => return Ok(()),
        };
        Ok(())
    }

    /// After the size digits: `chunk-ext = *( BWS ";" ... )`, then CRLF.
    fn after_size(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match b {
            b' ' | b'\t' => {
                self.count_line()?;
                State::SizeWs
            }
            b';' => {
                self.count_line()?;
                State::Ext
            }
            b'\r' => State::SizeLf,
            b'\n' => return Err(ChunkedError::BareLf),
            _ => return Err(ChunkedError::InvalidSize),
        };
        Ok(())
    }

    fn count_line(&mut self) -> Result<(), ChunkedError> {
        self.line_len += 1;
        if self.line_len > self.limits.max_line_bytes {
            return Err(ChunkedError::LineTooLong);
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkedError> {
        // The final CRLF is not counted, so an empty trailer section always fits.
        self.line_len += 1;
        if self.line_len > self.limits.max_trailer_bytes {
            return Err(ChunkedError::TrailersTooLarge);
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends a chunk header: `len` in lowercase hex, then CRLF. Write the data
/// and [`CHUNK_END`] after it. `len` must not be 0: a zero size is the last
/// chunk, written with [`LAST_CHUNK`].
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len as u64;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// A size line of hex digits and CRLF alone: the size and the bytes the
/// line takes. None for anything else (extensions, whitespace, a line cut
/// short, more digits than 64 bits hold or the limit allows), which the
/// byte steps read or refuse.
fn size_line(rest: &[u8], max_line: usize) -> Option<(u64, usize)> {
    let digits = rest
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 || digits > max_line || rest.get(digits..digits + 2) != Some(CHUNK_END) {
        return None;
    }
    let size = rest[..digits]
        .iter()
        .try_fold(0u64, |n, &b| Some(n << 4 | u64::from(hex_value(b)?)))?;
    Some((size, digits + 2))
}

/// Ends a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk with an empty trailer section: ends the body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// In bytes this side encoded (whole chunks, as [`encode_chunk_header`]
/// writes them), the chunk at `at`: its data, where the next starts, and
/// whether it is the last chunk. `None` where `buf[at..]` is not a whole
/// chunk.
pub fn next_chunk(buf: &[u8], at: usize) -> Option<(&[u8], usize, bool)> {
    let rest = buf.get(at..)?;
    if rest.starts_with(LAST_CHUNK) {
        return Some((&[], buf.len(), true));
    }
    let line_end = at + rest.windows(2).position(|w| w == b"\r\n")?;
    let len = usize::from_str_radix(std::str::from_utf8(&buf[at..line_end]).ok()?, 16).ok()?;
    let start = line_end + 2;
    let end = start.checked_add(len)?;
    if end.checked_add(2)? > buf.len() || &buf[end..end + 2] != CHUNK_END {
        return None;
    }
    Some((&buf[start..end], end + 2, false))
}

#[cfg(test)]
#[path = "chunked_tests.rs"]
mod tests;
