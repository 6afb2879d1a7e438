//! Property-based fuzzing of the HTTP API on the stable toolchain: random JSON, near-valid bodies
//! (a valid body with one field dropped, replaced by a random value, an unknown field added, or
//! the whole turned into an array) and raw bytes, sent to the write endpoints and the hook
//! endpoints of a real in-process server on loopback, as an agent and as the admin.
//!
//! Every answer must be below 500 (a handler that panics drops the connection, which fails too),
//! and a refused (4xx) request must change nothing: the event log gains no event but the
//! sweeper's. Cases: `PROPTEST_CASES` (default 64, kept small for CI; set it to thousands for a
//! long run).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use conclave_core::{Store, StoreConfig};
use conclave_server::{App, AppSettings};
use proptest::prelude::*;
use proptest::test_runner::Config;
use reqwest::Method;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "cva_fuzz_admin_token";
const DEFAULT_CASES: u32 = 64;

/// Answers seen, by class (2xx, 4xx), to show that the generators reach both.
static ACCEPTED: AtomicU32 = AtomicU32::new(0);
static REFUSED: AtomicU32 = AtomicU32::new(0);

/// One server for all cases (booting one per case would spend the CI budget on start-ups).
struct Target {
    runtime: tokio::runtime::Runtime,
    base: String,
    http: reqwest::Client,
    agent_token: String,
    /// One case at a time: a case compares the log before and after itself.
    one_case: std::sync::Mutex<()>,
    _shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("project");
        std::fs::create_dir(&root).expect("project dir");
        let store =
            Store::open(&dir.path().join("conclave.db"), StoreConfig::default()).expect("store");
        let shutdown = CancellationToken::new();
        let settings = AppSettings {
            project_root: Some(root),
            ..AppSettings::default()
        };
        let (base, http, agent_token) = runtime.block_on(async {
            let app = App::new(store, ADMIN, settings, shutdown.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr: SocketAddr = listener.local_addr().expect("addr");
            tokio::spawn(conclave_server::run(listener, app, shutdown.clone()));
            let base = format!("http://{addr}");
            let http = reqwest::Client::new();
            let mut agent_token = String::new();
            for name in ["fuzzer", "peer"] {
                let created: Value = http
                    .post(format!("{base}/api/agents"))
                    .bearer_auth(ADMIN)
                    .json(&json!({ "name": name, "role": "coder" }))
                    .send()
                    .await
                    .expect("add agent")
                    .json()
                    .await
                    .expect("agent json");
                if name == "fuzzer" {
                    agent_token = created["token"].as_str().expect("token").to_string();
                }
            }
            // Tasks for the id-bearing endpoints to find; the first one claimed by the fuzzer.
            for title in ["first", "second"] {
                http.post(format!("{base}/api/tasks"))
                    .bearer_auth(ADMIN)
                    .json(&json!({ "title": title }))
                    .send()
                    .await
                    .expect("task");
            }
            http.post(format!("{base}/api/tasks/claim"))
                .bearer_auth(&agent_token)
                .json(&json!({ "id": "T-1" }))
                .send()
                .await
                .expect("claim");
            (base, http, agent_token)
        });
        Target {
            runtime,
            base,
            http,
            agent_token,
            one_case: std::sync::Mutex::new(()),
            _shutdown: shutdown,
            _dir: dir,
        }
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// An endpoint with a valid body to start mutating from.
fn endpoints() -> Vec<(Method, &'static str, Value)> {
    let hook = json!({
        "session_id": "s-1", "cwd": "/tmp", "hook_event_name": "PreToolUse",
        "tool_name": "Edit", "tool_input": { "file_path": "src/a.rs" },
    });
    vec![
        (
            Method::POST,
            "/api/tasks",
            json!({ "title": "t", "body": "b", "after": [], "role": null, "caps": [],
                    "priority": 1, "parent": null }),
        ),
        (Method::POST, "/api/tasks/claim", json!({ "id": null })),
        (
            Method::POST,
            "/api/tasks/T-1/done",
            json!({ "summary": "s", "files": ["src/a.rs"] }),
        ),
        (
            Method::POST,
            "/api/tasks/T-2/fail",
            json!({ "reason": "r" }),
        ),
        (
            Method::PATCH,
            "/api/tasks/T-2",
            json!({ "title": "x", "priority": 2 }),
        ),
        (
            Method::POST,
            "/api/tasks/T-2/status",
            json!({ "status": "in_progress" }),
        ),
        (
            Method::POST,
            "/api/leases",
            json!({ "paths": ["src/a.rs"], "mode": "exclusive", "ttl_secs": 60,
                    "reason": "r", "task": null }),
        ),
        (
            Method::POST,
            "/api/leases/release",
            json!({ "paths": ["src/a.rs"], "force": false }),
        ),
        (
            Method::POST,
            "/api/messages",
            json!({ "to": "peer", "body": "hi", "thread": null, "kind": "question",
                    "urgent": false }),
        ),
        (
            Method::POST,
            "/api/notes",
            json!({ "title": "n", "kind": "decision", "body": "b", "tags": ["x"],
                    "files": ["src/a.rs"], "supersedes": null, "task": null }),
        ),
        (Method::POST, "/api/inbox/ack", json!({ "ids": ["M-1"] })),
        (Method::POST, "/hooks/pre-tool-use", hook.clone()),
        (Method::POST, "/hooks/post-tool-use", hook),
        (
            Method::POST,
            "/hooks/session-start",
            json!({ "session_id": "s-1", "source": "startup" }),
        ),
        (
            Method::POST,
            "/hooks/stop",
            json!({ "session_id": "s-1", "stop_hook_active": false }),
        ),
        (Method::POST, "/hooks/user-prompt-submit", json!({})),
        (Method::POST, "/hooks/pre-compact", json!({})),
        (
            Method::POST,
            "/hooks/session-end",
            json!({ "session_id": "s-1" }),
        ),
    ]
}

/// Strings that have hurt servers: empty, NUL, escapes, absolute and parent paths, globs, long
/// runs, non-ASCII, control characters.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\0".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("/etc/passwd".to_string()),
        Just("src\\a.rs".to_string()),
        Just("**".to_string()),
        Just("*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*".to_string()),
        Just("T-1".to_string()),
        Just("T-0".to_string()),
        Just("T-99999999999999999999".to_string()),
        Just("role:coder".to_string()),
        Just("all".to_string()),
        Just("\u{1b}[2J\u{7}".to_string()),
        Just("é\u{200b}\u{feff}".to_string()),
        (1usize..6000).prop_map(|n| "x".repeat(n)),
        "\\PC{0,40}",
        "[a-z/.*?\\[\\]!-]{0,30}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(2.0), Just(-0.0), Just(1e308), Just(0.5), any::<f64>()]
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,10}", inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    /// Any JSON value at all.
    Random(Value),
    /// The valid body without its `n`-th field.
    Drop(usize),
    /// The valid body with its `n`-th field replaced.
    Replace(usize, Value),
    /// The valid body with an unknown field.
    Unknown(String, Value),
    /// The valid body's values as a positional array.
    Positional,
    /// Bytes that may not be JSON at all.
    Raw(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => json_value().prop_map(Body::Random),
        1 => (0usize..8).prop_map(Body::Drop),
        4 => ((0usize..8), json_value()).prop_map(|(i, v)| Body::Replace(i, v)),
        1 => ("[a-z_]{1,12}", json_value()).prop_map(|(k, v)| Body::Unknown(k, v)),
        1 => Just(Body::Positional),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Raw),
    ]
}

fn render(valid: &Value, body: &Body) -> Vec<u8> {
    let object = valid.as_object().cloned().unwrap_or_default();
    let keys: Vec<String> = object.keys().cloned().collect();
    let value = match body {
        Body::Raw(bytes) => return bytes.clone(),
        Body::Random(value) => value.clone(),
        Body::Drop(i) => {
            let mut object = object;
            if !keys.is_empty() {
                object.remove(&keys[i % keys.len()]);
            }
            Value::Object(object)
        }
        Body::Replace(i, value) => {
            let mut object = object;
            if !keys.is_empty() {
                object.insert(keys[i % keys.len()].clone(), value.clone());
            }
            Value::Object(object)
        }
        Body::Unknown(key, value) => {
            let mut object = object;
            object.insert(format!("zz_{key}"), value.clone());
            Value::Object(object)
        }
        Body::Positional => Value::Array(object.into_iter().map(|(_, v)| v).collect()),
    };
    serde_json::to_vec(&value).expect("serialize")
}

async fn last_seq(target: &Target) -> i64 {
    let page: Value = target
        .http
        .get(format!("{}/api/events?desc=true&limit=1", target.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events json");
    page["events"][0]["seq"].as_i64().unwrap_or(0)
}

/// Events after `seq` that a request (rather than the sweeper) wrote.
async fn written_since(target: &Target, seq: i64) -> Vec<Value> {
    let page: Value = target
        .http
        .get(format!("{}/api/events?after={seq}", target.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events json");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["actor"] != conclave_core::model::SYSTEM_NAME)
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn no_body_makes_the_api_fail_and_a_refusal_changes_nothing(
        endpoint in 0usize..64,
        as_admin in prop::bool::weighted(0.25),
        body in body(),
    ) {
        let target = target();
        let _alone = target.one_case.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let endpoints = endpoints();
        let (method, path, valid) = endpoints[endpoint % endpoints.len()].clone();
        let bytes = render(&valid, &body);
        target.runtime.block_on(async {
            let before = last_seq(target).await;
            let token = if as_admin { ADMIN } else { target.agent_token.as_str() };
            let answer = target
                .http
                .request(method.clone(), format!("{}{path}", target.base))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(bytes.clone())
                .send()
                .await;
            let response = answer.unwrap_or_else(|error| {
                panic!("{method} {path} dropped the connection (a panic?): {error}")
            });
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let sent = String::from_utf8_lossy(&bytes);
            assert!(status < 500, "{method} {path} {sent} answered {status}: {text}");
            let counter = if status < 300 { &ACCEPTED } else { &REFUSED };
            counter.fetch_add(1, Ordering::Relaxed);
            let (accepted, refused) = (ACCEPTED.load(Ordering::Relaxed), REFUSED.load(Ordering::Relaxed));
            if accepted + refused == cases() {
                eprintln!("fuzz: {} cases, {accepted} accepted, {refused} refused, none failed", cases());
            }
            if (400..500).contains(&status) {
                let written = written_since(target, before).await;
                assert!(
                    written.is_empty(),
                    "{method} {path} {sent} was refused ({status}: {text}) but wrote {written:#?}"
                );
            }
        });
    }
}

/// Read endpoints and the query parameters they take (the inbox without `wait`, which blocks by
/// design; the live stream, which never ends, is left out).
const QUERIES: &[(&str, &[&str])] = &[
    (
        "/api/events",
        &[
            "after", "agent", "task", "kind", "since", "until", "before", "limit", "desc",
        ],
    ),
    (
        "/api/tasks",
        &["status", "assignee", "role", "all", "limit"],
    ),
    ("/api/notes", &["kind", "all", "limit"]),
    ("/api/search", &["q", "kind", "limit"]),
    ("/api/messages", &["to", "thread", "limit", "agent"]),
    ("/api/inbox", &["limit"]),
    ("/api/leases", &[]),
    ("/api/agents", &[]),
    ("/api/status", &[]),
    ("/api/tasks/T-1", &[]),
];

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        nasty_string(),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("2.0".to_string()),
        Just("true".to_string()),
        Just("2026-11-30T00:00:00Z".to_string()),
        Just("T-1".to_string()),
    ]
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn no_query_makes_a_read_fail_or_write(
        endpoint in 0usize..64,
        as_admin in prop::bool::weighted(0.5),
        params in prop::collection::vec((0usize..16, query_value()), 0..4),
        unknown in prop::option::weighted(0.2, ("[a-z]{1,8}", query_value())),
    ) {
        let target = target();
        let _alone = target.one_case.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (path, names) = QUERIES[endpoint % QUERIES.len()];
        let mut query: Vec<(String, String)> = params
            .into_iter()
            .filter(|_| !names.is_empty())
            .map(|(i, value)| (names[i % names.len()].to_string(), value))
            .collect();
        query.extend(unknown);
        target.runtime.block_on(async {
            let before = last_seq(target).await;
            let token = if as_admin { ADMIN } else { target.agent_token.as_str() };
            let response = target
                .http
                .get(format!("{}{path}", target.base))
                .query(&query)
                .bearer_auth(token)
                .send()
                .await
                .unwrap_or_else(|error| panic!("GET {path} {query:?} dropped the connection: {error}"));
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            assert!(status < 500, "GET {path} {query:?} answered {status}: {text}");
            let written = written_since(target, before).await;
            assert!(written.is_empty(), "GET {path} {query:?} wrote {written:#?}");
        });
    }
}
