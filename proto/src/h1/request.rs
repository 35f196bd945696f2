//! Request heads (RFC 9112 §3) and request body framing (RFC 9112 §6).
//!
//! Strict by design: the gateway sits in front of upstreams whose parsers we
//! do not control, so every head that two parsers could read differently is
//! refused here (bare LF, obs-fold, duplicate or malformed `Content-Length`,
//! `Content-Length` with `Transfer-Encoding`, any coding but `chunked`).

use super::{
    find_end_to_end, find_header, find_headers, from_httparse, list_items, parse_content_length,
    scan_head, span_of, trim_ows, ConnectionTokens, H1Error, HeadLimits, Header, Scan, Span,
    STACK_HEADERS,
};
use std::mem::MaybeUninit;

/// Request method. Methods are case-sensitive (RFC 9110 §9.1), so `get` is
/// [`Method::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Self {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// How the request body is delimited (RFC 9112 §6.3 items 4–6 and 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body (§6.3 item 8).
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding follows (see [`crate::chunked`]).
    Chunked,
}

/// A parsed request head. All spans point into the buffer given to
/// [`parse_request`]; the body starts at `buf[head_len..]`.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The request-target as sent.
    pub target: Span,
    /// The target's path and query, the tail of `target`: all of it in
    /// origin-form, what follows the authority in absolute-form (RFC 9112
    /// §3.2.2; may be empty there, meaning `/`).
    pub origin: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<Header>,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Connection` names some field (see [`RequestHead::end_to_end_header`]).
    pub connection_names_fields: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// Bytes of the head including the blank line that ends it.
    pub head_len: usize,
}

impl RequestHead {
    /// The request-target exactly as sent (origin-form is `/path?query`).
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.target.of(buf)
    }

    /// The path of the request-target, without its `?query` and, in
    /// absolute-form, without scheme and authority (`/` when the URI has no
    /// path, RFC 9112 §3.3).
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let origin = self.origin.of(buf);
        match origin.iter().position(|&b| b == b'?') {
            Some(0) => b"/",
            Some(q) => &origin[..q],
            None if origin.is_empty() => b"/",
            None => origin,
        }
    }

    /// Value of the first header named `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    /// Values of the first headers named each of `names`, in one pass.
    pub fn headers_named<'a, const N: usize>(
        &self,
        buf: &'a [u8],
        names: [&str; N],
    ) -> [Option<&'a [u8]>; N] {
        find_headers(&self.headers, buf, names)
    }

    /// Value of the first header named `name`, unless `Connection` names it
    /// (hop-by-hop, RFC 9110 §7.6.1): what may be forwarded.
    pub fn end_to_end_header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_end_to_end(&self.headers, buf, name, self.connection_names_fields)
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` = need more bytes. Errors once the buffer holds
/// `max_head_bytes` without a complete head. Only the first `max_head_bytes`
/// are ever looked at, so a caller may pass its whole read buffer (head and
/// any pipelined body bytes) every time.
pub fn parse_request(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, H1Error> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let (head, complete) = match scan_head(window, true)? {
        Scan::Complete(n) => (&window[..n], true),
        Scan::Partial => (window, false),
    };
    let parsed = if limits.max_headers <= STACK_HEADERS {
        let mut slots = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        parse_with_slots(head, &mut slots[..limits.max_headers])?
    } else {
        let mut slots = Vec::with_capacity(limits.max_headers);
        parse_with_slots(head, slots.spare_capacity_mut())?
    };
    match parsed {
        Some(head) => Ok(Some(head)),
        // Our scan found the blank line but httparse wants more: never wait
        // for bytes that cannot change the answer.
        None if complete => Err(H1Error::Invalid("unterminated head")),
        None if window.len() >= limits.max_head_bytes => Err(H1Error::HeadTooLarge),
        None => Ok(None),
    }
}

fn parse_with_slots<'b>(
    head: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<RequestHead>, H1Error> {
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(head, slots);
    let head_len = match parsed.map_err(from_httparse)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(H1Error::Invalid("incomplete request line"));
    };
    if minor_version > 1 {
        return Err(H1Error::UnsupportedVersion);
    }

    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length = None;
    let mut transfer_encodings = 0usize;
    let mut transfer_chunked = true;
    let mut hosts = 0usize;
    let mut host: &[u8] = &[];
    let mut connection = ConnectionTokens::default();
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3 item 5 would allow identical repeats; refusing
            // every repeat leaves no room for a parser that disagrees.
            if content_length.is_some() {
                return Err(H1Error::DuplicateContentLength);
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            transfer_chunked &= value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"host") {
            if !valid_host(value) {
                return Err(H1Error::InvalidHost);
            }
            hosts += 1;
            host = value;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.add(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue |= list_items(value).any(|e| e.eq_ignore_ascii_case(b"100-continue"));
        }
        headers.push(Header {
            name: span_of(head, name)?,
            value: span_of(head, value)?,
        });
    }

    // RFC 9112 §6.3 item 3: a request with both is a smuggling attempt until
    // proven otherwise; the server MAY reject it, and we always do.
    let framing = match (content_length, transfer_encodings) {
        (Some(_), 1..) => return Err(H1Error::ContentLengthWithTransferEncoding),
        // RFC 9112 §6.1: TE in an HTTP/1.0 message means faulty framing.
        (None, 1..) if minor_version == 0 => {
            return Err(H1Error::Invalid("Transfer-Encoding in an HTTP/1.0 request"))
        }
        // RFC 9112 §6.3 item 4: chunked must be the final (here: only) coding;
        // we decode no other coding, so anything else is 501 (§6.1).
        (None, 1..) if transfer_encodings == 1 && transfer_chunked => BodyFraming::Chunked,
        (None, 1..) => return Err(H1Error::UnsupportedTransferEncoding),
        (Some(n), _) => BodyFraming::Length(n),
        (None, _) => BodyFraming::Empty,
    };
    // RFC 9112 §3.2: exactly one Host in 1.1; more than one is 400 in any version.
    match hosts {
        0 if minor_version == 1 => return Err(H1Error::MissingHost),
        0 | 1 => {}
        _ => return Err(H1Error::DuplicateHost),
    }
    let target = target.as_bytes();
    let origin = match absolute_form(target) {
        None => target,
        Some((authority, _)) if authority.is_empty() || !valid_host(authority) => {
            return Err(H1Error::InvalidHost)
        }
        Some((authority, _)) if hosts == 1 && !authority.eq_ignore_ascii_case(host) => {
            return Err(H1Error::HostMismatch)
        }
        Some((_, origin)) => origin,
    };

    Ok(Some(RequestHead {
        method: Method::from_token(method),
        target: span_of(head, target)?,
        origin: span_of(head, origin)?,
        minor_version,
        headers,
        framing,
        keep_alive: connection.persistent(minor_version),
        connection_names_fields: connection.names_fields,
        expect_continue: expect_continue && minor_version == 1,
        head_len,
    }))
}

/// An absolute-form target (`http://` or `https://`, RFC 9112 §3.2.2) as
/// its authority and the path and query after it; `None` for every other
/// form, which is then routed as it came (origin-form is the only one
/// served; asterisk- and authority-form find no route).
///
/// The gateway has no virtual hosts: it serves whatever `Host` a request
/// names, so it serves an absolute-form target whatever its authority too,
/// and never forwards to that authority (it is no forward proxy). What it
/// refuses is a request naming two hosts: RFC 9112 §3.2.2 has a server
/// ignore `Host` in favour of the URI, while a front end that routes or
/// caches by `Host` would not, so an authority that differs from `Host`
/// (ASCII case aside; `a` and `a:80` differ) is a 400 rather than a guess.
/// A 421 would invite a retry on another connection that cannot succeed.
fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8])> {
    if target.first() == Some(&b'/') {
        return None;
    }
    let rest = [&b"http://"[..], b"https://"]
        .into_iter()
        .find_map(|scheme| {
            let prefix = target.get(..scheme.len())?;
            prefix
                .eq_ignore_ascii_case(scheme)
                .then(|| &target[scheme.len()..])
        })?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some(rest.split_at(end))
}

/// What a byte may be outside the brackets of an IP-literal (`reg-name`
/// and IPv4address, RFC 3986 §3.2.2): unreserved or sub-delims. Percent
/// encoding is refused though the grammar has it: no DNS name needs it, and
/// a host that decodes to `/` or `@` would read differently elsewhere.
const REG_NAME: [bool; 256] = byte_class(b"-._~!$&'()*+,;=");

/// What a byte may be inside `[...]`: IPv6address and IPvFuture (RFC 3986
/// §3.2.2), i.e. unreserved, sub-delims and `:`.
const IP_LITERAL: [bool; 256] = byte_class(b"-._~!$&'()*+,;=:");

/// ASCII letters and digits plus `extra`.
const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut class = [false; 256];
    let mut b = 0;
    while b < 256 {
        class[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        class[extra[i] as usize] = true;
        i += 1;
    }
    class
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2), in one pass over the
/// value. Anything else, userinfo (`@`), a path (`/`), whitespace, control
/// or non-ASCII bytes, is invalid and a 400 (RFC 9112 §3.2): a front end
/// and the gateway must never disagree on which host a request named. An
/// empty value is valid (§3.2: the target carries no authority); an empty
/// host before a port is not (RFC 9110 §4.2.1).
fn valid_host(value: &[u8]) -> bool {
    enum At {
        Start,
        Name,
        Open,
        Literal,
        LiteralEnd,
        Port,
    }
    let mut at = At::Start;
    for &b in value {
        at = match (at, b) {
            (At::Start, b'[') => At::Open,
            (At::Start | At::Name, _) if REG_NAME[usize::from(b)] => At::Name,
            (At::Name | At::LiteralEnd, b':') => At::Port,
            (At::Literal, b']') => At::LiteralEnd,
            (At::Open | At::Literal, _) if IP_LITERAL[usize::from(b)] => At::Literal,
            (At::Port, b'0'..=b'9') => At::Port,
            _ => return false,
        };
    }
    !matches!(at, At::Open | At::Literal)
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
