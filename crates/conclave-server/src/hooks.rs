//! Claude Code hooks, served at `POST /hooks/<event>` (Claude Code's HTTP hooks post the hook's
//! JSON here with the agent's token). `conclave hook <event>` command hooks forward to the same
//! endpoints, so there is one behaviour behind both ways in. What the hooks do to the team's state
//! (leases, inbox delivery, the keep-working policy) is in [`crate::ops`], shared with the MCP
//! tools and the JSON API; this module reads the hook input and shapes the hook answers.
//!
//! - `pre-tool-use`: a file-writing tool's path is leased to the agent on the spot (tied to its
//!   current task); a path held by another agent is denied with a reason naming the holder, in
//!   one shared tree; across worktrees (either agent in its own) it is allowed with a warning
//!   naming the holder and its task, and the holder is told (denied with `[merge]
//!   strict_leases`). Paths in an agent's worktree are the project's ([`paths::project_path`]).
//! - `post-tool-use`: records the file touched, renews the agent's leases, delivers urgent mail.
//! - `session-start`: records the session id and injects role, task, messages, decisions and the
//!   predecessor's handoff (bounded); again after a compaction or a resume.
//! - `user-prompt-submit`: delivers urgent mail. `stop`: keeps the agent working while it holds
//!   a task, when the team's policy says so. `pre-compact`, `session-end`: recorded.
//!
//! Write attribution ([`crate::attribution`]): for a `Bash` call, `pre-tool-use` and
//! `post-tool-use` also snapshot the agent's tree before and after it, to record what the
//! command wrote; a file tool's change of a dependency manifest or lockfile is flagged.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use conclave_core::CoreError;
use conclave_core::event::{AgentSession, AgentSessionStart, FileTouched};
use conclave_core::model::EventPayload;
use conclave_core::model::{
    Actor, AgentStatus, AgentUpdate, FILE_WRITING_TOOLS, Isolation, LeaseMode, LeaseRequest,
    Message, MessageKind, NewMessage, NoteKind,
};
use conclave_core::paths;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::attribution;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::ops::{self, IdempotencyKey, OpError};

/// About 1,500 tokens.
const MAX_CONTEXT_CHARS: usize = 6000;
/// Bounds on what a hook's input can put in an event or the agents table (Claude Code's session
/// ids are UUIDs and its tool names short; anything longer is cut, with a marker).
const MAX_SESSION_ID: usize = 128;
const MAX_TOOL_NAME: usize = 128;
/// The longest path recorded in a `file.touched` event (the OS's own path limit).
const MAX_TOUCHED_PATH: usize = paths::MAX_LEASE_PATH_LEN;
const CUT_MARKER: &str = "…(cut)";

/// The hook input fields Conclave reads; the rest is ignored.
#[derive(Debug, Default, Deserialize)]
struct HookInput {
    #[serde(default)]
    pub session_id: Option<String>,
    /// Ties a tool call's `PreToolUse` to its `PostToolUse` (write attribution).
    #[serde(default)]
    pub tool_use_id: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub tool_name: Option<String>,
    #[serde(default)]
    pub tool_input: Option<Value>,
    #[serde(default)]
    pub source: Option<String>,
    /// The root of the agent's clone of the project, from the [`ROOT_HEADER`] its hook sends:
    /// on another host it is not the server's, and paths are made relative to it.
    #[serde(skip)]
    pub clone_root: Option<PathBuf>,
    /// `clone_root` is the server's own project root.
    #[serde(skip)]
    pub in_the_servers_clone: bool,
}

/// The header naming the agent's project root (its clone, on its host): `conclave up` and
/// `conclave claude` put it on the hooks they configure, `conclave hook` sends it too.
pub const ROOT_HEADER: &str = "x-conclave-root";

pub async fn handle(
    State(app): State<App>,
    actor: Actor,
    ApiPath(event): ApiPath<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let agent = ops::require_agent(&actor, "report hook events")?.to_string();
    // Claude Code's payload evolves: read leniently, never refuse it for an unknown field.
    let mut input: HookInput = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("hook input is not JSON: {error}")))?;
    input.session_id = input.session_id.map(|id| bounded(id, MAX_SESSION_ID));
    input.tool_name = input.tool_name.map(|name| bounded(name, MAX_TOOL_NAME));
    input.clone_root = headers
        .get(ROOT_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(PathBuf::from)
        .filter(|root| root.is_absolute());
    input.in_the_servers_clone = match (&input.clone_root, &app.settings().project_root) {
        (Some(clone), Some(root)) => {
            clone == root || std::fs::canonicalize(clone).ok() == std::fs::canonicalize(root).ok()
        }
        _ => false,
    };
    let answer = match event.as_str() {
        "pre-tool-use" => {
            if let Some(call) = shell_call(&input) {
                attribution::before_shell(&app, &agent, &call).await;
            }
            pre_tool_use(&app, &actor, &agent, &input).await?
        }
        "post-tool-use" => {
            if let Some(call) = shell_call(&input) {
                attribution::after_shell(&app, &actor, &agent, &call).await;
            }
            post_tool_use(&app, &actor, &agent, &input).await?
        }
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
fn touched_path(root: Option<&Path>, input: &HookInput) -> Option<String> {
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
    let root = (input.clone_root.as_deref().or(root).map(Path::to_path_buf))
        .unwrap_or_else(|| cwd.clone());
    // An agent in its own worktree names the same files as the project's (paths.rs).
    paths::project_path(&root, &cwd, file).map(|path| escape_glob(&path))
}

/// `text` within `max` bytes: cut, with a marker saying so, when longer.
fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = ops::cut_to(&text, max.saturating_sub(CUT_MARKER.len()));
    cut.push_str(CUT_MARKER);
    cut
}

/// A concrete file name as a lease pattern that matches exactly it: `[`, `*` and `?` (legal in
/// file names, such as `app/[id]/page.tsx`) become one-character classes.
pub(crate) fn escape_glob(path: &str) -> String {
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

/// A `Bash` call, whose writes are attributed by comparing its tree before and after it. Not
/// for an agent editing another clone than the server's (on another host): the server cannot
/// see that tree, and a folder at the same path here would be another clone.
fn shell_call(input: &HookInput) -> Option<attribution::ShellCall> {
    if input.clone_root.is_some() && !input.in_the_servers_clone {
        return None;
    }
    attribution::ShellCall::from_hook(
        input.tool_name.as_deref(),
        input.session_id.as_deref(),
        input.tool_use_id.as_deref(),
        input.cwd.as_deref(),
        input.tool_input.as_ref(),
    )
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
    match ops::acquire_leases(app, actor, &IdempotencyKey::default(), agent, request).await {
        Ok(_) => Ok(json!({})),
        Err(OpError::Core(CoreError::LeaseConflict(conflicts)))
            if !strict_leases(app) && in_another_tree(app, agent, &conflicts).await? =>
        {
            warn_across_trees(app, agent, &path, &conflicts).await
        }
        Err(OpError::Core(CoreError::LeaseConflict(conflicts))) => Ok(json!({
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": ops::lease_denial_reason(&path, &conflicts),
            }
        })),
        // A file in the project that cannot be leased (a backslash in its name, a path past the
        // length limit, an agent at its lease cap) would be edited with no lease at all, which
        // is exactly what leases exist to stop: refuse it, saying why.
        Err(error) if error.code() == "invalid_input" => Ok(json!({
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": format!(
                    "Conclave cannot lease {path} for this edit: {error}. Edit another file, or ask a person."
                ),
            }
        })),
        // The leases near the file kept changing while they were checked: the edit is not
        // covered yet, so it waits for the next try rather than going ahead unleased.
        Err(error @ OpError::Core(CoreError::LeaseSnapshotStale(_))) => Ok(json!({
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": format!(
                    "Conclave could not check the leases on {path} just now: {error}. Try the edit again."
                ),
            }
        })),
        Err(error) => Err(error.into()),
    }
}

/// Whether an edit in another tree than the holder's is denied too (`[merge] strict_leases`).
fn strict_leases(app: &App) -> bool {
    app.settings()
        .merge
        .as_ref()
        .is_some_and(|queue| queue.settings().strict_leases)
}

/// Whether `agent` edits in another tree than every holder of `conflicts`: one of the two works
/// in its own worktree (two shared agents edit one tree, where a lease stops the second edit).
async fn in_another_tree(
    app: &App,
    agent: &str,
    conflicts: &[conclave_core::LeaseConflict],
) -> ApiResult<bool> {
    let mut names: Vec<String> = conflicts.iter().map(|c| c.holder.clone()).collect();
    names.push(agent.to_string());
    let worktree = app
        .read(move |r| {
            names
                .iter()
                .map(|name| {
                    Ok(r.find_agent(name)?
                        .is_some_and(|a| a.isolation == Isolation::Worktree))
                })
                .collect::<conclave_core::Result<Vec<bool>>>()
        })
        .await?;
    let (mine, holders) = worktree.split_last().unwrap_or((&false, &[]));
    Ok(*mine || holders.iter().all(|holder| *holder))
}

/// An edit of a file another agent leases in another worktree: allowed (the trees are
/// separate), with a warning naming the holder and its task, shown to the agent
/// (`additionalContext`) and the person watching (`systemMessage`); the holder is told once.
async fn warn_across_trees(
    app: &App,
    agent: &str,
    path: &str,
    conflicts: &[conclave_core::LeaseConflict],
) -> ApiResult<Value> {
    let holders: Vec<String> = conflicts
        .iter()
        .map(|c| match c.task {
            Some(task) => format!("{} (task {task})", c.holder),
            None => c.holder.clone(),
        })
        .collect();
    let warning = format!(
        "Conclave: {path} is leased by {} in another worktree. Your edit is allowed (your trees \
         are separate), but both branches will change this file and may conflict when they \
         land: message {} (send) to agree who changes what.",
        holders.join(", "),
        conflicts
            .first()
            .map_or("the holder", |c| c.holder.as_str())
    );
    let mut told: Vec<String> = conflicts.iter().map(|c| c.holder.clone()).collect();
    told.dedup();
    let (name, file) = (agent.to_string(), path.to_string());
    app.write(&Actor::System, &IdempotencyKey::default(), move |tx| {
        for holder in &told {
            let body = format!(
                "{name} is editing {file}, which you lease, in its own worktree: your \
                     branches will both change it. Agree with {name} (send) who changes what."
            );
            // Once per holder, file and editor while unread: every edit runs this hook.
            let unread = tx.read().inbox(holder)?;
            if unread.iter().any(|m| m.body == body) {
                continue;
            }
            tx.send_message(
                &Actor::System,
                NewMessage {
                    to: holder.clone(),
                    body,
                    thread: None,
                    kind: MessageKind::Alert,
                    urgent: false,
                },
            )?;
        }
        Ok(())
    })
    .await?;
    Ok(json!({
        "systemMessage": warning,
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "additionalContext": warning,
        }
    }))
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
            let task = tx.read().first_held_task(&name)?;
            let touched = FileTouched {
                path: bounded(path.clone(), MAX_TOUCHED_PATH),
                tool: tool.clone(),
                fencing_token: ops::covering_lease(
                    &tx.read(),
                    &name,
                    path,
                    tx.now().timestamp_millis(),
                )?
                .map(|lease| lease.fencing_token),
                ..FileTouched::default()
            };
            tx.emit(&name, task, Some(&name), EventPayload::FileTouched(touched))?;
            if let Some(changed) = attribution::dependency_event(path, &tool, None) {
                tx.emit(&name, task, Some(&name), changed)?;
            }
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
    const HEADER: &str = "Urgent Conclave messages:\n";
    let urgent = ops::deliver_inbox(
        app,
        actor,
        agent,
        Duration::ZERO,
        |message| message.urgent,
        MAX_CONTEXT_CHARS - HEADER.len(),
    )
    .await?;
    Ok(match urgent {
        Some(messages) => json!({ "hookSpecificOutput": {
            "hookEventName": event_name,
            "additionalContext": format!("{HEADER}{messages}"),
        } }),
        None => json!({}),
    })
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
        shown.extend(ops::render_messages(
            &mut context,
            &handoffs,
            MAX_CONTEXT_CHARS / 2,
        ));
    }
    if !others.is_empty() {
        context.push_str("Unread messages:\n");
        shown.extend(ops::render_messages(
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
    if !shown.is_empty() {
        ops::acknowledge(app, actor, &IdempotencyKey::default(), shown).await?;
    }
    // Recorded with the size of what it injects: the supervisor counts that text as
    // coordination for every model call of the session.
    let started = AgentSessionStart {
        source: input.source.clone(),
        session_id: input.session_id.clone(),
        context_chars: Some(i64::try_from(context.chars().count()).unwrap_or(i64::MAX)),
    };
    record(app, actor, agent, EventPayload::AgentSessionStart(started)).await?;
    Ok(
        json!({ "hookSpecificOutput": { "hookEventName": "SessionStart", "additionalContext": context } }),
    )
}

async fn stop(app: &App, agent: &str, input: &HookInput) -> ApiResult<Value> {
    let session = input.session_id.as_deref().unwrap_or(agent);
    Ok(match ops::keep_working(app, agent, session).await? {
        Some(reason) => json!({ "decision": "block", "reason": reason }),
        None => json!({}),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_hook_fields_are_cut_with_a_marker() {
        let long = "é".repeat(1000);
        let cut = bounded(long, MAX_SESSION_ID);
        assert!(cut.len() <= MAX_SESSION_ID, "{}", cut.len());
        assert!(cut.ends_with(CUT_MARKER));
        assert_eq!(bounded("short".into(), MAX_SESSION_ID), "short");
    }

    #[test]
    fn an_edit_in_an_agents_worktree_names_the_projects_file() {
        let input = HookInput {
            cwd: Some("/repo/.conclave/worktrees/alice".into()),
            tool_name: Some("Edit".into()),
            tool_input: Some(
                serde_json::json!({ "file_path": "/repo/.conclave/worktrees/alice/src/a.rs" }),
            ),
            ..HookInput::default()
        };
        assert_eq!(
            touched_path(Some(Path::new("/repo")), &input).as_deref(),
            Some("src/a.rs")
        );
        let relative = HookInput {
            tool_input: Some(serde_json::json!({ "file_path": "lib/b.rs" })),
            ..input
        };
        assert_eq!(
            touched_path(Some(Path::new("/repo")), &relative).as_deref(),
            Some("lib/b.rs")
        );
    }

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

    /// An agent on another host edits in its own clone: the path is the same project file as
    /// on the server's host.
    #[test]
    fn paths_in_another_hosts_clone_are_relative_to_that_clone() {
        let input = HookInput {
            cwd: Some("/home/ci/clone/src".into()),
            tool_name: Some("Edit".into()),
            tool_input: Some(serde_json::json!({ "file_path": "/home/ci/clone/src/a.rs" })),
            clone_root: Some(PathBuf::from("/home/ci/clone")),
            ..HookInput::default()
        };
        let server_root = Some(Path::new("/srv/project"));
        assert_eq!(
            touched_path(server_root, &input).as_deref(),
            Some("src/a.rs")
        );
        let without = HookInput {
            clone_root: None,
            ..input
        };
        assert_eq!(
            touched_path(server_root, &without),
            None,
            "outside the server's root"
        );
    }
}
