//! Helpers for end-to-end tests: start the real `shardgate` and
//! `shardgate-bench mock` binaries on ephemeral ports, learn their ports from
//! their first stdout line, and talk raw HTTP/1.1 to them.
//!
//! Binaries come from `SHARDGATE_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`,
//! else `target/debug`; the test command builds them first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_proto::chunked::{ChunkedDecoder, ChunkedLimits};
use shardgate_proto::h1::{parse_response, HeadLimits, Method, ResponseFraming};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SHARDGATE_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace --bins`",
        p.display()
    );
    // Absolute, so children may run in another working directory.
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// A child process that announced its listening addresses.
pub struct Proc {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Proc {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..400 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd`, reading stdout until `count` lines of the form
/// `<prefix> <addr>...` arrived (within 30 s).
pub fn spawn(mut cmd: Command, prefix: &'static str, count: usize, dir: tempfile::TempDir) -> Proc {
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(prefix) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .parse::<SocketAddr>();
                if let Ok(a) = addr {
                    if tx.send(a).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut addrs = Vec::new();
    while addrs.len() < count {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => addrs.push(a),
            Err(_) => {
                let _ = child.kill();
                let err =
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                panic!("process did not announce `{prefix}`; stderr:\n{err}");
            }
        }
    }
    Proc { child, addrs, dir }
}

/// The mock upstream, requiring `key` when given.
pub fn start_mock(key: Option<&str>) -> Proc {
    let mut cmd = Command::new(bin("shardgate-bench"));
    cmd.args(["mock", "--listen", "127.0.0.1:0"]);
    if let Some(k) = key {
        cmd.args(["--require-key", k]);
    }
    spawn(cmd, "mock listening on ", 1, tempfile::tempdir().unwrap())
}

/// The gateway with `config` (YAML); `listeners` is how many addresses it
/// announces. Extra files for the config go in `proc.dir`.
pub fn start_gateway_in(
    dir: tempfile::TempDir,
    config: &str,
    listeners: usize,
    env: &[(&str, &str)],
) -> Proc {
    let path = dir.path().join("shardgate.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(bin("shardgate"));
    cmd.arg("serve").arg("--config").arg(&path).arg("--no-pin");
    // The store's default `shardgate-data` lands in this gateway's own dir.
    cmd.current_dir(dir.path());
    cmd.env("RUST_LOG", "debug");
    // What the gateway re-executes itself with comes from it alone.
    cmd.env_remove("GLIBC_TUNABLES")
        .env_remove("SHARDGATE_NO_REEXEC");
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn(cmd, "shardgate listening on ", listeners, dir)
}

pub fn start_gateway(config: &str) -> Proc {
    start_gateway_in(tempfile::tempdir().unwrap(), config, 1, &[])
}

/// A config with the built-in mock behind `local` and, when given, the mock
/// upstream behind `up`. `extra` is appended (top-level keys).
pub fn config(upstream: Option<SocketAddr>, extra: &str) -> String {
    let mut c = String::from(
        "listen: 127.0.0.1:0\nshards: 2\nauth: none\nproviders:\n  local: { kind: mock, output_tokens: 5 }\n",
    );
    if let Some(a) = upstream {
        c.push_str(&format!(
            "  up: {{ kind: openai, base_url: \"http://{a}/v1\", api_key: upstream-key }}\n"
        ));
    }
    c.push_str("models:\n  local: { targets: [ { provider: local, model: mock-1 } ] }\n");
    if upstream.is_some() {
        c.push_str("  demo: { targets: [ { provider: up, model: mock-1 } ] }\n");
        c.push_str("  cut: { targets: [ { provider: up, model: mock-cut-after-3 } ] }\n");
        c.push_str("  hang: { targets: [ { provider: up, model: mock-hang } ] }\n");
    }
    c.push_str(extra);
    c
}

/// A parsed response: status, lower-cased headers, de-chunked body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 client connection over any stream.
pub struct Client<S> {
    pub stream: S,
    buf: Vec<u8>,
}

pub fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    Client::new(s)
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        match self.stream.read(&mut tmp) {
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// True once the peer has closed (EOF) with nothing left unread.
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }

    /// Reads the next response (skipping 100 Continue unless `keep_interim`).
    pub fn read_response(&mut self) -> Response {
        self.read_response_inner(false)
    }

    pub fn read_response_inner(&mut self, keep_interim: bool) -> Response {
        self.read_response_to(Method::Post, keep_interim)
    }

    /// Reads the response to a HEAD request: its head, and no body whatever
    /// its `content-length` says (RFC 9110 §9.3.2).
    pub fn read_head_response(&mut self) -> Response {
        self.read_response_to(Method::Head, false)
    }

    /// Bytes received and not yet read as part of a response.
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    fn read_response_to(&mut self, method: Method, keep_interim: bool) -> Response {
        loop {
            let parsed =
                parse_response(&self.buf, &HeadLimits::default(), method).unwrap_or_else(|e| {
                    panic!(
                        "not a response head ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                });
            let Some(head) = parsed else {
                assert!(
                    self.fill() > 0,
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                continue;
            };
            let headers = head
                .headers
                .iter()
                .map(|h| {
                    (
                        String::from_utf8_lossy(h.name.of(&self.buf)).to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value.of(&self.buf)).into_owned(),
                    )
                })
                .collect();
            let status = head.status;
            self.buf.drain(..head.head_len);
            if head.is_informational() {
                if keep_interim {
                    return Response {
                        status,
                        headers,
                        body: Vec::new(),
                    };
                }
                continue;
            }
            let body = self.read_body(head.framing);
            return Response {
                status,
                headers,
                body,
            };
        }
    }

    fn read_body(&mut self, framing: ResponseFraming) -> Vec<u8> {
        match framing {
            ResponseFraming::Empty => Vec::new(),
            ResponseFraming::Length(n) => {
                while self.buf.len() < n as usize {
                    assert!(self.fill() > 0, "closed mid-body");
                }
                self.buf.drain(..n as usize).collect()
            }
            ResponseFraming::UntilClose => {
                while self.fill() > 0 {}
                std::mem::take(&mut self.buf)
            }
            ResponseFraming::Chunked => {
                let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
                let mut body = Vec::new();
                loop {
                    let d = dec.decode(&self.buf).unwrap();
                    body.extend_from_slice(&self.buf[d.data.clone()]);
                    self.buf.drain(..d.consumed);
                    if dec.is_done() {
                        return body;
                    }
                    if d.consumed == 0 {
                        assert!(
                            self.fill() > 0,
                            "closed mid-chunked-body; body so far: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                }
            }
        }
    }
}

/// `POST path` with a JSON body, as raw bytes.
pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").into_bytes()
}

/// `req` with `lines` (each `name: value\r\n`) added after its request line.
pub fn with_header(mut req: Vec<u8>, lines: &str) -> Vec<u8> {
    let at = req
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(0, |p| p + 2);
    req.splice(at..at, lines.bytes());
    req
}

/// `shardgate keys ARGS --data-dir DATA`, which must succeed, as JSON
/// (pass `--json`).
pub fn keys_json(data: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("shardgate"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `shardgate check --config PATH`: its exit code and stderr.
pub fn check_config(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin("shardgate"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                })
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// One request as a fake upstream in a test reads it.
pub struct UpstreamRequest {
    /// The head as sent, without its blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl UpstreamRequest {
    /// A header's value (name matched without case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A provider on an ephemeral loopback port: `serve` runs on a thread of
/// its own for each connection it accepts. Returns its address.
pub fn spawn_provider(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (serve, stream) = (serve.clone(), stream.unwrap());
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// Reads the next request (head and `content-length` body) from `s`; bytes
/// past it stay in `buf` for the next call. `None` once the peer closed.
pub fn read_upstream_request(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<UpstreamRequest> {
    loop {
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case("content-length").then_some(v)
                })
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= h + 4 + len {
                let body = buf[h + 4..h + 4 + len].to_vec();
                buf.drain(..h + 4 + len);
                return Some(UpstreamRequest { head, body });
            }
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}
