//! Branches between clones on the server's side (docs/scale-out.md): with `[merge] remote`,
//! task branches and the integration branch travel through a remote every clone shares.
//!
//! The server runs git only in its own clone, and so only for agents on its own host (no
//! `host`, or the server's): an agent on another host has its worktree there, and that host's
//! relay (conclave-supervisor's `worktree_steps`) switches, commits and pushes it. Here:
//!
//! - the queue's server **brings** a task branch in from the remote before landing it (the
//!   agent that finished it may have pushed it from another host), and **publishes** the
//!   integration branch after each landing, so that the other clones start their next task
//!   branches from what has landed;
//! - a server that does not run the queue (`[merge] host` names another host, several servers
//!   on one database) **follows** the remote's integration branch before starting a local
//!   agent's task branch, and publishes the branch when the agent finishes.
//!
//! Blocking: call from `spawn_blocking`.

use std::path::Path;

use conclave_core::config::MergeSection;
use conclave_git::{Brought, GitError, Identity, Repo, SharedRemote};

/// The shared remote, when `[merge] remote` names one; an error when the clone lacks it.
fn shared_remote(root: &Path, settings: &MergeSection) -> Result<Option<SharedRemote>, GitError> {
    let Some(name) = &settings.remote else {
        return Ok(None);
    };
    let repo = Repo::open(root, Identity::default())?;
    SharedRemote::open(&repo, name).map(Some)
}

/// Checks at the queue's start that the remote exists (a typo would otherwise surface at the
/// first landing).
pub fn check_remote(root: &Path, settings: &MergeSection) -> Result<(), GitError> {
    shared_remote(root, settings).map(|_| ())
}

/// Before a local agent's task branch is started or resumed: on a server that does not run the
/// queue, the integration branch becomes the remote's; the task's branch is brought in when
/// another host published it (a task that changed hands, or one sent back).
pub fn before_start(
    root: &Path,
    settings: &MergeSection,
    queue_here: bool,
    task_branch: &str,
) -> Result<(), GitError> {
    let Some(remote) = shared_remote(root, settings)? else {
        return Ok(());
    };
    if !queue_here {
        remote.follow(settings.into_branch())?;
    }
    match remote.bring(task_branch) {
        Ok(brought) => log_brought(task_branch, &brought),
        // On the queue's host the local branches are the ones that count: a remote that cannot
        // be reached only means a branch another host published is not here yet.
        Err(error) if queue_here => {
            tracing::warn!(%error, branch = %task_branch, "cannot bring the task's branch from the remote");
        }
        Err(error) => return Err(error),
    }
    Ok(())
}

/// After a local agent's work was committed on its task branch (`done`, `fail`): on a server
/// that does not run the queue, the branch is pushed so that the queue's clone can land it.
/// Answers a line for the agent when it was pushed.
pub fn publish_task_branch(
    root: &Path,
    settings: &MergeSection,
    queue_here: bool,
    branch: &str,
) -> Result<Option<String>, GitError> {
    if queue_here {
        return Ok(None);
    }
    let Some(remote) = shared_remote(root, settings)? else {
        return Ok(None);
    };
    let tip = remote.push(branch)?;
    Ok(Some(format!(
        "{branch} pushed to {} at {}.",
        remote.name(),
        tip.short()
    )))
}

/// Before the queue lands `branch`: brought in from the remote when another clone published
/// more of it.
pub fn bring_for_landing(
    root: &Path,
    settings: &MergeSection,
    branch: &str,
) -> Result<Option<Brought>, GitError> {
    let Some(remote) = shared_remote(root, settings)? else {
        return Ok(None);
    };
    let brought = remote.bring(branch)?;
    log_brought(branch, &brought);
    Ok(Some(brought))
}

/// After a landing: the integration branch is published for the other clones. Answers the
/// remote's name when it was pushed.
pub fn publish_integration(
    root: &Path,
    settings: &MergeSection,
) -> Result<Option<String>, GitError> {
    let Some(remote) = shared_remote(root, settings)? else {
        return Ok(None);
    };
    remote.push(settings.into_branch())?;
    Ok(Some(remote.name().to_string()))
}

fn log_brought(branch: &str, brought: &Brought) {
    match brought {
        Brought::Updated(tip) => {
            tracing::info!(%branch, tip = %tip.short(), "task branch brought in from the remote");
        }
        Brought::Diverged { local, remote } => tracing::warn!(
            %branch,
            local = %local.short(),
            remote = %remote.short(),
            "the remote's task branch and this clone's have diverged: this clone's is used"
        ),
        Brought::CheckedOut(tip) => tracing::info!(
            %branch,
            tip = %tip.short(),
            "the task branch is checked out here: the remote's is not brought in"
        ),
        Brought::NotOnRemote | Brought::Kept(_) => {}
    }
}

/// The line of a sent-back task's message for an agent whose worktree is on another host (the
/// queue cannot switch it from here).
pub fn return_elsewhere(task: &str, busy: bool) -> String {
    if busy {
        format!(
            "Your worktree stays on your current task: finish it, then `git switch \
             conclave/{task}` in your worktree to fix this one."
        )
    } else {
        format!(
            "Switch your worktree back with `git switch conclave/{task}` (your clone has the \
             branch), fix it there, and finish again: done pushes it."
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use conclave_core::config::MergeSection;

    use crate::merge_queue::MergeQueue;

    fn queue(host: &str, queue_host: Option<&str>) -> std::sync::Arc<MergeQueue> {
        let settings = MergeSection {
            host: queue_host.map(str::to_string),
            ..MergeSection::default()
        };
        MergeQueue::on_host(
            settings,
            PathBuf::from("/project"),
            host.to_string(),
            vec!["build-1".into(), "build-2".into()],
        )
    }

    #[test]
    fn the_server_runs_git_only_for_agents_whose_worktrees_are_in_its_clone() {
        let here = queue("build-1", None);
        // No host, the server's own, or a name conclave.toml gives no agent (the main host's
        // own name for its agents): the worktree is in this clone.
        assert!(here.is_local(None));
        assert!(here.is_local(Some("build-1")));
        assert!(here.is_local(Some("main-box")));
        // A host conclave.toml names for agents, other than this one: that host's relay runs
        // the steps.
        assert!(!here.is_local(Some("build-2")));
        assert!(
            here.runs_here(),
            "no [merge] host: every server runs the queue"
        );
    }

    #[test]
    fn merge_host_picks_the_server_that_runs_the_queue() {
        assert!(queue("build-1", Some("build-1")).runs_here());
        assert!(!queue("build-2", Some("build-1")).runs_here());
    }
}
