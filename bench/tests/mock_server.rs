//! The mock server binary over real TCP, checked with a plain blocking
//! `std::net::TcpStream`, and `run` against it. Counts and contents only: no
//! timing assertions.
// A test crate: its helpers may fail loudly (clippy only exempts `#[test]`
// functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_shardgate-bench");

/// A running `shardgate-bench mock`, killed on drop.
struct Mock {
    child: Child,
    port: u16,
}

impl Mock {
    fn start(extra: &[&str]) -> Mock {
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

    fn connect(&self) -> TcpStream {
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

fn post(path: &str, body: &str, auth: Option<&str>) -> Vec<u8> {
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

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Reads one response from a keep-alive connection; `pending` carries bytes
/// read past it.
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> Response {
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

fn request(mock: &Mock, raw: &[u8]) -> Response {
    let mut s = mock.connect();
    s.write_all(raw).unwrap();
    read_response(&mut s, &mut Vec::new())
}

fn sse_events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_string())
        .collect()
}

#[test]
fn non_stream_chat_echoes_model_and_usage() {
    let mock = Mock::start(&[]);
    let r = request(
        &mock,
        &post(
            "/v1/chat/completions",
            r#"{"model":"mock-tokens-7","messages":[{"role":"user","content":"hi"}]}"#,
            None,
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-tokens-7");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let mut text = String::new();
    shardgate_proto::mock::text(7, &mut text);
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(v["usage"]["total_tokens"], prompt + 7);
}

#[test]
fn stream_chat_events_in_order_with_usage() {
    let mock = Mock::start(&["--output-tokens", "4"]);
    let r = request(
        &mock,
        &post(
            "/v1/chat/completions",
            r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            None,
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body);
    // role, 4 content, finish, usage, [DONE]
    assert_eq!(events.len(), 8, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..7]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "mock-1");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for (i, c) in chunks[1..5].iter().enumerate() {
        assert_eq!(
            c["choices"][0]["delta"]["content"],
            shardgate_proto::mock::token(i)
        );
        assert!(c["usage"].is_null());
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], serde_json::json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);

    // Without include_usage: no usage chunk and no "usage" keys.
    let r = request(
        &mock,
        &post(
            "/v1/chat/completions",
            r#"{"model":"mock-tokens-2","stream":true}"#,
            None,
        ),
    );
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events.iter().all(|e| !e.contains("usage")));
}

#[test]
fn failures_by_model_name() {
    let mock = Mock::start(&[]);
    let r = request(
        &mock,
        &post("/v1/chat/completions", r#"{"model":"mock-429"}"#, None),
    );
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"].is_string());
    let r = request(
        &mock,
        &post(
            "/v1/completions",
            r#"{"model":"mock-503","prompt":"x"}"#,
            None,
        ),
    );
    assert_eq!(r.status, 503);

    // Stream cut after 3 content chunks: EOF without the last chunk.
    let mut s = mock.connect();
    s.write_all(&post(
        "/v1/chat/completions",
        r#"{"model":"mock-cut-after-3","stream":true}"#,
        None,
    ))
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("\"content\":\" ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(!text.ends_with("0\r\n\r\n"));
}

#[test]
fn require_key_rejects_other_keys() {
    let mock = Mock::start(&["--require-key", "upstream-key"]);
    let body = r#"{"model":"mock-1","messages":[]}"#;
    for auth in [None, Some("Bearer client-key"), Some("upstream-key")] {
        let r = request(&mock, &post("/v1/chat/completions", body, auth));
        assert_eq!(r.status, 401);
        assert_eq!(
            r.body,
            br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
        );
    }
    let r = request(
        &mock,
        &post("/v1/chat/completions", body, Some("Bearer upstream-key")),
    );
    assert_eq!(r.status, 200);
    let r = request(&mock, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let mock = Mock::start(&[]);
    let mut s = mock.connect();
    let mut pending = Vec::new();
    for model in ["mock-tokens-1", "mock-tokens-2"] {
        s.write_all(&post(
            "/v1/chat/completions",
            &format!(r#"{{"model":"{model}"}}"#),
            None,
        ))
        .unwrap();
        let r = read_response(&mut s, &mut pending);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["model"], model);
    }
    // Three pipelined requests in one write, answered in order.
    let mut batch = post("/v1/embeddings", r#"{"model":"e","input":["a","b"]}"#, None);
    batch.extend(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n");
    batch.extend(post(
        "/v1/chat/completions",
        r#"{"model":"mock-tokens-3","stream":true}"#,
        None,
    ));
    s.write_all(&batch).unwrap();
    let r = read_response(&mut s, &mut pending);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = read_response(&mut s, &mut pending);
    assert_eq!(r.json()["data"][0]["id"], "mock-1");
    let r = read_response(&mut s, &mut pending);
    assert_eq!(sse_events(&r.body).len(), 6);
    assert!(pending.is_empty());
}

#[test]
fn run_against_mock_reports_json() {
    let mock = Mock::start(&["--require-key", "k"]);
    for stream in [false, true] {
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", mock.port);
        let mut args = vec![
            "run",
            "--url",
            &url,
            "--connections",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--shards",
            "1",
            "--api-key",
            "k",
            "--model",
            "mock-1",
            "--json",
        ];
        if stream {
            args.push("--stream");
        }
        let out = Command::new(BIN).args(&args).output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["errors_total"], 0, "{v}");
        assert_eq!(v["connections"], 4);
        assert!(v["machine"]["nproc"].as_u64().unwrap() >= 1);
        if stream {
            // role + 16 content + finish + usage + [DONE]
            assert_eq!(v["sse_events_per_request"], 20.0, "{v}");
            assert!(v["ttft_us"]["p50"].as_u64().unwrap() > 0);
        } else {
            assert!(v["ttft_us"].is_null());
        }
    }
}
