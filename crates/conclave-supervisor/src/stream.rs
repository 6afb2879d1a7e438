//! What an agent's `--output-format stream-json` lines mean, and the raw copy of the stream kept
//! per agent. The one reader of Claude Code's stream-json: the supervisor acts on
//! [`parse_line`]'s answer and `conclave attach` prints it.
//!
//! Facts this relies on (Claude Code 2.1.328, SPEC section 6): `system/init` carries the session
//! id and is printed again before every turn; each model call prints an `assistant` line whose
//! `message.usage` is the context in use (input + cache read + cache creation tokens); tool
//! results come back in `user` lines; a turn ends with a `result` line whose `total_cost_usd`
//! and `modelUsage` are running totals (read the latest, never add them up) and whose `usage`
//! adds up the turn's calls (so context is never read from it).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use conclave_core::event::MAX_TOOL_ERROR_CHARS;

use crate::pricing::Usage;

/// Longest tool input summary recorded in an `agent.tool` event.
pub const MAX_TOOL_INPUT: usize = 200;
/// Longest text recorded in an `agent.text` event.
pub const MAX_TEXT: usize = 500;

/// The result of a tool call, seen in a `user` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the tool call it answers.
    pub id: String,
    /// The size of the result in bytes.
    pub bytes: usize,
    pub is_error: bool,
    /// What a failed call answered (cut to [`MAX_TOOL_ERROR_CHARS`] characters), when
    /// `is_error`.
    pub error: Option<String>,
}

/// A tool call seen in an `assistant` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A short summary of its input (≤ [`MAX_TOOL_INPUT`] characters).
    pub input: String,
    /// The characters of its name and whole input as the model wrote them (compact JSON): what
    /// the call adds to the context.
    pub chars: usize,
}

/// One block of a model call's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Text (trimmed, never blank, not cut).
    Text(String),
    Tool(ToolCall),
}

/// One model call as an `assistant` line shows it. The CLI prints a line per content block of
/// a call, each with the same message id and usage: the id tells them apart from a new call.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    pub id: Option<String>,
    pub model: Option<String>,
    pub usage: Usage,
}

/// What one line says.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamUpdate {
    /// `system/init`: a turn starts in this session.
    Init {
        session_id: Option<String>,
        model: Option<String>,
    },
    /// A model call: the context it used, its tool calls and its text (trimmed, not cut).
    Assistant {
        context_tokens: Option<i64>,
        /// Its text and tool calls, in the order the model wrote them.
        content: Vec<Content>,
        /// The call's id, model and usage, to price it while the turn runs.
        call: Option<ModelCall>,
    },
    /// Tool results.
    ToolResults(Vec<ToolResult>),
    /// A running total of the session's cost reported before its turn ended (Claude Code
    /// 2.1.328 reports cost only in `result`; a client that reports it sooner lets a budget stop
    /// a turn in the middle).
    Cost { total_usd: f64 },
    /// The turn ended.
    Result {
        cost_usd: Option<f64>,
        context_window: Option<i64>,
        is_error: bool,
        session_id: Option<String>,
        /// Model calls in the turn.
        num_turns: Option<i64>,
        /// The turn's final text (`result`), which says what went wrong in an error result.
        text: Option<String>,
        /// Output tokens of the turn's calls added up (`usage.output_tokens`): an `assistant`
        /// line may carry a call's usage before its output was complete.
        output_tokens: Option<i64>,
    },
    /// `system/api_retry`: a model call failed and the CLI retries it (401: the key or login
    /// is refused; 429: rate limited; 529: overloaded).
    ApiRetry {
        /// The HTTP status of the failed call (`error_status`).
        status: Option<i64>,
        /// The CLI's word for it (`authentication_failed`, `rate_limit`, ...).
        error: Option<String>,
        attempt: Option<i64>,
        max_retries: Option<i64>,
        /// How long the CLI waits before it retries.
        retry_in_ms: Option<i64>,
    },
    /// Anything else (other system lines).
    Other,
}

/// Reads one stream-json line.
pub fn parse_line(line: &Value) -> StreamUpdate {
    let session_id = line["session_id"].as_str().map(str::to_string);
    match (line["type"].as_str(), line["subtype"].as_str()) {
        (Some("system"), Some("init")) => StreamUpdate::Init {
            session_id,
            model: line["model"].as_str().map(str::to_string),
        },
        (Some("assistant"), _) => {
            let message = &line["message"];
            let usage = &message["usage"];
            let context_tokens = usage["input_tokens"].as_i64().map(|input| {
                input
                    + usage["cache_read_input_tokens"].as_i64().unwrap_or(0)
                    + usage["cache_creation_input_tokens"].as_i64().unwrap_or(0)
            });
            let mut content = Vec::new();
            for block in message["content"].as_array().into_iter().flatten() {
                match block["type"].as_str() {
                    Some("tool_use") => content.push(Content::Tool(ToolCall {
                        id: block["id"].as_str().unwrap_or_default().to_string(),
                        name: block["name"].as_str().unwrap_or("?").to_string(),
                        input: summarize_input(&block["input"]),
                        chars: block["name"]
                            .as_str()
                            .map_or(0, |name| name.chars().count())
                            + block["input"].to_string().chars().count(),
                    })),
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.trim().is_empty())
                        {
                            content.push(Content::Text(text.trim().to_string()));
                        }
                    }
                    _ => {}
                }
            }
            let call = usage["input_tokens"].as_i64().map(|input| ModelCall {
                id: message["id"].as_str().map(str::to_string),
                model: message["model"].as_str().map(str::to_string),
                usage: Usage {
                    input,
                    output: usage["output_tokens"].as_i64().unwrap_or(0),
                    cache_read: usage["cache_read_input_tokens"].as_i64().unwrap_or(0),
                    cache_creation: usage["cache_creation_input_tokens"].as_i64().unwrap_or(0),
                },
            });
            StreamUpdate::Assistant {
                context_tokens,
                content,
                call,
            }
        }
        (Some("user"), _) => {
            let results = line["message"]["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|block| block["type"] == "tool_result")
                .map(|block| {
                    let id = block["tool_use_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let bytes = match &block["content"] {
                        Value::String(text) => text.len(),
                        Value::Array(parts) => parts
                            .iter()
                            .map(|part| part["text"].as_str().map_or(0, str::len))
                            .sum(),
                        _ => 0,
                    };
                    let is_error = block["is_error"] == true;
                    let error = is_error.then(|| match &block["content"] {
                        Value::String(text) => truncate(text.trim(), MAX_TOOL_ERROR_CHARS),
                        Value::Array(parts) => truncate(
                            parts
                                .iter()
                                .filter_map(|part| part["text"].as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                                .trim(),
                            MAX_TOOL_ERROR_CHARS,
                        ),
                        _ => String::new(),
                    });
                    ToolResult {
                        id,
                        bytes,
                        is_error,
                        error,
                    }
                })
                .collect::<Vec<_>>();
            if results.is_empty() {
                StreamUpdate::Other
            } else {
                StreamUpdate::ToolResults(results)
            }
        }
        (Some("result"), _) => StreamUpdate::Result {
            cost_usd: line["total_cost_usd"].as_f64(),
            context_window: line["modelUsage"]
                .as_object()
                .into_iter()
                .flat_map(|models| models.values())
                .filter_map(|usage| usage["contextWindow"].as_i64())
                .max(),
            is_error: line["is_error"].as_bool().unwrap_or(false),
            session_id,
            num_turns: line["num_turns"].as_i64(),
            text: line["result"]
                .as_str()
                .map(|text| truncate(text.trim(), MAX_TEXT)),
            output_tokens: line["usage"]["output_tokens"].as_i64(),
        },
        (Some("system"), Some("api_retry")) => StreamUpdate::ApiRetry {
            status: line["error_status"].as_i64(),
            error: line["error"].as_str().map(str::to_string),
            attempt: line["attempt"].as_i64(),
            max_retries: line["max_retries"].as_i64(),
            retry_in_ms: line["retry_delay_ms"]
                .as_i64()
                .or_else(|| line["retry_delay_ms"].as_f64().map(|ms| ms as i64)),
        },
        _ => match line["total_cost_usd"].as_f64() {
            Some(total_usd) => StreamUpdate::Cost { total_usd },
            None => StreamUpdate::Other,
        },
    }
}

/// A one-line summary of a tool's input: the field that says most (path, command, pattern...)
/// or else the compact JSON, cut to [`MAX_TOOL_INPUT`] characters.
pub fn summarize_input(input: &Value) -> String {
    const TELLING: [&str; 8] = [
        "file_path",
        "command",
        "pattern",
        "path",
        "url",
        "to",
        "id",
        "description",
    ];
    let text = TELLING
        .iter()
        .find_map(|key| input.get(*key).and_then(Value::as_str))
        .map_or_else(|| input.to_string(), str::to_string);
    truncate(&text.replace('\n', " "), MAX_TOOL_INPUT)
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// The raw stream of one agent, appended line by line to `stream.jsonl`; when the file passes
/// `max_bytes` it becomes `stream.jsonl.1` (older ones shift up to `.keep`, the oldest dropped).
#[derive(Debug)]
pub struct StreamLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

/// Default size at which a stream log rotates.
pub const STREAM_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default number of rotated logs kept.
pub const STREAM_LOG_KEEP: usize = 3;

impl StreamLog {
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> StreamLog {
        StreamLog {
            path,
            file: None,
            size: 0,
            max_bytes,
            keep,
        }
    }

    /// The log of an agent whose files live in `dir`.
    pub fn in_dir(dir: &Path) -> StreamLog {
        StreamLog::new(
            dir.join("stream.jsonl"),
            STREAM_LOG_MAX_BYTES,
            STREAM_LOG_KEEP,
        )
    }

    /// Appends one line (a newline is added).
    pub fn append(&mut self, line: &str) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
            return self.append(line);
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            self.size += line.len() as u64 + 1;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, numbered(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_read_as_the_cli_writes_them() {
        let cases = [
            (
                json!({"type": "system", "subtype": "init", "session_id": "s1"}),
                StreamUpdate::Init {
                    session_id: Some("s1".into()),
                    model: None,
                },
            ),
            (
                json!({"type": "assistant", "message": {"id": "msg1", "model": "m",
                    "usage": {"input_tokens": 10, "output_tokens": 3,
                    "cache_read_input_tokens": 5, "cache_creation_input_tokens": 1},
                    "content": [{"type": "text", "text": "hi"},
                                {"type": "tool_use", "id": "t1", "name": "Write",
                                 "input": {"file_path": "a.rs", "content": "x"}}]}}),
                StreamUpdate::Assistant {
                    context_tokens: Some(16),
                    content: vec![
                        Content::Text("hi".into()),
                        Content::Tool(ToolCall {
                            id: "t1".into(),
                            name: "Write".into(),
                            input: "a.rs".into(),
                            chars: "Write".len() + r#"{"content":"x","file_path":"a.rs"}"#.len(),
                        }),
                    ],
                    call: Some(ModelCall {
                        id: Some("msg1".into()),
                        model: Some("m".into()),
                        usage: Usage {
                            input: 10,
                            output: 3,
                            cache_read: 5,
                            cache_creation: 1,
                        },
                    }),
                },
            ),
            (
                json!({"type": "user", "message": {"content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "done"}]}}),
                StreamUpdate::ToolResults(vec![ToolResult {
                    id: "t1".into(),
                    bytes: 4,
                    is_error: false,
                    error: None,
                }]),
            ),
            (
                json!({"type": "user", "message": {"content": [
                    {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
                     "content": [{"type": "text", "text": " File has not been read yet. "}]}]}}),
                StreamUpdate::ToolResults(vec![ToolResult {
                    id: "t2".into(),
                    bytes: 29,
                    is_error: true,
                    error: Some("File has not been read yet.".into()),
                }]),
            ),
            (
                json!({"type": "result", "subtype": "success", "is_error": false,
                    "total_cost_usd": 0.5, "session_id": "s1",
                    "usage": {"input_tokens": 999},
                    "modelUsage": {"m": {"contextWindow": 1000000}}}),
                StreamUpdate::Result {
                    cost_usd: Some(0.5),
                    context_window: Some(1_000_000),
                    is_error: false,
                    session_id: Some("s1".into()),
                    num_turns: None,
                    text: None,
                    output_tokens: None,
                },
            ),
            (
                json!({"type": "system", "subtype": "cost", "total_cost_usd": 0.25}),
                StreamUpdate::Cost { total_usd: 0.25 },
            ),
            (
                json!({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10,
                    "retry_delay_ms": 530, "error_status": 401, "error": "authentication_failed"}),
                StreamUpdate::ApiRetry {
                    status: Some(401),
                    error: Some("authentication_failed".into()),
                    attempt: Some(1),
                    max_retries: Some(10),
                    retry_in_ms: Some(530),
                },
            ),
            (
                json!({"type": "system", "subtype": "status"}),
                StreamUpdate::Other,
            ),
            (json!("not an object"), StreamUpdate::Other),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_line(&line), expected, "{line}");
        }
    }

    #[test]
    fn summaries_are_short() {
        assert_eq!(summarize_input(&json!({"command": "ls\n-l"})), "ls -l");
        let long = "x".repeat(500);
        assert_eq!(
            summarize_input(&json!({"body": long})).chars().count(),
            MAX_TOOL_INPUT
        );
    }

    #[test]
    fn the_stream_log_rotates_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stream.jsonl");
        let mut log = StreamLog::new(path.clone(), 25, 2);
        for n in 0..10 {
            log.append(&format!("line number {n}")).expect("append");
        }
        let current = std::fs::read_to_string(&path).expect("current");
        assert_eq!(current, "line number 9\n");
        let first = std::fs::read_to_string(dir.path().join("stream.jsonl.1")).expect(".1");
        assert_eq!(first, "line number 8\n");
        assert!(dir.path().join("stream.jsonl.2").exists());
        assert!(!dir.path().join("stream.jsonl.3").exists());
    }
}
