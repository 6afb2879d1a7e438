//! Write attribution with the real CLI (issue 11): the generated settings register the `Bash`
//! `PreToolUse` hook, so a shell command that rewrites a file another agent leases, past every
//! file-tool hook, is still seen: an alert naming both agents and the command, and a message to
//! the holder.

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::{claude_or_skip, parse_stream_json};
use conclave_standin::{Reply, Script, StandIn};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::{
    AGENT_TIMEOUT, AgentProcess, AgentRun, BIN, HEADLESS_ARGS, Team, api_key, events, serial,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_through_bash_on_a_file_leased_by_another_agent_alerts_naming_both() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let team = Team::start().await?;
    std::fs::create_dir_all(team.path("src"))?;
    std::fs::write(team.path("src/parser.rs"), "fn old() {}\n")?;

    // Bob holds the file (as his Edit hook would have leased it).
    let bob_token = team.conclave(&["agent", "add", "bob"]).await?;
    let lock = Command::new(BIN)
        .args(["lock", "src/parser.rs", "--reason", "parser rewrite"])
        .current_dir(team.root())
        .env("CONCLAVE_AGENT", "bob")
        .env("CONCLAVE_TOKEN", &bob_token)
        .env_remove("CONCLAVE_URL")
        .output()
        .await?;
    ensure!(lock.status.success(), "{lock:?}");

    let command = "sed -i 's/old/new/' src/parser.rs";
    let script = Script::new().agent(
        &api_key("alice"),
        [
            Reply::tool_use(
                "Bash",
                json!({"command": command, "description": "Rename old to new"}),
            ),
            Reply::text("Renamed."),
        ],
    );
    let stand_in = StandIn::start(script).await?;
    let alice_env = team.agent_env(&claude, &stand_in.url(), "alice")?;
    // acceptEdits does not cover the shell: allow Bash for this run.
    let mut agent = team.agent_command(&alice_env, "alice", &[]);
    agent
        .args(["-p", "rename old to new in src/parser.rs"])
        .args(HEADLESS_ARGS)
        .args(["--allowedTools", "Bash"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = AgentProcess::spawn(agent)?.finish(AGENT_TIMEOUT).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let run = AgentRun {
        status: output.status,
        lines: parse_stream_json(&stdout).with_context(|| format!("not stream-json: {stdout}"))?,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    run.ensure_ok()?;
    assert_eq!(
        std::fs::read_to_string(team.path("src/parser.rs"))?,
        "fn new() {}\n",
        "the command ran"
    );

    let log = events(&team).await?;
    let alerts: Vec<&Value> = log.iter().filter(|e| e["kind"] == "agent.alert").collect();
    let [alert] = alerts.as_slice() else {
        panic!("one alert expected: {alerts:#?}");
    };
    assert_eq!(alert["agent"], "alice");
    assert_eq!(alert["data"]["cause"], "shell_write");
    let message = alert["data"]["message"].as_str().context("message")?;
    for wanted in ["alice", "bob", command, "src/parser.rs"] {
        assert!(message.contains(wanted), "{wanted:?} not in {message:?}");
    }
    let touched = log
        .iter()
        .find(|e| e["kind"] == "file.touched" && e["data"]["tool"] == "Bash")
        .context("no shell file.touched")?;
    assert_eq!(touched["agent"], "alice");
    assert_eq!(touched["data"]["path"], "src/parser.rs");
    assert_eq!(touched["data"]["command"], command);

    let inbox = Command::new(BIN)
        .args(["msg", "inbox", "--json"])
        .current_dir(team.root())
        .env("CONCLAVE_AGENT", "bob")
        .env("CONCLAVE_TOKEN", &bob_token)
        .env_remove("CONCLAVE_URL")
        .output()
        .await?;
    let inbox = String::from_utf8_lossy(&inbox.stdout);
    assert!(
        inbox.contains("alice") && inbox.contains("sed -i") && inbox.contains("src/parser.rs"),
        "{inbox}"
    );
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}
