//! Write attribution (issue 11) with real git and a real `conclave serve`: `Bash` calls go
//! through the `conclave hook` forwarder as Claude Code sends them (`PreToolUse`, the command,
//! `PostToolUse`, same `tool_use_id`), and what the command wrote is found in the log, on the
//! task and in the holder's inbox.

use std::process::Command;

use serde_json::{Value, json};

use crate::hook::hook;
use crate::support::{As, Server, TestProject, add_agent, git};

/// A project in a git repository with a few files committed.
fn git_project() -> TestProject {
    let project = TestProject::init();
    let root = project.root();
    git(&root, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(root.join(".gitignore"), ".conclave/\n").expect("ignore");
    std::fs::create_dir_all(root.join("src")).expect("src");
    for (name, text) in [
        ("src/parser.rs", "fn old() {}\n"),
        ("src/lib.rs", "mod parser;\n"),
        ("b.txt", "b\n"),
        ("c.txt", "c\n"),
        (
            "Cargo.toml",
            "[package]\nname = \"x\"\nversion = \"0.1.0\"\n\n[dependencies]\n",
        ),
        ("Cargo.lock", "version = 4\n"),
    ] {
        std::fs::write(root.join(name), text).expect("file");
    }
    git(&root, &["add", "--all"]);
    git(&root, &["commit", "--quiet", "-m", "start"]);
    project
}

/// One shell tool call as Claude Code reports it around running it.
struct Shell<'a> {
    project: &'a TestProject,
    server: &'a Server,
    who: &'a As,
    id: &'a str,
    command: &'a str,
}

impl Shell<'_> {
    fn input(&self, event: &str) -> Value {
        json!({
            "session_id": format!("session-{}", self.id),
            "hook_event_name": event,
            "cwd": self.project.root(),
            "tool_name": "Bash",
            "tool_use_id": self.id,
            "tool_input": {"command": self.command},
        })
    }

    fn pre(&self) {
        let run = hook(
            self.project,
            self.who,
            &self.server.url,
            &["pre-tool-use"],
            &self.input("PreToolUse"),
        );
        assert_eq!((run.code, run.stdout.trim()), (0, "{}"), "{run:#?}");
    }

    fn run(&self) {
        let status = Command::new("sh")
            .args(["-c", self.command])
            .current_dir(self.project.root())
            .status()
            .expect("run the command");
        assert!(status.success(), "{}", self.command);
    }

    fn post(&self) {
        let run = hook(
            self.project,
            self.who,
            &self.server.url,
            &["post-tool-use"],
            &self.input("PostToolUse"),
        );
        assert_eq!(run.code, 0, "{run:#?}");
    }

    /// The whole call: snapshot, command, comparison.
    fn call(&self) {
        self.pre();
        self.run();
        self.post();
    }
}

fn events(project: &TestProject, kind: &str) -> Vec<Value> {
    let log = project
        .run(&["log", "--kind", kind, "--json", "--limit", "1000"])
        .json();
    log["events"].as_array().expect("events").clone()
}

/// `file.touched` events of shell commands, as (agent, path, change).
fn shell_touches(project: &TestProject) -> Vec<(String, String, String)> {
    let mut touches: Vec<(String, String, String)> = events(project, "file.touched")
        .iter()
        .filter(|event| event["data"]["tool"] == "Bash")
        .map(|event| {
            (
                event["agent"].as_str().unwrap_or("").to_string(),
                event["data"]["path"].as_str().unwrap_or("").to_string(),
                event["data"]["change"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    touches.sort();
    touches
}

fn edit_hooks(project: &TestProject, server: &Server, who: &As, tool: &str, file: &str) {
    for event in ["pre-tool-use", "post-tool-use"] {
        let input = json!({
            "session_id": "edit-session",
            "cwd": project.root(),
            "tool_name": tool,
            "tool_input": {"file_path": project.root().join(file), "content": "x"},
        });
        let run = hook(project, who, &server.url, &[event], &input);
        assert_eq!(run.code, 0, "{run:#?}");
        assert!(!run.stdout.contains("deny"), "{run:#?}");
    }
}

#[test]
fn sed_through_bash_on_a_file_leased_by_another_agent_alerts_naming_both() {
    let project = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    let bob = add_agent(&project, "bob", &[]);
    project.run_as(&bob, &["lock", "src/parser.rs"]).ok();
    let task = project.run(&["task", "add", "rename old"]).ok();
    project.run_as(&alice, &["task", "claim", &task]).ok();

    let command = "sed -i 's/old/new/' src/parser.rs";
    Shell {
        project: &project,
        server: &server,
        who: &alice,
        id: "toolu_sed",
        command,
    }
    .call();

    let alerts = events(&project, "agent.alert");
    let [alert] = alerts.as_slice() else {
        panic!("one alert expected: {alerts:#?}");
    };
    let message = alert["data"]["message"].as_str().expect("message");
    assert_eq!(alert["data"]["cause"], "shell_write");
    assert_eq!(alert["agent"], "alice");
    assert_eq!(alert["task"], task.as_str());
    for wanted in ["alice", "bob", command, "src/parser.rs"] {
        assert!(message.contains(wanted), "{wanted:?} not in {message:?}");
    }
    // The write is still alice's, with her task and the command.
    let touched: Vec<Value> = events(&project, "file.touched");
    let shell = touched
        .iter()
        .find(|event| event["data"]["tool"] == "Bash")
        .expect("a shell file.touched");
    assert_eq!(shell["agent"], "alice");
    assert_eq!(shell["task"], task.as_str());
    assert_eq!(
        shell["data"],
        json!({"path": "src/parser.rs", "tool": "Bash", "command": command, "change": "modified"})
    );
    // The holder is told, urgently.
    let inbox = project.run_as(&bob, &["msg", "inbox", "--json"]).json();
    let text = inbox.to_string();
    assert!(
        text.contains("alice") && text.contains("src/parser.rs") && text.contains("sed -i"),
        "{inbox}"
    );
    assert!(text.contains("\"urgent\":true"), "{inbox}");

    // Alice writing a file she leases herself, or one nobody leases, raises nothing.
    project.run_as(&alice, &["lock", "src/lib.rs"]).ok();
    Shell {
        project: &project,
        server: &server,
        who: &alice,
        id: "toolu_own",
        command: "echo '// more' >> src/lib.rs && echo c2 >> c.txt",
    }
    .call();
    assert_eq!(events(&project, "agent.alert").len(), 1);
    assert_eq!(
        shell_touches(&project),
        vec![
            ("alice".into(), "c.txt".into(), "modified".into()),
            ("alice".into(), "src/lib.rs".into(), "modified".into()),
            ("alice".into(), "src/parser.rs".into(), "modified".into()),
        ]
    );
}

#[test]
fn created_and_deleted_files_are_attributed_and_earlier_edits_are_not() {
    let project = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    let root = project.root();
    // Already changed before the command (an Edit of its own): not the command's doing.
    std::fs::write(root.join("c.txt"), "edited before\n").expect("write");
    Shell {
        project: &project,
        server: &server,
        who: &alice,
        id: "toolu_gen",
        command: "rm b.txt && mkdir -p gen && echo 'pub fn f() {}' > gen/out.rs",
    }
    .call();
    assert_eq!(
        shell_touches(&project),
        vec![
            ("alice".into(), "b.txt".into(), "deleted".into()),
            ("alice".into(), "gen/out.rs".into(), "created".into()),
        ]
    );
    // A post without its pre (a restart in between, another client) records nothing.
    let lost = Shell {
        project: &project,
        server: &server,
        who: &alice,
        id: "toolu_lost",
        command: "echo lost > lost.txt",
    };
    lost.run();
    lost.post();
    assert_eq!(shell_touches(&project).len(), 2);
}

#[test]
fn a_cargo_add_style_lockfile_change_is_flagged_on_the_task() {
    let project = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    let task = project.run(&["task", "add", "add serde"]).ok();
    project.run_as(&alice, &["task", "claim", &task]).ok();
    // What `cargo add serde` does to the tree: the manifest and the lockfile.
    let command = "printf 'serde = \"1\"\\n' >> Cargo.toml && printf '[[package]]\\nname = \"serde\"\\n' >> Cargo.lock";
    Shell {
        project: &project,
        server: &server,
        who: &alice,
        id: "toolu_add",
        command,
    }
    .call();
    // An Edit of a manifest is flagged as well.
    edit_hooks(&project, &server, &alice, "Write", "web/package.json");

    let shown = project.run(&["task", "show", &task, "--json"]).json();
    let changes = shown["dependency_changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no dependency_changes: {shown}"));
    let summary: Vec<(String, String, String, String)> = changes
        .iter()
        .map(|change| {
            (
                change["path"].as_str().unwrap_or("").to_string(),
                change["file"].as_str().unwrap_or("").to_string(),
                change["tool"].as_str().unwrap_or("").to_string(),
                change["agent"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "Cargo.lock".into(),
                "lockfile".into(),
                "Bash".into(),
                "alice".into()
            ),
            (
                "Cargo.toml".into(),
                "manifest".into(),
                "Bash".into(),
                "alice".into()
            ),
            (
                "web/package.json".into(),
                "manifest".into(),
                "Write".into(),
                "alice".into()
            ),
        ]
    );
    assert_eq!(changes[0]["ecosystem"], "cargo");
    assert_eq!(changes[0]["command"], command);
    assert_eq!(changes[2]["ecosystem"], "npm");
    let text = project.run(&["task", "show", &task]).ok();
    assert!(
        text.contains("deps:      Cargo.lock (cargo lockfile) by alice via Bash: printf"),
        "{text}"
    );
    // The list of tasks stays lean.
    let list = project.run(&["task", "list", "--json"]).json();
    assert!(!list.to_string().contains("dependency_changes"), "{list}");
}

#[test]
fn concurrent_commands_make_a_change_ambiguous_and_another_agents_edit_is_not_the_shells() {
    let project = git_project();
    let server = Server::start(&project);
    let alice = add_agent(&project, "alice", &[]);
    let bob = add_agent(&project, "bob", &[]);
    let alices = Shell {
        project: &project,
        server: &server,
        who: &alice,
        id: "toolu_a",
        command: "echo by-someone > shared-out.txt",
    };
    let bobs = Shell {
        project: &project,
        server: &server,
        who: &bob,
        id: "toolu_b",
        command: "true",
    };
    // Both commands run in the shared tree at once; one of them writes the file.
    alices.pre();
    bobs.pre();
    alices.run();
    // Meanwhile bob edits c.txt with his Edit tool: that is his, not alice's command's.
    edit_hooks(&project, &server, &bob, "Edit", "c.txt");
    std::fs::write(project.root().join("c.txt"), "bob's edit\n").expect("write");
    bobs.post();
    alices.post();

    let touched = events(&project, "file.touched");
    let shell: Vec<&Value> = touched
        .iter()
        .filter(|event| event["data"]["tool"] == "Bash")
        .collect();
    let by = |agent: &str| -> Value {
        shell
            .iter()
            .find(|event| event["agent"] == agent && event["data"]["path"] == "shared-out.txt")
            .map(|event| event["data"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(by("alice")["ambiguous"], true, "{shell:#?}");
    assert_eq!(by("alice")["candidates"], json!(["bob"]));
    assert_eq!(by("bob")["ambiguous"], true, "{shell:#?}");
    assert_eq!(by("bob")["candidates"], json!(["alice"]));
    assert!(
        !shell.iter().any(|event| event["data"]["path"] == "c.txt"),
        "bob's Edit of c.txt was put on a shell command: {shell:#?}"
    );
    assert!(events(&project, "agent.alert").is_empty());
}

/// `GET /api/overlaps` as the admin.
fn overlaps(project: &TestProject, server: &Server) -> Value {
    let token = std::fs::read_to_string(project.state_dir().join("admin.token")).expect("token");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("{}/api/overlaps", server.url))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("GET /api/overlaps");
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.expect("JSON")
    })
}

#[test]
fn overlaps_name_the_files_two_open_worktree_branches_both_changed_committed_or_not() {
    use conclave_git::{AgentWorktrees, Identity, Repo};
    const INTEGRATION: &str = "conclave/integration";
    let project = git_project();
    let server = Server::start(&project);
    let repo = Repo::open(&project.root(), Identity::default()).expect("repo");
    repo.ensure_integration_branch(INTEGRATION, None)
        .expect("integration branch");
    let trees = AgentWorktrees::new(repo).expect("worktrees");
    let mut started = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let agent = add_agent(&project, name, &["--isolation", "worktree"]);
        let task = project
            .run(&["task", "add", &format!("{name}'s work")])
            .ok();
        project.run_as(&agent, &["task", "claim", &task]).ok();
        let checkout = trees.start_task(name, &task, INTEGRATION).expect("start");
        started.push((task, checkout.path));
    }
    let [(t1, alice), (t2, bob), (_, carol)] = &started[..] else {
        panic!("three agents")
    };
    // Alice commits her change; Bob has not committed his yet; Carol works elsewhere.
    std::fs::write(alice.join("src/parser.rs"), "fn alice() {}\n").expect("write");
    git(alice, &["commit", "--quiet", "-am", "alice"]);
    std::fs::write(bob.join("src/parser.rs"), "fn bob() {}\n").expect("write");
    std::fs::write(bob.join("b.txt"), "bob\n").expect("write");
    std::fs::write(carol.join("c.txt"), "carol\n").expect("write");

    let report = overlaps(&project, &server);
    assert_eq!(report["git"], true);
    assert_eq!(
        report["branches"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert_eq!(
        report["overlaps"],
        json!([{
            "first": {"task": t1, "branch": format!("conclave/{t1}"), "agent": "alice"},
            "second": {"task": t2, "branch": format!("conclave/{t2}"), "agent": "bob"},
            "files": ["src/parser.rs"],
        }])
    );
}
