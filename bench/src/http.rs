//! The load generator's own HTTP/1.1 response reading: heads on `httparse`,
//! and a tiny chunked decoder (SSE is read by `crate::stream_meter`).
//!
//! Deliberately independent of `shardgate_proto::h1`/`chunked`/`sse`: the
//! measuring tool must not share the gateway's code paths, or a framing bug
//! would hide itself. All of it is sans-IO: handed bytes, it says how many it
//! consumed and whether the message is complete.

use thiserror::Error;

/// Why a response could not be read.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("invalid content-length")]
    ContentLength,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("missing CRLF after chunk data")]
    ChunkData,
}

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs to the end of the connection.
    UntilClose,
}

/// The facts of a response head the load generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub close: bool,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
}

/// Parses a response head at the start of `buf`; `Ok(None)` = need more bytes.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Malformed::Head(httparse_reason(e))),
    };
    let status = res.code.unwrap_or(0);
    let http10 = res.version == Some(0);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    let mut event_stream = false;
    for h in res.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(Malformed::ContentLength)?;
            if content_length.is_some_and(|old| old != v) {
                return Err(Malformed::ContentLength);
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the final coding (RFC 9112 §6.1).
            chunked = last_token_is(h.value, b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, b"close") {
                close = true;
            } else if http10 && has_token(h.value, b"keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = starts_with_ignore_case(h.value, b"text/event-stream");
        }
    }
    // RFC 9112 §6.3: 1xx, 204 and 304 have no body; chunked wins over
    // Content-Length; otherwise the body runs until close.
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
        close,
        event_stream,
    }))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "new line",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "version",
    }
}

fn starts_with_ignore_case(v: &[u8], prefix: &[u8]) -> bool {
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(|t| t.trim_ascii())
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token_is(v: &[u8], token: &[u8]) -> bool {
    tokens(v)
        .filter(|t| !t.is_empty())
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    size_digits: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the chunk size.
    #[default]
    Size,
    /// After the size: optional whitespace and chunk extensions up to CRLF.
    SizeExtension,
    /// Saw CR at the end of the size line.
    SizeLf,
    /// Inside chunk data, `size` bytes left.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR of the final empty line.
    EndLf,
    Done,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes as much of `input` as it can, handing each piece of chunk data
    /// to `on_data`. Returns the bytes consumed: all of `input` unless the
    /// body ended inside it (what follows belongs to the next response).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => {
                    if let Some(d) = hex_value(b) {
                        // Sizes past 2^60 are nonsense for a response body.
                        if self.size_digits >= 15 {
                            return Err(Malformed::ChunkSize);
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.size_digits += 1;
                    } else if self.size_digits == 0 {
                        return Err(Malformed::ChunkSize);
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::SizeExtension;
                    } else {
                        return Err(Malformed::ChunkSize);
                    }
                    i += 1;
                }
                ChunkState::SizeExtension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(Malformed::ChunkSize);
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed::ChunkSize);
                    }
                    i += 1;
                    self.size_digits = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let available = (input.len() - i) as u64;
                    let take = available.min(self.size) as usize;
                    on_data(&input[i..i + take]);
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Malformed::ChunkData);
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed::ChunkData);
                    }
                    i += 1;
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    self.state = match b {
                        b'\r' => ChunkState::EndLf,
                        b'\n' => return Err(Malformed::ChunkData),
                        _ => ChunkState::TrailerLine,
                    };
                }
                ChunkState::TrailerLine => {
                    i += 1;
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(Malformed::ChunkData);
                    }
                    i += 1;
                    self.state = ChunkState::Done;
                    return Ok(i);
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the decoder over `input` split at every position (and byte by
    /// byte) and checks it decodes to `expected` consuming `consumed` bytes.
    fn check_chunked(input: &[u8], expected: &[u8], consumed: usize) {
        let mut splits: Vec<Vec<usize>> = (0..=input.len()).map(|s| vec![s]).collect();
        splits.push((1..input.len()).collect());
        for cuts in splits {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut used = 0;
            let mut prev = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                if d.is_done() {
                    break;
                }
                let n = d
                    .feed(&input[prev..cut], |data| out.extend_from_slice(data))
                    .unwrap();
                used += n;
                prev = cut;
            }
            assert!(d.is_done());
            assert_eq!(out, expected);
            assert_eq!(used, consumed);
        }
    }

    #[test]
    fn chunked_simple() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        check_chunked(body, b"hello world", body.len());
    }

    #[test]
    fn chunked_extensions_trailers_and_leftover() {
        let body = b"A;ext=1\r\n0123456789\r\n1 \r\n!\r\n0\r\nx-trailer: y\r\n\r\nHTTP/1.1 200";
        check_chunked(body, b"0123456789!", body.len() - b"HTTP/1.1 200".len());
        let body = b"0\r\n\r\n";
        check_chunked(body, b"", body.len());
        let body = b"fF\r\n".to_vec();
        let mut full = body.clone();
        full.extend(std::iter::repeat_n(b'x', 255));
        full.extend_from_slice(b"\r\n0\r\n\r\n");
        check_chunked(&full, &[b'x'; 255], full.len());
    }

    #[test]
    fn chunked_rejects_garbage() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello",
            b"2\r\nhiX",
            b"2\r\nhi\rX",
            b"1;ext\n",
            b"0\r\n\n",
            b"1000000000000000\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            assert!(
                d.feed(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_content_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{}";
        let h = parse_response_head(raw).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(12));
        assert_eq!(h.len, raw.len() - 2);
        assert!(!h.close);
        assert!(!h.event_stream);
        for cut in 0..h.len {
            assert_eq!(parse_response_head(&raw[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn head_chunked_event_stream() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n";
        let h = parse_response_head(raw).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.event_stream);
        assert_eq!(h.len, raw.len());
    }

    #[test]
    fn head_close_and_no_body() {
        let h = parse_response_head(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.close);
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(h.close);
        let h = parse_response_head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        let h = parse_response_head(
            b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!h.close);
        let h = parse_response_head(b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::None);
        assert_eq!(h.status, 204);
    }

    #[test]
    fn head_errors() {
        assert!(parse_response_head(b"HTTX/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
        )
        .is_err());
        let h = parse_response_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(2));
    }
}
