//! The merge engine: lands one task branch on the integration branch at a time.
//!
//! A landing merges (or rebases) the branch in a scratch worktree (`.conclave/worktrees/.merge`,
//! detached, never the user's worktree), runs the check command there, and only then moves the
//! integration branch with a compare-and-swap (`git update-ref refs/heads/<into> <new> <old>`).
//! Until that one atomic ref update nothing outside the scratch worktree has changed, so a crash
//! at any point leaves the branch at the old tip or at the new one, and a retry is safe: a branch
//! whose tip the integration branch already contains is reported as already landed, never merged
//! twice. A lock file serializes landings across processes.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{GitError, Result};
use crate::git::{CommitId, Git};
use crate::lock::{DEFAULT_LOCK_TIMEOUT, PathLock};
use crate::repo::real_path;
use crate::shell::{ShellCommand, ShellOutcome, run_shell};
use crate::worktree::AgentWorktrees;

/// The scratch worktree's folder name under the worktrees root (agent names cannot start with
/// a dot, so no agent can own it).
pub const SCRATCH_NAME: &str = ".merge";
/// Conflict hunks kept for the agent: this many lines, at most [`CONFLICT_BYTES`] bytes.
pub const CONFLICT_LINES: usize = 200;
pub const CONFLICT_BYTES: usize = 16 * 1024;

/// How a task branch joins the integration branch (`[merge] strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// A merge commit (`--no-ff`) naming the task: the default.
    #[default]
    Merge,
    /// The branch's commits replayed on the integration tip: a linear history.
    Rebase,
}

/// One entry to land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandRequest {
    /// The task branch, `conclave/T-12`.
    pub branch: String,
    /// The integration branch, `conclave/integration`.
    pub into: String,
    pub strategy: Strategy,
    /// The `[merge] check` command; `None` lands without a check.
    pub check: Option<ShellCommand>,
    /// The merge commit's message (for example from [`crate::TaskSummary::commit_message`]).
    pub message: String,
}

/// The conflicting files and hunks of a merge that did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictReport {
    pub files: Vec<String>,
    /// `git diff` of the conflicted state (with conflict markers), bounded to
    /// [`CONFLICT_LINES`] lines and [`CONFLICT_BYTES`] bytes.
    pub hunks: String,
    pub truncated: bool,
}

/// How a landing ended. Everything but `Landed` and `AlreadyLanded` leaves the integration
/// branch where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandOutcome {
    /// The integration branch moved from `previous` to `tip`.
    Landed {
        tip: CommitId,
        previous: CommitId,
        check: Option<ShellOutcome>,
    },
    /// The integration branch already contains the branch (a retry after a crash, or a branch
    /// that an earlier landing brought in).
    AlreadyLanded {
        tip: CommitId,
    },
    Conflict(ConflictReport),
    /// The check failed: exit code (or time limit) and the last lines of its output.
    CheckFailed(ShellOutcome),
    /// Someone else moved the integration branch between our read and our compare-and-swap.
    /// Nothing changed; retry.
    IntegrationMoved {
        expected: CommitId,
        found: Option<CommitId>,
    },
    /// The integration branch is checked out in a worktree that has uncommitted changes or is
    /// not at its tip: moving it would change files under someone's feet.
    Refused {
        reason: String,
    },
}

/// The points where [`MergeEngine::land_with`] calls its failpoint, for crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandStage {
    /// The merge commit exists in the scratch worktree; the check has not run.
    Merged,
    /// The check passed; the integration branch has not moved.
    BeforeRefUpdate,
}

/// How [`MergeEngine::fast_forward`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastForward {
    Moved { from: CommitId, to: CommitId },
    AlreadyUpToDate,
    Refused { reason: String },
}

/// Lands task branches; see the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MergeEngine {
    worktrees: AgentWorktrees,
    lock_timeout: Duration,
}

impl MergeEngine {
    /// Its scratch worktree lives among `worktrees` (and gets their setup command).
    pub fn new(worktrees: AgentWorktrees) -> Self {
        MergeEngine {
            worktrees,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// How long a landing waits for another one (in this or another process) to finish; a
    /// landing holds the lock through its check, so set this above the check's time limit when
    /// two processes may land at once.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn scratch_path(&self) -> PathBuf {
        self.worktrees.root().join(SCRATCH_NAME)
    }

    /// Lands `request`'s branch (see the module docs).
    pub fn land(&self, request: &LandRequest) -> Result<LandOutcome> {
        self.land_with(request, &mut |_| Ok(()))
    }

    /// [`Self::land`], calling `failpoint` at each [`LandStage`]; an error from it stops the
    /// landing there, as a crash would.
    pub fn land_with(
        &self,
        request: &LandRequest,
        failpoint: &mut dyn FnMut(LandStage) -> Result<()>,
    ) -> Result<LandOutcome> {
        let repo = self.worktrees.repo();
        let _lock = PathLock::acquire(
            &self.worktrees.root().join(format!("{SCRATCH_NAME}.lock")),
            self.lock_timeout,
        )?;
        let old = repo
            .branch_tip(&request.into)?
            .ok_or_else(|| GitError::NoSuchBranch(request.into.clone()))?;
        let branch_tip = repo
            .branch_tip(&request.branch)?
            .ok_or_else(|| GitError::NoSuchBranch(request.branch.clone()))?;
        if repo.git().is_ancestor(&branch_tip, &old)? {
            return Ok(LandOutcome::AlreadyLanded { tip: old });
        }
        if let Some(reason) = self.checkout_blocks_move(&request.into, &old)? {
            return Ok(LandOutcome::Refused { reason });
        }

        let scratch = self.scratch_path();
        self.worktrees.ensure_locked(&scratch, &old)?;
        let git = repo.git_at(&scratch);
        reset_scratch(&git, &old)?;

        let merged = match request.strategy {
            Strategy::Merge => {
                let output = git.output(&[
                    "merge",
                    "--quiet",
                    "--no-ff",
                    "--no-edit",
                    "--no-verify",
                    "--no-gpg-sign",
                    "-m",
                    &request.message,
                    branch_tip.as_str(),
                ])?;
                if !output.status.success() {
                    let report = conflict_report(&git)?;
                    let _ = git.output(&["merge", "--abort"]);
                    return match report {
                        Some(report) => Ok(LandOutcome::Conflict(report)),
                        None => Err(crate::git::command_error(&["merge", "--no-ff"], &output)),
                    };
                }
                git.head()?
            }
            Strategy::Rebase => {
                git.run(&[
                    "checkout",
                    "--quiet",
                    "--detach",
                    "--force",
                    branch_tip.as_str(),
                ])?;
                let output = git.output(&[
                    "rebase",
                    "--quiet",
                    "--no-verify",
                    "--no-gpg-sign",
                    old.as_str(),
                ])?;
                if !output.status.success() {
                    let report = conflict_report(&git)?;
                    let _ = git.output(&["rebase", "--abort"]);
                    return match report {
                        Some(report) => Ok(LandOutcome::Conflict(report)),
                        None => Err(crate::git::command_error(&["rebase"], &output)),
                    };
                }
                let rebased = git.head()?;
                // Every commit was already upstream (git drops cherry-picks it recognizes): a
                // rebased branch landed before, whose original tip is not an ancestor.
                if git.is_ancestor(&rebased, &old)? {
                    return Ok(LandOutcome::AlreadyLanded { tip: old });
                }
                rebased
            }
        };
        failpoint(LandStage::Merged)?;

        let check = match &request.check {
            Some(command) => {
                let outcome = run_shell(command, &scratch)?;
                if !outcome.succeeded() {
                    return Ok(LandOutcome::CheckFailed(outcome));
                }
                Some(outcome)
            }
            None => None,
        };
        failpoint(LandStage::BeforeRefUpdate)?;

        match self.advance(
            &request.into,
            &old,
            &merged,
            &format!("conclave: land {}", request.branch),
        )? {
            FastForward::Moved { .. } | FastForward::AlreadyUpToDate => Ok(LandOutcome::Landed {
                tip: merged,
                previous: old,
                check,
            }),
            FastForward::Refused { reason } => {
                let found = repo.branch_tip(&request.into)?;
                if found.as_ref() != Some(&old) {
                    Ok(LandOutcome::IntegrationMoved {
                        expected: old,
                        found,
                    })
                } else {
                    Ok(LandOutcome::Refused { reason })
                }
            }
        }
    }

    /// Fast-forwards `target` (the user's own branch, say `main`) to the tip of `source` (the
    /// integration branch). Refused, with the reason, when `target` has commits `source` lacks
    /// (it moved) or is checked out in a worktree with uncommitted changes.
    pub fn fast_forward(&self, target: &str, source: &str) -> Result<FastForward> {
        let repo = self.worktrees.repo();
        let to = repo
            .branch_tip(source)?
            .ok_or_else(|| GitError::NoSuchBranch(source.to_string()))?;
        let from = repo
            .branch_tip(target)?
            .ok_or_else(|| GitError::NoSuchBranch(target.to_string()))?;
        if from == to || repo.git().is_ancestor(&to, &from)? {
            return Ok(FastForward::AlreadyUpToDate);
        }
        if !repo.git().is_ancestor(&from, &to)? {
            return Ok(FastForward::Refused {
                reason: format!(
                    "{target} has moved: its tip {} has commits that {source} does not contain, so it cannot be fast-forwarded (merge {source} into it by hand)",
                    from.short()
                ),
            });
        }
        self.advance(
            target,
            &from,
            &to,
            &format!("conclave: fast-forward to {source}"),
        )
    }

    /// Why moving `branch` from `old` would disturb a worktree, if it would.
    fn checkout_blocks_move(&self, branch: &str, old: &CommitId) -> Result<Option<String>> {
        let repo = self.worktrees.repo();
        let Some(holder) = repo.checkout_of(branch)? else {
            return Ok(None);
        };
        let git = repo.git_at(&holder.path);
        let dirty = git.dirty_files()?;
        if !dirty.is_empty() {
            return Ok(Some(format!(
                "{branch} is checked out in {} with uncommitted changes ({}): commit or stash them first",
                holder.path.display(),
                preview(&dirty)
            )));
        }
        if holder.head.as_ref() != Some(old) {
            return Ok(Some(format!(
                "{branch} is checked out in {} at another commit than its tip",
                holder.path.display()
            )));
        }
        Ok(None)
    }

    /// Moves `branch` from `old` to `new` (a descendant): a compare-and-swap of the ref when no
    /// worktree has it checked out, else a fast-forward inside that (clean) worktree so its files
    /// follow.
    fn advance(
        &self,
        branch: &str,
        old: &CommitId,
        new: &CommitId,
        reason: &str,
    ) -> Result<FastForward> {
        let repo = self.worktrees.repo();
        if let Some(reason) = self.checkout_blocks_move(branch, old)? {
            return Ok(FastForward::Refused { reason });
        }
        match repo.checkout_of(branch)? {
            Some(holder) if real_path(&holder.path) != real_path(&self.scratch_path()) => {
                let git = repo.git_at(&holder.path);
                let output = git.output(&["merge", "--quiet", "--ff-only", new.as_str()])?;
                if !output.status.success() {
                    return Ok(FastForward::Refused {
                        reason: format!(
                            "fast-forward of {branch} in {} failed: {}",
                            holder.path.display(),
                            String::from_utf8_lossy(&output.stderr).trim()
                        ),
                    });
                }
            }
            _ => {
                let output = repo.git().output(&[
                    "update-ref",
                    "-m",
                    reason,
                    &format!("refs/heads/{branch}"),
                    new.as_str(),
                    old.as_str(),
                ])?;
                if !output.status.success() {
                    return Ok(FastForward::Refused {
                        reason: format!(
                            "{branch} is no longer at {}: {}",
                            old.short(),
                            String::from_utf8_lossy(&output.stderr).trim()
                        ),
                    });
                }
            }
        }
        Ok(FastForward::Moved {
            from: old.clone(),
            to: new.clone(),
        })
    }
}

/// Puts the scratch worktree back to a clean, detached `tip`, whatever a crashed landing left
/// (a merge or rebase in progress, changed files). Ignored files (build output) stay, so the
/// check does not rebuild everything each time.
fn reset_scratch(git: &Git, tip: &CommitId) -> Result<()> {
    let _ = git.output(&["merge", "--abort"]);
    let _ = git.output(&["rebase", "--abort"]);
    git.run(&["checkout", "--quiet", "--detach", "--force", tip.as_str()])?;
    git.run(&["reset", "--quiet", "--hard", tip.as_str()])?;
    git.run(&["clean", "--quiet", "-ffd"])?;
    Ok(())
}

/// The conflict in the scratch worktree, or `None` when nothing is unmerged (the failure was
/// something else).
fn conflict_report(git: &Git) -> Result<Option<ConflictReport>> {
    let text = git.run(&["diff", "--name-only", "--diff-filter=U", "-z"])?;
    let files: Vec<String> = text
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    let diff = git.run(&["diff", "--no-color", "--no-ext-diff"])?;
    let (hunks, truncated) = bounded_head(&diff, CONFLICT_LINES, CONFLICT_BYTES);
    Ok(Some(ConflictReport {
        files,
        hunks,
        truncated,
    }))
}

/// The first `max_lines` lines of `text`, at most `max_bytes` bytes; and whether it was cut.
fn bounded_head(text: &str, max_lines: usize, max_bytes: usize) -> (String, bool) {
    let mut head = String::new();
    for (index, line) in text.lines().enumerate() {
        if index >= max_lines || head.len() + line.len() + 1 > max_bytes {
            head.push_str("[…]\n");
            return (head, true);
        }
        head.push_str(line);
        head.push('\n');
    }
    (head, false)
}

fn preview(files: &[String]) -> String {
    let mut shown: Vec<&str> = files.iter().take(5).map(String::as_str).collect();
    if files.len() > 5 {
        shown.push("…");
    }
    shown.join(", ")
}
