//! The merge queue's runner (issue 11, docs/worktrees.md): a background task of the server
//! process, active when `conclave.toml` has a `[merge]` table.
//!
//! It lands one entry at a time, in order of completion, unless the queue is paused: it commits
//! what the agent left uncommitted in its worktree (`.conclave/worktrees/<agent>`, when that is
//! still on the task's branch: that work belongs to the task), then has conclave-git's
//! [`MergeEngine::land`] merge the branch in a scratch worktree, run the `[merge] check` there
//! and move the integration branch by one compare-and-swap, and records the outcome in the store
//! (store/queue.rs). The git work runs on a blocking thread.
//!
//! Crash safety: an entry found `merging` (the server died mid-landing) is the next one landed;
//! the integration branch is at its old tip or its new one, and a branch it already contains
//! counts as landed, so nothing is merged twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conclave_core::CoreError;
use conclave_core::config::MergeSection;
use conclave_core::model::{Actor, QueueEntry, QueueState, TaskId};
use conclave_git::{
    AgentWorktrees, FastForward, Identity, LandOutcome, LandRequest, MergeEngine, Repo,
    ShellCommand, Strategy, TaskSummary, commit_on_done,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::{App, OpError, OpResult};

/// How often an idle runner looks at the queue even when nothing woke it.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The merge queue of one project: its settings, a wake-up for the runner, and the lock that
/// makes landings (the runner's and a person's `merge`) one at a time.
#[derive(Debug)]
pub struct MergeQueue {
    settings: MergeSection,
    project_root: PathBuf,
    /// The host this server runs on (`conclave serve --host`, default the hostname).
    host: String,
    /// The hosts `conclave.toml` names for agents (`[[agent]] host`): those away from the
    /// server. A registered host not named there is the main host's own name for its agents
    /// (`conclave up --host build-1` next to a `conclave serve`).
    agent_hosts: std::collections::BTreeSet<String>,
    wake: Notify,
    landing: tokio::sync::Mutex<()>,
}

/// How one landing ended, for the store and the log.
enum Recorded {
    Landed(String),
    /// Landed here, but the integration branch could not be published on the shared remote
    /// (`[merge] remote`): the other clones do not see it, so the queue pauses with the reason.
    LandedUnpublished {
        outcome: String,
        pause: String,
    },
    SentBack {
        reason: &'static str,
        details: String,
    },
    /// Not the branch's fault: the entry waits again, and the queue pauses when a person must
    /// act (`pause` holds the reason).
    Retry {
        outcome: String,
        pause: Option<String>,
    },
}

impl MergeQueue {
    pub fn new(settings: MergeSection, project_root: PathBuf) -> Arc<MergeQueue> {
        MergeQueue::on_host(settings, project_root, crate::machine_name(), Vec::new())
    }

    /// The queue of a server running on `host`, in a team whose `conclave.toml` names
    /// `agent_hosts` (agents of those hosts keep their worktrees there; `[merge] host` says
    /// whether this server runs the queue).
    pub fn on_host(
        settings: MergeSection,
        project_root: PathBuf,
        host: String,
        agent_hosts: Vec<String>,
    ) -> Arc<MergeQueue> {
        Arc::new(MergeQueue {
            settings,
            project_root,
            agent_hosts: agent_hosts
                .into_iter()
                .filter(|name| *name != host)
                .collect(),
            host,
            wake: Notify::new(),
            landing: tokio::sync::Mutex::new(()),
        })
    }

    /// Has the runner look at the queue now (after an enqueue, a resume, a retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn settings(&self) -> &MergeSection {
        &self.settings
    }

    /// The host this server runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether this server runs the queue (`[merge] host` is its host, or unset).
    pub fn runs_here(&self) -> bool {
        self.settings.queue_runs_on(&self.host)
    }

    /// Whether an agent registered on `host` keeps its worktree in this server's clone: one on
    /// no host, on this one, or on one `conclave.toml` does not name for agents does; the git
    /// steps of an agent on a host named there are that host's.
    pub fn is_local(&self, host: Option<&str>) -> bool {
        host.is_none_or(|host| host == self.host || !self.agent_hosts.contains(host))
    }

    /// The project's main worktree (the agents' worktrees are under its `.conclave/worktrees`).
    pub fn project_root(&self) -> &std::path::Path {
        &self.project_root
    }

    /// Lands `task`'s queued entry now, out of order and even while the queue is paused (a
    /// person's `conclave queue merge`); the check still runs.
    pub async fn merge_now(&self, app: &App, task: TaskId) -> OpResult<QueueEntry> {
        let _landing = self.landing.lock().await;
        let entry = app.read(move |r| r.merge_entry(task)).await?;
        if entry.state != QueueState::Queued && entry.state != QueueState::Merging {
            return Err(OpError::from(CoreError::conflict(format!(
                "{task}'s entry is {}: only a waiting entry can be merged (retry it first)",
                entry.state
            ))));
        }
        self.land_entry(app, entry).await
    }

    /// Lands waiting entries one by one until the queue is empty or paused.
    async fn drain(&self, app: &App, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            let _landing = self.landing.lock().await;
            let next = match app.read(|r| r.next_merge()).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(?error, "cannot read the merge queue");
                    return;
                }
            };
            let Some(entry) = next else { return };
            let task = entry.task;
            if let Err(error) = self.land_entry(app, entry).await {
                tracing::warn!(%task, ?error, "recording a landing failed");
                return;
            }
        }
    }

    /// Lands one entry and records the outcome; the caller holds `landing`.
    async fn land_entry(&self, app: &App, entry: QueueEntry) -> OpResult<QueueEntry> {
        let task_id = entry.task;
        // A stale holder's branch never lands (fencing at merge).
        if let Some(dropped) = store_write(app, move |tx| tx.drop_stale_merge(task_id)).await? {
            tracing::info!(task = %task_id, outcome = ?dropped.outcome, "merge queue entry dropped");
            return Ok(dropped);
        }
        store_write(app, move |tx| tx.begin_merge(task_id)).await?;
        let task = app.read(move |r| r.task(task_id)).await?;
        let summary = TaskSummary {
            id: task_id.to_string(),
            title: task.title.clone(),
            // While the task waits, its result holds the summary its agent finished with.
            summary: task.result.clone().unwrap_or_default(),
        };
        let settings = self.settings.clone();
        let root = self.project_root.clone();
        let branch = entry.branch.clone();
        let agent = entry.agent.clone();
        let local = self.agent_is_local(app, &entry.agent).await;
        let landing = tokio::task::spawn_blocking(move || {
            land_blocking(&settings, &root, &agent, &branch, &summary, local)
        })
        .await
        .unwrap_or_else(|error| Recorded::Retry {
            outcome: format!("the landing thread failed: {error}"),
            pause: Some(format!("landing {task_id} failed: {error}")),
        });
        // A branch sent back: the agent's worktree goes back to it when the agent is between
        // tasks, and the message says where the worktree is.
        let landing = match landing {
            Recorded::SentBack { reason, details } => {
                let agent = entry.agent.clone();
                let busy = app
                    .read(move |r| Ok(r.held_tasks(&agent)?.iter().any(|held| held.id != task_id)))
                    .await
                    .unwrap_or(true);
                let (settings, root, agent) = (
                    self.settings.clone(),
                    self.project_root.clone(),
                    entry.agent.clone(),
                );
                let line = if local {
                    tokio::task::spawn_blocking(move || {
                        crate::worktree_tasks::return_to_branch(
                            &root,
                            &settings,
                            &agent,
                            &task_id.to_string(),
                            busy,
                        )
                    })
                    .await
                    .unwrap_or_default()
                } else {
                    crate::branch_travel::return_elsewhere(&task_id.to_string(), busy)
                };
                Recorded::SentBack {
                    reason,
                    details: format!("{line}\n\n{details}"),
                }
            }
            other => other,
        };
        let recorded = store_write(app, move |tx| match landing {
            Recorded::Landed(outcome) => tx.land_merge(task_id, &outcome),
            Recorded::LandedUnpublished { outcome, pause } => {
                let entry = tx.land_merge(task_id, &outcome)?;
                tx.pause_merge_queue(&Actor::System, Some(pause))?;
                Ok(entry)
            }
            Recorded::SentBack { reason, details } => tx.send_back_merge(task_id, reason, &details),
            Recorded::Retry { outcome, pause } => {
                let entry = tx.release_merge(task_id, &outcome)?;
                if let Some(reason) = pause {
                    tx.pause_merge_queue(&Actor::System, Some(reason))?;
                }
                Ok(entry)
            }
        })
        .await?;
        tracing::info!(task = %task_id, state = %recorded.state, "merge queue entry recorded");
        Ok(recorded)
    }
}

impl MergeQueue {
    /// Whether `agent`'s worktree is in this server's clone (it is registered on no host or on
    /// this one); an agent that cannot be read counts as local, as before hosts existed.
    async fn agent_is_local(&self, app: &App, agent: &str) -> bool {
        let name = agent.to_string();
        match app
            .read(move |r| Ok(r.find_agent(&name)?.and_then(|a| a.host)))
            .await
        {
            Ok(host) => self.is_local(host.as_deref()),
            Err(_) => true,
        }
    }
}

/// A change by the server itself (no actor's heartbeat, no idempotency key), on a blocking
/// thread.
async fn store_write<T, F>(app: &App, change: F) -> OpResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut conclave_core::store::Tx<'_>) -> conclave_core::Result<T> + Send + 'static,
{
    let store = app.store().clone();
    Ok(tokio::task::spawn_blocking(move || store.write(change)).await??)
}

/// The git side of one landing (blocking): commit-on-done in the agent's worktree, land, and
/// fast-forward `[merge] land_on` when configured.
fn land_blocking(
    settings: &MergeSection,
    root: &std::path::Path,
    agent: &str,
    branch: &str,
    summary: &TaskSummary,
    local_agent: bool,
) -> Recorded {
    let into = settings.into_branch();
    let failed = |what: &str, error: conclave_git::GitError| Recorded::Retry {
        outcome: format!("{what}: {error}"),
        pause: Some(format!("landing {} failed: {what}: {error}", summary.id)),
    };
    let repo = match Repo::open(root, Identity::default()) {
        Ok(repo) => repo,
        Err(error) => return failed("opening the repository", error),
    };
    if let Err(error) = repo.ensure_integration_branch(into, None) {
        return failed("preparing the integration branch", error);
    }
    let setup = settings
        .setup
        .as_ref()
        .map(|command| ShellCommand::new(command.clone(), settings.check_timeout()));
    let worktrees = match AgentWorktrees::new(repo.clone()) {
        Ok(worktrees) => worktrees.with_setup(setup),
        Err(error) => return failed("opening the worktrees", error),
    };
    // The agent's uncommitted work belongs to the task, if its worktree is still on the branch
    // (and in this clone: an agent of another host committed and pushed at its `done`).
    if local_agent
        && let Ok(path) = worktrees.path_of(agent)
        && path.is_dir()
    {
        let git = repo.git_at(&path);
        let on_branch = git
            .run(&["rev-parse", "--abbrev-ref", "HEAD"])
            .is_ok_and(|head| head.trim() == branch);
        if on_branch && let Err(error) = commit_on_done(repo.git(), &path, summary, into) {
            return failed("committing the agent's work", error);
        }
    }
    // A branch finished on another host arrives through the shared remote.
    if let Err(error) = crate::branch_travel::bring_for_landing(root, settings, branch) {
        return failed("bringing the branch from the shared remote", error);
    }
    match repo.branch_tip(branch) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Recorded::Landed(format!("no branch {branch}: the task changed nothing"));
        }
        Err(error) => return failed("reading the branch", error),
    }
    let strategy = if settings.rebases() {
        Strategy::Rebase
    } else {
        Strategy::Merge
    };
    let check = settings
        .check
        .as_ref()
        .map(|command| ShellCommand::new(command.clone(), settings.check_timeout()));
    let engine = MergeEngine::new(worktrees).with_lock_timeout(settings.check_timeout() * 2);
    let request = LandRequest {
        branch: branch.to_string(),
        into: into.to_string(),
        strategy,
        check: check.clone(),
        message: summary.commit_message(),
    };
    let outcome = match engine.land(&request) {
        Ok(outcome) => outcome,
        Err(error) => return failed("landing", error),
    };
    let mut landed = match outcome {
        LandOutcome::Landed {
            tip,
            previous,
            check: ran,
        } => {
            let check = match ran {
                Some(ran) => format!("; check passed in {} s", ran.elapsed.as_secs()),
                None => String::new(),
            };
            format!(
                "landed on {into} at {} (was {}){check}",
                tip.short(),
                previous.short()
            )
        }
        LandOutcome::AlreadyLanded { tip } => {
            format!("already on {into} (at {}): nothing to merge", tip.short())
        }
        LandOutcome::Conflict(report) => {
            let cut = if report.truncated { "\n[cut]" } else { "" };
            return Recorded::SentBack {
                reason: "conflict",
                details: format!(
                    "Conflicting files: {}\n\n{}{cut}",
                    report.files.join(", "),
                    report.hunks
                ),
            };
        }
        LandOutcome::CheckFailed(ran) => {
            let command = check.map(|c| c.command).unwrap_or_default();
            return Recorded::SentBack {
                reason: "check_failed",
                details: format!(
                    "The check `{command}` failed ({}). Its last output lines:\n{}",
                    ran.describe(),
                    ran.output_tail
                ),
            };
        }
        LandOutcome::IntegrationMoved { .. } => {
            return Recorded::Retry {
                outcome: format!("{into} moved during the landing; retrying"),
                pause: None,
            };
        }
        LandOutcome::Refused { reason } => {
            return Recorded::Retry {
                outcome: reason.clone(),
                pause: Some(format!("{into} cannot move: {reason}")),
            };
        }
    };
    if let Some(target) = &settings.land_on {
        // The task landed either way; the user's branch following is reported, not required.
        match engine.fast_forward(target, into) {
            Ok(FastForward::Moved { to, .. }) => {
                landed.push_str(&format!("; {target} fast-forwarded to {}", to.short()));
            }
            Ok(FastForward::AlreadyUpToDate) => {}
            Ok(FastForward::Refused { reason }) => {
                landed.push_str(&format!("; {target} not moved: {reason}"));
            }
            Err(error) => landed.push_str(&format!("; {target} not moved: {error}")),
        }
    }
    // The other clones start their next task branches from what the remote holds.
    match crate::branch_travel::publish_integration(root, settings) {
        Ok(Some(remote)) => landed.push_str(&format!("; {into} pushed to {remote}")),
        Ok(None) => {}
        Err(error) => {
            return Recorded::LandedUnpublished {
                pause: format!(
                    "{into} landed {} here but was not published: {error}; the other hosts do \
                     not see it until it is (fix the remote, then resume: the next landing \
                     pushes it)",
                    summary.id
                ),
                outcome: format!("{landed}; NOT pushed: {error}"),
            };
        }
    }
    Recorded::Landed(landed)
}

/// The runner: prepares the integration branch, then lands entries as they come until
/// `shutdown`.
pub async fn run_merge_queue(app: App, queue: Arc<MergeQueue>, shutdown: CancellationToken) {
    if !queue.runs_here() {
        // Said out loud: with one server (SQLite), nothing lands until a server runs there.
        tracing::warn!(
            host = %queue.host,
            queue_host = ?queue.settings.host,
            "this server does not land branches: the merge queue runs on another host's server \
             ([merge] host)"
        );
        return;
    }
    let (root, settings) = (queue.project_root.clone(), queue.settings.clone());
    match tokio::task::spawn_blocking(move || crate::branch_travel::check_remote(&root, &settings))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "the merge queue's shared remote");
            let reason = error.to_string();
            let paused = store_write(&app, move |tx| {
                tx.pause_merge_queue(&Actor::System, Some(reason))
            })
            .await;
            if let Err(error) = paused {
                tracing::warn!(?error, "cannot pause the merge queue");
            }
        }
        Err(error) => tracing::warn!(%error, "checking the shared remote failed"),
    }
    let root = queue.project_root.clone();
    let into = queue.settings.into_branch().to_string();
    let prepared = tokio::task::spawn_blocking(move || {
        let repo = Repo::open(&root, Identity::default())?;
        repo.ensure_integration_branch(&into, None)?;
        AgentWorktrees::new(repo)?.repair()
    })
    .await;
    match prepared {
        Ok(Ok(report)) => tracing::info!(?report, "merge queue ready"),
        Ok(Err(error)) => {
            tracing::warn!(%error, "the merge queue could not prepare the repository")
        }
        Err(error) => tracing::warn!(%error, "the merge queue's preparation failed"),
    }
    loop {
        queue.drain(&app, &shutdown).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = queue.wake.notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
}
