//! The event log over HTTP: queries, the live SSE stream, and resuming after Last-Event-ID.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::TestServer;

/// Reads SSE `data:` payloads from a streaming response until `n` events arrived.
pub async fn read_events(response: reqwest::Response, n: usize) -> Vec<Value> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .expect("chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push(serde_json::from_str(data.trim()).expect("event json"));
                }
            }
        }
    }
    events
}

#[tokio::test]
async fn a_live_stream_delivers_new_events_and_resumes_after_last_event_id() {
    let server = TestServer::start().await;
    server.task("before the stream").await;
    let (_, status) = server.as_admin().get("/api/status").await;
    let seen = status["last_seq"].as_i64().expect("seq");

    // Live: an event created after connecting arrives.
    let live = server
        .as_admin()
        .request(Method::GET, "/api/events/stream?kind=task.created")
        .send()
        .await
        .expect("stream");
    server.task("while streaming").await;
    let events = read_events(live, 1).await;
    assert_eq!(events[0]["data"]["title"], "while streaming");

    // Resume: everything after the given id comes first, in order, then live.
    let resumed = server
        .as_admin()
        .request(Method::GET, "/api/events/stream")
        .header("last-event-id", seen.to_string())
        .send()
        .await
        .expect("stream");
    server.task("after resume").await;
    let events = read_events(resumed, 4).await;
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs[0], seen + 1);
    let titles: Vec<&str> = events
        .iter()
        .filter_map(|e| e["data"]["title"].as_str())
        .collect();
    assert_eq!(titles, vec!["while streaming", "after resume"]);
}

#[tokio::test]
async fn events_can_be_queried_by_agent_task_kind_and_sequence() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    let first = server.task("one").await;
    server.task("two").await;
    let (_, claimed) = server
        .with_token(&alice)
        .post("/api/tasks/claim", json!({ "id": first }))
        .await;
    assert_eq!(claimed["task"]["id"], first.as_str());

    let (_, by_task) = server
        .as_admin()
        .get(&format!("/api/events?task={first}"))
        .await;
    let kinds: Vec<&str> = by_task["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, vec!["task.created", "task.ready", "task.claimed"]);

    let (_, by_agent) = server
        .as_admin()
        .get("/api/events?agent=alice&kind=task.")
        .await;
    let events = by_agent["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor"], "alice");

    let after = events[0]["seq"].as_i64().expect("seq") - 1;
    let (_, later) = server
        .as_admin()
        .get(&format!("/api/events?after={after}"))
        .await;
    assert_eq!(later["events"][0]["kind"], "task.claimed");
    let (_, newest) = server.as_admin().get("/api/events?desc=true&limit=1").await;
    assert_eq!(newest["events"][0]["kind"], "task.claimed");
}

#[tokio::test]
async fn an_unknown_event_kind_or_misshapen_data_is_refused_with_a_clear_message() {
    let server = TestServer::start().await;
    server.agent("alice", None).await;
    let (status, body) = server
        .as_admin()
        .post(
            "/api/events",
            json!({"kind": "agent.danced", "agent": "alice", "data": {}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unknown event kind \"agent.danced\"") && message.contains("agent.tool"),
        "{message}"
    );
    let (status, body) = server
        .as_admin()
        .post(
            "/api/events",
            json!({"kind": "agent.text", "agent": "alice", "data": {"text": 3}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("agent.text event does not fit"),
        "{message}"
    );
    let (_, events) = server.as_admin().get("/api/events?kind=agent.").await;
    assert_eq!(
        events["events"].as_array().map(|events| events
            .iter()
            .filter(|e| e["actor"] == "admin" && e["kind"] != "agent.registered")
            .count()),
        Some(0),
        "{events}"
    );
}

#[tokio::test]
async fn the_supervisor_records_agent_observations_and_nothing_else() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", None).await;
    let observation = json!({
        "kind": "agent.tool", "agent": "alice",
        "data": {"tool": "Write", "input": "src/a.rs", "result_bytes": 12}
    });
    let (status, body) = server
        .as_admin()
        .post("/api/events", observation.clone())
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, events) = server.as_admin().get("/api/events?kind=agent.tool").await;
    let recorded = &events["events"][0];
    assert_eq!(
        (&recorded["agent"], &recorded["data"]["tool"]),
        (&json!("alice"), &json!("Write"))
    );

    // Refused, and nothing written: an agent posting, another family's kind, a control (which
    // has its own endpoint), an unknown agent.
    let refused = [
        (
            server
                .with_token(&alice)
                .post("/api/events", observation.clone())
                .await,
            403,
        ),
        (
            server
                .as_admin()
                .post(
                    "/api/events",
                    json!({"kind": "task.done", "agent": "alice",
                           "data": {"summary": "forged", "files": []}}),
                )
                .await,
            400,
        ),
        (
            server
                .as_admin()
                .post(
                    "/api/events",
                    json!({"kind": "agent.control", "agent": "alice",
                           "data": {"action": "pause"}}),
                )
                .await,
            400,
        ),
        (
            server
                .as_admin()
                .post(
                    "/api/events",
                    json!({"kind": "agent.tool", "agent": "nobody",
                           "data": observation["data"].clone()}),
                )
                .await,
            404,
        ),
    ];
    for ((status, body), expected) in refused {
        assert_eq!(status.as_u16(), expected, "{body}");
    }
    let (_, events) = server.as_admin().get("/api/events?kind=agent.tool").await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
    let (_, events) = server.as_admin().get("/api/events?kind=task.done").await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(0),
        "{events}"
    );
}
