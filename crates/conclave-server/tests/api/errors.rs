//! Guarantee 7: bad input gets a clear JSON error with a 4xx status and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestServer;

async fn event_count(server: &TestServer) -> i64 {
    let (_, status) = server.as_admin().get("/api/status").await;
    status["last_seq"].as_i64().expect("last_seq")
}

#[tokio::test]
async fn bad_input_is_refused_with_a_json_error_and_changes_nothing() {
    let server = TestServer::start().await;
    let token = server.agent("alice", None).await;
    // An agent's first request records that it is alive (`offline` to `idle`): make it before
    // counting, so that only what the refused requests would leave is counted.
    let (status, _) = server.with_token(&token).get("/api/status").await;
    assert_eq!(status, StatusCode::OK);
    let before = event_count(&server).await;
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/api/tasks",
            json!({}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/tasks",
            json!({ "title": "" }),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/tasks",
            json!({ "title": "x", "after": ["T-99"] }),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/tasks",
            json!({ "title": "x", "after": ["nonsense"] }),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/tasks",
            json!({ "title": "x", "bogus": 1 }),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/tasks/T-0",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/tasks/T-5",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/api/tasks?status=finished",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/agents",
            json!({ "name": "bad name!" }),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/agents",
            json!({ "name": "all" }),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/api/agents",
            json!({ "name": "alice" }),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            Method::POST,
            "/api/messages",
            json!({ "to": "nobody", "body": "x" }),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/api/search?q=%28%29",
            Value::Null,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/api/nope",
            Value::Null,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/api/tasks",
            Value::Null,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, expected_status, expected_code) in cases {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = server
            .as_admin()
            .call(method.clone(), path, body.clone())
            .await;
        assert_eq!(
            status, expected_status,
            "{method} {path} {body:?}: {answer}"
        );
        assert_eq!(
            answer["error"]["code"], expected_code,
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Agent-side bad input.
    let (status, answer) = server
        .with_token(&token)
        .post("/api/leases", json!({ "paths": ["../../etc/passwd"] }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("escapes"),
        "{answer}"
    );
    let (status, _) = server
        .with_token(&token)
        .post("/api/leases", json!({ "paths": ["a"], "ttl_secs": -5 }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        event_count(&server).await,
        before,
        "refused requests must leave no trace"
    );
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let admin = server.as_admin();
    let response = admin
        .request(Method::POST, "/api/tasks")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_input");

    let huge = "x".repeat(conclave_server::MAX_BODY_BYTES + 10);
    let response = admin
        .request(Method::POST, "/api/tasks")
        .header("content-type", "application/json")
        .body(format!("{{\"title\":\"{huge}\"}}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let response = admin
        .request(Method::POST, "/api/tasks")
        .header("content-type", "text/plain")
        .body("title")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let (status, _) = admin.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_describes_every_operation() {
    let server = TestServer::start().await;
    let (_, doc) = server.anonymous().get("/api/openapi.json").await;
    for (path, method) in [
        ("/api/tasks", "post"),
        ("/api/tasks/claim", "post"),
        ("/api/leases", "post"),
        ("/api/inbox", "get"),
        ("/api/events/stream", "get"),
        ("/api/tasks/{id}/done", "post"),
    ] {
        assert!(
            doc["paths"][path][method]["summary"].is_string(),
            "{method} {path} undocumented"
        );
    }
    assert!(doc["components"]["schemas"]["NewTask"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    // OpenAPI 3.1: JSON Schema 2020-12, so no 3.0 `nullable`, and references resolve.
    let text = doc.to_string();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(
        !text.contains("\"nullable\""),
        "3.0's nullable in a 3.1 document"
    );
    assert!(!text.contains("#/$defs/"), "a reference outside components");
    assert_eq!(
        doc["components"]["schemas"]["Task"]["properties"]["assignee"]["type"],
        json!(["string", "null"])
    );
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_told_the_scheme() {
    let server = TestServer::start().await;
    for caller in [server.anonymous(), server.with_token("cvt_wrong")] {
        let response = caller
            .request(Method::GET, "/api/tasks")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
    }
}

#[tokio::test]
async fn a_body_must_be_an_object_and_integers_may_be_written_as_integral_floats() {
    let server = TestServer::start().await;
    let before = event_count(&server).await;
    // serde's positional form of a struct is not an object: refused, nothing created.
    let (status, body) = server.as_admin().post("/api/tasks", json!(["title"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("object"),
        "{body}"
    );
    for not_an_object in [json!("title"), json!(3), json!(null)] {
        let (status, _) = server.as_admin().post("/api/tasks", not_an_object).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(event_count(&server).await, before);
    // `2.0` is an integer to JSON Schema, and to the server; `2.5` is not.
    let (status, task) = server
        .as_admin()
        .post("/api/tasks", json!({ "title": "t", "priority": 2.0 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!(task["priority"], 2);
    let (status, _) = server
        .as_admin()
        .post("/api/tasks", json!({ "title": "t", "priority": 2.5 }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
