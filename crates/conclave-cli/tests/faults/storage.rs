//! The database on a full filesystem and on a read-only one. The test makes the filesystems
//! itself (a 2 MiB tmpfs, a read-only bind mount), which needs root; without root it says so and
//! checks nothing.
//!
//! Expected: a write that does not fit is refused with an error that says the disk is full, no
//! acknowledged write is lost, the database passes `integrity_check`, and writes succeed again
//! once the filesystem grows, without restarting the server. A database file on a read-only mount
//! stops the server at start with an error that names the cause, and nothing is changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::harness::{Project, Server, all_events, http, integrity_check};

/// Something mounted by the test, unmounted (lazily, so that a failing test still cleans up)
/// when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Mount {
    let status = Command::new("mount")
        .args(args)
        .arg(target)
        .stderr(Stdio::inherit())
        .status()
        .expect("run mount");
    assert!(status.success(), "mount {args:?} {}", target.display());
    Mount(target.to_path_buf())
}

fn remount(options: &str, target: &Path) {
    let status = Command::new("mount")
        .args(["-o", options])
        .arg(target)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount -o {options} {}", target.display());
}

fn root_or_skip(test: &str) -> bool {
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        // Counted by scripts/test.sh as a skip, not a pass.
        conclave_standin::claude_cli::record_skip(&format!(
            "faults: {test}: making a filesystem needs root"
        ));
    }
    root
}

/// Moves the project's `.conclave/` onto a fresh tmpfs of `size`.
fn state_on_tmpfs(project: &Project, size: &str) -> Mount {
    let state = project.state_dir();
    let aside = project.temp.path().join("state-aside");
    std::fs::rename(&state, &aside).expect("move .conclave aside");
    std::fs::create_dir(&state).expect("mkdir .conclave");
    let mounted = mount(
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ],
        &state,
    );
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", aside.display()))
        .arg(&state)
        .status()
        .expect("cp");
    assert!(copied.success(), "copy .conclave onto the tmpfs");
    mounted
}

/// A note body of `len` bytes that no page compresses.
fn body(seed: usize, len: usize) -> String {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

async fn add_note(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    i: usize,
    len: usize,
) -> (u16, Value) {
    let response = http
        .post(format!("{url}/api/notes"))
        .bearer_auth(admin)
        .header("idempotency-key", format!("note-{i}"))
        .json(&json!({ "title": format!("note {i}"), "body": body(i, len) }))
        .send()
        .await
        .expect("the server answers when its disk is full");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_corrupts_nothing_and_recovers_when_it_grows() {
    if !root_or_skip("disk full") {
        return;
    }
    let started = Instant::now();
    let project = Project::new("");
    let mounted = state_on_tmpfs(&project, "2m");
    let server = Server::start(&project, "server.log");
    let admin = project.admin_token();
    let http = http();

    // Fill the filesystem with 32 KiB notes until a write is refused.
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let i = acknowledged.len();
        assert!(
            i < 200,
            "2 MiB took {i} notes of 32 KiB without refusing one"
        );
        let (status, answer) = add_note(&http, &server.url, &admin, i, 32 * 1024).await;
        match status {
            201 => acknowledged.push(answer["id"].as_str().expect("note id").to_string()),
            _ => break (status, answer),
        }
    };
    let (status, answer) = &refusal;
    let message = answer["error"]["message"]
        .as_str()
        .or_else(|| answer["message"].as_str())
        .unwrap_or_default()
        .to_lowercase();
    eprintln!(
        "faults: disk full after {} notes of 32 KiB: {status} {answer}",
        acknowledged.len()
    );
    assert!(
        (500..600).contains(status) && message.contains("full"),
        "a full disk must be a server error that says so, got {status} {answer}; log:\n{}",
        server.log()
    );

    // Reads still work, and small writes are refused the same way rather than hanging.
    let status = http
        .get(format!("{}/api/status", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("status")
        .status();
    assert!(status.is_success(), "reads fail on a full disk: {status}");

    // Space returns: the same server accepts writes again, the refused one included (its key was
    // not spent on a failure).
    remount("remount,size=64m", &project.state_dir());
    let retried = acknowledged.len();
    let (status, answer) = add_note(&http, &server.url, &admin, retried, 32 * 1024).await;
    assert_eq!(status, 201, "no recovery after the disk grew: {answer}");
    acknowledged.push(answer["id"].as_str().expect("note id").to_string());
    let (status, _) = add_note(&http, &server.url, &admin, retried + 1, 1024).await;
    assert_eq!(status, 201);

    // Killed and restarted: everything acknowledged is there once, and the file is sound.
    server.sigkill();
    assert_eq!(
        integrity_check(&project.state_dir().join("conclave.db")),
        "ok"
    );
    let server = Server::start(&project, "server-2.log");
    let events = all_events(&http, &server.url, &admin).await;
    for id in &acknowledged {
        let count = events
            .iter()
            .filter(|e| e["kind"] == "note.added" && e["data"]["id"] == *id.as_str())
            .count();
        assert_eq!(
            count, 1,
            "acknowledged note {id} is in the log {count} times"
        );
    }
    drop(server);
    drop(mounted);
    eprintln!(
        "faults: disk-full test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_stops_the_server_at_start_with_a_clear_error() {
    if !root_or_skip("read-only database") {
        return;
    }
    let project = Project::new("");
    let server = Server::start(&project, "server.log");
    let admin = project.admin_token();
    let http = http();
    let created = http
        .post(format!("{}/api/tasks", server.url))
        .bearer_auth(&admin)
        .json(&json!({ "title": "written before the disk went read-only" }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);
    server.sigkill();

    // The whole state folder, then the database file alone, on a read-only bind mount (root
    // ignores file modes; a mount it cannot ignore).
    let state = project.state_dir();
    let db = state.join("conclave.db");
    let before = std::fs::read(&db).expect("read db");
    for target in [&state, &db] {
        let target_text = target.to_str().expect("utf-8 path").to_string();
        let bound = mount(&["--bind", &target_text], target);
        remount("remount,bind,ro", target);
        let mut serve = project.command(&["serve", "--listen", "127.0.0.1:0"]);
        serve.stdin(Stdio::null());
        let output = crate::harness::output_within(serve, std::time::Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        eprintln!(
            "faults: read-only {}: serve exited {:?}: {}",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default(),
            output.status.code(),
            stderr.trim()
        );
        assert!(
            !output.status.success(),
            "serve ran on a read-only {}",
            target.display()
        );
        assert!(
            stderr.contains("read-only") || stderr.contains("readonly"),
            "the error does not name the cause: {stderr}"
        );
        drop(bound);
        assert_eq!(
            std::fs::read(&db).expect("read db"),
            before,
            "the refused start changed the database"
        );
        assert_eq!(integrity_check(&db), "ok");
    }

    // Writable again: the server starts, and what was written before is there.
    let server = Server::start(&project, "server-2.log");
    let tasks: Value = http
        .get(format!("{}/api/tasks", server.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("tasks")
        .json()
        .await
        .expect("json");
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(1));
}
