//! A lock per path shared between processes: `flock` on a lock file next to the locked folder.
//! The kernel drops the lock when its holder dies, so a crashed process never leaves it held.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{GitError, Result};

/// How long an operation waits for another process to finish with the same worktree.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Held while the guard lives; the lock file itself stays (removing it would let two processes
/// lock two different files of the same name).
#[derive(Debug)]
pub struct PathLock {
    _file: File,
    path: PathBuf,
}

impl PathLock {
    /// Locks `lock_file` (created if missing), waiting at most `timeout`.
    pub fn acquire(lock_file: &Path, timeout: Duration) -> Result<PathLock> {
        if let Some(parent) = lock_file.parent() {
            fs::create_dir_all(parent)
                .map_err(|source| GitError::io(format!("creating {}", parent.display()), source))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_file)
            .map_err(|source| GitError::io(format!("opening {}", lock_file.display()), source))?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(PathLock {
                        _file: file,
                        path: lock_file.to_path_buf(),
                    });
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(25));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(GitError::LockTimeout {
                        path: lock_file.to_path_buf(),
                        seconds: timeout.as_secs(),
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(GitError::io(
                        format!("locking {}", lock_file.display()),
                        source,
                    ));
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_times_out_then_gets_it_after_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("alice.lock");
        let first = PathLock::acquire(&path, Duration::from_secs(1)).expect("first");
        // flock locks belong to the open file description: a second open in this process
        // conflicts just as another process would.
        let second = PathLock::acquire(&path, Duration::from_millis(100));
        assert!(
            matches!(second, Err(GitError::LockTimeout { .. })),
            "{second:?}"
        );
        drop(first);
        PathLock::acquire(&path, Duration::from_millis(100)).expect("after release");
    }
}
