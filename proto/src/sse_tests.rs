use super::*;
use crate::testing::for_each_split;

/// Raw events (owned) and what finish() holds.
type Framed = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Feeds `pieces` and returns the raw events and what finish() holds.
fn frame(max: usize, pieces: &[&[u8]]) -> Result<Framed, SseError> {
    let mut framer = SseFramer::new(max);
    let mut events = Vec::new();
    for piece in pieces {
        framer.feed(piece, |e| events.push(e.raw.to_vec()))?;
    }
    let rest = framer.finish().map(<[u8]>::to_vec);
    Ok((events, rest))
}

/// Every split gives the same events as one feed, and every byte is
/// accounted for.
fn assert_splits_agree(input: &[u8]) -> Vec<Vec<u8>> {
    let whole = frame(1 << 20, &[input]).unwrap();
    for_each_split(input, |pieces| {
        assert_eq!(frame(1 << 20, pieces).unwrap(), whole, "{pieces:?}");
    });
    let mut all: Vec<u8> = whole.0.concat();
    all.extend(whole.1.clone().unwrap_or_default());
    assert_eq!(all, input);
    whole.0
}

#[test]
fn lf_events() {
    let input = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
    let events = assert_splits_agree(input);
    assert_eq!(
        events,
        [
            b"data: {\"a\":1}\n\n".to_vec(),
            b"data: [DONE]\n\n".to_vec()
        ]
    );
    let first = SseEvent { raw: &events[0] };
    assert_eq!(first.data(), Cow::Borrowed(&b"{\"a\":1}"[..]));
    assert!(matches!(first.data(), Cow::Borrowed(_)));
    assert!(!first.is_done());
    assert!(SseEvent { raw: &events[1] }.is_done());
}

#[test]
fn crlf_and_cr_and_mixes() {
    for input in [
        &b"event: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n"[..],
        b"event: a\rdata: 1\r\revent: b\rdata: 2\r\r",
        b"event: a\r\ndata: 1\n\revent: b\rdata: 2\r\n\n",
        b"event: a\ndata: 1\r\r\nevent: b\r\ndata: 2\n\r",
    ] {
        let mut events = assert_splits_agree(input);
        // A stream ending in a lone CR holds its last event until finish().
        if input.ends_with(b"\r") {
            events.extend(frame(1024, &[input]).unwrap().1);
        }
        assert_eq!(events.len(), 2, "{:?}", String::from_utf8_lossy(input));
        let a = SseEvent { raw: &events[0] };
        let b = SseEvent { raw: &events[1] };
        assert_eq!(a.event_type(), Some(&b"a"[..]));
        assert_eq!(a.data().as_ref(), b"1");
        assert_eq!(b.event_type(), Some(&b"b"[..]));
        assert_eq!(b.data().as_ref(), b"2");
    }
}

#[test]
fn cr_at_the_end_of_a_feed_is_not_an_empty_line() {
    let mut framer = SseFramer::new(1024);
    let mut events = Vec::new();
    framer
        .feed(b"data: x\r", |e| events.push(e.raw.to_vec()))
        .unwrap();
    framer
        .feed(b"\ndata: y\r\n", |e| events.push(e.raw.to_vec()))
        .unwrap();
    assert!(events.is_empty());
    framer.feed(b"\r", |e| events.push(e.raw.to_vec())).unwrap();
    // Held until we know whether an LF follows.
    assert!(events.is_empty());
    framer
        .feed(b"\nnext", |e| events.push(e.raw.to_vec()))
        .unwrap();
    assert_eq!(events, [b"data: x\r\ndata: y\r\n\r\n".to_vec()]);
    assert_eq!(framer.pending(), 4);
    assert_eq!(framer.finish(), Some(&b"next"[..]));
    assert_eq!(framer.pending(), 0);
    assert_eq!(framer.finish(), None);
}

#[test]
fn cr_only_event_is_emitted_when_the_next_byte_arrives() {
    let mut framer = SseFramer::new(1024);
    let mut events = Vec::new();
    framer
        .feed(b"data: x\r\r", |e| events.push(e.raw.to_vec()))
        .unwrap();
    assert!(events.is_empty());
    framer.feed(b"", |e| events.push(e.raw.to_vec())).unwrap();
    assert!(events.is_empty());
    framer
        .feed(b"data: y\r\r", |e| events.push(e.raw.to_vec()))
        .unwrap();
    assert_eq!(events, [b"data: x\r\r".to_vec()]);
}

#[test]
fn comments_and_blank_lines() {
    let input = b": ping\n\n\n:keep-alive\r\n: more\r\n\r\ndata: x\n\n";
    let events = assert_splits_agree(input);
    assert_eq!(events.len(), 4);
    assert!(SseEvent { raw: &events[0] }.is_comment_only());
    assert_eq!(events[1], b"\n");
    assert!(SseEvent { raw: &events[1] }.is_comment_only());
    assert!(SseEvent { raw: &events[2] }.is_comment_only());
    let data = SseEvent { raw: &events[3] };
    assert!(!data.is_comment_only());
    assert_eq!(data.data().as_ref(), b"x");
}

#[test]
fn multi_line_data_and_field_parsing() {
    let input = b"id: 7\nevent: first\nevent: second\ndata:a\ndata:  b\ndata\ndata: c\n: note\nretry: 10\n\n";
    let events = assert_splits_agree(input);
    let e = SseEvent { raw: &events[0] };
    assert_eq!(e.event_type(), Some(&b"second"[..]));
    let data = e.data();
    assert!(matches!(data, Cow::Owned(_)));
    // One leading space stripped, not two; "data" without colon is an empty value.
    assert_eq!(data.as_ref(), b"a\n b\n\nc");
    assert!(!e.is_done());
}

#[test]
fn no_data_and_no_type() {
    let e = SseEvent { raw: b"id: 1\n\n" };
    assert_eq!(e.data().as_ref(), b"");
    assert_eq!(e.event_type(), None);
    assert!(!e.is_comment_only());
    assert!(SseEvent {
        raw: b"data:[DONE]\n\n"
    }
    .is_done());
    assert!(!SseEvent {
        raw: b"data: [DONE] \n\n"
    }
    .is_done());
}

#[test]
fn zero_copy_for_whole_events() {
    let input = b"data: 1\n\ndata: 2\n\npart";
    let mut framer = SseFramer::new(1024);
    let range = input.as_ptr_range();
    let mut n = 0;
    framer
        .feed(input, |e| {
            assert!(range.contains(&e.raw.as_ptr()));
            n += 1;
        })
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(framer.pending(), 4);
}

#[test]
fn event_too_large_exactly_and_one_past() {
    let event = b"data: 12345\n\n"; // 13 bytes
    assert_eq!(frame(13, &[event]).unwrap().0.len(), 1);
    assert_eq!(
        frame(12, &[event]),
        Err(SseError::EventTooLarge { limit: 12 })
    );
    // Also when the event is assembled across feeds, and while it is pending.
    for_each_split(event, |pieces| {
        assert_eq!(frame(13, pieces).unwrap().0.len(), 1);
        assert_eq!(
            frame(12, pieces),
            Err(SseError::EventTooLarge { limit: 12 })
        );
    });
    let mut framer = SseFramer::new(8);
    assert!(framer.feed(b"data: 123", |_| {}).is_err());
}

#[test]
fn unfinished_tail_at_end_of_stream() {
    let (events, rest) = frame(1024, &[b"data: 1\n\ndata: 2\n"]).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(rest.as_deref(), Some(&b"data: 2\n"[..]));
    let (_, rest) = frame(1024, &[b"data: 1\n\n"]).unwrap();
    assert_eq!(rest, None);
}

#[test]
fn write_event_round_trips() {
    for (event, data, expected_data) in [
        (Some("message_start"), &b"{\"a\":1}"[..], &b"{\"a\":1}"[..]),
        (None, b"", b""),
        (None, b"line1\nline2", b"line1\nline2"),
        (None, b"a\r\nb\rc\n", b"a\nb\nc\n"),
        (Some("x\ny"), b"[DONE]", b"[DONE]"),
    ] {
        let mut out = Vec::new();
        write_event(&mut out, event, data);
        let (events, rest) = frame(1024, &[&out]).unwrap();
        assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&out));
        assert_eq!(rest, None);
        let e = SseEvent { raw: &events[0] };
        assert_eq!(e.data().as_ref(), expected_data);
        let expected_type = event.map(|t| t.replace('\n', ""));
        assert_eq!(e.event_type(), expected_type.as_deref().map(str::as_bytes));
    }
    let mut out = Vec::new();
    write_event(&mut out, Some("delta"), b"a\nb");
    assert_eq!(out, b"event: delta\ndata: a\ndata: b\n\n");
}

#[test]
fn openai_style_stream_every_split() {
    let input = b"data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n: ping\n\ndata: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\n";
    let events = assert_splits_agree(input);
    assert_eq!(events.len(), 4);
    assert!(SseEvent { raw: &events[3] }.is_done());
}
