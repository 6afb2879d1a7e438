//! `conclave log` (recent events, or `--follow` live over SSE) and `conclave export`.
//!
//! `--follow` prints the recent backlog, then streams `/api/events/stream` from the last sequence
//! number it saw. When the connection drops (the server restarted, the network blinked) it
//! reconnects with `Last-Event-ID`, re-reading `.conclave/server.json` each time since a restarted
//! server may listen on another port, and skips anything it already printed.

use std::io::Write;
use std::time::Duration;

use conclave_core::model::{Event, EventList, StatusReport};
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
        event.kind
    );
    line.trim_end().to_string()
}

/// A short human summary of an event's payload: its title first, then the other scalar fields.
fn summarize(event: &Event) -> String {
    let mut parts = Vec::new();
    if let Some(agent) = &event.agent
        && *agent != event.actor
    {
        parts.push(format!("agent={agent}"));
    }
    if let Value::Object(fields) = &event.data {
        if let Some(Value::String(title)) = fields.get("title") {
            parts.insert(0, format!("{:?}", clip(title, 60)));
        }
        for (key, value) in fields {
            if key == "title" {
                continue;
            }
            let text = match value {
                Value::Null => continue,
                Value::String(text) if text.is_empty() => continue,
                Value::String(text) => {
                    let text = clip(text, 60);
                    if text.contains(char::is_whitespace) {
                        format!("{text:?}")
                    } else {
                        text
                    }
                }
                Value::Array(items) if items.is_empty() => continue,
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Object(map) if map.is_empty() => continue,
                other => other.to_string(),
            };
            parts.push(format!("{key}={text}"));
        }
    }
    clip(&parts.join(" "), 160)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_name_sequence_actor_kind_task_and_title() {
        let event = Event {
            seq: 7,
            ts: chrono::Utc::now(),
            actor: "alice".into(),
            kind: "task.claimed".into(),
            task: Some(conclave_core::model::TaskId(3)),
            agent: Some("alice".into()),
            data: serde_json::json!({ "title": "fix the parser", "attempts": 0, "note": null }),
        };
        let line = event_line(&event);
        assert!(line.starts_with("#7 "), "{line}");
        assert!(
            line.ends_with(" alice task.claimed T-3 \"fix the parser\" attempts=0"),
            "{line}"
        );
    }
}
