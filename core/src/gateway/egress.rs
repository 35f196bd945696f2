//! The client's side of a reply: everything the gateway answers is produced
//! in OpenAI's shape (by the upstream, a translator or the mock) and leaves
//! here, as a stream, in the dialect the client spoke (each dialect's
//! rendering is its own, in [`super::dialect`]). For OpenAI clients that is
//! the identity, so OpenAI streams stay zero-copy.

use super::dialect::{ClientDialect, Render};
use crate::error::GatewayError;
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_providers::{KnownSecrets, StreamTranslator, Summary, TranslateError};

/// Turns a stream of OpenAI SSE bytes into the client's stream, one HTTP
/// chunk per call.
pub struct StreamEgress {
    dialect: ClientDialect,
    to_client: Option<StreamTranslator>,
    scratch: Vec<u8>,
}

impl StreamEgress {
    /// Events reach the client as they are (the upstream, translator or mock
    /// already speaks the client's dialect).
    pub fn identity(dialect: ClientDialect) -> Self {
        Self::new(dialect, None)
    }

    /// OpenAI events in, events of `dialect` out (as its
    /// [`Dialect::stream_from_openai`](super::dialect::Dialect) makes them);
    /// error events translated on the way are redacted of `known`, the
    /// credentials of the upstream the events come from.
    pub fn from_openai(dialect: ClientDialect, to: &Render<'_>, known: &KnownSecrets) -> Self {
        Self::new(dialect, dialect.rules().stream_from_openai(to, known))
    }

    fn new(dialect: ClientDialect, to_client: Option<StreamTranslator>) -> Self {
        Self {
            dialect,
            to_client,
            scratch: Vec::new(),
        }
    }

    /// True when events reach the client unchanged.
    pub fn is_identity(&self) -> bool {
        self.to_client.is_none()
    }

    /// Ends the client's stream with an error event in its dialect and the
    /// last chunk: the stream ends with a word about why, never a silent cut.
    pub fn fail(self, err: &GatewayError, out: &mut Vec<u8>) {
        let mut event = Vec::with_capacity(256);
        self.dialect.rules().error_event(err, &mut event);
        push_chunk(out, &event);
        out.extend_from_slice(LAST_CHUNK);
    }

    /// Appends `sse` (whole events, or any bytes when translating) to `out`
    /// as one chunk in the client's dialect; nothing when it translates to
    /// nothing.
    pub fn push(&mut self, openai_sse: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        match &mut self.to_client {
            None => {
                push_chunk(out, openai_sse);
                Ok(())
            }
            Some(t) => {
                self.scratch.clear();
                let r = t.on_bytes(openai_sse, &mut self.scratch);
                push_chunk(out, &self.scratch);
                r
            }
        }
    }

    /// The client-side translator's summary of a stream that ends early,
    /// its closing events dropped (an error event follows instead).
    pub fn abandon(&mut self) -> Option<Summary> {
        self.to_client.take().map(|t| t.finish(&mut Vec::new()))
    }

    /// [`StreamEgress::finish`], and a Responses stream's final `response`
    /// object (what a stored turn keeps).
    pub fn finish_with_response(
        mut self,
        out: &mut Vec<u8>,
    ) -> (Option<Summary>, Option<serde_json::Value>) {
        if let Some(StreamTranslator::ChatToResponses(t)) = &mut self.to_client {
            let mut tail = Vec::new();
            t.close_stream(&mut tail);
            push_chunk(out, &tail);
            let summary = t.summary();
            let response = t.final_response().cloned();
            out.extend_from_slice(LAST_CHUNK);
            return (Some(summary), response);
        }
        (self.finish(out), None)
    }

    /// Ends the client's stream (the translator's closing events, then the
    /// last chunk). `summary` is the upstream side's, when there was a
    /// translator there; this side's is used otherwise.
    pub fn finish(self, out: &mut Vec<u8>) -> Option<Summary> {
        let summary = self.to_client.map(|t| {
            let mut tail = Vec::new();
            let s = t.finish(&mut tail);
            push_chunk(out, &tail);
            s
        });
        out.extend_from_slice(LAST_CHUNK);
        summary
    }
}

/// Appends `data` as one HTTP chunk (nothing for empty data: an empty chunk
/// would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    encode_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    const COMPLETION: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"length"}],
        "usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;

    fn render() -> Render<'static> {
        Render {
            rid: "r-1",
            request: b"{}",
            model: "claude-sonnet-4",
            include_usage: true,
        }
    }

    fn to_anthropic_egress(known: &KnownSecrets) -> StreamEgress {
        StreamEgress::from_openai(ClientDialect::Anthropic, &render(), known)
    }

    /// The payloads of the HTTP chunks in `out`, checking each chunk's
    /// framing on the way; the last chunk ends the list.
    fn chunks(mut out: &[u8]) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        loop {
            let line_end = out.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&out[..line_end]).unwrap(), 16).unwrap();
            out = &out[line_end + 2..];
            if size == 0 {
                assert_eq!(out, b"\r\n", "nothing after the last chunk");
                return payloads;
            }
            payloads.push(out[..size].to_vec());
            assert_eq!(&out[size..size + 2], b"\r\n");
            out = &out[size + 2..];
        }
    }

    /// The `data:` JSON of each SSE event in `sse`.
    fn event_data(sse: &[u8]) -> Vec<Value> {
        std::str::from_utf8(sse)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn an_openai_client_gets_the_body_as_it_came() {
        let body = b"{ \"not\": \"even re-read\" }".to_vec();
        assert_eq!(
            ClientDialect::OpenAi
                .rules()
                .success_body(body.clone(), &render())
                .unwrap(),
            body
        );
    }

    #[test]
    fn an_anthropic_client_gets_a_messages_body() {
        let out = ClientDialect::Anthropic
            .rules()
            .success_body(COMPLETION.to_vec(), &render())
            .unwrap();
        let v = json(&out);
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(v["content"][0]["text"], "Hi there");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"]["input_tokens"], 9);
        assert_eq!(v["usage"]["output_tokens"], 2);
    }

    #[test]
    fn a_body_that_is_not_a_chat_completion_cannot_become_a_message() {
        let r = ClientDialect::Anthropic
            .rules()
            .success_body(b"<html>502</html>".to_vec(), &render());
        assert!(matches!(r, Err(TranslateError::UpstreamJson(_))), "{r:?}");
    }

    #[test]
    fn error_bodies_take_the_clients_shape_and_keep_the_message() {
        let err = GatewayError::ModelNotFound("nope".into());
        let openai = json(&ClientDialect::OpenAi.error_body(&err));
        assert_eq!(openai["error"]["code"], "model_not_found");
        let anthropic = json(&ClientDialect::Anthropic.error_body(&err));
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "not_found_error");
        assert_eq!(anthropic["error"]["message"], openai["error"]["message"]);
        let timeout = GatewayError::UpstreamTimeout {
            provider: "p".into(),
        };
        let v = json(&ClientDialect::Anthropic.error_body(&timeout));
        assert_eq!(v["error"]["type"], "api_error", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("`p`"));
    }

    #[test]
    fn identity_egress_puts_each_push_in_one_chunk_as_it_came() {
        let mut e = StreamEgress::identity(ClientDialect::Anthropic);
        assert!(e.is_identity());
        let mut out = Vec::new();
        let event = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";
        e.push(event, &mut out).unwrap();
        e.push(b"", &mut out).unwrap();
        e.push(b"data: x\n\n", &mut out).unwrap();
        assert_eq!(e.abandon(), None, "no translator, no summary");
        assert_eq!(e.finish(&mut out), None);
        assert_eq!(chunks(&out), vec![event.to_vec(), b"data: x\n\n".to_vec()]);
    }

    #[test]
    fn openai_events_for_an_openai_client_are_not_translated() {
        let e = StreamEgress::from_openai(ClientDialect::OpenAi, &render(), &KnownSecrets::none());
        assert!(e.is_identity());
    }

    /// An OpenAI stream: role, two text deltas, the finish, usage, `[DONE]`.
    const OPENAI_STREAM: &[u8] = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n\
data: [DONE]\n\n";

    /// `OPENAI_STREAM` through an Anthropic client's egress, pushed in
    /// pieces of `piece` bytes: the client's events and the summary.
    fn to_anthropic(piece: usize) -> (Vec<Value>, Option<Summary>) {
        let mut e = to_anthropic_egress(&KnownSecrets::none());
        assert!(!e.is_identity());
        let mut out = Vec::new();
        for p in OPENAI_STREAM.chunks(piece) {
            e.push(p, &mut out).unwrap();
        }
        let summary = e.finish(&mut out);
        (event_data(&chunks(&out).concat()), summary)
    }

    #[test]
    fn an_anthropic_client_gets_messages_events_however_the_stream_was_split() {
        let (events, summary) = to_anthropic(OPENAI_STREAM.len());
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"message_start"));
        assert_eq!(types.last(), Some(&"message_stop"));
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "content_block_delta")
            .map(|e| e["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello");
        let delta = events
            .iter()
            .find(|e| e["type"] == "message_delta")
            .unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 2);
        let summary = summary.unwrap();
        assert_eq!(summary.usage.input_tokens, Some(7));
        assert_eq!(summary.usage.output_tokens, Some(2));
        assert!(!summary.cut);
        for piece in [1, 7, 64] {
            assert_eq!(to_anthropic(piece).0, events, "pieces of {piece}");
        }
    }

    #[test]
    fn a_failed_stream_ends_with_an_error_event_in_the_clients_dialect() {
        let err = GatewayError::UpstreamTimeout {
            provider: "p".into(),
        };
        let mut out = Vec::new();
        StreamEgress::identity(ClientDialect::OpenAi).fail(&err, &mut out);
        let c = chunks(&out);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with(b"data: {"),
            "{:?}",
            String::from_utf8_lossy(&c[0])
        );
        assert!(event_data(&c[0])[0]["error"]["message"].is_string());

        let mut out = Vec::new();
        let mut e = to_anthropic_egress(&KnownSecrets::none());
        e.push(&OPENAI_STREAM[..200], &mut out).unwrap();
        // Abandoned: the translator's summary, and none of its closing events.
        assert!(e.abandon().is_some());
        e.fail(&err, &mut out);
        let c = chunks(&out);
        let last = c.last().unwrap();
        assert!(last.starts_with(b"event: error\ndata: {"));
        assert_eq!(event_data(last)[0]["error"]["type"], "api_error");
        let all = String::from_utf8(c.concat()).unwrap();
        assert!(!all.contains("message_stop"), "{all}");
    }

    #[test]
    fn an_upstream_error_event_is_redacted_of_the_upstreams_key() {
        let known = KnownSecrets::new(["sk-upstream-secret-123"]);
        let mut e = to_anthropic_egress(&known);
        let mut out = Vec::new();
        let error = b"data: {\"error\":{\"message\":\"bad key sk-upstream-secret-123\",\"type\":\"auth\"}}\n\n";
        let _ = e.push(error, &mut out);
        e.finish(&mut out);
        let all = chunks(&out).concat();
        let events = event_data(&all);
        let error = events.iter().find(|e| e["type"] == "error").unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("bad key"), "{message}");
        assert!(!String::from_utf8_lossy(&all).contains("sk-upstream-secret-123"));
    }
}
