//! The text of a request that counts as prompt, for token estimates. Only
//! read when a token limit applies (see `Resolved::needs_token_estimate`):
//! it parses the body once more, which the pass-through path otherwise
//! never does.

use serde_json::Value;

/// Every prompt string of a chat (OpenAI or Anthropic), completion or
/// embeddings body: message contents (strings and text parts), an
/// assistant's tool calls and tool_use inputs and tool definitions (as
/// their JSON), the system prompt, `prompt` and `input`.
pub fn texts(body: &[u8]) -> Vec<String> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(Value::Array(messages)) = obj.get("messages") {
        for m in messages {
            let mut text = String::new();
            if let Some(c) = m.get("content") {
                content_text(c, &mut text);
            }
            if let Some(calls) = m.get("tool_calls") {
                text.push_str(&calls.to_string());
            }
            out.push(text);
        }
    }
    for key in ["system", "prompt", "input", "instructions"] {
        if let Some(v) = obj.get(key) {
            let mut text = String::new();
            content_text(v, &mut text);
            out.push(text);
        }
    }
    if let Some(Value::Array(tools)) = obj.get("tools") {
        for t in tools {
            out.push(t.to_string());
        }
    }
    out
}

fn content_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for p in parts {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(o) => {
                        for key in ["text", "content"] {
                            if let Some(inner) = o.get(key) {
                                content_text(inner, out);
                            }
                        }
                        match o.get("input") {
                            // A tool_use block's arguments: counted as their
                            // JSON, as an OpenAI turn's tool_calls are.
                            Some(args @ Value::Object(_)) => out.push_str(&args.to_string()),
                            Some(inner) => content_text(inner, out),
                            None => {}
                        }
                    }
                    _ => {}
                }
            }
        }
        Value::Object(o) => {
            if let Some(inner) = o.get("text") {
                content_text(inner, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_prompt_part() {
        let body = br#"{"model":"m","system":[{"type":"text","text":"S"}],
            "messages":[{"role":"user","content":"hello"},
                        {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"tool_result","content":"r"}]}],
            "tools":[{"type":"function","function":{"name":"f"}}]}"#;
        let t = texts(body);
        assert_eq!(t[0], "hello");
        assert_eq!(t[1], "ar");
        assert_eq!(t[2], "S");
        assert!(t[3].contains("\"name\":\"f\""));
        assert_eq!(texts(br#"{"input":["x","y"]}"#), vec!["xy".to_owned()]);
        assert!(texts(b"not json").is_empty());
    }

    #[test]
    fn an_assistant_turn_counts_its_tool_calls_with_their_arguments() {
        let body = br#"{"messages":[{"role":"assistant","content":null,
            "tool_calls":[{"id":"c1","type":"function","function":{"name":"lookup","arguments":"{\"city\":\"Oslo\"}"}}]},
            {"role":"tool","tool_call_id":"c1","content":"rain"}]}"#;
        let t = texts(body);
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(t[0].contains("lookup") && t[0].contains("Oslo"), "{t:?}");
        assert_eq!(t[1], "rain");
    }

    #[test]
    fn anthropic_tool_results_count_their_nested_text() {
        let body = br#"{"system":"be brief","messages":[{"role":"user","content":[
            {"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"42 rows"}]},
            {"type":"text","text":" and more"}]}]}"#;
        assert_eq!(
            texts(body),
            vec!["42 rows and more".to_owned(), "be brief".to_owned()]
        );
    }

    #[test]
    fn image_data_is_not_counted_as_text() {
        let body = br#"{"messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo"}},
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo"}},
            {"type":"text","text":"what is this?"}]}]}"#;
        assert_eq!(texts(body), vec!["what is this?".to_owned()]);
    }

    #[test]
    fn completion_prompts_and_embedding_inputs_count_as_given() {
        assert_eq!(
            texts(br#"{"prompt":"once upon"}"#),
            vec!["once upon".to_owned()]
        );
        assert_eq!(texts(br#"{"prompt":["a","b"]}"#), vec!["ab".to_owned()]);
        assert_eq!(
            texts(br#"{"input":"embed me"}"#),
            vec!["embed me".to_owned()]
        );
        // Token arrays carry no text to estimate from.
        assert_eq!(texts(br#"{"input":[[1,2,3]]}"#), vec![String::new()]);
        assert!(texts(br#"["messages"]"#).is_empty());
        assert!(texts(b"").is_empty());
    }

    #[test]
    fn an_anthropic_tool_use_counts_its_input() {
        let body = br#"{"messages":[{"role":"assistant","content":[
            {"type":"text","text":"Let me look."},
            {"type":"tool_use","id":"t1","name":"lookup","input":{"city":"Oslo"}}]}]}"#;
        let t = texts(body);
        assert!(t[0].starts_with("Let me look."), "{t:?}");
        assert!(t[0].contains(r#""city":"Oslo""#), "{t:?}");
    }
}
