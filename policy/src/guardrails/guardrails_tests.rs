use super::*;

fn spec(name: &str, f: impl FnOnce(&mut GuardrailSpec)) -> GuardrailSpec {
    let mut s = GuardrailSpec {
        name: name.into(),
        pii: None,
        regex: vec![],
        deny_words: vec![],
        action: GuardAction::Block,
        stream_window: None,
        webhook: None,
    };
    f(&mut s);
    s
}

#[test]
fn rules_and_words_say_what_and_where() {
    let g = Guardrails::compile(&[
        spec("codes", |s| {
            s.regex = vec![r"ACME-\d{4}".into(), r"(?i)project\s+falcon".into()]
        }),
        spec("words", |s| {
            s.deny_words = vec!["exploit kit".into(), "darkweb".into()]
        }),
    ])
    .unwrap();
    let text =
        "See ACME-1234 about Project  Falcon; buy an Exploit   Kit on the DarkWeb, not darkwebs.";
    let mut out = Vec::new();
    g.scan(0, text, &mut out);
    g.scan(1, text, &mut out);
    let got: Vec<(&str, What)> = out
        .iter()
        .map(|f| (&text[f.range.clone()], f.what))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ACME-1234", What::Rule(0)),
            ("Project  Falcon", What::Rule(1)),
            ("Exploit   Kit", What::Word),
            ("DarkWeb", What::Word),
        ]
    );
}

#[test]
fn bad_configs_are_refused_with_the_check_named() {
    let e = Guardrails::compile(&[spec("x", |_| {})]).unwrap_err();
    assert_eq!(e, GuardrailError::Empty("x".into()));
    let e = Guardrails::compile(&[spec("r", |s| s.regex = vec!["(".into()])]).unwrap_err();
    assert!(
        matches!(e, GuardrailError::BadPattern { ref name, what: "regex", .. } if name == "r"),
        "{e}"
    );
    let e = Guardrails::compile(&[spec("w", |s| s.deny_words = vec!["  ".into()])]).unwrap_err();
    assert!(e.to_string().contains("deny_words"), "{e}");
    let two = [
        spec("a", |s| s.regex = vec!["a".into()]),
        spec("a", |s| s.regex = vec!["b".into()]),
    ];
    assert_eq!(
        Guardrails::compile(&two).unwrap_err(),
        GuardrailError::Duplicate("a".into())
    );
    let e = Guardrails::compile(&[spec("bad name", |s| s.regex = vec!["a".into()])]).unwrap_err();
    assert_eq!(e, GuardrailError::BadName("bad name".into()));
    // A pattern too large for its budget fails at load.
    let e = Guardrails::compile(&[spec("big", |s| {
        s.regex = vec![r"\w{1000}\w{1000}\w{1000}".into()]
    })])
    .unwrap_err();
    assert!(matches!(e, GuardrailError::BadPattern { .. }), "{e}");
}

#[test]
fn redaction_merges_overlaps_and_keeps_the_rest() {
    let text = "mail a@b.io or call ACME-1234 now";
    let f = |check, r: Range<usize>, what| Finding {
        check,
        range: r,
        what,
    };
    let a = f(0, 5..11, What::Pii(PiiKind::Email));
    let b = f(1, 20..29, What::Rule(0));
    let c = f(1, 24..29, What::Rule(0));
    let out = redact(text, &[&c, &a, &b], |x| x.what.label().to_owned());
    assert_eq!(out, "mail [REDACTED:email] or call [REDACTED:regex] now");
    assert_eq!(redact(text, &[], |_| String::new()), text);
}

#[test]
fn policies_may_attach_only_defined_checks_to_checked_stages() {
    let g = Guardrails::compile(&[spec("codes", |s| s.regex = vec!["x".into()])]).unwrap();
    let set = |yaml: &str| {
        let entries: Vec<crate::PolicyEntry> = serde_yaml_ng::from_str(yaml).unwrap();
        crate::PolicySet::compile(&entries).unwrap()
    };
    g.verify(&set("- ai_runtime_policy: {name: p, actor_scope: {}, guardrails: {input: [codes], output: [codes]}}"))
        .unwrap();
    let e = g
        .verify(&set(
            "- ai_runtime_policy: {name: p, actor_scope: {}, guardrails: {input: [nope]}}",
        ))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "p: guardrails.input names `nope`, which `guardrails:` does not define"
    );
    g.verify(&set(
        "- ai_runtime_policy: {name: p, actor_scope: {}, guardrails: {tool_calls: [codes]}}",
    ))
    .unwrap();
    let hooked = Guardrails::compile(&[spec("hook", |s| {
        s.webhook = Some(WebhookSpec {
            url: "http://127.0.0.1:1/".into(),
            timeout: None,
            on_error: FailMode::FailOpen,
            parallel: false,
            headers: Default::default(),
        })
    })])
    .unwrap();
    // Answers may go to a webhook; tool calls may not.
    hooked
        .verify(&set(
            "- ai_runtime_policy: {name: p, actor_scope: {}, guardrails: {output: [hook]}}",
        ))
        .unwrap();
    let e = hooked
        .verify(&set(
            "- ai_runtime_policy: {name: p, actor_scope: {}, guardrails: {tool_calls: [hook]}}",
        ))
        .unwrap_err();
    assert!(matches!(e, GuardrailError::WebhookOnOutput { .. }), "{e}");
    // A parallel hook runs beside the model call: prompts only.
    let parallel = Guardrails::compile(&[spec("hook", |s| {
        s.webhook = Some(WebhookSpec {
            url: "http://127.0.0.1:1/".into(),
            timeout: None,
            on_error: FailMode::FailOpen,
            parallel: true,
            headers: Default::default(),
        })
    })])
    .unwrap();
    let e = parallel
        .verify(&set(
            "- ai_runtime_policy: {name: p, actor_scope: {}, guardrails: {output: [hook]}}",
        ))
        .unwrap_err();
    assert!(matches!(e, GuardrailError::WebhookOnOutput { .. }), "{e}");
}
