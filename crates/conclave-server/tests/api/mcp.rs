//! The MCP endpoint over HTTP: token required, tools listed and callable statelessly, and host
//! names other than loopback accepted only when configured (`allowed_hosts`).

use conclave_core::StoreConfig;
use conclave_server::AppSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestServer;

pub async fn mcp_call(
    server: &TestServer,
    token: Option<&str>,
    host: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = server
        .http
        .request(Method::POST, format!("{}/mcp", server.base))
        .header("host", host)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    let text = response.text().await.expect("text");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn mcp_tools_work_statelessly_for_an_agent_and_only_for_allowed_hosts() {
    let settings = AppSettings {
        allowed_hosts: vec!["conclave.test".to_string()],
        ..AppSettings::default()
    };
    let server = TestServer::with(StoreConfig::default(), settings).await;
    let token = server.agent("alice", Some("coder")).await;
    let id = server.task("write the parser").await;
    let list = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" });

    let (status, _) = mcp_call(&server, None, "127.0.0.1", list.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, answer) = mcp_call(&server, Some(&token), "127.0.0.1", list.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let names: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"claim") && names.contains(&"inbox"),
        "{names:?}"
    );

    // A configured host name is accepted; any other is refused (DNS-rebinding guard).
    let (status, _) = mcp_call(&server, Some(&token), "conclave.test:7420", list.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = mcp_call(&server, Some(&token), "evil.example", list).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A tool call without any handshake (a client that outlived a server restart) works, and
    // acts as the token's agent.
    let call = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "claim", "arguments": {} }
    });
    let (status, answer) = mcp_call(&server, Some(&token), "localhost", call).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains(&format!("Claimed {id}")), "{answer}");
    let (_, task) = server.as_admin().get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task["assignee"], "alice");

    // Errors come back as readable tool results that say what to do next.
    let call = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": { "name": "send", "arguments": { "to": "nobody", "body": "hi" } }
    });
    let (_, answer) = mcp_call(&server, Some(&token), "localhost", call).await;
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("nobody") && text.contains("status"), "{text}");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_a_json_rpc_parse_error() {
    let server = TestServer::start().await;
    let token = server.agent("alice", None).await;
    let response = server
        .http
        .request(Method::POST, format!("{}/mcp", server.base))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .bearer_auth(&token)
        .body("{\"jsonrpc\": \"2.0\", \"id\": 1,")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: Value = response.json().await.expect("a JSON-RPC answer");
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(answer["id"], Value::Null);
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    // JSON that is not a JSON-RPC message is an invalid request, answered with its id.
    for (body, id) in [
        (
            json!({ "jsonrpc": "1.0", "id": 7, "method": "tools/list" }),
            json!(7),
        ),
        (json!({ "id": "x", "method": "tools/list" }), json!("x")),
        (json!([1, 2, 3]), Value::Null),
    ] {
        let response = server
            .http
            .request(Method::POST, format!("{}/mcp", server.base))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Value = response.json().await.expect("a JSON-RPC answer");
        assert_eq!(answer["error"]["code"], -32600, "{body}: {answer}");
        assert_eq!(answer["id"], id, "{body}: {answer}");
    }
    // Without a token, the token is what is refused.
    let response = server
        .http
        .request(Method::POST, format!("{}/mcp", server.base))
        .body("not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A tools/call sent with `headers` (name, value pairs) as `token`.
async fn mcp_call_with(
    server: &TestServer,
    token: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Value {
    let mut request = server
        .http
        .request(Method::POST, format!("{}/mcp", server.base))
        .bearer_auth(token)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a JSON-RPC answer")
}

async fn direct_calls_counted(server: &TestServer) -> u64 {
    let text = server
        .http
        .get(format!("{}/metrics", server.base))
        .bearer_auth(crate::ADMIN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix("conclave_mcp_direct_tool_calls_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the direct-call counter")
}

/// A plain tool call is answered directly, without the SDK's per-request service; anything the
/// SDK must judge (here an `Accept` with weights, an older protocol version) goes through it.
/// Both give the same answers: results, tool errors, unknown tools, bad arguments.
#[tokio::test]
async fn plain_tool_calls_are_answered_directly_and_the_same_as_through_the_sdk() {
    let server = TestServer::start().await;
    let token = server.agent("alice", Some("coder")).await;
    let bob = server.agent("bob", None).await;
    let parser = server.task("write the parser").await;
    let plain = [
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let weighted = [
        ("accept", "application/json;q=1, text/event-stream;q=0.9"),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let older = [
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2024-11-05"),
    ];
    let calls = [
        json!({ "name": "tasks", "arguments": {} }),
        json!({ "name": "inbox", "arguments": {} }),
        json!({ "name": "claim", "arguments": { "id": "T-999" } }),
        json!({ "name": "send", "arguments": { "to": "bob" } }),
        json!({ "name": "no_such_tool", "arguments": {} }),
        json!({ "name": "locks" }),
    ];
    let before = direct_calls_counted(&server).await;
    for (n, params) in calls.iter().enumerate() {
        let body =
            json!({ "jsonrpc": "2.0", "id": n + 10, "method": "tools/call", "params": params });
        let direct = mcp_call_with(&server, &token, &plain, &body).await;
        let counted = direct_calls_counted(&server).await;
        assert_eq!(
            counted,
            before + n as u64 + 1,
            "{params} was answered directly"
        );
        for through_sdk in [&weighted[..], &older[..]] {
            let sdk = mcp_call_with(&server, &token, through_sdk, &body).await;
            assert_eq!(direct, sdk, "{params}: the same answer both ways");
        }
        assert_eq!(
            direct_calls_counted(&server).await,
            counted,
            "{params} went through the SDK"
        );
        assert_eq!(direct["id"], n + 10);
    }
    // A tool call whose params cannot be read is invalid params (-32602), with its id.
    for params in [
        json!({ "name": 5 }),
        json!({ "name": "tasks", "arguments": [1] }),
    ] {
        let body = json!({ "jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": params });
        let answer = mcp_call_with(&server, &token, &plain, &body).await;
        assert_eq!(answer["error"]["code"], -32602, "{params}: {answer}");
        assert_eq!(answer["id"], 41, "{answer}");
    }

    // A host that is not allowed is refused for a tool call too (the SDK judges it).
    let call = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "tasks", "arguments": {} }
    });
    let (status, _) = mcp_call(&server, Some(&token), "evil.example", call.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = mcp_call(&server, Some(&token), "evil.example:80", call).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The status tool's team lines say who works on what.
    let claim = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "claim", "arguments": {} }
    });
    mcp_call_with(&server, &bob, &plain, &claim).await;
    let status = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "status", "arguments": {} }
    });
    let answer = mcp_call_with(&server, &token, &plain, &status).await;
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains(&format!("- bob (no role) idle on {parser}")),
        "{text}"
    );

    // A call that writes is made once, as the token's agent.
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "send", "arguments": { "to": "bob", "body": "hello" } }
    });
    let answer = mcp_call_with(&server, &token, &plain, &body).await;
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    let (_, sent) = server.as_admin().get("/api/messages").await;
    let from_alice = sent["messages"]
        .as_array()
        .map(|all| all.iter().filter(|m| m["sender"] == "alice").count());
    assert_eq!(from_alice, Some(1), "{sent}");
}
