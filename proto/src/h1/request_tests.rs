use super::*;
use crate::testing::for_each_split;

fn parse(buf: &[u8]) -> Result<Option<RequestHead>, H1Error> {
    parse_request(buf, &HeadLimits::default())
}

fn complete(buf: &[u8]) -> RequestHead {
    match parse(buf) {
        Ok(Some(head)) => head,
        other => panic!("{:?} for {:?}", other, String::from_utf8_lossy(buf)),
    }
}

fn err(buf: &[u8]) -> H1Error {
    match parse(buf) {
        Err(e) => e,
        other => panic!("{:?} for {:?}", other, String::from_utf8_lossy(buf)),
    }
}

const POST: &[u8] = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n\
Host: api.example\r\n\
Content-Type: application/json\r\n\
Content-Length:  12 \r\n\
\r\n\
{\"a\":\"bcd\"}";

#[test]
fn parses_a_post() {
    let head = complete(POST);
    assert_eq!(head.method, Method::Post);
    assert_eq!(head.target(POST), b"/v1/chat/completions?x=1");
    assert_eq!(head.path(POST), b"/v1/chat/completions");
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.headers.len(), 3);
    assert_eq!(head.framing, BodyFraming::Length(12));
    assert!(head.keep_alive);
    assert!(!head.expect_continue);
    assert_eq!(&POST[head.head_len..], b"{\"a\":\"bcd\"}");
    assert_eq!(
        head.header(POST, "content-type"),
        Some(&b"application/json"[..])
    );
    assert_eq!(head.header(POST, "CONTENT-LENGTH"), Some(&b"12"[..]));
    assert_eq!(head.header(POST, "x-missing"), None);
}

#[test]
fn header_lookup_returns_first_match() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-K: one\r\nx-k: two\r\n\r\n";
    assert_eq!(complete(buf).header(buf, "X-k"), Some(&b"one"[..]));
}

#[test]
fn headers_named_in_one_pass_are_what_each_lookup_finds() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-K: one\r\nAccept: */*\r\nx-k: two\r\n\r\n";
    let head = complete(buf);
    let names = ["x-k", "ACCEPT", "missing", "host", "X-K"];
    let found = head.headers_named(buf, names);
    assert_eq!(found, names.map(|n| head.header(buf, n)));
    assert_eq!(found[0], Some(&b"one"[..]));
}

#[test]
fn spans_are_within_the_head() {
    let head = complete(POST);
    for h in &head.headers {
        assert!(h.name.end as usize <= head.head_len);
        assert!(h.value.end as usize <= head.head_len);
        assert!(!h.name.is_empty());
    }
}

#[test]
fn methods() {
    for (token, method) in [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("OPTIONS", Method::Options),
        ("PATCH", Method::Patch),
        ("PROPFIND", Method::Other),
        ("get", Method::Other),
    ] {
        let buf = format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(complete(buf.as_bytes()).method, method, "{token}");
    }
}

#[test]
fn incremental_prefixes_need_more_until_complete() {
    for len in 0..POST.len() {
        let prefix = &POST[..len];
        let head_len = POST.len() - 11;
        match parse(prefix) {
            Ok(None) => assert!(len < head_len, "None at {len}"),
            Ok(Some(h)) => {
                assert!(len >= head_len);
                assert_eq!(h.head_len, head_len);
            }
            Err(e) => panic!("{e} at {len}"),
        }
    }
}

#[test]
fn every_split_gives_the_same_head() {
    // A caller appends what it reads and re-parses the whole buffer.
    let whole = complete(POST);
    for_each_split(POST, |pieces| {
        let mut buf = Vec::new();
        let mut got = None;
        for piece in pieces {
            buf.extend_from_slice(piece);
            if let Some(head) = parse(&buf).unwrap() {
                got = Some(head);
                break;
            }
        }
        let got = got.unwrap();
        assert_eq!(got.head_len, whole.head_len);
        assert_eq!(got.framing, whole.framing);
    });
}

#[test]
fn leading_empty_lines_are_skipped() {
    let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let head = complete(buf);
    assert_eq!(head.head_len, buf.len());
    assert_eq!(head.target(buf), b"/");
}

// --- smuggling ---

#[test]
fn content_length_with_transfer_encoding() {
    for buf in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n",
    ] {
        assert_eq!(err(buf), H1Error::ContentLengthWithTransferEncoding);
    }
}

#[test]
fn duplicate_content_length_even_when_equal() {
    for buf in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
    ] {
        assert_eq!(err(buf), H1Error::DuplicateContentLength);
    }
}

#[test]
fn malformed_content_length() {
    for value in [
        "+5",
        "-5",
        "1,1",
        "1, 1",
        "5 5",
        "0x5",
        "5.0",
        "",
        "1234567890123456789",
        "٣",
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n");
        let got = parse(buf.as_bytes());
        assert!(
            matches!(
                got,
                Err(H1Error::InvalidContentLength) | Err(H1Error::Invalid(_))
            ),
            "{value:?}: {got:?}"
        );
    }
}

#[test]
fn content_length_eighteen_digits_is_the_maximum() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n";
    assert_eq!(
        complete(buf).framing,
        BodyFraming::Length(999_999_999_999_999_999)
    );
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000000000000000007\r\n\r\n";
    assert_eq!(complete(buf).framing, BodyFraming::Length(7));
}

#[test]
fn transfer_encoding_must_be_exactly_chunked() {
    for value in [
        "chunked, identity",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked;q=1",
        "xchunked",
        "",
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_eq!(
            err(buf.as_bytes()),
            H1Error::UnsupportedTransferEncoding,
            "{value:?}"
        );
    }
    let twice = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(err(twice), H1Error::UnsupportedTransferEncoding);
    for value in ["chunked", "Chunked", " CHUNKED ", "chunked\t"] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_eq!(
            complete(buf.as_bytes()).framing,
            BodyFraming::Chunked,
            "{value:?}"
        );
    }
}

#[test]
fn transfer_encoding_in_http10_is_refused() {
    let buf = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(err(buf), H1Error::Invalid(_)));
}

#[test]
fn obs_fold_is_refused() {
    for buf in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        // Refused before the head is complete.
        b"GET / HTTP/1.1\r\nHost: a\r\n x",
    ] {
        assert_eq!(
            err(buf),
            H1Error::ObsFold,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn bare_lf_is_refused_anywhere() {
    for buf in [
        &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n",
        b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            err(buf),
            H1Error::BareLf,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn bare_cr_is_refused() {
    let buf = b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n";
    assert!(matches!(err(buf), H1Error::Invalid(_)));
}

#[test]
fn space_before_colon_is_refused() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n";
    assert!(matches!(err(buf), H1Error::Invalid(_)));
}

#[test]
fn host_rules() {
    assert_eq!(err(b"GET / HTTP/1.1\r\n\r\n"), H1Error::MissingHost);
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        H1Error::DuplicateHost
    );
    assert_eq!(
        err(b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"),
        H1Error::DuplicateHost
    );
    complete(b"GET / HTTP/1.0\r\n\r\n");
    // An empty Host is allowed when the target carries no authority (RFC 9112 §3.2).
    complete(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
}

/// RFC 9112 §3.2: a Host that is not `uri-host [ ":" port ]` (RFC 9110
/// §7.2) is a 400, whatever else the head says.
#[test]
fn invalid_host_values_are_refused() {
    for host in [
        "user@evil.example",
        "evil.example/x",
        "user@evil.example/x",
        "a b",
        "a\tb",
        "a?b",
        "a#b",
        "a\\b",
        "%61.example",
        "\u{e9}.example",
        ":80",
        "a:8o",
        "a:80:90",
        "[::1",
        "[::1]x",
        "[::1]:8o",
        "[]",
        "a]",
        "a[",
    ] {
        let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert_eq!(err(buf.as_bytes()), H1Error::InvalidHost, "{host:?}");
        // HTTP/1.0 may leave Host out, but not send a bad one.
        let buf = format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
        assert_eq!(err(buf.as_bytes()), H1Error::InvalidHost, "{host:?}");
    }
}

#[test]
fn valid_host_values() {
    for host in [
        "a",
        "api.example.com",
        "API.Example.COM",
        "api.example.com:8080",
        "a:",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
        "[fe80::1:2.3.4.5]",
        "[v1.fe]",
        "xn--bcher-kva.example",
        "a_b-c.d~e",
        "a!$&'()*+,;=b",
    ] {
        let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let head = complete(buf.as_bytes());
        assert_eq!(head.header(buf.as_bytes(), "host"), Some(host.as_bytes()));
    }
    // Surrounding whitespace is OWS, not part of the value.
    complete(b"GET / HTTP/1.1\r\nHost: \t a:1 \r\n\r\n");
}

/// RFC 9112 §3.2.2: a server MUST accept the absolute-form; the path and
/// query come from the URI.
#[test]
fn absolute_form_targets() {
    for (target, host, path) in [
        ("http://a/healthz", "a", "/healthz"),
        ("http://a:8080/v1/models?x=1", "a:8080", "/v1/models"),
        ("HTTP://A:8080/v1/models", "a:8080", "/v1/models"),
        ("https://a/x/y?q=/z", "a", "/x/y"),
        ("http://[::1]:80/x", "[::1]:80", "/x"),
        ("http://a", "a", "/"),
        ("http://a?q=1", "a", "/"),
    ] {
        let buf = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let head = complete(buf.as_bytes());
        assert_eq!(head.target(buf.as_bytes()), target.as_bytes());
        assert_eq!(head.path(buf.as_bytes()), path.as_bytes(), "{target}");
    }
    // HTTP/1.0 may leave Host out: the URI names the host.
    let buf = b"GET http://a/healthz HTTP/1.0\r\n\r\n";
    assert_eq!(complete(buf).path(buf), b"/healthz");
}

#[test]
fn absolute_form_authority_must_be_a_valid_host_equal_to_host() {
    use H1Error::{HostMismatch, InvalidHost, MissingHost};
    for (buf, want) in [
        // Two different hosts in one request: refused, not guessed between.
        (
            &b"GET http://b/healthz HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            HostMismatch,
        ),
        (
            b"GET http://a:81/healthz HTTP/1.1\r\nHost: a:80\r\n\r\n",
            HostMismatch,
        ),
        (
            b"GET http://a:80/healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            HostMismatch,
        ),
        (
            b"GET http://a/healthz HTTP/1.1\r\nHost:\r\n\r\n",
            HostMismatch,
        ),
        // Still one Host line in HTTP/1.1.
        (b"GET http://a/healthz HTTP/1.1\r\n\r\n", MissingHost),
        // Userinfo or no host at all in the URI.
        (
            b"GET http://u@a/healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            InvalidHost,
        ),
        (b"GET http://u@a/healthz HTTP/1.0\r\n\r\n", InvalidHost),
        (
            b"GET http:///healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            InvalidHost,
        ),
        (b"GET https://?x HTTP/1.0\r\n\r\n", InvalidHost),
    ] {
        assert_eq!(err(buf), want, "{:?}", String::from_utf8_lossy(buf));
        assert_eq!(want.status(), 400);
    }
}

#[test]
fn other_target_forms_are_left_as_sent() {
    for target in ["*", "a:443", "ftp://a/x", "http:/a/x", "httpx://a/x"] {
        let buf = format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        let head = complete(buf.as_bytes());
        assert_eq!(head.path(buf.as_bytes()), target.as_bytes());
    }
}

#[test]
fn versions() {
    assert_eq!(
        err(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        H1Error::UnsupportedVersion
    );
    assert_eq!(
        err(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        H1Error::UnsupportedVersion
    );
    assert_eq!(
        err(b"GET / HTTP/0.9\r\nHost: a\r\n\r\n"),
        H1Error::UnsupportedVersion
    );
    assert_eq!(err(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n").status(), 505);
    assert_eq!(complete(b"GET / HTTP/1.0\r\n\r\n").minor_version, 0);
}

#[test]
fn garbage_is_refused_early() {
    assert!(matches!(err(b"\x16\x03\x01\x02\x00"), H1Error::Invalid(_)));
    assert!(matches!(err(b"GET  / HTTP/1.1\r\n"), H1Error::Invalid(_)));
}

// --- framing, persistence, expectations ---

#[test]
fn no_length_no_encoding_is_empty() {
    assert_eq!(
        complete(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").framing,
        BodyFraming::Empty
    );
    assert_eq!(
        complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").framing,
        BodyFraming::Length(0)
    );
}

#[test]
fn keep_alive_matrix() {
    for (version, connection, expected) in [
        ("1.1", None, true),
        ("1.1", Some("close"), false),
        ("1.1", Some("Close"), false),
        ("1.1", Some("keep-alive"), true),
        ("1.1", Some("upgrade, close"), false),
        ("1.1", Some("x-close"), true),
        ("1.1", Some("keep-alive, close"), false),
        ("1.0", None, false),
        ("1.0", Some("keep-alive"), true),
        ("1.0", Some("Keep-Alive"), true),
        ("1.0", Some("te , keep-alive"), true),
        ("1.0", Some("keep-alive, close"), false),
        ("1.0", Some("close"), false),
    ] {
        let mut buf = format!("GET / HTTP/{version}\r\nHost: a\r\n");
        if let Some(c) = connection {
            buf.push_str(&format!("Connection: {c}\r\n"));
        }
        buf.push_str("\r\n");
        assert_eq!(
            complete(buf.as_bytes()).keep_alive,
            expected,
            "{version} {connection:?}"
        );
    }
    // Connection fields combine across lines.
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: close\r\n\r\n";
    assert!(!complete(buf).keep_alive);
}

/// RFC 9110 §7.6.1: a field named in `Connection` is hop-by-hop.
#[test]
fn fields_named_in_connection_are_not_end_to_end() {
    for (fields, end_to_end) in [
        ("anthropic-beta: b\r\n", true),
        (
            "connection: keep-alive, close\r\nanthropic-beta: b\r\n",
            true,
        ),
        ("connection: anthropic-betas\r\nanthropic-beta: b\r\n", true),
        ("connection: anthropic-beta\r\nanthropic-beta: b\r\n", false),
        (
            "anthropic-beta: b\r\nConnection: x, Anthropic-Beta \r\n",
            false,
        ),
        (
            "connection: x\r\nconnection: ,anthropic-beta\r\nanthropic-beta: b\r\n",
            false,
        ),
    ] {
        let buf = format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let head = complete(buf.as_bytes());
        let want = end_to_end.then_some(&b"b"[..]);
        assert_eq!(
            head.end_to_end_header(buf.as_bytes(), "anthropic-beta"),
            want,
            "{fields:?}"
        );
        assert_eq!(
            head.header(buf.as_bytes(), "anthropic-beta"),
            Some(&b"b"[..])
        );
    }
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n";
    assert!(!complete(buf).connection_names_fields);
    let buf = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n";
    assert!(complete(buf).connection_names_fields);
}

#[test]
fn expect_continue() {
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
    assert!(complete(buf).expect_continue);
    let buf = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
    assert!(!complete(buf).expect_continue);
    let buf = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n";
    assert!(!complete(buf).expect_continue);
}

// --- limits ---

/// A GET whose head is exactly `len` bytes long (`len` >= 40).
fn head_of_len(len: usize) -> Vec<u8> {
    let base = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
    let pad = "p".repeat(len - base);
    format!("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n").into_bytes()
}

#[test]
fn head_size_limit_exactly_and_one_past() {
    let limits = HeadLimits {
        max_head_bytes: 100,
        max_headers: 10,
    };
    let exact = head_of_len(100);
    let head = parse_request(&exact, &limits).unwrap().unwrap();
    assert_eq!(head.head_len, 100);
    // Trailing body bytes beyond the limit do not matter.
    let mut with_body = exact.clone();
    with_body.extend_from_slice(&[b'x'; 500]);
    assert!(parse_request(&with_body, &limits).unwrap().is_some());

    let over = head_of_len(101);
    assert_eq!(
        parse_request(&over, &limits).unwrap_err(),
        H1Error::HeadTooLarge
    );
    assert!(parse_request(&over[..99], &limits).unwrap().is_none());
    assert_eq!(
        parse_request(&over[..100], &limits).unwrap_err(),
        H1Error::HeadTooLarge
    );
    assert_eq!(H1Error::HeadTooLarge.status(), 431);
}

#[test]
fn header_count_limit_exactly_and_one_past() {
    for max_headers in [0usize, 1, 3, 128, 129, 200] {
        let limits = HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers,
        };
        let build = |n: usize| {
            let mut buf = String::from("GET / HTTP/1.0\r\n");
            for i in 0..n {
                buf.push_str(&format!("X-{i}: v\r\n"));
            }
            buf.push_str("\r\n");
            buf.into_bytes()
        };
        let head = parse_request(&build(max_headers), &limits)
            .unwrap()
            .unwrap();
        assert_eq!(head.headers.len(), max_headers);
        assert_eq!(
            parse_request(&build(max_headers + 1), &limits).unwrap_err(),
            H1Error::TooManyHeaders,
            "{max_headers}"
        );
    }
    assert_eq!(H1Error::TooManyHeaders.status(), 431);
}

#[test]
fn error_statuses() {
    assert_eq!(H1Error::UnsupportedTransferEncoding.status(), 501);
    assert_eq!(H1Error::UnsupportedVersion.status(), 505);
    for e in [
        H1Error::Invalid("x"),
        H1Error::BareLf,
        H1Error::ObsFold,
        H1Error::InvalidContentLength,
        H1Error::DuplicateContentLength,
        H1Error::ContentLengthWithTransferEncoding,
        H1Error::MissingHost,
        H1Error::DuplicateHost,
        H1Error::InvalidHost,
        H1Error::HostMismatch,
    ] {
        assert_eq!(e.status(), 400, "{e}");
    }
}
