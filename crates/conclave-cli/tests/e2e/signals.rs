//! Signals to `conclave up` with a team at work: a second Ctrl-C ends `up` at once, and with it
//! the agents' process groups (which a Ctrl-C in the terminal does not reach).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use conclave_standin::{Gate, Reply, Script};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::supervisor::{Member, UpTeam};
use crate::support::{api_key, serial};

/// Whether `pid` has ended (gone, or a zombie waiting for its new parent to reap it).
fn has_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_up_at_once_and_kills_the_agents_process_groups() -> Result<()> {
    let _serial = serial().await;
    // The agent's first model call is held: it is mid-turn, and a graceful stop would give it
    // seconds before any signal.
    let gate = Gate::new();
    let script = Script::new()
        .agent(&api_key("solo"), [Reply::text("Held.").held_by(&gate)])
        .agent_fn(&api_key("solo"), |_| Reply::text("Noted."));
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let mut up = up_team.up(&["--stay"])?;
    up_team
        .wait_requests("solo", "the first model call", |requests| {
            !requests.is_empty()
        })
        .await?;
    let agent = up_team
        .wait_agent("solo", "its pid recorded", |agent| agent["pid"].is_i64())
        .await?;
    let agent_pid = i32::try_from(agent["pid"].as_i64().context("pid")?)?;
    let up_pid = Pid::from_raw(i32::try_from(up.id().context("up's pid")?)?);

    kill(up_pid, Signal::SIGINT)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!has_ended(agent_pid), "the first signal is a graceful stop");
    kill(up_pid, Signal::SIGINT)?;
    let status = up.wait(Duration::from_secs(10)).await?;
    ensure!(status.code() == Some(130), "up ended with {status}");

    let started = Instant::now();
    while !has_ended(agent_pid) {
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "the agent (pid {agent_pid}) outlived the second signal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate.open();
    Ok(())
}
