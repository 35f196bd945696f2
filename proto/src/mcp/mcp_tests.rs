use super::*;
use serde_json::json;

fn msg(v: Value) -> Inbound {
    match parse_posted(v.to_string().as_bytes()) {
        Ok(Posted::Message(m)) => m,
        other => panic!("not a message: {other:?}"),
    }
}

#[test]
fn parses_requests_notifications_and_responses() {
    let m = msg(json!({"jsonrpc":"2.0","id":7,"method":"tools/list"}));
    assert_eq!(m.id, Some(json!(7)));
    assert!(m.params.is_empty());
    let n = msg(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    assert_eq!(n.id, None);
    let r = parse_posted(br#"{"jsonrpc":"2.0","id":"s1","result":{}}"#);
    assert_eq!(r, Ok(Posted::Response));
}

#[test]
fn refuses_bad_envelopes_with_their_codes() {
    let code_of = |b: &[u8]| parse_posted(b).err().map(|(_, e)| e.code);
    assert_eq!(code_of(b"{nope"), Some(code::PARSE_ERROR));
    assert_eq!(code_of(b"[]"), Some(code::INVALID_REQUEST));
    assert_eq!(
        code_of(br#"{"id":1,"method":"x"}"#),
        Some(code::INVALID_REQUEST)
    );
    assert_eq!(
        code_of(br#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#),
        Some(code::INVALID_REQUEST)
    );
    assert_eq!(
        code_of(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#),
        Some(code::INVALID_REQUEST)
    );
    let (id, _) = parse_posted(br#"{"jsonrpc":"2.0","id":"a","method":3}"#).unwrap_err();
    assert_eq!(id, json!("a"));
}

fn modern(method: &str, params: Value) -> Inbound {
    let mut p = params;
    p["_meta"] = json!({ META_VERSION: MODERN_VERSION });
    msg(json!({"jsonrpc":"2.0","id":1,"method":method,"params":p}))
}

#[test]
fn decides_the_era() {
    let m = modern("tools/list", json!({}));
    assert_eq!(era_of(&m, None), Era::Modern);
    let legacy = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
    assert_eq!(era_of(&legacy, Some("2025-11-25")), Era::Handshake);
    assert_eq!(era_of(&legacy, Some(MODERN_VERSION)), Era::Modern);
}

#[test]
fn modern_headers_must_repeat_the_body() {
    let m = modern("tools/call", json!({"name":"a.echo"}));
    let v = Some(MODERN_VERSION);
    assert_eq!(
        check_modern(&m, v, Some("tools/call"), Some("a.echo")),
        Ok(())
    );
    let code = |r: Result<(), RpcError>| r.err().map(|e| e.code);
    assert_eq!(
        code(check_modern(&m, v, Some("tools/list"), Some("a.echo"))),
        Some(code::HEADER_MISMATCH)
    );
    assert_eq!(
        code(check_modern(&m, v, Some("tools/call"), Some("a.other"))),
        Some(code::HEADER_MISMATCH)
    );
    assert_eq!(
        code(check_modern(&m, v, Some("tools/call"), None)),
        Some(code::HEADER_MISMATCH)
    );
    assert_eq!(
        code(check_modern(
            &m,
            Some("2025-11-25"),
            Some("tools/call"),
            Some("a.echo")
        )),
        Some(code::HEADER_MISMATCH)
    );
    let mut old = m.clone();
    old.params
        .set("_meta", &json!({ META_VERSION: "2030-01-01" }));
    let e = check_modern(&old, None, Some("tools/call"), Some("a.echo")).unwrap_err();
    assert_eq!(e.code, code::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(e.http_status(), 400);
    let supported = &e.data.unwrap()["supported"];
    assert!(supported
        .as_array()
        .unwrap()
        .contains(&json!(MODERN_VERSION)));
}

#[test]
fn negotiates_handshake_versions() {
    assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
    assert_eq!(negotiate(Some("2024-01-01")), "2025-11-25");
    assert_eq!(negotiate(None), "2025-11-25");
}

#[test]
fn exposed_names_split_at_the_first_separator() {
    assert_eq!(expose("billing", "read.status"), "billing.read.status");
    assert_eq!(
        split_exposed("billing.read.status"),
        Some(("billing", "read.status"))
    );
    assert_eq!(
        split_exposed("files.resource://a.txt"),
        Some(("files", "resource://a.txt"))
    );
    assert_eq!(split_exposed("nodot"), None);
    assert_eq!(split_exposed(".x"), None);
}

#[test]
fn fits_results_to_the_era() {
    let mut r = json!({"tools": []});
    fit_result(&mut r, Era::Modern, true);
    assert_eq!(r["resultType"], "complete");
    assert_eq!(r["cacheScope"], "private");
    fit_result(&mut r, Era::Handshake, true);
    assert_eq!(r, json!({"tools": []}));
}

#[test]
fn header_values_round_trip_through_the_base64_sentinel() {
    assert_eq!(encode_header_value("billing.echo"), "billing.echo");
    let odd = "résumé tool";
    let enc = encode_header_value(odd);
    assert!(enc.starts_with("=?base64?"));
    assert_eq!(decode_header_value(&enc).as_deref(), Some(odd));
    assert_eq!(decode_header_value(" edge").as_deref(), Some(" edge"));
    assert_eq!(encode_header_value(" edge"), "=?base64?IGVkZ2U=?=");
    assert_eq!(decode_header_value("=?base64?!!?="), None);
    let m = modern("tools/call", json!({"name": odd}));
    assert_eq!(
        check_modern(&m, Some(MODERN_VERSION), Some("tools/call"), Some(&enc)),
        Ok(())
    );
}

#[test]
fn the_scan_reads_what_the_tree_reads() {
    let bodies: &[&[u8]] = &[
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a.echo","arguments":{"text":"hi","n":1.50}}}"#,
        br#" { "jsonrpc" : "2.0" , "method" : "notifications/initialized" } "#,
        br#"{"jsonrpc":"2.0","id":"x","method":"tools/list","params":null}"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"first","name":"second"}}"#,
        br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"na\u006de":"b.\u00e9t\"a"}}"#,
        br#"{"jsonrpc":"2.0","id":4,"id":5,"method":"m","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        br#"{"jsonrpc":"2\u002e0","id":6,"method":"m"}"#,
        br#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
        br#"{"jsonrpc":"2.0","id":8,"method":"m","params":[1]}"#,
        br#"{"jsonrpc":"2.0","id":true,"method":"m"}"#,
        b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"m\",\"params\":{\"a\":\"\xff\"}}",
        b"[]",
        b"{nope",
        br#"{"jsonrpc":"2.0","id":10,"method":"m","params":{"arguments":{"x":"\udc00"}}}"#,
        br#"{"jsonrpc":"2.0","id":11,"method":"m","params":{"arguments":{"x":1e400}}}"#,
        br#"{"jsonrpc":"2.0","id":12,"method":"m","params":{"arguments":{"x":1},"arguments":{"x":2}}}"#,
    ];
    for body in bodies {
        assert_eq!(
            parse_posted(body),
            parse_posted_by_tree(body),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let m = msg(json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"b.\u{e9}t\"a"}}));
    assert_eq!(m.target_name().as_deref(), Some("b.\u{e9}t\"a"));
    let dup = match parse_posted(bodies[3]) {
        Ok(Posted::Message(m)) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(dup.target_name().as_deref(), Some("second"));
}

#[test]
fn params_are_written_as_they_came_with_what_was_set() {
    let raw = br#"{ "name": "billing.read", "arguments": {"n": 1.50, "s": "x"}, "z": [1, 2] }"#;
    let mut p = Params::from_raw(raw).unwrap();
    assert_eq!(p.get_str("name").as_deref(), Some("billing.read"));
    assert_eq!(p.get("arguments"), Some(json!({"n": 1.5, "s": "x"})));
    assert_eq!(p.get("missing"), None);
    p.set("name", &json!("read"));
    assert_eq!(p.get_str("name").as_deref(), Some("read"));
    let mut out = Vec::new();
    p.write_into(
        &mut out,
        &[crate::json::Edit::Set {
            key: "_meta",
            value: br#"{"k":1}"#,
        }],
    );
    // Untouched members keep their spelling (1.50, spaces); the set ones
    // and the edit are in.
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{ "name": "read", "arguments": {"n": 1.50, "s": "x"}, "z": [1, 2],"_meta":{"k":1} }"#
    );
    let mut out = Vec::new();
    Params::default().write_into(&mut out, &[]);
    assert_eq!(out, b"{}");
    assert!(Params::from_raw(b"[1]").is_none());
    assert!(Params::from_raw(b"{\"a\":\"\xff\"}").is_none());
    assert_eq!(
        Params::from_map(json!({"cursor": "c"}).as_object().unwrap().clone()).to_map(),
        *json!({"cursor": "c"}).as_object().unwrap()
    );
}
