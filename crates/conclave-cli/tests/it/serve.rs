//! `conclave init` and `conclave serve`: creating a project, one server per store, clean shutdown.

use nix::sys::signal::Signal;

use crate::support::{Server, TestProject};

#[test]
fn init_creates_the_state_folder_and_a_commented_config_and_keeps_an_existing_one() {
    let project = TestProject::empty();
    let run = project.run(&["init"]);
    run.ok();
    assert!(
        run.stderr.contains(".conclave") && run.stderr.contains("conclave.toml"),
        "{run:?}"
    );
    assert!(project.state_dir().is_dir());
    let config = std::fs::read_to_string(project.root().join("conclave.toml")).expect("config");
    assert!(
        config.lines().any(|line| line.starts_with('#')),
        "not commented: {config}"
    );

    std::fs::write(project.root().join("conclave.toml"), "[server]\n# mine\n").expect("write");
    project.run(&["init"]).ok();
    let kept = std::fs::read_to_string(project.root().join("conclave.toml")).expect("config");
    assert_eq!(
        kept, "[server]\n# mine\n",
        "init overwrote an existing config"
    );
}

#[test]
fn commands_find_the_project_from_a_subfolder() {
    let project = TestProject::init();
    let _server = Server::start(&project);
    let deep = project.root().join("src/deep");
    std::fs::create_dir_all(&deep).expect("mkdir");
    let mut command = project.command(&crate::support::As::Admin, &["task", "add", "from below"]);
    command.current_dir(&deep);
    assert_eq!(crate::support::run_command(command).ok(), "T-1");
}

#[test]
fn a_second_server_on_the_same_project_is_refused() {
    let project = TestProject::init();
    let first = Server::start(&project);
    let run = project.run(&["serve", "--listen", "127.0.0.1:0"]);
    let stderr = run.fails_with(1);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("already running"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&first.url),
        "the refusal should say where the running one is: {stderr}"
    );
    // The first server is untouched and still the one the project points at.
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project.state_dir().join("server.json")).expect("info"),
    )
    .expect("json");
    assert_eq!(info["pid"].as_u64(), Some(u64::from(first.pid())));
    project.run(&["status"]).ok();
}

#[test]
fn serve_refuses_a_non_loopback_address_without_allow_remote() {
    let project = TestProject::init();
    let stderr = project
        .run(&["serve", "--listen", "0.0.0.0:0"])
        .fails_with(1)
        .to_string();
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    assert!(!project.state_dir().join("server.json").exists());
}

#[test]
fn serve_shuts_down_cleanly_on_sigterm_and_sigint() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let project = TestProject::init();
        let server = Server::start(&project);
        project.run(&["task", "add", "survives"]).ok();
        assert_eq!(
            server.stop_with(signal),
            Some(0),
            "{signal} should end the server cleanly"
        );
        assert!(
            !project.state_dir().join("server.json").exists(),
            "server.json left behind after {signal}"
        );
        // And the next start finds the same state.
        let _again = Server::start(&project);
        assert_eq!(
            project.run(&["task", "show", "T-1", "--json"]).json()["title"],
            "survives"
        );
    }
}

/// `conclave init && conclave up` is a working start even before any agent is configured: `up`
/// serves the project (and says how to add a team) until stopped.
#[test]
fn up_without_agents_serves_the_project_until_stopped() {
    let project = TestProject::init();
    std::fs::write(
        project.root().join("conclave.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let server = Server::start_command(&project, "up.log", &["up"]);
    let id = project.run(&["task", "add", "first task"]).ok();
    assert_eq!(id.trim(), "T-1");
    assert!(
        server.log().contains("names no agents yet"),
        "{}",
        server.log()
    );
    assert_eq!(server.stop_with(Signal::SIGTERM), Some(0));
    assert!(!project.state_dir().join("server.json").exists());
}

#[test]
fn listen_addresses_come_from_up_s_flag_or_the_config_and_localhost_means_loopback() {
    // `up --listen` chooses the in-process server's address.
    let project = TestProject::init();
    let server = Server::start_command(&project, "up.log", &["up", "--listen", "127.0.0.1:0"]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    assert_eq!(server.stop_with(Signal::SIGTERM), Some(0));

    // `listen = "localhost:0"` in conclave.toml is the IPv4 loopback.
    let project = TestProject::init();
    std::fs::write(
        project.root().join("conclave.toml"),
        "[server]\nlisten = \"localhost:0\"\n",
    )
    .expect("config");
    let server = Server::start(&project);
    drop(server);
    let server = Server::start_command(&project, "serve.log", &["serve"]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    drop(server);

    // A listen value that is no address is refused naming where it came from.
    std::fs::write(
        project.root().join("conclave.toml"),
        "[server]\nlisten = \"nowhere:80\"\n",
    )
    .expect("config");
    let stderr = project.run(&["serve"]).fails_with(1).to_string();
    assert!(
        stderr.contains("[server] listen") && !stderr.contains("--listen"),
        "{stderr}"
    );
    let stderr = project
        .run(&["serve", "--listen", "nowhere:80"])
        .fails_with(1)
        .to_string();
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn an_address_in_use_says_how_to_choose_another_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for command in ["serve", "up"] {
        let project = TestProject::init();
        let stderr = project
            .run(&[command, "--listen", &addr])
            .fails_with(1)
            .to_string();
        assert!(
            stderr.contains("--listen") && stderr.contains("[server] listen"),
            "{command}: {stderr}"
        );
    }
}

/// Regression: deleting `server.lock` let a second server run on the same database, whose writes
/// reached neither the first server's live streams nor its inbox waits.
#[test]
fn a_second_server_is_refused_even_when_the_lock_file_was_deleted() {
    let project = TestProject::init();
    let first = Server::start(&project);
    std::fs::remove_file(project.state_dir().join("server.lock")).expect("delete the lock");
    let run = project.run(&["serve", "--listen", "127.0.0.1:0"]);
    let stderr = run.fails_with(1);
    assert!(
        stderr.contains("another conclave server") && stderr.contains(&first.pid().to_string()),
        "{stderr}"
    );
    // Killed, the first server is taken over at once by the next start.
    assert_eq!(first.stop_with(Signal::SIGKILL), None);
    let second = Server::start(&project);
    assert!(!second.url.is_empty());
}
