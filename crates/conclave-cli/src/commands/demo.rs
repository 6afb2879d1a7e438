//! `conclave demo`: a scripted three-agent team of real Claude Code instances in a throwaway git
//! project, for a newcomer with no API key.
//!
//! The model turns are played by the scripted stand-in for the Anthropic API that ships inside
//! this binary (`conclave_standin::demo`), on loopback. The demo starts `conclave serve` and
//! `conclave up --stay` in the project as child processes, seeds three dependent tasks, and prints
//! the dashboard link. The agents claim tasks, lease files, collide on one file and resolve it by
//! message, and finish. Nothing is opened; nothing leaves the machine.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use conclave_core::project::Project;
use conclave_standin::StandIn;
use conclave_standin::demo::{DEMO_AGENTS, DEMO_TASKS, demo_script};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::DemoArgs;
use conclave_client::Client;

const BANNER: &str = "SCRIPTED DEMO: the agents are real Claude Code processes, but their model turns are played \
by Conclave's built-in stand-in for the Anthropic API (no API key, no network).";

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let claude = super::claude::claude_bin().context(
        "the demo runs real Claude Code instances: install it with `npm install -g @anthropic-ai/claude-code` \
         (or name its binary with CONCLAVE_CLAUDE_BIN)",
    )?;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
            std::env::temp_dir().join(format!("conclave-demo-{stamp}"))
        }
    };
    if dir.join(".conclave").exists() {
        bail!(
            "{} already holds a Conclave project; pick another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    eprintln!("{BANNER}");
    eprintln!("conclave demo: project in {}", dir.display());

    let stand_in = StandIn::start(demo_script(&dir)).await?;
    make_project(&dir, &stand_in.url(), &claude)?;

    let exe = std::env::current_exe().context("cannot find the conclave binary")?;
    let mut serve = spawn(&exe, &dir, &["serve", "--listen", "127.0.0.1:0"], true)?;
    let project = Project::at(&dir);
    let url = wait_for_server(&project, &mut serve).await?;
    let admin_token = project
        .read_admin_token()?
        .context("the demo server wrote no admin token")?;
    let admin = Client::new(url.clone(), admin_token.clone(), None)?;
    seed_tasks(&admin).await?;

    let mut up_args = vec!["up"];
    if !args.exit_when_done {
        up_args.push("--stay");
    }
    let mut up = spawn(&exe, &dir, &up_args, false)?;
    eprintln!();
    eprintln!("{BANNER}");
    eprintln!("Watch the team on the dashboard (it carries the admin token; keep it private):");
    eprintln!("{url}/?token={admin_token}");
    eprintln!(
        "Follow one agent in another terminal: cd {} && conclave attach coder-2",
        dir.display()
    );
    eprintln!("Press Ctrl-C to stop the demo.");

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
        status = up.wait() => match status {
            Ok(status) if status.success() => {
                eprintln!("conclave demo: the scripted team finished; its project stays in {}", dir.display());
                Ok(())
            }
            Ok(status) => Err(anyhow::anyhow!("conclave up ended with {status}")),
            Err(error) => Err(error.into()),
        },
        status = serve.wait() => Err(anyhow::anyhow!("the demo server stopped unexpectedly ({status:?})")),
    };
    stop(&mut up).await;
    stop(&mut serve).await;
    drop(stand_in);
    outcome
}

/// A git repository with a README and a `conclave.toml` whose agents talk to the stand-in.
fn make_project(dir: &Path, stand_in_url: &str, claude: &Path) -> anyhow::Result<()> {
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(dir)
        .status()
        .context("the demo needs git")?;
    if !git.success() {
        bail!("git init failed in {}", dir.display());
    }
    std::fs::write(
        dir.join("README.md"),
        "# Greetings\n\nA throwaway project made by `conclave demo`.\n",
    )?;
    // A private HOME keeps the person's own Claude Code settings and hooks out of the demo.
    let home = dir.join(".conclave/demo-home");
    std::fs::create_dir_all(&home)?;
    let mut config = String::from(
        "# Made by `conclave demo`: a scripted team (the stand-in plays the model).\n\
         [server]\nclaim_ttl_secs = 600\n\n[defaults]\npermission_mode = \"acceptEdits\"\n\
         model = \"scripted-stand-in\"\nhibernate_after = \"30m\"\n\n",
    );
    for (name, role, key) in DEMO_AGENTS {
        config.push_str(&format!(
            "[[agent]]\nname = \"{name}\"\nrole = \"{role}\"\n\
             env = {{ ANTHROPIC_BASE_URL = \"{stand_in_url}\", ANTHROPIC_API_KEY = \"{key}\", \
             HOME = \"{home}\", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"1\", DISABLE_TELEMETRY = \"1\", \
             DISABLE_AUTOUPDATER = \"1\", DISABLE_ERROR_REPORTING = \"1\", CONCLAVE_CLAUDE_BIN = \"{claude}\" }}\n\n",
            home = home.display(),
            claude = claude.display(),
        ));
    }
    std::fs::write(dir.join("conclave.toml"), config)?;
    Project::at(dir).ensure_state_dir()?;
    Ok(())
}

fn spawn(exe: &Path, dir: &Path, args: &[&str], quiet: bool) -> anyhow::Result<Child> {
    let mut command = Command::new(exe);
    // Their own process group: a Ctrl-C in the terminal reaches the demo alone, which then stops
    // `up` (agents first) and the server in order.
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if quiet {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    command
        .spawn()
        .with_context(|| format!("cannot start conclave {}", args.join(" ")))
}

async fn wait_for_server(project: &Project, serve: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(info) = project.read_server_info()
            && serve.id() == Some(info.pid)
        {
            return Ok(info.url);
        }
        if let Ok(Some(status)) = serve.try_wait() {
            bail!("the demo server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("the demo server did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn seed_tasks(admin: &Client) -> anyhow::Result<()> {
    let mut ids: Vec<String> = Vec::new();
    for (title, role, after) in DEMO_TASKS {
        let after: Vec<&str> = after
            .iter()
            .filter_map(|i| ids.get(*i).map(String::as_str))
            .collect();
        let task: Value = admin
            .post(
                "/api/tasks",
                &json!({ "title": title, "role": role, "after": after }),
            )
            .await?;
        let id = task["id"]
            .as_str()
            .context("the server gave no task id")?
            .to_string();
        eprintln!("conclave demo: task {id} \"{title}\" for role {role}");
        ids.push(id);
    }
    Ok(())
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
