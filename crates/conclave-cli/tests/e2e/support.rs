//! Fixtures for the end-to-end tests: a throwaway git repo made a Conclave project, a real
//! `conclave serve` process in it, the stand-in for the Anthropic API, and agents started the way
//! a person starts them (`conclave claude --name X -- <claude args>`), each with its own
//! temporary `HOME` and API key (so the stand-in's script gives each its own lane).
//!
//! Every process has a deadline, and an agent runs in its own process group so that a failed
//! test never leaves a `claude` behind.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use conclave_standin::claude_cli::{CliEnv, parse_stream_json};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_conclave");

/// Generous: a `claude -p` run takes one to two seconds here, but ten times that under load.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// For `conclave` commands and server start-up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// These tests start several heavy processes each: run them one at a time, so that two cores
/// are not starved (a tokio mutex: it never poisons, so one failure does not fail the rest).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The stand-in API key of an agent.
pub fn api_key(agent: &str) -> String {
    format!("key-{agent}")
}

/// A throwaway git repository on which `conclave init` ran, and its server.
pub struct Team {
    repo: TempDir,
    pub server: Option<Server>,
}

impl Team {
    /// `git init`, `conclave init`, then `conclave serve --listen 127.0.0.1:0`.
    pub async fn start() -> Result<Team> {
        let mut team = Team::create().await?;
        team.server = Some(Server::start(team.root(), "127.0.0.1:0").await?);
        Ok(team)
    }

    /// `git init` and `conclave init`, with no server running.
    pub async fn create() -> Result<Team> {
        let repo = tempfile::Builder::new()
            .prefix("conclave-e2e-")
            .tempdir()
            .context("creating the repo folder")?;
        let git = std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(repo.path())
            .status()
            .context("running git init")?;
        ensure!(git.success(), "git init failed: {git}");
        let team = Team { repo, server: None };
        team.conclave(&["init"]).await?;
        Ok(team)
    }

    /// The repository (and project) root, as the agents see it.
    pub fn root(&self) -> &Path {
        self.repo.path()
    }

    /// The running server.
    pub fn server(&self) -> Result<&Server> {
        self.server.as_ref().context("the server is not running")
    }

    /// Starts the server again (after [`Server::kill`]) on `listen`.
    pub async fn restart_server(&mut self, listen: &str) -> Result<()> {
        if let Some(mut old) = self.server.take() {
            old.kill().await;
        }
        self.server = Some(Server::start(self.root(), listen).await?);
        Ok(())
    }

    /// Runs `conclave ARGS` as the admin in the repo; fails unless it succeeds; returns stdout.
    pub async fn conclave(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(self.root())
            .env_remove("CONCLAVE_URL")
            .env_remove("CONCLAVE_AGENT")
            .env_remove("CONCLAVE_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .with_context(|| format!("conclave {args:?} did not finish in time"))??;
        ensure!(
            output.status.success(),
            "conclave {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `conclave ARGS --json`, parsed.
    pub async fn conclave_json(&self, args: &[&str]) -> Result<Value> {
        let stdout = self.conclave(args).await?;
        serde_json::from_str(&stdout).with_context(|| format!("not JSON: {stdout}"))
    }

    /// The environment of one agent's `conclave claude`: its own home and stand-in key, and the
    /// real CLI named by `CONCLAVE_CLAUDE_BIN`.
    pub fn agent_env(&self, claude: &Path, stand_in_url: &str, agent: &str) -> Result<CliEnv> {
        let mut cli_env = CliEnv::new(stand_in_url, &api_key(agent))?;
        cli_env.set("CONCLAVE_CLAUDE_BIN", claude.to_string_lossy());
        Ok(cli_env)
    }

    /// `conclave claude --name NAME CONCLAVE_ARGS -- -p PROMPT --output-format stream-json
    /// --verbose --permission-mode acceptEdits`, run to the end.
    pub async fn run_agent(
        &self,
        cli_env: &CliEnv,
        name: &str,
        conclave_args: &[&str],
        prompt: &str,
    ) -> Result<AgentRun> {
        let mut command = self.agent_command(cli_env, name, conclave_args);
        command.args(["-p", prompt]).args(HEADLESS_ARGS);
        run_to_end(command).await
    }

    /// `conclave claude --name NAME CONCLAVE_ARGS --`, ready for the claude arguments.
    pub fn agent_command(&self, cli_env: &CliEnv, name: &str, conclave_args: &[&str]) -> Command {
        let mut command = cli_env.command(Path::new(BIN));
        command
            .args(["claude", "--name", name])
            .args(conclave_args)
            .arg("--")
            .current_dir(self.root());
        command
    }

    /// The project-relative path `relative` as an absolute path in the repo.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }
}

impl Drop for Team {
    /// Test output is shown only for failing tests: show what the server said there.
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            eprintln!("--- conclave serve stderr ---\n{}", lock(&server.stderr));
        }
    }
}

/// What follows `-p PROMPT` for a headless agent.
pub const HEADLESS_ARGS: [&str; 5] = [
    "--output-format",
    "stream-json",
    "--verbose",
    "--permission-mode",
    "acceptEdits",
];

/// Runs a headless agent's command (stdout stream-json) to the end.
pub async fn run_to_end(mut command: Command) -> Result<AgentRun> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = AgentProcess::spawn(command)?;
    let output = agent.finish(AGENT_TIMEOUT).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines = parse_stream_json(&stdout)
        .with_context(|| format!("stdout is not stream-json: {stdout}\nstderr: {stderr}"))?;
    Ok(AgentRun {
        status: output.status,
        lines,
        stderr,
    })
}

/// A finished agent run.
#[derive(Debug)]
pub struct AgentRun {
    pub status: ExitStatus,
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl AgentRun {
    /// Fails with the agent's output unless it exited 0 with a successful result.
    pub fn ensure_ok(&self) -> Result<&Value> {
        let result = self
            .lines
            .iter()
            .rev()
            .find(|line| line["type"] == "result");
        match result {
            Some(result) if self.status.success() && result["is_error"] != true => Ok(result),
            _ => bail!(
                "the agent failed ({}): {:#?}\nstderr: {}",
                self.status,
                self.lines,
                self.stderr
            ),
        }
    }

    /// The `system/init` line's status of the conclave MCP server (`connected`, `failed`).
    pub fn mcp_status(&self) -> Option<&str> {
        self.lines
            .iter()
            .find(|line| line["type"] == "system" && line["subtype"] == "init")?
            .get("mcp_servers")?
            .as_array()?
            .iter()
            .find(|server| server["name"] == "conclave")?
            .get("status")?
            .as_str()
    }
}

/// A `conclave claude` process in its own process group (claude and its hooks with it), killed
/// as a group when dropped.
pub struct AgentProcess {
    child: Child,
    group: Option<Pid>,
}

impl AgentProcess {
    pub fn spawn(mut command: Command) -> Result<AgentProcess> {
        command.process_group(0).kill_on_drop(true);
        let child = command.spawn().context("starting conclave claude")?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        Ok(AgentProcess { child, group })
    }

    /// Its pid, while it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn stdin(&mut self) -> Result<ChildStdin> {
        self.child.stdin.take().context("stdin is not piped")
    }

    pub fn stdout_lines(&mut self) -> Result<Lines<BufReader<ChildStdout>>> {
        let stdout = self.child.stdout.take().context("stdout is not piped")?;
        Ok(BufReader::new(stdout).lines())
    }

    /// Waits for the end (stdout and stderr piped), killing the group after `timeout`.
    pub async fn finish(&mut self, timeout: Duration) -> Result<std::process::Output> {
        let mut stdout = self.child.stdout.take();
        let mut stderr = self.child.stderr.take();
        let read_all = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                if let Some(pipe) = stdout.as_mut() {
                    pipe.read_to_end(&mut out).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let read_err = async {
                if let Some(pipe) = stderr.as_mut() {
                    pipe.read_to_end(&mut err).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::try_join!(read_out, read_err)?;
            let status = self.child.wait().await?;
            Ok::<_, std::io::Error>(std::process::Output {
                status,
                stdout: out,
                stderr: err,
            })
        };
        let outcome = tokio::time::timeout(timeout, read_all).await;
        match outcome {
            Ok(output) => Ok(output?),
            Err(_) => {
                self.kill_group();
                bail!("the agent did not finish within {timeout:?}")
            }
        }
    }

    /// Waits for the process to exit (after its stdin closed), killing the group on timeout.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let outcome = tokio::time::timeout(timeout, self.child.wait()).await;
        match outcome {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.kill_group();
                bail!("the agent did not exit within {timeout:?}")
            }
        }
    }

    fn kill_group(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Only if it still runs: once reaped, its group id may belong to someone else.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

/// A `conclave serve` process; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    /// What the server printed on stderr so far (for failure messages).
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `conclave serve --listen LISTEN` in `root` and waits until it has written
    /// `.conclave/server.json` (it prints "serving" on stderr right after).
    pub async fn start(root: &Path, listen: &str) -> Result<Server> {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen])
            .current_dir(root)
            .env_remove("CONCLAVE_URL")
            .env_remove("CONCLAVE_AGENT")
            .env_remove("CONCLAVE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting conclave serve")?;
        let pid = child.id().context("the server exited at once")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr piped")?).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let serving = tokio::time::timeout(COMMAND_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                push_line(&stderr, &line);
                if line.contains("serving") {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .await
        .context("the server did not start in time")??;
        ensure!(serving, "the server exited: {}", lock(&stderr));
        // Keep draining stderr so the server never blocks on a full pipe.
        tokio::spawn({
            let stderr = stderr.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    push_line(&stderr, &line);
                }
            }
        });
        let info_path = root.join(".conclave").join("server.json");
        let info: Value = serde_json::from_str(&std::fs::read_to_string(&info_path)?)
            .with_context(|| format!("reading {}", info_path.display()))?;
        ensure!(
            info["pid"] == pid,
            "server.json names pid {}, not {pid}",
            info["pid"]
        );
        let url = info["url"]
            .as_str()
            .context("server.json has no url")?
            .to_string();
        Ok(Server { child, url, stderr })
    }

    /// The `host:port` the server listens on.
    pub fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw)
    }

    /// Kills the server with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.child.wait()).await;
    }
}

/// SIGKILLs `pid` and waits until nothing accepts connections on `address` any more: for a
/// scripted reply that takes the server down in the middle of an agent's turn.
pub fn kill_server_now(pid: Pid, address: &str) {
    let _ = kill(pid, Signal::SIGKILL);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(address).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn push_line(buffer: &Mutex<String>, line: &str) {
    let mut buffer = buffer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    buffer.push_str(line);
    buffer.push('\n');
}

fn lock(buffer: &Mutex<String>) -> String {
    buffer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Reads stream-json lines until a `result` line; returns it.
pub async fn next_result(lines: &mut Lines<BufReader<ChildStdout>>) -> Result<Value> {
    tokio::time::timeout(AGENT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["type"] == "result" {
                return Ok(value);
            }
        }
        bail!("stdout closed before a result line")
    })
    .await
    .context("no result line in time")?
}

/// The events of `conclave log --json`.
/// The event log, through `conclave log --json` while a server runs; after `conclave down` has
/// stopped every server of the project, straight from its database file.
pub async fn events(team: &Team) -> Result<Vec<Value>> {
    let server_runs = conclave_core::project::Project::at(team.root())
        .read_server_info()
        .is_some();
    if !server_runs {
        let store = conclave_core::Store::open(
            &team.path(".conclave/conclave.db"),
            conclave_core::StoreConfig::default(),
        )?;
        let filter = conclave_core::model::EventFilter {
            limit: Some(10_000),
            ..Default::default()
        };
        let events = store.read(|r| r.events(&filter))?;
        return Ok(serde_json::to_value(events)?
            .as_array()
            .cloned()
            .unwrap_or_default());
    }
    let log = team
        .conclave_json(&["log", "--json", "--limit", "1000"])
        .await?;
    log["events"]
        .as_array()
        .cloned()
        .context("log --json has no events list")
}
