//! `conclave demo`: a scripted three-agent team of real Claude Code instances in a throwaway git
//! project, for a newcomer with no API key.
//!
//! The model turns are played by the scripted stand-in for the Anthropic API that ships inside
//! this binary (`conclave_standin::demo`), on loopback. The demo starts `conclave serve` and
//! `conclave up --stay` in the project as child processes, seeds three dependent tasks, and prints
//! the dashboard link. The agents claim tasks, lease files, collide on one file and resolve it by
//! message, and finish. Nothing is opened; nothing leaves the machine.
//!
//! `--worktrees` runs the same story with `isolation = "worktree"`: each agent in its own git
//! worktree, the collision a warning instead of a denial, and a `[merge]` check; the demo ends by
//! showing what the merge queue landed and the integration branch's history.
//!
//! It runs Claude Code versions it was tried with ([`TRIED_VERSIONS`]); for another one it uses
//! the pinned version from the test cache if installed there, else warns. It watches the team:
//! it says in the terminal when every task is done (and how long it took), stops at once with
//! the agent's words when a scripted agent met something the story did not expect, and gives up
//! after [`TEAM_TIME_LIMIT`] naming the tasks left.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use conclave_core::config::DEFAULT_INTEGRATION_BRANCH;
use conclave_core::event::Topic;
use conclave_core::model::{EventList, EventPayload, QueueView, Task, TaskList, TaskStatus};
use conclave_core::project::Project;
use conclave_standin::StandIn;
use conclave_standin::claude_cli::{
    CLAUDE_BIN_ENV, PINNED_CLAUDE_CODE_VERSION, binary_in, install_dir,
};
use conclave_standin::demo::{
    DEMO_AGENTS, DEMO_TASKS, STOP_MARK, demo_script, demo_script_in_worktrees,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::DemoArgs;
use crate::output::note;
use conclave_client::Client;

const BANNER: &str = "SCRIPTED DEMO: the agents are real Claude Code processes, but their model turns are played \
by Conclave's built-in stand-in for the Anthropic API (no API key, no network).";

/// How long the scripted team may take to finish its three tasks (it takes about half a minute
/// with the pinned Claude Code) before the demo gives up and says what was left.
const TEAM_TIME_LIMIT: Duration = Duration::from_secs(300);

/// With `--exit-when-done`: how long `conclave up` may take to go quiet and exit once the tasks
/// are done, before the demo stops it.
const QUIET_LIMIT: Duration = Duration::from_secs(60);

/// How often the demo looks at the tasks and at what the agents said.
const POLL: Duration = Duration::from_millis(500);

/// The Claude Code versions the demo has been run with, end to end.
const TRIED_VERSIONS: &[&str] = &[PINNED_CLAUDE_CODE_VERSION];

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let claude = choose_claude().await?;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
            std::env::temp_dir().join(format!("conclave-demo-{stamp}"))
        }
    };
    if dir.join(".conclave").exists() {
        bail!(
            "{} already holds a Conclave project; pick another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    note!("{BANNER}");
    note!("conclave demo: project in {}", dir.display());

    let script = if args.worktrees {
        demo_script_in_worktrees(&dir)
    } else {
        demo_script(&dir)
    };
    let stand_in = StandIn::start(script).await?;
    make_project(&dir, &stand_in.url(), &claude, args.worktrees)?;

    let exe = std::env::current_exe().context("cannot find the conclave binary")?;
    let mut serve = spawn(
        &exe,
        &dir,
        &["serve", "--listen", "127.0.0.1:0"],
        &claude,
        true,
    )?;
    let project = Project::at(&dir);
    let url = wait_for_server(&project, &mut serve).await?;
    let admin_token = project
        .read_admin_token()?
        .context("the demo server wrote no admin token")?;
    let admin = Client::new(url.clone(), admin_token.clone(), None)?;
    seed_tasks(&admin).await?;

    let mut up_args = vec!["up"];
    if !args.exit_when_done {
        up_args.push("--stay");
    }
    let mut up = spawn(&exe, &dir, &up_args, &claude, false)?;
    let started = Instant::now();
    note!();
    note!("{BANNER}");
    note!("Watch the team on the dashboard (it carries the admin token; keep it private):");
    note!("{url}/?token={admin_token}");
    note!(
        "Follow one agent in another terminal: cd {} && conclave attach coder-2",
        dir.display()
    );
    note!("Press Ctrl-C to stop the demo.");

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut watch = Watch::default();
    let mut ticker = tokio::time::interval(POLL);
    let stays_in = format!("its project stays in {}", dir.display());
    let outcome = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            status = up.wait() => {
                // `up` may have seen the end between two looks of ours.
                if watch.finished_at.is_none()
                    && let Ok(Progress::JustFinished(took)) = watch.look(&admin, started).await
                {
                    note!("conclave demo: the scripted team finished in {} s", took.as_secs());
                }
                break match status {
                    Ok(status) if status.success() && watch.finished_at.is_some() => {
                        note!("conclave demo: stopped (--exit-when-done); {stays_in}");
                        Ok(())
                    }
                    Ok(status) if status.success() => Err(anyhow::anyhow!(
                        "conclave up ended before the scripted team finished; {stays_in}"
                    )),
                    Ok(status) => Err(anyhow::anyhow!("conclave up ended with {status}; {stays_in}")),
                    Err(error) => Err(error.into()),
                };
            }
            status = serve.wait() => break Err(anyhow::anyhow!("the demo server stopped unexpectedly ({status:?})")),
            _ = ticker.tick() => {
                match watch.look(&admin, started).await {
                    Ok(Progress::Working) => {}
                    Ok(Progress::JustFinished(took)) if args.exit_when_done => {
                        note!("conclave demo: the scripted team finished in {} s; stopping once the agents are idle", took.as_secs());
                        if args.worktrees {
                            show_landed(&admin, &dir).await;
                        }
                    }
                    Ok(Progress::JustFinished(took)) => {
                        if args.worktrees {
                            show_landed(&admin, &dir).await;
                        }
                        note!(
                            "conclave demo: the scripted team finished in {} s — the dashboard stays up until Ctrl-C; {stays_in}",
                            took.as_secs()
                        );
                    }
                    Ok(Progress::Stuck(why)) => break Err(anyhow::anyhow!(
                        "the scripted team cannot finish: {}; {stays_in}",
                        why.trim_end_matches('.')
                    )),
                    // A slow answer now and then is no reason to stop the demo.
                    Err(error) => tracing::debug!("demo progress: {error:#}"),
                }
                if let Some(finished) = watch.finished_at {
                    if args.exit_when_done && finished.elapsed() > QUIET_LIMIT {
                        note!("conclave demo: the agents did not go idle within {} s; stopping them", QUIET_LIMIT.as_secs());
                        break Ok(());
                    }
                } else if started.elapsed() > TEAM_TIME_LIMIT {
                    break Err(anyhow::anyhow!(
                        "the scripted team did not finish within {} minutes, so the demo stops. Left: {}. \
                         It usually takes under a minute; the dashboard timeline and \
                         `conclave log` in the project say what the agents did; {stays_in}",
                        TEAM_TIME_LIMIT.as_secs() / 60,
                        watch.tasks_left,
                    ));
                }
            }
        }
    };
    stop(&mut up).await;
    stop(&mut serve).await;
    drop(stand_in);
    outcome
}

/// What the demo has seen of the team so far.
#[derive(Debug, Default)]
struct Watch {
    /// The last `agent.text` event looked at.
    last_text_seq: i64,
    /// When every task was first seen done.
    finished_at: Option<Instant>,
    /// The tasks not done yet, for the time-limit message (`T-2 in_progress (coder-2)`).
    tasks_left: String,
}

#[derive(Debug)]
enum Progress {
    Working,
    /// Every task is done, for the first time; how long it took.
    JustFinished(Duration),
    /// A task failed or a scripted agent stopped; why.
    Stuck(String),
}

impl Watch {
    async fn look(&mut self, admin: &Client, started: Instant) -> anyhow::Result<Progress> {
        // A scripted agent that met something the story did not expect says so and stops; the
        // team cannot finish then, so the demo says so now rather than at the time limit.
        let texts: EventList = admin
            .get(
                "/api/events",
                &[
                    // The agents' family: the kind's name is spelled only in the event table.
                    ("kind", Topic::Agent.prefix().to_string()),
                    ("after", self.last_text_seq.to_string()),
                ],
            )
            .await?;
        for event in &texts.events {
            self.last_text_seq = self.last_text_seq.max(event.seq);
            let EventPayload::AgentText(said) = &event.payload else {
                continue;
            };
            if let Some(what) = said.text.strip_prefix(STOP_MARK) {
                let who = event.agent.as_deref().unwrap_or(&event.actor);
                // An alert like any other failure: on the agent's card, the page's strip and in
                // `conclave status`, not only in this terminal.
                let alert = conclave_core::model::NewEvent {
                    agent: who.to_string(),
                    task: None,
                    payload: EventPayload::AgentAlert(conclave_core::event::AgentAlert {
                        cause: "unexpected".to_string(),
                        message: format!("the scripted agent stopped: {what}"),
                    }),
                };
                if let Err(error) = admin
                    .post::<_, serde_json::Value>("/api/events", &alert)
                    .await
                {
                    tracing::warn!(error = %format!("{error:#}"), "cannot record the alert");
                }
                return Ok(Progress::Stuck(format!("{who} stopped: {what}")));
            }
        }
        let list: TaskList = admin.get("/api/tasks", &[]).await?;
        let left: Vec<&Task> = list
            .tasks
            .iter()
            .filter(|task| task.status != TaskStatus::Done)
            .collect();
        if let Some(failed) = left.iter().find(|task| task.status.is_finished()) {
            return Ok(Progress::Stuck(format!(
                "{} is {}{}",
                failed.id,
                failed.status,
                failed
                    .result
                    .as_deref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default()
            )));
        }
        self.tasks_left = left
            .iter()
            .map(|task| match &task.assignee {
                Some(holder) => format!("{} {} ({holder})", task.id, task.status),
                None => format!("{} {}", task.id, task.status),
            })
            .collect::<Vec<_>>()
            .join(", ");
        if left.is_empty() && !list.tasks.is_empty() && self.finished_at.is_none() {
            self.finished_at = Some(Instant::now());
            return Ok(Progress::JustFinished(started.elapsed()));
        }
        Ok(Progress::Working)
    }
}

/// The Claude Code binary to run: the one `conclave claude` would use if it is a version the demo
/// was tried with; else the pinned version from the cache when installed there (unless
/// `CONCLAVE_CLAUDE_BIN` names a binary on purpose); else the one found, with a warning.
async fn choose_claude() -> anyhow::Result<PathBuf> {
    let pinned = pinned_claude_in_cache().await;
    let found = match super::claude::claude_bin() {
        Ok(found) => found,
        Err(error) => {
            return match pinned {
                Some(pinned) => {
                    note!(
                        "conclave demo: using Claude Code {PINNED_CLAUDE_CODE_VERSION} from {}",
                        pinned.display()
                    );
                    Ok(pinned)
                }
                None => Err(error.context(
                    "the demo runs real Claude Code instances: install it with \
                     `npm install -g @anthropic-ai/claude-code@2.1.328` \
                     (or name its binary with CONCLAVE_CLAUDE_BIN)",
                )),
            };
        }
    };
    let version = claude_version(&found).await;
    if version
        .as_deref()
        .is_some_and(|version| TRIED_VERSIONS.contains(&version))
    {
        return Ok(found);
    }
    let described = version.as_deref().unwrap_or("of an unknown version");
    let named_on_purpose = std::env::var_os(CLAUDE_BIN_ENV).is_some_and(|bin| !bin.is_empty());
    let tried = TRIED_VERSIONS.join(", ");
    match pinned {
        Some(pinned) if !named_on_purpose => {
            note!(
                "conclave demo: Claude Code {described} ({}) has not been tried with the demo \
                 (tried: {tried}); using the pinned {PINNED_CLAUDE_CODE_VERSION} from {} instead",
                found.display(),
                pinned.display()
            );
            Ok(pinned)
        }
        _ => {
            note!(
                "conclave demo: warning: Claude Code {described} ({}) has not been tried with the \
                 demo (tried: {tried}); it may refuse a step of the script, and the demo then stops \
                 with what it met. To run a tried version: \
                 npm install -g @anthropic-ai/claude-code@{PINNED_CLAUDE_CODE_VERSION}",
                found.display()
            );
            Ok(found)
        }
    }
}

/// The pinned Claude Code in the cache the tests install it into, if it is there and answers
/// with its version. Never installs anything.
async fn pinned_claude_in_cache() -> Option<PathBuf> {
    let bin = binary_in(&install_dir(PINNED_CLAUDE_CODE_VERSION).ok()?);
    if !bin.is_file() {
        return None;
    }
    let version = claude_version(&bin).await?;
    (version == PINNED_CLAUDE_CODE_VERSION).then_some(bin)
}

/// What `claude --version` says its version is (`2.1.328 (Claude Code)` gives `2.1.328`).
async fn claude_version(bin: &Path) -> Option<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_version(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?;
    first
        .split('.')
        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
        .then(|| first.to_string())
}

/// With `--worktrees`: what the merge queue did, and the integration branch's history, so the
/// demo ends showing the work merged and checked there.
async fn show_landed(admin: &Client, dir: &Path) {
    match admin.get::<QueueView>("/api/queue", &[]).await {
        Ok(queue) => {
            for entry in &queue.entries {
                note!(
                    "conclave demo: {} {} {}",
                    entry.task,
                    entry.state,
                    entry.outcome.as_deref().unwrap_or_default()
                );
            }
        }
        Err(error) => tracing::debug!("demo queue: {error:#}"),
    }
    let log = std::process::Command::new("git")
        .args([
            "log",
            "--oneline",
            "--first-parent",
            DEFAULT_INTEGRATION_BRANCH,
        ])
        .current_dir(dir)
        .output();
    if let Ok(log) = log {
        note!(
            "conclave demo: {DEFAULT_INTEGRATION_BRANCH} now holds:\n{}",
            String::from_utf8_lossy(&log.stdout).trim_end()
        );
    }
}

/// A git repository with a README and a `conclave.toml` whose agents talk to the stand-in; with
/// `worktrees`, the README is committed (the integration branch starts there), every agent
/// works in its own worktree, and `[merge]` checks each branch before it lands.
fn make_project(
    dir: &Path,
    stand_in_url: &str,
    claude: &Path,
    worktrees: bool,
) -> anyhow::Result<()> {
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir)
        .status()
        .context("the demo needs git")?;
    if !git.success() {
        bail!("git init failed in {}", dir.display());
    }
    std::fs::write(
        dir.join("README.md"),
        "# Greetings\n\nA throwaway project made by `conclave demo`.\n",
    )?;
    // A private HOME keeps the person's own Claude Code settings and hooks out of the demo.
    let home = dir.join(".conclave/demo-home");
    std::fs::create_dir_all(&home)?;
    let mut config = String::from(
        "# Made by `conclave demo`: a scripted team (the stand-in plays the model).\n\
         [server]\nclaim_ttl_secs = 600\n\n[defaults]\npermission_mode = \"acceptEdits\"\n\
         model = \"scripted-stand-in\"\nhibernate_after = \"30m\"\n\n",
    );
    for (name, role, key) in DEMO_AGENTS {
        config.push_str(&format!(
            "[[agent]]\nname = \"{name}\"\nrole = \"{role}\"\n\
             env = {{ ANTHROPIC_BASE_URL = \"{stand_in_url}\", ANTHROPIC_API_KEY = \"{key}\", \
             HOME = \"{home}\", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"1\", DISABLE_TELEMETRY = \"1\", \
             DISABLE_AUTOUPDATER = \"1\", DISABLE_ERROR_REPORTING = \"1\", CONCLAVE_CLAUDE_BIN = \"{claude}\" }}\n\n",
            home = home.display(),
            claude = claude.display(),
        ));
    }
    if worktrees {
        config = config.replace("[defaults]\n", "[defaults]\nisolation = \"worktree\"\n");
        // The check every branch passes before it lands: the design is there and every Rust
        // file in the tree has content.
        config.push_str(
            "[merge]\ncheck = \"test -s docs/design.md && for f in $(git ls-files '*.rs'); do test -s \\\"$f\\\" || exit 1; done\"\n\
             check_timeout = \"1m\"\n",
        );
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args([
                    "-c",
                    "user.name=conclave demo",
                    "-c",
                    "user.email=demo@conclave.invalid",
                ])
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        let committed = git(&["add", "README.md"])
            && git(&[
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                "Start of the demo",
            ]);
        if !committed {
            bail!("cannot commit the demo's README in {}", dir.display());
        }
    }
    std::fs::write(dir.join("conclave.toml"), config)?;
    Project::at(dir).ensure_state_dir()?;
    Ok(())
}

/// Starts `conclave ARGS` in the demo project, using `claude` (the binary the demo chose).
fn spawn(
    exe: &Path,
    dir: &Path,
    args: &[&str],
    claude: &Path,
    quiet: bool,
) -> anyhow::Result<Child> {
    let mut command = Command::new(exe);
    // Their own process group: a Ctrl-C in the terminal reaches the demo alone, which then stops
    // `up` (agents first) and the server in order.
    command
        .args(args)
        .env(CLAUDE_BIN_ENV, claude)
        .current_dir(dir)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    command
        .spawn()
        .with_context(|| format!("cannot start conclave {}", args.join(" ")))
}

async fn wait_for_server(project: &Project, serve: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(info) = project.read_server_info()
            && serve.id() == Some(info.pid)
        {
            return Ok(info.url);
        }
        if let Ok(Some(status)) = serve.try_wait() {
            bail!("the demo server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("the demo server did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn seed_tasks(admin: &Client) -> anyhow::Result<()> {
    let mut ids: Vec<String> = Vec::new();
    for (title, role, after) in DEMO_TASKS {
        let after: Vec<&str> = after
            .iter()
            .filter_map(|i| ids.get(*i).map(String::as_str))
            .collect();
        let task: Value = admin
            .post(
                "/api/tasks",
                &json!({ "title": title, "role": role, "after": after }),
            )
            .await?;
        let id = task["id"]
            .as_str()
            .context("the server gave no task id")?
            .to_string();
        note!("conclave demo: task {id} \"{title}\" for role {role}");
        ids.push(id);
    }
    Ok(())
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_first_word() {
        assert_eq!(
            parse_version("2.1.328 (Claude Code)\n").as_deref(),
            Some("2.1.328")
        );
        assert_eq!(parse_version("Claude Code 2.1.328"), None);
        assert_eq!(parse_version(""), None);
    }
}
