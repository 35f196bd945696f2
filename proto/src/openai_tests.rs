use super::*;
use crate::json::tape::JsonParser;
use serde_json::{json, Value as Json};

fn facts(body: &str) -> Result<RequestFacts, FactsError> {
    extract_facts(body.as_bytes(), &mut JsonParser::default()).map(|(f, _)| f)
}

#[test]
fn full_request() {
    let body = r#"{
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi \"there\""}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 100,
        "max_completion_tokens": 50,
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "web_search"},
            {"type": "function", "function": {"name": "lookup\u00e9"}}
        ]
    }"#;
    assert_eq!(
        facts(body).unwrap(),
        RequestFacts {
            model: "gpt-4o-mini".into(),
            stream: true,
            include_usage: true,
            max_tokens: Some(50),
            tool_names: vec!["get_weather".into(), "lookupé".into()],
            base64_embeddings: false,
        }
    );
    // Anthropic tools name themselves; base64 embeddings are noticed.
    let f = facts(r#"{"model":"m","tools":[{"name":"get_weather","input_schema":{}}],"encoding_format":"base64"}"#).unwrap();
    assert_eq!(f.tool_names, vec!["get_weather".to_owned()]);
    assert!(f.base64_embeddings);
}

#[test]
fn defaults_and_nulls() {
    assert_eq!(
        facts(r#"{"model":"m"}"#).unwrap(),
        RequestFacts {
            model: "m".into(),
            ..RequestFacts::default()
        }
    );
    let f = facts(
        r#"{"model":"m","stream":null,"stream_options":null,"max_tokens":null,"max_completion_tokens":null,"tools":null}"#,
    )
    .unwrap();
    assert_eq!(f.max_tokens, None);
    assert!(!f.stream && !f.include_usage && f.tool_names.is_empty());
    let f =
        facts(r#"{"model":"m","max_tokens":7,"max_completion_tokens":null,"stream_options":{}}"#)
            .unwrap();
    assert_eq!(f.max_tokens, Some(7));
    let f = facts(r#"{"model":"m","max_tokens":18446744073709551615}"#).unwrap();
    assert_eq!(f.max_tokens, Some(u64::MAX));
}

#[test]
fn escaped_model_is_unescaped() {
    assert_eq!(
        facts(r#"{"model":"gpt\u002d4o","mod\u0065l2":1}"#)
            .unwrap()
            .model,
        "gpt-4o"
    );
}

#[test]
fn errors() {
    assert!(matches!(facts(""), Err(FactsError::InvalidJson(_))));
    assert!(matches!(
        facts("{\"model\":"),
        Err(FactsError::InvalidJson(_))
    ));
    assert!(matches!(
        facts("{\"model\":\"m\",}"),
        Err(FactsError::InvalidJson(_))
    ));
    assert!(matches!(
        facts("{\"model\":\"m\"} x"),
        Err(FactsError::InvalidJson(_))
    ));
    // The structural scan leaves encoding to a separate check.
    assert!(matches!(
        extract_facts(
            b"{\"model\":\"m\",\"x\":\"\xff\"}",
            &mut JsonParser::default()
        ),
        Err(FactsError::InvalidJson(_))
    ));
    assert!(matches!(facts("[1,"), Err(FactsError::InvalidJson(_))));
    assert_eq!(facts("[]"), Err(FactsError::NotAnObject));
    assert_eq!(facts("\"model\""), Err(FactsError::NotAnObject));
    assert_eq!(facts("{}"), Err(FactsError::MissingModel));
    assert_eq!(facts(r#"{"model":null}"#), Err(FactsError::MissingModel));
    for (body, field) in [
        (r#"{"model":1}"#, "model"),
        (r#"{"model":["m"]}"#, "model"),
        (r#"{"model":"m","stream":"true"}"#, "stream"),
        (r#"{"model":"m","stream":1}"#, "stream"),
        (r#"{"model":"m","stream_options":true}"#, "stream_options"),
        (
            r#"{"model":"m","stream_options":{"include_usage":"yes"}}"#,
            "stream_options.include_usage",
        ),
        (r#"{"model":"m","max_tokens":-1}"#, "max_tokens"),
        (r#"{"model":"m","max_tokens":1.5}"#, "max_tokens"),
        (r#"{"model":"m","max_tokens":1e3}"#, "max_tokens"),
        (
            r#"{"model":"m","max_tokens":18446744073709551616}"#,
            "max_tokens",
        ),
        (r#"{"model":"m","max_tokens":"100"}"#, "max_tokens"),
        (
            r#"{"model":"m","max_completion_tokens":-5}"#,
            "max_completion_tokens",
        ),
        (
            r#"{"model":"m","max_completion_tokens":5,"max_tokens":"x"}"#,
            "max_tokens",
        ),
        (r#"{"model":"m","tools":{}}"#, "tools"),
        (r#"{"model":"m","tools":["f"]}"#, "tools[]"),
        (
            r#"{"model":"m","tools":[{"function":"f"}]}"#,
            "tools[].function",
        ),
        (
            r#"{"model":"m","tools":[{"function":{}}]}"#,
            "tools[].function.name",
        ),
        (
            r#"{"model":"m","tools":[{"function":{"name":3}}]}"#,
            "tools[].function.name",
        ),
    ] {
        assert_eq!(facts(body), Err(FactsError::WrongType(field)), "{body}");
    }
}

#[test]
fn body_is_untouched_and_parser_is_reused() {
    let body = br#"{"model":"a\nb","x":"\u0041"}"#.to_vec();
    let copy = body.clone();
    let mut parser = JsonParser::default();
    for _ in 0..3 {
        assert_eq!(extract_facts(&body, &mut parser).unwrap().0.model, "a\nb");
        assert_eq!(
            extract_usage(br#"{"usage":{"total_tokens":3}}"#)
                .unwrap()
                .total_tokens,
            Some(3)
        );
    }
    assert_eq!(body, copy);
}

/// Upstreams mostly read the last duplicate, so a second `model` or `tools`
/// could route or authorize one request and run another.
#[test]
fn deciding_keys_may_not_repeat() {
    for body in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a","tools":[],"tools":[{"type":"function","function":{"name":"rm"}}]}"#,
        r#"{"model":"a","stream":false,"stream":true}"#,
        r#"{"model":"a","mod\u0065l":"b"}"#,
    ] {
        assert!(
            matches!(facts(body), Err(FactsError::DuplicateKey(_))),
            "{body}: {:?}",
            facts(body)
        );
    }
    // Keys the gateway doesn't read may repeat: that's the upstream's call.
    assert_eq!(
        facts(r#"{"model":"a","user":"x","user":"y"}"#)
            .unwrap()
            .model,
        "a"
    );
}

#[test]
fn error_body_shape() {
    let body = error_body(
        "bad \"model\"\n",
        "invalid_request_error",
        Some("model"),
        None,
    );
    let v: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"error":{"message":"bad \"model\"\n","type":"invalid_request_error","param":"model","code":null}})
    );
    let body = error_body(
        "slow down",
        "rate_limit_error",
        None,
        Some("rate_limit_exceeded"),
    );
    let v: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["param"], Json::Null);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[test]
fn usage_from_a_response() {
    let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30,
        "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":8}}}"#;
    assert_eq!(
        extract_usage(body),
        Some(Usage {
            prompt_tokens: Some(10),
            completion_tokens: Some(20),
            total_tokens: Some(30),
            cached_tokens: Some(4),
            reasoning_tokens: Some(8),
            cache_write_tokens: None,
        })
    );
}

#[test]
fn usage_from_a_responses_object_under_its_own_names() {
    let body = br#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"usage"}]}],
        "usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":20,
        "output_tokens_details":{"reasoning_tokens":8},"total_tokens":30},"user":null}"#;
    let full = Usage {
        prompt_tokens: Some(10),
        completion_tokens: Some(20),
        total_tokens: Some(30),
        cached_tokens: Some(4),
        reasoning_tokens: Some(8),
        cache_write_tokens: None,
    };
    assert_eq!(extract_responses_usage(body), Some(full));
    // Chat's names are not the Responses API's, and the reverse.
    assert_eq!(
        extract_usage(body),
        Some(Usage {
            total_tokens: Some(30),
            ..Usage::default()
        })
    );
    assert_eq!(
        extract_responses_usage(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#),
        None
    );
    assert_eq!(extract_responses_usage(br#"{"usage":{}}"#), None);
    assert_eq!(extract_responses_usage(br#"{"usage":null}"#), None);
    assert_eq!(
        extract_responses_usage(br#"{"usage":{"input_tokens":3,"output_tokens":"x"}}"#),
        Some(Usage {
            prompt_tokens: Some(3),
            ..Usage::default()
        })
    );
}

#[test]
fn usage_absent_is_none_not_zero() {
    assert_eq!(extract_usage(br#"{"choices":[{"delta":{}}]}"#), None);
    assert_eq!(extract_usage(br#"{"usage":null}"#), None);
    assert_eq!(extract_usage(br#"{"id":"x","usage":null}"#), None);
    assert_eq!(extract_usage(b"{\"id\":\"x\",\"usage\":null}\n"), None);
    // Not the top-level object's last member: read as before.
    assert_eq!(
        extract_usage(br#"{"usage":{"total_tokens":3},"a":{"b":1,"usage":null}}"#),
        Some(Usage {
            total_tokens: Some(3),
            ..Usage::default()
        })
    );
    assert_eq!(
        extract_usage(br#"{"usage":{"total_tokens":3},"usage":null}"#),
        None
    );
    assert_eq!(extract_usage(br#"{"usage":5}"#), None);
    assert_eq!(extract_usage(br#"{"usage":"#), None);
    assert_eq!(extract_usage(br#"["usage"]"#), None);
    assert_eq!(extract_usage(b"[DONE]"), None);
    let partial = extract_usage(
        br#"{"usage":{"prompt_tokens":3,"completion_tokens":-1,"total_tokens":1.5,"prompt_tokens_details":null}}"#,
    )
    .unwrap();
    assert_eq!(
        partial,
        Usage {
            prompt_tokens: Some(3),
            ..Usage::default()
        }
    );
    assert_eq!(extract_usage(br#"{"usage":{}}"#), Some(Usage::default()));
    // A count that is not a whole number reads as absent, the others still.
    for body in [
        r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
        r#"{"usage":{"prompt_tokens":1e3,"completion_tokens":2}}"#,
        r#"{"usage":{"prompt_tokens":-1,"completion_tokens":2}}"#,
        r#"{"usage":{"prompt_tokens":99999999999999999999,"completion_tokens":2}}"#,
    ] {
        assert_eq!(
            extract_usage(body.as_bytes()),
            Some(Usage {
                completion_tokens: Some(2),
                ..Usage::default()
            }),
            "{body}"
        );
    }
}

/// Usage is read from the end of the answer: what comes after it, strings
/// that quote it, nested objects that carry their own `usage` and repeated
/// keys must not fool the walk.
#[test]
fn usage_is_found_wherever_it_sits() {
    let full = Usage {
        prompt_tokens: Some(1),
        completion_tokens: Some(2),
        total_tokens: Some(3),
        ..Usage::default()
    };
    for body in [
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"choices":[{"message":{"content":"\"usage\": {\"total_tokens\":9}}"}}]}"#,
        r#"{"choices":[{"usage":{"total_tokens":9}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"system_fingerprint":"fp_\\"}"#,
        r#"{"usage":{"total_tokens":9},"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        "{ \"usage\" :\n {\"prompt_tokens\" : 1 ,\"completion_tokens\":2,\"total_tokens\":9,\"total_tokens\":3 }\n }\n",
        r#"{"x":"a\\","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"extra":{"total_tokens":9}},"y":"\\\"}"}"#,
        r#"{"usage":{"prompt_tokens":1,"completion_t\u006fkens":2,"total_tokens":3}}"#,
        // Mentioned in a nested object before the top-level one, last or not.
        r#"{"choices":[{"usage":{"total_tokens":9}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"a":{"usage":{"total_tokens":9}}}"#,
        // Mentioned after the last member's key: inside its value, or as a
        // string after it.
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"x":{"usage":{"total_tokens":9}}}}"#,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"note":"usage"}"#,
    ] {
        assert_eq!(extract_usage(body.as_bytes()), Some(full), "{body}");
    }
}
