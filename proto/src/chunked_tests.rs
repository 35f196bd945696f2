use super::*;
use crate::testing::for_each_split;

/// Feeds `pieces` as the contract says and returns (body, done, bytes left
/// unconsumed after done).
fn decode_pieces(
    limits: ChunkedLimits,
    pieces: &[&[u8]],
) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkedError> {
    let mut dec = ChunkedDecoder::new(limits);
    let mut body = Vec::new();
    let mut rest = Vec::new();
    for piece in pieces {
        let mut input = *piece;
        loop {
            let d = dec.decode(input)?;
            assert!(d.consumed <= input.len());
            assert!(d.data.end <= d.consumed);
            body.extend_from_slice(&input[d.data.clone()]);
            if d.consumed == 0 {
                assert!(input.is_empty() || dec.is_done());
                break;
            }
            input = &input[d.consumed..];
        }
        rest.extend_from_slice(input);
    }
    Ok((body, dec.is_done(), rest))
}

fn decode_all(input: &[u8]) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkedError> {
    decode_pieces(ChunkedLimits::default(), &[input])
}

fn assert_every_split(input: &[u8], body: &[u8], rest: &[u8]) {
    for_each_split(input, |pieces| {
        let got = decode_pieces(ChunkedLimits::default(), pieces).unwrap();
        assert_eq!(got, (body.to_vec(), true, rest.to_vec()), "{pieces:?}");
    });
}

fn assert_every_split_fails(input: &[u8], expected: ChunkedError) {
    for_each_split(input, |pieces| {
        assert_eq!(
            decode_pieces(ChunkedLimits::default(), pieces),
            Err(expected.clone()),
            "{pieces:?}"
        );
    });
}

#[test]
fn simple_body() {
    let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    assert_eq!(
        decode_all(input).unwrap(),
        (b"hello world".to_vec(), true, vec![])
    );
    assert_every_split(input, b"hello world", b"");
}

#[test]
fn data_ranges_are_zero_copy_and_one_per_call() {
    let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
    let d = dec.decode(input).unwrap();
    assert_eq!(d.data, 3..8);
    // The CRLF and next size line are consumed with the first chunk.
    assert_eq!(d.consumed, 13);
    let d2 = dec.decode(&input[13..]).unwrap();
    assert_eq!(&input[13..][d2.data.clone()], b" world");
    let d3 = dec.decode(&input[13 + d2.consumed..]).unwrap();
    assert!(d3.data.is_empty());
    assert!(dec.is_done());
    assert_eq!(13 + d2.consumed + d3.consumed, input.len());
    assert_eq!(dec.decode(b"more").unwrap().consumed, 0);
}

#[test]
fn pipelined_bytes_after_the_end_are_left() {
    let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    assert_every_split(input, b"abc", b"GET / HTTP/1.1\r\n");
}

#[test]
fn hex_sizes_and_leading_zeros() {
    let body = vec![b'x'; 0x1a];
    let mut input = b"001A\r\n".to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b"\r\n0000\r\n\r\n");
    assert_every_split(&input, &body, b"");
    let mut input = b"1a\r\n".to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(decode_all(&input).unwrap().0, body);
}

#[test]
fn extensions_are_ignored() {
    let input = b"5;name=value;other=\"q;uo\\\"ted\"\r\nhello\r\n5 ; x\r\nworld\r\n0;last\r\n\r\n";
    assert_every_split(input, b"helloworld", b"");
}

#[test]
fn trailers_are_skipped() {
    let input = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\nNEXT";
    assert_every_split(input, b"hello", b"NEXT");
}

#[test]
fn bad_sizes() {
    for input in [
        &b"\r\n"[..],
        b"g\r\n",
        b"-5\r\n",
        b"+5\r\n",
        b" 5\r\n",
        b"0x5\r\n",
        b"5 x\r\nhello\r\n",
        b"5\r\nhello\r\n\r\n",
    ] {
        assert_eq!(
            decode_all(input),
            Err(ChunkedError::InvalidSize),
            "{input:?}"
        );
    }
}

#[test]
fn overflow() {
    assert_every_split_fails(b"10000000000000000\r\n", ChunkedError::SizeOverflow);
    // The largest size parses (and then waits for data).
    let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
    let d = dec.decode(b"ffffffffffffffff\r\nab").unwrap();
    assert_eq!(d.consumed, 20);
    assert_eq!(d.data, 18..20);
}

#[test]
fn crlf_is_required() {
    assert_every_split_fails(b"5\nhello\r\n0\r\n\r\n", ChunkedError::BareLf);
    assert_every_split_fails(b"5\r\nhello\n0\r\n\r\n", ChunkedError::BareLf);
    assert_every_split_fails(b"5\r\nhello\r\n0\r\n\n", ChunkedError::BareLf);
    assert_every_split_fails(b"5\r\nhello\r\n0\r\nX: y\n\r\n", ChunkedError::BareLf);
    assert_every_split_fails(b"5;ext\n", ChunkedError::BareLf);
    assert_every_split_fails(b"5\rhello", ChunkedError::MissingCrlf);
    assert_every_split_fails(b"5\r\nhelloX\r\n", ChunkedError::MissingCrlf);
    assert_every_split_fails(b"5\r\nhello\rX", ChunkedError::MissingCrlf);
    assert_every_split_fails(b"0\r\n\rX", ChunkedError::MissingCrlf);
    assert_every_split_fails(b"0\r\nX: y\rZ", ChunkedError::MissingCrlf);
}

#[test]
fn line_limit_exactly_and_one_past() {
    let limits = ChunkedLimits {
        max_line_bytes: 8,
        max_trailer_bytes: 16,
    };
    // "5;abcdef" is 8 bytes.
    let ok = b"5;abcdef\r\nhello\r\n0\r\n\r\n";
    assert_eq!(decode_pieces(limits, &[ok]).unwrap().0, b"hello");
    let over = b"5;abcdefg\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        decode_pieces(limits, &[over]),
        Err(ChunkedError::LineTooLong)
    );
    // Leading zeros count too.
    let zeros = b"000000005\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        decode_pieces(limits, &[zeros]),
        Err(ChunkedError::LineTooLong)
    );
}

#[test]
fn trailer_limit_exactly_and_one_past() {
    let limits = ChunkedLimits {
        max_line_bytes: 8,
        max_trailer_bytes: 16,
    };
    // "X-Abcdefghij: z\r\n" is 17 bytes; "X-Abcdefghi: z\r\n" is 16.
    let ok = b"0\r\nX-Abcdefghi: z\r\n\r\n";
    assert!(decode_pieces(limits, &[ok]).unwrap().1);
    let over = b"0\r\nX-Abcdefghij: z\r\n\r\n";
    assert_eq!(
        decode_pieces(limits, &[over]),
        Err(ChunkedError::TrailersTooLarge)
    );
    let none_allowed = ChunkedLimits {
        max_line_bytes: 8,
        max_trailer_bytes: 0,
    };
    assert!(decode_pieces(none_allowed, &[b"0\r\n\r\n"]).unwrap().1);
}

#[test]
fn errors_are_sticky() {
    let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
    assert_eq!(dec.decode(b"z"), Err(ChunkedError::InvalidSize));
    assert_eq!(dec.decode(b"5\r\n"), Err(ChunkedError::InvalidSize));
    assert!(!dec.is_done());
}

#[test]
fn incomplete_input_is_not_done() {
    for input in [
        &b""[..],
        b"5",
        b"5\r\nhel",
        b"5\r\nhello\r\n0\r\n",
        b"0\r\nX: y\r\n",
    ] {
        let (_, done, rest) = decode_all(input).unwrap();
        assert!(!done, "{input:?}");
        assert!(rest.is_empty());
    }
}

#[test]
fn encode_then_decode() {
    for sizes in [
        &[1usize][..],
        &[15, 16, 17],
        &[255, 256, 4096, 65537],
        &[3, 1, 4, 1, 5],
    ] {
        let mut encoded = Vec::new();
        let mut body = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
            encode_chunk_header(n, &mut encoded);
            encoded.extend_from_slice(&data);
            encoded.extend_from_slice(CHUNK_END);
            body.extend_from_slice(&data);
        }
        encoded.extend_from_slice(LAST_CHUNK);
        assert_eq!(decode_all(&encoded).unwrap(), (body, true, vec![]));
    }
}

#[test]
fn chunk_header_is_lowercase_hex() {
    let mut out = Vec::new();
    encode_chunk_header(0xabc, &mut out);
    encode_chunk_header(1, &mut out);
    encode_chunk_header(usize::MAX, &mut out);
    assert_eq!(
        out,
        format!("abc\r\n1\r\n{:x}\r\n", usize::MAX).into_bytes()
    );
}

#[test]
fn data_before_an_error_is_delivered_first() {
    let input = b"3\r\nabcX";
    let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
    let d = dec.decode(input).unwrap();
    assert_eq!(&input[d.data.clone()], b"abc");
    assert_eq!(d.consumed, 6);
    assert_eq!(dec.decode(&input[6..]), Err(ChunkedError::MissingCrlf));
    assert_every_split_fails_after(input, b"abc", ChunkedError::MissingCrlf);
}

fn assert_every_split_fails_after(input: &[u8], body: &[u8], expected: ChunkedError) {
    for_each_split(input, |pieces| {
        let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
        let mut got = Vec::new();
        let mut err = None;
        'outer: for piece in pieces {
            let mut rest = *piece;
            loop {
                match dec.decode(rest) {
                    Ok(d) => {
                        got.extend_from_slice(&rest[d.data.clone()]);
                        if d.consumed == 0 {
                            break;
                        }
                        rest = &rest[d.consumed..];
                    }
                    Err(e) => {
                        err = Some(e);
                        break 'outer;
                    }
                }
            }
        }
        assert_eq!(
            (got, err),
            (body.to_vec(), Some(expected.clone())),
            "{pieces:?}"
        );
    });
}
