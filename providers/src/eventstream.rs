//! AWS event-stream (`application/vnd.amazon.eventstream`) decoding,
//! sans-IO.
//!
//! A message: prelude (total length u32 BE, headers length u32 BE), prelude
//! CRC32, headers, payload, message CRC32 over everything before it. CRC32
//! is the IEEE/gzip one. A header: name length u8, name, value type u8, value
//! (0 true, 1 false, 2 i8, 3 i16, 4 i32, 5 i64, 6 bytes u16-length-prefixed,
//! 7 string u16-length-prefixed, 8 timestamp i64 ms, 9 uuid 16 bytes).
//!
//! Invariants: both CRCs are checked before anything of a message is handed
//! out; a message larger than the limit is an error before it is buffered;
//! after an error the stream is broken.

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EventStreamError {
    #[error("event-stream message of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("event-stream prelude CRC mismatch")]
    PreludeCrc,
    #[error("event-stream message CRC mismatch")]
    MessageCrc,
    #[error("malformed event-stream message: {0}")]
    Malformed(&'static str),
}

const PRELUDE: usize = 12;
const OVERHEAD: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(&'a [u8]),
    String(&'a str),
    Timestamp(i64),
    Uuid(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub headers: Vec<(&'a str, HeaderValue<'a>)>,
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if *n == name => Some(*s),
            _ => None,
        })
    }
}

/// Splits a byte stream into messages. One per stream.
#[derive(Debug)]
pub struct Decoder {
    max_message_bytes: usize,
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            buf: Vec::new(),
        }
    }

    /// Calls `on_message` for every complete, CRC-checked message.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_message: impl FnMut(Message<'_>),
    ) -> Result<(), EventStreamError> {
        self.buf.extend_from_slice(input);
        let mut at = 0;
        while let Some(len) = self.next_len(at)? {
            let frame = &self.buf[at..at + len];
            on_message(parse(frame)?);
            at += len;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// Bytes of an unfinished message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Length of the complete message at `at`, None if more bytes are needed.
    fn next_len(&self, at: usize) -> Result<Option<usize>, EventStreamError> {
        let rest = &self.buf[at..];
        if rest.len() < PRELUDE {
            return Ok(None);
        }
        let total = be32(&rest[0..4]) as usize;
        let headers = be32(&rest[4..8]) as usize;
        if crc32fast::hash(&rest[0..8]) != be32(&rest[8..12]) {
            return Err(EventStreamError::PreludeCrc);
        }
        if total < OVERHEAD || headers > total - OVERHEAD {
            return Err(EventStreamError::Malformed("lengths do not fit"));
        }
        if total > self.max_message_bytes {
            return Err(EventStreamError::TooLarge {
                len: total,
                limit: self.max_message_bytes,
            });
        }
        Ok((rest.len() >= total).then_some(total))
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// One whole message (prelude CRC and lengths already checked).
fn parse(frame: &[u8]) -> Result<Message<'_>, EventStreamError> {
    let total = frame.len();
    let (body, crc) = frame.split_at(total - 4);
    if crc32fast::hash(body) != be32(crc) {
        return Err(EventStreamError::MessageCrc);
    }
    let headers_len = be32(&frame[4..8]) as usize;
    let mut h = &frame[PRELUDE..PRELUDE + headers_len];
    let payload = &frame[PRELUDE + headers_len..total - 4];
    let mut headers = Vec::new();
    while !h.is_empty() {
        let name_len = h[0] as usize;
        let name = h
            .get(1..1 + name_len)
            .ok_or(EventStreamError::Malformed("header name"))?;
        let name =
            std::str::from_utf8(name).map_err(|_| EventStreamError::Malformed("header name"))?;
        h = &h[1 + name_len..];
        let (&kind, rest) = h
            .split_first()
            .ok_or(EventStreamError::Malformed("header type"))?;
        let take = |n: usize| {
            rest.get(..n)
                .ok_or(EventStreamError::Malformed("header value"))
        };
        let (value, used) = match kind {
            0 => (HeaderValue::Bool(true), 0),
            1 => (HeaderValue::Bool(false), 0),
            2 => (HeaderValue::Byte(take(1)?[0] as i8), 1),
            3 => {
                let b = take(2)?;
                (HeaderValue::Short(i16::from_be_bytes([b[0], b[1]])), 2)
            }
            4 => (HeaderValue::Int(be32(take(4)?) as i32), 4),
            5 | 8 => {
                let b = take(8)?;
                let mut a = [0; 8];
                a.copy_from_slice(b);
                let v = i64::from_be_bytes(a);
                (
                    if kind == 5 {
                        HeaderValue::Long(v)
                    } else {
                        HeaderValue::Timestamp(v)
                    },
                    8,
                )
            }
            6 | 7 => {
                let b = take(2)?;
                let len = u16::from_be_bytes([b[0], b[1]]) as usize;
                let v = rest
                    .get(2..2 + len)
                    .ok_or(EventStreamError::Malformed("header value"))?;
                let value = if kind == 6 {
                    HeaderValue::Bytes(v)
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(v)
                            .map_err(|_| EventStreamError::Malformed("header string"))?,
                    )
                };
                (value, 2 + len)
            }
            9 => (HeaderValue::Uuid(take(16)?), 16),
            _ => return Err(EventStreamError::Malformed("header type")),
        };
        headers.push((name, value));
        h = &rest[used..];
    }
    Ok(Message { headers, payload })
}

/// Encodes a message with string headers (for tests and mock upstreams).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = OVERHEAD + h.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_proto::testing::for_each_split;

    /// A published example frame: payload `{"foo": "bar"}`, header
    /// `content-type: application/json` (from the Elixir event_stream
    /// package docs, which encode with zlib's CRC32).
    const EXAMPLE: [u8; 62] = [
        0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12, 99, 111, 110, 116, 101, 110, 116, 45, 116,
        121, 112, 101, 7, 0, 16, 97, 112, 112, 108, 105, 99, 97, 116, 105, 111, 110, 47, 106, 115,
        111, 110, 123, 34, 102, 111, 111, 34, 58, 32, 34, 98, 97, 114, 34, 125, 111, 162, 191, 59,
    ];

    type Decoded = Vec<(Vec<(String, String)>, Vec<u8>)>;

    fn decode_all(pieces: &[&[u8]]) -> Decoded {
        let mut d = Decoder::new(1 << 16);
        let mut got = Vec::new();
        for p in pieces {
            d.feed(p, |m| {
                let headers = m
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), format!("{v:?}")))
                    .collect();
                got.push((headers, m.payload.to_vec()));
            })
            .unwrap();
        }
        assert_eq!(d.pending(), 0);
        got
    }

    #[test]
    fn published_example_decodes_and_encodes() {
        assert_eq!(
            encode(
                &[("content-type", "application/json")],
                br#"{"foo": "bar"}"#
            ),
            EXAMPLE
        );
        let empty = encode(&[], br#"{"foo": "bar"}"#);
        assert_eq!(&empty[..12], &[0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138]);
        assert_eq!(&empty[26..], &[174, 114, 88, 228]);
        let mut two = EXAMPLE.to_vec();
        two.extend_from_slice(&empty);
        for_each_split(&two, |pieces| {
            let got = decode_all(pieces);
            assert_eq!(got.len(), 2);
            assert_eq!(
                got[0].0,
                [(
                    "content-type".to_string(),
                    "String(\"application/json\")".to_string()
                )]
            );
            assert_eq!(got[0].1, br#"{"foo": "bar"}"#);
            assert!(got[1].0.is_empty());
        });
    }

    #[test]
    fn every_header_type() {
        let mut h = Vec::new();
        let mut push = |name: &str, kind: u8, value: &[u8]| {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(kind);
            h.extend_from_slice(value);
        };
        push("t", 0, &[]);
        push("f", 1, &[]);
        push("b", 2, &[0xff]);
        push("s", 3, &[0x01, 0x02]);
        push("i", 4, &[0, 0, 1, 0]);
        push("l", 5, &[0, 0, 0, 0, 0, 0, 0, 9]);
        push("x", 6, &[0, 2, 0xde, 0xad]);
        push("ts", 8, &[0, 0, 0, 0, 0, 0, 0, 1]);
        push("u", 9, &[7; 16]);
        let total = 16 + h.len();
        let mut m = (total as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32fast::hash(&m);
        m.extend_from_slice(&c.to_be_bytes());
        m.extend_from_slice(&h);
        let c = crc32fast::hash(&m);
        m.extend_from_slice(&c.to_be_bytes());
        let mut d = Decoder::new(1024);
        let mut seen = Vec::new();
        d.feed(&m, |msg| {
            seen = msg.headers.iter().map(|(_, v)| format!("{v:?}")).collect()
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "Bool(true)",
                "Bool(false)",
                "Byte(-1)",
                "Short(258)",
                "Int(256)",
                "Long(9)",
                "Bytes([222, 173])",
                "Timestamp(1)",
                "Uuid([7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7])"
            ]
        );
    }

    #[test]
    fn corruption_is_detected() {
        for i in 0..EXAMPLE.len() {
            let mut bad = EXAMPLE;
            bad[i] ^= 0x01;
            let mut d = Decoder::new(1 << 16);
            let r = d.feed(&bad, |_| {});
            match i {
                0..=11 => assert!(
                    matches!(r, Err(EventStreamError::PreludeCrc)),
                    "byte {i}: {r:?}"
                ),
                _ => assert_eq!(r, Err(EventStreamError::MessageCrc), "byte {i}"),
            }
        }
    }

    #[test]
    fn oversized_and_inconsistent_lengths() {
        let mut d = Decoder::new(40);
        assert_eq!(
            d.feed(&EXAMPLE[..12], |_| {}),
            Err(EventStreamError::TooLarge { len: 62, limit: 40 })
        );
        let mut bad = vec![0, 0, 0, 10, 0, 0, 0, 0];
        let c = crc32fast::hash(&bad);
        bad.extend_from_slice(&c.to_be_bytes());
        let mut d = Decoder::new(1 << 16);
        assert!(matches!(
            d.feed(&bad, |_| {}),
            Err(EventStreamError::Malformed(_))
        ));
    }
}
