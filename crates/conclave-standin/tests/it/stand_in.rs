//! The stand-in's HTTP answers, checked with a plain HTTP client: the streaming format, the
//! JSON format, `count_tokens`, side requests, per-agent lanes, errors and held replies.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use conclave_standin::{
    AnsweredBy, EXHAUSTED_TEXT, Gate, Reply, RequestKind, SIDE_TEXT, Script, StandIn, StandInHandle,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// An answer as the client sees it, streamed or not.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    /// The SSE events' names in order (empty for a JSON answer).
    event_names: Vec<String>,
    /// The message rebuilt from the events, or the JSON body.
    message: Value,
}

/// A request body shaped like the CLI's main requests.
fn main_body(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "claude-opus-5-5",
        "max_tokens": 1000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are a test agent"}],
        "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
    })
}

async fn post(handle: &StandInHandle, path: &str, api_key: &str, body: &Value) -> Result<Answer> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", handle.url()))
        .header("x-api-key", api_key)
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await?;
    if content_type.starts_with("text/event-stream") {
        let (event_names, message) = rebuild_from_events(&text)?;
        Ok(Answer {
            status,
            content_type,
            event_names,
            message,
        })
    } else {
        Ok(Answer {
            status,
            content_type,
            event_names: Vec::new(),
            message: serde_json::from_str(&text)?,
        })
    }
}

/// Parses an event stream and rebuilds the message the way an SDK client does.
fn rebuild_from_events(text: &str) -> Result<(Vec<String>, Value)> {
    let mut names = Vec::new();
    let mut message = Value::Null;
    let mut partial_json: Vec<String> = Vec::new();
    for frame in text.split("\n\n").filter(|frame| !frame.trim().is_empty()) {
        let mut name = None;
        let mut data = None;
        for line in frame.lines() {
            if let Some(rest) = line.strip_prefix("event: ") {
                name = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(rest)?);
            }
        }
        let (Some(name), Some(data)) = (name, data) else {
            bail!("malformed frame {frame:?}");
        };
        ensure!(
            data["type"] == name.as_str(),
            "event name {name} vs data {data}"
        );
        match name.as_str() {
            "message_start" => message = data["message"].clone(),
            "content_block_start" => {
                let blocks = message["content"]
                    .as_array_mut()
                    .context("content is a list")?;
                blocks.push(data["content_block"].clone());
                partial_json.push(String::new());
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().context("index")? as usize;
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        let text = delta["text"].as_str().context("text")?;
                        let block = &mut message["content"][index]["text"];
                        *block = Value::String(format!("{}{text}", block.as_str().unwrap_or("")));
                    }
                    Some("input_json_delta") => {
                        partial_json[index]
                            .push_str(delta["partial_json"].as_str().context("json")?);
                    }
                    other => bail!("unknown delta {other:?}"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().context("index")? as usize;
                if message["content"][index]["type"] == "tool_use" {
                    message["content"][index]["input"] =
                        serde_json::from_str(&partial_json[index])?;
                }
            }
            "message_delta" => {
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["usage"]["output_tokens"] = data["usage"]["output_tokens"].clone();
            }
            "ping" | "message_stop" => {}
            other => bail!("unknown event {other}"),
        }
        names.push(name);
    }
    Ok((names, message))
}

#[tokio::test]
async fn streams_text_and_tool_calls_in_the_api_format() -> Result<()> {
    let long_text =
        "a fairly long sentence that will need more than one delta to carry ✓".repeat(3);
    let script = Script::new().then(
        Reply::text(long_text.clone())
            .then_tool_use(
                "Write",
                json!({"file_path": "/tmp/x", "content": "é\n".repeat(40)}),
            )
            .then_tool_use("Bash", json!({"command": "true"}))
            .with_usage(123_456)
            .with_cache_tokens(7, 8),
    );
    let handle = StandIn::start(script).await?;
    let answer = post(
        &handle,
        "/v1/messages?beta=true",
        "k",
        &main_body("go", true),
    )
    .await?;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "text/event-stream");
    assert_eq!(
        answer.event_names.first().map(String::as_str),
        Some("message_start")
    );
    assert_eq!(
        answer.event_names.last().map(String::as_str),
        Some("message_stop")
    );
    let message = &answer.message;
    assert_eq!(message["model"], "claude-opus-5-5");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(message["usage"]["input_tokens"], 123_456);
    assert_eq!(message["usage"]["cache_read_input_tokens"], 7);
    assert_eq!(message["usage"]["cache_creation_input_tokens"], 8);
    assert_eq!(message["content"][0]["text"], long_text.as_str());
    assert_eq!(message["content"][1]["name"], "Write");
    assert_eq!(
        message["content"][1]["input"]["content"],
        "é\n".repeat(40).as_str()
    );
    assert_eq!(message["content"][2]["input"], json!({"command": "true"}));
    let ids: Vec<&str> = [1, 2]
        .iter()
        .filter_map(|i| message["content"][*i]["id"].as_str())
        .collect();
    assert!(
        ids.len() == 2 && ids[0] != ids[1] && ids[0].starts_with("toolu_"),
        "{ids:?}"
    );

    let recorded = handle.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].query.as_deref(), Some("beta=true"));
    assert_eq!(recorded[0].kind, RequestKind::Main);
    assert_eq!(recorded[0].user_prompt().as_deref(), Some("go"));
    assert_eq!(recorded[0].tool_names(), vec!["Write"]);
    Ok(())
}

#[tokio::test]
async fn answers_with_json_when_not_streaming() -> Result<()> {
    let handle = StandIn::start(Script::replies([Reply::text("plain")])).await?;
    let answer = post(&handle, "/v1/messages", "k", &main_body("go", false)).await?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(
        answer.message["content"],
        json!([{"type": "text", "text": "plain"}])
    );
    assert_eq!(answer.message["stop_reason"], "end_turn");
    assert!(
        answer.message["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    Ok(())
}

#[tokio::test]
async fn count_tokens_gives_an_estimate() -> Result<()> {
    let handle = StandIn::start(Script::new()).await?;
    let answer = post(
        &handle,
        "/v1/messages/count_tokens",
        "k",
        &main_body("x", false),
    )
    .await?;
    assert_eq!(answer.status, 200);
    assert!(
        answer.message["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 10)
    );
    assert_eq!(handle.requests()[0].kind, RequestKind::CountTokens);
    Ok(())
}

#[tokio::test]
async fn side_requests_do_not_consume_the_script() -> Result<()> {
    let handle = StandIn::start(Script::replies([Reply::text("scripted")])).await?;
    // The shape of the interactive CLI's session-title request.
    let title_request = json!({
        "model": "claude-opus-5-5",
        "stream": true,
        "tools": [],
        "output_config": {"format": {"type": "json_schema", "schema": {
            "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]
        }}},
        "messages": [{"role": "user", "content": "<session>\nhello\n</session>"}],
    });
    let title = post(&handle, "/v1/messages?beta=true", "k", &title_request).await?;
    let title_json: Value =
        serde_json::from_str(title.message["content"][0]["text"].as_str().unwrap_or(""))?;
    assert_eq!(title_json, json!({"title": SIDE_TEXT}));

    let plain_side = post(&handle, "/v1/messages", "k", &json!({"messages": []})).await?;
    assert_eq!(plain_side.message["content"][0]["text"], SIDE_TEXT);

    let main = post(&handle, "/v1/messages", "k", &main_body("go", true)).await?;
    assert_eq!(main.message["content"][0]["text"], "scripted");
    let kinds: Vec<(RequestKind, AnsweredBy)> = handle
        .requests()
        .iter()
        .map(|r| (r.kind, r.answered_by))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (RequestKind::Side, AnsweredBy::Generic),
            (RequestKind::Side, AnsweredBy::Generic),
            (RequestKind::Main, AnsweredBy::Script),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn each_agent_key_gets_its_own_lane() -> Result<()> {
    let script = Script::from_fn(|request| {
        Reply::text(format!("default for {}", request.api_key().unwrap_or("?")))
    })
    .agent("alice", [Reply::text("alice 1"), Reply::text("alice 2")])
    .agent("bob", [Reply::text("bob 1")]);
    let handle = StandIn::start(script).await?;
    let cases = [
        ("bob", "bob 1"),
        ("alice", "alice 1"),
        ("carol", "default for carol"),
        ("alice", "alice 2"),
        ("bob", EXHAUSTED_TEXT),
    ];
    for (key, expected) in cases {
        let answer = post(&handle, "/v1/messages", key, &main_body("go", true)).await?;
        assert_eq!(answer.message["content"][0]["text"], expected, "{key}");
    }
    assert_eq!(handle.main_requests_for("alice").len(), 2);
    let exhausted = handle.exhausted_requests();
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0].api_key(), Some("bob"));

    // Replies pushed while running are used next.
    handle.script().push_for("bob", Reply::text("bob 2"));
    let answer = post(&handle, "/v1/messages", "bob", &main_body("go", true)).await?;
    assert_eq!(answer.message["content"][0]["text"], "bob 2");
    Ok(())
}

#[tokio::test]
async fn error_replies_carry_status_and_error_body() -> Result<()> {
    let script = Script::replies([Reply::error(529, "overloaded_error", "busy")]);
    let handle = StandIn::start(script).await?;
    let answer = post(&handle, "/v1/messages", "k", &main_body("go", true)).await?;
    assert_eq!(answer.status, 529);
    assert_eq!(
        answer.message,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    );
    Ok(())
}

#[tokio::test]
async fn unknown_paths_and_bad_bodies_are_recorded_and_refused() -> Result<()> {
    let handle = StandIn::start(Script::new()).await?;
    let client = reqwest::Client::new();
    let hello = client
        .get(format!("{}/api/hello", handle.url()))
        .send()
        .await?;
    assert_eq!(hello.status().as_u16(), 404);
    let bad = client
        .post(format!("{}/v1/messages", handle.url()))
        .body("not json")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    let recorded: Vec<(String, String)> = handle
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        recorded,
        vec![
            ("GET".to_owned(), "/api/hello".to_owned()),
            ("POST".to_owned(), "/v1/messages".to_owned()),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn held_reply_waits_for_its_gate() -> Result<()> {
    let gate = Gate::new();
    let handle = StandIn::start(Script::replies([Reply::text("released").held_by(&gate)])).await?;
    let url = handle.url();
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/messages"))
            .json(&main_body("go", false))
            .send()
            .await?
            .json::<Value>()
            .await
    });
    handle
        .wait_for("the held request", WAIT, |requests| !requests.is_empty())
        .await?;
    // The request is recorded before it is held, so it cannot have been answered yet.
    assert!(!pending.is_finished());
    gate.open();
    let message = pending.await??;
    assert_eq!(message["content"][0]["text"], "released");
    Ok(())
}

#[tokio::test]
async fn stop_releases_held_replies() -> Result<()> {
    let gate = Gate::new();
    let handle = StandIn::start(Script::replies([Reply::text("never").held_by(&gate)])).await?;
    let url = handle.url();
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/messages"))
            .json(&main_body("go", false))
            .send()
            .await
            .map(|response| response.status().as_u16())
    });
    handle
        .wait_for("the held request", WAIT, |requests| !requests.is_empty())
        .await?;
    tokio::time::timeout(WAIT, handle.stop()).await??;
    assert_eq!(pending.await??, 529);
    Ok(())
}

#[tokio::test]
async fn run_serves_a_bound_listener_until_shutdown() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stand_in = StandIn::new(Script::replies([Reply::text("hosted")]));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(conclave_standin::run(listener, stand_in.clone(), async {
        let _ = stopped.await;
    }));
    let message: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/messages"))
        .json(&main_body("go", false))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(message["content"][0]["text"], "hosted");
    assert_eq!(stand_in.requests().len(), 1);
    let _ = stop.send(());
    tokio::time::timeout(WAIT, server).await???;
    Ok(())
}
