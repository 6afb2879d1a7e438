//! `conclave attach NAME`: follows one agent's live stream (`.conclave/agents/NAME/stream.jsonl`,
//! written by the supervisor) like `tail -f`, printing its turns readably: tool calls, text,
//! and each turn's cost. A rotated or recreated file is followed from its start.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::cli::AttachArgs;
use crate::context::Context;
use conclave_supervisor::stream::{Content, StreamUpdate, parse_line, truncate};

/// Lines of history printed before following.
const HISTORY_LINES: usize = 40;
const POLL: Duration = Duration::from_millis(200);

pub async fn run(context: &Context, args: AttachArgs) -> anyhow::Result<()> {
    let project = context.project()?;
    let agent_dir = project.agent_dir(&args.name);
    // An agent the team does not name and that never ran would be waited for forever.
    if !agent_dir.exists() && !team_names(project).contains(&args.name) {
        anyhow::bail!(
            "no agent named {:?} in this team (conclave.toml names: {})",
            args.name,
            team_names(project).join(", ")
        );
    }
    let path = agent_dir.join("stream.jsonl");
    eprintln!("conclave: following {} (Ctrl-C to stop)", path.display());
    let mut printed_history = false;
    loop {
        let Ok(mut file) = std::fs::File::open(&path) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let inode = file
            .metadata()
            .context("cannot read the stream file")?
            .ino();
        // Bytes, not text: the file may end inside a character the agent is still writing.
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut offset = bytes.len() as u64;
        let complete = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |end| end + 1);
        let mut pending: Vec<u8> = bytes.split_off(complete);
        let text = String::from_utf8_lossy(&bytes);
        if !printed_history {
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(HISTORY_LINES)..] {
                print_line(line)?;
            }
            printed_history = true;
        } else {
            for line in text.lines() {
                print_line(line)?;
            }
        }
        loop {
            tokio::time::sleep(POLL).await;
            let replaced = std::fs::metadata(&path)
                .map(|meta| meta.ino() != inode || meta.len() < offset)
                .unwrap_or(true);
            let mut chunk = Vec::new();
            file.seek(SeekFrom::Start(offset))?;
            file.read_to_end(&mut chunk)?;
            offset += chunk.len() as u64;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                print_line(String::from_utf8_lossy(&line).trim_end())?;
            }
            if replaced {
                break;
            }
        }
    }
}

/// Prints one line; a closed stdout ends the command with the write's error (which `main`
/// takes for an ordinary end), not a panic.
fn print_line(line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(text) = render(line) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(())
}

/// The agents `conclave.toml` names (replicas counted); none when it cannot be read.
fn team_names(project: &conclave_core::project::Project) -> Vec<String> {
    conclave_core::config::Config::load(&project.config_file())
        .ok()
        .and_then(|config| conclave_supervisor::plan::plan_team(&config, project.root()).ok())
        .map(|plans| plans.into_iter().map(|plan| plan.name).collect())
        .unwrap_or_default()
}

/// One stream-json line as people read it; `None` for lines of no interest.
pub fn render(line: &str) -> Option<String> {
    let value: Value = serde_json::from_str(line).ok()?;
    match parse_line(&value) {
        StreamUpdate::Init { session_id, model } => Some(format!(
            "── turn in session {} ({})",
            session_id.as_deref().unwrap_or("?"),
            model.as_deref().unwrap_or("?")
        )),
        StreamUpdate::Assistant { content, .. } => {
            let out: Vec<String> = content
                .into_iter()
                .map(|block| match block {
                    Content::Text(text) => truncate(&text, 2000),
                    Content::Tool(tool) => format!("→ {} {}", tool.name, tool.input),
                })
                .collect();
            (!out.is_empty()).then(|| out.join("\n"))
        }
        StreamUpdate::ToolResults(results) => Some(
            results
                .iter()
                .map(|result| {
                    let error = if result.is_error { " (error)" } else { "" };
                    format!("  ← {} bytes{error}", result.bytes)
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        StreamUpdate::Result {
            cost_usd,
            is_error,
            num_turns,
            ..
        } => Some(format!(
            "── turn ended{}: {} model call(s), total cost ${:.4}",
            if is_error { " with an error" } else { "" },
            num_turns.unwrap_or(0),
            cost_usd.unwrap_or(0.0)
        )),
        StreamUpdate::ApiRetry {
            status,
            error,
            attempt,
            ..
        } => Some(format!(
            "── model call failed ({}{}), retry {}",
            status.map_or_else(|| "no status".to_string(), |s| format!("HTTP {s}")),
            error.map(|e| format!(": {e}")).unwrap_or_default(),
            attempt.unwrap_or(0)
        )),
        StreamUpdate::Cost { .. } | StreamUpdate::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_read_as_text() {
        let cases = [
            (
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"ls"}}]}}"#,
                Some("→ Bash ls"),
            ),
            (
                r#"{"type":"result","num_turns":2,"total_cost_usd":0.5}"#,
                Some("── turn ended: 2 model call(s), total cost $0.5000"),
            ),
            // A failed model call is shown, not skipped: it is often why nothing happens.
            (
                r#"{"type":"system","subtype":"api_retry","attempt":1,"error_status":401,"error":"authentication_failed"}"#,
                Some("── model call failed (HTTP 401: authentication_failed), retry 1"),
            ),
            (r#"{"type":"system","subtype":"status"}"#, None),
            ("not json", None),
        ];
        for (line, expected) in cases {
            assert_eq!(render(line).as_deref(), expected, "{line}");
        }
    }
}
