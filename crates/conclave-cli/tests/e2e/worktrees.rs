//! `isolation = "worktree"` with the real CLI (issue 11): each agent's `conclave claude` runs in
//! its own worktree, a claim puts it on the task's branch, `done` commits and queues the branch,
//! and the server's merge queue lands it on `conclave/integration` after the check, or sends it
//! back with the conflict.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::claude_or_skip;
use conclave_standin::{Reply, Script, StandIn, StandInHandle};
use serde_json::{Value, json};

use crate::support::{AgentRun, HEADLESS_ARGS, Server, Team, api_key, serial};

const INTEGRATION: &str = "conclave/integration";

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git")?;
    ensure!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A project with `a.txt`, `b.txt` and `shared.txt` committed, a `[merge]` table whose check
/// records each run in `checks.log` (outside the repository), agents alice and bob registered
/// with worktree isolation, tasks for them, and the server started. Answers the team and the
/// check log.
async fn worktree_team(titles: &[&str]) -> Result<(Team, PathBuf, Vec<String>)> {
    let (team, checks) = worktree_project("").await?;
    for agent in ["alice", "bob"] {
        team.conclave(&["agent", "add", agent, "--isolation", "worktree"])
            .await?;
    }
    let mut tasks = Vec::new();
    for title in titles {
        tasks.push(team.conclave(&["task", "add", title]).await?);
    }
    Ok((team, checks, tasks))
}

/// The project of [`worktree_team`] (`more_config` added to `conclave.toml`), its server
/// started, no agent registered yet.
async fn worktree_project(more_config: &str) -> Result<(Team, PathBuf)> {
    let mut team = Team::create().await?;
    let root = team.root().to_path_buf();
    let checks = root.with_extension("checks.log");
    let config = std::fs::read_to_string(root.join("conclave.toml"))?;
    std::fs::write(
        root.join("conclave.toml"),
        format!(
            "{config}\n[merge]\ncheck = \"echo run >> {}\"\ncheck_timeout = \"1m\"\n{more_config}",
            checks.display()
        ),
    )?;
    for (name, text) in [
        ("a.txt", "a\n"),
        ("b.txt", "b\n"),
        ("shared.txt", "one\ntwo\nthree\n"),
    ] {
        std::fs::write(root.join(name), text)?;
    }
    git(&root, &["add", "a.txt", "b.txt", "shared.txt"])?;
    git(&root, &["commit", "--quiet", "-m", "start"])?;
    team.server = Some(Server::start(&root, "127.0.0.1:0").await?);
    Ok((team, checks))
}

fn worktree(team: &Team, agent: &str) -> PathBuf {
    team.path(&format!(".conclave/worktrees/{agent}"))
}

/// `conclave claude --name NAME -- -p PROMPT ...` with git allowed in Bash, run to the end.
async fn run_agent(
    team: &Team,
    claude: &Path,
    stand_in: &StandInHandle,
    name: &str,
) -> Result<AgentRun> {
    let mut env = team.agent_env(claude, &stand_in.url(), name)?;
    // The agent's own git commands (a merge) need an identity; its HOME is a fresh one.
    for variable in ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"] {
        env.set(variable, name);
    }
    for variable in ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"] {
        env.set(variable, format!("{name}@example.com"));
    }
    let mut command = team.agent_command(&env, name, &[]);
    command
        .args(["-p", "work on your task"])
        .args(HEADLESS_ARGS)
        .args(["--allowedTools", "Bash(git merge:*)"]);
    let run = crate::support::run_to_end(command).await?;
    run.ensure_ok()?;
    Ok(run)
}

async fn entry(team: &Team, task: &str) -> Result<Value> {
    let queue = team.conclave_json(&["queue", "--json"]).await?;
    Ok(queue["entries"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["task"] == task).cloned())
        .unwrap_or(Value::Null))
}

async fn wait_for_state(team: &Team, task: &str, state: &str) -> Result<Value> {
    let started = Instant::now();
    loop {
        let entry = entry(team, task).await?;
        if entry["state"] == state {
            return Ok(entry);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "{task} never became {state}: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_runs(checks: &Path) -> usize {
    std::fs::read_to_string(checks)
        .unwrap_or_default()
        .lines()
        .count()
}

/// The text of the last tool result the agent got (its answer to the last tool call).
fn tool_result(stand_in: &StandIn, agent: &str, turn: usize) -> Result<String> {
    let turns = stand_in.main_requests_for(&api_key(agent));
    let results = turns
        .get(turn)
        .with_context(|| format!("{agent} has no turn {turn}: {turns:#?}"))?
        .tool_results();
    ensure!(results.len() == 1 && !results[0].is_error, "{results:?}");
    Ok(results[0].content.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_in_worktrees_change_different_files_and_both_land_after_the_check() -> Result<()>
{
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let (team, checks, tasks) = worktree_team(&["change a", "change b"]).await?;
    let (t1, t2) = (&tasks[0], &tasks[1]);
    let steps = |task: &str, tree: PathBuf, file: &str, text: &str| {
        [
            Reply::tool_use("mcp__conclave__claim", json!({"id": task})),
            Reply::tool_use("Read", json!({"file_path": tree.join(file)})),
            Reply::tool_use(
                "Write",
                json!({"file_path": tree.join(file), "content": text}),
            ),
            Reply::tool_use(
                "mcp__conclave__done",
                json!({"id": task, "summary": format!("{file} changed")}),
            ),
            Reply::text("Done."),
        ]
    };
    let script = Script::new()
        .agent(
            &api_key("alice"),
            steps(t1, worktree(&team, "alice"), "a.txt", "a by alice\n"),
        )
        .agent(
            &api_key("bob"),
            steps(t2, worktree(&team, "bob"), "b.txt", "b by bob\n"),
        );
    let stand_in = StandIn::start(script).await?;
    let (alice, bob) = tokio::join!(
        run_agent(&team, &claude, &stand_in, "alice"),
        run_agent(&team, &claude, &stand_in, "bob")
    );
    let (_alice, _bob) = (alice?, bob?);

    let claimed = tool_result(&stand_in, "alice", 1)?;
    assert!(
        claimed.contains(&format!("Your worktree is on its branch conclave/{t1}")),
        "{claimed}"
    );
    let done = tool_result(&stand_in, "alice", 4)?;
    assert!(
        done.contains(&format!("conclave/{t1}")) && done.contains("merge queue"),
        "{done}"
    );
    for task in [t1, t2] {
        wait_for_state(&team, task, "landed").await?;
        let shown = team
            .conclave_json(&["task", "show", task, "--json"])
            .await?;
        assert_eq!(shown["status"], "done", "{shown}");
    }
    let root = team.root();
    assert_eq!(
        git(root, &["show", &format!("{INTEGRATION}:a.txt")])?,
        "a by alice"
    );
    assert_eq!(
        git(root, &["show", &format!("{INTEGRATION}:b.txt")])?,
        "b by bob"
    );
    assert_eq!(check_runs(&checks), 2, "the check ran for each landing");
    // Each agent edited its own worktree; the project's files are untouched.
    assert_eq!(std::fs::read_to_string(root.join("a.txt"))?, "a\n");
    let message = git(
        root,
        &["log", "-1", "--format=%B", &format!("conclave/{t1}")],
    )?;
    assert!(
        message.starts_with(&format!("{t1}: change a")) && message.contains("a.txt changed"),
        "{message}"
    );
    // The leases and the record speak of the project's files.
    let events = crate::support::events(&team).await?;
    let touched: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "file.touched")
        .collect();
    let record = format!("{touched:?}");
    assert!(
        record.contains("\"a.txt\"")
            && record.contains("\"b.txt\"")
            && !record.contains("worktrees"),
        "{touched:#?}"
    );
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_of_two_changes_to_the_same_lines_is_sent_back_fixed_and_landed() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let (team, checks, tasks) = worktree_team(&["shared by alice", "shared by bob"]).await?;
    let (t1, t2) = (&tasks[0], &tasks[1]);
    let (alice_tree, bob_tree) = (worktree(&team, "alice"), worktree(&team, "bob"));
    let shared = |tree: &Path| tree.join("shared.txt");
    let change = |task: &str, tree: &Path, text: &str| {
        vec![
            Reply::tool_use("mcp__conclave__claim", json!({"id": task})),
            Reply::tool_use("Read", json!({"file_path": shared(tree)})),
            Reply::tool_use("Write", json!({"file_path": shared(tree), "content": text})),
            Reply::tool_use("mcp__conclave__done", json!({"id": task})),
            Reply::text("Done."),
        ]
    };
    let mut bob = change(t2, &bob_tree, "ONE bob\ntwo\nthree\n");
    // Bob's second session: the task came back with the conflict; he merges the integration
    // branch in, resolves, and finishes again (done commits the merge).
    bob.extend([
        Reply::tool_use(
            "Bash",
            json!({"command": format!("git merge {INTEGRATION}"), "description": "merge"}),
        ),
        Reply::tool_use("Read", json!({"file_path": shared(&bob_tree)})),
        Reply::tool_use(
            "Write",
            json!({"file_path": shared(&bob_tree), "content": "ONE alice and bob\ntwo\nthree\n"}),
        ),
        Reply::tool_use(
            "mcp__conclave__done",
            json!({"id": t2, "summary": "merged alice's change"}),
        ),
        Reply::text("Fixed."),
    ]);
    let script = Script::new()
        .agent(
            &api_key("alice"),
            change(t1, &alice_tree, "ONE alice\ntwo\nthree\n"),
        )
        .agent(&api_key("bob"), bob);
    let stand_in = StandIn::start(script).await?;

    // Both finish while the queue is paused, so that both branches start from the same tip.
    team.conclave(&["queue", "pause"]).await?;
    run_agent(&team, &claude, &stand_in, "alice").await?;
    run_agent(&team, &claude, &stand_in, "bob").await?;
    team.conclave(&["queue", "resume"]).await?;
    wait_for_state(&team, t1, "landed").await?;
    let sent_back = wait_for_state(&team, t2, "sent_back").await?;
    let outcome = sent_back["outcome"].as_str().unwrap_or_default();
    assert!(
        outcome.contains("shared.txt") && outcome.contains("ONE bob"),
        "{sent_back}"
    );
    let back = team.conclave_json(&["task", "show", t2, "--json"]).await?;
    assert_eq!(back["status"], "in_progress", "{back}");

    // Bob's next session is told of the conflict and fixes it.
    run_agent(&team, &claude, &stand_in, "bob").await?;
    let turns = stand_in.main_requests_for(&api_key("bob"));
    let second_session = turns.get(5).context("bob's second session")?;
    let told = serde_json::to_string(second_session.messages())?;
    assert!(
        told.contains("conflicts with the integration branch") && told.contains("shared.txt"),
        "{told}"
    );
    // git merge exits 1 on a conflict, so the CLI flags the result as an error.
    let merged = turns.get(6).context("bob's merge")?.tool_results();
    assert!(
        merged.len() == 1 && merged[0].content.contains("CONFLICT"),
        "the merge shows the conflict: {merged:?}"
    );
    wait_for_state(&team, t2, "landed").await?;
    let done = team.conclave_json(&["task", "show", t2, "--json"]).await?;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        git(team.root(), &["show", &format!("{INTEGRATION}:shared.txt")])?,
        "ONE alice and bob\ntwo\nthree"
    );
    assert_eq!(check_runs(&checks), 2, "no check runs for the conflict");
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_a_file_leased_in_another_worktree_goes_ahead_with_a_warning() -> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let (team, _checks, tasks) = worktree_team(&["shared by alice", "shared by bob"]).await?;
    let (t1, t2) = (&tasks[0], &tasks[1]);
    let (alice_tree, bob_tree) = (worktree(&team, "alice"), worktree(&team, "bob"));
    let edit = |task: &str, tree: &Path, text: &str| {
        vec![
            Reply::tool_use("mcp__conclave__claim", json!({"id": task})),
            Reply::tool_use("Read", json!({"file_path": tree.join("shared.txt")})),
            Reply::tool_use(
                "Write",
                json!({"file_path": tree.join("shared.txt"), "content": text}),
            ),
            Reply::text("Editing."),
        ]
    };
    let script = Script::new()
        .agent(
            &api_key("alice"),
            edit(t1, &alice_tree, "ONE alice\ntwo\nthree\n"),
        )
        .agent(
            &api_key("bob"),
            edit(t2, &bob_tree, "ONE bob\ntwo\nthree\n"),
        );
    let stand_in = StandIn::start(script).await?;
    // Alice keeps her task (and the lease her edit took); then bob edits the same file.
    run_agent(&team, &claude, &stand_in, "alice").await?;
    run_agent(&team, &claude, &stand_in, "bob").await?;

    assert_eq!(
        std::fs::read_to_string(bob_tree.join("shared.txt"))?,
        "ONE bob\ntwo\nthree\n",
        "the edit went ahead in bob's worktree"
    );
    let turns = stand_in.main_requests_for(&api_key("bob"));
    let after_write = turns.get(3).context("bob's turn after the write")?;
    // The hook's context follows the tool result in its own message, so the result is not the
    // last message of the request.
    let results = after_write.all_tool_results();
    let write = results.last().context("the write's result")?;
    ensure!(!write.is_error, "{results:?}");
    let told = serde_json::to_string(after_write.messages())?;
    assert!(
        told.contains("shared.txt is leased by alice") && told.contains(t1.as_str()),
        "bob is told who else changes the file: {told}"
    );
    let events = crate::support::events(&team).await?;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "message.sent"
                && e.to_string().contains("bob is editing shared.txt")),
        "alice is told: {events:#?}"
    );
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}

/// A pipeline in worktrees (issues 11 and 12): the coder's pass commits its work on the task's
/// branch and hands it on; the reviewer's claim puts its own worktree on that branch, where it
/// reads the coder's change; only the reviewer's (last) pass queues the branch, which lands after
/// the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_pipeline_shares_the_branch_between_stages_and_lands_after_the_last_pass()
-> Result<()> {
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;
    let (team, checks) = worktree_project(
        "\n[[pipeline]]\nname = \"reviewed\"\nstages = [\"coder\", \"reviewer\"]\n",
    )
    .await?;
    for (agent, role) in [("carol", "coder"), ("rex", "reviewer")] {
        team.conclave(&[
            "agent",
            "add",
            agent,
            "--role",
            role,
            "--isolation",
            "worktree",
        ])
        .await?;
    }
    let task = team
        .conclave(&["task", "add", "change a", "--pipeline", "reviewed"])
        .await?;
    let (carol_tree, rex_tree) = (worktree(&team, "carol"), worktree(&team, "rex"));
    let script = Script::new()
        .agent(
            &api_key("carol"),
            [
                Reply::tool_use("mcp__conclave__claim", json!({"id": task})),
                Reply::tool_use("Read", json!({"file_path": carol_tree.join("a.txt")})),
                Reply::tool_use(
                    "Write",
                    json!({"file_path": carol_tree.join("a.txt"), "content": "a by carol\n"}),
                ),
                Reply::tool_use(
                    "mcp__conclave__done",
                    json!({"id": task, "summary": "a changed"}),
                ),
                Reply::text("Passed on."),
            ],
        )
        .agent(
            &api_key("rex"),
            [
                Reply::tool_use("mcp__conclave__claim", json!({"id": task})),
                Reply::tool_use("Read", json!({"file_path": rex_tree.join("a.txt")})),
                Reply::tool_use(
                    "mcp__conclave__done",
                    json!({"id": task, "summary": "reviewed: fine"}),
                ),
                Reply::text("Reviewed."),
            ],
        );
    let stand_in = StandIn::start(script).await?;
    run_agent(&team, &claude, &stand_in, "carol").await?;
    let passed = tool_result(&stand_in, "carol", 4)?;
    assert!(passed.contains("handed to its next stage"), "{passed}");
    assert_eq!(
        entry(&team, &task).await?,
        Value::Null,
        "nothing queued yet"
    );
    assert_eq!(
        git(&carol_tree, &["rev-parse", "--abbrev-ref", "HEAD"])?,
        "HEAD",
        "the coder's worktree let go of the branch"
    );

    run_agent(&team, &claude, &stand_in, "rex").await?;
    let branch = format!("conclave/{task}");
    let claimed = tool_result(&stand_in, "rex", 1)?;
    assert!(
        claimed.contains(&branch) && claimed.contains("with the work already on it"),
        "{claimed}"
    );
    let read = tool_result(&stand_in, "rex", 2)?;
    assert!(
        read.contains("a by carol"),
        "the reviewer reads the coder's work: {read}"
    );
    wait_for_state(&team, &task, "landed").await?;
    let done = team
        .conclave_json(&["task", "show", &task, "--json"])
        .await?;
    assert_eq!(done["status"], "done", "{done}");
    let root = team.root();
    assert_eq!(
        git(root, &["show", &format!("{INTEGRATION}:a.txt")])?,
        "a by carol"
    );
    let log = git(root, &["log", "--format=%s", &branch])?;
    assert!(log.contains("(stage 1/2: coder)"), "{log}");
    assert_eq!(check_runs(&checks), 1, "one check, after the last pass");
    assert!(stand_in.exhausted_requests().is_empty());
    Ok(())
}
