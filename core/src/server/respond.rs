//! Building response bytes: one buffer per response, written in one go.

use crate::error::GatewayError;
use shardgate_proto::h1::{write_content_length, write_header, write_status_line};

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
    let mut out = Vec::with_capacity(192 + body.len());
    start(&mut out, status);
    common_headers(&mut out, request_id, close);
    write_header(&mut out, "content-type", content_type);
    for (k, v) in extra {
        write_header(&mut out, k, v);
    }
    write_content_length(&mut out, body.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The head of a chunked event stream.
pub fn stream_head(status: u16, request_id: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    start(&mut out, status);
    common_headers(&mut out, request_id, false);
    write_header(&mut out, "content-type", b"text/event-stream");
    write_header(&mut out, "cache-control", b"no-cache");
    write_header(&mut out, "x-accel-buffering", b"no");
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
}
