//! `/api/tasks`: create, list, edit, claim, update, finish, fail, cancel, assign, reopen,
//! approve, reject, and a task's history of steps.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::model::{
    Actor, ClaimRequest, DependencyChange, EventFilter, EventPayload, NewTask, ReasonRequest, Task,
    TaskAssign, TaskCancel, TaskDecision, TaskEdit, TaskFailure, TaskFinish, TaskId, TaskList,
    TaskStatus, TaskStatusUpdate, TaskStepList,
};
use conclave_core::store::TaskPage;
use serde::Deserialize;

use crate::app::App;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ops::{self, IdempotencyKey};

fn parse_id(text: &str) -> ApiResult<TaskId> {
    Ok(text.parse::<TaskId>()?)
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    #[schemars(with = "Option<TaskStatus>")]
    pub status: Option<String>,
    pub assignee: Option<String>,
    /// Tasks after this one in id order (the `next_after` of the previous page).
    #[schemars(with = "Option<TaskId>")]
    pub after: Option<String>,
    /// Tasks per page, 1 to 1,000 (default 1,000; a larger number is read as 1,000).
    pub limit: Option<i64>,
}

/// The most tasks one page of `GET /api/tasks` holds.
const TASK_PAGE_MAX: i64 = 1000;

pub async fn create(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(new): ApiJson<NewTask>,
) -> ApiResult<Response> {
    let key = key.with_body(&new);
    Ok(ops::create_task(&app, &actor, &key, new).await?.created())
}

pub async fn list(
    State(app): State<App>,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> ApiResult<Json<TaskList>> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()?;
    let after = query.after.as_deref().map(parse_id).transpose()?;
    let limit = query.limit.unwrap_or(TASK_PAGE_MAX).clamp(1, TASK_PAGE_MAX);
    // One more than asked tells whether another page follows without counting the rest.
    let page = TaskPage {
        status,
        assignee: query.assignee,
        after,
        limit: limit + 1,
    };
    let mut tasks = app.read(move |r| r.task_page(&page)).await?;
    let next_after = if tasks.len() as i64 > limit {
        tasks.truncate(limit as usize);
        tasks.last().map(|task| task.id)
    } else {
        None
    };
    Ok(Json(TaskList { tasks, next_after }))
}

/// One task, with the dependency manifests and lockfiles its holders changed (read from its
/// `file.dependency_changed` events: write attribution, issue 11).
pub async fn show(State(app): State<App>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Task>> {
    let id = parse_id(&id)?;
    Ok(Json(
        app.read(move |r| {
            let mut task = r.task(id)?;
            task.dependency_changes = dependency_changes(r, id)?;
            Ok(task)
        })
        .await?,
    ))
}

/// The most dependency changes shown on one task (the latest ones).
const MAX_DEPENDENCY_CHANGES: i64 = 200;

fn dependency_changes(
    reader: &conclave_core::store::Reader<'_>,
    task: TaskId,
) -> conclave_core::Result<Vec<DependencyChange>> {
    let filter = EventFilter {
        task: Some(task),
        kind: Some("file.dependency_changed".to_string()),
        limit: Some(MAX_DEPENDENCY_CHANGES),
        desc: true,
        ..EventFilter::default()
    };
    let mut changes: Vec<DependencyChange> = reader
        .events(&filter)?
        .into_iter()
        .filter_map(|event| match event.payload {
            EventPayload::FileDependencyChanged(changed) => Some(DependencyChange {
                path: changed.path,
                ecosystem: changed.ecosystem,
                file: changed.file,
                agent: event.agent,
                tool: changed.tool,
                command: changed.command,
                at: event.ts,
            }),
            _ => None,
        })
        .collect();
    changes.reverse();
    Ok(changes)
}

pub async fn steps(
    State(app): State<App>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TaskStepList>> {
    let id = parse_id(&id)?;
    let steps = app
        .read(move |r| {
            // Asking for the history of a task that does not exist is a 404, not an empty list.
            r.task(id)?;
            r.task_steps(id)
        })
        .await?;
    Ok(Json(TaskStepList { steps }))
}

pub async fn approve(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(decision): ApiJson<TaskDecision>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&decision);
    Ok(ops::approve_task(&app, &actor, &key, id, decision)
        .await?
        .ok())
}

pub async fn reject(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(decision): ApiJson<TaskDecision>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&decision);
    Ok(ops::reject_task(&app, &actor, &key, id, decision)
        .await?
        .ok())
}

pub async fn edit(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(edit): ApiJson<TaskEdit>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&edit);
    let by = actor.clone();
    Ok(app
        .write(&actor, &key, move |tx| tx.edit_task(&by, id, edit))
        .await?
        .ok())
}

pub async fn claim(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> ApiResult<Response> {
    let key = key.with_body(&request);
    Ok(ops::claim_task(&app, &actor, &key, request.id).await?.ok())
}

pub async fn set_status(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<TaskStatusUpdate>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&update);
    Ok(ops::set_task_status(&app, &actor, &key, id, update)
        .await?
        .ok())
}

pub async fn done(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(finish): ApiJson<TaskFinish>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&finish);
    Ok(ops::finish_task(&app, &actor, &key, id, finish).await?.ok())
}

pub async fn fail(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(failure): ApiJson<TaskFailure>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&failure);
    Ok(ops::fail_task(&app, &actor, &key, id, failure.reason)
        .await?
        .ok())
}

pub async fn cancel(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(cancel): ApiJson<TaskCancel>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&cancel);
    let by = actor.clone();
    Ok(app
        .write(&actor, &key, move |tx| {
            tx.cancel_task(&by, id, cancel.reason)
        })
        .await?
        .ok())
}

pub async fn assign(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(assign): ApiJson<TaskAssign>,
) -> ApiResult<Response> {
    ops::require_admin(&actor, "assign tasks")?;
    let id = parse_id(&id)?;
    let key = key.with_body(&assign);
    let by = actor.clone();
    let agent = assign.agent.clone();
    let written = app
        .write(&actor, &key, move |tx| tx.assign_task(&by, id, assign))
        .await?;
    // A worktree agent's worktree follows the task it was given, as after a claim.
    if !written.replayed && written.typed()?.status == TaskStatus::Claimed {
        crate::worktree_tasks::after_assign(&app, &agent, id).await;
    }
    Ok(written.ok())
}

pub async fn reopen(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ReasonRequest>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let key = key.with_body(&request);
    let by = actor.clone();
    Ok(app
        .write(&actor, &key, move |tx| {
            tx.reopen_task(&by, id, request.reason)
        })
        .await?
        .ok())
}
