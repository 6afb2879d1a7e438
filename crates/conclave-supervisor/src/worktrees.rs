//! The worktrees of `isolation = "worktree"` agents (docs/worktrees.md): before a team starts,
//! the supervisor repairs what a crash left under `.conclave/worktrees` (a stale `git worktree`
//! entry never blocks a start), makes sure the integration branch exists (`[merge] into`, created
//! from the HEAD `up` starts on), and gives each worktree agent its own worktree,
//! `.conclave/worktrees/<agent>`, made at the integration branch's tip with `[merge] setup` run
//! in it when new. The agent's client then runs there.
//!
//! Branches are not the supervisor's: the server switches the worktree to `conclave/<task>` when
//! the agent claims a task, and commits it when the agent finishes (conclave-server's
//! `worktree_tasks`), because those must happen before the claim or the `done` answers.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use conclave_core::config::MergeSection;
use conclave_git::{AgentWorktrees, Identity, Repo, ShellCommand};

/// The project's agent worktrees with `[merge]`'s setup command, the integration branch made
/// sure of. Blocking (git runs).
pub fn open_worktrees(root: &Path, merge: &MergeSection) -> anyhow::Result<AgentWorktrees> {
    let repo = Repo::open(root, Identity::default()).with_context(|| {
        format!(
            "isolation = \"worktree\" needs the project to be a git repository ({})",
            root.display()
        )
    })?;
    // A worktree holds the whole repository: a project in a subfolder of it would sit one level
    // down in each worktree, and the paths agents and hooks use would not line up.
    let prefix = conclave_git::Git::new(root).run(&["rev-parse", "--show-prefix"])?;
    anyhow::ensure!(
        prefix.trim().is_empty(),
        "isolation = \"worktree\" needs the project at the top of its git repository ({} is \
         the subfolder {} of one)",
        root.display(),
        prefix.trim()
    );
    repo.ensure_integration_branch(merge.into_branch(), None)
        .with_context(|| format!("cannot prepare the branch {}", merge.into_branch()))?;
    let setup = merge
        .setup
        .as_ref()
        .map(|command| ShellCommand::new(command.clone(), merge.check_timeout()));
    Ok(AgentWorktrees::new(repo)?.with_setup(setup))
}

/// How often making one worktree is tried: another process's `git worktree prune` (a session
/// starting at the same time, the merge queue) can remove `.git/worktrees` while `git worktree
/// add` is making its entry in it.
const ENSURE_ATTEMPTS: u32 = 3;

/// What a start repairs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// The whole worktrees folder (`conclave up`, which starts the team): stale entries and
    /// half-made folders go.
    All,
    /// Only the agents' own worktrees, when broken (`conclave claude`, one session among
    /// others that may be starting).
    Own,
}

/// Start-up with worktree agents: repairs (see [`Repair`]), then makes sure each of `agents`
/// has a working worktree (new ones at the integration branch's tip, setup run). Answers each
/// agent's worktree. Blocking.
pub fn prepare_worktrees(
    root: &Path,
    merge: &MergeSection,
    agents: &[String],
    repair: Repair,
) -> anyhow::Result<Vec<PathBuf>> {
    let worktrees = open_worktrees(root, merge)?;
    if repair == Repair::All {
        let report = worktrees
            .repair()
            .context("cannot repair .conclave/worktrees")?;
        for path in report.stale_entries.iter().chain(&report.removed_folders) {
            tracing::info!(path = %path.display(), "removed a broken worktree left by a crash");
        }
    }
    let tip = worktrees
        .repo()
        .branch_tip(merge.into_branch())?
        .with_context(|| format!("the branch {} is missing", merge.into_branch()))?;
    agents
        .iter()
        .map(|agent| {
            let mut attempt = 1;
            let tree = loop {
                match worktrees.ensure(agent, &tip) {
                    Ok(tree) => break tree,
                    Err(error) if attempt < ENSURE_ATTEMPTS => {
                        tracing::info!(%agent, %error, "making the worktree again");
                        std::thread::sleep(std::time::Duration::from_millis(
                            200 * u64::from(attempt),
                        ));
                        attempt += 1;
                    }
                    Err(error) => {
                        return Err(anyhow::Error::new(error)
                            .context(format!("cannot make the worktree of agent {agent}")));
                    }
                }
            };
            if let Some(setup) = &tree.setup {
                tracing::info!(%agent, outcome = %setup.describe(), "setup ran in a new worktree");
            }
            Ok(tree.path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! With real git in a temporary repository.

    use std::process::Command;

    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn project() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        git(&root, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::create_dir_all(root.join(".conclave")).expect("mkdir");
        std::fs::write(root.join(".conclave/.gitignore"), "*\n").expect("ignore");
        std::fs::write(root.join("README.md"), "hi\n").expect("write");
        git(&root, &["add", "README.md"]);
        git(&root, &["commit", "--quiet", "-m", "start"]);
        (dir, root)
    }

    #[test]
    fn each_agent_gets_a_worktree_at_the_integration_tip_with_setup_run_once() {
        let (_dir, root) = project();
        let merge = MergeSection {
            setup: Some("echo made >> setup.log".into()),
            ..MergeSection::default()
        };
        let agents = vec!["alice".to_string(), "bob".to_string()];
        let trees = prepare_worktrees(&root, &merge, &agents, Repair::All).expect("prepare");
        assert_eq!(
            trees,
            vec![
                root.join(".conclave/worktrees/alice"),
                root.join(".conclave/worktrees/bob")
            ]
        );
        let tip = git(&root, &["rev-parse", "conclave/integration"]);
        assert_eq!(tip, git(&root, &["rev-parse", "main"]));
        for tree in &trees {
            assert_eq!(git(tree, &["rev-parse", "HEAD"]), tip);
            assert!(tree.join("README.md").is_file());
        }
        // Again (a restart): the worktrees are reused, the setup does not run twice.
        prepare_worktrees(&root, &merge, &agents, Repair::All).expect("prepare again");
        let log = std::fs::read_to_string(trees[0].join("setup.log")).expect("setup ran");
        assert_eq!(log, "made\n");
        // The main worktree sees none of it.
        assert_eq!(git(&root, &["status", "--porcelain"]), "");
    }

    #[test]
    fn a_worktree_left_broken_by_a_crash_does_not_block_the_start() {
        let (_dir, root) = project();
        let merge = MergeSection::default();
        let agents = vec!["alice".to_string()];
        let tree = prepare_worktrees(&root, &merge, &agents, Repair::All)
            .expect("prepare")
            .remove(0);
        // The folder vanished behind git's back, and a half-made folder sits next to it.
        std::fs::remove_dir_all(&tree).expect("remove");
        std::fs::create_dir_all(root.join(".conclave/worktrees/bob/src")).expect("mkdir");
        let trees = prepare_worktrees(&root, &merge, &["alice".into(), "bob".into()], Repair::All)
            .expect("prepare after a crash");
        for tree in &trees {
            assert!(tree.join("README.md").is_file(), "{}", tree.display());
        }
    }

    #[test]
    fn a_project_in_a_subfolder_of_its_repository_is_refused_saying_so() {
        let (_dir, root) = project();
        let sub = root.join("app");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let error = prepare_worktrees(&sub, &MergeSection::default(), &["a".into()], Repair::All)
            .expect_err("a subfolder");
        assert!(
            format!("{error:#}").contains("top of its git repository"),
            "{error:#}"
        );
    }

    #[test]
    fn a_project_that_is_no_git_repository_is_refused_saying_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = prepare_worktrees(
            dir.path(),
            &MergeSection::default(),
            &["a".into()],
            Repair::All,
        )
        .expect_err("no repository");
        assert!(format!("{error:#}").contains("git repository"), "{error:#}");
    }
}
