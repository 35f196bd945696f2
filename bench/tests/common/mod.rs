//! Helpers shared by the integration tests: a `shardgate-bench mock`
//! child process and a blocking HTTP/1.1 client for it.
// Each test crate uses a different subset.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_shardgate-bench");

/// A running `shardgate-bench mock`, killed on drop.
pub struct Mock {
    pub child: Child,
    pub port: u16,
}

impl Mock {
    pub fn start(extra: &[&str]) -> Mock {
        let mut child = Command::new(BIN)
            .args(["mock", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mock");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read port line");
        let port = line
            .trim()
            .strip_prefix("mock listening on 127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("port");
        Mock { child, port }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn post(path: &str, body: &str, auth: Option<&str>) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Reads one response from a keep-alive connection; `pending` carries bytes
/// read past it.
pub fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> Response {
    let mut tmp = [0u8; 8192];
    let (status, headers, head_len) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = r.parse(pending).expect("valid head") {
            let headers = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (r.code.unwrap(), headers, n);
        }
        let n = s.read(&mut tmp).expect("read head");
        assert!(n > 0, "EOF before head");
        pending.extend_from_slice(&tmp[..n]);
    };
    pending.drain(..head_len);
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().unwrap();
        while pending.len() < len {
            let n = s.read(&mut tmp).expect("read body");
            assert!(n > 0, "EOF in body");
            pending.extend_from_slice(&tmp[..n]);
        }
        resp.body = pending.drain(..len).collect();
    } else {
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        // Chunk by chunk: size line, data, CRLF; 0 ends.
        loop {
            let line_end = loop {
                if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let n = s.read(&mut tmp).expect("read chunk size");
                assert!(n > 0, "EOF in chunk size");
                pending.extend_from_slice(&tmp[..n]);
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&pending[..line_end]).unwrap(), 16)
                    .expect("hex chunk size");
            pending.drain(..line_end + 2);
            while pending.len() < size + 2 {
                let n = s.read(&mut tmp).expect("read chunk");
                assert!(n > 0, "EOF in chunk");
                pending.extend_from_slice(&tmp[..n]);
            }
            assert_eq!(&pending[size..size + 2], b"\r\n");
            resp.body.extend(pending.drain(..size));
            pending.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    resp
}

pub fn request(mock: &Mock, raw: &[u8]) -> Response {
    let mut s = mock.connect();
    s.write_all(raw).unwrap();
    read_response(&mut s, &mut Vec::new())
}

pub fn sse_events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_string())
        .collect()
}

/// A POST with extra headers.
pub fn post_with(path: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

/// `event: NAME\ndata: JSON\n\n` events (Anthropic style).
pub fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("two lines");
            let name = name.strip_prefix("event: ").expect("event line");
            let data = data.strip_prefix("data: ").expect("data line");
            (
                name.to_string(),
                serde_json::from_str(data).expect("JSON data"),
            )
        })
        .collect()
}

/// The mock text of `n` tokens.
pub fn text(n: usize) -> String {
    let mut s = String::new();
    shardgate_proto::mock::text(n, &mut s);
    s
}
