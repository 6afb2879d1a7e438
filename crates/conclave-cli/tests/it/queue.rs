//! The merge queue (issue 11) with real git: agents registered with worktree isolation, their
//! worktrees made with conclave-git as the supervisor will, a real `conclave serve` with a
//! `[merge]` table landing their branches on `conclave/integration`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use conclave_git::{AgentWorktrees, Identity, Repo};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::{As, COMMAND_DEADLINE, Server, TestProject, add_agent, finish, git};

const INTEGRATION: &str = "conclave/integration";

/// A project in a git repository with `a.txt`, `b.txt`, `shared.txt` and `ok` committed, and
/// a `[merge]` table whose check needs `ok` and records each run in `checks.log` (outside the
/// repository).
fn git_project() -> (TestProject, PathBuf) {
    let project = TestProject::init();
    let root = project.root();
    git(&root, &["init", "--quiet", "--initial-branch=main"]);
    let checks = root.parent().expect("parent").join("checks.log");
    std::fs::write(
        root.join("conclave.toml"),
        format!(
            "[merge]\ncheck = \"echo run >> {}; test -f ok || {{ echo 'ok is missing'; exit 1; }}\"\ncheck_timeout = \"1m\"\n",
            checks.display()
        ),
    )
    .expect("config");
    std::fs::write(root.join(".gitignore"), ".conclave/\n").expect("ignore");
    for (name, text) in [
        ("a.txt", "a\n"),
        ("b.txt", "b\n"),
        ("shared.txt", "one\ntwo\nthree\n"),
        ("ok", ""),
    ] {
        std::fs::write(root.join(name), text).expect("file");
    }
    git(&root, &["add", "--all"]);
    git(&root, &["commit", "--quiet", "-m", "start"]);
    (project, checks)
}

fn worktrees(project: &TestProject) -> AgentWorktrees {
    let repo = Repo::open(&project.root(), Identity::default()).expect("repo");
    repo.ensure_integration_branch(INTEGRATION, None)
        .expect("integration branch");
    AgentWorktrees::new(repo).expect("worktrees")
}

/// Registers a worktree agent, and has it claim a new task and switch its worktree to the
/// task's branch. Answers the agent, the task id and the worktree.
fn start(
    project: &TestProject,
    trees: &AgentWorktrees,
    agent: &As,
    title: &str,
) -> (String, PathBuf) {
    let id = project.run(&["task", "add", title]).ok();
    project.run_as(agent, &["task", "claim", &id]).ok();
    let As::Agent { name, .. } = agent else {
        panic!("an agent")
    };
    let checkout = trees
        .start_task(name, &id, INTEGRATION)
        .expect("start task");
    (id, checkout.path)
}

fn queue(project: &TestProject) -> Value {
    project.run(&["queue", "--json"]).json()
}

fn entry(project: &TestProject, task: &str) -> Value {
    queue(project)["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|entry| entry["task"] == task)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_for_state(project: &TestProject, task: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let entry = entry(project, task);
        if entry["state"] == state {
            return entry;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{task} never became {state}: {entry}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_status(project: &TestProject, task: &str) -> Value {
    project.run(&["task", "show", task, "--json"]).json()
}

fn inbox(project: &TestProject, agent: &As) -> String {
    project.run_as(agent, &["msg", "inbox", "--json"]).ok()
}

fn check_runs(checks: &Path) -> usize {
    std::fs::read_to_string(checks)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn branches_land_after_the_check_and_a_conflict_or_a_failing_check_goes_back_to_the_agent() {
    let (project, checks) = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let bob = add_agent(&project, "bob", &["--isolation", "worktree"]);
    let trees = worktrees(&project);

    // Different files: both land, the check runs for each, the tasks are done.
    let (t1, alice_tree) = start(&project, &trees, &alice, "change a");
    let (t2, bob_tree) = start(&project, &trees, &bob, "change b");
    // Alice leaves her work uncommitted (the queue commits it); Bob commits his own.
    std::fs::write(alice_tree.join("a.txt"), "a by alice\n").expect("write");
    std::fs::write(bob_tree.join("b.txt"), "b by bob\n").expect("write");
    git(&bob_tree, &["commit", "--quiet", "-am", "bob's change"]);
    project
        .run_as(&alice, &["task", "done", &t1, "--summary", "a changed"])
        .ok();
    project.run_as(&bob, &["task", "done", &t2]).ok();
    wait_for_state(&project, &t1, "landed");
    wait_for_state(&project, &t2, "landed");
    for task in [&t1, &t2] {
        let shown = task_status(&project, task);
        assert_eq!(shown["status"], "done", "{shown}");
    }
    assert_eq!(
        task_status(&project, &t1)["result"],
        "a changed",
        "the summary given with done is the result"
    );
    let root = project.root();
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:a.txt")]),
        "a by alice"
    );
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:b.txt")]),
        "b by bob"
    );
    assert_eq!(check_runs(&checks), 2, "one check per landing");
    // The user's own branch and files are untouched.
    assert_eq!(
        std::fs::read_to_string(root.join("a.txt")).expect("a"),
        "a\n"
    );

    // The same lines: the first lands, the second goes back with the conflict.
    let (t3, alice_tree) = start(&project, &trees, &alice, "shared by alice");
    let (t4, bob_tree) = start(&project, &trees, &bob, "shared by bob");
    std::fs::write(alice_tree.join("shared.txt"), "ONE alice\ntwo\nthree\n").expect("write");
    std::fs::write(bob_tree.join("shared.txt"), "ONE bob\ntwo\nthree\n").expect("write");
    project.run_as(&alice, &["task", "done", &t3]).ok();
    wait_for_state(&project, &t3, "landed");
    project.run_as(&bob, &["task", "done", &t4]).ok();
    let sent_back = wait_for_state(&project, &t4, "sent_back");
    let outcome = sent_back["outcome"].as_str().expect("outcome");
    assert!(
        outcome.contains("shared.txt") && outcome.contains("ONE bob"),
        "{outcome}"
    );
    let back = task_status(&project, &t4);
    assert_eq!(back["status"], "in_progress", "{back}");
    assert_eq!(back["assignee"], "bob");
    assert!(
        back["result"]
            .as_str()
            .is_some_and(|r| r.contains("shared.txt")),
        "{back}"
    );
    let messages = inbox(&project, &bob);
    assert!(
        messages.contains("conflicts") && messages.contains("shared.txt"),
        "{messages}"
    );
    assert_eq!(check_runs(&checks), 3, "no check runs for a conflict");
    // Bob merges the integration branch in, resolves, and finishes again: it lands.
    let merged = Command::new("git")
        .args(["merge", "--quiet", "--no-edit", INTEGRATION])
        .current_dir(&bob_tree)
        .env("GIT_AUTHOR_NAME", "bob")
        .env("GIT_AUTHOR_EMAIL", "bob@example.com")
        .env("GIT_COMMITTER_NAME", "bob")
        .env("GIT_COMMITTER_EMAIL", "bob@example.com")
        .output()
        .expect("merge");
    assert!(!merged.status.success(), "the merge should conflict");
    std::fs::write(
        bob_tree.join("shared.txt"),
        "ONE alice and bob\ntwo\nthree\n",
    )
    .expect("resolve");
    git(&bob_tree, &["add", "shared.txt"]);
    git(&bob_tree, &["commit", "--quiet", "--no-edit"]);
    project.run_as(&bob, &["task", "done", &t4]).ok();
    wait_for_state(&project, &t4, "landed");
    assert_eq!(task_status(&project, &t4)["status"], "done");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:shared.txt")]),
        "ONE alice and bob\ntwo\nthree"
    );

    // A failing check blocks the landing and reaches the agent with its output.
    let before = git(&root, &["rev-parse", INTEGRATION]);
    let (t5, alice_tree) = start(&project, &trees, &alice, "remove ok");
    std::fs::remove_file(alice_tree.join("ok")).expect("remove");
    project.run_as(&alice, &["task", "done", &t5]).ok();
    let failed = wait_for_state(&project, &t5, "sent_back");
    assert!(
        failed["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("ok is missing")),
        "{failed}"
    );
    assert_eq!(
        git(&root, &["rev-parse", INTEGRATION]),
        before,
        "nothing that failed the check reaches the integration branch"
    );
    assert_eq!(task_status(&project, &t5)["status"], "in_progress");
    assert!(inbox(&project, &alice).contains("ok is missing"));

    // Pause, skip, retry, merge by hand and resume, from the CLI.
    project.run(&["queue", "pause"]).ok();
    std::fs::write(alice_tree.join("ok"), "").expect("restore");
    std::fs::write(alice_tree.join("a.txt"), "a again\n").expect("write");
    project.run_as(&alice, &["task", "done", &t5]).ok();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        entry(&project, &t5)["state"],
        "queued",
        "paused: nothing lands"
    );
    assert_eq!(queue(&project)["paused"], true);
    let skipped = project.run(&["queue", "skip", &t5, "--json"]).json();
    assert_eq!(skipped["state"], "skipped");
    assert_eq!(task_status(&project, &t5)["status"], "in_progress");
    let retried = project.run(&["queue", "retry", &t5, "--json"]).json();
    assert_eq!(retried["state"], "queued");
    assert_eq!(task_status(&project, &t5)["status"], "review");
    let merged = project.run(&["queue", "merge", &t5, "--json"]).json();
    assert_eq!(merged["state"], "landed", "{merged}");
    assert_eq!(task_status(&project, &t5)["status"], "done");
    project.run(&["queue", "resume"]).ok();
    assert_eq!(queue(&project)["paused"], false);
    drop(server);
}

#[test]
fn an_entry_left_merging_by_a_crash_is_retried_at_start_up_and_lands_once() {
    let (project, _checks) = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let trees = worktrees(&project);
    project.run(&["queue", "pause"]).ok();
    let (t1, tree) = start(&project, &trees, &alice, "change a");
    std::fs::write(tree.join("a.txt"), "a by alice\n").expect("write");
    git(&tree, &["commit", "--quiet", "-am", "alice's change"]);
    project.run_as(&alice, &["task", "done", &t1]).ok();
    assert_eq!(entry(&project, &t1)["state"], "queued");
    assert_eq!(server.stop_with(Signal::SIGKILL), None);

    // As if the server died after the integration branch moved but before it recorded that:
    // the entry says merging and the branch is already in.
    let root = project.root();
    let branch = format!("conclave/{t1}");
    let old = git(&root, &["rev-parse", INTEGRATION]);
    let tree_id = git(&root, &["rev-parse", &format!("{branch}^{{tree}}")]);
    let merge = git(
        &root,
        &[
            "commit-tree",
            "-p",
            &old,
            "-p",
            &branch,
            "-m",
            "landed before the crash",
            &tree_id,
        ],
    );
    git(
        &root,
        &[
            "update-ref",
            &format!("refs/heads/{INTEGRATION}"),
            &merge,
            &old,
        ],
    );
    let db = rusqlite::Connection::open(project.state_dir().join("conclave.db")).expect("db");
    db.execute_batch(
        "UPDATE merge_queue SET state = 'merging';
         UPDATE merge_queue_control SET paused = 0;",
    )
    .expect("leave it merging");
    drop(db);

    let _server = Server::start_logging(&project, "server2.log");
    let landed = wait_for_state(&project, &t1, "landed");
    assert!(
        landed["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("already on")),
        "{landed}"
    );
    assert_eq!(task_status(&project, &t1)["status"], "done");
    assert_eq!(
        git(&root, &["rev-parse", INTEGRATION]),
        merge,
        "the branch is not merged a second time"
    );
}

/// Runs `conclave hook <event>` as `who` with `input` on stdin; answers its JSON.
fn hook(project: &TestProject, who: &As, url: &str, event: &str, input: &Value) -> Value {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut command = project.command(who, &["hook", event]);
    command
        .env("CONCLAVE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn conclave hook");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.to_string().as_bytes())
        .expect("write the hook input");
    let run = finish(child, COMMAND_DEADLINE);
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|_| panic!("not JSON: {run:#?}"))
}

/// A `Write` tool call of `file` by an agent working in `cwd`.
fn edit(cwd: &Path, file: &Path) -> Value {
    serde_json::json!({
        "session_id": "s-1",
        "cwd": cwd,
        "tool_name": "Write",
        "tool_input": {"file_path": file, "content": "x"},
    })
}

/// The supervisor's side of worktree isolation as the server runs it: a claim switches the
/// agent's worktree (made on the spot) to the task's branch before it answers, paths in a
/// worktree are the project's, an edit of a file leased in another worktree is allowed with a
/// warning, `done` commits the agent's work before the entry joins the queue, a done with no
/// change lands as nothing to merge, and a claim over uncommitted work is refused.
#[test]
fn a_claim_switches_the_worktree_and_done_commits_it_before_the_queue_sees_it() {
    let (project, checks) = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let bob = add_agent(&project, "bob", &["--isolation", "worktree"]);
    project.run(&["queue", "pause"]).ok();
    let root = project.root();
    let start_tip = git(&root, &["rev-parse", "HEAD"]);

    let t1 = project.run(&["task", "add", "change a"]).ok();
    project.run_as(&alice, &["task", "claim", &t1]).ok();
    let alice_tree = root.join(".conclave/worktrees/alice");
    assert_eq!(
        git(&alice_tree, &["rev-parse", "--abbrev-ref", "HEAD"]),
        format!("conclave/{t1}"),
        "the claim switched alice's worktree to the task's branch"
    );
    assert_eq!(git(&alice_tree, &["rev-parse", "HEAD"]), start_tip);

    // Alice's edit in her worktree leases the project's a.txt.
    let answer = hook(
        &project,
        &alice,
        &server.url,
        "pre-tool-use",
        &edit(&alice_tree, &alice_tree.join("a.txt")),
    );
    assert_eq!(answer, serde_json::json!({}));
    hook(
        &project,
        &alice,
        &server.url,
        "post-tool-use",
        &edit(&alice_tree, &alice_tree.join("a.txt")),
    );
    let status = project.run(&["status", "--json"]).json();
    let leases = status["leases"].to_string();
    assert!(
        leases.contains("\"a.txt\"") && !leases.contains("worktrees"),
        "{status}"
    );
    let touched: Vec<Value> = project
        .export()
        .into_iter()
        .filter(|event| event["kind"] == "file.touched")
        .collect();
    assert!(
        touched
            .iter()
            .any(|event| event.to_string().contains("\"a.txt\"")),
        "{touched:?}"
    );
    assert!(!format!("{touched:?}").contains("worktrees"), "{touched:?}");

    // An absolute path in her worktree, through the API (`conclave lock`), is the project's too.
    let worktree_path = alice_tree.join("b.txt").display().to_string();
    project.run_as(&alice, &["lock", &worktree_path]).ok();
    let status = project.run(&["status", "--json"]).json();
    let leases = status["leases"].to_string();
    assert!(
        leases.contains("\"b.txt\"") && !leases.contains("worktrees"),
        "{status}"
    );
    project.run_as(&alice, &["unlock", &worktree_path]).ok();

    // Bob, in his own worktree, edits the same file: allowed, with a warning naming alice and
    // her task; alice is told.
    let t2 = project.run(&["task", "add", "look at a"]).ok();
    project.run_as(&bob, &["task", "claim", &t2]).ok();
    let bob_tree = root.join(".conclave/worktrees/bob");
    let answer = hook(
        &project,
        &bob,
        &server.url,
        "pre-tool-use",
        &edit(&bob_tree, &bob_tree.join("a.txt")),
    );
    let output = &answer["hookSpecificOutput"];
    assert!(output.get("permissionDecision").is_none(), "{answer}");
    let warning = output["additionalContext"].as_str().unwrap_or_default();
    assert!(
        warning.contains("alice") && warning.contains(&t1) && warning.contains("a.txt"),
        "{answer}"
    );
    assert_eq!(answer["systemMessage"].as_str(), Some(warning));
    assert!(inbox(&project, &alice).contains("bob is editing a.txt"));

    // Done commits alice's uncommitted work on her branch while the queue is paused.
    std::fs::write(alice_tree.join("a.txt"), "a by alice\n").expect("write");
    project
        .run_as(&alice, &["task", "done", &t1, "--summary", "a changed"])
        .ok();
    assert_eq!(entry(&project, &t1)["state"], "queued");
    assert_eq!(git(&alice_tree, &["status", "--porcelain"]), "");
    let branch = format!("conclave/{t1}");
    let message = git(&root, &["log", "-1", "--format=%B", &branch]);
    assert!(
        message.starts_with(&format!("{t1}: change a"))
            && message.contains("a changed")
            && message.contains(&format!("Conclave-Task: {t1}")),
        "{message}"
    );
    assert_eq!(git(&root, &["log", "-1", "--format=%an", &branch]), "alice");

    // Bob finishes with no change at all.
    project.run_as(&bob, &["task", "done", &t2]).ok();

    // A claim over uncommitted work is refused, saying why.
    let t3 = project.run(&["task", "add", "another"]).ok();
    std::fs::write(alice_tree.join("stray.txt"), "x\n").expect("write");
    let refused = project.run_as(&alice, &["task", "claim", &t3]);
    assert_ne!(refused.code, 0, "{refused:#?}");
    assert!(
        refused.stderr.contains("uncommitted") && refused.stderr.contains("stray.txt"),
        "{refused:#?}"
    );
    std::fs::remove_file(alice_tree.join("stray.txt")).expect("remove");

    project.run(&["queue", "resume"]).ok();
    wait_for_state(&project, &t1, "landed");
    let nothing = wait_for_state(&project, &t2, "landed");
    assert!(
        nothing["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("nothing to merge")),
        "{nothing}"
    );
    assert_eq!(task_status(&project, &t2)["status"], "done");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:a.txt")]),
        "a by alice"
    );
    assert_eq!(check_runs(&checks), 1, "the check ran for the one change");
    // The next claim starts from the new tip.
    project.run_as(&alice, &["task", "claim", &t3]).ok();
    assert_eq!(
        git(&alice_tree, &["rev-parse", "HEAD"]),
        git(&root, &["rev-parse", INTEGRATION])
    );
    drop(server);
}

/// The admin's `POST /api/agents/NAME/release` (what the supervisor does when an agent's
/// process dies).
fn release(project: &TestProject, url: &str, agent: &str) {
    let token = conclave_core::project::Project::at(project.root())
        .read_admin_token()
        .expect("read the admin token")
        .expect("an admin token");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{url}/api/agents/{agent}/release"))
            .bearer_auth(token)
            .json(&serde_json::json!({"reason": "its process died"}))
            .send()
            .await
            .expect("release")
            .status()
    });
    assert!(status.is_success(), "{status}");
}

/// An agent going away: a task whose branch waits in the queue stays there and lands; a task it
/// was working on goes back to the team, and the next claimer gets the branch with the work the
/// first agent left uncommitted (its worktree detached).
#[test]
fn a_released_agents_queued_branch_still_lands_and_its_unfinished_task_changes_hands() {
    let (project, _checks) = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let bob = add_agent(&project, "bob", &["--isolation", "worktree"]);
    project.run(&["queue", "pause"]).ok();
    let root = project.root();
    let alice_tree = root.join(".conclave/worktrees/alice");

    let t1 = project.run(&["task", "add", "change a"]).ok();
    project.run_as(&alice, &["task", "claim", &t1]).ok();
    std::fs::write(alice_tree.join("a.txt"), "a by alice\n").expect("write");
    project.run_as(&alice, &["task", "done", &t1]).ok();
    let t2 = project.run(&["task", "add", "change b"]).ok();
    project.run_as(&alice, &["task", "claim", &t2]).ok();
    std::fs::write(alice_tree.join("b.txt"), "b half done by alice\n").expect("write");

    release(&project, &server.url, "alice");
    assert_eq!(task_status(&project, &t1)["status"], "review");
    assert_eq!(task_status(&project, &t2)["status"], "ready");

    project.run_as(&bob, &["task", "claim", &t2]).ok();
    let bob_tree = root.join(".conclave/worktrees/bob");
    assert_eq!(
        git(&bob_tree, &["rev-parse", "--abbrev-ref", "HEAD"]),
        format!("conclave/{t2}")
    );
    assert_eq!(
        std::fs::read_to_string(bob_tree.join("b.txt")).expect("b"),
        "b half done by alice\n",
        "alice's uncommitted work came with the branch"
    );
    assert_eq!(
        git(&alice_tree, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "HEAD",
        "alice's worktree let go of the branch"
    );

    project.run(&["queue", "resume"]).ok();
    wait_for_state(&project, &t1, "landed");
    assert_eq!(task_status(&project, &t1)["status"], "done");
    project.run_as(&bob, &["task", "done", &t2]).ok();
    wait_for_state(&project, &t2, "landed");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:b.txt")]),
        "b half done by alice"
    );
    drop(server);
}

/// `conclave claude --name X` for a worktree agent makes X's worktree and runs the client there
/// (a stand-in client here that records where it ran).
#[test]
fn conclave_claude_for_a_worktree_agent_starts_in_its_worktree() {
    use std::os::unix::fs::PermissionsExt as _;
    let (project, _checks) = git_project();
    let _server = Server::start(&project);
    add_agent(&project, "alice", &["--isolation", "worktree"]);
    let root = project.root();
    let outside = root.parent().expect("parent").to_path_buf();
    let client = outside.join("fake-claude.sh");
    let ran_in = outside.join("ran-in.txt");
    std::fs::write(
        &client,
        format!("#!/bin/sh\npwd > '{}'\n", ran_in.display()),
    )
    .expect("write");
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let client = client.display().to_string();
    project
        .run_with_env(
            &[("CONCLAVE_CLAUDE_BIN", client.as_str())],
            &["claude", "--name", "alice"],
        )
        .ok();
    let tree = root.join(".conclave/worktrees/alice");
    assert_eq!(
        std::fs::read_to_string(&ran_in)
            .expect("the client ran")
            .trim(),
        tree.display().to_string()
    );
    assert_eq!(
        git(&tree, &["rev-parse", "HEAD"]),
        git(&root, &["rev-parse", INTEGRATION]),
        "made at the integration branch's tip"
    );
}

/// A worktree agent that gives its task up leaves its work committed on the task's branch (its
/// worktree clean for its next claim), and the next holder continues from it.
#[test]
fn a_task_given_up_keeps_its_work_on_its_branch_for_the_next_holder() {
    let (project, _checks) = git_project();
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let bob = add_agent(&project, "bob", &["--isolation", "worktree"]);
    let root = project.root();
    let alice_tree = root.join(".conclave/worktrees/alice");
    let t1 = project.run(&["task", "add", "change a"]).ok();
    project.run_as(&alice, &["task", "claim", &t1]).ok();
    std::fs::write(alice_tree.join("a.txt"), "a, half done\n").expect("write");
    project
        .run_as(
            &alice,
            &["task", "fail", &t1, "--reason", "out of my depth"],
        )
        .ok();
    assert_eq!(git(&alice_tree, &["status", "--porcelain"]), "");
    let message = git(
        &root,
        &["log", "-1", "--format=%B", &format!("conclave/{t1}")],
    );
    assert!(
        message.contains("Given up by alice: out of my depth"),
        "{message}"
    );

    project.run(&["task", "reopen", &t1]).ok();
    project.run_as(&bob, &["task", "claim", &t1]).ok();
    assert_eq!(
        std::fs::read_to_string(root.join(".conclave/worktrees/bob/a.txt")).expect("a"),
        "a, half done\n"
    );
}

/// With `[merge] strict_leases = true`, an edit of a file leased in another worktree is denied as
/// in one shared tree.
#[test]
fn strict_leases_deny_an_edit_across_worktrees() {
    let (project, _checks) = git_project();
    let config = project.root().join("conclave.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text}strict_leases = true\n")).expect("write");
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let bob = add_agent(&project, "bob", &["--isolation", "worktree"]);
    let root = project.root();
    for (agent, title) in [(&alice, "a by alice"), (&bob, "a by bob")] {
        let task = project.run(&["task", "add", title]).ok();
        project.run_as(agent, &["task", "claim", &task]).ok();
    }
    let (alice_tree, bob_tree) = (
        root.join(".conclave/worktrees/alice"),
        root.join(".conclave/worktrees/bob"),
    );
    let allowed = hook(
        &project,
        &alice,
        &server.url,
        "pre-tool-use",
        &edit(&alice_tree, &alice_tree.join("a.txt")),
    );
    assert_eq!(allowed, serde_json::json!({}));
    let denied = hook(
        &project,
        &bob,
        &server.url,
        "pre-tool-use",
        &edit(&bob_tree, &bob_tree.join("a.txt")),
    );
    let output = &denied["hookSpecificOutput"];
    assert_eq!(output["permissionDecision"], "deny", "{denied}");
    assert!(
        output["permissionDecisionReason"]
            .as_str()
            .is_some_and(|reason| reason.contains("leased by alice")),
        "{denied}"
    );
}

/// A task a person assigns: the agent's worktree follows it when clean; work done on a worktree
/// no claim switched (here, left detached and dirty) goes on the task's branch at `done`.
#[test]
fn an_assigned_task_gets_its_branch_and_work_on_a_detached_worktree_lands_with_it() {
    let (project, _checks) = git_project();
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    add_agent(&project, "bob", &["--isolation", "worktree"]);
    let root = project.root();

    let t1 = project.run(&["task", "add", "for bob"]).ok();
    project.run(&["task", "assign", &t1, "bob"]).ok();
    assert_eq!(
        git(
            &root.join(".conclave/worktrees/bob"),
            &["rev-parse", "--abbrev-ref", "HEAD"]
        ),
        format!("conclave/{t1}")
    );

    // Alice's worktree, as `up` makes it: detached at the integration tip. She edits before any
    // claim, then is given the task: the switch is skipped, the assignment stands.
    let trees = worktrees(&project);
    let tip = trees
        .repo()
        .branch_tip(INTEGRATION)
        .expect("tip")
        .expect("integration");
    let tree = trees.ensure("alice", &tip).expect("worktree").path;
    std::fs::write(tree.join("a.txt"), "a, before the assignment\n").expect("write");
    let t2 = project.run(&["task", "add", "for alice"]).ok();
    project.run(&["task", "assign", &t2, "alice"]).ok();
    assert_eq!(task_status(&project, &t2)["status"], "claimed");
    project.run_as(&alice, &["task", "done", &t2]).ok();
    assert_eq!(
        git(&tree, &["rev-parse", "--abbrev-ref", "HEAD"]),
        format!("conclave/{t2}")
    );
    wait_for_state(&project, &t2, "landed");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:a.txt")]),
        "a, before the assignment"
    );
}

/// `conclave agent remove` prunes a worktree agent's worktree; what it left uncommitted is
/// committed on its task's branch first, and the branch stays.
#[test]
fn removing_a_worktree_agent_prunes_its_worktree_and_keeps_its_work_on_the_branch() {
    let (project, _checks) = git_project();
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let root = project.root();
    let tree = root.join(".conclave/worktrees/alice");
    let t1 = project.run(&["task", "add", "change a"]).ok();
    project.run_as(&alice, &["task", "claim", &t1]).ok();
    std::fs::write(tree.join("a.txt"), "a, unfinished\n").expect("write");
    project.run(&["agent", "remove", "alice"]).ok();
    assert!(!tree.exists(), "the worktree is pruned");
    assert!(
        !git(&root, &["worktree", "list"]).contains("worktrees/alice"),
        "git forgot it too"
    );
    assert_eq!(
        git(&root, &["show", &format!("conclave/{t1}:a.txt")]),
        "a, unfinished"
    );
}

/// [`git_project`] with pipeline `reviewed` (coder → reviewer), a coder and a reviewer in
/// worktrees.
fn pipeline_project() -> (TestProject, PathBuf) {
    let (project, checks) = git_project();
    let config = project.root().join("conclave.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!("{text}\n[[pipeline]]\nname = \"reviewed\"\nstages = [\"coder\", \"reviewer\"]\n"),
    )
    .expect("write");
    (project, checks)
}

fn head_of(tree: &Path) -> String {
    git(tree, &["rev-parse", "--abbrev-ref", "HEAD"])
}

/// In worktree mode every stage works on the task's one branch: the coder's pass commits what it
/// left and lets go of the branch, the reviewer's claim switches its worktree to it (the coder's
/// work there), a send-back hands it back the same way, and only the last stage's pass puts it in
/// the merge queue, which lands it after the check.
#[test]
fn a_worktree_pipeline_shares_the_task_branch_and_lands_only_after_its_last_pass() {
    let (project, checks) = pipeline_project();
    let server = Server::start(&project);
    let coder = add_agent(
        &project,
        "carol",
        &["--role", "coder", "--isolation", "worktree"],
    );
    let reviewer = add_agent(
        &project,
        "rex",
        &["--role", "reviewer", "--isolation", "worktree"],
    );
    let root = project.root();
    let (carol_tree, rex_tree) = (
        root.join(".conclave/worktrees/carol"),
        root.join(".conclave/worktrees/rex"),
    );
    let id = project
        .run(&["task", "add", "the parser", "--pipeline", "reviewed"])
        .ok();
    let branch = format!("conclave/{id}");

    project.run_as(&coder, &["task", "claim", &id]).ok();
    assert_eq!(head_of(&carol_tree), branch);
    std::fs::write(carol_tree.join("a.txt"), "a by carol\n").expect("write");
    project
        .run_as(&coder, &["task", "done", &id, "--summary", "drafted"])
        .ok();
    let message = git(&root, &["log", "-1", "--format=%B", &branch]);
    assert!(
        message.starts_with(&format!("{id}: the parser (stage 1/2: coder)"))
            && message.contains("drafted"),
        "{message}"
    );
    assert_eq!(
        head_of(&carol_tree),
        "HEAD",
        "the coder let go of the branch"
    );
    let at_review = task_status(&project, &id);
    assert_eq!(
        (at_review["status"].as_str(), at_review["role"].as_str()),
        (Some("ready"), Some("reviewer")),
        "{at_review}"
    );
    assert_eq!(
        entry(&project, &id),
        Value::Null,
        "an earlier pass queues nothing"
    );

    // The reviewer's worktree gets the branch with the coder's work, and sends it back.
    project.run_as(&reviewer, &["task", "claim", &id]).ok();
    assert_eq!(head_of(&rex_tree), branch);
    assert_eq!(
        std::fs::read_to_string(rex_tree.join("a.txt")).expect("a"),
        "a by carol\n"
    );
    project
        .run_as(
            &reviewer,
            &["task", "done", &id, "--send-back", "say who wrote it"],
        )
        .ok();
    assert_eq!(
        head_of(&rex_tree),
        "HEAD",
        "the reviewer let go of the branch"
    );
    let back = task_status(&project, &id);
    assert_eq!(back["assignee"], "carol", "{back}");

    project.run_as(&coder, &["task", "claim", &id]).ok();
    assert_eq!(head_of(&carol_tree), branch);
    std::fs::write(carol_tree.join("a.txt"), "a by carol, signed\n").expect("write");
    project.run_as(&coder, &["task", "done", &id]).ok();

    // The reviewer sees both of the coder's rounds and adds a commit of its own; its pass is the
    // last: the branch waits in the queue, then lands after the check.
    project.run_as(&reviewer, &["task", "claim", &id]).ok();
    assert_eq!(
        std::fs::read_to_string(rex_tree.join("a.txt")).expect("a"),
        "a by carol, signed\n"
    );
    let log = git(&rex_tree, &["log", "--format=%an %s", "-3"]);
    assert_eq!(log.matches("carol").count(), 2, "{log}");
    std::fs::write(rex_tree.join("b.txt"), "b, reviewed\n").expect("write");
    git(&rex_tree, &["commit", "--quiet", "-am", "review notes"]);
    project
        .run_as(&reviewer, &["task", "done", &id, "--summary", "approved"])
        .ok();
    let landed = wait_for_state(&project, &id, "landed");
    assert_eq!(landed["agent"], "rex", "{landed}");
    let done = task_status(&project, &id);
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["result"], "approved");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:a.txt")]),
        "a by carol, signed"
    );
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:b.txt")]),
        "b, reviewed"
    );
    assert_eq!(check_runs(&checks), 1, "one check, for the last pass only");
    drop(server);
}

/// A conflict found by the queue sends a pipeline task back to the stage that finished it last
/// (the reviewer here), its worktree on the branch again and the conflict in its inbox and the
/// task's history; fixed there, it lands.
#[test]
fn a_conflict_from_the_queue_returns_a_pipeline_task_to_its_last_stage() {
    let (project, checks) = pipeline_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let coder = add_agent(
        &project,
        "carol",
        &["--role", "coder", "--isolation", "worktree"],
    );
    let reviewer = add_agent(
        &project,
        "rex",
        &["--role", "reviewer", "--isolation", "worktree"],
    );
    let root = project.root();
    let (alice_tree, carol_tree, rex_tree) = (
        root.join(".conclave/worktrees/alice"),
        root.join(".conclave/worktrees/carol"),
        root.join(".conclave/worktrees/rex"),
    );
    project.run(&["queue", "pause"]).ok();

    let plain = project.run(&["task", "add", "shared by alice"]).ok();
    project.run_as(&alice, &["task", "claim", &plain]).ok();
    std::fs::write(alice_tree.join("shared.txt"), "ONE alice\ntwo\nthree\n").expect("write");
    project.run_as(&alice, &["task", "done", &plain]).ok();

    let id = project
        .run(&[
            "task",
            "add",
            "shared in a pipeline",
            "--pipeline",
            "reviewed",
        ])
        .ok();
    project.run_as(&coder, &["task", "claim", &id]).ok();
    std::fs::write(carol_tree.join("shared.txt"), "ONE carol\ntwo\nthree\n").expect("write");
    project.run_as(&coder, &["task", "done", &id]).ok();
    project.run_as(&reviewer, &["task", "claim", &id]).ok();
    project.run_as(&reviewer, &["task", "done", &id]).ok();
    assert_eq!(entry(&project, &id)["state"], "queued");

    project.run(&["queue", "resume"]).ok();
    wait_for_state(&project, &plain, "landed");
    let sent_back = wait_for_state(&project, &id, "sent_back");
    assert!(
        sent_back["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("shared.txt") && o.contains("ONE carol")),
        "{sent_back}"
    );
    let back = task_status(&project, &id);
    assert_eq!(back["status"], "in_progress", "{back}");
    assert_eq!(back["assignee"], "rex", "back to the last stage: {back}");
    assert_eq!(back["role"], "reviewer");
    assert_eq!(
        head_of(&rex_tree),
        format!("conclave/{id}"),
        "on the branch again"
    );
    let messages = inbox(&project, &reviewer);
    assert!(
        messages.contains("conflicts") && messages.contains("shared.txt"),
        "{messages}"
    );
    let shown = project.run(&["task", "show", &id]).ok();
    assert!(
        shown.contains("send_back") && shown.contains("the merge queue"),
        "{shown}"
    );
    assert_eq!(check_runs(&checks), 1, "no check runs for a conflict");

    // The reviewer merges the integration branch in, resolves it and passes again: it lands.
    let merged = Command::new("git")
        .args(["merge", "--quiet", "--no-edit", INTEGRATION])
        .current_dir(&rex_tree)
        .env("GIT_AUTHOR_NAME", "rex")
        .env("GIT_AUTHOR_EMAIL", "rex@example.com")
        .env("GIT_COMMITTER_NAME", "rex")
        .env("GIT_COMMITTER_EMAIL", "rex@example.com")
        .output()
        .expect("merge");
    assert!(!merged.status.success(), "the merge should conflict");
    std::fs::write(
        rex_tree.join("shared.txt"),
        "ONE alice and carol\ntwo\nthree\n",
    )
    .expect("resolve");
    git(&rex_tree, &["add", "shared.txt"]);
    git(&rex_tree, &["commit", "--quiet", "--no-edit"]);
    project.run_as(&reviewer, &["task", "done", &id]).ok();
    wait_for_state(&project, &id, "landed");
    assert_eq!(task_status(&project, &id)["status"], "done");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:shared.txt")]),
        "ONE alice and carol\ntwo\nthree"
    );
    drop(server);
}

/// A task needing approval in worktree mode: its agent's done commits the work and the task
/// waits for the person, its branch nowhere near the queue; a rejection returns it to the agent,
/// its worktree on the branch again; only the approval puts it in the queue, and it is done once
/// its branch landed.
#[test]
fn an_approval_task_in_a_worktree_lands_only_after_it_is_approved() {
    let (project, checks) = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let root = project.root();
    let tree = root.join(".conclave/worktrees/alice");
    // The queue makes the integration branch from HEAD once it has started, in the background.
    let start_tip = git(&root, &["rev-parse", "HEAD"]);
    let id = project.run(&["task", "add", "migrate", "--approve"]).ok();
    let branch = format!("conclave/{id}");

    project.run_as(&alice, &["task", "claim", &id]).ok();
    std::fs::write(tree.join("a.txt"), "a migrated\n").expect("write");
    project
        .run_as(&alice, &["task", "done", &id, "--summary", "migrated"])
        .ok();
    let waiting = task_status(&project, &id);
    assert_eq!(waiting["status"], "review");
    assert_eq!(waiting["awaiting_approval"], true);
    assert_eq!(
        git(&root, &["show", &format!("{branch}:a.txt")]),
        "a migrated",
        "the work is committed on the branch"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        entry(&project, &id),
        Value::Null,
        "not queued before the decision"
    );
    assert_eq!(git(&root, &["rev-parse", INTEGRATION]), start_tip);

    project
        .run(&["task", "reject", &id, "--comment", "keep a backup"])
        .ok();
    assert_eq!(task_status(&project, &id)["status"], "in_progress");
    assert_eq!(head_of(&tree), branch, "back on the task's branch");
    std::fs::write(tree.join("b.txt"), "b, the backup\n").expect("write");
    project
        .run_as(
            &alice,
            &["task", "done", &id, "--summary", "migrated, backed up"],
        )
        .ok();
    assert_eq!(task_status(&project, &id)["awaiting_approval"], true);
    assert_eq!(entry(&project, &id), Value::Null);

    // Approved while the queue is paused: the branch waits in it, the task not done before it
    // lands.
    project.run(&["queue", "pause"]).ok();
    project.run(&["task", "approve", &id]).ok();
    assert_eq!(entry(&project, &id)["state"], "queued");
    let approved = task_status(&project, &id);
    assert_eq!(approved["status"], "review", "{approved}");
    assert_ne!(approved["awaiting_approval"], true, "{approved}");
    project.run(&["queue", "resume"]).ok();
    wait_for_state(&project, &id, "landed");
    let done = task_status(&project, &id);
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["result"], "migrated, backed up");
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:a.txt")]),
        "a migrated"
    );
    assert_eq!(
        git(&root, &["show", &format!("{INTEGRATION}:b.txt")]),
        "b, the backup"
    );
    assert_eq!(check_runs(&checks), 1);
    drop(server);
}
