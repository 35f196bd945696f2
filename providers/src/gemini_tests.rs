use serde_json::json;

use super::*;

fn ctx() -> PrepareCtx<'static> {
    PrepareCtx {
        model: "gemini-2.0-flash",
        api_key: Some("AIzaSyTEST0123456789"),
        now_unix: 0,
    }
}

#[test]
fn tool_result_needs_a_known_call() {
    let req: ChatRequest = serde_json::from_value(json!({"model": "x", "messages": [
        {"role": "tool", "tool_call_id": "nope", "content": "1"}
    ]}))
    .unwrap();
    assert!(matches!(from_openai(&req), Err(TranslateError::Invalid(_))));
}

#[test]
fn schema_is_cleaned_and_named_choice_restricts() {
    let req: ChatRequest = serde_json::from_value(json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"$schema": "x", "type": "object", "additionalProperties": false, "properties": {"a": {"type": "object", "additionalProperties": false}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}}))
    .unwrap();
    let v = serde_json::to_value(from_openai(&req).unwrap()).unwrap();
    assert_eq!(
        v["tools"][0]["functionDeclarations"][0]["parameters"],
        json!({"type": "object", "properties": {"a": {"type": "object"}}})
    );
    assert_eq!(
        v["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}})
    );
}

#[test]
fn embeddings_single_and_batch() {
    let one: EmbeddingsRequest =
        serde_json::from_value(json!({"model": "e", "input": "hello", "dimensions": 8})).unwrap();
    let up = embeddings_request(&one, &ctx()).unwrap();
    assert_eq!(up.path, "/models/gemini-2.0-flash:embedContent");
    let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(
        body,
        json!({"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 8})
    );

    let many: EmbeddingsRequest =
        serde_json::from_value(json!({"model": "e", "input": ["a", "b"]})).unwrap();
    let up = embeddings_request(&many, &ctx()).unwrap();
    assert_eq!(up.path, "/models/gemini-2.0-flash:batchEmbedContents");
    let body: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(body["requests"][1]["model"], "models/gemini-2.0-flash");

    let out = embeddings_response(
        br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3]}]}"#,
        "e",
        false,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["data"][1],
        json!({"object": "embedding", "index": 1, "embedding": [0.3]})
    );
    let out = embeddings_response(br#"{"embedding":{"values":[1.0]}}"#, "e", false).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([1.0]));
    // base64: little-endian f32, as OpenAI sends it (1.0f32 = 00 00 80 3f).
    let out = embeddings_response(br#"{"embedding":{"values":[1.0]}}"#, "e", true).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["data"][0]["embedding"], json!("AACAPw=="));
}

#[test]
fn error_array_form_and_no_key_leak() {
    let p = GeminiProvider::default();
    let body = br#"[{"error":{"code":400,"message":"API key not valid. key=AIzaSyTEST0123456789","status":"INVALID_ARGUMENT"}}]"#;
    let out = String::from_utf8(p.error_to_openai(400, body, &Default::default())).unwrap();
    assert!(!out.contains("AIzaSyTEST0123456789"), "{out}");
    assert!(out.contains("INVALID_ARGUMENT"));
}

#[test]
fn usage_sums_saturate() {
    let u = usage(&g::UsageMetadata {
        candidates_token_count: Some(u64::MAX),
        thoughts_token_count: Some(1),
        ..Default::default()
    });
    assert_eq!(u.output_tokens, Some(u64::MAX));
}
