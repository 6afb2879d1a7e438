//! Privacy between agents: a direct message is read by its sender, its recipients and the admin;
//! a role message by that role's agents; a broadcast by all. Every read path is checked with a
//! third agent's token: the event log, its live stream (backfill and live), search over HTTP and
//! MCP, and message threads.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestServer;
use crate::events::read_events;
use crate::mcp::mcp_call;

const SECRET: &str = "zebra secret plans";

/// The message ids among `message.sent` events.
fn sent_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "message.sent")
        .filter_map(|e| e["data"]["id"].as_str().map(str::to_string))
        .collect()
}

async fn send(server: &TestServer, token: &str, to: &str, body: &str) -> String {
    let (status, message) = server
        .with_token(token)
        .post("/api/messages", json!({ "to": to, "body": body }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    message["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn a_third_agent_reads_no_direct_message_on_any_path() {
    let server = TestServer::start().await;
    let alice = server.agent("alice", Some("coder")).await;
    let bob = server.agent("bob", Some("coder")).await;
    let carol = server.agent("carol", Some("reviewer")).await;

    // Carol follows the live stream from before anything was sent.
    let live = server
        .with_token(&carol)
        .request(Method::GET, "/api/events/stream?kind=message.")
        .send()
        .await
        .expect("stream");
    let direct = send(&server, &alice, "bob", SECRET).await;
    let to_coders = send(&server, &alice, "role:coder", "zebra for coders").await;
    let to_reviewers = send(&server, &alice, "role:reviewer", "zebra for reviewers").await;
    let (status, _) = server
        .with_token(&bob)
        .post("/api/inbox/ack", json!({ "ids": [direct] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let broadcast = send(&server, &alice, "all", "zebra for all").await;

    // Live: the direct message, the coders' message and bob's acknowledgement never arrive; the
    // next events carol may read do, in order.
    let events = read_events(live, 2).await;
    assert_eq!(
        sent_ids(&events),
        vec![to_reviewers.clone(), broadcast.clone()]
    );

    // Resumed from the start (backfill from the store): the same.
    let resumed = server
        .with_token(&carol)
        .request(Method::GET, "/api/events/stream?kind=message.")
        .header("last-event-id", "0")
        .send()
        .await
        .expect("stream");
    let events = read_events(resumed, 2).await;
    assert_eq!(
        sent_ids(&events),
        vec![to_reviewers.clone(), broadcast.clone()]
    );

    // The event log: carol sees what she may read; bob, the admin and alice see theirs.
    let (_, log) = server
        .with_token(&carol)
        .get("/api/events?kind=message.")
        .await;
    let events = log["events"].as_array().expect("events").clone();
    assert_eq!(
        sent_ids(&events),
        vec![to_reviewers.clone(), broadcast.clone()]
    );
    assert!(events.iter().all(|e| e["kind"] != "message.acked"), "{log}");
    assert!(!log.to_string().contains(SECRET), "{log}");
    let (_, log) = server
        .with_token(&bob)
        .get("/api/events?kind=message.")
        .await;
    let events = log["events"].as_array().expect("events").clone();
    assert_eq!(
        sent_ids(&events),
        vec![direct.clone(), to_coders.clone(), broadcast.clone()]
    );
    assert!(events.iter().any(|e| e["kind"] == "message.acked"), "{log}");
    let (_, log) = server.as_admin().get("/api/events?kind=message.sent").await;
    assert_eq!(log["events"].as_array().expect("events").len(), 4, "{log}");

    // A page filled past unreadable events: newest first, one at a time.
    let (_, page) = server
        .with_token(&carol)
        .get("/api/events?kind=message.sent&desc=true&limit=1")
        .await;
    assert_eq!(
        sent_ids(page["events"].as_array().expect("events")),
        vec![broadcast.clone()]
    );
    let (_, all) = server.as_admin().get("/api/events?kind=message.sent").await;
    let reviewers_seq = all["events"][2]["seq"].as_i64().expect("seq");
    let (_, page) = server
        .with_token(&carol)
        .get(&format!(
            "/api/events?kind=message.sent&limit=1&before={}",
            reviewers_seq
        ))
        .await;
    assert_eq!(
        page["events"],
        json!([]),
        "nothing before carol's first message: {page}"
    );

    // Search over HTTP.
    let (_, hits) = server.with_token(&carol).get("/api/search?q=zebra").await;
    let ids: Vec<&str> = hits["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert!(
        ids.contains(&to_reviewers.as_str()) && ids.contains(&broadcast.as_str()),
        "{hits}"
    );
    assert!(
        !ids.contains(&direct.as_str()) && !ids.contains(&to_coders.as_str()),
        "{hits}"
    );
    let (_, hits) = server.with_token(&bob).get("/api/search?q=zebra").await;
    assert!(hits.to_string().contains(&direct), "{hits}");

    // Search over MCP.
    let call = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "search", "arguments": { "query": "zebra" } }
    });
    let (status, answer) = mcp_call(&server, Some(&carol), "127.0.0.1", call.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains(&broadcast), "{answer}");
    assert!(!text.contains(&format!("{direct} ")), "{answer}");
    let (_, answer) = mcp_call(&server, Some(&bob), "127.0.0.1", call).await;
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains(&format!("{direct} ")), "{answer}");

    // The direct message's thread.
    let (_, thread) = server
        .with_token(&carol)
        .get(&format!("/api/messages?thread={direct}"))
        .await;
    assert_eq!(thread["messages"], json!([]), "{thread}");
    let (_, thread) = server
        .with_token(&bob)
        .get(&format!("/api/messages?thread={direct}"))
        .await;
    assert_eq!(thread["messages"][0]["body"], SECRET);
}
