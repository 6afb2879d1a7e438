//! The server going away: hooks fail open by default and closed in strict mode, and a session
//! keeps working once the server is back.

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::claude_or_skip;
use conclave_standin::{Reply, Script, StandIn};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::{
    AGENT_TIMEOUT, AgentProcess, HEADLESS_ARGS, Team, kill_server_now, next_result, serial,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_down_edits_go_ahead_unless_strict() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let mut team = Team::start().await?;
    std::fs::create_dir_all(team.path("src"))?;
    // (agent, conclave claude flags, the edit goes ahead)
    let cases = [
        ("frank", &[][..], true),
        ("grace", &["--strict"][..], false),
    ];
    for (name, flags, goes_ahead) in cases {
        team.restart_server("127.0.0.1:0").await?;
        let server = team.server()?;
        let pid = server.pid().context("the server has no pid")?;
        let address = server.address().to_string();
        let relative = format!("src/{name}.rs");
        let file = team.path(&relative);
        let file_path = file.to_string_lossy().into_owned();
        // The server is up while the agent starts (it registers, and its MCP server connects),
        // and goes down the moment the model asks for the edit.
        let script = Script::new()
            .then_with(move |_| {
                kill_server_now(pid, &address);
                Reply::tool_use(
                    "Write",
                    json!({"file_path": file_path, "content": "fn x() {}\n"}),
                )
            })
            .then(Reply::text("Done."));
        let stand_in = StandIn::start(script).await?;
        let env = team.agent_env(&claude, &stand_in.url(), name)?;

        let run = team.run_agent(&env, name, flags, "write the file").await?;
        run.ensure_ok()?;

        let turns = stand_in.main_requests();
        ensure!(turns.len() == 2, "{name}: {turns:#?}");
        let results = turns[1].tool_results();
        ensure!(results.len() == 1, "{name}: {results:?}");
        if goes_ahead {
            assert!(!results[0].is_error, "{name}: {results:?}");
            assert!(file.is_file(), "{name}: {relative} was not written");
        } else {
            assert!(results[0].is_error, "{name}: {results:?}");
            assert!(
                results[0].content.contains("cannot be reached")
                    && results[0].content.contains("strict mode"),
                "{name}: {results:?}"
            );
            assert!(!file.exists(), "{name}: {relative} was written");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_working_across_a_server_restart() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let mut team = Team::start().await?;
    std::fs::create_dir_all(team.path("src"))?;
    let file = team.path("src/b.rs").to_string_lossy().into_owned();
    let script = Script::replies([
        Reply::tool_use("mcp__conclave__status", json!({})),
        Reply::text("Turn one done."),
        Reply::tool_use("mcp__conclave__status", json!({})),
        Reply::tool_use(
            "Write",
            json!({"file_path": file, "content": "fn b() {}\n"}),
        ),
        Reply::text("Turn two done."),
    ]);
    let stand_in = StandIn::start(script).await?;
    let env = team.agent_env(&claude, &stand_in.url(), "heidi")?;
    let mut command = team.agent_command(&env, "heidi", &[]);
    command
        .args(["-p", "--input-format", "stream-json"])
        .args(HEADLESS_ARGS)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut agent = AgentProcess::spawn(command)?;
    let mut stdin = agent.stdin()?;
    let mut lines = agent.stdout_lines()?;
    let say = |text: &str| {
        let line = json!({"type": "user", "message": {"role": "user", "content": text}});
        format!("{line}\n")
    };

    stdin.write_all(say("check in").as_bytes()).await?;
    stdin.flush().await?;
    let first = next_result(&mut lines).await?;
    ensure!(first["is_error"] == false, "turn one failed: {first:#}");
    let turns = stand_in.main_requests();
    let status = turns
        .get(1)
        .context("turn one's second request")?
        .tool_results();
    assert!(
        status.len() == 1 && !status[0].is_error && status[0].content.contains("You are heidi"),
        "{status:?}"
    );

    // Kill -9 and start again on the same port, as a crashed and restarted server would.
    let address = team.server()?.address().to_string();
    if let Some(server) = team.server.as_mut() {
        server.kill().await;
    }
    team.restart_server(&address).await?;

    stdin
        .write_all(say("check in again, then write src/b.rs").as_bytes())
        .await?;
    stdin.flush().await?;
    let second = next_result(&mut lines).await?;
    ensure!(second["is_error"] == false, "turn two failed: {second:#}");
    let turns = stand_in.main_requests();
    ensure!(turns.len() == 5, "{turns:#?}");
    let status = turns[3].tool_results();
    assert!(
        status.len() == 1 && !status[0].is_error && status[0].content.contains("You are heidi"),
        "MCP call after the restart: {status:?}"
    );
    let write = turns[4].tool_results();
    assert!(
        write.len() == 1 && !write[0].is_error,
        "Write after the restart: {write:?}"
    );
    let locks = team.conclave_json(&["locks", "--json"]).await?;
    let leased = locks["leases"].as_array().is_some_and(|leases| {
        leases
            .iter()
            .any(|lease| lease["path"] == "src/b.rs" && lease["holder"] == "heidi")
    });
    assert!(
        leased,
        "src/b.rs is not leased to heidi after the restart: {locks:#}"
    );

    drop(stdin);
    let status = agent.wait(AGENT_TIMEOUT).await?;
    ensure!(status.success(), "the agent exited with {status}");
    Ok(())
}
