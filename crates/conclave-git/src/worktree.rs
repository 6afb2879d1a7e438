//! One git worktree per agent under `.conclave/worktrees/<agent>`: created and removed under a
//! per-path lock, reused across tasks (switched to each task's branch), removed with the agent,
//! and repaired at start-up after a crash.
//!
//! The folder `.conclave/` is ignored by git (its `.gitignore` holds `*`), so the main worktree
//! never sees the agents' worktrees as untracked files; [`AgentWorktrees::new`] checks that and
//! writes a `.gitignore` into the worktrees folder if nothing ignores it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{GitError, Result};
use crate::git::{CommitId, Git, check_branch_name};
use crate::lock::{DEFAULT_LOCK_TIMEOUT, PathLock};
use crate::repo::{Repo, WorktreeEntry, real_path};
use crate::shell::{ShellCommand, ShellOutcome, run_shell};

/// The branch of a task: `conclave/<task-id>`, for example `conclave/T-12`.
pub fn task_branch(task_id: &str) -> Result<String> {
    let branch = format!("conclave/{task_id}");
    check_branch_name(&branch)?;
    Ok(branch)
}

/// Agent names become folder names: letters, digits, `-`, `_` and `.`, not starting with a dot
/// (names starting with a dot are this crate's own, such as the merge engine's `.merge`).
pub fn check_agent_name(agent: &str) -> Result<()> {
    let valid = !agent.is_empty()
        && agent.len() <= 100
        && !agent.starts_with('.')
        && agent
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(GitError::InvalidName {
            name: agent.to_string(),
            reason: "an agent's worktree name takes letters, digits, '-', '_' and '.', and does not start with '.'".into(),
        })
    }
}

/// The agents' worktrees of one repository.
#[derive(Debug, Clone)]
pub struct AgentWorktrees {
    repo: Repo,
    root: PathBuf,
    setup: Option<ShellCommand>,
    lock_timeout: Duration,
}

/// A worktree ready for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    pub path: PathBuf,
    /// True when this call created it (and ran the setup command in it).
    pub created: bool,
    /// The setup command's outcome when it ran.
    pub setup: Option<ShellOutcome>,
}

/// An agent's worktree switched to a task's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCheckout {
    pub path: PathBuf,
    pub branch: String,
    /// The branch's tip after the switch.
    pub head: CommitId,
    /// True when the branch existed already (a task sent back to its agent, or resumed).
    pub resumed: bool,
    pub created_worktree: bool,
}

/// What [`AgentWorktrees::repair`] cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Registered worktrees under the root that were broken (folder gone or half-created).
    pub stale_entries: Vec<PathBuf>,
    /// Folders under the root that were not a working worktree, removed.
    pub removed_folders: Vec<PathBuf>,
}

impl AgentWorktrees {
    /// Worktrees under `<main worktree>/.conclave/worktrees`.
    pub fn new(repo: Repo) -> Result<AgentWorktrees> {
        let root = repo.root().join(".conclave").join("worktrees");
        AgentWorktrees::with_root(repo, root)
    }

    /// Worktrees under another folder. If it lies inside the main worktree and git does not
    /// ignore it, a `.gitignore` holding `*` is written into it.
    pub fn with_root(repo: Repo, root: PathBuf) -> Result<AgentWorktrees> {
        fs::create_dir_all(&root)
            .map_err(|source| GitError::io(format!("creating {}", root.display()), source))?;
        let root = real_path(&root);
        let main = real_path(repo.root());
        if let Ok(relative) = root.strip_prefix(&main) {
            let probe = relative.join("probe");
            let probe = probe.to_string_lossy();
            let ignored = repo
                .git()
                .test(&["check-ignore", "-q", "--no-index", &probe])?;
            if !ignored {
                let ignore = root.join(".gitignore");
                fs::write(&ignore, "*\n").map_err(|source| {
                    GitError::io(format!("writing {}", ignore.display()), source)
                })?;
            }
        }
        Ok(AgentWorktrees {
            repo,
            root,
            setup: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// The `[merge] setup` command, run in each new worktree.
    pub fn with_setup(mut self, setup: Option<ShellCommand>) -> Self {
        self.setup = setup;
        self
    }

    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Frees a task's branch from the worktree at `path` of its previous holder: what that
    /// agent left uncommitted is committed on the branch (it is the task's work, under the
    /// agent's own name), and the worktree is detached so that another worktree can check the
    /// branch out. The server does this on its host, a remote host's relay on its own.
    pub fn hand_over(
        &self,
        path: &Path,
        previous: &str,
        task: &str,
        integration: &str,
    ) -> Result<()> {
        let summary = crate::commit::TaskSummary {
            id: task.to_string(),
            title: format!("work {previous} left uncommitted"),
            summary: String::new(),
        };
        let previous_git = self
            .repo()
            .git()
            .clone()
            .with_identity(crate::git::Identity::agent(previous));
        crate::commit::commit_on_done(&previous_git, path, &summary, integration)?;
        self.repo()
            .git_at(path)
            .run(&["switch", "--quiet", "--detach"])?;
        Ok(())
    }

    /// Where `agent`'s worktree lives (whether or not it exists).
    pub fn path_of(&self, agent: &str) -> Result<PathBuf> {
        check_agent_name(agent)?;
        Ok(self.root.join(agent))
    }

    fn lock(&self, name: &str) -> Result<PathLock> {
        PathLock::acquire(&self.root.join(format!("{name}.lock")), self.lock_timeout)
    }

    /// The agents that have a registered worktree (to remove those no longer in the team).
    pub fn agents(&self) -> Result<Vec<String>> {
        let mut agents: Vec<String> = self
            .entries_under_root()?
            .into_iter()
            .filter_map(|entry| entry.path.file_name()?.to_str().map(str::to_string))
            .filter(|name| check_agent_name(name).is_ok())
            .collect();
        agents.sort();
        Ok(agents)
    }

    /// Maps a path inside an agent's worktree to that agent and the project-relative path, so
    /// leases and `file.touched` name the same file whichever tree it was written in. `None` for
    /// a path outside every agent's worktree.
    pub fn locate(&self, path: &Path) -> Option<(String, PathBuf)> {
        let relative = match path.strip_prefix(&self.root) {
            Ok(relative) => relative.to_path_buf(),
            Err(_) => real_path(path).strip_prefix(&self.root).ok()?.to_path_buf(),
        };
        let mut components = relative.components();
        let agent = components.next()?.as_os_str().to_str()?.to_string();
        check_agent_name(&agent).ok()?;
        Some((agent, components.as_path().to_path_buf()))
    }

    /// `agent`'s worktree, created (detached at `start`) when missing or broken.
    pub fn ensure(&self, agent: &str, start: &CommitId) -> Result<Worktree> {
        let path = self.path_of(agent)?;
        let _lock = self.lock(agent)?;
        self.ensure_locked(&path, start)
    }

    /// Switches `agent`'s worktree (created if needed) to the task's branch: the existing branch
    /// if there is one (a task sent back keeps its work), else a new one from the current tip of
    /// `integration`. Refuses with [`GitError::Dirty`] when the worktree holds uncommitted work
    /// (commit it with [`crate::commit_on_done`] or drop it with [`Self::discard_changes`]).
    pub fn start_task(
        &self,
        agent: &str,
        task_id: &str,
        integration: &str,
    ) -> Result<TaskCheckout> {
        let branch = task_branch(task_id)?;
        let path = self.path_of(agent)?;
        let _lock = self.lock(agent)?;
        let integration_tip = self
            .repo
            .branch_tip(integration)?
            .ok_or_else(|| GitError::NoSuchBranch(integration.to_string()))?;
        let worktree = self.ensure_locked(&path, &integration_tip)?;
        let git = self.repo.git_at(&path);
        let dirty = git.dirty_files()?;
        if !dirty.is_empty() {
            return Err(GitError::Dirty { path, files: dirty });
        }
        let resumed = self.repo.branch_tip(&branch)?.is_some();
        if resumed {
            if let Some(holder) = self.repo.checkout_of(&branch)?
                && real_path(&holder.path) != real_path(&path)
            {
                return Err(GitError::CheckedOutElsewhere {
                    branch,
                    path: holder.path,
                });
            }
            git.run(&["switch", "--quiet", &branch])?;
        } else {
            git.run(&[
                "switch",
                "--quiet",
                "--no-track",
                "-c",
                &branch,
                integration_tip.as_str(),
            ])?;
        }
        Ok(TaskCheckout {
            head: git.head()?,
            path,
            branch,
            resumed,
            created_worktree: worktree.created,
        })
    }

    /// Throws away uncommitted changes and untracked files in `agent`'s worktree (ignored files,
    /// such as build output, stay).
    pub fn discard_changes(&self, agent: &str) -> Result<()> {
        let path = self.path_of(agent)?;
        let _lock = self.lock(agent)?;
        let git = self.repo.git_at(&path);
        git.run(&["reset", "--quiet", "--hard"])?;
        git.run(&["clean", "--quiet", "-fd"])?;
        Ok(())
    }

    /// Removes `agent`'s worktree (the agent was removed). Its task branches stay. Removing a
    /// worktree that does not exist is not an error.
    pub fn remove(&self, agent: &str) -> Result<()> {
        let path = self.path_of(agent)?;
        let _lock = self.lock(agent)?;
        self.remove_locked(&path)
    }

    /// Start-up after a crash: prunes worktree entries whose folder is gone, removes entries and
    /// folders under the root left half-created, so that no leftover blocks a start. Folders
    /// whose lock another live process holds are left alone.
    pub fn repair(&self) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        self.repo.git().run(&["worktree", "prune"])?;
        let entries = self.entries_under_root()?;
        for entry in &entries {
            let Some(name) = entry.path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Ok(_lock) = PathLock::acquire(
                &self.root.join(format!("{name}.lock")),
                Duration::from_millis(200),
            ) else {
                continue;
            };
            if !self.is_working_worktree(&entry.path, Some(entry))? {
                self.remove_locked(&entry.path)?;
                report.stale_entries.push(entry.path.clone());
            }
        }
        let folders = fs::read_dir(&self.root)
            .map_err(|source| GitError::io(format!("reading {}", self.root.display()), source))?;
        for folder in folders {
            let folder = folder.map_err(|source| {
                GitError::io(format!("reading {}", self.root.display()), source)
            })?;
            let path = folder.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            let Ok(_lock) = PathLock::acquire(
                &self.root.join(format!("{name}.lock")),
                Duration::from_millis(200),
            ) else {
                continue;
            };
            if !self.is_working_worktree(&path, None)? {
                self.remove_locked(&path)?;
                report.removed_folders.push(path);
            }
        }
        Ok(report)
    }

    /// The registered worktrees whose folder is directly under the root.
    fn entries_under_root(&self) -> Result<Vec<WorktreeEntry>> {
        Ok(self
            .repo
            .worktrees()?
            .into_iter()
            .filter(|entry| real_path(&entry.path).parent() == Some(self.root.as_path()))
            .collect())
    }

    fn entry_for(&self, path: &Path) -> Result<Option<WorktreeEntry>> {
        let wanted = real_path(path);
        Ok(self
            .repo
            .worktrees()?
            .into_iter()
            .find(|entry| real_path(&entry.path) == wanted))
    }

    /// A worktree we can use: registered, not left "initializing" by a killed `git worktree add`,
    /// its folder present, and git inside it agrees that it is its own top level.
    fn is_working_worktree(&self, path: &Path, entry: Option<&WorktreeEntry>) -> Result<bool> {
        let entry = match entry {
            Some(entry) => Some(entry.clone()),
            None => self.entry_for(path)?,
        };
        let Some(entry) = entry else {
            return Ok(false);
        };
        if entry.prunable || entry.locked.as_deref() == Some("initializing") || !path.is_dir() {
            return Ok(false);
        }
        let output = Git::new(path).output(&["rev-parse", "--show-toplevel"])?;
        Ok(output.status.success()
            && real_path(Path::new(String::from_utf8_lossy(&output.stdout).trim()))
                == real_path(path))
    }

    /// Creates the worktree at `path` unless a working one is there; the caller holds its lock.
    pub(crate) fn ensure_locked(&self, path: &Path, start: &CommitId) -> Result<Worktree> {
        if self.is_working_worktree(path, None)? {
            return Ok(Worktree {
                path: path.to_path_buf(),
                created: false,
                setup: None,
            });
        }
        // Whatever is there (a folder left by a crash, a stale entry) must not block the start.
        self.remove_locked(path)?;
        let path_text = path.to_string_lossy();
        if let Err(error) = self.repo.git().run(&[
            "worktree",
            "add",
            "--quiet",
            "--detach",
            &path_text,
            start.as_str(),
        ]) {
            let _ = self.remove_locked(path);
            return Err(error);
        }
        let setup = match &self.setup {
            Some(command) => {
                let outcome = run_shell(command, path)?;
                if !outcome.succeeded() {
                    let _ = self.remove_locked(path);
                    return Err(GitError::SetupFailed {
                        path: path.to_path_buf(),
                        detail: format!(
                            "`{}`: {}\n{}",
                            command.command,
                            outcome.describe(),
                            outcome.output_tail
                        ),
                    });
                }
                Some(outcome)
            }
            None => None,
        };
        Ok(Worktree {
            path: path.to_path_buf(),
            created: true,
            setup,
        })
    }

    /// Removes the worktree at `path`, its entry and its folder, whatever state they are in; the
    /// caller holds its lock.
    pub(crate) fn remove_locked(&self, path: &Path) -> Result<()> {
        let git = self.repo.git();
        if let Some(entry) = self.entry_for(path)? {
            let entry_path = entry.path.to_string_lossy().into_owned();
            if entry.locked.is_some() {
                let _ = git.output(&["worktree", "unlock", &entry_path]);
            }
            // Twice forced: also when it has changes or is locked. A failure (a folder already
            // gone) is fine: the folder removal and `prune` below finish the job.
            let _ = git.output(&["worktree", "remove", "--force", "--force", &entry_path]);
        }
        if path.exists() {
            fs::remove_dir_all(path)
                .map_err(|source| GitError::io(format!("removing {}", path.display()), source))?;
        }
        git.run(&["worktree", "prune"])?;
        Ok(())
    }
}
