//! The benchmark behind `conclave bench`: a real `conclave serve` process on a throwaway project,
//! driven over loopback by simulated agents, each with its own token.
//!
//! One run measures, in order: the HTTP floor (`GET /healthz`, one client and sixteen); each
//! coordination operation alone by one agent over HTTP, over MCP and through the HTTP hook
//! endpoint, and the command hook end to end; sends, claims and fresh leases under sixteen
//! clients; teams of N agents each cycling claim → lock → send → inbox → ack → note → unlock →
//! done at full speed; the largest team again with every agent's live event stream open at a
//! fixed rate; and a server started on a long history (100,000 tasks by default) answering the
//! dashboard's and the listings' reads. Every latency is also given as a ratio to the floor of the
//! same run; the server's CPU time and memory are read from `/proc`. Bounded in requests; touches
//! nothing but its temporary folders and loopback.

mod load;
mod scale;
mod server;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use load::{BenchAgent, Request, Target};
pub use scale::History;
pub use server::ProcessSample;
pub use stats::OperationStats;

use load::{claimed_task, hook_input, mcp_claimed_task, message_ids};
use server::{BenchProject, BenchServer};

/// Concurrency of the "sixteen clients" phases (the targets name sixteen).
const CLIENTS: usize = 16;
/// Agents the fresh leases of the concurrent lease phase are spread over, so that each holds
/// few (well within the per-agent cap).
const LEASE_AGENTS: usize = 200;
/// Requests of each read in the scale run.
const SCALE_READS: usize = 50;
/// Command hook runs (each a process start).
const COMMAND_HOOK_RUNS: usize = 30;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `conclave` executable to run the server (`serve`) and the command hook with.
    pub exe: PathBuf,
    /// Requests per operation in the one-client and sixteen-client phases (per client).
    pub requests: usize,
    /// Team sizes of the mixed runs (agents, each its own connection).
    pub teams: Vec<usize>,
    /// Operations per team run (all agents together), bounding its time.
    pub team_ops: usize,
    /// Total operations per second of the fixed-rate run (with every live stream open).
    pub rate: usize,
    /// Seconds of each fixed-rate run.
    pub rate_secs: u64,
    /// Agents of the paced run: a team at a fixed rate, without streams (0 skips it).
    pub paced_agents: usize,
    /// Operations per second of the paced run (0 skips it).
    pub paced_rate: usize,
    /// Tasks of the scale run's history (0 skips it).
    pub scale_tasks: usize,
    /// A PostgreSQL database (`postgres://...`) to run every phase on, each project in a
    /// throwaway schema dropped afterwards; `None` runs on each project's own SQLite file.
    pub postgres: Option<String>,
}

impl BenchOptions {
    pub fn new(exe: PathBuf) -> BenchOptions {
        BenchOptions {
            exe,
            requests: 200,
            teams: vec![10, 100, 1000],
            team_ops: 8000,
            rate: 1000,
            rate_secs: 5,
            paced_agents: 100,
            paced_rate: 5000,
            scale_tasks: 100_000,
            postgres: None,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Cores the machine has, and its 1-minute load average before and after the run (other
    /// work on the machine shows here).
    pub cores: usize,
    pub load_before: f64,
    pub load_after: f64,
    /// `/healthz` with one client and with sixteen.
    pub floor: Vec<OperationStats>,
    /// One agent, one operation at a time (ratios to the one-client floor).
    pub sequential: Vec<OperationStats>,
    /// Sixteen clients at once (ratios to the sixteen-client floor).
    pub concurrent: Vec<OperationStats>,
    pub teams: Vec<TeamRun>,
    /// A team at a fixed rate without streams: its latency when the server is not saturated
    /// (a full-speed run queues every agent's next request behind the others').
    pub paced: Option<TeamRun>,
    /// The largest team with every agent's live stream open, at a fixed rate.
    pub streams: Option<TeamRun>,
    pub scale: Option<ScaleRun>,
    pub seconds: f64,
}

/// A mixed run of `agents` agents.
#[derive(Debug, Clone, Serialize)]
pub struct TeamRun {
    pub agents: usize,
    /// Live event streams open during the run.
    pub streams: usize,
    /// SSE frames the streams received during the run, all readers together.
    pub stream_frames: u64,
    /// The same per second of the run.
    pub stream_frames_per_sec: f64,
    /// Operations per second asked for (none: as fast as they answer).
    pub rate: Option<usize>,
    /// Every operation of the run together.
    pub all: OperationStats,
    pub operations: Vec<OperationStats>,
    /// Server CPU over the run, in percent of one core.
    pub server_cpu_percent: f64,
    /// The load generator's own CPU over the run (it shares the machine), in percent of one
    /// core.
    pub generator_cpu_percent: f64,
    pub server: ProcessSample,
}

/// A server started on a long history, answering reads.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub history: History,
    /// Events in the log when the server started.
    pub events: i64,
    /// From spawning the server to its first answer.
    pub start_ms: f64,
    pub reads: Vec<OperationStats>,
    pub server: ProcessSample,
}

pub async fn run_bench(
    options: BenchOptions,
    progress: impl Fn(&str),
) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(options.requests > 0, "requests must be at least 1");
    let started = Instant::now();
    let load_before = load_average();
    let largest_team = options.teams.iter().copied().max().unwrap_or(0);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(largest_team.max(LEASE_AGENTS) * 2)
        .build()?;
    // Room for every agent's stream, its requests in flight (an open-loop run may have one per
    // agent waiting) and the connections an earlier phase's pool has not closed yet: at twice
    // the agents, a 1,000-agent run with streams reached the cap and new connections waited for
    // idle ones to time out (30 s).
    let project = BenchProject::create(
        &options.exe,
        &format!(
            "max_connections = {}\nmax_leases_per_agent = 256",
            largest_team * 4 + 256
        ),
        options.postgres.as_deref(),
    )
    .await?;
    let server = project.serve(&http).await?;
    let target = Target {
        http: http.clone(),
        base: server.url.clone(),
        admin: server.admin.clone(),
    };
    let n = options.requests;

    progress("the floor: /healthz with one client and sixteen");
    let floor_one = phase(
        &server,
        "healthz",
        sequence(&target, None, n, |_| Request::Healthz),
    )
    .await?;
    let floor_many = concurrent_phase(&server, "healthz", &target, CLIENTS, n, |_, _| {
        Request::Healthz
    })
    .await?;

    progress("one agent, one operation at a time");
    let sequential = sequential_phases(&server, &target, &options.exe, n, &floor_one).await?;

    progress("sixteen clients: send, claim, fresh leases");
    let concurrent = concurrent_phases(&server, &target, n, &floor_many).await?;

    let mut teams = Vec::new();
    for &agents in &options.teams {
        progress(&format!("a team of {agents} agents at full speed"));
        // A client of its own per run: the connections an earlier run left idle in a pool
        // would count against the server's connection cap.
        let own = target.with_fresh_client(agents)?;
        teams.push(team_run(&server, &own, agents, options.team_ops, None).await?);
    }

    let paced = if options.paced_agents > 0 && options.paced_rate > 0 {
        progress(&format!(
            "a team of {} agents at {} ops/s for {} s",
            options.paced_agents, options.paced_rate, options.rate_secs
        ));
        let own = target.with_fresh_client(options.paced_agents * 2)?;
        let pace = Pace {
            agents: options.paced_agents,
            rate: options.paced_rate,
            secs: options.rate_secs,
            streams: false,
        };
        Some(fixed_rate_run(&server, &own, "paced", pace).await?)
    } else {
        None
    };

    let streams = if largest_team > 0 && options.rate > 0 {
        progress(&format!(
            "{largest_team} agents with live streams open, {} ops/s for {} s",
            options.rate, options.rate_secs
        ));
        let own = target.with_fresh_client(largest_team * 2)?;
        let pace = Pace {
            agents: largest_team,
            rate: options.rate,
            secs: options.rate_secs,
            streams: true,
        };
        Some(fixed_rate_run(&server, &own, "streamer", pace).await?)
    } else {
        None
    };
    server.stop().await;
    drop(project);

    let scale = if options.scale_tasks > 0 {
        progress(&format!(
            "a server on {} tasks of history",
            options.scale_tasks
        ));
        Some(scale_run(&options, &http).await?)
    } else {
        None
    };

    Ok(BenchReport {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        load_before,
        load_after: load_average(),
        floor: vec![floor_one, floor_many],
        sequential,
        concurrent,
        teams,
        paced,
        streams,
        scale,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The requests `make(i)` for i in 0..n, one after another, as `token` (admin when none).
async fn sequence(
    target: &Target,
    token: Option<&str>,
    n: usize,
    make: impl Fn(usize) -> Request,
) -> anyhow::Result<Vec<Duration>> {
    sequence_as(target, |_| token, n, make).await
}

/// The requests `make(i)` for i in 0..n, one after another, request i as `token(i)`.
async fn sequence_as<'t>(
    target: &Target,
    token: impl Fn(usize) -> Option<&'t str>,
    n: usize,
    make: impl Fn(usize) -> Request,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        latencies.push(target.timed(token(i), &make(i)).await?.0);
    }
    Ok(latencies)
}

/// Leases held per agent in the caps phase (the `max_leases_per_agent` the bench configures).
const CAPS_HELD: usize = 256;
/// Paths per lease request in the caps phase (the API's limit, `store::MAX_PATHS`).
const CAPS_ASKED: usize = conclave_core::store::MAX_PATHS;
/// Lease requests timed in the caps phase.
const CAPS_ROUNDS: usize = 20;

/// A long glob at the pattern caps: 15 wildcards (of 16) in about 470 characters (of 512),
/// ending in `ending`. Two of them with different endings overlap nowhere, which is only known
/// after every segment is compared: the costliest answer a grant can give.
fn capped_glob(ending: &str) -> String {
    let segment = "*/a-long-directory-name-of-thirty/";
    format!("caps/{}*{ending}", segment.repeat(14))
}

/// The worst lease request the caps allow: `holder` holds [`CAPS_HELD`] long globs, and
/// `asker` asks [`CAPS_ASKED`] long globs at a time that are compared with every one of them
/// and overlap none (granted, then released). Every grant runs under the store's write lock, so
/// its latency bounds how long one lease request can hold every other write up.
async fn leases_at_the_caps(
    server: &BenchServer,
    target: &Target,
    holder: &BenchAgent,
    asker: &BenchAgent,
) -> anyhow::Result<OperationStats> {
    let held: Vec<String> = (0..CAPS_HELD)
        .map(|i| capped_glob(&format!(".held{i}")))
        .collect();
    for batch in held.chunks(CAPS_ASKED) {
        target
            .call(Some(&holder.token), &Request::LockMany(batch.to_vec()))
            .await
            .context("the caps phase's holder could not take its leases")?;
    }
    let asked = |round: usize| -> Vec<String> {
        (0..CAPS_ASKED)
            .map(|k| capped_glob(&format!(".asked{round}x{k}")))
            .collect()
    };
    let stats = alone(
        server,
        target,
        &format!("lock at the caps ({CAPS_ASKED} x {CAPS_HELD})"),
        async {
            let mut latencies = Vec::with_capacity(CAPS_ROUNDS);
            for round in 0..CAPS_ROUNDS {
                let paths = asked(round);
                let (took, _) = target
                    .timed(Some(&asker.token), &Request::LockMany(paths.clone()))
                    .await?;
                latencies.push(took);
                target
                    .call(Some(&asker.token), &Request::UnlockMany(paths))
                    .await?;
            }
            Ok(latencies)
        },
    )
    .await?;
    for batch in held.chunks(CAPS_ASKED) {
        target
            .call(Some(&holder.token), &Request::UnlockMany(batch.to_vec()))
            .await?;
    }
    Ok(stats)
}

/// Runs `work` (one operation kind) and reports it with the server CPU it cost per request.
async fn phase(
    server: &BenchServer,
    operation: &str,
    work: impl std::future::Future<Output = anyhow::Result<Vec<Duration>>>,
) -> anyhow::Result<OperationStats> {
    let before = server.sample();
    let started = Instant::now();
    let latencies = work.await?;
    let elapsed = started.elapsed();
    let after = server.sample();
    let mut stats = OperationStats::from_latencies(operation, latencies, elapsed);
    if stats.requests > 0 {
        stats.server_cpu_ms = Some((after.cpu_ms - before.cpu_ms) / stats.requests as f64);
    }
    Ok(stats)
}

/// Health checks timed right after each one-client phase ([`alone`]).
const ADJACENT_FLOOR_REQUESTS: usize = 100;

/// [`phase`] for one client, followed by a floor of its own: `/healthz` timed right after it,
/// in whatever state the machine is in then, which the operation's p50 is compared with. The
/// one-client floor of a whole run moves between about 0.03 and 0.18 ms p50 from one run to the
/// next on a small virtual machine (how deeply its idle cores sleep between requests); measured
/// next to each operation, the ratio compares like with like.
async fn alone(
    server: &BenchServer,
    target: &Target,
    operation: &str,
    work: impl std::future::Future<Output = anyhow::Result<Vec<Duration>>>,
) -> anyhow::Result<OperationStats> {
    let mut stats = phase(server, operation, work).await?;
    let floor = sequence(target, None, ADJACENT_FLOOR_REQUESTS, |_| Request::Healthz).await?;
    let floor = OperationStats::from_latencies("healthz", floor, Duration::ZERO);
    stats.floor_p50_ms = Some(floor.p50_ms);
    Ok(stats)
}

/// `clients` clients at once, each making `n` requests `make(client, i)` as the admin.
async fn concurrent_phase(
    server: &BenchServer,
    operation: &str,
    target: &Target,
    clients: usize,
    n: usize,
    make: impl Fn(usize, usize) -> Request + Copy,
) -> anyhow::Result<OperationStats> {
    concurrent_as(server, operation, target, clients, n, |_| None, make).await
}

/// `clients` clients at once, client c making `n` requests `make(c, i)` with `token(c)`.
async fn concurrent_as<'t>(
    server: &BenchServer,
    operation: &str,
    target: &Target,
    clients: usize,
    n: usize,
    token: impl Fn(usize) -> Option<&'t str> + Copy,
    make: impl Fn(usize, usize) -> Request + Copy,
) -> anyhow::Result<OperationStats> {
    let work = async {
        let workers = (0..clients).map(|client| async move {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                latencies.push(target.timed(token(client), &make(client, i)).await?.0);
            }
            anyhow::Ok(latencies)
        });
        let mut all = Vec::with_capacity(clients * n);
        for worker in futures::future::join_all(workers).await {
            all.extend(worker?);
        }
        Ok(all)
    };
    phase(server, operation, work).await
}

/// Each operation alone, by one agent: over HTTP, over MCP, through the hook endpoint, and the
/// command hook as a process.
async fn sequential_phases(
    server: &BenchServer,
    target: &Target,
    exe: &std::path::Path,
    n: usize,
    floor: &OperationStats,
) -> anyhow::Result<Vec<OperationStats>> {
    let agents = target.register("solo", 3, 1).await?;
    let (solo, peer, mcp) = (&agents[0], &agents[1], &agents[2]);
    target.create_tasks(n * 2, CLIENTS).await?;
    let mut out = Vec::new();

    let mut claimed = Vec::with_capacity(n);
    let claim = alone(server, target, "claim", async {
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let (took, answer) = target.timed(Some(&solo.token), &Request::Claim).await?;
            claimed.push(claimed_task(&answer).context("a claim found no ready task")?);
            latencies.push(took);
        }
        Ok(latencies)
    })
    .await?;
    out.push(claim);
    let path = |i: usize| format!("bench/solo/{i}.rs");
    // One agent holds at most CAPS_HELD leases: past that, the next lock requests go to further
    // agents (each its own CAPS_HELD), so any `--requests` runs and `solo` is timed alone up to it.
    let extra_lockers = target
        .register("solo-locker", n.saturating_sub(1) / CAPS_HELD, 1)
        .await?;
    let locker = |i: usize| match i / CAPS_HELD {
        0 => Some(solo.token.as_str()),
        k => Some(extra_lockers[k - 1].token.as_str()),
    };
    out.push(
        alone(
            server,
            target,
            "lock",
            sequence_as(target, locker, n, |i| Request::Lock(path(i))),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "unlock",
            sequence_as(target, locker, n, |i| Request::Unlock(path(i))),
        )
        .await?,
    );
    out.push(leases_at_the_caps(server, target, peer, solo).await?);
    // `done` releases the task holder's leases, so the leases go first.
    out.push(
        alone(
            server,
            target,
            "done",
            sequence(target, Some(&solo.token), n, |i| Request::Done {
                task: claimed[i].clone(),
                file: path(i),
            }),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "send",
            sequence(target, Some(&solo.token), n, |i| Request::Send {
                to: peer.name.clone(),
                body: format!("message {i}"),
            }),
        )
        .await?,
    );
    // The recipient reads its inbox and acknowledges what it read, one message at a time (the
    // sends above left n waiting; the read answers all that wait, so ack them one by one).
    let first = target.call(Some(&peer.token), &Request::Inbox).await?;
    let waiting = message_ids(&first);
    out.push(
        alone(
            server,
            target,
            "ack",
            sequence(target, Some(&peer.token), waiting.len().min(n), |i| {
                Request::Ack(vec![waiting[i].clone()])
            }),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "inbox",
            sequence(target, Some(&peer.token), n, |_| Request::Inbox),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "note",
            sequence(target, Some(&solo.token), n, |i| {
                Request::Note(format!("finding {i}"))
            }),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "hook post-tool-use",
            sequence(target, Some(&solo.token), n, |i| Request::Hook {
                event: "post-tool-use",
                input: hook_input("bench-session", "Read", &format!("src/{i}.rs")),
            }),
        )
        .await?,
    );
    let mut mcp_claimed = Vec::with_capacity(n);
    let claim = Request::Mcp {
        tool: "claim",
        arguments: json!({}),
    };
    let mcp_claim = alone(server, target, "mcp claim", async {
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let (took, answer) = target.timed(Some(&mcp.token), &claim).await?;
            mcp_claimed.push(mcp_claimed_task(&answer).context("an MCP claim found no task")?);
            latencies.push(took);
        }
        Ok(latencies)
    })
    .await?;
    out.push(mcp_claim);
    // An agent at work holds a task or two, not hundreds: the claimed tasks but the last are
    // finished (untimed) before the other tools run, so that `status` reads what it would.
    if let Some((_, finished)) = mcp_claimed.split_last() {
        for task in finished {
            let done = Request::Done {
                task: task.clone(),
                file: "bench/mcp.rs".to_string(),
            };
            target.call(Some(&mcp.token), &done).await?;
        }
    }
    out.push(
        alone(
            server,
            target,
            "mcp send",
            sequence(target, Some(&mcp.token), n, |i| Request::Mcp {
                tool: "send",
                arguments: json!({ "to": solo.name, "body": format!("over mcp {i}") }),
            }),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "mcp inbox",
            sequence(target, Some(&mcp.token), n, |_| Request::Mcp {
                tool: "inbox",
                arguments: json!({}),
            }),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "mcp note",
            sequence(target, Some(&mcp.token), n, |i| Request::Mcp {
                tool: "note",
                arguments: json!({ "title": format!("mcp finding {i}"), "kind": "discovery" }),
            }),
        )
        .await?,
    );
    out.push(
        alone(
            server,
            target,
            "mcp status",
            sequence(target, Some(&mcp.token), n, |_| Request::Mcp {
                tool: "status",
                arguments: json!({}),
            }),
        )
        .await?,
    );
    out.push(command_hook(server, target, exe, solo).await?);
    Ok(out.into_iter().map(|stats| stats.against(floor)).collect())
}

/// `conclave hook post-tool-use` as Claude Code runs it: a process per call, the input on stdin.
async fn command_hook(
    server: &BenchServer,
    target: &Target,
    exe: &std::path::Path,
    agent: &BenchAgent,
) -> anyhow::Result<OperationStats> {
    let input = hook_input("bench-command-hook", "Read", "src/lib.rs").to_string();
    alone(server, target, "command hook post-tool-use", async {
        let mut latencies = Vec::with_capacity(COMMAND_HOOK_RUNS);
        for _ in 0..COMMAND_HOOK_RUNS {
            let sent = Instant::now();
            let mut child = tokio::process::Command::new(exe)
                .args(["hook", "post-tool-use"])
                .env("CONCLAVE_URL", &target.base)
                .env("CONCLAVE_AGENT", &agent.name)
                .env("CONCLAVE_TOKEN", &agent.token)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("cannot run the command hook")?;
            if let Some(mut stdin) = child.stdin.take() {
                use tokio::io::AsyncWriteExt;
                stdin.write_all(input.as_bytes()).await?;
            }
            let status = child.wait().await?;
            anyhow::ensure!(status.success(), "the command hook failed ({status})");
            latencies.push(sent.elapsed());
        }
        Ok(latencies)
    })
    .await
}

/// Sends, claims and fresh leases with sixteen clients at once.
async fn concurrent_phases(
    server: &BenchServer,
    target: &Target,
    n: usize,
    floor: &OperationStats,
) -> anyhow::Result<Vec<OperationStats>> {
    let senders = target.register("sender", CLIENTS, CLIENTS).await?;
    let lessees = target.register("lessee", LEASE_AGENTS, CLIENTS).await?;
    target.create_tasks(CLIENTS * n, CLIENTS).await?;
    let mut out = Vec::new();
    let senders = &senders;
    out.push(
        concurrent_as(
            server,
            "send",
            target,
            CLIENTS,
            n,
            |c| Some(senders[c].token.as_str()),
            |c, i| Request::Send {
                to: senders[(c + 1) % CLIENTS].name.clone(),
                body: format!("message {i}"),
            },
        )
        .await?,
    );
    out.push(
        concurrent_as(
            server,
            "claim",
            target,
            CLIENTS,
            n,
            |c| Some(senders[c].token.as_str()),
            |_, _| Request::Claim,
        )
        .await?,
    );
    // Client c speaks for lessees c, c+16, …, one after another, each lease on a fresh path.
    let lessees = &lessees;
    let per_client = LEASE_AGENTS / CLIENTS;
    let work = async {
        let workers = (0..CLIENTS).map(|client| async move {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let agent = &lessees[(client + CLIENTS * (i % per_client)) % LEASE_AGENTS];
                let path = format!("bench/{}/{i}.rs", agent.name);
                latencies.push(
                    target
                        .timed(Some(&agent.token), &Request::Lock(path))
                        .await?
                        .0,
                );
            }
            anyhow::Ok(latencies)
        });
        let mut all = Vec::new();
        for worker in futures::future::join_all(workers).await {
            all.extend(worker?);
        }
        Ok(all)
    };
    out.push(phase(server, "lock (200 agents)", work).await?);
    Ok(out.into_iter().map(|stats| stats.against(floor)).collect())
}

/// Per operation label, the latencies of a mixed run.
type Samples = Vec<(String, Duration)>;

/// A team of `agents` agents, each cycling claim → lock → send → inbox → ack → note → unlock →
/// done as fast as answers come (or, with `rate`, the whole team at that many operations per
/// second), `total_ops` operations in all.
async fn team_run(
    server: &BenchServer,
    target: &Target,
    agents: usize,
    total_ops: usize,
    streams: Option<usize>,
) -> anyhow::Result<TeamRun> {
    const CYCLE: usize = 8;
    let prefix = format!("team{agents}");
    let team = target.register(&prefix, agents, CLIENTS).await?;
    let cycles = (total_ops / (agents * CYCLE)).max(1);
    target.create_tasks(agents * cycles, CLIENTS).await?;
    let before = server.sample();
    let generator_before = server::sample_generator();
    let started = Instant::now();
    let team = &team;
    let workers = (0..agents).map(|index| async move {
        let me = &team[index];
        let next = &team[(index + 1) % agents];
        let mut samples: Samples = Vec::with_capacity(cycles * CYCLE);
        for cycle in 0..cycles {
            let path = format!("team/{}/{cycle}.rs", me.name);
            let mut step = async |request: Request| -> anyhow::Result<serde_json::Value> {
                let (took, answer) = target.timed(Some(&me.token), &request).await?;
                samples.push((request.label(), took));
                Ok(answer)
            };
            let task = claimed_task(&step(Request::Claim).await?);
            step(Request::Lock(path.clone())).await?;
            step(Request::Send {
                to: next.name.clone(),
                body: format!("cycle {cycle}"),
            })
            .await?;
            let ids = message_ids(&step(Request::Inbox).await?);
            if !ids.is_empty() {
                step(Request::Ack(ids)).await?;
            }
            step(Request::Note(format!("{} cycle {cycle}", me.name))).await?;
            step(Request::Unlock(path.clone())).await?;
            if let Some(task) = task {
                step(Request::Done { task, file: path }).await?;
            }
        }
        anyhow::Ok(samples)
    });
    let mut samples: Samples = Vec::new();
    for worker in futures::future::join_all(workers).await {
        samples.extend(worker?);
    }
    let elapsed = started.elapsed();
    let after = server.sample();
    let generator_cpu_ms = server::sample_generator().cpu_ms - generator_before.cpu_ms;
    Ok(summarize(
        agents,
        streams.unwrap_or(0),
        None,
        samples,
        elapsed,
        (before, after),
        generator_cpu_ms,
    ))
}

/// Groups a mixed run's samples by operation.
fn summarize(
    agents: usize,
    streams: usize,
    rate: Option<usize>,
    samples: Samples,
    elapsed: Duration,
    (before, after): (ProcessSample, ProcessSample),
    generator_cpu_ms: f64,
) -> TeamRun {
    let all = OperationStats::from_latencies(
        "all",
        samples.iter().map(|(_, took)| *took).collect(),
        elapsed,
    );
    let mut labels: Vec<String> = samples.iter().map(|(label, _)| label.clone()).collect();
    labels.sort();
    labels.dedup();
    let operations = labels
        .iter()
        .map(|label| {
            let latencies = samples
                .iter()
                .filter(|(l, _)| l == label)
                .map(|(_, took)| *took)
                .collect();
            OperationStats::from_latencies(label, latencies, elapsed)
        })
        .collect();
    TeamRun {
        agents,
        streams,
        stream_frames: 0,
        stream_frames_per_sec: 0.0,
        rate,
        all,
        operations,
        server_cpu_percent: (after.cpu_ms - before.cpu_ms) / (elapsed.as_secs_f64() * 10.0),
        generator_cpu_percent: generator_cpu_ms / (elapsed.as_secs_f64() * 10.0),
        server: after,
    }
}

/// A fixed-rate run's shape.
#[derive(Debug, Clone, Copy)]
struct Pace {
    agents: usize,
    /// Operations per second, all agents together.
    rate: usize,
    secs: u64,
    /// Whether every agent has its live event stream open.
    streams: bool,
}

/// `pace.agents` agents (named `prefix-<n>`), sending, reading, noting and leasing at
/// `pace.rate` operations per second in all (each operation started on schedule, whether or not
/// the earlier ones have answered), each with its live event stream open when `pace.streams`.
async fn fixed_rate_run(
    server: &BenchServer,
    target: &Target,
    prefix: &str,
    pace: Pace,
) -> anyhow::Result<TeamRun> {
    let agents = pace.agents;
    let team = target.register(prefix, agents, CLIENTS).await?;
    let stop = CancellationToken::new();
    let frames = Arc::new(AtomicU64::new(0));
    if pace.streams {
        futures::stream::iter(team.iter())
            .map(|agent| target.open_stream(agent, stop.clone(), frames.clone()))
            .buffer_unordered(CLIENTS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<()>>>()?;
    }
    let total = pace.rate * pace.secs as usize;
    let interval = Duration::from_secs_f64(1.0 / pace.rate as f64);
    let frames_before = frames.load(Ordering::Relaxed);
    let before = server.sample();
    let generator_before = server::sample_generator();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Each operation runs as a task of its own, so that it progresses while the schedule waits
    // for the next tick.
    let mut running = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let agent = team[i % agents].clone();
        let round = i / agents;
        let request = match round % 4 {
            0 => Request::Send {
                to: team[(i + 1) % agents].name.clone(),
                body: format!("round {round}"),
            },
            1 => Request::Inbox,
            2 => Request::Note(format!("{} round {round}", agent.name)),
            _ => Request::Lock(format!("{prefix}/{}/{round}.rs", agent.name)),
        };
        let target = target.clone();
        running.spawn(async move {
            let (took, _) = target.timed(Some(&agent.token), &request).await?;
            anyhow::Ok((request.label(), took))
        });
    }
    let mut samples: Samples = Vec::with_capacity(total);
    while let Some(done) = running.join_next().await {
        samples.push(done??);
    }
    let elapsed = started.elapsed();
    let after = server.sample();
    let generator_cpu_ms = server::sample_generator().cpu_ms - generator_before.cpu_ms;
    let stream_frames = frames.load(Ordering::Relaxed) - frames_before;
    stop.cancel();
    let mut run = summarize(
        agents,
        if pace.streams { agents } else { 0 },
        Some(pace.rate),
        samples,
        elapsed,
        (before, after),
        generator_cpu_ms,
    );
    run.stream_frames = stream_frames;
    run.stream_frames_per_sec = stream_frames as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    Ok(run)
}

/// A server started on a long history: its start time, and the dashboard's and listings'
/// reads, a claim and a done among that history.
async fn scale_run(options: &BenchOptions, http: &reqwest::Client) -> anyhow::Result<ScaleRun> {
    let project = BenchProject::create(&options.exe, "", options.postgres.as_deref()).await?;
    let store_url = project.store_url();
    let tasks = options.scale_tasks;
    let ready = SCALE_READS.min(tasks);
    let history =
        tokio::task::spawn_blocking(move || scale::write_history(&store_url, tasks, ready))
            .await??;
    let server = project.serve(http).await?;
    let target = Target {
        http: http.clone(),
        base: server.url.clone(),
        admin: server.admin.clone(),
    };
    let status = target.call(None, &Request::Status).await?;
    let events = status["last_seq"].as_i64().unwrap_or(0);
    let middle = format!("T-{}", tasks / 2);
    let mut reads = Vec::new();
    for request in [
        Request::Status,
        Request::Page {
            after: None,
            limit: 100,
        },
        Request::Page {
            after: Some(middle),
            limit: 100,
        },
    ] {
        let label = request.label();
        reads.push(
            phase(
                &server,
                &label,
                sequence(&target, None, SCALE_READS, |_| request.clone()),
            )
            .await?,
        );
    }
    // Claims and finishes among the history (the search index holds every earlier result).
    let worker = target.register("scale", 1, 1).await?.remove(0);
    let mut claimed = Vec::new();
    reads.push(
        phase(&server, "claim", async {
            let mut latencies = Vec::new();
            for _ in 0..ready {
                let (took, answer) = target.timed(Some(&worker.token), &Request::Claim).await?;
                claimed.push(claimed_task(&answer).context("no ready task left")?);
                latencies.push(took);
            }
            Ok(latencies)
        })
        .await?,
    );
    reads.push(
        phase(
            &server,
            "done",
            sequence(&target, Some(&worker.token), claimed.len(), |i| {
                Request::Done {
                    task: claimed[i].clone(),
                    file: format!("src/scale_{i}.rs"),
                }
            }),
        )
        .await?,
    );
    let sample = server.sample();
    let start_ms = server.start_ms;
    server.stop().await;
    Ok(ScaleRun {
        history,
        events,
        start_ms,
        reads,
        server: sample,
    })
}

/// The 1-minute load average (0 where `/proc/loadavg` cannot be read).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
