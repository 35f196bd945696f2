use super::*;

#[test]
fn span_accessors() {
    let buf = b"hello world";
    let s = Span { start: 6, end: 11 };
    assert_eq!(s.of(buf), b"world");
    assert_eq!(s.len(), 5);
    assert!(!s.is_empty());
    assert!(Span::default().is_empty());
    // A span from another buffer never panics.
    assert_eq!(Span { start: 6, end: 50 }.of(buf), b"");
    assert_eq!(Span { start: 9, end: 3 }.of(buf), b"");
    assert_eq!(Span { start: 9, end: 3 }.len(), 0);
}

#[test]
fn span_of_sub_slices() {
    let buf = b"abcdef";
    assert_eq!(span_of(buf, &buf[2..4]).unwrap(), Span { start: 2, end: 4 });
    assert_eq!(span_of(buf, &buf[6..]).unwrap(), Span { start: 6, end: 6 });
    assert_eq!(span_of(buf, b"").unwrap(), Span::default());
    assert!(span_of(&buf[..2], &buf[1..4]).is_err());
}

#[test]
fn trimming_and_lists() {
    assert_eq!(trim_ows(b" \t a b\t "), b"a b");
    assert_eq!(trim_ows(b"   "), b"");
    let items: Vec<&[u8]> = list_items(b" a ,, b,\tc ,").collect();
    assert_eq!(items, [&b"a"[..], b"b", b"c"]);
}

#[test]
fn content_length_grammar() {
    assert_eq!(parse_content_length(b"0"), Ok(0));
    assert_eq!(parse_content_length(b"123"), Ok(123));
    assert_eq!(
        parse_content_length(b"999999999999999999"),
        Ok(999_999_999_999_999_999)
    );
    for bad in [&b""[..], b"1000000000000000000", b"+1", b"1 ", b"1,1", b"a"] {
        assert_eq!(
            parse_content_length(bad),
            Err(H1Error::InvalidContentLength)
        );
    }
}

#[test]
fn scan_finds_the_blank_line() {
    assert!(matches!(
        scan_head(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody", true),
        Ok(Scan::Complete(24))
    ));
    assert!(matches!(
        scan_head(b"GET / HTTP/1.1\r\nA: b\r\n", true),
        Ok(Scan::Partial)
    ));
    assert!(matches!(scan_head(b"\r\n\r\n", true), Ok(Scan::Partial)));
    assert!(matches!(
        scan_head(b"HTTP/1.1 200 OK\n\n", false),
        Ok(Scan::Complete(17))
    ));
    assert!(matches!(
        scan_head(b"HTTP/1.1 200 OK\n\n", true),
        Err(H1Error::BareLf)
    ));
}
