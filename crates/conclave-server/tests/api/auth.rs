//! Guarantee 8: every request is authenticated and an agent acts only as itself.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::TestServer;

#[tokio::test]
async fn health_and_openapi_answer_without_a_token_and_nothing_else_does() {
    let server = TestServer::start().await;
    let (status, body) = server.anonymous().get("/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, doc) = server.anonymous().get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/tasks",
        "/api/status",
        "/metrics",
        "/api/events",
        "/api/agents",
    ] {
        let (status, body) = server.anonymous().get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, _) = server
        .with_token("cvk_not_a_real_token")
        .get("/api/tasks")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_agent_acts_only_as_itself() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    server.agent("bob", None).await;
    // Claiming to be bob with alice's token is refused.
    let response = server
        .with_token(&alice)
        .request(Method::GET, "/api/status")
        .header("x-conclave-agent", "bob")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The actor of what alice does is alice, whatever the body says.
    let (status, message) = server
        .with_token(&alice)
        .post("/api/messages", json!({ "to": "bob", "body": "hi" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert_eq!(message["sender"], "alice");
    // An agent cannot change another agent or do admin work.
    let (status, _) = server
        .with_token(&alice)
        .call(
            Method::PATCH,
            "/api/agents/bob",
            Some(json!({ "status": "stopped" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .with_token(&alice)
        .post("/api/agents", json!({ "name": "mallory" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .with_token(&alice)
        .post("/api/agents/bob/tokens", json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_agent_may_hold_several_tokens() {
    let server = TestServer::start().await;
    let first = server.agent("alice", None).await;
    let (status, body) = server
        .as_admin()
        .post("/api/agents/alice/tokens", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let second = body["token"].as_str().expect("token").to_string();
    assert_ne!(first, second);
    for token in [&first, &second] {
        let (status, body) = server.with_token(token).get("/api/status").await;
        assert_eq!(
            (status, body["me"].as_str()),
            (StatusCode::OK, Some("alice"))
        );
    }
}

#[tokio::test]
async fn an_agent_reports_on_its_session_but_cannot_give_itself_another_role() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", Some("coder")).await;
    let (status, agent) = server
        .with_token(&alice)
        .call(
            Method::PATCH,
            "/api/agents/alice",
            Some(json!({ "session_id": "s-1", "context_tokens": 1200 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{agent}");
    assert_eq!(agent["session_id"], "s-1");
    for update in [
        json!({ "role": "lead" }),
        json!({ "cost_usd": 0.0 }),
        json!({ "pid": 1 }),
    ] {
        let (status, body) = server
            .with_token(&alice)
            .call(Method::PATCH, "/api/agents/alice", Some(update.clone()))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{update}: {body}");
    }
    let (_, agent) = server.as_admin().get("/api/agents/alice").await;
    assert_eq!(agent["role"], "coder");
}
