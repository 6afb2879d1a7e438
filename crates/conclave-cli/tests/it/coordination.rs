//! The server's part of the coordination account (docs/compare.md): the SessionStart hook records
//! how much context it injected, which the supervisor counts for every call of the session.

use std::io::Write;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::{COMMAND_DEADLINE, Server, TestProject, add_agent, finish};

#[test]
fn the_session_start_hook_records_the_size_of_the_context_it_injects() {
    let project = TestProject::init();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    project
        .run(&[
            "task",
            "add",
            "Write the parser",
            "--body",
            "Grammar in docs/grammar.md.",
        ])
        .ok();
    let mut command = project.command(&alice, &["hook", "session-start"]);
    command
        .env("CONCLAVE_URL", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn conclave hook");
    let input =
        json!({"session_id": "s-1", "hook_event_name": "SessionStart", "source": "startup"});
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.to_string().as_bytes())
        .expect("write the hook input");
    let run = finish(child, COMMAND_DEADLINE);
    assert_eq!(run.code, 0, "{run:#?}");
    let answer: Value = serde_json::from_str(run.stdout.trim()).expect("JSON on stdout");
    let context = answer["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .expect("the hook injects context");
    assert!(context.contains("You are alice"), "{context}");

    // Nothing reported an account for alice yet: `status` says so rather than leave her out.
    let status = project.run(&["status"]).ok();
    assert!(
        status.contains("alice: coordination: not measured yet"),
        "{status}"
    );

    let events = project.export();
    let started = events
        .iter()
        .find(|event| event["kind"] == "agent.session_start")
        .expect("the session start is recorded");
    assert_eq!(
        started["data"]["context_chars"],
        json!(context.chars().count()),
        "{started}"
    );
}
