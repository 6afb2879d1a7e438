//! An agent-like client (a shell loop running the real `conclave` CLI with an agent's token) that
//! claims a task and keeps renewing a lease: while it runs, its claim and lease stay; SIGKILLed or
//! SIGSTOPped, it stops making requests, so its lease expires and its task returns to ready within
//! the TTLs of conclave.toml, each with its event; nothing else is disturbed.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{Project, Server, add_agent, all_events, http, log_violations};

const CLAIM_TTL_SECS: i64 = 3;
const LEASE_TTL_SECS: i64 = 3;

async fn task(http: &reqwest::Client, url: &str, admin: &str, id: &str) -> Value {
    http.get(format!("{url}/api/tasks/{id}"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("task")
        .json()
        .await
        .expect("task json")
}

async fn leases_of(http: &reqwest::Client, url: &str, admin: &str, holder: &str) -> Vec<Value> {
    let list: Value = http
        .get(format!("{url}/api/leases"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("leases")
        .json()
        .await
        .expect("leases json");
    list["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .filter(|lease| lease["holder"] == holder)
        .cloned()
        .collect()
}

/// Waits (bounded) until `done` holds for the current state.
async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent-like client, in a process group of its own so that a signal reaches the shell and
/// the `conclave` command it is running alike.
fn spawn_client(project: &Project, url: &str, name: &str, token: &str, task: &str) -> Child {
    use std::os::unix::process::CommandExt;
    let script = format!(
        "set -e; conclave task claim {task} >/dev/null; \
         while :; do conclave lock --ttl {LEASE_TTL_SECS} src/{name}.rs >/dev/null; sleep 0.2; done"
    );
    let bin_dir = std::path::Path::new(crate::harness::BIN)
        .parent()
        .expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(project.root())
        .env_remove("CONCLAVE_LOG")
        .env("PATH", path)
        .env("CONCLAVE_URL", url)
        .env("CONCLAVE_AGENT", name)
        .env("CONCLAVE_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the agent-like client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_or_stopped_agents_lose_their_claims_and_leases_to_the_ttl() {
    let started = Instant::now();
    let project = Project::new(&format!(
        "claim_ttl_secs = {CLAIM_TTL_SECS}\nlease_ttl_secs = {LEASE_TTL_SECS}"
    ));
    let server = Server::start(&project, "server.log");
    let admin = project.admin_token();
    let http = http();
    let url = server.url.clone();

    let mut clients = Vec::new();
    for (name, fault) in [("killed", Signal::SIGKILL), ("stopped", Signal::SIGSTOP)] {
        let token = add_agent(&http, &url, &admin, name).await;
        let created: Value = http
            .post(format!("{url}/api/tasks"))
            .bearer_auth(&admin)
            .json(&json!({ "title": format!("work for {name}") }))
            .send()
            .await
            .expect("create task")
            .json()
            .await
            .expect("task json");
        let id = created["id"].as_str().expect("task id").to_string();
        let child = spawn_client(&project, &url, name, &token, &id);
        clients.push((name, fault, id, child));
    }

    // Alive, the clients keep their claims and leases well past both TTLs.
    for (name, _, id, _) in &clients {
        eventually(
            &format!("{name} claims {id} and leases its file"),
            Duration::from_secs(20),
            || async {
                task(&http, &url, &admin, id).await["assignee"] == *name
                    && !leases_of(&http, &url, &admin, name).await.is_empty()
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(
        (CLAIM_TTL_SECS.max(LEASE_TTL_SECS) + 1) as u64,
    ))
    .await;
    for (name, _, id, _) in &clients {
        let held = task(&http, &url, &admin, id).await;
        assert_eq!(
            held["status"], "claimed",
            "{name}'s live claim lapsed: {held}"
        );
        assert_eq!(held["assignee"], *name);
        assert!(
            !leases_of(&http, &url, &admin, name).await.is_empty(),
            "{name}'s renewed lease lapsed"
        );
    }

    // Then one is killed and one frozen: their claims and leases go within the TTLs (plus the
    // sweeper's period), and the tasks are ready for someone else.
    let faulted = Instant::now();
    for (_, fault, _, child) in &clients {
        signal_group(child.id(), *fault);
    }
    for (name, _, id, _) in &clients {
        eventually(
            &format!("{name}'s task returns to ready"),
            Duration::from_secs(15),
            || async {
                let task = task(&http, &url, &admin, id).await;
                task["status"] == "ready" && task["assignee"].is_null()
            },
        )
        .await;
        eventually(
            &format!("{name}'s lease expires"),
            Duration::from_secs(15),
            || async { leases_of(&http, &url, &admin, name).await.is_empty() },
        )
        .await;
    }
    let recovered_in = faulted.elapsed();

    let events = all_events(&http, &url, &admin).await;
    assert!(
        log_violations(&events).is_empty(),
        "{:#?}",
        log_violations(&events)
    );
    for (name, _, id, _) in &clients {
        assert!(
            events.iter().any(|e| e["kind"] == "task.reclaimed"
                && e["task"] == *id.as_str()
                && e["agent"] == *name),
            "no task.reclaimed event for {name}'s {id}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == "lease.expired" && e["agent"] == *name),
            "no lease.expired event for {name}"
        );
    }

    // The frozen one, thawed, finds its claim gone: its next lease is a new grant, not a renewal,
    // and its task stays with nobody.
    for (_, fault, _, child) in &mut clients {
        if *fault == Signal::SIGSTOP {
            signal_group(child.id(), Signal::SIGCONT);
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, _, stopped_task, _) = &clients[1];
    assert!(task(&http, &url, &admin, stopped_task).await["assignee"].is_null());
    for (_, _, _, child) in &mut clients {
        signal_group(child.id(), Signal::SIGKILL);
        let _ = child.wait();
    }
    eprintln!(
        "faults: killed and stopped agents released in {:.1} s (TTLs {CLAIM_TTL_SECS} s / \
         {LEASE_TTL_SECS} s), test {:.1} s",
        recovered_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(server);
}

fn signal_group(pid: u32, sig: Signal) {
    let group = i32::try_from(pid).expect("pid fits");
    // A negative id addresses the whole process group; the group may be gone already.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-group), sig);
}
