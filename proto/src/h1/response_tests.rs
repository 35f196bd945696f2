use super::*;

fn parse(buf: &[u8], method: Method) -> Result<Option<ResponseHead>, H1Error> {
    parse_response(buf, &HeadLimits::default(), method)
}

fn complete(buf: &[u8], method: Method) -> ResponseHead {
    match parse(buf, method) {
        Ok(Some(head)) => head,
        other => panic!("{:?} for {:?}", other, String::from_utf8_lossy(buf)),
    }
}

#[test]
fn parses_a_json_response() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let head = complete(buf, Method::Post);
    assert_eq!(head.status, 200);
    assert_eq!(head.reason.of(buf), b"OK");
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.framing, ResponseFraming::Length(2));
    assert!(head.keep_alive);
    assert_eq!(&buf[head.head_len..], b"{}");
    assert_eq!(
        head.header(buf, "content-type"),
        Some(&b"application/json"[..])
    );
    assert!(!head.is_informational());
}

#[test]
fn incremental() {
    let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for len in 0..buf.len() {
        assert!(parse(&buf[..len], Method::Post).unwrap().is_none(), "{len}");
    }
    assert_eq!(
        complete(buf, Method::Post).framing,
        ResponseFraming::Chunked
    );
}

#[test]
fn bodiless_statuses_and_head() {
    for (status, method) in [
        (100, Method::Post),
        (103, Method::Post),
        (204, Method::Post),
        (304, Method::Get),
        (200, Method::Head),
    ] {
        let buf = format!("HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n");
        let head = complete(buf.as_bytes(), method);
        assert_eq!(head.framing, ResponseFraming::Empty, "{status}");
        assert!(head.keep_alive);
    }
    let head = complete(b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post);
    assert!(head.is_informational());
    assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\n", Method::Post).is_informational());
}

#[test]
fn no_length_reads_until_close() {
    let head = complete(b"HTTP/1.1 200 OK\r\n\r\n", Method::Post);
    assert_eq!(head.framing, ResponseFraming::UntilClose);
    assert!(!head.keep_alive);
}

#[test]
fn transfer_encoding_wins_over_content_length_and_closes() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let head = complete(buf, Method::Post);
    assert_eq!(head.framing, ResponseFraming::Chunked);
    assert!(!head.keep_alive);
    // Even an invalid Content-Length is irrelevant next to TE.
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        complete(buf, Method::Post).framing,
        ResponseFraming::Chunked
    );
}

#[test]
fn transfer_codings() {
    for (value, framing, keep_alive) in [
        ("chunked", ResponseFraming::Chunked, true),
        ("gzip, chunked", ResponseFraming::Chunked, true),
        ("CHUNKED", ResponseFraming::Chunked, true),
        ("chunked, gzip", ResponseFraming::UntilClose, false),
        ("gzip", ResponseFraming::UntilClose, false),
    ] {
        let buf = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {value}\r\n\r\n");
        let head = complete(buf.as_bytes(), Method::Get);
        assert_eq!(
            (head.framing, head.keep_alive),
            (framing, keep_alive),
            "{value}"
        );
    }
    let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(complete(buf, Method::Get).framing, ResponseFraming::Chunked);
    let buf = b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";
    let head = complete(buf, Method::Get);
    assert_eq!(head.framing, ResponseFraming::Chunked);
    assert!(!head.keep_alive);
}

#[test]
fn content_length_leniency() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n";
    assert_eq!(
        complete(buf, Method::Get).framing,
        ResponseFraming::Length(7)
    );
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n";
    assert_eq!(
        parse(buf, Method::Get).unwrap_err(),
        H1Error::DuplicateContentLength
    );
    let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 7, 8\r\n\r\n";
    assert_eq!(
        parse(buf, Method::Get).unwrap_err(),
        H1Error::DuplicateContentLength
    );
    for value in ["+7", "", "7,", "0x7", "-1"] {
        let buf = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        assert_eq!(
            parse(buf.as_bytes(), Method::Get).unwrap_err(),
            H1Error::InvalidContentLength,
            "{value:?}"
        );
    }
}

#[test]
fn bare_lf_is_tolerated_in_responses() {
    let buf = b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc";
    let head = complete(buf, Method::Get);
    assert_eq!(head.framing, ResponseFraming::Length(3));
    assert_eq!(&buf[head.head_len..], b"abc");
}

#[test]
fn obs_fold_is_refused_in_responses() {
    let buf = b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(parse(buf, Method::Get).unwrap_err(), H1Error::ObsFold);
}

#[test]
fn keep_alive() {
    for (version, connection, expected) in [
        ("1.1", "", true),
        ("1.1", "Connection: close\r\n", false),
        ("1.0", "", false),
        ("1.0", "Connection: keep-alive\r\n", true),
    ] {
        let buf = format!("HTTP/{version} 200 OK\r\n{connection}Content-Length: 0\r\n\r\n");
        assert_eq!(complete(buf.as_bytes(), Method::Get).keep_alive, expected);
    }
}

#[test]
fn versions_and_status() {
    assert_eq!(
        parse(b"HTTP/2.0 200 OK\r\n\r\n", Method::Get).unwrap_err(),
        H1Error::UnsupportedVersion
    );
    assert!(matches!(
        parse(b"HTTP/1.1 20 OK\r\n\r\n", Method::Get),
        Err(H1Error::Invalid(_))
    ));
    let head = complete(b"HTTP/1.1 429 \r\nContent-Length: 0\r\n\r\n", Method::Get);
    assert_eq!(head.status, 429);
    assert!(head.reason.is_empty());
}

#[test]
fn limits() {
    let limits = HeadLimits {
        max_head_bytes: 64,
        max_headers: 2,
    };
    let buf = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        parse_response(buf, &limits, Method::Get).unwrap_err(),
        H1Error::TooManyHeaders
    );
    let long = [b"HTTP/1.1 200 OK\r\nA: ".as_slice(), &[b'a'; 100]].concat();
    assert_eq!(
        parse_response(&long, &limits, Method::Get).unwrap_err(),
        H1Error::HeadTooLarge
    );
}

/// RFC 9110 §7.6.1: what the upstream names in `Connection` is not relayed.
#[test]
fn fields_named_in_connection_are_not_end_to_end() {
    let buf = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
    let head = complete(buf, Method::Post);
    assert!(!head.connection_names_fields);
    assert_eq!(
        head.end_to_end_header(buf, "content-type"),
        Some(&b"a/b"[..])
    );
    let buf = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nConnection: keep-alive, content-type\r\nContent-Length: 0\r\n\r\n";
    let head = complete(buf, Method::Post);
    assert!(head.connection_names_fields && head.keep_alive);
    assert_eq!(head.end_to_end_header(buf, "content-type"), None);
    assert_eq!(head.header(buf, "content-type"), Some(&b"a/b"[..]));
}
