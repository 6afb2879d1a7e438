//! `conclave loop`: the `claude -p` loop. Each iteration is a fresh client process, run as one
//! registered agent (default `loop`) with the Conclave MCP config and hooks, given the prompt
//! and a bounded summary of the server's state; then the check command runs. The loop ends when
//! the check passes, the iterations or the budget run out, no iteration could run at all, or a
//! person interrupts it.
//!
//! Every iteration starts from nothing on purpose (no `--resume`): what carries over is what the
//! agent left in the project and on the server (tasks, notes), plus the last result and check
//! output quoted in the summary, so a long loop never fills a context window.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use conclave_client::{Client, ENV_AGENT, ENV_TOKEN, ENV_URL, segment};
use conclave_core::config::AgentSettings;
use conclave_core::event::{AgentIteration, EventPayload};
use conclave_core::model::{
    ConfirmDecision, Confirmation, ConfirmationAnswer, ConfirmationList, ConfirmationRequest,
    EventList, MAX_CONFIRMATION_SUMMARY, NewAgent, NewEvent, StatusReport, TaskStatus,
};
use conclave_core::project::Project;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent_files::prepare_agent;
use crate::coordination::{CoordinationMeter, FixedCosts, is_conclave_tool};
use crate::plan::{
    AgentPlan, DEFAULT_HIBERNATE_AFTER, DEFAULT_MAX_RESTARTS, DEFAULT_RECYCLE_AT,
    DEFAULT_RESTART_WINDOW, command_line, extra_env,
};
use crate::process::user_message_line;
use crate::stream::{Content, StreamLog, StreamUpdate, parse_line, truncate};

/// The agent name a loop runs as unless told otherwise.
pub const DEFAULT_LOOP_AGENT: &str = "loop";
/// The most of the server's state quoted to an iteration.
pub const MAX_SUMMARY_CHARS: usize = 8000;
/// How long the check may run before it counts as failed.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(600);
/// Lines of the check's output quoted to the next iteration.
const CHECK_TAIL_LINES: usize = 20;
/// The most of the last iteration's result text quoted to the next.
const MAX_RESULT_CHARS: usize = 2000;
/// Tasks listed in the summary, per status.
const MAX_TASKS_LISTED: usize = 20;
/// Iterations in a row whose client gave no result before the loop gives up (exit 7).
const MAX_FAILED_IN_A_ROW: usize = 3;
/// How long an interrupted client gets to end after SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often a loop waiting for a person asks the server whether someone answered.
const CONFIRM_POLL: Duration = Duration::from_millis(500);

/// What a loop is asked to do.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// The prompt given to every iteration.
    pub prompt: String,
    /// The check command (`sh -c`, in the project root); none runs until `max` or the budget.
    pub until: Option<String>,
    pub max: Option<u32>,
    /// Total USD the loop may spend; checked after each iteration.
    pub budget_usd: Option<f64>,
    pub model: Option<String>,
    pub agent: String,
    /// Claude Code's `--permission-mode` for every iteration (none passes nothing).
    pub permission_mode: Option<String>,
    pub check_timeout: Duration,
    /// Extra environment for the client (on top of the inherited one).
    pub env: std::collections::BTreeMap<String, String>,
    /// The characters of the Conclave tool definitions as the model receives them, for the
    /// coordination account (0 leaves them out).
    pub tool_definition_chars: usize,
}

/// No prompt yet (a caller sets it), no check, no bound, the default agent name and check
/// time limit: for `..LoopOptions::default()` beside the fields a caller sets.
impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            prompt: String::new(),
            until: None,
            max: None,
            budget_usd: None,
            model: None,
            agent: DEFAULT_LOOP_AGENT.to_string(),
            permission_mode: None,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            env: Default::default(),
            tool_definition_chars: 0,
        }
    }
}

/// Why the loop ended; each has its exit code.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopEnd {
    /// The check exited 0: exit 0.
    CheckPassed,
    /// `--max` iterations ran and the check still fails: exit 6.
    MaxIterations,
    /// The budget is spent: exit 6.
    BudgetSpent,
    /// Not one iteration could run (no client, not logged in, ...): exit 7.
    CouldNotRun(String),
    /// Ctrl-C: the running iteration was stopped and recorded: exit 130.
    Interrupted,
    /// A person answered "stop" when asked to confirm the next iteration (`--confirm`): exit 6,
    /// like any other end without the check passing.
    StoppedByPerson(String),
    /// A loop inside `conclave up` found no ready task that fits it, and no work left that could
    /// make one ready: exit 0 (its part of the team is done).
    NoTaskLeft,
}

impl LoopEnd {
    pub fn exit_code(&self) -> u8 {
        match self {
            LoopEnd::CheckPassed | LoopEnd::NoTaskLeft => 0,
            LoopEnd::MaxIterations | LoopEnd::BudgetSpent | LoopEnd::StoppedByPerson(_) => 6,
            LoopEnd::CouldNotRun(_) => 7,
            LoopEnd::Interrupted => 130,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            LoopEnd::CheckPassed => "the check passed".into(),
            LoopEnd::MaxIterations => "the iterations ran out".into(),
            LoopEnd::BudgetSpent => "the budget is spent".into(),
            LoopEnd::CouldNotRun(why) => format!("no iteration could run: {why}"),
            LoopEnd::Interrupted => "interrupted".into(),
            LoopEnd::StoppedByPerson(who) => format!("stopped by {who} before the next iteration"),
            LoopEnd::NoTaskLeft => "no task is left for it".into(),
        }
    }
}

/// What one iteration did.
#[derive(Debug, Clone, PartialEq)]
pub struct IterationReport {
    pub number: u32,
    pub cost_usd: f64,
    pub turns: Option<i64>,
    /// The client's final result text (`result` line), if it got that far.
    pub result: Option<String>,
    /// The client reported a result, error or not: it ran.
    pub ran: bool,
    pub is_error: bool,
    pub check: Option<CheckOutcome>,
    pub duration: Duration,
    pub interrupted: bool,
    /// Why the client did not run, or its last stderr lines when it failed.
    pub failure: Option<String>,
}

/// What the check answered.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// None when it timed out or was killed by a signal.
    pub exit_code: Option<i32>,
    /// Its last output lines (stdout and stderr together).
    pub tail: String,
}

impl CheckOutcome {
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The whole loop's account.
#[derive(Debug, Clone)]
pub struct LoopReport {
    pub end: LoopEnd,
    pub iterations: Vec<IterationReport>,
    pub elapsed: Duration,
}

impl LoopReport {
    pub fn cost_usd(&self) -> f64 {
        self.iterations.iter().map(|it| it.cost_usd).sum()
    }
}

/// `--confirm`: before each iteration after the first, the loop asks a person through the
/// server (`POST /api/agents/NAME/confirmation`) and waits for the answer, which the terminal
/// and the dashboard give the same way (`POST /api/agents/NAME/confirm`).
pub struct ConfirmEach {
    /// Answers typed in the terminal. The loop records each through the server like the
    /// dashboard's, so there is one decision whoever gives it; a closed channel (no terminal)
    /// leaves the answer to the dashboard and the API.
    pub terminal: mpsc::UnboundedReceiver<ConfirmationAnswer>,
    /// Told when the loop starts waiting (the terminal's question).
    pub on_wait: Box<dyn FnMut(&Confirmation) + Send>,
}

/// Told a line to show a person (the loop is a library; its caller prints).
pub type SayLine = Box<dyn FnMut(&str) + Send>;

/// What the loop is besides its [`LoopOptions`]: who it runs as, and its checkpoints.
#[derive(Default)]
pub struct LoopExtras {
    /// The role and capabilities it registers with (a loop inside `conclave up` claims tasks
    /// that fit them).
    pub role: Option<String>,
    pub caps: Vec<String>,
    /// Appended to the loop's own protocol prompt (a loop inside `up` is told to claim one task
    /// per iteration).
    pub extra_prompt: Option<String>,
    /// The client's settings (command, tools, env, the agent's own prompt) of a `[[agent]]`
    /// with `mode = "loop"`; none builds them from the [`LoopOptions`] alone.
    pub settings: Option<AgentSettings>,
    /// Wait for a person before each iteration after the first.
    pub confirm: Option<ConfirmEach>,
    /// A loop inside `conclave up`: an iteration runs only when a ready task fits the loop
    /// (it claims one per iteration); while none does but other work may still make one ready,
    /// it waits; when no work is left that could, it ends ([`LoopEnd::NoTaskLeft`]).
    pub one_task_each: bool,
    /// With `one_task_each`: told what the loop waits for when no ready task fits it (the
    /// tasks that may still become ready, and why they are not), again when that changes.
    pub on_waiting: Option<SayLine>,
    /// Told after each iteration what the loop's agent has spent in all (what the server
    /// counted before this run, plus this run's iterations): a loop inside `conclave up` counts
    /// against the team's budget. The loop waits until the spend is counted, so that a budget
    /// it spent stops it before another iteration starts.
    pub on_spent: Option<mpsc::UnboundedSender<LoopSpend>>,
}

/// A loop's spend in all, told to whoever counts it ([`LoopExtras::on_spent`]).
#[derive(Debug)]
pub struct LoopSpend {
    pub name: String,
    pub total_usd: f64,
    /// Answered (or dropped) once the spend is counted.
    pub counted: tokio::sync::oneshot::Sender<()>,
}

/// Runs the loop. `url` is the server as agents reach it; `on_iteration` is called after each
/// iteration (the terminal's one line); `interrupt` stops the running iteration cleanly.
pub async fn run_loop(
    project: &Project,
    admin: &Client,
    url: &str,
    options: &LoopOptions,
    interrupt: CancellationToken,
    on_iteration: impl FnMut(&IterationReport),
) -> anyhow::Result<LoopReport> {
    run_loop_with(
        project,
        admin,
        url,
        options,
        LoopExtras::default(),
        interrupt,
        on_iteration,
    )
    .await
}

/// [`run_loop`] with a role, capabilities and, with [`LoopExtras::confirm`], a person's
/// confirmation before each iteration after the first.
pub async fn run_loop_with(
    project: &Project,
    admin: &Client,
    url: &str,
    options: &LoopOptions,
    mut extras: LoopExtras,
    interrupt: CancellationToken,
    mut on_iteration: impl FnMut(&IterationReport),
) -> anyhow::Result<LoopReport> {
    let started = Instant::now();
    let registration = NewAgent {
        name: options.agent.clone(),
        role: extras.role.clone(),
        model: options.model.clone(),
        caps: extras.caps.clone(),
        ..Default::default()
    };
    let strict = false;
    let joined = prepare_agent(project, admin, &registration, strict, url).await?;
    // The agent's cost goes on from what the server counted in earlier runs, as a team agent's.
    let cost_before = admin
        .get::<conclave_core::model::Agent>(
            &format!("/api/agents/{}", segment(&options.agent)),
            &[],
        )
        .await
        .map_or(0.0, |agent| agent.cost_usd);
    let mut plan = loop_plan(options, project.root());
    if let Some(settings) = extras.settings.take() {
        // The loop's protocol first, then the agent's own prompt, as for team agents.
        let own = settings.prompt.clone();
        plan.settings = settings;
        plan.settings.prompt = Some(match own {
            Some(own) => format!("{LOOP_PROMPT}\n\n{own}"),
            None => LOOP_PROMPT.to_string(),
        });
    }
    if let Some(extra) = &extras.extra_prompt {
        let base = plan.settings.prompt.clone().unwrap_or_default();
        plan.settings.prompt = Some(format!("{base}\n\n{extra}"));
    }
    plan.role = extras.role.clone();
    plan.caps = extras.caps.clone();
    let dir = project.agent_dir(&options.agent);
    let mut stream_log = StreamLog::in_dir(&dir);
    // The protocol and the loop's own instructions ride in every call's system prompt.
    let mut meter = CoordinationMeter::new(FixedCosts {
        tool_definition_chars: options.tool_definition_chars,
        protocol_chars: crate::plan::system_prompt(&plan).chars().count(),
    });

    let mut iterations: Vec<IterationReport> = Vec::new();
    let mut seen_seq = current_seq(admin).await.unwrap_or(0);
    let mut prompt = options.prompt.clone();
    let end = loop {
        let number = iterations.len() as u32 + 1;
        // A loop inside `up` first waits for a task that fits it: a person is asked only about an
        // iteration that would run.
        if extras.one_task_each {
            let fits = TaskFit {
                name: &options.agent,
                role: extras.role.as_deref(),
                caps: &extras.caps,
            };
            match wait_for_a_task(admin, &fits, &mut extras.on_waiting, &interrupt).await {
                TaskWait::Ready => {}
                TaskWait::NoneLeft => break LoopEnd::NoTaskLeft,
                TaskWait::Interrupted => break LoopEnd::Interrupted,
            }
        }
        if let (Some(confirm), Some(last)) = (extras.confirm.as_mut(), iterations.last()) {
            match wait_for_person(admin, &options.agent, last, confirm, &interrupt).await? {
                Waited::Interrupted => break LoopEnd::Interrupted,
                Waited::Answered(answer) => match answer.decision {
                    Some(ConfirmDecision::Stop) => {
                        let who = answer.decided_by.unwrap_or_else(|| "a person".into());
                        break LoopEnd::StoppedByPerson(who);
                    }
                    // Answered is decided: the wait returns only then.
                    Some(ConfirmDecision::Continue) | None => {
                        if let Some(edited) = answer.prompt {
                            prompt = if extras.one_task_each {
                                // A loop inside `up` still takes one task per iteration: the
                                // person's words come with that instruction, not instead of it.
                                format!(
                                    "{}\n\nA person's instructions for this loop:\n{edited}",
                                    options.prompt.trim_end()
                                )
                            } else {
                                edited
                            };
                        }
                    }
                },
            }
        }
        let (summary, last_seq) = state_summary(admin, seen_seq, iterations.last()).await;
        let message = format!("{}\n\n{summary}", prompt.trim_end());
        let mut report = run_client(
            &plan,
            &joined.files,
            &joined.token,
            url,
            &message,
            &interrupt,
            &mut stream_log,
            number,
            &mut meter,
        )
        .await;
        seen_seq = last_seq;
        // The prompt is the work; the state summary is what coordination added to it, in every
        // call of the session, as is what the SessionStart hook injected.
        meter.session_context(summary.chars().count());
        add_session_context(admin, &options.agent, seen_seq, &mut meter).await;
        let spent = iterations.iter().map(|it| it.cost_usd).sum::<f64>() + report.cost_usd;
        report_account(admin, &options.agent, cost_before + spent, meter.account()).await;
        if let Some(counter) = &extras.on_spent {
            let (counted, answer) = tokio::sync::oneshot::channel();
            let spend = LoopSpend {
                name: options.agent.clone(),
                total_usd: cost_before + spent,
                counted,
            };
            if counter.send(spend).is_ok() {
                tokio::select! {
                    _ = answer => {}
                    () = interrupt.cancelled() => {}
                }
            }
        }
        // The next iteration is a fresh session.
        meter.new_session();
        if let Some(check) = options
            .until
            .as_deref()
            .filter(|_| report.ran && !report.interrupted)
        {
            report.check = Some(run_check(check, project.root(), options.check_timeout).await);
        }
        record_iteration(admin, &options.agent, &report).await;
        if extras.one_task_each {
            // A task the iteration claimed and did not finish would otherwise stay held by a
            // session that is gone: it returns to the board for the next iteration (or anyone).
            let reason = format!("iteration {number} of the loop ended without finishing it");
            release_unfinished(admin, &options.agent, &reason).await;
        }
        on_iteration(&report);
        let interrupted = report.interrupted || interrupt.is_cancelled();
        let ran = report.ran;
        let failure = report.failure.clone();
        let passed = report.check.as_ref().is_some_and(CheckOutcome::passed);
        iterations.push(report);
        if interrupted {
            break LoopEnd::Interrupted;
        }
        // A client that cannot start or answer (missing binary, not logged in) will not do
        // better next time: stop rather than spin, at once when nothing ever ran, else after a
        // few failures in a row (one may be a passing hiccup).
        let recent = iterations.iter().rev().take(MAX_FAILED_IN_A_ROW);
        let never_ran = iterations.iter().all(|it| !it.ran);
        let failing = iterations.len() >= MAX_FAILED_IN_A_ROW && recent.clone().all(|it| !it.ran);
        if !ran && (never_ran || failing) {
            break LoopEnd::CouldNotRun(
                failure.unwrap_or_else(|| "the client gave no result".into()),
            );
        }
        if passed {
            break LoopEnd::CheckPassed;
        }
        let spent: f64 = iterations.iter().map(|it| it.cost_usd).sum();
        if options.budget_usd.is_some_and(|budget| spent >= budget) {
            break LoopEnd::BudgetSpent;
        }
        if options.max.is_some_and(|max| number >= max) {
            break LoopEnd::MaxIterations;
        }
    };
    Ok(LoopReport {
        end,
        iterations,
        elapsed: started.elapsed(),
    })
}

/// Who a loop is, for the tasks that fit it.
struct TaskFit<'a> {
    name: &'a str,
    role: Option<&'a str>,
    caps: &'a [String],
}

/// How a wait for a fitting ready task ended.
enum TaskWait {
    Ready,
    NoneLeft,
    Interrupted,
}

/// Returns the tasks `agent` holds unfinished (claimed or in progress) to the board, when it
/// holds any; answers whether it did. Tasks it put in review or marked blocked stay as they are.
async fn release_unfinished(admin: &Client, agent: &str, reason: &str) -> bool {
    let Ok(status) = admin.get::<StatusReport>("/api/status", &[]).await else {
        return false;
    };
    let holds = status.tasks.iter().any(|task| {
        task.assignee.as_deref() == Some(agent)
            && matches!(task.status, TaskStatus::Claimed | TaskStatus::InProgress)
    });
    if !holds {
        return false;
    }
    let path = format!("/api/agents/{}/release", segment(agent));
    match admin
        .post::<_, Value>(&path, &serde_json::json!({ "reason": reason }))
        .await
    {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "cannot release the loop's tasks");
            false
        }
    }
}

/// How often a loop with nothing to do looks at the board again.
const TASK_POLL: Duration = Duration::from_secs(2);

/// Waits until a ready task fits the loop; answers [`TaskWait::NoneLeft`] when none does and no
/// task is left that could still become ready for it (pending on others' work, held by someone,
/// in review). A server that does not answer is asked again.
async fn wait_for_a_task(
    admin: &Client,
    fits: &TaskFit<'_>,
    on_waiting: &mut Option<SayLine>,
    interrupt: &CancellationToken,
) -> TaskWait {
    let mut said = String::new();
    // Looked at again at once after the first release only: a task that stays held after that
    // is waited on like the others, at the poll's pace.
    let mut released = false;
    loop {
        if let Ok(status) = admin.get::<StatusReport>("/api/status", &[]).await {
            let fitting =
                |task: &&conclave_core::model::Task| task.fits(fits.name, fits.role, fits.caps);
            let ready = status
                .tasks
                .iter()
                .filter(fitting)
                .any(|task| task.status == TaskStatus::Ready);
            if ready {
                return TaskWait::Ready;
            }
            // A task handed back to the loop while no iteration ran (a person rejected what it
            // finished) is held by no live session: back to the board, for the next iteration.
            if release_unfinished(admin, fits.name, "handed back while no iteration ran").await
                && !released
            {
                released = true;
                continue;
            }
            let may_come: Vec<String> = status
                .tasks
                .iter()
                .filter(fitting)
                .filter_map(|task| {
                    let why = match task.status {
                        TaskStatus::Pending => "waits for the tasks it depends on".to_string(),
                        TaskStatus::Claimed | TaskStatus::InProgress => {
                            format!("held by {}", task.assignee.as_deref().unwrap_or("nobody"))
                        }
                        TaskStatus::Review if task.awaiting_approval => {
                            "waits for a person's approval".to_string()
                        }
                        TaskStatus::Review => "in review".to_string(),
                        _ => return None,
                    };
                    Some(format!("{} {why}", task.id))
                })
                .collect();
            if may_come.is_empty() {
                return TaskWait::NoneLeft;
            }
            let why = format!("no ready task fits it; {}", may_come.join("; "));
            if why != said {
                if let Some(tell) = on_waiting.as_mut() {
                    tell(&why);
                }
                said = why;
            }
        }
        tokio::select! {
            () = interrupt.cancelled() => return TaskWait::Interrupted,
            () = tokio::time::sleep(TASK_POLL) => {}
        }
    }
}

/// How a wait for a person ended.
enum Waited {
    Answered(Confirmation),
    Interrupted,
}

/// Asks the server for a person's confirmation of the iteration after `last` and waits for the
/// answer: typed in the terminal (recorded through the server here) or given on the dashboard or
/// the API (seen by asking the server). Ctrl-C while waiting records a stop, so that nothing is
/// left waiting on the dashboard for a loop that is gone.
async fn wait_for_person(
    admin: &Client,
    agent: &str,
    last: &IterationReport,
    confirm: &mut ConfirmEach,
    interrupt: &CancellationToken,
) -> anyhow::Result<Waited> {
    // Lines typed while the iteration ran answer nothing.
    while confirm.terminal.try_recv().is_ok() {}
    let path = format!("/api/agents/{}", segment(agent));
    let request = ConfirmationRequest {
        next_iteration: last.number + 1,
        summary: truncate(&iteration_line(last), MAX_CONFIRMATION_SUMMARY),
    };
    let asked: Confirmation = admin
        .post(&format!("{path}/confirmation"), &request)
        .await
        .context("cannot ask the server for a person's confirmation")?;
    (confirm.on_wait)(&asked);
    let mut terminal_open = true;
    let mut poll = tokio::time::interval(CONFIRM_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = interrupt.cancelled() => {
                let stop = ConfirmationAnswer { decision: ConfirmDecision::Stop, prompt: None };
                let _ = admin.post::<_, Value>(&format!("{path}/confirm"), &stop).await;
                return Ok(Waited::Interrupted);
            }
            typed = confirm.terminal.recv(), if terminal_open => match typed {
                Some(answer) => {
                    // Answered already on the dashboard (a conflict): the poll below finds it.
                    match admin.post::<_, Confirmation>(&format!("{path}/confirm"), &answer).await {
                        Ok(answered) if answered.seq == asked.seq => {
                            return Ok(Waited::Answered(answered));
                        }
                        Ok(_) => {}
                        Err(error) => tracing::info!(error = %format!("{error:#}"), "the terminal's answer was not recorded"),
                    }
                }
                None => terminal_open = false,
            },
            _ = poll.tick() => {
                let query = [("agent", agent.to_string())];
                if let Ok(list) = admin.get::<ConfirmationList>("/api/confirmations", &query).await
                    && let Some(answered) = list
                        .confirmations
                        .into_iter()
                        .find(|c| c.seq == asked.seq && c.decision.is_some())
                {
                    return Ok(Waited::Answered(answered));
                }
            }
        }
    }
}

/// One line saying how an iteration went (the terminal's, and the summary a person confirming
/// the next iteration reads).
pub fn iteration_line(it: &IterationReport) -> String {
    let check = match &it.check {
        Some(check) => match check.exit_code {
            Some(code) => format!("check exit {code}"),
            None => "check timed out".to_string(),
        },
        None if it.interrupted => "interrupted".to_string(),
        None if !it.ran => format!(
            "did not run: {}",
            it.failure.as_deref().unwrap_or("no result")
        ),
        None => "no check".to_string(),
    };
    format!(
        "iteration {}: ${:.4}, {} turns, {:.1}s, {}{}",
        it.number,
        it.cost_usd,
        it.turns.map_or_else(|| "?".to_string(), |t| t.to_string()),
        it.duration.as_secs_f64(),
        check,
        if it.is_error {
            " (the client reported an error)"
        } else {
            ""
        },
    )
}

/// The loop's agent as the command line builder sees it.
fn loop_plan(options: &LoopOptions, root: &Path) -> AgentPlan {
    let settings = AgentSettings {
        model: options.model.clone(),
        permission_mode: options.permission_mode.clone(),
        prompt: Some(LOOP_PROMPT.to_string()),
        env: (!options.env.is_empty()).then(|| options.env.clone()),
        ..AgentSettings::default()
    };
    AgentPlan {
        name: options.agent.clone(),
        role: None,
        host: None,
        caps: Vec::new(),
        settings,
        cwd: root.to_path_buf(),
        recycle_at: DEFAULT_RECYCLE_AT,
        hibernate_after: DEFAULT_HIBERNATE_AFTER,
        max_restarts: DEFAULT_MAX_RESTARTS,
        restart_window: DEFAULT_RESTART_WINDOW,
    }
}

/// Appended to the protocol text: the loop's agent is alone and short-lived.
const LOOP_PROMPT: &str = "You are one iteration of `conclave loop`: a fresh session that runs \
once, then ends. Make progress on the prompt, leave what the next iteration needs in the project \
and on the server (tasks, notes), and end with a short account of what you did.";

async fn current_seq(admin: &Client) -> anyhow::Result<i64> {
    let status: StatusReport = admin.get("/api/status", &[]).await?;
    Ok(status.last_seq)
}

/// The server's state for the next iteration (≤ [`MAX_SUMMARY_CHARS`]) and the last event
/// sequence number it covers. A server that does not answer is said so, not fatal.
async fn state_summary(
    admin: &Client,
    after: i64,
    last: Option<&IterationReport>,
) -> (String, i64) {
    let mut text = String::from("## State of the team (from Conclave)\n");
    let mut last_seq = after;
    match admin.get::<StatusReport>("/api/status", &[]).await {
        Ok(status) => {
            last_seq = status.last_seq;
            for (label, wanted) in [
                ("Ready tasks", &[TaskStatus::Ready][..]),
                (
                    "Open tasks",
                    &[
                        TaskStatus::Pending,
                        TaskStatus::Claimed,
                        TaskStatus::InProgress,
                        TaskStatus::Review,
                        TaskStatus::Blocked,
                    ][..],
                ),
            ] {
                let tasks: Vec<_> = status
                    .tasks
                    .iter()
                    .filter(|task| wanted.contains(&task.status))
                    .collect();
                text.push_str(&format!("\n{label}: {}\n", tasks.len()));
                for task in tasks.iter().take(MAX_TASKS_LISTED) {
                    text.push_str(&format!(
                        "- {} [{}] {}\n",
                        task.id,
                        task.status,
                        truncate(&task.title, 120)
                    ));
                }
            }
        }
        Err(error) => text.push_str(&format!("\n(the server did not answer: {error:#})\n")),
    }
    let query = [
        ("after", after.to_string()),
        ("kind", "note.added".to_string()),
        ("limit", "50".to_string()),
    ];
    if let Ok(list) = admin.get::<EventList>("/api/events", &query).await {
        text.push_str(&format!(
            "\nNotes added since the last iteration: {}\n",
            list.events.len()
        ));
        for event in &list.events {
            if let EventPayload::NoteAdded(note) = &event.payload {
                text.push_str(&format!(
                    "- {} ({}, by {}): {}\n",
                    note.id,
                    note.kind,
                    event.actor,
                    truncate(&note.title, 120)
                ));
            }
        }
    }
    if let Some(last) = last {
        text.push_str(&format!("\n## Iteration {}\n", last.number));
        if let Some(result) = &last.result {
            text.push_str(&format!(
                "Its result:\n{}\n",
                truncate(result, MAX_RESULT_CHARS)
            ));
        }
        if let Some(failure) = &last.failure {
            text.push_str(&format!("It failed: {}\n", truncate(failure, 500)));
        }
        if let Some(check) = &last.check {
            let code = check
                .exit_code
                .map_or_else(|| "none (timed out or killed)".into(), |c| c.to_string());
            text.push_str(&format!(
                "The check exited {code}; its last output:\n{}\n",
                check.tail
            ));
        }
    }
    (truncate(&text, MAX_SUMMARY_CHARS), last_seq)
}

/// Runs one client process to its end; never fails (what went wrong is in the report).
#[allow(clippy::too_many_arguments)]
async fn run_client(
    plan: &AgentPlan,
    files: &crate::agent_files::AgentFiles,
    token: &str,
    url: &str,
    message: &str,
    interrupt: &CancellationToken,
    stream_log: &mut StreamLog,
    number: u32,
    meter: &mut CoordinationMeter,
) -> IterationReport {
    let started = Instant::now();
    let mut report = IterationReport {
        number,
        cost_usd: 0.0,
        turns: None,
        result: None,
        ran: false,
        is_error: false,
        check: None,
        duration: Duration::ZERO,
        interrupted: false,
        failure: None,
    };
    if let Err(error) = drive_client(
        plan,
        files,
        token,
        url,
        message,
        interrupt,
        stream_log,
        &mut report,
        meter,
    )
    .await
    {
        report.failure = Some(format!("{error:#}"));
    }
    report.duration = started.elapsed();
    report
}

#[allow(clippy::too_many_arguments)]
async fn drive_client(
    plan: &AgentPlan,
    files: &crate::agent_files::AgentFiles,
    token: &str,
    url: &str,
    message: &str,
    interrupt: &CancellationToken,
    stream_log: &mut StreamLog,
    report: &mut IterationReport,
    meter: &mut CoordinationMeter,
) -> anyhow::Result<()> {
    let (program, args) = command_line(plan, files, None)?;
    let mut command = Command::new(&program);
    command
        .args(&args)
        .current_dir(&plan.cwd)
        .envs(extra_env(plan))
        .env(ENV_URL, url)
        .env(ENV_AGENT, &plan.name)
        .env(ENV_TOKEN, token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: the terminal's Ctrl-C reaches the loop, which then stops the
        // client on purpose (and records it) instead of the client dying half-way on its own.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    if let Some(mut stdin) = child.stdin.take() {
        let line = format!("{}\n", user_message_line(message));
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        // Closed: a `-p` client ends once its turn is over.
        drop(stdin);
    }
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut stopping = false;
    let mut conclave_calls = std::collections::HashSet::new();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                let _ = stream_log.append(&line);
                let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
                let update = parse_line(&value);
                if let StreamUpdate::Result { cost_usd, is_error, num_turns, .. } = &update {
                    report.ran = true;
                    report.is_error = *is_error;
                    report.cost_usd = cost_usd.unwrap_or(report.cost_usd);
                    report.turns = *num_turns;
                    report.result = value["result"].as_str().map(str::to_string);
                }
                meter_line(meter, &mut conclave_calls, update);
            }
            _ = interrupt.cancelled(), if !stopping => {
                stopping = true;
                report.interrupted = true;
                if let Some(pid) = pid {
                    let _ = killpg(pid, Signal::SIGINT);
                    tokio::spawn(async move {
                        tokio::time::sleep(STOP_GRACE).await;
                        let _ = killpg(pid, Signal::SIGKILL);
                    });
                }
            }
        }
    }
    let status = child.wait().await?;
    let stderr = stderr_task.await.unwrap_or_default();
    if !report.ran && !report.interrupted {
        let tail = last_lines(&stderr, 5);
        report.failure = Some(if tail.is_empty() {
            format!("{} ended ({status}) without a result", program.display())
        } else {
            format!("{} ended ({status}): {tail}", program.display())
        });
    }
    Ok(())
}

/// Counts one stream line in the coordination account: model calls, and Conclave tool calls
/// and their results (`conclave_calls` holds the ids of the Conclave calls awaiting results).
pub fn meter_line(
    meter: &mut CoordinationMeter,
    conclave_calls: &mut std::collections::HashSet<String>,
    update: StreamUpdate,
) {
    match update {
        StreamUpdate::Assistant { content, call, .. } => {
            if let Some(call) = call {
                meter.model_call(call.id.as_deref(), &call.usage);
            }
            for block in content {
                if let Content::Tool(tool) = block
                    && is_conclave_tool(&tool.name)
                {
                    meter.conclave_tool(tool.chars);
                    conclave_calls.insert(tool.id);
                }
            }
        }
        StreamUpdate::ToolResults(results) => {
            for result in results {
                if conclave_calls.remove(&result.id) {
                    meter.conclave_tool(result.bytes);
                }
            }
        }
        StreamUpdate::Result { output_tokens, .. } => meter.turn_result(output_tokens),
        _ => {}
    }
}

/// Adds the SessionStart context the server recorded for `agent` after event `after`.
async fn add_session_context(
    admin: &Client,
    agent: &str,
    after: i64,
    meter: &mut CoordinationMeter,
) {
    let query = [
        ("after", after.to_string()),
        ("kind", "agent.session_start".to_string()),
        ("limit", "50".to_string()),
    ];
    if let Ok(list) = admin.get::<EventList>("/api/events", &query).await {
        for event in &list.events {
            if event.agent.as_deref() == Some(agent)
                && let EventPayload::AgentSessionStart(started) = &event.payload
                && let Some(chars) = started.context_chars
            {
                meter.session_context(usize::try_from(chars).unwrap_or(0));
            }
        }
    }
}

/// Stores what the loop's agent has spent and its context account with the agent (`PATCH
/// /api/agents/NAME`), as a supervisor does for a team's agents; a failure is logged.
async fn report_account(
    admin: &Client,
    agent: &str,
    spent: f64,
    account: &conclave_core::model::Coordination,
) {
    let update = conclave_core::model::AgentUpdate {
        cost_usd: Some(spent),
        coordination: Some(account.clone()),
        ..conclave_core::model::AgentUpdate::default()
    };
    let path = format!("/api/agents/{agent}");
    if let Err(error) = admin.patch::<_, Value>(&path, &update).await {
        tracing::warn!(error = %format!("{error:#}"), "cannot report the coordination account");
    }
}

/// Runs the check with `sh -c` in `root`, at most `timeout`.
pub async fn run_check(check: &str, root: &Path, timeout: Duration) -> CheckOutcome {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(check)
        .current_dir(root)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            return CheckOutcome {
                exit_code: None,
                tail: format!("cannot run sh: {error}"),
            };
        }
        Err(_) => {
            return CheckOutcome {
                exit_code: None,
                tail: format!("the check timed out after {}s", timeout.as_secs()),
            };
        }
    };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    CheckOutcome {
        exit_code: output.status.code(),
        tail: last_lines(&text, CHECK_TAIL_LINES),
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(count);
    truncate(&lines[start..].join("\n"), 2000)
}

async fn record_iteration(admin: &Client, agent: &str, report: &IterationReport) {
    let outcome = if report.interrupted {
        "interrupted"
    } else if !report.ran {
        "not_run"
    } else if report.is_error {
        "error"
    } else {
        "ok"
    };
    let body = NewEvent {
        agent: agent.to_string(),
        task: None,
        payload: EventPayload::AgentIteration(AgentIteration {
            number: report.number,
            cost_usd: report.cost_usd,
            turns: report.turns,
            check_exit: report.check.as_ref().and_then(|check| check.exit_code),
            outcome: outcome.to_string(),
            duration_ms: i64::try_from(report.duration.as_millis()).unwrap_or(i64::MAX),
        }),
    };
    if let Err(error) = admin.post::<_, Value>("/api/events", &body).await {
        tracing::warn!(error = %format!("{error:#}"), "cannot record the iteration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_check_reports_its_exit_code_and_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check = run_check(
            "for i in $(seq 1 30); do echo line$i; done; exit 3",
            dir.path(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(check.exit_code, Some(3));
        assert!(!check.passed());
        assert!(check.tail.ends_with("line30"), "{}", check.tail);
        assert!(!check.tail.contains("line10\n"), "{}", check.tail);
        let passing = run_check("test -d .", dir.path(), Duration::from_secs(10)).await;
        assert!(passing.passed());
    }

    #[tokio::test]
    async fn a_check_that_runs_too_long_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check = run_check("sleep 5", dir.path(), Duration::from_millis(200)).await;
        assert_eq!(check.exit_code, None);
        assert!(check.tail.contains("timed out"), "{}", check.tail);
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(LoopEnd::CheckPassed.exit_code(), 0);
        assert_eq!(LoopEnd::MaxIterations.exit_code(), 6);
        assert_eq!(LoopEnd::BudgetSpent.exit_code(), 6);
        assert_eq!(LoopEnd::CouldNotRun("x".into()).exit_code(), 7);
        assert_eq!(LoopEnd::Interrupted.exit_code(), 130);
    }
}
