//! The server's shared state and the two ways handlers reach the store: [`App::read`] and
//! [`App::write`] (which notes the agent alive and adds `Idempotency-Key` handling to the same
//! transaction as the change).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use conclave_core::model::{Actor, Event};
use conclave_core::store::{Reader, Tx};
use conclave_core::{Result as CoreResult, Store};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;

const EVENT_CHANNEL_CAPACITY: usize = 4096;
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A cheap-to-clone handle on everything a request needs.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    store: Store,
    events: broadcast::Sender<Event>,
    admin_token_hash: String,
    session: crate::auth::DashboardSession,
    metrics: Metrics,
    shutdown: CancellationToken,
    settings: AppSettings,
    stop_blocks: crate::hooks::StopBlocks,
}

/// Server-wide settings that handlers and integrations read.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    /// The project root (for resolving hook paths); none in tests that don't need it.
    pub project_root: Option<std::path::PathBuf>,
    /// Host names (besides loopback) the server answers to.
    pub allowed_hosts: Vec<String>,
    pub keep_working: bool,
}

impl App {
    pub fn new(
        store: Store,
        admin_token: &str,
        settings: AppSettings,
        shutdown: CancellationToken,
    ) -> App {
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let metrics = Metrics::default();
        let sender = events.clone();
        let sink_metrics = metrics.clone();
        store.set_event_sink(Arc::new(move |batch: &[Event]| {
            for event in batch {
                sink_metrics.count_event();
                // No receivers is fine: nobody is streaming right now.
                let _ = sender.send(event.clone());
            }
        }));
        App {
            inner: Arc::new(AppInner {
                store,
                events,
                admin_token_hash: conclave_core::store::hash_token(admin_token),
                session: crate::auth::DashboardSession::from_admin_token(admin_token),
                metrics,
                shutdown,
                settings,
                stop_blocks: crate::hooks::StopBlocks::default(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn settings(&self) -> &AppSettings {
        &self.inner.settings
    }

    pub(crate) fn stop_blocks(&self) -> &crate::hooks::StopBlocks {
        &self.inner.stop_blocks
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Live events committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The dashboard's session cookie, derived from the admin token.
    pub(crate) fn session(&self) -> &crate::auth::DashboardSession {
        &self.inner.session
    }

    pub(crate) fn is_admin_token(&self, token: &str) -> bool {
        conclave_core::store::hash_token(token) == self.inner.admin_token_hash
    }

    /// Runs a read on a blocking thread.
    pub async fn read<T, F>(&self, query: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> CoreResult<T> + Send + 'static,
    {
        let store = self.inner.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.read(query)).await??)
    }

    /// Runs a change on a blocking thread (noting the acting agent alive), in one transaction
    /// with, when the request carries one, its idempotency key. Answers with the change's JSON.
    pub async fn write<T, F>(
        &self,
        actor: &Actor,
        key: &IdempotencyKey,
        change: F,
    ) -> ApiResult<Written>
    where
        T: Serialize + 'static,
        F: FnOnce(&mut Tx<'_>) -> CoreResult<T> + Send + 'static,
    {
        let store = self.inner.store.clone();
        let actor = actor.clone();
        let key = key.clone();
        if let Actor::Agent(name) = &actor {
            store.note_alive(name);
        }
        let run = move || -> CoreResult<(Value, bool)> {
            let with_heartbeat =
                |tx: &mut Tx<'_>| -> CoreResult<Value> { Ok(serde_json::to_value(change(tx)?)?) };
            match &key.key {
                Some(k) => store.write_idempotent(&actor, k, &key.fingerprint, with_heartbeat),
                None => store.write(with_heartbeat).map(|value| (value, false)),
            }
        };
        let (value, replayed) = tokio::task::spawn_blocking(run).await??;
        Ok(Written { value, replayed })
    }

    /// Notes that an agent was heard from (reads are heartbeats too): in memory, persisted by
    /// the store in batches.
    pub(crate) async fn heartbeat(&self, agent: &str) -> ApiResult<()> {
        self.inner.store.note_alive(agent);
        Ok(())
    }
}

/// The answer of a write: its JSON, and whether it was replayed from an earlier request.
pub struct Written {
    pub value: Value,
    pub replayed: bool,
}

impl Written {
    pub fn created(self) -> Response {
        self.respond(StatusCode::CREATED)
    }

    pub fn ok(self) -> Response {
        self.respond(StatusCode::OK)
    }

    fn respond(self, status: StatusCode) -> Response {
        let mut response = (status, Json(self.value)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The request's `Idempotency-Key` (if any) and a fingerprint of the request it guards.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey {
    pub key: Option<String>,
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// Binds the key to the request body so that reusing it for another request is caught.
    pub fn with_body(mut self, body: &impl Serialize) -> Self {
        if let Ok(text) = serde_json::to_string(body) {
            self.fingerprint.push(' ');
            self.fingerprint.push_str(&text);
        }
        self
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                    .trim();
                if text.is_empty() || text.len() > MAX_IDEMPOTENCY_KEY {
                    return Err(ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                    )));
                }
                Some(text.to_string())
            }
        };
        Ok(IdempotencyKey {
            key,
            fingerprint: format!("{} {}", parts.method, parts.uri.path()),
        })
    }
}

/// The authenticated actor, put into the request by the auth middleware.
impl FromRequestParts<App> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &App) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
    }
}

/// `Json` whose rejections are API errors with a JSON body.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections are API errors with a JSON body.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are API errors with a JSON body.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

pub(crate) fn only_admin(actor: &Actor, what: &str) -> ApiResult<()> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("only an admin may {what}")))
    }
}

pub(crate) fn only_agent<'a>(actor: &'a Actor, what: &str) -> ApiResult<&'a str> {
    actor.agent().ok_or_else(|| {
        ApiError::forbidden(format!(
            "only an agent may {what}: use an agent's token (CONCLAVE_AGENT and CONCLAVE_TOKEN)"
        ))
    })
}
