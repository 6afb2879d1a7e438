//! One agent's client process: started in its own process group with its stdin and stdout piped
//! (stderr appended to `.conclave/agents/NAME/stderr.log`), its stdout lines passed to the
//! supervisor and copied to the rotated stream log, its exit reported; and ended with escalation.
//!
//! The team's driver reaches processes only through [`ProcessSide`]; [`ClientProcesses`] is the
//! real one (tokio processes), and the unit tests use a scripted one.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use crate::stream::StreamLog;

/// What a process reports to the supervisor.
#[derive(Debug)]
pub enum ProcessReport {
    /// One stdout line that parsed as JSON.
    Line {
        agent: usize,
        generation: u64,
        value: Value,
    },
    /// The process exited; `how` says how ("exit code 1", "signal 9"); `stderr` holds the last
    /// lines it wrote on stderr.
    Exited {
        agent: usize,
        generation: u64,
        how: String,
        stderr: Vec<String>,
    },
}

/// How to start one process.
#[derive(Debug)]
pub struct Launch {
    pub agent: usize,
    pub generation: u64,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// Set on top of the inherited environment.
    pub env: BTreeMap<String, String>,
    /// `.conclave/agents/NAME/`.
    pub dir: PathBuf,
}

/// What the team's driver does to agent processes. Lines and exits come back as
/// [`ProcessReport`]s on a channel the side was made with.
pub trait ProcessSide {
    /// Starts the process `launch` describes; returns its pid.
    fn spawn(&mut self, launch: Launch) -> anyhow::Result<u32>;
    /// Writes one user message to agent `agent`'s stdin.
    fn write(
        &mut self,
        agent: usize,
        text: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Ends agent `agent`'s process: stdin closed, then signals after `grace` (see
    /// [`Running::stop`]).
    fn stop(&mut self, agent: usize, grace: Duration);
    /// Kills agent `agent`'s process at once.
    fn kill_now(&mut self, agent: usize);
    /// Agent `agent`'s process has exited: nothing more is done to it.
    fn forget(&mut self, agent: usize);
}

/// The real processes: clients started with tokio, one per agent at a time.
#[derive(Debug)]
pub struct ClientProcesses {
    reports: mpsc::Sender<ProcessReport>,
    running: HashMap<usize, Running>,
}

impl ClientProcesses {
    /// Processes whose lines and exits are sent to `reports`.
    pub fn new(reports: mpsc::Sender<ProcessReport>) -> ClientProcesses {
        ClientProcesses {
            reports,
            running: HashMap::new(),
        }
    }
}

impl ProcessSide for ClientProcesses {
    fn spawn(&mut self, launch: Launch) -> anyhow::Result<u32> {
        let agent = launch.agent;
        let running = spawn(launch, self.reports.clone())?;
        let pid = running.pid.as_raw().unsigned_abs();
        self.running.insert(agent, running);
        Ok(pid)
    }

    async fn write(&mut self, agent: usize, text: &str) -> anyhow::Result<()> {
        self.running
            .get_mut(&agent)
            .context("the agent has no process")?
            .send_user_message(text)
            .await
    }

    fn stop(&mut self, agent: usize, grace: Duration) {
        if let Some(running) = self.running.get_mut(&agent) {
            running.stop(grace);
        }
    }

    fn kill_now(&mut self, agent: usize) {
        if let Some(running) = self.running.get(&agent) {
            running.kill_now();
        }
    }

    fn forget(&mut self, agent: usize) {
        self.running.remove(&agent);
    }
}

/// One user message as the stream-json line written to a client's stdin.
pub fn user_message_line(text: &str) -> String {
    serde_json::json!({
        "type": "user",
        "message": {"role": "user", "content": text},
    })
    .to_string()
}

/// A running process.
#[derive(Debug)]
pub struct Running {
    pub pid: Pid,
    stdin: Option<ChildStdin>,
    exited: Arc<AtomicBool>,
}

impl Running {
    /// Writes one user message (one stream-json line) to its stdin.
    pub async fn send_user_message(&mut self, text: &str) -> anyhow::Result<()> {
        let line = user_message_line(text);
        let stdin = self
            .stdin
            .as_mut()
            .context("the process's stdin is closed")?;
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Ends the process: closes its stdin (it exits once its turn is over), then after `grace`
    /// sends SIGINT to its process group, SIGTERM 3 s later, SIGKILL 3 s after that; stops as
    /// soon as it has exited. Its exit is reported as usual.
    pub fn stop(&mut self, grace: Duration) {
        self.stdin = None;
        let pid = self.pid;
        let exited = self.exited.clone();
        tokio::spawn(async move {
            let steps = [
                (grace, Signal::SIGINT),
                (Duration::from_secs(3), Signal::SIGTERM),
                (Duration::from_secs(3), Signal::SIGKILL),
            ];
            for (wait, signal) in steps {
                tokio::time::sleep(wait).await;
                if exited.load(Ordering::SeqCst) {
                    return;
                }
                tracing::info!(pid = pid.as_raw(), ?signal, "ending an agent process");
                let _ = killpg(pid, signal);
            }
        });
    }

    /// Kills the process group at once (the supervisor is going away and cannot wait).
    pub fn kill_now(&self) {
        if !self.exited.load(Ordering::SeqCst) {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }
}

/// Starts the process and the tasks that read its stdout and wait for its exit.
pub fn spawn(launch: Launch, reports: mpsc::Sender<ProcessReport>) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&launch.dir)
        .with_context(|| format!("cannot create {}", launch.dir.display()))?;
    let stderr_path = launch.dir.join("stderr.log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .with_context(|| format!("cannot open {}", stderr_path.display()))?;
    // The log keeps every process's stderr: this one's starts here.
    let stderr_start = stderr.metadata().map(|meta| meta.len()).unwrap_or(0);
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .envs(&launch.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .process_group(0);
    let mut child = command.spawn().with_context(|| {
        format!(
            "cannot start {} in {}",
            launch.program.display(),
            launch.cwd.display()
        )
    })?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw)
        .context("the agent's process exited at once")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("stdout is not piped")?;
    let exited = Arc::new(AtomicBool::new(false));
    let (agent, generation) = (launch.agent, launch.generation);
    let reader = tokio::spawn(read_stdout(
        stdout,
        launch.dir.clone(),
        agent,
        generation,
        reports.clone(),
    ));
    tokio::spawn({
        let exited = exited.clone();
        async move {
            let how = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(error) => format!("an unknown way ({error})"),
            };
            exited.store(true, Ordering::SeqCst);
            // Every line it printed is handed over before its exit.
            let _ = reader.await;
            let stderr = stderr_tail(&stderr_path, stderr_start);
            let _ = reports
                .send(ProcessReport::Exited {
                    agent,
                    generation,
                    how,
                    stderr,
                })
                .await;
        }
    });
    Ok(Running { pid, stdin, exited })
}

/// Lines of stderr kept for an exit's report.
const STDERR_LINES: usize = 10;

/// The last lines written to the stderr log since offset `start` (what one process wrote).
fn stderr_tail(path: &Path, start: u64) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(start)
        .unwrap_or(0)
        .max(bytes.len().saturating_sub(4096))
        .min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    let lines: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(STDERR_LINES)..].to_vec()
}

async fn read_stdout(
    stdout: tokio::process::ChildStdout,
    dir: PathBuf,
    agent: usize,
    generation: u64,
    reports: mpsc::Sender<ProcessReport>,
) {
    let mut log = StreamLog::in_dir(&dir);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        if let Err(error) = log.append(&line) {
            tracing::warn!(%error, dir = %dir.display(), "cannot write the stream log");
        }
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let report = ProcessReport::Line {
            agent,
            generation,
            value,
        };
        if reports.send(report).await.is_err() {
            return;
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "an unknown way".to_string(),
    }
}

/// Whether a process with this pid runs (a leftover of an earlier supervisor, say). A zombie
/// (ended, not yet reaped by its parent) does not count: a supervisor killed with SIGKILL stays
/// one until its parent reaps it, and must not keep the next `conclave up` from starting.
pub fn is_alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// Whether `pid` is a zombie.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
