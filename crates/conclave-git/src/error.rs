//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// What went wrong talking to git or the file system. Outcomes that are part of normal work (a
/// merge conflict, a failing check, a refused fast-forward) are not errors: they are variants of
/// the operation's outcome type.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A git command exited unsuccessfully where success was required.
    #[error("`git {args}` failed (exit {code:?}): {stderr}")]
    Command {
        args: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("{0} is not inside a git work tree")]
    NotARepository(PathBuf),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("branch {0} does not exist")]
    NoSuchBranch(String),
    /// The worktree holds uncommitted changes that the requested operation would throw away.
    #[error("worktree {path} has uncommitted changes: {files:?}")]
    Dirty { path: PathBuf, files: Vec<String> },
    /// The branch is checked out in another worktree, so git refuses to check it out again.
    #[error("branch {branch} is checked out in {path}")]
    CheckedOutElsewhere { branch: String, path: PathBuf },
    #[error("timed out after {seconds} s waiting for the lock {path}")]
    LockTimeout { path: PathBuf, seconds: u64 },
    /// The `[merge] setup` command failed in a new worktree (the worktree is removed again).
    #[error("setup command failed in {path}: {detail}")]
    SetupFailed { path: PathBuf, detail: String },
    /// `[merge] remote` names a remote this clone does not have.
    #[error(
        "the git remote {name:?} does not exist in {repo} (add it with `git remote add {name} \
         URL`: every clone of the team needs the same remote)"
    )]
    NoSuchRemote { name: String, repo: PathBuf },
    /// The shared remote refused a push (it would lose commits published there, a hook or a
    /// permission said no).
    #[error("pushing {branch} to the remote {remote} was refused: {detail}")]
    PushRefused {
        remote: String,
        branch: String,
        detail: String,
    },
    /// Talking to the shared remote failed (unreachable, no access).
    #[error("{action} from the remote {remote} failed: {detail}")]
    Remote {
        remote: String,
        action: String,
        detail: String,
    },
    /// A failpoint (see `MergeEngine::land_with`) stopped the operation on purpose.
    #[error("stopped at {0}")]
    Interrupted(String),
}

impl GitError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        GitError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = GitError> = std::result::Result<T, E>;
