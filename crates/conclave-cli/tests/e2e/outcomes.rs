//! How `conclave up` ends, end to end with the real CLI driven by the stand-in: a refused API
//! key fails the team at once (exit 7) with an authentication alert, a client that refuses its
//! flags is quoted and the team fails, a task no agent fits stalls it (exit 6) by name, and
//! cost is reported during a long turn, whose budget stops it in the middle; `up --detach`
//! probes the login before it returns.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use conclave_standin::{Reply, Script};
use serde_json::{Value, json};

use crate::supervisor::{Member, UpTeam, finished, kinds};
use crate::support::{AGENT_TIMEOUT, api_key, events, serial};

/// How long a team that cannot work may take to say so (the CLI would retry a 401 for about
/// three minutes).
const QUICK: Duration = Duration::from_secs(40);

/// `conclave up` run to its end: its exit code and stderr.
async fn up_to_the_end(up_team: &UpTeam) -> Result<(Option<i32>, String, Duration)> {
    let started = Instant::now();
    let mut up = up_team.up(&[])?;
    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok((output.status.code(), stderr, started.elapsed()))
}

fn alerts(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "agent.alert")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_whose_model_refuses_the_key_fails_at_once_with_exit_7() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), |_| {
        Reply::error(401, "authentication_error", "invalid x-api-key")
    });
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let (code, stderr, took) = up_to_the_end(&up_team).await?;
    ensure!(code == Some(7), "exit {code:?}: {stderr}");
    ensure!(took < QUICK, "took {took:?}: {stderr}");
    ensure!(
        stderr.contains("ALERT (authentication)") && stderr.contains("outcome: failed"),
        "{stderr}"
    );
    ensure!(stderr.contains("/login"), "the fix is said: {stderr}");
    let events = events(&up_team.team).await?;
    let status = up_team.team.conclave_json(&["status", "--json"]).await?;
    ensure!(
        status["alerts"].as_i64().is_some_and(|n| n >= 1),
        "counted in status: {status:#}"
    );
    let alert = alerts(&events)
        .into_iter()
        .find(|e| e["data"]["cause"] == "authentication")
        .with_context(|| format!("no authentication alert: {events:#?}"))?;
    ensure!(
        alert["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("authentication failed")),
        "{alert:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_client_refuses_its_flag_is_quoted_and_the_team_fails() -> Result<()> {
    let _serial = serial().await;
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(Script::new(), &members).await? else {
        return Ok(());
    };
    let toml_path = up_team.team.path("conclave.toml");
    let toml = std::fs::read_to_string(&toml_path)?;
    std::fs::write(
        &toml_path,
        toml.replace(
            "permission_mode = \"acceptEdits\"",
            "permission_mode = \"bogus\"",
        ),
    )?;
    let (code, stderr, took) = up_to_the_end(&up_team).await?;
    ensure!(code == Some(7), "exit {code:?}: {stderr}");
    ensure!(took < QUICK, "took {took:?}: {stderr}");
    ensure!(stderr.contains("ALERT (refused)"), "{stderr}");
    // The CLI's own words, from its stderr.log.
    ensure!(stderr.contains("bogus"), "{stderr}");
    let events = events(&up_team.team).await?;
    let refused = alerts(&events)
        .into_iter()
        .find(|e| e["data"]["cause"] == "refused")
        .with_context(|| format!("no refused alert: {events:#?}"))?;
    ensure!(
        refused["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bogus")),
        "{refused:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_with_a_task_nobody_fits_stalls_naming_it_with_exit_6() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent(&api_key("solo"), [Reply::text("Nothing for me.")]);
    let members = [Member {
        name: "solo",
        role: Some("builder"),
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let task = up_team
        .team
        .conclave(&["task", "add", "Review it", "--role", "reviewer"])
        .await?;
    let (code, stderr, _) = up_to_the_end(&up_team).await?;
    ensure!(code == Some(6), "exit {code:?}: {stderr}");
    ensure!(
        stderr.contains("outcome: stalled")
            && stderr.contains("nobody fits it")
            && stderr.contains("reviewer"),
        "{stderr}"
    );
    let id = task.trim();
    ensure!(
        id.is_empty() || stderr.contains(id.split_whitespace().next().unwrap_or(id)),
        "names the task ({id}): {stderr}"
    );
    ensure!(stderr.contains("solo: idle"), "a line per agent: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_grows_during_a_long_turn_and_a_budget_stops_it_in_the_middle() -> Result<()> {
    let _serial = serial().await;
    // Each call reports 100k input tokens of sonnet ($0.30); the turn would take six calls,
    // each slowed so that the cost is seen growing before the turn could end.
    let mut replies: Vec<Reply> = (0..5)
        .map(|_| {
            Reply::tool_use("mcp__conclave__status", json!({}))
                .with_usage(100_000)
                .with_delay(Duration::from_millis(1500))
        })
        .collect();
    replies.push(Reply::text("All done."));
    let script = Script::new().agent(&api_key("solo"), replies);
    let members = [Member {
        name: "solo",
        role: None,
        extra: "model = \"claude-sonnet-4-5\"\nbudget_usd = 0.5\n",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let up = up_team.up(&[])?;
    let during = up_team
        .wait_agent("solo", "a cost reported during the turn", |agent| {
            agent["cost_usd"].as_f64().is_some_and(|cost| cost > 0.0)
        })
        .await?;
    let turns_so_far = kinds(&events(&up_team.team).await?, "solo")
        .iter()
        .filter(|kind| *kind == "agent.turn")
        .count();
    ensure!(
        turns_so_far == 0,
        "the cost was reported before any turn ended: {during:#}"
    );
    let stderr = finished(up).await?;
    let agent = up_team.agent("solo").await?;
    ensure!(agent["status"] == "stopped", "{agent:#}\n{stderr}");
    ensure!(
        agent["cost_usd"].as_f64().is_some_and(|cost| cost >= 0.5),
        "{agent:#}"
    );
    let events = events(&up_team.team).await?;
    let solo = kinds(&events, "solo");
    let exceeded = solo
        .iter()
        .position(|kind| kind == "agent.budget_exceeded")
        .with_context(|| format!("no budget_exceeded: {solo:?}"))?;
    ensure!(
        !solo[..exceeded].iter().any(|kind| kind == "agent.turn"),
        "stopped in the middle of its first turn: {solo:?}"
    );
    ensure!(
        up_team.requests("solo").len() < 6,
        "the turn did not run to its end"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_detach_probes_the_login_and_reports_a_refused_key_before_returning() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), |_| {
        Reply::error(401, "authentication_error", "invalid x-api-key")
    });
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let started = Instant::now();
    let mut up = up_team.up(&["--detach"])?;
    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.code() == Some(7),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(started.elapsed() < QUICK, "{stderr}");
    ensure!(
        stderr.contains("authentication failed") && stderr.contains("/login"),
        "{stderr}"
    );
    ensure!(
        !up_team.team.path(".conclave/supervisor.json").exists(),
        "nothing went to the background"
    );
    Ok(())
}
