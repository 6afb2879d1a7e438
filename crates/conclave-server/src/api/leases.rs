//! `/api/leases`: take, release and list file leases.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::model::{Actor, LeaseList, LeaseRelease, LeaseRequest};

use crate::app::App;
use crate::error::ApiResult;
use crate::extract::ApiJson;
use crate::ops::{self, IdempotencyKey};

pub async fn acquire(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(request): ApiJson<LeaseRequest>,
) -> ApiResult<Response> {
    let holder = ops::require_agent(&actor, "take file leases")?.to_string();
    let key = key.with_body(&request);
    Ok(ops::acquire_leases(&app, &actor, &key, &holder, request)
        .await?
        .ok())
}

pub async fn release(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(release): ApiJson<LeaseRelease>,
) -> ApiResult<Response> {
    let key = key.with_body(&release);
    Ok(ops::release_leases(&app, &actor, &key, release).await?.ok())
}

pub async fn list(State(app): State<App>) -> ApiResult<Json<LeaseList>> {
    let now = chrono::Utc::now().timestamp_millis();
    let leases = app.read(move |r| r.leases(now)).await?;
    Ok(Json(LeaseList { leases }))
}
