//! Task branches in agents' worktrees (`isolation = "worktree"`, docs/worktrees.md): the git
//! steps that must happen at a precise point of a task's life, so the server runs them inside
//! the operation that marks that point rather than leaving them to the supervisor, which would
//! learn of the claim or the `done` only afterwards (from the event stream) while the agent is
//! already editing or moving on.
//!
//! - **claim**: before the claim, the agent's worktree must hold no uncommitted work (it would
//!   belong to no task); after it, the worktree is switched to `conclave/<task>` (the task's
//!   existing branch, or a new one from the integration branch's tip) before the claim answers,
//!   so the agent's first edit is on the task's branch. The worktree is created (with `[merge]
//!   setup`) if the supervisor has not made it yet.
//! - **done**: what the agent left uncommitted becomes one commit on the task's branch (the
//!   task's id, title and summary as its message) *before* the entry joins the merge queue, so
//!   the queue never lands a branch without the agent's last changes. A `done` with no change on
//!   the branch is allowed and says so.
//!   The commit happens for any `done` of a task the worktree agent holds (a pipeline stage's
//!   next agent claims the same branch), and for `fail` too (the work given up stays on the
//!   branch for the next holder, and the worktree is clean for the agent's next claim).
//! - **assign**: a person's assignment switches the worktree like a claim when it is clean
//!   ([`after_assign`]); work left on a detached worktree is put on the task's branch at `done`.
//! - **removed**: `conclave agent remove` prunes the agent's worktree ([`prune`]).
//! - **sent back**: the merge queue's runner switches an idle, clean worktree back to the
//!   returned task's branch ([`return_to_branch`]); so does a person's rejection of a task that
//!   waited for approval ([`back_to_branch`]).
//! - **handed on**: after a `done` that leaves the task in other hands (a pipeline stage's pass
//!   or send-back, a task waiting for a person) or a `fail`, the agent's worktree lets go of the
//!   branch ([`release_branch_unless_held`]): a branch is checked out in one worktree at a time,
//!   and the next holder's claim switches its own worktree to it, with every earlier stage's
//!   commits. The done's commit names the stage ([`commit_title`]).
//!
//! Each step runs only for an agent registered with worktree isolation while the server has a
//! merge queue (`[merge]`), on a blocking thread, and only for an agent on the server's own host:
//! one registered on another host has its worktree in that host's clone, where its relay runs
//! these steps (docs/scale-out.md). With `[merge] remote`, [`crate::branch_travel`] moves the
//! branches between clones.

use std::path::{Path, PathBuf};

use conclave_core::CoreError;
use conclave_core::config::MergeSection;
use conclave_core::model::{Actor, Isolation, MessageKind, NewMessage, Task, TaskId};
use conclave_git::{
    AgentWorktrees, DoneCommit, GitError, Identity, Repo, ShellCommand, TaskCheckout, TaskSummary,
    commit_on_done, task_branch,
};

use crate::app::{App, OpError, OpResult};
use crate::ops::IdempotencyKey;

/// The project and `[merge]` settings an agent's worktree steps need, when the agent works in
/// a worktree and the server runs a merge queue.
struct WorktreeAgent {
    root: PathBuf,
    settings: MergeSection,
    agent: String,
    /// This server runs the queue: its integration branch is the one that counts.
    queue_here: bool,
}

fn open(root: &Path, settings: &MergeSection, agent: &str) -> Result<AgentWorktrees, GitError> {
    let repo = Repo::open(root, Identity::agent(agent))?;
    repo.ensure_integration_branch(settings.into_branch(), None)?;
    let setup = settings
        .setup
        .as_ref()
        .map(|command| ShellCommand::new(command.clone(), settings.check_timeout()));
    Ok(AgentWorktrees::new(repo)?.with_setup(setup))
}

fn git_failure(what: &str, error: GitError) -> OpError {
    OpError::Worker(format!("{what}: {error}"))
}

async fn worktree_agent(app: &App, agent: &str) -> OpResult<Option<WorktreeAgent>> {
    let Some(queue) = app.settings().merge.clone() else {
        return Ok(None);
    };
    let name = agent.to_string();
    let found = app
        .read(move |r| Ok(r.find_agent(&name)?.map(|a| (a.isolation, a.host))))
        .await?;
    let Some((Isolation::Worktree, host)) = found else {
        return Ok(None);
    };
    if !queue.is_local(host.as_deref()) {
        // Its worktree is in another host's clone: that host's relay runs the git steps.
        return Ok(None);
    }
    Ok(Some(WorktreeAgent {
        root: queue.project_root().to_path_buf(),
        settings: queue.settings().clone(),
        agent: agent.to_string(),
        queue_here: queue.runs_here(),
    }))
}

/// Refuses a claim while the agent's worktree holds uncommitted work: a task's branch must start
/// clean, and work left from a task sent back belongs to that task.
pub async fn before_claim(app: &App, agent: &str) -> OpResult<()> {
    let Some(worktree) = worktree_agent(app, agent).await? else {
        return Ok(());
    };
    let dirty = tokio::task::spawn_blocking(move || -> Result<_, GitError> {
        let trees = open(&worktree.root, &worktree.settings, &worktree.agent)?;
        let path = trees.path_of(&worktree.agent)?;
        if !path.is_dir() {
            return Ok(None);
        }
        let git = trees.repo().git_at(&path);
        let files = git.dirty_files()?;
        if files.is_empty() {
            return Ok(None);
        }
        let head = git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?;
        Ok(Some((path, head.trim().to_string(), files)))
    })
    .await?
    .map_err(|error| git_failure("cannot read your worktree", error))?;
    match dirty {
        None => Ok(()),
        Some((path, head, files)) => {
            let on = match head.strip_prefix("conclave/") {
                Some(task) => format!(
                    " on {head}: if {task} is a task you hold, finish it first (done commits \
                     them); else discard them (git stash -u) and claim again"
                ),
                None => ": they belong to no task; discard them (git stash -u) and claim again"
                    .to_string(),
            };
            let shown: Vec<&str> = files.iter().take(10).map(String::as_str).collect();
            Err(CoreError::conflict(format!(
                "cannot claim: your worktree {} has uncommitted changes ({}){on}",
                path.display(),
                shown.join(", ")
            ))
            .into())
        }
    }
}

/// Switches the claimer's worktree to `conclave/<task>` after the claim.
pub async fn after_claim(app: &App, agent: &str, task: TaskId) -> OpResult<Option<TaskCheckout>> {
    let Some(worktree) = worktree_agent(app, agent).await? else {
        return Ok(None);
    };
    let checkout = tokio::task::spawn_blocking(move || {
        let trees = open(&worktree.root, &worktree.settings, &worktree.agent)?;
        let (id, into) = (task.to_string(), worktree.settings.into_branch());
        crate::branch_travel::before_start(
            &worktree.root,
            &worktree.settings,
            worktree.queue_here,
            &task_branch(&id)?,
        )?;
        match trees.start_task(&worktree.agent, &id, into) {
            // The task changed hands (its agent crashed or was released after a send-back):
            // the branch is still checked out in the previous holder's worktree.
            Err(GitError::CheckedOutElsewhere { path, .. }) => {
                let Some((previous, _)) = trees.locate(&path) else {
                    return Err(GitError::CheckedOutElsewhere {
                        branch: task_branch(&id)?,
                        path,
                    });
                };
                trees.hand_over(&path, &previous, &id, into)?;
                tracing::info!(%previous, task = %id, "the task's branch handed over from its previous holder's worktree");
                trees.start_task(&worktree.agent, &id, into)
            }
            other => other,
        }
    })
    .await?
    .map_err(|error| {
        git_failure(
            &format!(
                "claimed {task}, but could not switch your worktree to its branch (give it back \
                 with fail, saying so)"
            ),
            error,
        )
    })?;
    tracing::info!(%agent, %task, branch = %checkout.branch, resumed = checkout.resumed, "worktree switched to the task's branch");
    Ok(Some(checkout))
}

/// After a person assigned `task` to `agent` (and it is claimed at once): its worktree is
/// switched to the task's branch when it holds no uncommitted work. Unlike a claim, the
/// assignment stands either way (the agent may be in the middle of other work); a failure is
/// logged, and `done` still puts work left on a detached worktree on the task's branch.
pub async fn after_assign(app: &App, agent: &str, task: TaskId) {
    if let Err(error) = after_claim(app, agent, task).await {
        tracing::info!(%agent, %task, %error, "an assigned task's branch was not checked out");
    }
}

/// After `agent` was removed from the team: its worktree is removed (pruned from git). What it
/// left uncommitted on a task's branch is committed there first, so nothing is lost; its task
/// branches stay. A failure is logged (the removal stands).
pub async fn prune(app: &App, agent: &str) {
    let Ok(Some(worktree)) = worktree_agent(app, agent).await else {
        return;
    };
    let pruned = tokio::task::spawn_blocking(move || -> Result<(), GitError> {
        let trees = open(&worktree.root, &worktree.settings, &worktree.agent)?;
        let path = trees.path_of(&worktree.agent)?;
        if path.is_dir() {
            let git = trees.repo().git_at(&path);
            let head = git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?;
            if let Some(task) = head.trim().strip_prefix("conclave/") {
                let summary = TaskSummary {
                    id: task.to_string(),
                    title: format!("work {} left uncommitted", worktree.agent),
                    summary: String::new(),
                };
                commit_on_done(
                    trees.repo().git(),
                    &path,
                    &summary,
                    worktree.settings.into_branch(),
                )?;
            }
        }
        trees.remove(&worktree.agent)
    })
    .await;
    match pruned {
        Ok(Ok(())) => tracing::info!(%agent, "removed agent's worktree pruned"),
        Ok(Err(error)) => tracing::warn!(%agent, %error, "cannot prune a removed agent's worktree"),
        Err(error) => tracing::warn!(%agent, %error, "pruning a removed agent's worktree failed"),
    }
}

/// What [`before_done`] found on the task's branch.
#[derive(Debug, Clone)]
pub struct BranchDone {
    pub branch: String,
    pub commit: Option<DoneCommit>,
    /// Where the branch was pushed for the queue's clone (`[merge] remote`), if it was.
    pub published: Option<String>,
}

impl BranchDone {
    /// One line for the agent: what was committed, or that the branch changes nothing.
    pub fn describe(&self) -> String {
        let line = self.describe_commit();
        match &self.published {
            Some(published) => format!("{line} {published}"),
            None => line,
        }
    }

    fn describe_commit(&self) -> String {
        match &self.commit {
            None => format!(
                "Your worktree is not on {}: its commits are what the merge queue lands.",
                self.branch
            ),
            Some(done) if !done.has_changes() => format!(
                "{} changes nothing: there is nothing to merge (a done with no change is allowed).",
                self.branch
            ),
            Some(done) => format!(
                "{}{} changes {} file(s); it waits in the merge queue.",
                self.branch,
                match &done.committed {
                    Some(commit) =>
                        format!(" (your uncommitted work committed as {})", commit.short()),
                    None => String::new(),
                },
                done.changed_files.len()
            ),
        }
    }
}

/// Before a worktree agent's `done` enqueues its task: commits what is uncommitted in its
/// worktree when the worktree is on the task's branch.
pub async fn before_done(
    app: &App,
    agent: &str,
    task: TaskId,
    title: String,
    summary: Option<String>,
) -> OpResult<Option<BranchDone>> {
    let Some(worktree) = worktree_agent(app, agent).await? else {
        return Ok(None);
    };
    let done = tokio::task::spawn_blocking(move || -> Result<BranchDone, GitError> {
        let trees = open(&worktree.root, &worktree.settings, &worktree.agent)?;
        let branch = task_branch(&task.to_string())?;
        let path = trees.path_of(&worktree.agent)?;
        if !path.is_dir() {
            return Ok(BranchDone {
                branch,
                commit: None,
                published: None,
            });
        }
        let git = trees.repo().git_at(&path);
        let head = git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?;
        if head.trim() == "HEAD"
            && trees.repo().branch_tip(&branch)?.is_none()
            && !git.dirty_files()?.is_empty()
        {
            // Work done on a worktree no claim switched (a task given by assignment): it is the
            // task's being finished, so it goes on the task's branch from where it stands.
            git.run(&["switch", "--quiet", "--no-track", "-c", &branch])?;
        } else if head.trim() != branch {
            return Ok(BranchDone {
                branch,
                commit: None,
                published: None,
            });
        }
        let summary = TaskSummary {
            id: task.to_string(),
            title,
            summary: summary.unwrap_or_default(),
        };
        let commit = commit_on_done(
            trees.repo().git(),
            &path,
            &summary,
            worktree.settings.into_branch(),
        )?;
        let published = crate::branch_travel::publish_task_branch(
            &worktree.root,
            &worktree.settings,
            worktree.queue_here,
            &branch,
        )?;
        Ok(BranchDone {
            branch,
            commit: Some(commit),
            published,
        })
    })
    .await?
    .map_err(|error| git_failure("cannot commit your worktree's changes", error))?;
    tracing::info!(%agent, %task, outcome = %done.describe(), "done: the task's branch");
    Ok(Some(done))
}

/// After the queue sent `task` back: switches `agent`'s worktree back to the task's branch when
/// the agent is between tasks (`busy` says it holds another one) and the worktree holds no
/// uncommitted work; answers a line for the agent's message saying where its worktree is.
/// Blocking.
pub fn return_to_branch(
    root: &Path,
    settings: &MergeSection,
    agent: &str,
    task: &str,
    busy: bool,
) -> String {
    switch_back(root, settings, agent, task, busy).1
}

/// [`return_to_branch`], answering too whether the worktree is on the task's branch now.
fn switch_back(
    root: &Path,
    settings: &MergeSection,
    agent: &str,
    task: &str,
    busy: bool,
) -> (bool, String) {
    if busy {
        return (
            false,
            format!(
                "Your worktree stays on your current task: finish it, then `git switch \
                 conclave/{task}` in your worktree to fix this one."
            ),
        );
    }
    let switched = open(root, settings, agent).and_then(|trees| {
        match trees.start_task(agent, task, settings.into_branch()) {
            // Another agent's worktree still has the branch (a pipeline's stage whose release
            // failed): what it left is the task's, and the branch comes here.
            Err(GitError::CheckedOutElsewhere { path, branch }) => {
                let Some((previous, _)) = trees.locate(&path) else {
                    return Err(GitError::CheckedOutElsewhere { branch, path });
                };
                trees.hand_over(&path, &previous, task, settings.into_branch())?;
                tracing::info!(%previous, task = %task, "the task's branch handed over from its previous holder's worktree");
                trees.start_task(agent, task, settings.into_branch())
            }
            other => other,
        }
    });
    match switched {
        Ok(checkout) => (
            true,
            format!(
                "Your worktree {} is on {} again.",
                checkout.path.display(),
                checkout.branch
            ),
        ),
        Err(GitError::Dirty { path, .. }) => (
            false,
            format!(
                "Your worktree {} has uncommitted work of another task: finish that first, then \
                 `git switch conclave/{task}` there.",
                path.display()
            ),
        ),
        Err(error) => (
            false,
            format!("Switch your worktree to conclave/{task} yourself ({error})."),
        ),
    }
}

/// The first line of the commit `done` makes of what the agent left uncommitted: the task's
/// title, and for a pipeline task the stage that finished it (every stage commits on the same
/// branch, so its log tells which stage did what).
pub fn commit_title(task: &Task) -> String {
    match task.pipeline.as_ref() {
        Some(state) => format!(
            "{} (stage {}/{}: {})",
            task.title,
            state.stage + 1,
            state.pipeline.stages.len(),
            state.current().map_or("?", |stage| stage.role.as_str())
        ),
        None => task.title.clone(),
    }
}

/// After `agent` finished `task` one way or another: unless it still holds it (waiting in the
/// merge queue), its worktree lets go of the task's branch (detached where the branch is), since
/// a git branch is checked out in one worktree at a time and the next holder (a pipeline's next
/// stage, the stage a send-back returns to) switches its own worktree to it at its claim. A
/// failure is logged: that claim frees the branch itself (`AgentWorktrees::hand_over`).
pub async fn release_branch_unless_held(app: &App, agent: &str, task: TaskId) {
    let Ok(Some(worktree)) = worktree_agent(app, agent).await else {
        return;
    };
    let holder = agent.to_string();
    let held = app
        .read(move |r| {
            let task = r.task(task)?;
            Ok(conclave_core::store::is_held(&task) && task.assignee.as_deref() == Some(&holder))
        })
        .await;
    if !matches!(held, Ok(false)) {
        return;
    }
    let released = tokio::task::spawn_blocking(move || -> Result<bool, GitError> {
        let trees = open(&worktree.root, &worktree.settings, &worktree.agent)?;
        let path = trees.path_of(&worktree.agent)?;
        if !path.is_dir() {
            return Ok(false);
        }
        let git = trees.repo().git_at(&path);
        let head = git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?;
        if head.trim() != task_branch(&task.to_string())? {
            return Ok(false);
        }
        git.run(&["switch", "--quiet", "--detach"])?;
        Ok(true)
    })
    .await;
    match released {
        Ok(Ok(true)) => tracing::info!(%agent, %task, "worktree released the task's branch"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::warn!(%agent, %task, %error, "cannot release the task's branch"),
        Err(error) => tracing::warn!(%agent, %task, %error, "releasing the task's branch failed"),
    }
}

/// After a person rejected `task` back to `agent`: its worktree is switched to the task's branch
/// again when the agent is between tasks; otherwise the agent is told how to get there.
pub async fn back_to_branch(app: &App, agent: &str, task: TaskId) {
    let Ok(Some(worktree)) = worktree_agent(app, agent).await else {
        return;
    };
    let name = agent.to_string();
    let busy = app
        .read(move |r| Ok(r.held_tasks(&name)?.iter().any(|held| held.id != task)))
        .await
        .unwrap_or(true);
    let switched = tokio::task::spawn_blocking(move || {
        switch_back(
            &worktree.root,
            &worktree.settings,
            &worktree.agent,
            &task.to_string(),
            busy,
        )
    })
    .await;
    let line = match switched {
        Ok((true, _)) => return,
        Ok((false, line)) => line,
        Err(error) => format!("Switch your worktree to conclave/{task} yourself ({error})."),
    };
    let message = NewMessage {
        to: agent.to_string(),
        body: format!("{task}: {line}"),
        thread: None,
        kind: MessageKind::Alert,
        urgent: false,
    };
    let sent = app
        .write(&Actor::System, &IdempotencyKey::default(), move |tx| {
            tx.send_message(&Actor::System, message)
        })
        .await;
    if let Err(error) = sent {
        tracing::warn!(%agent, %task, ?error, "cannot tell the agent where its worktree is");
    }
}
