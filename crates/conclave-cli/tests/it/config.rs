//! `conclave.toml` settings that could not work are refused by every command that starts a team.

use crate::support::TestProject;

#[test]
fn serve_up_and_claude_refuse_worktree_isolation_without_a_merge_table() {
    let project = TestProject::init();
    let config = project.root().join("conclave.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[[agent]]\nname = \"coder\"\nisolation = \"worktree\"\n");
    std::fs::write(&config, &text).expect("write");
    for args in [
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["up"],
        &["claude", "--name", "alice"],
    ] {
        let run = project.run(args);
        assert_ne!(run.code, 0, "{args:?} started with a refused key: {run:#?}");
        assert!(
            run.stderr
                .contains("\"coder\": isolation = \"worktree\" needs a [merge] table"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert!(
        !project.state_dir().join("server.json").exists(),
        "nothing may start"
    );
}

/// An agent whose client cannot be found (here `CONCLAVE_CLAUDE_BIN` names no file) stops `up`
/// before anything starts: exit 1, the cause and the agent named, no server and no supervisor.
#[test]
fn up_refuses_a_missing_client_before_it_serves_anything() {
    let project = TestProject::init();
    let config = project.root().join("conclave.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[[agent]]\nname = \"coder\"\n");
    std::fs::write(&config, &text).expect("write");
    let missing = project.root().join("no-such-claude");
    let missing = missing.to_string_lossy();
    for args in [&["up"][..], &["up", "--detach"]] {
        let run = project.run_with_env(&[("CONCLAVE_CLAUDE_BIN", &missing)], args);
        let stderr = run.fails_with(1);
        assert!(
            stderr.contains("cannot start agent coder") && stderr.contains("not a file"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("dashboard"),
            "{args:?}: nothing served: {stderr}"
        );
    }
    for file in ["server.json", "supervisor.json"] {
        assert!(
            !project.state_dir().join(file).exists(),
            "{file}: nothing may start"
        );
    }
}
