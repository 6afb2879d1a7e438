//! `conclave compare`'s own errors, before any way runs (the ways themselves are tested end to
//! end with the real CLI in tests/e2e/compare.rs): exit 1 with what is wrong.

use crate::support::TestProject;

/// A client that is never started: these errors come first.
const NO_CLIENT: (&str, &str) = ("CONCLAVE_CLAUDE_BIN", "/bin/true");

#[test]
fn an_unknown_way_a_bad_budget_an_empty_task_and_a_folder_without_a_commit_are_refused() {
    let project = TestProject::init();
    std::fs::write(project.root().join("task.md"), "Add greet.sh\n").expect("task");
    std::fs::write(project.root().join("empty.md"), "  \n").expect("empty task");
    let compare = |task: &str, ways: &str| {
        project.run_with_env(
            &[NO_CLIENT],
            &["compare", "--task", task, "--check", "true", "--ways", ways],
        )
    };

    let stderr = compare("task.md", "single,solo").fails_with(1).to_string();
    assert!(stderr.contains("unknown way \"solo\""), "{stderr}");
    let stderr = project
        .run_with_env(
            &[NO_CLIENT],
            &[
                "compare", "--task", "task.md", "--check", "true", "--budget", "0",
            ],
        )
        .fails_with(1)
        .to_string();
    assert!(
        stderr.contains("--budget 0: give a positive number"),
        "{stderr}"
    );
    let stderr = compare("empty.md", "single").fails_with(1).to_string();
    assert!(stderr.contains("is empty"), "{stderr}");
    // No git repository here: every way runs in a worktree of one.
    let stderr = compare("task.md", "single").fails_with(1).to_string();
    assert!(
        stderr.contains("not inside a git repository with a commit"),
        "{stderr}"
    );
    assert!(
        !project.state_dir().join("compare").exists()
            || std::fs::read_dir(project.state_dir().join("compare"))
                .map(|mut dir| dir.next().is_none())
                .unwrap_or(true),
        "nothing was written"
    );
}
