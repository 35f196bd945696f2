//! Reading an object's top-level members from its end.
//!
//! Answers put what accounting reads last (`usage` closes an OpenAI chat
//! completion, after `choices`, which is most of the body), so walking back
//! from the closing brace reaches it after a few dozen bytes where a forward
//! scan crosses the whole answer.
//!
//! Not a validator: for valid JSON the members are exact (a `"` outside a
//! string always closes one, and the string's opening quote is the nearest
//! earlier `"` preceded by an even run of backslashes). On malformed input
//! the walk stops early or yields spans that do not parse; it never reads
//! out of bounds and never loops forever (every step moves left).

use std::ops::Range;

use super::scan::is_ws;
use super::Member;

/// The top-level members of the object `json` holds, last first. Empty when
/// `json` is not an object (after trimming whitespace).
pub fn members_rev(json: &[u8]) -> MembersRev<'_> {
    let open = json.iter().position(|b| !is_ws(*b));
    let close = json.iter().rposition(|b| !is_ws(*b));
    let end = match (open, close) {
        (Some(o), Some(c)) if json[o] == b'{' && json[c] == b'}' && o < c => Some(c),
        _ => None,
    };
    MembersRev {
        json,
        open: open.unwrap_or(0),
        end,
    }
}

pub struct MembersRev<'a> {
    json: &'a [u8],
    /// The object's `{`.
    open: usize,
    /// The `,` or `}` that follows the next member's value; None when done.
    end: Option<usize>,
}

impl Iterator for MembersRev<'_> {
    type Item = Member;

    fn next(&mut self) -> Option<Member> {
        let end = self.end.take()?;
        let json = self.json;
        // Back to the `:` that starts the value, skipping nested values and
        // strings whole.
        let mut i = end;
        let mut depth = 0usize;
        let colon = loop {
            if i <= self.open + 1 {
                return None;
            }
            i -= 1;
            match json[i] {
                b'"' => i = string_start(json, i)?,
                b'}' | b']' => depth += 1,
                b'{' | b'[' => depth = depth.checked_sub(1)?,
                b':' if depth == 0 => break i,
                b',' if depth == 0 => return None,
                _ => {}
            }
        };
        let value = trim(json, colon + 1..end);
        let quote = before_ws(json, colon)?;
        if json[quote] != b'"' {
            return None;
        }
        let key_open = string_start(json, quote)?;
        match before_ws(json, key_open)? {
            p if p == self.open => {}
            p if json[p] == b',' => self.end = Some(p),
            _ => return None,
        }
        if value.is_empty() {
            return None;
        }
        Some(Member {
            key: key_open + 1..quote,
            value,
            key_escaped: json[key_open + 1..quote].contains(&b'\\'),
        })
    }
}

/// The opening quote of the string whose closing quote is at `close`.
fn string_start(json: &[u8], close: usize) -> Option<usize> {
    let mut end = close;
    loop {
        let q = memchr::memrchr(b'"', &json[..end])?;
        let backslashes = json[..q].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(q);
        }
        end = q;
    }
}

/// The last non-whitespace position before `at`.
pub(super) fn before_ws(json: &[u8], at: usize) -> Option<usize> {
    json[..at].iter().rposition(|b| !is_ws(*b))
}

fn trim(json: &[u8], r: Range<usize>) -> Range<usize> {
    let s = &json[r.clone()];
    let start = s.iter().position(|b| !is_ws(*b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(*b)).map_or(start, |p| p + 1);
    r.start + start..r.start + end
}
