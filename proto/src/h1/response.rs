//! Response heads (RFC 9112 §4) and response body framing (RFC 9112 §6.3).
//!
//! Responses come from upstreams we chose, so the parser takes what RFC 9112
//! lets a recipient take (bare LF line ends, identical repeated
//! `Content-Length`, codings before `chunked`), but resolves every framing
//! ambiguity to the reading that cannot desynchronise the connection: when in
//! doubt the connection is not reused (`keep_alive = false`).

use super::{
    find_end_to_end, find_header, from_httparse, list_items, parse_content_length, scan_head,
    span_of, trim_ows, ConnectionTokens, H1Error, HeadLimits, Header, Method, Scan, Span,
    STACK_HEADERS,
};
use std::mem::MaybeUninit;

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD request, 1xx, 204, 304 (§6.3 item 1).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes (§6.3 items 4 and 8); never reusable.
    UntilClose,
}

/// A parsed response head; spans point into the buffer given to
/// [`parse_response`].
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Span,
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub framing: ResponseFraming,
    /// Whether the upstream connection may be reused after this body.
    pub keep_alive: bool,
    /// `Connection` names some field (see [`ResponseHead::end_to_end_header`]).
    pub connection_names_fields: bool,
    pub head_len: usize,
}

impl ResponseHead {
    /// Value of the first header named `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    /// Value of the first header named `name`, unless `Connection` names it
    /// (hop-by-hop, RFC 9110 §7.6.1): what may be forwarded.
    pub fn end_to_end_header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_end_to_end(&self.headers, buf, name, self.connection_names_fields)
    }

    /// 1xx: an interim response; the final one follows on the same connection.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses a response head from the start of `buf`. `request_method` decides
/// framing per RFC 9112 §6.3 (HEAD, 1xx, 204, 304 have no body).
///
/// `Ok(None)` = need more bytes; errors once `max_head_bytes` are buffered
/// without a complete head.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
    request_method: Method,
) -> Result<Option<ResponseHead>, H1Error> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let (head, complete) = match scan_head(window, false)? {
        Scan::Complete(n) => (&window[..n], true),
        Scan::Partial => (window, false),
    };
    let parsed = if limits.max_headers <= STACK_HEADERS {
        let mut slots = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        parse_with_slots(head, &mut slots[..limits.max_headers], request_method)?
    } else {
        let mut slots = Vec::with_capacity(limits.max_headers);
        parse_with_slots(head, slots.spare_capacity_mut(), request_method)?
    };
    match parsed {
        Some(head) => Ok(Some(head)),
        None if complete => Err(H1Error::Invalid("unterminated head")),
        None if window.len() >= limits.max_head_bytes => Err(H1Error::HeadTooLarge),
        None => Ok(None),
    }
}

fn parse_with_slots<'b>(
    head: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    request_method: Method,
) -> Result<Option<ResponseHead>, H1Error> {
    let mut res = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, head, slots);
    let head_len = match parsed.map_err(from_httparse)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(minor_version), Some(status)) = (res.version, res.code) else {
        return Err(H1Error::Invalid("incomplete status line"));
    };
    if minor_version > 1 {
        return Err(H1Error::UnsupportedVersion);
    }

    let mut headers = Vec::with_capacity(res.headers.len());
    let mut content_length: Option<Result<u64, H1Error>> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut connection = ConnectionTokens::default();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = Some(merge_content_length(content_length, value));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Codings apply in order across repeated fields (RFC 9110 §5.3);
            // only whether chunked is the last one matters for framing.
            transfer_encoding = true;
            if let Some(last) = list_items(value).last() {
                chunked_last = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.add(value);
        }
        headers.push(Header {
            name: span_of(head, name)?,
            value: span_of(head, value)?,
        });
    }

    let mut keep_alive = connection.persistent(minor_version);
    let no_body = request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let framing = if no_body {
        // §6.3 item 1: these never have a body, whatever the fields say.
        ResponseFraming::Empty
    } else if transfer_encoding {
        // §6.3 item 3: Transfer-Encoding overrides Content-Length, but such a
        // message "ought to be handled as an error": never reuse the
        // connection. §6.1: TE in an HTTP/1.0 message is faulty framing.
        if content_length.is_some() || minor_version == 0 {
            keep_alive = false;
        }
        if chunked_last {
            ResponseFraming::Chunked
        } else {
            // §6.3 item 4: chunked not final → read until close.
            keep_alive = false;
            ResponseFraming::UntilClose
        }
    } else if let Some(length) = content_length {
        // §6.3 item 5: an invalid length is unrecoverable.
        ResponseFraming::Length(length?)
    } else {
        // §6.3 item 8.
        keep_alive = false;
        ResponseFraming::UntilClose
    };

    Ok(Some(ResponseHead {
        status,
        reason: span_of(head, res.reason.unwrap_or_default().as_bytes())?,
        minor_version,
        headers,
        framing,
        keep_alive,
        connection_names_fields: connection.names_fields,
        head_len,
    }))
}

/// RFC 9112 §6.3 item 5: a recipient may accept a list or repeated fields
/// when all values are the same valid number; differing values are an error.
/// Errors are kept (not returned) because a Transfer-Encoding may yet make
/// Content-Length irrelevant.
fn merge_content_length(
    previous: Option<Result<u64, H1Error>>,
    value: &[u8],
) -> Result<u64, H1Error> {
    let mut acc = match previous {
        Some(Err(e)) => return Err(e),
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let mut items = 0;
    for item in value.split(|&b| b == b',') {
        items += 1;
        let n = parse_content_length(trim_ows(item))?;
        match acc {
            Some(prev) if prev != n => return Err(H1Error::DuplicateContentLength),
            _ => acc = Some(n),
        }
    }
    match acc {
        Some(n) if items > 0 => Ok(n),
        _ => Err(H1Error::InvalidContentLength),
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
