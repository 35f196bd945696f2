//! TLS both ways with certificates made here: a TLS listener beside a plain
//! one, client-certificate verification (mTLS), certificate reload without a
//! restart, and the gateway as a TLS client of a TLS upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shardgate_tests::*;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf certificate and key (PEM) for `localhost`/127.0.0.1.
    fn leaf(&self, client: bool, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(name), self.cert.pem()).unwrap();
    }
}

fn write_leaf(dir: &Path, (cert, key): (String, String), stem: &str) {
    std::fs::write(dir.join(format!("{stem}.pem")), cert).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key).unwrap();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ca_pem: &str, client: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(cfg)
}

type TlsClient = Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsClient {
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Client::new(rustls::StreamOwned::new(conn, tcp))
}

/// Whether a TLS request for /healthz gets a 200 (false on any TLS failure).
fn healthz_over_tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    use std::io::{Read, Write};
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    if s.write_all(&get("/healthz")).is_err() || s.flush().is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

fn tls_config_yaml(dir: &Path, client_ca: bool) -> String {
    let d = dir.display();
    let ca = if client_ca {
        format!(", client_ca: {d}/client-ca.pem")
    } else {
        String::new()
    };
    format!(
        "listeners:\n  - {{ address: 127.0.0.1:0 }}\n  - {{ address: 127.0.0.1:0, tls: {{ cert: {d}/server.pem, key: {d}/server.key, reload_interval: 100ms{ca} }} }}\n\
         shards: 2\nauth: none\nproviders:\n  local: {{ kind: mock, output_tokens: 3 }}\nmodels:\n  local: {{ targets: [ {{ provider: local, model: mock-1 }} ] }}\n"
    )
}

#[test]
fn tls_listener_beside_plain_with_mtls() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let rogue_ca = Ca::new("rogue ca");
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), server_ca.leaf(false, "gateway"), "server");
    client_ca.write(dir.path(), "client-ca.pem");
    let yaml = tls_config_yaml(dir.path(), true);
    let gw = start_gateway_in(dir, &yaml, 2, &[]);
    let (plain, tls) = (gw.addrs[0], gw.addrs[1]);

    // The plain listener keeps working beside the TLS one.
    let mut c = connect(plain);
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);

    // A client with a certificate from the trusted CA is served, over
    // keep-alive, including a real completion.
    let good = client_config(&server_ca.cert.pem(), Some(client_ca.leaf(true, "team-a")));
    let mut c = tls_connect(tls, good);
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"local","messages":[]}"#,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "chat.completion");

    // No client certificate, or one from another CA: refused.
    assert!(!healthz_over_tls(
        tls,
        client_config(&server_ca.cert.pem(), None)
    ));
    assert!(!healthz_over_tls(
        tls,
        client_config(&server_ca.cert.pem(), Some(rogue_ca.leaf(true, "mallory")))
    ));
    // Plain HTTP spoken to the TLS port gets nothing served.
    let mut c = connect(tls);
    c.send(&get("/healthz"));
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut c.stream, &mut buf).unwrap_or(0);
    assert!(!buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[test]
fn certificates_reload_without_restart() {
    let old_ca = Ca::new("old ca");
    let new_ca = Ca::new("new ca");
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), old_ca.leaf(false, "gateway"), "server");
    let yaml = tls_config_yaml(dir.path(), false);
    let paths = dir.path().to_owned();
    let gw = start_gateway_in(dir, &yaml, 2, &[]);
    let tls = gw.addrs[1];
    let trusts_old = client_config(&old_ca.cert.pem(), None);
    let trusts_new = client_config(&new_ca.cert.pem(), None);
    assert!(healthz_over_tls(tls, trusts_old.clone()));
    assert!(!healthz_over_tls(tls, trusts_new.clone()));

    // A broken key file is refused and the old certificate stays in use:
    // wait until the reload was tried and refused, then look.
    std::fs::write(paths.join("server.key"), "not a key").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw
        .stderr()
        .contains("TLS reload failed, keeping the old certificates")
    {
        assert!(
            Instant::now() < deadline,
            "the broken key was never tried:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(healthz_over_tls(tls, trusts_old.clone()));

    write_leaf(&paths, new_ca.leaf(false, "gateway"), "server");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !healthz_over_tls(tls, trusts_new.clone()) {
        assert!(
            Instant::now() < deadline,
            "new certificate never served:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!healthz_over_tls(tls, trusts_old));
}

#[test]
fn gateway_reaches_a_tls_upstream() {
    // Gateway A serves TLS; gateway B uses A as an OpenAI-dialect upstream
    // over TLS, verifying it against a private CA.
    let ca = Ca::new("upstream ca");
    let dir_a = tempfile::tempdir().unwrap();
    write_leaf(dir_a.path(), ca.leaf(false, "upstream"), "server");
    let yaml_a = tls_config_yaml(dir_a.path(), false);
    let a = start_gateway_in(dir_a, &yaml_a, 2, &[]);
    let a_tls = a.addrs[1];

    let dir_b = tempfile::tempdir().unwrap();
    ca.write(dir_b.path(), "upstream-ca.pem");
    let yaml_b = format!(
        "listen: 127.0.0.1:0\nshards: 1\nauth: none\nproviders:\n  a: {{ kind: openai, base_url: \"https://localhost:{}/v1\", api_key: k, ca_file: {}/upstream-ca.pem }}\n\
         models:\n  via-a: {{ targets: [ {{ provider: a, model: local }} ] }}\n",
        a_tls.port(),
        dir_b.path().display()
    );
    let b = start_gateway_in(dir_b, &yaml_b, 1, &[]);
    let mut c = connect(b.addr());
    for _ in 0..3 {
        c.send(&post(
            "/v1/chat/completions",
            r#"{"model":"via-a","messages":[]}"#,
        ));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_response()))
            .unwrap_or_else(|_| panic!("request failed.\nA:\n{}\nB:\n{}", a.stderr(), b.stderr()));
        assert_eq!(r.status, 200, "{}\n{}", r.text(), b.stderr());
        assert_eq!(r.header("x-shardgate-target"), Some("a/local"));
        assert_eq!(r.json()["choices"][0]["message"]["role"], "assistant");
    }
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"via-a","messages":[],"stream":true}"#,
    ));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_response()))
        .unwrap_or_else(|_| panic!("stream failed.\nA:\n{}\nB:\n{}", a.stderr(), b.stderr()));
    assert_eq!(r.status, 200);
    assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
}
