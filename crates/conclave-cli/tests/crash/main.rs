//! Guarantee 6: nothing the server acknowledged is lost when its process is killed with SIGKILL
//! in the middle of a burst of writes, and retries with the same idempotency keys double nothing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WRITERS: usize = 8;

struct Server {
    child: Child,
    url: String,
}

// The child is returned to the caller, which kills and waits for it; on a start-up timeout it is
// killed and reaped before the test fails.
#[allow(clippy::zombie_processes)]
fn start_server(dir: &Path, previous_pid: Option<u32>) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn conclave serve");
    let info_path = dir.join(".conclave/server.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&info_path)
            && let Ok(info) = serde_json::from_str::<Value>(&text)
            && info["pid"].as_u64().map(|p| p as u32) == Some(child.id())
            && Some(child.id()) != previous_pid
        {
            let url = info["url"].as_str().expect("url").to_string();
            return Server { child, url };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_and_retries_double_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join(".conclave")).expect("state dir");
    let mut server = start_server(dir.path(), None);
    let admin = std::fs::read_to_string(dir.path().join(".conclave/admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");

    // Each writer creates tasks with unique titles, using the title as its idempotency key, and
    // records which ones the server acknowledged and which were in flight when it died.
    let acknowledged = Arc::new(Mutex::new(HashSet::<String>::new()));
    let in_doubt = Arc::new(Mutex::new(HashSet::<String>::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let http = http.clone();
            let url = server.url.clone();
            let admin = admin.clone();
            let acknowledged = acknowledged.clone();
            let in_doubt = in_doubt.clone();
            tokio::spawn(async move {
                for i in 0..10_000 {
                    let title = format!("w{writer}-{i}");
                    let sent = http
                        .post(format!("{url}/api/tasks"))
                        .bearer_auth(&admin)
                        .header("idempotency-key", &title)
                        .json(&json!({ "title": title }))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().as_u16() == 201 => {
                            acknowledged.lock().expect("lock").insert(title);
                        }
                        _ => {
                            in_doubt.lock().expect("lock").insert(title);
                            return;
                        }
                    }
                }
            })
        })
        .collect();

    // Let the burst run, then kill the server mid-write.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().expect("lock").len() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = server.child.wait();
    for writer in writers {
        writer.await.expect("writer");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let in_doubt = in_doubt.lock().expect("lock").clone();
    assert!(
        acknowledged.len() >= 200,
        "the burst was too small: {}",
        acknowledged.len()
    );

    // Restart on the same store: everything acknowledged is there, exactly once.
    let mut server = start_server(dir.path(), Some(server.child.id()));
    let titles = task_titles(&http, &server.url, &admin).await;
    for title in &acknowledged {
        assert_eq!(
            titles.get(title),
            Some(&1),
            "acknowledged {title} is missing or doubled"
        );
    }

    // Retrying what was in flight with the same keys applies each at most once.
    for title in &in_doubt {
        let response = http
            .post(format!("{}/api/tasks", server.url))
            .bearer_auth(&admin)
            .header("idempotency-key", title)
            .json(&json!({ "title": title }))
            .send()
            .await
            .expect("retry");
        assert_eq!(response.status().as_u16(), 201);
    }
    for title in &acknowledged {
        let response = http
            .post(format!("{}/api/tasks", server.url))
            .bearer_auth(&admin)
            .header("idempotency-key", title)
            .json(&json!({ "title": title }))
            .send()
            .await
            .expect("retry");
        assert_eq!(
            response
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }
    let titles = task_titles(&http, &server.url, &admin).await;
    for (title, count) in &titles {
        assert_eq!(*count, 1, "{title} exists {count} times");
    }
    assert_eq!(titles.len(), acknowledged.len() + in_doubt.len());

    // The log agrees: one task.created event per task, sequence numbers strictly increasing.
    let events: Value = http
        .get(format!(
            "{}/api/events?kind=task.created&limit=10000",
            server.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let events = events["events"].as_array().expect("events");
    assert_eq!(events.len(), titles.len());
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let _ = server.child.kill();
    let _ = server.child.wait();
}

async fn task_titles(http: &reqwest::Client, url: &str, admin: &str) -> HashMap<String, usize> {
    let tasks: Value = http
        .get(format!("{url}/api/tasks"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("tasks")
        .json()
        .await
        .expect("json");
    let mut counts = HashMap::new();
    for task in tasks["tasks"].as_array().expect("tasks") {
        *counts
            .entry(task["title"].as_str().expect("title").to_string())
            .or_insert(0) += 1;
    }
    counts
}
