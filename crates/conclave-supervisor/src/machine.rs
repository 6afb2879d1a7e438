//! The team as a state machine: every agent's state, and what the supervisor does in answer to
//! what happens, with no I/O and no clock of its own.
//!
//! [`Team::step`] takes one [`Input`] (a stdout line, a process exit, a server event, the result
//! of reading the team, a tick of the clock, a shutdown) and the current time, changes the state,
//! and returns the [`Effect`]s to carry out (start a process, write to its stdin, end it, report
//! to the server, save state). The driver in [`crate::team`] carries them out and feeds back what
//! they produce (a started process's pid, the team's tasks and unread messages); the unit tests
//! below drive it with scripted inputs and made-up instants.
//!
//! Per agent, the [`Phase`]s are:
//!
//! ```text
//! Waiting ──start──▶ Live{busy} ◀──wake──▶ Live{idle} ──idle too long──▶ Hibernated
//!    ▲                 │ exit unasked                                       │ wake
//!    │                 ▼                                                    ▼
//!    │           RestartPending{at} ──due──▶ Live       (resumes the session: Live)
//!    │                 │ too many in the window
//!    │                 ▼
//!    └─ resume ─── Crashed / Stopped ◀── stop asked, budget spent
//! ```
//!
//! A process the supervisor ends itself carries a [`StopReason`] until it exits; a person's stop
//! and the team's shutdown win over the supervisor's own reasons (recycle, budget, hibernate).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use conclave_core::event::{
    AgentAlert, AgentBudgetExceeded, AgentCrashed, AgentExit, AgentHandoffRequested, AgentRecycled,
    AgentRestarted, AgentStarted, AgentText, AgentTool, AgentTurn, AgentWoken, Topic,
};
use conclave_core::model::{
    Agent, AgentAction, AgentStatus, AgentUpdate, Event, EventPayload, MessageKind, QueueState,
    QueueView, Task, TaskId, TaskStatus,
};
use conclave_core::store::is_held;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::coordination::{CoordinationMeter, FixedCosts, is_conclave_tool};
use crate::plan::{AgentPlan, PROTOCOL};
use crate::pricing;
use crate::stream::{Content, MAX_TEXT, ModelCall, StreamUpdate, ToolResult, truncate};
use crate::wake::{self, Quoted, Start};

/// Time between two agents' starts (many clients starting at once race on their config file).
pub const STAGGER: Duration = Duration::from_secs(1);
/// Quiet ticks in a row before a team with nothing to do is declared finished (or stalled).
pub const QUIET_TICKS_TO_FINISH: u32 = 4;
/// Longest wait between crash restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Time an idle process gets to exit after its stdin closes before it is signalled.
pub const IDLE_GRACE: Duration = Duration::from_secs(5);
/// The same when the whole team stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The same for a process interrupted in the middle of a turn (its budget ran out): signalled
/// at once, since it would not end its turn by itself.
pub const INTERRUPT_GRACE: Duration = Duration::ZERO;

/// The fix for an authentication failure, said in its alert and in the outcome.
pub const LOGIN_FIX: &str = "run `claude` once and /login, or set ANTHROPIC_API_KEY";
/// Shortest time between two reports of an agent's cost during a turn.
pub const COST_REPORT_EVERY: Duration = Duration::from_secs(2);
/// Stderr lines quoted in an alert.
pub const STDERR_QUOTED: usize = 5;

/// How a run of the team ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every task is done or cancelled.
    Finished,
    /// The agents are idle or gone and work is left: `reason` names the tasks left and why
    /// none can proceed.
    Stalled { reason: String },
    /// No agent could run at all (authentication, a missing binary, refused flags).
    Failed { reason: String },
    /// A person stopped the team (`conclave down`, a signal).
    Stopped,
}

impl Outcome {
    /// The word `conclave up` prints and documents.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Stalled { .. } => "stalled",
            Outcome::Failed { .. } => "failed",
            Outcome::Stopped => "stopped",
        }
    }
}

/// Why the supervisor ended a process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Recycle,
    Hibernate,
    Budget,
    Stop,
    Restart,
    Shutdown,
}

impl StopReason {
    /// A person's stop and the team's shutdown: nothing the supervisor decides itself replaces
    /// them.
    fn is_final(self) -> bool {
        matches!(self, StopReason::Stop | StopReason::Shutdown)
    }
}

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Not started yet (starts are staggered).
    Waiting,
    /// A process runs; `busy` while a turn is in progress.
    Live { busy: bool },
    /// Its process was ended while idle; a wake resumes its session.
    Hibernated,
    /// Crashed; starts again at `at`.
    RestartPending { at: Instant },
    /// Stopped (a person asked, or its budget ran out).
    Stopped,
    /// Crashed too often.
    Crashed,
}

/// Kept in `.conclave/agents/NAME/supervisor.json` so that a restarted supervisor counts cost
/// right when it resumes a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub session_id: Option<String>,
    pub session_cost: f64,
}

/// What the team is doing, as read from the server when an agent may be woken.
#[derive(Debug, Clone, Default)]
pub struct TeamView {
    pub tasks: Vec<Task>,
    /// Unacknowledged message ids per recipient.
    pub unread: HashMap<String, HashSet<String>>,
    /// The merge queue, read when a task is in review (to tell a paused queue, which waits for
    /// a person, from one that is landing).
    pub queue: Option<QueueView>,
}

/// What the state machine reacts to.
#[derive(Debug, Clone)]
pub enum Input {
    /// The clock: staggered starts, restarts due, hibernation, finishing.
    Tick,
    /// The process of [`Effect::Spawn`] started.
    Spawned {
        agent: usize,
        generation: u64,
        pid: u32,
    },
    /// The process of [`Effect::Spawn`] could not start.
    SpawnFailed {
        agent: usize,
        generation: u64,
        error: String,
    },
    /// A stdout line of a process.
    Line {
        agent: usize,
        generation: u64,
        update: StreamUpdate,
    },
    /// A process exited; `how` says how ("exit code 1", "signal 9"); `stderr` is the end of
    /// what it wrote on stderr (its last lines, maybe none).
    Exited {
        agent: usize,
        generation: u64,
        how: String,
        stderr: Vec<String>,
    },
    /// An event of the server's log.
    Event(Event),
    /// The answer to [`Effect::ReadTeam`].
    TeamRead(TeamView),
    /// [`Effect::ReadTeam`] failed.
    TeamReadFailed,
    /// The team stops: end every process.
    Shutdown,
    /// The processes had their time to end after [`Input::Shutdown`].
    ShutdownDeadline,
    /// One of the team's loops has spent `cost_usd` in all (after an iteration): it counts
    /// against `[defaults] team_budget_usd` like an agent's turns.
    LoopSpent { name: String, cost_usd: f64 },
}

/// What the driver does for the state machine.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Start agent `agent`'s process (resuming `resume` if given) and write `first_message`
    /// to it; answer with [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn {
        agent: usize,
        generation: u64,
        resume: Option<String>,
        first_message: String,
    },
    /// Write a user message to the agent's process.
    Send { agent: usize, text: String },
    /// End the agent's process: stdin closed, then signals after `grace`.
    Stop { agent: usize, grace: Duration },
    /// Kill the agent's process at once.
    Kill { agent: usize },
    /// `PATCH /api/agents/NAME`.
    Patch { agent: usize, update: AgentUpdate },
    /// `POST /api/events`: this event, about the agent.
    Record { agent: usize, payload: EventPayload },
    /// The agent's process died unasked: release what it held, and record `agent.crashed` with
    /// `reason` and what was released.
    ReleaseAfterCrash { agent: usize, reason: String },
    /// Save the agent's [`SavedState`].
    Save { agent: usize, state: SavedState },
    /// Read the team's tasks (and unread messages when `messages`); answer with
    /// [`Input::TeamRead`] or [`Input::TeamReadFailed`].
    ReadTeam { messages: bool },
    /// `POST /api/events`: this event, about the loop (or other agent) named.
    RecordAbout { name: String, payload: EventPayload },
    /// End the team's loops (`mode = "loop"`): the team's budget is spent. A running iteration
    /// is interrupted and recorded.
    StopLoops,
    /// Tell the person running the team.
    Say(String),
    /// The run is over: the team finished, stalled or failed. The driver ends every process.
    Ended(Outcome),
}

/// One agent's state.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub plan: AgentPlan,
    pub phase: Phase,
    /// Why its process is being ended, until it exits.
    pub stopping: Option<StopReason>,
    /// Whether a process runs (started, not yet exited).
    pub running: bool,
    /// Counts starts; reports of an older process are ignored.
    pub generation: u64,
    pub paused: bool,
    pub session_id: Option<String>,
    pub context_tokens: Option<i64>,
    pub context_window: Option<i64>,
    /// Cost of sessions other than the current one.
    pub cost_base: f64,
    /// The latest `total_cost_usd` of the current session.
    pub session_cost: f64,
    /// `session_cost` when the current process started (to tell whether a resumed process
    /// carried the session's total on or started from zero).
    cost_at_start: f64,
    first_result_seen: bool,
    pub restarts: i64,
    restart_times: VecDeque<Instant>,
    failures_in_a_row: u32,
    idle_since: Instant,
    pub turns_done: u64,
    asked_for_handoff: bool,
    /// How the next process starts.
    pub next_start: Start,
    /// The session the current process resumed.
    resumed: Option<String>,
    /// A message to deliver as the first turn of the next process (a wake of a hibernated
    /// agent).
    wake_on_start: Option<String>,
    pending_tools: HashMap<String, (String, String)>,
    pending_messages: Vec<Quoted>,
    offered: HashSet<TaskId>,
    /// What last went wrong with it, in words (its line in the outcome).
    pub trouble: Option<String>,
    /// Whether a turn of it ever ended without an error (it could run at all).
    pub worked: bool,
    /// Whether it failed in a way that no retry mends (a refused login, a client that cannot
    /// start or refuses its flags).
    pub could_not_run: bool,
    /// Whether the current process printed a stream line.
    lines_seen: bool,
    /// Whether the current turn's failed model calls were alerted already (one alert per turn).
    retry_alerted: bool,
    /// The model of the current session (`system/init`).
    model: Option<String>,
    /// The current turn's model calls, priced as they arrive (replaced by the client's total
    /// at the turn's end).
    pub turn_estimate: f64,
    /// The id and price of the latest call counted in `turn_estimate`.
    last_call: Option<(String, f64)>,
    /// Whether "priced at turn end" was said for its model.
    unpriced_said: bool,
    /// When the cost was last reported during a turn.
    cost_reported_at: Option<Instant>,
    /// What coordination costs it in context (issue 16).
    pub meter: CoordinationMeter,
}

impl AgentState {
    /// A new agent, never run.
    pub fn new(plan: AgentPlan, now: Instant) -> AgentState {
        AgentState {
            plan,
            phase: Phase::Waiting,
            stopping: None,
            running: false,
            generation: 0,
            paused: false,
            session_id: None,
            context_tokens: None,
            context_window: None,
            cost_base: 0.0,
            session_cost: 0.0,
            cost_at_start: 0.0,
            first_result_seen: false,
            restarts: 0,
            restart_times: VecDeque::new(),
            failures_in_a_row: 0,
            idle_since: now,
            turns_done: 0,
            asked_for_handoff: false,
            next_start: Start::Fresh,
            resumed: None,
            wake_on_start: None,
            pending_tools: HashMap::new(),
            pending_messages: Vec::new(),
            offered: HashSet::new(),
            trouble: None,
            worked: false,
            could_not_run: false,
            lines_seen: false,
            retry_alerted: false,
            model: None,
            turn_estimate: 0.0,
            last_call: None,
            unpriced_said: false,
            cost_reported_at: None,
            meter: CoordinationMeter::new(FixedCosts {
                tool_definition_chars: 0,
                protocol_chars: PROTOCOL.chars().count(),
            }),
        }
    }

    /// What it has spent, counting the current turn's calls as priced so far.
    pub fn live_cost(&self) -> f64 {
        self.cost() + self.turn_estimate
    }

    /// One line saying where the agent is, for the outcome.
    pub fn summary(&self) -> String {
        let state = match self.phase {
            Phase::Waiting => "never started".to_string(),
            Phase::Live { busy: true } => "working".to_string(),
            Phase::Live { busy: false } if self.paused => "paused".to_string(),
            Phase::Live { busy: false } => format!("idle after {} turn(s)", self.turns_done),
            Phase::Hibernated => "hibernated (idle)".to_string(),
            Phase::RestartPending { .. } => "restarting".to_string(),
            Phase::Stopped => "stopped".to_string(),
            Phase::Crashed => "crashed".to_string(),
        };
        let trouble = self
            .trouble
            .as_deref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        format!(
            "{}: {state}{trouble} (spent ${:.4})",
            self.plan.name,
            self.cost()
        )
    }

    /// Whether it can no longer work without a person (crashed, stopped).
    fn is_gone(&self) -> bool {
        matches!(self.phase, Phase::Stopped | Phase::Crashed)
    }

    /// An agent as the server knows it (`record`) and as an earlier supervisor left it
    /// (`saved`): its session is resumed, and its cost goes on from what the server counted.
    /// An agent stopped because its budget ran out stays stopped.
    pub fn restore(plan: AgentPlan, record: &Agent, saved: SavedState, now: Instant) -> AgentState {
        let session_cost = if saved.session_id.is_some() && saved.session_id == record.session_id {
            saved.session_cost
        } else {
            0.0
        };
        let budget_spent = plan
            .settings
            .budget_usd
            .is_some_and(|budget| record.cost_usd >= budget);
        let mut agent = AgentState::new(plan, now);
        if budget_spent && record.status == AgentStatus::Stopped {
            agent.phase = Phase::Stopped;
        }
        agent.next_start = if record.session_id.is_some() {
            Start::Resumed
        } else {
            Start::Fresh
        };
        agent.session_id = record.session_id.clone();
        agent.context_tokens = record.context_tokens;
        agent.context_window = record.context_window;
        agent.cost_base = (record.cost_usd - session_cost).max(0.0);
        agent.session_cost = session_cost;
        agent.cost_at_start = session_cost;
        agent.restarts = record.restarts;
        agent.meter = CoordinationMeter::resume(
            FixedCosts {
                tool_definition_chars: 0,
                protocol_chars: PROTOCOL.chars().count(),
            },
            record.coordination.clone(),
        );
        agent
    }

    /// Sets the size of the Conclave tool definitions its model calls carry (known to the
    /// caller, which has the server's tool list).
    pub fn set_tool_definition_chars(&mut self, chars: usize) {
        self.meter.set_tool_definition_chars(chars);
    }

    /// What the agent has spent in all.
    pub fn cost(&self) -> f64 {
        self.cost_base + self.session_cost
    }

    fn is_live_idle(&self) -> bool {
        self.phase == Phase::Live { busy: false } && self.stopping.is_none()
    }

    fn is_busy(&self) -> bool {
        self.phase == Phase::Live { busy: true }
    }

    /// Whether a wake may reach it: not paused, and idle after a turn, or hibernated.
    fn is_wakeable(&self) -> bool {
        !self.paused
            && ((self.is_live_idle() && self.turns_done > 0) || self.phase == Phase::Hibernated)
    }

    /// Takes the session's running total `total` as reported by its process.
    fn account(&mut self, total: f64) {
        if !self.first_result_seen && total + 1e-9 < self.cost_at_start {
            // This process counts from zero: what the session cost before is history.
            self.cost_base += self.cost_at_start;
        }
        self.first_result_seen = true;
        self.session_cost = total;
    }

    fn over_budget(&self) -> Option<f64> {
        self.plan
            .settings
            .budget_usd
            .filter(|budget| self.cost() >= *budget)
    }

    fn saved(&self) -> SavedState {
        SavedState {
            session_id: self.session_id.clone(),
            session_cost: self.session_cost,
        }
    }
}

/// The whole team's state.
#[derive(Debug)]
pub struct Team {
    pub agents: Vec<AgentState>,
    /// Keep running when the team has nothing left to do.
    stay: bool,
    /// Agents of the team run on other hosts too (this supervisor runs one host's share): a
    /// task one of them holds is being worked on, so it keeps this share waiting, not stalled.
    shares_the_team: bool,
    /// Something happened that may give an idle agent something to do.
    dirty: bool,
    quiet_ticks: u32,
    next_start_at: Option<Instant>,
    shutting_down: bool,
    /// A read of the team was asked to decide the outcome of a quiet team.
    deciding: bool,
    /// The review tasks last said to be waiting for a person (said again only when they change).
    waiting_for: Vec<TaskId>,
    /// The run is over (an outcome was given).
    ended: bool,
    /// `[defaults] team_budget_usd` was reached: every agent was stopped.
    team_budget_spent: bool,
    /// The team's loops (`mode = "loop"`), which the driver runs beside the machine.
    pub loops: Loops,
    out: Vec<Effect>,
}

/// What the machine knows of the team's loops (`mode = "loop"` agents): the driver runs them
/// (each a `conclave loop` of its own); the team is not quiet while one runs, and a loop that
/// could not run at all counts like an agent that could not.
#[derive(Debug, Clone, Default)]
pub struct Loops {
    pub running: usize,
    pub ended: Vec<LoopEnded>,
    /// What each loop has spent in all, as it last reported (its iterations' costs).
    pub spent: std::collections::BTreeMap<String, f64>,
    /// `[defaults] team_budget_usd`, for a team whose agents are all loops (the agents' own
    /// plans carry it otherwise).
    pub team_budget_usd: Option<f64>,
}

/// Who pushed the team's spend over its budget.
#[derive(Debug, Clone, Copy)]
enum Spender<'a> {
    /// The agent at this index (a turn's cost).
    Agent(usize),
    /// The loop of this name (an iteration's cost).
    Loop(&'a str),
}

/// How one of the team's loops ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopEnded {
    pub name: String,
    /// Why no iteration could run, when none could.
    pub could_not_run: Option<String>,
    /// Its line in the outcome.
    pub summary: String,
}

/// What a quiet team with tasks in review waits for, in words: a person's approval, a person to
/// resume the paused merge queue, or the merge queue landing them. Neither is a stall.
fn waiting_text(in_review: &[&Task], queue: Option<&QueueView>) -> String {
    let queued = |task: &Task| {
        queue.is_some_and(|queue| {
            queue.entries.iter().any(|entry| {
                entry.task == task.id
                    && matches!(entry.state, QueueState::Queued | QueueState::Merging)
            })
        })
    };
    let paused = queue.is_some_and(|queue| queue.paused);
    let named = |tasks: Vec<&&Task>| -> String {
        let names: Vec<String> = tasks
            .iter()
            .map(|task| format!("{} {:?}", task.id, task.title))
            .collect();
        names.join(", ")
    };
    let (in_queue, outside): (Vec<&&Task>, Vec<&&Task>) =
        in_review.iter().partition(|task| queued(task));
    let (approvals, reviews): (Vec<&&Task>, Vec<&&Task>) =
        outside.into_iter().partition(|task| task.awaiting_approval);
    let mut person = Vec::new();
    if !approvals.is_empty() {
        person.push(format!(
            "{} waiting for approval (`conclave task approve|reject ID`, or the dashboard)",
            named(approvals)
        ));
    }
    if !reviews.is_empty() {
        person.push(format!(
            "{} in review (approve or reopen it)",
            named(reviews)
        ));
    }
    if paused && !in_queue.is_empty() {
        person.push(format!(
            "{} in the paused merge queue (`conclave queue resume`)",
            named(in_queue.clone())
        ));
    }
    let mut text = if person.is_empty() {
        String::new()
    } else {
        format!("waiting for a person: {}", person.join("; "))
    };
    if !paused && !in_queue.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!(
            "waiting for the merge queue to land {}",
            named(in_queue)
        ));
    }
    text.push_str(" (Ctrl-C or `conclave down` stops the team)");
    text
}

/// The phase of an agent in a word.
fn phase_word(agent: &AgentState) -> &'static str {
    match agent.phase {
        Phase::Waiting => "never started",
        Phase::Live { busy: true } => "working",
        Phase::Live { busy: false } => "idle",
        Phase::Hibernated => "hibernated",
        Phase::RestartPending { .. } => "restarting",
        Phase::Stopped => "stopped",
        Phase::Crashed => "crashed",
    }
}

/// Stderr lines quoted on one line, the last [`STDERR_QUOTED`] of them.
fn quote(stderr: &[String]) -> String {
    let lines: Vec<&str> = stderr
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .collect();
    let from = lines.len().saturating_sub(STDERR_QUOTED);
    format!("\"{}\"", truncate(&lines[from..].join(" | "), MAX_TEXT))
}

/// How a process ended, with nothing more to say.
fn exit(how: &str) -> AgentExit {
    AgentExit {
        exit: how.to_string(),
        stopped: false,
        restart: false,
    }
}

fn status_update(status: AgentStatus) -> AgentUpdate {
    AgentUpdate {
        status: Some(status),
        ..AgentUpdate::default()
    }
}

impl Team {
    pub fn new(agents: Vec<AgentState>, stay: bool) -> Team {
        Team {
            agents,
            stay,
            shares_the_team: false,
            dirty: false,
            quiet_ticks: 0,
            next_start_at: None,
            shutting_down: false,
            deciding: false,
            waiting_for: Vec::new(),
            ended: false,
            team_budget_spent: false,
            loops: Loops::default(),
            out: Vec::new(),
        }
    }

    /// The same, for one host's share of a team whose other agents other supervisors run.
    pub fn sharing(mut self) -> Team {
        self.shares_the_team = true;
        self
    }

    /// Whether any agent's process still runs.
    pub fn any_running(&self) -> bool {
        self.agents.iter().any(|agent| agent.running)
    }

    /// Takes one input at time `now`; returns what to do, in order.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        // A failed read is retried on the next input or tick, not at once.
        let read_failed = matches!(input, Input::TeamReadFailed);
        match input {
            Input::Tick => self.tick(now),
            Input::Spawned {
                agent,
                generation,
                pid,
            } => {
                if self.current(agent, generation) {
                    self.on_spawned(agent, pid);
                }
            }
            Input::SpawnFailed {
                agent,
                generation,
                error,
            } => {
                if self.current(agent, generation) {
                    self.on_spawn_failed(agent, &error);
                }
            }
            Input::Line {
                agent,
                generation,
                update,
            } => {
                if self.current(agent, generation) {
                    self.on_line(agent, update, now);
                    self.check_team_budget(Spender::Agent(agent));
                }
            }
            Input::Exited {
                agent,
                generation,
                how,
                stderr,
            } => {
                if self.current(agent, generation) {
                    self.on_exit(agent, &how, &stderr, now);
                }
            }
            Input::Event(event) => self.on_event(&event),
            Input::TeamRead(view) => {
                self.wake(&view);
                if std::mem::take(&mut self.deciding) {
                    self.decide(&view);
                }
            }
            Input::TeamReadFailed => {
                self.deciding = false;
                self.dirty = true;
            }
            Input::Shutdown => self.shutdown(),
            Input::ShutdownDeadline => self.shutdown_deadline(),
            Input::LoopSpent { name, cost_usd } => {
                self.loops.spent.insert(name.clone(), cost_usd);
                self.check_team_budget(Spender::Loop(&name));
            }
        }
        self.start_due(now);
        if !read_failed {
            self.reconcile();
        }
        std::mem::take(&mut self.out)
    }

    fn current(&self, agent: usize, generation: u64) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|state| state.generation == generation)
    }

    fn say(&mut self, text: String) {
        self.out.push(Effect::Say(text));
    }

    fn patch(&mut self, agent: usize, update: AgentUpdate) {
        self.out.push(Effect::Patch { agent, update });
    }

    fn record(&mut self, agent: usize, payload: EventPayload) {
        self.out.push(Effect::Record { agent, payload });
    }

    /// Records an `agent.alert` and says it in the terminal at once.
    fn alert(&mut self, agent: usize, cause: &str, message: String) {
        self.say(format!("ALERT ({cause}) {message}"));
        let alert = AgentAlert {
            cause: cause.to_string(),
            message,
        };
        self.record(agent, EventPayload::AgentAlert(alert));
    }

    /// Ends the run with `outcome` (once).
    fn end(&mut self, outcome: Outcome) {
        if !self.ended {
            self.ended = true;
            self.out.push(Effect::Ended(outcome));
        }
    }

    fn save(&mut self, agent: usize) {
        let state = self.agents[agent].saved();
        self.out.push(Effect::Save { agent, state });
    }

    // ---- starting ---------------------------------------------------------------------------

    /// Staggered first starts (none once the team is stopping: `down` during the stagger must
    /// not start the rest of the team).
    fn start_due(&mut self, now: Instant) {
        if self.shutting_down || self.next_start_at.is_some_and(|at| now < at) {
            return;
        }
        if let Some(index) = self.agents.iter().position(|a| a.phase == Phase::Waiting) {
            self.start(index);
            self.next_start_at = Some(now + STAGGER);
        }
    }

    /// Starts agent `index`'s process: fresh or resuming its session, per `next_start`.
    fn start(&mut self, index: usize) {
        if self.shutting_down {
            return;
        }
        let agent = &mut self.agents[index];
        let resume = match agent.next_start {
            Start::Fresh | Start::Recycled => None,
            Start::Resumed | Start::AfterCrash => agent.session_id.clone(),
        };
        agent.generation += 1;
        let first_message = agent.wake_on_start.take().unwrap_or_else(|| {
            wake::first_message(
                &agent.plan.name,
                agent.plan.role.as_deref(),
                agent.next_start,
            )
        });
        agent.phase = Phase::Live { busy: true };
        agent.stopping = None;
        agent.asked_for_handoff = false;
        agent.first_result_seen = false;
        agent.lines_seen = false;
        agent.retry_alerted = false;
        agent.turn_estimate = 0.0;
        agent.last_call = None;
        agent.cost_at_start = agent.session_cost;
        agent.pending_tools.clear();
        if resume.is_none() {
            agent.meter.new_session();
            // A new session: its cost starts from zero.
            agent.cost_base += agent.session_cost;
            agent.session_cost = 0.0;
            agent.cost_at_start = 0.0;
            agent.context_tokens = None;
        }
        // After a fresh session's reset: the first message is in its context.
        agent.meter.injected(first_message.chars().count());
        agent.resumed = resume.clone();
        let effect = Effect::Spawn {
            agent: index,
            generation: agent.generation,
            resume,
            first_message,
        };
        self.out.push(effect);
    }

    fn on_spawned(&mut self, index: usize, pid: u32) {
        let agent = &mut self.agents[index];
        agent.running = true;
        let resume = agent.resumed.clone();
        let name = agent.plan.name.clone();
        let update = AgentUpdate {
            status: Some(AgentStatus::Starting),
            pid: Some(i64::from(pid)),
            restarts: Some(agent.restarts),
            ..AgentUpdate::default()
        };
        self.say(format!(
            "started {name} (pid {pid}{})",
            resume
                .as_deref()
                .map(|s| format!(", resuming session {s}"))
                .unwrap_or_default()
        ));
        self.patch(index, update);
        let started = AgentStarted {
            pid: i64::from(pid),
            resume,
        };
        self.record(index, EventPayload::AgentStarted(started));
    }

    // ---- what the processes say -------------------------------------------------------------

    fn on_line(&mut self, index: usize, update: StreamUpdate, now: Instant) {
        self.agents[index].lines_seen = true;
        match update {
            StreamUpdate::Init { session_id, model } => {
                let agent = &mut self.agents[index];
                if model.is_some() {
                    agent.model = model;
                }
                if session_id.is_some() && session_id != agent.session_id {
                    agent.session_id = session_id.clone();
                    self.save(index);
                }
                let update = AgentUpdate {
                    status: Some(AgentStatus::Working),
                    session_id,
                    ..AgentUpdate::default()
                };
                self.patch(index, update);
            }
            StreamUpdate::Assistant {
                context_tokens,
                content,
                call,
            } => {
                if let Some(call) = call {
                    self.agents[index]
                        .meter
                        .model_call(call.id.as_deref(), &call.usage);
                    self.on_model_call(index, call, now);
                }
                if context_tokens.is_some() {
                    self.agents[index].context_tokens = context_tokens;
                }
                for block in content {
                    match block {
                        Content::Tool(tool) => {
                            if is_conclave_tool(&tool.name) {
                                self.agents[index].meter.conclave_tool(tool.chars);
                            }
                            self.agents[index]
                                .pending_tools
                                .insert(tool.id, (tool.name, tool.input));
                        }
                        Content::Text(text) => {
                            let text = truncate(&text, MAX_TEXT);
                            self.record(index, EventPayload::AgentText(AgentText { text }));
                        }
                    }
                }
                if let Some(tokens) = context_tokens {
                    let update = AgentUpdate {
                        context_tokens: Some(tokens),
                        ..AgentUpdate::default()
                    };
                    self.patch(index, update);
                }
            }
            StreamUpdate::ToolResults(results) => {
                for ToolResult {
                    id,
                    bytes,
                    is_error,
                    error,
                } in results
                {
                    let Some((tool, input)) = self.agents[index].pending_tools.remove(&id) else {
                        continue;
                    };
                    if is_conclave_tool(&tool) {
                        self.agents[index].meter.conclave_tool(bytes);
                    }
                    // A failed tool call is part of the work (the model reads the error and
                    // goes on): marked failed with its error, not alerted.
                    let used = AgentTool {
                        tool,
                        input: Value::String(input),
                        result_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                        is_error,
                        error,
                    };
                    self.record(index, EventPayload::AgentTool(used));
                }
            }
            StreamUpdate::Cost { total_usd } => self.on_cost_in_turn(index, total_usd),
            StreamUpdate::Result {
                cost_usd,
                context_window,
                is_error,
                session_id,
                text,
                output_tokens,
                ..
            } => {
                self.agents[index].meter.turn_result(output_tokens);
                if is_error {
                    self.on_error_result(index, text.as_deref());
                } else {
                    self.agents[index].worked = true;
                }
                self.on_turn_end(index, cost_usd, context_window, is_error, session_id, now);
            }
            StreamUpdate::ApiRetry {
                status,
                error,
                attempt,
                max_retries,
                retry_in_ms,
            } => self.on_api_retry(index, status, error, attempt, max_retries, retry_in_ms),
            StreamUpdate::Other => {}
        }
    }

    /// A model call failed and the client retries it. A refused login is final (the client
    /// would retry for minutes for nothing): the team fails at once. Rate limits and overload
    /// usually pass: alerted once per turn, with the retry the client takes.
    fn on_api_retry(
        &mut self,
        index: usize,
        status: Option<i64>,
        error: Option<String>,
        attempt: Option<i64>,
        max_retries: Option<i64>,
        retry_in_ms: Option<i64>,
    ) {
        let word = error.clone().unwrap_or_default();
        if status == Some(401) || word == "authentication_failed" {
            let detail = format!(
                "the model API refused its credentials (HTTP {}{})",
                status.map_or_else(|| "?".to_string(), |s| s.to_string()),
                error.map(|e| format!(" {e}")).unwrap_or_default()
            );
            self.on_auth_failure(index, &detail);
            return;
        }
        if std::mem::replace(&mut self.agents[index].retry_alerted, true) {
            return;
        }
        let (cause, what) = match status {
            Some(429) => ("rate_limit", "rate limited".to_string()),
            Some(529) => ("overloaded", "overloaded".to_string()),
            Some(other) => ("api_error", format!("failing (HTTP {other})")),
            None => ("api_error", "failing".to_string()),
        };
        let name = self.agents[index].plan.name.clone();
        let retry = format!(
            "retry {}{}{}",
            attempt.unwrap_or(1),
            max_retries.map(|m| format!(" of {m}")).unwrap_or_default(),
            retry_in_ms
                .map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default()
        );
        let message = format!(
            "{name}: the model API is {what}{}; the client retries ({retry})",
            if word.is_empty() {
                String::new()
            } else {
                format!(" ({word})")
            }
        );
        self.agents[index].trouble = Some(format!("the model API is {what}"));
        self.alert(index, cause, message);
    }

    /// The client is not logged in or its key is refused: nothing to retry, so the whole team
    /// stops with the fix.
    fn on_auth_failure(&mut self, index: usize, detail: &str) {
        let name = self.agents[index].plan.name.clone();
        self.agents[index].trouble = Some(format!("authentication failed: {detail}"));
        self.agents[index].could_not_run = true;
        let message = format!("{name}: authentication failed: {detail}; {LOGIN_FIX}");
        self.alert(index, "authentication", message.clone());
        self.end(Outcome::Failed { reason: message });
    }

    /// A turn ended with an error result: a refused login ends the team, anything else is
    /// alerted (the agent stays, a wake may try again).
    fn on_error_result(&mut self, index: usize, text: Option<&str>) {
        let text = text.unwrap_or("no text").to_string();
        let lower = text.to_lowercase();
        if lower.contains("not logged in")
            || lower.contains("invalid api key")
            || lower.contains("/login")
        {
            self.on_auth_failure(index, &format!("the client said {text:?}"));
            return;
        }
        // A turn the supervisor itself interrupted (a budget spent, a stop asked for) ends with
        // an error result: that is the stop's doing, already said, not a failure to report.
        if matches!(
            self.agents[index].stopping,
            Some(
                StopReason::Budget | StopReason::Stop | StopReason::Shutdown | StopReason::Restart
            )
        ) {
            return;
        }
        let name = self.agents[index].plan.name.clone();
        self.agents[index].trouble = Some(format!("its last turn failed: {text}"));
        self.alert(
            index,
            "turn_error",
            format!("{name}: its turn ended with an error: {text}"),
        );
    }

    /// The client could not be started at all (a missing binary, a bad command): starting it
    /// again would fail the same way, so the agent is given up on at once.
    fn on_spawn_failed(&mut self, index: usize, error: &str) {
        let agent = &mut self.agents[index];
        agent.running = false;
        agent.phase = Phase::Crashed;
        let name = agent.plan.name.clone();
        agent.trouble = Some(format!("its client could not start: {error}"));
        agent.could_not_run = true;
        self.dirty = true;
        self.patch(index, status_update(AgentStatus::Crashed));
        self.alert(
            index,
            "spawn",
            format!("{name}: its client could not start: {error}"),
        );
    }

    /// A model call seen during a turn: priced from the rate table, reported (at most every
    /// [`COST_REPORT_EVERY`]), and a spent budget interrupts the turn.
    fn on_model_call(&mut self, index: usize, call: ModelCall, now: Instant) {
        let agent = &mut self.agents[index];
        let model = call.model.clone().or_else(|| agent.model.clone());
        let Some(price) = model
            .as_deref()
            .and_then(|model| pricing::price(model, &call.usage))
        else {
            if !std::mem::replace(&mut agent.unpriced_said, true) {
                let name = agent.plan.name.clone();
                let model = model.unwrap_or_else(|| "unknown".to_string());
                self.say(format!(
                    "{name}: model {model} is not in the rate table: its cost is priced at turn end"
                ));
            }
            return;
        };
        // Lines of the same call repeat its usage: the latest replaces the earlier price.
        match (&call.id, &agent.last_call) {
            (Some(id), Some((last, last_price))) if id == last => {
                agent.turn_estimate += price - last_price;
            }
            _ => agent.turn_estimate += price,
        }
        agent.last_call = call.id.map(|id| (id, price));
        let live = agent.live_cost();
        if agent
            .cost_reported_at
            .is_none_or(|at| now.duration_since(at) >= COST_REPORT_EVERY)
        {
            agent.cost_reported_at = Some(now);
            let update = AgentUpdate {
                cost_usd: Some(live),
                coordination: Some(agent.meter.account().clone()),
                ..AgentUpdate::default()
            };
            self.patch(index, update);
        }
        let agent = &self.agents[index];
        if agent.is_busy()
            && agent.stopping.is_none()
            && let Some(budget) = agent.plan.settings.budget_usd
            && live >= budget
        {
            let update = AgentUpdate {
                cost_usd: Some(live),
                ..AgentUpdate::default()
            };
            self.patch(index, update);
            self.stop_for_budget(index, budget, live, INTERRUPT_GRACE);
        }
    }

    /// What the whole team has spent, counting running turns as priced so far and the loops'
    /// iterations as they reported them.
    pub fn team_cost(&self) -> f64 {
        let agents: f64 = self.agents.iter().map(AgentState::live_cost).sum();
        agents + self.loops.spent.values().sum::<f64>()
    }

    /// `[defaults] team_budget_usd` reached (last pushed over by `by`): an alert, every agent
    /// is stopped (a turn in progress is interrupted) and so is every loop. What is left of the
    /// work makes the outcome `stalled`, naming the stopped agents.
    fn check_team_budget(&mut self, by: Spender<'_>) {
        let Some(budget) = self
            .agents
            .first()
            .and_then(|agent| agent.plan.settings.team_budget_usd)
            .or(self.loops.team_budget_usd)
        else {
            return;
        };
        let spent = self.team_cost();
        if self.team_budget_spent || spent < budget {
            return;
        }
        self.team_budget_spent = true;
        let message = format!(
            "the team spent ${spent:.4} of its ${budget:.2} budget (team_budget_usd): stopping every agent"
        );
        match by {
            Spender::Agent(index) => self.alert(index, "team_budget", message),
            Spender::Loop(name) => {
                self.say(format!("ALERT (team_budget) {message}"));
                let alert = AgentAlert {
                    cause: "team_budget".to_string(),
                    message,
                };
                self.out.push(Effect::RecordAbout {
                    name: name.to_string(),
                    payload: EventPayload::AgentAlert(alert),
                });
            }
        }
        if self.loops.running > 0 {
            self.out.push(Effect::StopLoops);
        }
        for other in 0..self.agents.len() {
            self.agents[other].trouble =
                Some(format!("the team's budget of ${budget:.2} is spent"));
            if self.agents[other].running {
                self.stop_process(other, StopReason::Budget, INTERRUPT_GRACE);
            } else if !self.agents[other].is_gone() {
                self.agents[other].phase = Phase::Stopped;
                self.patch(other, status_update(AgentStatus::Stopped));
            }
        }
    }

    /// A cost reported before the turn ended: a spent budget interrupts the turn.
    fn on_cost_in_turn(&mut self, index: usize, total: f64) {
        let agent = &mut self.agents[index];
        agent.account(total);
        let cost = agent.cost();
        let update = AgentUpdate {
            cost_usd: Some(cost),
            ..AgentUpdate::default()
        };
        self.patch(index, update);
        let agent = &self.agents[index];
        if agent.is_busy()
            && agent.stopping.is_none()
            && let Some(budget) = agent.over_budget()
        {
            self.stop_for_budget(index, budget, cost, INTERRUPT_GRACE);
        }
    }

    fn stop_for_budget(&mut self, index: usize, budget: f64, cost: f64, grace: Duration) {
        let name = self.agents[index].plan.name.clone();
        self.agents[index].trouble = Some(format!("its budget of ${budget:.2} is spent"));
        self.say(format!(
            "{name} reached its budget of ${budget:.2} (spent ${cost:.4}); stopping it"
        ));
        self.stop_process(index, StopReason::Budget, grace);
        let exceeded = AgentBudgetExceeded {
            budget_usd: budget,
            cost_usd: cost,
            alert: true,
            message: format!("{name} spent ${cost:.4} of its ${budget:.2} budget and was stopped"),
        };
        self.record(index, EventPayload::AgentBudgetExceeded(exceeded));
    }

    fn on_turn_end(
        &mut self,
        index: usize,
        cost_usd: Option<f64>,
        context_window: Option<i64>,
        is_error: bool,
        session_id: Option<String>,
        now: Instant,
    ) {
        let agent = &mut self.agents[index];
        if agent.is_busy() {
            agent.phase = Phase::Live { busy: false };
        }
        agent.idle_since = now;
        agent.turns_done += 1;
        if !is_error {
            agent.failures_in_a_row = 0;
        }
        if session_id.is_some() && agent.session_id.is_none() {
            agent.session_id = session_id;
        }
        if let Some(total) = cost_usd {
            agent.account(total);
        }
        // The client's total replaces the estimate of the turn's calls.
        agent.turn_estimate = 0.0;
        agent.last_call = None;
        if context_window.is_some() {
            agent.context_window = context_window;
        }
        let (tokens, window, cost) = (agent.context_tokens, agent.context_window, agent.cost());
        let handoff_turn = agent.asked_for_handoff;
        let status = if agent.paused {
            AgentStatus::Paused
        } else {
            AgentStatus::Idle
        };
        self.save(index);
        let update = AgentUpdate {
            status: Some(status),
            context_tokens: tokens,
            context_window: window,
            cost_usd: Some(cost),
            coordination: Some(self.agents[index].meter.account().clone()),
            ..AgentUpdate::default()
        };
        self.patch(index, update);
        let turn = AgentTurn {
            context_tokens: tokens,
            context_window: window,
            cost_usd: cost,
        };
        self.record(index, EventPayload::AgentTurn(turn));
        self.dirty = true;

        let agent = &self.agents[index];
        let stopping = agent.stopping;
        if let Some(budget) = agent.over_budget() {
            // Already on its way out for its budget (mid-turn) or for good: said once.
            if !matches!(
                stopping,
                Some(StopReason::Budget | StopReason::Stop | StopReason::Shutdown)
            ) {
                self.stop_for_budget(index, budget, cost, IDLE_GRACE);
            }
            return;
        }
        if stopping.is_some() {
            return;
        }
        if handoff_turn {
            self.stop_process(index, StopReason::Recycle, IDLE_GRACE);
            return;
        }
        if let (Some(tokens), Some(window)) = (tokens, window)
            && window > 0
            && tokens as f64 / window as f64 >= agent.plan.recycle_at
        {
            let text = wake::handoff_request(tokens, window);
            let agent = &mut self.agents[index];
            agent.meter.handoff(text.chars().count());
            agent.asked_for_handoff = true;
            agent.phase = Phase::Live { busy: true };
            self.out.push(Effect::Send { agent: index, text });
            let requested = AgentHandoffRequested {
                context_tokens: tokens,
                context_window: window,
            };
            self.record(index, EventPayload::AgentHandoffRequested(requested));
        }
    }

    fn on_exit(&mut self, index: usize, how: &str, stderr: &[String], now: Instant) {
        let agent = &mut self.agents[index];
        agent.running = false;
        let reason = agent.stopping.take();
        let name = agent.plan.name.clone();
        let refused = !agent.lines_seen && how != "exit code 0" && !stderr.is_empty();
        self.dirty = true;
        match reason {
            None if refused => self.on_refused(index, how, stderr),
            None => {
                self.say(format!("{name} exited unexpectedly ({how})"));
                self.on_crash(index, format!("process exited with {how}"), stderr, now);
            }
            Some(StopReason::Recycle) => {
                let agent = &mut self.agents[index];
                agent.next_start = Start::Recycled;
                agent.context_tokens = None;
                let recycled = AgentRecycled {
                    previous_session: agent.session_id.clone(),
                };
                self.record(index, EventPayload::AgentRecycled(recycled));
                self.say(format!("recycling {name} into a fresh session"));
                self.start(index);
            }
            Some(StopReason::Hibernate) => {
                self.agents[index].phase = Phase::Hibernated;
                // A paused agent stays `paused` on its record while its process is gone.
                let status = if self.agents[index].paused {
                    AgentStatus::Paused
                } else {
                    AgentStatus::Hibernated
                };
                self.patch(index, status_update(status));
                self.record(index, EventPayload::AgentHibernated(exit(how)));
            }
            Some(StopReason::Budget | StopReason::Stop) => {
                self.agents[index].phase = Phase::Stopped;
                self.patch(index, status_update(AgentStatus::Stopped));
                let stopped = AgentExit {
                    stopped: true,
                    ..exit(how)
                };
                self.record(index, EventPayload::AgentExited(stopped));
            }
            Some(StopReason::Restart) => {
                self.agents[index].next_start = Start::Resumed;
                let restart = AgentExit {
                    restart: true,
                    ..exit(how)
                };
                self.record(index, EventPayload::AgentExited(restart));
                self.start(index);
            }
            Some(StopReason::Shutdown) => {
                self.agents[index].phase = Phase::Waiting;
                self.record(index, EventPayload::AgentExited(exit(how)));
            }
        }
    }

    /// The client exited with an error before it printed anything, saying why on stderr: it
    /// refused its command line (a model or flag value it does not accept). Starting it again
    /// would be refused the same way, so the agent is given up on at once, its error quoted.
    fn on_refused(&mut self, index: usize, how: &str, stderr: &[String]) {
        let agent = &mut self.agents[index];
        agent.phase = Phase::Crashed;
        let name = agent.plan.name.clone();
        let quoted = quote(stderr);
        agent.trouble = Some(format!("its client refused to start: {quoted}"));
        agent.could_not_run = true;
        self.patch(index, status_update(AgentStatus::Crashed));
        self.record(index, EventPayload::AgentExited(exit(how)));
        self.alert(
            index,
            "refused",
            format!("{name}: its client refused to start ({how}): {quoted}"),
        );
    }

    /// A process died unasked: release what it held, then restart with backoff, or give up
    /// after too many restarts in the window (an alert quoting its last stderr lines).
    fn on_crash(&mut self, index: usize, reason: String, stderr: &[String], now: Instant) {
        self.out.push(Effect::ReleaseAfterCrash {
            agent: index,
            reason,
        });
        let agent = &mut self.agents[index];
        let window = agent.plan.restart_window;
        while agent
            .restart_times
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            agent.restart_times.pop_front();
        }
        if agent.restart_times.len() >= agent.plan.max_restarts as usize {
            let message = format!(
                "{} crashed {} times within {:?}; not restarting it",
                agent.plan.name,
                agent.restart_times.len() + 1,
                window
            );
            agent.phase = Phase::Crashed;
            agent.trouble = Some(if stderr.is_empty() {
                "crashed too often".to_string()
            } else {
                format!("crashed too often: {}", quote(stderr))
            });
            self.say(message.clone());
            self.patch(index, status_update(AgentStatus::Crashed));
            let stderr_said = if stderr.is_empty() {
                "nothing on stderr".to_string()
            } else {
                format!("its last stderr lines: {}", quote(stderr))
            };
            let gave_up = AgentCrashed {
                reason: None,
                released: None,
                alert: true,
                gave_up: true,
                message: Some(message.clone()),
            };
            self.record(index, EventPayload::AgentCrashed(gave_up));
            self.alert(index, "crash_loop", format!("{message}; {stderr_said}"));
            return;
        }
        let delay = Duration::from_secs(1)
            .saturating_mul(1 << agent.failures_in_a_row.min(5))
            .min(MAX_BACKOFF);
        // A resumed session that failed again before finishing a turn, after a crash already:
        // resuming does not take (Claude Code 2.1.332 cannot resume a session killed mid-turn;
        // each resume exits at once), so the next start is a fresh session. What it held was
        // released above; it claims again like any new session.
        let resume_failed = agent.resumed.is_some() && agent.failures_in_a_row >= 1;
        agent.failures_in_a_row += 1;
        agent.phase = Phase::RestartPending { at: now + delay };
        agent.next_start = if resume_failed {
            Start::Fresh
        } else {
            Start::AfterCrash
        };
        let name = agent.plan.name.clone();
        if resume_failed {
            self.say(format!(
                "{name}: its resumed session failed again before a turn; starting a fresh session"
            ));
        }
        self.patch(index, status_update(AgentStatus::Starting));
    }

    // ---- what the server says ---------------------------------------------------------------

    fn on_event(&mut self, event: &Event) {
        match &event.payload {
            EventPayload::MessageSent(sent) => {
                if sent.kind == MessageKind::Handoff {
                    return;
                }
                let quoted = Quoted {
                    id: sent.id.clone(),
                    sender: event.actor.clone(),
                    body: sent.body.clone(),
                };
                for agent in &mut self.agents {
                    if sent.recipients.contains(&agent.plan.name) && agent.plan.name != event.actor
                    {
                        agent.pending_messages.push(quoted.clone());
                        self.dirty = true;
                    }
                }
            }
            EventPayload::AgentControl(control) => {
                let index = event
                    .agent
                    .as_deref()
                    .and_then(|name| self.agents.iter().position(|a| a.plan.name == name));
                if let Some(index) = index {
                    self.on_control(index, control.action);
                }
            }
            EventPayload::TaskReady(_) => {
                // A task that is ready again (reopened, reclaimed, released) may be offered anew.
                if let Some(task) = event.task {
                    for agent in &mut self.agents {
                        agent.offered.remove(&task);
                    }
                }
                self.dirty = true;
            }
            EventPayload::AgentSessionStart(started) => {
                // What the SessionStart hook injected is coordination the session carries.
                if let Some(chars) = started.context_chars
                    && let Some(agent) = self
                        .agents
                        .iter_mut()
                        .find(|a| event.agent.as_deref() == Some(a.plan.name.as_str()))
                {
                    agent
                        .meter
                        .session_context(usize::try_from(chars).unwrap_or(0));
                }
            }
            payload if payload.topic() == Some(Topic::Task) => self.dirty = true,
            _ => {}
        }
    }

    fn on_control(&mut self, index: usize, action: AgentAction) {
        let name = self.agents[index].plan.name.clone();
        self.say(format!("{action} {name} (asked through the server)"));
        match action {
            AgentAction::Pause => {
                self.agents[index].paused = true;
                self.patch(index, status_update(AgentStatus::Paused));
            }
            AgentAction::Resume => {
                let agent = &mut self.agents[index];
                agent.paused = false;
                let status = match agent.phase {
                    Phase::Live { busy: true } => AgentStatus::Working,
                    Phase::Live { busy: false } => AgentStatus::Idle,
                    Phase::Hibernated => AgentStatus::Hibernated,
                    _ => AgentStatus::Starting,
                };
                if matches!(agent.phase, Phase::Stopped | Phase::Crashed) {
                    agent.phase = Phase::Waiting;
                    agent.next_start = Start::Resumed;
                }
                self.patch(index, status_update(status));
                self.dirty = true;
            }
            AgentAction::Stop => {
                if self.agents[index].running {
                    self.stop_process(index, StopReason::Stop, IDLE_GRACE);
                } else {
                    self.agents[index].phase = Phase::Stopped;
                    self.patch(index, status_update(AgentStatus::Stopped));
                }
            }
            AgentAction::Restart => {
                let agent = &mut self.agents[index];
                agent.paused = false;
                if agent.running {
                    self.stop_process(index, StopReason::Restart, IDLE_GRACE);
                } else {
                    agent.next_start = Start::Resumed;
                    self.start(index);
                }
                let restarted = AgentRestarted {
                    asked: true,
                    restarts: None,
                };
                self.record(index, EventPayload::AgentRestarted(restarted));
            }
        }
    }

    // ---- waking -----------------------------------------------------------------------------

    /// When something happened that may give an idle agent work, asks for the team's state.
    fn reconcile(&mut self) {
        let asked = self
            .out
            .iter()
            .any(|e| matches!(e, Effect::ReadTeam { .. }));
        if !self.dirty || self.shutting_down || asked {
            return;
        }
        self.dirty = false;
        let wakeable: Vec<&AgentState> = self.agents.iter().filter(|a| a.is_wakeable()).collect();
        if wakeable.is_empty() {
            return;
        }
        let messages = wakeable.iter().any(|a| !a.pending_messages.is_empty());
        self.out.push(Effect::ReadTeam { messages });
    }

    /// Wakes every idle agent that has something waiting for it: unread messages that arrived
    /// for it, or (when it holds no task) ready tasks that fit it and were not offered to it
    /// before nor to another agent busy with them.
    fn wake(&mut self, view: &TeamView) {
        if self.shutting_down {
            return;
        }
        for index in 0..self.agents.len() {
            if !self.agents[index].is_wakeable() {
                continue;
            }
            let agent = &self.agents[index];
            let name = agent.plan.name.clone();
            let holds = view
                .tasks
                .iter()
                .any(|task| task.assignee.as_deref() == Some(name.as_str()) && is_held(task));
            let messages: Vec<Quoted> = agent
                .pending_messages
                .iter()
                .filter(|m| {
                    view.unread
                        .get(&name)
                        .is_some_and(|ids| ids.contains(&m.id))
                })
                .cloned()
                .collect();
            let tasks: Vec<(TaskId, String)> = if holds {
                Vec::new()
            } else {
                view.tasks
                    .iter()
                    .filter(|task| task.status == TaskStatus::Ready)
                    .filter(|task| task.fits(&name, agent.plan.role.as_deref(), &agent.plan.caps))
                    .filter(|task| !agent.offered.contains(&task.id))
                    .filter(|task| {
                        !self.agents.iter().enumerate().any(|(other, a)| {
                            other != index && a.is_busy() && a.offered.contains(&task.id)
                        })
                    })
                    .take(5)
                    .map(|task| (task.id, task.title.clone()))
                    .collect()
            };
            self.agents[index].pending_messages.clear();
            let quoted_tasks: Vec<(String, String)> = tasks
                .iter()
                .map(|(id, title)| (id.to_string(), title.clone()))
                .collect();
            let Some(text) = wake::wake_message(&messages, &quoted_tasks) else {
                continue;
            };
            let agent = &mut self.agents[index];
            agent.offered.extend(tasks.iter().map(|(id, _)| *id));
            let woken = AgentWoken {
                messages: messages.iter().map(|m| m.id.clone()).collect(),
                tasks: quoted_tasks.iter().map(|(id, _)| id.clone()).collect(),
            };
            if agent.phase == Phase::Hibernated {
                agent.wake_on_start = Some(text);
                agent.next_start = Start::Resumed;
                self.say(format!("waking {name} from hibernation"));
                self.record(index, EventPayload::AgentWoken(woken));
                self.start(index);
            } else {
                agent.phase = Phase::Live { busy: true };
                agent.meter.injected(text.chars().count());
                self.out.push(Effect::Send { agent: index, text });
                self.record(index, EventPayload::AgentWoken(woken));
                self.patch(index, status_update(AgentStatus::Working));
            }
        }
    }

    // ---- the clock --------------------------------------------------------------------------

    /// Restarts that are due, hibernation, and whether the team has finished.
    fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for index in 0..self.agents.len() {
            let agent = &mut self.agents[index];
            match agent.phase {
                Phase::RestartPending { at } if now >= at => {
                    agent.restarts += 1;
                    agent.restart_times.push_back(now);
                    let restarted = AgentRestarted {
                        asked: false,
                        restarts: Some(agent.restarts),
                    };
                    self.record(index, EventPayload::AgentRestarted(restarted));
                    self.start(index);
                }
                Phase::Live { busy: false }
                    if agent.stopping.is_none()
                        && agent.turns_done > 0
                        && now.duration_since(agent.idle_since) >= agent.plan.hibernate_after =>
                {
                    let name = agent.plan.name.clone();
                    self.say(format!("{name} is idle; hibernating it"));
                    self.stop_process(index, StopReason::Hibernate, IDLE_GRACE);
                }
                _ => {}
            }
        }
        self.reconcile();
        if self.stay {
            return;
        }
        let quiet = !self.dirty
            && self.loops.running == 0
            && !self
                .out
                .iter()
                .any(|e| matches!(e, Effect::ReadTeam { .. }))
            && self.agents.iter().all(|agent| match agent.phase {
                Phase::Live { busy: false } => {
                    agent.stopping.is_none() && (agent.turns_done > 0 || agent.paused)
                }
                Phase::Hibernated | Phase::Stopped | Phase::Crashed => true,
                Phase::Waiting | Phase::Live { busy: true } | Phase::RestartPending { .. } => false,
            });
        self.quiet_ticks = if quiet { self.quiet_ticks + 1 } else { 0 };
        if self.quiet_ticks >= QUIET_TICKS_TO_FINISH && !self.deciding && !self.ended {
            // Quiet long enough: the team's tasks say whether it finished, stalled or waits
            // for a person (answered by `Input::TeamRead`, which also wakes anyone the read
            // shows work for).
            self.deciding = true;
            self.out.push(Effect::ReadTeam { messages: false });
        }
    }

    /// The outcome of a quiet team, from its tasks: finished when every task is done or
    /// cancelled; still running (saying so) while a task waits for a person in review; failed
    /// when no agent could ever run; else stalled, naming each task left and why.
    fn decide(&mut self, view: &TeamView) {
        if self.ended || self.shutting_down {
            return;
        }
        // Someone was just woken: the team is not quiet any more.
        if self.agents.iter().any(AgentState::is_busy) {
            self.quiet_ticks = 0;
            return;
        }
        let left: Vec<&Task> = view
            .tasks
            .iter()
            .filter(|task| !matches!(task.status, TaskStatus::Done | TaskStatus::Cancelled))
            .collect();
        let none_could_run = (self.agents.len() + self.loops.ended.len()) > 0
            && self
                .agents
                .iter()
                .all(|a| a.is_gone() && a.could_not_run && !a.worked)
            && self.loops.ended.iter().all(|l| l.could_not_run.is_some());
        if none_could_run {
            let agents = self.agents.iter().map(|a| {
                format!(
                    "{}: {}",
                    a.plan.name,
                    a.trouble.as_deref().unwrap_or("stopped")
                )
            });
            let loops = self
                .loops
                .ended
                .iter()
                .map(|l| format!("{}: {}", l.name, l.could_not_run.as_deref().unwrap_or("?")));
            let why: Vec<String> = agents.chain(loops).collect();
            self.end(Outcome::Failed {
                reason: format!("no agent could run ({})", why.join("; ")),
            });
            return;
        }
        if left.is_empty() {
            self.end(Outcome::Finished);
            return;
        }
        let in_review: Vec<&Task> = left
            .iter()
            .copied()
            .filter(|task| task.status == TaskStatus::Review)
            .collect();
        if !in_review.is_empty() {
            let ids: Vec<TaskId> = in_review.iter().map(|task| task.id).collect();
            if ids != self.waiting_for {
                self.say(waiting_text(&in_review, view.queue.as_ref()));
                self.waiting_for = ids;
            }
            self.quiet_ticks = 0;
            return;
        }
        if self.shares_the_team {
            let held_elsewhere = |task: &&&Task| {
                task.assignee
                    .as_deref()
                    .is_some_and(|holder| !self.agents.iter().any(|a| a.plan.name == holder))
            };
            let elsewhere: Vec<String> = left
                .iter()
                .filter(held_elsewhere)
                .filter_map(|task| {
                    let holder = task.assignee.as_deref()?;
                    let ours = self.agents.iter().any(|a| a.plan.name == holder);
                    (!ours).then(|| format!("{} ({holder})", task.id))
                })
                .collect();
            if !elsewhere.is_empty() {
                let ids: Vec<TaskId> = left
                    .iter()
                    .filter(held_elsewhere)
                    .map(|task| task.id)
                    .collect();
                if ids != self.waiting_for {
                    self.say(format!(
                        "waiting for agents on other hosts: {}",
                        elsewhere.join(", ")
                    ));
                    self.waiting_for = ids;
                }
                self.quiet_ticks = 0;
                return;
            }
        }
        let reasons: Vec<String> = left.iter().map(|task| self.why_stuck(task)).collect();
        self.end(Outcome::Stalled {
            reason: format!(
                "{} task(s) left that no agent can proceed with: {}",
                left.len(),
                reasons.join("; ")
            ),
        });
    }

    /// Why a task left over is not moving, in words.
    fn why_stuck(&self, task: &Task) -> String {
        let head = format!("{} {:?} ({})", task.id, task.title, task.status);
        let state = |name: &str| -> String {
            self.agents
                .iter()
                .find(|a| a.plan.name == name)
                .map_or_else(
                    || format!("{name}, not in this team"),
                    |a| {
                        let mut line = format!("{name}, {}", phase_word(a));
                        if let Some(trouble) = &a.trouble {
                            line.push_str(&format!(" ({trouble})"));
                        }
                        line
                    },
                )
        };
        match task.status {
            TaskStatus::Ready => {
                let fitting: Vec<&AgentState> = self
                    .agents
                    .iter()
                    .filter(|a| task.fits(&a.plan.name, a.plan.role.as_deref(), &a.plan.caps))
                    .collect();
                if fitting.is_empty() {
                    let mut wants = Vec::new();
                    if let Some(role) = &task.role {
                        wants.push(format!("role {role:?}"));
                    }
                    if !task.caps.is_empty() {
                        wants.push(format!("caps {}", task.caps.join(", ")));
                    }
                    if let Some(assignee) = &task.assignee {
                        wants.push(format!("reserved for {assignee}"));
                    }
                    format!(
                        "{head}: nobody fits it ({})",
                        if wants.is_empty() {
                            "no agent".to_string()
                        } else {
                            wants.join(", ")
                        }
                    )
                } else if fitting.iter().all(|a| a.is_gone()) {
                    let who: Vec<String> = fitting.iter().map(|a| state(&a.plan.name)).collect();
                    format!(
                        "{head}: the agents that fit it are gone: {}",
                        who.join("; ")
                    )
                } else {
                    let who: Vec<&str> = fitting.iter().map(|a| a.plan.name.as_str()).collect();
                    format!("{head}: offered to {} but not taken", who.join(", "))
                }
            }
            TaskStatus::Claimed | TaskStatus::InProgress => match &task.assignee {
                Some(holder) => format!("{head}: held by {}", state(holder)),
                None => format!("{head}: held by nobody"),
            },
            TaskStatus::Pending => format!("{head}: waits for tasks it depends on"),
            TaskStatus::Blocked => match &task.blocked_reason {
                Some(reason) => format!("{head}: blocked: {reason}"),
                None => format!("{head}: blocked"),
            },
            // A failed task is work left, not work done: `finished` is every task done or
            // cancelled (cancel it, or reopen it for another try).
            TaskStatus::Failed => match &task.result {
                Some(reason) => format!("{head}: failed: {}", truncate(reason, 200)),
                None => format!("{head}: failed"),
            },
            _ => head,
        }
    }

    /// One line per agent, for the outcome.
    pub fn summaries(&self) -> Vec<String> {
        let loops = self.loops.ended.iter().map(|l| l.summary.clone());
        self.agents
            .iter()
            .map(AgentState::summary)
            .chain(loops)
            .collect()
    }

    // ---- ending -----------------------------------------------------------------------------

    fn stop_process(&mut self, index: usize, reason: StopReason, grace: Duration) {
        let agent = &mut self.agents[index];
        // A person's stop and the team's shutdown win over anything the supervisor decides
        // itself (recycle, budget, hibernate) while the process is on its way out.
        if agent.stopping.is_some_and(StopReason::is_final) && !reason.is_final() {
            return;
        }
        if agent.running {
            agent.stopping = Some(reason);
            self.out.push(Effect::Stop {
                agent: index,
                grace,
            });
        }
    }

    /// Ends every process (stdin closed, then signals).
    fn shutdown(&mut self) {
        self.shutting_down = true;
        for index in 0..self.agents.len() {
            self.stop_process(index, StopReason::Shutdown, SHUTDOWN_GRACE);
        }
    }

    /// Kills what still runs; agents that never started are reported offline.
    fn shutdown_deadline(&mut self) {
        for index in 0..self.agents.len() {
            if self.agents[index].running {
                self.out.push(Effect::Kill { agent: index });
            }
            if self.agents[index].phase == Phase::Waiting {
                self.patch(index, status_update(AgentStatus::Offline));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every transition of the state machine, driven with scripted inputs at made-up instants:
    //! no process, no server, no sleeping.

    use std::path::PathBuf;

    use conclave_core::config::AgentSettings;
    use conclave_core::model::{NewEvent, TaskStatus};
    use serde_json::json;

    use super::*;

    const HIBERNATE_AFTER: Duration = Duration::from_secs(600);
    const WINDOW: Duration = Duration::from_secs(600);

    fn plan(name: &str) -> AgentPlan {
        AgentPlan {
            name: name.to_string(),
            role: None,
            host: None,
            caps: Vec::new(),
            settings: AgentSettings::default(),
            cwd: PathBuf::from("/p"),
            recycle_at: 0.7,
            hibernate_after: HIBERNATE_AFTER,
            max_restarts: 2,
            restart_window: WINDOW,
        }
    }

    fn with_budget(mut plan: AgentPlan, budget: f64) -> AgentPlan {
        plan.settings.budget_usd = Some(budget);
        plan
    }

    /// A team, its clock, and what it did last.
    struct Harness {
        team: Team,
        t0: Instant,
        now: Instant,
    }

    impl Harness {
        fn new(plans: Vec<AgentPlan>) -> Harness {
            Harness::of(plans, false)
        }

        fn of(plans: Vec<AgentPlan>, stay: bool) -> Harness {
            let t0 = Instant::now();
            let agents = plans.into_iter().map(|p| AgentState::new(p, t0)).collect();
            Harness {
                team: Team::new(agents, stay),
                t0,
                now: t0,
            }
        }

        fn restored(agent: AgentState) -> Harness {
            let t0 = Instant::now();
            Harness {
                team: Team::new(vec![agent], false),
                t0,
                now: t0,
            }
        }

        /// Moves the clock to `secs` after the start.
        fn at(&mut self, secs: u64) -> &mut Harness {
            self.now = self.t0 + Duration::from_secs(secs);
            self
        }

        fn step(&mut self, input: Input) -> Vec<Effect> {
            self.team.step(input, self.now)
        }

        fn tick(&mut self) -> Vec<Effect> {
            self.step(Input::Tick)
        }

        fn generation(&self, agent: usize) -> u64 {
            self.team.agents[agent].generation
        }

        /// Answers the spawns among `effects` as a process side would.
        fn answer_spawns(&mut self, effects: &[Effect]) -> Vec<Effect> {
            let mut out = Vec::new();
            for effect in effects {
                if let Effect::Spawn {
                    agent, generation, ..
                } = effect
                {
                    out.extend(self.step(Input::Spawned {
                        agent: *agent,
                        generation: *generation,
                        pid: 100 + *agent as u32,
                    }));
                }
            }
            out
        }

        /// Starts every waiting agent (staggered) and answers the spawns.
        fn start_all(&mut self) {
            let mut secs = self.now.duration_since(self.t0).as_secs();
            while self.team.agents.iter().any(|a| a.phase == Phase::Waiting) {
                self.at(secs);
                let effects = self.tick();
                self.answer_spawns(&effects);
                secs += 1;
            }
        }

        fn line(&mut self, agent: usize, update: StreamUpdate) -> Vec<Effect> {
            let generation = self.generation(agent);
            self.step(Input::Line {
                agent,
                generation,
                update,
            })
        }

        fn init(&mut self, agent: usize, session: &str) -> Vec<Effect> {
            self.line(
                agent,
                StreamUpdate::Init {
                    session_id: Some(session.to_string()),
                    model: None,
                },
            )
        }

        fn context(&mut self, agent: usize, tokens: i64) -> Vec<Effect> {
            self.line(
                agent,
                StreamUpdate::Assistant {
                    context_tokens: Some(tokens),
                    content: Vec::new(),
                    call: None,
                },
            )
        }

        fn turn_end(&mut self, agent: usize, cost: f64) -> Vec<Effect> {
            self.line(
                agent,
                StreamUpdate::Result {
                    cost_usd: Some(cost),
                    context_window: Some(1000),
                    is_error: false,
                    session_id: Some("s1".to_string()),
                    num_turns: Some(1),
                    text: None,
                    output_tokens: None,
                },
            )
        }

        fn exit(&mut self, agent: usize, how: &str) -> Vec<Effect> {
            let generation = self.generation(agent);
            let effects = self.step(Input::Exited {
                agent,
                generation,
                how: how.to_string(),
                stderr: Vec::new(),
            });
            let answered = self.answer_spawns(&effects);
            effects.into_iter().chain(answered).collect()
        }

        fn event(&mut self, value: Value) -> Vec<Effect> {
            let event: Event = serde_json::from_value(value).expect("an event");
            assert!(
                !matches!(event.payload, EventPayload::Unrecognized(_)),
                "a typed event: {event:?}"
            );
            self.step(Input::Event(event))
        }

        fn control(&mut self, agent: &str, action: &str) -> Vec<Effect> {
            let effects = self.event(json!({
                "seq": 1, "ts": "2030-01-01T00:00:00Z", "actor": "admin",
                "kind": "agent.control", "task": null, "agent": agent,
                "data": {"action": action},
            }));
            let answered = self.answer_spawns(&effects);
            effects.into_iter().chain(answered).collect()
        }

        fn message(&mut self, id: &str, from: &str, to: &[&str], body: &str) -> Vec<Effect> {
            self.event(json!({
                "seq": 2, "ts": "2030-01-01T00:00:00Z", "actor": from,
                "kind": "message.sent", "task": null, "agent": null,
                "data": {"id": id, "to": to[0], "recipients": to, "thread": "t",
                         "kind": "chat", "urgent": false, "body": body},
            }))
        }

        /// `task.created` or `task.ready` for task `task`.
        fn task_event(&mut self, kind: &str, task: i64) -> Vec<Effect> {
            let data = match kind {
                "task.created" => {
                    json!({"title": "t", "after": [], "role": null, "priority": 0})
                }
                _ => json!({}),
            };
            self.event(json!({
                "seq": 3, "ts": "2030-01-01T00:00:00Z", "actor": "admin",
                "kind": kind, "task": task, "agent": null, "data": data,
            }))
        }

        fn read(&mut self, tasks: Vec<Task>, unread: &[(&str, &str)]) -> Vec<Effect> {
            let mut view = TeamView {
                tasks,
                ..TeamView::default()
            };
            for (agent, id) in unread {
                view.unread
                    .entry(agent.to_string())
                    .or_default()
                    .insert(id.to_string());
            }
            let effects = self.step(Input::TeamRead(view));
            let answered = self.answer_spawns(&effects);
            effects.into_iter().chain(answered).collect()
        }

        /// An agent that has started and finished its first turn (idle, session `s1`).
        fn idle_after_a_turn(&mut self, agent: usize, cost: f64) {
            self.init(agent, "s1");
            self.turn_end(agent, cost);
            assert_eq!(self.team.agents[agent].phase, Phase::Live { busy: false });
        }
    }

    fn task(id: i64, status: TaskStatus, role: Option<&str>, assignee: Option<&str>) -> Task {
        let now = chrono::Utc::now();
        Task {
            id: TaskId(id),
            title: format!("task {id}"),
            body: String::new(),
            status,
            priority: 0,
            role: role.map(str::to_string),
            caps: Vec::new(),
            depends_on: Vec::new(),
            assignee: assignee.map(str::to_string),
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
        }
    }

    fn spawns(effects: &[Effect]) -> Vec<(usize, Option<String>, String)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Spawn {
                    agent,
                    resume,
                    first_message,
                    ..
                } => Some((*agent, resume.clone(), first_message.clone())),
                _ => None,
            })
            .collect()
    }

    fn stops(effects: &[Effect]) -> Vec<(usize, Duration)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Stop { agent, grace } => Some((*agent, *grace)),
                _ => None,
            })
            .collect()
    }

    fn sends(effects: &[Effect]) -> Vec<(usize, String)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Send { agent, text } => Some((*agent, text.clone())),
                _ => None,
            })
            .collect()
    }

    /// The kind and data of each event recorded, as they go on the wire.
    fn records(effects: &[Effect]) -> Vec<(&'static str, Value)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Record { payload, .. } => {
                    let kind = EventPayload::KINDS
                        .iter()
                        .find(|kind| **kind == payload.kind())
                        .expect("a known kind");
                    let wire = serde_json::to_value(NewEvent {
                        agent: "a".into(),
                        task: None,
                        payload: payload.clone(),
                    })
                    .expect("an event on the wire");
                    Some((*kind, wire["data"].clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn kinds(effects: &[Effect]) -> Vec<&'static str> {
        records(effects).into_iter().map(|(kind, _)| kind).collect()
    }

    fn statuses(effects: &[Effect]) -> Vec<AgentStatus> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Patch { update, .. } => update.status,
                _ => None,
            })
            .collect()
    }

    fn patched_cost(effects: &[Effect]) -> Option<f64> {
        effects.iter().rev().find_map(|effect| match effect {
            Effect::Patch { update, .. } => update.cost_usd,
            _ => None,
        })
    }

    fn reads(effects: &[Effect]) -> Option<bool> {
        effects.iter().find_map(|effect| match effect {
            Effect::ReadTeam { messages } => Some(*messages),
            _ => None,
        })
    }

    fn ended(effects: &[Effect]) -> Option<Outcome> {
        effects.iter().find_map(|effect| match effect {
            Effect::Ended(outcome) => Some(outcome.clone()),
            _ => None,
        })
    }

    fn alerts(effects: &[Effect]) -> Vec<(String, String)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Record {
                    payload: EventPayload::AgentAlert(alert),
                    ..
                } => Some((alert.cause.clone(), alert.message.clone())),
                _ => None,
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn agents_start_one_at_a_time_and_report_their_process() {
        let mut team = Harness::new(vec![plan("a"), plan("b")]);
        let first = team.tick();
        let started = spawns(&first);
        assert_eq!(started.len(), 1, "{first:?}");
        assert_eq!(started[0].0, 0);
        assert_eq!(started[0].1, None, "a new agent starts a fresh session");
        assert!(started[0].2.contains("You are a"), "{}", started[0].2);
        let answered = team.answer_spawns(&first);
        assert_eq!(statuses(&answered), [AgentStatus::Starting]);
        assert_eq!(kinds(&answered), ["agent.started"]);
        assert!(spawns(&team.tick()).is_empty(), "the next start waits");
        let second = team.at(1).tick();
        assert_eq!(spawns(&second).first().map(|s| s.0), Some(1));
    }

    #[test]
    fn a_crash_within_the_window_restarts_with_backoff_resuming_the_session() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        let crashed = team.at(10).exit(0, "exit code 1");
        assert!(matches!(
            crashed.first(),
            Some(Effect::Say(text)) if text.contains("exited unexpectedly")
        ));
        assert!(crashed.iter().any(|e| matches!(
            e,
            Effect::ReleaseAfterCrash { reason, .. } if reason.contains("exit code 1")
        )));
        assert_eq!(statuses(&crashed), [AgentStatus::Starting]);
        assert!(spawns(&team.tick()).is_empty(), "backoff: not at once");
        let restarted = team.at(11).tick();
        assert_eq!(kinds(&restarted), ["agent.restarted"]);
        let spawned = spawns(&restarted);
        assert_eq!(spawned[0].1.as_deref(), Some("s1"), "resumes its session");
        assert!(
            spawned[0].2.contains("ended unexpectedly"),
            "{}",
            spawned[0].2
        );
        team.answer_spawns(&restarted);
        // The second crash in a row waits twice as long; the resumed session failed before a
        // turn, so the next start is a fresh session rather than the same resume again.
        let again = team.at(20).exit(0, "signal 9");
        assert!(again.iter().any(|e| matches!(
            e,
            Effect::Say(text) if text.contains("starting a fresh session")
        )));
        assert!(spawns(&team.at(21).tick()).is_empty());
        let fresh = spawns(&team.at(22).tick());
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].1, None, "a fresh session, not the failing resume");
        assert_eq!(team.team.agents[0].restarts, 2);
    }

    #[test]
    fn crashing_past_max_restarts_gives_up() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        for (crash, restart) in [(10, 11), (20, 22)] {
            team.at(crash).exit(0, "exit code 1");
            let restarted = team.at(restart).tick();
            team.answer_spawns(&restarted);
        }
        let gave_up = team.at(30).exit(0, "exit code 1");
        assert_eq!(team.team.agents[0].phase, Phase::Crashed);
        assert_eq!(statuses(&gave_up), [AgentStatus::Crashed]);
        let crashed = records(&gave_up);
        assert_eq!(crashed[0].0, "agent.crashed");
        assert_eq!(crashed[0].1["gave_up"], true);
        assert!(spawns(&team.at(3000).tick()).is_empty(), "never restarted");
    }

    #[test]
    fn crashes_older_than_the_window_are_forgotten() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        for (crash, restart) in [(10, 11), (20, 22)] {
            team.at(crash).exit(0, "exit code 1");
            let restarted = team.at(restart).tick();
            team.answer_spawns(&restarted);
        }
        // Both restarts are more than the window ago: this crash restarts again.
        team.at(22 + WINDOW.as_secs() + 1).exit(0, "exit code 1");
        assert!(matches!(
            team.team.agents[0].phase,
            Phase::RestartPending { .. }
        ));
    }

    #[test]
    fn a_client_that_cannot_start_is_given_up_on_with_an_alert() {
        let mut team = Harness::new(vec![plan("a")]);
        let started = team.tick();
        let generation = team.generation(0);
        let failed = team.step(Input::SpawnFailed {
            agent: 0,
            generation,
            error: "no such file".into(),
        });
        assert_eq!(spawns(&started).len(), 1);
        let said = alerts(&failed);
        assert_eq!(said.len(), 1, "{failed:?}");
        assert_eq!(said[0].0, "spawn");
        assert!(said[0].1.contains("no such file"), "{said:?}");
        assert_eq!(team.team.agents[0].phase, Phase::Crashed);
        assert_eq!(statuses(&failed), [AgentStatus::Crashed]);
    }

    #[test]
    fn reports_of_an_earlier_process_are_ignored() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        let old = team.generation(0);
        team.at(5).exit(0, "exit code 1");
        let restarted = team.at(6).tick();
        team.answer_spawns(&restarted);
        let late = team.step(Input::Exited {
            agent: 0,
            generation: old,
            how: "exit code 1".into(),
            stderr: Vec::new(),
        });
        assert!(late.is_empty(), "{late:?}");
        assert!(team.team.agents[0].running);
    }

    #[test]
    fn recycling_at_the_threshold_asks_for_a_handoff_then_starts_fresh() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        team.context(0, 800);
        let asked = team.turn_end(0, 0.5);
        let sent = sends(&asked);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.contains("800 of 1000"), "{}", sent[0].1);
        assert!(kinds(&asked).contains(&"agent.handoff_requested"));
        assert!(team.team.agents[0].is_busy(), "the handoff is a turn");
        let handed_off = team.turn_end(0, 0.6);
        assert_eq!(stops(&handed_off), [(0, IDLE_GRACE)]);
        assert_eq!(team.team.agents[0].stopping, Some(StopReason::Recycle));
        let recycled = team.exit(0, "exit code 0");
        assert!(kinds(&recycled).contains(&"agent.recycled"));
        let fresh = spawns(&recycled);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].1, None, "a fresh session");
        assert!(fresh[0].2.contains("handoff"), "{}", fresh[0].2);
        let agent = &team.team.agents[0];
        assert_eq!(agent.context_tokens, None);
        assert!(close(agent.cost(), 0.6), "the old session's cost is kept");
    }

    #[test]
    fn a_spent_budget_stops_the_agent_at_the_end_of_its_turn() {
        let mut team = Harness::new(vec![with_budget(plan("a"), 1.0)]);
        team.start_all();
        team.init(0, "s1");
        let over = team.turn_end(0, 1.2);
        assert_eq!(stops(&over), [(0, IDLE_GRACE)]);
        let budget = records(&over);
        let exceeded = budget
            .iter()
            .find(|(kind, _)| *kind == "agent.budget_exceeded")
            .expect("an alert");
        assert_eq!(exceeded.1["alert"], true);
        let exited = team.exit(0, "exit code 0");
        assert_eq!(statuses(&exited), [AgentStatus::Stopped]);
        assert_eq!(team.team.agents[0].phase, Phase::Stopped);
        assert!(spawns(&team.at(100).tick()).is_empty());
    }

    #[test]
    fn a_budget_spent_in_the_middle_of_a_turn_interrupts_it() {
        let mut team = Harness::new(vec![with_budget(plan("a"), 1.0)]);
        team.start_all();
        team.init(0, "s1");
        let under = team.line(0, StreamUpdate::Cost { total_usd: 0.5 });
        assert!(stops(&under).is_empty());
        assert_eq!(patched_cost(&under), Some(0.5));
        let over = team.line(0, StreamUpdate::Cost { total_usd: 1.5 });
        assert_eq!(stops(&over), [(0, INTERRUPT_GRACE)]);
        assert!(kinds(&over).contains(&"agent.budget_exceeded"));
        // The interrupted turn's end says nothing more about the budget.
        let ended = team.turn_end(0, 1.6);
        assert!(stops(&ended).is_empty());
        assert!(!kinds(&ended).contains(&"agent.budget_exceeded"));
        team.exit(0, "signal 2");
        assert_eq!(team.team.agents[0].phase, Phase::Stopped);
    }

    #[test]
    fn a_turn_interrupted_for_the_budget_ending_in_an_error_is_not_a_turn_error() {
        let mut team = Harness::new(vec![with_budget(plan("a"), 1.0)]);
        team.start_all();
        team.init(0, "s1");
        team.line(0, StreamUpdate::Cost { total_usd: 1.5 });
        let interrupted = team.line(
            0,
            StreamUpdate::Result {
                cost_usd: Some(1.6),
                context_window: None,
                is_error: true,
                session_id: Some("s1".into()),
                num_turns: Some(1),
                text: None,
                output_tokens: None,
            },
        );
        assert!(alerts(&interrupted).is_empty(), "{interrupted:?}");
        assert!(
            team.team.agents[0]
                .trouble
                .as_deref()
                .is_some_and(|why| !why.contains("last turn failed")),
            "{:?}",
            team.team.agents[0].trouble
        );
    }

    #[test]
    fn a_pause_during_a_turn_holds_every_wake_until_resume() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        let paused = team.control("a", "pause");
        assert_eq!(statuses(&paused), [AgentStatus::Paused]);
        let ended = team.turn_end(0, 0.1);
        assert_eq!(statuses(&ended), [AgentStatus::Paused]);
        assert_eq!(reads(&ended), None, "a paused agent is not woken");
        let message = team.message("M-1", "bob", &["a"], "hello");
        assert_eq!(reads(&message), None);
        let resumed = team.control("a", "resume");
        assert_eq!(statuses(&resumed), [AgentStatus::Idle]);
        assert_eq!(reads(&resumed), Some(true));
        let woken = team.read(Vec::new(), &[("a", "M-1")]);
        let sent = sends(&woken);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.contains("hello"), "{}", sent[0].1);
    }

    #[test]
    fn a_stop_wins_over_a_recycle_still_to_come() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        team.context(0, 900);
        team.turn_end(0, 0.1);
        assert!(team.team.agents[0].asked_for_handoff);
        let stopped = team.control("a", "stop");
        assert_eq!(stops(&stopped), [(0, IDLE_GRACE)]);
        let ended = team.turn_end(0, 0.2);
        assert!(stops(&ended).is_empty(), "no recycle: {ended:?}");
        let exited = team.exit(0, "exit code 0");
        assert!(spawns(&exited).is_empty());
        assert_eq!(team.team.agents[0].phase, Phase::Stopped);
    }

    #[test]
    fn a_stop_wins_over_a_recycle_under_way() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        team.context(0, 900);
        team.turn_end(0, 0.1);
        team.turn_end(0, 0.2);
        assert_eq!(team.team.agents[0].stopping, Some(StopReason::Recycle));
        team.control("a", "stop");
        assert_eq!(team.team.agents[0].stopping, Some(StopReason::Stop));
        let exited = team.exit(0, "exit code 0");
        assert!(spawns(&exited).is_empty(), "not recycled");
        assert_eq!(statuses(&exited), [AgentStatus::Stopped]);
    }

    #[test]
    fn a_stop_wins_over_budget_and_hibernation() {
        let mut team = Harness::new(vec![with_budget(plan("a"), 1.0)]);
        team.start_all();
        team.init(0, "s1");
        team.control("a", "stop");
        let over = team.turn_end(0, 5.0);
        assert!(stops(&over).is_empty(), "{over:?}");
        assert!(!kinds(&over).contains(&"agent.budget_exceeded"));
        let idle = team.at(HIBERNATE_AFTER.as_secs() + 10).tick();
        assert!(stops(&idle).is_empty(), "no hibernation: {idle:?}");
        assert_eq!(team.team.agents[0].stopping, Some(StopReason::Stop));
    }

    #[test]
    fn an_idle_agent_hibernates_and_a_message_wakes_its_session() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.at(5).idle_after_a_turn(0, 0.1);
        assert!(stops(&team.at(5 + HIBERNATE_AFTER.as_secs() - 1).tick()).is_empty());
        let hibernating = team.at(5 + HIBERNATE_AFTER.as_secs()).tick();
        assert_eq!(stops(&hibernating), [(0, IDLE_GRACE)]);
        let exited = team.exit(0, "exit code 0");
        assert_eq!(statuses(&exited), [AgentStatus::Hibernated]);
        assert_eq!(team.team.agents[0].phase, Phase::Hibernated);
        let arrived = team.message("M-7", "bob", &["a"], "the parser is done");
        assert_eq!(reads(&arrived), Some(true));
        let woken = team.read(Vec::new(), &[("a", "M-7")]);
        assert!(kinds(&woken).contains(&"agent.woken"));
        let resumed = spawns(&woken);
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].1.as_deref(), Some("s1"), "resumes its session");
        assert!(
            resumed[0].2.contains("the parser is done"),
            "{}",
            resumed[0].2
        );
    }

    #[test]
    fn a_fitting_task_wakes_a_hibernated_agent() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.at(HIBERNATE_AFTER.as_secs()).tick();
        team.exit(0, "exit code 0");
        let created = team.task_event("task.created", 4);
        assert_eq!(reads(&created), Some(false), "no messages to check");
        let woken = team.read(vec![task(4, TaskStatus::Ready, None, None)], &[]);
        let resumed = spawns(&woken);
        assert_eq!(resumed[0].1.as_deref(), Some("s1"));
        assert!(resumed[0].2.contains("T-4"), "{}", resumed[0].2);
    }

    #[test]
    fn a_restarted_supervisor_resumes_the_saved_session_and_counts_cost_on() {
        let record: Agent = serde_json::from_value(json!({
            "name": "a", "role": null, "model": null, "caps": [], "status": "idle",
            "session_id": "s1", "pid": null, "host": null, "last_seen": null,
            "context_tokens": 100, "context_window": 1000, "cost_usd": 3.0, "restarts": 1,
            "created_at": "2030-01-01T00:00:00Z",
        }))
        .expect("an agent record");
        let saved = SavedState {
            session_id: Some("s1".into()),
            session_cost: 1.0,
        };
        let agent = AgentState::restore(plan("a"), &record, saved.clone(), Instant::now());
        assert!(close(agent.cost(), 3.0));
        let mut team = Harness::restored(agent);
        let started = team.tick();
        let resumed = spawns(&started);
        assert_eq!(resumed[0].1.as_deref(), Some("s1"));
        assert!(
            resumed[0].2.contains("supervisor was restarted"),
            "{}",
            resumed[0].2
        );
        team.answer_spawns(&started);
        // The resumed process carries the session's total on: 1.0 of it was counted already.
        let ended = team.turn_end(0, 1.5);
        assert_eq!(patched_cost(&ended), Some(3.5));

        // A resumed process that counts from zero adds to what the session cost before.
        let agent = AgentState::restore(plan("a"), &record, saved, Instant::now());
        let mut team = Harness::restored(agent);
        team.start_all();
        let ended = team.turn_end(0, 0.2);
        assert!(close(patched_cost(&ended).unwrap_or(0.0), 3.2));

        // A saved state of another session is not counted twice.
        let other = SavedState {
            session_id: Some("s0".into()),
            session_cost: 1.0,
        };
        let agent = AgentState::restore(plan("a"), &record, other, Instant::now());
        assert!(close(agent.cost_base, 3.0) && close(agent.session_cost, 0.0));
    }

    #[test]
    fn an_agent_stopped_for_its_budget_stays_stopped_after_a_supervisor_restart() {
        let record: Agent = serde_json::from_value(json!({
            "name": "a", "role": null, "model": null, "caps": [], "status": "stopped",
            "session_id": "s1", "pid": null, "host": null, "last_seen": null,
            "context_tokens": null, "context_window": null, "cost_usd": 2.0, "restarts": 0,
            "created_at": "2030-01-01T00:00:00Z",
        }))
        .expect("an agent record");
        let agent = AgentState::restore(
            with_budget(plan("a"), 1.0),
            &record,
            SavedState::default(),
            Instant::now(),
        );
        let mut team = Harness::restored(agent);
        assert!(spawns(&team.tick()).is_empty());
        assert_eq!(team.team.agents[0].phase, Phase::Stopped);
    }

    #[test]
    fn control_requests_pause_resume_stop_and_restart() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        // Restart of a running agent: its process ends, then its session resumes.
        let restart = team.control("a", "restart");
        assert_eq!(stops(&restart), [(0, IDLE_GRACE)]);
        assert_eq!(records(&restart)[0].1["asked"], true);
        let back = team.exit(0, "exit code 0");
        assert_eq!(spawns(&back)[0].1.as_deref(), Some("s1"));
        // Stop, then resume: it starts again, resuming.
        team.control("a", "stop");
        team.exit(0, "exit code 0");
        assert_eq!(team.team.agents[0].phase, Phase::Stopped);
        let resumed = team.control("a", "resume");
        assert_eq!(statuses(&resumed), [AgentStatus::Starting]);
        let started = team.at(50).tick();
        assert_eq!(spawns(&started)[0].1.as_deref(), Some("s1"));
        team.answer_spawns(&started);
        // Stop of an agent with no process (hibernated) needs no process to end.
        team.at(60).idle_after_a_turn(0, 0.2);
        team.at(60 + HIBERNATE_AFTER.as_secs()).tick();
        team.exit(0, "exit code 0");
        let stopped = team.control("a", "stop");
        assert!(stops(&stopped).is_empty());
        assert_eq!(statuses(&stopped), [AgentStatus::Stopped]);
        // Restart of a stopped agent starts it at once.
        let restarted = team.control("a", "restart");
        assert_eq!(spawns(&restarted).len(), 1);
    }

    #[test]
    fn only_unread_messages_wake_and_handoffs_never_do() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.message("M-1", "bob", &["a"], "already read");
        let woken = team.read(Vec::new(), &[]);
        assert!(sends(&woken).is_empty(), "read already: {woken:?}");
        let own = team.message("M-2", "a", &["a"], "to myself");
        assert_eq!(reads(&own), None, "its own message");
        let handoff = team.event(json!({
            "seq": 4, "ts": "2030-01-01T00:00:00Z", "actor": "bob",
            "kind": "message.sent", "task": null, "agent": null,
            "data": {"id": "M-3", "to": "a", "recipients": ["a"], "thread": "t",
                     "kind": "handoff", "urgent": false, "body": "h"},
        }));
        assert_eq!(reads(&handoff), None);
    }

    #[test]
    fn only_fitting_tasks_not_offered_before_wake() {
        let mut coder = plan("a");
        coder.role = Some("coder".into());
        let mut team = Harness::new(vec![coder]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        let tasks = vec![
            task(1, TaskStatus::Ready, Some("coder"), None),
            task(2, TaskStatus::Ready, Some("reviewer"), None),
            task(3, TaskStatus::Ready, Some("coder"), Some("bob")),
            task(4, TaskStatus::Pending, None, None),
        ];
        team.task_event("task.created", 1);
        let woken = team.read(tasks.clone(), &[]);
        let sent = sends(&woken);
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.contains("T-1"), "{}", sent[0].1);
        for other in ["T-2", "T-3", "T-4"] {
            assert!(!sent[0].1.contains(other), "{other} offered: {}", sent[0].1);
        }
        // Offered once: not again, until it is ready anew.
        team.turn_end(0, 0.2);
        assert!(sends(&team.read(tasks.clone(), &[])).is_empty());
        let again = team.task_event("task.ready", 1);
        assert_eq!(reads(&again), Some(false));
        assert_eq!(sends(&team.read(tasks, &[])).len(), 1);
    }

    #[test]
    fn an_agent_holding_a_task_is_offered_no_other() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.task_event("task.created", 2);
        let tasks = vec![
            task(1, TaskStatus::InProgress, None, Some("a")),
            task(2, TaskStatus::Ready, None, None),
        ];
        assert!(sends(&team.read(tasks, &[])).is_empty());
    }

    #[test]
    fn a_reservation_blocked_by_a_failed_dependency_is_not_held() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.task_event("task.created", 2);
        let mut blocked = task(1, TaskStatus::Blocked, None, Some("a"));
        blocked.blocked_reason = Some("T-0 failed".into());
        let tasks = vec![blocked, task(2, TaskStatus::Ready, None, None)];
        let sent = sends(&team.read(tasks, &[]));
        assert_eq!(sent.len(), 1);
        assert!(sent[0].1.contains("T-2"), "{}", sent[0].1);
    }

    #[test]
    fn a_task_offered_to_a_busy_agent_is_not_offered_to_another() {
        let mut team = Harness::new(vec![plan("a"), plan("b")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.task_event("task.created", 1);
        let tasks = vec![task(1, TaskStatus::Ready, None, None)];
        let first = team.read(tasks.clone(), &[]);
        assert_eq!(sends(&first).first().map(|s| s.0), Some(0));
        team.idle_after_a_turn(1, 0.1);
        assert!(sends(&team.read(tasks, &[])).is_empty(), "a is on it");
    }

    impl Harness {
        /// Ticks until the quiet team asks for its tasks (from `secs` on), answers with
        /// `tasks`, and returns the outcome given, if any.
        fn quiet_outcome(&mut self, secs: u64, tasks: Vec<Task>) -> Option<Outcome> {
            let mut asked = false;
            for n in 0..QUIET_TICKS_TO_FINISH {
                let effects = self.at(secs + u64::from(n)).tick();
                assert!(ended(&effects).is_none(), "no outcome before the read");
                asked = reads(&effects) == Some(false);
            }
            assert!(asked, "the last quiet tick reads the team");
            ended(&self.read(tasks, &[]))
        }
    }

    #[test]
    fn a_running_loop_keeps_the_team_from_deciding_and_a_loop_that_never_ran_fails_it() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.read(Vec::new(), &[]);
        team.team.loops.running = 1;
        assert!(
            (0..10).all(|n| reads(&team.at(11 + n).tick()).is_none()),
            "no outcome while a loop runs"
        );
        team.team.loops.running = 0;
        team.team.loops.ended.push(LoopEnded {
            name: "fixer".into(),
            could_not_run: None,
            summary: "fixer: no task is left for it".into(),
        });
        let done = vec![task(1, TaskStatus::Done, None, None)];
        assert_eq!(team.quiet_outcome(30, done), Some(Outcome::Finished));
        assert!(
            team.team
                .summaries()
                .contains(&"fixer: no task is left for it".to_string())
        );

        // A team of one loop that could not start: failed, naming why.
        let mut lonely = Harness::new(Vec::new());
        lonely.team.loops.ended.push(LoopEnded {
            name: "fixer".into(),
            could_not_run: Some("cannot start claude".into()),
            summary: String::new(),
        });
        let Some(Outcome::Failed { reason }) =
            lonely.quiet_outcome(1, vec![task(1, TaskStatus::Ready, None, None)])
        else {
            panic!("a team whose only loop never ran has failed");
        };
        assert!(reason.contains("fixer: cannot start claude"), "{reason}");
    }

    #[test]
    fn a_quiet_team_finishes_unless_it_stays() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        assert!(ended(&team.at(10).tick()).is_none(), "busy");
        team.idle_after_a_turn(0, 0.1);
        // The turn's end asks about the team; nothing is there.
        team.read(Vec::new(), &[]);
        let done = vec![
            task(1, TaskStatus::Done, None, None),
            task(2, TaskStatus::Cancelled, None, None),
        ];
        assert_eq!(team.quiet_outcome(11, done), Some(Outcome::Finished));

        let mut staying = Harness::of(vec![plan("a")], true);
        staying.start_all();
        staying.idle_after_a_turn(0, 0.1);
        staying.read(Vec::new(), &[]);
        assert!((0..10).all(|n| {
            let effects = staying.at(11 + n).tick();
            ended(&effects).is_none() && reads(&effects).is_none()
        }));
    }

    #[test]
    fn one_hosts_share_waits_while_an_agent_on_another_host_holds_a_task() {
        let held = vec![
            task(3, TaskStatus::InProgress, None, Some("far-away")),
            task(4, TaskStatus::Claimed, None, Some("far-away")),
        ];
        let mut share = Harness::new(vec![plan("a")]);
        share.team = std::mem::replace(&mut share.team, Team::new(Vec::new(), false)).sharing();
        share.start_all();
        share.idle_after_a_turn(0, 0.1);
        share.read(Vec::new(), &[]);
        assert_eq!(share.quiet_outcome(11, held.clone()), None, "it waits");

        let mut whole = Harness::new(vec![plan("a")]);
        whole.start_all();
        whole.idle_after_a_turn(0, 0.1);
        whole.read(Vec::new(), &[]);
        assert!(
            matches!(whole.quiet_outcome(11, held), Some(Outcome::Stalled { .. })),
            "a whole team with nobody to finish the task has stalled"
        );
    }

    #[test]
    fn a_quiet_team_with_a_task_nobody_fits_has_stalled_naming_it() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.read(Vec::new(), &[]);
        let left = vec![
            task(1, TaskStatus::Done, None, None),
            task(7, TaskStatus::Ready, Some("reviewer"), None),
        ];
        let Some(Outcome::Stalled { reason }) = team.quiet_outcome(11, left) else {
            panic!("stalled");
        };
        assert!(
            reason.contains("T-7") && reason.contains("nobody fits") && reason.contains("reviewer"),
            "{reason}"
        );
    }

    #[test]
    fn a_task_held_by_a_crashed_agent_stalls_the_team_saying_so() {
        let mut team = Harness::new(vec![plan("a"), plan("b")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        // b crashes until it is given up on.
        for n in 0..=2 {
            team.at(10 + n * 40).exit(1, "exit code 1");
            let restarted = team.at(10 + n * 40 + 35).tick();
            team.answer_spawns(&restarted);
        }
        assert_eq!(team.team.agents[1].phase, Phase::Crashed);
        let held = vec![task(3, TaskStatus::InProgress, None, Some("b"))];
        // Every read of the team (a wake's, the outcome's) answered with the held task.
        let mut outcome = None;
        for secs in 190..200 {
            let effects = team.at(secs).tick();
            if reads(&effects).is_some() {
                outcome = ended(&team.read(held.clone(), &[]));
            }
            if outcome.is_some() {
                break;
            }
        }
        let Some(Outcome::Stalled { reason }) = outcome else {
            panic!("stalled");
        };
        assert!(
            reason.contains("T-3") && reason.contains("held by b, crashed"),
            "{reason}"
        );
        assert!(team.team.summaries()[1].starts_with("b: crashed"));
    }

    #[test]
    fn a_team_waiting_for_a_review_is_not_stalled_and_says_what_it_waits_for() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.read(Vec::new(), &[]);
        let waiting = vec![task(4, TaskStatus::Review, None, Some("a"))];
        assert_eq!(team.quiet_outcome(11, waiting.clone()), None);
        // Said once, not on every decision.
        let again = team.at(30).tick();
        assert!(ended(&again).is_none());
        for n in 0..QUIET_TICKS_TO_FINISH {
            team.at(40 + u64::from(n)).tick();
        }
        let second = team.read(waiting, &[]);
        assert!(ended(&second).is_none());
        assert!(
            !second.iter().any(|e| matches!(e, Effect::Say(_))),
            "{second:?}"
        );
    }

    #[test]
    fn a_paused_merge_queue_with_entries_waits_for_a_person_and_a_failed_task_stalls() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.idle_after_a_turn(0, 0.1);
        team.read(Vec::new(), &[]);
        let queued = task(5, TaskStatus::Review, None, Some("a"));
        let entry = |state| conclave_core::model::QueueEntry {
            task: TaskId(5),
            branch: "conclave/a/T-5".into(),
            agent: "a".into(),
            position: 1,
            state,
            attempts: 0,
            outcome: None,
            enqueued_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let view = |paused| TeamView {
            tasks: vec![queued.clone()],
            queue: Some(QueueView {
                paused,
                paused_reason: None,
                entries: vec![entry(QueueState::Queued)],
            }),
            ..TeamView::default()
        };
        for n in 0..QUIET_TICKS_TO_FINISH {
            team.at(11 + u64::from(n)).tick();
        }
        let effects = team.step(Input::TeamRead(view(true)));
        assert!(ended(&effects).is_none(), "not stalled: {effects:?}");
        let said: Vec<&String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Say(text) => Some(text),
                _ => None,
            })
            .collect();
        assert!(
            said.iter().any(|text| text.contains("waiting for a person")
                && text.contains("paused merge queue")
                && text.contains("T-5")),
            "{said:?}"
        );
        let landing = waiting_text(&[&queued], Some(&view(false).queue.expect("queue")));
        assert!(
            landing.contains("waiting for the merge queue to land T-5")
                && !landing.contains("waiting for a person"),
            "{landing}"
        );

        let mut failing = Harness::new(vec![plan("a")]);
        failing.start_all();
        failing.idle_after_a_turn(0, 0.1);
        failing.read(Vec::new(), &[]);
        let mut failed = task(6, TaskStatus::Failed, None, None);
        failed.result = Some("the tests do not build".into());
        let Some(Outcome::Stalled { reason }) = failing.quiet_outcome(11, vec![failed]) else {
            panic!("a failed task is work left: stalled");
        };
        assert!(
            reason.contains("T-6") && reason.contains("failed: the tests do not build"),
            "{reason}"
        );
    }

    #[test]
    fn a_refused_login_alerts_at_once_and_fails_the_team() {
        let mut team = Harness::new(vec![plan("a"), plan("b")]);
        team.start_all();
        team.init(0, "s1");
        let refused = team.line(
            0,
            StreamUpdate::ApiRetry {
                status: Some(401),
                error: Some("authentication_failed".into()),
                attempt: Some(1),
                max_retries: Some(10),
                retry_in_ms: Some(500),
            },
        );
        let said = alerts(&refused);
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].0, "authentication");
        assert!(said[0].1.contains(LOGIN_FIX), "{said:?}");
        let Some(Outcome::Failed { reason }) = ended(&refused) else {
            panic!("failed: {refused:?}");
        };
        assert!(reason.contains("authentication failed"), "{reason}");
        // The outcome is given once.
        let second = team.line(
            1,
            StreamUpdate::ApiRetry {
                status: Some(401),
                error: None,
                attempt: Some(1),
                max_retries: None,
                retry_in_ms: None,
            },
        );
        assert!(ended(&second).is_none());
    }

    #[test]
    fn not_logged_in_as_an_error_result_fails_the_team() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        let effects = team.line(
            0,
            StreamUpdate::Result {
                cost_usd: Some(0.0),
                context_window: None,
                is_error: true,
                session_id: Some("s1".into()),
                num_turns: Some(1),
                text: Some("Not logged in · Please run /login".into()),
                output_tokens: None,
            },
        );
        assert_eq!(alerts(&effects)[0].0, "authentication");
        assert!(matches!(ended(&effects), Some(Outcome::Failed { .. })));
    }

    #[test]
    fn any_other_error_result_is_alerted_and_the_team_goes_on() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        let effects = team.line(
            0,
            StreamUpdate::Result {
                cost_usd: Some(0.1),
                context_window: None,
                is_error: true,
                session_id: Some("s1".into()),
                num_turns: Some(1),
                text: Some("API Error: 500 internal".into()),
                output_tokens: None,
            },
        );
        let said = alerts(&effects);
        assert_eq!(said[0].0, "turn_error");
        assert!(said[0].1.contains("API Error: 500"), "{said:?}");
        assert!(ended(&effects).is_none());
        assert_eq!(team.team.agents[0].phase, Phase::Live { busy: false });
    }

    #[test]
    fn rate_limits_are_alerted_once_per_turn_with_the_retry_and_do_not_stop() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        let retry = |attempt| StreamUpdate::ApiRetry {
            status: Some(429),
            error: Some("rate_limit".into()),
            attempt: Some(attempt),
            max_retries: Some(10),
            retry_in_ms: Some(1500),
        };
        let first = team.line(0, retry(1));
        let said = alerts(&first);
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].0, "rate_limit");
        assert!(said[0].1.contains("retry 1 of 10 in 1.5 s"), "{said:?}");
        assert!(
            first
                .iter()
                .any(|e| matches!(e, Effect::Say(t) if t.contains("ALERT")))
        );
        assert!(alerts(&team.line(0, retry(2))).is_empty(), "once per turn");
        assert!(ended(&first).is_none() && stops(&first).is_empty());
    }

    #[test]
    fn a_client_that_refuses_its_flags_is_quoted_and_the_team_fails() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        let generation = team.generation(0);
        let refused = team.step(Input::Exited {
            agent: 0,
            generation,
            how: "exit code 1".into(),
            stderr: vec![
                "error: option '--permission-mode <mode>' argument 'bogus' is invalid.".into(),
            ],
        });
        let said = alerts(&refused);
        assert_eq!(said[0].0, "refused");
        assert!(
            said[0].1.contains("argument 'bogus' is invalid"),
            "{said:?}"
        );
        assert!(spawns(&refused).is_empty(), "not restarted");
        assert_eq!(team.team.agents[0].phase, Phase::Crashed);
        let Some(Outcome::Failed { reason }) = team.quiet_outcome(10, Vec::new()) else {
            panic!("failed");
        };
        assert!(reason.contains("'bogus' is invalid"), "{reason}");
    }

    #[test]
    fn a_crash_loop_is_alerted_quoting_the_last_stderr_lines() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        let mut last = Vec::new();
        for n in 0..=2 {
            team.init(0, "s1");
            let generation = team.generation(0);
            last = team.at(10 + n * 40).step(Input::Exited {
                agent: 0,
                generation,
                how: "signal 11".into(),
                stderr: vec!["one".into(), "segfault here".into()],
            });
            let restarted = team.at(10 + n * 40 + 35).tick();
            team.answer_spawns(&restarted);
        }
        let said = alerts(&last);
        assert_eq!(said.len(), 1, "{last:?}");
        assert_eq!(said[0].0, "crash_loop");
        assert!(said[0].1.contains("one | segfault here"), "{said:?}");
    }

    fn call(id: &str, input: i64) -> StreamUpdate {
        StreamUpdate::Assistant {
            context_tokens: Some(input),
            content: Vec::new(),
            call: Some(ModelCall {
                id: Some(id.to_string()),
                model: Some("claude-sonnet-4-5".to_string()),
                usage: pricing::Usage {
                    input,
                    ..pricing::Usage::default()
                },
            }),
        }
    }

    #[test]
    fn cost_grows_during_a_turn_reported_at_most_every_two_seconds_then_reconciled() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        // 100k input tokens of sonnet: $0.30.
        let first = team.at(10).line(0, call("m1", 100_000));
        assert!(
            patched_cost(&first).is_some_and(|c| close(c, 0.3)),
            "{first:?}"
        );
        // The same call's next line repeats its usage: not counted twice.
        team.at(10).line(0, call("m1", 100_000));
        assert!(close(team.team.agents[0].live_cost(), 0.3));
        let soon = team.at(11).line(0, call("m2", 100_000));
        assert!(patched_cost(&soon).is_none(), "throttled: {soon:?}");
        let later = team.at(13).line(0, call("m3", 100_000));
        assert!(
            patched_cost(&later).is_some_and(|c| close(c, 0.9)),
            "{later:?}"
        );
        // The client's total at the turn's end is the truth.
        let end = team.turn_end(0, 0.85);
        assert!(
            patched_cost(&end).is_some_and(|c| close(c, 0.85)),
            "{end:?}"
        );
        assert!(close(team.team.agents[0].turn_estimate, 0.0));
    }

    #[test]
    fn a_budget_is_enforced_in_the_middle_of_a_turn_from_priced_calls() {
        let mut team = Harness::new(vec![with_budget(plan("a"), 0.5)]);
        team.start_all();
        team.init(0, "s1");
        assert!(stops(&team.at(10).line(0, call("m1", 100_000))).is_empty());
        let over = team.at(11).line(0, call("m2", 100_000));
        assert_eq!(stops(&over), [(0, INTERRUPT_GRACE)], "{over:?}");
        assert!(patched_cost(&over).is_some_and(|c| close(c, 0.6)));
        assert!(
            records(&over)
                .iter()
                .any(|(kind, _)| *kind == "agent.budget_exceeded")
        );
    }

    #[test]
    fn the_team_budget_stops_every_agent_with_an_alert() {
        let mut with_team_budget = plan("a");
        with_team_budget.settings.team_budget_usd = Some(1.0);
        let mut other = plan("b");
        other.settings.team_budget_usd = Some(1.0);
        let mut team = Harness::new(vec![with_team_budget, other]);
        team.start_all();
        team.idle_after_a_turn(1, 0.6);
        team.init(0, "s1");
        assert!(alerts(&team.at(10).line(0, call("m1", 100_000))).is_empty());
        // 0.6 + 0.3 + 0.3 passes $1.
        let over = team.at(11).line(0, call("m2", 100_000));
        let said = alerts(&over);
        assert_eq!(said.len(), 1, "{over:?}");
        assert_eq!(said[0].0, "team_budget");
        let mut stopped: Vec<usize> = stops(&over).iter().map(|(agent, _)| *agent).collect();
        stopped.sort_unstable();
        assert_eq!(stopped, [0, 1]);
        assert!(
            alerts(&team.at(12).line(0, call("m3", 100_000))).is_empty(),
            "once"
        );
    }

    fn loop_spent(name: &str, cost_usd: f64) -> Input {
        Input::LoopSpent {
            name: name.to_string(),
            cost_usd,
        }
    }

    #[test]
    fn a_loops_iterations_count_against_the_team_budget_and_stop_everyone_with_the_loops() {
        let mut with_team_budget = plan("a");
        with_team_budget.settings.team_budget_usd = Some(1.0);
        let mut team = Harness::new(vec![with_team_budget]);
        team.team.loops.running = 1;
        team.start_all();
        team.idle_after_a_turn(0, 0.5);
        // The loop's total so far: 0.3 (reported again, not added twice), then 0.45.
        let under = team.step(loop_spent("fixer", 0.3));
        let under_again = team.step(loop_spent("fixer", 0.45));
        assert!(alerts(&under).is_empty() && alerts(&under_again).is_empty());
        assert!(!under_again.iter().any(|e| matches!(e, Effect::StopLoops)));
        assert!(
            close(team.team.team_cost(), 0.95),
            "{}",
            team.team.team_cost()
        );
        // 0.5 + 0.55 passes $1: the alert is about the loop, the agent and the loops stop.
        let over = team.step(loop_spent("fixer", 0.55));
        let about_the_loop: Vec<&str> = over
            .iter()
            .filter_map(|effect| match effect {
                Effect::RecordAbout {
                    name,
                    payload: EventPayload::AgentAlert(alert),
                } if alert.cause == "team_budget" => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(about_the_loop, ["fixer"], "{over:?}");
        assert!(
            over.iter().any(|e| matches!(e, Effect::StopLoops)),
            "{over:?}"
        );
        let stopped: Vec<usize> = stops(&over).iter().map(|(agent, _)| *agent).collect();
        assert_eq!(stopped, [0], "{over:?}");
        let again = team.step(loop_spent("fixer", 0.7));
        assert!(
            !again
                .iter()
                .any(|e| matches!(e, Effect::StopLoops | Effect::RecordAbout { .. })),
            "said once: {again:?}"
        );
    }

    #[test]
    fn an_agent_over_the_team_budget_with_the_loops_spend_stops_the_loops_too() {
        let mut with_team_budget = plan("a");
        with_team_budget.settings.team_budget_usd = Some(1.0);
        let mut team = Harness::new(vec![with_team_budget]);
        team.team.loops.running = 2;
        team.start_all();
        assert!(alerts(&team.step(loop_spent("fixer-1", 0.4))).is_empty());
        assert!(alerts(&team.step(loop_spent("fixer-2", 0.4))).is_empty());
        team.init(0, "s1");
        // 0.8 from the loops and 0.3 from this call pass $1.
        let over = team.at(10).line(0, call("m1", 100_000));
        assert_eq!(alerts(&over).len(), 1, "{over:?}");
        assert!(
            over.iter().any(|e| matches!(e, Effect::StopLoops)),
            "{over:?}"
        );
    }

    #[test]
    fn a_team_of_loops_alone_has_a_team_budget_too() {
        let mut team = Harness::new(Vec::new());
        team.team.loops.running = 1;
        team.team.loops.team_budget_usd = Some(0.5);
        assert!(
            team.step(loop_spent("fixer", 0.2))
                .iter()
                .all(|e| !matches!(e, Effect::StopLoops))
        );
        let over = team.step(loop_spent("fixer", 0.5));
        assert!(
            over.iter().any(|e| matches!(e, Effect::StopLoops)),
            "{over:?}"
        );
        assert!(
            over.iter()
                .any(|e| matches!(e, Effect::Say(text) if text.contains("ALERT (team_budget)"))),
            "{over:?}"
        );
    }

    /// A scripted session whose sizes are known, through the machine: the account reported at
    /// the turn's end holds each part once per call that carried it.
    #[test]
    fn the_turn_end_reports_the_coordination_account_of_a_known_session() {
        let mut team = Harness::new(vec![plan("a")]);
        team.team.agents[0].set_tool_definition_chars(4000);
        let first_message_chars = {
            let effects = team.at(0).tick();
            let spawned = team.answer_spawns(&effects);
            assert!(spawned.iter().all(|e| !matches!(e, Effect::Spawn { .. })));
            spawns(&effects)
                .first()
                .map(|(_, _, message)| message.chars().count())
                .expect("a spawn")
        };
        team.init(0, "s1");
        // Call 1 asks for a Conclave tool (28 + 12 characters) and a Write (not coordination).
        team.line(
            0,
            StreamUpdate::Assistant {
                context_tokens: Some(10_000),
                content: vec![
                    Content::Tool(crate::stream::ToolCall {
                        id: "t1".into(),
                        name: "mcp__conclave__claim".into(),
                        input: "{}".into(),
                        chars: 40,
                    }),
                    Content::Tool(crate::stream::ToolCall {
                        id: "t2".into(),
                        name: "Write".into(),
                        input: "a.rs".into(),
                        chars: 4000,
                    }),
                ],
                call: call_usage("m1", 10_000),
            },
        );
        // Its result: 360 bytes; the Write's result is not coordination.
        team.line(
            0,
            StreamUpdate::ToolResults(vec![
                ToolResult {
                    id: "t1".into(),
                    bytes: 360,
                    is_error: false,
                    error: None,
                },
                ToolResult {
                    id: "t2".into(),
                    bytes: 8000,
                    is_error: false,
                    error: None,
                },
            ]),
        );
        team.line(0, call("m2", 12_000));
        // The SessionStart hook injected 800 characters, learnt after both calls.
        let started = Event {
            seq: 1,
            ts: chrono::Utc::now(),
            actor: "a".into(),
            task: None,
            agent: Some("a".into()),
            payload: EventPayload::AgentSessionStart(conclave_core::event::AgentSessionStart {
                source: Some("startup".into()),
                session_id: Some("s1".into()),
                context_chars: Some(800),
            }),
        };
        team.step(Input::Event(started));
        let effects = team.turn_end(0, 0.1);
        let account = effects
            .iter()
            .find_map(|effect| match effect {
                Effect::Patch { update, .. } => update.coordination.clone(),
                _ => None,
            })
            .expect("the turn end reports the account");
        let per_call = crate::coordination::estimate_tokens(4000 + PROTOCOL.chars().count());
        let first_message = crate::coordination::estimate_tokens(first_message_chars);
        assert_eq!(account.model_calls, 2);
        assert_eq!(account.input_tokens, 22_000);
        assert_eq!(account.definitions_tokens, 2 * per_call);
        assert_eq!(
            account.tool_tokens, 100,
            "400 characters, in the second call only"
        );
        assert_eq!(account.injected_tokens, 2 * first_message + 2 * 200);
        assert_eq!(account.handoff_tokens, 0);
        assert_eq!(account.chars_per_token, 4.0);
    }

    fn call_usage(id: &str, input: i64) -> Option<ModelCall> {
        Some(ModelCall {
            id: Some(id.to_string()),
            model: Some("claude-sonnet-4-5".to_string()),
            usage: pricing::Usage {
                input,
                ..pricing::Usage::default()
            },
        })
    }

    #[test]
    fn a_model_not_in_the_rate_table_is_priced_at_turn_end_and_said_once() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        let unknown = StreamUpdate::Assistant {
            context_tokens: Some(10),
            content: Vec::new(),
            call: Some(ModelCall {
                id: Some("m1".into()),
                model: Some("mystery-1".into()),
                usage: pricing::Usage::default(),
            }),
        };
        let first = team.line(0, unknown.clone());
        assert!(
            first
                .iter()
                .any(|e| matches!(e, Effect::Say(text) if text.contains("priced at turn end")))
        );
        assert!(patched_cost(&first).is_none());
        let second = team.line(0, unknown);
        assert!(!second.iter().any(|e| matches!(e, Effect::Say(_))));
    }

    #[test]
    fn a_failed_tool_call_is_recorded_with_its_error_and_not_alerted() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        team.init(0, "s1");
        team.line(
            0,
            StreamUpdate::Assistant {
                context_tokens: Some(10),
                content: vec![Content::Tool(crate::stream::ToolCall {
                    id: "t1".into(),
                    name: "Write".into(),
                    input: "a.rs".into(),
                    chars: 20,
                })],
                call: None,
            },
        );
        let failed = team.line(
            0,
            StreamUpdate::ToolResults(vec![ToolResult {
                id: "t1".into(),
                bytes: 27,
                is_error: true,
                error: Some("File has not been read yet.".into()),
            }]),
        );
        assert_eq!(
            records(&failed),
            [(
                "agent.tool",
                json!({"tool": "Write", "input": "a.rs", "result_bytes": 27,
                       "is_error": true, "error": "File has not been read yet."})
            )]
        );
        assert!(alerts(&failed).is_empty());
    }

    #[test]
    fn a_shutdown_ends_every_process_and_starts_nothing() {
        let mut team = Harness::new(vec![plan("a"), plan("b")]);
        let started = team.tick();
        team.answer_spawns(&started);
        let stopping = team.step(Input::Shutdown);
        assert_eq!(stops(&stopping), [(0, SHUTDOWN_GRACE)]);
        assert!(spawns(&team.at(5).tick()).is_empty(), "b is not started");
        let exited = team.exit(0, "exit code 0");
        assert_eq!(kinds(&exited), ["agent.exited"]);
        let last = team.step(Input::ShutdownDeadline);
        assert_eq!(
            statuses(&last),
            [AgentStatus::Offline, AgentStatus::Offline]
        );
        assert!(!last.iter().any(|e| matches!(e, Effect::Kill { .. })));
    }

    #[test]
    fn tool_calls_and_text_are_recorded() {
        let mut team = Harness::new(vec![plan("a")]);
        team.start_all();
        let long = "x".repeat(MAX_TEXT * 2);
        let said = team.line(
            0,
            StreamUpdate::Assistant {
                context_tokens: Some(10),
                content: vec![
                    Content::Text(long),
                    Content::Tool(crate::stream::ToolCall {
                        id: "t1".into(),
                        name: "Write".into(),
                        input: "a.rs".into(),
                        chars: 20,
                    }),
                ],
                call: None,
            },
        );
        let text = &records(&said)[0];
        assert_eq!(text.0, "agent.text");
        assert_eq!(
            text.1["text"].as_str().map(|t| t.chars().count()),
            Some(MAX_TEXT)
        );
        let done = team.line(
            0,
            StreamUpdate::ToolResults(vec![ToolResult {
                id: "t1".into(),
                bytes: 12,
                is_error: false,
                error: None,
            }]),
        );
        assert_eq!(
            records(&done),
            [(
                "agent.tool",
                json!({"tool": "Write", "input": "a.rs", "result_bytes": 12})
            )]
        );
    }
}
