//! `tool_calls` checks on a streamed answer: each call's arguments are
//! held back while they stream and judged whole when the call ends, then
//! sent in one delta (as they were, or redacted), or the stream ends with
//! the refusal before any of them. The rest of the stream passes as it
//! comes. In the client's dialect, like the tool policy's filter
//! ([`crate::gateway::tool_guard`]):
//!
//! - OpenAI chat: `delta.tool_calls[].function.arguments` fragments; a
//!   call ends when another starts, at a `finish_reason` or at `[DONE]`.
//! - Anthropic: `input_json_delta` of a `tool_use` block; it ends at the
//!   block's `content_block_stop`.
//! - Responses: `response.function_call_arguments.delta`; it ends at
//!   `response.function_call_arguments.done`, whose `arguments` (and the
//!   item's in `response.output_item.done` and `response.completed`) are
//!   replaced by what was sent.

use super::{check_arguments, GuardRecord};
use crate::error::GatewayError;
use crate::gateway::tool_guard::{each_event, push, split_event};
use crate::gateway::ClientDialect;
use serde_json::{json, Value};
use shardgate_policy::guardrails::Guardrails;

/// One call whose arguments are held.
struct Held {
    /// OpenAI: the choice and the tool call index; Anthropic: 0 and the
    /// block index.
    key: (u64, u64),
    /// Responses: the item's id.
    item: String,
    args: String,
}

pub struct ToolArgs {
    checks: Vec<usize>,
    client: ClientDialect,
    held: Vec<Held>,
    /// Anthropic: the blocks that are tool calls.
    tool_blocks: Vec<u64>,
    /// OpenAI: the chunk fields every synthesized chunk repeats (id,
    /// object, created, model).
    chunk_head: Option<serde_json::Map<String, Value>>,
    /// Responses: each judged item's arguments as sent.
    sent: Vec<(String, String)>,
    pub records: Vec<GuardRecord>,
}

/// Arguments held for one call at most: a call whose arguments pass it
/// is refused (they cannot be judged whole).
const MAX_HELD: usize = 1 << 20;

impl ToolArgs {
    pub fn new(checks: Vec<usize>, client: ClientDialect) -> Self {
        ToolArgs {
            checks,
            client,
            held: Vec::new(),
            tool_blocks: Vec::new(),
            chunk_head: None,
            sent: Vec::new(),
            records: Vec::new(),
        }
    }

    /// Filters the chunk-encoded events in `out` (see `each_event`).
    pub fn filter(&mut self, rails: &Guardrails, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        each_event(out, 0, |event, out| self.event(rails, event, out))
    }

    fn event(
        &mut self,
        rails: &Guardrails,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let (prefix, json) = split_event(raw);
        match self.client {
            ClientDialect::OpenAi => self.openai(rails, prefix, json, raw, out),
            ClientDialect::Anthropic => self.anthropic(rails, json, raw, out),
            ClientDialect::Responses => self.responses(rails, prefix, json, raw, out),
        }
    }

    /// Judges `args`: what to send instead, or the refusal.
    fn judge(&mut self, rails: &Guardrails, args: String) -> Result<String, GatewayError> {
        let mut v = Value::String(args);
        check_arguments(rails, &self.checks, &mut v, &mut self.records)?;
        Ok(match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    /// Holds `fragment` of a call's arguments; a call past [`MAX_HELD`]
    /// is refused.
    fn hold(
        &mut self,
        rails: &Guardrails,
        key: (u64, u64),
        item: &str,
        fragment: &str,
    ) -> Result<(), GatewayError> {
        let pos = self
            .held
            .iter()
            .position(|h| h.key == key && h.item == item);
        let i = match pos {
            Some(i) => i,
            None => {
                self.held.push(Held {
                    key,
                    item: item.to_owned(),
                    args: String::new(),
                });
                self.held.len() - 1
            }
        };
        if self.held[i].args.len() + fragment.len() > MAX_HELD {
            return Err(GatewayError::Guardrail {
                check: self
                    .checks
                    .first()
                    .map_or_else(String::new, |&c| rails.check(c).name.clone()),
                stage: "answer",
                found: "tool call arguments too long to check",
            });
        }
        self.held[i].args.push_str(fragment);
        Ok(())
    }

    fn take(&mut self, pick: impl Fn(&Held) -> bool) -> Vec<Held> {
        let (taken, kept) = std::mem::take(&mut self.held).into_iter().partition(pick);
        self.held = kept;
        taken
    }

    fn openai(
        &mut self,
        rails: &Guardrails,
        prefix: &[u8],
        json: &[u8],
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let done = json == b"[DONE]";
        let mentions = memchr::memmem::find(json, b"tool_calls").is_some()
            || memchr::memmem::find(json, b"finish_reason\":\"").is_some()
            || memchr::memmem::find(json, b"finish_reason\": \"").is_some();
        if !done && !mentions {
            push(out, raw);
            return Ok(());
        }
        let mut v: Value = if done {
            Value::Null
        } else {
            match serde_json::from_slice(json) {
                Ok(v) => v,
                Err(_) => {
                    push(out, raw);
                    return Ok(());
                }
            }
        };
        if self.chunk_head.is_none() {
            if let Some(m) = v.as_object() {
                let head = m
                    .iter()
                    .filter(|(k, _)| matches!(k.as_str(), "id" | "object" | "created" | "model"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.chunk_head = Some(head);
            }
        }
        // This chunk's fragments are held first: a call may come whole in
        // the chunk that also finishes it.
        let mut changed = false;
        let mut fragments = Vec::new();
        let mut finishing = Vec::new();
        let mut starting = Vec::new();
        for choice in v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let c = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                finishing.push(c);
            }
            let Some(calls) = choice
                .pointer_mut("/delta/tool_calls")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            calls.retain_mut(|call| {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let starts = call.get("id").is_some_and(|i| !i.is_null())
                    || call.pointer("/function/name").is_some_and(|n| !n.is_null());
                if starts {
                    starting.push((c, index));
                }
                let Some(args) = call.pointer_mut("/function/arguments") else {
                    return true;
                };
                let fragment = args.as_str().unwrap_or_default().to_owned();
                if fragment.is_empty() {
                    return true;
                }
                changed = true;
                fragments.push((c, index, fragment));
                *args = Value::String(String::new());
                // A pure fragment goes; a call's start stays, its
                // arguments emptied.
                starts
            });
        }
        for (c, index, fragment) in fragments {
            self.hold(rails, (c, index), "", &fragment)?;
        }
        // Calls end at their choice's finish, at `[DONE]`, or when another
        // call of their choice starts: judged, they go out before this chunk.
        let ended = self.take(|h| {
            done || finishing.contains(&h.key.0)
                || starting.iter().any(|&(c, i)| c == h.key.0 && i != h.key.1)
        });
        for h in ended {
            let args = self.judge(rails, h.args)?;
            if starting.contains(&h.key) {
                // Started in this chunk too: its arguments go in its start,
                // after its id and name as clients expect.
                set_arguments(&mut v, h.key, args);
                continue;
            }
            let mut chunk = self.chunk_head.clone().unwrap_or_default();
            chunk.insert(
                "choices".into(),
                json!([{"index": h.key.0, "delta": {"tool_calls": [
                    {"index": h.key.1, "function": {"arguments": args}}
                ]}, "finish_reason": null}]),
            );
            push(out, &event(b"", &Value::Object(chunk)));
        }
        if done || !changed {
            push(out, raw);
            return Ok(());
        }
        let empty = finishing.is_empty()
            && v.get("usage").is_none_or(Value::is_null)
            && v.get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .all(|choice| {
                    choice
                        .get("delta")
                        .and_then(Value::as_object)
                        .is_none_or(|d| {
                            d.iter().all(|(k, x)| {
                                x.is_null()
                                    || (k == "tool_calls"
                                        && x.as_array().is_some_and(Vec::is_empty))
                            })
                        })
                });
        if !empty {
            push(out, &event(prefix, &v));
        }
        Ok(())
    }

    fn anthropic(
        &mut self,
        rails: &Guardrails,
        json: &[u8],
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let is = |needle: &[u8]| memchr::memmem::find(json, needle).is_some();
        let start = is(b"content_block_start") && is(b"tool_use");
        let delta = is(b"input_json_delta");
        let stop = is(b"content_block_stop") && !self.tool_blocks.is_empty();
        if !(start || delta || stop) {
            push(out, raw);
            return Ok(());
        }
        let Ok(v) = serde_json::from_slice::<Value>(json) else {
            push(out, raw);
            return Ok(());
        };
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("content_block_start")
                if v.pointer("/content_block/type").and_then(Value::as_str) == Some("tool_use") =>
            {
                self.tool_blocks.push(index);
                push(out, raw);
            }
            Some("content_block_delta") if self.tool_blocks.contains(&index) => {
                let fragment = v
                    .pointer("/delta/partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.hold(rails, (0, index), "", fragment)?;
            }
            Some("content_block_stop") if self.tool_blocks.contains(&index) => {
                for h in self.take(|h| h.key == (0, index)) {
                    let args = self.judge(rails, h.args)?;
                    let d = json!({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": args}});
                    push(out, &event(b"event: content_block_delta\n", &d));
                }
                self.tool_blocks.retain(|&b| b != index);
                push(out, raw);
            }
            _ => push(out, raw),
        }
        Ok(())
    }

    /// A streamed Responses turn about to be stored: its function calls'
    /// arguments as they were sent.
    pub fn patch_response(&self, response: &mut Value) {
        let Some(items) = response.get_mut("output").and_then(Value::as_array_mut) else {
            return;
        };
        for it in items {
            let id = it.get("id").and_then(Value::as_str).unwrap_or_default();
            if let Some((_, a)) = self.sent.iter().find(|(i, _)| i == id) {
                it["arguments"] = a.clone().into();
            }
        }
    }

    fn responses(
        &mut self,
        rails: &Guardrails,
        prefix: &[u8],
        json: &[u8],
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let is = |needle: &[u8]| memchr::memmem::find(json, needle).is_some();
        if !(is(b"function_call_arguments") || (is(b"function_call") && !self.sent.is_empty())) {
            push(out, raw);
            return Ok(());
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(json) else {
            push(out, raw);
            return Ok(());
        };
        let item = v
            .get("item_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match v.get("type").and_then(Value::as_str) {
            Some("response.function_call_arguments.delta") => {
                let fragment = v.get("delta").and_then(Value::as_str).unwrap_or_default();
                self.hold(rails, (0, 0), &item, fragment)?;
            }
            Some("response.function_call_arguments.done") => {
                self.take(|h| h.item == item);
                let whole = v
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let args = self.judge(rails, whole)?;
                let mut d = v.clone();
                if let Some(m) = d.as_object_mut() {
                    m.insert(
                        "type".into(),
                        "response.function_call_arguments.delta".into(),
                    );
                    m.remove("arguments");
                    m.insert("delta".into(), args.clone().into());
                }
                push(
                    out,
                    &event(b"event: response.function_call_arguments.delta\n", &d),
                );
                v["arguments"] = args.clone().into();
                self.sent.push((item, args));
                push(out, &event(prefix, &v));
            }
            _ => {
                // Items that carry arguments already judged get what was
                // sent.
                let mut changed = false;
                let mut fix = |it: &mut Value| {
                    let id = it.get("id").and_then(Value::as_str).unwrap_or_default();
                    if let Some((_, a)) = self.sent.iter().find(|(i, _)| i == id) {
                        if it.get("arguments").and_then(Value::as_str) != Some(a) {
                            it["arguments"] = a.clone().into();
                            changed = true;
                        }
                    }
                };
                if let Some(it) = v.get_mut("item") {
                    fix(it);
                }
                if let Some(items) = v
                    .pointer_mut("/response/output")
                    .and_then(Value::as_array_mut)
                {
                    items.iter_mut().for_each(&mut fix);
                }
                if changed {
                    push(out, &event(prefix, &v));
                } else {
                    push(out, raw);
                }
            }
        }
        Ok(())
    }
}

/// Sets the arguments of call `(choice, index)` in an OpenAI chunk.
fn set_arguments(chunk: &mut Value, (choice, index): (u64, u64), args: String) {
    let calls = chunk
        .get_mut("choices")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == choice)
        .filter_map(|c| {
            c.pointer_mut("/delta/tool_calls")
                .and_then(Value::as_array_mut)
        })
        .flatten();
    for call in calls {
        if call.get("index").and_then(Value::as_u64).unwrap_or(0) == index {
            call["function"]["arguments"] = args.into();
            return;
        }
    }
}

/// An SSE event: its `event:` line (if any), then `data:`.
fn event(prefix: &[u8], v: &Value) -> Vec<u8> {
    let mut e = prefix.to_vec();
    e.extend_from_slice(b"data: ");
    e.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    e.extend_from_slice(b"\n\n");
    e
}
