//! Writing HTTP/1.1 heads (RFC 9112 §4, §5). Append-only into a caller's
//! `Vec<u8>`, which is reused across messages, so writing a head allocates
//! nothing once the buffer has grown.
//!
//! Invariant: nothing written here can end a line early. CR, LF and NUL in
//! names and values (which would allow response splitting, RFC 9110 §5.5)
//! are replaced by SP.

use crate::swar;

/// The canonical reason phrase (RFC 9110 §15), or `""` for unknown codes; the
/// phrase is informational only (RFC 9112 §4), so an empty one is valid.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// `HTTP/1.1 <status> <reason>\r\n`. Statuses outside 100..=999 are written
/// as 500 so the line is always well formed (status-code = 3DIGIT).
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n`.
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    write_sanitized(out, name.as_bytes());
    out.extend_from_slice(b": ");
    write_sanitized(out, value);
    out.extend_from_slice(b"\r\n");
}

/// `content-length: N\r\n`, without allocating.
pub fn write_content_length(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(b"content-length: ");
    write_decimal(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

fn write_sanitized(out: &mut Vec<u8>, bytes: &[u8]) {
    if !has_line_break(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    out.extend(bytes.iter().map(|&b| if is_break(b) { b' ' } else { b }));
}

fn is_break(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | 0)
}

/// Whether `bytes` hold a CR, LF or NUL, eight bytes at a time: all three
/// are below 0x0e, and a word with no byte below 0x0e is clean, so only a
/// word that might hold one (a tab does too) is looked at byte by byte.
/// Headers are written for every response: a byte loop was a tenth of the
/// gateway's own time per request.
fn has_line_break(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        if swar::below(swar::word(word), 0x0e) != 0 && word.iter().any(|&b| is_break(b)) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| is_break(b))
}

/// Decimal digits of `n` through a stack buffer (u64::MAX has 20 digits).
pub(crate) fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        let mut out = Vec::new();
        write_status_line(&mut out, 200);
        write_status_line(&mut out, 429);
        write_status_line(&mut out, 599);
        write_status_line(&mut out, 42);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nHTTP/1.1 429 Too Many Requests\r\nHTTP/1.1 599 \r\nHTTP/1.1 500 Internal Server Error\r\n"
        );
    }

    #[test]
    fn every_error_status_of_the_gateway_has_a_phrase() {
        for s in [
            400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 501, 502, 503, 504, 505,
        ] {
            assert!(!reason_phrase(s).is_empty(), "{s}");
        }
    }

    #[test]
    fn header_and_injection() {
        let mut out = Vec::new();
        write_header(&mut out, "x-a", b"1");
        write_header(&mut out, "x-b", b"evil\r\nset-cookie: a\0");
        assert_eq!(out, b"x-a: 1\r\nx-b: evil  set-cookie: a \r\n");
    }

    #[test]
    fn the_word_check_finds_every_break_anywhere() {
        for len in 1..=24 {
            for at in 0..len {
                for fill in [b'a', b'\t', 0x0e, 0xff] {
                    for b in 0..=255u8 {
                        let mut bytes = vec![fill; len];
                        bytes[at] = b;
                        assert_eq!(has_line_break(&bytes), is_break(b), "{bytes:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn content_length_digits() {
        for n in [0usize, 7, 10, 99, 100, 123_456_789, usize::MAX] {
            let mut out = Vec::new();
            write_content_length(&mut out, n);
            assert_eq!(out, format!("content-length: {n}\r\n").into_bytes());
        }
    }

    #[test]
    fn decimal_u64_max() {
        let mut out = Vec::new();
        write_decimal(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }
}
