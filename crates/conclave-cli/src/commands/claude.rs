//! `conclave claude --name NAME [--role R] [--strict] [-- CLAUDE ARGS...]`: a person's own Claude
//! Code, joined to the team.
//!
//! 1. Finds the project and its running server (`CONCLAVE_URL` or `.conclave/server.json`).
//! 2. As the admin ([`prepare_agent`], which the supervisor of `conclave up` uses too), registers the agent, or, when it exists already, issues it a fresh token
//!    (tokens are stored hashed and cannot be read back; an agent may hold several).
//! 3. Writes, under `.conclave/agents/NAME/` and never in the user's own settings files:
//!    `mcp.json` (the Conclave MCP server over HTTP, with the token; mode 0600) and
//!    `settings.json` (the Conclave tools pre-approved, and the hooks: HTTP hooks posting to the
//!    server for tool and prompt events, `conclave hook` command hooks for `SessionStart` and
//!    `SessionEnd`, which the client only runs as commands; in strict mode `PreToolUse` is a
//!    command hook too, so that it fails closed).
//! 4. Runs `claude` (or `CONCLAVE_CLAUDE_BIN`) with `--mcp-config` and `--settings` pointing at
//!    them, then every argument after `--` unchanged, with `CONCLAVE_URL`, `CONCLAVE_AGENT` and
//!    `CONCLAVE_TOKEN` in its environment and the terminal inherited; exits with its exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use conclave_core::config::Config;
use conclave_core::model::{AgentCreated, AgentUpdate, NewAgent, TokenIssued};
use conclave_core::project::{Project, write_private};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ClaudeArgs;
use crate::client::{Client, segment};
use crate::context::{Context, ENV_AGENT, ENV_TOKEN, ENV_URL};
use crate::error::ApiError;

/// Names the Claude Code executable to run instead of `claude` from `PATH`.
pub const ENV_CLAUDE_BIN: &str = "CONCLAVE_CLAUDE_BIN";

/// Seconds Claude Code waits for an HTTP hook before going ahead without it.
const HTTP_HOOK_TIMEOUT_SECS: u64 = 10;
/// Seconds Claude Code waits for a command hook (the hook gives up on the server sooner).
const COMMAND_HOOK_TIMEOUT_SECS: u64 = 15;

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

/// The files generated for one agent.
#[derive(Debug, Clone)]
pub struct AgentFiles {
    pub mcp_config: PathBuf,
    pub settings: PathBuf,
}

pub async fn run(context: &Context, options: ClaudeArgs) -> anyhow::Result<()> {
    let project = context.project()?;
    let config = Config::load(&project.config_file())?;
    let strict = options.strict || config.server.strict;
    let bin = claude_bin()?;
    let url = reachable_url(&context.server_url()?);
    let admin = admin_client(project, &url)?;
    let registration = NewAgent {
        name: options.name.clone(),
        role: options.role.clone(),
        model: None,
        caps: Vec::new(),
        ..Default::default()
    };
    let JoinedAgent { token, files } =
        prepare_agent(project, &admin, &registration, strict).await?;
    eprintln!(
        "conclave: starting Claude Code as agent {}{} on the team at {url}{} (config in {})",
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
    let code = run_claude(&bin, &files, &options, &url, &token).await?;
    if code == 0 {
        Ok(())
    } else {
        Err(ClaudeExited { code }.into())
    }
}

/// An agent joined to the team: the token it acts with and the files generated for it.
#[derive(Debug, Clone)]
pub struct JoinedAgent {
    pub token: String,
    pub files: AgentFiles,
}

/// What `conclave claude` and the supervisor both do before starting an agent's client: as the
/// admin, register the agent (or issue a fresh token for it), then write its `mcp.json` and
/// `settings.json` under `.conclave/agents/NAME/`.
pub async fn prepare_agent(
    project: &Project,
    admin: &Client,
    registration: &NewAgent,
    strict: bool,
) -> anyhow::Result<JoinedAgent> {
    let token = join(admin, registration).await?;
    let exe = std::env::current_exe().context("cannot find the path of this conclave binary")?;
    let files = write_agent_files(
        project,
        &registration.name,
        admin.base_url(),
        &token,
        &exe,
        strict,
    )?;
    Ok(JoinedAgent { token, files })
}

/// The server's URL as an agent on this machine reaches it: a server listening on every
/// address (`0.0.0.0`, `[::]`) writes that address in `server.json`, but the MCP endpoint only
/// answers requests whose `Host` it knows, loopback included.
pub fn reachable_url(url: &str) -> String {
    for (any, loopback) in [("://0.0.0.0", "://127.0.0.1"), ("://[::]", "://[::1]")] {
        if let Some(rest) = url.strip_prefix("http").and_then(|u| u.strip_prefix(any))
            && (rest.is_empty() || rest.starts_with(':') || rest.starts_with('/'))
        {
            return format!("http{loopback}{rest}");
        }
    }
    url.to_string()
}

/// A client acting as the admin, whatever `CONCLAVE_AGENT` says (it may be set by an outer
/// Conclave session).
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
    Client::new(url.to_string(), token, None)
}

/// Registers the agent, or issues a fresh token for the existing one (updating its role and
/// model when given); returns the token.
async fn join(admin: &Client, new: &NewAgent) -> anyhow::Result<String> {
    let name = &new.name;
    match admin.post::<_, AgentCreated>("/api/agents", new).await {
        Ok(created) => return Ok(created.token),
        Err(error) if is_conflict(&error) => {}
        Err(error) => return Err(error.context(format!("cannot register agent {name}"))),
    }
    let path = format!("/api/agents/{}", segment(name));
    if new.role.is_some() || new.model.is_some() {
        let update = AgentUpdate {
            role: new.role.clone(),
            model: new.model.clone(),
            ..AgentUpdate::default()
        };
        admin
            .patch::<_, Value>(&path, &update)
            .await
            .with_context(|| format!("cannot set the role and model of agent {name}"))?;
    }
    let issued: TokenIssued = admin
        .post(&format!("{path}/tokens"), &json!({}))
        .await
        .with_context(|| format!("cannot issue a token for agent {name}"))?;
    Ok(issued.token)
}

fn is_conflict(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ApiError>()
        .is_some_and(|api| api.status == 409)
}

/// Writes `mcp.json` and `settings.json` under `.conclave/agents/NAME/`.
fn write_agent_files(
    project: &Project,
    name: &str,
    url: &str,
    token: &str,
    exe: &Path,
    strict: bool,
) -> anyhow::Result<AgentFiles> {
    let dir = project.agent_dir(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = AgentFiles {
        mcp_config: dir.join("mcp.json"),
        settings: dir.join("settings.json"),
    };
    for (path, value) in [
        (&files.mcp_config, mcp_config(url, token)),
        (&files.settings, settings(url, exe, strict)),
    ] {
        let text = serde_json::to_string_pretty(&value)?;
        write_private(path, &format!("{text}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(files)
}

/// The `--mcp-config` document: the Conclave MCP server over streamable HTTP.
pub fn mcp_config(url: &str, token: &str) -> Value {
    json!({
        "mcpServers": {
            "conclave": {
                "type": "http",
                "url": format!("{url}/mcp"),
                "headers": {"Authorization": format!("Bearer {token}")},
            }
        }
    })
}

/// The `--settings` document: the Conclave tools pre-approved, and the hooks.
pub fn settings(url: &str, exe: &Path, strict: bool) -> Value {
    let http = |event: &str| {
        json!({
            "type": "http",
            "url": format!("{url}/hooks/{event}"),
            "headers": {"Authorization": format!("Bearer ${ENV_TOKEN}")},
            "allowedEnvVars": [ENV_TOKEN],
            "timeout": HTTP_HOOK_TIMEOUT_SECS,
        })
    };
    let command = |event: &str, extra: &str| {
        json!({
            "type": "command",
            "command": format!("{} hook {event}{extra}", shell_quote(&exe.to_string_lossy())),
            "timeout": COMMAND_HOOK_TIMEOUT_SECS,
        })
    };
    let pre_tool_use = if strict {
        command("pre-tool-use", " --strict")
    } else {
        http("pre-tool-use")
    };
    // The tools whose `PreToolUse` the server leases files for, as a matcher.
    let file_writing_matcher = conclave_core::model::FILE_WRITING_TOOLS.join("|");
    json!({
        "permissions": {"allow": ["mcp__conclave"]},
        "hooks": {
            "PreToolUse": [{"matcher": file_writing_matcher, "hooks": [pre_tool_use]}],
            "PostToolUse": [{"hooks": [http("post-tool-use")]}],
            "UserPromptSubmit": [{"hooks": [http("user-prompt-submit")]}],
            "Stop": [{"hooks": [http("stop")]}],
            "PreCompact": [{"hooks": [http("pre-compact")]}],
            "SessionStart": [{"hooks": [command("session-start", "")]}],
            "SessionEnd": [{"hooks": [command("session-end", "")]}],
        }
    })
}

/// Quotes `text` for `sh` when it holds anything but plain path characters.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The Claude Code executable: `CONCLAVE_CLAUDE_BIN`, else `claude` found on `PATH`. Looked up
/// before anything is registered, so that a missing CLI changes nothing.
pub fn claude_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(ENV_CLAUDE_BIN).filter(|bin| !bin.is_empty()) {
        let path = PathBuf::from(bin);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{ENV_CLAUDE_BIN} is set to {}, which is not a file",
            path.display()
        );
    }
    find_on_path("claude").with_context(|| {
            format!(
                "cannot find `claude` on PATH: install Claude Code \
                 (`npm install -g @anthropic-ai/claude-code`) or name its binary with {ENV_CLAUDE_BIN}"
            )
        })
}

/// The first executable named `name` in a folder of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Runs claude with the generated files and the agent's identity; returns its exit code
/// (128 + the signal when a signal ended it, as shells report it).
async fn run_claude(
    bin: &Path,
    files: &AgentFiles,
    options: &ClaudeArgs,
    url: &str,
    token: &str,
) -> anyhow::Result<u8> {
    let mut command = tokio::process::Command::new(bin);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_use_http_hooks_and_command_hooks_where_the_client_needs_them() {
        let value = settings(
            "http://127.0.0.1:7420",
            Path::new("/opt/my tools/conclave"),
            false,
        );
        assert_eq!(value["permissions"]["allow"], json!(["mcp__conclave"]));
        let hooks = &value["hooks"];
        let pre = &hooks["PreToolUse"][0];
        assert_eq!(pre["matcher"], "Edit|Write|MultiEdit|NotebookEdit");
        assert_eq!(
            pre["hooks"][0],
            json!({
                "type": "http",
                "url": "http://127.0.0.1:7420/hooks/pre-tool-use",
                "headers": {"Authorization": "Bearer $CONCLAVE_TOKEN"},
                "allowedEnvVars": ["CONCLAVE_TOKEN"],
                "timeout": HTTP_HOOK_TIMEOUT_SECS,
            })
        );
        for event in ["PostToolUse", "UserPromptSubmit", "Stop", "PreCompact"] {
            assert_eq!(hooks[event][0]["hooks"][0]["type"], "http", "{event}");
        }
        assert_eq!(
            hooks["SessionStart"][0]["hooks"][0]["command"],
            "'/opt/my tools/conclave' hook session-start"
        );
        assert_eq!(
            hooks["SessionEnd"][0]["hooks"][0]["command"],
            "'/opt/my tools/conclave' hook session-end"
        );
    }

    #[test]
    fn strict_settings_make_pre_tool_use_a_command_hook() {
        let value = settings("http://127.0.0.1:1", Path::new("/bin/conclave"), true);
        let hook = &value["hooks"]["PreToolUse"][0]["hooks"][0];
        assert_eq!(hook["type"], "command");
        assert_eq!(hook["command"], "/bin/conclave hook pre-tool-use --strict");
    }

    #[test]
    fn the_mcp_config_carries_the_token() {
        assert_eq!(
            mcp_config("http://h:1", "tok"),
            json!({"mcpServers": {"conclave": {
                "type": "http",
                "url": "http://h:1/mcp",
                "headers": {"Authorization": "Bearer tok"},
            }}})
        );
    }

    #[test]
    fn agents_reach_a_server_listening_everywhere_over_loopback() {
        let cases = [
            ("http://0.0.0.0:7420", "http://127.0.0.1:7420"),
            ("http://[::]:7420", "http://[::1]:7420"),
            ("http://127.0.0.1:7420", "http://127.0.0.1:7420"),
            ("http://0.0.0.01:7420", "http://0.0.0.01:7420"),
            ("http://10.0.0.5:7420", "http://10.0.0.5:7420"),
        ];
        for (url, expected) in cases {
            assert_eq!(reachable_url(url), expected, "{url}");
        }
    }

    #[test]
    fn shell_quoting_leaves_plain_paths_alone() {
        assert_eq!(shell_quote("/usr/bin/conclave"), "/usr/bin/conclave");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
