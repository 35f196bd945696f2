//! Glob patterns for model and tool names: `*` matches any run of
//! characters (including none), `?` exactly one character; everything else
//! is literal. There is no escaping: model and tool names don't contain
//! `*` or `?`.
//!
//! Written here rather than taken from `globset`, which compiles to regexes
//! and brings `regex`/`bstr` for path semantics we don't want (`/` is an
//! ordinary character in `openai/gpt-4o`). Matching is the classic
//! two-pointer algorithm with one backtrack point: O(pattern × text) worst
//! case, no allocation.

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    literal: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.into(),
            literal: !pattern.contains(['*', '?']),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return *self.pattern == *text;
        }
        glob_match(self.pattern.as_bytes(), text.as_bytes())
    }
}

/// A list of patterns; matches if any does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<Glob>);

impl Patterns {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Patterns(patterns.iter().map(|p| Glob::new(p.as_ref())).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.iter().any(|g| g.matches(text))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Glob> {
        self.0.iter()
    }
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    // Pattern index just after the last `*`, and the text index it is
    // currently assumed to have consumed up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if let Some(&pc) = p.get(pi) {
            match pc {
                b'*' => {
                    backtrack = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti = (ti + utf8_len(t[ti])).min(t.len());
                    continue;
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match backtrack {
            Some((bp, bt)) => {
                // Let the `*` swallow one more character and retry.
                let next = (bt + utf8_len(t[bt])).min(t.len());
                backtrack = Some((bp, next));
                pi = bp;
                ti = next;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn literals() {
        assert!(m("gpt-4o", "gpt-4o"));
        assert!(!m("gpt-4o", "gpt-4o-mini"));
        assert!(!m("gpt-4o", "gpt-4"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    #[test]
    fn stars() {
        assert!(m("gpt-4o*", "gpt-4o"));
        assert!(m("gpt-4o*", "gpt-4o-mini"));
        assert!(m("claude-*", "claude-sonnet-4"));
        assert!(!m("claude-*", "gpt-4o"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("billing.*", "billing.read_renewal_status"));
        assert!(!m("billing.*", "billing"));
        assert!(m("*.delete_*", "account.delete_user"));
        assert!(!m("*.delete_*", "account.undelete"));
        assert!(m("a*b*c", "a-xx-b-yy-c"));
        assert!(!m("a*b*c", "a-xx-c-yy-b"));
        assert!(m("**a", "bba"));
        assert!(m("a*a*a*a*b", "aaaaaaaaaaaaaaaab"));
        assert!(!m("a*a*a*a*b", "aaaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn question_marks() {
        assert!(m("o?-mini", "o3-mini"));
        assert!(m("o?-mini", "o4-mini"));
        assert!(!m("o?-mini", "o-mini"));
        assert!(!m("o?-mini", "o33-mini"));
        assert!(m("gpt-?", "gpt-é"));
        assert!(m("?*", "x"));
        assert!(!m("?", ""));
    }

    #[test]
    fn patterns_any() {
        let p = Patterns::new(&["gpt-4o", "claude-*"]);
        assert!(p.matches("gpt-4o"));
        assert!(p.matches("claude-opus-4"));
        assert!(!p.matches("gemini-2.5-pro"));
        assert!(!Patterns::default().matches("x"));
    }
}
