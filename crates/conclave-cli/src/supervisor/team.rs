//! The supervisor's one owning task: every agent's state lives here and changes only here, in
//! answer to what happens — a stdout line, a process exit, a server event, the clock, a signal.
//!
//! Per agent it reports status, pid, session id, context use, cost and restarts to the server
//! (`PATCH /api/agents/NAME`), and records what it saw and did as `agent.*` events
//! (`POST /api/events`). An idle agent is woken only when something arrives for it; nothing
//! prompts on a timer, so an idle team makes no model calls.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use conclave_core::config::Config;
use conclave_core::event::{
    AgentBudgetExceeded, AgentCrashed, AgentExit, AgentHandoffRequested, AgentRecycled,
    AgentRestarted, AgentStarted, AgentText, AgentTool, AgentTurn, AgentWoken, Topic,
};
use conclave_core::model::{
    AgentAction, AgentStatus, AgentUpdate, Event, EventPayload, MessageKind, MessageList, NewAgent,
    NewEvent, StatusReport, TaskId, TaskStatus,
};
use conclave_core::project::Project;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::plan::{self, AgentPlan};
use super::process::{self, Launch, ProcessReport, Running};
use super::stream::{StreamUpdate, parse_line};
use super::wake::{self, Quoted, Start};
use crate::client::{Client, segment};
use crate::commands::claude::{AgentFiles, JoinedAgent, prepare_agent};
use crate::context::{ENV_AGENT, ENV_TOKEN, ENV_URL};

/// Time between two agents' starts (many clients starting at once race on their config file).
const STAGGER: Duration = Duration::from_secs(1);
/// The clock of the supervisor: restarts due, hibernation, finishing.
const TICK: Duration = Duration::from_millis(500);
/// Quiet ticks in a row before a team with nothing to do is declared finished.
const QUIET_TICKS_TO_FINISH: u32 = 4;
/// Longest wait between crash restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Time an idle process gets to exit after its stdin closes before it is signalled.
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// The same when the whole team stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long the supervisor waits for its agents to end when stopping.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// How `conclave up` runs the team.
#[derive(Debug, Clone, Default)]
pub struct SupervisorOptions {
    /// Keep running when the team has nothing left to do.
    pub stay: bool,
}

/// Why the supervisor ended a process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Recycle,
    Hibernate,
    Budget,
    Stop,
    Restart,
    Shutdown,
}

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SavedState {
    session_id: Option<String>,
    session_cost: f64,
}

struct AgentState {
    plan: AgentPlan,
    token: String,
    files: AgentFiles,
    dir: PathBuf,
    phase: Phase,
    process: Option<Running>,
    stopping: Option<StopReason>,
    generation: u64,
    paused: bool,
    session_id: Option<String>,
    context_tokens: Option<i64>,
    context_window: Option<i64>,
    /// Cost of sessions other than the current one.
    cost_base: f64,
    /// The latest `total_cost_usd` of the current session.
    session_cost: f64,
    /// `session_cost` when the current process started (to tell whether a resumed process
    /// carried the session's total on or started from zero).
    cost_at_start: f64,
    first_result_seen: bool,
    restarts: i64,
    restart_times: VecDeque<Instant>,
    failures_in_a_row: u32,
    idle_since: Instant,
    turns_done: u64,
    asked_for_handoff: bool,
    /// How the next process starts.
    next_start: Start,
    /// A message to deliver as the first turn of the next process (a wake of a hibernated
    /// agent).
    wake_on_start: Option<String>,
    pending_tools: HashMap<String, (String, String)>,
    pending_messages: Vec<Quoted>,
    offered: HashSet<TaskId>,
}

impl AgentState {
    fn cost(&self) -> f64 {
        self.cost_base + self.session_cost
    }

    fn is_live_idle(&self) -> bool {
        self.phase == Phase::Live { busy: false } && self.stopping.is_none()
    }

    fn is_busy(&self) -> bool {
        self.phase == Phase::Live { busy: true }
    }
}

/// What the owning task reacts to.
enum Input {
    Process(ProcessReport),
    Event(Event),
}

/// The supervisor of one team.
pub struct Supervisor {
    admin: Client,
    url: String,
    options: SupervisorOptions,
    agents: Vec<AgentState>,
    reports_tx: mpsc::Sender<ProcessReport>,
    dirty: bool,
    quiet_ticks: u32,
}

/// The agents of `conclave.toml` and their clients, checked without starting anything (for
/// `up --detach`, which reports a bad configuration before it goes to the background).
pub fn check_team(project: &Project) -> anyhow::Result<Vec<String>> {
    let config = Config::load(&project.config_file())?;
    let plans = plan::plan_team(&config, project.root())?;
    anyhow::ensure!(
        !plans.is_empty(),
        "conclave.toml names no agents: add an [[agent]] section (see `conclave init`)"
    );
    for plan in &plans {
        plan::program(plan)?;
    }
    Ok(plans.into_iter().map(|plan| plan.name).collect())
}

impl Supervisor {
    /// Joins every agent of `conclave.toml` to the server at `url` (registering new ones) and
    /// prepares its files; starts nothing yet.
    pub async fn prepare(
        project: &Project,
        admin: Client,
        options: SupervisorOptions,
    ) -> anyhow::Result<(Supervisor, mpsc::Receiver<ProcessReport>)> {
        check_team(project)?;
        let config = Config::load(&project.config_file())?;
        let plans = plan::plan_team(&config, project.root())?;
        let url = admin.base_url().to_string();
        let (reports_tx, reports_rx) = mpsc::channel(1024);
        let mut agents = Vec::new();
        for plan in plans {
            let registration = NewAgent {
                name: plan.name.clone(),
                role: plan.role.clone(),
                model: plan.settings.model.clone(),
                caps: plan.caps.clone(),
                ..Default::default()
            };
            let JoinedAgent { token, files } =
                prepare_agent(project, &admin, &registration, config.server.strict).await?;
            let record: conclave_core::model::Agent = admin
                .get(&format!("/api/agents/{}", segment(&plan.name)), &[])
                .await?;
            let dir = project.agent_dir(&plan.name);
            let saved: SavedState = std::fs::read_to_string(dir.join("supervisor.json"))
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            let session_cost =
                if saved.session_id.is_some() && saved.session_id == record.session_id {
                    saved.session_cost
                } else {
                    0.0
                };
            let budget_spent = plan
                .settings
                .budget_usd
                .is_some_and(|budget| record.cost_usd >= budget);
            let phase = if budget_spent && record.status == AgentStatus::Stopped {
                Phase::Stopped
            } else {
                Phase::Waiting
            };
            agents.push(AgentState {
                next_start: if record.session_id.is_some() {
                    Start::Resumed
                } else {
                    Start::Fresh
                },
                session_id: record.session_id.clone(),
                context_tokens: record.context_tokens,
                context_window: record.context_window,
                cost_base: (record.cost_usd - session_cost).max(0.0),
                session_cost,
                cost_at_start: session_cost,
                first_result_seen: false,
                restarts: record.restarts,
                plan,
                token,
                files,
                dir,
                phase,
                process: None,
                stopping: None,
                generation: 0,
                paused: false,
                restart_times: VecDeque::new(),
                failures_in_a_row: 0,
                idle_since: Instant::now(),
                turns_done: 0,
                asked_for_handoff: false,
                wake_on_start: None,
                pending_tools: HashMap::new(),
                pending_messages: Vec::new(),
                offered: HashSet::new(),
            });
        }
        Ok((
            Supervisor {
                admin,
                url,
                options,
                agents,
                reports_tx,
                dirty: false,
                quiet_ticks: 0,
            },
            reports_rx,
        ))
    }

    /// Runs the team until it is finished (unless `stay`) or `shutdown` is cancelled; then
    /// ends every agent's process.
    pub async fn run(
        mut self,
        mut reports: mpsc::Receiver<ProcessReport>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let status: StatusReport = self.admin.get("/api/status", &[]).await?;
        let (events_tx, mut events_rx) = mpsc::channel(1024);
        let follow_stop = shutdown.child_token();
        tokio::spawn(super::follow::follow_events(
            self.admin.clone(),
            status.last_seq,
            events_tx,
            follow_stop.clone(),
        ));
        let mut next_start = Instant::now();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let finished = loop {
            // Staggered first starts (none once a stop was asked for: `down` during the
            // stagger must not start the rest of the team).
            if !shutdown.is_cancelled()
                && let Some(index) = self.agents.iter().position(|a| a.phase == Phase::Waiting)
                && Instant::now() >= next_start
            {
                self.start(index).await;
                next_start = Instant::now() + STAGGER;
                continue;
            }
            let input = tokio::select! {
                () = shutdown.cancelled() => break false,
                Some(report) = reports.recv() => Input::Process(report),
                Some(event) = events_rx.recv() => Input::Event(event),
                _ = ticker.tick() => {
                    if self.tick().await {
                        break true;
                    }
                    continue;
                }
            };
            match input {
                Input::Process(report) => self.on_report(report).await,
                Input::Event(event) => self.on_event(event).await,
            }
            if self.dirty {
                self.reconcile().await;
            }
        };
        follow_stop.cancel();
        if finished {
            eprintln!(
                "conclave: the team has finished: no task is ready for anyone and every agent is idle"
            );
        }
        self.stop_all(&mut reports).await;
        Ok(())
    }

    // ---- starting ---------------------------------------------------------------------------

    /// Starts agent `index`'s process: fresh or resuming its session, per `next_start`.
    async fn start(&mut self, index: usize) {
        let resume = match self.agents[index].next_start {
            Start::Fresh | Start::Recycled => None,
            Start::Resumed | Start::AfterCrash => self.agents[index].session_id.clone(),
        };
        let agent = &mut self.agents[index];
        agent.generation += 1;
        let launch = match plan::command_line(&agent.plan, &agent.files, resume.as_deref()) {
            Ok((program, args)) => {
                let mut env = plan::extra_env(&agent.plan);
                env.insert(ENV_URL.to_string(), self.url.clone());
                env.insert(ENV_AGENT.to_string(), agent.plan.name.clone());
                env.insert(ENV_TOKEN.to_string(), agent.token.clone());
                Launch {
                    agent: index,
                    generation: agent.generation,
                    program,
                    args: args.into_iter().map(Into::into).collect(),
                    cwd: agent.plan.cwd.clone(),
                    env,
                    dir: agent.dir.clone(),
                }
            }
            Err(error) => {
                self.give_up(index, &format!("cannot start: {error:#}"))
                    .await;
                return;
            }
        };
        let agent = &mut self.agents[index];
        let name = agent.plan.name.clone();
        match process::spawn(launch, self.reports_tx.clone()) {
            Ok(mut running) => {
                let first = match agent.wake_on_start.take() {
                    Some(wake) => wake,
                    None => wake::first_message(
                        &agent.plan.name,
                        agent.plan.role.as_deref(),
                        agent.next_start,
                    ),
                };
                let pid = running.pid.as_raw();
                if let Err(error) = running.send_user_message(&first).await {
                    tracing::warn!(agent = %name, %error, "cannot write the first message");
                }
                eprintln!(
                    "conclave: started {name} (pid {pid}{})",
                    resume
                        .as_deref()
                        .map(|s| format!(", resuming session {s}"))
                        .unwrap_or_default()
                );
                agent.process = Some(running);
                agent.phase = Phase::Live { busy: true };
                agent.stopping = None;
                agent.asked_for_handoff = false;
                agent.first_result_seen = false;
                agent.cost_at_start = agent.session_cost;
                agent.pending_tools.clear();
                if resume.is_none() {
                    // A new session: its cost starts from zero.
                    agent.cost_base += agent.session_cost;
                    agent.session_cost = 0.0;
                    agent.cost_at_start = 0.0;
                    agent.context_tokens = None;
                }
                let update = AgentUpdate {
                    status: Some(AgentStatus::Starting),
                    pid: Some(i64::from(pid)),
                    restarts: Some(agent.restarts),
                    ..AgentUpdate::default()
                };
                let started = AgentStarted {
                    pid: i64::from(pid),
                    resume,
                };
                self.patch(index, update).await;
                self.event(index, EventPayload::AgentStarted(started)).await;
            }
            Err(error) => {
                let message = format!("{error:#}");
                self.on_crash(index, &format!("could not start ({message})"))
                    .await;
            }
        }
    }

    // ---- what the processes say --------------------------------------------------------------

    async fn on_report(&mut self, report: ProcessReport) {
        match report {
            ProcessReport::Line {
                agent,
                generation,
                value,
            } => {
                if self.agents[agent].generation == generation {
                    self.on_line(agent, &value).await;
                }
            }
            ProcessReport::Exited {
                agent,
                generation,
                how,
            } => {
                if self.agents[agent].generation == generation {
                    self.on_exit(agent, &how).await;
                }
            }
        }
    }

    async fn on_line(&mut self, index: usize, line: &Value) {
        match parse_line(line) {
            StreamUpdate::Init { session_id } => {
                let agent = &mut self.agents[index];
                let new_session = session_id.is_some() && session_id != agent.session_id;
                if new_session {
                    agent.session_id = session_id.clone();
                    self.save_state(index);
                }
                let update = AgentUpdate {
                    status: Some(AgentStatus::Working),
                    session_id,
                    ..AgentUpdate::default()
                };
                self.patch(index, update).await;
            }
            StreamUpdate::Assistant {
                context_tokens,
                tools,
                texts,
            } => {
                let agent = &mut self.agents[index];
                if context_tokens.is_some() {
                    agent.context_tokens = context_tokens;
                }
                for tool in tools {
                    agent
                        .pending_tools
                        .insert(tool.id.clone(), (tool.name, tool.input));
                }
                for text in texts {
                    self.event(index, EventPayload::AgentText(AgentText { text }))
                        .await;
                }
                if let Some(tokens) = context_tokens {
                    let update = AgentUpdate {
                        context_tokens: Some(tokens),
                        ..AgentUpdate::default()
                    };
                    self.patch(index, update).await;
                }
            }
            StreamUpdate::ToolResults(results) => {
                for (id, bytes) in results {
                    let Some((tool, input)) = self.agents[index].pending_tools.remove(&id) else {
                        continue;
                    };
                    let used = AgentTool {
                        tool,
                        input: Value::String(input),
                        result_bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                    };
                    self.event(index, EventPayload::AgentTool(used)).await;
                }
            }
            StreamUpdate::Result {
                cost_usd,
                context_window,
                is_error,
                session_id,
            } => {
                self.on_turn_end(index, cost_usd, context_window, is_error, session_id)
                    .await;
            }
            StreamUpdate::Other => {}
        }
    }

    async fn on_turn_end(
        &mut self,
        index: usize,
        cost_usd: Option<f64>,
        context_window: Option<i64>,
        is_error: bool,
        session_id: Option<String>,
    ) {
        let agent = &mut self.agents[index];
        if agent.phase == (Phase::Live { busy: true }) {
            agent.phase = Phase::Live { busy: false };
        }
        agent.idle_since = Instant::now();
        agent.turns_done += 1;
        if !is_error {
            agent.failures_in_a_row = 0;
        }
        if session_id.is_some() && agent.session_id.is_none() {
            agent.session_id = session_id;
        }
        if let Some(total) = cost_usd {
            if !agent.first_result_seen && total + 1e-9 < agent.cost_at_start {
                // This process counts from zero: what the session cost before is history.
                agent.cost_base += agent.cost_at_start;
            }
            agent.first_result_seen = true;
            agent.session_cost = total;
        }
        if context_window.is_some() {
            agent.context_window = context_window;
        }
        let (tokens, window, cost) = (agent.context_tokens, agent.context_window, agent.cost());
        let handoff_turn = agent.asked_for_handoff;
        self.save_state(index);
        let update = AgentUpdate {
            status: Some(if self.agents[index].paused {
                AgentStatus::Paused
            } else {
                AgentStatus::Idle
            }),
            context_tokens: tokens,
            context_window: window,
            cost_usd: Some(cost),
            ..AgentUpdate::default()
        };
        self.patch(index, update).await;
        let turn = AgentTurn {
            context_tokens: tokens,
            context_window: window,
            cost_usd: cost,
        };
        self.event(index, EventPayload::AgentTurn(turn)).await;
        self.dirty = true;

        let agent = &self.agents[index];
        if let Some(budget) = agent.plan.settings.budget_usd
            && cost >= budget
        {
            let name = agent.plan.name.clone();
            eprintln!(
                "conclave: {name} reached its budget of ${budget:.2} (spent ${cost:.4}); stopping it"
            );
            self.stop_process(index, StopReason::Budget, IDLE_GRACE);
            let exceeded = AgentBudgetExceeded {
                budget_usd: budget,
                cost_usd: cost,
                alert: true,
                message: format!(
                    "{name} spent ${cost:.4} of its ${budget:.2} budget and was stopped"
                ),
            };
            self.event(index, EventPayload::AgentBudgetExceeded(exceeded))
                .await;
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
            let request = wake::handoff_request(tokens, window);
            let agent = &mut self.agents[index];
            agent.asked_for_handoff = true;
            if let Some(process) = agent.process.as_mut()
                && process.send_user_message(&request).await.is_ok()
            {
                agent.phase = Phase::Live { busy: true };
                let requested = AgentHandoffRequested {
                    context_tokens: tokens,
                    context_window: window,
                };
                self.event(index, EventPayload::AgentHandoffRequested(requested))
                    .await;
            }
        }
    }

    async fn on_exit(&mut self, index: usize, how: &str) {
        let agent = &mut self.agents[index];
        agent.process = None;
        let reason = agent.stopping.take();
        let name = agent.plan.name.clone();
        self.dirty = true;
        match reason {
            None => {
                eprintln!("conclave: {name} exited unexpectedly ({how})");
                self.on_crash(index, &format!("process exited with {how}"))
                    .await;
            }
            Some(StopReason::Recycle) => {
                let agent = &mut self.agents[index];
                agent.next_start = Start::Recycled;
                agent.context_tokens = None;
                let recycled = AgentRecycled {
                    previous_session: agent.session_id.clone(),
                };
                self.event(index, EventPayload::AgentRecycled(recycled))
                    .await;
                eprintln!("conclave: recycling {name} into a fresh session");
                self.start(index).await;
            }
            Some(StopReason::Hibernate) => {
                self.agents[index].phase = Phase::Hibernated;
                // A paused agent stays `paused` on its record while its process is gone.
                let status = if self.agents[index].paused {
                    AgentStatus::Paused
                } else {
                    AgentStatus::Hibernated
                };
                let update = AgentUpdate {
                    status: Some(status),
                    ..AgentUpdate::default()
                };
                self.patch(index, update).await;
                self.event(index, EventPayload::AgentHibernated(exit(how)))
                    .await;
            }
            Some(StopReason::Budget | StopReason::Stop) => {
                self.agents[index].phase = Phase::Stopped;
                let update = AgentUpdate {
                    status: Some(AgentStatus::Stopped),
                    ..AgentUpdate::default()
                };
                self.patch(index, update).await;
                let stopped = AgentExit {
                    stopped: true,
                    ..exit(how)
                };
                self.event(index, EventPayload::AgentExited(stopped)).await;
            }
            Some(StopReason::Restart) => {
                self.agents[index].next_start = Start::Resumed;
                let restart = AgentExit {
                    restart: true,
                    ..exit(how)
                };
                self.event(index, EventPayload::AgentExited(restart)).await;
                self.start(index).await;
            }
            Some(StopReason::Shutdown) => {
                self.agents[index].phase = Phase::Waiting;
                self.event(index, EventPayload::AgentExited(exit(how)))
                    .await;
            }
        }
    }

    /// A process died unasked: release what it held, then restart with backoff, or give up
    /// after too many restarts in the window.
    async fn on_crash(&mut self, index: usize, reason: &str) {
        let name = self.agents[index].plan.name.clone();
        let released: Option<Value> = match self
            .admin
            .post(
                &format!("/api/agents/{}/release", segment(&name)),
                &json!({"reason": reason}),
            )
            .await
        {
            Ok(report) => Some(report),
            Err(error) => {
                tracing::warn!(agent = %name, error = %format!("{error:#}"), "cannot release");
                None
            }
        };
        let agent = &mut self.agents[index];
        let now = Instant::now();
        let window = agent.plan.restart_window;
        while agent
            .restart_times
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            agent.restart_times.pop_front();
        }
        let crashed = AgentCrashed {
            reason: Some(reason.to_string()),
            released,
            alert: true,
            gave_up: false,
            message: None,
        };
        self.event(index, EventPayload::AgentCrashed(crashed)).await;
        let agent = &mut self.agents[index];
        if agent.restart_times.len() >= agent.plan.max_restarts as usize {
            let message = format!(
                "{name} crashed {} times within {:?}; not restarting it",
                agent.restart_times.len() + 1,
                agent.plan.restart_window
            );
            self.give_up(index, &message).await;
            return;
        }
        let delay = Duration::from_secs(1)
            .saturating_mul(1 << agent.failures_in_a_row.min(5))
            .min(MAX_BACKOFF);
        agent.failures_in_a_row += 1;
        agent.phase = Phase::RestartPending { at: now + delay };
        agent.next_start = Start::AfterCrash;
        let update = AgentUpdate {
            status: Some(AgentStatus::Starting),
            ..AgentUpdate::default()
        };
        self.patch(index, update).await;
    }

    async fn give_up(&mut self, index: usize, message: &str) {
        eprintln!("conclave: {message}");
        self.agents[index].phase = Phase::Crashed;
        let update = AgentUpdate {
            status: Some(AgentStatus::Crashed),
            ..AgentUpdate::default()
        };
        self.patch(index, update).await;
        let gave_up = AgentCrashed {
            reason: None,
            released: None,
            alert: true,
            gave_up: true,
            message: Some(message.to_string()),
        };
        self.event(index, EventPayload::AgentCrashed(gave_up)).await;
    }

    // ---- what the server says ---------------------------------------------------------------

    async fn on_event(&mut self, event: Event) {
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
                let Some(index) = self.index_of(event.agent.as_deref()) else {
                    return;
                };
                self.on_control(index, control.action).await;
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
            payload if payload.topic() == Some(Topic::Task) => self.dirty = true,
            _ => {}
        }
    }

    async fn on_control(&mut self, index: usize, action: AgentAction) {
        let name = self.agents[index].plan.name.clone();
        eprintln!("conclave: {action} {name} (asked through the server)");
        match action {
            AgentAction::Pause => {
                self.agents[index].paused = true;
                let update = AgentUpdate {
                    status: Some(AgentStatus::Paused),
                    ..AgentUpdate::default()
                };
                self.patch(index, update).await;
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
                let update = AgentUpdate {
                    status: Some(status),
                    ..AgentUpdate::default()
                };
                self.patch(index, update).await;
                self.dirty = true;
            }
            AgentAction::Stop => match self.agents[index].phase {
                Phase::Live { .. } => self.stop_process(index, StopReason::Stop, IDLE_GRACE),
                _ => {
                    self.agents[index].phase = Phase::Stopped;
                    let update = AgentUpdate {
                        status: Some(AgentStatus::Stopped),
                        ..AgentUpdate::default()
                    };
                    self.patch(index, update).await;
                }
            },
            AgentAction::Restart => {
                let agent = &mut self.agents[index];
                agent.paused = false;
                match agent.phase {
                    Phase::Live { .. } => {
                        self.stop_process(index, StopReason::Restart, IDLE_GRACE);
                    }
                    _ => {
                        agent.next_start = Start::Resumed;
                        self.start(index).await;
                    }
                }
                let restarted = AgentRestarted {
                    asked: true,
                    restarts: None,
                };
                self.event(index, EventPayload::AgentRestarted(restarted))
                    .await;
            }
        }
    }

    // ---- waking -----------------------------------------------------------------------------

    /// Wakes every idle agent that has something waiting for it: unread messages that arrived
    /// for it, or (when it holds no task) ready tasks that fit it and were not offered to it
    /// before nor to another agent busy with them.
    async fn reconcile(&mut self) {
        self.dirty = false;
        let wakeable: Vec<usize> = (0..self.agents.len())
            .filter(|&i| {
                let agent = &self.agents[i];
                !agent.paused
                    && ((agent.is_live_idle() && agent.turns_done > 0)
                        || agent.phase == Phase::Hibernated)
            })
            .collect();
        if wakeable.is_empty() {
            return;
        }
        let status: StatusReport = match self.admin.get("/api/status", &[]).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot read the team's state");
                self.dirty = true;
                return;
            }
        };
        let unread = if wakeable
            .iter()
            .any(|&i| !self.agents[i].pending_messages.is_empty())
        {
            self.unread_ids().await
        } else {
            HashMap::new()
        };
        for index in wakeable {
            let name = self.agents[index].plan.name.clone();
            let holds = status.tasks.iter().any(|task| {
                task.assignee.as_deref() == Some(name.as_str())
                    && matches!(
                        task.status,
                        TaskStatus::Claimed
                            | TaskStatus::InProgress
                            | TaskStatus::Review
                            | TaskStatus::Blocked
                    )
            });
            let agent = &self.agents[index];
            let messages: Vec<Quoted> = agent
                .pending_messages
                .iter()
                .filter(|m| {
                    unread
                        .get(&name)
                        .is_some_and(|ids: &HashSet<String>| ids.contains(&m.id))
                })
                .cloned()
                .collect();
            let tasks: Vec<(TaskId, String)> = if holds {
                Vec::new()
            } else {
                status
                    .tasks
                    .iter()
                    .filter(|task| task.status == TaskStatus::Ready)
                    .filter(|task| fits(task, &agent.plan))
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
                eprintln!("conclave: waking {name} from hibernation");
                self.event(index, EventPayload::AgentWoken(woken)).await;
                self.start(index).await;
            } else if let Some(process) = agent.process.as_mut() {
                match process.send_user_message(&text).await {
                    Ok(()) => {
                        agent.phase = Phase::Live { busy: true };
                        self.event(index, EventPayload::AgentWoken(woken)).await;
                        let update = AgentUpdate {
                            status: Some(AgentStatus::Working),
                            ..AgentUpdate::default()
                        };
                        self.patch(index, update).await;
                    }
                    Err(error) => {
                        tracing::warn!(agent = %name, %error, "cannot write the wake message");
                    }
                }
            }
        }
    }

    /// Unacknowledged message ids per recipient, from the latest messages.
    async fn unread_ids(&self) -> HashMap<String, HashSet<String>> {
        let list: MessageList = match self
            .admin
            .get("/api/messages", &[("limit", "500".to_string())])
            .await
        {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot list messages");
                return HashMap::new();
            }
        };
        let mut unread: HashMap<String, HashSet<String>> = HashMap::new();
        for message in list.messages {
            for delivery in &message.deliveries {
                if delivery.acked_at.is_none() {
                    unread
                        .entry(delivery.agent.clone())
                        .or_default()
                        .insert(message.id.clone());
                }
            }
        }
        unread
    }

    // ---- the clock --------------------------------------------------------------------------

    /// Restarts that are due, hibernation, and whether the team has finished.
    async fn tick(&mut self) -> bool {
        let now = Instant::now();
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
                    self.event(index, EventPayload::AgentRestarted(restarted))
                        .await;
                    self.start(index).await;
                }
                Phase::Live { busy: false }
                    if agent.stopping.is_none()
                        && agent.turns_done > 0
                        && now.duration_since(agent.idle_since) >= agent.plan.hibernate_after =>
                {
                    eprintln!("conclave: {} is idle; hibernating it", agent.plan.name);
                    self.stop_process(index, StopReason::Hibernate, IDLE_GRACE);
                }
                _ => {}
            }
        }
        if self.dirty {
            self.reconcile().await;
        }
        if self.options.stay {
            return false;
        }
        let quiet = !self.dirty
            && self.agents.iter().all(|agent| match agent.phase {
                Phase::Live { busy: false } => {
                    agent.stopping.is_none() && (agent.turns_done > 0 || agent.paused)
                }
                Phase::Hibernated | Phase::Stopped | Phase::Crashed => true,
                Phase::Waiting | Phase::Live { busy: true } | Phase::RestartPending { .. } => false,
            });
        self.quiet_ticks = if quiet { self.quiet_ticks + 1 } else { 0 };
        self.quiet_ticks >= QUIET_TICKS_TO_FINISH
    }

    // ---- ending -----------------------------------------------------------------------------

    fn stop_process(&mut self, index: usize, reason: StopReason, grace: Duration) {
        let agent = &mut self.agents[index];
        // A person's stop and the team's shutdown win over anything the supervisor decides
        // itself (recycle, budget, hibernate) while the process is on its way out.
        if matches!(
            agent.stopping,
            Some(StopReason::Shutdown | StopReason::Stop)
        ) && !matches!(reason, StopReason::Shutdown | StopReason::Stop)
        {
            return;
        }
        if let Some(process) = agent.process.as_mut() {
            agent.stopping = Some(reason);
            process.stop(grace);
        }
    }

    /// Ends every process (stdin closed, then signals) and waits for them, up to a limit.
    async fn stop_all(&mut self, reports: &mut mpsc::Receiver<ProcessReport>) {
        for index in 0..self.agents.len() {
            if self.agents[index].process.is_some() {
                self.stop_process(index, StopReason::Shutdown, SHUTDOWN_GRACE);
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while self.agents.iter().any(|agent| agent.process.is_some()) {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(report)) => self.on_report(report).await,
                Ok(None) | Err(_) => break,
            }
        }
        for agent in &self.agents {
            if let Some(process) = &agent.process {
                process.kill_now();
            }
        }
        for index in 0..self.agents.len() {
            if matches!(self.agents[index].phase, Phase::Waiting) {
                let update = AgentUpdate {
                    status: Some(AgentStatus::Offline),
                    ..AgentUpdate::default()
                };
                self.patch(index, update).await;
            }
        }
    }

    // ---- reporting --------------------------------------------------------------------------

    fn index_of(&self, name: Option<&str>) -> Option<usize> {
        let name = name?;
        self.agents.iter().position(|agent| agent.plan.name == name)
    }

    async fn patch(&self, index: usize, update: AgentUpdate) {
        let name = &self.agents[index].plan.name;
        let path = format!("/api/agents/{}", segment(name));
        if let Err(error) = self.admin.patch::<_, Value>(&path, &update).await {
            tracing::warn!(agent = %name, error = %format!("{error:#}"), "cannot report status");
        }
    }

    async fn event(&self, index: usize, payload: EventPayload) {
        let name = &self.agents[index].plan.name;
        let kind = payload.kind().to_string();
        let body = NewEvent {
            agent: name.clone(),
            task: None,
            payload,
        };
        if let Err(error) = self.admin.post::<_, Value>("/api/events", &body).await {
            tracing::warn!(agent = %name, kind, error = %format!("{error:#}"), "cannot record an event");
        }
    }

    fn save_state(&self, index: usize) {
        let agent = &self.agents[index];
        let state = SavedState {
            session_id: agent.session_id.clone(),
            session_cost: agent.session_cost,
        };
        let path = agent.dir.join("supervisor.json");
        if let Ok(text) = serde_json::to_string(&state)
            && let Err(error) = std::fs::write(&path, text)
        {
            tracing::warn!(path = %path.display(), %error, "cannot save the agent's state");
        }
    }

    /// The agents' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.plan.name.clone()).collect()
    }
}

/// How a process ended, with nothing more to say.
fn exit(how: &str) -> AgentExit {
    AgentExit {
        exit: how.to_string(),
        stopped: false,
        restart: false,
    }
}

/// Whether `task` fits the agent: no role or its role, and every capability it asks for.
fn fits(task: &conclave_core::model::Task, plan: &AgentPlan) -> bool {
    let role_fits = match &task.role {
        None => true,
        Some(role) => plan.role.as_deref() == Some(role.as_str()),
    };
    role_fits && task.caps.iter().all(|cap| plan.caps.contains(cap))
}
