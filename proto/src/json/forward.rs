//! Reading members forward without validating: the counterpart of
//! [`super::backward`] for a small object already located, such as an
//! answer's `usage`, read at a few instructions a byte where the validating
//! [`super::scan::Scanner`] spends several times that.
//!
//! Same contract as the backward walk: for valid JSON the spans are exact (a
//! `"` outside a string always opens or closes one; inside, a quote is
//! always escaped); on malformed input the walk stops early or yields spans
//! that do not parse, never reads out of bounds and never loops forever
//! (every step moves right).

use super::backward::before_ws;
use super::scan::{is_ws, plain_run};
use super::{Member, MAX_DEPTH};

/// The members of the object `json` holds (after leading whitespace), first
/// first. Empty when `json` does not start with `{`; what follows the
/// object's closing brace is not looked at.
pub fn members_fwd(json: &[u8]) -> MembersFwd<'_> {
    let open = skip_ws(json, 0);
    MembersFwd {
        json,
        next: (json.get(open) == Some(&b'{')).then_some(open + 1),
    }
}

pub struct MembersFwd<'a> {
    json: &'a [u8],
    /// Just past the `{` or the `,` before the next member; None when done.
    next: Option<usize>,
}

impl Iterator for MembersFwd<'_> {
    type Item = Member;

    fn next(&mut self) -> Option<Member> {
        let json = self.json;
        let mut i = skip_ws(json, self.next.take()?);
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let (close, key_escaped) = string_end(json, i + 1)?;
        let key = i + 1..close;
        i = skip_ws(json, key.end + 1);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(json, i + 1);
        let end = value_end(json, start)?;
        i = skip_ws(json, end);
        match json.get(i) {
            Some(b',') => self.next = Some(i + 1),
            Some(b'}') => {}
            _ => return None,
        }
        Some(Member {
            key,
            value: start..end,
            key_escaped,
        })
    }
}

/// What [`visit_last_member`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LastMember {
    /// An object, whose members were visited.
    Object,
    /// Another value (null, say): nothing was visited.
    Other,
}

/// Visits the members of the object named `key` when it is the top-level
/// object's last member, found from the `"key"` at `at` (a byte search's
/// hit). Reads only that member, where walking back from the end
/// ([`super::find_top_level`]) crosses its value once to find it and the
/// caller again to read it. None when the member there is not the top-level
/// object's last (a nested one, another shape), or when one of its keys
/// holds an escape: then walk back, and forget what was visited.
///
/// `visit` gets each member's key (its text, which has no escape) and its
/// value's text, first first. This is a usage object's read on every
/// answer, so the walk builds no [`Member`] and decodes nothing.
///
/// The member is the top-level object's when nothing but that object's
/// closing brace follows it: a member of a nested object would have the
/// nested object's brace to close first. The `"` at `at` opens a key when
/// a `{` or `,` precedes it, since a quote within a string is escaped.
pub fn visit_last_member(
    json: &[u8],
    at: usize,
    key: &[u8],
    mut visit: impl FnMut(&[u8], &[u8]),
) -> Option<LastMember> {
    let key_end = at.checked_add(1)?.checked_add(key.len())?;
    if json.get(at) != Some(&b'"')
        || json.get(at + 1..key_end) != Some(key)
        || json.get(key_end) != Some(&b'"')
    {
        return None;
    }
    let before = before_ws(json, at)?;
    if !matches!(json[before], b'{' | b',') {
        return None;
    }
    let colon = skip_ws(json, key_end + 1);
    if json.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_ws(json, colon + 1);
    let (end, found) = if json.get(start) == Some(&b'{') {
        (
            visit_members(json, start + 1, &mut visit)?,
            LastMember::Object,
        )
    } else {
        (value_end(json, start)?, LastMember::Other)
    };
    let close = skip_ws(json, end);
    (json.get(close) == Some(&b'}') && skip_ws(json, close + 1) == json.len()).then_some(found)
}

/// Visits the members of the object whose `{` is just before `from`, and
/// returns where it ends (just past its `}`). None at malformed input or
/// at a key with an escape or a control byte.
fn visit_members(json: &[u8], from: usize, visit: &mut impl FnMut(&[u8], &[u8])) -> Option<usize> {
    let mut i = skip_ws(json, from);
    if json.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key = i + 1;
        let quote = key + plain_run(&json[key..])?;
        if json[quote] != b'"' {
            return None;
        }
        let colon = skip_ws(json, quote + 1);
        if json.get(colon) != Some(&b':') {
            return None;
        }
        let value = skip_ws(json, colon + 1);
        // A count (what usage holds) ends at its first non-digit; were
        // that not a delimiter, the check after the value gives up.
        let value_end = match json.get(value) {
            Some(b'0'..=b'9') => json[value..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(json.len(), |n| value + n),
            _ => value_end(json, value)?,
        };
        visit(&json[key..quote], &json[value..value_end]);
        i = skip_ws(json, value_end);
        match json.get(i) {
            Some(b',') => i = skip_ws(json, i + 1),
            Some(b'}') => return Some(i + 1),
            _ => return None,
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(|b| is_ws(*b)) {
        i += 1;
    }
    i
}

/// The closing quote of the string whose text starts at `from`, and
/// whether the text holds an escape.
fn string_end(json: &[u8], mut from: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let at = from + plain_run(json.get(from..)?)?;
        match json[at] {
            b'"' => return Some((at, escaped)),
            // The escaped byte, whatever it is, is text.
            b'\\' => {
                escaped = true;
                from = at + 2;
            }
            // A raw control byte: not JSON, but not ours to refuse here.
            _ => from = at + 1,
        }
    }
}

/// Just past the value starting at `start`: a string, an object or array
/// (nesting counted, strings skipped whole), or a scalar up to the next
/// delimiter. None for an empty value or one left open.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    match *json.get(start)? {
        b'"' => string_end(json, start + 1).map(|(q, _)| q + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match *json.get(i)? {
                    b'"' => i = string_end(json, i + 1)?.0,
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let len = json[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b))
                .unwrap_or(json.len() - start);
            (len > 0).then_some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(json: &str) -> Vec<(String, String)> {
        members_fwd(json.as_bytes())
            .map(|m| (json[m.key].to_owned(), json[m.value].to_owned()))
            .collect()
    }

    #[test]
    fn members_come_in_order_with_nested_values_and_escaped_strings_whole() {
        assert_eq!(
            members(r#" { "a" : 1 ,"b\"}":{"x":[1,"]}\\"]},"c":"q\"{","d":null}"#),
            [
                ("a", "1"),
                (r#"b\"}"#, r#"{"x":[1,"]}\\"]}"#),
                ("c", r#""q\"{""#),
                ("d", "null"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(members("{}").is_empty());
        assert!(members("[1]").is_empty());
    }

    #[test]
    fn malformed_input_stops_the_walk_without_panicking() {
        for bad in [
            "{",
            r#"{"a"#,
            r#"{"a":"#,
            r#"{"a":1"#,
            r#"{"a" 1}"#,
            r#"{"a":{"b":1}"#,
            r#"{"a":"x"#,
            r#"{"a":1 "b":2}"#,
            r#"{1:2}"#,
        ] {
            let got = members(bad);
            assert!(got.len() <= 1, "{bad}: {got:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(members(&deep).is_empty());
    }

    /// The members of the last member `key` (found by its last mention),
    /// or Err(true) for a last member that is not an object.
    fn last(json: &str, key: &str) -> Option<Result<Vec<(String, String)>, bool>> {
        let at = memchr::memmem::rfind(json.as_bytes(), format!("\"{key}\"").as_bytes())?;
        let mut seen = Vec::new();
        let found = visit_last_member(json.as_bytes(), at, key.as_bytes(), |k, v| {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            seen.push((text(k), text(v)));
        })?;
        Some(match found {
            LastMember::Object => Ok(seen),
            LastMember::Other => Err(true),
        })
    }

    #[test]
    fn the_last_member_is_found_only_at_the_top_level() {
        let usage = r#"{"prompt_tokens":3, "x" : {"y":[]}}"#;
        let members = Ok(vec![
            ("prompt_tokens".to_owned(), "3".to_owned()),
            ("x".to_owned(), r#"{"y":[]}"#.to_owned()),
        ]);
        assert_eq!(
            last(&format!(r#"{{"id":"x","usage":{usage}}}"#), "usage"),
            Some(members.clone())
        );
        assert_eq!(
            last(&format!("{{ \"usage\" : {usage} }}\n"), "usage"),
            Some(members)
        );
        assert_eq!(last(r#"{"id":"x","usage":null}"#, "usage"), Some(Err(true)));
        // Nested at the end, not last, inside a string, or after the object.
        for miss in [
            format!(r#"{{"a":{{"usage":{usage}}}}}"#),
            format!(r#"{{"a":[{{"usage":{usage}}}]}}"#),
            format!(r#"{{"usage":{usage},"id":"x"}}"#),
            r#"{"a":"say \"usage\":{}"}"#.to_owned(),
            format!(r#"{{"a":"\\","usage":{usage}}}x"#),
            format!(r#"{{"usage":{usage}"#),
        ] {
            assert_eq!(last(&miss, "usage"), None, "{miss}");
        }
    }
}
