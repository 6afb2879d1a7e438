//! Text an agent wrote is printed safely: escape sequences in titles, notes and messages reach
//! the terminal escaped (`\u{1b}`), never as raw control characters.

use crate::support::{Server, TestProject, add_agent};

/// Clears the screen and sets the window title, in that order.
const HOSTILE: &str = "fix \u{1b}[2J\u{1b}]0;pwned\u{7} the parser\rdone";

#[test]
fn control_characters_an_agent_wrote_are_escaped_in_every_listing() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let alice = add_agent(&project, "alice", &["--role", "coder"]);
    let bob = add_agent(&project, "bob", &[]);
    project.run_as(&alice, &["task", "add", HOSTILE]).ok();
    project
        .run_as(&alice, &["note", "add", HOSTILE, "--body", HOSTILE])
        .ok();
    project
        .run_as(&alice, &["msg", "send", "bob", HOSTILE])
        .ok();

    for (who, args) in [
        (None, &["task", "list"][..]),
        (None, &["task", "show", "T-1"][..]),
        (None, &["status"][..]),
        (None, &["note", "list"][..]),
        (None, &["msg", "list"][..]),
        (None, &["log"][..]),
        (Some(&bob), &["msg", "inbox"][..]),
    ] {
        let run = match who {
            Some(who) => project.run_as(who, args),
            None => project.run(args),
        };
        let stdout = run.ok();
        assert!(
            !stdout.contains(|c: char| c.is_control() && c != '\n'),
            "{args:?} printed a raw control character: {stdout:?}"
        );
        assert!(stdout.contains("\\u{1b}"), "{args:?}: {stdout}");
    }
}
