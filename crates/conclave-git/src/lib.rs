//! Conclave's git engine for `isolation = "worktree"` (issue 11): a worktree per agent, a branch
//! per task, the merge queue's git side, and write attribution for shell commands.
//!
//! It drives the real `git` CLI with `std::process` and holds no state of its own beyond git's:
//! the queue's order and its entries' history live in the server's store; the supervisor calls
//! this crate. Everything is synchronous (call it from `spawn_blocking` in async code) and every
//! piece works on its own:
//!
//! | piece | entry points |
//! |---|---|
//! | the repository, the integration branch | [`Repo::open`], [`Repo::ensure_integration_branch`] (default [`DEFAULT_INTEGRATION_BRANCH`], created from the main worktree's HEAD) |
//! | agent worktrees in `.conclave/worktrees/<agent>` | [`AgentWorktrees::start_task`] (creates or reuses the worktree, switches it to `conclave/<task>`), [`AgentWorktrees::remove`], [`AgentWorktrees::repair`] (at start-up), [`AgentWorktrees::with_setup`] (`[merge] setup`) |
//! | commit-on-done | [`commit_on_done`] with a [`TaskSummary`]; [`DoneCommit::has_changes`] says whether the branch changes anything |
//! | landing a branch | [`MergeEngine::land`] → [`LandOutcome`] (landed, already landed, conflict, check failed, integration moved, refused); [`MergeEngine::fast_forward`] for the user's own branch |
//! | what a task's branch changed (for a person approving it) | [`branch_diff`]: the merge-base diff against the integration branch, the file list complete, the patch bounded |
//! | overlaps between open branches | [`overlaps`], [`overlaps_with_work`] (uncommitted work in the worktrees too) |
//! | branches between clones (a remote every clone shares) | [`SharedRemote::push`] (a finished task's branch, the integration branch after a landing), [`SharedRemote::bring`] (a task branch into the queue's clone), [`SharedRemote::follow`] (the integration branch on the other clones) |
//! | write attribution | [`TreeSnapshot::capture`] before a command, [`TreeSnapshot::capture_after`] after it, [`TreeSnapshot::changes`]; [`dependency_file`] flags manifests and lockfiles |
//!
//! A sketch of one task's life, as the supervisor and the queue will run it:
//!
//! ```no_run
//! # fn main() -> Result<(), conclave_git::GitError> {
//! use conclave_git::*;
//! use std::time::Duration;
//!
//! let repo = Repo::open(std::path::Path::new("."), Identity::default())?;
//! repo.ensure_integration_branch(DEFAULT_INTEGRATION_BRANCH, None)?;
//! let worktrees = AgentWorktrees::new(repo.clone())?;
//! worktrees.repair()?; // after a crash: stale entries and half-made folders go
//! let checkout = worktrees.start_task("alice", "T-12", DEFAULT_INTEGRATION_BRANCH)?;
//! // ... the agent works in checkout.path ...
//! let task = TaskSummary { id: "T-12".into(), title: "Add a flag".into(), summary: String::new() };
//! let done = commit_on_done(repo.git(), &checkout.path, &task, DEFAULT_INTEGRATION_BRANCH)?;
//! if done.has_changes() {
//!     let engine = MergeEngine::new(worktrees.clone());
//!     let outcome = engine.land(&LandRequest {
//!         branch: checkout.branch.clone(),
//!         into: DEFAULT_INTEGRATION_BRANCH.into(),
//!         strategy: Strategy::Merge,
//!         check: Some(ShellCommand::new("cargo test", Duration::from_secs(600))),
//!         message: task.commit_message(),
//!     })?;
//!     match outcome {
//!         LandOutcome::Landed { .. } | LandOutcome::AlreadyLanded { .. } => { /* task done */ }
//!         _ => { /* send it back to its agent with the details */ }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Guarantees the tests pin: nothing reaches the integration branch that failed the check; it
//! moves only by one compare-and-swap after the check, so a crash leaves it at the old tip or the
//! new one; a branch whose tip it contains is never merged again; the user's own branch moves
//! only by fast-forward, never when it is dirty or has moved.

mod commit;
mod deps;
mod diff;
mod error;
mod git;
mod lock;
mod merge;
mod overlap;
mod remote;
mod repo;
mod shell;
mod snapshot;
mod worktree;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use commit::{DoneCommit, TaskSummary, commit_on_done};
pub use deps::{DependencyFile, dependency_file};
pub use diff::{BranchDiff, DiffFile, branch_diff};
pub use error::{GitError, Result};
pub use git::{CommitId, Git, Identity, check_branch_name};
pub use lock::{DEFAULT_LOCK_TIMEOUT, PathLock};
pub use merge::{
    CONFLICT_BYTES, CONFLICT_LINES, ConflictReport, FastForward, LandOutcome, LandRequest,
    LandStage, MergeEngine, SCRATCH_NAME, Strategy,
};
pub use overlap::{Overlap, overlaps, overlaps_with_work};
pub use remote::{Brought, SharedRemote};
pub use repo::{DEFAULT_INTEGRATION_BRANCH, Repo, WorktreeEntry};
pub use shell::{ShellCommand, ShellOutcome, TAIL_BYTES, TAIL_LINES, bounded_tail, run_shell};
pub use snapshot::{ChangeKind, FileChange, FileStamp, SnapshotEntry, TreeSnapshot};
pub use worktree::{
    AgentWorktrees, RepairReport, TaskCheckout, Worktree, check_agent_name, task_branch,
};
