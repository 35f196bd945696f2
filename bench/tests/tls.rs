//! TLS end to end with certificates made here: `mock --tls-cert/--tls-key`
//! checked with a blocking rustls client, and `run`/`compare` against it
//! with `--ca-file`, with `--insecure`, and with neither (every handshake
//! fails, is counted as such, and the run still ends on time). Counts are
//! asserted exactly; timings not at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{post, Mock, BIN};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1,
/// as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "shardgate-bench test CA");
        let ca = p.self_signed(&ca_key).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "mock");
        let leaf = p.signed_by(&key, &ca, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn mock(&self) -> Mock {
        let (cert, key) = (self.arg("server.pem"), self.arg("server.key"));
        Mock::start(&["--tls-cert", &cert, "--tls-key", &key])
    }
}

/// Runs the tool and kills it if it has not finished within `limit`: a
/// TLS failure must never turn into a hang.
fn bench(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A test thread, not a shard.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn run(url: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "--url",
        url,
        "--shards",
        "1",
        "--duration",
        "1s",
        "--warmup",
        "0.2s",
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&bench(&args, Duration::from_secs(30)))
}

#[test]
fn mock_serves_tls_with_alpn_http11() {
    let pki = Pki::new();
    let mock = pki.mock();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    {
        use rustls_pki_types::pem::PemObject;
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(&ca).unwrap())
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, mock.connect());
    let body = r#"{"model":"mock-tokens-3","messages":[{"role":"user","content":"hi"}]}"#;
    s.write_all(&post("/v1/chat/completions", body, None))
        .unwrap();
    s.flush().unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    // Keep-alive: read until the whole Content-Length body is in.
    let total = loop {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "EOF: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&tmp[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(head) = r.parse(&got).unwrap() {
            assert_eq!(r.code, Some(200));
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            if got.len() >= head + len {
                break head + len;
            }
        }
    };
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let text = String::from_utf8_lossy(&got[..total]);
    assert!(text.contains("\"model\":\"mock-tokens-3\""), "{text}");
}

#[test]
fn run_over_tls_with_ca_file_counts_exactly() {
    let pki = Pki::new();
    let mock = pki.mock();
    let ca = pki.arg("ca.pem");
    // Streams: every request's 6 tokens arrive over TLS records.
    let url = format!("https://localhost:{}/v1/chat/completions", mock.port);
    let v = run(
        &url,
        &[
            "--ca-file",
            &ca,
            "--connections",
            "4",
            "--stream",
            "--model",
            "mock-tokens-6",
        ],
    );
    let n = v["requests"].as_u64().unwrap();
    assert!(n > 0, "{v}");
    assert_eq!(v["errors_total"], 0, "{v}");
    assert_eq!(v["output_tokens_total"].as_u64(), Some(6 * n), "{v}");
    assert_eq!(v["token_events_total"].as_u64(), Some(6 * n), "{v}");
    // Keep-alive: one handshake per connection, none per request.
    assert_eq!(v["connections_opened"], 4, "{v}");
    assert!(v["connect_us"]["p50"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["tls"], "verified (webpki roots + --ca-file)", "{v}");
    assert_eq!(v["url"], url, "{v}");

    // Non-stream, Anthropic shape, by IP (verified against the IP SAN).
    let url = format!("https://127.0.0.1:{}/v1/messages", mock.port);
    let v = run(&url, &["--ca-file", &ca, "--connections", "2"]);
    assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors_total"], 0, "{v}");
    assert_eq!(v["connections_opened"], 2, "{v}");
    assert_eq!(v["api"], "anthropic", "{v}");
}

#[test]
fn run_insecure_skips_verification_and_says_so() {
    let pki = Pki::new();
    let mock = pki.mock();
    let url = format!("https://localhost:{}/v1/chat/completions", mock.port);
    let v = run(&url, &["--insecure", "--connections", "2"]);
    assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors_total"], 0, "{v}");
    assert_eq!(v["connections_opened"], 2, "{v}");
    assert_eq!(v["tls"], "INSECURE (certificate not verified)", "{v}");

    // The text report says it too.
    let out = bench(
        &[
            "run",
            "--url",
            &url,
            "--insecure",
            "--connections",
            "1",
            "--shards",
            "1",
            "--duration",
            "0.3s",
            "--warmup",
            "0",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tls: INSECURE"), "{text}");
    assert!(text.contains("connect+tls ms"), "{text}");
}

#[test]
fn untrusted_certificate_counts_handshake_errors_and_finishes() {
    let pki = Pki::new();
    let mock = pki.mock();
    let url = format!("https://localhost:{}/v1/chat/completions", mock.port);
    let started = Instant::now();
    // No --ca-file: the test CA is not among the webpki roots.
    let v = run(&url, &["--connections", "3"]);
    assert!(started.elapsed() < Duration::from_secs(15), "{v}");
    assert_eq!(v["requests"], 0, "{v}");
    assert_eq!(v["connections_opened"], 0, "{v}");
    let handshakes = v["errors"]["tls_handshake"].as_u64().unwrap();
    // Each of the 3 connections retries every 20ms for 1.2s.
    assert!(handshakes >= 3, "{v}");
    assert_eq!(v["errors_total"].as_u64(), Some(handshakes), "{v}");
    assert_eq!(v["errors"]["connect"], 0, "{v}");
    assert_eq!(v["errors"]["io"], 0, "{v}");
    let why = v["errors"]["first_tls_error"].as_str().unwrap();
    assert!(why.contains("UnknownIssuer"), "{v}");

    // The text report names the kind.
    let out = bench(
        &[
            "run",
            "--url",
            &url,
            "--connections",
            "1",
            "--shards",
            "1",
            "--duration",
            "0.2s",
            "--warmup",
            "0",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 ok"), "{text}");
    assert!(text.contains("tls_handshake="), "{text}");
    assert!(text.contains("[first tls_handshake error: "), "{text}");
}

#[test]
fn bad_ca_file_is_a_clear_startup_error() {
    let pki = Pki::new();
    let missing = pki.arg("nope.pem");
    let not_pem = pki.path("empty.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (ca, says) in [
        (missing.as_str(), "nope.pem"),
        (not_pem.to_str().unwrap(), "no PEM certificate"),
    ] {
        let out = bench(
            &[
                "run",
                "--url",
                "https://localhost:9/",
                "--ca-file",
                ca,
                "--duration",
                "0.2s",
            ],
            Duration::from_secs(30),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn compare_plain_and_tls_targets() {
    let pki = Pki::new();
    let plain = Mock::start(&[]);
    let tls = pki.mock();
    let ca = pki.arg("ca.pem");
    let t1 = format!("plain=http://127.0.0.1:{}/v1/chat/completions", plain.port);
    let t2 = format!("tls=https://localhost:{}/v1/chat/completions", tls.port);
    let v = json(&bench(
        &[
            "compare",
            "--target",
            &t1,
            "--target",
            &t2,
            "--ca-file",
            &ca,
            "--rounds",
            "1",
            "--connections",
            "2",
            "--shards",
            "1",
            "--duration",
            "0.5s",
            "--warmup",
            "0.1s",
            "--json",
        ],
        Duration::from_secs(60),
    ));
    let targets = v["levels"][0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{v}");
    for t in targets {
        assert!(t["requests"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(t["errors"]["tls_handshake"], 0, "{v}");
    }
    assert!(targets[1]["url"].as_str().unwrap().starts_with("https://"));
}
