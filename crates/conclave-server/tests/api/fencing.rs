//! Fencing tokens checked where a write done under a lease is accepted: `done` with `files`
//! refuses an edit whose lease lapsed or changed hands after it, and the merge queue drops an
//! entry whose agent no longer holds its task.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::TestServer;

/// The hook input of a `Write` to `file` (relative to the project at `/project`).
fn write_input(file: &str) -> Value {
    json!({
        "session_id": "s-1",
        "cwd": "/project",
        "tool_name": "Write",
        "tool_input": { "file_path": format!("/project/{file}"), "content": "x" },
    })
}

/// A `Write` as Claude Code reports it: the lease before, the record after.
async fn edit(server: &TestServer, token: &str, file: &str) {
    let agent = server.with_token(token);
    for event in ["pre-tool-use", "post-tool-use"] {
        let (status, answer) = agent
            .post(&format!("/hooks/{event}"), write_input(file))
            .await;
        assert_eq!(status, StatusCode::OK, "{event}: {answer}");
        assert_ne!(
            answer["hookSpecificOutput"]["permissionDecision"], "deny",
            "{answer}"
        );
    }
}

async fn claim(server: &TestServer, token: &str) -> String {
    let (status, answer) = server
        .with_token(token)
        .post("/api/tasks/claim", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["task"]["id"].as_str().expect("claimed").to_string()
}

async fn done(server: &TestServer, token: &str, task: &str, file: &str) -> (StatusCode, Value) {
    server
        .with_token(token)
        .post(
            &format!("/api/tasks/{task}/done"),
            json!({ "summary": "did it", "files": [file] }),
        )
        .await
}

async fn release(server: &TestServer, token: &str, file: &str) {
    let (status, answer) = server
        .with_token(token)
        .post("/api/leases/release", json!({ "paths": [file] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn done_accepts_files_edited_under_the_lease_still_held() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    server.task("write a").await;
    let task = claim(&server, &alice).await;
    edit(&server, &alice, "src/a.rs").await;
    // A second edit renews the lease (a larger token): still the same holding.
    edit(&server, &alice, "src/a.rs").await;
    let (status, answer) = done(&server, &alice, &task, "src/a.rs").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn done_refuses_an_edit_whose_lease_was_lost_until_it_is_made_again() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    let bob = server.agent("bob", None).await;
    server.task("write a").await;
    let task = claim(&server, &alice).await;
    edit(&server, &alice, "src/a.rs").await;

    // The lease goes (as when it lapses), bob edits the file meanwhile, alice leases it again.
    release(&server, &alice, "src/a.rs").await;
    let (status, answer) = server
        .with_token(&bob)
        .post("/api/leases", json!({ "paths": ["src/a.rs"] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    release(&server, &bob, "src/a.rs").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (status, answer) = server
        .with_token(&alice)
        .post("/api/leases", json!({ "paths": ["src/a.rs"] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, answer) = done(&server, &alice, &task, "src/a.rs").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("src/a.rs") && message.contains("fencing"),
        "{answer}"
    );

    // A file never edited through the hooks has nothing to compare.
    let (status, answer) = done(&server, &alice, &task, "docs/notes.md").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn an_edit_made_again_under_the_new_lease_is_accepted() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    server.task("write a").await;
    let task = claim(&server, &alice).await;
    edit(&server, &alice, "src/a.rs").await;
    release(&server, &alice, "src/a.rs").await;
    let (status, _) = done(&server, &alice, &task, "src/a.rs").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "no lease covers the edit any more"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    edit(&server, &alice, "src/a.rs").await;
    let (status, answer) = done(&server, &alice, &task, "src/a.rs").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}
