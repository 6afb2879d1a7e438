//! The supervisor's driver: one task that feeds the team's state machine ([`crate::machine`])
//! with what happens — a stdout line, a process exit, a server event, the clock, a signal — and
//! carries out the effects it returns.
//!
//! Per agent it reports status, pid, session id, context use, cost and restarts to the server
//! (`PATCH /api/agents/NAME`), and records what it saw and did as `agent.*` events
//! (`POST /api/events`). An idle agent is woken only when something arrives for it; nothing
//! prompts on a timer, so an idle team makes no model calls.
//!
//! The driver reaches processes through [`ProcessSide`] and the server through [`ServerSide`],
//! so that it runs in tests with scripted ones and tokio's paused clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use conclave_client::{Client, ENV_AGENT, ENV_TOKEN, ENV_URL, segment};
use conclave_core::config::{Config, Isolation};
use conclave_core::event::AgentCrashed;
use conclave_core::model::{
    AgentUpdate, Event, EventPayload, MessageList, NewAgent, NewEvent, QueueView, StatusReport,
};
use conclave_core::project::Project;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent_files::{AgentFiles, JoinedAgent, prepare_agent};
use crate::follow::follow_events;
use crate::loop_agent::{LoopAgent, LoopTies, spawn_loop, split_loops};
use crate::loop_run::LoopSpend;
use crate::machine::{AgentState, Effect, Input, LoopEnded, Outcome, SavedState, Team, TeamView};
use crate::plan::{self, HostScope};
use crate::process::{ClientProcesses, Launch, ProcessReport, ProcessSide};
use crate::stream::parse_line;

/// The clock of the supervisor: restarts due, hibernation, finishing.
const TICK: Duration = Duration::from_millis(500);
/// How long the supervisor waits for its agents to end when stopping.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);
/// Messages read to tell which quoted ones are still unread.
const MESSAGES_READ: usize = 500;

/// How `conclave up` runs the team.
#[derive(Debug, Clone, Default)]
pub struct SupervisorOptions {
    /// Keep running when the team has nothing left to do.
    pub stay: bool,
    /// The agents this supervisor runs, by host; none: the whole team, reported as running on
    /// this machine.
    pub host: Option<HostScope>,
    /// The URL agents are given (a local relay, [`crate::relay`]); none: the admin's.
    pub agent_url: Option<String>,
}

/// What the driver asks of the server.
pub trait ServerSide {
    /// Reports the agent's state (`PATCH /api/agents/NAME`); a failure is logged.
    fn patch_agent(&self, name: &str, update: &AgentUpdate) -> impl Future<Output = ()> + Send;
    /// Records an event about the agent (`POST /api/events`); a failure is logged.
    fn record(&self, name: &str, payload: EventPayload) -> impl Future<Output = ()> + Send;
    /// Releases what a crashed agent held; returns the server's report (none on failure).
    fn release(&self, name: &str, reason: &str) -> impl Future<Output = Option<Value>> + Send;
    /// The team's tasks, and its unread messages when `messages`.
    fn team(&self, messages: bool) -> impl Future<Output = anyhow::Result<TeamView>> + Send;
}

/// The real server, through the admin's client.
#[derive(Debug, Clone)]
pub struct ApiServer {
    admin: Client,
}

impl ServerSide for ApiServer {
    async fn patch_agent(&self, name: &str, update: &AgentUpdate) {
        let path = format!("/api/agents/{}", segment(name));
        if let Err(error) = self.admin.patch::<_, Value>(&path, update).await {
            tracing::warn!(agent = %name, error = %format!("{error:#}"), "cannot report status");
        }
    }

    async fn record(&self, name: &str, payload: EventPayload) {
        let kind = payload.kind().to_string();
        let body = NewEvent {
            agent: name.to_string(),
            task: None,
            payload,
        };
        if let Err(error) = self.admin.post::<_, Value>("/api/events", &body).await {
            tracing::warn!(agent = %name, kind, error = %format!("{error:#}"), "cannot record an event");
        }
    }

    async fn release(&self, name: &str, reason: &str) -> Option<Value> {
        let path = format!("/api/agents/{}/release", segment(name));
        match self.admin.post(&path, &json!({"reason": reason})).await {
            Ok(report) => Some(report),
            Err(error) => {
                tracing::warn!(agent = %name, error = %format!("{error:#}"), "cannot release");
                None
            }
        }
    }

    async fn team(&self, messages: bool) -> anyhow::Result<TeamView> {
        let status: StatusReport = self.admin.get("/api/status", &[]).await?;
        let unread = if messages {
            self.unread_ids().await
        } else {
            HashMap::new()
        };
        // Only a task in review can wait in the merge queue: no read otherwise.
        let queue = if status
            .tasks
            .iter()
            .any(|task| task.status == conclave_core::model::TaskStatus::Review)
        {
            match self.admin.get::<QueueView>("/api/queue", &[]).await {
                Ok(queue) => Some(queue),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot read the merge queue");
                    None
                }
            }
        } else {
            None
        };
        Ok(TeamView {
            tasks: status.tasks,
            unread,
            queue,
        })
    }
}

impl ApiServer {
    /// Unacknowledged message ids per recipient, from the latest messages.
    async fn unread_ids(&self) -> HashMap<String, HashSet<String>> {
        let query = [("limit", MESSAGES_READ.to_string())];
        let list: MessageList = match self.admin.get("/api/messages", &query).await {
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
}

/// What starting an agent's process takes besides its plan.
#[derive(Debug, Clone)]
pub struct AgentLaunch {
    pub token: String,
    pub files: AgentFiles,
    /// `.conclave/agents/NAME/`.
    pub dir: PathBuf,
}

/// The agents of `conclave.toml` and their clients, checked without starting anything (for
/// `up --detach`, which reports a bad configuration before it goes to the background).
pub fn check_team(project: &Project) -> anyhow::Result<Vec<String>> {
    check_share(project, None)
}

/// [`check_team`] for the agents `scope` runs (all with none): another host's agents' clients
/// are that host's to check.
pub fn check_share(project: &Project, scope: Option<&HostScope>) -> anyhow::Result<Vec<String>> {
    let config = Config::load(&project.config_file())?;
    let mut plans = plan::plan_team(&config, project.root())?;
    anyhow::ensure!(
        !plans.is_empty(),
        "conclave.toml names no agents: add an [[agent]] section (see `conclave init`)"
    );
    if let Some(scope) = scope {
        plans = scope.select(plans);
        anyhow::ensure!(
            !plans.is_empty(),
            "no agent of conclave.toml runs on host {:?}: name it with `host = {:?}` on an \
             [[agent]] ({})",
            scope.name,
            scope.name,
            if scope.main {
                "agents without `host` run here too"
            } else {
                "agents without `host` run next to the server"
            }
        );
    }
    for plan in &plans {
        plan::program(plan)?;
    }
    Ok(plans.into_iter().map(|plan| plan.name).collect())
}

/// The supervisor of one team.
pub struct Supervisor {
    admin: Client,
    team: Team,
    launches: Vec<AgentLaunch>,
    project: Project,
    /// `mode = "loop"` agents, run beside the team (see [`crate::loop_agent`]).
    loops: Vec<LoopAgent>,
    /// The server's URL as agents reach it.
    agent_url: String,
}

impl Supervisor {
    /// Joins every agent of `conclave.toml` to the server of `admin` (registering new ones) and
    /// prepares its files; starts nothing yet.
    pub async fn prepare(
        project: &Project,
        admin: Client,
        options: SupervisorOptions,
    ) -> anyhow::Result<Supervisor> {
        check_share(project, options.host.as_ref())?;
        let config = Config::load(&project.config_file())?;
        let mut plans = plan::plan_team(&config, project.root())?;
        let whole_team = plans.len();
        if let Some(scope) = &options.host {
            plans = scope.select(plans);
        }
        // Other hosts run the rest of the team: their tasks keep this share waiting.
        let shares_the_team = plans.len() < whole_team;
        let (plans, loops) = split_loops(&config, plans);
        let agent_url = options
            .agent_url
            .clone()
            .unwrap_or_else(|| admin.base_url().to_string());
        let host = options
            .host
            .as_ref()
            .map_or_else(plan::this_host, |scope| scope.name.clone());
        // This host's worktree agents get their worktrees before anyone starts.
        let worktree_agents: Vec<String> = plans
            .iter()
            .filter(|plan| plan.isolation() == Isolation::Worktree)
            .map(|plan| plan.name.clone())
            .collect();
        if !worktree_agents.is_empty() {
            // Config::validate refuses worktree agents without a [merge] table.
            let merge = config.merge.clone().unwrap_or_default();
            let root = project.root().to_path_buf();
            let agents = worktree_agents.clone();
            let away = options.host.as_ref().is_some_and(|scope| !scope.main);
            tokio::task::spawn_blocking(move || {
                if away {
                    // Away from the server, the integration branch is the shared remote's.
                    crate::worktree_steps::follow_integration(&root, &merge)?;
                }
                crate::worktrees::prepare_worktrees(
                    &root,
                    &merge,
                    &agents,
                    crate::worktrees::Repair::All,
                )
            })
            .await??;
        }
        let mut agents = Vec::new();
        let mut launches = Vec::new();
        for plan in plans {
            let registration = NewAgent {
                name: plan.name.clone(),
                role: plan.role.clone(),
                model: plan.settings.model.clone(),
                caps: plan.caps.clone(),
                isolation: plan.isolation(),
            };
            let JoinedAgent { token, files } = prepare_agent(
                project,
                &admin,
                &registration,
                config.server.strict,
                &agent_url,
            )
            .await?;
            // The host is the supervisor's to say: the dashboard shows where each agent runs.
            let record: conclave_core::model::Agent = admin
                .patch(
                    &format!("/api/agents/{}", segment(&plan.name)),
                    &AgentUpdate {
                        host: Some(host.clone()),
                        ..AgentUpdate::default()
                    },
                )
                .await
                .with_context(|| format!("cannot record the host of agent {}", plan.name))?;
            let dir = project.agent_dir(&plan.name);
            let saved = read_saved_state(&dir);
            agents.push(AgentState::restore(plan, &record, saved, Instant::now()));
            launches.push(AgentLaunch { token, files, dir });
        }
        Ok(Supervisor {
            admin,
            team: if shares_the_team {
                Team::new(agents, options.stay).sharing()
            } else {
                Team::new(agents, options.stay)
            },
            launches,
            project: project.clone(),
            loops,
            agent_url,
        })
    }

    /// The agents' names, in order.
    pub fn names(&self) -> Vec<String> {
        let loops = self.loops.iter().map(|agent| agent.plan.name.clone());
        self.team
            .agents
            .iter()
            .map(|agent| agent.plan.name.clone())
            .chain(loops)
            .collect()
    }

    /// Runs the team until it finishes, stalls or fails (unless `stay`) or `shutdown` is
    /// cancelled ([`Outcome::Stopped`]); then ends every agent's process. The last lines
    /// printed say the outcome, with a line per agent.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<Outcome> {
        let status: StatusReport = self.admin.get("/api/status", &[]).await?;
        let (events_tx, mut events) = mpsc::channel(1024);
        let follow_stop = shutdown.child_token();
        tokio::spawn(follow_events(
            self.admin.clone(),
            status.last_seq,
            events_tx,
            follow_stop.clone(),
        ));
        let (reports_tx, mut reports) = mpsc::channel(1024);
        let loops_stop = shutdown.child_token();
        let team_budget_spent = CancellationToken::new();
        let (spent_tx, loop_costs) = mpsc::unbounded_channel();
        let mut loops = JoinSet::new();
        let mut team = self.team;
        // The loops' plans carry `[defaults] team_budget_usd` too: a team of loops alone has one.
        team.loops.team_budget_usd = self
            .loops
            .iter()
            .find_map(|agent| agent.plan.settings.team_budget_usd);
        for agent in self.loops {
            team.loops.running += 1;
            let (project, admin) = (self.project.clone(), self.admin.clone());
            let url = self.agent_url.clone();
            let ties = LoopTies {
                stop: loops_stop.clone(),
                team_budget_spent: team_budget_spent.clone(),
                spent: spent_tx.clone(),
            };
            spawn_loop(&mut loops, project, admin, url, agent, ties);
        }
        // Held by the loops only: the channel closes when the last loop ends.
        drop(spent_tx);
        let mut driver = Driver {
            url: self.agent_url,
            team,
            launches: self.launches,
            processes: ClientProcesses::new(reports_tx),
            server: ApiServer { admin: self.admin },
            loops,
            loops_stop,
            loop_costs,
            team_budget_spent,
        };
        let outcome = driver.run(&mut reports, &mut events, shutdown).await;
        follow_stop.cancel();
        Ok(outcome)
    }
}

/// The last lines `conclave up` prints: the outcome, why, and a line per agent.
pub fn outcome_lines(outcome: &Outcome, agents: &[String]) -> Vec<String> {
    let mut lines = vec![match outcome {
        Outcome::Finished => {
            "outcome: finished — the team has finished: every task is done or cancelled (exit 0)"
                .to_string()
        }
        Outcome::Stalled { reason } => format!("outcome: stalled — {reason} (exit 6)"),
        Outcome::Failed { reason } => format!("outcome: failed — {reason} (exit 7)"),
        Outcome::Stopped => "outcome: stopped by a person".to_string(),
    }];
    lines.extend(agents.iter().map(|agent| format!("  {agent}")));
    lines
}

impl Supervisor {
    /// Sets the characters of the Conclave tool definitions as the model receives them (see
    /// [`crate::coordination::tool_definition_chars`]), for every agent's coordination account;
    /// left unset, they are not counted.
    pub fn with_tool_definition_chars(mut self, chars: usize) -> Supervisor {
        for agent in &mut self.team.agents {
            agent.set_tool_definition_chars(chars);
        }
        self
    }
}

fn read_saved_state(dir: &std::path::Path) -> SavedState {
    std::fs::read_to_string(dir.join("supervisor.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The now of the driver: tokio's clock, so that tests may pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Feeds the team's state machine and carries out its effects.
struct Driver<P, S> {
    team: Team,
    launches: Vec<AgentLaunch>,
    /// The server's URL, as agents reach it.
    url: String,
    processes: P,
    server: S,
    /// The team's loops (`mode = "loop"`), each ending with its line for the outcome.
    loops: JoinSet<LoopEnded>,
    /// Ends the loops when the run ends.
    loops_stop: CancellationToken,
    /// What each loop has spent in all, after each of its iterations.
    loop_costs: mpsc::UnboundedReceiver<LoopSpend>,
    /// Ends the loops, saying why, when the team's budget is spent.
    team_budget_spent: CancellationToken,
}

impl<P: ProcessSide, S: ServerSide> Driver<P, S> {
    /// Runs until the team has an outcome or `shutdown` is cancelled ([`Outcome::Stopped`]);
    /// then ends every process and prints the outcome.
    async fn run(
        &mut self,
        reports: &mut mpsc::Receiver<ProcessReport>,
        events: &mut mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) -> Outcome {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            let input = tokio::select! {
                // A stop asked for comes first: `down` during the stagger must not start the
                // rest of the team.
                biased;
                () = shutdown.cancelled() => break Outcome::Stopped,
                Some(report) = reports.recv() => self.input_of(report),
                Some(event) = events.recv() => Input::Event(event),
                Some(spend) = self.loop_costs.recv() => {
                    let input = Input::LoopSpent { name: spend.name, cost_usd: spend.total_usd };
                    // Counted (and the loops stopped if that spent the team's budget) before
                    // the loop goes on to another iteration.
                    let outcome = self.feed(input).await;
                    let _ = spend.counted.send(());
                    match outcome {
                        Some(outcome) => break outcome,
                        None => continue,
                    }
                }
                Some(ended) = self.loops.join_next(), if !self.loops.is_empty() => {
                    self.team.loops.running = self.team.loops.running.saturating_sub(1);
                    match ended {
                        Ok(ended) => self.team.loops.ended.push(ended),
                        Err(error) => tracing::warn!(%error, "a loop's task ended abnormally"),
                    }
                    // Its iterations may have left work for the others, or nothing at all.
                    Input::Tick
                }
                _ = ticker.tick() => Input::Tick,
            };
            if let Some(outcome) = self.feed(input).await {
                break outcome;
            }
        };
        // Loops still running when the run ends (a stop, a failed login) are interrupted and
        // awaited like the agents' processes.
        self.loops_stop.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while let Ok(Some(ended)) = tokio::time::timeout_at(deadline, self.loops.join_next()).await
        {
            if let Ok(ended) = ended {
                self.team.loops.ended.push(ended);
            }
        }
        // Where each agent was when the run ended, not after the shutdown.
        let summaries = self.team.summaries();
        self.stop_all(reports).await;
        for line in outcome_lines(&outcome, &summaries) {
            eprintln!("conclave: {line}");
        }
        outcome
    }

    fn input_of(&mut self, report: ProcessReport) -> Input {
        match report {
            ProcessReport::Line {
                agent,
                generation,
                value,
            } => Input::Line {
                agent,
                generation,
                update: parse_line(&value),
            },
            ProcessReport::Exited {
                agent,
                generation,
                how,
                stderr,
            } => {
                if self
                    .team
                    .agents
                    .get(agent)
                    .is_some_and(|state| state.generation == generation)
                {
                    self.processes.forget(agent);
                }
                Input::Exited {
                    agent,
                    generation,
                    how,
                    stderr,
                }
            }
        }
    }

    /// Steps the machine with `input` and with whatever its effects answer; returns the
    /// outcome when the run is over.
    async fn feed(&mut self, input: Input) -> Option<Outcome> {
        let mut queue = VecDeque::from([input]);
        let mut ended = None;
        while let Some(input) = queue.pop_front() {
            for effect in self.team.step(input, now()) {
                if let Effect::Ended(outcome) = effect {
                    ended = Some(outcome);
                } else if let Some(answer) = self.execute(effect).await {
                    queue.push_back(answer);
                }
            }
        }
        ended
    }

    fn name(&self, agent: usize) -> String {
        self.team.agents[agent].plan.name.clone()
    }

    /// Carries out one effect; returns what it answers, if anything.
    async fn execute(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn {
                agent,
                generation,
                resume,
                first_message,
            } => Some(self.spawn(agent, generation, resume, &first_message).await),
            Effect::Send { agent, text } => {
                if let Err(error) = self.processes.write(agent, &text).await {
                    let name = self.name(agent);
                    tracing::warn!(agent = %name, error = %format!("{error:#}"), "cannot write to the agent");
                }
                None
            }
            Effect::Stop { agent, grace } => {
                self.processes.stop(agent, grace);
                None
            }
            Effect::Kill { agent } => {
                self.processes.kill_now(agent);
                None
            }
            Effect::Patch { agent, update } => {
                self.server.patch_agent(&self.name(agent), &update).await;
                None
            }
            Effect::Record { agent, payload } => {
                self.server.record(&self.name(agent), payload).await;
                None
            }
            Effect::ReleaseAfterCrash { agent, reason } => {
                let name = self.name(agent);
                let released = self.server.release(&name, &reason).await;
                let crashed = AgentCrashed {
                    reason: Some(reason),
                    released,
                    alert: true,
                    gave_up: false,
                    message: None,
                };
                self.server
                    .record(&name, EventPayload::AgentCrashed(crashed))
                    .await;
                None
            }
            Effect::Save { agent, state } => {
                let path = self.launches[agent].dir.join("supervisor.json");
                if let Ok(text) = serde_json::to_string(&state)
                    && let Err(error) = std::fs::write(&path, text)
                {
                    tracing::warn!(path = %path.display(), %error, "cannot save the agent's state");
                }
                None
            }
            Effect::ReadTeam { messages } => match self.server.team(messages).await {
                Ok(view) => Some(Input::TeamRead(view)),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot read the team's state");
                    Some(Input::TeamReadFailed)
                }
            },
            Effect::RecordAbout { name, payload } => {
                self.server.record(&name, payload).await;
                None
            }
            Effect::StopLoops => {
                self.team_budget_spent.cancel();
                None
            }
            Effect::Say(text) => {
                eprintln!("conclave: {text}");
                None
            }
            Effect::Ended(_) => None,
        }
    }

    async fn spawn(
        &mut self,
        agent: usize,
        generation: u64,
        resume: Option<String>,
        first_message: &str,
    ) -> Input {
        let plan = &self.team.agents[agent].plan;
        let launch_info = &self.launches[agent];
        let launch = plan::command_line(plan, &launch_info.files, resume.as_deref()).map(
            |(program, args)| {
                let mut env = plan::extra_env(plan);
                env.insert(ENV_URL.to_string(), self.url.clone());
                env.insert(ENV_AGENT.to_string(), plan.name.clone());
                env.insert(ENV_TOKEN.to_string(), launch_info.token.clone());
                Launch {
                    agent,
                    generation,
                    program,
                    args: args.into_iter().map(Into::into).collect(),
                    cwd: plan.cwd.clone(),
                    env,
                    dir: launch_info.dir.clone(),
                }
            },
        );
        let spawned = launch.and_then(|launch| self.processes.spawn(launch));
        match spawned {
            Ok(pid) => {
                if let Err(error) = self.processes.write(agent, first_message).await {
                    let name = self.name(agent);
                    tracing::warn!(agent = %name, error = %format!("{error:#}"), "cannot write the first message");
                }
                Input::Spawned {
                    agent,
                    generation,
                    pid,
                }
            }
            Err(error) => Input::SpawnFailed {
                agent,
                generation,
                error: format!("{error:#}"),
            },
        }
    }

    /// Ends every process (stdin closed, then signals) and waits for them, up to a limit.
    async fn stop_all(&mut self, reports: &mut mpsc::Receiver<ProcessReport>) {
        self.feed(Input::Shutdown).await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while self.team.any_running() {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(report)) => {
                    let input = self.input_of(report);
                    self.feed(input).await;
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.feed(Input::ShutdownDeadline).await;
    }
}

#[cfg(test)]
mod tests {
    //! The driver with a scripted process side, a recording server and tokio's paused clock:
    //! no CLI, no server, no waiting.

    use std::sync::{Arc, Mutex};

    use conclave_core::config::AgentSettings;

    use super::*;
    use crate::plan::AgentPlan;

    /// What the fakes saw, in order.
    #[derive(Debug, Default)]
    struct Seen {
        /// (agent, resume, when) per spawn.
        spawns: Vec<(usize, Option<String>, tokio::time::Instant)>,
        writes: Vec<(usize, String)>,
        stops: Vec<usize>,
        patches: Vec<(String, Option<conclave_core::model::AgentStatus>)>,
        records: Vec<(String, String)>,
    }

    /// A process side whose processes print one turn, or crash at once while `crashes` lasts.
    struct ScriptedProcesses {
        reports: mpsc::Sender<ProcessReport>,
        generations: HashMap<usize, u64>,
        crashes: usize,
        seen: Arc<Mutex<Seen>>,
    }

    impl ScriptedProcesses {
        fn report(&self, report: ProcessReport) {
            self.reports.try_send(report).expect("room for a report");
        }
    }

    impl ProcessSide for ScriptedProcesses {
        fn spawn(&mut self, launch: Launch) -> anyhow::Result<u32> {
            let (agent, generation) = (launch.agent, launch.generation);
            let resume = launch
                .args
                .iter()
                .position(|arg| arg == "--resume")
                .and_then(|at| launch.args.get(at + 1))
                .map(|arg| arg.to_string_lossy().into_owned());
            self.seen.lock().expect("seen").spawns.push((
                agent,
                resume,
                tokio::time::Instant::now(),
            ));
            self.generations.insert(agent, generation);
            let line = |value: Value| ProcessReport::Line {
                agent,
                generation,
                value,
            };
            self.report(line(
                json!({"type": "system", "subtype": "init", "session_id": "s1"}),
            ));
            if self.crashes > 0 {
                self.crashes -= 1;
                self.report(ProcessReport::Exited {
                    agent,
                    generation,
                    how: "exit code 1".into(),
                    stderr: Vec::new(),
                });
            } else {
                self.report(line(json!({"type": "result", "total_cost_usd": 0.25,
                    "session_id": "s1", "modelUsage": {"m": {"contextWindow": 1000}}})));
            }
            Ok(4000 + agent as u32)
        }

        async fn write(&mut self, agent: usize, text: &str) -> anyhow::Result<()> {
            let mut seen = self.seen.lock().expect("seen");
            seen.writes.push((agent, text.to_string()));
            Ok(())
        }

        fn stop(&mut self, agent: usize, _grace: Duration) {
            self.seen.lock().expect("seen").stops.push(agent);
            let generation = self.generations.get(&agent).copied().unwrap_or(0);
            self.report(ProcessReport::Exited {
                agent,
                generation,
                how: "exit code 0".into(),
                stderr: Vec::new(),
            });
        }

        fn kill_now(&mut self, _agent: usize) {}

        fn forget(&mut self, agent: usize) {
            self.generations.remove(&agent);
        }
    }

    /// A server that records what it is told and has no tasks and no messages.
    struct RecordingServer {
        seen: Arc<Mutex<Seen>>,
    }

    impl ServerSide for RecordingServer {
        async fn patch_agent(&self, name: &str, update: &AgentUpdate) {
            let mut seen = self.seen.lock().expect("seen");
            seen.patches.push((name.to_string(), update.status));
        }

        async fn record(&self, name: &str, payload: EventPayload) {
            let mut seen = self.seen.lock().expect("seen");
            seen.records
                .push((name.to_string(), payload.kind().to_string()));
        }

        async fn release(&self, _name: &str, _reason: &str) -> Option<Value> {
            Some(json!({"tasks": []}))
        }

        async fn team(&self, _messages: bool) -> anyhow::Result<TeamView> {
            Ok(TeamView::default())
        }
    }

    fn driver(
        dir: &std::path::Path,
        crashes: usize,
    ) -> (
        Driver<ScriptedProcesses, RecordingServer>,
        mpsc::Receiver<ProcessReport>,
        Arc<Mutex<Seen>>,
    ) {
        let plan = AgentPlan {
            name: "a".into(),
            role: None,
            host: None,
            caps: Vec::new(),
            settings: AgentSettings {
                command: Some("/bin/agent-cli".into()),
                ..AgentSettings::default()
            },
            cwd: dir.to_path_buf(),
            recycle_at: 0.7,
            hibernate_after: Duration::from_secs(600),
            max_restarts: 5,
            restart_window: Duration::from_secs(600),
        };
        let (reports_tx, reports) = mpsc::channel(64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let launch = AgentLaunch {
            token: "tok".into(),
            files: AgentFiles {
                mcp_config: dir.join("mcp.json"),
                settings: dir.join("settings.json"),
            },
            dir: dir.to_path_buf(),
        };
        let driver = Driver {
            team: Team::new(vec![AgentState::new(plan, now())], false),
            launches: vec![launch],
            url: "http://127.0.0.1:1".into(),
            processes: ScriptedProcesses {
                reports: reports_tx,
                generations: HashMap::new(),
                crashes,
                seen: seen.clone(),
            },
            server: RecordingServer { seen: seen.clone() },
            loops: JoinSet::new(),
            loops_stop: CancellationToken::new(),
            loop_costs: mpsc::unbounded_channel().1,
            team_budget_spent: CancellationToken::new(),
        };
        (driver, reports, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_team_runs_its_turn_and_finishes_when_quiet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut driver, mut reports, seen) = driver(dir.path(), 0);
        let (_events_tx, mut events) = mpsc::channel(8);
        let outcome = driver
            .run(&mut reports, &mut events, CancellationToken::new())
            .await;
        assert_eq!(outcome, Outcome::Finished);
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.spawns.len(), 1);
        assert!(
            seen.writes[0].1.contains("You are a"),
            "the first message: {:?}",
            seen.writes
        );
        let kinds: Vec<&str> = seen.records.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(kinds, ["agent.started", "agent.turn", "agent.exited"]);
        assert!(
            seen.patches
                .contains(&("a".into(), Some(conclave_core::model::AgentStatus::Idle)))
        );
        assert_eq!(seen.stops, [0], "ended at the finish");
        let saved: SavedState = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("supervisor.json")).expect("saved"),
        )
        .expect("a saved state");
        assert_eq!(saved.session_id.as_deref(), Some("s1"));
        assert!((saved.session_cost - 0.25).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_process_is_restarted_after_its_backoff_resuming_its_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut driver, mut reports, seen) = driver(dir.path(), 1);
        let (_events_tx, mut events) = mpsc::channel(8);
        assert_eq!(
            driver
                .run(&mut reports, &mut events, CancellationToken::new())
                .await,
            Outcome::Finished
        );
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.spawns.len(), 2, "{:?}", seen.spawns);
        let (first, second) = (&seen.spawns[0], &seen.spawns[1]);
        assert_eq!(first.1, None);
        assert_eq!(second.1.as_deref(), Some("s1"), "resumes its session");
        assert!(second.2 - first.2 >= Duration::from_secs(1), "backoff");
        let kinds: Vec<&str> = seen.records.iter().map(|(_, k)| k.as_str()).collect();
        assert!(kinds.contains(&"agent.crashed") && kinds.contains(&"agent.restarted"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_spending_the_team_budget_is_stopped_before_its_next_iteration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut driver, mut reports, seen) = driver(dir.path(), 0);
        driver.team.agents[0].plan.settings.team_budget_usd = Some(1.0);
        let (spent, loop_costs) = mpsc::unbounded_channel();
        driver.loop_costs = loop_costs;
        let budget_spent = driver.team_budget_spent.clone();
        driver.team.loops.running = 1;
        // A loop as `spawn_loop` runs one: it tells its spend after an iteration and waits
        // until it is counted before it would start another.
        driver.loops.spawn(async move {
            let (counted, answer) = tokio::sync::oneshot::channel();
            let spend = LoopSpend {
                name: "fixer".into(),
                total_usd: 1.0,
                counted,
            };
            spent.send(spend).expect("the driver counts");
            answer.await.expect("counted");
            LoopEnded {
                name: "fixer".into(),
                could_not_run: None,
                summary: format!("fixer stopped at once: {}", budget_spent.is_cancelled()),
            }
        });
        let (_events_tx, mut events) = mpsc::channel(8);
        driver
            .run(&mut reports, &mut events, CancellationToken::new())
            .await;
        assert_eq!(
            driver.team.summaries().last().map(String::as_str),
            Some("fixer stopped at once: true")
        );
        let seen = seen.lock().expect("seen");
        assert!(
            seen.records
                .contains(&("fixer".to_string(), "agent.alert".to_string())),
            "the alert names the loop: {:?}",
            seen.records
        );
        assert_eq!(seen.stops, [0], "the team's agent is stopped too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_run_ends_its_agents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut driver, mut reports, seen) = driver(dir.path(), 0);
        let (_events_tx, mut events) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert_eq!(
            driver.run(&mut reports, &mut events, shutdown).await,
            Outcome::Stopped
        );
        let seen = seen.lock().expect("seen");
        assert!(seen.spawns.is_empty(), "nothing starts after a stop");
        assert!(
            seen.patches
                .contains(&("a".into(), Some(conclave_core::model::AgentStatus::Offline)))
        );
    }
}
