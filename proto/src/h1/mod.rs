//! HTTP/1.1 message heads (RFC 9112) on top of `httparse`.
//!
//! The parsers are sans-IO: they are handed the bytes received so far and
//! answer `Ok(None)` ("need more") until the whole head is there. They never
//! copy the head: every name, value and target is a [`Span`] into the caller's
//! buffer, so a parsed head is a few dozen bytes plus one `Vec` per message.
//!
//! Requests come from the open internet and are parsed strictly (bare LF,
//! obs-fold, ambiguous `Content-Length`/`Transfer-Encoding` are errors) because
//! any leniency that an upstream does not share is a request-smuggling hole.
//! Responses come from providers and are parsed as leniently as RFC 9112
//! permits, but framing conflicts still resolve to the safe reading.
//!
//! Invariants: every `Span` in a returned head lies within
//! `buf[..head_len]`; `head_len <= limits.max_head_bytes`.

mod request;
mod response;
mod write;

pub use request::{parse_request, BodyFraming, Method, RequestHead};
pub use response::{parse_response, ResponseFraming, ResponseHead};
pub use write::{reason_phrase, write_content_length, write_header, write_status_line};

/// Byte range into the buffer the head was parsed from (u32 keeps heads small).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes this span covers. Returns an empty slice rather than
    /// panicking when handed a buffer the span does not belong to.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// One header field: both spans point into the parsed buffer. The value has
/// optional whitespace (OWS, RFC 9110 §5.5) trimmed at both ends.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name: Span,
    pub value: Span,
}

/// Bounds on a head; both limits answer 431 when exceeded.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest head (request/status line + fields + blank line) accepted.
    pub max_head_bytes: usize,
    /// Most header fields accepted.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 32 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a head was refused. [`H1Error::status`] gives the response code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum H1Error {
    #[error("message head larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyHeaders,
    #[error("malformed message head: {0}")]
    Invalid(&'static str),
    #[error("line ends in a bare LF; CRLF is required")]
    BareLf,
    #[error("obsolete line folding in a header field")]
    ObsFold,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("unsupported Transfer-Encoding (only `chunked` is accepted)")]
    UnsupportedTransferEncoding,
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host")]
    DuplicateHost,
    #[error("invalid Host (RFC 9110 §7.2: host and optional port only)")]
    InvalidHost,
    #[error("Host differs from the authority of the absolute-form request-target")]
    HostMismatch,
}

impl H1Error {
    /// The status to answer a client with (RFC 9110 §15, RFC 6585 §5).
    pub fn status(&self) -> u16 {
        match self {
            H1Error::HeadTooLarge | H1Error::TooManyHeaders => 431,
            H1Error::UnsupportedTransferEncoding => 501,
            H1Error::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

/// Maps httparse's error to ours. Its `Version` error means "not HTTP/1.0 or
/// HTTP/1.1" because httparse only knows 1.x.
fn from_httparse(e: httparse::Error) -> H1Error {
    match e {
        httparse::Error::TooManyHeaders => H1Error::TooManyHeaders,
        httparse::Error::Version => H1Error::UnsupportedVersion,
        httparse::Error::HeaderName => H1Error::Invalid("invalid header name"),
        httparse::Error::HeaderValue => H1Error::Invalid("invalid header value"),
        httparse::Error::NewLine => H1Error::Invalid("invalid new line"),
        httparse::Error::Status => H1Error::Invalid("invalid response status"),
        httparse::Error::Token => H1Error::Invalid("invalid token"),
    }
}

/// Header slots kept on the stack, uninitialised (httparse fills them; 128
/// initialised slots were 4 KiB of stores per head); larger `max_headers`
/// fall back to a `Vec`.
const STACK_HEADERS: usize = 128;

/// Outcome of [`scan_head`].
enum Scan {
    /// The head (including its blank line) is `buf[..n]`.
    Complete(usize),
    Partial,
}

/// Walks the head line by line before httparse sees it, for the rules
/// httparse is lenient about:
/// - `strict_crlf`: every line must end in CRLF (RFC 9112 §2.2 lets a
///   recipient accept a bare LF; we refuse it in requests because a front
///   end and an upstream that disagree on line ends can be smuggled past).
/// - obs-fold (a field line starting with SP/HTAB) is refused in both
///   directions (RFC 9112 §5.2: a server MUST reject it in requests, a proxy
///   MAY reject it in responses with 502).
///
/// Empty lines before the start line are skipped as RFC 9112 §2.2 allows,
/// exactly as httparse does.
fn scan_head(buf: &[u8], strict_crlf: bool) -> Result<Scan, H1Error> {
    let mut pos = 0;
    let mut seen_start_line = false;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        if seen_start_line && matches!(rest.first(), Some(b' ' | b'\t')) {
            return Err(H1Error::ObsFold);
        }
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            return Ok(Scan::Partial);
        };
        let line = &rest[..nl];
        let content = match line.split_last() {
            Some((b'\r', content)) => content,
            _ if strict_crlf => return Err(H1Error::BareLf),
            _ => line,
        };
        pos += nl + 1;
        if content.is_empty() {
            if seen_start_line {
                return Ok(Scan::Complete(pos));
            }
        } else {
            seen_start_line = true;
        }
    }
}

/// The span of `part` inside `base`. httparse hands out sub-slices of the
/// buffer it parsed; an empty value may in principle point elsewhere, which
/// becomes an empty span rather than a wrong one.
fn span_of(base: &[u8], part: &[u8]) -> Result<Span, H1Error> {
    let offset = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    match offset.checked_add(part.len()) {
        Some(end) if end <= base.len() => Ok(Span {
            start: u32::try_from(offset).map_err(|_| H1Error::HeadTooLarge)?,
            end: u32::try_from(end).map_err(|_| H1Error::HeadTooLarge)?,
        }),
        _ if part.is_empty() => Ok(Span::default()),
        _ => Err(H1Error::Invalid("span outside buffer")),
    }
}

/// First header named `name` (ASCII case-insensitive, RFC 9110 §5.1).
fn find_header<'a>(headers: &[Header], buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.of(buf))
}

/// The first header named each of `names` (ASCII case-insensitive), in one
/// pass over the headers: for a caller that reads several.
fn find_headers<'a, const N: usize>(
    headers: &[Header],
    buf: &'a [u8],
    names: [&str; N],
) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    for h in headers {
        let name = h.name.of(buf);
        for (slot, want) in found.iter_mut().zip(names) {
            if slot.is_none() && name.eq_ignore_ascii_case(want.as_bytes()) {
                *slot = Some(h.value.of(buf));
            }
        }
    }
    found
}

/// Strips optional whitespace (SP / HTAB) from both ends.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let Some((b' ' | b'\t', rest)) = v.split_first() {
        v = rest;
    }
    while let Some((b' ' | b'\t', rest)) = v.split_last() {
        v = rest;
    }
    v
}

/// The elements of a comma-separated list field (RFC 9110 §5.6.1), trimmed,
/// empty elements skipped.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// First header named `name` unless a `Connection` field names it too:
/// such a field is hop-by-hop, meant for this recipient alone, and a proxy
/// must not forward it (RFC 9110 §7.6.1). `names_fields` is the head's
/// [`ConnectionTokens::names_fields`]; without it (nearly always) this is
/// [`find_header`] and nothing more. Not for the fields that are
/// hop-by-hop by definition (`Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding`, `Upgrade`), which are never forwarded at all.
fn find_end_to_end<'a>(
    headers: &[Header],
    buf: &'a [u8],
    name: &str,
    names_fields: bool,
) -> Option<&'a [u8]> {
    let value = find_header(headers, buf, name)?;
    let named = names_fields
        && headers.iter().any(|h| {
            h.name.of(buf).eq_ignore_ascii_case(b"connection")
                && list_items(h.value.of(buf)).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        });
    (!named).then_some(value)
}

/// `Connection` options that decide persistence (RFC 9112 §9.3).
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    /// Some option other than `close` and `keep-alive`: the name of a field
    /// to drop when forwarding (see [`find_end_to_end`]).
    names_fields: bool,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for token in list_items(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.names_fields = true;
            }
        }
    }

    /// RFC 9112 §9.3: `close` always ends the connection; otherwise 1.1 is
    /// persistent by default and 1.0 only with `keep-alive`.
    fn persistent(&self, minor_version: u8) -> bool {
        !self.close && (minor_version >= 1 || self.keep_alive)
    }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), at most 18 digits so the value
/// always fits a u64 without an overflow check. No sign, space or list.
fn parse_content_length(value: &[u8]) -> Result<u64, H1Error> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return Err(H1Error::InvalidContentLength);
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
