//! `conclave log --follow`: live events, and resuming after the server restarts.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{As, LineReader, Server, TestProject};

/// A running `conclave log --follow --json`, killed on drop.
struct Follower {
    child: std::process::Child,
    lines: LineReader,
}

impl Follower {
    fn start(project: &TestProject, extra: &[&str]) -> Follower {
        let mut args = vec!["log", "--follow", "--json"];
        args.extend_from_slice(extra);
        let mut command = project.command(&As::Admin, &args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("spawn log --follow");
        let lines = LineReader::new(child.stdout.take().expect("stdout"));
        Follower { child, lines }
    }

    /// Waits for the event of `kind` whose data has this title.
    fn wait_for_task(&mut self, kind: &str, title: &str, deadline: Duration) -> serde_json::Value {
        let line = self.lines.wait_for(deadline, |line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|event| event["kind"] == kind && event["data"]["title"] == title)
        });
        serde_json::from_str(&line).expect("json")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn log_follow_prints_an_event_created_after_it_started() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    project.run(&["task", "add", "before"]).ok();
    let mut follower = Follower::start(&project, &[]);
    // The backlog comes first...
    follower.wait_for_task("task.created", "before", Duration::from_secs(20));
    // ...then what happens afterwards, live.
    std::thread::sleep(Duration::from_millis(300));
    project.run(&["task", "add", "after"]).ok();
    let event = follower.wait_for_task("task.created", "after", Duration::from_secs(20));
    assert_eq!(event["task"], "T-2");
    assert!(
        follower
            .lines
            .seen
            .iter()
            .filter(|line| line.contains("\"before\""))
            .count()
            == 1,
        "an event was printed twice: {:#?}",
        follower.lines.seen
    );
}

#[test]
fn log_follow_filters_by_kind() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let mut follower = Follower::start(&project, &["--kind", "note."]);
    std::thread::sleep(Duration::from_millis(300));
    project.run(&["task", "add", "not a note"]).ok();
    project.run(&["note", "add", "a note"]).ok();
    let line = follower
        .lines
        .wait_for(Duration::from_secs(20), |line| line.contains("note.added"));
    assert!(
        !follower
            .lines
            .seen
            .iter()
            .any(|seen| seen.contains("task.created")),
        "{line}"
    );
}

#[test]
fn log_follow_resumes_after_the_server_restarts() {
    let project = TestProject::init();
    let server = Server::start(&project);
    let mut follower = Follower::start(&project, &[]);
    project.run(&["task", "add", "first"]).ok();
    follower.wait_for_task("task.created", "first", Duration::from_secs(20));

    // Killed hard: the follower loses its connection; the new server listens on another port.
    server.stop_with(Signal::SIGKILL);
    let _server = Server::start_logging(&project, "server-2.log");
    project.run(&["task", "add", "second"]).ok();
    let event = follower.wait_for_task("task.created", "second", Duration::from_secs(30));
    assert_eq!(event["task"], "T-2");
    let firsts = follower
        .lines
        .seen
        .iter()
        .filter(|line| line.contains("\"first\""))
        .count();
    assert_eq!(
        firsts, 1,
        "an event was printed twice after reconnecting: {:#?}",
        follower.lines.seen
    );
}
