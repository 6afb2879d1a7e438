//! SIGKILL rounds: agents claim tasks, lease contended files, message each other and finish their
//! tasks over HTTP with their own tokens, every write carrying an `Idempotency-Key`; the server is
//! SIGKILLed in the middle, restarted on the same store, and after every restart:
//!
//! - every acknowledged write is in the log exactly once, and retrying it with its key replays
//!   the same answer; a write in flight at the kill, retried with its key, is applied at most once;
//! - no task was held by two agents, no two exclusive leases on a path coexisted, fencing tokens
//!   only grew (all read from the event log);
//! - a live `/api/events/stream` reader that reconnects with `Last-Event-ID` saw every event of the
//!   log exactly once, in order, across all the restarts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Project, Server, add_agent, all_events, http, integrity_check, log_violations,
};

const AGENTS: usize = 6;
/// Files the agents compete for: few, so that lease requests conflict often.
const CONTENDED_FILES: usize = 3;
const DEFAULT_ROUNDS: usize = 3;
/// How long the agents write before each kill.
const WRITE_TIME: Duration = Duration::from_millis(1200);

/// One write an agent sends; kept so that it can be retried with the same key and body.
#[derive(Debug, Clone)]
struct Write {
    key: String,
    path: String,
    body: Value,
    token: String,
}

#[derive(Debug)]
enum Outcome {
    Acknowledged(Value),
    Refused(u16, String),
    /// No answer: the server died with the request in flight.
    InDoubt,
}

async fn send(http: &reqwest::Client, url: &str, write: &Write) -> (Outcome, bool) {
    let sent = http
        .post(format!("{url}{}", write.path))
        .bearer_auth(&write.token)
        .header("idempotency-key", &write.key)
        .json(&write.body)
        .send()
        .await;
    let Ok(response) = sent else {
        return (Outcome::InDoubt, false);
    };
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    match response.text().await {
        Ok(text) if (200..300).contains(&status) => (
            Outcome::Acknowledged(serde_json::from_str(&text).expect("2xx body is JSON")),
            replayed,
        ),
        Ok(text) => (Outcome::Refused(status, text), replayed),
        Err(_) => (Outcome::InDoubt, false),
    }
}

/// What the test learned from the server's answers.
#[derive(Default)]
struct Ledger {
    acknowledged: Vec<(Write, Value)>,
    in_doubt: Vec<Write>,
    refused: HashMap<u16, usize>,
    requests: usize,
    /// How many of `acknowledged` were already retried to check that they replay.
    replayed: usize,
}

struct Agent {
    name: String,
    token: String,
}

/// One agent's loop until `stop` or until its server stops answering.
async fn work(
    http: reqwest::Client,
    url: String,
    agent: Arc<Agent>,
    peer: String,
    round: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut step = 0_usize;
    let record = |write: &Write, outcome: &Outcome| {
        let mut ledger = ledger.lock().expect("ledger");
        ledger.requests += 1;
        match outcome {
            Outcome::Acknowledged(value) => {
                ledger.acknowledged.push((write.clone(), value.clone()))
            }
            Outcome::Refused(status, text) => {
                assert!(
                    *status < 500,
                    "{} {} answered {status}: {text}",
                    write.path,
                    write.body
                );
                *ledger.refused.entry(*status).or_default() += 1;
            }
            Outcome::InDoubt => ledger.in_doubt.push(write.clone()),
        }
    };
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let write = |path: String, body: Value| Write {
            key: format!("{}-r{round}-{step}-{path}", agent.name),
            path,
            body,
            token: agent.token.clone(),
        };
        let claim = write("/api/tasks/claim".into(), json!({}));
        let (outcome, _) = send(&http, &url, &claim).await;
        record(&claim, &outcome);
        let task = match outcome {
            Outcome::Acknowledged(value) => value["task"]["id"].as_str().map(str::to_string),
            Outcome::Refused(..) => None,
            Outcome::InDoubt => return,
        };
        let file = format!("src/contended{}.rs", step % CONTENDED_FILES);
        let lease = write(
            "/api/leases".into(),
            json!({ "paths": [file], "ttl_secs": 1 + step % 2, "task": task }),
        );
        let (outcome, _) = send(&http, &url, &lease).await;
        record(&lease, &outcome);
        if matches!(outcome, Outcome::InDoubt) {
            return;
        }
        let message = write(
            "/api/messages".into(),
            json!({ "to": peer, "body": format!("{} step {step} of round {round}", agent.name) }),
        );
        let (outcome, _) = send(&http, &url, &message).await;
        record(&message, &outcome);
        if matches!(outcome, Outcome::InDoubt) {
            return;
        }
        if let Some(task) = task {
            let done = write(
                format!("/api/tasks/{task}/done"),
                json!({ "summary": format!("done by {}", agent.name) }),
            );
            let (outcome, _) = send(&http, &url, &done).await;
            record(&done, &outcome);
            if matches!(outcome, Outcome::InDoubt) {
                return;
            }
        }
    }
}

/// Reads `/api/events/stream` from the start of the log, reconnecting with `Last-Event-ID` to
/// whatever URL the current server has, and records every sequence number it is sent.
async fn follow(
    http: reqwest::Client,
    url: Arc<Mutex<String>>,
    admin: String,
    seen: Arc<Mutex<Vec<i64>>>,
    done: Arc<AtomicBool>,
) -> usize {
    let mut connections = 0;
    while !done.load(Ordering::Relaxed) {
        let last = seen.lock().expect("seen").last().copied().unwrap_or(0);
        let base = url.lock().expect("url").clone();
        // No overall timeout: the stream is meant to stay open until the server dies.
        let response = reqwest::Client::new()
            .get(format!("{base}/api/events/stream"))
            .bearer_auth(&admin)
            .header("last-event-id", last.to_string())
            .send()
            .await;
        let _ = &http;
        let Ok(mut response) = response else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        assert_eq!(response.status().as_u16(), 200, "stream refused");
        connections += 1;
        let mut pending = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(id) = line.trim_end().strip_prefix("id:") {
                    let seq = id.trim().parse::<i64>().expect("numeric event id");
                    seen.lock().expect("seen").push(seq);
                }
            }
            if done.load(Ordering::Relaxed) {
                return connections;
            }
        }
    }
    connections
}

fn rounds() -> usize {
    std::env::var("CONCLAVE_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_rounds_lose_nothing_acknowledged_and_grant_nothing_twice() {
    let started = Instant::now();
    let project = Project::new("");
    let mut server = Server::start(&project, "server-0.log");
    let admin = project.admin_token();
    let http = http();

    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let name = format!("agent{i}");
        let token = add_agent(&http, &server.url, &admin, &name).await;
        agents.push(Arc::new(Agent { name, token }));
    }
    // More tasks than the agents can finish, so that claims keep succeeding.
    let rounds = rounds();
    for i in 0..(60 * rounds) {
        let response = http
            .post(format!("{}/api/tasks", server.url))
            .bearer_auth(&admin)
            .json(&json!({ "title": format!("task {i}") }))
            .send()
            .await
            .expect("create task");
        assert_eq!(response.status().as_u16(), 201);
    }

    let stream_url = Arc::new(Mutex::new(server.url.clone()));
    let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
    let stream_done = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(
        http.clone(),
        stream_url.clone(),
        admin.clone(),
        seen.clone(),
        stream_done.clone(),
    ));

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut retried = 0;
    let mut peak_rss_kib = 0;
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                tokio::spawn(work(
                    http.clone(),
                    server.url.clone(),
                    agent.clone(),
                    agents[(i + 1) % AGENTS].name.clone(),
                    round,
                    stop.clone(),
                    ledger.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(WRITE_TIME).await;
        peak_rss_kib = peak_rss_kib.max(server.peak_rss_kib().unwrap_or(0));
        // Killed in the middle of the writes; the workers stop at their first unanswered request.
        server.sigkill();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.expect("worker");
        }
        server = Server::start(&project, &format!("server-{round}.log"));
        *stream_url.lock().expect("url") = server.url.clone();

        // What was in flight is retried with its key: applied now, or replayed, never twice.
        let in_doubt = std::mem::take(&mut ledger.lock().expect("ledger").in_doubt);
        for write in in_doubt {
            let (outcome, _) = send(&http, &server.url, &write).await;
            retried += 1;
            let mut ledger = ledger.lock().expect("ledger");
            ledger.requests += 1;
            match outcome {
                Outcome::Acknowledged(value) => ledger.acknowledged.push((write, value)),
                Outcome::Refused(status, text) => {
                    assert!(status < 500, "retry of {write:?} answered {status}: {text}");
                }
                Outcome::InDoubt => panic!("the restarted server did not answer {write:?}"),
            }
        }
        check(&http, &server.url, &admin, &ledger, &seen).await;
    }
    stream_done.store(true, Ordering::Relaxed);
    server.sigkill();
    let connections = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .map(|joined| joined.expect("follower"))
        .unwrap_or(0);
    assert_eq!(
        integrity_check(&project.state_dir().join("conclave.db")),
        "ok"
    );
    let ledger = ledger.lock().expect("ledger");
    eprintln!(
        "faults: {rounds} SIGKILL rounds, {} agents, {} requests ({} acknowledged, {retried} \
         retried after a kill, refusals by status {:?}), {} stream connections, {} events \
         streamed, server peak RSS {} KiB, {:.1} s",
        AGENTS,
        ledger.requests,
        ledger.acknowledged.len(),
        ledger.refused,
        connections,
        seen.lock().expect("seen").len(),
        peak_rss_kib,
        started.elapsed().as_secs_f64()
    );
}

/// Everything checked after a restart.
async fn check(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    ledger: &Mutex<Ledger>,
    seen: &Mutex<Vec<i64>>,
) {
    let events = all_events(http, url, admin).await;
    let violations = log_violations(&events);
    assert!(
        violations.is_empty(),
        "the log breaks invariants: {violations:#?}"
    );

    let acknowledged = ledger.lock().expect("ledger").acknowledged.clone();
    let mut messages = HashMap::<&str, usize>::new();
    let mut done = HashMap::<&str, usize>::new();
    let mut claims = HashSet::<(&str, &str)>::new();
    let mut fencing_tokens = HashSet::<i64>::new();
    for event in &events {
        let agent = event["agent"].as_str().unwrap_or_default();
        match event["kind"].as_str().unwrap_or_default() {
            "message.sent" => {
                *messages
                    .entry(event["data"]["id"].as_str().expect("id"))
                    .or_default() += 1
            }
            "task.done" => {
                *done
                    .entry(event["task"].as_str().expect("task"))
                    .or_default() += 1
            }
            "task.claimed" => {
                claims.insert((event["task"].as_str().expect("task"), agent));
            }
            "lease.granted" | "lease.renewed" => {
                fencing_tokens.insert(event["data"]["fencing_token"].as_i64().expect("token"));
            }
            _ => {}
        }
    }
    let holder_of = |write: &Write| -> String {
        // Keys start with the agent's name.
        write
            .key
            .split('-')
            .next()
            .expect("agent in key")
            .to_string()
    };
    for (write, answer) in &acknowledged {
        let lost = || {
            format!(
                "acknowledged {} {} -> {answer} is not in the log",
                write.path, write.body
            )
        };
        if write.path == "/api/messages" {
            let id = answer["id"].as_str().expect("message id");
            assert_eq!(messages.get(id), Some(&1), "{}", lost());
        } else if write.path == "/api/leases" {
            for lease in answer["leases"].as_array().expect("leases") {
                let token = lease["fencing_token"].as_i64().expect("token");
                assert!(fencing_tokens.contains(&token), "{}", lost());
            }
        } else if write.path == "/api/tasks/claim" {
            if let Some(task) = answer["task"]["id"].as_str() {
                assert!(
                    claims.contains(&(task, holder_of(write).as_str())),
                    "{}",
                    lost()
                );
            }
        } else if write.path.ends_with("/done") {
            let task = answer["id"].as_str().expect("task id");
            assert_eq!(done.get(task), Some(&1), "{}", lost());
        }
    }

    // Every write acknowledged since the last check, retried with its key, is replayed, not
    // redone (earlier ones were checked after earlier restarts).
    let from = std::mem::replace(
        &mut ledger.lock().expect("ledger").replayed,
        acknowledged.len(),
    );
    for (write, answer) in &acknowledged[from..] {
        let (outcome, replayed) = send(http, url, write).await;
        match outcome {
            Outcome::Acknowledged(again) => {
                assert!(replayed, "{} {} was applied again", write.path, write.body);
                assert_eq!(&again, answer, "the replay of {} differs", write.key);
            }
            other => panic!("the replay of {} answered {other:?}", write.key),
        }
    }
    ledger.lock().expect("ledger").requests += acknowledged.len() - from;
    // The sweeper may expire the round's short leases meanwhile; requests may write nothing.
    let by_requests = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["actor"] != conclave_core::model::SYSTEM_NAME)
            .count()
    };
    let after = all_events(http, url, admin).await;
    assert_eq!(
        by_requests(&after),
        by_requests(&events),
        "replays wrote to the log"
    );

    // The live reader catches up with the log, every event once and in order.
    let last = events.last().map_or(0, |e| e["seq"].as_i64().expect("seq"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("seen").last().copied().unwrap_or(0) < last {
        assert!(
            Instant::now() < deadline,
            "the stream did not catch up with seq {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let streamed = seen.lock().expect("seen").clone();
    let logged: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        &streamed[..logged.len().min(streamed.len())],
        &logged[..],
        "the stream skipped, repeated or reordered events across restarts"
    );
}
