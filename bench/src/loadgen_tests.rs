//! Allocations per request on a connection's steady state, plain and TLS,
//! against an in-process mock shard (on its own thread, so only the
//! client's allocations are counted). `cargo test -p shardgate-bench --bin
//! shardgate-bench allocates -- --nocapture` prints the figures.

use super::*;
use crate::alloc_count::allocations;
use crate::args::parse_url;
use crate::tls::TlsOptions;
use glommio::LocalExecutorBuilder;

const WARM: usize = 20;
const MEASURED: usize = 200;

/// A self-signed certificate for `localhost`, written as PEM into `dir`.
fn server_tls(dir: &std::path::Path) -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = p.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    crate::tls::server_config(&cert_path, &key_path).unwrap()
}

fn ctx(url: &str, stream: bool, model: &str) -> ConnCtx {
    let url = parse_url(url).unwrap();
    let cfg = LoadConfig {
        url: url.clone(),
        connections: 1,
        duration: Duration::from_secs(60),
        warmup: Duration::ZERO,
        shards: ShardPlan {
            count: 1,
            pin: false,
        },
        model: model.into(),
        stream,
        max_tokens: 16,
        api_key: None,
        timeout: Duration::from_secs(10),
        shape: Shape::default(),
        ramp_up: Duration::ZERO,
        progress: false,
        tls: TlsOptions {
            ca_file: None,
            insecure: true,
        },
    };
    let work = workload::build(&cfg).unwrap();
    let now = Instant::now();
    ConnCtx {
        addr: url.addr,
        tls: url
            .tls
            .then(|| ClientTls::new(&cfg.tls, &url.server_name).unwrap()),
        requests: Arc::new(work.requests),
        api: work.api,
        stream,
        timeout: cfg.timeout,
        window_start: now,
        window_end: now + cfg.duration,
        open_loop: None,
        arrivals: None,
        first_conn: 0,
        ramp: None,
        progress: Arc::new(ShardProgress::default()),
    }
}

/// Opens one connection, sends `WARM` requests, then counts the client
/// thread's allocations over `MEASURED` more; returns them per request.
fn allocations_per_request(ctx: ConnCtx) -> f64 {
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let stream = open(&ctx).await.unwrap();
            let mut buf = vec![0u8; READ_BUF];
            let mut conn = Conn {
                stream,
                buf: &mut buf,
                start: 0,
                end: 0,
            };
            let mut scratch = Scratch {
                meter: StreamMeter::new(ctx.api),
                gaps: Vec::with_capacity(256),
            };
            let request = ctx.requests[0].clone();
            let mut before = 0;
            for i in 0..WARM + MEASURED {
                if i == WARM {
                    before = allocations();
                }
                scratch.meter.reset();
                scratch.gaps.clear();
                let o = one_request(&mut conn, &ctx, &request, &mut scratch)
                    .await
                    .unwrap();
                assert_eq!(o.status, 200);
                assert!(!o.close);
                if ctx.stream {
                    assert!(scratch.meter.done);
                }
            }
            (allocations() - before) as f64 / MEASURED as f64
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn tls_allocates_per_request_only_what_rustls_needs() {
    let dir = tempfile::tempdir().unwrap();
    let plain = crate::mock::spawn_for_tests(None).unwrap();
    let tls = crate::mock::spawn_for_tests(Some(server_tls(dir.path()))).unwrap();
    let url = |scheme: &str, port: u16| format!("{scheme}://localhost:{port}/v1/chat/completions");
    let mut figures = Vec::new();
    // The stream is paced (a token every 0.5ms) so that every write of the
    // mock is read on its own on both paths, whatever the timing.
    for (stream, model) in [(false, "mock-tokens-16"), (true, "mock-tokens-16-tps-2000")] {
        let p = allocations_per_request(ctx(&url("http", plain.port()), stream, model));
        let t = allocations_per_request(ctx(&url("https", tls.port()), stream, model));
        figures.push((stream, p, t));
    }
    eprintln!("allocations per request (stream, plain, tls): {figures:?}");
    for (stream, plain, tls) in figures {
        // The TLS path allocates what the plain one does (glommio: about
        // ten for each read that has to wait, with a read timeout) plus
        // rustls's buffered API: one buffer per TLS record each way. The
        // request is one record; the response one, or for the stream one
        // per write of the mock (head, role event and first token; 15 more
        // tokens; the closing events). glommio's share varies with timing
        // (how many reads have to wait) by up to a quarter from run to run,
        // so the bound allows that; a per-read allocation of ours (18 more
        // on the stream) or a handshake per request (hundreds) does not fit.
        let records = if stream { 1.0 + 17.0 } else { 2.0 };
        assert!(
            tls <= plain * 1.25 + records + 3.0,
            "stream={stream}: tls {tls} plain {plain}"
        );
    }
}
