//! Tests for the PII detectors.
//!
//! The `corpus_*` tests run the committed corpus in
//! `policy/tests/data/pii/`: one file per kind (`<kind name>.txt`) plus
//! `mixed.txt`. Format, also stated at the top of each file: `#` lines and
//! blank lines are ignored; `[positive]` and `[negative]` start sections.
//! A positive line marks every expected item with `«…»`, or `«kind:…»` to
//! name another kind (required in `mixed.txt`). Markers are removed before
//! scanning.
//!
//! - Per-kind positive: the kind alone reports exactly the marked items, in
//!   order, with exactly the marked text; with all kinds enabled, each
//!   marked item is still reported, as the same kind.
//! - Per-kind negative: nothing with the kind alone, nothing of that kind
//!   with all kinds.
//! - `mixed.txt`: all kinds enabled; a positive line yields exactly the
//!   marked items, a negative line nothing at all.
//!
//! Besides the corpus: `agrees_with_brute_force_on_random_text` checks the
//! grouped, prefiltered, skipping scan against a brute-force reference
//! (every pattern anchored at every position) on random text made of
//! tricky fragments, with both variants of the Digits regex; the
//! pathological-input test does the same on adversarial repetitions.

use super::*;

type Found = Vec<(PiiKind, String)>;

/// `find`, checked: well-formed ranges, and the same result with either
/// variant of the Digits regex.
fn scan(det: &PiiDetector, text: &str) -> Found {
    let mut out = Vec::new();
    det.find(text, &mut out);
    check_ranges(text, &out);
    for dense in [false, true] {
        let mut other = Vec::new();
        det.find_with(text, dense, &mut other);
        assert_eq!(other, out, "dense {dense}: {text:?}");
    }
    out.into_iter()
        .map(|(k, r)| (k, text[r].to_owned()))
        .collect()
}

fn check_ranges(text: &str, out: &[(PiiKind, Range<usize>)]) {
    let mut last = 0;
    for (kind, r) in out {
        assert!(
            r.start < r.end,
            "empty range {r:?} for {kind:?} in {text:?}"
        );
        assert!(r.start >= last, "overlap or disorder at {r:?} in {text:?}");
        assert!(
            text.get(r.clone()).is_some(),
            "not on char boundaries: {r:?}"
        );
        last = r.end;
    }
}

fn alone(kind: PiiKind) -> PiiDetector {
    PiiDetector::new(&[kind])
}

fn all() -> PiiDetector {
    PiiDetector::new(&PiiKind::ALL)
}

fn kind_named(name: &str) -> Option<PiiKind> {
    PiiKind::ALL.into_iter().find(|k| k.name() == name)
}

struct Case {
    line: usize,
    text: String,
    expected: Found,
}

/// Splits a corpus file into (positives, negatives).
fn parse_corpus(src: &str, default: Option<PiiKind>) -> (Vec<Case>, Vec<Case>) {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let mut section = None;
    for (i, raw) in src.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        match raw {
            "[positive]" => section = Some(true),
            "[negative]" => section = Some(false),
            _ => {
                let (text, expected) = strip_markers(raw, default, line);
                let case = Case {
                    line,
                    text,
                    expected,
                };
                match section {
                    Some(true) => {
                        assert!(
                            !case.expected.is_empty(),
                            "line {line}: positive without «»"
                        );
                        pos.push(case);
                    }
                    Some(false) => {
                        assert!(
                            case.expected.is_empty(),
                            "line {line}: marker in a negative"
                        );
                        neg.push(case);
                    }
                    None => panic!("line {line}: text before any section"),
                }
            }
        }
    }
    (pos, neg)
}

fn strip_markers(raw: &str, default: Option<PiiKind>, line: usize) -> (String, Found) {
    let mut text = String::new();
    let mut expected = Vec::new();
    let mut rest = raw;
    while let Some(open) = rest.find('«') {
        text.push_str(&rest[..open]);
        let after = &rest[open + '«'.len_utf8()..];
        let close = after
            .find('»')
            .unwrap_or_else(|| panic!("line {line}: unclosed «"));
        let marked = &after[..close];
        let (kind, item) = match marked.split_once(':') {
            Some((name, item)) if kind_named(name).is_some() => (kind_named(name), item),
            _ => (default, marked),
        };
        let kind = kind.unwrap_or_else(|| panic!("line {line}: marker without a kind"));
        text.push_str(item);
        expected.push((kind, item.to_owned()));
        rest = &after[close + '»'.len_utf8()..];
    }
    text.push_str(rest);
    (text, expected)
}

fn run_kind_corpus(kind: PiiKind, src: &str) {
    let (pos, neg) = parse_corpus(src, Some(kind));
    assert!(
        pos.len() >= 12,
        "{}: only {} positives",
        kind.name(),
        pos.len()
    );
    assert!(
        neg.len() >= 12,
        "{}: only {} negatives",
        kind.name(),
        neg.len()
    );
    let (one, every) = (alone(kind), all());
    let mut failures = Vec::new();
    for case in &pos {
        let got = scan(&one, &case.text);
        if got != case.expected {
            failures.push(format!(
                "line {} (alone): want {:?}, got {:?}",
                case.line, case.expected, got
            ));
        }
        let got_all = scan(&every, &case.text);
        for item in &case.expected {
            if !got_all.contains(item) {
                failures.push(format!(
                    "line {} (all kinds): missing {:?}, got {:?}",
                    case.line, item, got_all
                ));
            }
        }
    }
    for case in &neg {
        let got = scan(&one, &case.text);
        if !got.is_empty() {
            failures.push(format!(
                "line {} (alone): want nothing, got {:?}",
                case.line, got
            ));
        }
        let got_all: Found = scan(&every, &case.text)
            .into_iter()
            .filter(|(k, _)| *k == kind)
            .collect();
        if !got_all.is_empty() {
            failures.push(format!(
                "line {} (all kinds): want no {}, got {:?}",
                case.line,
                kind.name(),
                got_all
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}.txt:\n{}",
        kind.name(),
        failures.join("\n")
    );
}

#[test]
fn corpus_email() {
    run_kind_corpus(
        PiiKind::Email,
        include_str!("../../tests/data/pii/email.txt"),
    );
}

#[test]
fn corpus_phone() {
    run_kind_corpus(
        PiiKind::Phone,
        include_str!("../../tests/data/pii/phone.txt"),
    );
}

#[test]
fn corpus_credit_card() {
    run_kind_corpus(
        PiiKind::CreditCard,
        include_str!("../../tests/data/pii/credit_card.txt"),
    );
}

#[test]
fn corpus_iban() {
    run_kind_corpus(PiiKind::Iban, include_str!("../../tests/data/pii/iban.txt"));
}

#[test]
fn corpus_us_ssn() {
    run_kind_corpus(
        PiiKind::UsSsn,
        include_str!("../../tests/data/pii/us_ssn.txt"),
    );
}

#[test]
fn corpus_ip_address() {
    run_kind_corpus(
        PiiKind::IpAddress,
        include_str!("../../tests/data/pii/ip_address.txt"),
    );
}

#[test]
fn corpus_secret() {
    run_kind_corpus(
        PiiKind::Secret,
        include_str!("../../tests/data/pii/secret.txt"),
    );
}

#[test]
fn corpus_mixed() {
    let (pos, neg) = parse_corpus(include_str!("../../tests/data/pii/mixed.txt"), None);
    let every = all();
    let mut failures = Vec::new();
    for case in pos.iter().chain(&neg) {
        let got = scan(&every, &case.text);
        if got != case.expected {
            failures.push(format!(
                "line {}: want {:?}, got {:?}",
                case.line, case.expected, got
            ));
        }
    }
    assert!(failures.is_empty(), "mixed.txt:\n{}", failures.join("\n"));
}

#[test]
fn every_kind_alone_and_all_together_compile() {
    for kind in PiiKind::ALL {
        let det = alone(kind);
        assert_eq!(det.kinds(), &[kind]);
        assert!(!det.groups.is_empty());
    }
    assert_eq!(all().kinds(), &PiiKind::ALL);
}

/// The Digits group's prefilter only looks for digits and `+`: no Digits
/// pattern may match starting with any other byte, in any look-behind
/// context (start of text, after a word byte, after a non-word byte).
#[test]
fn digits_prefilter_is_sound() {
    use regex_automata::hybrid::dfa::DFA;
    for p in PATTERNS.iter().filter(|p| p.group == GroupId::Digits) {
        let dfa = DFA::new(p.regex).unwrap();
        let mut cache = dfa.create_cache();
        for (hay, at) in [("", 0), ("a", 1), (" ", 1)] {
            let input = Input::new(hay).range(at..).anchored(Anchored::Yes);
            let start = dfa.start_state_forward(&mut cache, &input).unwrap();
            for byte in 0..=255u8 {
                if byte.is_ascii_digit() || byte == b'+' {
                    continue;
                }
                let next = dfa.next_state(&mut cache, start, byte).unwrap();
                assert!(
                    next.is_dead(),
                    "{:?} can start with {:?}",
                    p.regex,
                    byte as char
                );
            }
        }
    }
}

#[test]
fn digit_density_estimate() {
    assert!(!digits_dense(
        b"plain words, a date 2024-06-30 and not much else"
    ));
    assert!(digits_dense(
        b"1000234567,88123,129.99,USD,2024-06-30 10:31:07"
    ));
    let prose = "The customer asked about the renewal of the annual plan. ".repeat(80);
    assert!(!digits_dense(prose.as_bytes()));
    let csv = "1000234567,88123,129.99,USD,2024-06-30 10:31:07,paid\n".repeat(80);
    assert!(digits_dense(csv.as_bytes()));
}

#[test]
fn no_kinds_finds_nothing() {
    let det = PiiDetector::new(&[]);
    assert!(det.kinds().is_empty());
    assert!(scan(&det, "jane@example.com 4111 1111 1111 1111").is_empty());
}

#[test]
fn shareable_across_threads() {
    fn assert_traits<T: Clone + std::fmt::Debug + Send + Sync + 'static>() {}
    assert_traits::<PiiDetector>();
    let det = all();
    let text = "mail jane@example.com from 10.0.0.1";
    let want = scan(&det, text);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(scan(&det, text), want));
        }
    });
    assert_eq!(scan(&det.clone(), text), want);
}

#[test]
fn serde_names_match_name() {
    for kind in PiiKind::ALL {
        let parsed: PiiKind = serde_json::from_str(&format!("\"{}\"", kind.name())).unwrap();
        assert_eq!(parsed, kind);
    }
    assert!(serde_json::from_str::<PiiKind>("\"CreditCard\"").is_err());
}

#[test]
fn appends_without_clearing() {
    let det = alone(PiiKind::Email);
    let mut out = vec![(PiiKind::Secret, 0..1)];
    det.find("a jane@example.com", &mut out);
    assert_eq!(out, vec![(PiiKind::Secret, 0..1), (PiiKind::Email, 2..18)]);
}

#[test]
fn kind_order_does_not_change_results() {
    let text = "Jane <jane@example.com>, +1 415 555 0132, 4111-1111-1111-1111, \
                123-45-6789, 10.0.0.1, DE89370400440532013000, AKIAIOSFODNN7EXAMPLE";
    let mut reversed = PiiKind::ALL;
    reversed.reverse();
    let got = scan(&PiiDetector::new(&reversed), text);
    assert_eq!(got, scan(&all(), text));
    assert_eq!(got.len(), 7);
}

#[test]
fn non_ascii_text_around_items() {
    let text = "Grüße — écrivez à «jane@example.fr» ou appelez le +33 1 23 45 67 89… \
                服务器 10.0.0.1。";
    let got = scan(&all(), text);
    assert_eq!(
        got,
        vec![
            (PiiKind::Email, "jane@example.fr".to_owned()),
            (PiiKind::Phone, "+33 1 23 45 67 89".to_owned()),
            (PiiKind::IpAddress, "10.0.0.1".to_owned()),
        ]
    );
}

#[test]
fn multi_line_pem_block_is_one_item() {
    let text = "key:\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oBOgcWzpaeLKoAoGCCqGSM49\nAwEHoUQDQgAEh5jq9SvUTKkTQrqZQ0LGVnYmfuWCt3pHsUwZgQWPLS6nBmZfyiPp\n-----END EC PRIVATE KEY-----\nthanks";
    let got = scan(&alone(PiiKind::Secret), text);
    assert_eq!(got.len(), 1);
    assert!(got[0].1.starts_with("-----BEGIN EC PRIVATE KEY-----\nMHcC"));
    assert!(got[0].1.ends_with("-----END EC PRIVATE KEY-----"));
    // Two headers: two items; the look for a footer stops at the second.
    let two = "-----BEGIN RSA PRIVATE KEY-----\n-----BEGIN RSA PRIVATE KEY-----";
    assert_eq!(scan(&alone(PiiKind::Secret), two).len(), 2);
    // No footer: the header alone.
    let got = scan(
        &alone(PiiKind::Secret),
        "-----BEGIN PRIVATE KEY-----\nMIIE… (cut)",
    );
    assert_eq!(
        got,
        vec![(PiiKind::Secret, "-----BEGIN PRIVATE KEY-----".to_owned())]
    );
}

#[test]
fn every_single_digit_change_breaks_an_iban() {
    let det = alone(PiiKind::Iban);
    for iban in [
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "FR1420041010050500013M02606",
        "NO9386011117947",
    ] {
        let text = format!("IBAN {iban}.");
        assert_eq!(scan(&det, &text).len(), 1, "{iban}");
        for i in 2..iban.len() {
            let c = iban.as_bytes()[i];
            if !c.is_ascii_digit() {
                continue;
            }
            for d in b'0'..=b'9' {
                if d == c {
                    continue;
                }
                let mut bad = iban.as_bytes().to_vec();
                bad[i] = d;
                let bad = String::from_utf8(bad).unwrap();
                assert!(scan(&det, &format!("IBAN {bad}.")).is_empty(), "{bad}");
            }
        }
    }
}

#[test]
fn every_single_digit_change_breaks_a_card() {
    let det = alone(PiiKind::CreditCard);
    for card in ["4111111111111111", "5555555555554444", "378282246310005"] {
        assert_eq!(scan(&det, &format!("card {card}.")).len(), 1, "{card}");
        // From the third digit on, so the issuer prefix stays valid.
        for i in 2..card.len() {
            let c = card.as_bytes()[i];
            for d in b'0'..=b'9' {
                if d == c {
                    continue;
                }
                let mut bad = card.as_bytes().to_vec();
                bad[i] = d;
                let bad = String::from_utf8(bad).unwrap();
                assert!(scan(&det, &format!("card {bad}.")).is_empty(), "{bad}");
            }
        }
    }
}

#[test]
fn luhn_and_issuer() {
    let digits = |s: &str| s.bytes().map(|c| c - b'0').collect::<Vec<_>>();
    assert!(luhn_ok(&digits("79927398713")));
    assert!(!luhn_ok(&digits("79927398710")));
    assert!(issuer_ok(&digits("2720935533247229")));
    assert!(!issuer_ok(&digits("2721191189278220")));
    assert!(!issuer_ok(&digits("411111111111")));
}

#[test]
fn rejected_candidate_does_not_hide_an_overlapping_item() {
    // The IBAN candidate `DE00 4111 …` fails (too short for DE); the card
    // inside it is still found.
    let got = scan(&all(), "DE00 4111 1111 1111 1111");
    assert_eq!(
        got,
        vec![(PiiKind::CreditCard, "4111 1111 1111 1111".to_owned())]
    );
    // Same start: the `sk-` head is rejected, the email at the same start
    // wins.
    let got = scan(&all(), "sk-notarealkeyatall-x@example.com");
    assert_eq!(
        got,
        vec![(
            PiiKind::Email,
            "sk-notarealkeyatall-x@example.com".to_owned()
        )]
    );
}

#[test]
fn long_candidates_are_cut_back() {
    let got = scan(&all(), "+1 415 555 0132 2024 and BE68 5390 0754 7034 EUR");
    assert_eq!(
        got,
        vec![
            (PiiKind::Phone, "+1 415 555 0132".to_owned()),
            (PiiKind::Iban, "BE68 5390 0754 7034".to_owned()),
        ]
    );
}

#[test]
fn tokens_are_whole_tokens() {
    let det = alone(PiiKind::Secret);
    let key = "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";
    assert_eq!(scan(&det, &format!("key={key}")).len(), 1);
    assert!(scan(&det, &format!("x-{key}")).is_empty());
    // A key header glued to base64 (a chain in a JSON string) still counts.
    let pem = "\\n-----BEGIN PRIVATE KEY-----";
    assert_eq!(
        scan(&det, pem),
        vec![(PiiKind::Secret, pem[2..].to_owned())]
    );
    // After a rejected (glued) key, the skip over its base64url run stops
    // at a key header.
    let text = format!("x-{key}-----BEGIN PRIVATE KEY-----");
    let header = "-----BEGIN PRIVATE KEY-----".to_owned();
    assert_eq!(scan(&det, &text), vec![(PiiKind::Secret, header)]);
}

#[test]
fn secret_body_bounds() {
    let det = alone(PiiKind::Secret);
    let body: String = "aB3".repeat(100);
    // 300 characters after `sk-`: over the bound.
    assert!(scan(&det, &format!("sk-{body}")).is_empty());
    assert_eq!(scan(&det, &format!("sk-{}", &body[..60])).len(), 1);
    // Exactly 36 after `ghp_`, bounded on both sides.
    let tok = &body[..36];
    assert_eq!(scan(&det, &format!("(ghp_{tok})")).len(), 1);
    assert!(scan(&det, &format!("xghp_{tok}")).is_empty());
}

/// Adversarial inputs where every few bytes start a candidate that is then
/// rejected: results agree with the brute-force reference (and the scan is
/// linear; the bench reports the time).
#[test]
fn pathological_inputs_are_handled() {
    let det = all();
    for unit in [
        "sk-",
        "1.1.",
        "a.",
        "1:",
        "eyJa-",
        "4111 ",
        "+1 ",
        "AB12 ",
        "-----BEGIN ",
        "-----BEGIN PRIVATE KEY-----\n",
        "10:31:07 ",
        "std::io::",
    ] {
        let small = unit.repeat(1024 / unit.len());
        let want: Found = brute_force(&PiiKind::ALL, &small)
            .into_iter()
            .map(|(k, r)| (k, small[r].to_owned()))
            .collect();
        assert_eq!(scan(&det, &small), want, "{unit:?}");
        let text = unit.repeat(16 * 1024 / unit.len());
        let got = scan(&det, &text);
        assert!(got.len() <= text.len() / 4, "{unit:?}: {}", got.len());
    }
    let long_local = format!("{}@example.com", "a".repeat(5000));
    let got = scan(&det, &long_local);
    assert_eq!(got.len(), 1);
    assert!(got[0].1.ends_with("@example.com"));
}

/// Reference semantics, by brute force: every pattern anchored at every
/// position, validated, and [`ipv6_at`] at every position (last in
/// priority); then greedily the valid item with the smallest (start,
/// priority), resuming at its end.
fn brute_force(kinds: &[PiiKind], text: &str) -> Vec<(PiiKind, Range<usize>)> {
    let mut runs = Runs::new();
    let mut items = Vec::new();
    for (prio, p) in PATTERNS.iter().enumerate() {
        if !kinds.contains(&p.kind) {
            continue;
        }
        let re = Regex::new(p.regex).unwrap();
        for c in 0..text.len() {
            let input = Input::new(text).range(c..).anchored(Anchored::Yes);
            if let Some(m) = re.search(&input) {
                if let Some(r) = p.check.run(text, m.range(), &mut runs) {
                    items.push((r.start, prio, p.kind, r));
                }
            }
        }
    }
    if kinds.contains(&PiiKind::IpAddress) {
        for c in 0..text.len() {
            if let Some(r) = ipv6_at(text, c) {
                items.push((r.start, PATTERNS.len(), PiiKind::IpAddress, r));
            }
        }
    }
    items.sort_by_key(|(start, prio, _, _)| (*start, *prio));
    let mut out = Vec::new();
    let mut at = 0;
    for (start, _, kind, range) in items {
        if start >= at {
            at = range.end;
            out.push((kind, range));
        }
    }
    out
}

/// The grouped, prefiltered, skipping scan agrees with the brute-force
/// reference on random text made of tricky fragments.
#[test]
fn agrees_with_brute_force_on_random_text() {
    const FRAGMENTS: &[&str] = &[
        " ",
        " ",
        " ",
        "-",
        ".",
        ":",
        "::",
        "(",
        ")",
        "+",
        "@",
        "\n",
        "_",
        ",",
        "/",
        "the",
        "and",
        "Ab",
        "DE",
        "GB",
        "NO",
        "x",
        "e",
        "fe80",
        "db8",
        "a",
        "0",
        "1",
        "12",
        "123",
        "415",
        "555",
        "0132",
        "4111",
        "1111",
        "45",
        "6789",
        "2024",
        "255",
        "256",
        "01",
        "89",
        "3704",
        "0044",
        "0532",
        "0130",
        "00",
        "WEST",
        "9",
        "37",
        "6011",
        "1.1",
        "10.0.0.1",
        "1.2.3.4.5",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "BE68 5390 0754 7034",
        "4111111111111111",
        "4111 1111 1111 1111",
        "378282246310005",
        "123-45-6789",
        "415-555-0132",
        "(415) 555-0132",
        "+1 415 555 0132",
        "+44 20 7946 0958",
        "2001:db8::1",
        "::ffff:192.0.2.128",
        "12:30:45",
        "jane@example.com",
        "a.b@c.io",
        "sk-",
        "AKIAIOSFODNN7EXAMPLE",
        "eyJ",
        "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",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyLTQyIiwiYWRtaW4iOnRydWV9.",
        "-----BEGIN PRIVATE KEY-----",
        "-----END PRIVATE KEY-----",
        "ghp_",
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let detectors: Vec<(Vec<PiiKind>, PiiDetector)> = [
        PiiKind::ALL.to_vec(),
        vec![PiiKind::IpAddress],
        vec![PiiKind::Iban, PiiKind::CreditCard],
        vec![PiiKind::Phone, PiiKind::UsSsn],
    ]
    .into_iter()
    .map(|k| {
        let d = PiiDetector::new(&k);
        (k, d)
    })
    .collect();
    let mut found = 0;
    for round in 0..400 {
        let len = 3 + rand(30);
        let mut text = String::new();
        for _ in 0..len {
            text.push_str(FRAGMENTS[rand(FRAGMENTS.len())]);
            if rand(2) == 0 {
                text.push(' ');
            }
        }
        for (kinds, det) in &detectors {
            let want = brute_force(kinds, &text);
            // Both variants of the Digits regex, whatever the density.
            for dense in [false, true] {
                let mut got = Vec::new();
                det.find_with(&text, dense, &mut got);
                assert_eq!(
                    got, want,
                    "round {round}, dense {dense}, kinds {kinds:?}, text {text:?}"
                );
            }
            found += want.len();
        }
    }
    // Keeps the test meaningful if the fragments change.
    assert!(found > 1000, "only {found} items in all rounds");
}
