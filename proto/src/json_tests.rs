use super::*;
use serde_json::{json, Map, Value};

fn members_of(body: &[u8]) -> Vec<(String, Value)> {
    top_level_members(body)
        .unwrap()
        .into_iter()
        .map(|m| {
            let key = decode_key(body, &m.key).unwrap().into_owned();
            let value = serde_json::from_slice(&body[m.value]).unwrap();
            (key, value)
        })
        .collect()
}

fn patch(body: &[u8], edits: &[Edit<'_>]) -> Vec<u8> {
    let members = top_level_members(body).unwrap();
    patch_object(body, &members, edits)
}

fn parse(bytes: &[u8]) -> Value {
    match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => panic!("{e}: {}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn finds_members() {
    let body = br#" { "model" : "gpt-4o", "messages":[{"role":"user","content":"a \"model\": b"}],
        "n":1.5e3, "x":{"model":"inner"}, "t":true,"f":false,"z":null } "#;
    let got = members_of(body);
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["model", "messages", "n", "x", "t", "f", "z"]);
    assert_eq!(got[0].1, json!("gpt-4o"));
    assert_eq!(got[3].1, json!({"model":"inner"}));
    let members = top_level_members(body).unwrap();
    assert_eq!(&body[members[0].key.clone()], b"model");
    assert_eq!(&body[members[0].value.clone()], b"\"gpt-4o\"");
}

#[test]
fn the_first_member_is_read_without_the_rest() {
    let body = br#" { "id" : "resp_1", "output": [ not json here"#;
    assert_eq!(
        first_member(body, "id").map(|r| &body[r]),
        Some(&br#""resp_1""#[..])
    );
    let nested = br#"{"id":{"a":[1,"}"]},"x":1}"#;
    assert_eq!(
        first_member(nested, "id").map(|r| &nested[r]),
        Some(&br#"{"a":[1,"}"]}"#[..])
    );
    for other in [
        &br#"{"object":"response","id":"resp_1"}"#[..],
        br#"{"i\u0064":"resp_1"}"#,
        br#"{"id":}"#,
        br#"{"id""#,
        br#"{}"#,
        br#"[{"id":1}]"#,
        b"",
    ] {
        assert_eq!(
            first_member(other, "id"),
            None,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn members_are_found_by_name_the_last_winning() {
    let body = br#"{"input":"a","st\u006fre":false,"input":["b"]}"#;
    let members = top_level_members(body).unwrap();
    assert_eq!(last_named(body, &members, "input"), Some(&br#"["b"]"#[..]));
    assert_eq!(last_named(body, &members, "store"), Some(&b"false"[..]));
    assert_eq!(last_named(body, &members, "model"), None);
}

#[test]
fn empty_object() {
    assert_eq!(top_level_members(b"{}").unwrap(), []);
    assert_eq!(top_level_members(b" \n{ \t}\r\n").unwrap(), []);
}

#[test]
fn not_an_object() {
    for body in [&b""[..], b"   ", b"[]", b"\"s\"", b"1", b"null", b"x"] {
        assert_eq!(
            top_level_members(body),
            Err(JsonError::NotAnObject),
            "{body:?}"
        );
    }
}

#[test]
fn malformed() {
    for body in [
        &br#"{"a":1,}"#[..],
        br#"{"a" 1}"#,
        br#"{"a":}"#,
        br#"{"a":1"#,
        br#"{"a":1}x"#,
        br#"{"a":1}{}"#,
        br#"{a:1}"#,
        br#"{"a":"unterminated}"#,
        br#"{"a":"bad \x escape"}"#,
        br#"{"a":"\u12"}"#,
        b"{\"a\":\"raw\ncontrol\"}",
        br#"{"a":01}"#,
        br#"{"a":1.}"#,
        br#"{"a":-}"#,
        br#"{"a":1e}"#,
        br#"{"a":+1}"#,
        br#"{"a":tru}"#,
        br#"{"a":nul}"#,
        br#"{"a":[1,]}"#,
        br#"{"a":[1 2]}"#,
        br#"{"a":{"b"}}"#,
        br#"{"a":{"b":1,}}"#,
        br#"{"a":'s'}"#,
    ] {
        assert!(
            matches!(top_level_members(body), Err(JsonError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(serde_json::from_slice::<Value>(body).is_err());
    }
}

#[test]
fn nesting_limit_exactly_and_one_past() {
    let nest = |depth: usize| {
        // The top-level object is depth 1; each array adds one.
        let inner = depth - 1;
        format!("{{\"a\":{}1{}}}", "[".repeat(inner), "]".repeat(inner)).into_bytes()
    };
    assert_eq!(top_level_members(&nest(MAX_DEPTH)).unwrap().len(), 1);
    assert_eq!(
        top_level_members(&nest(MAX_DEPTH + 1)),
        Err(JsonError::TooDeep)
    );
    // Far deeper input fails fast instead of recursing.
    let deep = format!("{{\"a\":{}", "{\"a\":".repeat(100_000)).into_bytes();
    assert_eq!(top_level_members(&deep), Err(JsonError::TooDeep));
}

#[test]
fn set_replaces_and_appends() {
    let body = br#"{"model":"alias","stream":true}"#;
    let out = patch(
        body,
        &[
            Edit::Set {
                key: "model",
                value: br#""gpt-4o-2024""#,
            },
            Edit::Set {
                key: "stream_options",
                value: br#"{"include_usage":true}"#,
            },
        ],
    );
    assert_eq!(
        out,
        br#"{"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn remove_cuts_commas() {
    let body = br#"{"a":1,"b":2,"c":3}"#;
    assert_eq!(
        patch(body, &[Edit::Remove { key: "a" }]),
        br#"{"b":2,"c":3}"#
    );
    assert_eq!(
        patch(body, &[Edit::Remove { key: "b" }]),
        br#"{"a":1,"c":3}"#
    );
    assert_eq!(
        patch(body, &[Edit::Remove { key: "c" }]),
        br#"{"a":1,"b":2}"#
    );
    assert_eq!(
        patch(
            body,
            &[
                Edit::Remove { key: "a" },
                Edit::Remove { key: "b" },
                Edit::Remove { key: "c" }
            ]
        ),
        b"{}"
    );
    assert_eq!(patch(body, &[Edit::Remove { key: "zz" }]), body);
    assert_eq!(patch(b"{}", &[Edit::Remove { key: "a" }]), b"{}");
}

#[test]
fn whitespace_is_kept() {
    let body = b"{\n  \"model\": \"a\",\n  \"n\": 1\n}\n";
    let out = patch(
        body,
        &[Edit::Set {
            key: "model",
            value: b"\"b\"",
        }],
    );
    assert_eq!(out, b"{\n  \"model\": \"b\",\n  \"n\": 1\n}\n");
    let out = patch(
        body,
        &[
            Edit::Remove { key: "model" },
            Edit::Set {
                key: "x",
                value: b"[]",
            },
        ],
    );
    assert_eq!(parse(&out), json!({"n": 1, "x": []}));
    let out = patch(
        b" { } ",
        &[Edit::Set {
            key: "k",
            value: b"1",
        }],
    );
    assert_eq!(out, b" {\"k\":1 } ");
}

#[test]
fn nested_keys_of_the_same_name_are_untouched() {
    let body = br#"{"x":{"model":"inner","stream":1},"model":"outer","arr":[{"model":2}]}"#;
    let out = patch(
        body,
        &[
            Edit::Set {
                key: "model",
                value: b"\"new\"",
            },
            Edit::Remove { key: "stream" },
        ],
    );
    assert_eq!(
        parse(&out),
        json!({"x":{"model":"inner","stream":1},"model":"new","arr":[{"model":2}]})
    );
}

#[test]
fn escaped_keys_and_values() {
    // "mod\u0065l" is "model" to every JSON reader.
    let body = br#"{"mod\u0065l":"a","q\"k":"v\"al\\","model2":"x"}"#;
    let out = patch(
        body,
        &[Edit::Set {
            key: "model",
            value: b"\"b\"",
        }],
    );
    assert_eq!(
        parse(&out),
        json!({"model":"b","q\"k":"v\"al\\","model2":"x"})
    );
    let out = patch(body, &[Edit::Remove { key: "q\"k" }]);
    assert_eq!(parse(&out), json!({"model":"a","model2":"x"}));
    let out = patch(
        body,
        &[Edit::Set {
            key: "new\"key\n",
            value: b"1",
        }],
    );
    assert_eq!(parse(&out)["new\"key\n"], json!(1));
}

#[test]
fn duplicate_keys_collapse_to_the_set_value() {
    let body = br#"{"model":"a","n":1,"model":"b"}"#;
    let out = patch(
        body,
        &[Edit::Set {
            key: "model",
            value: b"\"c\"",
        }],
    );
    assert_eq!(out, br#"{"model":"c","n":1}"#);
    let out = patch(body, &[Edit::Remove { key: "model" }]);
    assert_eq!(out, br#"{"n":1}"#);
}

#[test]
fn first_edit_for_a_key_wins() {
    let body = br#"{"a":1}"#;
    let out = patch(
        body,
        &[
            Edit::Remove { key: "a" },
            Edit::Set {
                key: "a",
                value: b"2",
            },
        ],
    );
    assert_eq!(out, b"{}");
    let out = patch(
        body,
        &[
            Edit::Set {
                key: "b",
                value: b"2",
            },
            Edit::Set {
                key: "b",
                value: b"3",
            },
        ],
    );
    assert_eq!(out, br#"{"a":1,"b":2}"#);
}

#[test]
fn mismatched_members_leave_the_body_alone() {
    let body = br#"{"a":1}"#;
    let wrong = [Member {
        key: 2..3,
        value: 5..99,
        key_escaped: false,
    }];
    assert_eq!(
        patch_object(body, &wrong, &[Edit::Remove { key: "a" }]),
        body
    );
    assert_eq!(
        patch_object(b"[1]", &[], &[Edit::Remove { key: "a" }]),
        b"[1]"
    );
}

#[test]
fn json_string_escaping() {
    for s in [
        "",
        "plain",
        "q\"uote",
        "back\\slash",
        "nl\ncr\rtab\t",
        "\u{0}\u{1f}\u{8}\u{c}",
        "ключ ✓ 🎉",
        "/",
    ] {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
    }
}

// --- property-style: random objects, random layouts, random edits ---

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "messages",
    "tools",
    "a",
    "",
    "q\"k",
    "back\\slash",
    "ключ",
    "nl\nkey",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kind = if depth >= 3 {
        rng.below(5)
    } else {
        rng.below(7)
    };
    match kind {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 1),
        2 => json!(rng.next() as i64 / 1000),
        3 => json!(-(rng.below(1000) as f64) * 0.25),
        4 => Value::String(KEYS[rng.below(KEYS.len())].repeat(rng.below(3))),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(random_map(rng, depth + 1)),
    }
}

fn random_map(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    (0..rng.below(6))
        .map(|_| {
            (
                KEYS[rng.below(KEYS.len())].to_string(),
                random_value(rng, depth),
            )
        })
        .collect()
}

/// Serialises with random whitespace between tokens.
fn write_spaced(rng: &mut Rng, v: &Value, out: &mut Vec<u8>) {
    fn ws(rng: &mut Rng, out: &mut Vec<u8>) {
        out.extend_from_slice([&b""[..], b"", b" ", b"\n  ", b"\t", b"\r\n"][rng.below(6)]);
    }
    match v {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                ws(rng, out);
                write_spaced(rng, item, out);
                ws(rng, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            ws(rng, out);
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                    ws(rng, out);
                }
                write_json_string(out, k);
                ws(rng, out);
                out.push(b':');
                ws(rng, out);
                write_spaced(rng, item, out);
                ws(rng, out);
            }
            out.push(b'}');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[test]
fn patch_then_parse_matches_the_model() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..2000 {
        let map = random_map(&mut rng, 1);
        let obj = Value::Object(map.clone());
        let mut body = Vec::new();
        match round % 3 {
            0 => body = serde_json::to_vec(&obj).unwrap(),
            1 => body = serde_json::to_vec_pretty(&obj).unwrap(),
            _ => write_spaced(&mut rng, &obj, &mut body),
        }

        // The scan agrees with serde_json on every member.
        let found = members_of(&body);
        assert_eq!(found.len(), map.len());
        for (k, v) in &found {
            assert_eq!(map.get(k), Some(v));
        }
        // Walking back from the end finds the same members, in reverse.
        let mut back: Vec<Member> = members_rev(&body).collect();
        back.reverse();
        assert_eq!(back, top_level_members(&body).unwrap());
        // So does the non-validating lookup, key by key.
        for key in KEYS {
            let value = find_top_level(&body, key).map(|r| parse(&body[r]));
            assert_eq!(
                value.as_ref(),
                map.get(*key),
                "{key} in {}",
                String::from_utf8_lossy(&body)
            );
        }

        // Random edits, applied to the model too (first edit per key wins).
        let values: Vec<Vec<u8>> = (0..4)
            .map(|_| serde_json::to_vec(&random_value(&mut rng, 1)).unwrap())
            .collect();
        let mut edits = Vec::new();
        for i in 0..rng.below(5) {
            let key = KEYS[rng.below(KEYS.len())];
            edits.push(if rng.below(2) == 0 {
                Edit::Remove { key }
            } else {
                Edit::Set {
                    key,
                    value: &values[i % values.len()],
                }
            });
        }
        let mut expected = map.clone();
        let mut seen = Vec::new();
        for e in &edits {
            if seen.contains(&e.key()) {
                continue;
            }
            seen.push(e.key());
            match e {
                Edit::Remove { key } => {
                    expected.remove(*key);
                }
                Edit::Set { key, value } => {
                    expected.insert(key.to_string(), serde_json::from_slice(value).unwrap());
                }
            }
        }
        let out = patch(&body, &edits);
        assert_eq!(
            parse(&out),
            Value::Object(expected.clone()),
            "{}",
            String::from_utf8_lossy(&body)
        );
        // No duplicate keys were introduced and our own scan accepts the result.
        assert_eq!(top_level_members(&out).unwrap().len(), expected.len());
    }
}

#[test]
fn find_top_level_takes_the_last_top_level_member() {
    let body = br#" { "usage" : 1 , "x": {"usage": 2, "s": "\"usage\": 3"}, "mod\u0065l":"m", "usage": {"a":[1,{"usage":4}]} } "#;
    let r = find_top_level(body, "usage").unwrap();
    assert_eq!(&body[r], br#"{"a":[1,{"usage":4}]}"#);
    let r = find_top_level(body, "model").unwrap();
    assert_eq!(&body[r], br#""m""#);
    assert_eq!(find_top_level(body, "s"), None);
    assert_eq!(find_top_level(br#"{"usage": 1"#, "usage"), None);
    assert_eq!(find_top_level(br#"["usage", 1]"#, "usage"), None);
    assert_eq!(find_top_level(br#"{"a":"\"#, "a"), None);
    assert_eq!(find_top_level(b"", "a"), None);
}

#[test]
fn a_strings_plain_run_ends_at_the_first_quote_backslash_or_control_byte() {
    let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
    for len in 0..80 {
        for fill in [b'a', b' ', b'!', b'#', b']', 0x7f, 0x80, 0xff] {
            let plain = vec![fill; len];
            assert_eq!(scan::plain_run(&plain), None, "{plain:?}");
            for at in 0..len {
                for stop in [b'"', b'\\', 0x00, 0x0a, 0x1f] {
                    let mut b = plain.clone();
                    b[at] = stop;
                    assert_eq!(scan::plain_run(&b), naive(&b), "{b:?}");
                    // A later stop never hides an earlier one.
                    if at + 3 < len {
                        b[at + 3] = b'"';
                        assert_eq!(scan::plain_run(&b), Some(at), "{b:?}");
                    }
                }
            }
        }
    }
}

/// Escaped as serde_json escapes, whatever the length and wherever the
/// bytes to escape fall (within the first eight, past 32, at the end).
#[test]
fn strings_are_escaped_as_serde_json_escapes_them() {
    let mut cases: Vec<String> = vec![
        String::new(),
        "plain".into(),
        "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{0}i\u{1f}j\u{7f}k/é😀".into(),
        "\"".into(),
        "\\\\".into(),
    ];
    for len in [7, 8, 9, 31, 32, 33, 64, 100] {
        for at in [0, len / 2, len - 1] {
            for special in ['"', '\\', '\n', '\u{1}'] {
                let mut s: Vec<char> = std::iter::repeat_n('x', len).collect();
                s[at] = special;
                cases.push(s.into_iter().collect());
            }
        }
        cases.push("é".repeat(len));
    }
    for s in cases {
        let mut out = Vec::new();
        write_json_string(&mut out, &s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&s).unwrap(),
            "{s:?}"
        );
    }
}

#[test]
fn one_pass_finds_a_nested_objects_members_as_a_second_scan_would() {
    let bodies: &[&[u8]] = &[
        br#"{"a":1,"params":{"name":"x","arguments":{"t":[1,{"u":2}]}},"z":"p"}"#,
        br#" { "params" : { } } "#,
        br#"{"params":{"n":1},"params":{"m":"\"}"}}"#,
        br#"{"params":{"n":1},"params":[1]}"#,
        br#"{"par\u0061ms":{"k":true}}"#,
        br#"{"other":{"k":1}}"#,
    ];
    for body in bodies {
        let scanned = top_level_members_with(body, "params").unwrap();
        let (members, nested) = (scanned.members, scanned.nested);
        assert_eq!(members, top_level_members(body).unwrap());
        let last = members.iter().rev().find(|m| m.is(body, "params"));
        match (last, nested) {
            (Some(m), Some(n)) => {
                assert_eq!(n.value, m.value);
                assert_eq!(
                    n.members,
                    top_level_members(&body[m.value.clone()]).unwrap()
                );
            }
            (Some(m), None) => assert!(!body[m.value.clone()].starts_with(b"{")),
            (None, n) => assert_eq!(n, None),
        }
    }
    assert!(!top_level_members_with(bodies[0], "params").unwrap().unusual);
    for unusual in [
        &br#"{"params":{"a":"\u00e9"}}"#[..],
        br#"{"params":{"a":1e400}}"#,
        br#"{"params":{"a":[1.5E3]}}"#,
    ] {
        assert!(top_level_members_with(unusual, "params").unwrap().unusual);
    }
    // The innermost array at depth MAX_DEPTH - 1 (the body is depth 1).
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH - 3), "]".repeat(MAX_DEPTH - 3));
    let deep = format!(r#"{{"params":{{"a":{deep}}}}}"#);
    assert!(
        top_level_members_with(deep.as_bytes(), "params")
            .unwrap()
            .unusual
    );
    assert!(top_level_members_with(br#"{"params":{"a":}}"#, "params").is_err());
    assert!(top_level_members_with(b"[1]", "params").is_err());
}
