//! Past one machine, on loopback (docs/scale-out.md): a server with a certificate serves HTTPS
//! to the CLI and to the command hook, trusting a private CA; `agent add --print-env` hands an
//! agent to another shell; the local relay carries requests to the next server when the first
//! one dies, and waits for a server being restarted. The same over real network interfaces,
//! with the supervisor on a second "host", is in tests/hosts.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    As, COMMAND_DEADLINE, Run, Server, TestProject, add_agent, closed_port, finish,
};

/// A private CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files in
/// `dir`: `ca.pem`, `cert.pem`, `key.pem`.
fn write_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir tls");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "conclave test CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("ca key"))
            .expect("ca");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    let cert = params.signed_by(&key, &ca).expect("sign");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert.pem");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key.pem");
}

/// Runs `conclave hook <event>` with `input` on stdin and `env` set.
fn hook(project: &TestProject, who: &As, env: &[(&str, &str)], event: &str, input: &Value) -> Run {
    let mut command = project.command(who, &["hook", event]);
    command.env_remove("CONCLAVE_CA_CERT");
    for (name, value) in env {
        command.env(name, value);
    }
    command
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
    finish(child, COMMAND_DEADLINE)
}

fn edit_of(project: &TestProject, file: &str) -> Value {
    json!({
        "session_id": "s-1",
        "hook_event_name": "PreToolUse",
        "tool_name": "Write",
        "tool_input": {"file_path": project.root().join(file), "content": "x"},
    })
}

#[test]
fn a_server_with_a_certificate_serves_https_to_the_cli_and_the_hook() {
    let project = TestProject::init();
    write_certificates(&project.root().join("tls"));
    std::fs::write(
        project.root().join("conclave.toml"),
        "[server]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\ntls_ca = \"tls/ca.pem\"\n",
    )
    .expect("conclave.toml");
    let server = Server::start(&project);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    // The clone's [server] tls_ca is trusted: commands work as over plain HTTP.
    let status = project.run(&["status", "--json"]).json();
    assert!(status["last_seq"].is_i64(), "{status}");
    let alice = add_agent(&project, "alice", &[]);

    // CONCLAVE_CA_CERT wins over tls_ca: another CA does not vouch for this server.
    let other = tempfile::tempdir().expect("tempdir");
    write_certificates(other.path());
    let other_ca = other.path().join("ca.pem");
    let refused = project.run_with_env(
        &[("CONCLAVE_CA_CERT", &other_ca.to_string_lossy())],
        &["status", "--json"],
    );
    assert_ne!(refused.code, 0, "{refused:#?}");
    // Plain HTTP to the TLS port gets no answer the client takes.
    let plain = server.url.replacen("https://", "http://", 1);
    let refused = project.run_with_env(&[("CONCLAVE_URL", &plain)], &["status", "--json"]);
    assert_ne!(refused.code, 0, "{refused:#?}");

    // The command hook speaks TLS with the CA of CONCLAVE_CA_CERT.
    let ca = project.root().join("tls/ca.pem");
    let ca = ca.to_string_lossy();
    let env = [
        ("CONCLAVE_URL", server.url.as_str()),
        ("CONCLAVE_CA_CERT", &ca),
    ];
    let run = hook(
        &project,
        &alice,
        &env,
        "pre-tool-use",
        &edit_of(&project, "src/a.rs"),
    );
    assert_eq!(
        (run.code, run.stdout.trim(), run.stderr.as_str()),
        (0, "{}", "")
    );
    let status = project.run(&["status", "--json"]).json();
    assert!(
        status["leases"].to_string().contains("src/a.rs"),
        "the hook's lease went through TLS: {status}"
    );
    // Agents that `up`/`claude` start reach an HTTPS server through the local relay, in plain
    // HTTP on loopback: the relay's client holds the CA.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let admin_token = std::fs::read_to_string(project.state_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let upstream = conclave_client::Client::with_ca(
        server.url.clone(),
        admin_token,
        None,
        Some(&project.root().join("tls/ca.pem")),
    )
    .expect("client");
    let relay = runtime
        .block_on(conclave_supervisor::relay::Relay::start(upstream))
        .expect("relay");
    let env = [("CONCLAVE_URL", relay.url())];
    let run = hook(
        &project,
        &alice,
        &env,
        "pre-tool-use",
        &edit_of(&project, "src/c.rs"),
    );
    assert_eq!(
        (run.code, run.stdout.trim(), run.stderr.as_str()),
        (0, "{}", "")
    );
    let status = project.run(&["status", "--json"]).json();
    assert!(
        status["leases"].to_string().contains("src/c.rs"),
        "{status}"
    );
    drop(relay);

    // Without the CA, the hook fails open with a warning that names the certificate.
    let env = [("CONCLAVE_URL", server.url.as_str())];
    let run = hook(
        &project,
        &alice,
        &env,
        "pre-tool-use",
        &edit_of(&project, "src/b.rs"),
    );
    assert_eq!(run.stdout.trim(), "{}", "{run:#?}");
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{run:#?}"
    );
}

/// `conclave up` serving the project in-process speaks HTTPS too.
#[test]
fn up_serving_in_process_speaks_https() {
    let project = TestProject::init();
    write_certificates(&project.root().join("tls"));
    std::fs::write(
        project.root().join("conclave.toml"),
        "[server]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\ntls_ca = \"tls/ca.pem\"\n",
    )
    .expect("conclave.toml");
    let server = Server::start_command(&project, "up.log", &["up", "--listen", "127.0.0.1:0"]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let status = project.run(&["status", "--json"]).json();
    assert!(status["last_seq"].is_i64(), "{status}");
    let plain = server.url.replacen("https://", "http://", 1);
    let refused = project.run_with_env(&[("CONCLAVE_URL", &plain)], &["status", "--json"]);
    assert_ne!(refused.code, 0, "plain HTTP is not served: {refused:#?}");
}

#[test]
fn print_env_hands_an_agent_to_another_shell() {
    let project = TestProject::init();
    let server = Server::start(&project);
    let url = server.url.replace("127.0.0.1", "localhost");
    let run = project.run_with_env(
        &[("CONCLAVE_URL", &url)],
        &[
            "agent",
            "add",
            "far-coder",
            "--role",
            "coder",
            "--print-env",
        ],
    );
    let lines = run.ok();
    assert!(
        lines.contains("export CONCLAVE_AGENT='far-coder'"),
        "{lines}"
    );
    assert!(
        lines.contains(&format!("export CONCLAVE_URL='{url}'")),
        "{lines}"
    );
    // localhost is not where another host finds this one: the note says so.
    assert!(
        run.stderr.contains("not an address another host reaches"),
        "{run:#?}"
    );

    // A shell that runs the lines acts as the agent.
    let mut shell = std::process::Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("{lines}\nexec \"$0\" status --json",))
        .arg(crate::support::BIN)
        .current_dir(project.root())
        .env_remove("CONCLAVE_URL")
        .env_remove("CONCLAVE_AGENT")
        .env_remove("CONCLAVE_TOKEN");
    let status = crate::support::run_command(shell).json();
    assert_eq!(status["me"], "far-coder", "{status}");
}

/// The relay in front of server A; A is SIGKILLed; a request sent while nothing listens waits
/// for server B, started on the same project (the same database) on the second URL, and is
/// answered by it; what was written through A is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_carries_a_session_from_a_dead_server_to_the_next() {
    let project = TestProject::init();
    let (port_a, port_b) = (closed_port(), closed_port());
    let server_a = Server::start_command(
        &project,
        "server-a.log",
        &["serve", "--listen", &format!("127.0.0.1:{port_a}")],
    );
    let alice = add_agent(&project, "alice", &[]);
    let As::Agent { token, .. } = &alice else {
        unreachable!("add_agent returns an agent")
    };
    let admin_token = std::fs::read_to_string(project.state_dir().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_string();
    let urls = format!("http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}");
    let upstream = conclave_client::Client::with_ca(urls, admin_token, None, None).expect("client");
    let relay = conclave_supervisor::relay::Relay::start(upstream.clone())
        .await
        .expect("relay");
    let relay_url = relay.url().to_string();

    // Through the relay, the agent's hook leases a file on A.
    let env = [("CONCLAVE_URL", relay_url.as_str())];
    let run = hook(
        &project,
        &alice,
        &env,
        "pre-tool-use",
        &edit_of(&project, "src/a.rs"),
    );
    assert_eq!(
        (run.code, run.stdout.trim(), run.stderr.as_str()),
        (0, "{}", "")
    );

    assert_eq!(server_a.stop_with(nix::sys::signal::Signal::SIGKILL), None);
    // B starts a second after the next request is sent: the relay waits for it.
    let starter = {
        let root = project.root();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let log = std::fs::File::create(root.join("../server-b.log")).expect("log");
            std::process::Command::new(crate::support::BIN)
                .args(["serve", "--listen", &format!("127.0.0.1:{port_b}")])
                .current_dir(&root)
                .env_remove("CONCLAVE_URL")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start server B")
        })
    };
    let http = reqwest::Client::new();
    let status: Value = http
        .get(format!("{relay_url}/api/status"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the relay answers")
        .error_for_status()
        .expect("a success")
        .json()
        .await
        .expect("JSON");
    let mut server_b = starter.join().expect("starter");
    assert_eq!(status["me"], "alice", "{status}");
    assert!(
        status["leases"].to_string().contains("src/a.rs"),
        "what alice did through A is there through B: {status}"
    );
    assert_eq!(upstream.base_url(), format!("http://127.0.0.1:{port_b}"));

    // The session goes on: its hook works through the relay, now on B.
    let run = hook(
        &project,
        &alice,
        &env,
        "pre-tool-use",
        &edit_of(&project, "src/b.rs"),
    );
    assert_eq!(
        (run.code, run.stdout.trim(), run.stderr.as_str()),
        (0, "{}", "")
    );

    // With no server at all, the relay gives up after its patience with a 502.
    let _ = server_b.kill();
    let _ = server_b.wait();
    let started = std::time::Instant::now();
    let answer = http
        .get(format!("{relay_url}/api/status"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the relay answers");
    assert_eq!(answer.status().as_u16(), 502);
    assert!(started.elapsed() >= conclave_supervisor::relay::PATIENCE);
}

/// `up --server` starts only the agents named for this host: none is an error that says how to
/// name one, before anything starts.
#[test]
fn up_on_a_host_with_no_agents_of_its_own_says_so() {
    let project = TestProject::init();
    let server = Server::start(&project);
    std::fs::write(
        project.root().join("conclave.toml"),
        "[[agent]]\nname = \"coder\"\nhost = \"build-2\"\n",
    )
    .expect("conclave.toml");
    let run = project.run(&["up", "--server", &server.url, "--host", "laptop"]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr
            .contains("no agent of conclave.toml runs on host \"laptop\"")
            && run.stderr.contains("host = \"laptop\""),
        "{run:#?}"
    );
    let run = project.run(&["up", "--server", &server.url, "--host", "two words"]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("--host"), "{run:#?}");
    let agents = project.run(&["agent", "list", "--json"]).json();
    assert_eq!(agents["agents"], json!([]), "nothing was registered");
}
