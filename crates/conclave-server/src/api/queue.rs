//! `/api/queue`: the merge queue (merge_queue.rs, store/queue.rs). Any agent may read it; a
//! person (admin) pauses, resumes, skips, retries, or merges an entry by hand.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::CoreError;
use conclave_core::model::{Actor, QueueEntry, QueueView, TaskId};

use crate::app::App;
use crate::error::ApiResult;
use crate::extract::ApiPath;
use crate::ops::{IdempotencyKey, require_admin};

fn parse_id(text: &str) -> ApiResult<TaskId> {
    Ok(text.parse::<TaskId>()?)
}

/// Wakes the runner after a change that may let it land something.
fn wake(app: &App) {
    if let Some(queue) = &app.settings().merge {
        queue.wake();
    }
}

pub async fn show(State(app): State<App>) -> ApiResult<Json<QueueView>> {
    Ok(Json(app.read(|r| r.merge_queue()).await?))
}

pub async fn pause(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
) -> ApiResult<Response> {
    require_admin(&actor, "pause the merge queue")?;
    let by = actor.clone();
    let written = app
        .write(&actor, &key, move |tx| {
            tx.pause_merge_queue(&by, None)?;
            tx.read().merge_queue()
        })
        .await?;
    Ok(written.ok())
}

pub async fn resume(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
) -> ApiResult<Response> {
    require_admin(&actor, "resume the merge queue")?;
    let by = actor.clone();
    let written = app
        .write(&actor, &key, move |tx| {
            tx.resume_merge_queue(&by)?;
            tx.read().merge_queue()
        })
        .await?;
    wake(&app);
    Ok(written.ok())
}

pub async fn skip(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    require_admin(&actor, "skip a merge queue entry")?;
    let id = parse_id(&id)?;
    let by = actor.clone();
    let written = app
        .write(&actor, &key, move |tx| tx.skip_merge(&by, id))
        .await?;
    Ok(written.ok())
}

pub async fn retry(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    require_admin(&actor, "retry a merge queue entry")?;
    let id = parse_id(&id)?;
    let by = actor.clone();
    let written = app
        .write(&actor, &key, move |tx| tx.retry_merge(&by, id))
        .await?;
    wake(&app);
    Ok(written.ok())
}

/// Lands a waiting entry now, out of order and even while the queue is paused; answers when
/// the landing is over (the check included).
pub async fn merge(
    State(app): State<App>,
    actor: Actor,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<QueueEntry>> {
    require_admin(&actor, "merge a branch by hand")?;
    let id = parse_id(&id)?;
    let Some(queue) = app.settings().merge.clone() else {
        return Err(CoreError::conflict(
            "no merge queue runs: conclave.toml has no [merge] table".to_string(),
        )
        .into());
    };
    let entry = queue.merge_now(&app, id).await?;
    wake(&app);
    Ok(Json(entry))
}
