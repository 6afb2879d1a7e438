//! `conclave task show ID --diff` with real git: a worktree agent's task waiting for approval
//! shows what its branch changed since it forked from the integration branch; a task without a
//! branch says it has none.

use conclave_git::{AgentWorktrees, Identity, Repo};

use crate::support::{Server, TestProject, add_agent, git};

const INTEGRATION: &str = "conclave/integration";

#[test]
fn task_show_diff_prints_the_branch_changes_of_a_task_waiting_for_approval() {
    let project = TestProject::init();
    let root = project.root();
    git(&root, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(root.join("conclave.toml"), "[merge]\n").expect("config");
    std::fs::write(root.join(".gitignore"), ".conclave/\n").expect("ignore");
    std::fs::write(root.join("a.txt"), "a\n").expect("file");
    git(&root, &["add", "--all"]);
    git(&root, &["commit", "--quiet", "-m", "start"]);
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--isolation", "worktree"]);
    let repo = Repo::open(&root, Identity::default()).expect("repo");
    repo.ensure_integration_branch(INTEGRATION, None)
        .expect("integration branch");
    let trees = AgentWorktrees::new(repo).expect("worktrees");

    let id = project.run(&["task", "add", "Change a", "--approve"]).ok();
    project.run_as(&alice, &["task", "claim", &id]).ok();
    let checkout = trees
        .start_task("alice", &id, INTEGRATION)
        .expect("start task");
    std::fs::write(checkout.path.join("a.txt"), "a by alice\n").expect("write");
    git(
        &checkout.path,
        &["commit", "--quiet", "-am", "alice's change"],
    );
    project
        .run_as(&alice, &["task", "done", &id, "--summary", "a changed"])
        .ok();

    let shown = project.run(&["task", "show", &id, "--diff"]).ok();
    assert!(shown.contains("Change a"), "the task first: {shown}");
    assert!(
        shown.contains(&format!(
            "diff of conclave/{id} against {INTEGRATION}: 1 file(s), +1 -1"
        )),
        "{shown}"
    );
    assert!(shown.contains("  a.txt  +1 -1"), "{shown}");
    assert!(shown.contains("@@ -1 +1 @@\n-a\n+a by alice"), "{shown}");

    let json = project
        .run(&["task", "show", &id, "--diff", "--json"])
        .json();
    assert_eq!(json["branch"], format!("conclave/{id}"));
    assert_eq!(json["files"][0]["path"], "a.txt");
    assert_eq!(json["truncated"], false);

    let shared = project.run(&["task", "add", "Nothing on a branch"]).ok();
    let run = project.run(&["task", "show", &shared, "--diff"]);
    let stderr = run.fails_with(1);
    assert!(stderr.contains("has no branch"), "{stderr}");
}
