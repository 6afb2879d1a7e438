//! `conclave up [--detach] [--stay]`: runs the team of `conclave.toml` under the supervisor.
//!
//! It joins the server already running for the project (named in `.conclave/server.json` and
//! answering `/healthz`), else serves the project in-process. It writes
//! `.conclave/supervisor.json` (its pid, for `conclave down`), runs the supervisor until the
//! team has an outcome — finished (exit 0), stalled (exit 6) or failed (exit 7) — unless
//! `--stay`, or a signal arrives; ends the agents, then its own server. `--detach` checks each
//! agent's client (a probe turn), then starts the same command in the background with its
//! output in `.conclave/supervisor.log`.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use conclave_core::project::Project;
use conclave_server::ServeOptions;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::commands::claude::{admin_client, reachable_url};
use crate::context::Context;
use crate::error::TeamEnded;
use conclave_client::Client;
use conclave_supervisor::{Outcome, Supervisor, SupervisorOptions};

/// Set in the environment of the background process `--detach` starts.
const ENV_DETACHED: &str = "CONCLAVE_UP_DETACHED";
/// How long `up --detach` waits for each agent's probe turn.
const PROBE_LIMIT: Duration = Duration::from_secs(60);
/// How long `up --detach` waits for the background supervisor to report that it runs.
const DETACH_WAIT: Duration = Duration::from_secs(30);

/// `.conclave/supervisor.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

pub fn supervisor_file(project: &Project) -> std::path::PathBuf {
    project.state_dir().join("supervisor.json")
}

pub fn read_supervisor_info(project: &Project) -> Option<SupervisorInfo> {
    let text = std::fs::read_to_string(supervisor_file(project)).ok()?;
    serde_json::from_str(&text).ok()
}

pub async fn run(context: &Context, args: UpArgs) -> anyhow::Result<()> {
    let project = context.project()?.clone();
    // A bad conclave.toml (a typo, a key that is not supported yet) is refused before anything
    // starts or is written.
    let config = conclave_core::config::Config::load(&project.config_file())?;
    project
        .ensure_state_dir()
        .context("cannot create the .conclave folder")?;
    if let Some(info) = read_supervisor_info(&project)
        && info.pid != std::process::id()
        && conclave_supervisor::process::is_alive(i32::try_from(info.pid).unwrap_or(0))
    {
        bail!(
            "a supervisor already runs this team (pid {}); stop it with `conclave down`",
            info.pid
        );
    }
    // Each agent's client is looked up before anything starts: a missing `claude` (or a `command`
    // not on PATH) is refused here, with nothing served or written, not once the server is up.
    // (A plan that does not hold is refused below, where it always was.)
    if let Ok(plans) = conclave_supervisor::plan::plan_team(&config, project.root()) {
        for plan in host_scope(&args).select(plans) {
            conclave_supervisor::plan::program(&plan)
                .with_context(|| format!("cannot start agent {}", plan.name))?;
        }
    }
    if args.detach && std::env::var_os(ENV_DETACHED).is_none() {
        return detach(&project, &args).await;
    }
    let shutdown = CancellationToken::new();
    super::serve::spawn_signal_handler(shutdown.clone(), "stopping the team")?;

    let server_shutdown = CancellationToken::new();
    let host = args
        .host
        .clone()
        .unwrap_or_else(conclave_supervisor::plan::this_host);
    conclave_core::config::validate_host_name(&host)
        .map_err(|error| anyhow::anyhow!("--host {host:?}: {error}"))?;
    let remote = match &args.server {
        Some(urls) => Some(remote_admin(&project, urls).await?),
        None => None,
    };
    let (admin, server) = match remote {
        Some(admin) => {
            eprintln!(
                "conclave: host {host}: joining the server at {}",
                admin.urls().join(", ")
            );
            (admin, None)
        }
        None => match running_server(&project).await {
            Some(admin) => {
                eprintln!("conclave: joining the server at {}", admin.base_url());
                if let Some(listen) = &args.listen {
                    eprintln!(
                        "conclave: --listen {listen} is ignored: that server already listens"
                    );
                }
                (admin, None)
            }
            None => {
                let server = conclave_server::open_project_server(
                    &project,
                    &ServeOptions {
                        listen: args.listen.clone(),
                        host: Some(host.clone()),
                        ..ServeOptions::default()
                    },
                    server_shutdown.clone(),
                )
                .await?;
                conclave_server::announce(&project, &server.url)?;
                let url = reachable_url(&server.url);
                eprintln!(
                    "conclave: serving {} on {}",
                    project.root().display(),
                    server.url
                );
                let ca = crate::commands::claude::ca_file(&project);
                let admin = Client::with_ca(url, server.admin_token.clone(), None, ca.as_deref())?;
                let lock = server.lock;
                let task = tokio::spawn(conclave_server::run_with_tls(
                    server.listener,
                    server.tls,
                    server.app,
                    server_shutdown.clone(),
                ));
                (admin, Some((task, lock)))
            }
        },
    };
    // Agents reach the server through a relay in this process when it has several URLs or
    // speaks TLS: Claude Code's MCP config and HTTP hooks take one URL each, and the command
    // hook speaks plain HTTP on loopback fastest.
    // Worktree agents on a host away from the server: their git steps run in this clone,
    // through the relay (docs/scale-out.md).
    let steps = match &args.server {
        Some(_) => away_worktree_steps(&project, &config, &args)?,
        None => None,
    };
    let relay = if needs_relay(&admin) || steps.is_some() {
        let relay = conclave_supervisor::relay::Relay::start_with_steps(admin.clone(), steps)
            .await
            .context("cannot start the local relay to the server")?;
        eprintln!(
            "conclave: agents reach the server through the relay at {}",
            relay.url()
        );
        Some(relay)
    } else {
        None
    };
    if let Ok(Some(admin_token)) = project.read_admin_token() {
        conclave_server::print_dashboard_link(admin.base_url(), &admin_token);
    }
    let info = SupervisorInfo {
        pid: std::process::id(),
        started_at: chrono::Utc::now(),
    };
    std::fs::write(supervisor_file(&project), serde_json::to_string(&info)?)
        .context("cannot write .conclave/supervisor.json")?;

    let options = SupervisorOptions {
        stay: args.stay,
        host: Some(host_scope(&args)),
        agent_url: relay.as_ref().map(|relay| relay.url().to_string()),
    };
    let no_agents = config.agents.is_empty() && args.server.is_none();
    // Every agent runs on other hosts: this one serves them.
    let none_here = !no_agents
        && args.server.is_none()
        && conclave_supervisor::plan::plan_team(&config, project.root())
            .is_ok_and(|plans| host_scope(&args).select(plans).is_empty());
    let outcome = async {
        if none_here {
            eprintln!(
                "conclave: every agent of conclave.toml runs on another host (`host =`): serving \
                 only, for their `conclave up --server URL` (Ctrl-C or `conclave down` stops)"
            );
            shutdown.cancelled().await;
            return Ok(());
        }
        if no_agents {
            // Nothing to supervise yet: serve the project (tasks, messages, the dashboard) until
            // stopped, so that `conclave init && conclave up` is a working start.
            eprintln!(
                "conclave: conclave.toml names no agents yet: serving only (add [[agent]] sections \
                 and run `conclave up` again to start a team; Ctrl-C or `conclave down` stops)"
            );
            shutdown.cancelled().await;
            return Ok(());
        }
        let supervisor = Supervisor::prepare(&project, admin, options)
            .await?
            .with_tool_definition_chars(super::claude::conclave_tool_definition_chars());
        eprintln!(
            "conclave: running {} agent(s): {}",
            supervisor.names().len(),
            supervisor.names().join(", ")
        );
        match supervisor.run(shutdown.clone()).await? {
            Outcome::Finished | Outcome::Stopped => Ok(()),
            Outcome::Stalled { .. } => Err(TeamEnded {
                outcome: "stalled",
                code: crate::error::EXIT_STALLED,
            }
            .into()),
            Outcome::Failed { .. } => Err(TeamEnded {
                outcome: "failed",
                code: crate::error::EXIT_FAILED,
            }
            .into()),
        }
    }
    .await;

    if read_supervisor_info(&project).is_some_and(|info| info.pid == std::process::id()) {
        let _ = std::fs::remove_file(supervisor_file(&project));
    }
    if let Some((task, lock)) = server {
        server_shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the server stopped with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("the server did not stop in time"),
        }
        project.remove_server_info();
        drop(lock);
        eprintln!("conclave: server stopped");
    }
    outcome
}

/// The agents this `up` runs: those named for this host (`--host`, default the hostname), and
/// those with no host when it runs next to the server (no `--server`).
fn host_scope(args: &UpArgs) -> conclave_supervisor::plan::HostScope {
    conclave_supervisor::plan::HostScope {
        name: args
            .host
            .clone()
            .unwrap_or_else(conclave_supervisor::plan::this_host),
        main: args.server.is_none(),
    }
}

/// The git steps of this host's worktree agents when `up` runs away from the server (`--server`),
/// or none when it has no worktree agents. Refused when `[merge] remote` is not set or names a
/// remote this clone lacks.
fn away_worktree_steps(
    project: &Project,
    config: &conclave_core::config::Config,
    args: &UpArgs,
) -> anyhow::Result<Option<std::sync::Arc<conclave_supervisor::worktree_steps::WorktreeSteps>>> {
    let Some(merge) = &config.merge else {
        return Ok(None);
    };
    let plans = conclave_supervisor::plan::plan_team(config, project.root())?;
    let agents: Vec<String> = host_scope(args)
        .select(plans)
        .into_iter()
        .filter(|plan| plan.isolation() == conclave_core::model::Isolation::Worktree)
        .map(|plan| plan.name)
        .collect();
    if agents.is_empty() {
        return Ok(None);
    }
    let steps =
        conclave_supervisor::worktree_steps::WorktreeSteps::new(project.root(), merge, agents)?;
    Ok(Some(std::sync::Arc::new(steps)))
}

/// Whether agents should reach `admin`'s server through a local relay: it has several URLs, or
/// speaks HTTPS.
pub fn needs_relay(admin: &Client) -> bool {
    admin.urls().len() > 1 || admin.urls().iter().any(|url| url.starts_with("https://"))
}

/// An admin client for the remote server(s) of `--server`, with the admin token of this clone;
/// one of its URLs must answer.
async fn remote_admin(project: &Project, urls: &str) -> anyhow::Result<Client> {
    let admin = admin_client(project, urls)?;
    admin
        .get::<Value>("/healthz", &[])
        .await
        .with_context(|| format!("the server at {urls} does not answer"))?;
    Ok(admin)
}

/// An admin client for the server named in `server.json`, if it answers.
async fn running_server(project: &Project) -> Option<Client> {
    let info = project.read_server_info()?;
    let url = reachable_url(info.url.trim_end_matches('/'));
    let admin = admin_client(project, &url).ok()?;
    let health =
        tokio::time::timeout(Duration::from_secs(3), admin.get::<Value>("/healthz", &[])).await;
    matches!(health, Ok(Ok(_))).then_some(admin)
}

/// Starts `conclave up` again in the background, its output in `.conclave/supervisor.log`.
async fn detach(project: &Project, args: &UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the path of this conclave binary")?;
    let log_path = project.state_dir().join("supervisor.log");
    // A bad conclave.toml is reported here, not only in the log.
    let scope = host_scope(args);
    conclave_supervisor::check_share(project, Some(&scope))?;
    // So are a client that is missing, refuses its flags or is not logged in: one probe turn
    // per agent, with its own env and flags.
    match conclave_supervisor::probe::probe_share(project, PROBE_LIMIT, Some(&scope)).await {
        Ok(probed) => {
            for agent in probed {
                eprintln!(
                    "conclave: {}: client {} answered a probe turn",
                    agent.name, agent.version
                );
                if let Some(warning) = &agent.warning {
                    eprintln!("conclave: warning: {}: {warning}", agent.name);
                }
            }
        }
        Err(error) => {
            eprintln!("conclave: {}", crate::error::one_line(&error));
            return Err(TeamEnded {
                outcome: "failed",
                code: crate::error::EXIT_FAILED,
            }
            .into());
        }
    }
    // The log carries the dashboard link, and with it the admin token: owner-only, like
    // admin.token itself.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    std::fs::set_permissions(&log_path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", log_path.display()))?;
    let log_start = log.metadata().map(|meta| meta.len()).unwrap_or(0);
    let mut command = std::process::Command::new(exe);
    command.arg("up");
    if args.stay {
        command.arg("--stay");
    }
    if let Some(listen) = &args.listen {
        command.arg("--listen").arg(listen);
    }
    if let Some(server) = &args.server {
        command.arg("--server").arg(server);
    }
    if let Some(host) = &args.host {
        command.arg("--host").arg(host);
    }
    use std::os::unix::process::CommandExt as _;
    let mut child = command
        .current_dir(project.root())
        .env(ENV_DETACHED, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0)
        .spawn()
        .context("cannot start the supervisor in the background")?;
    // Returns once the background supervisor runs (it wrote supervisor.json), or says why it
    // did not start.
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the background supervisor exited at once ({status}); the end of {}:\n{}",
                log_path.display(),
                log_tail(&log_path, log_start)
            );
        }
        if read_supervisor_info(project).is_some_and(|info| info.pid == child.id()) {
            break;
        }
        if started.elapsed() > DETACH_WAIT {
            eprintln!(
                "conclave: the background supervisor (pid {}) has not reported yet; see {}",
                child.id(),
                log_path.display()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "conclave: the team runs in the background (pid {}); log: {}; stop it with `conclave down`",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// What was written to the log since offset `start` (at most its last 4 KB).
fn log_tail(path: &std::path::Path, start: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(start)
        .unwrap_or(0)
        .max(bytes.len().saturating_sub(4096))
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[from..])
        .trim_end()
        .to_string()
}
