//! Simulated agents: each a token of its own, speaking to the server over real HTTP (the REST
//! API, the hook endpoint, or MCP's JSON-RPC over HTTP) one request at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};

/// One simulated agent.
#[derive(Debug, Clone)]
pub struct BenchAgent {
    pub name: String,
    pub token: String,
}

/// How the requests of a phase reach the server.
#[derive(Debug, Clone)]
pub struct Target {
    pub http: reqwest::Client,
    pub base: String,
    pub admin: String,
}

/// One request an agent (or the admin) makes.
#[derive(Debug, Clone)]
pub enum Request {
    Healthz,
    Claim,
    Lock(String),
    Unlock(String),
    /// One lease request of several paths (the caps phase), and its release.
    LockMany(Vec<String>),
    UnlockMany(Vec<String>),
    Done {
        task: String,
        file: String,
    },
    Send {
        to: String,
        body: String,
    },
    Inbox,
    Ack(Vec<String>),
    Note(String),
    /// `/hooks/<event>` with a Claude Code hook input.
    Hook {
        event: &'static str,
        input: Value,
    },
    /// An MCP `tools/call` of `tool` with `arguments`.
    Mcp {
        tool: &'static str,
        arguments: Value,
    },
    Status,
    Page {
        after: Option<String>,
        limit: usize,
    },
    CreateTask(String),
}

impl Request {
    /// The name figures are reported under.
    pub fn label(&self) -> String {
        match self {
            Request::Healthz => "healthz".into(),
            Request::Claim => "claim".into(),
            Request::Lock(_) => "lock".into(),
            Request::LockMany(paths) => format!("lock ({} paths)", paths.len()),
            Request::UnlockMany(paths) => format!("unlock ({} paths)", paths.len()),
            Request::Unlock(_) => "unlock".into(),
            Request::Done { .. } => "done".into(),
            Request::Send { .. } => "send".into(),
            Request::Inbox => "inbox".into(),
            Request::Ack(_) => "ack".into(),
            Request::Note(_) => "note".into(),
            Request::Hook { event, .. } => format!("hook {event}"),
            Request::Mcp { tool, .. } => format!("mcp {tool}"),
            Request::Status => "GET /api/status".into(),
            Request::Page { after: None, .. } => "GET /api/tasks (first page)".into(),
            Request::Page { .. } => "GET /api/tasks (a middle page)".into(),
            Request::CreateTask(_) => "create task".into(),
        }
    }
}

impl Target {
    /// The same server with a new HTTP client (its own connection pool, up to `idle`
    /// connections kept).
    pub fn with_fresh_client(&self, idle: usize) -> anyhow::Result<Target> {
        Ok(Target {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(idle)
                .build()?,
            base: self.base.clone(),
            admin: self.admin.clone(),
        })
    }

    /// Sends `request` with `token` (the admin's when none) and returns the answer's JSON (Null
    /// for an empty or non-JSON body). Any status but success fails the run: a benchmark of
    /// refusals would measure nothing.
    pub async fn call(&self, token: Option<&str>, request: &Request) -> anyhow::Result<Value> {
        let base = &self.base;
        let builder = match request {
            Request::Healthz => self.http.get(format!("{base}/healthz")),
            Request::Claim => self
                .http
                .post(format!("{base}/api/tasks/claim"))
                .json(&json!({})),
            Request::Lock(path) => self
                .http
                .post(format!("{base}/api/leases"))
                .json(&json!({ "paths": [path] })),
            Request::Unlock(path) => self
                .http
                .post(format!("{base}/api/leases/release"))
                .json(&json!({ "paths": [path] })),
            Request::LockMany(paths) => self
                .http
                .post(format!("{base}/api/leases"))
                .json(&json!({ "paths": paths })),
            Request::UnlockMany(paths) => self
                .http
                .post(format!("{base}/api/leases/release"))
                .json(&json!({ "paths": paths })),
            Request::Done { task, file } => self
                .http
                .post(format!("{base}/api/tasks/{task}/done"))
                .json(&json!({ "summary": "benchmark work finished", "files": [file] })),
            Request::Send { to, body } => self
                .http
                .post(format!("{base}/api/messages"))
                .json(&json!({ "to": to, "body": body })),
            Request::Inbox => self.http.get(format!("{base}/api/inbox")),
            Request::Ack(ids) => self
                .http
                .post(format!("{base}/api/inbox/ack"))
                .json(&json!({ "ids": ids })),
            Request::Note(title) => self
                .http
                .post(format!("{base}/api/notes"))
                .json(&json!({ "title": title, "kind": "discovery", "body": "measured" })),
            Request::Hook { event, input } => {
                self.http.post(format!("{base}/hooks/{event}")).json(input)
            }
            Request::Mcp { tool, arguments } => self
                .http
                .post(format!("{base}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .json(&json!({
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": { "name": tool, "arguments": arguments }
                })),
            Request::Status => self.http.get(format!("{base}/api/status")),
            Request::Page { after, limit } => {
                let mut query = vec![("limit", limit.to_string())];
                if let Some(after) = after {
                    query.push(("after", after.clone()));
                }
                self.http.get(format!("{base}/api/tasks")).query(&query)
            }
            Request::CreateTask(title) => self
                .http
                .post(format!("{base}/api/tasks"))
                .json(&json!({ "title": title })),
        };
        let response = builder
            .bearer_auth(token.unwrap_or(&self.admin))
            .send()
            .await
            .with_context(|| format!("{} failed to send", request.label()))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            anyhow::bail!("{} answered {status}: {}", request.label(), cut(&text));
        }
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Request::Mcp { tool, .. } = request
            && (value.get("error").is_some() || value["result"]["isError"] == json!(true))
        {
            anyhow::bail!("mcp {tool} failed: {}", cut(&text));
        }
        Ok(value)
    }

    /// Sends `request` and returns how long the answer took.
    pub async fn timed(
        &self,
        token: Option<&str>,
        request: &Request,
    ) -> anyhow::Result<(Duration, Value)> {
        let sent = Instant::now();
        let answer = self.call(token, request).await?;
        Ok((sent.elapsed(), answer))
    }

    /// Registers `count` agents named `{prefix}-{i}`, `concurrency` at a time.
    pub async fn register(
        &self,
        prefix: &str,
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<BenchAgent>> {
        let agents = futures::stream::iter(0..count)
            .map(|i| async move {
                let name = format!("{prefix}-{i}");
                let answer: Value = self
                    .http
                    .post(format!("{}/api/agents", self.base))
                    .bearer_auth(&self.admin)
                    .json(&json!({ "name": name }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let token = answer["token"].as_str().context("no token")?.to_string();
                anyhow::Ok(BenchAgent { name, token })
            })
            .buffered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        agents.into_iter().collect()
    }

    /// Creates `count` ready tasks as the admin, `concurrency` requests at a time.
    pub async fn create_tasks(&self, count: usize, concurrency: usize) -> anyhow::Result<()> {
        let results = futures::stream::iter(0..count)
            .map(|i| async move {
                self.call(None, &Request::CreateTask(format!("bench task {i}")))
                    .await
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        for result in results {
            result?;
        }
        Ok(())
    }

    /// Opens the live event stream as `agent` and reads it in the background until `stop`,
    /// adding every SSE frame it receives to `frames`; returns once the server has answered the
    /// stream's headers.
    pub async fn open_stream(
        &self,
        agent: &BenchAgent,
        stop: tokio_util::sync::CancellationToken,
        frames: Arc<AtomicU64>,
    ) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/api/events/stream", self.base))
            .bearer_auth(&agent.token)
            .send()
            .await?
            .error_for_status()?;
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut ends = FrameEnds::default();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    chunk = body.next() => match chunk {
                        Some(Ok(bytes)) => {
                            frames.fetch_add(ends.count(&bytes), Ordering::Relaxed);
                        }
                        _ => break,
                    },
                }
            }
        });
        Ok(())
    }
}

/// Counts the ends of SSE frames (a blank line, `\n\n`) in a stream read chunk by chunk, one
/// that spans two chunks included.
#[derive(Default)]
struct FrameEnds {
    last_was_newline: bool,
}

impl FrameEnds {
    fn count(&mut self, chunk: &[u8]) -> u64 {
        let mut ends = 0;
        for &byte in chunk {
            let newline = byte == b'\n';
            if newline && self.last_was_newline {
                ends += 1;
                self.last_was_newline = false;
            } else {
                self.last_was_newline = newline;
            }
        }
        ends
    }
}

/// The id of the task a claim answered with, if any.
pub fn claimed_task(answer: &Value) -> Option<String> {
    answer["task"]["id"].as_str().map(str::to_string)
}

/// The task an MCP `claim` answer claimed: its text starts "Claimed T-n [claimed] ...".
pub fn mcp_claimed_task(answer: &Value) -> Option<String> {
    let text = answer["result"]["content"][0]["text"].as_str()?;
    let id = text.strip_prefix("Claimed ")?.split_whitespace().next()?;
    Some(id.to_string())
}

/// The ids of the messages an inbox answer holds.
pub fn message_ids(answer: &Value) -> Vec<String> {
    answer["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A Claude Code hook input for `tool` on `path` in session `session`.
pub fn hook_input(session: &str, tool: &str, path: &str) -> Value {
    json!({
        "session_id": session,
        "cwd": "/",
        "hook_event_name": "PostToolUse",
        "tool_name": tool,
        "tool_input": { "file_path": path },
    })
}

fn cut(text: &str) -> String {
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ends_are_counted_across_chunks() {
        let mut ends = FrameEnds::default();
        assert_eq!(ends.count(b"id: 1\ndata: {}\n\nid: 2\ndata: {}\n"), 1);
        assert_eq!(
            ends.count(b"\n:\n\n"),
            2,
            "the end split over two chunks counts once"
        );
        assert_eq!(ends.count(b"\n"), 0, "a third newline starts no frame");
    }

    #[test]
    fn answers_are_read_for_what_comes_next() {
        let claim = json!({ "task": { "id": "T-7" } });
        assert_eq!(claimed_task(&claim).as_deref(), Some("T-7"));
        assert_eq!(claimed_task(&json!({ "task": null })), None);
        let inbox = json!({ "messages": [{ "id": "M-1" }, { "id": "M-2" }] });
        assert_eq!(message_ids(&inbox), vec!["M-1", "M-2"]);
    }
}
