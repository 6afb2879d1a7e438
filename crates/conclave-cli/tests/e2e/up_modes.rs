//! `conclave up` beyond a plain team, end to end with the real CLI driven by the stand-in: a
//! `mode = "loop"` agent works the board one task per fresh session beside the team, and the
//! team's total budget (`[defaults] team_budget_usd`) stops every agent with an alert, the work
//! left making the outcome `stalled` (exit 6).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use conclave_standin::{RecordedRequest, Reply, Script};
use serde_json::{Value, json};

use crate::supervisor::{Member, UpTeam, worker};
use crate::support::{AGENT_TIMEOUT, api_key, events, serial};

/// A team of one loop agent, "fixer" (role "fixer"), its `[[agent]]` lines `extra`, each model call
/// answered by the stand-in's worker; `None` when the test is skipped.
async fn fixer_loop(extra: &'static str) -> Result<Option<UpTeam>> {
    fixer_loop_with(Script::new().agent_fn(&api_key("fixer"), worker), extra).await
}

/// [`fixer_loop`] with a script of the test's own.
async fn fixer_loop_with(script: Script, extra: &'static str) -> Result<Option<UpTeam>> {
    let members = [Member {
        name: "fixer",
        role: Some("fixer"),
        extra,
    }];
    UpTeam::start(script, &members).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_agent_in_up_claims_one_task_per_iteration_and_the_team_finishes() -> Result<()> {
    let _serial = serial().await;
    let Some(up_team) = fixer_loop("mode = \"loop\"\nmax_iterations = 5\n").await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let mut ids = Vec::new();
    for title in ["Fix the parser", "Fix the printer"] {
        ids.push(
            team.conclave(&["task", "add", title, "--role", "fixer"])
                .await?,
        );
    }
    let mut up = up_team.up(&[])?;
    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.code() == Some(0),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(stderr.contains("outcome: finished"), "{stderr}");
    ensure!(
        stderr.contains("fixer: loop, no task is left for it: 2 iteration(s)"),
        "the loop's line in the outcome: {stderr}"
    );
    for id in &ids {
        let task = team.conclave_json(&["task", "show", id, "--json"]).await?;
        ensure!(task["status"] == "done", "{task:#}");
        ensure!(task["assignee"] == "fixer", "{task:#}");
    }
    let events = events(team).await?;
    let iterations: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "agent.iteration" && e["agent"] == "fixer")
        .collect();
    ensure!(
        iterations.len() == 2,
        "one iteration per task: {iterations:#?}"
    );
    // Each iteration is a fresh session: two first requests without tool results.
    let fresh = up_team
        .requests("fixer")
        .iter()
        .filter(|r| r.tool_results().is_empty())
        .count();
    ensure!(fresh == 2, "fresh sessions: {fresh}");
    Ok(())
}

/// A model that claims a task, then keeps working on it (a status call every second, each
/// reporting 100k input tokens of sonnet, $0.30): only a budget ends it.
fn busy_forever(request: &RecordedRequest) -> Reply {
    let reply = if request.tool_results().is_empty() {
        Reply::tool_use("mcp__conclave__claim", json!({}))
    } else {
        Reply::tool_use("mcp__conclave__status", json!({}))
    };
    reply
        .with_usage(100_000)
        .with_delay(Duration::from_millis(1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_budget_stops_every_agent_with_an_alert_and_the_team_stalls() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new()
        .agent_fn(&api_key("a"), busy_forever)
        .agent_fn(&api_key("b"), busy_forever);
    let members = [
        Member {
            name: "a",
            role: None,
            extra: "model = \"claude-sonnet-4-5\"\n",
        },
        Member {
            name: "b",
            role: None,
            extra: "model = \"claude-sonnet-4-5\"\n",
        },
    ];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let toml_path = team.path("conclave.toml");
    let toml = std::fs::read_to_string(&toml_path)?;
    std::fs::write(
        &toml_path,
        format!("[defaults]\nteam_budget_usd = 1.0\n\n{toml}"),
    )?;
    for title in ["First job", "Second job"] {
        team.conclave(&["task", "add", title]).await?;
    }
    let mut up = up_team.up(&[])?;
    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.code() == Some(6),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("ALERT (team_budget)") && stderr.contains("outcome: stalled"),
        "{stderr}"
    );
    ensure!(
        stderr.contains("the team's budget of $1.00 is spent"),
        "why each agent stopped: {stderr}"
    );
    let events = events(team).await?;
    let alert = events
        .iter()
        .find(|e| e["kind"] == "agent.alert" && e["data"]["cause"] == "team_budget")
        .with_context(|| format!("no team_budget alert: {events:#?}"))?;
    ensure!(
        alert["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("team_budget_usd")),
        "{alert:#}"
    );
    let mut total = 0.0;
    for name in ["a", "b"] {
        let agent = up_team.agent(name).await?;
        ensure!(agent["status"] == "stopped", "{agent:#}");
        total += agent["cost_usd"].as_f64().unwrap_or(0.0);
    }
    // Stopped as the budget was reached, not long after: within one more call per agent.
    ensure!(
        (1.0..=1.0 + 2.0 * 0.31).contains(&total),
        "the team spent {total}"
    );
    Ok(())
}

/// Polls `conclave task show ID --json` until `check` holds.
async fn wait_task(
    team: &crate::support::Team,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    loop {
        let task = team.conclave_json(&["task", "show", id, "--json"]).await?;
        if check(&task) {
            return Ok(task);
        }
        ensure!(tokio::time::Instant::now() < deadline, "{what}: {task:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_agents_rejected_task_is_taken_up_again_by_its_next_iteration() -> Result<()> {
    let _serial = serial().await;
    let Some(up_team) = fixer_loop("mode = \"loop\"\nmax_iterations = 4\n").await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let id = team
        .conclave(&[
            "task",
            "add",
            "Fix the parser",
            "--role",
            "fixer",
            "--approve",
        ])
        .await?;
    let up = up_team.up(&[])?;
    wait_task(team, &id, "the first finish waits for approval", |task| {
        task["awaiting_approval"] == true
    })
    .await?;
    team.conclave(&[
        "task",
        "reject",
        &id,
        "--comment",
        "Handle empty input too.",
    ])
    .await?;
    wait_task(team, &id, "the second finish waits for approval", |task| {
        task["awaiting_approval"] == true && task["attempts"].as_i64() >= Some(1)
    })
    .await?;
    // Long enough for the loop to look at the board (every 2 s) and say what it waits for.
    tokio::time::sleep(Duration::from_secs(5)).await;
    team.conclave(&["task", "approve", &id]).await?;
    let stderr = crate::supervisor::finished(up).await?;
    ensure!(stderr.contains("outcome: finished"), "{stderr}");
    ensure!(
        stderr.contains(&format!(
            "fixer waits: no ready task fits it; {id} waits for a person's approval"
        )),
        "says what the loop waits for: {stderr}"
    );
    let task = team.conclave_json(&["task", "show", &id, "--json"]).await?;
    ensure!(task["status"] == "done", "{task:#}");
    let events = events(team).await?;
    let iterations = events
        .iter()
        .filter(|e| e["kind"] == "agent.iteration" && e["agent"] == "fixer")
        .count();
    ensure!(iterations == 2, "one iteration per attempt: {iterations}");
    Ok(())
}

/// The admin's client of the team's server (what the dashboard's buttons call).
fn admin(team: &crate::support::Team) -> Result<conclave_client::Client> {
    let project = conclave_core::project::Project::at(team.root());
    let token = project
        .read_admin_token()?
        .context("no admin token in the project")?;
    conclave_client::Client::new(format!("http://{}", team.server()?.address()), token, None)
}

/// Waits until loop `agent` asks a person before iteration `next`; answers nothing.
async fn asked_before(client: &conclave_client::Client, agent: &str, next: u32) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    loop {
        let query = [
            ("agent", agent.to_string()),
            ("waiting", "true".to_string()),
        ];
        let list: Value = client.get("/api/confirmations", &query).await?;
        if let Some(waiting) = list["confirmations"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["next_iteration"] == next))
        {
            return Ok(waiting.clone());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{agent} never asked before iteration {next}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_agent_with_confirm_waits_for_a_person_who_adds_instructions_then_stops_it()
-> Result<()> {
    let _serial = serial().await;
    let Some(up_team) = fixer_loop("mode = \"loop\"\nmax_iterations = 5\nconfirm = true\n").await?
    else {
        return Ok(());
    };
    let team = &up_team.team;
    for title in ["Fix the parser", "Fix the printer", "Fix the linker"] {
        team.conclave(&["task", "add", title, "--role", "fixer"])
            .await?;
    }
    let mut up = up_team.up(&[])?;
    let client = admin(team)?;

    let asked = asked_before(&client, "fixer", 2).await?;
    ensure!(
        asked["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("iteration 1:")),
        "{asked}"
    );
    // Nothing runs while it waits: one fresh session so far.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh = |requests: Vec<conclave_standin::RecordedRequest>| {
        requests
            .into_iter()
            .filter(|r| r.tool_results().is_empty())
            .collect::<Vec<_>>()
    };
    ensure!(
        fresh(up_team.requests("fixer")).len() == 1,
        "an iteration ran without a person's decision"
    );
    let _: Value = client
        .post(
            "/api/agents/fixer/confirm",
            &json!({"decision": "continue", "prompt": "Mention PINEAPPLE in your summary."}),
        )
        .await?;
    asked_before(&client, "fixer", 3).await?;
    let _: Value = client
        .post("/api/agents/fixer/confirm", &json!({"decision": "stop"}))
        .await?;

    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // The third task is left ready with nobody to take it: stalled.
    ensure!(
        output.status.code() == Some(6),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("fixer waits for you before iteration 2")
            && stderr.contains(
                "fixer: loop, stopped by admin before the next iteration: 2 iteration(s)"
            ),
        "{stderr}"
    );
    let sessions = fresh(up_team.requests("fixer"));
    ensure!(sessions.len() == 2, "two iterations: {}", sessions.len());
    let second = crate::supervisor::context_text(&sessions[1]);
    ensure!(
        second.contains("A person's instructions for this loop:\nMention PINEAPPLE")
            && second.contains("Call the conclave `claim` tool"),
        "the person's words come with the claim instruction: {second}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_agents_iterations_count_against_the_team_budget_which_stops_it() -> Result<()> {
    let _serial = serial().await;
    // Each model call reports 100k input tokens of sonnet ($0.30): an iteration (claim, done,
    // a last word) passes the team's $0.50.
    let script = Script::new().agent_fn(&api_key("fixer"), |request| {
        worker(request).with_usage(100_000)
    });
    let Some(up_team) = fixer_loop_with(
        script,
        "mode = \"loop\"\nmax_iterations = 5\nmodel = \"claude-sonnet-4-5\"\n",
    )
    .await?
    else {
        return Ok(());
    };
    let team = &up_team.team;
    let toml_path = team.path("conclave.toml");
    let toml = std::fs::read_to_string(&toml_path)?;
    std::fs::write(
        &toml_path,
        format!("[defaults]\nteam_budget_usd = 0.5\n\n{toml}"),
    )?;
    for title in ["Fix the parser", "Fix the printer", "Fix the linker"] {
        team.conclave(&["task", "add", title, "--role", "fixer"])
            .await?;
    }
    let mut up = up_team.up(&[])?;
    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.code() == Some(6),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains("ALERT (team_budget)")
            && stderr.contains("fixer: loop, the team's budget is spent: 1 iteration(s)"),
        "the loop stops before a second iteration: {stderr}"
    );
    let events = events(team).await?;
    ensure!(
        events.iter().any(|e| e["kind"] == "agent.alert"
            && e["agent"] == "fixer"
            && e["data"]["cause"] == "team_budget"),
        "the alert names the loop: {events:#?}"
    );
    let iterations = events
        .iter()
        .filter(|e| e["kind"] == "agent.iteration" && e["agent"] == "fixer")
        .count();
    ensure!(iterations == 1, "iterations: {iterations}");
    let fixer = up_team.agent("fixer").await?;
    ensure!(
        fixer["cost_usd"].as_f64().is_some_and(|cost| cost >= 0.5),
        "{fixer:#}"
    );
    Ok(())
}
