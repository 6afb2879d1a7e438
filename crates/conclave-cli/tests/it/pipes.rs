//! Signals and pipes: a closed stdout ends a listing quietly, a closed stderr does not keep
//! `serve`/`up` from stopping on SIGTERM (nor stop them before), and `down` signals only the
//! processes its files name, not whatever program a recycled pid now belongs to.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{As, Server, TestProject, add_agent, finish, wait_for_server_info};

/// A pipe whose reader is already gone: the first write to it fails with EPIPE, as when `head -1`
/// has read its line and exited.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

#[test]
fn listings_exit_0_quietly_when_their_stdout_is_closed() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    add_agent(&project, "alice", &["--role", "coder"]);
    project.run(&["task", "add", "a task to list"]).ok();
    project.run(&["note", "add", "a note to list"]).ok();
    project
        .run(&["msg", "send", "alice", "a message to list"])
        .ok();
    for args in [
        &["status"][..],
        &["task", "list"],
        &["task", "show", "T-1"],
        &["agent", "list"],
        &["note", "list"],
        &["msg", "list"],
        &["log"],
        &["log", "--json"],
        &["export"],
    ] {
        let mut command = project.command(&As::Admin, args);
        command
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .stderr(Stdio::piped());
        let output = command.output().expect("run conclave");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?} with a closed stdout: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Starts `args` (a command that serves the project) with stdout and stderr both closed pipes,
/// and waits until it has written `server.json`.
fn start_with_closed_output(project: &TestProject, args: &[&str]) -> Child {
    let mut command = project.command(&As::Admin, args);
    command
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe());
    let mut child = command.spawn().expect("spawn conclave");
    let no_log = project.root().join("no.log");
    wait_for_server_info(project, &mut child, &no_log);
    child
}

/// Sends `signal` and waits (bounded) for the exit code.
fn stop_with(child: &mut Child, signal: Signal) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("{signal} did not stop the process within 20 s");
}

#[test]
fn serve_and_up_with_closed_output_keep_serving_and_stop_on_sigterm() {
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["up"]] {
        let project = TestProject::init();
        std::fs::write(
            project.root().join("conclave.toml"),
            "[server]\nlisten = \"127.0.0.1:0\"\n",
        )
        .expect("config");
        let mut child = start_with_closed_output(&project, args);
        // Past the lines it printed at start (the dashboard link), it still serves.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(project.run(&["task", "add", "still served"]).ok(), "T-1");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "{args:?} stopped when its output went away"
        );
        assert_eq!(stop_with(&mut child, Signal::SIGTERM), Some(0), "{args:?}");
        assert!(
            !project.state_dir().join("server.json").exists(),
            "{args:?} did not clean up"
        );
    }
}

/// Writes `.conclave/supervisor.json` and `.conclave/server.json` naming `pid` as if it had
/// recorded itself an hour ago: an unrelated process that was given the pid afterwards.
fn record_stale_pid(project: &TestProject, pid: u32) {
    let an_hour_ago = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let supervisor = serde_json::json!({ "pid": pid, "started_at": an_hour_ago });
    let server = serde_json::json!({
        "url": "http://127.0.0.1:1",
        "pid": pid,
        "started_at": an_hour_ago,
        "version": "0.0.0",
    });
    for (file, info) in [("supervisor.json", supervisor), ("server.json", server)] {
        std::fs::write(project.state_dir().join(file), info.to_string()).expect("write info");
    }
}

#[test]
fn down_does_not_signal_a_pid_that_now_belongs_to_another_program() {
    let project = TestProject::init();
    let mut stranger = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    record_stale_pid(&project, stranger.id());

    let mut command = project.command(&As::Admin, &["down"]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = finish(
        command.spawn().expect("spawn down"),
        Duration::from_secs(30),
    );
    let alive = stranger.try_wait().expect("try_wait").is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();

    assert_eq!(run.code, 0, "{run:?}");
    assert!(alive, "down signalled an unrelated process: {run:?}");
    assert!(run.stderr.contains("another program"), "{run:?}");
    for file in ["supervisor.json", "server.json"] {
        assert!(
            !project.state_dir().join(file).exists(),
            "the stale {file} stays"
        );
    }
}

#[test]
fn down_still_stops_the_server_its_file_names() {
    let project = TestProject::init();
    let server = Server::start(&project);
    let pid = server.pid();
    let run = project.run(&["down"]);
    run.ok();
    assert!(run.stderr.contains(&format!("pid {pid}")), "{run:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z")),
        "the server still runs"
    );
}
