//! The local relay: a loopback HTTP reverse proxy, run inside `conclave up` (and `conclave
//! claude`), through which a host's agents reach a remote team server.
//!
//! Claude Code's MCP configuration and its HTTP hooks take one URL each, and a live session
//! keeps the URL it started with. When `--server` names several servers (`URL1,URL2`), or one
//! that speaks HTTPS, the agents are pointed at this relay instead (`http://127.0.0.1:PORT`): it
//! forwards every request, unchanged but for its hop-by-hop headers and `Host`, to the server its
//! [`Client`] currently uses, and streams the answer back (event streams included). When that
//! server cannot be connected to, the request never left, so the relay sends it to the next
//! URL, and keeps trying the list for up to [`PATIENCE`] (a server being restarted) before it
//! answers 502. The agents' sessions live on; their tokens are checked by whichever server
//! answers, since every server of a team serves the same store.
//!
//! A request whose connection broke after it was sent is not repeated (it may have been
//! applied): the relay answers 502 and the client's own retry, with its idempotency key where
//! it has one, decides.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use conclave_client::Client;
use futures::TryStreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderName};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use conclave_git::TaskSummary;

use crate::worktree_steps::{StepCall, Way, WorktreeSteps, claimed_task, get_json};

/// How long a request waits for some server of the list to accept a connection (a server
/// being restarted) before the relay answers 502. Below Claude Code's 10 s hook timeout.
pub const PATIENCE: Duration = Duration::from_secs(8);
/// The pause after every URL of the list refused a connection, before the next round.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// The largest request body relayed (the server's own limit is 256 KiB).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

type RelayBody = BoxBody<Bytes, std::io::Error>;

/// A running relay; it stops when dropped.
#[derive(Debug)]
pub struct Relay {
    url: String,
    stop: CancellationToken,
}

impl Relay {
    /// Binds a free loopback port and relays to `upstream`'s servers until dropped.
    pub async fn start(upstream: Client) -> anyhow::Result<Relay> {
        Relay::start_with_steps(upstream, None).await
    }

    /// [`Relay::start`], also running the git steps of this host's worktree agents around their
    /// `claim`, `done` and `fail` calls ([`crate::worktree_steps`]).
    pub async fn start_with_steps(
        upstream: Client,
        steps: Option<Arc<WorktreeSteps>>,
    ) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind the relay to 127.0.0.1")?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, upstream, steps, stop.clone()));
        Ok(Relay { url, stop })
    }

    /// `http://127.0.0.1:PORT`, what agents are given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    upstream: Client,
    steps: Option<Arc<WorktreeSteps>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "relay: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        let steps = steps.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let upstream = upstream.clone();
                let steps = steps.clone();
                async move { Ok::<_, Infallible>(forward(&upstream, steps, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!(%error, "relay: connection closed with an error");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Headers that belong to one connection, not to the request or answer relayed.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Relays one request; every failure is an answer (502 with a JSON error body).
async fn forward(
    upstream: &Client,
    steps: Option<Arc<WorktreeSteps>>,
    request: Request<Incoming>,
) -> Response<RelayBody> {
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return error_answer(
                StatusCode::BAD_REQUEST,
                &format!("the relay could not read the request: {error}"),
            );
        }
    };
    if let Some(steps) = steps
        && parts.method == hyper::Method::POST
        && let Some((call, way)) = StepCall::of_request(parts.uri.path(), &body)
        && let Some(authorization) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        && let Some(agent) = steps.agent_of(upstream, authorization).await
    {
        let authorization = authorization.to_string();
        let context = Intercepted {
            upstream,
            steps: &steps,
            parts: &parts,
            agent: &agent,
            way,
        };
        return with_steps(&context, body, &authorization, call).await;
    }
    match send(upstream, &parts, body).await {
        Ok(answer) => relay_answer(answer),
        Err(refused) => refused,
    }
}

/// Sends one request to the servers of `upstream`, failing over while they refuse connections.
async fn send(
    upstream: &Client,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<reqwest::Response, Response<RelayBody>> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_string();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut refused_in_round = 0;
    loop {
        let base = upstream.base_url().to_string();
        let mut outgoing = upstream
            .http()
            .request(parts.method.clone(), format!("{base}{path}"));
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        match outgoing.body(body.clone()).send().await {
            Ok(answer) => return Ok(answer),
            Err(error) if error.is_connect() => {
                refused_in_round += 1;
                upstream.fail_over(&base);
                if tokio::time::Instant::now() >= deadline {
                    return Err(error_answer(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "no conclave server of {} accepts connections",
                            upstream.urls().join(", ")
                        ),
                    ));
                }
                if refused_in_round >= upstream.urls().len() {
                    refused_in_round = 0;
                    tokio::time::sleep(ROUND_PAUSE).await;
                }
            }
            Err(error) => {
                return Err(error_answer(
                    StatusCode::BAD_GATEWAY,
                    &format!("the conclave server at {base} failed: {error}"),
                ));
            }
        }
    }
}

/// A request the steps follow, and where it came from.
struct Intercepted<'a> {
    upstream: &'a Client,
    steps: &'a Arc<WorktreeSteps>,
    parts: &'a hyper::http::request::Parts,
    agent: &'a str,
    way: Way,
}

impl Intercepted<'_> {
    /// A refusal answered by the relay itself (the call was not forwarded, or its git step
    /// failed after it): a tool error over MCP, an API error over the JSON API.
    fn refuse(
        &self,
        request: &serde_json::Value,
        status: StatusCode,
        message: &str,
    ) -> Response<RelayBody> {
        match self.way {
            Way::Mcp => tool_answer(request, message, true),
            Way::Api => {
                let code = if status == StatusCode::CONFLICT {
                    "conflict"
                } else {
                    "worktree"
                };
                json_answer(
                    status,
                    &serde_json::json!({"error": {"code": code, "message": message}}),
                )
            }
        }
    }
}

/// A `claim`, `done` or `fail` of one of this host's worktree agents: the git steps run here,
/// around the call, at the moments the server runs them for agents on its own host.
async fn with_steps(
    call: &Intercepted<'_>,
    body: Bytes,
    authorization: &str,
    step: StepCall,
) -> Response<RelayBody> {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (task, summary, finishing) = match step {
        StepCall::Claim { task } => return claim_with_steps(call, body, &request, task).await,
        StepCall::Done { task, summary } => (task, summary.unwrap_or_default(), "finished"),
        StepCall::Fail { task, reason } => (
            task,
            format!("Given up by {}: {reason}", call.agent),
            "given up",
        ),
    };
    // The commit message carries the task's title, as on the server's host.
    let title = get_json(
        call.upstream,
        authorization,
        &format!("/api/tasks/{}", conclave_client::segment(&task)),
    )
    .await
    .ok()
    .and_then(|found| found["title"].as_str().map(str::to_string))
    .unwrap_or_default();
    let summary = TaskSummary {
        id: task.clone(),
        title,
        summary,
    };
    let (held, name) = (call.steps.clone(), call.agent.to_string());
    let published = run_blocking(move || {
        held.publish(&name, &summary)
            .map_err(|error| error.to_string())
    })
    .await;
    let line = match published {
        Ok(line) => line,
        Err(error) => {
            // Nothing was forwarded: the task is still the agent's, to fix and finish again.
            return call.refuse(
                &request,
                StatusCode::CONFLICT,
                &format!(
                    "{task} is not {finishing}: its branch could not be published for the merge \
                     queue's host: {error}. Fix that in your worktree and call again."
                ),
            );
        }
    };
    let answer = match send(call.upstream, call.parts, body).await {
        Ok(answer) => answer,
        Err(refused) => return refused,
    };
    if call.way == Way::Api {
        return relay_answer(answer);
    }
    match read_answer(answer).await {
        Some((status, mut reply)) => {
            if reply["result"]["isError"] != true {
                let text = answer_text(&reply);
                set_answer_text(&mut reply, &format!("{text}\n{line}"));
            }
            json_answer(status, &reply)
        }
        None => error_answer(
            StatusCode::BAD_GATEWAY,
            &format!("the server's answer could not be read ({line})"),
        ),
    }
}

/// A claim: refused while the worktree holds uncommitted work; once the server granted it, the
/// worktree is switched to the task's branch before the agent reads the answer.
async fn claim_with_steps(
    call: &Intercepted<'_>,
    body: Bytes,
    request: &serde_json::Value,
    named: Option<String>,
) -> Response<RelayBody> {
    let (held, name) = (call.steps.clone(), call.agent.to_string());
    let refusal =
        run_blocking(move || held.refuse_claim(&name).map_or(Ok(String::new()), Err)).await;
    if let Err(refusal) = refusal {
        return call.refuse(request, StatusCode::CONFLICT, &refusal);
    }
    let answer = match send(call.upstream, call.parts, body).await {
        Ok(answer) => answer,
        Err(refused) => return refused,
    };
    let Some((status, mut reply)) = read_answer(answer).await else {
        return error_answer(
            StatusCode::BAD_GATEWAY,
            "the server's answer to a claim could not be read",
        );
    };
    let claimed = match call.way {
        Way::Mcp => {
            let text = answer_text(&reply);
            if reply["result"]["isError"] == true || !text.starts_with("Claimed ") {
                None
            } else {
                claimed_task(&text).or(named)
            }
        }
        // The API answers the claimed task (or none) with a success status.
        Way::Api if status.is_success() => reply["task"]["id"].as_str().map(str::to_string),
        Way::Api => None,
    };
    let Some(task) = claimed else {
        return json_answer(status, &reply);
    };
    let (held, name, id) = (call.steps.clone(), call.agent.to_string(), task.clone());
    let switched = run_blocking(move || {
        held.after_claim(&name, &id)
            .map_err(|error| error.to_string())
    })
    .await;
    match (switched, call.way) {
        (Ok(line), Way::Mcp) => {
            let text = answer_text(&reply);
            set_answer_text(&mut reply, &format!("{text}\n{line}"));
            json_answer(status, &reply)
        }
        (Ok(_), Way::Api) => json_answer(status, &reply),
        (Err(error), _) => call.refuse(
            request,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "Claimed {task}, but could not switch your worktree to its branch (give it back \
                 with fail, saying so): {error}"
            ),
        ),
    }
}

/// A git step on a blocking thread; a thread that failed is an error like the step's own.
async fn run_blocking(
    work: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Result<String, String> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(format!("the git step failed: {error}")))
}

/// The server's whole JSON answer (MCP answers are small JSON documents).
async fn read_answer(answer: reqwest::Response) -> Option<(StatusCode, serde_json::Value)> {
    let status = answer.status();
    let bytes = answer.bytes().await.ok()?;
    let reply = serde_json::from_slice(&bytes).ok()?;
    Some((status, reply))
}

/// The text of a tool result (its first content item).
fn answer_text(reply: &serde_json::Value) -> String {
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn set_answer_text(reply: &mut serde_json::Value, text: &str) {
    reply["result"]["content"] = serde_json::json!([{"type": "text", "text": text}]);
}

/// A tool result answered by the relay itself (the call was not forwarded).
fn tool_answer(request: &serde_json::Value, text: &str, is_error: bool) -> Response<RelayBody> {
    let reply = serde_json::json!({
        "jsonrpc": "2.0",
        "id": request["id"],
        "result": {"content": [{"type": "text", "text": text}], "isError": is_error},
    });
    json_answer(StatusCode::OK, &reply)
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Response<RelayBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The server's answer, streamed as it arrives.
fn relay_answer(answer: reqwest::Response) -> Response<RelayBody> {
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let frames = answer
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(std::io::Error::other);
    response
        .body(StreamBody::new(frames).boxed())
        .unwrap_or_else(|error| {
            error_answer(
                StatusCode::BAD_GATEWAY,
                &format!("the relay cannot pass the answer on: {error}"),
            )
        })
}

fn error_answer(status: StatusCode, message: &str) -> Response<RelayBody> {
    let body = serde_json::json!({"error": {"code": "relay", "message": message}}).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `body`, in two chunks, and hands over the
    /// request head it read.
    async fn upstream(body: &'static str) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (heads, received) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 8192];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let _ = heads
                    .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                    .await;
                let (first, second) = body.split_at(body.len() / 2);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
                     connection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
                    first.len(),
                    second.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (url, received)
    }

    #[tokio::test]
    async fn requests_go_to_the_next_server_when_one_refuses_and_answers_stream_back() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let (live, mut heads) = upstream(r#"{"relayed":true}"#).await;
        let client =
            Client::with_ca(format!("{dead},{live}"), "admin".into(), None, None).expect("client");
        let relay = Relay::start(client.clone()).await.expect("relay");

        let answer = reqwest::Client::new()
            .post(format!("{}/hooks/stop?x=1", relay.url()))
            .header("Authorization", "Bearer agent-token")
            .header("X-Conclave-Root", "/clone")
            .body("{}")
            .send()
            .await
            .expect("the relay answers");
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.expect("body"), r#"{"relayed":true}"#);
        let head = heads
            .recv()
            .await
            .expect("a request reached the live server");
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("POST /hooks/stop?x=1 HTTP/1.1"), "{head}");
        // The request's own credentials, not the relay's client's; Host names the server.
        assert!(
            lower.contains("authorization: bearer agent-token"),
            "{head}"
        );
        assert!(lower.contains("x-conclave-root: /clone"), "{head}");
        let host = live.trim_start_matches("http://");
        assert!(lower.contains(&format!("host: {host}")), "{head}");
        assert_eq!(
            client.base_url(),
            live,
            "it stays with the server that answered"
        );
    }
}
