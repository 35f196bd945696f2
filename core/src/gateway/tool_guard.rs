//! Tool calls in a model's answer, checked against the caller's tool
//! policy, in the client's dialect (so every provider and every
//! translation is covered by one check), streaming or not.
//!
//! A denied call is refused (`on_denied_tool_call: refuse`: a 403, or an
//! error event ending the stream) or stripped (`strip`: removed; when no
//! call is left the answer finishes with `stop` and a note saying what was
//! removed). In a stream the check runs on the event that names the tool,
//! before its arguments: nothing of a denied call reaches the client.
//!
//! Built only for callers whose policies restrict tools; everyone else's
//! answers are not looked at.

use super::dialect::ClientDialect;
use crate::error::GatewayError;
use crate::record::{ToolCallRecord, ToolCallSource, ToolDecision};
use serde_json::{json, Map, Value};
use shardgate_policy::{
    Actor, DenyReason, OnDeniedToolCall, PolicySet, PromptLogging, ToolVerdict,
};
use shardgate_proto::chunked::{encode_chunk_header, next_chunk, CHUNK_END};
use shardgate_proto::sse::SseFramer;
use std::rc::Rc;

/// Events are at most this large here (they were framed before).
const MAX_EVENT: usize = 16 << 20;

pub struct ToolGuard {
    policies: Rc<PolicySet>,
    actor: Actor,
    mode: OnDeniedToolCall,
    client: ClientDialect,
    logging: PromptLogging,
    audit: shardgate_policy::EffectiveAudit,
    /// Where its records go (the audit log, metrics); `None` in tests.
    shard: Option<Rc<crate::shard::Shard>>,
    rid: String,
    /// Stream state: each call (OpenAI: tool call index; Anthropic:
    /// content block index) seen, and whether it was stripped.
    seen: Vec<(u64, bool)>,
    stripped: Vec<String>,
    /// Anthropic: the highest block index seen, for the note's block.
    last_block: Option<u64>,
    /// Responses: the `function_call` items judged in a stream, and those
    /// of them stripped.
    seen_ids: Vec<String>,
    stripped_ids: Vec<String>,
}

impl ToolGuard {
    /// A guard for `actor`'s answers, or `None` when no policy of theirs
    /// restricts tools.
    pub fn new(
        policies: Rc<PolicySet>,
        actor: &Actor,
        client: ClientDialect,
        rid: &str,
        shard: Option<Rc<crate::shard::Shard>>,
    ) -> Option<Self> {
        let resolved = policies.resolve(actor);
        if !resolved.has_tool_rules() {
            return None;
        }
        let mode = resolved.on_denied_tool_call();
        let audit = resolved.audit();
        let logging = audit.log_prompts;
        drop(resolved);
        Some(ToolGuard {
            policies,
            actor: actor.clone(),
            mode,
            client,
            logging,
            audit,
            shard,
            rid: rid.to_owned(),
            seen: Vec::new(),
            stripped: Vec::new(),
            last_block: None,
            seen_ids: Vec::new(),
            stripped_ids: Vec::new(),
        })
    }

    /// Decides on `name`, records the decision, and says whether it may
    /// stay (`Err` when it must be refused).
    fn judge(&mut self, name: &str, args: Option<&Value>) -> Result<bool, GatewayError> {
        let resolved = self.policies.resolve(&self.actor);
        let verdict = resolved.decide_tool_name(name);
        let decision = match (&verdict, self.mode) {
            (ToolVerdict::Allowed, _) => ToolDecision::Allowed,
            (ToolVerdict::Refused { policy, rule }, OnDeniedToolCall::Refuse) => {
                ToolDecision::Refused {
                    policy: (*policy).to_owned(),
                    rule: rule.describe(),
                }
            }
            (ToolVerdict::Refused { policy, rule }, OnDeniedToolCall::Strip) => {
                ToolDecision::Stripped {
                    policy: (*policy).to_owned(),
                    rule: rule.describe(),
                }
            }
        };
        let record = ToolCallRecord {
            rid: &self.rid,
            actor: Some(&self.actor),
            source: ToolCallSource::ModelAnswer,
            server: None,
            exposed: name,
            original: name,
            scope: None,
            decision: decision.clone(),
            latency: None,
            is_error: None,
            arguments: args,
            log_prompts: self.logging,
        };
        if let Some(shard) = &self.shard {
            record.emit(self.audit, shard);
        }
        match decision {
            ToolDecision::Allowed => Ok(true),
            ToolDecision::Stripped { .. } => {
                log::info!(
                    "{}: stripped a call to tool `{name}` from the answer: {verdict}",
                    self.rid
                );
                self.stripped.push(name.to_owned());
                Ok(false)
            }
            _ => {
                log::info!(
                    "{}: refused an answer calling tool `{name}`: {verdict}",
                    self.rid
                );
                Err(GatewayError::Policy(DenyReason::ToolDenied {
                    tool: name.to_owned(),
                }))
            }
        }
    }

    fn note(&self) -> String {
        let names: Vec<String> = self.stripped.iter().map(|n| format!("`{n}`")).collect();
        format!(
            "[shardgate: removed a call to tool {} that this key's policy does not allow]",
            names.join(", ")
        )
    }

    /// A whole answer in the client's dialect: `Ok(None)` when it stands
    /// as it is, `Ok(Some(body))` with denied calls stripped.
    pub fn check_body(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, GatewayError> {
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return Ok(None);
        };
        let changed = match self.client {
            ClientDialect::OpenAi => self.openai_body(&mut v)?,
            ClientDialect::Anthropic => self.anthropic_body(&mut v)?,
            ClientDialect::Responses => self.responses_output(&mut v)?,
        };
        Ok(changed.then(|| serde_json::to_vec(&v).unwrap_or_default()))
    }

    /// A `response` object's `output`: denied `function_call` items
    /// removed (judged here unless a stream already judged them, by id),
    /// and when no call is left, the note as a message of its own.
    fn responses_output(&mut self, v: &mut Value) -> Result<bool, GatewayError> {
        let Some(items) = v.get_mut("output").and_then(Value::as_array_mut) else {
            return Ok(false);
        };
        let mut changed = false;
        let mut kept = Vec::with_capacity(items.len());
        for item in items.drain(..) {
            if item.get("type").and_then(Value::as_str) != Some("function_call") {
                kept.push(item);
                continue;
            }
            let id = item.get("id").and_then(Value::as_str).unwrap_or("");
            let keep = if self.seen_ids.iter().any(|s| s == id) {
                !self.stripped_ids.iter().any(|s| s == id)
            } else {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let args = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .and_then(|a| serde_json::from_str::<Value>(a).ok());
                self.judge(&name, args.as_ref())?
            };
            if keep {
                kept.push(item);
            } else {
                changed = true;
            }
        }
        let calls_left = kept
            .iter()
            .any(|i| i.get("type").and_then(Value::as_str) == Some("function_call"));
        if changed && !calls_left {
            kept.push(json!({
                "type": "message", "id": "msg_shardgate_note", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": self.note(), "annotations": [], "logprobs": []}],
            }));
        }
        *items = kept;
        Ok(changed)
    }

    /// One Responses event: a `function_call` item is judged when it is
    /// added (before its arguments); a denied one's events are dropped, and
    /// it is left out of the final response.
    #[allow(clippy::type_complexity)]
    fn responses_event(
        &mut self,
        v: &mut Value,
    ) -> Result<Option<Vec<(Option<Vec<u8>>, Value)>>, GatewayError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if kind == "response.output_item.added"
            && v.pointer("/item/type").and_then(Value::as_str) == Some("function_call")
        {
            let id = v
                .pointer("/item/id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let name = v
                .pointer("/item/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let keep = self.judge(&name, None)?;
            self.seen_ids.push(id.clone());
            if !keep {
                self.stripped_ids.push(id);
                return Ok(Some(Vec::new()));
            }
            return Ok(None);
        }
        let item_id = v
            .get("item_id")
            .or_else(|| v.pointer("/item/id"))
            .and_then(Value::as_str);
        if item_id.is_some_and(|id| self.stripped_ids.iter().any(|s| s == id)) {
            return Ok(Some(Vec::new()));
        }
        if matches!(kind.as_str(), "response.completed" | "response.incomplete") {
            if let Some(r) = v.get_mut("response") {
                if self.responses_output(r)? {
                    return Ok(Some(vec![(None, v.take())]));
                }
            }
        }
        Ok(None)
    }

    fn openai_body(&mut self, v: &mut Value) -> Result<bool, GatewayError> {
        let mut changed = false;
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return Ok(false);
        };
        for choice in choices {
            let Some(msg) = choice.get_mut("message").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(calls) = msg.get_mut("tool_calls").and_then(Value::as_array_mut) else {
                continue;
            };
            let mut kept = Vec::with_capacity(calls.len());
            for call in calls.drain(..) {
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let args = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .and_then(|a| serde_json::from_str::<Value>(a).ok());
                if self.judge(&name, args.as_ref())? {
                    kept.push(call);
                } else {
                    changed = true;
                }
            }
            let none_left = kept.is_empty();
            *calls = kept;
            if changed && none_left {
                msg.remove("tool_calls");
                let text = msg
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let sep = if text.is_empty() { "" } else { "\n\n" };
                msg.insert(
                    "content".into(),
                    format!("{text}{sep}{}", self.note()).into(),
                );
                choice["finish_reason"] = "stop".into();
            }
        }
        Ok(changed)
    }

    fn anthropic_body(&mut self, v: &mut Value) -> Result<bool, GatewayError> {
        let Some(content) = v.get_mut("content").and_then(Value::as_array_mut) else {
            return Ok(false);
        };
        let mut changed = false;
        let mut kept = Vec::with_capacity(content.len());
        let mut tools_left = false;
        for block in content.drain(..) {
            if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if self.judge(&name, block.get("input"))? {
                    tools_left = true;
                    kept.push(block);
                } else {
                    changed = true;
                }
            } else {
                kept.push(block);
            }
        }
        if changed && !tools_left {
            kept.push(json!({"type": "text", "text": self.note()}));
        }
        *content = kept;
        if changed && !tools_left {
            v["stop_reason"] = "end_turn".into();
        }
        Ok(changed)
    }

    /// Filters the chunk-encoded client events in `out[from..]` (whole
    /// events, one or more per chunk, as the relay writes them). On a
    /// refusal, what came before the refused call is left in `out` and
    /// the error is returned for the caller to end the stream with.
    pub fn filter_stream(&mut self, out: &mut Vec<u8>, from: usize) -> Result<(), GatewayError> {
        each_event(out, from, |event, out| {
            match self.event(event)? {
                Some(kept) => {
                    for e in kept {
                        push(out, &e);
                    }
                }
                None => push(out, event),
            }
            Ok(())
        })
    }

    /// One event: `None` to pass it as it is, else what replaces it.
    fn event(&mut self, raw: &[u8]) -> Result<Option<Vec<Vec<u8>>>, GatewayError> {
        let (prefix, json) = split_event(raw);
        let interesting = match self.client {
            ClientDialect::OpenAi => contains(json, b"tool_calls"),
            ClientDialect::Anthropic => contains(json, b"\"index\"") || contains(json, b"tool_use"),
            ClientDialect::Responses => {
                contains(json, b"function_call")
                    || (!self.stripped_ids.is_empty() && contains(json, b"item_id"))
            }
        };
        if !interesting {
            return Ok(None);
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(json) else {
            return Ok(None);
        };
        let out = match self.client {
            ClientDialect::OpenAi => self.openai_event(&mut v)?,
            ClientDialect::Anthropic => self.anthropic_event(&mut v)?,
            ClientDialect::Responses => self.responses_event(&mut v)?,
        };
        Ok(out.map(|vals| {
            vals.into_iter()
                .map(|(pre, val)| {
                    let mut e = pre.unwrap_or_else(|| prefix.to_vec());
                    e.extend_from_slice(b"data: ");
                    e.extend_from_slice(&serde_json::to_vec(&val).unwrap_or_default());
                    e.extend_from_slice(b"\n\n");
                    e
                })
                .collect()
        }))
    }

    /// `None`: unchanged. Else the events (with their `event:` line when
    /// not the original's) that replace it.
    #[allow(clippy::type_complexity)]
    fn openai_event(
        &mut self,
        v: &mut Value,
    ) -> Result<Option<Vec<(Option<Vec<u8>>, Value)>>, GatewayError> {
        let mut changed = false;
        let mut note_before = false;
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return Ok(None);
        };
        for choice in choices.iter_mut() {
            if let Some(calls) = choice
                .pointer_mut("/delta/tool_calls")
                .and_then(Value::as_array_mut)
            {
                let mut kept = Vec::with_capacity(calls.len());
                for mut call in calls.drain(..) {
                    let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let known = self.seen.iter().find(|(i, _)| *i == index).map(|(_, s)| *s);
                    let stripped = match known {
                        Some(s) => s,
                        None => {
                            let name = call
                                .pointer("/function/name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned();
                            let keep = self.judge(&name, None)?;
                            self.seen.push((index, !keep));
                            !keep
                        }
                    };
                    if stripped {
                        changed = true;
                        continue;
                    }
                    // Kept calls are numbered without the stripped ones'
                    // gaps: SDKs index their accumulators by it.
                    let gaps = self.seen.iter().filter(|(i, s)| *s && *i < index).count() as u64;
                    if gaps > 0 {
                        call["index"] = (index - gaps).into();
                        changed = true;
                    }
                    kept.push(call);
                }
                if kept.is_empty() {
                    if let Some(d) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                        d.remove("tool_calls");
                    }
                } else {
                    *calls = kept;
                }
            }
            let stripped_all = !self.stripped.is_empty() && self.seen.iter().all(|(_, s)| *s);
            if stripped_all
                && choice.get("finish_reason").and_then(Value::as_str) == Some("tool_calls")
            {
                choice["finish_reason"] = "stop".into();
                note_before = true;
                changed = true;
            }
        }
        if !changed {
            return Ok(None);
        }
        let mut out = Vec::new();
        if note_before {
            let mut note = v.clone();
            if let Some(choices) = note.get_mut("choices").and_then(Value::as_array_mut) {
                for c in choices {
                    c["delta"] = json!({"content": self.note()});
                    c["finish_reason"] = Value::Null;
                }
            }
            if let Some(m) = note.as_object_mut() {
                m.remove("usage");
            }
            out.push((None, note));
        }
        // A chunk left with nothing to say is dropped.
        let empty = v
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                !cs.is_empty()
                    && cs.iter().all(|c| {
                        c.get("delta")
                            .and_then(Value::as_object)
                            .is_none_or(Map::is_empty)
                            && c.get("finish_reason").is_none_or(Value::is_null)
                    })
            });
        if !empty {
            out.push((None, v.take()));
        }
        Ok(Some(out))
    }

    #[allow(clippy::type_complexity)]
    fn anthropic_event(
        &mut self,
        v: &mut Value,
    ) -> Result<Option<Vec<(Option<Vec<u8>>, Value)>>, GatewayError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if let Some(index) = v.get("index").and_then(Value::as_u64) {
            self.last_block = Some(self.last_block.map_or(index, |l| l.max(index)));
            if kind == "content_block_start"
                && v.pointer("/content_block/type").and_then(Value::as_str) == Some("tool_use")
            {
                let name = v
                    .pointer("/content_block/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let keep = self.judge(&name, None)?;
                self.seen.push((index, !keep));
            }
            if self.seen.iter().any(|(i, s)| *s && *i == index) {
                return Ok(Some(Vec::new()));
            }
            let gaps = self.seen.iter().filter(|(i, s)| *s && *i < index).count() as u64;
            if gaps == 0 {
                return Ok(None);
            }
            v["index"] = (index - gaps).into();
            return Ok(Some(vec![(None, v.take())]));
        }
        let tools_left = self.seen.iter().any(|(_, s)| !*s);
        if kind == "message_delta"
            && !self.stripped.is_empty()
            && !tools_left
            && v.pointer("/delta/stop_reason").and_then(Value::as_str) == Some("tool_use")
        {
            v["delta"]["stop_reason"] = "end_turn".into();
            let gaps = self.seen.iter().filter(|(_, s)| *s).count() as u64;
            let index = self.last_block.map_or(0, |l| l + 1 - gaps);
            let ev = |name: &str| Some(format!("event: {name}\n").into_bytes());
            return Ok(Some(vec![
                (
                    ev("content_block_start"),
                    json!({"type":"content_block_start","index":index,"content_block":{"type":"text","text":""}}),
                ),
                (
                    ev("content_block_delta"),
                    json!({"type":"content_block_delta","index":index,"delta":{"type":"text_delta","text": self.note()}}),
                ),
                (
                    ev("content_block_stop"),
                    json!({"type":"content_block_stop","index":index}),
                ),
                (None, v.take()),
            ]));
        }
        Ok(None)
    }
}

/// Walks the chunk-encoded client events in `out[from..]` (whole events,
/// one or more per chunk, as the relay writes them), handing each to
/// `f`, which writes what replaces it (see [`push`]). On an error, what
/// came before the event is left in `out` and the error is returned for
/// the caller to end the stream with. The last chunk, and anything that is
/// not a chunk, passes as it is.
pub(crate) fn each_event(
    out: &mut Vec<u8>,
    from: usize,
    mut f: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), GatewayError>,
) -> Result<(), GatewayError> {
    let tail = out.split_off(from);
    let mut at = 0;
    while at < tail.len() {
        let Some((data, next, last)) = next_chunk(&tail, at) else {
            out.extend_from_slice(&tail[at..]);
            return Ok(());
        };
        if last {
            out.extend_from_slice(&tail[at..]);
            return Ok(());
        }
        at = next;
        let mut framer = SseFramer::new(MAX_EVENT);
        let mut events: Vec<Vec<u8>> = Vec::new();
        let _ = framer.feed(data, |e| events.push(e.raw.to_vec()));
        if let Some(rest) = framer.finish() {
            events.push(rest.to_vec());
        }
        for event in events {
            f(&event, out)?;
        }
    }
    Ok(())
}

/// Splits an event into its lines before `data:` (its `event:` line) and
/// its data's JSON (a single-line `data:` field, as every dialect writes).
pub(crate) fn split_event(raw: &[u8]) -> (&[u8], &[u8]) {
    let Some(at) = find(raw, b"data:") else {
        return (raw, &[]);
    };
    let prefix = &raw[..at];
    let mut rest = &raw[at + 5..];
    if rest.first() == Some(&b' ') {
        rest = &rest[1..];
    }
    let end = rest
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(rest.len());
    (prefix, &rest[..end])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Writes `event` as one chunk (nothing for an empty one).
pub(crate) fn push(out: &mut Vec<u8>, event: &[u8]) {
    if event.is_empty() {
        return;
    }
    encode_chunk_header(event.len(), out);
    out.extend_from_slice(event);
    out.extend_from_slice(CHUNK_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_policy::PolicyEntry;

    fn guard(mode: &str, client: ClientDialect) -> ToolGuard {
        let yaml = format!(
            "- ai_runtime_policy: {{ name: p, actor_scope: {{}}, tools: {{ denied: ['delete_*'], on_denied_tool_call: {mode} }} }}"
        );
        let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(&yaml).unwrap();
        let set = Rc::new(PolicySet::compile(&entries).unwrap());
        let actor = Actor::new(shardgate_policy::ActorFields {
            key_id: "k".into(),
            team: None,
            tenant: None,
            app: None,
            environment: None,
        });
        ToolGuard::new(set, &actor, client, "r1", None).unwrap()
    }

    fn chunked(events: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            push(&mut out, e.as_bytes());
        }
        out
    }

    fn events(out: &[u8]) -> Vec<Value> {
        let mut at = 0;
        let mut all = Vec::new();
        while let Some((data, next, last)) = next_chunk(out, at) {
            if last {
                break;
            }
            let (_, json) = split_event(data);
            all.push(serde_json::from_slice(json).unwrap());
            at = next;
        }
        all
    }

    #[test]
    fn a_stripped_call_leaves_no_gap_in_the_kept_calls_indexes() {
        let mut g = guard("strip", ClientDialect::OpenAi);
        let mut out = chunked(&[
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"delete_all","arguments":""}}]}}]}

"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"search","arguments":""}}]}}]}

"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}

"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}

"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

"#,
        ]);
        g.filter_stream(&mut out, 0).unwrap();
        let ev = events(&out);
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert_eq!(ev[0]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(ev[0]["choices"][0]["delta"]["tool_calls"][0]["id"], "b");
        assert_eq!(ev[1]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        // A call is left, so the answer still finishes with tool_calls.
        assert_eq!(ev[2]["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn refusing_keeps_what_came_before_the_call() {
        let mut g = guard("refuse", ClientDialect::OpenAi);
        let mut out = chunked(&[
            r#"data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}

"#,
            r#"data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"delete_all","arguments":""}}]}}]}

"#,
        ]);
        let err = g.filter_stream(&mut out, 0).unwrap_err();
        assert!(matches!(
            err,
            GatewayError::Policy(DenyReason::ToolDenied { .. })
        ));
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["choices"][0]["delta"]["content"], "hi");
    }
}
