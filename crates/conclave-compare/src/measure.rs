//! A run's figures, read back from the run's own server: the agents' records (cost, and the
//! context account with the API's token counts) and its event log (denials, send-backs). The
//! same reading serves every way, so no way is measured by a different rule; the end-to-end test
//! reads the run's database and finds the same numbers.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use conclave_client::Client;
use conclave_core::model::{AgentList, Coordination, Event, EventList, EventPayload};
use tokio::process::Command;

use crate::RunRecord;

/// Events read per page.
const PAGE: usize = 5000;

/// Everything in the run's event log, oldest first.
pub async fn all_events(admin: &Client) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut after = 0_i64;
    loop {
        let query = [("after", after.to_string()), ("limit", PAGE.to_string())];
        let page: EventList = admin.get("/api/events", &query).await?;
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.seq;
        let full = page.events.len() >= PAGE;
        events.extend(page.events);
        if !full {
            break;
        }
    }
    Ok(events)
}

/// The figures the run's server holds (not wall time, files or the check).
pub async fn measure_server(admin: &Client) -> anyhow::Result<RunRecord> {
    let agents: AgentList = admin.get("/api/agents", &[]).await?;
    let events = all_events(admin).await?;
    Ok(figures(&agents, &events))
}

/// The figures of a run from its agents and events.
pub fn figures(agents: &AgentList, events: &[Event]) -> RunRecord {
    let mut total = Coordination::default();
    let mut record = RunRecord::default();
    for agent in &agents.agents {
        record.cost_usd += agent.cost_usd;
        if let Some(account) = &agent.coordination {
            total.add(account);
        }
        // An agent that made no model call did not take part (a coder with nothing to claim
        // still counts: it ran and spent).
        if agent
            .coordination
            .as_ref()
            .is_some_and(|account| account.model_calls > 0)
            || agent.cost_usd > 0.0
        {
            record.agents += 1;
        }
    }
    record.input_tokens = total.input_tokens;
    record.output_tokens = total.output_tokens;
    record.cache_read_tokens = total.cache_read_tokens;
    record.cache_creation_tokens = total.cache_creation_tokens;
    record.turns = total.model_calls;
    record.coordination_tokens = total.tokens();
    record.coordination_percent = total.percent_of_input();
    for event in events {
        match &event.payload {
            EventPayload::LeaseDenied(_) => record.lease_denials += 1,
            EventPayload::TaskSentBack(_) => record.send_backs += 1,
            EventPayload::QueueSentBack(sent) if sent.reason == "conflict" => {
                record.merge_conflicts += 1;
            }
            EventPayload::QueueSentBack(_) => record.send_backs += 1,
            _ => {}
        }
    }
    record
}

/// Files the run changed in its tree (added, modified, deleted, untracked), its own
/// `.conclave/`, `conclave.toml` and tool permissions not counted.
pub async fn files_changed(dir: &Path) -> anyhow::Result<i64> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=all"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run git status")?;
    anyhow::ensure!(
        output.status.success(),
        "git status failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(count_changed(&String::from_utf8_lossy(&output.stdout)))
}

fn count_changed(porcelain: &str) -> i64 {
    porcelain
        .lines()
        .filter_map(|line| line.get(3..))
        .map(|path| path.trim_matches('"'))
        .filter(|path| {
            !path.starts_with(".conclave/")
                && *path != "conclave.toml"
                && *path != crate::ways::LOCAL_SETTINGS
        })
        .count() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runs_own_files_are_not_changes() {
        let porcelain = "?? .conclave/conclave.db\n?? conclave.toml\n M src/lib.rs\n?? greet.sh\n\
                         ?? .claude/settings.local.json\n";
        assert_eq!(count_changed(porcelain), 2);
    }
}
