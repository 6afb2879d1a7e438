//! `/api/messages` and `/api/inbox`: send, list, read (optionally waiting) and acknowledge.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::model::{Actor, MessageAck, MessageList, NewMessage};
use serde::Deserialize;

use crate::app::App;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiQuery};
use crate::ops::{self, IdempotencyKey};

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageQuery {
    pub thread: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Seconds to wait for a message when the inbox is empty (at most 600).
    // The bound declared is the type's: a longer wait is read as 600, a larger number refused.
    #[schemars(range(max = u64::MAX))]
    pub wait: Option<u64>,
}

pub async fn send(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(new): ApiJson<NewMessage>,
) -> ApiResult<Response> {
    let key = key.with_body(&new);
    Ok(ops::send_message(&app, &actor, &key, new).await?.created())
}

/// An agent sees the messages it sent or received; the admin sees all.
pub async fn list(
    State(app): State<App>,
    actor: Actor,
    ApiQuery(query): ApiQuery<MessageQuery>,
) -> ApiResult<Json<MessageList>> {
    let party = actor.agent().map(str::to_string);
    let messages = app
        .read(move |r| {
            r.messages(
                party.as_deref(),
                query.thread.as_deref(),
                query.limit.unwrap_or(1000),
            )
        })
        .await?;
    Ok(Json(MessageList { messages }))
}

pub async fn inbox(
    State(app): State<App>,
    actor: Actor,
    ApiQuery(query): ApiQuery<InboxQuery>,
) -> ApiResult<Json<MessageList>> {
    let agent = ops::require_agent(&actor, "read an inbox")?.to_string();
    let wait = Duration::from_secs(query.wait.unwrap_or(0));
    let messages = ops::wait_for_inbox(&app, &agent, wait).await?;
    Ok(Json(MessageList { messages }))
}

pub async fn ack(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(ack): ApiJson<MessageAck>,
) -> ApiResult<Response> {
    let key = key.with_body(&ack);
    Ok(ops::acknowledge(&app, &actor, &key, ack.ids).await?.ok())
}
