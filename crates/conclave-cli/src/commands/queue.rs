//! `conclave queue [--json]` and `conclave queue pause|resume|skip|retry|merge` (the merge
//! queue: `/api/queue`).

use conclave_core::model::{QueueEntry, QueueView};
use serde_json::json;

use crate::cli::{QueueArgs, QueueCommand};
use crate::context::Context;
use crate::output::{Table, ago, note, or_dash, print_json};

pub async fn run(context: &Context, args: QueueArgs) -> anyhow::Result<()> {
    let client = context.client()?;
    let empty = json!({});
    let entry: QueueEntry = match args.action {
        None => {
            let view: QueueView = client.get("/api/queue", &[]).await?;
            return show(&view, args.json);
        }
        Some(QueueCommand::Pause) => {
            let view: QueueView = client.post("/api/queue/pause", &empty).await?;
            note!("conclave: the merge queue is paused");
            return show(&view, args.json);
        }
        Some(QueueCommand::Resume) => {
            let view: QueueView = client.post("/api/queue/resume", &empty).await?;
            note!("conclave: the merge queue runs");
            return show(&view, args.json);
        }
        Some(QueueCommand::Skip { task }) => {
            client
                .post(&format!("/api/queue/{task}/skip"), &empty)
                .await?
        }
        Some(QueueCommand::Retry { task }) => {
            client
                .post(&format!("/api/queue/{task}/retry"), &empty)
                .await?
        }
        Some(QueueCommand::Merge { task }) => {
            client
                .post(&format!("/api/queue/{task}/merge"), &empty)
                .await?
        }
    };
    if args.json {
        print_json(&entry)?;
    } else {
        entries_table(std::slice::from_ref(&entry)).print()?;
        if let Some(outcome) = &entry.outcome {
            note!("{outcome}");
        }
    }
    Ok(())
}

fn show(view: &QueueView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(view);
    }
    if view.paused {
        note!(
            "the merge queue is paused{}",
            view.paused_reason
                .as_deref()
                .map(|reason| format!(": {reason}"))
                .unwrap_or_default()
        );
    }
    if view.entries.is_empty() {
        note!("the merge queue is empty");
        return Ok(());
    }
    entries_table(&view.entries).print()?;
    Ok(())
}

fn entries_table(entries: &[QueueEntry]) -> Table {
    let mut table = Table::new(&[
        "#", "task", "branch", "agent", "state", "tries", "updated", "outcome",
    ]);
    for entry in entries {
        let outcome = entry
            .outcome
            .as_deref()
            .and_then(|text| text.lines().next())
            .map(str::to_string);
        table.row(vec![
            entry.position.to_string(),
            entry.task.to_string(),
            entry.branch.clone(),
            entry.agent.clone(),
            entry.state.to_string(),
            entry.attempts.to_string(),
            ago(entry.updated_at),
            or_dash(outcome),
        ]);
    }
    table
}
