//! How each way is run. A run is: a fresh worktree at the comparison's commit, a `conclave.toml`
//! for the way (the project's `[server]` and `[defaults]`, the way's agents), a private
//! `conclave serve` in it, the way itself, its figures read from that server, the server
//! stopped, then the check.
//!
//! The team ways work in the run's own tree, shared by their agents: `isolation` and `[merge]`
//! are taken out of the configuration so that a comparison does not depend on worktree
//! isolation (the run's tree is already a worktree of its own).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use conclave_client::{Client, ENV_AGENT, ENV_TOKEN, ENV_URL};
use conclave_core::config::{AgentSettings, Config};
use conclave_core::model::{AgentStatus, AgentUpdate, NewAgent, NewTask};
use conclave_core::project::Project;
use conclave_supervisor::coordination::{CoordinationMeter, FixedCosts};
use conclave_supervisor::loop_run::{meter_line, run_check};
use conclave_supervisor::pricing;
use conclave_supervisor::stream::{StreamUpdate, parse_line};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::measure::{files_changed, measure_server};
use crate::report::{summarize, write_report};
use crate::{CompareOptions, Comparison, RunRecord, Way};

/// The pipeline the `pipeline` way runs.
pub const PIPELINE_NAME: &str = "compare";
/// The roles of the default team: an architect and two coders.
const DEFAULT_TEAM: &[(&str, &str)] = &[
    ("architect", "architect"),
    ("coder-1", "coder"),
    ("coder-2", "coder"),
];
/// The pipeline's stages (its agents have the same names).
const PIPELINE_STAGES: &[&str] = &["coder", "reviewer"];
/// Where a run's tree keeps the task file the loop reads (inside `.conclave/`, so it is no
/// changed file of the run).
const TASK_FILE: &str = ".conclave/compare-task.md";
/// Claude Code's local settings file, where a run's tool permissions go.
pub const LOCAL_SETTINGS: &str = ".claude/settings.local.json";
/// How long a private server may take to start.
const SERVER_START: Duration = Duration::from_secs(30);
/// How long a process gets to end after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// What the comparison tells its caller as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A run starts in this tree.
    Started {
        way: Way,
        repeat: u32,
        dir: &'a Path,
    },
    /// A run ended (or could not be carried out).
    Ended(&'a RunRecord),
}

/// Runs the comparison: every way, every repeat; `on_progress` is told when each run starts and
/// ends. Answers the comparison, the folder it was written to, and whether every run ran (a run
/// the comparison itself could not carry out is recorded with `ended = "error"`).
pub async fn compare(
    options: &CompareOptions,
    mut on_progress: impl FnMut(Progress<'_>),
) -> anyhow::Result<(Comparison, PathBuf, bool)> {
    let commit = head_commit(&options.project_root).await?;
    let started = chrono::Utc::now();
    let name = format!("compare-{}", started.format("%Y%m%d-%H%M%S"));
    let folder = options.out_dir.join(&name);
    std::fs::create_dir_all(folder.join("runs"))
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let folder = folder.canonicalize()?;
    let base = BaseConfig::load(&options.project_root)?;
    let team_config = team_config(options, &base)?;
    let team_size = team_size(&team_config, &options.project_root)?;

    let mut comparison = Comparison {
        name: name.clone(),
        started_at: started.to_rfc3339(),
        scripted: options.scripted,
        commit: commit.clone(),
        task: options.task.clone(),
        check: options.check.clone(),
        ways: options.ways.iter().map(|w| w.to_string()).collect(),
        repeat: options.repeat,
        budget_usd: options.budget_usd,
        timeout_secs: options.timeout.as_secs(),
        chars_per_token: conclave_core::model::CHARS_PER_TOKEN,
        ..Comparison::default()
    };
    let mut all_ran = true;
    for repeat in 1..=options.repeat.max(1) {
        for way in &options.ways {
            let dir = folder.join("runs").join(format!("{way}-{repeat}"));
            let plan = RunPlan {
                way: *way,
                repeat,
                dir: dir.clone(),
                commit: commit.clone(),
                base: &base,
                team_config: &team_config,
                team_size,
            };
            on_progress(Progress::Started {
                way: *way,
                repeat,
                dir: &dir,
            });
            let record = match run_one(options, &plan).await {
                Ok(record) => record,
                Err(error) => {
                    all_ran = false;
                    RunRecord {
                        way: way.to_string(),
                        repeat,
                        dir,
                        ended: "error".into(),
                        error: Some(format!("{error:#}")),
                        ..RunRecord::default()
                    }
                }
            };
            on_progress(Progress::Ended(&record));
            comparison.runs.push(record);
            // Written after every run: an interrupted comparison keeps what it measured.
            comparison.summary = summarize(&comparison.runs);
            write_report(&folder, &comparison)?;
            if options.interrupt.is_cancelled() {
                return Ok((comparison, folder, false));
            }
        }
    }
    Ok((comparison, folder, all_ran))
}

/// The project's configuration, as a TOML table, without what a run replaces.
struct BaseConfig {
    table: toml::Table,
    defaults: AgentSettings,
}

impl BaseConfig {
    fn load(root: &Path) -> anyhow::Result<BaseConfig> {
        let path = Project::at(root).config_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error).context(format!("cannot read {}", path.display())),
        };
        let config =
            Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut table: toml::Table = text.parse().context("conclave.toml")?;
        for key in ["agent", "pipeline", "merge"] {
            table.remove(key);
        }
        Ok(BaseConfig {
            table,
            defaults: config.defaults,
        })
    }
}

/// The team way's configuration: the team file (its `[defaults]` over the project's), or the
/// default team; shared tree, no merge queue.
fn team_config(options: &CompareOptions, base: &BaseConfig) -> anyhow::Result<toml::Table> {
    let mut table = base.table.clone();
    match &options.team_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the team file {}", file.display()))?;
            Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let team: toml::Table = text.parse()?;
            for (key, value) in team {
                match (key.as_str(), value, table.get_mut(&key)) {
                    ("defaults", toml::Value::Table(theirs), Some(toml::Value::Table(ours))) => {
                        ours.extend(theirs);
                    }
                    (_, value, _) => {
                        table.insert(key, value);
                    }
                }
            }
            table.remove("merge");
        }
        None => {
            let agents = DEFAULT_TEAM
                .iter()
                .map(|(name, role)| agent_table(name, role))
                .collect();
            table.insert("agent".into(), toml::Value::Array(agents));
        }
    }
    shared_tree(&mut table);
    Ok(table)
}

fn agent_table(name: &str, role: &str) -> toml::Value {
    let mut agent = toml::Table::new();
    agent.insert("name".into(), name.into());
    agent.insert("role".into(), role.into());
    toml::Value::Table(agent)
}

/// Every agent in the run's one tree.
fn shared_tree(table: &mut toml::Table) {
    if let Some(toml::Value::Table(defaults)) = table.get_mut("defaults") {
        defaults.remove("isolation");
    }
    if let Some(toml::Value::Array(agents)) = table.get_mut("agent") {
        for agent in agents {
            if let toml::Value::Table(agent) = agent {
                agent.remove("isolation");
            }
        }
    }
}

/// How many agents the team has (replicas counted): the `uncoordinated` way's instances.
fn team_size(table: &toml::Table, root: &Path) -> anyhow::Result<usize> {
    let config = Config::parse(&toml::to_string(table)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(conclave_supervisor::plan::plan_team(&config, root)?
        .len()
        .max(1))
}

struct RunPlan<'a> {
    way: Way,
    repeat: u32,
    dir: PathBuf,
    commit: String,
    base: &'a BaseConfig,
    team_config: &'a toml::Table,
    team_size: usize,
}

/// How a way's own part ended.
enum WayEnd {
    Finished,
    Stalled,
    Failed(String),
    Budget,
    Timeout,
    Interrupted,
}

impl WayEnd {
    fn word(&self) -> &'static str {
        match self {
            WayEnd::Finished => "finished",
            WayEnd::Stalled => "stalled",
            WayEnd::Failed(_) => "failed",
            WayEnd::Budget => "budget",
            WayEnd::Timeout => "timeout",
            WayEnd::Interrupted => "interrupted",
        }
    }
}

async fn run_one(options: &CompareOptions, plan: &RunPlan<'_>) -> anyhow::Result<RunRecord> {
    add_worktree(&options.project_root, &plan.dir, &plan.commit).await?;
    let config = run_config(options, plan)?;
    std::fs::write(plan.dir.join("conclave.toml"), toml::to_string(&config)?)?;
    let project = Project::at(&plan.dir);
    project.ensure_state_dir()?;
    std::fs::write(plan.dir.join(TASK_FILE), &options.task)?;
    write_tool_permissions(&plan.dir, &plan.base.defaults)?;

    let mut server = spawn_conclave(options, plan, &["serve", "--listen", "127.0.0.1:0"], true)?;
    let result = async {
        let url = wait_for_server(&project, &mut server).await?;
        let token = project
            .read_admin_token()?
            .context("the run's server wrote no admin token")?;
        let admin = Client::new(url, token, None)?;
        let started = Instant::now();
        let end = run_way(options, plan, &admin).await?;
        let wall = started.elapsed();
        let mut record = measure_server(&admin).await?;
        record.wall_secs = wall.as_secs_f64();
        record.ended = end.word().to_string();
        if let WayEnd::Failed(why) = &end {
            record.error = Some(why.clone());
        }
        Ok::<_, anyhow::Error>(record)
    }
    .await;
    stop(&mut server).await;
    let mut record = result?;
    record.way = plan.way.to_string();
    record.repeat = plan.repeat;
    record.dir = plan.dir.clone();
    record.files_changed = files_changed(&plan.dir).await?;
    if options.interrupt.is_cancelled() {
        // A person wants it over: no check (it may take long), said so in its row.
        record.check_tail = "not run: interrupted".into();
        return Ok(record);
    }
    let check = run_check(&options.check, &plan.dir, options.check_timeout).await;
    record.check_passed = check.passed();
    record.check_exit = check.exit_code;
    record.check_tail = check.tail;
    Ok(record)
}

/// The run's `conclave.toml`: the project's, with the way's agents and budget.
fn run_config(options: &CompareOptions, plan: &RunPlan<'_>) -> anyhow::Result<toml::Table> {
    let mut table = match plan.way {
        Way::Team => plan.team_config.clone(),
        Way::Pipeline => {
            let mut table = plan.base.table.clone();
            let agents = PIPELINE_STAGES
                .iter()
                .map(|role| agent_table(role, role))
                .collect();
            table.insert("agent".into(), toml::Value::Array(agents));
            let mut pipeline = toml::Table::new();
            pipeline.insert("name".into(), PIPELINE_NAME.into());
            pipeline.insert(
                "stages".into(),
                toml::Value::Array(PIPELINE_STAGES.iter().map(|s| (*s).into()).collect()),
            );
            table.insert(
                "pipeline".into(),
                toml::Value::Array(vec![toml::Value::Table(pipeline)]),
            );
            shared_tree(&mut table);
            table
        }
        Way::Single | Way::Loop | Way::Uncoordinated => plan.base.table.clone(),
    };
    if let Some(budget) = options.budget_usd
        && matches!(plan.way, Way::Team | Way::Pipeline)
    {
        let defaults = table
            .entry("defaults")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(defaults) = defaults {
            defaults.insert("team_budget_usd".into(), budget.into());
        }
    }
    Ok(table)
}

async fn run_way(
    options: &CompareOptions,
    plan: &RunPlan<'_>,
    admin: &Client,
) -> anyhow::Result<WayEnd> {
    match plan.way {
        Way::Single => run_plain(options, plan, admin, &["single".to_string()]).await,
        Way::Uncoordinated => {
            let names: Vec<String> = (1..=plan.team_size).map(|n| format!("solo-{n}")).collect();
            run_plain(options, plan, admin, &names).await
        }
        Way::Loop => {
            let mut args: Vec<String> = vec![
                "loop".into(),
                "--prompt".into(),
                TASK_FILE.into(),
                "--until".into(),
                options.check.clone(),
            ];
            let defaults = &plan.base.defaults;
            if let Some(model) = &defaults.model {
                args.extend(["--model".into(), model.clone()]);
            }
            if let Some(mode) = &defaults.permission_mode {
                args.extend(["--permission-mode".into(), mode.clone()]);
            }
            if let Some(budget) = options.budget_usd {
                args.extend(["--budget".into(), budget.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let child = spawn_conclave(options, plan, &args, false)?;
            Ok(match wait_child(child, options).await? {
                Waited::Timeout => WayEnd::Timeout,
                Waited::Interrupted => WayEnd::Interrupted,
                Waited::Exited(code) => match code {
                    0 => WayEnd::Finished,
                    // 6: the iterations or the budget ran out before the check passed.
                    6 if options.budget_usd.is_some() => WayEnd::Budget,
                    6 => WayEnd::Stalled,
                    code => WayEnd::Failed(format!("conclave loop exited {code}")),
                },
            })
        }
        Way::Team | Way::Pipeline => {
            let (title, body) = title_and_body(&options.task);
            let task = NewTask {
                title,
                body: Some(body),
                pipeline: (plan.way == Way::Pipeline).then(|| PIPELINE_NAME.to_string()),
                ..NewTask::default()
            };
            let _: Value = admin.post("/api/tasks", &task).await?;
            let child = spawn_conclave(options, plan, &["up"], false)?;
            Ok(match wait_child(child, options).await? {
                Waited::Timeout => WayEnd::Timeout,
                Waited::Interrupted => WayEnd::Interrupted,
                Waited::Exited(0) => WayEnd::Finished,
                Waited::Exited(6) if options.budget_usd.is_some() && budget_spent(admin).await => {
                    WayEnd::Budget
                }
                Waited::Exited(6) => WayEnd::Stalled,
                Waited::Exited(code) => WayEnd::Failed(format!("conclave up exited {code}")),
            })
        }
    }
}

/// Whether the team stopped for its budget (a `team_budget` alert).
async fn budget_spent(admin: &Client) -> bool {
    admin
        .get::<conclave_core::model::EventList>("/api/events", &[("kind", "agent.alert".into())])
        .await
        .is_ok_and(|list| {
            list.events.iter().any(|event| {
                matches!(&event.payload,
                    conclave_core::model::EventPayload::AgentAlert(alert) if alert.cause == "team_budget")
            })
        })
}

/// The task's first line as a title (bounded), and the whole text as its body.
fn title_and_body(task: &str) -> (String, String) {
    let first = task
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .find(|line| !line.is_empty())
        .unwrap_or("The task");
    let title: String = first.chars().take(100).collect();
    (title, task.to_string())
}

/// `single` and `uncoordinated`: plain `claude -p` sessions with the whole task, no Conclave
/// tools or hooks, in the run's tree at once. Each is registered with the run's server as an
/// agent, and its cost and context account are stored with it when it ends.
async fn run_plain(
    options: &CompareOptions,
    plan: &RunPlan<'_>,
    admin: &Client,
    names: &[String],
) -> anyhow::Result<WayEnd> {
    let stop = CancellationToken::new();
    let spent = Arc::new(Mutex::new(0.0_f64));
    let over_budget = CancellationToken::new();
    let mut sessions = Vec::new();
    for name in names {
        let registration = NewAgent {
            name: name.clone(),
            model: plan.base.defaults.model.clone(),
            ..NewAgent::default()
        };
        let _: Value = admin.post("/api/agents", &registration).await?;
        let session = PlainSession {
            name: name.clone(),
            dir: plan.dir.clone(),
            task: options.task.clone(),
            defaults: plan.base.defaults.clone(),
            claude: options.claude_bin.clone(),
            budget_usd: options.budget_usd,
            spent: spent.clone(),
            over_budget: over_budget.clone(),
            stop: stop.clone(),
        };
        sessions.push(tokio::spawn(session.run()));
    }
    let timeout = tokio::time::sleep(options.timeout);
    tokio::pin!(timeout);
    let all = futures_join(sessions);
    tokio::pin!(all);
    let (outcomes, timed_out) = tokio::select! {
        outcomes = &mut all => (outcomes, false),
        () = &mut timeout => {
            stop.cancel();
            ((&mut all).await, true)
        }
        () = options.interrupt.cancelled() => {
            stop.cancel();
            ((&mut all).await, false)
        }
    };
    let mut failure = None;
    for outcome in outcomes {
        let outcome = outcome.context("a session's task panicked")?;
        let update = AgentUpdate {
            status: Some(AgentStatus::Stopped),
            cost_usd: Some(outcome.cost_usd),
            coordination: Some(outcome.account),
            ..AgentUpdate::default()
        };
        let _: Value = admin
            .patch(&format!("/api/agents/{}", outcome.name), &update)
            .await?;
        if let Some(why) = outcome.failure {
            failure.get_or_insert(format!("{}: {why}", outcome.name));
        }
    }
    Ok(if options.interrupt.is_cancelled() {
        WayEnd::Interrupted
    } else if timed_out {
        WayEnd::Timeout
    } else if over_budget.is_cancelled() {
        WayEnd::Budget
    } else if let Some(why) = failure {
        WayEnd::Failed(why)
    } else {
        WayEnd::Finished
    })
}

/// Awaits every task, in order.
async fn futures_join<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await);
    }
    out
}

struct PlainSession {
    name: String,
    dir: PathBuf,
    task: String,
    defaults: AgentSettings,
    claude: PathBuf,
    budget_usd: Option<f64>,
    spent: Arc<Mutex<f64>>,
    over_budget: CancellationToken,
    stop: CancellationToken,
}

struct PlainOutcome {
    name: String,
    cost_usd: f64,
    account: conclave_core::model::Coordination,
    failure: Option<String>,
}

impl PlainSession {
    async fn run(self) -> PlainOutcome {
        let mut meter = CoordinationMeter::new(FixedCosts::default());
        let mut outcome = PlainOutcome {
            name: self.name.clone(),
            cost_usd: 0.0,
            account: meter.account().clone(),
            failure: None,
        };
        if let Err(error) = self.drive(&mut meter, &mut outcome).await {
            outcome.failure = Some(format!("{error:#}"));
        }
        outcome.account = meter.account().clone();
        outcome
    }

    async fn drive(
        &self,
        meter: &mut CoordinationMeter,
        outcome: &mut PlainOutcome,
    ) -> anyhow::Result<()> {
        let mut command = Command::new(&self.claude);
        // The task goes on stdin: as an argument, a task starting with `-` would read as a flag
        // (and `--allowedTools` takes every word after it).
        command.args(["-p", "--output-format", "stream-json", "--verbose"]);
        if let Some(model) = &self.defaults.model {
            command.args(["--model", model]);
        }
        if let Some(mode) = &self.defaults.permission_mode {
            command.args(["--permission-mode", mode]);
        }
        if let Some(tools) = &self.defaults.allowed_tools {
            command.arg("--allowedTools").args(tools);
        }
        if let Some(tools) = &self.defaults.disallowed_tools {
            command.arg("--disallowedTools").args(tools);
        }
        command
            .current_dir(&self.dir)
            .envs(self.defaults.env.clone().unwrap_or_default())
            .env_remove(ENV_URL)
            .env_remove(ENV_AGENT)
            .env_remove(ENV_TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.claude.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.task.as_bytes()).await?;
            stdin.flush().await?;
            // Closed: the client reads the prompt to its end.
            drop(stdin);
        }
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut conclave_calls = std::collections::HashSet::new();
        let mut estimate = 0.0;
        let mut last_call: Option<String> = None;
        let mut got_result = false;
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
                    let update = parse_line(&value);
                    match &update {
                        StreamUpdate::Result { cost_usd, .. } => {
                            got_result = true;
                            if let Some(cost) = cost_usd {
                                // The client's total replaces what its calls were priced at.
                                self.add_spent(cost - outcome.cost_usd - estimate);
                                outcome.cost_usd = *cost;
                                estimate = 0.0;
                            }
                        }
                        StreamUpdate::Assistant { call: Some(call), .. }
                            if call.id.is_none() || call.id != last_call =>
                        {
                            last_call.clone_from(&call.id);
                            let model = call.model.as_deref().or(self.defaults.model.as_deref());
                            if let Some(price) = model.and_then(|m| pricing::price(m, &call.usage)) {
                                estimate += price;
                                self.add_spent(price);
                            }
                        }
                        _ => {}
                    }
                    meter_line(meter, &mut conclave_calls, update);
                }
                () = self.stop.cancelled() => break,
                () = self.over_budget.cancelled() => break,
            }
        }
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
        let _ = child.kill().await;
        // Stopped before its result: what its calls were priced at is all there is.
        outcome.cost_usd += estimate;
        if !got_result && !self.stop.is_cancelled() && !self.over_budget.is_cancelled() {
            bail!("the session ended without a result");
        }
        Ok(())
    }

    fn add_spent(&self, amount: f64) {
        let mut spent = self
            .spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *spent += amount;
        if self.budget_usd.is_some_and(|budget| *spent >= budget) {
            self.over_budget.cancel();
        }
    }
}

/// `[defaults] allowed_tools` and `disallowed_tools` as the run tree's local Claude Code
/// settings, so that every client in it has the same permissions whichever way starts it (the
/// loop has no flags for them; the team's agents and the plain sessions get them as flags too).
/// A tree whose commit holds such a file keeps it.
fn write_tool_permissions(dir: &Path, defaults: &AgentSettings) -> anyhow::Result<()> {
    if defaults.allowed_tools.is_none() && defaults.disallowed_tools.is_none() {
        return Ok(());
    }
    let path = dir.join(LOCAL_SETTINGS);
    if path.exists() {
        return Ok(());
    }
    let settings = serde_json::json!({
        "permissions": {
            "allow": defaults.allowed_tools.clone().unwrap_or_default(),
            "deny": defaults.disallowed_tools.clone().unwrap_or_default(),
        }
    });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&settings)?)?;
    Ok(())
}

/// `git worktree add --detach DIR COMMIT` in the project.
async fn add_worktree(root: &Path, dir: &Path, commit: &str) -> anyhow::Result<()> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["worktree", "add", "--detach"])
        .arg(dir)
        .arg(commit)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git worktree add {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

async fn head_commit(root: &Path) -> anyhow::Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--verify", "HEAD^{commit}"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run git")?;
    if !output.status.success() {
        return Err(crate::CompareError::NoCommit(root.to_path_buf()).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Starts `conclave ARGS` in the run's tree, in its own process group, with the Claude Code
/// binary and the project's `[defaults] env`, and none of the caller's agent identity.
fn spawn_conclave(
    options: &CompareOptions,
    plan: &RunPlan<'_>,
    args: &[&str],
    quiet: bool,
) -> anyhow::Result<Child> {
    let mut command = Command::new(&options.conclave_bin);
    command
        .args(args)
        .current_dir(&plan.dir)
        .envs(plan.base.defaults.env.clone().unwrap_or_default())
        .env("CONCLAVE_CLAUDE_BIN", &options.claude_bin)
        .env_remove(ENV_URL)
        .env_remove(ENV_AGENT)
        .env_remove(ENV_TOKEN)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // The way's own output would interleave with the progress table: it goes to a log in the
    // run's tree instead.
    let log = plan.dir.join(".conclave").join(format!(
        "compare-{}.log",
        args.first().copied().unwrap_or("conclave")
    ));
    if quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        let file = std::fs::File::create(&log)?;
        command.stdout(file.try_clone()?).stderr(file);
    }
    command
        .spawn()
        .with_context(|| format!("cannot start conclave {}", args.join(" ")))
}

async fn wait_for_server(project: &Project, serve: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + SERVER_START;
    loop {
        if let Some(info) = project.read_server_info()
            && serve.id() == Some(info.pid)
        {
            return Ok(info.url);
        }
        if let Ok(Some(status)) = serve.try_wait() {
            bail!("the run's server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!(
                "the run's server did not start within {} s",
                SERVER_START.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How waiting for a way's process ended.
enum Waited {
    Exited(i32),
    Timeout,
    Interrupted,
}

/// Waits for a way's process; at the timeout or an interrupt it is stopped.
async fn wait_child(mut child: Child, options: &CompareOptions) -> anyhow::Result<Waited> {
    let waited = tokio::select! {
        status = child.wait() => return Ok(Waited::Exited(status?.code().unwrap_or(-1))),
        () = tokio::time::sleep(options.timeout) => Waited::Timeout,
        () = options.interrupt.cancelled() => Waited::Interrupted,
    };
    stop(&mut child).await;
    Ok(waited)
}

/// SIGTERM to the process group, SIGKILL after [`STOP_GRACE`].
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_permissions_go_to_the_trees_local_settings_unless_it_has_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut defaults = AgentSettings::default();
        write_tool_permissions(dir.path(), &defaults).expect("nothing to write");
        assert!(!dir.path().join(LOCAL_SETTINGS).exists());
        defaults.allowed_tools = Some(vec!["Bash(cargo test:*)".into()]);
        write_tool_permissions(dir.path(), &defaults).expect("written");
        let settings: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(LOCAL_SETTINGS)).expect("read"),
        )
        .expect("json");
        assert_eq!(settings["permissions"]["allow"][0], "Bash(cargo test:*)");
        defaults.allowed_tools = Some(vec!["Read".into()]);
        write_tool_permissions(dir.path(), &defaults).expect("kept");
        let kept = std::fs::read_to_string(dir.path().join(LOCAL_SETTINGS)).expect("read");
        assert!(
            kept.contains("cargo test"),
            "the tree's own file is kept: {kept}"
        );
    }

    #[test]
    fn the_title_is_the_first_line_without_its_heading_mark() {
        let (title, body) = title_and_body("\n# Add greet.sh\n\nIt prints Hello.\n");
        assert_eq!(title, "Add greet.sh");
        assert!(body.contains("It prints Hello."));
    }

    #[test]
    fn a_team_file_keeps_its_agents_and_loses_isolation_and_merge() {
        let base = BaseConfig {
            table: "[defaults]\nmodel = \"m\"\npermission_mode = \"acceptEdits\"\n"
                .parse()
                .expect("toml"),
            defaults: AgentSettings::default(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("team.toml");
        std::fs::write(
            &file,
            "[defaults]\nmodel = \"other\"\n\n[[agent]]\nname = \"a\"\ncount = 4\n",
        )
        .expect("write");
        let options = CompareOptions {
            project_root: dir.path().to_path_buf(),
            task: "t".into(),
            check: "true".into(),
            ways: vec![Way::Team],
            team_file: Some(file),
            repeat: 1,
            budget_usd: None,
            timeout: Duration::from_secs(1),
            out_dir: dir.path().to_path_buf(),
            conclave_bin: PathBuf::from("conclave"),
            claude_bin: PathBuf::from("claude"),
            scripted: false,
            tool_definition_chars: 0,
            check_timeout: Duration::from_secs(1),
            interrupt: CancellationToken::new(),
        };
        let table = team_config(&options, &base).expect("team");
        let defaults = table["defaults"].as_table().expect("defaults");
        assert_eq!(
            defaults["model"].as_str(),
            Some("other"),
            "the team file wins"
        );
        assert_eq!(defaults["permission_mode"].as_str(), Some("acceptEdits"));
        assert_eq!(team_size(&table, dir.path()).expect("size"), 4);

        let default_team = team_config(
            &CompareOptions {
                team_file: None,
                ..options
            },
            &base,
        )
        .expect("team");
        assert_eq!(team_size(&default_team, dir.path()).expect("size"), 3);
    }

    #[test]
    fn ways_parse_in_order_once_and_unknown_ones_are_refused() {
        assert_eq!(
            crate::parse_ways("team, single,team").expect("ways"),
            vec![Way::Team, Way::Single]
        );
        assert!(crate::parse_ways("solo").is_err());
        assert!(crate::parse_ways("").is_err());
    }
}
