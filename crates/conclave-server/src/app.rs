//! The server's shared state and the two ways operations reach the store: [`App::read`] and
//! [`App::write`] (which notes the agent alive and adds `Idempotency-Key` handling to the same
//! transaction as the change). No HTTP types here: the MCP tools, the hooks and the JSON API all
//! stand on this (through [`crate::ops`]); their HTTP plumbing is in [`crate::extract`].

use std::sync::Arc;
use std::time::Duration;

use conclave_core::model::{Actor, Event};
use conclave_core::store::{Reader, Tx, idempotent_change};
use conclave_core::{CoreError, Result as CoreResult, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::live::{LiveHub, LiveQueueLimits, LiveStats, Subscriber};
use crate::metrics::Metrics;
use crate::ops::StopBlocks;
use crate::session::DashboardSession;

/// A cheap-to-clone handle on everything a request needs.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    store: Store,
    events: Arc<LiveHub>,
    admin_token_hash: String,
    session: DashboardSession,
    metrics: Metrics,
    shutdown: CancellationToken,
    settings: AppSettings,
    stop_blocks: StopBlocks,
    shell_runs: crate::attribution::ShellRuns,
}

/// Server-wide settings that handlers and integrations read.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    /// The project root (for resolving hook paths); none in tests that don't need it.
    pub project_root: Option<std::path::PathBuf>,
    /// Host names (besides loopback) the server answers to.
    pub allowed_hosts: Vec<String>,
    pub keep_working: bool,
    /// The merge queue, when `conclave.toml` has a `[merge]` table (its runner is started by
    /// [`crate::run`]).
    pub merge: Option<std::sync::Arc<crate::merge_queue::MergeQueue>>,
    /// Bounds on what clients can hold: live-stream queues and connections.
    pub limits: ServerLimits,
}

/// Bounds on what one client (or many) can make the server hold.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// What one live event stream reader may have queued before it is dropped as lagged.
    pub live_queue: LiveQueueLimits,
    /// How long a connection may take to send a request's headers, and how long it may sit idle
    /// between requests (HTTP/1 starts this timer whenever it waits for a request head, so it
    /// never runs while a response, such as an event stream or an inbox wait, is being sent).
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait to be accepted until one closes.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            live_queue: LiveQueueLimits::default(),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

impl App {
    pub fn new(
        store: Store,
        admin_token: &str,
        settings: AppSettings,
        shutdown: CancellationToken,
    ) -> App {
        let events = Arc::new(LiveHub::new(settings.limits.live_queue));
        let metrics = Metrics::default();
        let hub = events.clone();
        let sink_metrics = metrics.clone();
        store.set_event_sink(Arc::new(move |batch: &[Event]| {
            for _ in batch {
                sink_metrics.count_event();
            }
            hub.publish(batch);
        }));
        App {
            inner: Arc::new(AppInner {
                store,
                events,
                admin_token_hash: conclave_core::store::hash_token(admin_token),
                session: DashboardSession::from_admin_token(admin_token),
                metrics,
                shutdown,
                settings,
                stop_blocks: StopBlocks::default(),
                shell_runs: crate::attribution::ShellRuns::default(),
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

    pub(crate) fn stop_blocks(&self) -> &StopBlocks {
        &self.inner.stop_blocks
    }

    /// Shell calls waiting for their `PostToolUse` (write attribution).
    pub(crate) fn shell_runs(&self) -> &crate::attribution::ShellRuns {
        &self.inner.shell_runs
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The live events committed from now on that `admits` lets through, in a queue bounded by
    /// [`ServerLimits::live_queue`]: the others are neither queued for it nor wake it.
    pub(crate) fn subscribe_where(
        &self,
        admits: impl Fn(&Event) -> bool + Send + Sync + 'static,
    ) -> Arc<Subscriber> {
        self.inner.events.subscribe_where(admits)
    }

    /// Figures about the live event streams (readers, the most any reader had queued).
    pub fn live_stats(&self) -> LiveStats {
        self.inner.events.stats()
    }

    /// The dashboard's session cookie, derived from the admin token.
    pub(crate) fn session(&self) -> &DashboardSession {
        &self.inner.session
    }

    pub(crate) fn is_admin_token(&self, token: &str) -> bool {
        conclave_core::store::hash_token(token) == self.inner.admin_token_hash
    }

    /// Runs a read on a blocking thread.
    pub async fn read<T, F>(&self, query: F) -> OpResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> CoreResult<T> + Send + 'static,
    {
        let store = self.inner.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.read(query)).await??)
    }

    /// Runs a point read (microseconds: a lookup by key) at once on this thread when a read
    /// connection is free, else like [`App::read`]. Spares the hand-off to a blocking thread and
    /// back, which costs more than such a read; never waits for a connection on this thread.
    pub async fn read_point<T, F>(&self, query: F) -> OpResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> CoreResult<T> + Send + 'static,
    {
        match self.inner.store.try_read_now(query) {
            Ok(result) => Ok(result?),
            Err(query) => self.read(query).await,
        }
    }

    /// Runs a change (noting the acting agent alive), in one transaction with, when the request
    /// carries one, its idempotency key. Answers with the change's value as its type, turned
    /// into JSON only when an idempotency key stores it; a replay answers the stored JSON.
    ///
    /// The change runs at once on this thread when the store's writer is idle (a short write
    /// costs less than any hand-off), else on the store's writer thread, where it joins the
    /// group commit. Either way it answers only after its commit.
    pub async fn write<T, F>(
        &self,
        actor: &Actor,
        key: &IdempotencyKey,
        change: F,
    ) -> OpResult<Written<T>>
    where
        T: Serialize + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> CoreResult<T> + Send + 'static,
    {
        let first_heard = matches!(actor, Actor::Agent(name) if self.inner.store.note_alive(name));
        match &key.key {
            None => {
                let value = self.run_write(first_heard, change).await?;
                Ok(Written {
                    answer: Answer::Ran(value),
                    replayed: false,
                })
            }
            Some(k) => {
                let as_json = move |tx: &mut Tx<'_>| -> CoreResult<Value> {
                    Ok(serde_json::to_value(change(tx)?)?)
                };
                let change = idempotent_change(actor.clone(), k.clone(), &key.fingerprint, as_json);
                let (value, replayed) = self.run_write(first_heard, change).await?;
                Ok(Written {
                    answer: Answer::Stored(value),
                    replayed,
                })
            }
        }
    }

    /// Runs `change` in place when the writer is idle, else hands it to the store's writer
    /// thread (it joins the next batch) and awaits the answer without holding a thread; on
    /// PostgreSQL, on a blocking thread. First persists the noted liveness when the agent was
    /// not yet known to be alive (on a blocking thread: that is a write of its own, once per
    /// agent).
    async fn run_write<T, F>(&self, first_heard: bool, change: F) -> OpResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> CoreResult<T> + Send + 'static,
    {
        let store = self.inner.store.clone();
        if first_heard {
            let run = move || -> CoreResult<T> {
                store.flush_liveness()?;
                store.write(change)
            };
            return Ok(tokio::task::spawn_blocking(run).await??);
        }
        let change = match store.try_write_now(change) {
            Ok(result) => return Ok(result?),
            Err(change) => change,
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let done = move |result: CoreResult<T>| {
            let _ = answer.send(result);
        };
        match store.submit_write(change, done) {
            Ok(()) => match answered.await {
                Ok(result) => Ok(result?),
                Err(_) => Err(OpError::Core(CoreError::Database(
                    "the store's writer stopped before answering".to_string(),
                ))),
            },
            Err((change, _)) => {
                Ok(tokio::task::spawn_blocking(move || store.write(change)).await??)
            }
        }
    }

    /// Notes that an agent was heard from (reads are heartbeats too): in memory, persisted by
    /// the store in batches.
    pub(crate) async fn heartbeat(&self, agent: &str) -> OpResult<()> {
        if self.inner.store.note_alive(agent) {
            let store = self.inner.store.clone();
            tokio::task::spawn_blocking(move || store.flush_liveness()).await??;
        }
        Ok(())
    }
}

/// The answer of a write, and whether it was replayed from an earlier request.
pub struct Written<T> {
    answer: Answer<T>,
    pub replayed: bool,
}

/// What a write answered: the change's own value, or (when an idempotency key stored it, and on
/// a replay) its JSON.
enum Answer<T> {
    Ran(T),
    Stored(Value),
}

impl<T> Written<T> {
    /// The written value as the type the change returned (for callers that render it as text):
    /// as it is when the change ran here without a key, read back from JSON otherwise.
    pub fn parse(self) -> OpResult<T>
    where
        T: DeserializeOwned,
    {
        match self.answer {
            Answer::Ran(value) => Ok(value),
            Answer::Stored(json) => {
                serde_json::from_value(json).map_err(|error| OpError::Core(error.into()))
            }
        }
    }

    /// The written value as its type without giving the answer up: borrowed when the change ran
    /// here without a key, read from the stored JSON otherwise.
    pub fn typed(&self) -> OpResult<std::borrow::Cow<'_, T>>
    where
        T: Clone + DeserializeOwned,
    {
        match &self.answer {
            Answer::Ran(value) => Ok(std::borrow::Cow::Borrowed(value)),
            Answer::Stored(json) => T::deserialize(json)
                .map(std::borrow::Cow::Owned)
                .map_err(|error| OpError::Core(error.into())),
        }
    }
}

impl<T: Serialize> Serialize for Written<T> {
    /// Serializes the answer itself (what a response body holds).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.answer {
            Answer::Ran(value) => value.serialize(serializer),
            Answer::Stored(json) => json.serialize(serializer),
        }
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
        // Without a key nothing reads the fingerprint: spare every other write the serialization.
        if self.key.is_none() {
            return self;
        }
        if let Ok(text) = serde_json::to_string(body) {
            self.fingerprint.push(' ');
            self.fingerprint.push_str(&text);
        }
        self
    }
}

/// Why an operation failed: the store refused or failed, or the worker thread running it died.
#[derive(Debug)]
pub enum OpError {
    Core(CoreError),
    Worker(String),
}

impl OpError {
    /// The stable code of this error, as it appears in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            OpError::Core(error) => error.code(),
            OpError::Worker(_) => "internal",
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Core(error) => error.fmt(f),
            OpError::Worker(why) => write!(f, "request worker failed: {why}"),
        }
    }
}

impl std::error::Error for OpError {}

impl From<CoreError> for OpError {
    fn from(error: CoreError) -> Self {
        OpError::Core(error)
    }
}

impl From<tokio::task::JoinError> for OpError {
    fn from(error: tokio::task::JoinError) -> Self {
        OpError::Worker(error.to_string())
    }
}

pub type OpResult<T> = Result<T, OpError>;
