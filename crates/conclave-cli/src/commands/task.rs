//! `conclave task ...`: create, list, show, edit and steer tasks; claim, update and finish them as
//! an agent.

use conclave_core::model::{
    ClaimRequest, EventList, EventPayload, NewTask, ReasonRequest, Task, TaskAssign, TaskCancel,
    TaskDecision, TaskEdit, TaskFailure, TaskFinish, TaskId, TaskList, TaskStatus,
    TaskStatusUpdate, TaskStep, TaskStepList, Verdict,
};
use conclave_core::model::{MAX_DIFF_BYTES, TaskDiff};
use conclave_core::store::ClaimOutcome;

use crate::cli::TaskCommand;
use crate::context::Context;
use crate::error::{ApiError, NothingReady};
use crate::output::{Table, clip, note, or_dash, outln, print_json, printable, until};
use conclave_client::Client;

pub async fn run(context: &Context, command: TaskCommand) -> anyhow::Result<()> {
    // Agent-only commands say so before anything else is looked up.
    if let TaskCommand::Claim { .. } = command {
        context.require_agent("conclave task claim")?;
    }
    let client = context.client()?;
    match command {
        TaskCommand::Add {
            title,
            body,
            after,
            role,
            caps,
            priority,
            parent,
            pipeline,
            approve,
        } => {
            let request = NewTask {
                title,
                body,
                after,
                role,
                caps,
                priority,
                parent,
                pipeline,
                approve,
            };
            let task: Task = client.post("/api/tasks", &request).await?;
            outln!("{}", task.id)?;
            note!("conclave: created {} ({})", task.id, task.status);
        }
        TaskCommand::List {
            status,
            assignee,
            json,
        } => {
            let mut query = Vec::new();
            if let Some(status) = status {
                query.push(("status", status.to_string()));
            }
            if let Some(assignee) = assignee {
                query.push(("assignee", assignee));
            }
            // The server answers a page at a time; the listing is every page.
            let mut list: TaskList = client.get("/api/tasks", &query).await?;
            while let Some(after) = list.next_after.take() {
                let mut next_query = query.clone();
                next_query.push(("after", after.to_string()));
                let page: TaskList = client.get("/api/tasks", &next_query).await?;
                list.tasks.extend(page.tasks);
                list.next_after = page.next_after;
            }
            if json {
                print_json(&list)?;
            } else if list.tasks.is_empty() {
                note!("no tasks");
            } else {
                tasks_table(&list.tasks).print()?;
            }
        }
        TaskCommand::Show { id, json, diff } => {
            let task: Task = client.get(&task_path(id, ""), &[]).await?;
            // The whole patch the server gives: a terminal pages it, a pipe takes it all.
            let diff_query = [("max_bytes", MAX_DIFF_BYTES.to_string())];
            if json && diff {
                let diff: TaskDiff = client.get(&task_path(id, "/diff"), &diff_query).await?;
                print_json(&diff)?;
            } else if json {
                print_json(&task)?;
            } else {
                let blocked = blocked_reason(&client, &task).await?;
                let history: TaskStepList = client.get(&task_path(id, "/steps"), &[]).await?;
                print_task(&task, blocked.as_deref())?;
                print_steps(&history.steps)?;
                if diff {
                    let diff: TaskDiff = client.get(&task_path(id, "/diff"), &diff_query).await?;
                    print_diff(&diff)?;
                }
            }
        }
        TaskCommand::Edit {
            id,
            title,
            body,
            priority,
            role,
            after,
        } => {
            let request = TaskEdit {
                title,
                body,
                priority,
                role,
                caps: None,
                after,
            };
            let task: Task = client.patch(&task_path(id, ""), &request).await?;
            note!("conclave: edited {} ({})", task.id, task.status);
        }
        TaskCommand::Cancel { id, reason } => {
            let task: Task = client
                .post(&task_path(id, "/cancel"), &TaskCancel { reason })
                .await?;
            note!("conclave: {} {}", task.id, task.status);
        }
        TaskCommand::Assign { id, agent } => {
            let task: Task = client
                .post(&task_path(id, "/assign"), &TaskAssign { agent })
                .await?;
            note!(
                "conclave: {} assigned to {} ({})",
                task.id,
                or_dash(task.assignee.as_ref()),
                task.status
            );
        }
        TaskCommand::Reopen { id, reason } => {
            let task: Task = client
                .post(&task_path(id, "/reopen"), &ReasonRequest { reason })
                .await?;
            note!("conclave: reopened {} ({})", task.id, task.status);
        }
        TaskCommand::Claim { id } => claim(&client, id).await?,
        TaskCommand::Update { id, status, note } => {
            let status = status.parse()?;
            let task: Task = client
                .post(
                    &task_path(id, "/status"),
                    &TaskStatusUpdate { status, note },
                )
                .await?;
            note!("conclave: {} is {}", task.id, task.status);
        }
        TaskCommand::Done {
            id,
            summary,
            files,
            send_back,
            to_stage,
        } => {
            let verdict = send_back.as_ref().map(|_| Verdict::SendBack);
            let task: Task = client
                .post(
                    &task_path(id, "/done"),
                    &TaskFinish {
                        summary,
                        files,
                        verdict,
                        comments: send_back,
                        to_stage,
                    },
                )
                .await?;
            note!("conclave: {} is {}", task.id, task.status);
        }
        TaskCommand::Fail { id, reason } => {
            let task: Task = client
                .post(&task_path(id, "/fail"), &TaskFailure { reason })
                .await?;
            note!("conclave: {} is {}", task.id, task.status);
        }
        TaskCommand::Approve { id, comment } => {
            let task: Task = client
                .post(&task_path(id, "/approve"), &TaskDecision { comment })
                .await?;
            note!("conclave: approved {} ({})", task.id, task.status);
        }
        TaskCommand::Reject { id, comment } => {
            let task: Task = client
                .post(
                    &task_path(id, "/reject"),
                    &TaskDecision {
                        comment: Some(comment),
                    },
                )
                .await?;
            note!(
                "conclave: rejected {}: back to {} ({})",
                task.id,
                or_dash(task.assignee.as_ref()),
                task.status
            );
        }
    }
    Ok(())
}

async fn claim(client: &Client, id: Option<TaskId>) -> anyhow::Result<()> {
    let claimed: anyhow::Result<ClaimOutcome> =
        client.post("/api/tasks/claim", &ClaimRequest { id }).await;
    let claimed = match claimed {
        Ok(claimed) => claimed,
        // A named task that is not ready is "nothing ready" too (exit 3), with the server's reason.
        Err(error) => match error.downcast_ref::<ApiError>() {
            Some(api) if api.code == "not_ready" => {
                return Err(NothingReady {
                    message: api.message.clone(),
                }
                .into());
            }
            _ => return Err(error),
        },
    };
    match claimed.task {
        Some(task) => {
            outln!("{}", task.id)?;
            note!("conclave: claimed {}: {}", task.id, clip(&task.title, 80));
            Ok(())
        }
        None => Err(NothingReady {
            message: "nothing is ready to claim".to_string(),
        }
        .into()),
    }
}

fn task_path(id: TaskId, rest: &str) -> String {
    format!("/api/tasks/{id}{rest}")
}

pub fn tasks_table(tasks: &[Task]) -> Table {
    let mut table = Table::new(&["id", "status", "pri", "assignee", "role", "after", "title"]);
    for task in tasks {
        let after: Vec<String> = task.depends_on.iter().map(ToString::to_string).collect();
        table.row(vec![
            task.id.to_string(),
            task.status.to_string(),
            task.priority.to_string(),
            or_dash(task.assignee.as_ref()),
            or_dash(task.role.as_ref()),
            if after.is_empty() {
                "-".to_string()
            } else {
                after.join(",")
            },
            clip(&task.title, 60),
        ]);
    }
    table
}

/// Why a blocked task is blocked: the server's reason (a dependency failed or was cancelled),
/// else the note its holder gave when it marked it blocked.
async fn blocked_reason(client: &Client, task: &Task) -> anyhow::Result<Option<String>> {
    if task.status != TaskStatus::Blocked {
        return Ok(None);
    }
    if let Some(reason) = &task.blocked_reason {
        return Ok(Some(reason.clone()));
    }
    let query = [
        ("task", task.id.to_string()),
        ("kind", "task.updated".to_string()),
        ("desc", "true".to_string()),
        ("limit", "1".to_string()),
    ];
    let list: EventList = client.get("/api/events", &query).await?;
    Ok(list
        .events
        .into_iter()
        .find_map(|event| match event.payload {
            EventPayload::TaskUpdated(updated) if updated.to == TaskStatus::Blocked => Some(
                updated
                    .note
                    .unwrap_or_else(|| "no reason given".to_string()),
            ),
            _ => None,
        }))
}

/// The task's history, one line a step: when, who, at which stage, what they decided and said.
fn print_steps(steps: &[TaskStep]) -> std::io::Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    outln!()?;
    outln!("history:")?;
    for step in steps {
        let mut line = format!(
            "  {}  {}  {}",
            step.at.format("%Y-%m-%d %H:%M:%S"),
            step.actor,
            step.verdict
        );
        if let Some(role) = &step.role {
            line.push_str(&format!(" as {role}"));
        }
        if let Some(stage) = step.to_stage {
            line.push_str(&format!(" to stage {}", stage + 1));
        }
        if let Some(comments) = &step.comments {
            line.push_str(&format!(": {comments}"));
        } else if let Some(summary) = &step.summary {
            line.push_str(&format!(": {summary}"));
        }
        outln!("{}", printable(&line))?;
    }
    Ok(())
}

fn print_task(task: &Task, blocked: Option<&str>) -> std::io::Result<()> {
    let mut lines = vec![
        format!("{}  {}", task.id, task.title),
        format!("status:    {}", task.status),
    ];
    if let Some(reason) = blocked {
        lines.push(format!("blocked:   {reason}"));
    }
    lines.push(format!("priority:  {}", task.priority));
    if let Some(assignee) = &task.assignee {
        let claim = task
            .claim_expires_at
            .map(|at| format!(" (claim expires {})", until(at)));
        lines.push(format!(
            "assignee:  {assignee}{}",
            claim.unwrap_or_default()
        ));
    }
    if let Some(role) = &task.role {
        lines.push(format!("role:      {role}"));
    }
    if let Some(pipeline) = &task.pipeline {
        let stages: Vec<&str> = pipeline
            .pipeline
            .stages
            .iter()
            .map(|stage| stage.role.as_str())
            .collect();
        lines.push(format!(
            "pipeline:  {} ({}), stage {} of {}, {} sent back",
            pipeline.pipeline.name,
            stages.join(" → "),
            pipeline.stage + 1,
            stages.len(),
            pipeline.send_backs
        ));
    }
    if task.awaiting_approval {
        lines.push("waiting:   a person's decision (conclave task approve|reject)".to_string());
    } else if task.approve {
        lines.push("approval:  a person decides when it is finished".to_string());
    }
    if !task.caps.is_empty() {
        lines.push(format!("caps:      {}", task.caps.join(", ")));
    }
    if !task.depends_on.is_empty() {
        let after: Vec<String> = task.depends_on.iter().map(ToString::to_string).collect();
        lines.push(format!("after:     {}", after.join(", ")));
    }
    if let Some(parent) = task.parent {
        lines.push(format!("parent:    {parent}"));
    }
    lines.push(format!("attempts:  {}", task.attempts));
    if task.cost_usd > 0.0 {
        lines.push(format!(
            "cost:      ${:.4} (spent by its holders while holding it)",
            task.cost_usd
        ));
    }
    lines.push(format!(
        "created:   {} by {}",
        task.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        task.created_by
    ));
    if let Some(result) = &task.result {
        lines.push(format!("result:    {result}"));
    }
    if !task.files.is_empty() {
        lines.push(format!("files:     {}", task.files.join(", ")));
    }
    // Manifests and lockfiles its holders changed: `cargo add` by one agent changes what
    // everyone builds.
    for change in &task.dependency_changes {
        let how = match &change.command {
            Some(command) => format!("{}: {command}", change.tool),
            None => change.tool.clone(),
        };
        lines.push(format!(
            "deps:      {} ({} {}) by {} via {how}",
            change.path,
            change.ecosystem,
            change.file,
            change.agent.as_deref().unwrap_or("?"),
        ));
    }
    for line in lines {
        outln!("{}", printable(&line))?;
    }
    if !task.body.trim().is_empty() {
        outln!()?;
        for line in task.body.trim_end().lines() {
            outln!("{}", printable(line))?;
        }
    }
    Ok(())
}

/// A task branch's diff: a line of totals, the files, then the patch as git wrote it.
fn print_diff(diff: &TaskDiff) -> anyhow::Result<()> {
    outln!(
        "\ndiff of {} against {}: {} file(s), +{} -{}",
        diff.branch,
        diff.into,
        diff.files.len(),
        diff.added,
        diff.removed
    )?;
    for file in &diff.files {
        let counts = if file.binary {
            "binary".to_string()
        } else {
            format!(
                "+{} -{}",
                file.added.unwrap_or(0),
                file.removed.unwrap_or(0)
            )
        };
        match &file.old_path {
            Some(old) => outln!(
                "  {} -> {}  {counts}",
                printable(old),
                printable(&file.path)
            )?,
            None => outln!("  {}  {counts}", printable(&file.path))?,
        }
    }
    outln!()?;
    // The patch is the branch's text, which anyone with a worktree wrote: control characters
    // are escaped so that it cannot drive the terminal, tabs kept so that code lines up.
    for line in diff.patch.lines() {
        let shown: Vec<String> = line.split('\t').map(printable).collect();
        outln!("{}", shown.join("\t"))?;
    }
    if diff.truncated {
        note!(
            "conclave: the patch was cut at {} bytes (the file list above is complete)",
            diff.max_bytes
        );
    }
    Ok(())
}
