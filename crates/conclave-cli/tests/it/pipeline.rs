//! Pipelines and a person's checkpoints through a real server: a task passes coder → reviewer →
//! tester by each agent's `task done`, comes back to the coder with comments when sent back, and
//! a task that needs approval waits for the admin's `task approve` or goes back to its agent on
//! `task reject`.

use std::io::Write as _;

use crate::support::{As, Server, TestProject, add_agent};

fn with_pipeline() -> TestProject {
    let project = TestProject::init();
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(project.root().join("conclave.toml"))
        .expect("open conclave.toml");
    writeln!(
        config,
        "\n[[pipeline]]\nname = \"reviewed\"\nstages = [\"coder\", \"reviewer\", \"tester\"]"
    )
    .expect("write conclave.toml");
    project
}

fn claim_and_finish(project: &TestProject, agent: &As, args: &[&str]) -> String {
    let id = project.run_as(agent, &["task", "claim"]).ok();
    let mut done = vec!["task", "done", id.as_str()];
    done.extend_from_slice(args);
    project.run_as(agent, &done).ok();
    id
}

fn task(project: &TestProject, id: &str) -> serde_json::Value {
    project.run(&["task", "show", id, "--json"]).json()
}

#[test]
fn a_pipeline_task_passes_every_stage_and_comes_back_with_comments_when_sent_back() {
    let project = with_pipeline();
    let _server = Server::start(&project);
    let coder = add_agent(&project, "carol", &["--role", "coder"]);
    let reviewer = add_agent(&project, "rex", &["--role", "reviewer"]);
    let tester = add_agent(&project, "tess", &["--role", "tester"]);

    let id = project
        .run(&["task", "add", "the parser", "--pipeline", "reviewed"])
        .ok();
    assert_eq!(task(&project, &id)["role"], "coder");

    claim_and_finish(&project, &coder, &["--summary", "first draft"]);
    let at_review = task(&project, &id);
    assert_eq!(at_review["role"], "reviewer");
    assert_eq!(at_review["status"], "ready");

    // The reviewer sends it back: it returns to the coder, who is told what to change.
    claim_and_finish(
        &project,
        &reviewer,
        &["--send-back", "cover the empty input"],
    );
    let sent_back = task(&project, &id);
    assert_eq!(sent_back["role"], "coder");
    assert_eq!(sent_back["assignee"], "carol");
    let inbox = project.run_as(&coder, &["msg", "inbox"]).ok();
    assert!(inbox.contains("cover the empty input"), "{inbox}");

    claim_and_finish(&project, &coder, &["--summary", "empty input covered"]);
    claim_and_finish(&project, &reviewer, &[]);
    assert_eq!(task(&project, &id)["role"], "tester");
    claim_and_finish(&project, &tester, &["--summary", "all green"]);
    assert_eq!(task(&project, &id)["status"], "done");

    // `task show` tells the way it went, send-back and comments included.
    let shown = project.run(&["task", "show", &id]).ok();
    assert!(shown.contains("history:"), "{shown}");
    assert!(
        shown.contains("rex  send_back as reviewer to stage 1: cover the empty input"),
        "{shown}"
    );
    assert!(shown.contains("tess  pass as tester"), "{shown}");
}

#[test]
fn an_approval_task_waits_for_the_person_who_approves_or_rejects_it() {
    let project = with_pipeline();
    let _server = Server::start(&project);
    let coder = add_agent(&project, "carol", &["--role", "coder"]);

    let approved = project.run(&["task", "add", "release", "--approve"]).ok();
    claim_and_finish(&project, &coder, &["--summary", "tagged"]);
    let waiting = task(&project, &approved);
    assert_eq!(waiting["status"], "review");
    assert_eq!(waiting["awaiting_approval"], true);
    let status = project.run(&["status"]).ok();
    assert!(status.contains("decisions waiting: 1"), "{status}");
    // Only a person decides: the agent's own approval is refused and changes nothing.
    let refused = project.run_as(&coder, &["task", "approve", &approved]);
    assert_ne!(refused.code, 0, "{refused:#?}");
    assert_eq!(task(&project, &approved)["status"], "review");
    project
        .run(&["task", "approve", &approved, "--comment", "ship it"])
        .ok();
    assert_eq!(task(&project, &approved)["status"], "done");
    let status = project.run(&["status"]).ok();
    assert!(status.contains("decisions waiting: 0"), "{status}");

    // A rejection returns the task to its agent with the comment.
    let rejected = project.run(&["task", "add", "migration", "--approve"]).ok();
    claim_and_finish(&project, &coder, &[]);
    project
        .run(&[
            "task",
            "reject",
            &rejected,
            "--comment",
            "keep the old column",
        ])
        .ok();
    let back = task(&project, &rejected);
    assert_eq!(back["status"], "in_progress");
    assert_eq!(back["assignee"], "carol");
    let inbox = project.run_as(&coder, &["msg", "inbox"]).ok();
    assert!(inbox.contains("keep the old column"), "{inbox}");
    let shown = project.run(&["task", "show", &rejected]).ok();
    assert!(shown.contains("rejected: keep the old column"), "{shown}");
}
