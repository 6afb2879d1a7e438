//! Failures: bad input, agent-only commands run as admin, usage errors, an unreachable server.
//! Each one must exit with its documented code, say one readable line, and change nothing.

use crate::support::{Server, TestProject, add_agent, closed_port};

/// Runs `args` as admin and checks: exit 1, exactly one `error:` line on stderr that contains
/// `says`, nothing on stdout, and no new event in the log.
#[track_caller]
fn check_refused(project: &TestProject, args: &[&str], says: &str) {
    let before = project.export().len();
    let run = project.run(args);
    let stderr = run.fails_with(1);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr:?}");
    assert!(
        lines[0].to_lowercase().contains(&says.to_lowercase()),
        "{args:?} should say {says:?}: {stderr:?}"
    );
    assert_eq!(run.stdout, "", "{args:?} printed on stdout");
    assert_eq!(project.export().len(), before, "{args:?} changed the log");
}

#[test]
fn bad_input_exits_1_with_one_error_line_and_changes_nothing() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    add_agent(&project, "alice", &[]);
    project.run(&["task", "add", "exists"]).ok();
    let cases: &[(&[&str], &str)] = &[
        (&["task", "add", "orphan", "--after", "T-42"], "T-42"),
        (&["task", "add", "child", "--parent", "T-42"], "T-42"),
        (&["task", "show", "T-99"], "T-99"),
        (&["task", "edit", "T-99", "--title", "x"], "T-99"),
        (&["task", "edit", "T-1", "--after", "T-1"], "T-1"),
        (&["task", "assign", "T-1", "nobody"], "nobody"),
        (&["agent", "add", "alice"], "alice"),
        (&["agent", "token", "nobody"], "nobody"),
        (&["msg", "send", "nobody", "hello"], "nobody"),
        (
            &["note", "add", "replaces nothing", "--supersedes", "N-7"],
            "N-7",
        ),
        (&["unlock", "../outside.rs", "--force"], "outside"),
    ];
    for (args, says) in cases {
        check_refused(&project, args, says);
    }
    let tasks = project.run(&["task", "list", "--json"]).json();
    assert_eq!(
        tasks["tasks"].as_array().expect("tasks").len(),
        1,
        "{tasks}"
    );
}

#[test]
fn agent_only_commands_run_as_admin_say_how_to_act_as_an_agent() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    project.run(&["task", "add", "something"]).ok();
    for args in [
        &["task", "claim"][..],
        &["lock", "src/a.rs"],
        &["msg", "inbox"],
    ] {
        check_refused(&project, args, "CONCLAVE_AGENT");
    }
}

#[test]
fn a_wrong_agent_token_is_refused_with_the_servers_message() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    add_agent(&project, "alice", &[]);
    let run = project.run_with_env(
        &[("CONCLAVE_AGENT", "alice"), ("CONCLAVE_TOKEN", "wrong")],
        &["task", "list"],
    );
    let stderr = run.fails_with(1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    let run = project.run_with_env(&[("CONCLAVE_AGENT", "alice")], &["task", "list"]);
    assert!(run.fails_with(1).contains("CONCLAVE_TOKEN"), "{run:?}");
}

#[test]
fn usage_errors_exit_2() {
    let project = TestProject::init();
    for args in [
        &["task", "show", "X-1"][..],
        &["task", "update", "T-1", "--status", "done"],
        &["task", "add"],
        &["msg", "send", "bob", "hi", "--kind", "gossip"],
        &["no-such-command"],
    ] {
        project.run(args).fails_with(2);
    }
    // Values the command line can judge alone are usage errors too, and say what is wrong.
    let cases: &[(&[&str], &str)] = &[
        (&["task", "add", ""], "title must not be empty"),
        (&["task", "add", "  "], "title must not be empty"),
        (
            &["task", "edit", "T-1", "--title", ""],
            "title must not be empty",
        ),
        (&["task", "list", "--status", "doing"], "in_progress"),
        (
            &["task", "list", "--status", "finished"],
            "not a task status",
        ),
    ];
    for (args, says) in cases {
        let run = project.run(args);
        let stderr = run.fails_with(2);
        assert!(
            stderr.contains(says),
            "{args:?} should say {says:?}: {stderr}"
        );
    }
}

#[test]
fn an_unreachable_server_exits_5_and_says_how_to_start_one() {
    let project = TestProject::init();
    // No server has ever run: no server.json.
    let stderr = project.run(&["task", "list"]).fails_with(5).to_string();
    assert!(
        stderr.starts_with("error: ") && stderr.contains("conclave serve"),
        "{stderr}"
    );

    // CONCLAVE_URL names a port nothing listens on (as an agent: no admin token exists yet).
    let url = format!("http://127.0.0.1:{}", closed_port());
    let stderr = project
        .run_with_env(
            &[
                ("CONCLAVE_URL", &url),
                ("CONCLAVE_AGENT", "alice"),
                ("CONCLAVE_TOKEN", "t"),
            ],
            &["status"],
        )
        .fails_with(5)
        .to_string();
    assert!(
        stderr.contains(&url) && stderr.contains("conclave serve"),
        "{stderr}"
    );

    // A server that was killed left its server.json behind; mutating commands retry, then give up.
    let server = Server::start(&project);
    server.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(
        project.state_dir().join("server.json").exists(),
        "a killed server cannot clean up"
    );
    let stderr = project
        .run(&["task", "add", "lost"])
        .fails_with(5)
        .to_string();
    assert!(stderr.contains("conclave serve"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn outside_a_project_commands_say_to_run_init() {
    let project = TestProject::empty();
    let stderr = project.run(&["task", "list"]).fails_with(1).to_string();
    assert!(stderr.contains("conclave init"), "{stderr}");
    let stderr = project
        .run(&["serve", "--listen", "127.0.0.1:0"])
        .fails_with(1)
        .to_string();
    assert!(stderr.contains("conclave init"), "{stderr}");
}
