//! The domain model: agents, tasks, leases, messages, notes and events.
//!
//! These types are also the wire format of the HTTP API (they derive `Serialize`, `Deserialize` and
//! `JsonSchema` for the OpenAPI document and the MCP tool schemas); nothing else crosses a process
//! boundary. Agents are named by their name everywhere.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
pub use crate::event::{Event, EventPayload};

/// Who did something: a registered agent, the admin (a person or the supervisor), or the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    Admin,
    Agent(String),
    System,
}

impl Actor {
    pub fn name(&self) -> &str {
        match self {
            Actor::Admin => ADMIN_NAME,
            Actor::Agent(name) => name,
            Actor::System => SYSTEM_NAME,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Actor::Admin)
    }

    pub fn agent(&self) -> Option<&str> {
        match self {
            Actor::Agent(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub const ADMIN_NAME: &str = "admin";
pub const SYSTEM_NAME: &str = "conclave";

/// A task's short id, shown as `T-12`; parsed from `T-12`, `t-12` or `12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub i64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T-{}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_short_id(text, 'T', "task").map(TaskId)
    }
}

/// Parses a short id such as `T-12`, `M-7` or `N-3` (the prefix letter in either case, or no
/// prefix at all: `12`) into its positive number; `noun` names the kind of id in the error.
pub fn parse_short_id(text: &str, prefix: char, noun: &str) -> Result<i64, CoreError> {
    let trimmed = text.trim();
    let digits = trimmed
        .strip_prefix(prefix.to_ascii_uppercase())
        .or_else(|| trimmed.strip_prefix(prefix.to_ascii_lowercase()))
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(trimmed);
    match digits.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(CoreError::invalid(format!(
            "{text:?} is not a {noun} id (expected {}-<number>)",
            prefix.to_ascii_uppercase()
        ))),
    }
}

/// The Claude Code tools whose `tool_input` names a file they write: the hooks lease that file,
/// and `conclave claude` matches the file-lease hook on them.
pub const FILE_WRITING_TOOLS: &[&str] = &["Edit", "Write", "MultiEdit", "NotebookEdit"];

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Number(i64),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Repr::Number(n) if n > 0 => Ok(TaskId(n)),
            Repr::Number(n) => Err(serde::de::Error::custom(format!("{n} is not a task id"))),
        }
    }
}

impl JsonSchema for TaskId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TaskId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            // At most 18 digits: every such number fits an i64, which the id is.
            "pattern": "^T-[1-9][0-9]{0,17}$",
            "description": "task id, e.g. T-3"
        })
    }
}

/// Implements `Display`/`FromStr` for a fieldless enum from one table of `(variant, "name")`.
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = CoreError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($name => Ok($ty::$variant),)+
                    _ => {
                        let names: Vec<&str> = vec![$($name),+];
                        Err(CoreError::invalid(format!(
                            "unknown {} {:?} (expected one of: {})", $what, text, names.join(", ")
                        )))
                    }
                }
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Ready,
    Claimed,
    InProgress,
    Review,
    Blocked,
    Done,
    Failed,
    Cancelled,
}

named_enum!(TaskStatus, "task status", {
    Pending => "pending", Ready => "ready", Claimed => "claimed", InProgress => "in_progress",
    Review => "review", Blocked => "blocked", Done => "done", Failed => "failed",
    Cancelled => "cancelled",
});

impl TaskStatus {
    /// A task in one of these states is held by its assignee under a claim lease.
    pub fn is_held(self) -> bool {
        matches!(
            self,
            TaskStatus::Claimed | TaskStatus::InProgress | TaskStatus::Review | TaskStatus::Blocked
        )
    }

    /// Terminal states: nothing happens to the task any more unless it is reopened.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Starting,
    Working,
    Idle,
    Waiting,
    Offline,
    Paused,
    Hibernated,
    Stopped,
    Crashed,
}

named_enum!(AgentStatus, "agent status", {
    Starting => "starting", Working => "working", Idle => "idle", Waiting => "waiting",
    Offline => "offline", Paused => "paused", Hibernated => "hibernated", Stopped => "stopped",
    Crashed => "crashed",
});

/// Where an agent works: the project's one tree (`shared`, the default) or its own git
/// worktree (`worktree`), whose finished tasks land through the merge queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    #[default]
    Shared,
    Worktree,
}

named_enum!(Isolation, "isolation", { Shared => "shared", Worktree => "worktree" });

/// Where a merge queue entry is (store/queue.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// Waiting its turn.
    Queued,
    /// Being landed now (found so at start-up: retried).
    Merging,
    /// On the integration branch; its task is done.
    Landed,
    /// A conflict or a failing check sent its task back to its agent.
    SentBack,
    /// A person took it out of the queue.
    Skipped,
}

named_enum!(QueueState, "queue state", {
    Queued => "queued", Merging => "merging", Landed => "landed", SentBack => "sent_back",
    Skipped => "skipped",
});

/// One task branch in the merge queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueEntry {
    pub task: TaskId,
    pub branch: String,
    /// The agent whose worktree holds the branch.
    pub agent: String,
    /// The order of completion: lower lands first.
    pub position: i64,
    pub state: QueueState,
    /// Landings tried for this entry.
    pub attempts: i64,
    /// What the last landing said (bounded).
    pub outcome: Option<String>,
    pub enqueued_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /api/queue`: the entries in order, and whether the queue is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueView {
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub entries: Vec<QueueEntry>,
}

/// The default bound on the patch text of `GET /api/tasks/{id}/diff`.
pub const DEFAULT_DIFF_BYTES: u64 = 256 * 1024;
/// The most patch text `GET /api/tasks/{id}/diff` answers, whatever is asked.
pub const MAX_DIFF_BYTES: u64 = 4 * 1024 * 1024;

/// `GET /api/tasks/{id}/diff`: what the task's branch changed since it forked from the
/// integration branch (`git diff into...branch`), for a person deciding on it. The file list and
/// the totals are always complete; the patch is cut at a byte bound (after a whole line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskDiff {
    pub task: TaskId,
    /// The task's branch, `conclave/T-n`.
    pub branch: String,
    /// The integration branch it is compared with (`[merge] into`).
    pub into: String,
    /// Their merge base; none when the histories are unrelated (then the diff is against the
    /// integration branch's tip).
    pub base: Option<String>,
    /// The branch's tip.
    pub head: String,
    pub files: Vec<DiffFileStat>,
    /// Lines added and removed in all text files.
    pub added: u64,
    pub removed: u64,
    /// The unified diff, at most `max_bytes` of it.
    pub patch: String,
    /// The patch was cut at the bound: the file list still names every file.
    pub truncated: bool,
    /// The bound the patch was cut at.
    pub max_bytes: u64,
}

/// One file of a [`TaskDiff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DiffFileStat {
    pub path: String,
    /// Its path at the fork, when git saw a rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// Lines added and removed; none for a binary file.
    pub added: Option<u64>,
    pub removed: Option<u64>,
    pub binary: bool,
}

/// An open task's branch (`conclave/T-12`) in `GET /api/overlaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpenBranch {
    pub task: TaskId,
    pub branch: String,
    /// The task's holder.
    pub agent: Option<String>,
}

/// Two open branches that changed the same files (committed, or uncommitted in the worktree
/// that has the branch checked out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BranchOverlap {
    pub first: OpenBranch,
    pub second: OpenBranch,
    /// Project-relative as git names them, sorted; never empty.
    pub files: Vec<String>,
}

/// `GET /api/overlaps`: per pair of open task branches, the files both have changed, so that
/// two agents in separate worktrees learn of a coming conflict before the merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OverlapReport {
    /// The project is a git repository (else there are no branches to compare).
    pub git: bool,
    /// The open tasks' branches compared (the most recently updated ones, up to a bound).
    pub branches: Vec<OpenBranch>,
    /// Open tasks whose branches were left out by the bound.
    pub left_out: usize,
    pub overlaps: Vec<BranchOverlap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum LeaseMode {
    #[default]
    Exclusive,
    Shared,
}

named_enum!(LeaseMode, "lease mode", { Exclusive => "exclusive", Shared => "shared" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    #[default]
    Chat,
    Question,
    Answer,
    Alert,
    Handoff,
}

named_enum!(MessageKind, "message kind", {
    Chat => "chat", Question => "question", Answer => "answer", Alert => "alert",
    Handoff => "handoff",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    Decision,
    #[default]
    Discovery,
    Interface,
    Warning,
}

named_enum!(NoteKind, "note kind", {
    Decision => "decision", Discovery => "discovery", Interface => "interface",
    Warning => "warning",
});

/// One of an agent's tokens, as listed (the secret itself is never stored or shown again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentToken {
    /// The first 12 hex digits of the token's SHA-256: enough to name it for `revoke`.
    pub id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Agent {
    pub name: String,
    pub role: Option<String>,
    pub model: Option<String>,
    pub caps: Vec<String>,
    pub status: AgentStatus,
    pub session_id: Option<String>,
    pub pid: Option<i64>,
    pub host: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub context_tokens: Option<i64>,
    pub context_window: Option<i64>,
    pub cost_usd: f64,
    pub restarts: i64,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub isolation: Isolation,
    /// What the agent's model calls read, and the part of it that was coordination, as its
    /// supervisor last reported; absent until a supervisor (or `conclave loop`) reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination: Option<Coordination>,
}

/// Characters per token used to estimate the coordination parts of an agent's input (Anthropic's
/// rule of thumb for English text and JSON with Claude models). The totals of input, output and
/// cache tokens are never estimated: they add up what the API reported per model call.
pub const CHARS_PER_TOKEN: f64 = 4.0;

/// An agent's context accounting (issue 16): every token its model calls read and wrote, as the
/// API reported them, and an estimate of the part of the input that was coordination — the
/// Conclave tool definitions and protocol text carried by every call, Conclave tool calls and
/// their results, text injected by the SessionStart hook and by wake-ups, and handoffs. A piece of
/// coordination text counts once for every model call that carried it in its context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Coordination {
    /// Model calls counted.
    #[schemars(range(min = 0))]
    pub model_calls: i64,
    /// Input tokens read by all calls, cache reads and writes included (reported by the API).
    #[schemars(range(min = 0))]
    pub input_tokens: i64,
    #[schemars(range(min = 0))]
    pub output_tokens: i64,
    /// The part of `input_tokens` read from the prompt cache.
    #[schemars(range(min = 0))]
    pub cache_read_tokens: i64,
    /// The part of `input_tokens` written to the prompt cache.
    #[schemars(range(min = 0))]
    pub cache_creation_tokens: i64,
    /// Estimated: the Conclave tool definitions and the Conclave protocol text, every call.
    #[schemars(range(min = 0))]
    pub definitions_tokens: i64,
    /// Estimated: Conclave tool calls and their results, for as long as they stay in context.
    #[schemars(range(min = 0))]
    pub tool_tokens: i64,
    /// Estimated: text the SessionStart hook and the supervisor's wake-ups injected.
    #[schemars(range(min = 0))]
    pub injected_tokens: i64,
    /// Estimated: handoff requests and handoffs at recycling.
    #[schemars(range(min = 0))]
    pub handoff_tokens: i64,
    /// The characters per token the estimates used ([`CHARS_PER_TOKEN`]).
    #[schemars(range(min = 0))]
    pub chars_per_token: f64,
}

impl Coordination {
    /// The estimated coordination tokens, all parts together.
    pub fn tokens(&self) -> i64 {
        self.definitions_tokens + self.tool_tokens + self.injected_tokens + self.handoff_tokens
    }

    /// Coordination as a percentage of the input (0 with no input).
    pub fn percent_of_input(&self) -> f64 {
        if self.input_tokens <= 0 {
            0.0
        } else {
            100.0 * self.tokens() as f64 / self.input_tokens as f64
        }
    }

    /// `coordination: 3.1 % of input, ≈ 12 k tokens (estimated at 4 characters a token)`.
    pub fn describe(&self) -> String {
        let tokens = self.tokens();
        let amount = if tokens >= 10_000 {
            format!("{} k", (tokens as f64 / 1000.0).round())
        } else if tokens >= 1000 {
            format!("{:.1} k", tokens as f64 / 1000.0)
        } else {
            tokens.to_string()
        };
        format!(
            "coordination: {:.1} % of input, ≈ {amount} tokens (estimated at {} characters a token)",
            self.percent_of_input(),
            self.chars_per_token
        )
    }

    /// Adds another account to this one (a team's or a run's total).
    pub fn add(&mut self, other: &Coordination) {
        self.model_calls += other.model_calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_creation_tokens += other.cache_creation_tokens;
        self.definitions_tokens += other.definitions_tokens;
        self.tool_tokens += other.tool_tokens;
        self.injected_tokens += other.injected_tokens;
        self.handoff_tokens += other.handoff_tokens;
        if other.chars_per_token > 0.0 {
            self.chars_per_token = other.chars_per_token;
        }
    }
}

/// One past `conclave compare` run, as `GET /api/comparisons` lists it (docs/compare.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ComparisonSummary {
    /// The comparison's folder under `.conclave/compare/` (`compare-20261201-021500`).
    pub name: String,
    pub started_at: String,
    /// The model was the scripted stand-in.
    pub scripted: bool,
    pub ways: Vec<String>,
    pub runs: i64,
    /// Runs whose check passed.
    pub passed: i64,
    /// Where the Markdown report is served; its charts are next to it
    /// (`/api/comparisons/{name}/{metric}.svg`).
    pub report: String,
    /// The chart files, one per metric.
    pub charts: Vec<String>,
}

/// `GET /api/comparisons`: past comparisons, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ComparisonList {
    pub comparisons: Vec<ComparisonSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: TaskId,
    pub title: String,
    pub body: String,
    pub status: TaskStatus,
    /// Higher runs first.
    pub priority: i64,
    /// The role an agent needs to claim it; none means every agent fits.
    pub role: Option<String>,
    /// Capability tags an agent needs (all of them) to claim it.
    pub caps: Vec<String>,
    /// Tasks that must be `done` before this one is ready.
    pub depends_on: Vec<TaskId>,
    pub assignee: Option<String>,
    pub claim_expires_at: Option<DateTime<Utc>>,
    pub attempts: i64,
    pub result: Option<String>,
    /// Why the server blocked the task (a dependency failed or was cancelled); `None` for a
    /// task its holder marked blocked, and for every other status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    pub files: Vec<String>,
    pub parent: Option<TaskId>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The pipeline the task passes through and the stage that holds it; `None` outside one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineState>,
    /// Every finish of this task by an agent waits for a person's approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approve: bool,
    /// Its agent finished it and it waits (in `review`, held by nobody) for a person to approve
    /// or reject it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
    /// What its holders spent while they held it (claimed or in progress), in dollars, from the
    /// cost their supervisor reports.
    #[serde(default)]
    pub cost_usd: f64,
    /// Dependency manifests and lockfiles its holders changed (from the task's
    /// `file.dependency_changed` events), oldest first. Filled by `GET /api/tasks/{id}`; left
    /// out of lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependency_changes: Vec<DependencyChange>,
}

/// One change of a dependency manifest or lockfile by an agent working on a task (write
/// attribution, issue 11): `cargo add` by one agent changes what the whole team builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DependencyChange {
    /// Project-relative.
    pub path: String,
    /// `cargo`, `npm`, `pnpm`, `python`, `uv` or `go`.
    pub ecosystem: String,
    /// `manifest` (declares dependencies) or `lockfile` (pins versions).
    pub file: String,
    pub agent: Option<String>,
    /// The tool that changed it (`Edit`, `Write`, `Bash`, ...).
    pub tool: String,
    /// The shell command, when a `Bash` call changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub at: DateTime<Utc>,
}

/// A pipeline: the stages (roles) a task passes through in order, each stage's agent passing it
/// on or sending it back. Built from a `[[pipeline]]` section of `conclave.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Pipeline {
    pub name: String,
    pub stages: Vec<PipelineStage>,
    /// Send-backs after which a task is blocked for a person instead of going back again.
    pub max_rounds: u32,
}

/// The send-backs a pipeline allows when its section does not say.
pub const DEFAULT_MAX_ROUNDS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineStage {
    /// The role whose agents take the task at this stage.
    pub role: String,
    /// A pass at this stage waits for a person's approval before the task moves on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approve: bool,
}

/// Where a pipeline task stands. The definition is copied onto the task when it is created, so
/// that a task in flight keeps its stages when `conclave.toml` changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineState {
    #[serde(flatten)]
    pub pipeline: Pipeline,
    /// Index in `stages` of the stage that holds the task.
    pub stage: usize,
    /// Send-backs so far.
    pub send_backs: u32,
}

impl PipelineState {
    pub fn current(&self) -> Option<&PipelineStage> {
        self.pipeline.stages.get(self.stage)
    }

    /// Whether the task has used up its send-backs (it is then blocked for a person).
    pub fn rounds_exhausted(&self) -> bool {
        self.send_backs >= self.pipeline.max_rounds
    }
}

/// What an agent says of a pipeline task it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The work is good: on to the next stage (or done after the last).
    #[default]
    Pass,
    /// Back to an earlier stage with comments.
    SendBack,
}

/// One entry of a task's history: a stage's verdict or a person's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepVerdict {
    Pass,
    SendBack,
    Approved,
    Rejected,
}

named_enum!(StepVerdict, "verdict", {
    Pass => "pass", SendBack => "send_back", Approved => "approved", Rejected => "rejected",
});

/// A recorded step of a task's way through its pipeline or its approval: who, when, at which
/// stage, what they decided and what they said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStep {
    pub at: DateTime<Utc>,
    pub actor: String,
    /// The stage index the task was at (`None` outside a pipeline).
    pub stage: Option<usize>,
    /// The task's role at that step.
    pub role: Option<String>,
    pub verdict: StepVerdict,
    /// Where a send-back sent the task (a stage index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_stage: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl Task {
    /// Whether the agent named `name`, with `role` and capabilities `caps`, may take this task:
    /// its role matches (or the task names none), it has every capability the task asks for,
    /// and the task is not reserved for another agent (an assignee set on a ready task). The
    /// one rule the store's `claim` and the supervisor's wake-ups both follow.
    pub fn fits(&self, name: &str, role: Option<&str>, caps: &[String]) -> bool {
        let role_fits = self
            .role
            .as_deref()
            .is_none_or(|wanted| role == Some(wanted));
        let caps_fit = self.caps.iter().all(|cap| caps.contains(cap));
        let reserved_fits = self
            .assignee
            .as_deref()
            .is_none_or(|assignee| assignee == name);
        role_fits && caps_fit && reserved_fits
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    /// Normalized path or glob relative to the project root.
    pub path: String,
    pub mode: LeaseMode,
    pub holder: String,
    pub task: Option<TaskId>,
    pub reason: Option<String>,
    /// Grows with every grant, across all leases.
    pub fencing_token: i64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    pub agent: String,
    pub acked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    /// `M-<n>`.
    pub id: String,
    pub sender: String,
    /// As addressed: an agent name, `role:<name>` or `all`.
    pub to: String,
    pub thread: String,
    pub kind: MessageKind,
    pub urgent: bool,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Note {
    /// `N-<n>`.
    pub id: String,
    pub author: String,
    pub kind: NoteKind,
    pub title: String,
    pub body: String,
    pub tags: Vec<String>,
    pub files: Vec<String>,
    pub task: Option<TaskId>,
    pub supersedes: Option<String>,
    pub superseded_by: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One hit of a full-text search over notes, messages and task results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchHit {
    /// `note`, `message` or `task`.
    pub kind: String,
    /// `N-3`, `M-7` or `T-2`.
    pub id: String,
    pub title: String,
    pub snippet: String,
}

// ---- requests -------------------------------------------------------------------------------

/// What the store accepts as a name (agents, roles, capabilities, tags): 1 to 64 ASCII letters,
/// digits, `-`, `_` or `.`. Declared in the OpenAPI document so that clients know before asking.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// [`NAME_PATTERN`] or the empty string (which clears a task's role).
pub const NAME_OR_EMPTY_PATTERN: &str = "^[A-Za-z0-9._-]{0,64}$";
/// A lease path or glob as [`crate::paths::normalize_lease_path`] accepts it, as near as a
/// regular expression says it: relative, no NUL, backslash or `..` segment, segments of at most
/// 255 bytes, `**` only as a whole segment, at most 16 wildcards and 512 bytes in a glob, not
/// only `.` and `/`. Character classes (`[a-z]`) are accepted too but left out here: whether one
/// is well-formed is more than a pattern should say.
pub const LEASE_PATH_PATTERN: &str = r"^(?!/)(?![\s\S]*[\x00\\\[])(?![\s\S]*[^/]{256})(?!([\s\S]*/)?\.\.(/|$))(?![\s\S]*[^/]\*\*)(?![\s\S]*\*\*[^/])(?!([^*?]*[*?]){17})(?!(?=[\s\S]*[*?])[\s\S]{513})(?=[\s\S]*[^./])";
/// Free text: anything but a NUL byte (the store refuses those).
pub const TEXT_PATTERN: &str = "^[^\\x00]*$";
/// Free text that must not be blank: [`TEXT_PATTERN`] with a character other than whitespace.
pub const REQUIRED_TEXT_PATTERN: &str = "^[^\\x00]*[^\\s\\x00][^\\x00]*$";

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    #[serde(default)]
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub role: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub caps: Vec<String>,
    /// `worktree`: the supervisor runs it in its own git worktree and its finished tasks land
    /// through the merge queue.
    #[serde(default)]
    pub isolation: Isolation,
}

/// What a supervisor or the agent itself reports about a running agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdate {
    #[serde(default)]
    pub status: Option<AgentStatus>,
    #[serde(default)]
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub role: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub host: Option<String>,
    /// Not negative.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub context_tokens: Option<i64>,
    /// Not negative.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub context_window: Option<i64>,
    /// Not negative.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub cost_usd: Option<f64>,
    /// The agent's whole context account so far (replaces the one stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordination: Option<Coordination>,
    /// Not negative.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub restarts: Option<i64>,
    /// Where the agent works from now on (the supervisor sets it from `conclave.toml`).
    #[serde(default)]
    pub isolation: Option<Isolation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// One line; not blank.
    #[schemars(length(min = 1), regex(pattern = REQUIRED_TEXT_PATTERN))]
    pub title: String,
    #[serde(default)]
    #[schemars(regex(pattern = TEXT_PATTERN))]
    pub body: Option<String>,
    /// Tasks that must be done first.
    #[serde(default)]
    pub after: Vec<TaskId>,
    #[serde(default)]
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub role: Option<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub caps: Vec<String>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub parent: Option<TaskId>,
    /// The pipeline (by name) the task passes through; it starts at the first stage, whose role
    /// it takes.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Every finish by an agent waits for a person's approval.
    #[serde(default)]
    pub approve: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskEdit {
    /// Not blank.
    #[serde(default)]
    #[schemars(regex(pattern = REQUIRED_TEXT_PATTERN))]
    pub title: Option<String>,
    #[serde(default)]
    #[schemars(regex(pattern = TEXT_PATTERN))]
    pub body: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
    /// Set the required role; an empty string clears it.
    #[serde(default)]
    #[schemars(regex(pattern = NAME_OR_EMPTY_PATTERN))]
    pub role: Option<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub caps: Option<Vec<String>>,
    /// Dependencies to add.
    #[serde(default)]
    pub after: Vec<TaskId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskStatusUpdate {
    /// `claimed`, `in_progress`, `blocked` or `review` (among the held states, as the holder
    /// sees fit): done, fail and cancel have their own operations.
    #[schemars(schema_with = "settable_task_status_schema")]
    pub status: TaskStatus,
    #[serde(default)]
    #[schemars(regex(pattern = TEXT_PATTERN))]
    pub note: Option<String>,
}

/// The statuses a [`TaskStatusUpdate`] may set (the store refuses the others).
fn settable_task_status_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["claimed", "in_progress", "blocked", "review"]
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFinish {
    #[serde(default)]
    #[schemars(regex(pattern = TEXT_PATTERN))]
    pub summary: Option<String>,
    /// At most 1000; none blank.
    #[serde(default)]
    #[schemars(length(max = 1000), inner(regex(pattern = REQUIRED_TEXT_PATTERN)))]
    pub files: Vec<String>,
    /// Pipeline tasks: `pass` (the default) or `send_back`.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// What must change (required with `send_back`).
    #[serde(default)]
    #[schemars(regex(pattern = TEXT_PATTERN))]
    pub comments: Option<String>,
    /// The role of the stage to send back to; the previous stage when absent.
    #[serde(default)]
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub to_stage: Option<String>,
}

/// A person's approval or rejection of a task waiting for one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDecision {
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFailure {
    /// Not blank.
    #[schemars(regex(pattern = REQUIRED_TEXT_PATTERN))]
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCancel {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskAssign {
    pub agent: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// At most 100 paths or globs.
    #[schemars(length(max = 100), inner(regex(pattern = LEASE_PATH_PATTERN), length(max = 4096)))]
    pub paths: Vec<String>,
    #[serde(default)]
    pub mode: LeaseMode,
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The task the lease serves; defaults to the agent's current task.
    #[serde(default)]
    pub task: Option<TaskId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRelease {
    /// At least one.
    #[schemars(length(min = 1), inner(regex(pattern = LEASE_PATH_PATTERN), length(max = 4096)))]
    pub paths: Vec<String>,
    /// Admin only: release leases held by others.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// An agent name, `role:<name>` or `all`.
    #[schemars(length(min = 1))]
    pub to: String,
    /// Not blank.
    #[schemars(length(min = 1), regex(pattern = REQUIRED_TEXT_PATTERN))]
    pub body: String,
    /// Not blank; at most 200 bytes.
    #[serde(default)]
    #[schemars(regex(pattern = REQUIRED_TEXT_PATTERN), length(max = 200))]
    pub thread: Option<String>,
    #[serde(default)]
    pub kind: MessageKind,
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageAck {
    /// Message ids (`M-7`).
    #[schemars(inner(regex(pattern = "^M-[1-9][0-9]*$")))]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    /// One line; not blank.
    #[schemars(length(min = 1), regex(pattern = r"\S"))]
    pub title: String,
    #[serde(default)]
    pub kind: NoteKind,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    #[schemars(inner(regex(pattern = NAME_PATTERN)))]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 100), inner(regex(pattern = REQUIRED_TEXT_PATTERN)))]
    pub files: Vec<String>,
    /// `N-<n>` of the note this one replaces.
    #[serde(default)]
    #[schemars(regex(pattern = "^N-[1-9][0-9]{0,17}$"))]
    pub supersedes: Option<String>,
    #[serde(default)]
    pub task: Option<TaskId>,
}

/// Filters of an event query; every field narrows the result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct EventFilter {
    /// Only events with a sequence number above this.
    #[serde(default)]
    pub after: Option<i64>,
    /// Events by or about this agent.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub task: Option<TaskId>,
    /// An exact kind (`task.claimed`) or a prefix ending in a dot (`task.`).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Only events with a sequence number below this (paging back through history).
    #[serde(default)]
    pub before: Option<i64>,
    /// At most this many (default 1000); a limit below 1 or above 10000 is read as 1 or 10000.
    #[serde(default)]
    pub limit: Option<i64>,
    /// Newest first instead of oldest first.
    #[serde(default)]
    pub desc: bool,
}

impl EventFilter {
    /// Whether a live event passes the filter (for streams; `since`/`until`/`limit` aside).
    pub fn admits(&self, event: &Event) -> bool {
        if self.after.is_some_and(|after| event.seq <= after) {
            return false;
        }
        if let Some(agent) = &self.agent
            && event.agent.as_deref() != Some(agent.as_str())
            && event.actor != *agent
        {
            return false;
        }
        if self.task.is_some() && event.task != self.task {
            return false;
        }
        if let Some(kind) = &self.kind
            && !kind_matches(kind, event.kind())
        {
            return false;
        }
        true
    }
}

// ---- response envelopes ------------------------------------------------------------------------

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

/// A newly registered agent and its first token (shown once; stored hashed).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentCreated {
    pub agent: Agent,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TokenIssued {
    pub token: String,
}

/// `GET /api/agents/{name}/tokens`: an agent's tokens, by id (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentTokenList {
    pub agent: String,
    pub tokens: Vec<AgentToken>,
}

/// `DELETE /api/agents/{name}/tokens[/{id}]`: how many tokens were revoked.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TokensRevoked {
    pub agent: String,
    pub revoked: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /api/events` (admin): an observation the supervisor records about an agent it runs
/// (a tool call, a turn's usage, a restart). On the wire `{kind, agent, task, data}`; the kind
/// must be a known `agent.` kind and the data must fit it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NewEventWire", into = "NewEventWire")]
pub struct NewEvent {
    /// The agent the event is about.
    pub agent: String,
    pub task: Option<TaskId>,
    pub payload: EventPayload,
}

/// The wire form of [`NewEvent`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewEvent")]
pub struct NewEventWire {
    /// `agent.tool`, `agent.turn`, `agent.crashed`, ...
    pub kind: String,
    /// The agent the event is about.
    pub agent: String,
    #[serde(default)]
    pub task: Option<TaskId>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl TryFrom<NewEventWire> for NewEvent {
    type Error = crate::event::PayloadError;

    fn try_from(wire: NewEventWire) -> Result<Self, Self::Error> {
        Ok(NewEvent {
            payload: EventPayload::from_parts(&wire.kind, &wire.data)?,
            agent: wire.agent,
            task: wire.task,
        })
    }
}

impl JsonSchema for NewEvent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NewEvent".into()
    }

    /// One alternative per recordable kind, with that kind's data: a kind that is unknown, not
    /// an `agent.` kind, or whose data does not fit is refused.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let task = generator.subschema_for::<Option<TaskId>>();
        let alternatives: Vec<serde_json::Value> = crate::event::recordable_kind_schemas(generator)
            .into_iter()
            .map(|(kind, data)| {
                serde_json::json!({
                    "type": "object",
                    "properties": {
                        "kind": { "const": kind },
                        "agent": { "type": "string", "description": "The agent the event is about." },
                        "task": task,
                        "data": data,
                    },
                    "required": ["kind", "agent", "data"],
                    "additionalProperties": false,
                })
            })
            .collect();
        schemars::json_schema!({
            "description": "An observation about an agent: `{kind, agent, task, data}`.",
            "oneOf": alternatives,
        })
    }
}

impl From<NewEvent> for NewEventWire {
    fn from(new: NewEvent) -> Self {
        NewEventWire {
            kind: new.payload.kind().to_string(),
            data: new.payload.data(),
            agent: new.agent,
            task: new.task,
        }
    }
}

/// What a person asks the supervisor to do with a running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentAction {
    Pause,
    Resume,
    Stop,
    Restart,
}

named_enum!(AgentAction, "agent action", {
    Pause => "pause", Resume => "resume", Stop => "stop", Restart => "restart",
});

/// `POST /api/agents/{name}/control`: recorded as an `agent.control` event, which the supervisor
/// running the agent follows and carries out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentControl {
    pub action: AgentAction,
}

/// What a person answers a loop (`conclave loop --confirm`) that waits between iterations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmDecision {
    /// Run the next iteration (with the prompt of the answer, when it gives one).
    Continue,
    /// End the loop now.
    Stop,
}

named_enum!(ConfirmDecision, "confirmation decision", {
    Continue => "continue", Stop => "stop",
});

/// The longest summary a loop's confirmation request carries.
pub const MAX_CONFIRMATION_SUMMARY: usize = 2000;
/// The longest prompt a person's answer may put in place of the loop's prompt.
pub const MAX_CONFIRMATION_PROMPT: usize = 32_000;

/// `POST /api/agents/{name}/confirmation` (admin): a loop asks a person before its next
/// iteration; recorded as an `agent.confirm_requested` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationRequest {
    /// The iteration that runs once a person says continue.
    #[schemars(range(max = u32::MAX))]
    pub next_iteration: u32,
    /// How the loop stands (the last iteration, the check), for the person deciding.
    #[serde(default)]
    pub summary: String,
}

/// `POST /api/agents/{name}/confirm` (admin): a person's answer to a waiting loop, from the
/// terminal or the dashboard alike; recorded as an `agent.confirmed` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationAnswer {
    pub decision: ConfirmDecision,
    /// With `continue`: the prompt for this iteration and the next ones (an edit); none keeps
    /// the prompt as it is. A loop that stops runs no prompt: with `stop` it is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32_000), regex(pattern = REQUIRED_TEXT_PATTERN))]
    pub prompt: Option<String>,
}

/// A loop's latest request for a person's confirmation, and the answer once there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Confirmation {
    pub agent: String,
    /// The sequence number of the request's event.
    pub seq: i64,
    pub next_iteration: u32,
    pub summary: String,
    pub requested_at: DateTime<Utc>,
    /// None while it waits for a person.
    pub decision: Option<ConfirmDecision>,
    /// The prompt the answer put in place, if it edited it.
    pub prompt: Option<String>,
    /// Who answered.
    pub decided_by: Option<String>,
}

/// `GET /api/confirmations`: per agent that ever asked, its latest request (waiting or answered).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmationList {
    pub confirmations: Vec<Confirmation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The task to claim; none takes the best ready task that fits.
    #[serde(default)]
    pub id: Option<TaskId>,
}

/// `GET /api/tasks`: one page of tasks in id order (`GET /api/status` has the board: open work,
/// the latest finished tasks and the counts).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// More tasks follow this page: ask again with `after` set to this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<TaskId>,
}

/// How many tasks are in each status, over all history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCounts {
    pub pending: u64,
    pub ready: u64,
    pub claimed: u64,
    pub in_progress: u64,
    pub review: u64,
    pub blocked: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl TaskCounts {
    /// The counts of `(status, count)` pairs (statuses not listed count zero).
    pub fn from_pairs(pairs: &[(TaskStatus, usize)]) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for (status, count) in pairs {
            *counts.slot(*status) += *count as u64;
        }
        counts
    }

    /// How many tasks are in `status`.
    pub fn get(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Pending => self.pending,
            TaskStatus::Ready => self.ready,
            TaskStatus::Claimed => self.claimed,
            TaskStatus::InProgress => self.in_progress,
            TaskStatus::Review => self.review,
            TaskStatus::Blocked => self.blocked,
            TaskStatus::Done => self.done,
            TaskStatus::Failed => self.failed,
            TaskStatus::Cancelled => self.cancelled,
        }
    }

    /// Every task, whatever its status.
    pub fn total(&self) -> u64 {
        TaskStatus::ALL.iter().map(|status| self.get(*status)).sum()
    }

    fn slot(&mut self, status: TaskStatus) -> &mut u64 {
        match status {
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Ready => &mut self.ready,
            TaskStatus::Claimed => &mut self.claimed,
            TaskStatus::InProgress => &mut self.in_progress,
            TaskStatus::Review => &mut self.review,
            TaskStatus::Blocked => &mut self.blocked,
            TaskStatus::Done => &mut self.done,
            TaskStatus::Failed => &mut self.failed,
            TaskStatus::Cancelled => &mut self.cancelled,
        }
    }
}

/// A task's history, oldest first: each stage's verdict and each person's decision.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TaskStepList {
    pub steps: Vec<TaskStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LeaseList {
    pub leases: Vec<Lease>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReleasedLeases {
    pub released: Vec<Lease>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageList {
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AckResult {
    pub acked: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NoteList {
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventList {
    pub events: Vec<Event>,
}

/// How many finished tasks (the most recently finished) `GET /api/status` lists.
pub const STATUS_FINISHED_TASKS: i64 = 100;

/// `GET /api/status`: the whole team at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StatusReport {
    pub agents: Vec<Agent>,
    /// Every unfinished task and the most recently finished ones (at most
    /// [`STATUS_FINISHED_TASKS`]), in id order: what is being worked on, not all history.
    pub tasks: Vec<Task>,
    /// How many tasks are in each status, over all history.
    #[serde(default)]
    pub task_counts: TaskCounts,
    pub leases: Vec<Lease>,
    /// The calling agent, when an agent asks.
    pub me: Option<String>,
    /// The calling agent's unacknowledged messages.
    pub unread: Option<i64>,
    pub last_seq: i64,
    /// `agent.alert` events recorded so far (failures a person should see).
    #[serde(default)]
    pub alerts: i64,
    /// Tasks waiting for a person's decision (approve or reject).
    #[serde(default)]
    pub approvals_waiting: i64,
    /// Loops waiting for a person's confirmation of their next iteration (`conclave loop
    /// --confirm`).
    #[serde(default)]
    pub confirmations_waiting: i64,
}

/// `task.` matches every `task.*` kind; anything else must match exactly.
pub fn kind_matches(filter: &str, kind: &str) -> bool {
    if filter.ends_with('.') {
        kind.starts_with(filter)
    } else {
        kind == filter
    }
}

/// `90` → `1m30s`; for people reading lease expiries.
pub fn format_duration_secs(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_parse_in_every_spelling() {
        for (text, expected) in [("T-3", Some(3)), ("t-12", Some(12)), ("7", Some(7))] {
            assert_eq!(text.parse::<TaskId>().ok().map(|t| t.0), expected);
        }
        for bad in ["", "T-", "T-0", "X-1", "T--1", "1.5"] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad} should not parse");
        }
        assert_eq!(TaskId(4).to_string(), "T-4");
    }

    #[test]
    fn message_and_note_ids_parse_with_their_own_letter_only() {
        assert_eq!(parse_short_id("M-7", 'M', "message").ok(), Some(7));
        assert_eq!(parse_short_id(" n-3 ", 'N', "note").ok(), Some(3));
        assert_eq!(parse_short_id("5", 'N', "note").ok(), Some(5));
        let error = parse_short_id("N-3", 'M', "message").expect_err("wrong letter");
        assert!(error.to_string().contains("message id"), "{error}");
        assert!(parse_short_id("M-M-3", 'M', "message").is_err());
    }

    #[test]
    fn task_id_json_round_trips_as_text() {
        let json = serde_json::to_string(&TaskId(9)).expect("serialize");
        assert_eq!(json, "\"T-9\"");
        assert_eq!(serde_json::from_str::<TaskId>("9").expect("number").0, 9);
        assert!(serde_json::from_str::<TaskId>("\"nope\"").is_err());
    }

    #[test]
    fn enums_name_the_accepted_values_on_error() {
        let error = "finished".parse::<TaskStatus>().expect_err("unknown");
        assert!(error.to_string().contains("in_progress"), "{error}");
        assert_eq!(
            "review".parse::<TaskStatus>().ok(),
            Some(TaskStatus::Review)
        );
    }

    #[test]
    fn a_task_fits_by_role_capabilities_and_reservation() {
        let now = Utc::now();
        let task = Task {
            id: TaskId(1),
            title: "t".into(),
            body: String::new(),
            status: TaskStatus::Ready,
            priority: 0,
            role: Some("coder".into()),
            caps: vec!["rust".into()],
            depends_on: Vec::new(),
            assignee: None,
            claim_expires_at: None,
            attempts: 0,
            result: None,
            blocked_reason: None,
            files: Vec::new(),
            parent: None,
            created_by: "admin".into(),
            created_at: now,
            updated_at: now,
            pipeline: None,
            approve: false,
            awaiting_approval: false,
            cost_usd: 0.0,
            dependency_changes: Vec::new(),
        };
        let rust = vec!["rust".to_string()];
        assert!(task.fits("alice", Some("coder"), &rust));
        assert!(!task.fits("alice", Some("reviewer"), &rust));
        assert!(!task.fits("alice", Some("coder"), &[]));
        let reserved = Task {
            assignee: Some("bob".into()),
            ..task
        };
        assert!(
            !reserved.fits("alice", Some("coder"), &rust),
            "reserved for bob"
        );
        assert!(reserved.fits("bob", Some("coder"), &rust));
    }

    #[test]
    fn kind_filters_match_prefixes_ending_in_a_dot() {
        assert!(kind_matches("task.", "task.claimed"));
        assert!(kind_matches("task.claimed", "task.claimed"));
        assert!(!kind_matches("task", "task.claimed"));
    }
}
