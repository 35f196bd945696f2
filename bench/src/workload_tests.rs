use super::*;
use crate::args::parse_url;
use crate::shards::ShardPlan;
use std::time::Duration;

fn cfg(url: &str, stream: bool, key: Option<&str>) -> LoadConfig {
    LoadConfig {
        url: parse_url(url).unwrap(),
        connections: 4,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        shards: ShardPlan {
            count: 1,
            pin: false,
        },
        model: "demo".into(),
        stream,
        max_tokens: 16,
        api_key: key.map(str::to_string),
        timeout: Duration::from_secs(5),
        shape: Shape::default(),
        ramp_up: Duration::ZERO,
        progress: false,
        tls: Default::default(),
    }
}

fn split(req: &[u8]) -> (String, serde_json::Value) {
    let text = std::str::from_utf8(req).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Request::new(&mut headers);
    assert!(r.parse(req).unwrap().is_complete());
    let cl = r
        .headers
        .iter()
        .find(|h| h.name == "content-length")
        .map(|h| {
            std::str::from_utf8(h.value)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        });
    assert_eq!(cl.unwrap_or(0), body.len());
    let v = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap()
    };
    (head.to_string(), v)
}

fn one(cfg: &LoadConfig) -> (String, serde_json::Value) {
    let w = build(cfg).unwrap();
    assert_eq!(w.requests.len(), 1);
    split(&w.requests[0])
}

#[test]
fn chat_request() {
    let (head, v) = one(&cfg(
        "http://127.0.0.1:1/v1/chat/completions",
        false,
        Some("k"),
    ));
    assert!(head.starts_with("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:1\r\n"));
    assert!(head.contains("authorization: Bearer k"));
    assert_eq!(v["model"], "demo");
    assert_eq!(v["max_tokens"], 16);
    assert!(v["messages"].is_array());
    assert!(v.get("stream").is_none());

    let (head, v) = one(&cfg("http://127.0.0.1:1/v1/chat/completions", true, None));
    assert!(!head.contains("authorization"));
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"]["include_usage"], true);
}

#[test]
fn other_requests() {
    let (_, v) = one(&cfg("http://127.0.0.1:1/v1/completions", false, None));
    assert!(v["prompt"].is_string());
    let (_, v) = one(&cfg("http://127.0.0.1:1/v1/embeddings", false, None));
    assert!(v["input"].is_string());
    let (head, v) = one(&cfg("http://127.0.0.1:1/healthz", false, None));
    assert!(head.starts_with("GET /healthz HTTP/1.1"));
    assert!(v.is_null());
}

#[test]
fn anthropic_request() {
    let c = cfg("http://127.0.0.1:1/v1/messages", true, Some("k"));
    let w = build(&c).unwrap();
    assert_eq!(w.api, Api::Anthropic);
    let (head, v) = split(&w.requests[0]);
    assert!(head.contains("x-api-key: k\r\n"));
    assert!(head.contains("anthropic-version: 2023-06-01"));
    assert!(!head.contains("authorization"));
    assert_eq!(v["stream"], true);
    assert_eq!(v["max_tokens"], 16);
    assert_eq!(v["messages"][0]["role"], "user");
    assert!(v.get("stream_options").is_none());
    // Forced on another path.
    let mut c = cfg("http://127.0.0.1:1/anthropic/v1/chat", false, None);
    c.shape.api = Some(Api::Anthropic);
    assert_eq!(build(&c).unwrap().api, Api::Anthropic);
}

#[test]
fn synthetic_prompts_have_exact_token_counts() {
    let bpe = tiktoken_rs::cl100k_base().unwrap();
    let mut c = cfg("http://127.0.0.1:1/v1/chat/completions", false, None);
    c.shape.prompts = PromptSource::Synthetic(TokenDist::Fixed(512));
    let w = build(&c).unwrap();
    assert_eq!(w.prompt_tokens, vec![512]);
    let (_, v) = split(&w.requests[0]);
    let text = v["messages"][0]["content"].as_str().unwrap();
    assert_eq!(bpe.encode_ordinary(text).len(), 512);

    c.shape.prompts = PromptSource::Synthetic(TokenDist::Uniform { lo: 10, hi: 40 });
    let w = build(&c).unwrap();
    assert_eq!(w.requests.len(), SYNTHETIC_POOL);
    assert!(w.prompt_tokens.iter().all(|&n| (10..=40).contains(&n)));
    for (req, &n) in w.requests.iter().zip(&w.prompt_tokens).take(8) {
        let (_, v) = split(req);
        let text = v["messages"][0]["content"].as_str().unwrap();
        assert_eq!(bpe.encode_ordinary(text).len(), n);
    }
    // Same seed, same prompts.
    assert_eq!(build(&c).unwrap().requests, w.requests);
}

#[test]
fn dataset_lines() {
    let dir = std::env::temp_dir().join(format!("sg-bench-ds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("d.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\":\"one\",\"max_tokens\":3}\n\n{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"two\"}]}\n",
    )
    .unwrap();
    let mut c = cfg("http://127.0.0.1:1/v1/messages", false, None);
    c.shape.prompts = PromptSource::Dataset(path.clone());
    let w = build(&c).unwrap();
    assert_eq!(w.requests.len(), 2);
    let (_, v) = split(&w.requests[0]);
    assert_eq!(v["max_tokens"], 3);
    assert_eq!(v["messages"][0]["content"], "one");
    let (_, v) = split(&w.requests[1]);
    assert_eq!(v["system"], "be brief");
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);

    std::fs::write(&path, "{\"nothing\":1}\n").unwrap();
    assert!(matches!(build(&c), Err(BenchError::Usage(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_distributions() {
    assert_eq!(parse_token_dist("512"), Ok(TokenDist::Fixed(512)));
    assert_eq!(
        parse_token_dist("normal:512,64"),
        Ok(TokenDist::Normal {
            mean: 512.0,
            sd: 64.0
        })
    );
    assert_eq!(
        parse_token_dist("uniform:100,1000"),
        Ok(TokenDist::Uniform { lo: 100, hi: 1000 })
    );
    for bad in ["0", "x", "normal:5", "uniform:9,1", "normal:0,1"] {
        assert!(parse_token_dist(bad).is_err(), "{bad}");
    }
    let mut rng = Rng::new(1);
    let d = TokenDist::Normal {
        mean: 100.0,
        sd: 10.0,
    };
    let mean = (0..5000).map(|_| d.sample(&mut rng)).sum::<usize>() as f64 / 5000.0;
    assert!((98.0..102.0).contains(&mean), "{mean}");
}
