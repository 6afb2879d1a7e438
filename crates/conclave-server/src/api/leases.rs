//! `/api/leases`: take, release and list file leases.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::event::LeaseDenied;
use conclave_core::model::EventPayload;
use conclave_core::model::{Actor, LeaseList, LeaseRelease, LeaseRequest, ReleasedLeases};

use crate::app::{ApiJson, App, IdempotencyKey, only_agent};
use crate::error::ApiResult;

pub async fn acquire(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(request): ApiJson<LeaseRequest>,
) -> ApiResult<Response> {
    let holder = only_agent(&actor, "take file leases")?.to_string();
    let key = key.with_body(&request);
    let paths = request.paths.clone();
    let result = acquire_for(&app, &actor, &key, holder.clone(), request).await;
    if let Err(error) = &result
        && error.code == "lease_conflict"
    {
        record_denial(&app, &holder, &paths, &error.message).await;
    }
    Ok(result?.ok())
}

pub(crate) async fn acquire_for(
    app: &App,
    actor: &Actor,
    key: &IdempotencyKey,
    holder: String,
    request: LeaseRequest,
) -> ApiResult<crate::app::Written> {
    app.write(actor, key, move |tx| {
        let leases = tx.acquire_leases(&holder, request)?;
        Ok(LeaseList { leases })
    })
    .await
}

/// A refused lease changes no state, but the collision belongs in the record of what happened.
pub(crate) async fn record_denial(app: &App, holder: &str, paths: &[String], why: &str) {
    let holder = holder.to_string();
    let denied = LeaseDenied {
        paths: paths.to_vec(),
        why: why.to_string(),
    };
    let result = app
        .write(
            &Actor::Agent(holder.clone()),
            &IdempotencyKey::default(),
            move |tx| {
                let payload = EventPayload::LeaseDenied(denied.clone());
                tx.emit(&holder, None, Some(&holder), payload)
            },
        )
        .await;
    if let Err(error) = result {
        tracing::warn!(message = %error.message, "could not record a lease denial");
    }
}

pub async fn release(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(release): ApiJson<LeaseRelease>,
) -> ApiResult<Response> {
    let key = key.with_body(&release);
    let by = actor.clone();
    Ok(app
        .write(&actor, &key, move |tx| {
            let released = tx.release_leases(&by, release)?;
            Ok(ReleasedLeases { released })
        })
        .await?
        .ok())
}

pub async fn list(State(app): State<App>) -> ApiResult<Json<LeaseList>> {
    let now = chrono::Utc::now().timestamp_millis();
    let leases = app.read(move |r| r.leases(now)).await?;
    Ok(Json(LeaseList { leases }))
}
