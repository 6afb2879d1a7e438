//! Real git repositories in temporary folders, for this crate's tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::git::{CommitId, Git, Identity};
use crate::repo::Repo;

pub struct TestRepo {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl TestRepo {
    /// An empty repository on `main` with one commit, and `.conclave/` ignored as the server's
    /// state folder is.
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(dir.path())
            .expect("canonicalize")
            .join("project");
        fs::create_dir_all(root.join(".conclave")).expect("mkdir");
        fs::write(root.join(".conclave/.gitignore"), "*\n").expect("write");
        let repo = TestRepo { _dir: dir, root };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo.git(&["config", "user.name", "Tester"]);
        repo.git(&["config", "user.email", "tester@example.invalid"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo.write("README.md", "project\n");
        repo.commit_all("initial");
        repo
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn repo(&self) -> Repo {
        Repo::open(&self.root, Identity::default()).expect("open repo")
    }

    pub fn git(&self, args: &[&str]) -> String {
        Self::git_in(&self.root, args)
    }

    pub fn git_in(dir: &Path, args: &[&str]) -> String {
        Git::new(dir)
            .run(args)
            .unwrap_or_else(|error| panic!("git {args:?} in {}: {error}", dir.display()))
    }

    pub fn tip(&self, branch: &str) -> CommitId {
        Git::new(&self.root)
            .branch_tip(branch)
            .expect("rev-parse")
            .unwrap_or_else(|| panic!("no branch {branch}"))
    }

    pub fn write(&self, path: &str, text: &str) {
        write_in(&self.root, path, text);
    }

    pub fn commit_all(&self, message: &str) {
        commit_all_in(&self.root, message);
    }

    /// Runs a shell command in the main worktree; panics when it fails.
    pub fn sh(&self, command: &str) {
        sh_in(&self.root, command);
    }
}

pub fn write_in(dir: &Path, path: &str, text: &str) {
    let full = dir.join(path);
    if let Some(parent) = full.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(full, text).expect("write");
}

pub fn commit_all_in(dir: &Path, message: &str) {
    TestRepo::git_in(dir, &["add", "--all"]);
    TestRepo::git_in(dir, &["commit", "--quiet", "-m", message]);
}

pub fn sh_in(dir: &Path, command: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .status()
        .expect("sh");
    assert!(status.success(), "`{command}` failed");
}
