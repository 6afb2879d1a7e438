//! Commit-on-done: what an agent left uncommitted in its worktree becomes one commit on the
//! task's branch, so the branch holds the whole change (the agent's own commits stay as they are).

use std::path::Path;

use crate::error::Result;
use crate::git::{CommitId, Git};

/// What the commit message is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    /// The task's id as shown, `T-12`.
    pub id: String,
    pub title: String,
    /// The agent's summary given with `done` (may be empty).
    pub summary: String,
}

impl TaskSummary {
    /// `T-12: title`, a blank line, the summary, and a `Conclave-Task:` trailer.
    pub fn commit_message(&self) -> String {
        let title = self.title.lines().next().unwrap_or("").trim();
        let mut message = format!("{}: {}\n", self.id, title);
        let summary = self.summary.trim();
        if !summary.is_empty() {
            message.push('\n');
            message.push_str(summary);
            message.push('\n');
        }
        message.push_str(&format!("\nConclave-Task: {}\n", self.id));
        message
    }
}

/// What [`commit_on_done`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneCommit {
    /// The commit made from uncommitted work, if there was any.
    pub committed: Option<CommitId>,
    /// The branch's tip afterwards.
    pub head: CommitId,
    /// Files the branch changes since it forked from the integration branch; empty means "no
    /// change on the branch" (a `done` that is allowed and says so).
    pub changed_files: Vec<String>,
}

impl DoneCommit {
    pub fn has_changes(&self) -> bool {
        !self.changed_files.is_empty()
    }
}

/// Commits everything uncommitted in `worktree` (new, changed and deleted files; not ignored
/// ones) with the task's message, and reports what the branch changes compared with
/// `integration`. Uses the identity of `git`'s runner, if it has one, for the commit.
pub fn commit_on_done(
    git: &Git,
    worktree: &Path,
    task: &TaskSummary,
    integration: &str,
) -> Result<DoneCommit> {
    let git = git.at(worktree);
    git.run(&["add", "--all"])?;
    let staged = !git.test(&["diff", "--cached", "--quiet"])?;
    let committed = if staged {
        // --no-verify: the agent's work is recorded as it is; the merge queue's check is the gate.
        git.run(&[
            "commit",
            "--quiet",
            "--no-verify",
            "--no-gpg-sign",
            "-m",
            &task.commit_message(),
        ])?;
        Some(git.head()?)
    } else {
        None
    };
    let head = git.head()?;
    let integration_tip = git
        .branch_tip(integration)?
        .ok_or_else(|| crate::GitError::NoSuchBranch(integration.to_string()))?;
    // Since the fork point, not against the tip: the integration branch may have moved on with
    // other tasks' work, which is no change of this branch.
    let changed_files = match git.merge_base(&integration_tip, &head)? {
        Some(base) => git.changed_files(&base, &head)?,
        None => git.changed_files(&integration_tip, &head)?,
    };
    Ok(DoneCommit {
        committed,
        head,
        changed_files,
    })
}
