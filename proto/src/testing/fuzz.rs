//! The properties the fuzz targets check, shared with `tests/fuzz_corpus.rs`
//! so that `cargo test` replays the seed corpora on stable Rust.
//!
//! Each function takes arbitrary bytes and panics (through `assert!`) when a
//! property is broken; returning normally means the input is fine, including
//! inputs the parsers rightly reject.

use crate::chunked::{ChunkedDecoder, ChunkedError, ChunkedLimits};
use crate::h1::{parse_request, parse_response, HeadLimits, Method, Span};
use crate::json::{find_top_level, members_rev, patch_object, top_level_members, Edit};
use crate::sse::{SseError, SseFramer};

/// `parse_request` never panics; a parsed head's spans lie within its
/// `head_len`, which lies within the input and the limit; the head parses the
/// same from exactly its own bytes and is "need more" one byte short.
pub fn h1_request(data: &[u8]) {
    for limits in [
        HeadLimits::default(),
        HeadLimits {
            max_head_bytes: 64,
            max_headers: 3,
        },
    ] {
        let Ok(Some(head)) = parse_request(data, &limits) else {
            continue;
        };
        assert!(head.head_len <= data.len());
        assert!(head.head_len <= limits.max_head_bytes);
        assert!(head.headers.len() <= limits.max_headers);
        let within = |s: Span| s.start <= s.end && s.end as usize <= head.head_len;
        assert!(within(head.target));
        assert!(!head.target.is_empty());
        assert!(head.target.start <= head.origin.start && head.origin.end == head.target.end);
        assert!(head.path(data).first() == Some(&b'/') || head.origin == head.target);
        let beta = head.end_to_end_header(data, "anthropic-beta");
        assert!(beta.is_none() || beta == head.header(data, "anthropic-beta"));
        for h in &head.headers {
            assert!(within(h.name) && within(h.value));
            assert!(!h.name.is_empty());
        }
        let again = parse_request(&data[..head.head_len], &limits);
        assert!(
            matches!(again, Ok(Some(ref h)) if h.head_len == head.head_len
            && h.framing == head.framing && h.keep_alive == head.keep_alive)
        );
        assert!(matches!(
            parse_request(&data[..head.head_len - 1], &limits),
            Ok(None)
        ));
    }
    // The response parser must not panic on the same bytes either.
    for method in [Method::Get, Method::Head] {
        if let Ok(Some(head)) = parse_response(data, &HeadLimits::default(), method) {
            assert!(head.head_len <= data.len());
            assert!(head.reason.end as usize <= head.head_len);
            for h in &head.headers {
                assert!(h.name.end as usize <= head.head_len);
                assert!(h.value.end as usize <= head.head_len);
            }
        }
    }
}

/// Decodes `data` whole, split in two at `data[0] % len`, and byte by byte:
/// never a panic, `consumed <= len`, data ranges inside the consumed bytes,
/// and the same body, outcome and leftover bytes however the input is cut.
pub fn chunked(data: &[u8]) {
    let whole = decode_chunked(&[data]);
    if let Some(&first) = data.first() {
        let at = first as usize % data.len();
        let (a, b) = data.split_at(at);
        assert_eq!(decode_chunked(&[a, b]), whole);
    }
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(decode_chunked(&bytes), whole);
}

type ChunkedOutcome = (Vec<u8>, Result<bool, ChunkedError>, Vec<u8>);

fn decode_chunked(pieces: &[&[u8]]) -> ChunkedOutcome {
    let limits = ChunkedLimits {
        max_line_bytes: 64,
        max_trailer_bytes: 256,
    };
    let mut dec = ChunkedDecoder::new(limits);
    let mut body = Vec::new();
    let mut rest = Vec::new();
    for piece in pieces {
        let mut input = *piece;
        loop {
            let d = match dec.decode(input) {
                Ok(d) => d,
                Err(e) => return (body, Err(e), rest),
            };
            assert!(d.consumed <= input.len());
            assert!(d.data.start <= d.data.end && d.data.end <= d.consumed);
            body.extend_from_slice(&input[d.data.clone()]);
            if d.consumed == 0 {
                assert!(input.is_empty() || dec.is_done());
                break;
            }
            input = &input[d.consumed..];
        }
        rest.extend_from_slice(input);
    }
    (body, Ok(dec.is_done()), rest)
}

/// Frames `data` whole, split in two at `data[0] % len`, and byte by byte:
/// the same events (hence the same raw concatenation), the same error and the
/// same unfinished tail; without an error the events plus the tail are the
/// input.
pub fn sse(data: &[u8]) {
    let whole = frame_sse(&[data]);
    if let Some(&first) = data.first() {
        let at = first as usize % data.len();
        let (a, b) = data.split_at(at);
        assert_eq!(frame_sse(&[a, b]), whole);
    }
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(frame_sse(&bytes), whole);
    if let (events, Ok(tail)) = whole {
        let mut all = events.concat();
        all.extend_from_slice(&tail);
        assert_eq!(all, data);
    }
}

type SseOutcome = (Vec<Vec<u8>>, Result<Vec<u8>, SseError>);

fn frame_sse(pieces: &[&[u8]]) -> SseOutcome {
    let mut framer = SseFramer::new(256);
    let mut events = Vec::new();
    for piece in pieces {
        let fed = framer.feed(piece, |e| {
            // Field access must hold up on anything the framer emits.
            let _ = (e.data(), e.event_type(), e.is_done(), e.is_comment_only());
            assert!(!e.raw.is_empty());
            events.push(e.raw.to_vec());
        });
        if let Err(e) = fed {
            return (events, Err(e));
        }
    }
    let tail = framer.finish().map(<[u8]>::to_vec).unwrap_or_default();
    (events, Ok(tail))
}

/// The member scan never panics and agrees with serde_json on what is an
/// object; a patched object scans again with the expected member count.
pub fn json(data: &[u8]) {
    let scanned = top_level_members(data);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        // serde_json's own nesting limit differs from ours by one.
        assert!(
            matches!(scanned, Ok(_) | Err(crate::json::JsonError::TooDeep)),
            "serde_json accepts an object we refuse: {scanned:?}"
        );
        let Ok(members) = scanned else {
            return;
        };
        assert!(members.len() >= map.len());
        let edits = [
            Edit::Set {
                key: "model",
                value: b"\"patched\"",
            },
            Edit::Remove { key: "stream" },
            Edit::Set {
                key: "stream_options",
                value: b"{\"include_usage\":true}",
            },
        ];
        let out = patch_object(data, &members, &edits);
        let patched = serde_json::from_slice::<serde_json::Value>(&out);
        assert!(patched.is_ok(), "patched body is not JSON: {patched:?}");
        let Ok(patched) = patched else {
            return;
        };
        assert_eq!(patched["model"], "patched");
        assert!(patched.get("stream").is_none());
        let mut expected = map.clone();
        expected.remove("stream");
        expected.insert("model".into(), "patched".into());
        expected.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
        assert_eq!(patched, serde_json::Value::Object(expected));
    }
    // Walking back never panics and stays in bounds, whatever the input...
    let mut back: Vec<_> = members_rev(data).collect();
    for m in &back {
        assert!(m.key.end < m.value.start && m.value.end <= data.len());
    }
    let _ = crate::openai::extract_usage(data);
    let _ = crate::openai::extract_responses_usage(data);
    if let Ok(members) = top_level_members(data) {
        for m in &members {
            assert!(m.key.end < m.value.start && m.value.end <= data.len());
        }
        // ... and on a valid object finds exactly what the scan found.
        back.reverse();
        assert_eq!(back, members);
        // On a valid object the fast lookup finds what the scan found: the
        // last member of each name.
        for m in &members {
            let Ok(key) = std::str::from_utf8(&data[m.key.clone()]) else {
                continue;
            };
            if key.contains('\\') {
                continue;
            }
            let last = members
                .iter()
                .rev()
                .find(|n| crate::json::decode_key(data, &n.key).as_deref() == Some(key));
            assert_eq!(
                find_top_level(data, key),
                last.map(|n| n.value.clone()),
                "{key}"
            );
        }
    }
}

/// The MCP envelope and its header checks: never a panic, and what is
/// accepted is consistent. The input's first line is the headers
/// (`version|method|name`, empty for absent), the rest the body.
pub fn mcp_envelope(data: &[u8]) {
    use crate::mcp::{check_modern, era_of, parse_posted, Era, Posted};
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split('|').map(|s| (!s.is_empty()).then_some(s));
    let (version, method, name) = (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    );
    let posted = parse_posted(body);
    // The scan reads what the tree reads: a message both accept is the
    // same message, and an error is the tree's own.
    match (&posted, crate::mcp::parse_posted_by_tree(body)) {
        (Ok(Posted::Message(fast)), Ok(Posted::Message(tree))) => assert_eq!(*fast, tree),
        (Ok(Posted::Response), tree) => assert_eq!(tree, Ok(Posted::Response)),
        (Err(e), tree) => assert_eq!(Err(e.clone()), tree),
        (Ok(Posted::Message(fast)), tree) => {
            assert_eq!(Ok(Posted::Message(fast.clone())), tree)
        }
    }
    match posted {
        Ok(Posted::Message(m)) => {
            let era = era_of(&m, version);
            if m.meta_version().is_some() {
                assert_eq!(era, Era::Modern);
            }
            if check_modern(&m, version, method, name).is_ok() {
                // Accepted: the headers repeat the body exactly.
                assert_eq!(method, Some(m.method.as_str()));
                if let Some(n) = m.target_name() {
                    assert_eq!(name, Some(&*n));
                }
                assert_eq!(
                    m.meta_version().as_deref(),
                    Some(crate::mcp::MODERN_VERSION)
                );
            }
        }
        Ok(Posted::Response) => {}
        Err((id, e)) => {
            assert!(id.is_null() || id.is_string() || id.is_number());
            assert!(e.http_status() == 400, "envelope errors are 400s: {e}");
        }
    }
}
