//! `conclave attach NAME`: an agent the team does not have is refused at once (exit 1), and a
//! closed stdout ends it quietly instead of a panic.

use std::process::Stdio;

use crate::support::{As, TestProject};

#[test]
fn attach_to_an_agent_that_does_not_exist_says_so_and_exits_1() {
    let project = TestProject::init();
    let output = project
        .command(&As::Admin, &["attach", "nobody"])
        .stdin(Stdio::null())
        .output()
        .expect("run conclave");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no agent named \"nobody\""), "{stderr}");
}

#[test]
fn attach_with_a_closed_stdout_exits_quietly() {
    let project = TestProject::init();
    let dir = project.root().join(".conclave/agents/alice");
    std::fs::create_dir_all(&dir).expect("agent dir");
    std::fs::write(
        dir.join("stream.jsonl"),
        "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"hello\"}]}}\n",
    )
    .expect("stream");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = project
        .command(&As::Admin, &["attach", "alice"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run conclave");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
