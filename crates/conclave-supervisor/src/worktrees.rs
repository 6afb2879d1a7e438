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
    repo.ensure_integration_branch(merge.into_branch(), None)
        .with_context(|| format!("cannot prepare the branch {}", merge.into_branch()))?;
    let setup = merge
        .setup
        .as_ref()
        .map(|command| ShellCommand::new(command.clone(), merge.check_timeout()));
    Ok(AgentWorktrees::new(repo)?.with_setup(setup))
}

/// Start-up of a team with worktree agents: repairs the worktrees folder, then makes sure each
/// of `agents` has a working worktree (new ones at the integration branch's tip, setup run).
/// Answers each agent's worktree. Blocking.
pub fn prepare_worktrees(
    root: &Path,
    merge: &MergeSection,
    agents: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    let worktrees = open_worktrees(root, merge)?;
    let report = worktrees
        .repair()
        .context("cannot repair .conclave/worktrees")?;
    for path in report.stale_entries.iter().chain(&report.removed_folders) {
        tracing::info!(path = %path.display(), "removed a broken worktree left by a crash");
    }
    let tip = worktrees
        .repo()
        .branch_tip(merge.into_branch())?
        .with_context(|| format!("the branch {} is missing", merge.into_branch()))?;
    agents
        .iter()
        .map(|agent| {
            let tree = worktrees
                .ensure(agent, &tip)
                .with_context(|| format!("cannot make the worktree of agent {agent}"))?;
            if let Some(setup) = &tree.setup {
                tracing::info!(%agent, outcome = %setup.describe(), "setup ran in a new worktree");
            }
            Ok(tree.path)
        })
        .collect()
}
