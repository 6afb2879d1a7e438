//! Fixtures: a temporary project, the real `conclave` binary run in it (always with a deadline),
//! and a real server process that is killed when the fixture drops.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_conclave");

/// Longest any single CLI invocation may take before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A finished `conclave` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout, trimmed.
    #[track_caller]
    pub fn ok(&self) -> String {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self.stdout.trim().to_string()
    }

    /// Asserts the exit code and returns stderr.
    #[track_caller]
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "expected exit {code}, got {self:#?}");
        &self.stderr
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {stdout}"))
    }
}

/// Who a command acts as.
#[derive(Debug, Clone)]
pub enum As {
    Admin,
    Agent { name: String, token: String },
}

impl As {
    pub fn agent(name: &str, token: &str) -> As {
        As::Agent {
            name: name.to_string(),
            token: token.to_string(),
        }
    }
}

/// A temporary folder holding `project/` (the conclave project) and logs beside it.
pub struct TestProject {
    temp: tempfile::TempDir,
}

impl TestProject {
    /// An empty folder, not yet a project.
    pub fn empty() -> TestProject {
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(temp.path().join("project")).expect("mkdir project");
        TestProject { temp }
    }

    /// A folder on which `conclave init` ran.
    pub fn init() -> TestProject {
        let project = TestProject::empty();
        project.run(&["init"]).ok();
        project
    }

    pub fn root(&self) -> PathBuf {
        self.temp.path().join("project")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join(".conclave")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    /// A `conclave` command in the project, with no CONCLAVE_* variables from the outside.
    pub fn command(&self, who: &As, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.root());
        for name in [
            "CONCLAVE_URL",
            "CONCLAVE_AGENT",
            "CONCLAVE_TOKEN",
            "CONCLAVE_LOG",
        ] {
            command.env_remove(name);
        }
        if let As::Agent { name, token } = who {
            command
                .env("CONCLAVE_AGENT", name)
                .env("CONCLAVE_TOKEN", token);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_as(&As::Admin, args)
    }

    pub fn run_as(&self, who: &As, args: &[&str]) -> Run {
        run_command(self.command(who, args))
    }

    pub fn run_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut command = self.command(&As::Admin, args);
        for (name, value) in env {
            command.env(name, value);
        }
        run_command(command)
    }

    /// The event log as `export` prints it.
    pub fn export(&self) -> Vec<serde_json::Value> {
        self.run(&["export"])
            .ok()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("bad line ({error}): {line}"))
            })
            .collect()
    }
}

/// Runs a command to completion within [`COMMAND_DEADLINE`].
pub fn run_command(mut command: Command) -> Run {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("spawn conclave");
    finish(child, COMMAND_DEADLINE)
}

/// Waits for a spawned command (stdout and stderr piped), killing it after `deadline`.
pub fn finish(mut child: Child, deadline: Duration) -> Run {
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "conclave did not finish within {deadline:?}; stderr: {}",
                stderr
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default(),
        stderr: stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = sender.send(text);
    });
    receiver
}

/// Lines a long-running command prints on stdout, readable with a deadline.
pub struct LineReader {
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl LineReader {
    pub fn new(pipe: impl Read + Send + 'static) -> LineReader {
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader {
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now on) that satisfies `wanted`; panics after `deadline`.
    #[track_caller]
    pub fn wait_for(&mut self, deadline: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no wanted line within {deadline:?}; saw: {:#?}", self.seen),
            }
        }
    }
}

/// A `conclave serve --listen 127.0.0.1:0` process; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Server {
    pub fn start(project: &TestProject) -> Server {
        Server::start_logging(project, "server.log")
    }

    pub fn start_logging(project: &TestProject, log_name: &str) -> Server {
        Server::start_command(project, log_name, &["serve", "--listen", "127.0.0.1:0"])
    }

    /// Any command that ends up serving the project (`serve`, or `up` with no agents).
    pub fn start_command(project: &TestProject, log_name: &str, args: &[&str]) -> Server {
        let log = project.log_path(log_name);
        let log_file = std::fs::File::create(&log).expect("server log");
        let mut command = project.command(&As::Admin, args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let mut child = command.spawn().expect("spawn conclave serve");
        let url = wait_for_server_info(project, &mut child, &log);
        Server { child, url, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal and waits (bounded) for the process to end; returns its exit code.
    pub fn stop_with(mut self, signal: nix::sys::signal::Signal) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        nix::sys::signal::kill(pid, signal).expect("signal the server");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the server did not stop after {signal}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `.conclave/server.json` until it names this process (bounded); returns the URL.
pub fn wait_for_server_info(project: &TestProject, child: &mut Child, log: &Path) -> String {
    let path = project.state_dir().join("server.json");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "conclave serve exited early ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(info) = serde_json::from_str::<serde_json::Value>(&text)
            && info["pid"].as_u64() == Some(u64::from(child.id()))
            && let Some(url) = info["url"].as_str()
        {
            return url.to_string();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "conclave serve wrote no server.json within 30s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Registers an agent and returns who it is.
pub fn add_agent(project: &TestProject, name: &str, extra: &[&str]) -> As {
    let mut args = vec!["agent", "add", name];
    args.extend_from_slice(extra);
    let token = project.run(&args).ok();
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "token: {token:?}"
    );
    As::agent(name, &token)
}

/// Runs git in `dir` as a fixed test identity; panics with git's stderr when it fails. Answers
/// its output, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
