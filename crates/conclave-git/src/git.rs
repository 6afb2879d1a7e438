//! Running the `git` CLI: one place that builds the command line, cleans the environment and
//! turns a failure into [`GitError::Command`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{GitError, Result};

/// Variables a parent git process (a hook, `git rebase --exec`) may have set that would point our
/// commands at another repository or index than the directory we name with `-C`.
const INHERITED_GIT_VARIABLES: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
    "GIT_NAMESPACE",
];

/// A full commit id (hex), as git printed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(pub String);

impl CommitId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl std::fmt::Display for CommitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name and e-mail address on the commits this crate makes (merge commits, commit-on-done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Identity {
    /// The identity an agent's own commits carry (commit-on-done, a hand-over), the same on
    /// every host, so a branch's history names who did the work.
    pub fn agent(name: &str) -> Identity {
        Identity {
            name: name.to_string(),
            email: format!("{name}@conclave.invalid"),
        }
    }
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            name: "Conclave".to_string(),
            email: "conclave@localhost".to_string(),
        }
    }
}

/// `git -C <dir>` with a clean environment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Git {
    dir: PathBuf,
    identity: Option<Identity>,
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Git {
            dir: dir.into(),
            identity: None,
        }
    }

    /// Commits made through this runner carry `identity` as author and committer.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The same settings in another directory (another worktree of the repository).
    pub fn at(&self, dir: impl Into<PathBuf>) -> Git {
        Git {
            dir: dir.into(),
            identity: self.identity.clone(),
        }
    }

    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("git");
        command.arg("-C").arg(&self.dir).args(args);
        for variable in INHERITED_GIT_VARIABLES {
            command.env_remove(variable);
        }
        // Messages we parse (conflicts) are English; nothing may wait for a password or an editor.
        command
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_EDITOR", "true")
            .env("GIT_SEQUENCE_EDITOR", "true")
            .stdin(Stdio::null());
        if let Some(identity) = &self.identity {
            command
                .env("GIT_AUTHOR_NAME", &identity.name)
                .env("GIT_AUTHOR_EMAIL", &identity.email)
                .env("GIT_COMMITTER_NAME", &identity.name)
                .env("GIT_COMMITTER_EMAIL", &identity.email);
        }
        command
    }

    /// Runs git and returns its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .map_err(|source| GitError::io(format!("running git {}", args.join(" ")), source))
    }

    /// Runs git, requires success, and returns stdout as text (lossy UTF-8).
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let output = self.output(args)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(command_error(args, &output))
        }
    }

    /// Runs git and returns whether it exited 0 (for `--is-ancestor`, `--quiet` tests); any
    /// other exit than 0 or 1 is an error.
    pub fn test(&self, args: &[&str]) -> Result<bool> {
        let output = self.output(args)?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(command_error(args, &output)),
        }
    }

    /// The commit a revision names, or `None` when it names nothing.
    pub fn resolve(&self, revision: &str) -> Result<Option<CommitId>> {
        let spec = format!("{revision}^{{commit}}");
        let output = self.output(&["rev-parse", "--verify", "--quiet", &spec])?;
        if output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
            Ok(Some(CommitId(text)))
        } else {
            Ok(None)
        }
    }

    /// The tip of a local branch.
    pub fn branch_tip(&self, branch: &str) -> Result<Option<CommitId>> {
        self.resolve(&format!("refs/heads/{branch}"))
    }

    pub fn is_ancestor(&self, ancestor: &CommitId, descendant: &CommitId) -> Result<bool> {
        self.test(&[
            "merge-base",
            "--is-ancestor",
            ancestor.as_str(),
            descendant.as_str(),
        ])
    }

    pub fn head(&self) -> Result<CommitId> {
        self.resolve("HEAD")?
            .ok_or_else(|| GitError::NoSuchBranch("HEAD".to_string()))
    }

    /// Paths with uncommitted changes (staged, unstaged or untracked; not ignored files).
    pub fn dirty_files(&self) -> Result<Vec<String>> {
        let text = self.run(&[
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--no-renames",
            "--untracked-files=all",
        ])?;
        Ok(text
            .split('\0')
            .filter_map(|entry| entry.get(3..))
            .filter(|path| !path.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Files changed between two commits (`git diff --name-only a b`).
    pub fn changed_files(&self, from: &CommitId, to: &CommitId) -> Result<Vec<String>> {
        let text = self.run(&[
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            from.as_str(),
            to.as_str(),
        ])?;
        Ok(text
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect())
    }

    pub fn merge_base(&self, a: &CommitId, b: &CommitId) -> Result<Option<CommitId>> {
        let output = self.output(&["merge-base", a.as_str(), b.as_str()])?;
        match output.status.code() {
            Some(0) => Ok(Some(CommitId(
                String::from_utf8_lossy(&output.stdout).trim().to_string(),
            ))),
            Some(1) => Ok(None),
            _ => Err(command_error(
                &["merge-base", a.as_str(), b.as_str()],
                &output,
            )),
        }
    }
}

pub(crate) fn command_error(args: &[&str], output: &Output) -> GitError {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    GitError::Command {
        args: args.join(" "),
        code: output.status.code(),
        stderr: crate::shell::bounded_tail(text, 20, 4000),
    }
}

/// Checks that `name` is a valid branch name for git (`git check-ref-format --branch`).
pub fn check_branch_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && !name.starts_with('-')
        && Command::new("git")
            .args(["check-ref-format", "--branch", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| GitError::io("running git check-ref-format", source))?
            .success();
    if valid {
        Ok(())
    } else {
        Err(GitError::InvalidName {
            name: name.to_string(),
            reason: "not a valid git branch name".to_string(),
        })
    }
}
