//! Byte-level JSON object patching: change a few top-level members of a
//! request body without re-serialising it.
//!
//! Pass-through is the fast path of the gateway: when client and provider
//! speak the same dialect, the body goes upstream as sent except for the
//! members we must change (`model`, `stream_options`). Parsing into a tree and
//! printing it again would cost time, reorder keys and change number
//! spellings; instead [`top_level_members`] finds where each member sits and
//! [`patch_object`] splices bytes.
//!
//! Invariants: the scan validates the JSON grammar (RFC 8259) except UTF-8,
//! so the spans it returns are exact; nesting is bounded (128) so a hostile
//! body cannot exhaust the stack. Keys are compared after unescaping, so
//! `"mod\u0065l"` is patched like `"model"`: an upstream would read it as
//! `model`, and a check it could slip past is worth nothing.

use std::borrow::Cow;
use std::ops::Range;

mod backward;
mod forward;
mod scan;
pub mod tape;

pub use backward::{members_rev, MembersRev};
pub use forward::{members_fwd, visit_last_member, LastMember, MembersFwd};

use scan::{is_ws, Scanner};

/// Deepest nesting accepted; the top-level object is depth 1.
pub const MAX_DEPTH: usize = 128;

/// A top-level member of a JSON object: key (the raw bytes between the
/// quotes, still escaped) and value (raw bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
    /// The key holds a backslash escape: its raw bytes are not its name.
    /// Known from the scan, so comparing a plain key (nearly all) with a
    /// name needs no search of its bytes.
    pub key_escaped: bool,
}

impl Member {
    /// Whether this member is named `key` in `body` (escapes decoded).
    pub fn is(&self, body: &[u8], key: &str) -> bool {
        key_is(body, self, key)
    }
}

/// The value of the last of `members` named `key` (the one most JSON
/// readers take).
pub fn last_named<'a>(body: &'a [u8], members: &[Member], key: &str) -> Option<&'a [u8]> {
    Some(&body[last_named_span(body, members, key)?])
}

/// Where [`last_named`]'s value is in `body`.
pub fn last_named_span(body: &[u8], members: &[Member], key: &str) -> Option<Range<usize>> {
    members
        .iter()
        .rev()
        .find(|m| m.is(body, key))
        .map(|m| m.value.clone())
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JsonError {
    #[error("JSON body is not an object")]
    NotAnObject,
    #[error("malformed JSON: {0}")]
    Malformed(&'static str),
    #[error("JSON nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Structural scan only (strings with escapes, nesting up to 128 deep); used
/// to patch a body without re-serializing it. Members come in body order;
/// duplicate keys are all listed.
pub fn top_level_members(body: &[u8]) -> Result<Vec<Member>, JsonError> {
    let mut s = Scanner::new(body);
    s.ws();
    let members = object_members(&mut s, 1, None)?;
    s.ws();
    if s.i != body.len() {
        return Err(JsonError::Malformed("bytes after the object"));
    }
    Ok(members)
}

/// A member's value that is itself an object, with its own members
/// (their spans relative to the value's first byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nested {
    pub value: Range<usize>,
    pub members: Vec<Member>,
}

/// What [`top_level_members_with`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    pub members: Vec<Member>,
    /// The last member named as asked, when its value is an object.
    pub nested: Option<Nested>,
    /// The text holds something a strict reader such as serde_json may
    /// refuse though the grammar allows it: a `\u` escape, a number with
    /// an exponent or hundreds of digits, or nesting near [`MAX_DEPTH`].
    pub unusual: bool,
}

/// [`top_level_members`], and in the same pass the members of the last
/// member named `key` when its value is an object (None when there is no
/// such member, or the last one is not an object): one scan where a scan
/// of the body and another of that value would cross it twice.
pub fn top_level_members_with(body: &[u8], key: &str) -> Result<Scanned, JsonError> {
    let mut s = Scanner::new(body);
    s.ws();
    let mut nested = None;
    let members = object_members(&mut s, 1, Some((key, &mut nested)))?;
    s.ws();
    if s.i != body.len() {
        return Err(JsonError::Malformed("bytes after the object"));
    }
    Ok(Scanned {
        members,
        nested,
        unusual: s.unusual,
    })
}

/// The members of the object at the scanner (at depth `depth`), the
/// scanner left past it. With `nested`, the members of the last member
/// named `key` are collected too when its value is an object.
fn object_members(
    s: &mut Scanner<'_>,
    depth: usize,
    mut nested: Option<(&str, &mut Option<Nested>)>,
) -> Result<Vec<Member>, JsonError> {
    if s.peek() != Some(b'{') {
        return Err(JsonError::NotAnObject);
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
        return Ok(Vec::new());
    }
    // Room for a typical request's top level (model, messages and a few
    // options) at once, not grown from four.
    let mut members = Vec::with_capacity(8);
    loop {
        s.ws();
        if s.peek() != Some(b'"') {
            return Err(JsonError::Malformed("expected a member name"));
        }
        let (key, key_escaped) = s.string_escaped()?;
        s.ws();
        s.expect(b':', "expected ':'")?;
        s.ws();
        let start = s.i;
        let mut m = Member {
            key,
            value: start..start,
            key_escaped,
        };
        match &mut nested {
            Some((name, out)) if m.is(s.b, name) => {
                if s.peek() == Some(b'{') && depth < MAX_DEPTH {
                    let mut inner = object_members(s, depth + 1, None)?;
                    for m in &mut inner {
                        m.key = m.key.start - start..m.key.end - start;
                        m.value = m.value.start - start..m.value.end - start;
                    }
                    **out = Some(Nested {
                        value: start..s.i,
                        members: inner,
                    });
                } else {
                    s.value(depth + 1)?;
                    **out = None;
                }
            }
            _ => s.value(depth + 1)?,
        }
        m.value.end = s.i;
        members.push(m);
        s.ws();
        match s.next() {
            Some(b',') => continue,
            Some(b'}') => return Ok(members),
            _ => return Err(JsonError::Malformed("expected ',' or '}'")),
        }
    }
}

/// The value of the last top-level member named `key` (the one most JSON
/// readers take), found by walking back from the closing brace without
/// validating ([`members_rev`]). For reading one field (usage) out of an
/// upstream's answer, which is relayed as it came and validated by the
/// client: the value found still has to be parsed, and on a malformed body
/// the worst outcome is that nothing (or nothing parsable) is found.
pub fn find_top_level(json: &[u8], key: &str) -> Option<Range<usize>> {
    members_rev(json)
        .find(|m| key_is(json, m, key))
        .map(|m| m.value)
}

/// The value of the object's first member when that member is named `key`
/// (plainly, without escapes), read without looking at the rest: OpenAI
/// puts an answer's `id` first, and [`find_top_level`], walking back from
/// the end, would cross the whole object to reach it. None when the first
/// member is another (then walk back) or the object does not start well;
/// the value found is checked, the rest of the object is not, so of
/// duplicate keys this finds the first where a reader takes the last.
pub fn first_member(json: &[u8], key: &str) -> Option<Range<usize>> {
    let mut s = Scanner::new(json);
    s.ws();
    s.expect(b'{', "").ok()?;
    s.ws();
    if s.peek() != Some(b'"') {
        return None;
    }
    let (name, escaped) = s.string_escaped().ok()?;
    if escaped || json[name] != *key.as_bytes() {
        return None;
    }
    s.ws();
    s.expect(b':', "").ok()?;
    s.ws();
    let start = s.i;
    s.value(2).ok()?;
    Some(start..s.i)
}

/// Most keys hold no escape, and most names asked for differ in length
/// from the key: both are answered without decoding or comparing bytes.
#[inline]
fn key_is(json: &[u8], m: &Member, key: &str) -> bool {
    if !m.key_escaped {
        return json.get(m.key.clone()) == Some(key.as_bytes());
    }
    key_bytes(json, m).is_some_and(|k| *k == *key.as_bytes())
}

/// A change to one top-level member.
#[derive(Clone, Copy)]
pub enum Edit<'a> {
    /// Replace the member's value (raw JSON, written as given), or append the
    /// member when absent. Later duplicates of the key are removed so every
    /// reader sees the new value.
    Set { key: &'a str, value: &'a [u8] },
    /// Remove every member with this key.
    Remove { key: &'a str },
}

impl Edit<'_> {
    fn key(&self) -> &str {
        match self {
            Edit::Set { key, .. } | Edit::Remove { key } => key,
        }
    }
}

/// New body = original bytes with Set members' values replaced (or the member
/// appended before the closing brace when absent) and Removed members cut out
/// (with their commas). Result stays valid JSON when `body` is, `members`
/// came from [`top_level_members`] on it, and every Set value is valid JSON.
///
/// The first edit naming a key wins. If `members` do not fit `body` (not its
/// scan), the body is returned unchanged rather than corrupted.
pub fn patch_object(body: &[u8], members: &[Member], edits: &[Edit<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    patch_object_into(&mut out, body, members, edits);
    out
}

/// [`patch_object`], appending to `out` (after an HTTP head, say).
pub fn patch_object_into(out: &mut Vec<u8>, body: &[u8], members: &[Member], edits: &[Edit<'_>]) {
    let Some((open, close)) = braces(body, members) else {
        out.extend_from_slice(body);
        return;
    };
    let extra: usize = edits
        .iter()
        .map(|e| match e {
            Edit::Set { key, value } => key.len() + value.len() + 4,
            Edit::Remove { .. } => 0,
        })
        .sum();
    out.reserve(body.len() + extra);
    out.extend_from_slice(&body[..=open]);
    // Bit i: edit i was applied.
    assert!(edits.len() <= 64, "at most 64 edits per patch");
    let mut applied = 0u64;
    let mut wrote_any = false;
    for m in members {
        let key = key_bytes(body, m);
        let edit = key
            .as_deref()
            .and_then(|k| edits.iter().position(|e| e.key().as_bytes() == k));
        let value: &[u8] = match edit.map(|i| (i, &edits[i])) {
            None => &body[m.value.clone()],
            Some((_, Edit::Remove { .. })) => continue,
            Some((i, Edit::Set { value, .. })) => {
                if applied & (1 << i) != 0 {
                    continue;
                }
                applied |= 1 << i;
                value
            }
        };
        let quote = m.key.start - 1;
        if wrote_any {
            out.push(b',');
        }
        out.extend_from_slice(&body[leading_ws(body, quote)..m.value.start]);
        out.extend_from_slice(value);
        wrote_any = true;
    }
    for (i, edit) in edits.iter().enumerate() {
        if let Edit::Set { key, value } = edit {
            let first_of_key = edits[..i].iter().all(|e| e.key() != *key);
            if applied & (1 << i) == 0 && first_of_key {
                if wrote_any {
                    out.push(b',');
                }
                write_json_string(out, key);
                out.push(b':');
                out.extend_from_slice(value);
                wrote_any = true;
            }
        }
    }
    let tail = members.last().map_or(open + 1, |m| m.value.end);
    out.extend_from_slice(&body[tail.min(close)..]);
}

/// JSON-escape `s` into out including surrounding quotes (RFC 8259 §7).
/// The runs between bytes that need an escape are found as the scanner
/// finds them in strings it reads ([`scan::plain_run`]: eight bytes at a
/// time, then SIMD), not byte by byte: nearly every string (ids, names,
/// tokens of text) is one run.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = s.as_bytes();
    out.reserve(rest.len() + 2);
    out.push(b'"');
    while let Some(at) = scan::plain_run(rest) {
        out.extend_from_slice(&rest[..at]);
        let b = rest[at];
        let mut unicode = *b"\\u0000";
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => {
                unicode[4] = HEX[(b >> 4) as usize];
                unicode[5] = HEX[(b & 0xf) as usize];
                &unicode
            }
        };
        out.extend_from_slice(escape);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Positions of the object's `{` and `}`, after checking that `members` lie
/// between them in order, so that slicing below cannot go out of bounds.
fn braces(body: &[u8], members: &[Member]) -> Option<(usize, usize)> {
    let open = body.iter().position(|b| !is_ws(*b))?;
    let close = body.iter().rposition(|b| !is_ws(*b))?;
    if body[open] != b'{' || body[close] != b'}' || close <= open {
        return None;
    }
    let mut pos = open + 1;
    for m in members {
        let ordered = pos < m.key.start
            && m.key.start <= m.key.end
            && m.key.end < m.value.start
            && m.value.start < m.value.end
            && m.value.end <= close;
        if !ordered {
            return None;
        }
        pos = m.value.end;
    }
    Some((open, close))
}

/// Start of the whitespace run that ends at `end`.
fn leading_ws(body: &[u8], end: usize) -> usize {
    body[..end]
        .iter()
        .rposition(|b| !is_ws(*b))
        .map_or(0, |p| p + 1)
}

/// The member's key, unescaped, for comparing with names: borrowed (and not
/// UTF-8 checked: raw bytes equal a name exactly when the decoded key does)
/// unless it has escapes.
pub(crate) fn key_bytes<'a>(body: &'a [u8], m: &Member) -> Option<Cow<'a, [u8]>> {
    if !m.key_escaped {
        return body.get(m.key.clone()).map(Cow::Borrowed);
    }
    decode_key(body, &m.key).map(|k| Cow::Owned(k.into_owned().into_bytes()))
}

/// The key as a string, unescaped. Borrowed unless it contains escapes.
pub(crate) fn decode_key<'a>(body: &'a [u8], key: &Range<usize>) -> Option<Cow<'a, str>> {
    let raw = body.get(key.clone())?;
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    let quoted = body.get(key.start.checked_sub(1)?..key.end + 1)?;
    serde_json::from_slice::<String>(quoted)
        .ok()
        .map(Cow::Owned)
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
