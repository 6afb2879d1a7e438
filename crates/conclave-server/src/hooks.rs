//! Claude Code hooks, served at `POST /hooks/<event>` (Claude Code's HTTP hooks post the hook's
//! JSON here with the agent's token). `conclave hook <event>` command hooks forward to the same
//! endpoints, so there is one behaviour behind both ways in.
//!
//! - `pre-tool-use`: a file-writing tool's path is leased to the agent on the spot (tied to its
//!   current task); a path held by another agent is denied with a reason naming the holder.
//! - `post-tool-use`: records the file touched, renews the agent's leases, delivers urgent mail.
//! - `session-start`: records the session id and injects role, task, messages, decisions and the
//!   predecessor's handoff (bounded); again after a compaction or a resume.
//! - `user-prompt-submit`: delivers urgent mail. `stop`: keeps the agent working while it holds
//!   a task, when the team's policy says so. `pre-compact`, `session-end`: recorded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use conclave_core::event::{AgentSession, AgentSessionStart, FileTouched};
use conclave_core::model::EventPayload;
use conclave_core::model::{
    Actor, AgentStatus, AgentUpdate, LeaseMode, LeaseRequest, Message, MessageKind, NoteKind,
    format_duration_secs,
};
use conclave_core::paths;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{ApiPath, App, IdempotencyKey, only_agent};
use crate::error::{ApiError, ApiResult};

/// Tools whose `tool_input` names a file they write.
pub const FILE_WRITING_TOOLS: &[&str] = &["Edit", "Write", "MultiEdit", "NotebookEdit"];
/// About 1,500 tokens.
const MAX_CONTEXT_CHARS: usize = 6000;
/// How many times in a row the Stop hook may keep an agent working.
const MAX_STOP_BLOCKS: u32 = 3;

/// The hook input fields Conclave reads; the rest is ignored.
#[derive(Debug, Default, Deserialize)]
pub struct HookInput {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub hook_event_name: Option<String>,
    #[serde(default)]
    pub tool_name: Option<String>,
    #[serde(default)]
    pub tool_input: Option<Value>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub stop_hook_active: Option<bool>,
}

/// Per-session count of consecutive Stop blocks (a bound, not state worth persisting).
#[derive(Default)]
pub struct StopBlocks(Mutex<HashMap<String, u32>>);

pub async fn handle(
    State(app): State<App>,
    actor: Actor,
    ApiPath(event): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let agent = only_agent(&actor, "report hook events")?.to_string();
    // Claude Code's payload evolves: read leniently, never refuse it for an unknown field.
    let input: HookInput = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("hook input is not JSON: {error}")))?;
    let answer = match event.as_str() {
        "pre-tool-use" => pre_tool_use(&app, &actor, &agent, &input).await?,
        "post-tool-use" => post_tool_use(&app, &actor, &agent, &input).await?,
        "session-start" => session_start(&app, &actor, &agent, &input).await?,
        "user-prompt-submit" => urgent_context(&app, &actor, &agent, "UserPromptSubmit").await?,
        "stop" => stop(&app, &agent, &input).await?,
        "pre-compact" => {
            let compacting = AgentSession {
                session_id: input.session_id.clone(),
            };
            record(
                &app,
                &actor,
                &agent,
                EventPayload::AgentCompacting(compacting),
            )
            .await?;
            json!({})
        }
        "session-end" => session_end(&app, &actor, &agent, &input).await?,
        other => {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown hook event {other:?}"),
            ));
        }
    };
    Ok(Json(answer))
}

/// The project-relative path a file-writing tool call touches, or none (other tools, or a path
/// outside the project).
pub fn touched_path(root: Option<&Path>, input: &HookInput) -> Option<String> {
    let tool = input.tool_name.as_deref()?;
    if !FILE_WRITING_TOOLS.contains(&tool) {
        return None;
    }
    let tool_input = input.tool_input.as_ref()?;
    let file = tool_input
        .get("file_path")
        .or_else(|| tool_input.get("notebook_path"))
        .and_then(Value::as_str)?;
    let cwd = PathBuf::from(input.cwd.as_deref().unwrap_or("/"));
    let root = root.map(Path::to_path_buf).unwrap_or_else(|| cwd.clone());
    paths::relativize(&root, &cwd, file).map(|path| escape_glob(&path))
}

/// A concrete file name as a lease pattern that matches exactly it: `[`, `*` and `?` (legal in
/// file names, such as `app/[id]/page.tsx`) become one-character classes.
fn escape_glob(path: &str) -> String {
    let mut escaped = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '[' | '*' | '?' => {
                escaped.push('[');
                escaped.push(c);
                escaped.push(']');
            }
            _ => escaped.push(c),
        }
    }
    escaped
}

async fn pre_tool_use(
    app: &App,
    actor: &Actor,
    agent: &str,
    input: &HookInput,
) -> ApiResult<Value> {
    let Some(path) = touched_path(app.settings().project_root.as_deref(), input) else {
        return Ok(json!({}));
    };
    let request = LeaseRequest {
        paths: vec![path.clone()],
        mode: LeaseMode::Exclusive,
        ttl_secs: None,
        reason: Some(format!(
            "{} (hook)",
            input.tool_name.as_deref().unwrap_or("edit")
        )),
        task: None,
    };
    match crate::api::leases::acquire_for(
        app,
        actor,
        &IdempotencyKey::default(),
        agent.to_string(),
        request,
    )
    .await
    {
        Ok(_) => Ok(json!({})),
        Err(error) if error.code == "lease_conflict" => {
            crate::api::leases::record_denial(
                app,
                agent,
                std::slice::from_ref(&path),
                &error.message,
            )
            .await;
            let reason = deny_reason(&path, &error);
            Ok(json!({
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": reason,
                }
            }))
        }
        Err(error) if error.code == "invalid_input" => Ok(json!({})),
        Err(error) => Err(error),
    }
}

fn deny_reason(path: &str, error: &ApiError) -> String {
    match error.conflicts.first() {
        Some(conflict) => {
            let left = (conflict.expires_at - chrono::Utc::now()).num_seconds();
            format!(
                "Conclave: {path} is leased by {}{} for {} more ({} lease on {}). Do not edit it now: \
                 message {} (send) to coordinate, or pick other work (claim).",
                conflict.holder,
                conflict
                    .task
                    .map(|t| format!(" for {t}"))
                    .unwrap_or_default(),
                format_duration_secs(left),
                conflict.mode,
                conflict.held,
                conflict.holder
            )
        }
        None => format!(
            "Conclave: {path} is leased by another agent: {}",
            error.message
        ),
    }
}

async fn post_tool_use(
    app: &App,
    actor: &Actor,
    agent: &str,
    input: &HookInput,
) -> ApiResult<Value> {
    let path = touched_path(app.settings().project_root.as_deref(), input);
    let name = agent.to_string();
    let tool = input.tool_name.clone().unwrap_or_default();
    app.write(actor, &IdempotencyKey::default(), move |tx| {
        tx.renew_leases(&name)?;
        if let Some(path) = &path {
            let task = tx.read().held_tasks(&name)?.first().map(|t| t.id);
            let touched = FileTouched {
                path: path.clone(),
                tool: tool.clone(),
            };
            tx.emit(&name, task, Some(&name), EventPayload::FileTouched(touched))?;
        }
        Ok(())
    })
    .await?;
    urgent_context(app, actor, agent, "PostToolUse").await
}

/// Urgent unacknowledged messages as additional context (acknowledged once injected).
async fn urgent_context(
    app: &App,
    actor: &Actor,
    agent: &str,
    event_name: &str,
) -> ApiResult<Value> {
    let name = agent.to_string();
    let urgent: Vec<Message> = app
        .read(move |r| Ok(r.inbox(&name)?.into_iter().filter(|m| m.urgent).collect()))
        .await?;
    if urgent.is_empty() {
        return Ok(json!({}));
    }
    let mut context = String::from("Urgent Conclave messages:\n");
    let ids = append_messages(&mut context, &urgent, MAX_CONTEXT_CHARS);
    acknowledge(app, actor, agent, ids).await?;
    Ok(
        json!({ "hookSpecificOutput": { "hookEventName": event_name, "additionalContext": context } }),
    )
}

/// Appends messages to `out` within `budget` characters; returns the ids shown.
fn append_messages(out: &mut String, messages: &[Message], budget: usize) -> Vec<String> {
    let mut shown = Vec::new();
    for message in messages {
        let line = format!(
            "- {} from {} ({}): {}\n",
            message.id, message.sender, message.kind, message.body
        );
        if out.len() + line.len() > budget {
            if shown.is_empty() {
                // A message longer than the whole budget still gets through, cut, rather than
                // blocking every message behind it.
                out.push_str(&cut_to(&line, budget.saturating_sub(out.len()).max(200)));
                out.push_str("… (cut; the full text is in `conclave msg list`)\n");
                shown.push(message.id.clone());
                continue;
            }
            let _ = writeln!(
                out,
                "- ({} more: use the inbox tool)",
                messages.len() - shown.len()
            );
            break;
        }
        out.push_str(&line);
        shown.push(message.id.clone());
    }
    shown
}

async fn acknowledge(app: &App, actor: &Actor, agent: &str, ids: Vec<String>) -> ApiResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let name = agent.to_string();
    app.write(actor, &IdempotencyKey::default(), move |tx| {
        tx.ack_messages(&name, &ids)
    })
    .await?;
    Ok(())
}

async fn session_start(
    app: &App,
    actor: &Actor,
    agent: &str,
    input: &HookInput,
) -> ApiResult<Value> {
    let name = agent.to_string();
    let update = AgentUpdate {
        session_id: input.session_id.clone(),
        status: Some(AgentStatus::Working),
        ..AgentUpdate::default()
    };
    app.write(actor, &IdempotencyKey::default(), move |tx| {
        tx.update_agent(&name, &name, update)
    })
    .await?;
    let started = AgentSessionStart {
        source: input.source.clone(),
        session_id: input.session_id.clone(),
    };
    record(app, actor, agent, EventPayload::AgentSessionStart(started)).await?;
    let name = agent.to_string();
    let (me, held, inbox, decisions) = app
        .read(move |r| {
            Ok((
                r.agent(&name)?,
                r.held_tasks(&name)?,
                r.inbox(&name)?,
                r.notes(Some(NoteKind::Decision), false, 5)?,
            ))
        })
        .await?;
    let mut context = format!(
        "You are {}, role {}, in a Conclave team (use the mcp__conclave__* tools: status, claim, done, send, inbox, note).\n",
        me.name,
        me.role.as_deref().unwrap_or("none")
    );
    if held.is_empty() {
        context.push_str("You hold no task: claim one.\n");
    }
    for task in &held {
        let _ = writeln!(
            context,
            "Your current task: {} \"{}\" ({}).",
            task.id, task.title, task.status
        );
        if !task.body.is_empty() {
            let body: String = task.body.chars().take(1500).collect();
            let _ = writeln!(context, "{body}");
        }
    }
    let (handoffs, others): (Vec<Message>, Vec<Message>) = inbox
        .into_iter()
        .partition(|m| m.kind == MessageKind::Handoff);
    let mut shown = Vec::new();
    if !handoffs.is_empty() {
        context.push_str("Handoff from your previous session:\n");
        shown.extend(append_messages(
            &mut context,
            &handoffs,
            MAX_CONTEXT_CHARS / 2,
        ));
    }
    if !others.is_empty() {
        context.push_str("Unread messages:\n");
        shown.extend(append_messages(
            &mut context,
            &others,
            MAX_CONTEXT_CHARS - 1200,
        ));
    }
    if !decisions.is_empty() {
        context.push_str("Recent decisions:\n");
        for note in &decisions {
            let line = format!("- {} {}\n", note.id, note.title);
            if context.len() + line.len() > MAX_CONTEXT_CHARS {
                break;
            }
            context.push_str(&line);
        }
    }
    acknowledge(app, actor, agent, shown).await?;
    Ok(
        json!({ "hookSpecificOutput": { "hookEventName": "SessionStart", "additionalContext": context } }),
    )
}

async fn stop(app: &App, agent: &str, input: &HookInput) -> ApiResult<Value> {
    if !app.settings().keep_working {
        return Ok(json!({}));
    }
    let name = agent.to_string();
    let held = app.read(move |r| r.held_tasks(&name)).await?;
    let session = input
        .session_id
        .clone()
        .unwrap_or_else(|| agent.to_string());
    let blocks = app.stop_blocks();
    let mut counts = blocks.0.lock().unwrap_or_else(|p| p.into_inner());
    let Some(task) = held.first() else {
        counts.remove(&session);
        return Ok(json!({}));
    };
    let count = counts.entry(session).or_insert(0);
    if *count >= MAX_STOP_BLOCKS {
        return Ok(json!({}));
    }
    *count += 1;
    Ok(json!({
        "decision": "block",
        "reason": format!("You still hold {} \"{}\". Finish it (done), hand it back (fail with a reason), or mark it blocked.", task.id, task.title),
    }))
}

async fn session_end(app: &App, actor: &Actor, agent: &str, input: &HookInput) -> ApiResult<Value> {
    // Claims and leases stay until they expire or are released, so that a person can resume.
    let name = agent.to_string();
    let update = AgentUpdate {
        status: Some(AgentStatus::Offline),
        ..AgentUpdate::default()
    };
    app.write(actor, &IdempotencyKey::default(), move |tx| {
        tx.update_agent(&name, &name, update)
    })
    .await?;
    let ended = AgentSession {
        session_id: input.session_id.clone(),
    };
    record(app, actor, agent, EventPayload::AgentSessionEnd(ended)).await?;
    Ok(json!({}))
}

async fn record(app: &App, actor: &Actor, agent: &str, payload: EventPayload) -> ApiResult<()> {
    let name = agent.to_string();
    app.write(actor, &IdempotencyKey::default(), move |tx| {
        tx.emit(&name, None, Some(&name), payload.clone())
    })
    .await?;
    Ok(())
}

/// The longest prefix of `text` within `max` bytes, on a character boundary.
pub(crate) fn cut_to(text: &str, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_with_glob_characters_lease_exactly_that_file() {
        let input = HookInput {
            cwd: Some("/repo".into()),
            tool_name: Some("Write".into()),
            tool_input: Some(serde_json::json!({ "file_path": "/repo/app/[id]/page.tsx" })),
            ..HookInput::default()
        };
        let path = touched_path(Some(Path::new("/repo")), &input).expect("inside the root");
        assert_eq!(path, "app/[[]id]/page.tsx");
        let pattern = paths::normalize_lease_path(&path).expect("valid pattern");
        assert!(pattern.matches("app/[id]/page.tsx"));
        assert!(!pattern.matches("app/i/page.tsx"));
    }

    #[test]
    fn a_message_longer_than_the_budget_is_cut_not_stuck() {
        let long = Message {
            id: "M-1".into(),
            sender: "a".into(),
            to: "b".into(),
            thread: "M-1".into(),
            kind: MessageKind::Chat,
            urgent: true,
            body: "x".repeat(10_000),
            created_at: chrono::Utc::now(),
            deliveries: Vec::new(),
        };
        let mut out = String::new();
        let shown = append_messages(&mut out, &[long.clone(), long], 1000);
        assert_eq!(shown, vec!["M-1".to_string()]);
        assert!(out.len() < 1200 && out.contains("cut"), "{}", out.len());
    }
}
