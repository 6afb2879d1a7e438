//! The HTTP side: [`StandIn`] (the shared state: script and recordings), the axum router,
//! [`run`] for hosting it on a bound listener, and [`StandInHandle`] for tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::record::{AnsweredBy, RecordedRequest, RequestKind, classify};
use crate::reply::{Block, Reply, ReplyBody};
use crate::script::Script;
use crate::wire::{self, WireBlock, WireMessage, WireUsage};

/// Largest request body accepted. The CLI resends the whole conversation every turn.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Model name used in answers when the request named none.
const DEFAULT_MODEL: &str = "claude-stand-in";

/// Errors of the stand-in's own operations (not of the requests it serves).
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// The loopback listener could not be bound.
    #[error("cannot bind the stand-in to 127.0.0.1:0: {0}")]
    Bind(#[source] io::Error),
    /// [`StandIn::wait_for`] gave up.
    #[error("timed out after {timeout:?} waiting for {what}; recorded {n_requests} requests")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        timeout: Duration,
        /// How many requests had been recorded by then.
        n_requests: usize,
    },
}

/// The stand-in's shared state: the script, the recorded requests, and id counters. A
/// cheap-to-clone handle; serve it with [`run`] or [`StandIn::router`].
#[derive(Clone, Debug)]
pub struct StandIn {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    script: Script,
    recorded: Mutex<Vec<RecordedRequest>>,
    /// Bumped after every recorded request, so waiters can re-check.
    n_recorded: watch::Sender<usize>,
    next_index: AtomicUsize,
    next_id: AtomicU64,
    /// Cancelled when a server hosting this stand-in shuts down: held replies give up.
    closing: CancellationToken,
}

impl StandIn {
    /// A stand-in that answers from `script`.
    pub fn new(script: Script) -> Self {
        Self {
            inner: Arc::new(Inner {
                script,
                recorded: Mutex::new(Vec::new()),
                n_recorded: watch::Sender::new(0),
                next_index: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// Binds `127.0.0.1:0`, serves `script` there in a background task, and returns a handle
    /// that knows the address and reads the recordings. Dropping the handle stops the server.
    pub async fn start(script: Script) -> Result<StandInHandle, StandInError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(StandInError::Bind)?;
        Self::start_on(listener, script)
    }

    /// The same on a listener the caller bound (one in a network namespace a test made, say).
    pub fn start_on(listener: TcpListener, script: Script) -> Result<StandInHandle, StandInError> {
        let addr = listener.local_addr().map_err(StandInError::Bind)?;
        let stand_in = Self::new(script);
        let (stop_sender, stop_receiver) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, stand_in.clone(), async move {
            // Either an explicit stop or the handle being dropped.
            let _ = stop_receiver.await;
        }));
        Ok(StandInHandle {
            stand_in,
            addr,
            stop: Some(stop_sender),
            task: Some(task),
        })
    }

    /// The axum router that serves this stand-in, to mount it in another server.
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(handle_request)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// The script, e.g. to push more replies while agents run.
    pub fn script(&self) -> &Script {
        &self.inner.script
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorded().clone()
    }

    /// The main requests (turns of an agent loop) received so far.
    pub fn main_requests(&self) -> Vec<RecordedRequest> {
        self.recorded()
            .iter()
            .filter(|request| request.is_main())
            .cloned()
            .collect()
    }

    /// The main requests that carried `api_key`.
    pub fn main_requests_for(&self, api_key: &str) -> Vec<RecordedRequest> {
        self.recorded()
            .iter()
            .filter(|request| request.is_main() && request.api_key() == Some(api_key))
            .cloned()
            .collect()
    }

    /// Main requests that found their script empty: usually a test that scripted too few
    /// replies, or a CLI that made more turns than expected.
    pub fn exhausted_requests(&self) -> Vec<RecordedRequest> {
        self.recorded()
            .iter()
            .filter(|request| request.answered_by == AnsweredBy::Exhausted)
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the recorded requests, and returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[RecordedRequest]) -> bool,
    ) -> Result<Vec<RecordedRequest>, StandInError> {
        let mut changes = self.inner.n_recorded.subscribe();
        let wait = async {
            loop {
                {
                    let recorded = self.recorded();
                    if done(&recorded) {
                        return recorded.clone();
                    }
                }
                // The sender lives in `self`, so this cannot fail while we hold `self`.
                if changes.changed().await.is_err() {
                    return self.requests();
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| StandInError::Timeout {
                what: what.to_owned(),
                timeout,
                n_requests: self.recorded().len(),
            })
    }

    fn recorded(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // Pushing a cloned record cannot leave the list half-changed.
        self.inner
            .recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, request: RecordedRequest) {
        let n_recorded = {
            let mut recorded = self.recorded();
            recorded.push(request);
            recorded.len()
        };
        self.inner.n_recorded.send_replace(n_recorded);
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves `stand_in` on an already bound `listener` until `shutdown` resolves. Replies held
/// by a [`Gate`](crate::Gate) are answered 529 at shutdown so it never hangs on them.
pub async fn run(
    listener: TcpListener,
    stand_in: StandIn,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let closing = stand_in.inner.closing.clone();
    let router = stand_in.router();
    tokio::spawn({
        let closing = closing.clone();
        async move {
            shutdown.await;
            closing.cancel();
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(closing.cancelled_owned())
        .await
}

/// A running stand-in for tests: its address plus everything [`StandIn`] offers (through
/// `Deref`). Dropping it stops the server.
#[derive(Debug)]
pub struct StandInHandle {
    stand_in: StandIn,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl StandInHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL for `ANTHROPIC_BASE_URL`, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared state (also reachable through `Deref`).
    pub fn stand_in(&self) -> &StandIn {
        &self.stand_in
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Deref for StandInHandle {
    type Target = StandIn;

    fn deref(&self) -> &StandIn {
        &self.stand_in
    }
}

impl Drop for StandInHandle {
    fn drop(&mut self) {
        // Dropping the sender resolves the shutdown future; held replies are released too.
        self.stop.take();
        self.stand_in.inner.closing.cancel();
    }
}

/// The one handler: records the request, then answers by its kind.
async fn handle_request(
    State(stand_in): State<StandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let index = stand_in.inner.next_index.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("stand_in_request", index, %method, path = uri.path());
    async move {
        let (parsed_body, is_json) = parse_body(&body);
        let kind = classify(method.as_str(), uri.path(), &parsed_body);
        let mut request = RecordedRequest {
            index,
            received_at: SystemTime::now(),
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: header_map(&headers),
            body: parsed_body,
            kind,
            answered_by: AnsweredBy::Generic,
        };
        tracing::debug!(?kind, api_key = request.api_key(), "request received");
        if !is_json && kind != RequestKind::Other {
            stand_in.record(request);
            return error_response(400, "invalid_request_error", "the body is not JSON");
        }
        let reply = match kind {
            RequestKind::Main => {
                let (reply, answered_by) = stand_in.script().main_reply(&request);
                request.answered_by = answered_by;
                reply
            }
            RequestKind::Side => stand_in.script().side_reply(&request),
            RequestKind::CountTokens => {
                let estimate = wire::estimate_tokens(&request.body);
                stand_in.record(request);
                return json_response(StatusCode::OK, &wire::count_tokens_body(estimate));
            }
            RequestKind::Other => {
                stand_in.record(request);
                return error_response(404, "not_found_error", "the stand-in has no such route");
            }
        };
        let wants_stream = request.wants_stream();
        let model = request.model().unwrap_or(DEFAULT_MODEL).to_owned();
        let request_tokens = wire::estimate_tokens(&request.body);
        stand_in.record(request);
        if let Some(delay) = reply.delay {
            tokio::select! {
                () = stand_in.inner.closing.cancelled() => return shutting_down(),
                () = tokio::time::sleep(delay) => {}
            }
        }
        if let Some(gate) = &reply.gate {
            tokio::select! {
                () = stand_in.inner.closing.cancelled() => return shutting_down(),
                () = gate.opened() => {}
            }
        }
        answer(&stand_in, reply, model, request_tokens, wants_stream)
    }
    .instrument(span)
    .await
}

/// Turns a reply into the HTTP response.
fn answer(
    stand_in: &StandIn,
    reply: Reply,
    model: String,
    request_tokens: u64,
    wants_stream: bool,
) -> Response {
    let blocks = match reply.body {
        ReplyBody::Message(blocks) => blocks,
        ReplyBody::Error {
            status,
            error_type,
            message,
        } => return error_response(status, &error_type, &message),
    };
    let message_number = stand_in.next_id();
    let output_estimate: u64 = blocks
        .iter()
        .map(|block| match block {
            Block::Text(text) => wire::estimate_tokens(&Value::String(text.clone())),
            Block::ToolUse { input, .. } => wire::estimate_tokens(input),
        })
        .sum();
    let message = WireMessage {
        id: format!("msg_standin_{message_number:06}"),
        model,
        blocks: blocks
            .into_iter()
            .map(|block| match block {
                Block::Text(text) => WireBlock::Text(text),
                Block::ToolUse { name, input } => WireBlock::ToolUse {
                    id: format!("toolu_standin_{:06}", stand_in.next_id()),
                    name,
                    input,
                },
            })
            .collect(),
        usage: WireUsage {
            input_tokens: reply.input_tokens.unwrap_or(request_tokens),
            output_tokens: reply.output_tokens.unwrap_or(output_estimate.max(1)),
            cache_read_input_tokens: reply.cache_read_input_tokens,
            cache_creation_input_tokens: reply.cache_creation_input_tokens,
        },
    };
    if wants_stream {
        let mut response = Response::new(Body::from(message.to_event_stream()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    } else {
        json_response(StatusCode::OK, &message.to_json())
    }
}

fn shutting_down() -> Response {
    error_response(529, "overloaded_error", "the stand-in is shutting down")
}

fn error_response(status: u16, error_type: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &wire::error_body(error_type, message))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The body as JSON and `true`; `Null` and `true` if empty; the lossy text and `false` if it
/// is not JSON.
fn parse_body(body: &Bytes) -> (Value, bool) {
    if body.is_empty() {
        return (Value::Null, true);
    }
    match serde_json::from_slice(body) {
        Ok(value) => (value, true),
        Err(_) => (
            Value::String(String::from_utf8_lossy(body).into_owned()),
            false,
        ),
    }
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    map
}
