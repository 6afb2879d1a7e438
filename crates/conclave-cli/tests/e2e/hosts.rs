//! Agents on several hosts, over a real network interface (docs/scale-out.md): the test makes
//! two network namespaces joined by a veth pair — "host 1" (10.200.0.1) runs `conclave serve`
//! over TLS and a supervisor for its own agents, "host 2" (10.200.0.2) runs `conclave up --server
//! https://10.200.0.1:PORT --host build-2` in a clone of its own — and the real Claude Code CLI,
//! driven by a stand-in listening on each namespace's own loopback, races for the same tasks and
//! the same file from both hosts.
//!
//! [`Netns`] is the harness: it needs root and `ip` (iproute2). Without them the test prints
//! `skipped: <reason>` and records the skip in `CONCLAVE_SKIP_LOG`; under `CI=true` it fails
//! instead. It removes the namespaces (and with them the veth pair) when dropped, a panic
//! included. No address outside the namespaces and loopback is used.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use conclave_standin::claude_cli::{CliEnv, claude_or_skip, record_skip};
use conclave_standin::{RecordedRequest, Reply, Script, StandIn, StandInHandle};
use serde_json::{Value, json};

use crate::support::{AGENT_TIMEOUT, AgentProcess, BIN, COMMAND_TIMEOUT, Team, api_key, serial};

const IP: &str = "ip";
/// Host 1's address (the server's), and host 2's.
const HOST_1: &str = "10.200.0.1";
const HOST_2: &str = "10.200.0.2";

/// Two network namespaces joined by a veth pair: `hosts[0]` has [`HOST_1`], `hosts[1]` has
/// [`HOST_2`], each with its loopback up. Removed on drop.
pub(crate) struct Netns {
    hosts: [String; 2],
    veth: [String; 2],
}

impl Netns {
    /// Makes the pair, or says why it cannot (`None`: skipped; under `CI=true`, a panic).
    pub(crate) fn create() -> Result<Option<Netns>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(skip("network namespaces need root"));
        }
        let version = std::process::Command::new(IP).arg("-V").output();
        if !version.is_ok_and(|output| output.status.success()) {
            return Ok(skip("`ip` (iproute2) is not installed"));
        }
        remove_stale_namespaces();
        // Unique per process and call, naming the process (for the stale check above); interface
        // names have at most 15 characters: `cnv` + pid (at most 7 digits) + `x` + n + `v1`.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let tag = format!("{NAME_PREFIX}{}x{n}", std::process::id());
        let netns = Netns {
            hosts: [format!("{tag}h1"), format!("{tag}h2")],
            veth: [format!("{tag}v1"), format!("{tag}v2")],
        };
        // A refusal at the first step (no CAP_SYS_ADMIN in a container, say) is a skip; later
        // failures are errors, cleaned up by the drop.
        if let Err(error) = ip(&["netns", "add", &netns.hosts[0]]) {
            return Ok(skip(&format!("cannot create a network namespace: {error}")));
        }
        ip(&["netns", "add", &netns.hosts[1]])?;
        ip(&[
            "link",
            "add",
            &netns.veth[0],
            "type",
            "veth",
            "peer",
            "name",
            &netns.veth[1],
        ])?;
        for (i, address) in [HOST_1, HOST_2].iter().enumerate() {
            let (host, veth) = (&netns.hosts[i], &netns.veth[i]);
            ip(&["link", "set", veth, "netns", host])?;
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                veth,
            ])?;
            ip(&["-n", host, "link", "set", veth, "up"])?;
            ip(&["-n", host, "link", "set", "lo", "up"])?;
        }
        Ok(Some(netns))
    }

    /// `program ARGS` run inside host `i` (0 or 1), through `ip netns exec`.
    pub(crate) fn command(&self, i: usize, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(IP);
        command
            .args(["netns", "exec", &self.hosts[i], program])
            .kill_on_drop(true);
        command
    }

    /// A listener on `127.0.0.1:0` of host `i`'s own loopback, bound by a thread that joined
    /// that namespace (a socket stays in the namespace it was made in, whichever thread serves
    /// it later).
    pub(crate) fn loopback_listener(&self, i: usize) -> Result<tokio::net::TcpListener> {
        let path = format!("/run/netns/{}", self.hosts[i]);
        let listener = std::thread::spawn(move || -> Result<std::net::TcpListener> {
            let namespace = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns")?;
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so the pair; the link itself is
        // deleted too in case it was made but not yet moved.
        let _ = ip(&["link", "del", &self.veth[0]]);
        for host in &self.hosts {
            let _ = ip(&["netns", "del", host]);
        }
    }
}

/// What every namespace and interface of these tests is named with.
const NAME_PREFIX: &str = "cnv";

/// Removes the namespaces of a test process that no longer runs (one killed before its drop
/// could run): `cnv<pid>x...` with no `/proc/<pid>`.
fn remove_stale_namespaces() {
    let Ok(output) = std::process::Command::new(IP)
        .args(["netns", "list"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn skip(reason: &str) -> Option<Netns> {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("the multi-host tests need network namespaces under CI=true: {reason}");
    }
    record_skip(reason);
    None
}

fn ip(args: &[&str]) -> Result<()> {
    let output = std::process::Command::new(IP).args(args).output()?;
    ensure!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// A private CA (`ca.pem`) and a certificate it signed for `names` (`cert.pem`, `key.pem`) in
/// `dir`.
fn write_certificates(dir: &Path, names: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(())
}

/// The task id a `claim` result names (`Claimed T-3 ...`).
fn claimed_id(content: &str) -> Option<String> {
    let rest = content.split("Claimed ").nth(1)?;
    let id: String = rest
        .chars()
        .take_while(|c| *c == 'T' || *c == '-' || c.is_ascii_digit())
        .collect();
    (id.len() > 2).then_some(id)
}

/// How long a winner holds `src/shared.rs` before finishing: the others' writes come meanwhile.
const HOLD: Duration = Duration::from_secs(5);

/// An agent that claims a task, writes `src/shared.rs` in its clone, finishes the task (after
/// [`HOLD`] when its write went through, at once when it was denied), and claims again until
/// nothing is ready.
fn racer(clone: PathBuf) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static {
    move |request| {
        let claim = || Reply::tool_use("mcp__conclave__claim", json!({}));
        // A turn that starts with a wake-up (a user message, no tool result) claims.
        let woken = request.tool_results().is_empty();
        let last = request.all_tool_results().last().cloned();
        match last_tool(request).as_deref() {
            None => claim(),
            Some("Write") => {
                let claimed = request
                    .all_tool_results()
                    .iter()
                    .rev()
                    .find_map(|result| claimed_id(&result.content));
                let Some(id) = claimed else {
                    return Reply::text("I lost track of my task.");
                };
                let done =
                    Reply::tool_use("mcp__conclave__done", json!({"id": id, "summary": "raced"}));
                let denied = last.is_none_or(|result| result.is_error);
                if denied { done } else { done.with_delay(HOLD) }
            }
            Some("mcp__conclave__claim")
                if !woken && last.is_some_and(|result| claimed_id(&result.content).is_some()) =>
            {
                let file = clone.join("src/shared.rs");
                Reply::tool_use(
                    "Write",
                    json!({"file_path": file, "content": "written in a race\n"}),
                )
            }
            Some("mcp__conclave__done") => claim(),
            Some(_) if woken => claim(),
            _ => Reply::text("Nothing more for me now."),
        }
    }
}

/// What each agent saw: per model call, the last tool called and its result (for failures).
fn transcript(stand_ins: &[StandInHandle]) -> String {
    let mut lines = Vec::new();
    for racer in &RACERS {
        lines.push(format!("{}:", racer.name));
        for request in stand_ins[racer.host].main_requests_for(&api_key(racer.name)) {
            let result = request.tool_results().last().map(|result| {
                let text: String = result.content.chars().take(300).collect();
                format!("{}{text}", if result.is_error { "ERROR " } else { "" })
            });
            lines.push(format!("  after {:?}: {result:?}", last_tool(&request)));
        }
    }
    lines.join("\n")
}

/// The name of the last tool the model called in this conversation.
fn last_tool(request: &RecordedRequest) -> Option<String> {
    request
        .messages()
        .iter()
        .rev()
        .filter(|message| message["role"] == "assistant")
        .find_map(|message| {
            message["content"]
                .as_array()?
                .iter()
                .rev()
                .find(|block| block["type"] == "tool_use")?["name"]
                .as_str()
                .map(str::to_string)
        })
}

/// One agent of the test: its name, the host (0 or 1) and `host =` name.
struct Racer {
    name: &'static str,
    host: usize,
}

const RACERS: [Racer; 3] = [
    Racer {
        name: "h1",
        host: 0,
    },
    Racer {
        name: "h2a",
        host: 1,
    },
    Racer {
        name: "h2b",
        host: 1,
    },
];
const HOST_NAMES: [&str; 2] = ["build-1", "build-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_on_a_second_host_races_the_first_for_tasks_and_files() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let Some(netns) = Netns::create()? else {
        return Ok(());
    };
    // Host 1's clone is the project the server serves; host 2's is a clone of its own, with the
    // same conclave.toml and the admin token copied over (docs/scale-out.md).
    let team = Team::create().await?;
    let clone_2 = tempfile::Builder::new()
        .prefix("conclave-host2-")
        .tempdir()?;
    let clones = [team.root().to_path_buf(), clone_2.path().to_path_buf()];
    let git = std::process::Command::new("git")
        .args(["clone", "-q"])
        .arg(&clones[0])
        .arg(&clones[1])
        .stderr(Stdio::null())
        .status()?;
    ensure!(git.success(), "git clone failed: {git}");

    // One stand-in per host, on that host's loopback; each agent has its own lane.
    let mut stand_ins: Vec<StandInHandle> = Vec::new();
    for (host, clone) in clones.iter().enumerate() {
        let mut script = Script::new();
        for racer in RACERS.iter().filter(|r| r.host == host) {
            script = script.agent_fn(&api_key(racer.name), racer_script(clone));
        }
        stand_ins.push(StandIn::start_on(netns.loopback_listener(host)?, script)?);
    }
    let mut homes = Vec::new();
    // Over TLS: host 1's certificate names its address; both clones trust the private CA, and
    // each supervisor's agents reach the server through its relay.
    for clone in &clones {
        write_certificates(&clone.join("tls"), &[HOST_1])?;
    }
    std::fs::copy(clones[0].join("tls/ca.pem"), clones[1].join("tls/ca.pem"))?;
    let mut toml = String::from(
        "[server]\nallow_remote = true\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n\
         tls_ca = \"tls/ca.pem\"\n\n",
    );
    for racer in &RACERS {
        let home = CliEnv::new(&stand_ins[racer.host].url(), &api_key(racer.name))?;
        let env: Vec<String> = home
            .vars()
            .iter()
            .map(|(key, value)| format!("{key} = {}", json!(value)))
            .collect();
        toml.push_str(&format!(
            "[[agent]]\nname = {}\nhost = {}\npermission_mode = \"acceptEdits\"\nenv = {{ {} }}\n\n",
            json!(racer.name),
            json!(HOST_NAMES[racer.host]),
            env.join(", ")
        ));
        homes.push(home);
    }
    for clone in &clones {
        std::fs::create_dir_all(clone.join("src"))?;
        std::fs::write(clone.join("conclave.toml"), &toml)?;
    }

    // Host 1 serves on its veth address.
    let logs = tempfile::tempdir()?;
    let server_log = logs.path().join("server.log");
    let mut server = netns.command(0, BIN);
    server
        .args(["serve", "--listen", &format!("{HOST_1}:0")])
        .current_dir(&clones[0])
        .env_remove("CONCLAVE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&server_log)?);
    let server = AgentProcess::spawn(server)?;
    let url = wait_for_url(&clones[0])
        .await
        .with_context(|| std::fs::read_to_string(&server_log).unwrap_or_default())?;
    ensure!(url.starts_with(&format!("https://{HOST_1}:")), "{url}");
    std::fs::create_dir_all(clones[1].join(".conclave"))?;
    std::fs::copy(
        clones[0].join(".conclave/admin.token"),
        clones[1].join(".conclave/admin.token"),
    )?;
    let conclave = |host: usize, args: &[&str]| {
        let mut command = netns.command(host, BIN);
        command
            .args(args)
            .current_dir(&clones[host])
            .env_remove("CONCLAVE_URL")
            .env_remove("CONCLAVE_AGENT")
            .env_remove("CONCLAVE_TOKEN")
            .stdin(Stdio::null());
        command
    };
    let mut tasks = Vec::new();
    for n in 1..=3 {
        let output = conclave(0, &["task", "add", &format!("Race {n}")])
            .output()
            .await?;
        ensure!(output.status.success(), "task add: {output:?}");
        tasks.push(String::from_utf8_lossy(&output.stdout).trim().to_string());
    }

    // A supervisor on each host: host 2's reaches the server across the veth pair.
    let supervisor_env = CliEnv::new(&stand_ins[0].url(), "key-supervisor")?;
    let up = |host: usize, extra: &[&str]| -> Result<(AgentProcess, PathBuf)> {
        let mut command = conclave(host, &["up", "--host", HOST_NAMES[host]]);
        command.args(extra);
        for (key, value) in supervisor_env.vars() {
            command.env(key, value);
        }
        let log = logs.path().join(format!("up-{host}.log"));
        command
            .env("CONCLAVE_CLAUDE_BIN", &claude)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        Ok((AgentProcess::spawn(command)?, log))
    };
    let host_1 = up(0, &[])?;
    let host_2 = up(1, &["--server", &url])?;
    let (first, second) = tokio::join!(finished(host_1), finished(host_2));
    let (first, second) = match (first, second) {
        (Ok(first), Ok(second)) => (first, second),
        (first, second) => bail!(
            "host 1: {first:?}\n\nhost 2: {second:?}\n\n{}",
            transcript(&stand_ins)
        ),
    };
    ensure!(
        second.contains("joining the server at https://10.200.0.1")
            && second.contains("through the relay at http://127.0.0.1:"),
        "host 2's supervisor: {second}"
    );
    ensure!(
        second.contains("h2a") && !second.contains("running 3 agent"),
        "{second}"
    );
    ensure!(first.contains("h1"), "host 1's supervisor: {first}");

    // The record, read as host 1 sees it.
    let output = conclave(0, &["agent", "list", "--json"]).output().await?;
    let agents: Value = serde_json::from_slice(&output.stdout)?;
    for racer in &RACERS {
        let agent = agents["agents"]
            .as_array()
            .and_then(|list| list.iter().find(|a| a["name"] == racer.name))
            .with_context(|| format!("{} is not listed: {agents}", racer.name))?;
        ensure!(agent["host"] == HOST_NAMES[racer.host], "{agent}");
    }
    let output = conclave(0, &["log", "--json", "--limit", "1000"])
        .output()
        .await?;
    let log: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("log: {}", String::from_utf8_lossy(&output.stderr)))?;
    let events = log["events"].as_array().context("no events")?;
    drop(server);

    // One winner per task: each claimed once, done by the one that claimed it.
    let mut claims: HashMap<String, Vec<String>> = HashMap::new();
    for event in events.iter().filter(|e| e["kind"] == "task.claimed") {
        let task = event["task"].as_str().unwrap_or_default().to_string();
        claims
            .entry(task)
            .or_default()
            .push(event["agent"].as_str().unwrap_or_default().into());
    }
    for id in &tasks {
        let claimers = claims.get(id).cloned().unwrap_or_default();
        ensure!(claimers.len() == 1, "{id} claimed by {claimers:?}");
        let done = events
            .iter()
            .find(|e| e["kind"] == "task.done" && e["task"] == id.as_str())
            .with_context(|| format!("{id} is not done"))?;
        ensure!(done["agent"] == claimers[0].as_str(), "{done}");
    }
    // Host 2's agents reached the server: they asked for work over the veth pair.
    for racer in RACERS.iter().filter(|r| r.host == 1) {
        let asked = stand_ins[1]
            .main_requests_for(&api_key(racer.name))
            .iter()
            .any(|request| {
                request.tool_results().iter().any(|result| {
                    result.content.contains("Claimed ") || result.content.contains("Nothing ready")
                })
            });
        ensure!(asked, "{} never got an answer to claim", racer.name);
    }
    // One holder of src/shared.rs at a time, whichever clone wrote it; the losers were denied.
    let mut holder: Option<String> = None;
    let mut denied = 0;
    let mut writers = Vec::new();
    for event in events {
        let agent = event["agent"].as_str().unwrap_or_default().to_string();
        match event["kind"].as_str().unwrap_or_default() {
            "lease.granted" => {
                ensure!(event["data"]["path"] == "src/shared.rs", "{event}");
                if let Some(other) = holder.as_ref().filter(|h| **h != agent) {
                    bail!("{agent} was granted src/shared.rs while {other} held it: {event}");
                }
                holder = Some(agent.clone());
                writers.push(agent);
            }
            "lease.released" | "lease.expired" => holder = None,
            "lease.denied" => denied += 1,
            "file.touched" => ensure!(event["data"]["path"] == "src/shared.rs", "{event}"),
            _ => {}
        }
    }
    ensure!(
        denied >= 1,
        "nobody lost a race for src/shared.rs: {writers:?}"
    );
    ensure!(!writers.is_empty(), "nobody wrote src/shared.rs");
    drop(homes);
    Ok(())
}

fn racer_script(clone: &Path) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static {
    racer(clone.to_path_buf())
}

/// Polls `.conclave/server.json` of `root` for the server's URL.
async fn wait_for_url(root: &Path) -> Result<String> {
    let path = root.join(".conclave/server.json");
    let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(info) = serde_json::from_str::<Value>(&text)
            && let Some(url) = info["url"].as_str()
        {
            return Ok(url.to_string());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the server in host 1 wrote no server.json"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a supervisor to finish (exit 0); returns what it wrote to its log.
async fn finished((mut up, log): (AgentProcess, PathBuf)) -> Result<String> {
    let status = up.wait(AGENT_TIMEOUT * 2).await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Ok(status) if status.success() => Ok(stderr),
        Ok(status) => bail!("conclave up failed ({status}): {stderr}"),
        Err(error) => bail!("{error}: {stderr}"),
    }
}

/// An agent that claims and finishes tasks until nothing is ready; woken, it claims again.
pub(crate) fn finisher(request: &RecordedRequest) -> Reply {
    let claim = || Reply::tool_use("mcp__conclave__claim", json!({}));
    if request.tool_results().is_empty() {
        return claim();
    }
    let last = request.all_tool_results().last().cloned();
    match last.as_ref().and_then(|result| claimed_id(&result.content)) {
        Some(id) => Reply::tool_use("mcp__conclave__done", json!({"id": id, "summary": "ok"})),
        None if last.is_some_and(|result| result.content.contains(" done;")) => claim(),
        None => Reply::text("Nothing more for me now."),
    }
}

/// `conclave up --server A,B`: the agent's live Claude Code session reaches server A through the
/// supervisor's relay; A is SIGKILLed and B started on the same project (the same database) on
/// the second URL; the same session, woken for a new task, claims and finishes it through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_fails_over_to_the_next_server_through_the_relay() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let free_port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port_a, port_b) = (free_port()?, free_port()?);
    let mut team = Team::create().await?;
    team.restart_server(&format!("127.0.0.1:{port_a}")).await?;
    let stand_in = StandIn::start(Script::new().agent_fn(&api_key("solo"), finisher)).await?;
    let home = CliEnv::new(&stand_in.url(), &api_key("solo"))?;
    let env: Vec<String> = home
        .vars()
        .iter()
        .map(|(key, value)| format!("{key} = {}", json!(value)))
        .collect();
    std::fs::write(
        team.path("conclave.toml"),
        format!(
            "[[agent]]\nname = \"solo\"\nhost = \"here\"\npermission_mode = \"acceptEdits\"\nenv = {{ {} }}\n",
            env.join(", ")
        ),
    )?;
    let first = team
        .conclave(&["task", "add", "Before the failover"])
        .await?;

    let urls = format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}");
    let supervisor_env = CliEnv::new(&stand_in.url(), "key-supervisor")?;
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("up.log");
    let mut command = supervisor_env.command(Path::new(BIN));
    command
        .args(["up", "--stay", "--host", "here", "--server", &urls])
        .current_dir(team.root())
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut up = AgentProcess::spawn(command)?;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    wait_done(&team, &first)
        .await
        .with_context(|| format!("before the failover: {}", log_text()))?;
    ensure!(
        log_text().contains("through the relay at http://127.0.0.1:"),
        "{}",
        log_text()
    );
    let before: Value = team.conclave_json(&["agent", "list", "--json"]).await?;
    let solo_before = before["agents"][0].clone();

    // Server A dies; B takes the project over on the second URL.
    team.restart_server(&format!("127.0.0.1:{port_b}")).await?;
    let second = team
        .conclave(&["task", "add", "After the failover"])
        .await?;
    let task = wait_done(&team, &second)
        .await
        .with_context(|| format!("after the failover: {}", log_text()))?;
    ensure!(task["assignee"] == "solo", "{task}");

    let after: Value = team.conclave_json(&["agent", "list", "--json"]).await?;
    let solo_after = &after["agents"][0];
    // The same process and session did both tasks: nothing was restarted.
    ensure!(
        solo_after["pid"] == solo_before["pid"],
        "{solo_before} / {solo_after}"
    );
    ensure!(
        solo_after["session_id"] == solo_before["session_id"],
        "{solo_before} / {solo_after}"
    );
    ensure!(solo_after["restarts"] == 0, "{solo_after}");
    ensure!(solo_after["host"] == "here", "{solo_after}");

    if let Some(pid) = up.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = up.wait(COMMAND_TIMEOUT).await?;
    ensure!(status.success(), "conclave up: {status}: {}", log_text());
    Ok(())
}

/// Polls until task `id` is done (bounded); returns it.
async fn wait_done(team: &Team, id: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
    loop {
        if let Ok(task) = team.conclave_json(&["task", "show", id, "--json"]).await
            && task["status"] == "done"
        {
            return Ok(task);
        }
        ensure!(tokio::time::Instant::now() < deadline, "{id} is not done");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `conclave claude --server DEAD,LIVE --host laptop`: a person's session joins through the
/// relay (its MCP server connects though the first URL is dead), its tool calls and hooks reach
/// the live server, and the agent is listed on its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conclave_claude_joins_a_list_of_servers_through_the_relay() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let team = Team::start().await?;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    let live = team.server()?.url.clone();
    let script = Script::new().agent_fn(&api_key("me"), |request| {
        if request.tool_results().is_empty() {
            Reply::tool_use("mcp__conclave__status", json!({}))
        } else {
            Reply::text("Seen the team.")
        }
    });
    let stand_in = StandIn::start(script).await?;
    let env = team.agent_env(&claude, &stand_in.url(), "me")?;
    let servers = format!("{dead},{live}");
    let run = team
        .run_agent(
            &env,
            "me",
            &["--server", &servers, "--host", "laptop"],
            "who is on the team?",
        )
        .await?;
    run.ensure_ok()?;
    ensure!(run.mcp_status() == Some("connected"), "{:#?}", run.lines);
    ensure!(
        run.stderr.contains("on host laptop"),
        "conclave claude: {}",
        run.stderr
    );
    let status = stand_in
        .main_requests_for(&api_key("me"))
        .iter()
        .flat_map(|request| request.tool_results())
        .find(|result| result.content.contains("me"))
        .context("the status tool answered nothing")?;
    ensure!(!status.is_error, "{}", status.content);
    let agents = team.conclave_json(&["agent", "list", "--json"]).await?;
    let me = agents["agents"]
        .as_array()
        .and_then(|list| list.iter().find(|a| a["name"] == "me"))
        .with_context(|| format!("me is not listed: {agents}"))?;
    ensure!(me["host"] == "laptop", "{me}");
    // The session's hooks went through the relay too: its session started on the server.
    ensure!(me["session_id"].is_string(), "{me}");
    Ok(())
}
