//! What the stand-in remembers of each request, and helpers that read the parts of a
//! Messages API request body that tests care about (the user's prompt, the tool list, the tool
//! results the CLI sent back).
//!
//! The CLI's request body looks like this (2.1.328): `model`, `system` (a list of text
//! blocks), `messages`, `tools`, `metadata`, `max_tokens`, `thinking`, `context_management`,
//! `output_config`, `stream`. The first user message carries `<system-reminder>` text blocks
//! (git status, hook context) before the typed prompt, and is followed by a message with role
//! `system` (the environment description). Helpers skip both where they would get in the way.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::Value;

/// What kind of request this was, which decides how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `POST /v1/messages` carrying a non-empty `tools` list and no structured-output format:
    /// a turn of the agent loop. Answered from the [`Script`](crate::Script).
    Main,
    /// `POST /v1/messages` without tools or with `output_config.format` (session titles and
    /// other helper calls). Answered with a generic reply; never consumes the script.
    Side,
    /// `POST /v1/messages/count_tokens`. Answered with a rough estimate.
    CountTokens,
    /// Anything else (e.g. `GET /api/hello`, sent when nonessential traffic is not disabled).
    /// Answered 404.
    Other,
}

/// How the stand-in chose its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnsweredBy {
    /// A scripted reply from a queue or a rule.
    Script,
    /// A main request arrived after its script had run out; it got a fallback text.
    Exhausted,
    /// The generic answer for side requests, `count_tokens` and unknown paths.
    Generic,
}

/// One tool result found in a request (a `tool_result` block of a user message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The id of the `tool_use` block this answers.
    pub tool_use_id: String,
    /// The result's text (text blocks joined with newlines when it came as a list).
    pub content: String,
    /// Whether the CLI flagged it as an error (a denied or failed tool call).
    pub is_error: bool,
}

/// One request as the stand-in received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Arrival order, from 0, across all agents.
    pub index: usize,
    /// When it arrived.
    pub received_at: SystemTime,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path without the query, e.g. `/v1/messages`.
    pub path: String,
    /// The query string, e.g. `beta=true`, if any.
    pub query: Option<String>,
    /// Every header, names lower-cased; repeated headers are joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (`Value::Null` if there was none, a string if it was not JSON).
    pub body: Value,
    /// How the request was classified.
    pub kind: RequestKind,
    /// How it was answered.
    pub answered_by: AnsweredBy,
}

impl RecordedRequest {
    /// A header's value by its lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The caller's key: `x-api-key` (set by `ANTHROPIC_API_KEY`), or else the bearer token of
    /// `authorization` (set by `ANTHROPIC_AUTH_TOKEN`). This is what per-agent scripts match.
    pub fn api_key(&self) -> Option<&str> {
        self.header("x-api-key").or_else(|| {
            self.header("authorization")
                .and_then(|value| value.strip_prefix("Bearer "))
        })
    }

    /// The CLI's session id (`x-claude-code-session-id` header).
    pub fn session_id(&self) -> Option<&str> {
        self.header("x-claude-code-session-id")
    }

    /// Whether this is a turn of the agent loop ([`RequestKind::Main`]).
    pub fn is_main(&self) -> bool {
        self.kind == RequestKind::Main
    }

    /// The `model` the request asked for (e.g. `claude-opus-5-5`).
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// Whether the request asked for a streamed answer.
    pub fn wants_stream(&self) -> bool {
        self.body
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The names in the `tools` list, in order.
    pub fn tool_names(&self) -> Vec<&str> {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|tool| tool.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The system prompt's text (blocks joined with newlines).
    pub fn system_text(&self) -> String {
        self.body
            .get("system")
            .map(content_text)
            .unwrap_or_default()
    }

    /// The `messages` list (empty if missing).
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// All text of the first user message, `<system-reminder>` blocks included (this is where
    /// a `SessionStart` hook's `additionalContext` shows up).
    pub fn first_user_text(&self) -> Option<String> {
        self.user_messages().next().map(content_text)
    }

    /// What the user typed in the first user message: its text blocks without the
    /// `<system-reminder>` ones the CLI adds, joined with newlines.
    pub fn user_prompt(&self) -> Option<String> {
        self.user_messages().next().map(typed_text)
    }

    /// What the user typed in the last user message that has any text (the newest prompt in a
    /// multi-turn session), without `<system-reminder>` blocks.
    pub fn last_user_text(&self) -> Option<String> {
        self.user_messages()
            .map(typed_text)
            .filter(|text| !text.is_empty())
            .last()
    }

    /// The tool results in the last message: the ones the CLI is reporting in this request.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        self.messages()
            .last()
            .map(tool_results_of)
            .unwrap_or_default()
    }

    /// Every tool result in the conversation so far, oldest first.
    pub fn all_tool_results(&self) -> Vec<ToolResult> {
        self.messages().iter().flat_map(tool_results_of).collect()
    }

    /// The `output_config.format` object, present when the CLI wants structured output.
    pub fn output_format(&self) -> Option<&Value> {
        self.body.get("output_config").and_then(|c| c.get("format"))
    }

    fn user_messages(&self) -> impl Iterator<Item = &Value> {
        self.messages()
            .iter()
            .filter(|message| message.get("role").and_then(Value::as_str) == Some("user"))
            .filter_map(|message| message.get("content"))
    }
}

/// Decides the kind of a request from its method, path and JSON body.
pub(crate) fn classify(method: &str, path: &str, body: &Value) -> RequestKind {
    match (method, path) {
        ("POST", "/v1/messages") => {
            let has_tools = body
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|tools| !tools.is_empty());
            let structured = body
                .get("output_config")
                .and_then(|config| config.get("format"))
                .is_some_and(|format| !format.is_null());
            if has_tools && !structured {
                RequestKind::Main
            } else {
                RequestKind::Side
            }
        }
        ("POST", "/v1/messages/count_tokens") => RequestKind::CountTokens,
        _ => RequestKind::Other,
    }
}

/// Text of a `content` value: a string, or the `text` of each block joined with newlines.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Like [`content_text`] but without the `<system-reminder>` blocks the CLI injects.
fn typed_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .filter(|text| !text.trim_start().starts_with("<system-reminder>"))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn tool_results_of(message: &Value) -> Vec<ToolResult> {
    let Some(blocks) = message.get("content").and_then(Value::as_array) else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|block| ToolResult {
            tool_use_id: block
                .get("tool_use_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            content: block.get("content").map(content_text).unwrap_or_default(),
            is_error: block
                .get("is_error")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recorded(body: Value) -> RecordedRequest {
        RecordedRequest {
            index: 0,
            received_at: SystemTime::now(),
            method: "POST".into(),
            path: "/v1/messages".into(),
            query: Some("beta=true".into()),
            headers: BTreeMap::from([("x-api-key".to_owned(), "agent-a".to_owned())]),
            kind: classify("POST", "/v1/messages", &body),
            body,
            answered_by: AnsweredBy::Script,
        }
    }

    /// The shape the 2.1.328 CLI sends on its second request of a `-p` run.
    fn cli_like_body() -> Value {
        json!({
            "model": "claude-opus-5-5",
            "system": [{"type": "text", "text": "You are a Claude agent"}],
            "tools": [{"name": "Bash"}, {"name": "Write"}],
            "stream": true,
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>\ngit status\n</system-reminder>"},
                    {"type": "text", "text": "write the file"}
                ]},
                {"role": "system", "content": "# Environment"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "Write", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "File created"}
                ]}
            ]
        })
    }

    #[test]
    fn helpers_read_a_cli_request() {
        let request = recorded(cli_like_body());
        assert!(request.is_main());
        assert!(request.wants_stream());
        assert_eq!(request.api_key(), Some("agent-a"));
        assert_eq!(request.model(), Some("claude-opus-5-5"));
        assert_eq!(request.tool_names(), vec!["Bash", "Write"]);
        assert_eq!(request.user_prompt().as_deref(), Some("write the file"));
        assert_eq!(request.last_user_text().as_deref(), Some("write the file"));
        assert!(
            request
                .first_user_text()
                .is_some_and(|text| text.contains("git status"))
        );
        assert_eq!(
            request.tool_results(),
            vec![ToolResult {
                tool_use_id: "toolu_1".into(),
                content: "File created".into(),
                is_error: false,
            }]
        );
        assert_eq!(request.system_text(), "You are a Claude agent");
    }

    #[test]
    fn classify_tells_turns_from_side_requests() {
        let cases = [
            (
                "POST",
                "/v1/messages",
                json!({"tools": [{"name": "Bash"}]}),
                RequestKind::Main,
            ),
            (
                "POST",
                "/v1/messages",
                json!({"tools": []}),
                RequestKind::Side,
            ),
            ("POST", "/v1/messages", json!({}), RequestKind::Side),
            (
                "POST",
                "/v1/messages",
                json!({"tools": [{"name": "Bash"}], "output_config": {"format": {"type": "json_schema"}}}),
                RequestKind::Side,
            ),
            (
                "POST",
                "/v1/messages/count_tokens",
                json!({}),
                RequestKind::CountTokens,
            ),
            ("GET", "/api/hello", Value::Null, RequestKind::Other),
        ];
        for (method, path, body, expected) in cases {
            assert_eq!(
                classify(method, path, &body),
                expected,
                "{method} {path} {body}"
            );
        }
    }
}
