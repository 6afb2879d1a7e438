//! The operations behind every way in: the MCP tools (`mcp`), the hooks
//! (`hooks`) and the JSON API (`api`) call these, so that a rule (who may do
//! what, what a lease denial records and says, how an inbox is read, waited on, rendered and
//! acknowledged) is written once. No HTTP types here: callers turn the results into JSON
//! responses, tool results or hook answers, and [`OpError`] into their own errors.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use conclave_core::CoreError;
use conclave_core::LeaseConflict;
use conclave_core::Store;
use conclave_core::audience::Viewer;
use conclave_core::event::LeaseDenied;
use conclave_core::model::{
    AckResult, Actor, AgentStatus, Event, EventFilter, EventPayload, Lease, LeaseList,
    LeaseRelease, LeaseRequest, Message, NewMessage, NewNote, NewTask, Note, QueueState,
    ReleasedLeases, SearchHit, Task, TaskDecision, TaskFinish, TaskId, TaskStatus,
    TaskStatusUpdate, format_duration_secs,
};
use conclave_core::store::{ClaimOutcome, LeaseSnapshot, Reader, SNAPSHOT_IN_PLACE_ROWS};

use crate::app::App;
pub use crate::app::{IdempotencyKey, OpError, OpResult, Written};
use crate::live::Received;

/// The longest an inbox read may wait for something to arrive.
pub const MAX_INBOX_WAIT_SECS: u64 = 600;
/// How many fresh snapshots a lease request is checked against before it is refused as
/// retryable (`lease_check_busy`, 503): each attempt's work under the writer lock is bounded, and
/// a request only needs another when leases near it changed while it was being checked.
pub const MAX_LEASE_CHECK_ATTEMPTS: u32 = 4;
/// How many times in a row the Stop hook may keep an agent working.
const MAX_STOP_BLOCKS: u32 = 3;

/// Refuses anyone but the admin.
pub fn require_admin(actor: &Actor, what: &str) -> Result<(), CoreError> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(CoreError::Forbidden(format!("only an admin may {what}")))
    }
}

/// Refuses anyone but an agent; answers the agent's name.
pub fn require_agent<'a>(actor: &'a Actor, what: &str) -> Result<&'a str, CoreError> {
    actor.agent().ok_or_else(|| {
        CoreError::Forbidden(format!(
            "only an agent may {what}: use an agent's token (CONCLAVE_AGENT and CONCLAVE_TOKEN)"
        ))
    })
}

/// Paths an agent names (to lease, release, or as a finished task's files), absolute ones (in
/// its worktree, or the project's) made project-relative by the one mapping the hooks use too
/// (`conclave_core::paths::project_path`); relative ones are the project's already.
fn project_paths(app: &App, given: &[String]) -> Vec<String> {
    match app.settings().project_root.as_deref() {
        Some(root) => given
            .iter()
            .map(|path| conclave_core::paths::agent_path_to_project(root, path))
            .collect(),
        None => given.to_vec(),
    }
}

/// Leases paths to `holder`. A refusal changes no state, but the collision belongs in the record
/// of what happened: it is logged as `lease.denied` before the conflict is returned.
pub async fn acquire_leases(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    holder: &str,
    mut request: LeaseRequest,
) -> OpResult<Written<LeaseList>> {
    request.paths = project_paths(app, &request.paths);
    let paths = request.paths.clone();
    // The costly comparisons run on a snapshot, outside the writer lock; the grant compares only
    // what changed since, within a fixed budget (see conclave_core::store::leases). When the
    // snapshot cannot vouch for the request within it, the grant writes nothing (not even the
    // idempotency key) and answers "stale": take a fresh snapshot and try again, a few times.
    let mut attempt = 1;
    let result = loop {
        let snapshot = lease_snapshot(app, holder, &request).await?;
        let (name, asked) = (holder.to_string(), request.clone());
        let result = app
            .write(actor, key, move |tx| {
                let leases = tx.acquire_leases_after(&name, asked, &snapshot)?;
                Ok(LeaseList { leases })
            })
            .await;
        match result {
            Err(OpError::Core(CoreError::LeaseSnapshotStale(why)))
                if attempt < MAX_LEASE_CHECK_ATTEMPTS =>
            {
                tracing::debug!(holder, attempt, %why, "lease snapshot stale; checking again");
                attempt += 1;
            }
            Err(OpError::Core(CoreError::LeaseSnapshotStale(why))) => {
                break Err(OpError::Core(CoreError::LeaseSnapshotStale(format!(
                    "the leases near this request kept changing while it was checked \
                     ({attempt} attempts; last: {why})"
                ))));
            }
            other => break other,
        }
    };
    if let Err(error @ OpError::Core(CoreError::LeaseConflict(_))) = &result {
        record_denial(app, holder, &paths, &error.to_string()).await;
    }
    result
}

/// The snapshot a grant is checked against: read in place when it is small (most requests: a
/// few paths among few leases), sparing the hand-off to a blocking thread and back; a request
/// near more rows than [`SNAPSHOT_IN_PLACE_ROWS`] is read again on a blocking thread, whole.
async fn lease_snapshot(
    app: &App,
    holder: &str,
    request: &LeaseRequest,
) -> OpResult<LeaseSnapshot> {
    let (name, asked) = (holder.to_string(), request.clone());
    let small = app
        .read_point(move |reader| {
            reader.lease_snapshot_within(&name, &asked, SNAPSHOT_IN_PLACE_ROWS)
        })
        .await?;
    if let Some(snapshot) = small {
        return Ok(snapshot);
    }
    let (name, asked) = (holder.to_string(), request.clone());
    app.read(move |reader| reader.lease_snapshot(&name, &asked))
        .await
}

async fn record_denial(app: &App, holder: &str, paths: &[String], why: &str) {
    let holder = holder.to_string();
    let denied = LeaseDenied {
        paths: paths.to_vec(),
        why: why.to_string(),
    };
    let result = app
        .write(
            &Actor::Agent(holder.clone()),
            &IdempotencyKey::default(),
            move |tx| {
                let payload = EventPayload::LeaseDenied(denied.clone());
                tx.emit(&holder, None, Some(&holder), payload)
            },
        )
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "could not record a lease denial");
    }
}

/// What an agent is told when an edit of `path` is refused: who holds it, for how long, and what
/// to do instead.
pub fn lease_denial_reason(path: &str, conflicts: &[LeaseConflict]) -> String {
    match conflicts.first() {
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
        None => format!("Conclave: {path} is leased by another agent."),
    }
}

pub async fn release_leases(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    mut release: LeaseRelease,
) -> OpResult<Written<ReleasedLeases>> {
    release.paths = project_paths(app, &release.paths);
    let by = actor.clone();
    app.write(actor, key, move |tx| {
        let released = tx.release_leases(&by, release)?;
        Ok(ReleasedLeases { released })
    })
    .await
}

/// Claims the given task, or the best ready one for the agent.
pub async fn claim_task(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: Option<TaskId>,
) -> OpResult<Written<ClaimOutcome>> {
    Ok(claim_task_on_branch(app, actor, key, id).await?.0)
}

/// [`claim_task`], answering too the task's branch a worktree agent's worktree was switched to
/// (before the claim answers: worktree_tasks.rs).
pub async fn claim_task_on_branch(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: Option<TaskId>,
) -> OpResult<(Written<ClaimOutcome>, Option<conclave_git::TaskCheckout>)> {
    let agent = require_agent(actor, "claim tasks")?.to_string();
    crate::worktree_tasks::before_claim(app, &agent).await?;
    let name = agent.clone();
    let written = app
        .write(actor, key, move |tx| tx.claim_task(&name, id))
        .await?;
    let mut checkout = None;
    if !written.replayed
        && let Some(task) = written.typed()?.task.as_ref().map(|task| task.id)
    {
        checkout = crate::worktree_tasks::after_claim(app, &agent, task).await?;
    }
    Ok((written, checkout))
}

pub async fn create_task(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    new: NewTask,
) -> OpResult<Written<Task>> {
    let by = actor.clone();
    app.write(actor, key, move |tx| tx.create_task(&by, new))
        .await
}

pub async fn set_task_status(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: TaskId,
    update: TaskStatusUpdate,
) -> OpResult<Written<Task>> {
    let by = actor.clone();
    app.write(actor, key, move |tx| tx.update_task_status(&by, id, update))
        .await
}

pub async fn finish_task(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: TaskId,
    finish: TaskFinish,
) -> OpResult<Written<Task>> {
    Ok(finish_task_on_branch(app, actor, key, id, finish).await?.0)
}

/// [`finish_task`], answering too what a worktree agent's `done` found on the task's branch (its
/// uncommitted work is committed before the task joins the merge queue: worktree_tasks.rs).
pub async fn finish_task_on_branch(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: TaskId,
    mut finish: TaskFinish,
) -> OpResult<(Written<Task>, Option<crate::worktree_tasks::BranchDone>)> {
    finish.files = project_paths(app, &finish.files);
    let by = actor.clone();
    // A worktree agent's work is committed on the task's branch whichever way the task goes on
    // (the merge queue, or a pipeline's next stage, which claims the same branch).
    let holder = holder_of(app, actor, id).await?;
    let branch = match &holder {
        Some((agent, task)) => {
            crate::worktree_tasks::before_done(
                app,
                agent,
                id,
                crate::worktree_tasks::commit_title(task),
                finish.summary.clone(),
            )
            .await?
        }
        None => None,
    };
    let written = app
        .write(actor, key, move |tx| {
            if let Actor::Agent(agent) = &by {
                let now = tx.now().timestamp_millis();
                let stale = stale_edits(&tx.read(), id, agent, &finish.files, now)?;
                if !stale.is_empty() {
                    return Err(CoreError::conflict(format!(
                        "cannot finish {id}: your lease on {} lapsed or changed hands after you \
                         edited it (fencing token check); lease it again, check the file and \
                         edit it under the new lease, or leave it out of `files`",
                        stale.join(", ")
                    )));
                }
            }
            // Held in a worktree and finished for good, the task waits for its branch to land
            // (store/queue.rs, merge_queue.rs); a pipeline's earlier pass hands it on.
            tx.finish_task(&by, id, finish)
        })
        .await?;
    if let Some((agent, _)) = holder
        && !written.replayed
    {
        // A stage passed or sent back, or a task waiting for a person: the agent's worktree
        // lets go of the branch, which the next holder's worktree checks out.
        crate::worktree_tasks::release_branch_unless_held(app, &agent, id).await;
    }
    if let Some(queue) = app.settings().merge.clone() {
        queue.wake();
    }
    Ok((written, branch))
}

/// The live lease of `holder` that covers `path` (the path itself or a glob over it), if any.
pub fn covering_lease(
    reader: &Reader<'_>,
    holder: &str,
    path: &str,
    now_ms: i64,
) -> Result<Option<Lease>, CoreError> {
    Ok(covering(&reader.leases_of(holder, now_ms)?, path).cloned())
}

/// The lease of `leases` that covers `path` (the path itself or a glob over it), if any.
fn covering<'l>(leases: &'l [Lease], path: &str) -> Option<&'l Lease> {
    leases.iter().find(|lease| {
        lease.path == path
            || conclave_core::paths::normalize_lease_path(&lease.path)
                .is_ok_and(|pattern| pattern.matches(path))
    })
}

/// The files of `files` that `agent` edited under a lease (a fencing token was recorded when it
/// touched them for `task`) but no longer holds under that same lease: none covers them now, or
/// the one that does was taken after the edit (the old one lapsed, and someone else may have
/// edited in between), or carries an older token than the edit recorded. Files touched without
/// a lease, or never touched through the hooks, have nothing to compare and pass.
pub fn stale_edits(
    reader: &Reader<'_>,
    task: TaskId,
    agent: &str,
    files: &[String],
    now_ms: i64,
) -> Result<Vec<String>, CoreError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    // The last recorded edit of each path, with its token.
    let mut edits: HashMap<String, (i64, i64)> = HashMap::new();
    for event in reader.touches_of_task(task, agent)? {
        if let EventPayload::FileTouched(touched) = event.payload {
            match touched.fencing_token {
                Some(token) => {
                    edits.insert(touched.path, (token, event.ts.timestamp_millis()));
                }
                None => {
                    edits.remove(&touched.path);
                }
            }
        }
    }
    if edits.is_empty() {
        return Ok(Vec::new());
    }
    let held = reader.leases_of(agent, now_ms)?;
    let mut stale = Vec::new();
    for file in files {
        let Some((token, edited_at)) = edits.get(file.as_str()) else {
            continue;
        };
        let held_since_the_edit = covering(&held, file).is_some_and(|lease| {
            lease.fencing_token >= *token && lease.acquired_at.timestamp_millis() <= *edited_at
        });
        if !held_since_the_edit {
            stale.push(file.clone());
        }
    }
    Ok(stale)
}

/// A person approves a task waiting for a decision: it moves on as its agent's pass said.
pub async fn approve_task(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: TaskId,
    decision: TaskDecision,
) -> OpResult<Written<Task>> {
    require_admin(actor, "approve tasks")?;
    let by = actor.clone();
    let written = app
        .write(actor, key, move |tx| tx.approve_task(&by, id, decision))
        .await?;
    // Approved in a worktree, the task's branch joined the merge queue.
    if let Some(queue) = app.settings().merge.clone() {
        queue.wake();
    }
    Ok(written)
}

/// A person rejects a task waiting for a decision: back to its agent with the comment.
pub async fn reject_task(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: TaskId,
    decision: TaskDecision,
) -> OpResult<Written<Task>> {
    require_admin(actor, "reject tasks")?;
    let by = actor.clone();
    let written = app
        .write(actor, key, move |tx| tx.reject_task(&by, id, decision))
        .await?;
    // Back to its agent: in a worktree, on the task's branch again.
    if !written.replayed {
        let task = written.typed()?;
        if let Some(agent) = task.assignee.as_deref()
            && task.status == TaskStatus::InProgress
        {
            crate::worktree_tasks::back_to_branch(app, agent, id).await;
        }
    }
    Ok(written)
}

pub async fn fail_task(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    id: TaskId,
    reason: String,
) -> OpResult<Written<Task>> {
    // What a worktree agent leaves when it gives up stays on the task's branch (the next holder
    // claims that branch), and its worktree is clean for its next claim.
    if let Some((agent, task)) = holder_of(app, actor, id).await? {
        crate::worktree_tasks::before_done(
            app,
            &agent,
            id,
            crate::worktree_tasks::commit_title(&task),
            Some(format!("Given up by {agent}: {reason}")),
        )
        .await?;
    }
    let by = actor.clone();
    let written = app
        .write(actor, key, move |tx| tx.fail_task(&by, id, &reason))
        .await?;
    if let Actor::Agent(agent) = actor
        && !written.replayed
    {
        crate::worktree_tasks::release_branch_unless_held(app, agent, id).await;
    }
    Ok(written)
}

/// The acting agent and the task, when that agent holds the task (a worktree step applies).
async fn holder_of(
    app: &App,
    actor: &Actor,
    id: TaskId,
) -> OpResult<Option<(String, conclave_core::model::Task)>> {
    let Actor::Agent(agent) = actor else {
        return Ok(None);
    };
    let name = agent.clone();
    let task = app.read(move |r| r.task(id)).await?;
    let holds =
        task.assignee.as_deref() == Some(name.as_str()) && conclave_core::store::is_held(&task);
    Ok(holds.then(|| (agent.clone(), task)))
}

pub async fn send_message(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    new: NewMessage,
) -> OpResult<Written<Message>> {
    let by = actor.clone();
    app.write(actor, key, move |tx| tx.send_message(&by, new))
        .await
}

pub async fn add_note(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    new: NewNote,
) -> OpResult<Written<Note>> {
    let by = actor.clone();
    app.write(actor, key, move |tx| tx.add_note(&by, new)).await
}

/// Full-text search over notes, messages and task results (`kinds` empty: all of them), without
/// the messages `actor` may not read.
pub async fn search(
    app: &App,
    actor: &Actor,
    query: String,
    kinds: Vec<String>,
    limit: i64,
) -> OpResult<Vec<SearchHit>> {
    let viewer = viewer(app, actor).await?;
    let store = app.store().clone();
    let hits = tokio::task::spawn_blocking(move || {
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
        // Indexes what waits in the search backlog first, so that a search finds every write
        // answered before it.
        store.search(&query, &kinds, limit, &viewer)
    })
    .await??;
    Ok(hits)
}

/// The reader `actor` is for the audience rule ([`Viewer`]): an agent with its current role.
pub async fn viewer(app: &App, actor: &Actor) -> OpResult<Viewer> {
    let Some(name) = actor.agent().map(str::to_string) else {
        return Ok(Viewer::of(actor, None));
    };
    let role = app
        .read(move |r| Ok(r.find_agent(&name)?.and_then(|agent| agent.role)))
        .await?;
    Ok(Viewer::of(actor, role))
}

/// Events of the log that pass `filter` and that `viewer` may read, in pages as the filter asks:
/// unreadable events are left out (the sequence numbers keep gaps) and the page is filled from
/// further in the log, so that a short page still means the end of what matches.
pub async fn visible_events(
    app: &App,
    filter: EventFilter,
    viewer: &Viewer,
) -> OpResult<Vec<Event>> {
    let wanted = usize::try_from(filter.limit.unwrap_or(1000).clamp(1, 10_000)).unwrap_or(1000);
    let mut filter = filter;
    let mut visible = Vec::new();
    loop {
        let page_filter = filter.clone();
        let page = app.read(move |r| r.events(&page_filter)).await?;
        let exhausted = page.len() < wanted;
        let Some(last) = page.last().map(|event| event.seq) else {
            break;
        };
        visible.extend(
            page.into_iter()
                .filter(|event| viewer.may_read_event(event)),
        );
        if exhausted || visible.len() >= wanted {
            break;
        }
        // Next page, past the last event seen in the direction of travel.
        if filter.desc {
            filter.before = Some(last);
        } else {
            filter.after = Some(last);
        }
    }
    visible.truncate(wanted);
    Ok(visible)
}

/// The agent's unacknowledged messages; when there are none, waits up to `wait` (at most
/// [`MAX_INBOX_WAIT_SECS`]) for one to arrive and returns as soon as it does.
pub async fn wait_for_inbox(app: &App, agent: &str, wait: Duration) -> OpResult<Vec<Message>> {
    let wait = wait.min(Duration::from_secs(MAX_INBOX_WAIT_SECS));
    if wait.is_zero() {
        // Nothing to wait for, so nothing to subscribe to: a plain read.
        let name = agent.to_string();
        return app.read(move |r| r.inbox(&name)).await;
    }
    // Subscribe before reading so that nothing sent in between is missed; only to messages for
    // this agent, so that a thousand waiting agents are not each queued and woken for every
    // event of the team.
    let recipient = agent.to_string();
    let events = app.subscribe_where(move |event| is_recipient(&event.payload, &recipient));
    let name = agent.to_string();
    let messages = app.read(move |r| r.inbox(&name)).await?;
    if !messages.is_empty() {
        return Ok(messages);
    }
    let _waiting = WaitMark::begin(app, agent).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = app.shutdown_token().cancelled() => break,
            received = events.recv(usize::MAX) => match received {
                Received::Events(events) if events.iter().any(|event| is_recipient(&event.payload, agent)) => break,
                Received::Events(_) => {}
                // Fell behind: whatever arrived is in the store, read below.
                Received::Lagged => break,
            },
        }
    }
    let name = agent.to_string();
    app.read(move |r| r.inbox(&name)).await
}

/// Shows an agent as `waiting` (and for what) while its inbox wait blocks, however the wait
/// ends (a message, the deadline, the client going away): dropping the mark restores the status.
struct WaitMark {
    store: Store,
    agent: String,
    previous: Option<AgentStatus>,
}

impl WaitMark {
    async fn begin(app: &App, agent: &str) -> OpResult<Self> {
        let store = app.store().clone();
        let name = agent.to_string();
        let previous =
            tokio::task::spawn_blocking(move || store.write(|tx| tx.begin_wait(&name))).await??;
        Ok(Self {
            store: app.store().clone(),
            agent: agent.to_string(),
            previous,
        })
    }
}

impl Drop for WaitMark {
    fn drop(&mut self) {
        let Some(previous) = self.previous.take() else {
            return;
        };
        // Dropped on an async thread (and maybe as the server stops): the write goes to a
        // blocking thread when a runtime is there to take it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let agent = std::mem::take(&mut self.agent);
        runtime.spawn_blocking(move || {
            if let Err(error) = store.write(|tx| tx.end_wait(&agent, previous)) {
                tracing::warn!(%agent, %error, "could not end an inbox wait's waiting status");
            }
        });
    }
}

/// Whether the event is a message sent to `agent`.
fn is_recipient(payload: &EventPayload, agent: &str) -> bool {
    matches!(payload, EventPayload::MessageSent(sent) if sent.recipients.iter().any(|n| n == agent))
}

/// Reads the agent's inbox (waiting up to `wait` when it is empty), keeps the messages `keep`
/// selects, renders them within `budget` characters and acknowledges those shown. None when
/// there was nothing to show.
pub async fn deliver_inbox(
    app: &App,
    actor: &Actor,
    agent: &str,
    wait: Duration,
    keep: impl Fn(&Message) -> bool,
    budget: usize,
) -> OpResult<Option<String>> {
    let messages: Vec<Message> = wait_for_inbox(app, agent, wait)
        .await?
        .into_iter()
        .filter(|message| keep(message))
        .collect();
    if messages.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    let shown = render_messages(&mut text, &messages, budget);
    acknowledge(app, actor, &IdempotencyKey::default(), shown).await?;
    Ok(Some(text))
}

/// Appends messages to `out`, one line each, while `out` stays within `budget` bytes; answers
/// the ids shown (the ones to acknowledge).
pub fn render_messages(out: &mut String, messages: &[Message], budget: usize) -> Vec<String> {
    let mut shown = Vec::new();
    for message in messages {
        let line = format!(
            "- {} from {} [{}{}] thread {}: {}\n",
            message.id,
            message.sender,
            message.kind,
            if message.urgent { ", urgent" } else { "" },
            message.thread,
            message.body
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
                "- ({} more: call the inbox tool)",
                messages.len() - shown.len()
            );
            break;
        }
        out.push_str(&line);
        shown.push(message.id.clone());
    }
    shown
}

/// Acknowledges the agent's messages `ids`; answers an [`AckResult`].
pub async fn acknowledge(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    ids: Vec<String>,
) -> OpResult<Written<AckResult>> {
    let agent = require_agent(actor, "acknowledge messages")?.to_string();
    app.write(actor, key, move |tx| {
        let acked = tx.ack_messages(&agent, &ids)?;
        Ok(AckResult { acked })
    })
    .await
}

/// How many sessions' Stop-block counts are remembered: one entry per `session_id` a hook ever
/// sent would grow without end. The least recently seen session is forgotten first (it then gets
/// its few blocks again, which is harmless).
const MAX_TRACKED_SESSIONS: usize = 256;

/// Per-session count of consecutive Stop blocks (a bound, not state worth persisting), for at
/// most [`MAX_TRACKED_SESSIONS`] sessions.
#[derive(Default)]
pub struct StopBlocks(Mutex<StopBlockCounts>);

#[derive(Default)]
struct StopBlockCounts {
    /// Per session: blocks so far, and when it was last seen (a tick of `clock`).
    sessions: HashMap<String, (u32, u64)>,
    clock: u64,
}

impl StopBlocks {
    /// Counts one more block for `session`; false when it already had [`MAX_STOP_BLOCKS`].
    fn try_block(&self, session: &str) -> bool {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.clock += 1;
        let now = counts.clock;
        if !counts.sessions.contains_key(session) && counts.sessions.len() >= MAX_TRACKED_SESSIONS {
            let oldest = counts
                .sessions
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                counts.sessions.remove(&oldest);
            }
        }
        let (blocks, seen) = counts
            .sessions
            .entry(session.to_string())
            .or_insert((0, now));
        *seen = now;
        if *blocks >= MAX_STOP_BLOCKS {
            return false;
        }
        *blocks += 1;
        true
    }

    /// Forgets `session` (its agent holds no task any more).
    fn forget(&self, session: &str) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.sessions.remove(session);
    }

    /// Sessions remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        let counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.sessions.len()
    }
}

/// Whether an agent about to stop should keep working (the team's `keep_working` policy): the
/// reason to give it when it still holds a task, at most [`MAX_STOP_BLOCKS`] times in a row per
/// session.
pub async fn keep_working(app: &App, agent: &str, session: &str) -> OpResult<Option<String>> {
    if !app.settings().keep_working {
        return Ok(None);
    }
    let name = agent.to_string();
    let held = app
        .read(move |r| {
            // A task waiting for its branch to land is finished as far as its agent is concerned.
            let mut working = Vec::new();
            for task in r.held_tasks(&name)? {
                let queued = r.merge_entry(task.id).is_ok_and(|entry| {
                    matches!(entry.state, QueueState::Queued | QueueState::Merging)
                });
                if !queued {
                    working.push(task);
                }
            }
            Ok(working)
        })
        .await?;
    let Some(task) = held.first() else {
        app.stop_blocks().forget(session);
        return Ok(None);
    };
    if !app.stop_blocks().try_block(session) {
        return Ok(None);
    }
    Ok(Some(format!(
        "You still hold {} \"{}\". Finish it (done), hand it back (fail with a reason), or mark it blocked.",
        task.id, task.title
    )))
}

/// The longest prefix of `text` within `max` bytes, on a character boundary.
pub fn cut_to(text: &str, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use conclave_core::model::MessageKind;

    use super::*;

    fn message(id: &str, body: &str) -> Message {
        Message {
            id: id.into(),
            sender: "a".into(),
            to: "b".into(),
            thread: id.into(),
            kind: MessageKind::Chat,
            urgent: true,
            body: body.into(),
            created_at: chrono::Utc::now(),
            deliveries: Vec::new(),
        }
    }

    #[test]
    fn a_message_longer_than_the_budget_is_cut_not_stuck() {
        let long = message("M-1", &"x".repeat(10_000));
        let mut out = String::new();
        let shown = render_messages(&mut out, &[long.clone(), long], 1000);
        assert_eq!(shown, vec!["M-1".to_string()]);
        assert!(out.len() < 1200 && out.contains("cut"), "{}", out.len());
    }

    #[test]
    fn messages_past_the_budget_are_counted_and_left_unacknowledged() {
        let messages: Vec<Message> = (1..=5)
            .map(|n| message(&format!("M-{n}"), &"y".repeat(100)))
            .collect();
        let mut out = String::new();
        let shown = render_messages(&mut out, &messages, 300);
        assert_eq!(shown, vec!["M-1".to_string(), "M-2".to_string()]);
        assert!(
            out.contains("M-1 from a [chat, urgent] thread M-1: y"),
            "{out}"
        );
        assert!(out.ends_with("- (3 more: call the inbox tool)\n"), "{out}");
    }

    #[test]
    fn stop_block_counts_are_kept_for_a_bounded_number_of_sessions() {
        let blocks = StopBlocks::default();
        for n in 0..1000 {
            assert!(blocks.try_block(&format!("session-{n}")));
        }
        assert_eq!(blocks.len(), MAX_TRACKED_SESSIONS);
        // A session seen recently keeps its count; its blocks still run out.
        let recent = "session-999";
        for _ in 1..MAX_STOP_BLOCKS {
            assert!(blocks.try_block(recent));
        }
        assert!(!blocks.try_block(recent));
        blocks.forget(recent);
        assert_eq!(blocks.len(), MAX_TRACKED_SESSIONS - 1);
    }

    #[test]
    fn cutting_keeps_characters_whole() {
        assert_eq!(cut_to("héllo", 2), "h");
        assert_eq!(cut_to("héllo", 3), "hé");
        assert_eq!(cut_to("abc", 10), "abc");
    }

    #[test]
    fn a_denial_names_the_holder_and_what_to_do() {
        assert_eq!(
            lease_denial_reason("src/a.rs", &[]),
            "Conclave: src/a.rs is leased by another agent."
        );
    }
}
