//! `/api/events`: query the log, follow it live over SSE (resuming after `Last-Event-ID`), and
//! record the supervisor's observations of the agents it runs (`agent.*` kinds, admin only).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use conclave_core::event::Topic;
use conclave_core::model::{Actor, Event, EventFilter, EventList, EventPayload, NewEvent};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::ops::{IdempotencyKey, require_admin};

const BACKLOG_PAGE: i64 = 500;
/// The longest `data` accepted for an observation, as JSON text.
const MAX_EVENT_DATA: usize = 16 * 1024;

/// Records an observation about an agent (admin only): what the supervisor saw in its stream
/// (`agent.tool`, `agent.text`, `agent.turn`) or did to it (`agent.restarted`, ...).
pub async fn record(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(new): ApiJson<NewEvent>,
) -> ApiResult<Response> {
    require_admin(&actor, "record agent events")?;
    // The body's kind is a known kind whose data fits (checked as it is read); only the
    // supervisor's own family is recorded here.
    if new.payload.topic() != Some(Topic::Agent) {
        return Err(ApiError::bad_request(format!(
            "event kind {:?} is not an `agent.` kind; only those are recorded here",
            new.payload.kind()
        )));
    }
    if let EventPayload::AgentControl(_) = new.payload {
        return Err(ApiError::bad_request(
            "agent.control is recorded by POST /api/agents/{name}/control",
        ));
    }
    let size = serde_json::to_string(&new.payload.data()).map_or(0, |text| text.len());
    if size > MAX_EVENT_DATA {
        return Err(ApiError::bad_request(format!(
            "event data is {size} bytes; at most {MAX_EVENT_DATA} are accepted"
        )));
    }
    let key = key.with_body(&new);
    let written = app
        .write(&actor, &key, move |tx| {
            let agent = tx.read().agent(&new.agent)?;
            tx.emit(
                conclave_core::model::ADMIN_NAME,
                new.task,
                Some(&agent.name),
                new.payload.clone(),
            )?;
            Ok(serde_json::json!({ "kind": new.payload.kind(), "agent": agent.name }))
        })
        .await?;
    Ok(written.created())
}

pub async fn list(
    State(app): State<App>,
    ApiQuery(filter): ApiQuery<EventFilter>,
) -> ApiResult<Json<EventList>> {
    let events = app.read(move |r| r.events(&filter)).await?;
    Ok(Json(EventList { events }))
}

/// Streams events: first those after `Last-Event-ID` (or `?after=`) from the store, then live
/// ones as they are committed. Without either, it starts at the newest event. A client that falls
/// behind the live channel is caught up from the store, so nothing is skipped.
pub async fn stream(
    State(app): State<App>,
    headers: HeaderMap,
    ApiQuery(mut filter): ApiQuery<EventFilter>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    if let Some(value) = headers.get("last-event-id") {
        let text = value.to_str().unwrap_or_default().trim();
        let seq = text.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("Last-Event-ID {text:?} is not a sequence number"))
        })?;
        filter.after = Some(seq);
    }
    let receiver = app.subscribe();
    let (last_sent, backfill) = match filter.after {
        Some(after) => (after, true),
        None => (app.read(|r| r.last_seq()).await?, false),
    };
    filter.desc = false;
    filter.limit = Some(BACKLOG_PAGE);
    let state = StreamState {
        app: app.clone(),
        receiver,
        filter,
        last_sent,
        backfill,
        pending: VecDeque::new(),
        _guard: app.metrics().sse_client(),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        let data = serde_json::to_string(&event).unwrap_or_default();
        let sse = SseEvent::default().id(event.seq.to_string()).data(data);
        Some((Ok(sse), state))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct StreamState {
    app: App,
    receiver: tokio::sync::broadcast::Receiver<Event>,
    filter: EventFilter,
    last_sent: i64,
    backfill: bool,
    pending: VecDeque<Event>,
    _guard: crate::metrics::SseGuard,
}

impl StreamState {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last_sent = event.seq;
                return Some(event);
            }
            if self.backfill {
                let mut filter = self.filter.clone();
                filter.after = Some(self.last_sent);
                let page = self.app.read(move |r| r.events(&filter)).await.ok()?;
                if page.is_empty() {
                    self.backfill = false;
                } else {
                    self.pending.extend(page);
                }
                continue;
            }
            let received = tokio::select! {
                received = self.receiver.recv() => received,
                _ = self.app.shutdown_token().cancelled() => return None,
            };
            match received {
                Ok(event) if event.seq <= self.last_sent => {}
                Ok(event) if self.filter.admits(&event) => {
                    self.last_sent = event.seq;
                    return Some(event);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => self.backfill = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
