//! `conclave log` (recent events, or `--follow` live over SSE) and `conclave export`.
//!
//! `--follow` prints the recent backlog, then streams `/api/events/stream` from the last sequence
//! number it saw. When the connection drops (the server restarted, the network blinked) it
//! reconnects with `Last-Event-ID`, re-reading `.conclave/server.json` each time since a restarted
//! server may listen on another port, and skips anything it already printed.

use std::io::Write;
use std::time::Duration;

use conclave_core::event::NoData;
use conclave_core::model::{Event, EventList, EventPayload, StatusReport, format_duration_secs};
use serde_json::Value;

use crate::cli::LogArgs;
use crate::context::Context;
use crate::error::ApiError;
use crate::output::{clip, clock, note, print_json, print_json_line};

const DEFAULT_LIMIT: i64 = 100;
const EXPORT_PAGE: i64 = 1000;
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

pub async fn log(context: &Context, args: LogArgs) -> anyhow::Result<()> {
    let client = context.client()?;
    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(agent) = &args.agent {
        filters.push(("agent", agent.clone()));
    }
    if let Some(task) = args.task {
        filters.push(("task", task.to_string()));
    }
    if let Some(kind) = &args.kind {
        filters.push(("kind", kind.clone()));
    }
    let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
    if limit < 0 {
        anyhow::bail!("--limit must not be negative");
    }

    // Fix the point where the backlog ends and the live stream starts, so that nothing falls
    // between them and nothing is printed twice.
    let mut last_seq = if args.follow {
        let status: StatusReport = client.get("/api/status", &[]).await?;
        Some(status.last_seq)
    } else {
        None
    };

    let mut backlog = Vec::new();
    if limit > 0 {
        let mut query = filters.clone();
        query.push(("limit", limit.to_string()));
        query.push(("desc", "true".to_string()));
        if let Some(last) = last_seq {
            query.push(("before", (last + 1).to_string()));
        }
        let list: EventList = client.get("/api/events", &query).await?;
        backlog = list.events;
        backlog.sort_by_key(|event| event.seq);
    }

    if !args.follow {
        if args.json {
            return print_json(&EventList { events: backlog });
        }
        if backlog.is_empty() {
            note!("no events");
        }
        for event in &backlog {
            print_event(event, false)?;
        }
        return Ok(());
    }

    for event in &backlog {
        print_event(event, args.json)?;
    }
    if let Some(event) = backlog.last() {
        last_seq = Some(last_seq.unwrap_or(0).max(event.seq));
    }
    follow(context, &filters, last_seq.unwrap_or(0), args.json).await
}

/// Streams events after `last_seq` until the process is stopped.
async fn follow(
    context: &Context,
    filters: &[(&str, String)],
    mut last_seq: i64,
    json: bool,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(250);
    let mut connected_once = false;
    let mut announced_loss = false;
    loop {
        match stream_once(
            context,
            filters,
            &mut last_seq,
            json,
            &mut connected_once,
            &mut announced_loss,
        )
        .await
        {
            Ok(()) => {}
            Err(error) if is_retryable(&error) => tracing::debug!("event stream: {error:#}"),
            Err(error) => return Err(error),
        }
        if !announced_loss {
            note!("conclave: lost the event stream; reconnecting…");
            announced_loss = true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        if connected_once {
            // A connection that worked resets the backoff for the next drop.
            delay = Duration::from_millis(250);
            connected_once = false;
        }
    }
}

async fn stream_once(
    context: &Context,
    filters: &[(&str, String)],
    last_seq: &mut i64,
    json: bool,
    connected_once: &mut bool,
    announced_loss: &mut bool,
) -> anyhow::Result<()> {
    let client = context.client()?;
    let mut query = filters.to_vec();
    query.push(("after", last_seq.to_string()));
    let mut stream = client.events(&query, Some(*last_seq)).await?;
    *connected_once = true;
    if *announced_loss {
        note!("conclave: reconnected to {}", client.base_url());
        *announced_loss = false;
    }
    while let Some(event) = stream.next_event().await? {
        if event.seq <= *last_seq {
            continue;
        }
        *last_seq = event.seq;
        print_event(&event, json)?;
    }
    Ok(())
}

/// Whether following should wait and reconnect rather than give up: everything but a refusal
/// by the server (a 4xx answer such as a revoked token) is worth another try.
fn is_retryable(error: &anyhow::Error) -> bool {
    !error.chain().any(|cause| {
        cause
            .downcast_ref::<ApiError>()
            .is_some_and(|api| api.status < 500)
    })
}

pub async fn export(context: &Context) -> anyhow::Result<()> {
    let client = context.client()?;
    let mut after = 0;
    loop {
        let query = [
            ("after", after.to_string()),
            ("limit", EXPORT_PAGE.to_string()),
        ];
        let page: EventList = client.get("/api/events", &query).await?;
        let Some(last) = page.events.last() else {
            break;
        };
        let next = last.seq;
        for event in &page.events {
            print_json_line(event)?;
        }
        if next <= after {
            anyhow::bail!("the server returned events out of order (after #{after} came #{next})");
        }
        after = next;
    }
    Ok(())
}

fn print_event(event: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json_line(event);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", event_line(event))?;
    stdout.flush()?;
    Ok(())
}

/// `#seq HH:MM:SS actor kind T-x summary`.
pub fn event_line(event: &Event) -> String {
    let task = event
        .task
        .map(|task| task.to_string())
        .unwrap_or_else(|| "-".to_string());
    let summary = summarize(event);
    let line = format!(
        "#{} {} {} {} {task} {summary}",
        event.seq,
        clock(event.ts),
        event.actor,
        event.kind()
    );
    line.trim_end().to_string()
}

/// A short human summary of an event: its title first, then what its kind has to say.
fn summarize(event: &Event) -> String {
    let mut summary = Summary::default();
    if let Some(agent) = &event.agent
        && *agent != event.actor
    {
        summary.field("agent", agent);
    }
    // Every kind is rendered here: a new kind is a compile error until it is.
    match &event.payload {
        EventPayload::TaskCreated(d) => {
            summary.title(&d.title).list("after", &d.after);
            summary
                .opt("role", d.role.as_ref())
                .field("priority", d.priority);
        }
        EventPayload::TaskReady(NoData {})
        | EventPayload::TaskPending(NoData {})
        | EventPayload::AgentTokenIssued(NoData {}) => {}
        EventPayload::TaskClaimed(d) => {
            summary.title(&d.title).field("attempts", d.attempts);
        }
        EventPayload::TaskUpdated(d) => {
            summary.field("from", d.from).field("to", d.to);
            summary.opt("note", d.note.as_ref());
        }
        EventPayload::TaskDone(d) => {
            summary.field("summary", &d.summary).list("files", &d.files);
        }
        EventPayload::TaskFailed(d)
        | EventPayload::TaskReclaimed(d)
        | EventPayload::TaskBlocked(d) => {
            summary.field("reason", &d.reason);
        }
        EventPayload::TaskCancelled(d) => {
            summary.opt("reason", d.reason.as_ref());
        }
        EventPayload::TaskAssigned(d) => {
            summary.title(&d.title).opt("from", d.from.as_ref());
        }
        EventPayload::TaskEdited(d) => {
            summary.title(&d.title).list("changed", &d.changed);
            summary.field("priority", d.priority);
        }
        EventPayload::TaskReopened(d) => {
            summary
                .field("from", d.from)
                .opt("reason", d.reason.as_ref());
        }
        EventPayload::TaskPassed(d) => {
            summary.field("stage", d.stage).opt("role", d.role.as_ref());
            summary.field("summary", &d.summary);
        }
        EventPayload::TaskSentBack(d) => {
            summary.field("stage", d.stage).opt("role", d.role.as_ref());
            summary.field("comments", &d.comments);
        }
        EventPayload::TaskWaitingApproval(d) => {
            summary
                .opt("role", d.role.as_ref())
                .field("summary", &d.summary);
        }
        EventPayload::TaskApproved(d) | EventPayload::TaskRejected(d) => {
            summary.opt("comment", d.comment.as_ref());
        }
        EventPayload::AgentRegistered(d) => {
            summary.opt("role", d.role.as_ref()).list("caps", &d.caps);
            summary.opt("model", d.model.as_ref());
        }
        EventPayload::AgentTokenRevoked(d) => {
            summary
                .opt("token", d.token.as_ref())
                .field("count", d.count);
        }
        EventPayload::AgentStatusChanged(d) => {
            summary.field("from", d.from).field("to", d.to);
        }
        EventPayload::AgentSession(d)
        | EventPayload::AgentSessionEnd(d)
        | EventPayload::AgentCompacting(d) => {
            summary.opt("session_id", d.session_id.as_ref());
        }
        EventPayload::AgentControl(d) => {
            summary.field("action", d.action);
        }
        EventPayload::AgentSessionStart(d) => {
            summary.opt("source", d.source.as_ref());
            summary.opt("session_id", d.session_id.as_ref());
        }
        EventPayload::AgentStarted(d) => {
            summary.field("pid", d.pid).opt("resume", d.resume.as_ref());
        }
        EventPayload::AgentText(d) => {
            summary.field("text", &d.text);
        }
        EventPayload::AgentTool(d) => {
            let input = match &d.input {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            summary.field("tool", &d.tool).field("input", input);
            summary.field("result_bytes", d.result_bytes);
        }
        EventPayload::AgentTurn(d) => {
            summary.opt("context_tokens", d.context_tokens);
            summary.opt("context_window", d.context_window);
            summary.field("cost_usd", format!("{:.4}", d.cost_usd));
        }
        EventPayload::AgentIteration(d) => {
            summary
                .field("number", d.number)
                .field("cost_usd", format!("{:.4}", d.cost_usd))
                .opt("turns", d.turns)
                .opt("check_exit", d.check_exit)
                .field("outcome", &d.outcome);
        }
        EventPayload::AgentConfirmRequested(d) => {
            summary
                .field("next_iteration", d.next_iteration)
                .field("summary", &d.summary);
        }
        EventPayload::AgentConfirmed(d) => {
            summary
                .field("request", d.request)
                .field("decision", d.decision)
                .field("prompt_edited", d.prompt.is_some());
        }
        EventPayload::AgentBudgetExceeded(d) => {
            summary.field("message", &d.message);
        }
        EventPayload::AgentHandoffRequested(d) => {
            summary.field("context_tokens", d.context_tokens);
            summary.field("context_window", d.context_window);
        }
        EventPayload::AgentRecycled(d) => {
            summary.opt("previous_session", d.previous_session.as_ref());
        }
        EventPayload::AgentHibernated(d) | EventPayload::AgentExited(d) => {
            summary.field("exit", &d.exit).flag("stopped", d.stopped);
            summary.flag("restart", d.restart);
        }
        EventPayload::AgentCrashed(d) => {
            summary
                .opt("reason", d.reason.as_ref())
                .flag("gave_up", d.gave_up);
            summary.opt("message", d.message.as_ref());
        }
        EventPayload::AgentRestarted(d) => {
            summary.flag("asked", d.asked).opt("restarts", d.restarts);
        }
        EventPayload::AgentWoken(d) => {
            summary
                .list("messages", &d.messages)
                .list("tasks", &d.tasks);
        }
        EventPayload::AgentAlert(d) => {
            summary
                .field("cause", &d.cause)
                .field("message", &d.message);
        }
        EventPayload::LeaseGranted(d) | EventPayload::LeaseRenewed(d) => {
            summary.field("path", &d.path).field("mode", d.mode);
            summary.field("ttl", format_duration_secs(d.ttl_secs));
            summary.field("fencing_token", d.fencing_token);
            summary.opt("reason", d.reason.as_ref());
        }
        EventPayload::LeaseReleased(d) => {
            summary.field("path", &d.path).field("why", &d.why);
        }
        EventPayload::LeaseExpired(d) => {
            summary.field("path", &d.path);
        }
        EventPayload::LeaseDenied(d) => {
            summary.list("paths", &d.paths).field("why", &d.why);
        }
        EventPayload::MessageSent(d) => {
            summary
                .field("id", &d.id)
                .field("to", &d.to)
                .field("kind", d.kind);
            summary.flag("urgent", d.urgent).field("body", &d.body);
        }
        EventPayload::MessageAcked(d) => {
            summary.list("ids", &d.ids);
        }
        EventPayload::NoteAdded(d) => {
            summary
                .title(&d.title)
                .field("id", &d.id)
                .field("kind", d.kind);
            summary.opt("supersedes", d.supersedes.as_ref());
        }
        EventPayload::NoteSuperseded(d) => {
            summary.field("id", &d.id).field("by", &d.by);
        }
        EventPayload::FileTouched(d) => {
            summary.field("path", &d.path).field("tool", &d.tool);
            summary.opt("change", d.change.as_ref());
            summary.opt("command", d.command.as_ref());
            summary.flag("ambiguous", d.ambiguous);
            if !d.candidates.is_empty() {
                summary.list("candidates", &d.candidates);
            }
        }
        EventPayload::FileDependencyChanged(d) => {
            summary
                .field("path", &d.path)
                .field("ecosystem", &d.ecosystem)
                .field("file", &d.file)
                .field("tool", &d.tool);
            summary.opt("command", d.command.as_ref());
        }
        EventPayload::QueueEnqueued(d)
        | EventPayload::QueueMerging(d)
        | EventPayload::QueueSkipped(d)
        | EventPayload::QueueRetried(d) => {
            summary.field("branch", &d.branch);
        }
        EventPayload::QueueLanded(d) => {
            summary
                .field("branch", &d.branch)
                .field("outcome", &d.outcome);
        }
        EventPayload::QueueSentBack(d) => {
            // The details are long (hunks, check output): the first line says enough here.
            let first = d.details.lines().next().unwrap_or("");
            summary
                .field("branch", &d.branch)
                .field("reason", &d.reason)
                .field("details", first);
        }
        EventPayload::QueuePaused(d) => {
            summary.opt("reason", d.reason.as_ref());
        }
        EventPayload::QueueResumed(NoData {}) => {}
        // A row this version cannot type (an older one's): its data as it was stored.
        EventPayload::Unrecognized(row) => {
            if let Value::Object(fields) = row.data() {
                for (key, value) in fields {
                    match value {
                        Value::String(text) => summary.field(key, text),
                        other => summary.field(key, other),
                    };
                }
            }
        }
    }
    summary.render()
}

/// The parts of an event's summary line.
#[derive(Default)]
struct Summary {
    title: Option<String>,
    parts: Vec<String>,
}

impl Summary {
    fn title(&mut self, title: &str) -> &mut Self {
        self.title = Some(format!("{:?}", clip(title, 60)));
        self
    }

    /// `key=value`; quoted when the value has spaces; left out when empty or null.
    fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let text = value.to_string();
        if text.is_empty() || text == "null" {
            return self;
        }
        let text = clip(&text, 60);
        if text.contains(char::is_whitespace) {
            self.parts.push(format!("{key}={text:?}"));
        } else {
            self.parts.push(format!("{key}={text}"));
        }
        self
    }

    fn opt(&mut self, key: &str, value: Option<impl std::fmt::Display>) -> &mut Self {
        match value {
            Some(value) => self.field(key, value),
            None => self,
        }
    }

    /// `key=a,b`; left out when empty.
    fn list(&mut self, key: &str, items: &[impl std::fmt::Display]) -> &mut Self {
        if !items.is_empty() {
            let joined: Vec<String> = items.iter().map(ToString::to_string).collect();
            self.parts.push(format!("{key}={}", joined.join(",")));
        }
        self
    }

    /// The bare key when set.
    fn flag(&mut self, key: &str, set: bool) -> &mut Self {
        if set {
            self.parts.push(key.to_string());
        }
        self
    }

    fn render(self) -> String {
        let parts: Vec<String> = self.title.into_iter().chain(self.parts).collect();
        clip(&parts.join(" "), 160)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_from(kind: &str, data: serde_json::Value) -> Event {
        serde_json::from_value(serde_json::json!({
            "seq": 1, "ts": "2030-01-01T00:00:00Z", "actor": "admin", "kind": kind,
            "task": null, "agent": "bob", "data": data,
        }))
        .expect("an event")
    }

    #[test]
    fn each_kind_says_what_matters_and_old_rows_show_their_data() {
        let tool = event_from(
            "agent.tool",
            serde_json::json!({"tool": "Bash", "input": "cargo test", "result_bytes": 120}),
        );
        assert_eq!(
            summarize(&tool),
            "agent=bob tool=Bash input=\"cargo test\" result_bytes=120"
        );
        let exited = event_from(
            "agent.exited",
            serde_json::json!({"exit": "signal: 15", "stopped": true}),
        );
        assert_eq!(summarize(&exited), "agent=bob exit=\"signal: 15\" stopped");
        let denied = event_from(
            "lease.denied",
            serde_json::json!({"paths": ["a.rs", "b.rs"], "why": "held"}),
        );
        assert_eq!(summarize(&denied), "agent=bob paths=a.rs,b.rs why=held");
        // A kind this version does not know, as an older or newer server may send it.
        let old = event_from(
            "agent.danced",
            serde_json::json!({"steps": 3, "style": "tango"}),
        );
        assert!(matches!(old.payload, EventPayload::Unrecognized(_)));
        assert_eq!(summarize(&old), "agent=bob steps=3 style=tango");
        assert!(
            event_line(&old).contains(" admin agent.danced - "),
            "{}",
            event_line(&old)
        );
    }

    #[test]
    fn event_lines_name_sequence_actor_kind_task_and_title() {
        let event = Event {
            seq: 7,
            ts: chrono::Utc::now(),
            actor: "alice".into(),
            task: Some(conclave_core::model::TaskId(3)),
            agent: Some("alice".into()),
            payload: EventPayload::TaskClaimed(conclave_core::event::TaskClaimed {
                title: "fix the parser".into(),
                attempts: 0,
            }),
        };
        let line = event_line(&event);
        assert!(line.starts_with("#7 "), "{line}");
        assert!(
            line.ends_with(" alice task.claimed T-3 \"fix the parser\" attempts=0"),
            "{line}"
        );
    }
}
