//! `conclave up` from the outside: control requests (`conclave agent pause|resume|restart|stop`),
//! `up` serving the project itself when no server runs, `up --detach` with `down`, and
//! `conclave attach` following an agent's turn live.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use conclave_standin::{Gate, Reply, Script};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::supervisor::{Member, UpTeam, after_first_turn, context_text, finished, kinds};
use crate::support::{AGENT_TIMEOUT, AgentProcess, BIN, Team, api_key, events, serial};

/// How long a negative check ("nothing happens") watches.
const QUIET: Duration = Duration::from_secs(3);

fn solo(extra: &'static str) -> [Member; 1] {
    [Member {
        name: "solo",
        role: None,
        extra,
    }]
}

fn pid_of(agent: &Value) -> Result<i32> {
    let pid = agent["pid"]
        .as_i64()
        .with_context(|| format!("no pid: {agent:#}"))?;
    Ok(i32::try_from(pid)?)
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Polls until `pid` has ended.
async fn wait_ended(pid: i32, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    while !ended(pid) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} (pid {pid}) still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Polls until `path` exists and parses as JSON.
async fn wait_json_file(path: &Path) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(value) = serde_json::from_str(&text)
        {
            return Ok(value);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_control_pauses_resumes_restarts_and_stops_an_agent() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), |_| Reply::text("Noted."));
    let Some(up_team) = UpTeam::start(script, &solo("")).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let up = up_team.up(&["--stay"])?;
    let first = up_team
        .wait_agent("solo", "idle after its first turn", after_first_turn)
        .await?;
    let session = first["session_id"]
        .as_str()
        .context("no session id")?
        .to_string();
    let first_pid = pid_of(&first)?;

    // Paused: a message does not wake it.
    team.conclave(&["agent", "pause", "solo"]).await?;
    up_team
        .wait_agent("solo", "paused", |a| a["status"] == "paused")
        .await?;
    let before = up_team.requests("solo").len();
    let message = "the release notes need a line about pausing";
    team.conclave(&["msg", "send", "solo", message]).await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        up_team.requests("solo").len(),
        before,
        "a paused agent was woken"
    );
    let agent = up_team.agent("solo").await?;
    assert_eq!(agent["status"], "paused", "{agent:#}");
    assert_eq!(pid_of(&agent)?, first_pid, "{agent:#}");

    // Resumed: the message that waited wakes it.
    team.conclave(&["agent", "resume", "solo"]).await?;
    up_team
        .wait_requests(
            "solo",
            "a turn quoting the waiting message",
            move |requests| {
                requests.len() > before
                    && requests[before..]
                        .iter()
                        .any(|r| context_text(r).contains(message))
            },
        )
        .await?;
    up_team
        .wait_agent("solo", "idle after the woken turn", |a| {
            a["status"] == "idle"
        })
        .await?;

    // Restarted: a new process that resumes the session.
    let before = up_team.requests("solo").len();
    team.conclave(&["agent", "restart", "solo"]).await?;
    let restarted = up_team
        .wait_agent("solo", "a new process, idle again", |a| {
            a["pid"]
                .as_i64()
                .is_some_and(|pid| pid != i64::from(first_pid))
                && a["status"] == "idle"
        })
        .await?;
    let second_pid = pid_of(&restarted)?;
    wait_ended(first_pid, "the process before the restart").await?;
    let requests = up_team.requests("solo");
    ensure!(requests.len() > before, "no turn after the restart");
    assert_eq!(
        requests[before].session_id(),
        Some(session.as_str()),
        "the restart did not resume the session"
    );

    // Stopped: its process ends.
    team.conclave(&["agent", "stop", "solo"]).await?;
    up_team
        .wait_agent("solo", "stopped", |a| a["status"] == "stopped")
        .await?;
    wait_ended(second_pid, "the stopped agent's process").await?;
    // A stopped agent has no live process, so no pid.
    let stopped = up_team.agent("solo").await?;
    assert_eq!(stopped["status"], "stopped", "{stopped:#}");
    assert!(stopped["pid"].is_null(), "{stopped:#}");

    team.conclave(&["down"]).await?;
    finished(up).await?;
    let events = events(team).await?;
    let kinds = kinds(&events, "solo");
    for kind in [
        "agent.control",
        "agent.woken",
        "agent.restarted",
        "agent.exited",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    let controls: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "agent.control")
        .filter_map(|e| e["data"]["action"].as_str())
        .collect();
    assert_eq!(controls, ["pause", "resume", "restart", "stop"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_project_itself_and_down_stops_it() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), |_| Reply::text("Ready."));
    let Some(up_team) = UpTeam::start_with(script, &solo(""), false).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    ensure!(
        !team.path(".conclave/server.json").exists(),
        "a server runs already"
    );
    let up = up_team.up(&["--stay"])?;
    let up_pid = up.id().context("conclave up exited at once")?;
    let info = wait_json_file(&team.path(".conclave/server.json")).await?;
    assert_eq!(info["pid"], up_pid, "{info:#}");
    let address = info["url"]
        .as_str()
        .context("no url")?
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // Other commands work against it while `up` runs.
    let agent = up_team
        .wait_agent("solo", "idle after its first turn", after_first_turn)
        .await?;
    let agent_pid = pid_of(&agent)?;
    let task = team.conclave(&["task", "add", "Served in-process"]).await?;
    let shown = team
        .conclave_json(&["task", "show", &task, "--json"])
        .await?;
    assert_eq!(shown["title"], "Served in-process", "{shown:#}");
    team.conclave(&["status"]).await?;

    team.conclave(&["down"]).await?;
    let stderr = finished(up).await?;
    assert!(stderr.contains("server stopped"), "{stderr}");
    assert!(ended(agent_pid), "the agent still runs");
    assert!(
        !team.path(".conclave/server.json").exists(),
        "server.json is left behind"
    );
    assert!(
        !team.path(".conclave/supervisor.json").exists(),
        "supervisor.json is left behind"
    );
    ensure!(
        std::net::TcpStream::connect(&address).is_err(),
        "{address} still accepts connections"
    );
    Ok(())
}

/// Ends a detached supervisor that a failed test left running.
struct Detached(Option<i32>);

impl Drop for Detached {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        if ended(pid) {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        for _ in 0..100 {
            if ended(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_detach_runs_the_team_in_the_background_until_down() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), |_| Reply::text("In the background."));
    let Some(up_team) = UpTeam::start(script, &solo("")).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let mut up = up_team.up(&["--detach", "--stay"])?;
    let output = up.finish(Duration::from_secs(30)).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(output.status.success(), "up --detach failed: {stderr}");
    let info = wait_json_file(&team.path(".conclave/supervisor.json")).await?;
    let pid = i32::try_from(info["pid"].as_i64().context("no pid")?)?;
    let _guard = Detached(Some(pid));
    assert!(stderr.contains(&pid.to_string()), "{stderr}");
    assert!(!ended(pid), "the background supervisor is not running");

    let agent = up_team
        .wait_agent("solo", "idle after its first turn", after_first_turn)
        .await?;
    let agent_pid = pid_of(&agent)?;
    let log_path = team.path(".conclave/supervisor.log");
    let log = std::fs::read_to_string(&log_path).context("no supervisor.log")?;
    assert!(log.contains("started solo"), "{log}");

    team.conclave(&["down"]).await?;
    wait_ended(pid, "the background supervisor").await?;
    wait_ended(agent_pid, "its agent").await?;
    assert!(!team.path(".conclave/supervisor.json").exists());
    // `down` stopped the server too (agents first, then the server): read the store directly.
    assert!(
        !team.path(".conclave/server.json").exists(),
        "the server still runs"
    );
    let store = conclave_core::Store::open(
        &team.path(".conclave/conclave.db"),
        conclave_core::StoreConfig::default(),
    )?;
    let agent = store.read(|r| r.agent("solo"))?;
    assert_ne!(
        agent.status,
        conclave_core::model::AgentStatus::Idle,
        "{agent:?}"
    );
    let log = std::fs::read_to_string(&log_path)?;
    assert!(log.contains("stopping the team"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_prints_an_agents_tool_calls_and_text_as_it_works() -> Result<()> {
    let _serial = serial().await;
    let gate = Gate::new();
    let said = "attach probe: all clear";
    let script = Script::new()
        .agent(
            &api_key("solo"),
            [
                Reply::tool_use("mcp__conclave__status", json!({})).held_by(&gate),
                Reply::text(said),
            ],
        )
        .agent_fn(&api_key("solo"), |_| Reply::text("Noted."));
    let Some(up_team) = UpTeam::start(script, &solo("")).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let up = up_team.up(&["--stay"])?;
    // The first model call is held: the agent is mid-turn when attach starts.
    up_team
        .wait_requests("solo", "the first model call", |requests| {
            !requests.is_empty()
        })
        .await?;
    let mut command = Command::new(BIN);
    command
        .args(["attach", "solo"])
        .current_dir(team.root())
        .env_remove("CONCLAVE_URL")
        .env_remove("CONCLAVE_AGENT")
        .env_remove("CONCLAVE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut attach = AgentProcess::spawn(command)?;
    let mut lines = attach.stdout_lines()?;
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(AGENT_TIMEOUT, async {
        let mut opened = false;
        while let Some(line) = lines.next_line().await? {
            seen.push(line.clone());
            // Attach follows the stream by now: let the turn go on.
            if !opened && line.starts_with("── turn in session") {
                gate.open();
                opened = true;
            }
            let all = seen.join("\n");
            if all.contains("→ mcp__conclave__status")
                && all.contains(said)
                && all.contains("── turn ended")
            {
                return Ok(opened);
            }
        }
        bail!("attach ended")
    })
    .await;
    gate.open();
    let opened = match outcome {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => bail!("{error:#}; attach printed:\n{}", seen.join("\n")),
        Err(_) => bail!("attach printed, in time:\n{}", seen.join("\n")),
    };
    assert!(
        opened,
        "the turn's start was not printed:\n{}",
        seen.join("\n")
    );
    drop(attach);
    team.conclave(&["down"]).await?;
    finished(up).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_detach_reports_a_team_that_cannot_start_before_going_to_the_background() -> Result<()> {
    let _serial = serial().await;
    let team = Team::create().await?;
    std::fs::write(
        team.path("conclave.toml"),
        "[[agent]]\nname = \"ghost\"\ncommand = \"no-such-agent-cli\"\n",
    )?;
    let mut command = Command::new(BIN);
    command
        .args(["up", "--detach"])
        .current_dir(team.root())
        .env_remove("CONCLAVE_CLAUDE_BIN")
        .env_remove("CONCLAVE_URL")
        .env_remove("CONCLAVE_AGENT")
        .env_remove("CONCLAVE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut up = AgentProcess::spawn(command)?;
    let output = up.finish(Duration::from_secs(30)).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-agent-cli"), "{stderr}");
    assert!(!team.path(".conclave/supervisor.json").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_paused_mid_turn_stays_paused_after_the_turn_and_can_be_stopped() -> Result<()> {
    let _serial = serial().await;
    let gate = Gate::new();
    let script = Script::new()
        .agent(
            &api_key("solo"),
            [Reply::text("A long first turn.").held_by(&gate)],
        )
        .agent_fn(&api_key("solo"), |_| Reply::text("Noted."));
    let Some(up_team) = UpTeam::start(script, &solo("")).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let up = up_team.up(&["--stay"])?;
    up_team
        .wait_requests("solo", "the first model call", |requests| {
            !requests.is_empty()
        })
        .await?;
    team.conclave(&["agent", "pause", "solo"]).await?;
    up_team
        .wait_agent("solo", "paused mid-turn", |a| a["status"] == "paused")
        .await?;
    gate.open();
    // The turn ends (its window is recorded) and the agent is still paused.
    let agent = up_team
        .wait_agent("solo", "the turn's end recorded", |a| {
            a["context_window"].is_i64()
        })
        .await?;
    assert_eq!(agent["status"], "paused", "{agent:#}");
    let pid = pid_of(&agent)?;
    let before = up_team.requests("solo").len();
    team.conclave(&["msg", "send", "solo", "are you there?"])
        .await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        up_team.requests("solo").len(),
        before,
        "a paused agent was woken"
    );
    assert_eq!(up_team.agent("solo").await?["status"], "paused");

    team.conclave(&["agent", "stop", "solo"]).await?;
    up_team
        .wait_agent("solo", "stopped", |a| a["status"] == "stopped")
        .await?;
    wait_ended(pid, "the stopped agent's process").await?;
    assert_eq!(
        up_team.requests("solo").len(),
        before,
        "stopping made a call"
    );
    team.conclave(&["down"]).await?;
    finished(up).await?;
    Ok(())
}
