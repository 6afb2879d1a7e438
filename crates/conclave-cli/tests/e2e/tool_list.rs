//! What the Conclave tools cost in every request: their definitions as the model receives them.

use anyhow::{Context, Result};
use conclave_standin::claude_cli::claude_or_skip;
use conclave_standin::{Reply, Script, StandIn};
use serde_json::{Value, json};

use crate::support::{Team, api_key, serial};

/// SPEC 5.1: the whole Conclave tool list stays under 8,000 characters.
const MAX_TOOL_LIST_CHARS: usize = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conclave_tool_list_as_the_model_sees_it_is_small() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let team = Team::start().await?;
    let script = Script::new().agent(&api_key("dave"), [Reply::text("Nothing to do.")]);
    let stand_in = StandIn::start(script).await?;
    // Without tool search the CLI sends every MCP tool's full schema in each request.
    let mut dave_env = team.agent_env(&claude, &stand_in.url(), "dave")?;
    dave_env.set("ENABLE_TOOL_SEARCH", "false");

    let dave = team.run_agent(&dave_env, "dave", &[], "hello").await?;
    dave.ensure_ok()?;
    assert_eq!(dave.mcp_status(), Some("connected"));

    let turns = stand_in.main_requests_for(&api_key("dave"));
    let request = turns.first().context("no request from dave")?;
    let tools: Vec<Value> = request.body["tools"]
        .as_array()
        .context("no tools in the request")?
        .iter()
        .filter(|tool| {
            tool["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("mcp__conclave__"))
        })
        .map(|tool| {
            json!({
                "name": tool["name"],
                "description": tool["description"],
                "input_schema": tool["input_schema"],
            })
        })
        .collect();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    let size = serde_json::to_string(&tools)?.len();
    println!(
        "conclave tool list as the model sees it: {size} characters for {} tools",
        tools.len()
    );
    for verb in [
        "status",
        "claim",
        "update",
        "done",
        "fail",
        "add_tasks",
        "tasks",
        "lock",
        "unlock",
        "send",
        "inbox",
        "note",
        "search",
        "handoff",
    ] {
        let name = format!("mcp__conclave__{verb}");
        assert!(names.contains(&name.as_str()), "{name} missing: {names:?}");
    }
    assert!(
        size < MAX_TOOL_LIST_CHARS,
        "{size} characters: {}",
        serde_json::to_string_pretty(&tools)?
    );
    Ok(())
}
