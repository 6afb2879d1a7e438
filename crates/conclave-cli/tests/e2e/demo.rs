//! `conclave demo`: the scripted three-agent team runs to the end with the real Claude Code CLI,
//! and the story it tells (dependent tasks, a collision on one file resolved by message) is in
//! the event log; a step the script does not expect stops it at once.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use conclave_core::model::{EventPayload, MessageKind};
use conclave_standin::claude_cli::{PINNED_CLAUDE_CODE_VERSION, claude_or_skip};

use crate::support::serial;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_team_collides_on_one_file_resolves_it_by_message_and_finishes() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("demo");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
    command
        .args(["demo", "--exit-when-done", "--dir"])
        .arg(&dir)
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .context("the demo did not finish within 240 s")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "demo failed: {stderr}");
    ensure!(
        stderr.contains("SCRIPTED DEMO"),
        "the terminal must say it is scripted: {stderr}"
    );
    ensure!(
        stderr.contains("/?token="),
        "the dashboard link is printed: {stderr}"
    );
    ensure!(
        stderr.contains("the scripted team finished in ") && stderr.contains(" s"),
        "the terminal says when the team has finished: {stderr}"
    );
    // The pinned Claude Code draws no version warning; another (CONCLAVE_CLAUDE_BIN) draws one
    // that names it, and the demo still runs.
    let version = std::process::Command::new(&claude)
        .arg("--version")
        .output()?;
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    if version.starts_with(PINNED_CLAUDE_CODE_VERSION) {
        ensure!(
            !stderr.contains("warning:"),
            "the pinned Claude Code draws no version warning: {stderr}"
        );
    } else {
        let named = version.split_whitespace().next().unwrap_or_default();
        ensure!(
            stderr.contains("warning:") && stderr.contains(named),
            "Claude Code {named} (not the pinned one) draws a warning naming it: {stderr}"
        );
    }

    // Read the finished project's log straight from its database file.
    let store = conclave_core::Store::open(&dir.join(".conclave/conclave.db"), Default::default())?;
    let events = store.read(|r| r.events(&Default::default()))?;
    let tasks = store.read(|r| r.tasks(None, None))?;
    ensure!(tasks.len() == 3, "{tasks:?}");
    for task in &tasks {
        ensure!(
            task.status == conclave_core::model::TaskStatus::Done,
            "{task:?}"
        );
    }
    let why = events
        .iter()
        .find_map(|e| match &e.payload {
            EventPayload::LeaseDenied(denied) => Some(denied.why.as_str()),
            _ => None,
        })
        .context("no agent ran into another's lease")?;
    ensure!(
        why.contains("src/lib.rs") && why.contains("leased by coder-"),
        "{why}"
    );
    let asked = events
        .iter()
        .any(|e| matches!(&e.payload, EventPayload::MessageSent(sent) if sent.kind == MessageKind::Question));
    ensure!(asked, "the refused coder asks the holder by message");
    let lib = std::fs::read_to_string(dir.join("src/lib.rs"))?;
    ensure!(
        lib.contains("mod farewell") && lib.contains("mod greet"),
        "{lib}"
    );
    Ok(())
}

/// `conclave demo --worktrees`: the same team, each agent in its own worktree; it ends with the
/// three branches landed on the integration branch, each after the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worktree_demo_ends_with_the_work_merged_and_checked_on_the_integration_branch()
-> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("demo");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
    command
        .args(["demo", "--worktrees", "--exit-when-done", "--dir"])
        .arg(&dir)
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .context("the demo did not finish within 240 s")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "demo failed: {stderr}");
    ensure!(
        stderr.contains("conclave/integration now holds"),
        "the demo ends showing the integration branch: {stderr}"
    );

    let store = conclave_core::Store::open(&dir.join(".conclave/conclave.db"), Default::default())?;
    let tasks = store.read(|r| r.tasks(None, None))?;
    ensure!(tasks.len() == 3, "{tasks:?}");
    for task in &tasks {
        ensure!(
            task.status == conclave_core::model::TaskStatus::Done,
            "{task:?}"
        );
    }
    let queue = store.read(|r| r.merge_queue())?;
    ensure!(queue.entries.len() == 3, "{queue:?}");
    // A coder may take both coding tasks (the scripted coder writes its own files whichever it
    // claims): the second then changes nothing and lands as such, without a check.
    let mut checked = 0;
    for entry in &queue.entries {
        let outcome = entry.outcome.as_deref().unwrap_or_default();
        ensure!(
            entry.state == conclave_core::model::QueueState::Landed
                && (outcome.contains("check passed") || outcome.contains("nothing to merge")),
            "{entry:?}"
        );
        checked += usize::from(outcome.contains("check passed"));
    }
    ensure!(checked >= 2, "{queue:?}");
    let show = |path: &str| -> Result<String> {
        let output = std::process::Command::new("git")
            .args(["show", &format!("conclave/integration:{path}")])
            .current_dir(&dir)
            .output()?;
        ensure!(
            output.status.success(),
            "no {path} on the integration branch"
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let lib = show("src/lib.rs")?;
    ensure!(
        lib.contains("mod farewell") && lib.contains("mod greet"),
        "{lib}"
    );
    ensure!(
        show("src/greet.rs")?.contains("Hello") || show("src/farewell.rs")?.contains("Goodbye")
    );
    ensure!(show("docs/design.md")?.contains("Greeting API"));
    // The agents wrote in their worktrees, not in the project's own tree.
    ensure!(!dir.join("docs/design.md").exists());
    Ok(())
}

/// A step the script does not expect (here `src/lib.rs` is a folder, so reading it fails) makes
/// the scripted agent stop instead of trying again, and the demo ends at once quoting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_agent_meeting_an_unexpected_error_stops_the_demo_at_once() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("demo");
    std::fs::create_dir_all(dir.join("src/lib.rs"))?;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_conclave"));
    command
        .args(["demo", "--exit-when-done", "--dir"])
        .arg(&dir)
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .context("the demo did not stop within 120 s")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "{stderr}");
    ensure!(
        stderr.contains("the scripted team cannot finish: coder-")
            && stderr.contains("stopped: Read failed")
            && stderr.contains("EISDIR"),
        "the demo quotes what the agent met: {stderr}"
    );

    // A failed read is no lease denial: nobody was asked about it.
    let store = conclave_core::Store::open(&dir.join(".conclave/conclave.db"), Default::default())?;
    let events = store.read(|r| r.events(&Default::default()))?;
    let questions = events
        .iter()
        .filter(|e| {
            matches!(&e.payload, EventPayload::MessageSent(sent) if sent.kind == MessageKind::Question)
        })
        .count();
    ensure!(questions == 0, "{questions} questions were asked");
    let alert = events.iter().find_map(|e| match &e.payload {
        EventPayload::AgentAlert(alert) => Some(alert.message.as_str()),
        _ => None,
    });
    ensure!(
        alert.is_some_and(|message| message.contains("EISDIR")),
        "the stop is an alert saying what the agent met: {alert:?}"
    );
    Ok(())
}
