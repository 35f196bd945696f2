//! HTTP/1.1 response framing and small JSON writers shared by every dialect.
//!
//! Everything appends to a caller's buffer; nothing here allocates a second
//! buffer or does IO.

use std::io::Write as _;

/// Reason phrase for the statuses the mock sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        424 => "Failed Dependency",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Mock",
    }
}

/// A Content-Length response head; `extra` headers go after the fixed ones.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    len: usize,
    close: bool,
    extra: &[(&str, &str)],
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\n",
        reason(status)
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The head of a chunked streaming answer (RFC 9112 §7.1).
pub fn write_stream_head(out: &mut Vec<u8>, content_type: &str, close: bool) {
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One HTTP chunk (RFC 9112 §7.1): hex size, CRLF, data, CRLF. Empty data
/// is skipped (a zero-size chunk would end the body).
pub fn frame_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `s` as a quoted, escaped JSON string.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `n` in decimal.
pub fn num(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "{n}");
}

/// One SSE event with an `event:` name (Anthropic style).
pub fn named_event(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

/// One `data:`-only SSE event (OpenAI and Gemini style).
pub fn data_event(out: &mut Vec<u8>, data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"data: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

/// Decodes `%XX` escapes (a Bedrock model id such as
/// `anthropic.claude-3-haiku-20240307-v1%3A0`); `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !s.contains('%') {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_heads() {
        let mut out = Vec::new();
        frame_chunk(&mut out, &[b'x'; 300]);
        assert!(out.starts_with(b"12c\r\nxxx"));
        assert!(out.ends_with(b"x\r\n"));
        let mut out = Vec::new();
        frame_chunk(&mut out, b"");
        assert!(out.is_empty());
        write_head(&mut out, 429, "application/json", 2, true, &[("x-a", "b")]);
        assert_eq!(
            out,
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-a: b\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("anthropic.claude-3-haiku-20240307-v1%3A0").as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2").as_deref(), None);
        assert_eq!(percent_decode("bad%zz").as_deref(), None);
    }
}
