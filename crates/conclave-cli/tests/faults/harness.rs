//! A project in a temporary folder, its `conclave serve` process (started, SIGKILLed, restarted),
//! an HTTP client, and the invariants every fault must leave true in the event log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_conclave");

/// A temporary folder holding `project/`, on which `conclave init` ran, with `server_toml` as the
/// `[server]` section of its `conclave.toml`.
pub struct Project {
    pub temp: tempfile::TempDir,
}

impl Project {
    pub fn new(server_toml: &str) -> Project {
        let temp = tempfile::tempdir().expect("tempdir");
        let project = Project { temp };
        std::fs::create_dir(project.root()).expect("mkdir project");
        let init = project.command(&["init"]).output().expect("conclave init");
        assert!(init.status.success(), "conclave init: {init:?}");
        std::fs::write(
            project.root().join("conclave.toml"),
            format!("[server]\n{server_toml}\n"),
        )
        .expect("write conclave.toml");
        project
    }

    pub fn root(&self) -> PathBuf {
        self.temp.path().join("project")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join(".conclave")
    }

    /// A `conclave` command in the project acting as the admin (no CONCLAVE_* from outside).
    pub fn command(&self, args: &[&str]) -> Command {
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
        command
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string()
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }
}

/// A `conclave serve --listen 127.0.0.1:0` process; SIGKILLed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Server {
    /// Starts a server and waits (bounded) until `server.json` names it.
    pub fn start(project: &Project, log_name: &str) -> Server {
        let log = project.log_path(log_name);
        let mut child = project
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("spawn conclave serve");
        let info = project.state_dir().join("server.json");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "conclave serve exited early ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&info)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
                && info["pid"].as_u64() == Some(u64::from(child.id()))
                && let Some(url) = info["url"].as_str()
            {
                return Server {
                    url: url.to_string(),
                    child,
                    log,
                };
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "conclave serve wrote no server.json within 30s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's peak resident set so far, in KiB (`VmHWM`), if the system reports it.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL, then reap: nothing of the process (its lock, its WAL) is cleaned up.
    pub fn sigkill(mut self) {
        signal(self.child.id(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to a process (or, with a negative id, to a process group).
pub fn signal(pid: u32, signal: Signal) {
    let pid = i32::try_from(pid).expect("pid fits");
    kill(Pid::from_raw(pid), signal).expect("signal");
}

/// Runs a command to its end, killing it after `deadline` (a server that should have refused to
/// start but serves instead fails the test rather than hanging it).
pub fn output_within(mut command: Command, deadline: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Registers an agent over HTTP; returns its token.
pub async fn add_agent(http: &reqwest::Client, url: &str, admin: &str, name: &str) -> String {
    let response = http
        .post(format!("{url}/api/agents"))
        .bearer_auth(admin)
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("add agent");
    assert!(response.status().is_success(), "add agent {name}");
    let body: Value = response.json().await.expect("json");
    body["token"].as_str().expect("token").to_string()
}

/// The whole event log, oldest first, read in pages.
pub async fn all_events(http: &reqwest::Client, url: &str, admin: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0_i64;
    loop {
        let page: Value = http
            .get(format!("{url}/api/events?after={after}&limit=10000"))
            .bearer_auth(admin)
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("events json");
        let page = page["events"].as_array().expect("events").clone();
        let Some(last) = page.last() else {
            return events;
        };
        after = last["seq"].as_i64().expect("seq");
        events.extend(page);
    }
}

/// `PRAGMA integrity_check` of a database file, opened read-only; `"ok"` when sound.
pub fn integrity_check(db: &Path) -> String {
    let connection =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    connection
        .query_row("PRAGMA integrity_check", [], |row| row.get::<_, String>(0))
        .expect("integrity_check")
}

/// The violations of the log's invariants, each a sentence; empty when the log is sound:
/// sequence numbers strictly increase; no task is claimed while another agent holds it; no two
/// exclusive leases on the same path by different holders were in force at the same instant;
/// fencing tokens strictly increase in log order.
pub fn log_violations(events: &[Value]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut last_seq = 0;
    let mut holders: HashMap<String, String> = HashMap::new();
    // path -> holder -> (mode, expires at in ms)
    let mut leases: HashMap<String, HashMap<String, (String, i64)>> = HashMap::new();
    let mut last_fencing_token = 0;
    for event in events {
        let seq = event["seq"].as_i64().expect("seq");
        if seq <= last_seq {
            violations.push(format!("seq {seq} follows {last_seq}"));
        }
        last_seq = seq;
        let kind = event["kind"].as_str().unwrap_or_default();
        let task = event["task"].as_str().map(str::to_string);
        let agent = event["agent"].as_str().unwrap_or_default().to_string();
        let ts = event_ms(event);
        match kind {
            "task.claimed" => {
                let task = task.expect("claimed task");
                if let Some(holder) = holders.get(&task).filter(|h| **h != agent) {
                    violations.push(format!(
                        "seq {seq}: task {task} claimed by {agent} while {holder} held it"
                    ));
                }
                holders.insert(task, agent);
            }
            "task.done" | "task.failed" | "task.cancelled" | "task.reclaimed" => {
                if let Some(task) = task {
                    holders.remove(&task);
                }
            }
            "lease.granted" | "lease.renewed" => {
                let path = event["data"]["path"].as_str().expect("path").to_string();
                let mode = event["data"]["mode"]
                    .as_str()
                    .unwrap_or("exclusive")
                    .to_string();
                let ttl = event["data"]["ttl_secs"].as_i64().expect("ttl_secs");
                let token = event["data"]["fencing_token"].as_i64().expect("token");
                if token <= last_fencing_token {
                    violations.push(format!(
                        "seq {seq}: fencing token {token} after {last_fencing_token}"
                    ));
                }
                last_fencing_token = token;
                let on_path = leases.entry(path.clone()).or_default();
                for (holder, (held_mode, expires)) in on_path.iter() {
                    let both_shared = held_mode == "shared" && mode == "shared";
                    if *holder != agent && *expires > ts && !both_shared {
                        violations.push(format!(
                            "seq {seq}: {path} granted to {agent} while {holder} held it \
                             ({held_mode}) for {} ms more",
                            expires - ts
                        ));
                    }
                }
                on_path.insert(agent, (mode, ts + ttl * 1000));
            }
            "lease.released" | "lease.expired" => {
                let path = event["data"]["path"].as_str().expect("path");
                if let Some(on_path) = leases.get_mut(path) {
                    on_path.remove(&agent);
                }
            }
            _ => {}
        }
    }
    violations
}

pub fn event_ms(event: &Value) -> i64 {
    let ts = event["ts"].as_str().expect("ts");
    ts.parse::<DateTime<Utc>>()
        .expect("rfc3339 ts")
        .timestamp_millis()
}

/// The invariants above can fail: each kind of violation, written by hand, is caught.
#[test]
fn log_checks_catch_each_violation() {
    let event = |seq: i64, ms: i64, kind: &str, agent: &str, task: Option<&str>, data: Value| {
        let ts = DateTime::<Utc>::from_timestamp_millis(ms).expect("ts");
        json!({ "seq": seq, "ts": ts.to_rfc3339(), "kind": kind, "agent": agent, "task": task,
                "data": data })
    };
    let lease =
        |path: &str, token: i64| json!({ "path": path, "ttl_secs": 10, "fencing_token": token });
    let sound = vec![
        event(1, 0, "task.claimed", "a", Some("T-1"), json!({})),
        event(2, 1, "task.done", "a", Some("T-1"), json!({})),
        event(3, 2, "task.claimed", "b", Some("T-1"), json!({})),
        event(4, 3, "lease.granted", "a", None, lease("x.rs", 1)),
        event(5, 4, "lease.released", "a", None, json!({ "path": "x.rs" })),
        event(6, 5, "lease.granted", "b", None, lease("x.rs", 2)),
        // a's lease expired by its TTL before c took it, even without an event
        event(7, 10_006, "lease.granted", "c", None, lease("x.rs", 3)),
    ];
    assert_eq!(log_violations(&sound), Vec::<String>::new());

    let held_twice = vec![
        event(1, 0, "task.claimed", "a", Some("T-1"), json!({})),
        event(2, 1, "task.claimed", "b", Some("T-1"), json!({})),
    ];
    let leased_twice = vec![
        event(1, 0, "lease.granted", "a", None, lease("x.rs", 1)),
        event(2, 9_999, "lease.granted", "b", None, lease("x.rs", 2)),
    ];
    let token_went_back = vec![
        event(1, 0, "lease.granted", "a", None, lease("x.rs", 5)),
        event(2, 1, "lease.granted", "a", None, lease("y.rs", 5)),
    ];
    let seq_went_back = vec![
        event(2, 0, "task.claimed", "a", Some("T-1"), json!({})),
        event(2, 1, "task.done", "a", Some("T-1"), json!({})),
    ];
    for (name, log) in [
        ("held twice", held_twice),
        ("leased twice", leased_twice),
        ("token went back", token_went_back),
        ("seq went back", seq_went_back),
    ] {
        assert_eq!(log_violations(&log).len(), 1, "{name} not caught");
    }
}
