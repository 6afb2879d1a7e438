//! The check `conclave up --detach` makes before it goes to the background: for each agent, its
//! client binary and version, then one headless turn of that client with the agent's own env
//! and flags (model, permission mode), under a time limit. A refused login, a flag the client
//! refuses or a client that does not answer is reported here, in the terminal, with the
//! client's own words, not later in a log nobody reads.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::machine::LOGIN_FIX;
use crate::plan::{self, AgentPlan};
use crate::stream::{StreamUpdate, parse_line};

/// How long the version check may take.
const VERSION_LIMIT: Duration = Duration::from_secs(15);
/// The prompt of the probe turn: one short answer, no tools.
const PROBE_PROMPT: &str = "Reply with the single word OK.";

/// The Claude Code versions Conclave's tests run against, oldest and newest (inclusive): the
/// probe warns about a version outside them (or one it cannot read).
pub const TESTED_CLAUDE_CODE: (&str, &str) = ("2.1.328", "2.1.328");

/// What the probe found for one agent: the client's version line.
#[derive(Debug, Clone)]
pub struct Probed {
    pub name: String,
    pub version: String,
    /// Set when the client is Claude Code of a version outside [`TESTED_CLAUDE_CODE`].
    pub warning: Option<String>,
}

/// `2.1.328 (Claude Code)` → `[2, 1, 328]`; none unless the first word is a dotted number.
fn version_numbers(line: &str) -> Option<Vec<u64>> {
    let first = line.split_whitespace().next()?;
    first.split('.').map(|part| part.parse().ok()).collect()
}

/// A warning naming the tested range when `version_line` (what `claude --version` printed) is
/// outside it or unreadable; none inside it.
pub fn version_warning(version_line: &str) -> Option<String> {
    let (oldest, newest) = TESTED_CLAUDE_CODE;
    let range = if oldest == newest {
        oldest.to_string()
    } else {
        format!("{oldest} to {newest}")
    };
    let advice = format!(
        "it may behave differently (refuse a flag, change its stream format); a tested one: \
         npm install -g @anthropic-ai/claude-code@{newest}"
    );
    let Some(found) = version_numbers(version_line) else {
        return Some(format!(
            "cannot read a Claude Code version from {:?}; Conclave is tested with {range}: {advice}",
            version_line.trim()
        ));
    };
    let (low, high) = (version_numbers(oldest)?, version_numbers(newest)?);
    if found < low || found > high {
        Some(format!(
            "Claude Code {} is outside the tested range ({range}): {advice}",
            version_line.split_whitespace().next().unwrap_or_default()
        ))
    } else {
        None
    }
}

/// Checks agent `plan`'s client: `--version`, then one turn within `limit`. Agents with a
/// `command` template (another CLI) are checked for their binary only.
pub async fn probe_agent(plan: &AgentPlan, limit: Duration) -> anyhow::Result<Probed> {
    let (program, prefix) = plan::program(plan)?;
    let version = tokio::time::timeout(
        VERSION_LIMIT,
        tokio::process::Command::new(&program)
            .args(&prefix)
            .arg("--version")
            .envs(plan::extra_env(plan))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| {
        format!(
            "{}: {} --version did not answer",
            plan.name,
            program.display()
        )
    })?
    .with_context(|| format!("{}: cannot run {}", plan.name, program.display()))?;
    if !version.status.success() {
        bail!(
            "{}: {} --version failed ({}): {}",
            plan.name,
            program.display(),
            version.status,
            String::from_utf8_lossy(&version.stderr).trim()
        );
    }
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let another_cli = plan
        .settings
        .command
        .as_deref()
        .is_some_and(|command| command.contains('{'));
    let probed = Probed {
        name: plan.name.clone(),
        // Another CLI has versions of its own: only Claude Code's are compared.
        warning: (!another_cli).then(|| version_warning(&version)).flatten(),
        version,
    };
    if another_cli {
        return Ok(probed);
    }
    let mut args: Vec<String> = prefix;
    args.extend(
        [
            "-p",
            PROBE_PROMPT,
            "--output-format",
            "stream-json",
            "--verbose",
        ]
        .map(str::to_string),
    );
    if let Some(model) = &plan.settings.model {
        args.extend(["--model".to_string(), model.clone()]);
    }
    if let Some(mode) = &plan.settings.permission_mode {
        args.extend(["--permission-mode".to_string(), mode.clone()]);
    }
    let mut child = tokio::process::Command::new(&program)
        .args(&args)
        .current_dir(&plan.cwd)
        .envs(plan::extra_env(plan))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{}: cannot start {}", plan.name, program.display()))?;
    let stdout = child.stdout.take().context("stdout is not piped")?;
    let mut stderr = child.stderr.take().context("stderr is not piped")?;
    let turn = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            let Ok(value) = serde_json::from_str(&line) else {
                continue;
            };
            match parse_line(&value) {
                StreamUpdate::ApiRetry { status, error, .. }
                    if status == Some(401) || error.as_deref() == Some("authentication_failed") =>
                {
                    return Ok(Err(format!(
                        "authentication failed: the model API refused its credentials (HTTP 401); {LOGIN_FIX}"
                    )));
                }
                StreamUpdate::Result { is_error, text, .. } => {
                    let text = text.unwrap_or_default();
                    return Ok(if !is_error {
                        Ok(())
                    } else if text.to_lowercase().contains("log") {
                        Err(format!("authentication failed: {text:?}; {LOGIN_FIX}"))
                    } else {
                        Err(format!("its probe turn ended with an error: {text}"))
                    });
                }
                _ => {}
            }
        }
        anyhow::Ok(Err(String::new()))
    };
    let answer = tokio::time::timeout(limit, turn).await;
    let _ = child.start_kill();
    let status = child.wait().await.ok();
    let mut said = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stderr.read_to_string(&mut said)).await;
    let said = said.trim();
    match answer {
        Err(_) => bail!(
            "{}: its client gave no answer within {} s (a probe turn with its env and flags)",
            plan.name,
            limit.as_secs()
        ),
        Ok(Err(error)) => Err(error).context(format!("{}: cannot read its client", plan.name)),
        Ok(Ok(Ok(()))) => Ok(probed),
        Ok(Ok(Err(why))) if !why.is_empty() => bail!("{}: {why}", plan.name),
        Ok(Ok(Err(_))) => bail!(
            "{}: its client exited ({}) without answering: {}",
            plan.name,
            status.map_or_else(|| "unknown status".to_string(), |s| s.to_string()),
            if said.is_empty() {
                "nothing on stderr"
            } else {
                said
            }
        ),
    }
}

/// Probes every agent of `conclave.toml` (replicas with the same settings once), in order;
/// the first failure ends the check.
pub async fn probe_team(
    project: &conclave_core::project::Project,
    limit: Duration,
) -> anyhow::Result<Vec<Probed>> {
    probe_share(project, limit, None).await
}

/// [`probe_team`] for the agents `scope` runs on this host (all with none).
pub async fn probe_share(
    project: &conclave_core::project::Project,
    limit: Duration,
    scope: Option<&plan::HostScope>,
) -> anyhow::Result<Vec<Probed>> {
    let config = conclave_core::config::Config::load(&project.config_file())?;
    let mut plans = plan::plan_team(&config, project.root())?;
    if let Some(scope) = scope {
        plans = scope.select(plans);
    }
    let mut seen = std::collections::HashSet::new();
    let mut probed = Vec::new();
    for plan in &plans {
        let same = serde_json::to_string(&plan.settings).unwrap_or_default();
        if !seen.insert(same) {
            continue;
        }
        probed.push(probe_agent(plan, limit).await?);
    }
    Ok(probed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_tested_range_are_warned_about_naming_it() {
        let (oldest, newest) = TESTED_CLAUDE_CODE;
        assert_eq!(version_warning(&format!("{oldest} (Claude Code)")), None);
        assert_eq!(version_warning(&format!("{newest} (Claude Code)")), None);
        let old = version_warning("2.1.197 (Claude Code)").expect("an old version");
        assert!(old.contains("2.1.197") && old.contains(oldest), "{old}");
        assert!(old.contains("outside the tested range"), "{old}");
        // Compared as numbers, not text: 2.1.1000 is newer than 2.1.328.
        assert!(version_warning("2.1.1000 (Claude Code)").is_some());
        assert!(version_warning("10.0.0").is_some());
        let unreadable = version_warning("Claude Code, some version").expect("unreadable");
        assert!(unreadable.contains("cannot read"), "{unreadable}");
    }
}
