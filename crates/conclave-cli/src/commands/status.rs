//! `conclave status`: the team, the tasks by status and the leases, in one screen.

use std::collections::BTreeMap;

use conclave_core::model::{StatusReport, Task, TaskStatus};

use crate::context::Context;
use crate::output::print_json;

pub async fn run(context: &Context, json: bool) -> anyhow::Result<()> {
    let client = context.client()?;
    let status: StatusReport = client.get("/api/status", &[]).await?;
    if json {
        return print_json(&status);
    }
    println!(
        "server {} · last event #{}",
        client.base_url(),
        status.last_seq
    );
    if let Some(me) = &status.me {
        println!("you are {me} · {} unread", status.unread.unwrap_or(0));
    }

    println!();
    if status.agents.is_empty() {
        println!("agents: none");
    } else {
        println!("agents ({})", status.agents.len());
        print!(
            "{}",
            super::agent::agents_table(&status.agents, &status.tasks).render()
        );
    }

    println!();
    let mut counts: BTreeMap<usize, (TaskStatus, usize)> = BTreeMap::new();
    for task in &status.tasks {
        let order = TaskStatus::ALL
            .iter()
            .position(|status| *status == task.status)
            .unwrap_or(0);
        counts.entry(order).or_insert((task.status, 0)).1 += 1;
    }
    if counts.is_empty() {
        println!("tasks: none");
    } else {
        let summary: Vec<String> = counts
            .values()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        println!("tasks: {}", summary.join(", "));
        let open: Vec<Task> = status
            .tasks
            .iter()
            .filter(|task| !task.status.is_finished())
            .cloned()
            .collect();
        if !open.is_empty() {
            print!("{}", super::task::tasks_table(&open).render());
        }
    }

    println!();
    if status.leases.is_empty() {
        println!("leases: none");
    } else {
        println!("leases ({})", status.leases.len());
        print!("{}", super::lock::leases_table(&status.leases).render());
    }
    Ok(())
}
