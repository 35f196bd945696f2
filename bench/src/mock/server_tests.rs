use super::*;

fn shared(key: Option<&str>) -> Shared {
    Shared {
        keys: Keys::new(key),
        tls: None,
        defaults: Behaviour::default(),
        injection: Injection::default(),
        rng: RefCell::new(Rng::new(0)),
        shard: 0,
        next_id: Cell::new(0),
        seen: SeenNames::default(),
    }
}

/// Splits `out` into (status, body) of one Content-Length response.
fn split_response(out: &[u8]) -> (u16, serde_json::Value) {
    let h = crate::http::parse_response_head(out).unwrap().unwrap();
    let body = &out[h.len..];
    assert_eq!(h.framing, crate::http::Framing::Length(body.len() as u64));
    (h.status, serde_json::from_slice(body).unwrap())
}

struct Answer {
    bufs: Buffers,
    stream: Option<Generation<'static>>,
    delayed: bool,
}

fn respond_to(path: &str, body: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let mut raw = format!("POST {path} HTTP/1.1\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    let sh = shared(key);
    let raw: &'static [u8] = Box::leak(raw.into_bytes().into_boxed_slice());
    let h = parse_request_head(raw, &sh.keys).unwrap().unwrap();
    let mut b = Buffers::new();
    let plan = respond(&h, raw, &sh, &mut b);
    let (stream, delayed) = match plan {
        Plan::Stream(s) => (Some(s), false),
        Plan::Delayed(_) => (None, true),
        _ => (None, false),
    };
    Answer {
        bufs: b,
        stream,
        delayed,
    }
}

#[test]
fn chat_non_stream_echoes_model() {
    let a = respond_to(
        "/v1/chat/completions",
        r#"{"model":"mock-tokens-3","messages":[{"role":"user","content":"hi"}]}"#,
        None,
        &[],
    );
    assert!(a.stream.is_none());
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 200);
    assert_eq!(v["model"], "mock-tokens-3");
    assert_eq!(v["choices"][0]["message"]["content"], " lorem ipsum dolor");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn max_tokens_truncates_with_length() {
    let a = respond_to(
        "/v1/completions",
        r#"{"model":"m","prompt":"x","max_tokens":2}"#,
        None,
        &[],
    );
    let (_, v) = split_response(&a.bufs.out);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], " lorem ipsum");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn failures_auth_and_errors() {
    let a = respond_to("/v1/chat/completions", r#"{"model":"mock-429"}"#, None, &[]);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 429);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let auth = [("authorization", "Bearer client")];
    let a = respond_to("/v1/chat/completions", r#"{"model":"m"}"#, Some("k"), &auth);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 401);
    assert_eq!(
        v,
        serde_json::json!({"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})
    );
    let auth = [("authorization", "Bearer k")];
    let a = respond_to("/v1/chat/completions", r#"{"model":"m"}"#, Some("k"), &auth);
    assert_eq!(split_response(&a.bufs.out).0, 200);

    let a = respond_to("/v1/chat/completions", "{not json", None, &[]);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 400);
    assert!(v["error"]["message"].is_string());

    let a = respond_to("/nope", "{}", None, &[]);
    assert_eq!(split_response(&a.bufs.out).0, 404);
}

#[test]
fn errors_in_each_dialect() {
    let ver = [("anthropic-version", "2023-06-01")];
    let a = respond_to("/v1/messages", r#"{"model":"mock-429"}"#, None, &ver);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 429);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let a = respond_to("/v1/messages", r#"{"model":"m"}"#, None, &[]);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let a = respond_to("/v1/messages", r#"{"model":"m"}"#, Some("k"), &ver);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 401);
    assert_eq!(v["error"]["type"], "authentication_error");

    let a = respond_to("/v1beta/models/mock-503:generateContent", "{}", None, &[]);
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 503);
    assert_eq!(v["error"]["code"], 503);
    assert_eq!(v["error"]["status"], "UNAVAILABLE");

    let a = respond_to("/model/mock-429/converse", r#"{"messages":[]}"#, None, &[]);
    let text = String::from_utf8_lossy(&a.bufs.out).into_owned();
    assert!(
        text.contains("x-amzn-errortype: ThrottlingException\r\n"),
        "{text}"
    );
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 429);
    assert!(v["message"].is_string());
}

#[test]
fn stream_and_delay_plans() {
    let a = respond_to(
        "/v1/chat/completions",
        r#"{"model":"mock-tokens-5-tps-10","stream":true,"stream_options":{"include_usage":true},"max_tokens":4}"#,
        None,
        &[],
    );
    assert!(a.bufs.out.is_empty());
    let s = a.stream.unwrap();
    assert_eq!(s.dialect, Dialect::Chat);
    assert_eq!(s.tokens, 4);
    assert_eq!(s.stop, answer::Stop::Length);
    assert!(s.include_usage);
    assert_eq!(s.behaviour.tokens_per_second, Some(10));

    let a = respond_to(
        "/v1/chat/completions",
        r#"{"model":"mock-ttft-5ms"}"#,
        None,
        &[],
    );
    assert!(a.stream.is_none());
    assert!(a.delayed);

    let a = respond_to(
        "/model/mock-tokens-2%2Dtps-5/converse-stream",
        r#"{"messages":[]}"#,
        None,
        &[],
    );
    let s = a.stream.unwrap();
    assert_eq!(s.model, "mock-tokens-2-tps-5");
    assert_eq!(s.tokens, 2);
}

#[test]
fn tool_rule_per_dialect() {
    let tools_openai = r#""tools":[{"type":"function","function":{"name":"lookup","parameters":{}}},{"type":"function","function":{"name":"other"}}]"#;
    let cases = [
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"m",{tools_openai},"messages":[{{"role":"user","content":"x"}}]}}"#),
            Some("lookup"),
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"m",{tools_openai},"tool_choice":"none","messages":[]}}"#),
            None,
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"m",{tools_openai},"messages":[{{"role":"tool","tool_call_id":"c","content":"r"}}]}}"#),
            None,
        ),
        (
            "/v1/messages",
            r#"{"model":"m","max_tokens":5,"tools":[{"name":"find","input_schema":{}}],"messages":[{"role":"user","content":"x"}]}"#.to_owned(),
            Some("find"),
        ),
        (
            "/v1/messages",
            r#"{"model":"m","tools":[{"name":"find","input_schema":{}}],"tool_choice":{"type":"none"},"messages":[]}"#.to_owned(),
            None,
        ),
        (
            "/v1/messages",
            r#"{"model":"m","tools":[{"name":"find","input_schema":{}}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"r"}]}]}"#.to_owned(),
            None,
        ),
        (
            "/v1beta/models/m:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}],"tools":[{"functionDeclarations":[{"name":"g1"}]}]}"#.to_owned(),
            Some("g1"),
        ),
        (
            "/v1beta/models/m:generateContent",
            r#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"g1"}]}],"toolConfig":{"functionCallingConfig":{"mode":"NONE"}}}"#.to_owned(),
            None,
        ),
        (
            "/v1beta/models/m:generateContent",
            r#"{"contents":[{"role":"user","parts":[{"functionResponse":{"name":"g1","response":{}}}]}],"tools":[{"functionDeclarations":[{"name":"g1"}]}]}"#.to_owned(),
            None,
        ),
        (
            "/model/m/converse-stream",
            r#"{"messages":[{"role":"user","content":[{"text":"x"}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"b1","inputSchema":{"json":{}}}}]}}"#.to_owned(),
            Some("b1"),
        ),
        (
            "/model/m/converse-stream",
            r#"{"messages":[{"role":"user","content":[{"toolResult":{"toolUseId":"t","content":[]}}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"b1","inputSchema":{"json":{}}}}]}}"#.to_owned(),
            None,
        ),
    ];
    for (path, body, want) in cases {
        let body = body.replace("\"model\":\"m\"", "\"model\":\"m\",\"stream\":true");
        let a = respond_to(path, &body, None, &[("anthropic-version", "1")]);
        let g = match a.stream {
            Some(g) => g,
            None => {
                // Gemini's generateContent is not a stream: check the body.
                let (_, v) = split_response(&a.bufs.out);
                let call = &v["candidates"][0]["content"]["parts"][0]["functionCall"]["name"];
                assert_eq!(call.as_str(), want, "{path} {body} {v}");
                continue;
            }
        };
        assert_eq!(g.tool.as_deref(), want, "{path} {body}");
        assert_eq!(g.stop == answer::Stop::Tool, want.is_some());
    }
}

#[test]
fn embeddings_inputs() {
    for (body, n) in [
        (r#"{"model":"e","input":"hello"}"#, 1),
        (r#"{"model":"e","input":["a","b","c"],"dimensions":4}"#, 3),
    ] {
        let a = respond_to("/v1/embeddings", body, None, &[]);
        let (status, v) = split_response(&a.bufs.out);
        assert_eq!(status, 200);
        assert_eq!(v["data"].as_array().unwrap().len(), n);
        assert_eq!(v["model"], "e");
    }
    let a = respond_to(
        "/v1/embeddings",
        r#"{"model":"e","input":[1,2]}"#,
        None,
        &[],
    );
    assert_eq!(split_response(&a.bufs.out).0, 400);

    // Gemini gets the same vectors for the same text.
    let a = respond_to(
        "/v1/embeddings",
        r#"{"model":"e","input":"hello"}"#,
        None,
        &[],
    );
    let (_, openai) = split_response(&a.bufs.out);
    let a = respond_to(
        "/v1beta/models/e:batchEmbedContents",
        r#"{"requests":[{"model":"models/e","content":{"parts":[{"text":"hel"},{"text":"lo"}]}},{"content":{"parts":[{"text":"x"}]},"outputDimensionality":3}]}"#,
        None,
        &[],
    );
    let (status, v) = split_response(&a.bufs.out);
    assert_eq!(status, 200);
    assert_eq!(v["embeddings"][0]["values"], openai["data"][0]["embedding"]);
    assert_eq!(v["embeddings"][1]["values"].as_array().unwrap().len(), 3);
    let a = respond_to(
        "/v1beta/models/e:embedContent",
        r#"{"content":{"parts":[{"text":"hello"}]}}"#,
        None,
        &[],
    );
    let (_, v) = split_response(&a.bufs.out);
    assert_eq!(v["embedding"]["values"], openai["data"][0]["embedding"]);
}

#[test]
fn listen_addrs_ports() {
    let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let ports: Vec<u16> = listen_addrs(a, 3).iter().map(|a| a.port()).collect();
    assert_eq!(ports, vec![9000, 9001, 9002]);
    let z: SocketAddr = "127.0.0.1:0".parse().unwrap();
    assert_eq!(listen_addrs(z, 2), vec![z, z]);
}

#[test]
fn context_length_errors_in_each_dialect_are_read_as_such() {
    let long = format!(
        r#"{{"model":"mock-ctx-10","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(200)
    );
    let ver = [("anthropic-version", "2023-06-01")];
    let pad = "x".repeat(200);
    let gemini = format!(r#"{{"contents":[{{"role":"user","parts":[{{"text":"{pad}"}}]}}]}}"#);
    let bedrock = format!(r#"{{"messages":[{{"role":"user","content":[{{"text":"{pad}"}}]}}]}}"#);
    for (path, body, headers) in [
        ("/v1/chat/completions", long.clone(), &[][..]),
        (
            "/v1/messages",
            long.replace("\"messages\"", "\"max_tokens\":5,\"messages\""),
            &ver[..],
        ),
        (
            "/v1beta/models/mock-ctx-10:generateContent",
            gemini.clone(),
            &[][..],
        ),
        ("/model/mock-ctx-10/converse", bedrock.clone(), &[][..]),
    ] {
        let a = respond_to(path, &body, None, headers);
        let (status, v) = split_response(&a.bufs.out);
        assert_eq!(status, 400, "{path}");
        assert!(
            shardgate_providers::is_context_length_error(400, v.to_string().as_bytes()),
            "{path}: {v}"
        );
    }
    // A short prompt fits.
    let a = respond_to(
        "/v1/chat/completions",
        r#"{"model":"mock-ctx-1000"}"#,
        None,
        &[],
    );
    assert_eq!(split_response(&a.bufs.out).0, 200);
}

#[test]
fn overloads_say_how_long_to_wait_in_their_dialect() {
    let a = respond_to(
        "/v1/chat/completions",
        r#"{"model":"mock-429-wait-300ms"}"#,
        None,
        &[],
    );
    let text = String::from_utf8_lossy(&a.bufs.out).into_owned();
    assert!(text.contains("retry-after-ms: 300\r\n"), "{text}");
    assert!(
        text.contains("x-ratelimit-reset-requests: 300ms\r\n"),
        "{text}"
    );
    let ver = [("anthropic-version", "2023-06-01")];
    let a = respond_to(
        "/v1/messages",
        r#"{"model":"mock-429-wait-2s","max_tokens":5,"messages":[]}"#,
        None,
        &ver,
    );
    let text = String::from_utf8_lossy(&a.bufs.out).into_owned();
    assert!(
        text.contains("anthropic-ratelimit-requests-reset: 20"),
        "{text}"
    );
    let a = respond_to("/v1/chat/completions", r#"{"model":"mock-503"}"#, None, &[]);
    assert!(String::from_utf8_lossy(&a.bufs.out).contains("retry-after: 1\r\n"));
}

#[test]
fn first_n_failures_then_answers() {
    let sh = shared(None);
    let statuses: Vec<Option<u16>> = (0..4)
        .map(|_| sh.behaviour("mock-503-first-2-abc", false).fail_status)
        .collect();
    assert_eq!(statuses, [Some(503), Some(503), None, None]);
    // Another name counts apart.
    assert_eq!(
        sh.behaviour("mock-503-first-2-xyz", false).fail_status,
        Some(503)
    );
}
