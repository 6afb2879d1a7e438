//! `conclave status`: the team, the tasks by status and the leases, in one screen.

use conclave_core::model::{StatusReport, Task, TaskStatus};

use crate::context::Context;
use crate::output::{out, outln, print_json};

pub async fn run(context: &Context, json: bool) -> anyhow::Result<()> {
    let client = context.client()?;
    let status: StatusReport = client.get("/api/status", &[]).await?;
    if json {
        return print_json(&status);
    }
    outln!(
        "server {} · last event #{}",
        client.base_url(),
        status.last_seq
    )?;
    if let Some(me) = &status.me {
        outln!("you are {me} · {} unread", status.unread.unwrap_or(0))?;
    }
    // Failures a person should see (`conclave log --kind agent.alert` lists them).
    outln!("alerts: {}", status.alerts)?;
    // Tasks held for a person (`conclave task approve|reject` decides), and loops waiting for a
    // person's go-ahead (their terminal or the dashboard answers).
    let decisions = status.approvals_waiting + status.confirmations_waiting;
    match status.confirmations_waiting {
        0 => outln!("decisions waiting: {decisions}")?,
        loops => outln!("decisions waiting: {decisions} ({loops} loop confirmation(s))")?,
    }

    outln!()?;
    if status.agents.is_empty() {
        outln!("agents: none")?;
    } else {
        outln!("agents ({})", status.agents.len())?;
        out!(
            "{}",
            super::agent::agents_table(&status.agents, &status.tasks).render()
        )?;
        // What coordination costs each agent in context (docs/compare.md).
        for agent in &status.agents {
            match &agent.coordination {
                Some(account) => outln!("  {}: {}", agent.name, account.describe())?,
                // Only `conclave up` and `conclave loop` count it.
                None => outln!("  {}: coordination: not measured yet", agent.name)?,
            }
        }
    }

    outln!()?;
    let status_counts = status.task_counts;
    // Counted by the server over all history; `tasks` holds only the open and recent ones.
    let counts: Vec<(TaskStatus, u64)> = TaskStatus::ALL
        .iter()
        .map(|status| (*status, status_counts.get(*status)))
        .filter(|(_, n)| *n > 0)
        .collect();
    if counts.is_empty() {
        outln!("tasks: none")?;
    } else {
        let summary: Vec<String> = counts
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        outln!("tasks: {}", summary.join(", "))?;
        let open: Vec<Task> = status
            .tasks
            .iter()
            .filter(|task| !task.status.is_finished())
            .cloned()
            .collect();
        if !open.is_empty() {
            out!("{}", super::task::tasks_table(&open).render())?;
        }
    }

    outln!()?;
    if status.leases.is_empty() {
        outln!("leases: none")?;
    } else {
        outln!("leases ({})", status.leases.len())?;
        out!("{}", super::lock::leases_table(&status.leases).render())?;
    }
    Ok(())
}
