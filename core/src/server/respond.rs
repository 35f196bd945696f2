//! Building response bytes: one buffer per response, written in one go.

use crate::error::GatewayError;
use shardgate_proto::h1::{write_content_length, write_header, write_status_line, Method};

pub const SERVER: &[u8] = b"shardgate";

/// The status line and the `server` header; nearly every response is a
/// 200, whose start is one constant.
fn start(out: &mut Vec<u8>, status: u16) {
    if status == 200 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nserver: shardgate\r\n");
    } else {
        write_status_line(out, status);
        write_header(out, "server", SERVER);
    }
}

fn common_headers(out: &mut Vec<u8>, request_id: &str, close: bool) {
    if !request_id.is_empty() {
        write_header(out, "x-request-id", request_id.as_bytes());
    }
    if close {
        write_header(out, "connection", b"close");
    }
}

/// A complete response with a `Content-Length` body.
pub fn full(
    status: u16,
    content_type: &[u8],
    extra: &[(&str, &[u8])],
    body: &[u8],
    request_id: &str,
    close: bool,
) -> Vec<u8> {
    full_with(status, content_type, &[], extra, body, request_id, close)
}

/// [`full`] with `lines`: header lines rendered once from config
/// (`name: value\r\n` each, already sanitized), copied as they are.
pub fn full_with(
    status: u16,
    content_type: &[u8],
    lines: &[&[u8]],
    extra: &[(&str, &[u8])],
    body: &[u8],
    request_id: &str,
    close: bool,
) -> Vec<u8> {
    // Sized for everything written below, so the body is copied once (a
    // guess from the body alone grew the buffer, copying it again, on
    // every response that carried header lines).
    let headers = lines.iter().map(|l| l.len()).sum::<usize>()
        + extra
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    let cap = 160 + request_id.len() + content_type.len() + headers + body.len();
    let mut out = Vec::with_capacity(cap);
    start(&mut out, status);
    common_headers(&mut out, request_id, close);
    write_header(&mut out, "content-type", content_type);
    for l in lines {
        out.extend_from_slice(l);
    }
    for (k, v) in extra {
        write_header(&mut out, k, v);
    }
    write_content_length(&mut out, body.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    debug_assert!(
        out.len() <= cap,
        "{} bytes past the estimate",
        out.len() - cap
    );
    out
}

/// The head of a chunked event stream.
pub fn stream_head(status: u16, request_id: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    stream_head_with(status, request_id, &[], extra)
}

/// [`stream_head`] with pre-rendered header `lines` (see [`full_with`]).
pub fn stream_head_with(
    status: u16,
    request_id: &str,
    lines: &[&[u8]],
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    start(&mut out, status);
    common_headers(&mut out, request_id, false);
    write_header(&mut out, "content-type", b"text/event-stream");
    write_header(&mut out, "cache-control", b"no-cache");
    write_header(&mut out, "x-accel-buffering", b"no");
    for l in lines {
        out.extend_from_slice(l);
    }
    for (k, v) in extra {
        write_header(&mut out, k, v);
    }
    write_header(&mut out, "transfer-encoding", b"chunked");
    out.extend_from_slice(b"\r\n");
    out
}

/// An error in OpenAI's shape with its status.
pub fn error(err: &GatewayError, request_id: &str, close: bool) -> Vec<u8> {
    full(
        err.status(),
        b"application/json",
        &[],
        &err.openai_body(),
        request_id,
        close,
    )
}

pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What of a response reaches a client that asked with HEAD: the head, with
/// the `content-length` (or `transfer-encoding`) the GET would have, and
/// nothing after the blank line that ends it (RFC 9110 §9.3.2). The client
/// reads no body after a HEAD response (RFC 9112 §6.3 item 1), so any byte
/// of one would be read as the next response. Applied to every byte written
/// to the client (`ClientConn::write`), so no route builds HEAD answers of
/// its own; interim (1xx) responses do not pass through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadOnly {
    /// Not a HEAD request: everything goes out.
    Off,
    /// In the head; this many bytes of its closing CRLF CRLF have gone out.
    InHead(u8),
    /// The head has gone out; the rest of the response is dropped.
    Done,
}

impl HeadOnly {
    pub fn for_method(method: Method) -> Self {
        if method == Method::Head {
            HeadOnly::InHead(0)
        } else {
            HeadOnly::Off
        }
    }

    /// The front of `bytes` that goes out; the state carries over to the
    /// next write, wherever the writes split the response.
    pub fn filter<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        let HeadOnly::InHead(mut seen) = *self else {
            return if *self == HeadOnly::Off { bytes } else { &[] };
        };
        for (i, &b) in bytes.iter().enumerate() {
            seen = match (seen, b) {
                (0 | 2, b'\r') | (1 | 3, b'\n') => seen + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if seen == 4 {
                *self = HeadOnly::Done;
                return &bytes[..=i];
            }
        }
        *self = HeadOnly::InHead(seen);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_200_starts_as_any_other_status_would() {
        for status in [200, 404, 503] {
            let mut fast = Vec::new();
            start(&mut fast, status);
            let mut slow = Vec::new();
            write_status_line(&mut slow, status);
            write_header(&mut slow, "server", SERVER);
            assert_eq!(fast, slow);
        }
    }

    /// What goes out of `writes` to a HEAD request.
    fn head_only(writes: &[&[u8]]) -> Vec<u8> {
        let mut filter = HeadOnly::for_method(Method::Head);
        writes
            .iter()
            .flat_map(|w| filter.filter(w).to_vec())
            .collect()
    }

    #[test]
    fn a_head_response_is_its_head_however_the_writes_split_it() {
        let response = full(
            200,
            b"application/json",
            &[],
            br#"{"status":"ok"}"#,
            "r1",
            false,
        );
        let head_len = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(std::str::from_utf8(&response[..head_len])
            .unwrap()
            .contains("content-length: 15\r\n"));
        let mut stream = stream_head(200, "r1", &[]);
        let stream_len = stream.len();
        stream.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        for (bytes, head_len) in [(&response, head_len), (&stream, stream_len)] {
            assert_eq!(head_only(&[bytes]), &bytes[..head_len]);
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(head_only(&[a, b, b"more"]), &bytes[..head_len], "{cut}");
            }
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(head_only(&bytewise), &bytes[..head_len]);
        }
    }

    #[test]
    fn a_line_end_inside_the_head_does_not_end_it() {
        assert_eq!(
            head_only(&[b"HTTP/1.1 200 OK\r\na: b\r\r\n\n\r\nc: d\r\n\r\nbody"]),
            b"HTTP/1.1 200 OK\r\na: b\r\r\n\n\r\nc: d\r\n\r\n"
        );
    }

    #[test]
    fn other_methods_get_everything() {
        for method in [Method::Get, Method::Post] {
            let mut filter = HeadOnly::for_method(method);
            assert_eq!(
                filter.filter(b"HTTP/1.1 200 OK\r\n\r\nbody"),
                b"HTTP/1.1 200 OK\r\n\r\nbody"
            );
            assert_eq!(filter.filter(b"more"), b"more");
        }
    }
}
