//! End-to-end flows through the API: idempotent retries, blocking inbox waits, claim expiry.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::TestServer;
use conclave_core::StoreConfig;

#[tokio::test]
async fn a_retried_request_with_the_same_idempotency_key_is_applied_once() {
    let server = TestServer::start().await;
    let send = || {
        server
            .as_admin()
            .request(Method::POST, "/api/tasks")
            .header("idempotency-key", "retry-1")
            .json(&json!({ "title": "only once" }))
            .send()
    };
    let first = send().await.expect("first");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.expect("json");
    let second = send().await.expect("second");
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let second: serde_json::Value = second.json().await.expect("json");
    assert_eq!(first, second);
    let (_, tasks) = server.as_admin().get("/api/tasks").await;
    assert_eq!(tasks["tasks"].as_array().expect("tasks").len(), 1);

    let reused = server
        .as_admin()
        .request(Method::POST, "/api/tasks")
        .header("idempotency-key", "retry-1")
        .json(&json!({ "title": "something else" }))
        .send()
        .await
        .expect("reuse");
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_inbox_wait_returns_as_soon_as_a_message_arrives() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    let bob = server.agent("bob", None).await;
    let waiting = {
        let caller = server.with_token(&bob);
        async move {
            let started = Instant::now();
            let (status, body) = caller.get("/api/inbox?wait=60").await;
            (status, body, started.elapsed())
        }
    };
    let sending = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server
            .with_token(&alice)
            .post("/api/messages", json!({ "to": "bob", "body": "ping" }))
            .await
    };
    let ((status, inbox, waited), (sent, _)) = tokio::join!(waiting, sending);
    assert_eq!((status, sent), (StatusCode::OK, StatusCode::CREATED));
    assert_eq!(inbox["messages"][0]["body"], "ping");
    // Woken by the message, long before the 60 s wait would have run out.
    assert!(waited < Duration::from_secs(30), "waited {waited:?}");

    // Unacknowledged messages come back; acknowledged ones do not.
    let (_, again) = server.with_token(&bob).get("/api/inbox").await;
    let id = again["messages"][0]["id"].as_str().expect("id").to_string();
    let (status, acked) = server
        .with_token(&bob)
        .post("/api/inbox/ack", json!({ "ids": [id] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(acked["acked"].as_array().map(Vec::len), Some(1));
    let (_, empty) = server.with_token(&bob).get("/api/inbox").await;
    assert_eq!(empty["messages"].as_array().map(Vec::len), Some(0));
}

/// A blocking inbox wait is queued and woken only for messages to its agent: the rest of the
/// team's traffic (messages to others, new tasks) never reaches it, and its own message still
/// ends the wait at once.
#[tokio::test]
async fn an_inbox_wait_is_not_woken_by_others_events() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    let bob = server.agent("bob", None).await;
    let _carol = server.agent("carol", None).await;
    let waiting = {
        let caller = server.with_token(&bob);
        async move {
            let started = Instant::now();
            let (status, body) = caller.get("/api/inbox?wait=60").await;
            (status, body, started.elapsed())
        }
    };
    let traffic = async {
        // Bob is blocked in his wait once his status says so (it is set after his inbox was
        // read empty): from then on only his subscription can end the wait.
        let mut blocked = false;
        for _ in 0..500 {
            let (_, agent) = server.as_admin().get("/api/agents/bob").await;
            if agent["status"] == "waiting" {
                blocked = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(blocked, "bob never waited");
        assert_eq!(server.app.live_stats().subscribers, 1);
        for n in 0..20 {
            let (status, _) = server
                .with_token(&alice)
                .post(
                    "/api/messages",
                    json!({ "to": "carol", "body": format!("n{n}") }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
            server.task(&format!("task {n}")).await;
        }
        let (status, _) = server
            .with_token(&alice)
            .post("/api/messages", json!({ "to": "bob", "body": "yours" }))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    };
    let ((status, inbox, waited), ()) = tokio::join!(waiting, traffic);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(inbox["messages"][0]["body"], "yours");
    assert!(waited < Duration::from_secs(30), "waited {waited:?}");
    // The 40 events before bob's message were published before it, in order, so they were all
    // offered to his subscription by the time it woke him: none was queued for it.
    let stats = server.app.live_stats();
    assert_eq!(stats.queued_events, 1, "{stats:?}");
    assert_eq!(stats.wakeups, 1, "{stats:?}");
}

#[tokio::test]
async fn a_claim_not_renewed_within_its_ttl_returns_the_task_to_ready() {
    let server = TestServer::with_config(StoreConfig {
        claim_ttl_secs: 1,
        ..StoreConfig::default()
    })
    .await;
    let alice = server.agent("alice", None).await;
    let id = server.task("short lease").await;
    let (status, _) = server
        .with_token(&alice)
        .post("/api/tasks/claim", json!({ "id": id }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, leased) = server
        .with_token(&alice)
        .post(
            "/api/leases",
            json!({ "paths": ["src/x.rs"], "ttl_secs": 600 }),
        )
        .await;
    assert_eq!(leased["leases"][0]["task"], id.as_str());
    // The sweeper runs every 200 ms here; wait (bounded) for it to notice.
    let deadline = Instant::now() + Duration::from_secs(15);
    let task = loop {
        let (_, task) = server.as_admin().get(&format!("/api/tasks/{id}")).await;
        if task["status"] == "ready" || Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(task["status"], "ready", "{task}");
    assert_eq!(task["attempts"], 1);
    let (_, leases) = server.as_admin().get("/api/leases").await;
    assert_eq!(
        leases["leases"].as_array().map(Vec::len),
        Some(0),
        "the dead holder's leases are released"
    );
    let (_, events) = server
        .as_admin()
        .get(&format!("/api/events?task={id}&kind=task.reclaimed"))
        .await;
    let reason = events["events"][0]["data"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("claim lease expired"), "{events}");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = TestServer::start().await;
    server.task("counted").await;
    let response = server
        .as_admin()
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("conclave_tasks{status=\"ready\"} 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE conclave_http_requests_total counter"));
}
