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
