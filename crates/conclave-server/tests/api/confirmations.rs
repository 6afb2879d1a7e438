//! A loop's confirmation between iterations: asked by the loop, answered once by a person, seen
//! in the waiting list until then.

use reqwest::StatusCode;
use serde_json::json;

use crate::TestServer;

#[tokio::test]
async fn a_loop_waits_until_a_person_answers_once() {
    let server = TestServer::start().await;
    let loop_token = server.agent("loop", None).await;
    let admin = server.as_admin();

    let (status, body) = admin
        .post("/api/agents/loop/confirm", json!({"decision": "continue"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing waits yet: {body}");

    let (status, asked) = admin
        .post(
            "/api/agents/loop/confirmation",
            json!({"next_iteration": 2, "summary": "iteration 1: check exited 1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{asked}");
    assert_eq!(asked["next_iteration"], 2);
    assert!(asked["decision"].is_null());

    let (_, status) = admin.get("/api/status").await;
    assert_eq!(status["confirmations_waiting"], 1, "counted in status");
    let (_, waiting) = admin.get("/api/confirmations?waiting=true").await;
    let waiting = waiting["confirmations"].as_array().expect("list").clone();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["agent"], "loop");
    assert_eq!(waiting[0]["summary"], "iteration 1: check exited 1");

    // The loop's own token may not answer for a person.
    let (status, _) = server
        .with_token(&loop_token)
        .post("/api/agents/loop/confirm", json!({"decision": "continue"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = admin
        .post(
            "/api/agents/loop/confirm",
            json!({"decision": "continue", "prompt": "  "}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a blank prompt is refused");

    let (status, answered) = admin
        .post(
            "/api/agents/loop/confirm",
            json!({"decision": "continue", "prompt": "Fix the next failing test."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    assert_eq!(answered["decision"], "continue");
    assert_eq!(answered["prompt"], "Fix the next failing test.");
    assert_eq!(answered["decided_by"], "admin");
    assert_eq!(answered["seq"], asked["seq"]);

    let (status, _) = admin
        .post(
            "/api/agents/loop/confirm",
            json!({"decision": "stop", "prompt": "ignored with stop"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "answered once only");
    let (_, waiting) = admin.get("/api/confirmations?waiting=true").await;
    assert_eq!(waiting["confirmations"], json!([]));
    let (_, status) = admin.get("/api/status").await;
    assert_eq!(status["confirmations_waiting"], 0);
    let (_, all) = admin.get("/api/confirmations?agent=loop").await;
    assert_eq!(all["confirmations"][0]["decision"], "continue");

    // Recorded as events, and not recordable around the checks.
    let (_, events) = admin
        .get("/api/events?agent=loop&kind=agent.confirmed")
        .await;
    assert_eq!(events["events"][0]["data"]["request"], asked["seq"]);
    let (status, _) = admin
        .post(
            "/api/events",
            json!({"kind": "agent.confirmed", "agent": "loop",
                   "data": {"request": 1, "decision": "stop"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn only_the_latest_request_of_an_agent_waits() {
    let server = TestServer::start().await;
    server.agent("loop", None).await;
    let admin = server.as_admin();
    for next in [2, 3] {
        let (status, _) = admin
            .post(
                "/api/agents/loop/confirmation",
                json!({"next_iteration": next}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, waiting) = admin.get("/api/confirmations?waiting=true").await;
    let list = waiting["confirmations"].as_array().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["next_iteration"], 3);
    let (status, _) = admin
        .post(
            "/api/agents/nobody/confirmation",
            json!({"next_iteration": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
