//! When the mock answers with a tool call instead of text, and what the call
//! looks like.
//!
//! The rule, the same in every dialect: the request offers at least one tool
//! (OpenAI `tools`, Anthropic `tools`, Gemini `tools[].functionDeclarations`,
//! Bedrock `toolConfig.tools`), tool choice is not "none" (OpenAI
//! `"none"`, Anthropic `{"type":"none"}`, Gemini `functionCallingConfig.mode
//! "NONE"`; Converse has no "none"), and the last message is not a tool
//! result (OpenAI role `tool`, Anthropic `tool_result` block, Gemini
//! `functionResponse` part, Bedrock `toolResult` block). Then the answer is
//! one call of the FIRST offered tool with arguments
//! `{"query":"<text(3)>"}` (`{"query":" lorem ipsum dolor"}`); otherwise it
//! is text.
//!
//! Streams send the arguments in [`FRAGMENTS`] pieces (`{"query":"`, the
//! three words, `"}`), one paced event each, except Gemini, which sends the
//! whole call in one part. A tool-call answer reports [`OUTPUT_TOKENS`]
//! output tokens in every dialect.

use std::borrow::Cow;

/// Words of mock text in the `query` argument.
pub const QUERY_WORDS: usize = 3;
/// Pieces the streamed arguments are split into.
pub const FRAGMENTS: usize = QUERY_WORDS + 2;
/// Output tokens reported for a tool-call answer.
pub const OUTPUT_TOKENS: usize = FRAGMENTS;

/// The i-th fragment of the arguments JSON text (`i < FRAGMENTS`).
pub fn fragment(i: usize) -> &'static str {
    match i {
        0 => "{\"query\":\"",
        i if i <= QUERY_WORDS => shardgate_proto::mock::token(i - 1),
        _ => "\"}",
    }
}

/// The whole arguments JSON text: `{"query":" lorem ipsum dolor"}`.
pub fn arguments(out: &mut String) {
    for i in 0..FRAGMENTS {
        out.push_str(fragment(i));
    }
}

/// What a request says about tools, as far as the rule needs it.
#[derive(Debug, Default)]
pub struct ToolOffer<'a> {
    /// Name of the first offered tool.
    pub first: Option<Cow<'a, str>>,
    /// Tool choice is "none".
    pub choice_none: bool,
    /// The last message carries a tool result.
    pub last_is_result: bool,
}

impl<'a> ToolOffer<'a> {
    /// The tool to call, if the rule says to call one.
    pub fn decide(self) -> Option<Cow<'a, str>> {
        if self.choice_none || self.last_is_result {
            return None;
        }
        self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_json_and_fragments_join() {
        let mut s = String::new();
        arguments(&mut s);
        assert_eq!(s, r#"{"query":" lorem ipsum dolor"}"#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let mut text = String::new();
        shardgate_proto::mock::text(QUERY_WORDS, &mut text);
        assert_eq!(v["query"], text.as_str());
    }

    #[test]
    fn rule() {
        let offer = |first: Option<&'static str>, none, result| ToolOffer {
            first: first.map(Cow::Borrowed),
            choice_none: none,
            last_is_result: result,
        };
        assert_eq!(
            offer(Some("f"), false, false).decide().as_deref(),
            Some("f")
        );
        assert_eq!(offer(Some("f"), true, false).decide(), None);
        assert_eq!(offer(Some("f"), false, true).decide(), None);
        assert_eq!(offer(None, false, false).decide(), None);
    }
}
