//! What an agent's client needs before it starts, shared by `conclave claude` (a person's own
//! Claude Code) and the supervisor of `conclave up`: as the admin, register the agent (or issue
//! it a fresh token, revoking all but its newest few), then write its `mcp.json` and `settings.json` under
//! `.conclave/agents/NAME/`, never in the user's own settings files; and find the Claude Code
//! executable.
//!
//! `settings.json` pre-approves the Conclave tools and sets the hooks: HTTP hooks posting to the
//! server for tool and prompt events, `conclave hook` command hooks for `SessionStart` and
//! `SessionEnd` (which the client only runs as commands); in strict mode `PreToolUse` is a
//! command hook too, so that it fails closed. `PreToolUse` of `Bash` (a snapshot of the tree, to
//! attribute what the command writes) and `PostToolUse` (every tool) are HTTP hooks always.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use conclave_client::{ApiError, Client, ENV_TOKEN, segment};
use conclave_core::model::{
    AgentCreated, AgentToken, AgentTokenList, AgentUpdate, NewAgent, TokenIssued,
};
use conclave_core::project::{Project, write_private};
use conclave_core::store::hash_token;
use serde_json::{Value, json};

/// Names the Claude Code executable to run instead of `claude` from `PATH`.
pub const ENV_CLAUDE_BIN: &str = "CONCLAVE_CLAUDE_BIN";

/// Seconds Claude Code waits for an HTTP hook before going ahead without it.
const HTTP_HOOK_TIMEOUT_SECS: u64 = 10;
/// Seconds Claude Code waits for a command hook (the hook gives up on the server sooner).
const COMMAND_HOOK_TIMEOUT_SECS: u64 = 15;

/// The files generated for one agent.
#[derive(Debug, Clone)]
pub struct AgentFiles {
    pub mcp_config: PathBuf,
    pub settings: PathBuf,
}

/// An agent joined to the team: the token it acts with and the files generated for it.
#[derive(Debug, Clone)]
pub struct JoinedAgent {
    pub token: String,
    pub files: AgentFiles,
}

/// What `conclave claude` and the supervisor both do before starting an agent's client: as the
/// admin, register the agent (or issue a fresh token for it), then write its `mcp.json` and
/// `settings.json` under `.conclave/agents/NAME/`. The hooks run `exe` (the `conclave` binary).
/// The files point the client at `agent_url` (the admin's server, or a local relay to it).
pub async fn prepare_agent(
    project: &Project,
    admin: &Client,
    registration: &NewAgent,
    strict: bool,
    agent_url: &str,
) -> anyhow::Result<JoinedAgent> {
    let token = join(admin, registration).await?;
    let exe = std::env::current_exe().context("cannot find the path of this conclave binary")?;
    let files = write_agent_files(project, &registration.name, agent_url, &token, &exe, strict)?;
    Ok(JoinedAgent { token, files })
}

/// Registers the agent, or issues a fresh token for the existing one (updating its role and
/// model when given, and its isolation); returns the token.
async fn join(admin: &Client, new: &NewAgent) -> anyhow::Result<String> {
    let name = &new.name;
    match admin.post::<_, AgentCreated>("/api/agents", new).await {
        Ok(created) => return Ok(created.token),
        Err(error) if is_conflict(&error) => {}
        Err(error) => return Err(error.context(format!("cannot register agent {name}"))),
    }
    let path = format!("/api/agents/{}", segment(name));
    // Where it works follows the registration (conclave.toml may have moved it to a worktree).
    let update = AgentUpdate {
        role: new.role.clone(),
        model: new.model.clone(),
        isolation: Some(new.isolation),
        ..AgentUpdate::default()
    };
    admin
        .patch::<_, Value>(&path, &update)
        .await
        .with_context(|| format!("cannot update the registration of agent {name}"))?;
    let issued: TokenIssued = admin
        .post(&format!("{path}/tokens"), &json!({}))
        .await
        .with_context(|| format!("cannot issue a token for agent {name}"))?;
    retire_old_tokens(admin, name, &issued.token).await?;
    Ok(issued.token)
}

/// Tokens an agent keeps when it is started again: the new one and the newest before it (a
/// session of the same agent still running, such as a `conclave claude` beside `conclave up`,
/// keeps working); older ones are revoked, so restarts and loop iterations do not pile them up.
pub const TOKENS_KEPT: usize = 3;

/// Revokes `name`'s tokens beyond the [`TOKENS_KEPT`] newest, never `current`.
async fn retire_old_tokens(admin: &Client, name: &str, current: &str) -> anyhow::Result<()> {
    let path = format!("/api/agents/{}/tokens", segment(name));
    let list: AgentTokenList = admin
        .get(&path, &[])
        .await
        .with_context(|| format!("cannot list the tokens of agent {name}"))?;
    let current_id = &hash_token(current)[..12];
    let mut others: Vec<AgentToken> = list
        .tokens
        .into_iter()
        .filter(|token| token.id != current_id)
        .collect();
    // The listing is oldest first; the newest are kept.
    others.reverse();
    for old in others.iter().skip(TOKENS_KEPT - 1) {
        admin
            .delete::<Value>(&format!("{path}/{}", segment(&old.id)))
            .await
            .with_context(|| format!("cannot revoke an old token of agent {name}"))?;
        tracing::info!(agent = %name, token = %old.id, "revoked an old token");
    }
    Ok(())
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
        (
            &files.settings,
            settings(url, exe, strict, Some(project.root())),
        ),
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

/// The `--settings` document: the Conclave tools pre-approved, and the hooks. The HTTP hooks
/// name `root`, this clone's project root, in `X-Conclave-Root`: the server makes the paths
/// of an agent on another host relative to its own clone (a root that is not printable ASCII
/// cannot be a header and is left out: the server's root applies).
pub fn settings(url: &str, exe: &Path, strict: bool, root: Option<&Path>) -> Value {
    let root = root
        .and_then(Path::to_str)
        .filter(|root| root.chars().all(|c| c.is_ascii_graphic() || c == ' '));
    let http = |event: &str| {
        let mut headers = json!({"Authorization": format!("Bearer ${ENV_TOKEN}")});
        if let Some(root) = root {
            headers["X-Conclave-Root"] = json!(root);
        }
        json!({
            "type": "http",
            "url": format!("{url}/hooks/{event}"),
            "headers": headers,
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
            // `Bash` too, over HTTP even in strict mode: its hook only snapshots the tree to
            // attribute the command's writes, and must never stop a command.
            "PreToolUse": [
                {"matcher": file_writing_matcher, "hooks": [pre_tool_use]},
                {"matcher": "Bash", "hooks": [http("pre-tool-use")]},
            ],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_use_http_hooks_and_command_hooks_where_the_client_needs_them() {
        let value = settings(
            "http://127.0.0.1:7420",
            Path::new("/opt/my tools/conclave"),
            false,
            None,
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
        // Write attribution: `Bash` has its own `PreToolUse`, and `PostToolUse` has no matcher
        // (every tool, `Bash` included).
        assert_eq!(hooks["PreToolUse"][1]["matcher"], "Bash");
        assert_eq!(hooks["PreToolUse"][1]["hooks"][0], pre["hooks"][0]);
        assert!(hooks["PostToolUse"][0].get("matcher").is_none());
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
        let value = settings("http://127.0.0.1:1", Path::new("/bin/conclave"), true, None);
        let hook = &value["hooks"]["PreToolUse"][0]["hooks"][0];
        assert_eq!(hook["type"], "command");
        assert_eq!(hook["command"], "/bin/conclave hook pre-tool-use --strict");
        // The shell's snapshot hook never blocks a command, strict or not.
        let shell = &value["hooks"]["PreToolUse"][1];
        assert_eq!(shell["matcher"], "Bash");
        assert_eq!(shell["hooks"][0]["type"], "http");
    }

    #[test]
    fn http_hooks_name_the_clone_they_edit_in() {
        let value = settings(
            "http://127.0.0.1:1",
            Path::new("/bin/conclave"),
            false,
            Some(Path::new("/home/ci/clone")),
        );
        let hook = &value["hooks"]["PostToolUse"][0]["hooks"][0];
        assert_eq!(hook["headers"]["X-Conclave-Root"], "/home/ci/clone");
        let odd = settings(
            "http://h:1",
            Path::new("/c"),
            false,
            Some(Path::new("/home/é")),
        );
        let hook = &odd["hooks"]["PostToolUse"][0]["hooks"][0];
        assert!(hook["headers"].get("X-Conclave-Root").is_none(), "{hook}");
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
    fn shell_quoting_leaves_plain_paths_alone() {
        assert_eq!(shell_quote("/usr/bin/conclave"), "/usr/bin/conclave");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
