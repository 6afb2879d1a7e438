//! `conclave claude --name NAME [--role R] [--strict] [-- CLAUDE ARGS...]`: a person's own Claude
//! Code, joined to the team.
//!
//! 1. Finds the project and its server: `--server URL` (a remote one, `URL1,URL2` for several),
//!    `CONCLAVE_URL`, or `.conclave/server.json`. With several URLs or HTTPS, the session talks
//!    to a loopback relay in this process (`conclave_supervisor::relay`) that fails over.
//! 2. As the admin (`prepare_agent` of the supervisor crate, which `conclave up` uses too),
//!    registers the agent, or, when it exists already, issues it a fresh token
//!    (tokens are stored hashed and cannot be read back; an agent may hold several).
//! 3. Writes, under `.conclave/agents/NAME/` and never in the user's own settings files:
//!    `mcp.json` (the Conclave MCP server over HTTP, with the token; mode 0600) and
//!    `settings.json` (the Conclave tools pre-approved, and the hooks: HTTP hooks posting to the
//!    server for tool and prompt events, `conclave hook` command hooks for `SessionStart` and
//!    `SessionEnd`, which the client only runs as commands; in strict mode `PreToolUse` is a
//!    command hook too, so that it fails closed).
//! 4. An agent with `isolation = "worktree"` (in `conclave.toml`, or as registered) gets its
//!    worktree `.conclave/worktrees/NAME` made (or repaired) and its session runs there.
//! 5. Runs `claude` (or `CONCLAVE_CLAUDE_BIN`) with `--mcp-config` and `--settings` pointing at
//!    them, then every argument after `--` unchanged, with `CONCLAVE_URL`, `CONCLAVE_AGENT` and
//!    `CONCLAVE_TOKEN` in its environment and the terminal inherited; exits with its exit code.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context as _;
use conclave_client::Client;
use conclave_core::config::Config;
use conclave_core::model::{Agent, Isolation, NewAgent};
use conclave_core::project::Project;
pub use conclave_supervisor::agent_files::claude_bin;
use conclave_supervisor::agent_files::{AgentFiles, JoinedAgent, prepare_agent};
use conclave_supervisor::worktrees::{Repair, prepare_worktrees};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ClaudeArgs;
use crate::context::{Context, ENV_AGENT, ENV_TOKEN, ENV_URL};

/// `claude` ended with a non-zero exit code (or a signal): `conclave claude` exits with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaudeExited {
    pub code: u8,
}

impl std::fmt::Display for ClaudeExited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "claude exited with code {}", self.code)
    }
}

impl std::error::Error for ClaudeExited {}

pub async fn run(context: &Context, options: ClaudeArgs) -> anyhow::Result<()> {
    let project = context.project()?;
    let config = Config::load(&project.config_file())?;
    let strict = options.strict || config.server.strict;
    let bin = claude_bin()?;
    let url = match &options.server {
        Some(server) => server.clone(),
        None => reachable_url(&context.server_url()?),
    };
    let admin = admin_client(project, &url)?;
    let isolation = isolation_of(project, &config, &admin, &options.name).await?;
    // Without a merge queue nothing would land a worktree agent's branches.
    let merge = match isolation {
        Isolation::Worktree => Some(config.merge.clone().with_context(|| {
            format!(
                "{} works in its own worktree, but conclave.toml has no [merge] table to land \
                 its branches: add one (docs/worktrees.md)",
                options.name
            )
        })?),
        Isolation::Shared => None,
    };
    let host = options
        .host
        .clone()
        .unwrap_or_else(conclave_supervisor::plan::this_host);
    conclave_core::config::validate_host_name(&host)
        .map_err(|error| anyhow::anyhow!("--host {host:?}: {error}"))?;
    // A worktree agent away from the server: its git steps run in this clone, through the
    // relay. The server leaves them to this host only for a host conclave.toml names for
    // agents (`[[agent]] host`), so only such a host may run one.
    let steps = match (&options.server, &merge) {
        (Some(_), Some(merge)) => {
            anyhow::ensure!(
                config
                    .agents
                    .iter()
                    .any(|agent| agent.host.as_deref() == Some(host.as_str())),
                "{} works in a worktree on host {host}, away from the server: name that host for \
                 an agent in conclave.toml (`host = \"{host}\"` on an [[agent]]), so that the \
                 server leaves its git steps to this host (docs/scale-out.md)",
                options.name
            );
            Some(std::sync::Arc::new(
                conclave_supervisor::worktree_steps::WorktreeSteps::new(
                    project.root(),
                    merge,
                    [options.name.clone()],
                )?,
            ))
        }
        _ => None,
    };
    // Several servers, or HTTPS: the session reaches them through a relay in this process,
    // which lives as long as claude does (see `conclave_supervisor::relay`).
    let relay = if super::up::needs_relay(&admin) || steps.is_some() {
        Some(conclave_supervisor::relay::Relay::start_with_steps(admin.clone(), steps).await?)
    } else {
        None
    };
    let agent_url = relay.as_ref().map_or_else(
        || admin.base_url().to_string(),
        |relay| relay.url().to_string(),
    );
    let registration = NewAgent {
        name: options.name.clone(),
        role: options.role.clone(),
        model: None,
        caps: Vec::new(),
        isolation,
    };
    let JoinedAgent { token, files } =
        prepare_agent(project, &admin, &registration, strict, &agent_url).await?;
    let _: conclave_core::model::Agent = admin
        .patch(
            &format!("/api/agents/{}", conclave_client::segment(&options.name)),
            &conclave_core::model::AgentUpdate {
                host: Some(host.clone()),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot record the host of agent {}", options.name))?;
    // A worktree agent's session runs in its own worktree, as `conclave up` runs it.
    let cwd = if let Some(merge) = merge {
        let root = project.root().to_path_buf();
        let name = options.name.clone();
        let away = options.server.is_some();
        let mut trees = tokio::task::spawn_blocking(move || {
            if away {
                // Away from the server, the integration branch is the shared remote's.
                conclave_supervisor::worktree_steps::follow_integration(&root, &merge)?;
            }
            prepare_worktrees(&root, &merge, std::slice::from_ref(&name), Repair::Own)
        })
        .await??;
        let tree = trees.pop().context("no worktree was made")?;
        eprintln!(
            "conclave: {} works in its worktree {}",
            options.name,
            tree.display()
        );
        Some(tree)
    } else {
        None
    };
    eprintln!(
        "conclave: starting Claude Code as agent {} on host {host}{} on the team at {url}{} (config in {})",
        options.name,
        options
            .role
            .as_deref()
            .map(|role| format!(" (role {role})"))
            .unwrap_or_default(),
        if strict { ", strict" } else { "" },
        files
            .settings
            .parent()
            .map_or_else(String::new, |dir| dir.display().to_string()),
    );
    let code = run_claude(&bin, &files, &options, &agent_url, &token, cwd.as_deref()).await?;
    drop(relay);
    if code == 0 {
        Ok(())
    } else {
        Err(ClaudeExited { code }.into())
    }
}

/// Where agent `name` works: what `conclave.toml` says when it names the agent, else what its
/// registration says (`conclave agent add --isolation`), else `shared`.
async fn isolation_of(
    project: &Project,
    config: &Config,
    admin: &Client,
    name: &str,
) -> anyhow::Result<Isolation> {
    let plans = conclave_supervisor::plan::plan_team(config, project.root())?;
    if let Some(plan) = plans.iter().find(|plan| plan.name == name) {
        return Ok(plan.isolation());
    }
    let path = format!("/api/agents/{}", conclave_client::segment(name));
    Ok(admin
        .get::<Agent>(&path, &[])
        .await
        .map(|agent| agent.isolation)
        .unwrap_or_default())
}

/// The server's URL as an agent on this machine reaches it: a server listening on every
/// address (`0.0.0.0`, `[::]`) writes that address in `server.json`, but the MCP endpoint only
/// answers requests whose `Host` it knows, loopback included.
pub fn reachable_url(url: &str) -> String {
    for scheme in ["https", "http"] {
        for (any, loopback) in [("://0.0.0.0", "://127.0.0.1"), ("://[::]", "://[::1]")] {
            if let Some(rest) = url.strip_prefix(scheme).and_then(|u| u.strip_prefix(any))
                && (rest.is_empty() || rest.starts_with(':') || rest.starts_with('/'))
            {
                return format!("{scheme}{loopback}{rest}");
            }
        }
    }
    url.to_string()
}

/// A client acting as the admin, whatever `CONCLAVE_AGENT` says (it may be set by an outer
/// Conclave session). `url` may list several servers; HTTPS trusts `CONCLAVE_CA_CERT`, else
/// `[server] tls_ca`.
pub fn admin_client(project: &Project, url: &str) -> anyhow::Result<Client> {
    let path = project.admin_token_file();
    let token = project
        .read_admin_token()
        .with_context(|| format!("cannot read {}", path.display()))?
        .with_context(|| {
            format!(
                "no admin token at {} (the server creates it when it first starts; \
                 start it with `conclave serve`)",
                path.display()
            )
        })?;
    Client::with_ca(url.to_string(), token, None, ca_file(project).as_deref())
}

/// The CA certificate clients of this clone trust besides the built-in roots:
/// `CONCLAVE_CA_CERT`, else `[server] tls_ca` of conclave.toml (relative to the project root).
pub fn ca_file(project: &Project) -> Option<std::path::PathBuf> {
    conclave_client::ca_from_env().or_else(|| {
        let config = Config::load(&project.config_file()).ok()?;
        let ca = config.server.tls_ca?;
        Some(project.root().join(ca))
    })
}

/// Runs claude with the generated files and the agent's identity; returns its exit code
/// (128 + the signal when a signal ended it, as shells report it).
async fn run_claude(
    bin: &Path,
    files: &AgentFiles,
    options: &ClaudeArgs,
    url: &str,
    token: &str,
    cwd: Option<&Path>,
) -> anyhow::Result<u8> {
    let mut command = tokio::process::Command::new(bin);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command
        .arg("--mcp-config")
        .arg(&files.mcp_config)
        .arg("--settings")
        .arg(&files.settings)
        .args(&options.claude_args)
        .env(ENV_URL, url)
        .env(ENV_AGENT, &options.name)
        .env(ENV_TOKEN, token);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    // The terminal sends Ctrl-C to the whole foreground group, claude included: forwarding it
    // too would count as a second Ctrl-C (which quits claude). Without a terminal, forward it.
    let forward_interrupt = !std::io::stdin().is_terminal();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("cannot wait for claude")?,
            _ = interrupt.recv() => {
                if forward_interrupt {
                    forward(&child, nix::sys::signal::Signal::SIGINT);
                }
            }
            _ = terminate.recv() => forward(&child, nix::sys::signal::Signal::SIGTERM),
        }
    };
    Ok(exit_code_of(status))
}

fn forward(child: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    // The child may have exited meanwhile; nothing to do then.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// The characters the Conclave tool definitions take in each model request (names prefixed as
/// Claude Code prefixes them): the part of the coordination account every call carries.
pub fn conclave_tool_definition_chars() -> usize {
    let json = conclave_server::tool_definitions_json();
    let tools = serde_json::from_str::<Vec<serde_json::Value>>(&json).map_or(0, |list| list.len());
    conclave_supervisor::coordination::tool_definition_chars(&json, tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_reach_a_server_listening_everywhere_over_loopback() {
        let cases = [
            ("http://0.0.0.0:7420", "http://127.0.0.1:7420"),
            ("http://[::]:7420", "http://[::1]:7420"),
            ("http://127.0.0.1:7420", "http://127.0.0.1:7420"),
            ("http://0.0.0.01:7420", "http://0.0.0.01:7420"),
            ("http://10.0.0.5:7420", "http://10.0.0.5:7420"),
            ("https://0.0.0.0:7420", "https://127.0.0.1:7420"),
        ];
        for (url, expected) in cases {
            assert_eq!(reachable_url(url), expected, "{url}");
        }
    }
}
