//! Guardrails on the request path: which checks run for a caller, on what
//! text of a request or an answer, and what their verdicts do.
//!
//! The checks themselves are pure (`shardgate_policy::guardrails`); each
//! shard holds its own compiled copy in its config generation, so their
//! automata's scratch space is the shard's own (a shared copy would hand
//! scratch out from behind a lock on every other thread).
//!
//! Text is found by walking the JSON body: the members that hold what a
//! person wrote or a model said (`messages`, `system`, `input`,
//! `instructions`, `prompt`; `choices`, `content`, `output` in answers),
//! skipping what is never prose: ids, roles, types, URLs and base64 data,
//! signatures. A redaction rewrites the strings it touched and the body
//! is serialized again; a body nothing matched is sent as it came.

pub mod stream;
pub mod tool_args;
pub mod webhook;

use crate::error::GatewayError;
use serde_json::Value;
use shardgate_policy::guardrails::{redact, Finding, GuardAction, Guardrails, Stage};
use shardgate_policy::Resolved;
use std::time::Instant;

/// The request's members that carry prompt text.
const INPUT_MEMBERS: &[&str] = &["messages", "system", "input", "instructions", "prompt"];
/// An answer's members that carry the model's text (any dialect).
const OUTPUT_MEMBERS: &[&str] = &["choices", "content", "output"];
/// Keys whose values are never prose.
const SKIP_KEYS: &[&str] = &[
    "role",
    "type",
    "id",
    "tool_call_id",
    "call_id",
    "name",
    "model",
    "object",
    "image_url",
    "url",
    "media_type",
    "signature",
    "encrypted_content",
    "cache_control",
    "status",
    "finish_reason",
    "stop_reason",
    "logprobs",
];

/// One check's word on one stage of a request: for the audit record and
/// `/metrics`. Names the check and what it found, never the text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuardRecord {
    pub check: String,
    pub stage: &'static str,
    /// `pass`, or the check's action when it matched: `block`, `redact`,
    /// `log`.
    pub verdict: &'static str,
    /// The kinds matched (`email`, `regex`, `deny_word`...), each once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub found: Vec<&'static str>,
    pub latency_us: u64,
}

/// The checks that run for one caller, by stage (indexes into the
/// generation's [`Guardrails`]).
pub struct Plan {
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub tool_calls: Vec<usize>,
}

impl Plan {
    /// `None` when no applicable policy attaches a check.
    pub fn new(rails: &Guardrails, resolved: &Resolved<'_>) -> Option<Plan> {
        if rails.is_empty() || !resolved.has_guardrails() {
            return None;
        }
        let pick = |stage| {
            resolved
                .guardrails(stage)
                .into_iter()
                .filter_map(|n| rails.index(n))
                .collect::<Vec<_>>()
        };
        let plan = Plan {
            input: pick(Stage::Input),
            output: pick(Stage::Output),
            tool_calls: pick(Stage::ToolCalls),
        };
        let any = !(plan.input.is_empty() && plan.output.is_empty() && plan.tool_calls.is_empty());
        any.then_some(plan)
    }
}

/// What became of a body.
pub enum Verdict {
    /// Nothing to change (nothing matched, or only `log` checks).
    Pass,
    /// Matches were redacted: the body to send instead.
    Redacted(Vec<u8>),
    Blocked(GatewayError),
}

/// The caller, as webhooks are told of it.
pub fn actor_json(actor: Option<&shardgate_policy::Actor>) -> Value {
    actor.map_or(Value::Null, |a| {
        serde_json::json!({"key_id": a.key_id, "team": a.team, "tenant": a.tenant,
                           "app": a.app, "environment": a.environment})
    })
}

/// What a webhook's answer means for a prompt.
enum Asked {
    Allow,
    /// The texts to send instead.
    Redact(Vec<String>),
    /// Denied, or failed closed.
    Refused(GatewayError),
}

/// Asks check `name`'s webhook about `texts` of `stage`; its verdict and
/// time go to `records`, a failure is its `on_error`.
async fn ask(
    shard: &crate::shard::Shard,
    hook: &webhook::Webhook,
    (name, stage): (&str, Stage),
    texts: &[&str],
    actor: &Value,
    rid: &str,
    records: &mut Vec<GuardRecord>,
) -> Asked {
    let payload = serde_json::json!({
        "check": name,
        "stage": stage.as_str(),
        "request_id": rid,
        "actor": actor,
        "texts": texts,
    });
    let payload = serde_json::to_vec(&payload).unwrap_or_default();
    let started = Instant::now();
    let reply = webhook::call(shard, hook, &payload, texts.len()).await;
    let latency_us = started.elapsed().as_micros() as u64;
    let mut record = |verdict: &'static str| {
        records.push(GuardRecord {
            check: name.to_owned(),
            stage: stage.as_str(),
            verdict,
            found: if verdict == "pass" || verdict == "error" {
                Vec::new()
            } else {
                vec!["webhook"]
            },
            latency_us,
        })
    };
    match reply {
        Ok(webhook::Reply::Allow) => {
            record("pass");
            Asked::Allow
        }
        Ok(webhook::Reply::Deny { .. }) => {
            record("block");
            Asked::Refused(GatewayError::Guardrail {
                check: name.to_owned(),
                stage: if stage == Stage::Input {
                    "prompt"
                } else {
                    "answer"
                },
                found: "webhook",
            })
        }
        Ok(webhook::Reply::Redact(new)) => {
            record("redact");
            Asked::Redact(new)
        }
        Err(e) => {
            log::warn!("{rid}: guardrail {name}: {}", e.summary());
            record("error");
            if hook.on_error == shardgate_policy::guardrails::FailMode::FailClosed {
                Asked::Refused(GatewayError::GuardrailUnavailable {
                    check: name.to_owned(),
                    reason: e.summary(),
                })
            } else {
                Asked::Allow
            }
        }
    }
}

/// An answer held until the parallel webhooks' verdict: the relay waits
/// on it before writing any byte of the answer to the client.
#[derive(Default)]
pub struct Hold {
    state: std::cell::RefCell<HoldState>,
    waiter: std::cell::Cell<Option<std::task::Waker>>,
}

#[derive(Default)]
enum HoldState {
    #[default]
    Waiting,
    Released,
    /// The refusal, until the relay takes it.
    Refused(Option<GatewayError>),
}

impl Hold {
    pub fn decide(&self, verdict: Result<(), GatewayError>) {
        *self.state.borrow_mut() = match verdict {
            Ok(()) => HoldState::Released,
            Err(e) => HoldState::Refused(Some(e)),
        };
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// Waits for the verdict: `Err` is the refusal the client gets.
    pub async fn wait(&self) -> Result<(), GatewayError> {
        std::future::poll_fn(|cx| match &mut *self.state.borrow_mut() {
            HoldState::Waiting => {
                self.waiter.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
            HoldState::Released => std::task::Poll::Ready(Ok(())),
            HoldState::Refused(e) => {
                std::task::Poll::Ready(Err(e.take().unwrap_or_else(|| GatewayError::Guardrail {
                    check: "webhook".into(),
                    stage: "prompt",
                    found: "webhook",
                })))
            }
        })
        .await
    }
}

/// Splits a stage's checks into those run in process and webhooks.
pub fn split_hooks(
    generation: &crate::generation::Generation,
    checks: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    checks
        .iter()
        .partition(|&&c| hook_of(generation, c).is_none())
}

/// The `output` webhooks `hooks` on a whole answer in the client's
/// dialect (`body`): each asked in turn about the answer's text (not its
/// tool calls), which a `redact` reply replaces (the body serialized
/// again), a `deny` refuses. Also for the text of a held stream that could
/// not be read as a whole answer: a body `{"content": [texts]}`.
pub async fn check_output_hooks(
    shard: &crate::shard::Shard,
    generation: &crate::generation::Generation,
    hooks: &[usize],
    body: &[u8],
    actor: &Value,
    rid: &str,
    records: &std::cell::RefCell<Vec<GuardRecord>>,
) -> Verdict {
    let rails = &generation.guardrails;
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Blocked(unreadable(rails, hooks, Stage::Output));
    };
    let mut texts = answer_text(&mut value);
    let mut mine = Vec::new();
    let asked = ask_hooks(
        shard,
        generation,
        (hooks, Stage::Output),
        &mut texts,
        (actor, rid),
        &mut mine,
    )
    .await;
    records.borrow_mut().append(&mut mine);
    drop(texts);
    match asked {
        Err(e) => Verdict::Blocked(e),
        Ok(true) => Verdict::Redacted(serde_json::to_vec(&value).unwrap_or_default()),
        Ok(false) => Verdict::Pass,
    }
}

/// Check `c`'s webhook, when it is one.
fn hook_of(generation: &crate::generation::Generation, c: usize) -> Option<&webhook::Webhook> {
    generation.webhooks.get(c).and_then(Option::as_ref)
}

/// Asks each of `hooks` in turn about `texts` (each sees them as the one
/// before left them), redacting them in place: `Ok(true)` when one
/// redacted, the refusal when one denied or failed closed. Verdicts go to
/// `records`.
async fn ask_hooks(
    shard: &crate::shard::Shard,
    generation: &crate::generation::Generation,
    (hooks, stage): (&[usize], Stage),
    texts: &mut [&mut String],
    (actor, rid): (&Value, &str),
    records: &mut Vec<GuardRecord>,
) -> Result<bool, GatewayError> {
    let mut changed = false;
    for &c in hooks {
        let Some(hook) = hook_of(generation, c) else {
            continue;
        };
        let name = &generation.guardrails.check(c).name;
        let sent: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
        match ask(shard, hook, (name, stage), &sent, actor, rid, records).await {
            Asked::Allow => {}
            Asked::Refused(e) => return Err(e),
            Asked::Redact(new) => {
                for (t, n) in texts.iter_mut().zip(new) {
                    **t = n;
                }
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// The caller's input checks that are webhooks run while the model
/// answers (`parallel`).
pub fn parallel_checks(generation: &crate::generation::Generation, checks: &[usize]) -> Vec<usize> {
    checks
        .iter()
        .copied()
        .filter(|&c| hook_of(generation, c).is_some_and(|h| h.parallel))
        .collect()
}

/// Runs the parallel webhooks `checks` on `body`, the prompt as it went
/// upstream: `Ok` releases the answer. A hook's `redact` comes too late to
/// change what was sent, so it refuses the answer like a `deny`.
pub async fn check_parallel(
    shard: &crate::shard::Shard,
    generation: &crate::generation::Generation,
    checks: &[usize],
    body: &[u8],
    actor: Option<&shardgate_policy::Actor>,
    rid: &str,
    records: &std::cell::RefCell<Vec<GuardRecord>>,
) -> Result<(), GatewayError> {
    let rails = &generation.guardrails;
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return Err(unreadable(rails, checks, Stage::Input));
    };
    let mut texts = prose(&mut value, Stage::Input);
    let actor = actor_json(actor);
    // One hook at a time: a redaction ends the asking (it refuses).
    for &c in checks {
        let mut mine = Vec::new();
        let asked = ask_hooks(
            shard,
            generation,
            (&[c], Stage::Input),
            &mut texts,
            (&actor, rid),
            &mut mine,
        )
        .await;
        records.borrow_mut().append(&mut mine);
        if asked? {
            return Err(GatewayError::Guardrail {
                check: rails.check(c).name.clone(),
                stage: "prompt",
                found: "webhook",
            });
        }
    }
    Ok(())
}

/// Runs `checks` on the prose of a request body (`Stage::Input`) or an
/// answer body in any dialect (`Stage::Output`). Each check's verdict
/// goes to `records`. A body the checks cannot read is refused.
pub fn check_body(
    rails: &Guardrails,
    checks: &[usize],
    stage: Stage,
    body: &[u8],
    records: &mut Vec<GuardRecord>,
) -> Verdict {
    if checks.is_empty() {
        return Verdict::Pass;
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Blocked(unreadable(rails, checks, stage));
    };
    match check_value(rails, checks, stage, &mut value, records) {
        Ok(false) => Verdict::Pass,
        Ok(true) => Verdict::Redacted(serde_json::to_vec(&value).unwrap_or_default()),
        Err(e) => Verdict::Blocked(e),
    }
}

/// [`check_body`] on a body already read: redacts in place, `Ok(true)`
/// when something was.
pub fn check_value(
    rails: &Guardrails,
    checks: &[usize],
    stage: Stage,
    value: &mut Value,
    records: &mut Vec<GuardRecord>,
) -> Result<bool, GatewayError> {
    let mut texts = prose(value, stage);
    check_texts(rails, checks, stage, &mut texts, records)
}

/// A whole answer: `output` checks on its prose, then `tool_calls`
/// checks on its tool calls' arguments, from one read of the body.
pub fn check_answer(
    rails: &Guardrails,
    output: &[usize],
    tool_calls: &[usize],
    body: &[u8],
    records: &mut Vec<GuardRecord>,
) -> Verdict {
    if output.is_empty() && tool_calls.is_empty() {
        return Verdict::Pass;
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        let (checks, stage) = if output.is_empty() {
            (tool_calls, Stage::ToolCalls)
        } else {
            (output, Stage::Output)
        };
        return Verdict::Blocked(unreadable(rails, checks, stage));
    };
    let checked = check_value(rails, output, Stage::Output, &mut value, records).and_then(|a| {
        let mut texts = Vec::new();
        for args in tool_arguments(&mut value) {
            every_string(args, &mut texts);
        }
        let b = check_texts(rails, tool_calls, Stage::ToolCalls, &mut texts, records)?;
        Ok(a || b)
    });
    match checked {
        Ok(false) => Verdict::Pass,
        Ok(true) => Verdict::Redacted(serde_json::to_vec(&value).unwrap_or_default()),
        Err(e) => Verdict::Blocked(e),
    }
}

/// Runs `checks` over `texts` and redacts them in place; `Ok(true)` when
/// something was redacted.
fn check_texts(
    rails: &Guardrails,
    checks: &[usize],
    stage: Stage,
    texts: &mut [&mut String],
    records: &mut Vec<GuardRecord>,
) -> Result<bool, GatewayError> {
    if checks.is_empty() || texts.is_empty() {
        return Ok(false);
    }
    match run(rails, checks, stage, texts, records) {
        Outcome::Pass => Ok(false),
        Outcome::Blocked(e) => Err(e),
        Outcome::Redact(found) => {
            apply(rails, texts, &found);
            Ok(true)
        }
    }
}

/// The prose strings of a request (`Stage::Input`) or an answer.
fn prose(value: &mut Value, stage: Stage) -> Vec<&mut String> {
    let members = match stage {
        Stage::Input => INPUT_MEMBERS,
        _ => OUTPUT_MEMBERS,
    };
    let mut texts = Vec::new();
    if let Value::Object(map) = value {
        for (k, v) in map.iter_mut() {
            if members.contains(&k.as_str()) {
                collect(v, &mut texts);
            }
        }
    }
    texts
}

/// The input stage: in-process checks, then each webhook in turn, on the
/// request's prompt texts (each webhook sees them as the checks before it
/// left them). `actor` and `rid` go to webhooks with the texts.
pub async fn check_input(
    shard: &crate::shard::Shard,
    generation: &crate::generation::Generation,
    checks: &[usize],
    body: &[u8],
    actor: Option<&shardgate_policy::Actor>,
    rid: &str,
    records: &mut Vec<GuardRecord>,
) -> Verdict {
    let rails = &generation.guardrails;
    // Parallel hooks run beside the model call (`parallel`), not here.
    let remote: Vec<usize> = checks
        .iter()
        .copied()
        .filter(|&c| hook_of(generation, c).is_some_and(|h| !h.parallel))
        .collect();
    let (local, _) = split_hooks(generation, checks);
    if remote.is_empty() {
        if local.is_empty() {
            return Verdict::Pass;
        }
        return check_body(rails, &local, Stage::Input, body, records);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Blocked(unreadable(rails, checks, Stage::Input));
    };
    let mut texts = prose(&mut value, Stage::Input);
    let mut changed = match check_texts(rails, &local, Stage::Input, &mut texts, records) {
        Ok(c) => c,
        Err(e) => return Verdict::Blocked(e),
    };
    let asked = ask_hooks(
        shard,
        generation,
        (&remote, Stage::Input),
        &mut texts,
        (&actor_json(actor), rid),
        records,
    )
    .await;
    match asked {
        Ok(redacted) => changed |= redacted,
        Err(e) => return Verdict::Blocked(e),
    }
    drop(texts);
    if changed {
        Verdict::Redacted(serde_json::to_vec(&value).unwrap_or_default())
    } else {
        Verdict::Pass
    }
}

/// A body the checks cannot read (JSON the gateway's scanner takes but a
/// strict parser refuses, such as a lone surrogate escape) is refused,
/// never passed unchecked. The message says nothing of its content.
fn unreadable(rails: &Guardrails, checks: &[usize], stage: Stage) -> GatewayError {
    match stage {
        Stage::Input => GatewayError::BadRequest {
            message: "The request body could not be checked by the guardrails: it is not \
                      strictly valid JSON (an invalid escape or code point?)."
                .into(),
            param: None,
        },
        _ => GatewayError::Guardrail {
            check: checks
                .first()
                .map_or_else(String::new, |&c| rails.check(c).name.clone()),
            stage: "answer",
            found: "unreadable",
        },
    }
}

/// Whether a request asks for token log probabilities: they repeat the
/// answer's text token by token, where `block` and `redact` output
/// checks cannot follow it, so such requests are refused for callers
/// with those checks.
pub fn asks_logprobs(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let on = |k: &str| match v.get(k) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(_) => true,
    };
    let included = v.get("include").and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .any(|i| i.as_str().is_some_and(|s| s.contains("logprobs")))
    });
    on("logprobs") || on("top_logprobs") || included
}

/// Whether any of `checks` blocks or redacts.
pub fn changes_text(rails: &Guardrails, checks: &[usize]) -> bool {
    checks
        .iter()
        .any(|&c| rails.check(c).action != GuardAction::Log)
}

/// Redacts `found` (by text index) in `texts`.
fn apply(rails: &Guardrails, texts: &mut [&mut String], found: &[(usize, Finding)]) {
    for (i, text) in texts.iter_mut().enumerate() {
        let mine: Vec<&Finding> = found
            .iter()
            .filter(|(s, _)| *s == i)
            .map(|(_, f)| f)
            .collect();
        if !mine.is_empty() {
            **text = redact(text, &mine, |f| label(rails, f));
        }
    }
}

/// The `tool_calls` stage on one call's arguments (every string in
/// them, at any depth). A JSON-encoded arguments string (OpenAI's) is read
/// as the JSON it holds, so an escape (`\u0072m`) hides nothing and a
/// redaction keeps it JSON; text that is not JSON is scanned as text.
/// Redacts in place; `Ok(true)` when something was.
pub fn check_arguments(
    rails: &Guardrails,
    checks: &[usize],
    args: &mut Value,
    records: &mut Vec<GuardRecord>,
) -> Result<bool, GatewayError> {
    if let Value::String(encoded) = args {
        if let Ok(mut parsed) = serde_json::from_str::<Value>(encoded) {
            if parsed.is_object() || parsed.is_array() {
                let mut texts = Vec::new();
                every_string(&mut parsed, &mut texts);
                let changed = check_texts(rails, checks, Stage::ToolCalls, &mut texts, records)?;
                drop(texts);
                if changed {
                    *encoded = parsed.to_string();
                }
                return Ok(changed);
            }
        }
    }
    let mut texts = Vec::new();
    every_string(args, &mut texts);
    check_texts(rails, checks, Stage::ToolCalls, &mut texts, records)
}

/// The arguments of the tool calls of a whole answer in the client's
/// dialect: chat `tool_calls[].function.arguments`, Anthropic `tool_use`
/// blocks' `input`, Responses `function_call` items' `arguments`.
fn tool_arguments(value: &mut Value) -> Vec<&mut Value> {
    let mut args = Vec::new();
    let Value::Object(map) = value else {
        return args;
    };
    for (member, list) in map.iter_mut() {
        let Some(list) = list.as_array_mut() else {
            continue;
        };
        for item in list {
            match member.as_str() {
                "choices" => {
                    if let Some(calls) = item
                        .pointer_mut("/message/tool_calls")
                        .and_then(Value::as_array_mut)
                    {
                        args.extend(
                            calls
                                .iter_mut()
                                .filter_map(|t| t.pointer_mut("/function/arguments")),
                        );
                    }
                }
                "content" if item.get("type").and_then(Value::as_str) == Some("tool_use") => {
                    args.extend(item.get_mut("input"));
                }
                "output" if item.get("type").and_then(Value::as_str) == Some("function_call") => {
                    args.extend(item.get_mut("arguments"));
                }
                _ => {}
            }
        }
    }
    args
}

/// Every string under `v`, keys' values at any depth.
fn every_string<'v>(v: &'v mut Value, out: &mut Vec<&'v mut String>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter_mut().for_each(|i| every_string(i, out)),
        Value::Object(map) => map.values_mut().for_each(|c| every_string(c, out)),
        _ => {}
    }
}

/// What a redaction's placeholder says: the PII kind, or the check's name.
pub fn label(rails: &Guardrails, f: &Finding) -> String {
    match f.what {
        shardgate_policy::guardrails::What::Pii(k) => k.name().to_owned(),
        _ => rails.check(f.check).name.clone(),
    }
}

pub(crate) enum Outcome {
    Pass,
    /// The findings to redact, by text index.
    Redact(Vec<(usize, Finding)>),
    Blocked(GatewayError),
}

/// Runs every check over every text; records each check's verdict.
pub(crate) fn run(
    rails: &Guardrails,
    checks: &[usize],
    stage: Stage,
    texts: &[&mut String],
    records: &mut Vec<GuardRecord>,
) -> Outcome {
    let mut blocked: Option<GatewayError> = None;
    let mut to_redact: Vec<(usize, Finding)> = Vec::new();
    let mut found: Vec<Finding> = Vec::new();
    for &c in checks {
        let check = rails.check(c);
        let started = Instant::now();
        let mut kinds: Vec<&'static str> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            found.clear();
            rails.scan(c, text, &mut found);
            for f in found.drain(..) {
                let what = f.what.label();
                if !kinds.contains(&what) {
                    kinds.push(what);
                }
                if check.action == GuardAction::Redact {
                    to_redact.push((i, f));
                }
            }
        }
        let latency_us = started.elapsed().as_micros() as u64;
        let verdict = if kinds.is_empty() {
            "pass"
        } else {
            check.action.as_str()
        };
        if check.action == GuardAction::Block && !kinds.is_empty() && blocked.is_none() {
            blocked = Some(GatewayError::Guardrail {
                check: check.name.clone(),
                stage: match stage {
                    Stage::Input => "prompt",
                    Stage::Output => "answer",
                    Stage::ToolCalls => "tool call",
                },
                found: kinds[0],
            });
        }
        records.push(GuardRecord {
            check: check.name.clone(),
            stage: stage.as_str(),
            verdict,
            found: kinds,
            latency_us,
        });
    }
    match blocked {
        Some(e) => Outcome::Blocked(e),
        None if to_redact.is_empty() => Outcome::Pass,
        None => Outcome::Redact(to_redact),
    }
}

/// A thinking block as Claude signed it, in any dialect's shape.
fn signed_thinking(v: &Value) -> bool {
    matches!(
        v.get("type").and_then(Value::as_str),
        Some("thinking" | "redacted_thinking")
    ) || shardgate_providers::responses::is_claude_reasoning(v)
}

/// Every prose string under `v`.
pub(crate) fn collect<'v>(v: &'v mut Value, out: &mut Vec<&'v mut String>) {
    collect_with(v, out, false);
}

/// [`collect`]; `text_only` leaves tool calls out (their arguments are
/// the `tool_calls` stage's, judged as the JSON they hold).
fn collect_with<'v>(v: &'v mut Value, out: &mut Vec<&'v mut String>, text_only: bool) {
    // A signed block (Anthropic `thinking`, or a Responses `reasoning`
    // item carrying one) must go back as it came: changing it voids its
    // signature, and Claude checks it, so a made-up block carries nothing
    // past it. Known by its type: a key a client can add to any item does
    // not exempt it.
    if signed_thinking(v) {
        return;
    }
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => {
            for item in items {
                collect_with(item, out, text_only);
            }
        }
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            if text_only && matches!(kind, Some("tool_use" | "function_call")) {
                return;
            }
            // `data` is prose in a text source (Anthropic's plain-text
            // documents), base64 elsewhere.
            let text_source = kind == Some("text");
            for (k, child) in map.iter_mut() {
                let skip = SKIP_KEYS.contains(&k.as_str())
                    || (k == "data" && !text_source)
                    || (text_only && k == "tool_calls");
                if !skip {
                    collect_with(child, out, text_only);
                }
            }
        }
        _ => {}
    }
}

/// An answer's text, without its tool calls: what output webhooks read.
fn answer_text(value: &mut Value) -> Vec<&mut String> {
    let mut texts = Vec::new();
    if let Value::Object(map) = value {
        for (k, v) in map.iter_mut() {
            if OUTPUT_MEMBERS.contains(&k.as_str()) {
                collect_with(v, &mut texts, true);
            }
        }
    }
    texts
}

#[cfg(test)]
#[path = "guardrails_tests.rs"]
mod tests;
