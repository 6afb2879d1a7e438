//! Write attribution for shell commands: a cheap snapshot of a work tree before and after a
//! command, and the files the command created, modified or deleted.
//!
//! A snapshot is `git status --porcelain=v1 -z` (the files that differ from the last commit,
//! untracked ones included) plus, for each of them, its size, modification and change times,
//! inode and mode. Git itself only stats the files it tracks (its index caches their stats), so
//! the cost grows with the tree's size but stays small: measure it with
//! `cargo run --release -p conclave-git --example snapshot_cost`.
//!
//! What it sees and what it does not:
//! - a tracked file the command rewrote (`sed -i`, a formatter) becomes "modified" once its
//!   content differs from the commit; a file that was already changed before the command counts
//!   only if its stamp changed since (another write), so earlier edits are not attributed again;
//! - files git ignores (`target/`, `node_modules/`) are not seen, on purpose: they are build
//!   output, not work;
//! - a rewrite that leaves a clean file's content identical to the commit is not a change.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::git::Git;

/// What a file looked like on disk; `None` in a snapshot means "absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub modified_ns: i128,
    /// The inode change time: moves when content or metadata changes, even when a tool
    /// restores the modification time.
    pub changed_ns: i128,
    pub inode: u64,
    pub mode: u32,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let metadata = fs::symlink_metadata(path).ok()?;
        Some(FileStamp {
            size: metadata.size(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            changed_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
            inode: metadata.ino(),
            mode: metadata.mode(),
        })
    }
}

/// One path in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// git's two status letters (`" M"`, `"??"`, `"A "`, …); `"  "` for a clean file recorded
    /// only because the snapshot before listed it.
    pub status: String,
    pub stamp: Option<FileStamp>,
}

/// The state of a work tree's changed and untracked files at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSnapshot {
    pub root: PathBuf,
    /// Keyed by path relative to the work tree's top folder.
    pub entries: BTreeMap<String, SnapshotEntry>,
}

/// What a command did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Created,
    Modified,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileChange {
    pub path: String,
    pub kind: ChangeKind,
}

impl TreeSnapshot {
    /// Snapshots the work tree whose top folder is `root`.
    pub fn capture(root: &Path) -> Result<TreeSnapshot> {
        let git = Git::new(root);
        // --no-optional-locks: do not refresh the index, which would race with the agent's own
        // git commands (and write to the tree we observe).
        let text = git.run(&[
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--no-renames",
            "--untracked-files=all",
            "--ignore-submodules=all",
        ])?;
        let mut entries = BTreeMap::new();
        for record in text.split('\0') {
            let (Some(status), Some(path)) = (record.get(..2), record.get(3..)) else {
                continue;
            };
            if path.is_empty() {
                continue;
            }
            entries.insert(
                path.to_string(),
                SnapshotEntry {
                    status: status.to_string(),
                    stamp: FileStamp::of(&root.join(path)),
                },
            );
        }
        Ok(TreeSnapshot {
            root: root.to_path_buf(),
            entries,
        })
    }

    /// Snapshots the tree after a command: [`Self::capture`], plus a stamp for each path that
    /// `before` listed and that is clean now (a file restored or committed by the command).
    pub fn capture_after(before: &TreeSnapshot) -> Result<TreeSnapshot> {
        let mut after = TreeSnapshot::capture(&before.root)?;
        for path in before.entries.keys() {
            if !after.entries.contains_key(path) {
                after.entries.insert(
                    path.clone(),
                    SnapshotEntry {
                        status: "  ".to_string(),
                        stamp: FileStamp::of(&before.root.join(path)),
                    },
                );
            }
        }
        Ok(after)
    }

    /// The files created, modified or deleted between `self` (before) and `after` (taken with
    /// [`Self::capture_after`]), sorted by path.
    pub fn changes(&self, after: &TreeSnapshot) -> Vec<FileChange> {
        let mut changes = Vec::new();
        for (path, now) in &after.entries {
            let kind = match self.entries.get(path) {
                Some(then) if then.stamp == now.stamp => None,
                Some(then) => match (then.stamp, now.stamp) {
                    (None, Some(_)) => Some(ChangeKind::Created),
                    (Some(_), None) => Some(ChangeKind::Deleted),
                    _ => Some(ChangeKind::Modified),
                },
                // Clean (or absent) before, listed now.
                None => match now.stamp {
                    None => Some(ChangeKind::Deleted),
                    Some(_) if now.status == "??" || now.status.starts_with('A') => {
                        Some(ChangeKind::Created)
                    }
                    Some(_) => Some(ChangeKind::Modified),
                },
            };
            if let Some(kind) = kind {
                changes.push(FileChange {
                    path: path.clone(),
                    kind,
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestRepo;

    fn changes_of(repo: &TestRepo, command: &str) -> Vec<(String, ChangeKind)> {
        let before = TreeSnapshot::capture(repo.path()).expect("before");
        repo.sh(command);
        let after = TreeSnapshot::capture_after(&before).expect("after");
        before
            .changes(&after)
            .into_iter()
            .map(|change| (change.path, change.kind))
            .collect()
    }

    #[test]
    fn sed_in_place_on_a_clean_tracked_file_is_a_modification() {
        let repo = TestRepo::new();
        repo.write("src/lib.rs", "fn old() {}\n");
        repo.write("README", "hello\n");
        repo.commit_all("base");
        let changes = changes_of(&repo, "sed -i 's/old/new/' src/lib.rs");
        assert_eq!(
            changes,
            vec![("src/lib.rs".to_string(), ChangeKind::Modified)]
        );
    }

    #[test]
    fn created_deleted_and_rewritten_files_are_told_apart_and_earlier_edits_are_not_counted() {
        let repo = TestRepo::new();
        repo.write("a.txt", "a\n");
        repo.write("b.txt", "b\n");
        repo.write("c.txt", "c\n");
        repo.commit_all("base");
        // Already changed before the command, and not touched by it: not the command's doing.
        repo.write("a.txt", "edited by the agent's Edit tool\n");
        repo.write("scratch.txt", "untracked, older\n");
        let changes = changes_of(
            &repo,
            "rm b.txt && mkdir -p gen && echo x > gen/out.rs && echo more >> c.txt && rm scratch.txt",
        );
        assert_eq!(
            changes,
            vec![
                ("b.txt".to_string(), ChangeKind::Deleted),
                ("c.txt".to_string(), ChangeKind::Modified),
                ("gen/out.rs".to_string(), ChangeKind::Created),
                ("scratch.txt".to_string(), ChangeKind::Deleted),
            ]
        );
    }

    #[test]
    fn a_second_write_to_an_already_changed_file_and_a_restore_are_modifications() {
        let repo = TestRepo::new();
        repo.write("a.txt", "a\n");
        repo.write("b.txt", "b\n");
        repo.commit_all("base");
        repo.write("a.txt", "first edit\n");
        repo.write("b.txt", "to be restored\n");
        let changes = changes_of(&repo, "echo second >> a.txt && git checkout -- b.txt");
        assert_eq!(
            changes,
            vec![
                ("a.txt".to_string(), ChangeKind::Modified),
                ("b.txt".to_string(), ChangeKind::Modified),
            ]
        );
    }

    #[test]
    fn a_command_that_writes_nothing_changes_nothing() {
        let repo = TestRepo::new();
        repo.write("a.txt", "a\n");
        repo.commit_all("base");
        repo.write("a.txt", "dirty\n");
        assert_eq!(
            changes_of(&repo, "cat a.txt > /dev/null && git status > /dev/null"),
            vec![]
        );
    }
}
