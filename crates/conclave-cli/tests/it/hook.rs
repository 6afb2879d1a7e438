//! `conclave hook`, the command hook, against a real `conclave serve`: its hand-written HTTP
//! exchange carries the agent's request and the server's answer both ways, and a server that is
//! gone is a warning (or, in strict mode, a denied edit), never a failed hook.

use std::io::Write;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::{As, COMMAND_DEADLINE, Run, Server, TestProject, add_agent, finish};

/// Runs `conclave hook <args>` as `who` with `input` on stdin and the server at `url`.
pub fn hook(project: &TestProject, who: &As, url: &str, args: &[&str], input: &Value) -> Run {
    let mut command = project.command(who, &[&["hook"][..], args].concat());
    command
        .env("CONCLAVE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn conclave hook");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.to_string().as_bytes())
        .expect("write the hook input");
    finish(child, COMMAND_DEADLINE)
}

#[test]
fn the_command_hook_takes_a_lease_and_relays_a_denial_from_the_real_server() {
    let project = TestProject::init();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    let bob = add_agent(&project, "bob", &[]);
    let edit = json!({
        "session_id": "s-1",
        "hook_event_name": "PreToolUse",
        "tool_name": "Write",
        "tool_input": {"file_path": project.root().join("src/parser.rs"), "content": "fn main() {}"},
    });

    let run = hook(&project, &alice, &server.url, &["pre-tool-use"], &edit);
    assert_eq!(
        (run.code, run.stdout.trim(), run.stderr.as_str()),
        (0, "{}", "")
    );
    let leases = project.run(&["status", "--json"]).json();
    assert!(
        leases.to_string().contains("src/parser.rs"),
        "the hook's lease is not in the status: {leases}"
    );

    let run = hook(&project, &bob, &server.url, &["pre-tool-use"], &edit);
    assert_eq!(run.code, 0, "{run:#?}");
    let answer: Value = serde_json::from_str(run.stdout.trim()).expect("JSON on stdout");
    let output = &answer["hookSpecificOutput"];
    assert_eq!(output["permissionDecision"], "deny", "{answer}");
    assert!(
        output["permissionDecisionReason"]
            .as_str()
            .is_some_and(|reason| reason.contains("alice")),
        "the denial should name the holder: {answer}"
    );

    // The server is gone: the hook still exits 0; strict mode denies the edit, else it goes ahead.
    let url = server.url.clone();
    drop(server);
    let run = hook(&project, &bob, &url, &["pre-tool-use", "--strict"], &edit);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.contains("\"deny\"") && run.stdout.contains("cannot be reached"),
        "{run:#?}"
    );
    let run = hook(&project, &bob, &url, &["pre-tool-use"], &edit);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.stdout.trim(), "{}");
    assert!(run.stderr.contains("cannot be reached"), "{run:#?}");
}

/// Regression: an edit of a file whose name the lease rules cannot express (a backslash) went
/// ahead with no lease at all; it is refused, saying why.
#[test]
fn an_edit_of_a_file_that_cannot_be_leased_is_denied_with_the_reason() {
    let project = TestProject::init();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    let edit = json!({
        "session_id": "s-1",
        "hook_event_name": "PreToolUse",
        "tool_name": "Edit",
        "tool_input": {"file_path": project.root().join("src/odd\\name.rs"), "old_string": "a", "new_string": "b"},
    });
    let run = hook(&project, &alice, &server.url, &["pre-tool-use"], &edit);
    assert_eq!(run.code, 0, "{run:#?}");
    let answer: Value = serde_json::from_str(run.stdout.trim()).expect("JSON on stdout");
    let output = &answer["hookSpecificOutput"];
    assert_eq!(output["permissionDecision"], "deny", "{answer}");
    assert!(
        output["permissionDecisionReason"]
            .as_str()
            .is_some_and(|reason| reason.contains("backslash")),
        "{answer}"
    );
}
