//! Agents working together through the server: file leases enforced by the `PreToolUse` hook,
//! tasks and messages through the MCP tools, and what a session is told when it starts.

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::claude_or_skip;
use conclave_standin::{Reply, Script, StandIn};
use serde_json::{Value, json};

use crate::support::{AGENT_TIMEOUT, Team, api_key, events, serial};

/// The text of every user and system message of a request (`content` as a string or as text
/// blocks), joined with newlines.
fn context_text(messages: &[Value]) -> String {
    let mut text = Vec::new();
    for message in messages {
        if !matches!(message["role"].as_str(), Some("user" | "system")) {
            continue;
        }
        match &message["content"] {
            Value::String(content) => text.push(content.as_str()),
            Value::Array(blocks) => text.extend(blocks.iter().filter_map(|b| b["text"].as_str())),
            _ => {}
        }
    }
    text.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_by_one_agent_is_denied_to_another() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let team = Team::start().await?;
    std::fs::create_dir_all(team.path("src"))?;
    let file = team.path("src/a.rs").to_string_lossy().into_owned();
    let (content_a, content_b) = ("// written by alice\n", "// written by bob\n");
    let script = Script::new()
        .agent(
            &api_key("alice"),
            [
                Reply::tool_use("Write", json!({"file_path": file, "content": content_a})),
                Reply::text("Wrote src/a.rs."),
            ],
        )
        .agent(
            &api_key("bob"),
            [
                // Write refuses to overwrite a file the session has not read, before any hook.
                Reply::tool_use("Read", json!({"file_path": file})),
                Reply::tool_use("Write", json!({"file_path": file, "content": content_b})),
                Reply::text("Could not write src/a.rs."),
            ],
        );
    let stand_in = StandIn::start(script).await?;

    let alice_env = team.agent_env(&claude, &stand_in.url(), "alice")?;
    let alice = team
        .run_agent(&alice_env, "alice", &[], "write src/a.rs")
        .await?;
    alice.ensure_ok()?;
    assert_eq!(alice.mcp_status(), Some("connected"));
    let bob_env = team.agent_env(&claude, &stand_in.url(), "bob")?;
    let bob = team
        .run_agent(&bob_env, "bob", &[], "write src/a.rs too")
        .await?;
    bob.ensure_ok()?;

    let bob_turns = stand_in.main_requests_for(&api_key("bob"));
    assert_eq!(bob_turns.len(), 3, "{bob_turns:#?}");
    let results = bob_turns[2].tool_results();
    ensure!(results.len() == 1, "{results:?}");
    assert!(results[0].is_error, "{results:?}");
    assert!(
        results[0].content.contains("leased by alice"),
        "{results:?}"
    );
    assert_eq!(std::fs::read_to_string(team.path("src/a.rs"))?, content_a);
    let locks = team.conclave_json(&["locks", "--json"]).await?;
    let held: Vec<(&Value, &Value)> = locks["leases"]
        .as_array()
        .context("no leases list")?
        .iter()
        .map(|lease| (&lease["path"], &lease["holder"]))
        .collect();
    assert_eq!(held, vec![(&json!("src/a.rs"), &json!("alice"))]);
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_and_a_message_reach_the_other_agent_and_the_log() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let team = Team::start().await?;
    // Made beforehand, so alice can write to bob; `conclave claude` then issues a fresh token.
    team.conclave(&["agent", "add", "bob"]).await?;
    let task = team.conclave(&["task", "add", "Wire the parser"]).await?;
    let message = "parser API is frozen, build on it";
    let script = Script::new()
        .agent(
            &api_key("alice"),
            [
                Reply::tool_use("mcp__conclave__claim", json!({})),
                Reply::tool_use("mcp__conclave__send", json!({"to": "bob", "body": message})),
                Reply::text("Claimed and told bob."),
            ],
        )
        .agent(
            &api_key("bob"),
            [
                Reply::tool_use("mcp__conclave__inbox", json!({"wait_secs": 60})),
                Reply::text("Got the news."),
            ],
        );
    let stand_in = StandIn::start(script).await?;
    let alice_env = team.agent_env(&claude, &stand_in.url(), "alice")?;
    let bob_env = team.agent_env(&claude, &stand_in.url(), "bob")?;

    // Bob starts first (his SessionStart would otherwise deliver the message) and waits in
    // his inbox; alice starts once bob's first turn has reached the model.
    let bob_key = api_key("bob");
    let run_bob = team.run_agent(&bob_env, "bob", &[], "wait for news");
    let run_alice = async {
        stand_in
            .wait_for("bob's first turn", AGENT_TIMEOUT, |requests| {
                requests
                    .iter()
                    .any(|r| r.is_main() && r.api_key() == Some(bob_key.as_str()))
            })
            .await?;
        team.run_agent(&alice_env, "alice", &[], "claim a task and tell bob")
            .await
    };
    let (bob, alice) = tokio::join!(run_bob, run_alice);
    let (bob, alice) = (bob?, alice?);
    alice.ensure_ok()?;
    bob.ensure_ok()?;

    let alice_turns = stand_in.main_requests_for(&api_key("alice"));
    let claimed = alice_turns
        .get(1)
        .context("alice's second turn")?
        .tool_results();
    assert!(
        claimed.len() == 1 && !claimed[0].is_error && claimed[0].content.contains(&task),
        "{claimed:?}"
    );
    let sent = alice_turns
        .get(2)
        .context("alice's third turn")?
        .tool_results();
    assert!(sent.len() == 1 && !sent[0].is_error, "{sent:?}");
    let bob_turns = stand_in.main_requests_for(&bob_key);
    let inbox = bob_turns
        .get(1)
        .context("bob's second turn")?
        .tool_results();
    assert!(
        inbox.len() == 1 && !inbox[0].is_error && inbox[0].content.contains(message),
        "{inbox:?}"
    );

    let events = events(&team).await?;
    let position = |kind: &str, actor: &str| {
        events
            .iter()
            .position(|event| event["kind"] == kind && event["actor"] == actor)
            .with_context(|| format!("no {kind} by {actor} in {events:#?}"))
    };
    let claimed_at = position("task.claimed", "alice")?;
    let sent_at = position("message.sent", "alice")?;
    let acked_at = position("message.acked", "bob")?;
    assert!(
        claimed_at < sent_at && sent_at < acked_at,
        "claimed {claimed_at}, sent {sent_at}, acked {acked_at}"
    );
    assert_eq!(events[claimed_at]["task"], json!(task));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_starts_knowing_its_role_task_and_unread_message() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let team = Team::start().await?;
    let title = "Review the lexer changes";
    let message = "start with the number literals";
    team.conclave(&["agent", "add", "carol", "--role", "reviewer"])
        .await?;
    let task = team.conclave(&["task", "add", title]).await?;
    team.conclave(&["task", "assign", &task, "carol"]).await?;
    team.conclave(&["msg", "send", "carol", message]).await?;
    let script = Script::new().agent(&api_key("carol"), [Reply::text("Ready.")]);
    let stand_in = StandIn::start(script).await?;
    let carol_env = team.agent_env(&claude, &stand_in.url(), "carol")?;

    let carol = team
        .run_agent(&carol_env, "carol", &[], "what now?")
        .await?;
    carol.ensure_ok()?;

    let turns = stand_in.main_requests_for(&api_key("carol"));
    let first = turns.first().context("no request from carol")?;
    // 2.1.328 puts a SessionStart hook's context in the message with role `system` that
    // follows the first user message ("SessionStart hook additional context: ..."), not in
    // the user message itself: read everything the model is given before its first answer.
    let text = context_text(first.messages());
    assert!(
        text.contains("SessionStart hook additional context"),
        "{text}"
    );
    for expected in ["reviewer", title, &task, message] {
        assert!(text.contains(expected), "{expected:?} missing from {text}");
    }
    // The session id the hook reported is recorded on the agent.
    let agent = team.conclave_json(&["agent", "list", "--json"]).await?;
    let carol_record = agent["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["name"] == "carol"))
        .context("carol is not listed")?;
    assert_eq!(
        carol_record["session_id"].as_str(),
        first.session_id(),
        "{carol_record:#}"
    );
    Ok(())
}
