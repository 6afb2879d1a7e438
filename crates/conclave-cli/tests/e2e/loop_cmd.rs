//! `conclave loop` end to end: a fresh real Claude Code per iteration (driven by the stand-in),
//! run as the registered agent `loop` against a real `conclave serve`, with the check run after
//! each iteration; the iterations land in the event log and the exit code says why it ended.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::{CliEnv, claude_or_skip};
use conclave_standin::{RecordedRequest, Reply, Script, StandIn};
use serde_json::{Value, json};

use crate::support::{AGENT_TIMEOUT, BIN, Team, api_key, events, serial};

/// A model that, in each fresh session, writes the session's number to `count`, then ends its
/// turn; the prompts it was given are kept (the second onwards quote the previous iteration).
fn counting_model(root: &Path) -> (Script, Arc<Mutex<Vec<String>>>) {
    let sessions = Arc::new(AtomicUsize::new(0));
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let count_file = root.join("count").to_string_lossy().into_owned();
    let seen = prompts.clone();
    let script = Script::new().agent_fn(&api_key("loop"), move |request: &RecordedRequest| {
        if request.tool_results().is_empty() {
            let number = sessions.fetch_add(1, Ordering::SeqCst) + 1;
            if let Ok(mut prompts) = seen.lock() {
                prompts.push(request.user_prompt().unwrap_or_default());
            }
            Reply::tool_use(
                "Write",
                json!({"file_path": count_file, "content": format!("{number}\n")}),
            )
        } else {
            Reply::text("Counted one more.")
        }
    });
    (script, prompts)
}

/// Runs `conclave loop ARGS` in the project; returns its exit code and stderr.
async fn run_loop(
    team: &Team,
    env: &CliEnv,
    claude: &Path,
    args: &[&str],
) -> Result<(i32, String)> {
    std::fs::write(team.path("prompt.md"), "Add one to the count.\n")?;
    let mut command = env.command(Path::new(BIN));
    command
        .args([
            "loop",
            "--prompt",
            "prompt.md",
            "--permission-mode",
            "acceptEdits",
        ])
        .args(args)
        .current_dir(team.root())
        .env("CONCLAVE_CLAUDE_BIN", claude)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(AGENT_TIMEOUT * 2, command.output())
        .await
        .context("conclave loop did not finish in time")??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok((output.status.code().unwrap_or(-1), stderr))
}

fn iterations(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "agent.iteration" && e["agent"] == "loop")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_runs_until_the_check_passes_on_the_third_iteration() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    let (script, prompts) = counting_model(team.root());
    let stand_in = StandIn::start(script).await?;
    let env = CliEnv::new(&stand_in.url(), &api_key("loop"))?;
    let (code, stderr) = run_loop(
        &team,
        &env,
        &claude,
        &["--until", "test \"$(cat count)\" -ge 3", "--max", "5"],
    )
    .await?;
    ensure!(code == 0, "exit {code}: {stderr}");
    ensure!(
        stderr.contains("the check passed: 3 iterations, $"),
        "no total: {stderr}"
    );
    ensure!(
        stderr.contains("iteration 3:"),
        "no line per iteration: {stderr}"
    );

    let events = events(&team).await?;
    let iterations = iterations(&events);
    ensure!(iterations.len() == 3, "iterations: {iterations:?}");
    let checks: Vec<&Value> = iterations
        .iter()
        .map(|e| &e["data"]["check_exit"])
        .collect();
    ensure!(
        checks == [&json!(1), &json!(1), &json!(0)],
        "checks: {checks:?}"
    );
    ensure!(
        iterations
            .iter()
            .all(|e| e["data"]["turns"].as_i64() >= Some(1)),
        "turns: {iterations:?}"
    );
    ensure!(
        iterations
            .iter()
            .all(|e| e["data"]["cost_usd"].as_f64() > Some(0.0)),
        "cost: {iterations:?}"
    );

    // Each iteration is a fresh session given the prompt and the state; the second hears how
    // the first went.
    let prompts = prompts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    ensure!(prompts.len() == 3, "sessions: {prompts:?}");
    ensure!(
        prompts[0].contains("Add one to the count.") && prompts[0].contains("Ready tasks: 0"),
        "first prompt: {}",
        prompts[0]
    );
    ensure!(
        prompts[1].contains("## Iteration 1") && prompts[1].contains("The check exited 1"),
        "second prompt: {}",
        prompts[1]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_stops_after_max_iterations_with_exit_6_when_the_check_keeps_failing() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    let (script, _) = counting_model(team.root());
    let stand_in = StandIn::start(script).await?;
    let env = CliEnv::new(&stand_in.url(), &api_key("loop"))?;
    let (code, stderr) =
        run_loop(&team, &env, &claude, &["--until", "false", "--max", "2"]).await?;
    ensure!(code == 6, "exit {code}: {stderr}");
    ensure!(
        stderr.contains("the iterations ran out: 2 iterations"),
        "{stderr}"
    );
    let events = events(&team).await?;
    ensure!(iterations(&events).len() == 2, "events: {events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_exits_7_when_no_iteration_can_run() -> Result<()> {
    let _serial = serial().await;
    let team = Team::start().await?;
    let env = CliEnv::new("http://127.0.0.1:9", &api_key("loop"))?;
    let missing = team.path("no-such-claude");
    let (code, stderr) =
        run_loop(&team, &env, &missing, &["--until", "true", "--max", "3"]).await?;
    ensure!(code == 7, "exit {code}: {stderr}");
    ensure!(stderr.contains("no iteration could run"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_running_iteration_records_it_and_exits_130() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    // The model takes far longer than the test waits: only the interrupt can end it.
    let script = Script::new().agent_fn(&api_key("loop"), |_: &RecordedRequest| {
        Reply::text("Thinking...").with_delay(std::time::Duration::from_secs(60))
    });
    let stand_in = StandIn::start(script).await?;
    let env = CliEnv::new(&stand_in.url(), &api_key("loop"))?;
    std::fs::write(team.path("prompt.md"), "Think.\n")?;
    let mut command = env.command(Path::new(BIN));
    command
        .args([
            "loop",
            "--prompt",
            "prompt.md",
            "--until",
            "false",
            "--max",
            "3",
        ])
        .current_dir(team.root())
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command.spawn()?;
    let pid = child.id().context("no pid")?;
    stand_in
        .stand_in()
        .wait_for("the first model call", AGENT_TIMEOUT, |requests| {
            requests
                .iter()
                .any(|r| r.api_key() == Some(&api_key("loop")))
        })
        .await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let output = tokio::time::timeout(AGENT_TIMEOUT, child.wait_with_output())
        .await
        .context("conclave loop did not stop after Ctrl-C")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(130),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(stderr.contains("interrupted: 1 iteration"), "{stderr}");
    let events = events(&team).await?;
    let iterations = iterations(&events);
    ensure!(iterations.len() == 1, "iterations: {iterations:?}");
    ensure!(
        iterations[0]["data"]["outcome"] == "interrupted",
        "{:?}",
        iterations[0]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_stops_with_exit_6_once_the_budget_is_spent() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    let (script, _) = counting_model(team.root());
    let stand_in = StandIn::start(script).await?;
    let env = CliEnv::new(&stand_in.url(), &api_key("loop"))?;
    // Any real iteration costs more than this, so the first one spends the budget.
    let (code, stderr) = run_loop(
        &team,
        &env,
        &claude,
        &["--until", "false", "--budget", "0.000001"],
    )
    .await?;
    ensure!(code == 6, "exit {code}: {stderr}");
    ensure!(
        stderr.contains("the budget is spent: 1 iteration"),
        "{stderr}"
    );
    Ok(())
}

/// The admin's client of the team's server (what the dashboard's buttons call).
fn admin(team: &Team) -> Result<conclave_client::Client> {
    let project = conclave_core::project::Project::at(team.root());
    let token = project
        .read_admin_token()?
        .context("no admin token in the project")?;
    conclave_client::Client::new(format!("http://{}", team.server()?.address()), token, None)
}

/// Waits until the loop asks for iteration `next`; answers nothing.
async fn waiting_for(client: &conclave_client::Client, next: u32) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    loop {
        let list: Value = client
            .get("/api/confirmations", &[("waiting", "true".to_string())])
            .await?;
        if let Some(waiting) = list["confirmations"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["next_iteration"] == next))
        {
            return Ok(waiting.clone());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the loop never asked for iteration {next}: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_waits_for_a_person_through_the_api_who_edits_the_prompt_then_stops_it()
-> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    let (script, prompts) = counting_model(team.root());
    let stand_in = StandIn::start(script).await?;
    let env = CliEnv::new(&stand_in.url(), &api_key("loop"))?;
    std::fs::write(team.path("prompt.md"), "Add one to the count.\n")?;
    let mut command = env.command(Path::new(BIN));
    command
        .args(["loop", "--prompt", "prompt.md", "--confirm", "--max", "5"])
        .args(["--until", "false", "--permission-mode", "acceptEdits"])
        .current_dir(team.root())
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        // No terminal: only the API answers.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command.spawn()?;
    let client = admin(&team)?;

    let asked = waiting_for(&client, 2).await?;
    ensure!(
        asked["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("iteration 1:") && s.contains("check exit 1")),
        "summary: {asked}"
    );
    let status = team.conclave(&["status"]).await?;
    ensure!(
        status.contains("decisions waiting: 1 (1 loop confirmation(s))"),
        "counted in status: {status}"
    );
    // Nothing runs while it waits.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    ensure!(
        prompts
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .len()
            == 1,
        "an iteration ran without confirmation"
    );
    let answer: Value = client
        .post(
            "/api/agents/loop/confirm",
            &json!({"decision": "continue", "prompt": "Count once more, carefully."}),
        )
        .await?;
    ensure!(answer["decision"] == "continue", "{answer}");

    waiting_for(&client, 3).await?;
    let _: Value = client
        .post("/api/agents/loop/confirm", &json!({"decision": "stop"}))
        .await?;
    let output = tokio::time::timeout(AGENT_TIMEOUT, child.wait_with_output())
        .await
        .context("conclave loop did not end after stop")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(6),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("iteration 2 waits for you")
            && stderr.contains("stopped by admin before the next iteration: 2 iterations"),
        "{stderr}"
    );
    let prompts = prompts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    ensure!(prompts.len() == 2, "sessions: {prompts:?}");
    ensure!(
        prompts[1].contains("Count once more, carefully.")
            && !prompts[1].contains("Add one to the count."),
        "the edited prompt: {}",
        prompts[1]
    );
    let events = events(&team).await?;
    let decisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "agent.confirmed")
        .map(|e| &e["data"]["decision"])
        .collect();
    ensure!(
        decisions == [&json!("continue"), &json!("stop")],
        "{decisions:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_answered_in_the_terminal_is_recorded_like_the_dashboards() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    let (script, _) = counting_model(team.root());
    let stand_in = StandIn::start(script).await?;
    let env = CliEnv::new(&stand_in.url(), &api_key("loop"))?;
    std::fs::write(team.path("prompt.md"), "Add one to the count.\n")?;
    let mut command = env.command(Path::new(BIN));
    command
        .args(["loop", "--prompt", "prompt.md", "--confirm", "--max", "2"])
        .args(["--until", "false", "--permission-mode", "acceptEdits"])
        .current_dir(team.root())
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let client = admin(&team)?;
    waiting_for(&client, 2).await?;
    // Enter continues.
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"\n").await?;
    let output = tokio::time::timeout(AGENT_TIMEOUT, child.wait_with_output())
        .await
        .context("conclave loop did not end")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(6),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("the iterations ran out: 2 iterations"),
        "{stderr}"
    );
    let events = events(&team).await?;
    let answered: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "agent.confirmed")
        .collect();
    ensure!(
        answered.len() == 1 && answered[0]["data"]["decision"] == "continue",
        "{answered:?}"
    );
    Ok(())
}
