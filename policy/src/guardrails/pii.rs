//! PII and secret detectors: email addresses, phone numbers, payment card
//! numbers, IBANs, US social security numbers, IP addresses and API keys /
//! private keys.
//!
//! **How a scan works.** A lazy DFA that looks at every byte costs about
//! 2 ns/byte, so a single regex of all kinds (~8 µs per 4 KiB) would eat
//! the guardrail budget on its own. The kinds are instead split into four
//! groups, each found by what a fast search can jump to:
//!
//! - secrets: one multi-pattern [`meta::Regex`] whose literal prefixes
//!   (`sk-`, `AKIA`, `eyJ`, `-----BEGIN `, …) it finds with SIMD;
//! - email: one regex, run from each `@` (found by `memchr`);
//! - digits: cards, IBANs, SSNs, phone numbers, IPv4 — one multi-pattern
//!   regex whose every pattern starts at a digit or `+`, with an explicit
//!   prefilter on those bytes (an IBAN is matched from its check digits and
//!   a `(415) …` number from its area code; validation adds the two letters
//!   or the parenthesis in front). In digit-dense text (logs, CSV) the
//!   prefilter would restart after every number, so a copy without it is
//!   used there ([`digits_dense`]);
//! - IPv6: no regex; the address-character run around each `:` (found by
//!   `memchr`) is parsed with `Ipv6Addr` ([`ipv6_at`]).
//!
//! Each regex candidate is then *validated* in plain Rust (Luhn, ISO 7064
//! mod-97, octet ranges, SSN area rules, key shape); validation may also
//! settle the item's exact extent (a secret's body is measured in Rust, an
//! IBAN or E.164 number that ran into a following token is cut back to its
//! real length).
//!
//! **Overlaps.** The groups are merged as if one leftmost-first search ran
//! over the text: the leftmost valid item wins, ties go to the earlier
//! pattern in [`PATTERNS`] (secrets, email, IBAN, card, SSN, phone, IPv4;
//! IPv6 last), and after an accepted item every group resumes at its end.
//! A rejected candidate hides nothing: the group's other patterns are
//! retried anchored at the same start, then its search resumes one byte
//! after that start (or further, where the group's start rules prove
//! nothing valid begins in between), so an item of any kind that begins
//! inside the rejected text is still found. Reported ranges are ascending
//! and never overlap. `pii_tests` checks all of this against a brute-force
//! reference on random text.
//!
//! **Cost bounds.** Every regex repetition is bounded, so a candidate (and
//! the regex's look past it) spans at most a few hundred bytes. A rejection
//! therefore costs O(longest candidate), and a whole scan is linear in the
//! text even when every few bytes yield a rejected candidate (the bench
//! measures such inputs: about 100 ns/byte at worst, against 1 ns/byte for
//! a realistic prompt). Secret bodies are measured in Rust with a per-scan
//! memo of the current character run ([`Runs`]), so `sk-sk-sk-…` style
//! input is not quadratic either. No allocation per scan beyond pushing to
//! `out` (each regex's search cache is pooled inside it).
//!
//! **Scope limits, on purpose.** ASCII only: IBANs in upper case, emails
//! with an ASCII local part and domain (no IDN), NANP numbers must carry
//! separators (a bare 10-digit run is far more often an id or a unix
//! timestamp than a phone number), an IPv6 address needs a decimal digit
//! and some substance (`a::b`, `Add::add`, `x[1::2]`, `::1` are more often
//! code than addresses), and an API key or token must be a whole token
//! (not glued to a preceding `[A-Za-z0-9_-]`) with random-looking body.

use std::ops::Range;

use regex_automata::meta::Regex;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::{Anchored, Input, MatchKind, PatternID};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    CreditCard,
    Iban,
    UsSsn,
    IpAddress,
    Secret,
}

impl PiiKind {
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CreditCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
        PiiKind::IpAddress,
        PiiKind::Secret,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CreditCard => "credit_card",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
            PiiKind::IpAddress => "ip_address",
            PiiKind::Secret => "secret",
        }
    }
}

/// Compiled detectors for a set of kinds.
///
/// Built once (at config load) and shared read-only by any number of
/// threads: `Clone + Send + Sync`; a clone shares the compiled automata and
/// gets its own search-cache pools.
#[derive(Debug, Clone)]
pub struct PiiDetector {
    kinds: Vec<PiiKind>,
    /// Groups with at least one enabled pattern, in priority order.
    groups: Vec<Group>,
}

impl PiiDetector {
    pub fn new(kinds: &[PiiKind]) -> Self {
        let groups = Group::ALL
            .iter()
            .filter_map(|&id| Group::build(id, kinds))
            .collect();
        PiiDetector {
            kinds: kinds.to_vec(),
            groups,
        }
    }

    pub fn kinds(&self) -> &[PiiKind] {
        &self.kinds
    }

    /// Appends each validated match in `text`: (kind, byte range), ranges
    /// ascending and non-overlapping.
    pub fn find(&self, text: &str, out: &mut Vec<(PiiKind, Range<usize>)>) {
        let digits = self.groups.iter().any(Group::has_digits);
        self.find_with(text, digits && digits_dense(text.as_bytes()), out);
    }

    /// [`find`](Self::find), with the Digits group's regex chosen by
    /// `dense` (the results are the same either way).
    fn find_with(&self, text: &str, dense: bool, out: &mut Vec<(PiiKind, Range<usize>)>) {
        let mut runs = Runs::new();
        // Per group, its leftmost valid item at or after the position it
        // was searched from; `None` once the group has nothing left. An
        // item starting before `at` overlaps an accepted one and is
        // searched for again from `at`.
        let mut next: [Option<(PiiKind, Range<usize>)>; GROUPS] = Default::default();
        for (g, group) in self.groups.iter().enumerate() {
            next[g] = group.next(text, 0, dense, &mut runs);
        }
        let mut at = 0;
        loop {
            let mut best: Option<usize> = None;
            for (g, group) in self.groups.iter().enumerate() {
                if next[g].as_ref().is_some_and(|(_, r)| r.start < at) {
                    next[g] = group.next(text, at, dense, &mut runs);
                }
                let Some((_, range)) = &next[g] else { continue };
                // Strictly earlier only: on a tie the earlier group wins.
                let earlier = best
                    .and_then(|b| next[b].as_ref())
                    .is_none_or(|(_, r)| range.start < r.start);
                if earlier {
                    best = Some(g);
                }
            }
            let Some(g) = best else { break };
            let Some((kind, range)) = next[g].take() else {
                break;
            };
            at = range.end;
            out.push((kind, range));
            next[g] = self.groups[g].next(text, at, dense, &mut runs);
        }
    }
}

/// Number of groups (the length of [`Group::ALL`]).
const GROUPS: usize = 4;

/// Detectors that share a way of finding candidates fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupId {
    Secrets,
    Email,
    Digits,
    Ipv6,
}

/// One compiled group.
#[derive(Debug, Clone)]
enum Group {
    /// Regex candidates ([`PATTERNS`] of this group), then validation.
    Regex(RegexGroup),
    /// IPv6 addresses: the token around each `:`, parsed ([`ipv6_at`]).
    /// A regex is no match for `memchr` here: one strict enough to skip
    /// times and `std::io` paths defeats the regex's own `:` search.
    Ipv6,
}

#[derive(Debug, Clone)]
struct RegexGroup {
    id: GroupId,
    regex: Regex,
    /// Digits only: the same patterns without the prefilter, for text
    /// dense with digits (logs, CSV), where restarting the prefilter after
    /// every short number costs more than running the DFA over every byte.
    unfiltered: Option<Regex>,
    /// Indexed by `PatternID`: what the pattern detects and how to validate
    /// it. Same order as in [`PATTERNS`].
    checks: Vec<(PiiKind, Check)>,
}

impl Group {
    /// In priority order.
    const ALL: [GroupId; GROUPS] = [
        GroupId::Secrets,
        GroupId::Email,
        GroupId::Digits,
        GroupId::Ipv6,
    ];

    fn build(id: GroupId, kinds: &[PiiKind]) -> Option<Group> {
        if id == GroupId::Ipv6 {
            return kinds.contains(&PiiKind::IpAddress).then_some(Group::Ipv6);
        }
        let enabled: Vec<&Pattern> = PATTERNS
            .iter()
            .filter(|p| p.group == id && kinds.contains(&p.kind))
            .collect();
        if enabled.is_empty() {
            return None;
        }
        let sources: Vec<&str> = enabled.iter().map(|p| p.regex).collect();
        // `auto`: let the regex pick a prefilter from the patterns'
        // literals; off for the Digits group, where a digit-literal
        // prefilter is exactly what dense text makes slow.
        #[allow(
            clippy::expect_used,
            reason = "the patterns are constants; pii_tests compiles every kind alone and all together"
        )]
        let compile = |prefilter: Option<Prefilter>, auto: bool| {
            Regex::builder()
                .configure(Regex::config().prefilter(prefilter).auto_prefilter(auto))
                .build_many(&sources)
                .expect("built-in PII patterns compile")
        };
        let (regex, unfiltered) = if id == GroupId::Digits {
            // Sound because every Digits pattern starts with one of these
            // bytes (checked by a test); the automatic literal extraction
            // gives up on these patterns.
            const STARTS: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+"];
            let prefilter = Prefilter::new(MatchKind::LeftmostFirst, &STARTS);
            (compile(prefilter, false), Some(compile(None, false)))
        } else {
            (compile(None, true), None)
        };
        Some(Group::Regex(RegexGroup {
            id,
            regex,
            unfiltered,
            checks: enabled.iter().map(|p| (p.kind, p.check)).collect(),
        }))
    }

    fn has_digits(&self) -> bool {
        matches!(self, Group::Regex(g) if g.unfiltered.is_some())
    }

    /// The leftmost valid item starting at or after `from`.
    fn next(
        &self,
        text: &str,
        from: usize,
        dense: bool,
        runs: &mut Runs,
    ) -> Option<(PiiKind, Range<usize>)> {
        match self {
            Group::Regex(g) => g.next(text, from, dense, runs),
            Group::Ipv6 => next_ipv6(text, from).map(|r| (PiiKind::IpAddress, r)),
        }
    }
}

impl RegexGroup {
    fn next(
        &self,
        text: &str,
        from: usize,
        dense: bool,
        runs: &mut Runs,
    ) -> Option<(PiiKind, Range<usize>)> {
        let regex = match &self.unfiltered {
            Some(unfiltered) if dense => unfiltered,
            _ => &self.regex,
        };
        let mut at = from;
        while at < text.len() {
            let m = regex.search(&Input::new(text).range(at..))?;
            let start = m.start();
            let first = m.pattern().as_usize();
            let found = self
                .validate(first, text, m.range(), from, runs)
                // Leftmost-first: no pattern before `first` matches at
                // `start`, but a later one may, and may be valid.
                .or_else(|| self.retry_at(first + 1, text, start, from, runs));
            if found.is_some() {
                return found;
            }
            at = self.resume_after_rejection(text.as_bytes(), start);
        }
        None
    }

    /// Where to search next after every pattern was rejected at `start`:
    /// `start + 1` (every pattern starts with an ASCII byte, so that is a
    /// char boundary), or further when the group's start rules prove that
    /// no valid item begins in between, which keeps a long number or token
    /// from yielding a rejected candidate at each of its bytes.
    fn resume_after_rejection(&self, b: &[u8], start: usize) -> usize {
        match self.id {
            // Inside a word run no valid item starts: the patterns need a
            // word boundary or a non-word byte before them, except an
            // IBAN's check digits, whose country letters must open the run;
            // but this candidate put a digit at or before where they would
            // be.
            GroupId::Digits if is_word(b[start]) => run_end(b, start + 1, is_word),
            // Inside a base64url run no token starts (they may not be glued
            // to one); a private key header (`-----BEGIN`) may, so the skip
            // stops at the next `-----`.
            GroupId::Secrets if Class::B64Url.has(b[start]) => {
                let mut i = start + 1;
                while i < b.len() && Class::B64Url.has(b[i]) && !b[i..].starts_with(b"-----") {
                    i += 1;
                }
                i
            }
            _ => start + 1,
        }
    }

    /// Tries patterns `first..` anchored at `start`, in priority order;
    /// returns the first valid one.
    fn retry_at(
        &self,
        first: usize,
        text: &str,
        start: usize,
        from: usize,
        runs: &mut Runs,
    ) -> Option<(PiiKind, Range<usize>)> {
        (first..self.checks.len()).find_map(|pid| {
            let pattern = PatternID::new(pid).ok()?;
            let input = Input::new(text)
                .range(start..)
                .anchored(Anchored::Pattern(pattern));
            let m = self.regex.search(&input)?;
            self.validate(pid, text, m.range(), from, runs)
        })
    }

    /// The kind and true extent of the candidate `range` of pattern `pid`,
    /// if it is a real item that starts at or after `from`.
    fn validate(
        &self,
        pid: usize,
        text: &str,
        range: Range<usize>,
        from: usize,
        runs: &mut Runs,
    ) -> Option<(PiiKind, Range<usize>)> {
        let (kind, check) = *self.checks.get(pid)?;
        let item = check.run(text, range, runs)?;
        // Validation may move the start back (IBAN letters, `(`): never
        // into text before the search position.
        (item.start >= from && item.start < item.end).then_some((kind, item))
    }
}

/// One candidate pattern of a kind, its group and its validator.
struct Pattern {
    kind: PiiKind,
    group: GroupId,
    check: Check,
    regex: &'static str,
}

/// All candidate patterns, in priority order (see the module doc). Every
/// repetition is bounded (see "Cost bounds"); `(?-u:\b)` is the ASCII word
/// boundary, which the lazy DFA handles on any input (the Unicode one makes
/// it give up on non-ASCII text).
const PATTERNS: &[Pattern] = &[
    // ---- secrets: a fixed-size head; the body is measured in Rust.
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::PemKey,
        regex: r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,4}PRIVATE KEY(?: BLOCK)?-----",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::Jwt,
        regex: r"(?-u:\b)eyJ[A-Za-z0-9_-]{7}",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::SkKey,
        regex: r"(?-u:\b)sk-[A-Za-z0-9_-]{16}",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::StripeKey,
        regex: r"(?-u:\b)[rs]k_live_[A-Za-z0-9]{16}",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::Exact,
        regex: r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::Exact,
        regex: r"(?-u:\b)gh[opsru]_[A-Za-z0-9]{36}(?-u:\b)",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::GithubPat,
        regex: r"(?-u:\b)github_pat_[A-Za-z0-9_]{22}",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::SlackToken,
        regex: r"(?-u:\b)xox[abprs]-[A-Za-z0-9-]{8}",
    },
    Pattern {
        kind: PiiKind::Secret,
        group: GroupId::Secrets,
        check: Check::GoogleKey,
        regex: r"(?-u:\b)AIza[A-Za-z0-9_-]{35}",
    },
    // ---- email: the regex is the validation (dot rules, label hyphens,
    // TLD of letters). Local part and labels bounded as in RFC 5321.
    Pattern {
        kind: PiiKind::Email,
        group: GroupId::Email,
        check: Check::Accept,
        regex: r"[A-Za-z0-9_%+-](?:\.?[A-Za-z0-9_%+-]){0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?-u:\b)",
    },
    // ---- Digits group: every pattern starts with a digit or `+`.
    // IBAN from its check digits (so not at a word start): BBAN contiguous
    // or in groups of 4; the country letters are checked (and included) by
    // validation.
    Pattern {
        kind: PiiKind::Iban,
        group: GroupId::Digits,
        check: Check::Iban,
        regex: r"(?-u:\B)[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?-u:\b)",
    },
    // Payment cards: contiguous, 4-4-4-4, or 4-6-5 / 4-6-4 (Amex, Diners).
    Pattern {
        kind: PiiKind::CreditCard,
        group: GroupId::Digits,
        check: Check::Card,
        regex: r"(?-u:\b)(?:[0-9]{13,19}|[0-9]{4}[ -][0-9]{4}[ -][0-9]{4}[ -][0-9]{4}|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5})(?-u:\b)",
    },
    // US SSN: dashes or spaces, not mixed.
    Pattern {
        kind: PiiKind::UsSsn,
        group: GroupId::Digits,
        check: Check::Ssn,
        regex: r"(?-u:\b)(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})(?-u:\b)",
    },
    // NANP with separators: `415-555-0132`, `1 415 555 0132`,
    // `1 (415) 555-0132`; then `(415) 555-0132` from its area code.
    Pattern {
        kind: PiiKind::Phone,
        group: GroupId::Digits,
        check: Check::Nanp,
        regex: r"(?-u:\b)(?:(?:1[ .-]?)?[0-9]{3}[ .-]|1[ .-]?\([0-9]{3}\)[ .-]?)[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
    },
    Pattern {
        kind: PiiKind::Phone,
        group: GroupId::Digits,
        check: Check::NanpParen,
        regex: r"[0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
    },
    Pattern {
        kind: PiiKind::Phone,
        group: GroupId::Digits,
        check: Check::E164,
        regex: r"\+[1-9][0-9]{0,14}(?:(?:[ .-]|[ .-]?\([0-9]{1,5}\)[ .-]?)[0-9]{1,14}){0,7}(?-u:\b)",
    },
    Pattern {
        kind: PiiKind::IpAddress,
        group: GroupId::Digits,
        check: Check::Ipv4,
        regex: r"(?-u:\b)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?-u:\b)",
    },
];

/// Validators. Each gets the candidate's byte range (the regex matched it,
/// so its shape is known) and returns the item's true extent, or `None`.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// The regex says it all.
    Accept,
    /// Fixed-length secret whose regex checks both ends.
    Exact,
    PemKey,
    Jwt,
    SkKey,
    StripeKey,
    GithubPat,
    SlackToken,
    GoogleKey,
    Iban,
    Card,
    Ssn,
    Nanp,
    NanpParen,
    E164,
    Ipv4,
}

impl Check {
    fn run(self, text: &str, range: Range<usize>, runs: &mut Runs) -> Option<Range<usize>> {
        let b = text.as_bytes();
        let Range { start, end } = range;
        if self.is_token() && start > 0 && Class::B64Url.has(b[start - 1]) {
            return None;
        }
        let end = match self {
            Check::Accept | Check::Exact => end,
            Check::PemKey => pem_end(b, end),
            Check::Jwt => jwt_end(b, start, runs)?,
            Check::SkKey => sk_key_end(b, start, runs)?,
            Check::StripeKey => {
                // `sk_live_` / `rk_live_`; 24 characters for old keys, up
                // to 99 for new ones.
                let body = start + 8;
                let end = runs.end(b, Class::Alnum, body);
                let ok = (20..=247).contains(&(end - body)) && looks_random(&b[body..end]);
                ok.then_some(end)?
            }
            Check::GithubPat => {
                // `github_pat_` + 22 + `_` + 59 today; allow some growth.
                let body = start + 11;
                let end = runs.end(b, Class::Word, body);
                let ok = (40..=244).contains(&(end - body)) && looks_random(&b[body..end]);
                ok.then_some(end)?
            }
            Check::SlackToken => {
                // `xoxb-<team>-<user>-<secret>`: long, with digits.
                let body = start + 5;
                let end = runs.end(b, Class::Slack, body);
                let ok = (20..=250).contains(&(end - body))
                    && b[body..end].iter().any(u8::is_ascii_digit);
                ok.then_some(end)?
            }
            // Exactly 35 after `AIza`: the next byte must end the token.
            Check::GoogleKey => {
                let longer = b.get(end).is_some_and(|&c| Class::B64Url.has(c));
                (!longer).then_some(end)?
            }
            Check::Iban => return iban_range(b, start, end),
            Check::Card => card_ok(&b[start..end]).then_some(end)?,
            Check::Ssn => ssn_ok(b, start, end).then_some(end)?,
            Check::Nanp => nanp_ok(b, start, end).then_some(end)?,
            Check::NanpParen => {
                // `(` before the area code, and nothing glued before that.
                let open = start.checked_sub(1).filter(|&i| b[i] == b'(')?;
                let glued = open > 0 && b[open - 1].is_ascii_alphanumeric();
                return (!glued && nanp_ok(b, open, end)).then_some(open..end);
            }
            Check::E164 => e164_end(b, start, end)?,
            Check::Ipv4 => ipv4_ok(b, start, end).then_some(end)?,
        };
        Some(start..end)
    }
}

impl Check {
    /// API keys and tokens: a whole token, not glued to a preceding
    /// base64url byte (`x-sk-…`, `abceyJ…` are pieces of something else).
    /// This also lets the Secrets group skip the rest of a base64url run
    /// after a rejection (see `resume_after_rejection`).
    fn is_token(self) -> bool {
        matches!(
            self,
            Check::Exact
                | Check::Jwt
                | Check::SkKey
                | Check::StripeKey
                | Check::GithubPat
                | Check::SlackToken
                | Check::GoogleKey
        )
    }
}

/// Character classes of secret bodies.
#[derive(Debug, Clone, Copy)]
enum Class {
    /// `[A-Za-z0-9_-]`: base64url (JWT segments, OpenAI/Anthropic/Google
    /// keys).
    B64Url,
    /// `[A-Za-z0-9]` (Stripe).
    Alnum,
    /// `[A-Za-z0-9_]` (GitHub fine-grained tokens).
    Word,
    /// `[A-Za-z0-9-]` (Slack).
    Slack,
}

impl Class {
    const COUNT: usize = 4;

    fn has(self, c: u8) -> bool {
        c.is_ascii_alphanumeric()
            || match self {
                Class::B64Url => c == b'_' || c == b'-',
                Class::Alnum => false,
                Class::Word => c == b'_',
                Class::Slack => c == b'-',
            }
    }
}

/// Per-scan memo of the last measured run of each [`Class`].
///
/// Invariant: for `(start, end) = spans[class]`, every byte in
/// `start..end` is in the class and the byte at `end` (if any) is not. A
/// later query from inside that run is answered without rescanning, so
/// heads that keep starting inside one long run (`sk-sk-sk-…`) cost O(1)
/// each after the first.
struct Runs {
    spans: [(usize, usize); Class::COUNT],
}

impl Runs {
    fn new() -> Self {
        // start > end: matches no position.
        Runs {
            spans: [(usize::MAX, 0); Class::COUNT],
        }
    }

    /// End of the run of `class` bytes starting at `from` (`from` itself
    /// when `b[from]` is not in the class).
    fn end(&mut self, b: &[u8], class: Class, from: usize) -> usize {
        let span = &mut self.spans[class as usize];
        if span.0 <= from && from <= span.1 {
            return span.1;
        }
        let tail = b.get(from..).unwrap_or_default();
        let end = from
            + tail
                .iter()
                .position(|&c| !class.has(c))
                .unwrap_or(tail.len());
        *span = (from, end);
        end
    }
}

/// A key body worth flagging: random-looking, not a kebab-case word list
/// that happens to start with a key prefix. Real keys are base62/base64
/// noise: all three character groups, and a long unbroken alphanumeric
/// stretch.
fn looks_random(body: &[u8]) -> bool {
    let (mut digit, mut upper, mut lower) = (false, false, false);
    let (mut run, mut longest) = (0usize, 0usize);
    for &c in body {
        digit |= c.is_ascii_digit();
        upper |= c.is_ascii_uppercase();
        lower |= c.is_ascii_lowercase();
        run = if c.is_ascii_alphanumeric() {
            run + 1
        } else {
            0
        };
        longest = longest.max(run);
    }
    digit && upper && lower && longest >= 12
}

/// OpenAI (`sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-`) and Anthropic
/// (`sk-ant-`) keys: one base64url run.
fn sk_key_end(b: &[u8], start: usize, runs: &mut Runs) -> Option<usize> {
    let end = runs.end(b, Class::B64Url, start);
    let body = &b[start + 3..end];
    let min = if body.starts_with(b"ant-") { 40 } else { 20 };
    ((min..=250).contains(&body.len()) && looks_random(body)).then_some(end)
}

/// `eyJ<header>.eyJ<payload>.<signature>`: both JSON parts start with
/// `{"` (`eyJ` in base64url); the signature may be empty (`alg: none`),
/// leaving the trailing dot in the match.
fn jwt_end(b: &[u8], start: usize, runs: &mut Runs) -> Option<usize> {
    const MAX_PART: usize = 8192;
    let header_end = runs.end(b, Class::B64Url, start);
    if !(16..=MAX_PART).contains(&(header_end - start)) || b.get(header_end) != Some(&b'.') {
        return None;
    }
    let payload = header_end + 1;
    if !b.get(payload..)?.starts_with(b"eyJ") {
        return None;
    }
    let payload_end = runs.end(b, Class::B64Url, payload);
    if !(10..=MAX_PART).contains(&(payload_end - payload)) || b.get(payload_end) != Some(&b'.') {
        return None;
    }
    let sig = payload_end + 1;
    let end = runs.end(b, Class::B64Url, sig);
    (end == sig || (16..=MAX_PART).contains(&(end - sig))).then_some(end)
}

/// The header alone is a hit; when the matching `-----END … PRIVATE
/// KEY-----` follows within a key's size over plausible body bytes
/// (base64, line breaks, `\n` escapes, `Proc-Type:`/`DEK-Info:` headers),
/// the whole block is, so redaction removes the key material too. The
/// look ahead stops at any other `-----` boundary, so a run of headers
/// costs linear time, not 16 KiB each.
fn pem_end(b: &[u8], header_end: usize) -> usize {
    const MAX_BODY: usize = 16 * 1024;
    const END: &[u8] = b"-----END ";
    let limit = b.len().min(header_end + MAX_BODY);
    let mut i = header_end;
    while i < limit {
        let c = b[i];
        if c == b'-' && b[i..].starts_with(b"-----") {
            if b[i..].starts_with(END) {
                return pem_footer_end(b, i + END.len()).unwrap_or(header_end);
            }
            break;
        }
        let body = c.is_ascii_alphanumeric()
            || matches!(c, b'+' | b'/' | b'=' | b'\\' | b':' | b',' | b'-' | b'.')
            || c.is_ascii_whitespace();
        if !body {
            break;
        }
        i += 1;
    }
    header_end
}

/// End of `<LABEL> PRIVATE KEY[ BLOCK]-----` at `from` (after `-----END `).
fn pem_footer_end(b: &[u8], from: usize) -> Option<usize> {
    let tail = b.get(from..from.saturating_add(80).min(b.len()))?;
    let close = tail.windows(5).position(|w| w == b"-----")?;
    let label = &tail[..close];
    let ok = (label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK"))
        && label
            .iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ');
    ok.then_some(from + close + 5)
}

/// IBAN: known country and length, spacing in groups of 4 (or none), and
/// ISO 7064 mod-97 = 1. The candidate starts at the check digits; the
/// country letters are the two bytes before, at a word start. A candidate
/// that ran into a following short token (`BE68 5390 0754 7034 EUR`) is cut
/// back to the country's length when that falls on a group end.
fn iban_range(b: &[u8], digits: usize, end: usize) -> Option<Range<usize>> {
    let start = digits.checked_sub(2)?;
    if start > 0 && is_word(b[start - 1]) {
        return None;
    }
    let want = iban_length(b[start], b[start + 1])?;
    let mut chars = 0usize;
    let mut cut = None;
    for (i, &c) in b[start..end].iter().enumerate() {
        if c != b' ' {
            chars += 1;
            if chars == want {
                cut = Some(start + i + 1);
                break;
            }
        }
    }
    let end = cut?;
    if end < b.len() && b[end].is_ascii_alphanumeric() {
        return None;
    }
    let iban = &b[start..end];
    if iban.contains(&b' ')
        && !iban
            .iter()
            .enumerate()
            .all(|(i, &c)| (i % 5 == 4) == (c == b' '))
    {
        return None;
    }
    // Rearranged: BBAN, then country and check digits; letters are 10..=35.
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => rem,
        };
    }
    (rem == 1).then_some(start..end)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// IBAN length per country (ISO 13616 registry): SEPA and other common
/// countries.
fn iban_length(a: u8, b: u8) -> Option<usize> {
    let n = match [a, b] {
        [b'N', b'O'] => 15,
        [b'B', b'E'] => 16,
        [b'D', b'K'] | [b'F', b'I'] | [b'F', b'O'] | [b'G', b'L'] | [b'N', b'L'] => 18,
        [b'M', b'K'] | [b'S', b'I'] => 19,
        [b'A', b'T']
        | [b'B', b'A']
        | [b'E', b'E']
        | [b'K', b'Z']
        | [b'L', b'T']
        | [b'L', b'U']
        | [b'X', b'K'] => 20,
        [b'C', b'H'] | [b'H', b'R'] | [b'L', b'I'] | [b'L', b'V'] => 21,
        [b'B', b'G']
        | [b'B', b'H']
        | [b'C', b'R']
        | [b'D', b'E']
        | [b'G', b'B']
        | [b'G', b'E']
        | [b'I', b'E']
        | [b'M', b'E']
        | [b'R', b'S']
        | [b'V', b'A'] => 22,
        [b'A', b'E'] | [b'G', b'I'] | [b'I', b'L'] => 23,
        [b'A', b'D']
        | [b'C', b'Z']
        | [b'E', b'S']
        | [b'M', b'D']
        | [b'P', b'K']
        | [b'R', b'O']
        | [b'S', b'A']
        | [b'S', b'E']
        | [b'S', b'K']
        | [b'T', b'N']
        | [b'V', b'G'] => 24,
        [b'P', b'T'] => 25,
        [b'I', b'S'] | [b'T', b'R'] => 26,
        [b'F', b'R'] | [b'G', b'R'] | [b'I', b'T'] | [b'M', b'C'] | [b'M', b'R'] | [b'S', b'M'] => {
            27
        }
        [b'A', b'L']
        | [b'A', b'Z']
        | [b'C', b'Y']
        | [b'D', b'O']
        | [b'G', b'T']
        | [b'H', b'U']
        | [b'L', b'B']
        | [b'P', b'L'] => 28,
        [b'B', b'R'] | [b'E', b'G'] | [b'P', b'S'] | [b'Q', b'A'] | [b'U', b'A'] => 29,
        [b'J', b'O'] | [b'K', b'W'] | [b'M', b'U'] => 30,
        [b'M', b'T'] => 31,
        _ => return None,
    };
    Some(n)
}

/// Card number: one separator style, a plausible issuer prefix for its
/// length, and the Luhn check.
fn card_ok(s: &[u8]) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut sep = None;
    for &c in s {
        if c.is_ascii_digit() {
            // The regex allows at most 19 digits.
            let Some(slot) = digits.get_mut(n) else {
                return false;
            };
            *slot = c - b'0';
            n += 1;
        } else if *sep.get_or_insert(c) != c {
            return false;
        }
    }
    let d = &digits[..n];
    issuer_ok(d) && luhn_ok(d)
}

/// Issuer identification number ranges and the lengths each issuer uses.
fn issuer_ok(d: &[u8]) -> bool {
    let n = d.len();
    if n < 13 {
        return false;
    }
    let prefix = |k: usize| d[..k].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    let (p2, p3, p4) = (prefix(2), prefix(3), prefix(4));
    match d[0] {
        // Visa.
        4 => matches!(n, 13 | 16 | 19),
        // Mastercard, old and 2-series ranges.
        5 => (51..=55).contains(&p2) && n == 16,
        2 => (2221..=2720).contains(&p4) && n == 16,
        // Amex; JCB; Diners Club.
        3 => match p2 {
            34 | 37 => n == 15,
            35 => (3528..=3589).contains(&p4) && (16..=19).contains(&n),
            30 | 36 | 38 => (14..=19).contains(&n),
            _ => false,
        },
        // Discover.
        6 => (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3)) && (16..=19).contains(&n),
        _ => false,
    }
}

fn luhn_ok(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `true` when the digits at `start..end` continue, through `sep`, into
/// another digit group on either side (`1-123-45-6789`,
/// `415-555-0132-7`): then they are part of a longer number.
fn continues_digit_run(b: &[u8], start: usize, end: usize, seps: &[u8]) -> bool {
    let before = start >= 2 && seps.contains(&b[start - 1]) && b[start - 2].is_ascii_digit();
    let after = end + 1 < b.len() && seps.contains(&b[end]) && b[end + 1].is_ascii_digit();
    before || after
}

fn digit_value(b: &[u8], range: Range<usize>) -> u32 {
    b[range]
        .iter()
        .fold(0, |acc, &c| acc * 10 + u32::from(c.wrapping_sub(b'0')))
}

/// AAA-GG-SSSS: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn_ok(b: &[u8], start: usize, end: usize) -> bool {
    let sep = b[start + 3];
    let area = digit_value(b, start..start + 3);
    let group = digit_value(b, start + 4..start + 6);
    let serial = digit_value(b, start + 7..start + 11);
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && !continues_digit_run(b, start, end, &[sep])
}

/// NANP: area code and exchange start with 2-9; without parentheses the
/// two separators agree (`415-555.0132` is not a phone number).
fn nanp_ok(b: &[u8], start: usize, end: usize) -> bool {
    let s = &b[start..end];
    let mut digits = [0u8; 11];
    let mut n = 0;
    for &c in s {
        if c.is_ascii_digit() {
            let Some(slot) = digits.get_mut(n) else {
                return false;
            };
            *slot = c - b'0';
            n += 1;
        }
    }
    let d = if n == 11 { &digits[1..] } else { &digits[..10] };
    if d[0] < 2 || d[3] < 2 {
        return false;
    }
    let paren = s.contains(&b')');
    // Separators between exchange and line, and between area and exchange.
    let last_sep = s[s.len() - 5];
    if !paren {
        let first_sep = s[s.len() - 9];
        if first_sep != last_sep {
            return false;
        }
    }
    let seps: &[u8] = if last_sep == b' ' { b"-. " } else { b"-." };
    !continues_digit_run(b, start, end, seps)
}

/// E.164: `+`, country code not starting with 0, 8-15 digits. Country code
/// 1 is NANP: exactly 11 digits with a valid area code and exchange. A
/// greedy candidate that took in a following number (`+1 415 555 0132
/// 2024`) is cut back at a group end.
fn e164_end(b: &[u8], start: usize, end: usize) -> Option<usize> {
    if start > 0 && b[start - 1].is_ascii_alphanumeric() {
        return None;
    }
    let nanp = b[start + 1] == b'1';
    let mut digits = [0u8; 16];
    let mut n = 0usize;
    let mut best = None;
    for i in start + 1..end {
        let c = b[i];
        if !c.is_ascii_digit() {
            continue;
        }
        if n < digits.len() {
            digits[n] = c - b'0';
        }
        n += 1;
        let group_end = i + 1 == end || !b[i + 1].is_ascii_digit();
        if group_end {
            let fits = if nanp { n == 11 } else { (8..=15).contains(&n) };
            if fits {
                best = Some(i + 1);
            }
        }
    }
    if nanp && (digits[1] < 2 || digits[4] < 2) {
        return None;
    }
    best
}

/// Dotted quad, each octet 0-255 without leading zeros, and not a piece of
/// a longer dotted number (`1.2.3.4.5`, `10.1.2.3.4`).
fn ipv4_ok(b: &[u8], start: usize, end: usize) -> bool {
    let octets_ok = b[start..end].split(|&c| c == b'.').all(|o| {
        (o.len() == 1 || o[0] != b'0')
            && o.iter()
                .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
                <= 255
    });
    octets_ok && !continues_digit_run(b, start, end, b".")
}

/// Longest IPv6 text: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const IPV6_MAX: usize = 45;

/// The next IPv6 address starting at or after `from`. Every address has a
/// `:`, found with `memchr`; the candidate is the maximal run of address
/// bytes around it ([`ipv6_at`]). Runs are disjoint and each is looked at
/// once (the look back is bounded), so the scan is linear.
fn next_ipv6(text: &str, from: usize) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let mut at = from;
    while at < b.len() {
        // `at` is `from` or the end of a run of ASCII bytes: a char
        // boundary.
        let colon = at + text.get(at..)?.find(':')?;
        let floor = colon.saturating_sub(IPV6_MAX + 1).max(from);
        let start = colon
            - b[floor..colon]
                .iter()
                .rev()
                .take_while(|&&c| ipv6_byte(c))
                .count();
        // A run that began before `from` (or is too long to look back
        // over) has no valid start at or after `from`: only a run's first
        // byte can start an address.
        let whole_run = start == 0 || !ipv6_byte(b[start - 1]);
        if whole_run {
            if let Some(r) = ipv6_at(text, start) {
                return Some(r);
            }
        }
        at = run_end(b, colon, ipv6_byte);
    }
    None
}

/// The IPv6 address starting at `start`, if any: the maximal run of
/// `[0-9A-Fa-f:.]` from there (less one trailing `.` or `:` ending a
/// clause), not glued to a word or another address byte on either side,
/// that `Ipv6Addr` parses, with at least one decimal digit and either three
/// groups or a group of 3+ characters. The last two rule out code like
/// `a::b`, `Add::add`, `dead::beef` and slices like `x[1::2]`, `x[::1]`.
fn ipv6_at(text: &str, start: usize) -> Option<Range<usize>> {
    let b = text.as_bytes();
    if !b.get(start).is_some_and(|&c| ipv6_byte(c)) || (start > 0 && ipv6_glued(b[start - 1])) {
        return None;
    }
    let run = b[start..]
        .iter()
        .take(IPV6_MAX + 2)
        .take_while(|&&c| ipv6_byte(c))
        .count();
    let mut end = start + run;
    if run > IPV6_MAX + 1 || b.get(end).is_some_and(|&c| is_word(c)) {
        return None;
    }
    if matches!(b[end - 1], b'.' | b':') && !b[start..end].ends_with(b"::") {
        end -= 1;
    }
    let s = text.get(start..end)?;
    // Cheap shape checks first: only `::` or eight groups (six and an IPv4
    // tail) can parse, which times (`10:31:07`) and MACs fail.
    let colons = s.bytes().filter(|&c| c == b':').count();
    let shape = s.contains("::") || colons == 7 || (colons == 6 && s.contains('.'));
    if !shape || !s.bytes().any(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<std::net::Ipv6Addr>().ok()?;
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    let wide = s.split([':', '.']).any(|g| g.len() >= 3);
    (groups >= 3 || wide).then_some(start..end)
}

/// Bytes an IPv6 address is written with.
fn ipv6_byte(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// Whether digits are dense enough (more than about one byte in six) that
/// a DFA over every byte beats a prefilter restarted after every number.
/// Estimated from four 64-byte windows spread over the text (whole windows
/// rather than a stride, which fixed-width rows could alias), so the guess
/// costs the same for any length; being wrong costs speed, never results.
fn digits_dense(b: &[u8]) -> bool {
    const WINDOW: usize = 64;
    const WINDOWS: usize = 4;
    let count = |w: &[u8]| -> usize {
        w.iter()
            .map(|&c| usize::from(c.wrapping_sub(b'0') < 10))
            .sum()
    };
    let (digits, sampled) = if b.len() <= WINDOW * WINDOWS {
        (count(b), b.len())
    } else {
        let step = (b.len() - WINDOW) / (WINDOWS - 1);
        let digits = (0..WINDOWS)
            .map(|i| count(&b[i * step..i * step + WINDOW]))
            .sum();
        (digits, WINDOW * WINDOWS)
    };
    digits * 6 > sampled
}

/// End of the run of bytes satisfying `pred` that starts at `from`.
fn run_end(b: &[u8], from: usize, pred: fn(u8) -> bool) -> usize {
    from + b[from..].iter().take_while(|&&c| pred(c)).count()
}

/// Bytes that continue an address-like token: an IPv6 address must not be
/// glued to one on either side.
fn ipv6_glued(c: u8) -> bool {
    is_word(c) || c == b':' || c == b'.'
}

#[cfg(test)]
#[path = "pii_tests.rs"]
mod tests;
