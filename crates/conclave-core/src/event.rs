//! The event log's vocabulary: every kind of event as one closed enum with a typed payload.
//!
//! An event is `{seq, ts, actor, kind, task, agent, data}` on the wire and in the store (`kind` and
//! `data` columns). [`EventPayload`] is `kind` and `data` together, adjacently tagged: a variant
//! per kind, each with its own data type, so that a kind nothing handles is a compile error where
//! payloads are matched, and each kind's name is written once, in the `event_kinds!` table below.
//!
//! Reading is lenient, writing is strict. A stored row whose kind this build does not know, or
//! whose data does not fit its kind's type (a row written by an older version), reads as
//! [`EventPayload::Unrecognized`] holding the row's kind and data verbatim: a read never fails on
//! an old row and an export reproduces it byte for byte. New events are built from the typed
//! variants only ([`EventPayload::from_parts`] refuses an unknown kind or a misshapen payload).

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::model::{AgentStatus, LeaseMode, MessageKind, NoteKind, TaskId, TaskStatus};

/// The family of an event kind: the part of its name before the dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Task,
    Agent,
    Lease,
    Message,
    Note,
    File,
    Queue,
}

impl Topic {
    /// The prefix every kind of this family starts with (`task.`), as kind filters spell it.
    pub fn prefix(self) -> &'static str {
        match self {
            Topic::Task => "task.",
            Topic::Agent => "agent.",
            Topic::Lease => "lease.",
            Topic::Message => "message.",
            Topic::Note => "note.",
            Topic::File => "file.",
            Topic::Queue => "queue.",
        }
    }
}

/// Why a kind and data do not make an event (only new events are checked; see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    UnknownKind(String),
    Data { kind: String, error: String },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::UnknownKind(kind) => write!(
                f,
                "unknown event kind {kind:?} (known kinds: {})",
                EventPayload::KINDS.join(", ")
            ),
            PayloadError::Data { kind, error } => {
                write!(f, "the data of a {kind} event does not fit: {error}")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// A stored event this build cannot read as its kind; kept verbatim (see the module docs).
/// Only reads make one: its fields are private to this crate.
#[derive(Debug, Clone, PartialEq)]
pub struct Unrecognized {
    kind: String,
    data: Value,
}

impl Unrecognized {
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn data(&self) -> &Value {
        &self.data
    }
}

/// Defines [`EventPayload`] from one table: variant, data type, kind name, topic.
macro_rules! event_kinds {
    ($( $(#[$doc:meta])* $variant:ident($data:ty) => $name:literal in $topic:ident, )+) => {
        /// What happened: an event's kind with its typed data (`kind` + `data` on the wire).
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventPayload {
            $( $(#[$doc])* $variant($data), )+
            /// A stored row of an unknown kind or with data that does not fit its kind.
            Unrecognized(Unrecognized),
        }

        impl EventPayload {
            /// The name of every kind, in the table's order.
            pub const KINDS: &'static [&'static str] = &[$($name),+];

            /// The dotted kind name (`task.claimed`); an unrecognized row's own.
            pub fn kind(&self) -> &str {
                match self {
                    $( EventPayload::$variant(_) => $name, )+
                    EventPayload::Unrecognized(row) => &row.kind,
                }
            }

            /// The kind's family; none for an unrecognized row.
            pub fn topic(&self) -> Option<Topic> {
                match self {
                    $( EventPayload::$variant(_) => Some(Topic::$topic), )+
                    EventPayload::Unrecognized(_) => None,
                }
            }

            /// A new event from its kind name and data: an unknown kind or data that does not
            /// fit the kind is refused.
            pub fn from_parts(kind: &str, data: &Value) -> Result<Self, PayloadError> {
                let empty = Value::Object(serde_json::Map::new());
                // Kinds without data store `{}`; the supervisor may send `null` or nothing.
                let data = if data.is_null() { &empty } else { data };
                let misshapen = |error: serde_json::Error| PayloadError::Data {
                    kind: kind.to_string(),
                    error: error.to_string(),
                };
                match kind {
                    $( $name => <$data>::deserialize(data)
                        .map(EventPayload::$variant)
                        .map_err(misshapen), )+
                    _ => Err(PayloadError::UnknownKind(kind.to_string())),
                }
            }

            fn serialize_data<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( EventPayload::$variant(data) => data.serialize(serializer), )+
                    EventPayload::Unrecognized(row) => row.data.serialize(serializer),
                }
            }
        }
    };
}

event_kinds! {
    TaskCreated(TaskCreated) => "task.created" in Task,
    /// All its dependencies are done: the task may be claimed.
    TaskReady(NoData) => "task.ready" in Task,
    /// A dependency is not done (any more): the task waits.
    TaskPending(NoData) => "task.pending" in Task,
    TaskClaimed(TaskClaimed) => "task.claimed" in Task,
    TaskUpdated(TaskUpdated) => "task.updated" in Task,
    TaskDone(TaskDone) => "task.done" in Task,
    TaskFailed(Reason) => "task.failed" in Task,
    TaskCancelled(OptionalReason) => "task.cancelled" in Task,
    TaskAssigned(TaskAssigned) => "task.assigned" in Task,
    TaskEdited(TaskEdited) => "task.edited" in Task,
    TaskReopened(TaskReopened) => "task.reopened" in Task,
    /// Its holder's claim expired or its process died: back to the team.
    TaskReclaimed(Reason) => "task.reclaimed" in Task,
    /// A dependency failed or was cancelled, or its pipeline's send-backs ran out: the task
    /// cannot become ready by itself.
    TaskBlocked(Reason) => "task.blocked" in Task,
    /// A pipeline stage passed the task on to the next stage.
    TaskPassed(TaskPassed) => "task.passed" in Task,
    /// A pipeline stage sent the task back to an earlier one with comments.
    TaskSentBack(TaskSentBack) => "task.sent_back" in Task,
    /// Its agent finished it and it waits for a person's approval.
    TaskWaitingApproval(TaskWaitingApproval) => "task.waiting_approval" in Task,
    /// A person approved it: it moves on.
    TaskApproved(Decision) => "task.approved" in Task,
    /// A person rejected it: back to the agent that finished it.
    TaskRejected(Decision) => "task.rejected" in Task,

    AgentRegistered(AgentRegistered) => "agent.registered" in Agent,
    AgentTokenIssued(NoData) => "agent.token_issued" in Agent,
    AgentTokenRevoked(AgentTokenRevoked) => "agent.token_revoked" in Agent,
    AgentStatusChanged(AgentStatusChanged) => "agent.status" in Agent,
    /// The agent's recorded Claude Code session changed.
    AgentSession(AgentSession) => "agent.session" in Agent,
    /// A person asked the supervisor to pause, resume, stop or restart the agent.
    AgentControl(crate::model::AgentControl) => "agent.control" in Agent,
    /// Hook: a Claude Code session started (`source`: startup, resume, clear, compact).
    AgentSessionStart(AgentSessionStart) => "agent.session_start" in Agent,
    /// Hook: the session ended.
    AgentSessionEnd(AgentSession) => "agent.session_end" in Agent,
    /// Hook: Claude Code is about to compact the conversation.
    AgentCompacting(AgentSession) => "agent.compacting" in Agent,
    // What the supervisor saw of or did to the agents it runs (`POST /api/events`).
    AgentStarted(AgentStarted) => "agent.started" in Agent,
    AgentText(AgentText) => "agent.text" in Agent,
    AgentTool(AgentTool) => "agent.tool" in Agent,
    AgentTurn(AgentTurn) => "agent.turn" in Agent,
    AgentBudgetExceeded(AgentBudgetExceeded) => "agent.budget_exceeded" in Agent,
    AgentHandoffRequested(AgentHandoffRequested) => "agent.handoff_requested" in Agent,
    AgentRecycled(AgentRecycled) => "agent.recycled" in Agent,
    AgentHibernated(AgentExit) => "agent.hibernated" in Agent,
    AgentExited(AgentExit) => "agent.exited" in Agent,
    AgentCrashed(AgentCrashed) => "agent.crashed" in Agent,
    AgentRestarted(AgentRestarted) => "agent.restarted" in Agent,
    AgentWoken(AgentWoken) => "agent.woken" in Agent,
    /// Something a person should look at (a check failed, a merge conflicts, ...).
    AgentAlert(AgentAlert) => "agent.alert" in Agent,
    /// One iteration of `conclave loop` ended (a fresh client run, then the check).
    AgentIteration(AgentIteration) => "agent.iteration" in Agent,
    /// `conclave loop --confirm` waits for a person before its next iteration.
    AgentConfirmRequested(crate::model::ConfirmationRequest) => "agent.confirm_requested" in Agent,
    /// A person answered a waiting loop: continue (perhaps with an edited prompt) or stop.
    AgentConfirmed(AgentConfirmed) => "agent.confirmed" in Agent,

    LeaseGranted(LeaseGranted) => "lease.granted" in Lease,
    LeaseRenewed(LeaseGranted) => "lease.renewed" in Lease,
    LeaseReleased(LeaseReleased) => "lease.released" in Lease,
    LeaseExpired(LeaseExpired) => "lease.expired" in Lease,
    /// A lease was refused: no state changed, but the collision is part of the record.
    LeaseDenied(LeaseDenied) => "lease.denied" in Lease,

    MessageSent(MessageSent) => "message.sent" in Message,
    MessageAcked(MessageAcked) => "message.acked" in Message,

    NoteAdded(NoteAdded) => "note.added" in Note,
    NoteSuperseded(NoteSuperseded) => "note.superseded" in Note,

    /// Hook: a file-writing tool call touched a file, or a shell command (`Bash`) created,
    /// changed or deleted it (write attribution, the server's `attribution.rs`).
    FileTouched(FileTouched) => "file.touched" in File,
    /// A dependency manifest or lockfile changed (`Cargo.toml`, `package-lock.json`, ...): one
    /// agent's `cargo add` changes what everyone builds. Shown on the task and the dashboard.
    FileDependencyChanged(DependencyChanged) => "file.dependency_changed" in File,

    // The merge queue (store/queue.rs): one entry per task branch waiting to land.
    /// A finished task's branch joined the merge queue; the task waits in `review`.
    QueueEnqueued(QueueBranch) => "queue.enqueued" in Queue,
    /// The queue started landing the entry (a restart retries it).
    QueueMerging(QueueBranch) => "queue.merging" in Queue,
    /// The branch is on the integration branch; the task is done.
    QueueLanded(QueueLanded) => "queue.landed" in Queue,
    /// A conflict or a failing check: the task went back to its agent.
    QueueSentBack(QueueSentBack) => "queue.sent_back" in Queue,
    /// A person took the entry out of the queue.
    QueueSkipped(QueueBranch) => "queue.skipped" in Queue,
    /// A person put a sent-back or skipped entry back in the queue.
    QueueRetried(QueueBranch) => "queue.retried" in Queue,
    QueuePaused(OptionalReason) => "queue.paused" in Queue,
    QueueResumed(NoData) => "queue.resumed" in Queue,
}

impl Serialize for EventPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("EventPayload", 2)?;
        out.serialize_field("kind", self.kind())?;
        out.serialize_field("data", &DataOf(self))?;
        out.end()
    }
}

impl<'de> Deserialize<'de> for EventPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Tagged {
            kind: String,
            #[serde(default)]
            data: Value,
        }
        let tagged = Tagged::deserialize(deserializer)?;
        Ok(EventPayload::read(tagged.kind, tagged.data))
    }
}

impl EventPayload {
    /// A stored or received event: typed when its kind is known and its data fits, else kept
    /// verbatim as [`EventPayload::Unrecognized`].
    pub fn read(kind: String, data: Value) -> Self {
        EventPayload::from_parts(&kind, &data)
            .unwrap_or(EventPayload::Unrecognized(Unrecognized { kind, data }))
    }

    /// The data as JSON (what the `data` column and field hold).
    pub fn data(&self) -> Value {
        serde_json::to_value(DataOf(self)).unwrap_or(Value::Null)
    }
}

/// Serializes a payload's data alone.
struct DataOf<'a>(&'a EventPayload);

impl Serialize for DataOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_data(serializer)
    }
}

/// One entry of the append-only log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Strictly increasing sequence number.
    pub seq: i64,
    pub ts: DateTime<Utc>,
    pub actor: String,
    pub task: Option<TaskId>,
    /// The agent the event is about (may differ from the actor).
    pub agent: Option<String>,
    /// The kind and its data.
    pub payload: EventPayload,
}

impl Event {
    /// The dotted kind (`task.claimed`).
    pub fn kind(&self) -> &str {
        self.payload.kind()
    }
}

/// The wire and stored form of an [`Event`].
#[derive(Deserialize, JsonSchema)]
#[schemars(rename = "Event")]
struct WireEvent {
    /// Strictly increasing sequence number.
    seq: i64,
    ts: DateTime<Utc>,
    actor: String,
    /// Dotted kind such as `task.claimed` or `lease.granted`.
    kind: String,
    task: Option<TaskId>,
    /// The agent the event is about (may differ from the actor).
    agent: Option<String>,
    /// The kind's data.
    #[serde(default)]
    data: Value,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Event", 7)?;
        out.serialize_field("seq", &self.seq)?;
        out.serialize_field("ts", &self.ts)?;
        out.serialize_field("actor", &self.actor)?;
        out.serialize_field("kind", self.kind())?;
        out.serialize_field("task", &self.task)?;
        out.serialize_field("agent", &self.agent)?;
        out.serialize_field("data", &DataOf(&self.payload))?;
        out.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireEvent::deserialize(deserializer)?;
        Ok(Event {
            seq: wire.seq,
            ts: wire.ts,
            actor: wire.actor,
            task: wire.task,
            agent: wire.agent,
            payload: EventPayload::read(wire.kind, wire.data),
        })
    }
}

impl JsonSchema for Event {
    fn schema_name() -> Cow<'static, str> {
        "Event".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        WireEvent::json_schema(generator)
    }
}

/// `agent.` kinds that `POST /api/events` refuses: each is recorded by its own operation, which
/// checks what a bare event could not (`agent.control`: `POST /api/agents/{name}/control`; a
/// loop's confirmation and its answer: `POST /api/agents/{name}/confirmation` and `.../confirm`).
pub const KINDS_WITH_OWN_OPERATION: &[&str] = &[
    "agent.control",
    "agent.confirm_requested",
    "agent.confirmed",
];

/// The kinds `POST /api/events` records (every `agent.` kind but `agent.control`, which has its
/// own operation), each with the schema of its data, for the OpenAPI document.
pub fn recordable_kind_schemas(
    generator: &mut schemars::SchemaGenerator,
) -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "agent.registered",
            generator.subschema_for::<AgentRegistered>(),
        ),
        ("agent.token_issued", generator.subschema_for::<NoData>()),
        (
            "agent.token_revoked",
            generator.subschema_for::<AgentTokenRevoked>(),
        ),
        (
            "agent.status",
            generator.subschema_for::<AgentStatusChanged>(),
        ),
        ("agent.session", generator.subschema_for::<AgentSession>()),
        (
            "agent.session_start",
            generator.subschema_for::<AgentSessionStart>(),
        ),
        (
            "agent.session_end",
            generator.subschema_for::<AgentSession>(),
        ),
        (
            "agent.compacting",
            generator.subschema_for::<AgentSession>(),
        ),
        ("agent.started", generator.subschema_for::<AgentStarted>()),
        ("agent.text", generator.subschema_for::<AgentText>()),
        ("agent.tool", generator.subschema_for::<AgentTool>()),
        ("agent.turn", generator.subschema_for::<AgentTurn>()),
        (
            "agent.budget_exceeded",
            generator.subschema_for::<AgentBudgetExceeded>(),
        ),
        (
            "agent.handoff_requested",
            generator.subschema_for::<AgentHandoffRequested>(),
        ),
        ("agent.recycled", generator.subschema_for::<AgentRecycled>()),
        ("agent.hibernated", generator.subschema_for::<AgentExit>()),
        ("agent.exited", generator.subschema_for::<AgentExit>()),
        ("agent.crashed", generator.subschema_for::<AgentCrashed>()),
        (
            "agent.restarted",
            generator.subschema_for::<AgentRestarted>(),
        ),
        ("agent.woken", generator.subschema_for::<AgentWoken>()),
        ("agent.alert", generator.subschema_for::<AgentAlert>()),
        (
            "agent.iteration",
            generator.subschema_for::<AgentIteration>(),
        ),
    ]
}

// ---- the data of each kind ------------------------------------------------------------------
//
// Field names and types are those stored since the first version; an optional field that some
// events of a kind leave out is skipped when absent, so each event keeps its stored shape.

fn is_false(value: &bool) -> bool {
    !*value
}

/// No data: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NoData {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCreated {
    pub title: String,
    /// The tasks it depends on.
    pub after: Vec<TaskId>,
    pub role: Option<String>,
    pub priority: i64,
    /// The pipeline it passes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Every finish waits for a person's approval.
    #[serde(default, skip_serializing_if = "is_false")]
    pub approve: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPassed {
    pub pipeline: String,
    pub from_stage: usize,
    /// The stage it is at now, and that stage's role.
    pub stage: usize,
    pub role: Option<String>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSentBack {
    pub pipeline: String,
    pub from_stage: usize,
    /// The stage it went back to, and that stage's role.
    pub stage: usize,
    pub role: Option<String>,
    pub comments: String,
    /// Send-backs so far, this one included.
    pub send_backs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskWaitingApproval {
    pub summary: String,
    pub files: Vec<String>,
    /// The pipeline stage it waits at, if any, and the task's role.
    pub stage: Option<usize>,
    pub role: Option<String>,
}

/// A person's approval or rejection, with what they said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskClaimed {
    pub title: String,
    pub attempts: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdated {
    pub from: TaskStatus,
    pub to: TaskStatus,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDone {
    pub summary: String,
    pub files: Vec<String>,
}

/// A merge queue entry's branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueBranch {
    pub branch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueLanded {
    pub branch: String,
    /// What happened, one line ("landed at 1a2b3c4d", "already landed", "no change").
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSentBack {
    pub branch: String,
    /// `conflict` or `check_failed`.
    pub reason: String,
    /// The conflicting files and hunks, or the check's last output lines (bounded).
    pub details: String,
}

/// Why a task failed or was reclaimed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
}

/// Why a task was cancelled, if anyone said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionalReason {
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssigned {
    /// Its previous holder.
    pub from: Option<String>,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEdited {
    /// The fields that changed (`title`, `body`, `priority`, ...).
    pub changed: Vec<String>,
    pub title: String,
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReopened {
    pub from: TaskStatus,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentRegistered {
    pub role: Option<String>,
    pub caps: Vec<String>,
    pub model: Option<String>,
}

/// Tokens revoked: the one whose id starts with `token`, or all of them (`token` null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentTokenRevoked {
    pub token: Option<String>,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentStatusChanged {
    pub from: AgentStatus,
    pub to: AgentStatus,
    /// For `waiting`: whom or what it waits for (`a reply from coder-1`, `messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentSession {
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentSessionStart {
    /// `startup`, `resume`, `clear` or `compact`, as Claude Code says.
    pub source: Option<String>,
    pub session_id: Option<String>,
    /// The characters of context the hook injected into the session (its coordination cost,
    /// counted by the supervisor); absent in older rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_chars: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentStarted {
    pub pid: i64,
    /// The session it resumes, if any.
    pub resume: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentText {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentTool {
    pub tool: String,
    /// The tool's input as the model wrote it.
    pub input: Value,
    pub result_bytes: i64,
    /// The call failed (its result was a `tool_result` with `is_error`); absent in older rows.
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_error: bool,
    /// What the failed call answered, cut to [`MAX_TOOL_ERROR_CHARS`] by whoever records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The most of a failed tool call's answer an `agent.tool` event keeps.
pub const MAX_TOOL_ERROR_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentTurn {
    pub context_tokens: Option<i64>,
    pub context_window: Option<i64>,
    /// The agent's total cost so far.
    pub cost_usd: f64,
}

/// A person's answer to a loop's `agent.confirm_requested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentConfirmed {
    /// The sequence number of the request answered.
    pub request: i64,
    pub decision: crate::model::ConfirmDecision,
    /// The prompt put in place of the loop's, when the person edited it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// One iteration of `conclave loop`: what the client run cost and what the check answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentIteration {
    /// 1 for the first iteration.
    pub number: u32,
    /// What this iteration's client run cost.
    pub cost_usd: f64,
    /// Model calls in the run, as the client reported them.
    pub turns: Option<i64>,
    /// The check's exit code; absent when there is no check or it could not run (or timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_exit: Option<i32>,
    /// How the iteration ended: `ok`, `error` (the client reported an error), `interrupted`.
    pub outcome: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentBudgetExceeded {
    pub budget_usd: f64,
    pub cost_usd: f64,
    pub alert: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentHandoffRequested {
    pub context_tokens: i64,
    pub context_window: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentRecycled {
    pub previous_session: Option<String>,
}

/// How a process ended (`exit status: 0`, `signal: 15`, ...), and what the supervisor does next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentExit {
    pub exit: String,
    /// It was stopped for good (asked, or over budget).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stopped: bool,
    /// It is being restarted on request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart: bool,
}

/// A process died unasked (`reason`, what was `released`), or the supervisor gave up on it
/// (`gave_up` with a `message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentCrashed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The server's answer to releasing what it held (tasks and leases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Value>,
    pub alert: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub gave_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A restart: asked for by a person (`asked`), or after a crash (`restarts` so far).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentRestarted {
    #[serde(default, skip_serializing_if = "is_false")]
    pub asked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i64>,
}

/// Woken with these messages (ids) and offered these tasks (ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentWoken {
    pub messages: Vec<String>,
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentAlert {
    /// What raised it, in a word (`check`, `merge`, ...).
    pub cause: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseGranted {
    pub path: String,
    pub mode: LeaseMode,
    pub ttl_secs: i64,
    pub fencing_token: i64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseReleased {
    pub path: String,
    pub why: String,
    pub fencing_token: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseExpired {
    pub path: String,
    pub fencing_token: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseDenied {
    pub paths: Vec<String>,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSent {
    pub id: String,
    pub to: String,
    pub recipients: Vec<String>,
    pub thread: String,
    pub kind: MessageKind,
    pub urgent: bool,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAcked {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteAdded {
    pub id: String,
    pub kind: NoteKind,
    pub title: String,
    pub supersedes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteSuperseded {
    pub id: String,
    pub by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileTouched {
    pub path: String,
    pub tool: String,
    /// The fencing token of the toucher's lease covering the path at that moment (none when it
    /// held none): `done` compares it with the lease held then (ops.rs, stale edits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<i64>,
    /// The shell command that wrote the file (`Bash` only), cut to [`MAX_COMMAND_CHARS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `created`, `modified` or `deleted` (`Bash` only: a snapshot before and after told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// Other agents' shell commands ran in the same tree at the same time, so the write may be
    /// theirs as well as this agent's: `candidates` names them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ambiguous: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}

/// The most of a shell command an event keeps.
pub const MAX_COMMAND_CHARS: usize = 500;

/// A dependency manifest or lockfile changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyChanged {
    /// Project-relative.
    pub path: String,
    /// `cargo`, `npm`, `pnpm`, `python`, `uv`, `go`.
    pub ecosystem: String,
    /// `manifest` (declares dependencies) or `lockfile` (pins versions).
    pub file: String,
    /// The tool that changed it (`Edit`, `Write`, `Bash`, ...).
    pub tool: String,
    /// The shell command, when a `Bash` call changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// One event of every kind as stored today (the data the emitting code writes).
    fn samples() -> Vec<(&'static str, Value)> {
        vec![
            (
                "task.created",
                json!({"title": "parse", "after": ["T-1"], "role": null, "priority": 2}),
            ),
            ("task.ready", json!({})),
            ("task.pending", json!({})),
            ("task.claimed", json!({"title": "parse", "attempts": 0})),
            (
                "task.updated",
                json!({"from": "claimed", "to": "in_progress", "note": null}),
            ),
            (
                "task.done",
                json!({"summary": "done", "files": ["src/a.rs"]}),
            ),
            ("task.failed", json!({"reason": "tests fail"})),
            ("task.cancelled", json!({"reason": null})),
            ("task.assigned", json!({"from": "alice", "title": "parse"})),
            (
                "task.edited",
                json!({"changed": ["title"], "title": "parse", "priority": 0}),
            ),
            (
                "task.reopened",
                json!({"from": "done", "reason": "regressed"}),
            ),
            ("task.reclaimed", json!({"reason": "claim expired"})),
            ("task.blocked", json!({"reason": "dependency T-1 failed"})),
            (
                "task.passed",
                json!({"pipeline": "reviewed", "from_stage": 0, "stage": 1, "role": "reviewer",
                       "summary": "wrote it"}),
            ),
            (
                "task.sent_back",
                json!({"pipeline": "reviewed", "from_stage": 1, "stage": 0, "role": "coder",
                       "comments": "handle empty input", "send_backs": 1}),
            ),
            (
                "task.waiting_approval",
                json!({"summary": "migrated", "files": [], "stage": null, "role": null}),
            ),
            ("task.approved", json!({"comment": "fine"})),
            ("task.rejected", json!({"comment": null})),
            (
                "agent.registered",
                json!({"role": "coder", "caps": ["rust"], "model": null}),
            ),
            ("agent.token_issued", json!({})),
            (
                "agent.token_revoked",
                json!({"token": "a1b2c3", "count": 1}),
            ),
            ("agent.status", json!({"from": "idle", "to": "working"})),
            ("agent.session", json!({"session_id": "s-1"})),
            ("agent.control", json!({"action": "pause"})),
            (
                "agent.session_start",
                json!({"source": "startup", "session_id": "s-1"}),
            ),
            ("agent.session_end", json!({"session_id": "s-1"})),
            ("agent.compacting", json!({"session_id": null})),
            ("agent.started", json!({"pid": 41, "resume": null})),
            ("agent.text", json!({"text": "hello"})),
            (
                "agent.tool",
                json!({"tool": "Bash", "input": {"command": "ls"}, "result_bytes": 12}),
            ),
            (
                "agent.turn",
                json!({"context_tokens": 900, "context_window": 200000, "cost_usd": 0.25}),
            ),
            (
                "agent.budget_exceeded",
                json!({"budget_usd": 1.0, "cost_usd": 1.5, "alert": true, "message": "over"}),
            ),
            (
                "agent.handoff_requested",
                json!({"context_tokens": 150000, "context_window": 200000}),
            ),
            ("agent.recycled", json!({"previous_session": "s-1"})),
            ("agent.hibernated", json!({"exit": "exit status: 0"})),
            (
                "agent.exited",
                json!({"exit": "signal: 15", "stopped": true}),
            ),
            (
                "agent.crashed",
                json!({"reason": "exit 1", "released": {"tasks": [], "leases": []}, "alert": true}),
            ),
            ("agent.restarted", json!({"restarts": 2})),
            (
                "agent.woken",
                json!({"messages": ["M-1"], "tasks": ["T-2"]}),
            ),
            (
                "agent.alert",
                json!({"cause": "check", "message": "cargo test failed"}),
            ),
            (
                "agent.iteration",
                json!({"number": 2, "cost_usd": 0.25, "turns": 3, "check_exit": 1,
                       "outcome": "ok", "duration_ms": 5400}),
            ),
            (
                "agent.confirm_requested",
                json!({"next_iteration": 3, "summary": "iteration 2: check exited 1"}),
            ),
            (
                "agent.confirmed",
                json!({"request": 41, "decision": "continue", "prompt": "Fix the next test."}),
            ),
            (
                "lease.granted",
                json!({"path": "src/a.rs", "mode": "exclusive", "ttl_secs": 600,
                       "fencing_token": 3, "reason": null}),
            ),
            (
                "lease.renewed",
                json!({"path": "src/*", "mode": "shared", "ttl_secs": 60,
                       "fencing_token": 4, "reason": "edit"}),
            ),
            (
                "lease.released",
                json!({"path": "src/a.rs", "why": "task done", "fencing_token": 3}),
            ),
            (
                "lease.expired",
                json!({"path": "src/a.rs", "fencing_token": 3}),
            ),
            (
                "lease.denied",
                json!({"paths": ["src/a.rs"], "why": "leased by bob"}),
            ),
            (
                "message.sent",
                json!({"id": "M-1", "to": "bob", "recipients": ["bob"], "thread": "M-1",
                       "kind": "question", "urgent": false, "body": "why?"}),
            ),
            ("message.acked", json!({"ids": ["M-1"]})),
            (
                "note.added",
                json!({"id": "N-1", "kind": "decision", "title": "use sqlite", "supersedes": null}),
            ),
            ("note.superseded", json!({"id": "N-1", "by": "N-2"})),
            (
                "file.touched",
                json!({"path": "src/a.rs", "tool": "Edit", "fencing_token": 7}),
            ),
            (
                "file.dependency_changed",
                json!({"path": "Cargo.lock", "ecosystem": "cargo", "file": "lockfile",
                       "tool": "Bash", "command": "cargo add serde"}),
            ),
            ("queue.enqueued", json!({"branch": "conclave/T-1"})),
            ("queue.merging", json!({"branch": "conclave/T-1"})),
            (
                "queue.landed",
                json!({"branch": "conclave/T-1", "outcome": "landed at 1a2b3c4d"}),
            ),
            (
                "queue.sent_back",
                json!({"branch": "conclave/T-1", "reason": "conflict", "details": "src/a.rs"}),
            ),
            ("queue.skipped", json!({"branch": "conclave/T-1"})),
            ("queue.retried", json!({"branch": "conclave/T-1"})),
            ("queue.paused", json!({"reason": null})),
            ("queue.resumed", json!({})),
        ]
    }

    #[test]
    fn every_kind_reads_typed_and_writes_back_the_same_json() {
        let samples = samples();
        let covered: Vec<&str> = samples.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            covered,
            EventPayload::KINDS,
            "one sample per kind, in the table's order"
        );
        for (kind, data) in samples {
            let payload = EventPayload::from_parts(kind, &data)
                .unwrap_or_else(|error| panic!("{kind}: {error}"));
            assert_eq!(payload.kind(), kind);
            let topic = payload
                .topic()
                .unwrap_or_else(|| panic!("{kind} has no topic"));
            assert!(
                kind.starts_with(topic.prefix()),
                "{kind} is not under {topic:?}"
            );
            assert_eq!(payload.data(), data, "{kind} keeps its stored shape");
            let tagged = serde_json::to_value(&payload).expect("serializes");
            assert_eq!(
                tagged,
                json!({"kind": kind, "data": data}),
                "{kind} is adjacently tagged"
            );
            let back: EventPayload = serde_json::from_value(tagged).expect("deserializes");
            assert_eq!(back, payload, "{kind} round-trips");
        }
    }

    #[test]
    fn optional_fields_left_out_today_stay_left_out() {
        for data in [
            json!({"exit": "exit status: 0"}),
            json!({"exit": "signal: 15", "restart": true}),
        ] {
            let payload = EventPayload::from_parts("agent.exited", &data).expect("fits");
            assert_eq!(payload.data(), data);
        }
        let gave_up = json!({"alert": true, "gave_up": true, "message": "crashed 4 times"});
        let payload = EventPayload::from_parts("agent.crashed", &gave_up).expect("fits");
        assert_eq!(payload.data(), gave_up);
        let shell = json!({"path": "gen/out.rs", "tool": "Bash", "command": "make gen",
                           "change": "created", "ambiguous": true, "candidates": ["bob"]});
        let payload = EventPayload::from_parts("file.touched", &shell).expect("fits");
        assert_eq!(payload.data(), shell);
        let asked = json!({"asked": true});
        let payload = EventPayload::from_parts("agent.restarted", &asked).expect("fits");
        assert_eq!(payload.data(), asked);
    }

    #[test]
    fn new_events_of_unknown_kinds_or_misshapen_data_are_refused() {
        let unknown = EventPayload::from_parts("agent.danced", &json!({})).expect_err("unknown");
        assert_eq!(unknown, PayloadError::UnknownKind("agent.danced".into()));
        assert!(
            unknown
                .to_string()
                .contains("unknown event kind \"agent.danced\"")
        );
        let misshapen =
            EventPayload::from_parts("agent.text", &json!({"text": 3})).expect_err("misshapen");
        assert!(
            matches!(&misshapen, PayloadError::Data { kind, .. } if kind == "agent.text"),
            "{misshapen:?}"
        );
        // Kinds without data accept `null` or no data at all.
        assert_eq!(
            EventPayload::from_parts("task.ready", &Value::Null),
            Ok(EventPayload::TaskReady(NoData {}))
        );
    }

    #[test]
    fn unknown_or_misshapen_stored_events_read_verbatim() {
        let wire = json!({
            "seq": 9, "ts": "2030-01-01T00:00:00Z", "actor": "admin", "kind": "agent.tool",
            "task": null, "agent": "bob", "data": {"tool": 7},
        });
        let event: Event = serde_json::from_value(wire.clone()).expect("reads");
        assert!(matches!(event.payload, EventPayload::Unrecognized(_)));
        assert_eq!(event.kind(), "agent.tool");
        assert_eq!(event.payload.topic(), None);
        assert_eq!(serde_json::to_value(&event).expect("writes"), wire);

        let retired = EventPayload::read("agent.danced".into(), json!({"steps": 3}));
        assert_eq!(retired.kind(), "agent.danced");
        assert_eq!(retired.data(), json!({"steps": 3}));
    }

    #[test]
    fn events_keep_their_seven_fields_in_order() {
        let event = Event {
            seq: 7,
            ts: "2030-01-01T00:00:00Z".parse().expect("a time"),
            actor: "alice".into(),
            task: Some(TaskId(3)),
            agent: Some("alice".into()),
            payload: EventPayload::TaskClaimed(TaskClaimed {
                title: "parse".into(),
                attempts: 1,
            }),
        };
        let text = serde_json::to_string(&event).expect("writes");
        assert_eq!(
            text,
            r#"{"seq":7,"ts":"2030-01-01T00:00:00Z","actor":"alice","kind":"task.claimed","task":"T-3","agent":"alice","data":{"title":"parse","attempts":1}}"#
        );
        let back: Event = serde_json::from_str(&text).expect("reads");
        assert_eq!(back, event);
    }

    #[test]
    fn new_events_carry_kind_agent_task_and_data() {
        let wire = json!({"kind": "agent.text", "agent": "bob", "data": {"text": "hi"}});
        let new: crate::model::NewEvent = serde_json::from_value(wire).expect("reads");
        assert_eq!(
            new.payload,
            EventPayload::AgentText(AgentText { text: "hi".into() })
        );
        let refused = serde_json::from_value::<crate::model::NewEvent>(
            json!({"kind": "agent.danced", "agent": "bob"}),
        )
        .expect_err("unknown kind");
        assert!(
            refused.to_string().contains("unknown event kind"),
            "{refused}"
        );
        let extra = serde_json::from_value::<crate::model::NewEvent>(
            json!({"kind": "agent.text", "agent": "bob", "data": {"text": "hi"}, "x": 1}),
        );
        assert!(extra.is_err(), "unknown fields are refused");
    }

    #[test]
    fn recordable_kinds_are_the_agent_kinds_but_control() {
        let mut generator = schemars::SchemaGenerator::default();
        let recordable: Vec<&str> = recordable_kind_schemas(&mut generator)
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        let expected: Vec<&str> = EventPayload::KINDS
            .iter()
            .copied()
            .filter(|kind| kind.starts_with("agent.") && !KINDS_WITH_OWN_OPERATION.contains(kind))
            .collect();
        assert_eq!(recordable, expected);
    }
}
