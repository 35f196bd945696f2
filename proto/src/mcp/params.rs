//! A message's `params` as the client wrote them. The gateway reads a few
//! members (the tool's name, `_meta`, sometimes the arguments) and
//! forwards the rest untouched, so the object is kept as text with its
//! members' spans: a member is parsed when it is read, and the object is
//! written upstream as sent except for the members the gateway set. A
//! forwarded call costs a scan, not a tree and its printing.

use crate::json::{self, Edit, Member};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Invariant: `raw` is one JSON object and `members` are its
/// [`json::top_level_members`]; every value in `set` is JSON text. Kept as
/// text (UTF-8 checked once, with the message), so a member's string is
/// borrowed without checking it again: spans start and end at ASCII
/// delimiters, which are character boundaries.
#[derive(Debug, Clone)]
pub struct Params {
    raw: Box<str>,
    members: Vec<Member>,
    /// Members set by the gateway, as JSON text; they win over `raw`'s.
    set: Vec<(String, String)>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            raw: Box::from("{}"),
            members: Vec::new(),
            set: Vec::new(),
        }
    }
}

impl PartialEq for Params {
    fn eq(&self, other: &Self) -> bool {
        self.to_map() == other.to_map()
    }
}

impl Params {
    /// `raw` when it is a JSON object in valid UTF-8.
    pub fn from_raw(raw: &[u8]) -> Option<Params> {
        let text = std::str::from_utf8(raw).ok()?;
        let members = json::top_level_members(raw).ok()?;
        Some(Params {
            raw: text.into(),
            members,
            set: Vec::new(),
        })
    }

    /// An object already scanned as part of the message: `members` are
    /// [`json::top_level_members`] of `raw`.
    pub(super) fn scanned(raw: &str, members: Vec<Member>) -> Params {
        Params {
            raw: raw.into(),
            members,
            set: Vec::new(),
        }
    }

    /// Params the gateway makes itself (a list's cursor, say).
    pub fn from_map(map: Map<String, Value>) -> Params {
        let text = serde_json::to_vec(&Value::Object(map)).unwrap_or_else(|_| b"{}".to_vec());
        Params::from_raw(&text).unwrap_or_default()
    }

    /// The object's length as written.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// No members at all.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.set.is_empty()
    }

    /// No members but ones named `key`.
    pub fn is_empty_without(&self, key: &str) -> bool {
        self.set.iter().all(|(k, _)| k == key)
            && self.members.iter().all(|m| m.is(self.raw.as_bytes(), key))
    }

    /// A member's JSON text: the last one set, else the last one written
    /// (the one JSON readers take).
    pub fn raw_value(&self, key: &str) -> Option<&[u8]> {
        self.raw_text(key).map(str::as_bytes)
    }

    fn raw_text(&self, key: &str) -> Option<&str> {
        match self.set.iter().rev().find(|(k, _)| k == key) {
            Some((_, v)) => Some(v),
            None => self.raw.get(json::last_named_span(
                self.raw.as_bytes(),
                &self.members,
                key,
            )?),
        }
    }

    /// A member, parsed.
    pub fn get(&self, key: &str) -> Option<Value> {
        serde_json::from_slice(self.raw_value(key)?).ok()
    }

    /// A string member, borrowed unless it holds escapes.
    pub fn get_str(&self, key: &str) -> Option<Cow<'_, str>> {
        string_of(self.raw_text(key)?)
    }

    /// A member of an object member (`_meta`'s version, say), found by
    /// walking back from its closing brace: the text was validated when it
    /// was read, so the walk needs no second scan.
    pub fn get_nested_str(&self, outer: &str, key: &str) -> Option<Cow<'_, str>> {
        let object = self.raw_text(outer)?;
        if !object.starts_with('{') {
            return None;
        }
        string_of(object.get(json::find_top_level(object.as_bytes(), key)?)?)
    }

    /// Sets a member (replacing every one of that name when written).
    pub fn set(&mut self, key: &str, value: &Value) {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        self.set.retain(|(k, _)| k != key);
        self.set.push((key.to_owned(), text));
    }

    /// Writes the object: as it came, with the members set, and `edits`
    /// (which win over both).
    pub fn write_into(&self, out: &mut Vec<u8>, edits: &[Edit<'_>]) {
        let mut all: Vec<Edit<'_>> = Vec::with_capacity(edits.len() + self.set.len());
        all.extend_from_slice(edits);
        all.extend(self.set.iter().map(|(key, value)| Edit::Set {
            key,
            value: value.as_bytes(),
        }));
        json::patch_object_into(out, self.raw.as_bytes(), &self.members, &all);
    }

    /// The whole object as a tree (for the paths that edit it freely).
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = match serde_json::from_str(&self.raw) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in &self.set {
            map.insert(k.clone(), serde_json::from_str(v).unwrap_or(Value::Null));
        }
        map
    }
}

/// A JSON string's text.
fn string_of(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}
