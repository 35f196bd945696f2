use super::*;
use crate::client::tests::upstream;

const WAIT: Duration = Duration::from_secs(5);

/// Everything `drain_buffered` hands out of `wire`, fed to it in the pieces
/// given (as reads would leave them in the buffer), with the reader, what
/// it left in the buffer and the error that stopped it, if any.
fn drain_pieces(
    framing: ResponseFraming,
    pieces: &[&[u8]],
) -> (BodyReader, Vec<u8>, ReadBuf, Option<ReadError>) {
    let mut reader = BodyReader::new(framing);
    let mut rbuf = ReadBuf::with_capacity(16);
    let mut body = Vec::new();
    for piece in pieces {
        rbuf.extend(piece);
        if let Err(e) = reader.drain_buffered(&mut rbuf, &mut |d| body.extend_from_slice(d)) {
            return (reader, body, rbuf, Some(e));
        }
    }
    (reader, body, rbuf, None)
}

/// A chunked body with an extension and a trailer, then the start of the
/// next response on the same connection.
const CHUNKED: &[u8] =
    b"5;ext=1\r\nhello\r\n1\r\n \r\nc\r\nworld, again\r\n0\r\nx-trailer: t\r\n\r\nHTTP/1.1 200";
const DECODED: &[u8] = b"hello world, again";
const NEXT: &[u8] = b"HTTP/1.1 200";

#[test]
fn a_length_body_hands_out_its_bytes_and_leaves_the_next_response_buffered() {
    let (reader, body, rbuf, err) =
        drain_pieces(ResponseFraming::Length(5), &[b"hel", b"loHTTP/1.1"]);
    assert!(err.is_none());
    assert_eq!(body, b"hello");
    assert!(reader.is_done());
    assert_eq!(rbuf.data(), b"HTTP/1.1");
}

#[test]
fn a_length_body_is_not_done_while_bytes_are_missing() {
    let (reader, body, _, _) = drain_pieces(ResponseFraming::Length(6), &[b"hel", b"lo"]);
    assert_eq!(body, b"hello");
    assert!(!reader.is_done());
}

#[test]
fn a_chunked_body_decodes_the_same_however_reads_split_it() {
    for split in 0..=CHUNKED.len() {
        let (a, b) = CHUNKED.split_at(split);
        let (reader, body, rbuf, err) = drain_pieces(ResponseFraming::Chunked, &[a, b]);
        assert!(err.is_none(), "split at {split}: {err:?}");
        assert_eq!(body, DECODED, "split at {split}");
        assert!(reader.is_done(), "split at {split}");
        assert_eq!(rbuf.data(), NEXT, "split at {split}");
    }
    let bytes: Vec<&[u8]> = CHUNKED.chunks(1).collect();
    let (reader, body, rbuf, err) = drain_pieces(ResponseFraming::Chunked, &bytes);
    assert!(err.is_none());
    assert_eq!(body, DECODED);
    assert!(reader.is_done());
    assert_eq!(rbuf.data(), NEXT);
}

#[test]
fn a_chunked_body_ends_only_with_the_blank_line_after_its_last_chunk() {
    let (reader, body, _, _) = drain_pieces(ResponseFraming::Chunked, &[b"2\r\nhi\r\n0\r\n"]);
    assert_eq!(body, b"hi");
    assert!(!reader.is_done(), "the trailer section may still follow");
    let (reader, _, _, _) = drain_pieces(ResponseFraming::Chunked, &[b"2\r\nhi\r\n0\r\n", b"\r\n"]);
    assert!(reader.is_done());
}

#[test]
fn malformed_chunk_framing_is_a_protocol_error() {
    let (_, _, _, err) = drain_pieces(ResponseFraming::Chunked, &[b"zz\r\nhello\r\n"]);
    assert!(matches!(err, Some(ReadError::Protocol(_))), "{err:?}");
    let (_, body, _, err) = drain_pieces(ResponseFraming::Chunked, &[b"2\r\nhiXX"]);
    assert_eq!(body, b"hi", "data before the error is still handed out");
    assert!(matches!(err, Some(ReadError::Protocol(_))), "{err:?}");
}

#[test]
fn an_until_close_body_takes_everything_and_never_ends_by_itself() {
    let (reader, body, rbuf, err) =
        drain_pieces(ResponseFraming::UntilClose, &[b"abc", b"HTTP/1.1 200"]);
    assert!(err.is_none());
    assert_eq!(body, b"abcHTTP/1.1 200");
    assert!(rbuf.is_empty());
    assert!(!reader.is_done());
}

#[test]
fn empty_and_zero_length_bodies_are_done_before_any_read() {
    assert!(BodyReader::new(ResponseFraming::Empty).is_done());
    assert!(BodyReader::new(ResponseFraming::Length(0)).is_done());
    assert!(!BodyReader::new(ResponseFraming::Chunked).is_done());
    assert!(!BodyReader::new(ResponseFraming::UntilClose).is_done());
}

#[test]
fn event_stream_content_types_are_matched_by_prefix_ignoring_case() {
    let head = |ct: &[u8]| {
        UpstreamHead {
            status: 200,
            framing: ResponseFraming::Chunked,
            keep_alive: true,
            content_type: Some(ct.into()),
            content_type_end_to_end: true,
            retry_after: None,
            wait_hint: None,
        }
        .into_answer()
    };
    assert!(head(b"text/event-stream").is_event_stream());
    assert!(head(b"Text/Event-Stream; charset=utf-8").is_event_stream());
    assert!(!head(b"text/event").is_event_stream());
    assert!(!head(b"application/json").is_event_stream());
    assert!(head(b"application/vnd.amazon.eventstream").is_aws_event_stream());
    assert!(!head(b"text/event-stream").is_aws_event_stream());
}

/// The head of what a peer sent and closed, with what it left buffered.
fn head_of(sent: &[u8]) -> (Result<UpstreamHead, ReadError>, Vec<u8>) {
    let sent = sent.to_vec();
    glommio::LocalExecutor::default().run(async move {
        let (mut conn, _peer) = upstream(&sent, true).await;
        let head = read_response_head(&mut conn, WAIT, Method::Post).await;
        (head, conn.rbuf.data().to_vec())
    })
}

#[test]
fn an_interim_response_is_skipped_and_only_the_head_is_consumed() {
    let (head, rest) = head_of(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nhi",
    );
    let head = head.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.framing, ResponseFraming::Length(2));
    assert!(head.keep_alive);
    assert_eq!(head.content_type.as_deref(), Some(&b"application/json"[..]));
    assert!(head.content_type_end_to_end);
    assert_eq!(rest, b"hi");
}

#[test]
fn a_content_type_that_connection_names_is_read_but_not_relayed() {
    let (head, _) = head_of(
        b"HTTP/1.1 200 OK\r\nConnection: content-type\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let head = head.unwrap();
    assert!(head.is_event_stream(), "the gateway still sees it");
    assert!(!head.content_type_end_to_end);
    // Naming another field leaves content-type end to end.
    let (head, _) = head_of(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(head.unwrap().content_type_end_to_end);
}

#[test]
fn retry_after_is_kept_and_connection_close_forbids_reuse() {
    let (head, _) = head_of(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    let head = head.unwrap();
    assert_eq!(head.status, 429);
    assert_eq!(head.retry_after.as_deref(), Some(&b"7"[..]));
    assert!(!head.keep_alive);
    let (head, _) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let head = head.unwrap();
    assert_eq!(head.retry_after, None);
    assert_eq!(head.content_type, None);
}

#[test]
fn a_peer_that_closes_before_a_whole_head_is_eof_saying_whether_it_sent_anything() {
    let (head, _) = head_of(b"");
    assert!(
        matches!(head, Err(ReadError::Eof { any_bytes: false })),
        "{head:?}"
    );
    let (head, _) = head_of(b"HTTP/1.1 200 OK\r\nContent-");
    assert!(
        matches!(head, Err(ReadError::Eof { any_bytes: true })),
        "{head:?}"
    );
}

#[test]
fn a_head_that_is_not_http_is_a_protocol_error() {
    let (head, _) = head_of(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    assert!(matches!(head, Err(ReadError::Protocol(_))), "{head:?}");
}

#[test]
fn a_silent_upstream_times_out_waiting_for_the_head() {
    let head = glommio::LocalExecutor::default().run(async {
        let (mut conn, _peer) = upstream(b"", false).await;
        read_response_head(&mut conn, Duration::from_millis(30), Method::Post).await
    });
    assert!(matches!(head, Err(ReadError::Timeout)), "{head:?}");
}

/// `read_to_end` on a body of `framing` that a peer sent (then closed).
fn read_all(framing: ResponseFraming, sent: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
    let sent = sent.to_vec();
    glommio::LocalExecutor::default().run(async move {
        let (mut conn, _peer) = upstream(&sent, true).await;
        BodyReader::new(framing)
            .read_to_end(&mut conn, WAIT, max)
            .await
    })
}

#[test]
fn read_to_end_takes_a_body_of_exactly_the_limit() {
    let body = read_all(ResponseFraming::Length(5), b"hello", 5).unwrap();
    assert_eq!(body, b"hello");
    let body = read_all(
        ResponseFraming::Chunked,
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        5,
    )
    .unwrap();
    assert_eq!(body, b"hello");
}

#[test]
fn read_to_end_refuses_a_declared_length_over_the_limit() {
    // Nothing sent: the length alone decides, before any read.
    let r = read_all(ResponseFraming::Length(6), b"", 5);
    assert!(matches!(r, Err(ReadError::TooLarge(5))), "{r:?}");
}

#[test]
fn read_to_end_stops_a_chunked_body_that_outgrows_the_limit() {
    let r = read_all(
        ResponseFraming::Chunked,
        b"3\r\nhel\r\n3\r\nlo!\r\n0\r\n\r\n",
        5,
    );
    assert!(matches!(r, Err(ReadError::TooLarge(5))), "{r:?}");
}

#[test]
fn an_until_close_body_ends_when_the_peer_closes() {
    let body = read_all(ResponseFraming::UntilClose, b"all of it", 1024).unwrap();
    assert_eq!(body, b"all of it");
}

#[test]
fn a_body_cut_before_its_end_is_eof() {
    let r = read_all(ResponseFraming::Length(10), b"hello", 1024);
    assert!(
        matches!(r, Err(ReadError::Eof { any_bytes: true })),
        "{r:?}"
    );
    let r = read_all(ResponseFraming::Chunked, b"5\r\nhello\r\n", 1024);
    assert!(
        matches!(r, Err(ReadError::Eof { any_bytes: true })),
        "{r:?}"
    );
}

#[test]
fn step_hands_out_data_then_end_and_stops_at_the_body() {
    let steps = glommio::LocalExecutor::default().run(async {
        let (mut conn, _peer) = upstream(b"", false).await;
        conn.rbuf.extend(b"2\r\nhi\r\n0\r\n\r\nHTTP/1.1 204");
        let mut reader = BodyReader::new(ResponseFraming::Chunked);
        let mut got = Vec::new();
        let first = reader
            .step(&mut conn, WAIT, &mut |d| got.extend_from_slice(d))
            .await
            .unwrap();
        // Done: no read waits on the (silent) peer.
        let second = reader.step(&mut conn, WAIT, &mut |_| {}).await.unwrap();
        (first, second, got, conn.rbuf.data().to_vec())
    });
    assert_eq!(steps.0, BodyStep::End, "the whole body was buffered");
    assert_eq!(steps.1, BodyStep::End);
    assert_eq!(steps.2, b"hi");
    assert_eq!(steps.3, b"HTTP/1.1 204");
}
