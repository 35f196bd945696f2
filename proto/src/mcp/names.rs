//! Exposed names: what one server offers is listed under
//! `server.name` (`billing.read_renewal_status`), resources under
//! `server.uri`. Server names cannot contain the separator, so the first
//! one splits an exposed name, whatever the server's own names contain.

const SEPARATOR: char = '.';

pub fn expose(server: &str, name: &str) -> String {
    let mut s = String::with_capacity(server.len() + 1 + name.len());
    s.push_str(server);
    s.push(SEPARATOR);
    s.push_str(name);
    s
}

/// `(server, its own name)`; `None` when there is no server part.
pub fn split_exposed(exposed: &str) -> Option<(&str, &str)> {
    let (server, name) = exposed.split_once(SEPARATOR)?;
    (!server.is_empty() && !name.is_empty()).then_some((server, name))
}

const SENTINEL_START: &str = "=?base64?";
const SENTINEL_END: &str = "?=";

/// A header value as the modern era writes names that would not survive
/// an HTTP field: printable ASCII without edge whitespace goes verbatim,
/// anything else as `=?base64?<standard base64 of its UTF-8>?=`.
pub fn encode_header_value(value: &str) -> std::borrow::Cow<'_, str> {
    use base64::Engine as _;
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.trim() == value
        && !(value.starts_with(SENTINEL_START) && value.ends_with(SENTINEL_END));
    if plain {
        return value.into();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    format!("{SENTINEL_START}{b64}{SENTINEL_END}").into()
}

/// The inverse: `None` for a malformed sentinel (bad or non-canonical
/// base64, bad UTF-8), so a corrupt header never matches a body value.
pub fn decode_header_value(value: &str) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine as _;
    let Some(payload) = value
        .strip_prefix(SENTINEL_START)
        .and_then(|v| v.strip_suffix(SENTINEL_END))
    else {
        return Some(value.into());
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok().map(Into::into)
}
