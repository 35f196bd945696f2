//! Between a whole `chat.completion` and its stream, for answers the
//! gateway replays (its response cache): a stream read back into the whole
//! answer it spells ([`Assembler`]), and a whole answer unrolled into a
//! stream ([`unroll`]).
//!
//! Both sides are OpenAI chat, the form every dialect's answers pass
//! through ([`crate::chat`]): an answer kept in it can be replayed to any
//! client, whole or streamed, by the same egress that translates live
//! answers. Only single-choice answers are kept (`n` > 1 is never cached).

use crate::chat::{
    ChatChunk, ChatResponse, ChatUsage, Choice, ChunkWriter, FunctionCall, ReplyCtx,
    ResponseMessage, Role, ToolCall,
};
use crate::Usage;
use serde_json::Value;
use shardgate_proto::sse::SseFramer;

/// Reads a `chat.completion.chunk` stream (SSE bytes, split anywhere) into
/// the whole answer it spells. Anything it cannot follow (a second choice,
/// an in-stream error, text past its bound, a stream without its end) makes
/// it give up: [`Assembler::finish`] then returns `None`, never a partial
/// answer.
#[derive(Debug)]
pub struct Assembler {
    framer: SseFramer,
    id: String,
    model: String,
    created: u64,
    text: String,
    calls: Vec<ToolCall>,
    finish: Option<String>,
    usage: Option<ChatUsage>,
    done: bool,
    broken: bool,
    /// The most text and argument bytes it keeps.
    max_bytes: usize,
}

impl Assembler {
    /// `max_bytes` bounds what it keeps: a longer answer is given up on.
    pub fn new(max_bytes: usize) -> Self {
        Assembler {
            framer: SseFramer::new(max_bytes.max(64 * 1024)),
            id: String::new(),
            model: String::new(),
            created: 0,
            text: String::new(),
            calls: Vec::new(),
            finish: None,
            usage: None,
            done: false,
            broken: false,
            max_bytes,
        }
    }

    /// Feeds stream bytes, however the network split them.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        let mut events = Vec::new();
        let fed = self.framer.feed(bytes, |e| {
            if e.is_done() {
                events.push(None);
            } else if !e.is_comment_only() {
                events.push(Some(e.data().into_owned()));
            }
        });
        if fed.is_err() {
            self.broken = true;
            return;
        }
        for e in events {
            match e {
                None => self.done = true,
                Some(data) => self.chunk(&data),
            }
        }
    }

    fn chunk(&mut self, data: &[u8]) {
        let Ok(raw) = serde_json::from_slice::<Value>(data) else {
            self.broken = true;
            return;
        };
        if !followed(&raw) {
            self.broken = true;
            return;
        }
        let Ok(c) = serde_json::from_value::<ChatChunk>(raw) else {
            self.broken = true;
            return;
        };
        if c.error.is_some() || c.choices.iter().any(|ch| ch.index != 0) {
            self.broken = true;
            return;
        }
        if self.id.is_empty() {
            self.id = c.id;
            self.model = c.model;
            self.created = c.created;
        }
        if c.usage.is_some() {
            self.usage = c.usage;
        }
        for choice in c.choices {
            if let Some(t) = choice.delta.content {
                self.text.push_str(&t);
            }
            for d in choice.delta.tool_calls.unwrap_or_default() {
                let i = d.index as usize;
                if i > self.calls.len() || i > 128 {
                    self.broken = true;
                    return;
                }
                if i == self.calls.len() {
                    self.calls.push(ToolCall {
                        id: String::new(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    });
                }
                let call = &mut self.calls[i];
                if let Some(id) = d.id {
                    call.id = id;
                }
                if let Some(f) = d.function {
                    if let Some(n) = f.name {
                        call.function.name.push_str(&n);
                    }
                    if let Some(a) = f.arguments {
                        call.function.arguments.push_str(&a);
                    }
                }
            }
            if choice.finish_reason.is_some() {
                self.finish = choice.finish_reason;
            }
        }
        let kept = self.text.len()
            + self
                .calls
                .iter()
                .map(|c| c.id.len() + c.function.name.len() + c.function.arguments.len())
                .sum::<usize>();
        if kept > self.max_bytes {
            self.broken = true;
        }
    }

    /// What was fed cannot be followed (its translation failed): no answer.
    pub fn give_up(&mut self) {
        self.broken = true;
    }

    /// The whole answer, when the stream ended properly (a finish reason
    /// and `[DONE]`) and every event was followed.
    pub fn finish(self) -> Option<ChatResponse> {
        if self.broken || !self.done {
            return None;
        }
        let finish = self.finish?;
        let has_text = !self.text.is_empty();
        Some(ChatResponse {
            id: self.id,
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model,
            choices: vec![Choice::assistant(
                0, self.text, has_text, self.calls, &finish,
            )],
            usage: self.usage,
        })
    }
}

/// Whether every part of a chunk's choices is one the assembled answer
/// keeps: a refusal, log probabilities, reasoning or audio deltas would be
/// lost, so a stream with any is not assembled at all.
fn followed(chunk: &Value) -> bool {
    let Some(choices) = chunk.get("choices") else {
        return true;
    };
    let Some(choices) = choices.as_array() else {
        return choices.is_null();
    };
    choices.iter().all(|c| {
        let Some(c) = c.as_object() else {
            return false;
        };
        c.iter().all(|(k, v)| match k.as_str() {
            "index" | "finish_reason" => true,
            "logprobs" => v.is_null(),
            "delta" => v.as_object().is_some_and(|d| {
                d.iter().all(|(k, v)| match k.as_str() {
                    "role" | "content" | "tool_calls" => true,
                    _ => v.is_null(),
                })
            }),
            _ => v.is_null(),
        })
    })
}

/// A whole answer as a stream: the role, its text in one delta, each tool
/// call whole, the finish reason, the usage chunk (always: the relay meters
/// from it and withholds it from clients that did not ask) and `[DONE]`.
/// `ctx` names the stream (id, model, time).
pub fn unroll(answer: &ChatResponse, ctx: &ReplyCtx) -> Vec<u8> {
    let w = ChunkWriter::new(ctx);
    let mut out = Vec::with_capacity(512);
    w.role(&mut out);
    let mut finish = "stop";
    if let Some(choice) = answer.choices.first() {
        let m: &ResponseMessage = &choice.message;
        if let Some(text) = m.content.as_deref().filter(|t| !t.is_empty()) {
            w.content(&mut out, text);
        }
        for (i, call) in m.tool_calls.iter().flatten().enumerate() {
            let start = Some((call.id.as_str(), call.function.name.as_str()));
            w.tool_call(&mut out, i as u32, start, &call.function.arguments);
        }
        if let Some(r) = choice.finish_reason.as_deref() {
            finish = r;
        }
    }
    w.finish(&mut out, finish);
    let usage: Usage = answer.usage.map(|u| u.to_usage()).unwrap_or_default();
    w.usage(&mut out, &usage);
    ChunkWriter::done(&mut out);
    out
}

/// Whether [`unroll`] keeps all of `answer`: one assistant choice, with
/// no refusal or log probabilities (which it does not stream).
pub fn replayable(answer: &ChatResponse) -> bool {
    match answer.choices.as_slice() {
        [c] => {
            c.message.role == Role::Assistant
                && c.message.refusal.is_none()
                && c.logprobs.as_ref().is_none_or(Value::is_null)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_proto::testing::for_each_split;

    fn ctx() -> ReplyCtx {
        ReplyCtx {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 7,
            include_usage: true,
        }
    }

    fn answer(text: Option<&str>, calls: Vec<ToolCall>, finish: &str) -> ChatResponse {
        let has_text = text.is_some();
        ChatResponse {
            id: "chatcmpl-1".into(),
            object: "chat.completion".into(),
            created: 7,
            model: "m".into(),
            choices: vec![Choice::assistant(
                0,
                text.unwrap_or_default().to_owned(),
                has_text,
                calls,
                finish,
            )],
            usage: Some(ChatUsage {
                prompt_tokens: 11,
                completion_tokens: 3,
                total_tokens: 14,
                ..ChatUsage::default()
            }),
        }
    }

    #[test]
    fn an_unrolled_answer_assembles_back_into_itself_over_every_split() {
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup".into(),
                arguments: r#"{"q":"a \"b\""}"#.into(),
            },
        };
        for a in [
            answer(Some("héllo\nworld"), vec![], "stop"),
            answer(None, vec![call.clone()], "tool_calls"),
            answer(Some("both"), vec![call], "tool_calls"),
        ] {
            let stream = unroll(&a, &ctx());
            for_each_split(&stream, |parts| {
                let mut asm = Assembler::new(1 << 20);
                for p in parts {
                    asm.feed(p);
                }
                assert_eq!(asm.finish().as_ref(), Some(&a));
            });
        }
    }

    #[test]
    fn a_stream_without_its_end_or_with_an_error_gives_nothing() {
        let a = answer(Some("hi"), vec![], "stop");
        let stream = unroll(&a, &ctx());
        let cut = &stream[..stream.len() - b"data: [DONE]\n\n".len()];
        let mut asm = Assembler::new(1 << 20);
        asm.feed(cut);
        assert_eq!(asm.finish(), None);

        let mut asm = Assembler::new(1 << 20);
        asm.feed(b"data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n");
        assert_eq!(asm.finish(), None);
    }

    #[test]
    fn text_past_the_bound_is_given_up_on() {
        let a = answer(Some(&"x".repeat(100)), vec![], "stop");
        let mut asm = Assembler::new(50);
        asm.feed(&unroll(&a, &ctx()));
        assert_eq!(asm.finish(), None);
    }

    #[test]
    fn a_stream_with_parts_the_answer_would_lose_is_not_assembled() {
        for chunk in [
            r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
        ] {
            let mut asm = Assembler::new(1 << 20);
            asm.feed(format!("data: {chunk}\n\n").as_bytes());
            asm.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
            assert_eq!(asm.finish(), None, "{chunk}");
        }
        // Nulls and top-level extras are fine.
        let mut asm = Assembler::new(1 << 20);
        asm.feed(b"data: {\"system_fingerprint\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        assert!(asm.finish().is_some());
        let mut refused = answer(Some("x"), vec![], "stop");
        refused.choices[0].message.refusal = Some("no".into());
        assert!(!replayable(&refused));
        assert!(replayable(&answer(Some("x"), vec![], "stop")));
    }

    #[test]
    fn a_second_choice_is_not_followed() {
        let mut asm = Assembler::new(1 << 20);
        asm.feed(b"data: {\"id\":\"x\",\"model\":\"m\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        assert_eq!(asm.finish(), None);
    }
}
