//! Two servers on one PostgreSQL, across a real network interface (docs/scale-out.md, "Several
//! servers"): server A serves on 10.200.0.1 in one network namespace, server B on 10.200.0.2 in
//! the other (the [`Netns`] pair of `hosts.rs`), both on one database reached through the
//! test cluster's unix socket. Agents are real `conclave` processes in both namespaces, each
//! with both URLs (`CONCLAVE_URL=A,B` on host 1, `B,A` on host 2).
//!
//! The test checks, in order: agents of both servers racing for the same tasks and the same
//! file get one winner per task, never two holders of the file, and fencing tokens that only
//! grow; events written through A reach a `conclave log --follow` on B in sequence order without
//! gaps (and how late); then A is SIGKILLed: B takes the sweeper's advisory lock over within
//! seconds, a claim held by an agent that died with A returns to `ready`, and host 1's agents
//! carry on through B.
//!
//! A second test does the same failover for a live Claude Code session: host 1's supervisor
//! (`conclave up --server A,B`) runs the real CLI, driven by the stand-in on host 1's loopback,
//! through its relay; after A's SIGKILL the same session finishes a task through B.
//!
//! They need root, `ip` and PostgreSQL (and the second, Claude Code); without them they print
//! `skipped: <reason>` (under `CI=true` they fail).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use conclave_core::store::pg_tls::PgTarget;
use conclave_core::store::testing::postgres_test_url;
use serde_json::Value;

use conclave_standin::claude_cli::{CliEnv, claude_or_skip};
use conclave_standin::{Script, StandIn};

use crate::hosts::{Netns, finisher};
use crate::support::{AGENT_TIMEOUT, AgentProcess, BIN, COMMAND_TIMEOUT, Team, api_key, serial};

/// The two servers' addresses (inside the namespaces only).
const ADDRESSES: [&str; 2] = ["10.200.0.1", "10.200.0.2"];
/// Short, so that the sweeper returns a dead agent's claim within seconds.
const CLAIM_TTL_SECS: u64 = 5;
/// Tasks the agents race for.
const RACE_TASKS: usize = 6;
/// Events written through A while B's follower watches.
const FOLLOWED_WRITES: usize = 20;

/// One agent: its name, the namespace it runs in (0 or 1), and its token.
struct Agent {
    name: String,
    host: usize,
    token: String,
}

/// Runs `conclave` in the namespaces, against the servers.
struct Cluster<'n> {
    netns: &'n Netns,
    clones: [PathBuf; 2],
    /// `[A, B]`, once started.
    urls: Vec<String>,
}

impl Cluster<'_> {
    /// `conclave ARGS` in namespace `host`, from its clone, with `CONCLAVE_URL=urls`; as `agent`,
    /// or as the admin (the clone's admin token).
    fn command(
        &self,
        host: usize,
        urls: &str,
        agent: Option<&Agent>,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut command = self.netns.command(host, BIN);
        command
            .args(args)
            .current_dir(&self.clones[host])
            .env("CONCLAVE_URL", urls)
            .env_remove("CONCLAVE_AGENT")
            .env_remove("CONCLAVE_TOKEN")
            .stdin(Stdio::null());
        if let Some(agent) = agent {
            command
                .env("CONCLAVE_AGENT", &agent.name)
                .env("CONCLAVE_TOKEN", &agent.token);
        }
        command
    }

    /// Both URLs, this host's server first.
    fn failover_urls(&self, host: usize) -> String {
        format!("{},{}", self.urls[host], self.urls[1 - host])
    }

    /// Runs a command to its end: (exit code, stdout, stderr).
    async fn run(
        &self,
        host: usize,
        urls: &str,
        agent: Option<&Agent>,
        args: &[&str],
    ) -> Result<(i32, String, String)> {
        let mut command = self.command(host, urls, agent, args);
        command.kill_on_drop(true);
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .with_context(|| format!("conclave {args:?} did not finish in time"))??;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }

    /// Like [`Cluster::run`], failing unless it succeeds; answers stdout.
    async fn ok(
        &self,
        host: usize,
        urls: &str,
        agent: Option<&Agent>,
        args: &[&str],
    ) -> Result<String> {
        let (code, stdout, stderr) = self.run(host, urls, agent, args).await?;
        ensure!(code == 0, "conclave {args:?} exited {code}: {stderr}");
        Ok(stdout)
    }
}

/// Claims until nothing is ready; for each task, tries to lock `src/shared.rs`, unlocks it if
/// granted, and finishes the task. Answers the tasks it finished.
async fn race(cluster: &Cluster<'_>, agent: &Agent) -> Result<Vec<String>> {
    let urls = cluster.failover_urls(agent.host);
    let mut finished = Vec::new();
    loop {
        let (code, id, stderr) = cluster
            .run(agent.host, &urls, Some(agent), &["task", "claim"])
            .await?;
        match code {
            0 => {}
            3 => return Ok(finished),
            _ => bail!("{} could not claim: {stderr}", agent.name),
        }
        let (locked, _, _) = cluster
            .run(
                agent.host,
                &urls,
                Some(agent),
                &["lock", "src/shared.rs", "--task", &id],
            )
            .await?;
        if locked == 0 {
            // Held a moment, so that the others' requests meet it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster
                .ok(agent.host, &urls, Some(agent), &["unlock", "src/shared.rs"])
                .await?;
        }
        cluster
            .ok(
                agent.host,
                &urls,
                Some(agent),
                &["task", "done", &id, "--summary", "raced"],
            )
            .await?;
        finished.push(id);
    }
}

/// The whole event log, read through `host`'s server.
async fn event_log(cluster: &Cluster<'_>, host: usize) -> Result<Vec<Value>> {
    let stdout = cluster
        .ok(
            host,
            &cluster.urls[host],
            None,
            &["log", "--json", "--limit", "10000"],
        )
        .await?;
    let log: Value = serde_json::from_str(&stdout).context("log --json")?;
    Ok(log["events"].as_array().cloned().unwrap_or_default())
}

/// Which server holds the sweeper's session-level advisory lock: the `application_name` of the
/// connection that holds an advisory lock with no transaction open (a write's lock is
/// transaction-scoped), among this test's servers. Asked a few times: the sweeper's connection
/// is busy for a moment at each sweep.
async fn sweeper_holder(store_url: &str, names: &[String; 2]) -> Result<Option<String>> {
    let target = PgTarget::parse(store_url).map_err(anyhow::Error::msg)?;
    let names = names.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Option<String>> {
        let mut client = target.connect()?;
        for _ in 0..10 {
            let rows = client.query(
                "SELECT a.application_name::text FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND a.state = 'idle' \
                 AND a.application_name = ANY($1)",
                &[&names],
            )?;
            if let Some(row) = rows.first() {
                return Ok(Some(row.get(0)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    })
    .await?
}

/// Polls `.conclave/server.json` of `root` for the server's URL.
async fn wait_for_url(root: &Path, log: &Path) -> Result<String> {
    let path = root.join(".conclave/server.json");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(info) = serde_json::from_str::<Value>(&text)
            && let Some(url) = info["url"].as_str()
        {
            return Ok(url.to_string());
        }
        ensure!(
            Instant::now() < deadline,
            "no server.json in {}: {}",
            root.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two clones, one per "host", each with a conclave.toml naming the one database (plus
/// `extra`), and server A (host 1) then server B (host 2) serving them; A is the sweeper before B
/// starts. `names` are the servers' `application_name`s, which tell their connections apart in
/// `pg_locks`. The teams keep the clones alive.
async fn start_servers<'n>(
    netns: &'n Netns,
    store_url: &str,
    names: &[String; 2],
    extra: &str,
    logs: &Path,
) -> Result<(Vec<Team>, Cluster<'n>, Vec<AgentProcess>)> {
    let teams = vec![Team::create().await?, Team::create().await?];
    let clones = [teams[0].root().to_path_buf(), teams[1].root().to_path_buf()];
    for (clone, name) in clones.iter().zip(names) {
        std::fs::create_dir_all(clone.join("src"))?;
        std::fs::write(
            clone.join("conclave.toml"),
            format!(
                "[server]\nallow_remote = true\nclaim_ttl_secs = {CLAIM_TTL_SECS}\n\n\
                 [store]\nurl = {}\n\n{extra}",
                serde_json::to_string(&format!("{store_url}&application_name={name}"))?
            ),
        )?;
    }
    let mut cluster = Cluster {
        netns,
        clones,
        urls: Vec::new(),
    };
    let mut servers = Vec::new();
    for (host, address) in ADDRESSES.iter().enumerate() {
        if host == 1 {
            // One admin token for the team: host 1's, copied to host 2's clone.
            std::fs::copy(
                cluster.clones[0].join(".conclave/admin.token"),
                cluster.clones[1].join(".conclave/admin.token"),
            )?;
        }
        let log = logs.join(format!("server-{host}.log"));
        let mut serve = netns.command(host, BIN);
        serve
            .args(["serve", "--listen", &format!("{address}:0")])
            .current_dir(&cluster.clones[host])
            .env_remove("CONCLAVE_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        servers.push(AgentProcess::spawn(serve)?);
        let url = wait_for_url(&cluster.clones[host], &log).await?;
        ensure!(url.starts_with(&format!("http://{address}:")), "{url}");
        cluster.urls.push(url);
        if host == 0 {
            // A becomes the sweeper before B starts (its first sweep comes within a second).
            let deadline = Instant::now() + Duration::from_secs(10);
            while sweeper_holder(store_url, names).await?.as_deref() != Some(&names[0]) {
                ensure!(
                    Instant::now() < deadline,
                    "server A never took the sweeper's lock"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok((teams, cluster, servers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_race_follow_and_fail_over() -> Result<()> {
    let _serial = serial().await;
    let Some(netns) = Netns::create()? else {
        return Ok(());
    };
    // The driver is synchronous: off the runtime's threads.
    let Some(store_url) = tokio::task::spawn_blocking(postgres_test_url).await? else {
        return Ok(());
    };
    let names = [
        format!("conclave-a-{}", std::process::id()),
        format!("conclave-b-{}", std::process::id()),
    ];
    let logs = tempfile::tempdir()?;
    let (teams, cluster, mut servers) =
        start_servers(&netns, &store_url, &names, "", logs.path()).await?;
    let server_log = |host: usize| {
        std::fs::read_to_string(logs.path().join(format!("server-{host}.log"))).unwrap_or_default()
    };

    // Agents: three registered through each server, each knowing both URLs.
    let mut agents = Vec::new();
    for host in 0..2 {
        for n in 1..=3 {
            let name = format!("h{}-{n}", host + 1);
            let token = cluster
                .ok(host, &cluster.urls[host], None, &["agent", "add", &name])
                .await?;
            agents.push(Agent { name, host, token });
        }
    }
    let mut race_tasks = Vec::new();
    for n in 1..=RACE_TASKS {
        let server = n % 2;
        race_tasks.push(
            cluster
                .ok(
                    server,
                    &cluster.urls[server],
                    None,
                    &["task", "add", &format!("Race {n}")],
                )
                .await?,
        );
    }

    // 1. The race: every agent at once, through its own server.
    let finished =
        futures::future::try_join_all(agents.iter().map(|agent| race(&cluster, agent))).await?;
    let mut finished: Vec<String> = finished.into_iter().flatten().collect();
    finished.sort();
    let mut expected = race_tasks.clone();
    expected.sort();
    ensure!(
        finished == expected,
        "finished {finished:?}, added {expected:?}"
    );
    let events = event_log(&cluster, 1).await?;
    let mut claims: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in events.iter().filter(|e| e["kind"] == "task.claimed") {
        claims
            .entry(event["task"].as_str().unwrap_or_default())
            .or_default()
            .push(event["agent"].as_str().unwrap_or_default());
    }
    let mut winning_hosts = std::collections::BTreeSet::new();
    for id in &race_tasks {
        let claimers = claims.get(id.as_str()).cloned().unwrap_or_default();
        ensure!(claimers.len() == 1, "{id} claimed by {claimers:?}");
        winning_hosts.extend(
            agents
                .iter()
                .filter(|a| a.name == claimers[0])
                .map(|a| a.host),
        );
    }
    ensure!(
        winning_hosts.len() == 2,
        "only host {winning_hosts:?}'s agents won a task: the servers did not race"
    );
    let mut holder: Option<&str> = None;
    let mut last_token = 0;
    let mut grants = 0;
    for event in &events {
        let agent = event["agent"].as_str().unwrap_or_default();
        match event["kind"].as_str().unwrap_or_default() {
            "lease.granted" => {
                if let Some(other) = holder.filter(|h| *h != agent) {
                    bail!("{agent} was granted src/shared.rs while {other} held it: {event}");
                }
                let token = event["data"]["fencing_token"].as_i64().unwrap_or_default();
                ensure!(
                    token > last_token,
                    "fencing token {token} after {last_token}"
                );
                last_token = token;
                holder = Some(agent);
                grants += 1;
            }
            "lease.released" | "lease.expired" => holder = None,
            _ => {}
        }
    }
    ensure!(grants >= 1, "nobody was granted src/shared.rs");
    let denied = events
        .iter()
        .filter(|e| e["kind"] == "lease.denied")
        .count();
    println!("src/shared.rs: {grants} grants, {denied} requests denied while another held it");
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    ensure!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "the log has gaps or disorder"
    );

    // 2. A follower on B sees what is written through A: in order, without gaps.
    let mut follower = cluster.command(1, &cluster.urls[1], None, &["log", "--follow", "--json"]);
    follower.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut follower = AgentProcess::spawn(follower)?;
    let mut lines = follower.stdout_lines()?;
    // The backlog first (the last 100 events), up to the newest.
    let newest = seqs.last().copied().unwrap_or_default();
    let mut last_seen = 0;
    while last_seen < newest {
        let line = tokio::time::timeout(COMMAND_TIMEOUT, lines.next_line())
            .await
            .context("the follower printed no backlog")??
            .context("the follower ended")?;
        let event: Value = serde_json::from_str(&line)?;
        last_seen = event["seq"].as_i64().unwrap_or_default();
    }
    let mut latencies = Vec::new();
    for n in 1..=FOLLOWED_WRITES {
        let written = Instant::now();
        let id = cluster
            .ok(
                0,
                &cluster.urls[0],
                None,
                &["task", "add", &format!("Followed {n}")],
            )
            .await?;
        let returned = written.elapsed();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .with_context(|| format!("B's follower never saw {id}"))??
                .context("the follower ended")?;
            let event: Value = serde_json::from_str(&line)?;
            let seq = event["seq"].as_i64().unwrap_or_default();
            ensure!(
                seq == last_seen + 1,
                "the follower on B saw seq {seq} after {last_seen}"
            );
            last_seen = seq;
            if event["kind"] == "task.created" && event["task"] == id.as_str() {
                latencies.push(written.elapsed().saturating_sub(returned));
                break;
            }
        }
    }
    drop(follower);
    latencies.sort();
    println!(
        "cross-server event latency after the write returned (A to B's follower): \
         median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // 3. An agent of host 1 claims a task through A only, then A dies with it.
    let doomed = &agents[2];
    let orphan = cluster
        .ok(0, &cluster.urls[0], None, &["task", "add", "Orphaned"])
        .await?;
    let claimed = cluster
        .ok(
            0,
            &cluster.urls[0],
            Some(doomed),
            &["task", "claim", &orphan],
        )
        .await?;
    ensure!(claimed == orphan, "{claimed} / {orphan}");
    ensure!(
        sweeper_holder(&store_url, &names).await?.as_deref() == Some(&names[0]),
        "A should still be the sweeper"
    );
    let pid = servers[0]
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .context("server A has no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    servers[0].wait(COMMAND_TIMEOUT).await?;

    // B takes the sweeper's lock over, and returns the dead agent's claim.
    let takeover = loop {
        if sweeper_holder(&store_url, &names).await?.as_deref() == Some(&names[1]) {
            break killed.elapsed();
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(15),
            "B did not become the sweeper: {}",
            server_log(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let returned = loop {
        let shown = cluster
            .ok(
                1,
                &cluster.urls[1],
                None,
                &["task", "show", &orphan, "--json"],
            )
            .await?;
        let task: Value = serde_json::from_str(&shown)?;
        if task["status"] == "ready" {
            break killed.elapsed();
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(CLAIM_TTL_SECS + 15),
            "{orphan} is still {}: {}",
            task["status"],
            server_log(1)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "after SIGKILL of A: B held the sweeper's lock in {takeover:?}, the orphaned claim \
         returned in {returned:?} (claim TTL {CLAIM_TTL_SECS} s)"
    );
    let events = event_log(&cluster, 1).await?;
    ensure!(
        events
            .iter()
            .any(|e| e["kind"] == "task.reclaimed" && e["task"] == orphan.as_str()),
        "no task.reclaimed for {orphan}"
    );

    // Host 1's surviving agents fail over: with A first in their list, they reach B, and finish
    // everything ready (the followed tasks, the orphan, two more).
    for n in 1..=2 {
        cluster
            .ok(
                1,
                &cluster.urls[1],
                None,
                &["task", "add", &format!("After the failover {n}")],
            )
            .await?;
    }
    let survivors: Vec<&Agent> = agents[..2].iter().collect();
    let done =
        futures::future::try_join_all(survivors.iter().map(|agent| race(&cluster, agent))).await?;
    let done: Vec<String> = done.into_iter().flatten().collect();
    ensure!(
        done.len() == FOLLOWED_WRITES + 3 && done.contains(&orphan),
        "host 1's agents finished {done:?} through B"
    );
    let events = event_log(&cluster, 1).await?;
    let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
    ensure!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "the log has gaps or disorder after the failover"
    );
    drop(servers);
    drop(teams);
    Ok(())
}

/// Polls, through `host`'s server, until task `id` is done; answers it.
async fn wait_done(cluster: &Cluster<'_>, host: usize, id: &str) -> Result<Value> {
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        let (code, shown, _) = cluster
            .run(
                host,
                &cluster.urls[host],
                None,
                &["task", "show", id, "--json"],
            )
            .await?;
        if code == 0 {
            let task: Value = serde_json::from_str(&shown)?;
            if task["status"] == "done" {
                return Ok(task);
            }
        }
        ensure!(Instant::now() < deadline, "{id} is not done");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A live Claude Code session fails over between two servers running at once on one
/// PostgreSQL: host 1's supervisor runs `conclave up --server A,B`, its agent's session reaches
/// A through the supervisor's relay and finishes a task; A is SIGKILLed (B keeps running, as it
/// did all along); the same session, woken through B for a task added there, claims and
/// finishes it through B, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_fails_over_between_two_servers_on_one_postgres() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let Some(netns) = Netns::create()? else {
        return Ok(());
    };
    let Some(store_url) = tokio::task::spawn_blocking(postgres_test_url).await? else {
        return Ok(());
    };
    // The stand-in for the model API on host 1's own loopback, where the agent runs.
    let stand_in = StandIn::start_on(
        netns.loopback_listener(0)?,
        Script::new().agent_fn(&api_key("solo"), finisher),
    )?;
    let home = CliEnv::new(&stand_in.url(), &api_key("solo"))?;
    let env: Vec<String> = home
        .vars()
        .iter()
        .map(|(key, value)| format!("{key} = {}", serde_json::json!(value)))
        .collect();
    let agent = format!(
        "[[agent]]\nname = \"solo\"\nhost = \"build-1\"\npermission_mode = \"acceptEdits\"\n\
         env = {{ {} }}\n",
        env.join(", ")
    );
    let names = [
        format!("conclave-relay-a-{}", std::process::id()),
        format!("conclave-relay-b-{}", std::process::id()),
    ];
    let logs = tempfile::tempdir()?;
    let (_teams, cluster, mut servers) =
        start_servers(&netns, &store_url, &names, &agent, logs.path()).await?;
    let first = cluster
        .ok(
            0,
            &cluster.urls[0],
            None,
            &["task", "add", "Before the failover"],
        )
        .await?;

    // Host 1's supervisor, with both servers; its agent reaches them through its relay.
    let supervisor_env = CliEnv::new(&stand_in.url(), "key-supervisor")?;
    let log = logs.path().join("up.log");
    let both = cluster.failover_urls(0);
    let mut up = cluster.command(
        0,
        &both,
        None,
        &["up", "--stay", "--host", "build-1", "--server", &both],
    );
    for (key, value) in supervisor_env.vars() {
        up.env(key, value);
    }
    up.env_remove("CONCLAVE_URL")
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut up = AgentProcess::spawn(up)?;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_done(&cluster, 1, &first)
        .await
        .with_context(|| format!("before the failover: {}", log_text()))?;
    ensure!(
        log_text().contains("through the relay at http://127.0.0.1:"),
        "{}",
        log_text()
    );
    let listed = |stdout: String| -> Result<Value> {
        let list: Value = serde_json::from_str(&stdout)?;
        list["agents"]
            .as_array()
            .and_then(|agents| agents.iter().find(|a| a["name"] == "solo"))
            .cloned()
            .context("solo is not listed")
    };
    let before = listed(
        cluster
            .ok(1, &cluster.urls[1], None, &["agent", "list", "--json"])
            .await?,
    )?;

    // A dies; B has been serving the same database all along.
    let pid = servers[0]
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .context("server A has no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    servers[0].wait(COMMAND_TIMEOUT).await?;
    let second = cluster
        .ok(
            1,
            &cluster.urls[1],
            None,
            &["task", "add", "After the failover"],
        )
        .await?;
    let task = wait_done(&cluster, 1, &second)
        .await
        .with_context(|| format!("after the failover: {}", log_text()))?;
    ensure!(task["assignee"] == "solo", "{task}");
    let after = listed(
        cluster
            .ok(1, &cluster.urls[1], None, &["agent", "list", "--json"])
            .await?,
    )?;
    // The same process and session did both tasks: nothing was restarted.
    for field in ["pid", "session_id"] {
        ensure!(after[field] == before[field], "{before} / {after}");
    }
    ensure!(after["restarts"] == 0, "{after}");

    if let Some(pid) = up.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = up.wait(COMMAND_TIMEOUT).await?;
    ensure!(status.success(), "conclave up: {status}: {}", log_text());
    drop(stand_in);
    drop(home);
    Ok(())
}
