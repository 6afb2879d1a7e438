//! Every answer the test suite receives is checked against the OpenAPI document: the body of a
//! JSON response must validate against the schema the document gives for its route and status
//! (JSON Schema 2020-12, as OpenAPI 3.1 says). The document is built in-process, as the server
//! builds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Bodies larger than this are not checked (keeps the suite's cost bounded).
const MAX_CHECKED_BODY: usize = 1 << 20;

struct Contract {
    document: Value,
    validators: Mutex<HashMap<String, Option<Arc<jsonschema::Validator>>>>,
}

fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| Contract {
        document: conclave_server::openapi_document(),
        validators: Mutex::new(HashMap::new()),
    })
}

/// The documented path template `path` (no query) is an instance of; literal segments win over
/// parameters (`/api/tasks/claim` before `/api/tasks/{id}`).
fn template_of<'d>(document: &'d Value, method: &str, path: &str) -> Option<&'d str> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(&str, usize)> = None;
    for (template, item) in document["paths"].as_object()? {
        if item.get(method).is_none() {
            continue;
        }
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut parameters = 0;
        let matches = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') {
                parameters += 1;
                !segment.is_empty()
            } else {
                part == segment
            }
        });
        if matches && best.is_none_or(|(_, fewest)| parameters < fewest) {
            best = Some((template, parameters));
        }
    }
    best.map(|(template, _)| template)
}

/// Panics when a JSON answer does not match the document.
pub fn check_response(method: &Method, path: &str, status: StatusCode, body: &Value) {
    let path = path.split('?').next().unwrap_or(path);
    let method = method.as_str().to_ascii_lowercase();
    let contract = contract();
    let Some(template) = template_of(&contract.document, &method, path) else {
        // Routes outside the document (the dashboard, unknown paths) answer 404s and pages.
        return;
    };
    if body.to_string().len() > MAX_CHECKED_BODY {
        return;
    }
    let responses = &contract.document["paths"][template][&method]["responses"];
    let status_key = status.as_u16().to_string();
    let (documented, key) = match responses.get(&status_key) {
        Some(response) => (response, status_key),
        None => {
            assert!(
                !status.is_success(),
                "{method} {template} answered {status}, which the document does not list"
            );
            (&responses["default"], "default".to_string())
        }
    };
    let cache_key = format!("{method} {template} {key}");
    let validator = {
        let mut validators = contract.validators.lock().expect("validators");
        validators
            .entry(cache_key.clone())
            .or_insert_with(|| {
                let schema = documented["content"]["application/json"]["schema"].clone();
                if schema.is_null() {
                    return None;
                }
                let root = json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "allOf": [schema],
                    "components": contract.document["components"],
                });
                Some(Arc::new(
                    jsonschema::draft202012::new(&root)
                        .unwrap_or_else(|error| panic!("{cache_key}: invalid schema: {error}")),
                ))
            })
            .clone()
    };
    let Some(validator) = validator else {
        return;
    };
    let errors: Vec<String> = validator
        .iter_errors(body)
        .take(5)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{cache_key}: the answer does not match the OpenAPI document: {errors:#?}\n{body}"
    );
}

#[test]
fn paths_resolve_to_their_templates_literal_segments_first() {
    let document = &contract().document;
    assert_eq!(
        template_of(document, "post", "/api/tasks/claim"),
        Some("/api/tasks/claim")
    );
    assert_eq!(
        template_of(document, "get", "/api/tasks/T-3"),
        Some("/api/tasks/{id}")
    );
    assert_eq!(template_of(document, "get", "/nowhere"), None);
}

#[test]
fn an_answer_that_breaks_its_schema_is_caught() {
    let caught = std::panic::catch_unwind(|| {
        check_response(
            &Method::GET,
            "/api/tasks",
            StatusCode::OK,
            &json!({ "tasks": [{ "id": 3 }] }),
        )
    });
    assert!(caught.is_err());
    check_response(
        &Method::GET,
        "/api/tasks",
        StatusCode::OK,
        &json!({ "tasks": [] }),
    );
}

/// Schemathesis (seed 3) found `POST /api/tasks/{id}/status` accepting `claimed`, which the
/// document's enum left out: the statuses the server accepts from a holder and the ones the
/// document declares must be the same set.
#[tokio::test]
async fn the_settable_statuses_documented_are_the_ones_accepted() {
    let document = conclave_server::openapi_document();
    let mut declared: Vec<String> =
        document["components"]["schemas"]["TaskStatusUpdate"]["properties"]["status"]["enum"]
            .as_array()
            .expect("an enum of statuses")
            .iter()
            .filter_map(|status| status.as_str().map(str::to_string))
            .collect();
    let server = crate::TestServer::start().await;
    let token = server.agent("alice", None).await;
    let agent = server.with_token(&token);
    let mut accepted = Vec::new();
    for status in [
        "pending",
        "ready",
        "claimed",
        "in_progress",
        "review",
        "blocked",
        "done",
        "failed",
        "cancelled",
    ] {
        let id = server.task(&format!("set {status}")).await;
        let (answer, body) = agent.post("/api/tasks/claim", json!({ "id": id })).await;
        assert_eq!(answer, StatusCode::OK, "{body}");
        let (answer, _) = agent
            .post(
                &format!("/api/tasks/{id}/status"),
                json!({ "status": status }),
            )
            .await;
        if answer.is_success() {
            accepted.push(status.to_string());
        }
    }
    accepted.sort();
    declared.sort();
    assert_eq!(accepted, declared);
}
