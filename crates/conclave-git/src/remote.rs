//! Branches between clones (docs/scale-out.md): when a team's agents work on several hosts, each
//! with its own clone, task branches and the integration branch travel through one git remote
//! that every clone shares and the user names (`[merge] remote = "origin"`).
//!
//! - A clone whose agent finished a task **publishes** its branch ([`SharedRemote::push`]) before
//!   the `done` reaches the server, so the queue never waits on work it cannot see.
//! - The clone that runs the merge queue **brings** a task branch in ([`SharedRemote::bring`])
//!   before landing it, and publishes the integration branch after each landing.
//! - The other clones **follow** the integration branch ([`SharedRemote::follow`]) before they
//!   start a task branch from its tip, and bring a task's existing branch in (a task sent back,
//!   or one that changed hands between hosts).
//!
//! Only the queue's clone moves the integration branch on the remote; every other clone takes
//! the remote's as it is. A task branch belongs to the task's current holder: it is pushed
//! without force, so a push that would lose commits someone else published is refused, and said
//! so.

use crate::error::{GitError, Result};
use crate::git::{CommitId, Git};
use crate::repo::Repo;
use crate::shell::bounded_tail;

/// What [`SharedRemote::bring`] did with a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Brought {
    /// The remote has no such branch: the local one (if any) is all there is.
    NotOnRemote,
    /// The local branch was missing or behind: it is now the remote's tip.
    Updated(CommitId),
    /// The local branch already holds the remote's tip (or more): kept as it is.
    Kept(CommitId),
    /// The local branch and the remote's have both moved since they parted: the local one is
    /// kept, and the caller says so (the holder merges or pushes its own).
    Diverged { local: CommitId, remote: CommitId },
    /// The branch is checked out in a worktree here, so it is not moved under that worktree.
    CheckedOut(CommitId),
}

/// A remote of a repository that every clone of the team shares.
#[derive(Debug, Clone)]
pub struct SharedRemote {
    git: Git,
    repo: Repo,
    name: String,
}

impl SharedRemote {
    /// The remote `name` of `repo`; refused with [`GitError::NoSuchRemote`] when the clone has
    /// no such remote (`git remote add NAME URL` makes it).
    pub fn open(repo: &Repo, name: &str) -> Result<SharedRemote> {
        let git = repo.git().clone();
        let known = git.run(&["remote"])?;
        if !known.lines().any(|line| line.trim() == name) {
            return Err(GitError::NoSuchRemote {
                name: name.to_string(),
                repo: repo.root().to_path_buf(),
            });
        }
        Ok(SharedRemote {
            git,
            repo: repo.clone(),
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The remote-tracking ref a branch of the remote is fetched into.
    fn tracking_ref(&self, branch: &str) -> String {
        format!("refs/remotes/{}/{branch}", self.name)
    }

    /// Fetches `branch` from the remote into its remote-tracking ref; `None` when the remote
    /// has no such branch. Any other failure (the remote unreachable) is an error naming it.
    pub fn fetch(&self, branch: &str) -> Result<Option<CommitId>> {
        crate::git::check_branch_name(branch)?;
        let refspec = format!("+refs/heads/{branch}:{}", self.tracking_ref(branch));
        let args = ["fetch", "--quiet", "--no-tags", &self.name, &refspec];
        let output = self.git.output(&args)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("couldn't find remote ref") {
                return Ok(None);
            }
            return Err(GitError::Remote {
                remote: self.name.clone(),
                action: format!("fetching {branch}"),
                detail: bounded_tail(stderr.trim(), 10, 2000),
            });
        }
        self.git.resolve(&self.tracking_ref(branch))
    }

    /// Makes the local `branch` the remote's (for the integration branch on a clone that does
    /// not run the queue: the remote's is the one that counts). Answers the local tip after; a
    /// branch the remote lacks stays as it is (`None` when there is none at all). A branch
    /// checked out in a worktree here is not moved under it.
    pub fn follow(&self, branch: &str) -> Result<Option<CommitId>> {
        let Some(remote_tip) = self.fetch(branch)? else {
            return self.git.branch_tip(branch);
        };
        if let Some(holder) = self.repo.checkout_of(branch)? {
            tracing::warn!(
                branch,
                worktree = %holder.path.display(),
                "not following the remote's branch: it is checked out here"
            );
            return self.git.branch_tip(branch);
        }
        self.git.run(&[
            "update-ref",
            "-m",
            &format!("conclave: follow {}/{branch}", self.name),
            &format!("refs/heads/{branch}"),
            remote_tip.as_str(),
        ])?;
        Ok(Some(remote_tip))
    }

    /// Brings the remote's `branch` in: the local branch is created or fast-forwarded to the
    /// remote's tip; one that holds more, has diverged or is checked out here is kept.
    pub fn bring(&self, branch: &str) -> Result<Brought> {
        let Some(remote_tip) = self.fetch(branch)? else {
            return Ok(Brought::NotOnRemote);
        };
        let local = self.git.branch_tip(branch)?;
        if let Some(local) = &local {
            if local == &remote_tip || self.git.is_ancestor(&remote_tip, local)? {
                return Ok(Brought::Kept(local.clone()));
            }
            if !self.git.is_ancestor(local, &remote_tip)? {
                return Ok(Brought::Diverged {
                    local: local.clone(),
                    remote: remote_tip,
                });
            }
            if self.repo.checkout_of(branch)?.is_some() {
                return Ok(Brought::CheckedOut(local.clone()));
            }
        }
        // The old value makes it a compare-and-swap: a branch that moved meanwhile is kept.
        let old = local.map_or_else(|| "0".repeat(remote_tip.as_str().len()), |tip| tip.0);
        self.git.run(&[
            "update-ref",
            "-m",
            &format!("conclave: bring {}/{branch}", self.name),
            &format!("refs/heads/{branch}"),
            remote_tip.as_str(),
            &old,
        ])?;
        Ok(Brought::Updated(remote_tip))
    }

    /// Publishes the local `branch` on the remote, without force: a push the remote refuses
    /// (it would lose commits published there, a hook or a permission said no) is
    /// [`GitError::PushRefused`] with git's reason. Answers the tip pushed.
    pub fn push(&self, branch: &str) -> Result<CommitId> {
        let tip = self
            .git
            .branch_tip(branch)?
            .ok_or_else(|| GitError::NoSuchBranch(branch.to_string()))?;
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        let output = self
            .git
            .output(&["push", "--quiet", "--porcelain", &self.name, &refspec])?;
        if !output.status.success() {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let detail: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && *line != "Done" && !line.starts_with("To "))
                .collect();
            return Err(GitError::PushRefused {
                remote: self.name.clone(),
                branch: branch.to_string(),
                detail: bounded_tail(&detail.join("\n"), 10, 2000),
            });
        }
        // The tracking ref follows, so that a later `bring` sees the push as known.
        let _ = self
            .git
            .run(&["update-ref", &self.tracking_ref(branch), tip.as_str()]);
        Ok(tip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::Identity;
    use crate::test_support::TestRepo;

    /// A bare repository with `first`'s `main` pushed to it, and a second clone of it.
    struct TwoClones {
        first: TestRepo,
        _second_dir: tempfile::TempDir,
        second: std::path::PathBuf,
        bare: std::path::PathBuf,
        _bare_dir: tempfile::TempDir,
    }

    fn two_clones() -> TwoClones {
        let first = TestRepo::new();
        let bare_dir = tempfile::tempdir().expect("tempdir");
        let bare = bare_dir.path().join("team.git");
        TestRepo::git_in(
            bare_dir.path(),
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                "team.git",
            ],
        );
        first.git(&["remote", "add", "origin", &bare.display().to_string()]);
        first.git(&["push", "--quiet", "origin", "main"]);
        let second_dir = tempfile::tempdir().expect("tempdir");
        let second = second_dir.path().join("clone");
        TestRepo::git_in(
            second_dir.path(),
            &["clone", "--quiet", &bare.display().to_string(), "clone"],
        );
        for (key, value) in [
            ("user.name", "Tester"),
            ("user.email", "tester@example.invalid"),
            ("commit.gpgsign", "false"),
        ] {
            TestRepo::git_in(&second, &["config", key, value]);
        }
        TwoClones {
            first,
            _second_dir: second_dir,
            second,
            bare,
            _bare_dir: bare_dir,
        }
    }

    fn remote_of(dir: &std::path::Path) -> SharedRemote {
        let repo = Repo::open(dir, Identity::default()).expect("repo");
        SharedRemote::open(&repo, "origin").expect("origin")
    }

    #[test]
    fn a_remote_the_clone_lacks_is_refused_by_name() {
        let clones = two_clones();
        let error = SharedRemote::open(&clones.first.repo(), "upstream").expect_err("no remote");
        assert!(matches!(error, GitError::NoSuchRemote { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("upstream") && text.contains("git remote add"),
            "{text}"
        );
    }

    #[test]
    fn a_branch_pushed_from_one_clone_is_brought_into_the_other_and_followed() {
        let clones = two_clones();
        // The second clone publishes a task branch.
        TestRepo::git_in(&clones.second, &["switch", "--quiet", "-c", "conclave/T-1"]);
        std::fs::write(clones.second.join("a.txt"), "a\n").expect("write");
        TestRepo::git_in(&clones.second, &["add", "a.txt"]);
        TestRepo::git_in(&clones.second, &["commit", "--quiet", "-m", "a"]);
        let pushed = remote_of(&clones.second)
            .push("conclave/T-1")
            .expect("push");

        // The first brings it in: created, then kept when nothing new came.
        let first = remote_of(clones.first.path());
        assert_eq!(
            first.bring("conclave/T-1").expect("bring"),
            Brought::Updated(pushed.clone())
        );
        assert_eq!(clones.first.tip("conclave/T-1"), pushed);
        assert_eq!(
            first.bring("conclave/T-1").expect("again"),
            Brought::Kept(pushed.clone())
        );
        assert_eq!(
            first.bring("conclave/T-9").expect("absent"),
            Brought::NotOnRemote
        );

        // The first publishes an integration branch; the second follows it, even over a local
        // one made from its own HEAD.
        clones
            .first
            .git(&["branch", "conclave/integration", pushed.as_str()]);
        first
            .push("conclave/integration")
            .expect("push integration");
        TestRepo::git_in(&clones.second, &["branch", "conclave/integration", "main"]);
        let followed = remote_of(&clones.second)
            .follow("conclave/integration")
            .expect("follow");
        assert_eq!(followed, Some(pushed.clone()));
        let second_tip = Git::new(&clones.second)
            .branch_tip("conclave/integration")
            .expect("tip");
        assert_eq!(second_tip, Some(pushed));
        assert!(clones.bare.is_dir());
    }

    #[test]
    fn a_push_that_would_lose_published_commits_is_refused_with_gits_reason() {
        let clones = two_clones();
        clones.first.write("one.txt", "1\n");
        clones.first.commit_all("one");
        remote_of(clones.first.path()).push("main").expect("push");
        // The second clone's main has not seen that commit: pushing its own would lose it.
        std::fs::write(clones.second.join("two.txt"), "2\n").expect("write");
        TestRepo::git_in(&clones.second, &["add", "two.txt"]);
        TestRepo::git_in(&clones.second, &["commit", "--quiet", "-m", "two"]);
        let error = remote_of(&clones.second).push("main").expect_err("refused");
        let GitError::PushRefused {
            remote,
            branch,
            detail,
        } = &error
        else {
            panic!("expected a refused push: {error}");
        };
        assert_eq!((remote.as_str(), branch.as_str()), ("origin", "main"));
        assert!(
            detail.contains("rejected") || detail.contains("fetch first"),
            "{detail}"
        );
        assert!(error.to_string().contains("refused"), "{error}");

        // And a branch that diverged is kept when brought, and said so.
        let brought = remote_of(&clones.second).bring("main").expect("bring");
        assert!(matches!(brought, Brought::Diverged { .. }), "{brought:?}");
    }

    #[test]
    fn an_unreachable_remote_is_an_error_naming_it() {
        let clones = two_clones();
        clones
            .first
            .git(&["remote", "set-url", "origin", "/nonexistent/team.git"]);
        let error = remote_of(clones.first.path())
            .fetch("main")
            .expect_err("unreachable");
        assert!(matches!(error, GitError::Remote { .. }), "{error}");
        assert!(error.to_string().contains("origin"), "{error}");
    }
}
