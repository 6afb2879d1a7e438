//! `/api/messages` and `/api/inbox`: send, list, read (optionally waiting) and acknowledge.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::model::{
    AckResult, Actor, EventPayload, Message, MessageAck, MessageList, NewMessage,
};
use serde::Deserialize;

use crate::app::{ApiJson, ApiQuery, App, IdempotencyKey, only_agent};
use crate::error::ApiResult;

/// The longest an inbox request may wait for something to arrive.
pub const MAX_WAIT_SECS: u64 = 600;

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
    pub wait: Option<u64>,
}

pub async fn send(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(new): ApiJson<NewMessage>,
) -> ApiResult<Response> {
    let key = key.with_body(&new);
    let by = actor.clone();
    Ok(app
        .write(&actor, &key, move |tx| tx.send_message(&by, new))
        .await?
        .created())
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
    let agent = only_agent(&actor, "read an inbox")?.to_string();
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let messages = wait_for_inbox(&app, &agent, wait).await?;
    Ok(Json(MessageList { messages }))
}

/// The agent's unacknowledged messages; when there are none, waits up to `wait` for one to
/// arrive and returns as soon as it does.
pub async fn wait_for_inbox(app: &App, agent: &str, wait: Duration) -> ApiResult<Vec<Message>> {
    // Subscribe before reading so that nothing sent in between is missed.
    let mut events = app.subscribe();
    let name = agent.to_string();
    let messages = app.read(move |r| r.inbox(&name)).await?;
    if !messages.is_empty() || wait.is_zero() {
        return Ok(messages);
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = app.shutdown_token().cancelled() => break,
            received = events.recv() => match received {
                Ok(event) if is_recipient(&event.payload, agent) => break,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let name = agent.to_string();
    app.read(move |r| r.inbox(&name)).await
}

/// Whether the event is a message sent to `agent`.
fn is_recipient(payload: &EventPayload, agent: &str) -> bool {
    matches!(payload, EventPayload::MessageSent(sent) if sent.recipients.iter().any(|n| n == agent))
}

pub async fn ack(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(ack): ApiJson<MessageAck>,
) -> ApiResult<Response> {
    let agent = only_agent(&actor, "acknowledge messages")?.to_string();
    let key = key.with_body(&ack);
    Ok(app
        .write(&actor, &key, move |tx| {
            let acked = tx.ack_messages(&agent, &ack.ids)?;
            Ok(AckResult { acked })
        })
        .await?
        .ok())
}
