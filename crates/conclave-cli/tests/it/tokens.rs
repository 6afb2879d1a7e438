//! `conclave agent tokens` and `agent revoke`: an agent's tokens listed by id, and revoked one at a
//! time or all at once; a revoked token is refused from then on.

use crate::support::{As, Server, TestProject, add_agent};

fn token_ids(project: &TestProject, name: &str) -> Vec<String> {
    let list = project.run(&["agent", "tokens", name, "--json"]).json();
    assert_eq!(list["agent"], name);
    list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|token| token["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn tokens_are_listed_by_id_and_revoked_one_or_all() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let first = add_agent(&project, "alice", &[]);
    let second_token = project.run(&["agent", "token", "alice"]).ok();
    let second = As::agent("alice", &second_token);

    let ids = token_ids(&project, "alice");
    assert_eq!(ids.len(), 2, "{ids:?}");
    // The listing names tokens; it never shows one.
    let table = project.run(&["agent", "tokens", "alice"]).ok();
    assert!(
        table.contains(&ids[0]) && table.contains(&ids[1]),
        "{table}"
    );
    assert!(!table.contains(&second_token), "{table}");

    // Both work; revoking one by id leaves exactly the other working.
    project.run_as(&first, &["task", "list"]).ok();
    project.run_as(&second, &["task", "list"]).ok();
    project
        .run(&["agent", "revoke", "alice", "--token-id", &ids[0]])
        .ok();
    let working: Vec<&As> = [&first, &second]
        .into_iter()
        .filter(|who| project.run_as(who, &["task", "list"]).code == 0)
        .collect();
    assert_eq!(working.len(), 1);
    let remaining = working[0].clone();
    assert_eq!(token_ids(&project, "alice").len(), 1);

    // An unknown id is an error, and so is revoking for an agent that does not exist.
    let stderr = project
        .run(&["agent", "revoke", "alice", "--token-id", "abcdef123456"])
        .fails_with(1)
        .to_string();
    assert!(stderr.contains("abcdef123456"), "{stderr}");
    project.run(&["agent", "revoke", "nobody"]).fails_with(1);

    // Without an id: all of them.
    project.run(&["agent", "revoke", "alice"]).ok();
    project.run_as(&remaining, &["task", "list"]).fails_with(1);
    assert!(token_ids(&project, "alice").is_empty());

    // Only the admin lists or revokes tokens.
    let bob = add_agent(&project, "bob", &[]);
    project
        .run_as(&bob, &["agent", "tokens", "bob"])
        .fails_with(1);
    project
        .run_as(&bob, &["agent", "revoke", "bob"])
        .fails_with(1);
}

/// A stand-in for `claude` that writes its environment to `$CONCLAVE_TEST_ENV_DUMP` and exits.
fn env_dumping_claude(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("claude-env-dump");
    std::fs::write(&script, "#!/bin/sh\nenv > \"$CONCLAVE_TEST_ENV_DUMP\"\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[test]
fn starting_an_agent_again_rotates_its_tokens_and_never_hands_it_the_admin_token() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let scratch = tempfile::tempdir().expect("tempdir");
    let claude = env_dumping_claude(scratch.path());
    let dump = scratch.path().join("env");
    let admin_token = std::fs::read_to_string(project.state_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let mut agent_tokens = Vec::new();
    for _ in 0..6 {
        project
            .run_with_env(
                &[
                    ("CONCLAVE_CLAUDE_BIN", claude.to_str().expect("utf-8")),
                    ("CONCLAVE_TEST_ENV_DUMP", dump.to_str().expect("utf-8")),
                ],
                &["claude", "--name", "carol"],
            )
            .ok();
        let env = std::fs::read_to_string(&dump).expect("the stand-in ran");
        assert!(
            !env.contains(&admin_token),
            "the admin token reached the agent's environment"
        );
        let token = env
            .lines()
            .find_map(|line| line.strip_prefix("CONCLAVE_TOKEN="))
            .expect("the agent's token")
            .to_string();
        agent_tokens.push(token);
    }
    // Six starts, a bounded number of tokens: the newest work, the oldest are revoked.
    let ids = token_ids(&project, "carol");
    assert_eq!(ids.len(), 3, "{ids:?}");
    let newest = As::agent("carol", agent_tokens.last().expect("a token"));
    project.run_as(&newest, &["task", "list"]).ok();
    let oldest = As::agent("carol", &agent_tokens[0]);
    project.run_as(&oldest, &["task", "list"]).fails_with(1);

    // Nor is it in the files written for the agent.
    for entry in std::fs::read_dir(project.state_dir().join("agents").join("carol")).expect("dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains(&admin_token),
            "the admin token is in {}",
            path.display()
        );
    }
}

#[test]
fn removing_an_agent_gives_back_what_it_held_and_shuts_it_out() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    project.run(&["task", "add", "write the parser"]).ok();
    project.run_as(&alice, &["task", "claim"]).ok();
    project.run_as(&alice, &["lock", "src/parser.rs"]).ok();

    let bob = add_agent(&project, "bob", &[]);
    project
        .run_as(&bob, &["agent", "remove", "alice"])
        .fails_with(1);
    project
        .run(&["agent", "remove", "alice", "--reason", "left the team"])
        .ok();
    // Its task is ready for another, its lease gone, its tokens revoked.
    let tasks = project.run(&["task", "list", "--json"]).json();
    assert_eq!(tasks["tasks"][0]["status"], "ready", "{tasks}");
    assert!(tasks["tasks"][0]["assignee"].is_null(), "{tasks}");
    let locks = project.run(&["locks", "--json"]).json();
    assert!(
        locks["leases"].as_array().expect("leases").is_empty(),
        "{locks}"
    );
    assert!(token_ids(&project, "alice").is_empty());
    project.run_as(&alice, &["task", "list"]).fails_with(1);

    // The log says so.
    let kinds: Vec<String> = project
        .export()
        .iter()
        .filter(|event| event["agent"] == "alice")
        .filter_map(|event| event["kind"].as_str().map(str::to_string))
        .collect();
    for kind in ["task.reclaimed", "agent.token_revoked"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    // An unknown agent is an error.
    project.run(&["agent", "remove", "nobody"]).fails_with(1);
}
