//! Answers from the response cache ([`crate::cache`]): a kept answer
//! becomes an [`Answer`] like an upstream's, with a body source that hands
//! it out whole or unrolled into a stream. The relay then writes it in the
//! client's dialect, and everything it does to answers (output guardrails,
//! the tool policy, metering what the answer used) applies to hits too.

use super::relay::{Answer, Source};
use super::{Api, Call};
use crate::cache::Entry;
use crate::client::{BodyStep, ReadError};
use crate::config::ModelRoute;
use shardgate_providers::chat::ChatResponse;
use shardgate_providers::{replay, ReplyCtx};
use std::time::Duration;

/// A kept answer's body: the answer as kept, or its stream.
pub struct ReplayBody {
    whole: Vec<u8>,
    stream: Option<Vec<u8>>,
}

impl ReplayBody {
    /// The whole stream in one read.
    pub fn step(&mut self, on_data: &mut dyn FnMut(&[u8])) -> Result<BodyStep, ReadError> {
        if let Some(s) = self.stream.take() {
            on_data(&s);
        }
        Ok(BodyStep::End)
    }

    pub fn read_to_end(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.whole)
    }
}

/// `entry` as `call`'s answer on `route`; `None` when a stream is asked of
/// an answer that does not read as a chat answer (the route then answers).
pub fn answer<'a>(
    call: &'a Call<'a>,
    entry: &'a Entry,
    route: &'a ModelRoute,
) -> Option<Answer<'a>> {
    let target = route
        .targets
        .iter()
        .find(|t| t.served_by == entry.served_by);
    let (provider, model) = entry
        .served_by
        .split_once('/')
        .unwrap_or(("cache", entry.served_by.as_str()));
    let name = match target {
        Some(t) => call
            .generation
            .config
            .providers
            .get(t.provider)
            .map_or(provider, |p| p.name.as_str()),
        None => provider,
    };
    let streamed = call.facts.stream && call.api != Api::Embeddings;
    let body = if streamed {
        let parsed: ChatResponse = serde_json::from_slice(&entry.answer).ok()?;
        if !replay::replayable(&parsed) {
            return None;
        }
        let ctx = ReplyCtx {
            id: parsed.id.clone(),
            model: parsed.model.clone(),
            created: parsed.created,
            include_usage: true,
        };
        ReplayBody {
            whole: Vec::new(),
            stream: Some(replay::unroll(&parsed, &ctx)),
        }
    } else {
        ReplayBody {
            whole: entry.answer.clone(),
            stream: None,
        }
    };
    let target_lines = target.map_or(&[][..], |t| t.head_lines.as_slice());
    let mut answer = Answer::in_process(
        call,
        Source::Cached(body),
        streamed,
        (name, model, target_lines),
        Duration::from_secs(1),
    );
    answer.alias_line = &route.alias_line;
    Some(answer)
}
