//! The repository as a whole: its main worktree, the integration branch, the list of worktrees.

use std::path::{Path, PathBuf};

use crate::error::{GitError, Result};
use crate::git::{CommitId, Git, Identity, check_branch_name};

/// The default integration branch (`[merge] into`).
pub const DEFAULT_INTEGRATION_BRANCH: &str = "conclave/integration";

/// A git repository seen from its main worktree. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Repo {
    git: Git,
}

/// One entry of `git worktree list --porcelain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorktreeEntry {
    pub path: PathBuf,
    pub head: Option<CommitId>,
    /// The branch checked out (short name), `None` when detached.
    pub branch: Option<String>,
    /// The reason given by `git worktree lock`, or by a `git worktree add` still running or
    /// killed ("initializing").
    pub locked: Option<String>,
    /// Set when git itself says the entry can be pruned (its folder is gone).
    pub prunable: bool,
}

impl Repo {
    /// Opens the repository containing `dir` (any of its worktrees) and works from its main
    /// worktree.
    pub fn open(dir: &Path, identity: Identity) -> Result<Repo> {
        let git = Git::new(dir).with_identity(identity);
        let inside = git
            .output(&["rev-parse", "--is-inside-work-tree"])
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true")?;
        if !inside {
            return Err(GitError::NotARepository(dir.to_path_buf()));
        }
        let probe = Repo { git };
        let main = probe
            .worktrees()?
            .into_iter()
            .next()
            .map(|entry| entry.path)
            .ok_or_else(|| GitError::NotARepository(dir.to_path_buf()))?;
        Ok(Repo {
            git: probe.git.at(main),
        })
    }

    /// The main worktree's top folder.
    pub fn root(&self) -> &Path {
        self.git.dir()
    }

    /// A runner in the main worktree.
    pub fn git(&self) -> &Git {
        &self.git
    }

    /// A runner in another worktree of this repository.
    pub fn git_at(&self, dir: &Path) -> Git {
        self.git.at(dir)
    }

    pub fn branch_tip(&self, branch: &str) -> Result<Option<CommitId>> {
        self.git.branch_tip(branch)
    }

    /// The tip of the integration branch, creating it from `start` (default: the main worktree's
    /// HEAD, the commit `conclave up` started on) when it does not exist yet.
    pub fn ensure_integration_branch(&self, branch: &str, start: Option<&str>) -> Result<CommitId> {
        check_branch_name(branch)?;
        if let Some(tip) = self.branch_tip(branch)? {
            return Ok(tip);
        }
        let start = match start {
            Some(revision) => self
                .git
                .resolve(revision)?
                .ok_or_else(|| GitError::NoSuchBranch(revision.to_string()))?,
            None => self.git.head()?,
        };
        // `update-ref` with an all-zero old value creates the branch only if it is still absent,
        // so two processes racing here agree on one start.
        let created = self.git.output(&[
            "update-ref",
            "-m",
            "conclave: create the integration branch",
            &format!("refs/heads/{branch}"),
            start.as_str(),
            &"0".repeat(start.as_str().len()),
        ])?;
        if !created.status.success() {
            tracing::debug!(branch, "integration branch created concurrently");
        }
        self.branch_tip(branch)?
            .ok_or_else(|| GitError::NoSuchBranch(branch.to_string()))
    }

    /// `git worktree list --porcelain`, the main worktree first.
    pub fn worktrees(&self) -> Result<Vec<WorktreeEntry>> {
        let text = self.git.run(&["worktree", "list", "--porcelain", "-z"])?;
        let mut entries = Vec::new();
        let mut current: Option<WorktreeEntry> = None;
        for field in text.split('\0') {
            if field.is_empty() {
                if let Some(entry) = current.take() {
                    entries.push(entry);
                }
                continue;
            }
            let (key, value) = field.split_once(' ').unwrap_or((field, ""));
            if key == "worktree" {
                if let Some(entry) = current.take() {
                    entries.push(entry);
                }
                current = Some(WorktreeEntry {
                    path: PathBuf::from(value),
                    head: None,
                    branch: None,
                    locked: None,
                    prunable: false,
                });
                continue;
            }
            let Some(entry) = current.as_mut() else {
                continue;
            };
            match key {
                "HEAD" => entry.head = Some(CommitId(value.to_string())),
                "branch" => {
                    entry.branch = Some(value.strip_prefix("refs/heads/").unwrap_or(value).into())
                }
                "locked" => entry.locked = Some(value.to_string()),
                "prunable" => entry.prunable = true,
                _ => {}
            }
        }
        if let Some(entry) = current.take() {
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The worktree that has `branch` checked out, if any.
    pub fn checkout_of(&self, branch: &str) -> Result<Option<WorktreeEntry>> {
        Ok(self
            .worktrees()?
            .into_iter()
            .find(|entry| entry.branch.as_deref() == Some(branch)))
    }
}

/// `path` with symbolic links resolved when it exists (git records real paths), else as given.
pub(crate) fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
