//! Worktree agents on two hosts (issues 11 and 15, docs/scale-out.md), with real git: two
//! clones of one bare remote. Clone A runs `conclave serve --host build-1` and so the merge
//! queue; clone B is build-2, whose worktree agent reaches the server through B's relay, which
//! runs its git steps in B (switch on claim, commit and push on done). The task's branch travels
//! through the remote, lands on A's integration branch, is published there, and B's next task
//! starts from the new tip.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_supervisor::relay::Relay;
use conclave_supervisor::worktree_steps::WorktreeSteps;
use serde_json::{Value, json};

use crate::support::{As, Server, TestProject, add_agent, git};

const CONFIG: &str = "[merge]\nremote = \"origin\"\ncheck = \"test -f ok\"\ncheck_timeout = \"1m\"\n\n\
                      [[agent]]\nname = \"coder\"\nhost = \"build-2\"\nisolation = \"worktree\"\n\n\
                      [[agent]]\nname = \"tester\"\nhost = \"build-2\"\nisolation = \"worktree\"\n";

/// Clone A (a conclave project, pushed to the bare remote) and clone B of that remote.
struct TwoHosts {
    a: TestProject,
    b: PathBuf,
    bare: PathBuf,
    _dir: tempfile::TempDir,
}

fn two_hosts() -> TwoHosts {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("team.git");
    git(
        dir.path(),
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "team.git",
        ],
    );
    let a = TestProject::init();
    let root = a.root();
    git(&root, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(root.join("conclave.toml"), CONFIG).expect("config");
    std::fs::write(root.join(".gitignore"), ".conclave/\n").expect("ignore");
    std::fs::write(root.join("ok"), "").expect("ok");
    std::fs::write(root.join("a.txt"), "a\n").expect("a");
    git(&root, &["add", "--all"]);
    git(&root, &["commit", "--quiet", "-m", "start"]);
    git(
        &root,
        &["remote", "add", "origin", &bare.display().to_string()],
    );
    git(&root, &["push", "--quiet", "origin", "main"]);
    let b = dir.path().join("clone-b");
    git(
        dir.path(),
        &["clone", "--quiet", &bare.display().to_string(), "clone-b"],
    );
    TwoHosts {
        a,
        b,
        bare,
        _dir: dir,
    }
}

async fn mcp(relay: &Relay, token: &str, tool: &str, arguments: Value) -> (bool, String) {
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/mcp", relay.url()))
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}
        }))
        .send()
        .await
        .expect("the relay answers")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(answer["id"], 7, "{answer}");
    let text = answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (answer["result"]["isError"] == true, text)
}

fn head_of(worktree: &Path) -> String {
    git(worktree, &["rev-parse", "--abbrev-ref", "HEAD"])
}

fn wait_for_landing(project: &TestProject, task: &str) -> Value {
    let started = Instant::now();
    loop {
        let queue: Value = project.run(&["queue", "--json"]).json();
        let entry = queue["entries"]
            .as_array()
            .and_then(|entries| entries.iter().find(|entry| entry["task"] == task).cloned())
            .unwrap_or(Value::Null);
        if entry["state"] == "landed" {
            return entry;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{task} never landed: {queue}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finished_on_another_host_lands_through_the_queue_host_and_the_next_starts_from_it()
{
    let hosts = two_hosts();
    let a = &hosts.a;
    let server = Server::start_command(
        a,
        "server.log",
        &["serve", "--listen", "127.0.0.1:0", "--host", "build-1"],
    );
    let coder = add_agent(a, "coder", &["--isolation", "worktree"]);
    let As::Agent { token, .. } = &coder else {
        unreachable!("add_agent returns an agent")
    };
    let admin_token = std::fs::read_to_string(a.state_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let admin = conclave_client::Client::with_ca(server.url.clone(), admin_token, None, None)
        .expect("client");
    // What `conclave up --server URL --host build-2` records for its agents.
    let _: Value = admin
        .patch("/api/agents/coder", &json!({"host": "build-2"}))
        .await
        .expect("record the host");

    // B's relay, as `up --server` on build-2 starts it.
    let config =
        conclave_core::config::Config::load(&hosts.b.join("conclave.toml")).expect("config");
    let merge = config.merge.expect("[merge]");
    let steps = WorktreeSteps::new(
        &hosts.b,
        &merge,
        ["coder".to_string(), "tester".to_string()],
    )
    .expect("steps");
    let relay = Relay::start_with_steps(admin.clone(), Some(Arc::new(steps)))
        .await
        .expect("relay");

    // The claim switches B's worktree to the task's branch before the agent reads the answer;
    // the server ran no git for an agent of another host.
    let first = a.run(&["task", "add", "add b"]).ok();
    let (failed, text) = mcp(&relay, token, "claim", json!({})).await;
    assert!(!failed, "{text}");
    assert!(
        text.contains(&format!("Your worktree is on its branch conclave/{first}")),
        "{text}"
    );
    let worktree = hosts.b.join(".conclave/worktrees/coder");
    assert_eq!(head_of(&worktree), format!("conclave/{first}"));
    assert!(
        !a.root().join(".conclave/worktrees/coder").exists(),
        "the server made a worktree for an agent of another host"
    );

    // done commits and pushes the branch, then the queue host brings it in, lands it after the
    // check, and publishes the integration branch.
    std::fs::write(worktree.join("b.txt"), "b\n").expect("write b");
    let (failed, text) = mcp(
        &relay,
        token,
        "done",
        json!({"id": first, "summary": "b added"}),
    )
    .await;
    assert!(!failed, "{text}");
    assert!(text.contains("pushed to origin"), "{text}");
    let pushed = git(
        &hosts.bare,
        &["rev-parse", &format!("refs/heads/conclave/{first}")],
    );
    assert_eq!(pushed, git(&worktree, &["rev-parse", "HEAD"]));
    let landed = wait_for_landing(a, &first);
    let outcome = landed["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("pushed to origin"), "{landed}");
    assert_eq!(
        git(&hosts.bare, &["show", "conclave/integration:b.txt"]),
        "b",
        "the integration branch on the remote holds the landed work"
    );
    let task: Value = a.run(&["task", "show", &first, "--json"]).json();
    assert_eq!(task["status"], "done", "{task}");

    // B's next task starts from the integration branch as the remote has it now.
    let second = a.run(&["task", "add", "add c"]).ok();
    let (failed, text) = mcp(&relay, token, "claim", json!({"id": second})).await;
    assert!(!failed, "{text}");
    assert_eq!(head_of(&worktree), format!("conclave/{second}"));
    assert_eq!(
        std::fs::read_to_string(worktree.join("b.txt")).expect("b.txt on the new branch"),
        "b\n"
    );
    assert_eq!(
        git(&hosts.b, &["rev-parse", "conclave/integration"]),
        git(&hosts.bare, &["rev-parse", "conclave/integration"]),
    );

    // A push the remote refuses stops the done: the server never hears of it, and the agent
    // reads git's reason.
    let hook = hosts.bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'no pushes today' >&2\nexit 1\n").expect("hook");
    let mut permissions = std::fs::metadata(&hook).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&hook, permissions).expect("chmod");
    std::fs::write(worktree.join("c.txt"), "c\n").expect("write c");
    let (failed, text) = mcp(&relay, token, "done", json!({"id": second})).await;
    assert!(failed, "{text}");
    assert!(
        text.contains("not finished") && text.contains("no pushes today"),
        "{text}"
    );
    let task: Value = a.run(&["task", "show", &second, "--json"]).json();
    assert_eq!(task["status"], "claimed", "{task}");

    // A claim over uncommitted work is refused before it reaches the server. (c.txt was
    // committed by the done above; new work is not.)
    std::fs::write(worktree.join("d.txt"), "d\n").expect("write d");
    let third = a.run(&["task", "add", "add d"]).ok();
    let (failed, text) = mcp(&relay, token, "claim", json!({"id": third})).await;
    assert!(failed, "{text}");
    assert!(text.contains("uncommitted changes"), "{text}");
    let task: Value = a.run(&["task", "show", &third, "--json"]).json();
    assert_eq!(task["status"], "ready", "{task}");

    // The same steps for the agent's own CLI (`conclave task claim`) through the relay.
    let claim_by_cli = || {
        let mut command = a.command(&coder, &["task", "claim", &third]);
        command.env("CONCLAVE_URL", relay.url());
        crate::support::run_command(command)
    };
    let run = claim_by_cli();
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("uncommitted changes"), "{run:#?}");
    std::fs::remove_file(worktree.join("d.txt")).expect("remove d");
    claim_by_cli().ok();
    assert_eq!(head_of(&worktree), format!("conclave/{third}"));

    // The task changes hands between two agents of build-2 (coder is released with work left
    // uncommitted): tester's claim takes the branch over, with coder's work committed on it.
    let tester = add_agent(a, "tester", &["--isolation", "worktree"]);
    let As::Agent {
        token: tester_token,
        ..
    } = &tester
    else {
        unreachable!("add_agent returns an agent")
    };
    let _: Value = admin
        .patch("/api/agents/tester", &json!({"host": "build-2"}))
        .await
        .expect("record the host");
    std::fs::write(worktree.join("e.txt"), "e\n").expect("write e");
    let _: Value = admin
        .post("/api/agents/coder/release", &json!({"reason": "gone"}))
        .await
        .expect("release coder");
    let (failed, text) = mcp(&relay, tester_token, "claim", json!({"id": third})).await;
    assert!(!failed, "{text}");
    let tester_tree = hosts.b.join(".conclave/worktrees/tester");
    assert_eq!(head_of(&tester_tree), format!("conclave/{third}"));
    assert_eq!(
        std::fs::read_to_string(tester_tree.join("e.txt")).expect("coder's work came along"),
        "e\n"
    );
    assert_eq!(
        head_of(&worktree),
        "HEAD",
        "coder's worktree let go of the branch"
    );
    drop(relay);
    drop(server);
}

#[test]
fn a_host_away_from_the_server_needs_the_shared_remote_to_exist() {
    let hosts = two_hosts();
    let mut merge = conclave_core::config::MergeSection {
        remote: Some("upstream".into()),
        ..Default::default()
    };
    let error =
        WorktreeSteps::new(&hosts.b, &merge, ["coder".to_string()]).expect_err("no such remote");
    let text = format!("{error:#}");
    assert!(
        text.contains("upstream") && text.contains("git remote add"),
        "{text}"
    );
    merge.remote = None;
    let error =
        WorktreeSteps::new(&hosts.b, &merge, ["coder".to_string()]).expect_err("no remote set");
    let text = format!("{error:#}");
    assert!(
        text.contains("[merge] remote") && text.contains("coder"),
        "{text}"
    );
}

fn wait_for_queue(project: &TestProject, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let queue: Value = project.run(&["queue", "--json"]).json();
        if ready(&queue) {
            return queue;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the queue never {what}: {queue}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_queue_whose_remote_is_missing_pauses_saying_so_and_one_on_another_host_lands_nothing() {
    let hosts = two_hosts();
    let a = &hosts.a;
    let config = CONFIG.replace("remote = \"origin\"", "remote = \"team\"");
    std::fs::write(a.root().join("conclave.toml"), &config).expect("config");
    let server = Server::start_command(
        a,
        "server.log",
        &["serve", "--listen", "127.0.0.1:0", "--host", "build-1"],
    );
    let queue = wait_for_queue(a, "paused", |queue| queue["paused"] == true);
    let reason = queue["paused_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("\"team\"") && reason.contains("git remote add"),
        "{queue}"
    );
    drop(server);

    // [merge] host names another host: this server keeps the queue's state but lands nothing.
    let config = CONFIG.replace("[merge]\n", "[merge]\nhost = \"build-3\"\n");
    std::fs::write(a.root().join("conclave.toml"), &config).expect("config");
    let server = Server::start_command(
        a,
        "server-2.log",
        &["serve", "--listen", "127.0.0.1:0", "--host", "build-1"],
    );
    let alice = add_agent(a, "alice", &["--isolation", "worktree"]);
    let task = a.run(&["task", "add", "nothing to change"]).ok();
    a.run_as(&alice, &["task", "claim", &task]).ok();
    a.run_as(&alice, &["task", "done", &task]).ok();
    wait_for_queue(a, "took the entry", |queue| {
        queue["entries"][0]["task"] == task.as_str()
    });
    std::thread::sleep(Duration::from_secs(2));
    let queue: Value = a.run(&["queue", "--json"]).json();
    assert_eq!(queue["entries"][0]["state"], "queued", "{queue}");
    assert!(
        server.log().contains("merge queue runs on another host"),
        "{}",
        server.log()
    );
}

#[test]
fn up_away_from_the_server_refuses_worktree_agents_without_a_shared_remote() {
    let hosts = two_hosts();
    let a = &hosts.a;
    let server = Server::start_command(
        a,
        "server.log",
        &["serve", "--listen", "127.0.0.1:0", "--host", "build-1"],
    );
    let config = CONFIG.replace("remote = \"origin\"\n", "");
    std::fs::write(a.root().join("conclave.toml"), &config).expect("config");
    let run = a.run(&["up", "--server", &server.url, "--host", "build-2"]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.contains("[merge] remote") && run.stderr.contains("coder"),
        "{run:#?}"
    );
    let agents = a.run(&["agent", "list", "--json"]).json();
    assert_eq!(agents["agents"], json!([]), "nothing was registered");
}
