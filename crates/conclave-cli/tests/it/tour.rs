//! The CLI end to end against a real server: what a person and two agents do in a first session.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{As, Server, TestProject, add_agent, finish};

#[test]
fn a_tour_of_the_cli() {
    let project = TestProject::init();
    let _server = Server::start(&project);

    // Agents: the token is all that is printed.
    let alice = add_agent(&project, "alice", &["--role", "coder", "--cap", "rust"]);
    let bob = add_agent(&project, "bob", &["--role", "coder"]);
    let agents = project.run(&["agent", "list", "--json"]).json();
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .expect("agents array")
        .iter()
        .map(|agent| agent["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names.len(), 2);
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "{names:?}"
    );
    let fresh = project.run(&["agent", "token", "bob"]).ok();
    assert!(!fresh.is_empty() && fresh != token_of(&bob));

    // Tasks: `id=$(conclave task add ...)` works.
    let first = project
        .run(&[
            "task",
            "add",
            "Parse the config",
            "--body",
            "strictly",
            "--priority",
            "5",
        ])
        .ok();
    assert_eq!(first, "T-1");
    let second = project
        .run(&["task", "add", "Use the config", "--after", "T-1"])
        .ok();
    assert_eq!(second, "T-2");
    let list = project.run(&["task", "list", "--json"]).json();
    let tasks = list["tasks"].as_array().expect("tasks array");
    assert_eq!(tasks.len(), 2);
    let shown = project.run(&["task", "show", "T-2", "--json"]).json();
    assert_eq!(shown["title"], "Use the config");
    assert_eq!(shown["depends_on"], serde_json::json!(["T-1"]));
    assert_eq!(shown["status"], "pending");
    let ready = project
        .run(&["task", "list", "--status", "ready", "--json"])
        .json();
    assert_eq!(ready["tasks"].as_array().expect("tasks").len(), 1);
    let table = project.run(&["task", "list"]).ok();
    assert!(
        table.starts_with("ID") && table.contains("Parse the config"),
        "{table}"
    );

    // Claiming: alice gets the one ready task; then nothing is ready for bob (exit 3).
    assert_eq!(project.run_as(&alice, &["task", "claim"]).ok(), "T-1");
    let stderr = project
        .run_as(&bob, &["task", "claim"])
        .fails_with(3)
        .to_string();
    assert!(stderr.contains("nothing"), "{stderr}");
    let stderr = project
        .run_as(&bob, &["task", "claim", "T-2"])
        .fails_with(3)
        .to_string();
    assert!(stderr.starts_with("error: "), "{stderr}");
    project
        .run_as(
            &alice,
            &[
                "task",
                "update",
                "T-1",
                "--status",
                "in_progress",
                "--note",
                "on it",
            ],
        )
        .ok();

    // Leases: alice locks a file; bob is refused (exit 4) with holder, task and expiry.
    project
        .run_as(&alice, &["lock", "src/config.rs", "--reason", "parser"])
        .ok();
    let stderr = project
        .run_as(&bob, &["lock", "src/config.rs"])
        .fails_with(4)
        .to_string();
    assert!(
        stderr.contains("alice") && stderr.contains("T-1") && stderr.contains("until"),
        "{stderr}"
    );
    let stderr = project
        .run_as(&bob, &["lock", "src/*.rs", "--shared"])
        .fails_with(4)
        .to_string();
    assert!(stderr.contains("alice"), "{stderr}");
    project
        .run_as(&bob, &["lock", "docs/notes.md", "--shared", "--ttl", "120"])
        .ok();
    let locks = project.run(&["locks", "--json"]).json();
    let leases = locks["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 2, "{locks}");
    let config_lease = leases
        .iter()
        .find(|lease| lease["path"] == "src/config.rs")
        .expect("lease");
    assert_eq!(
        (
            config_lease["holder"].as_str(),
            config_lease["task"].as_str()
        ),
        (Some("alice"), Some("T-1"))
    );
    let status = project.run(&["status"]).ok();
    assert!(
        status.contains("src/config.rs") && status.contains("docs/notes.md"),
        "{status}"
    );
    project.run_as(&bob, &["unlock", "docs/notes.md"]).ok();
    assert_eq!(
        project.run(&["locks", "--json"]).json()["leases"]
            .as_array()
            .expect("leases")
            .len(),
        1
    );

    // Messages: a waiting inbox returns as soon as a message arrives, and acknowledges it.
    let mut waiting = project.command(&bob, &["msg", "inbox", "--wait", "30", "--json"]);
    waiting
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut waiting = waiting.spawn().expect("spawn inbox");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        waiting.try_wait().expect("try_wait").is_none(),
        "inbox returned before any message"
    );
    let sent_at = Instant::now();
    let message_id = project
        .run_as(
            &alice,
            &[
                "msg",
                "send",
                "bob",
                "config.rs is mine until T-1 is done",
                "--thread",
                "config",
            ],
        )
        .ok();
    assert!(message_id.starts_with("M-"), "{message_id}");
    let inbox = finish(waiting, Duration::from_secs(30));
    let waited = sent_at.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "inbox took {waited:?} after the send"
    );
    let inbox: serde_json::Value = serde_json::from_str(inbox.ok().as_str()).expect("inbox json");
    let messages = inbox["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{inbox}");
    assert_eq!(messages[0]["id"].as_str(), Some(message_id.as_str()));
    assert_eq!(messages[0]["sender"], "alice");
    let again = project.run_as(&bob, &["msg", "inbox", "--json"]).json();
    assert_eq!(
        again["messages"],
        serde_json::json!([]),
        "acknowledged messages came back"
    );
    let thread = project.run(&["msg", "thread", "config"]).ok();
    assert!(thread.contains("config.rs is mine"), "{thread}");
    let listed = project.run(&["msg", "list", "--json"]).json();
    assert_eq!(listed["messages"].as_array().expect("messages").len(), 1);

    // Notes: add, then find by a word of the body.
    let note = project
        .run_as(
            &alice,
            &[
                "note",
                "add",
                "Config is TOML",
                "--kind",
                "decision",
                "--body",
                "parsed strictly by serde",
                "--tag",
                "config",
            ],
        )
        .ok();
    assert_eq!(note, "N-1");
    let hits = project
        .run(&["note", "search", "strictly", "--json"])
        .json();
    let hits = hits["hits"].as_array().expect("hits");
    assert!(hits.iter().any(|hit| hit["id"] == "N-1"), "{hits:?}");
    let notes = project.run(&["note", "list", "--json"]).json();
    assert_eq!(notes["notes"][0]["kind"], "decision");

    // Finishing unblocks the dependent task.
    project
        .run_as(
            &alice,
            &[
                "task",
                "done",
                "T-1",
                "--summary",
                "parser works",
                "--file",
                "src/config.rs",
            ],
        )
        .ok();
    let done = project.run(&["task", "show", "T-1", "--json"]).json();
    assert_eq!(
        (done["status"].as_str(), done["result"].as_str()),
        (Some("done"), Some("parser works"))
    );
    assert_eq!(project.run_as(&bob, &["task", "claim"]).ok(), "T-2");
    project
        .run_as(&bob, &["task", "fail", "T-2", "--reason", "needs a design"])
        .ok();
    assert_eq!(
        project.run(&["task", "show", "T-2", "--json"]).json()["status"],
        "failed"
    );

    // The log: every step above, in order.
    let log = project.run(&["log", "--json"]).json();
    let events = log["events"].as_array().expect("events");
    let seqs: Vec<i64> = events
        .iter()
        .map(|event| event["seq"].as_i64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| event["kind"].as_str().expect("kind"))
        .collect();
    let expected_order = [
        "agent.registered",
        "task.created",
        "task.claimed",
        "lease.granted",
        "message.sent",
        "note.added",
        "task.done",
    ];
    let mut position = 0;
    for kind in expected_order {
        let found = kinds[position..].iter().position(|seen| *seen == kind);
        position +=
            found.unwrap_or_else(|| panic!("{kind} missing or out of order in {kinds:?}")) + 1;
    }
    let human = project.run(&["log", "--task", "T-1", "--limit", "3"]).ok();
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 3, "{human}");
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with('#') && line.contains(" T-1")),
        "{human}"
    );

    // Export: the whole log as JSON Lines, the same events as `log`.
    let exported = project.export();
    let exported_seqs: Vec<i64> = exported
        .iter()
        .map(|event| event["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(exported_seqs, seqs, "export and log disagree");

    // Status: the team at a glance.
    let status = project.run(&["status"]).ok();
    for wanted in ["alice", "bob", "1 done", "1 failed"] {
        assert!(
            status.contains(wanted),
            "status lacks {wanted:?}:\n{status}"
        );
    }
    let status = project.run_as(&bob, &["status", "--json"]).json();
    assert_eq!(status["me"], "bob");
    assert_eq!(status["unread"], 0);
    assert_eq!(status["agents"].as_array().expect("agents").len(), 2);
}

fn token_of(who: &As) -> String {
    match who {
        As::Agent { token, .. } => token.clone(),
        As::Admin => String::new(),
    }
}

#[test]
fn note_add_says_which_kind_it_used() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let defaulted = project.run(&["note", "add", "tabs, not spaces"]);
    assert_eq!(defaulted.ok(), "N-1");
    assert!(
        defaulted.stderr.contains("as a discovery note") && defaulted.stderr.contains("--kind"),
        "{defaulted:?}"
    );
    let chosen = project.run(&["note", "add", "use sqlite", "--kind", "decision"]);
    assert_eq!(chosen.ok(), "N-2");
    assert!(
        chosen.stderr.contains("(decision)") && !chosen.stderr.contains("--kind"),
        "{chosen:?}"
    );
}
