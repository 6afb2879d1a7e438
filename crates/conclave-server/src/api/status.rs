//! `/api/status`, `/healthz` and `/metrics` (`/api/openapi.json` is served by the route table,
//! which builds it).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use conclave_core::model::{Actor, Health, STATUS_FINISHED_TASKS, StatusReport, TaskCounts};

use crate::app::App;
use crate::error::ApiResult;
use crate::metrics::StateGauges;

/// The team at a glance. Its cost follows what is open (agents, unfinished tasks, live leases)
/// and a fixed number of finished tasks; the history is only counted, through indexes.
pub async fn status(State(app): State<App>, actor: Actor) -> ApiResult<Json<StatusReport>> {
    let me = actor.agent().map(str::to_string);
    let now = chrono::Utc::now().timestamp_millis();
    let report = app
        .read(move |r| {
            let unread = me.as_deref().map(|name| r.unread_count(name)).transpose()?;
            Ok(StatusReport {
                agents: r.agents()?,
                tasks: r.open_and_recent_tasks(STATUS_FINISHED_TASKS)?,
                task_counts: TaskCounts::from_pairs(&r.task_status_counts()?),
                leases: r.leases(now)?,
                me,
                unread,
                last_seq: r.last_seq()?,
                alerts: r.count_events("agent.alert")?,
                approvals_waiting: r.approvals_waiting()?,
                confirmations_waiting: crate::api::confirmations::waiting_count(r)?,
            })
        })
        .await?;
    Ok(Json(report))
}

pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

pub async fn metrics(State(app): State<App>) -> ApiResult<impl IntoResponse> {
    let now = chrono::Utc::now().timestamp_millis();
    let gauges = app
        .read(move |r| {
            Ok(StateGauges {
                tasks: r.task_status_counts()?,
                agents: r.agent_status_counts()?,
                leases: r.live_lease_count(now)?,
                last_seq: r.last_seq()?,
            })
        })
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics().render(&gauges),
    ))
}
