//! What a person does to steer the team: edit, assign, cancel and reopen tasks, force a lease
//! free, message a role, supersede a note.

use crate::support::{Server, TestProject, add_agent};

#[test]
fn a_person_steers_tasks_leases_messages_and_notes() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--role", "coder"]);
    let bob = add_agent(&project, "bob", &["--role", "reviewer", "--model", "opus"]);
    let agents = project.run(&["agent", "list", "--json"]).json();
    let bob_json = agents["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["name"] == "bob")
        .cloned();
    assert_eq!(bob_json.expect("bob")["model"], "opus");

    // Edit: title, priority, role and a new dependency.
    project.run(&["task", "add", "base"]).ok();
    project
        .run(&["task", "add", "feature", "--role", "coder"])
        .ok();
    project
        .run(&[
            "task",
            "edit",
            "T-2",
            "--title",
            "the feature",
            "--priority",
            "-1",
            "--role",
            "reviewer",
            "--after",
            "T-1",
        ])
        .ok();
    let edited = project.run(&["task", "show", "T-2", "--json"]).json();
    assert_eq!(edited["title"], "the feature");
    assert_eq!(edited["priority"], -1);
    assert_eq!(edited["role"], "reviewer");
    assert_eq!(edited["depends_on"], serde_json::json!(["T-1"]));
    assert_eq!(edited["status"], "pending");

    // Assign hands the ready task to alice; she can then work on it.
    project.run(&["task", "assign", "T-1", "alice"]).ok();
    let assigned = project.run(&["task", "show", "T-1", "--json"]).json();
    assert_eq!(assigned["assignee"], "alice");
    // Blocked by its holder: `task show` says why, and `status` counts no alert.
    project
        .run_as(
            &alice,
            &[
                "task",
                "update",
                "T-1",
                "--status",
                "blocked",
                "--note",
                "needs the schema",
            ],
        )
        .ok();
    let shown = project.run(&["task", "show", "T-1"]).ok();
    assert!(shown.contains("blocked:   needs the schema"), "{shown}");
    let status = project.run(&["status"]).ok();
    assert!(status.contains("alerts: 0"), "{status}");
    project
        .run_as(&alice, &["task", "update", "T-1", "--status", "review"])
        .ok();
    assert_eq!(
        project.run(&["task", "show", "T-1", "--json"]).json()["status"],
        "review"
    );

    // Cancel, then reopen.
    project.run(&["task", "add", "maybe later"]).ok();
    project
        .run(&["task", "cancel", "T-3", "--reason", "not now"])
        .ok();
    assert_eq!(
        project.run(&["task", "show", "T-3", "--json"]).json()["status"],
        "cancelled"
    );
    project
        .run(&["task", "reopen", "T-3", "--reason", "now"])
        .ok();
    assert_eq!(
        project.run(&["task", "show", "T-3", "--json"]).json()["status"],
        "ready"
    );
    let cancelled = project
        .run(&["log", "--kind", "task.cancelled", "--json"])
        .json();
    assert_eq!(cancelled["events"][0]["data"]["reason"], "not now");

    // A lease held by alice: bob may not release it, the admin may with --force.
    project.run_as(&alice, &["lock", "src/lib.rs"]).ok();
    let refused = project.run_as(&bob, &["unlock", "src/lib.rs"]);
    assert!(refused.fails_with(1).contains("alice"), "{refused:?}");
    assert_eq!(
        project.run(&["locks", "--json"]).json()["leases"]
            .as_array()
            .expect("leases")
            .len(),
        1
    );
    project.run(&["unlock", "src/lib.rs", "--force"]).ok();
    assert_eq!(
        project.run(&["locks", "--json"]).json()["leases"],
        serde_json::json!([])
    );

    // A message to a role reaches the agents with that role only.
    let id = project
        .run(&[
            "msg",
            "send",
            "role:reviewer",
            "please look at T-1",
            "--kind",
            "alert",
            "--urgent",
        ])
        .ok();
    let inbox = project.run_as(&bob, &["msg", "inbox", "--json"]).json();
    assert_eq!(inbox["messages"][0]["id"].as_str(), Some(id.as_str()));
    assert_eq!(inbox["messages"][0]["kind"], "alert");
    assert_eq!(inbox["messages"][0]["urgent"], true);
    assert_eq!(
        project.run_as(&alice, &["msg", "inbox", "--json"]).json()["messages"],
        serde_json::json!([])
    );
    let human = project.run_as(&bob, &["msg", "inbox"]);
    assert_eq!(
        human.ok(),
        "",
        "the message was acknowledged by the first inbox"
    );

    // A note superseding another.
    project
        .run(&["note", "add", "Use JSON", "--kind", "decision"])
        .ok();
    project
        .run(&[
            "note",
            "add",
            "Use TOML",
            "--kind",
            "decision",
            "--supersedes",
            "N-1",
        ])
        .ok();
    let current = project.run(&["note", "list", "--json"]).json();
    let ids: Vec<&str> = current["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["N-2"]);
    let all = project.run(&["note", "list", "--all", "--json"]).json();
    assert_eq!(all["notes"].as_array().expect("notes").len(), 2);
}
