//! The Anthropic Messages API wire format, as far as the stand-in speaks it.
//!
//! This module is the only place that knows the JSON shapes of answers: the streamed events
//! (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`, plus a `ping`), the non-streamed message object, the error
//! object and the `count_tokens` answer.

use serde_json::{Value, json};

/// Longest piece of text or JSON carried by one `content_block_delta`. The real API sends many
/// small deltas; splitting ours makes the client reassemble them as it does in production.
const DELTA_CHUNK_CHARS: usize = 48;

/// One content block of an answer, ready to be put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

/// Token counts reported for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireUsage {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_input_tokens: u64,
    pub(crate) cache_creation_input_tokens: u64,
}

/// Everything that goes into one assistant message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireMessage {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) blocks: Vec<WireBlock>,
    pub(crate) usage: WireUsage,
}

impl WireMessage {
    /// `tool_use` when the message asks for a tool, `end_turn` otherwise.
    pub(crate) fn stop_reason(&self) -> &'static str {
        if self
            .blocks
            .iter()
            .any(|block| matches!(block, WireBlock::ToolUse { .. }))
        {
            "tool_use"
        } else {
            "end_turn"
        }
    }

    /// The message as a `text/event-stream` body.
    pub(crate) fn to_event_stream(&self) -> String {
        let mut out = String::new();
        push_event(
            &mut out,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": self.usage.input_tokens,
                        "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
                        "cache_read_input_tokens": self.usage.cache_read_input_tokens,
                        "output_tokens": 1,
                    },
                },
            }),
        );
        push_event(&mut out, "ping", &json!({"type": "ping"}));
        for (index, block) in self.blocks.iter().enumerate() {
            let (start_block, delta_type, delta_key, payload) = match block {
                WireBlock::Text(text) => (
                    json!({"type": "text", "text": ""}),
                    "text_delta",
                    "text",
                    text.clone(),
                ),
                WireBlock::ToolUse { id, name, input } => (
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    "input_json_delta",
                    "partial_json",
                    input.to_string(),
                ),
            };
            push_event(
                &mut out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": start_block}),
            );
            for piece in chunks(&payload, DELTA_CHUNK_CHARS) {
                push_event(
                    &mut out,
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": delta_type, delta_key: piece},
                    }),
                );
            }
            push_event(
                &mut out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
        push_event(
            &mut out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
                "usage": {"output_tokens": self.usage.output_tokens},
            }),
        );
        push_event(&mut out, "message_stop", &json!({"type": "message_stop"}));
        out
    }

    /// The message as one JSON object, for requests that did not ask to stream.
    pub(crate) fn to_json(&self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .iter()
            .map(|block| match block {
                WireBlock::Text(text) => json!({"type": "text", "text": text}),
                WireBlock::ToolUse { id, name, input } => {
                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                }
            })
            .collect();
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason(),
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
                "cache_read_input_tokens": self.usage.cache_read_input_tokens,
                "output_tokens": self.usage.output_tokens,
            },
        })
    }
}

/// The body of an error answer: `{"type":"error","error":{"type":..,"message":..}}`.
pub(crate) fn error_body(error_type: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type, "message": message}})
}

/// The body of a `count_tokens` answer.
pub(crate) fn count_tokens_body(input_tokens: u64) -> Value {
    json!({"input_tokens": input_tokens})
}

/// A rough token estimate for any JSON value: about four characters a token.
pub(crate) fn estimate_tokens(value: &Value) -> u64 {
    let chars = match value {
        Value::String(text) => text.chars().count(),
        other => other.to_string().chars().count(),
    };
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

fn push_event(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

/// Splits `text` into pieces of at most `max_chars` characters (never inside a character).
/// An empty text still yields one empty piece, so every block carries at least one delta.
fn chunks(text: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (offset, _) in text.char_indices() {
        if count == max_chars {
            pieces.push(&text[start..offset]);
            start = offset;
            count = 0;
        }
        count += 1;
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_on_character_boundaries() {
        assert_eq!(chunks("", 3), vec![""]);
        assert_eq!(chunks("abc", 3), vec!["abc"]);
        assert_eq!(chunks("abcd", 3), vec!["abc", "d"]);
        assert_eq!(chunks("ééééé", 2), vec!["éé", "éé", "é"]);
    }

    #[test]
    fn stop_reason_follows_the_blocks() {
        let mut message = WireMessage {
            id: "msg_1".into(),
            model: "m".into(),
            blocks: vec![WireBlock::Text("hi".into())],
            usage: WireUsage {
                input_tokens: 1,
                output_tokens: 1,
                cache_read_input_tokens: 0,
                cache_creation_input_tokens: 0,
            },
        };
        assert_eq!(message.stop_reason(), "end_turn");
        message.blocks.push(WireBlock::ToolUse {
            id: "toolu_1".into(),
            name: "Write".into(),
            input: json!({}),
        });
        assert_eq!(message.stop_reason(), "tool_use");
    }
}
