//! `/api/events`: query the log, follow it live over SSE (resuming after `Last-Event-ID`), and
//! record the supervisor's observations of the agents it runs (`agent.*` kinds, admin only).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use conclave_core::audience::Viewer;
use conclave_core::event::Topic;
use conclave_core::model::{Actor, Event, EventFilter, EventList, EventPayload, NewEvent};

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::live::{LiveEvent, Received, Subscriber, sse_frame};
use crate::ops::{self, IdempotencyKey, require_admin};

const BACKLOG_PAGE: i64 = 500;
/// The most bytes of frames one body chunk takes from a reader's live queue; what is left waits
/// for the next chunk.
const MAX_CHUNK: usize = 256 * 1024;
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
    if conclave_core::event::KINDS_WITH_OWN_OPERATION.contains(&new.payload.kind()) {
        return Err(ApiError::bad_request(format!(
            "{} is recorded by POST /api/agents/{{name}}/confirmation or /confirm",
            new.payload.kind()
        )));
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

/// The log as `filter` asks, without the message events the caller may not read.
pub async fn list(
    State(app): State<App>,
    actor: Actor,
    ApiQuery(filter): ApiQuery<EventFilter>,
) -> ApiResult<Json<EventList>> {
    let viewer = ops::viewer(&app, &actor).await?;
    let events = ops::visible_events(&app, filter, &viewer).await?;
    Ok(Json(EventList { events }))
}

/// How long a stream may stay silent before it sends a comment line, so that proxies and
/// clients see the connection alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams events: first those after `Last-Event-ID` (or `?after=`) from the store, then live
/// ones as they are committed. Without either, it starts at the newest event; after the newest
/// event (a client that remembers another log), it says so with a `reset` event whose id is the
/// newest event's and follows from there. A client that falls behind its live queue's budget
/// (bytes or events) gets a `lagged` event and the stream ends: it resumes with `Last-Event-ID`.
///
/// A live event's SSE frame is serialized once for every reader (`live::LiveEvent`); what each
/// reader may see (its filter, and the audience rule for messages) is decided per reader. Every
/// frame queued for a reader when it wakes (live, or a backlog page) leaves in one body chunk,
/// so one write to its socket, in order.
pub async fn stream(
    State(app): State<App>,
    actor: Actor,
    headers: HeaderMap,
    ApiQuery(mut filter): ApiQuery<EventFilter>,
) -> ApiResult<Response> {
    if let Some(value) = headers.get("last-event-id") {
        let text = value.to_str().unwrap_or_default().trim();
        let seq = text.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("Last-Event-ID {text:?} is not a sequence number"))
        })?;
        filter.after = Some(seq);
    }
    let viewer = ops::viewer(&app, &actor).await?;
    // Subscribe before reading the log's end so that nothing committed in between is missed.
    // The reader is queued (and woken) only for live events it may see: what the filter admits
    // apart from its position, and what the audience rule lets this reader read.
    let receiver = {
        let mut live_filter = filter.clone();
        live_filter.after = None;
        let viewer = viewer.clone();
        app.subscribe_where(move |event| live_filter.admits(event) && viewer.may_read_event(event))
    };
    let newest = app.read(|r| r.last_seq()).await?;
    let (last_sent, backfill, reset) = match filter.after {
        Some(after) if after > newest => (newest, false, Some(after)),
        Some(after) => (after, true, None),
        None => (newest, false, None),
    };
    // Live events are admitted by the filter, whose `after` must not stay past the end.
    filter.after = Some(last_sent);
    filter.desc = false;
    filter.limit = Some(BACKLOG_PAGE);
    let state = StreamState {
        app: app.clone(),
        receiver,
        filter,
        viewer,
        last_sent,
        backfill,
        reset,
        ended: false,
        pending: VecDeque::new(),
        last_frame: Instant::now(),
        keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        shutdown: Box::pin(app.shutdown_token().clone().cancelled_owned()),
        _guard: app.metrics().sse_client(),
    };
    let frames = futures::stream::unfold(state, |mut state| async move {
        let frame = match state.next().await? {
            Next::Frame(frame) => frame,
            Next::KeepAlive => Bytes::from_static(b":\n\n"),
            Next::Reset { requested } => {
                let data = serde_json::json!({
                    "error": "reset",
                    "message": format!(
                        "Last-Event-ID {requested} is past the end of the event log (its newest event is {}); following from the end",
                        state.last_sent
                    ),
                    "last_event_id": state.last_sent,
                });
                notice("reset", state.last_sent, &data)
            }
            Next::Lagged => {
                let data = serde_json::json!({
                    "error": "lagged",
                    "message": "this reader fell behind the live stream; reconnect with Last-Event-ID to resume",
                    "last_event_id": state.last_sent,
                });
                notice("lagged", state.last_sent, &data)
            }
        };
        Some((Ok::<_, Infallible>(frame), state))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response())
}

/// An SSE event named `name` (not a log event) whose id is the log position it speaks of.
fn notice(name: &str, last_sent: i64, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\nid: {last_sent}\ndata: {data}\n\n"))
}

struct StreamState {
    app: App,
    receiver: Arc<Subscriber>,
    filter: EventFilter,
    /// Who reads: message events it may not read are skipped.
    viewer: Viewer,
    last_sent: i64,
    backfill: bool,
    /// The `Last-Event-ID` past the log's end that a `reset` event answers first.
    reset: Option<i64>,
    /// Set once a `lagged` event was sent: the stream ends.
    ended: bool,
    /// Backlog events read from the store and not sent yet: each one's sequence number and SSE
    /// frame.
    pending: VecDeque<(i64, Bytes)>,
    /// When the stream last sent something, and the timer that sends a keep-alive comment
    /// [`KEEP_ALIVE`] after it. The timer is armed once and moved only when it fires: resetting
    /// it on every event would touch the runtime's timer wheel once per reader per event.
    last_frame: Instant,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    /// The server's shutdown, waited on by every `next` (one registration for the stream's
    /// life rather than one per event).
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _guard: crate::metrics::SseGuard,
}

/// What the stream sends next.
enum Next {
    /// The SSE frames of one or more events, in order, as one body chunk.
    Frame(Bytes),
    /// Nothing happened for [`KEEP_ALIVE`].
    KeepAlive,
    Reset {
        requested: i64,
    },
    Lagged,
}

impl StreamState {
    async fn next(&mut self) -> Option<Next> {
        let next = self.next_unstamped().await;
        self.last_frame = Instant::now();
        next
    }

    async fn next_unstamped(&mut self) -> Option<Next> {
        if self.ended {
            return None;
        }
        if let Some(requested) = self.reset.take() {
            return Some(Next::Reset { requested });
        }
        loop {
            if let Some(&(last, _)) = self.pending.back() {
                let frames: Vec<Bytes> = self.pending.drain(..).map(|(_, frame)| frame).collect();
                self.last_sent = last;
                return Some(Next::Frame(one_chunk(frames)));
            }
            if self.backfill {
                let mut filter = self.filter.clone();
                filter.after = Some(self.last_sent);
                let page = self.app.read(move |r| r.events(&filter)).await.ok()?;
                match page.last().map(|event| event.seq) {
                    None => self.backfill = false,
                    Some(last) => {
                        let viewer = &self.viewer;
                        let readable: Vec<Event> = page
                            .into_iter()
                            .filter(|e| viewer.may_read_event(e))
                            .collect();
                        if readable.is_empty() {
                            // A page of nothing readable still moves the stream past it.
                            self.last_sent = last;
                        } else {
                            self.pending = within_budget(
                                readable,
                                self.app.settings().limits.live_queue.max_bytes,
                            );
                        }
                    }
                }
                continue;
            }
            let received = tokio::select! {
                received = self.receiver.recv(MAX_CHUNK) => received,
                () = self.keep_alive.as_mut() => {
                    let due = self.last_frame + KEEP_ALIVE;
                    if due <= Instant::now() {
                        self.keep_alive.as_mut().reset((Instant::now() + KEEP_ALIVE).into());
                        return Some(Next::KeepAlive);
                    }
                    // Something was sent since the timer was armed: wait from then.
                    self.keep_alive.as_mut().reset(due.into());
                    continue;
                }
                () = self.shutdown.as_mut() => return None,
            };
            match received {
                Received::Events(events) => {
                    if let Some(chunk) =
                        live_chunk(&events, &self.filter, &self.viewer, &mut self.last_sent)
                    {
                        return Some(Next::Frame(chunk));
                    }
                }
                Received::Lagged => {
                    self.ended = true;
                    return Some(Next::Lagged);
                }
            }
        }
    }
}

/// The frames of the live `events` this reader is sent, in order, as one body chunk (none when
/// it is sent none of them); `last_sent` moves to the last one sent. An event at or before
/// `last_sent` was already sent from the backlog. The subscriber admits only what this reader
/// may see; both rules are checked again here, next to the position, so that they hold
/// whatever a subscriber was given.
fn live_chunk(
    events: &[Arc<LiveEvent>],
    filter: &EventFilter,
    viewer: &Viewer,
    last_sent: &mut i64,
) -> Option<Bytes> {
    let mut frames = Vec::with_capacity(events.len());
    for event in events {
        if event.seq > *last_sent && filter.admits(event) && viewer.may_read_event(event) {
            *last_sent = event.seq;
            frames.push(event.frame());
        }
    }
    (!frames.is_empty()).then(|| one_chunk(frames))
}

/// `frames` as one buffer: the frame itself when there is one (shared, not copied).
fn one_chunk(mut frames: Vec<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.pop().unwrap_or_default();
    }
    let mut chunk = Vec::with_capacity(frames.iter().map(Bytes::len).sum());
    for frame in &frames {
        chunk.extend_from_slice(frame);
    }
    Bytes::from(chunk)
}

/// The frames of the first events of a backlog page that fit in `max_bytes` (at least one), so
/// that a reader catching up pins no more than a live one may; the rest is read again after
/// them.
fn within_budget(page: Vec<Event>, max_bytes: usize) -> VecDeque<(i64, Bytes)> {
    let mut total = 0;
    let mut kept = VecDeque::new();
    for event in page {
        let frame = sse_frame(&event);
        total += frame.len();
        if total > max_bytes && !kept.is_empty() {
            break;
        }
        kept.push_back((event.seq, frame));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, actor: &str, payload: serde_json::Value) -> Arc<LiveEvent> {
        let mut value = serde_json::json!({
            "seq": seq,
            "ts": "2030-01-01T00:00:00Z",
            "actor": actor,
            "task": null,
            "agent": null,
        });
        if let (Some(object), Some(payload)) = (value.as_object_mut(), payload.as_object()) {
            object.extend(payload.clone());
        }
        Arc::new(LiveEvent::new(
            serde_json::from_value(value).expect("an event"),
        ))
    }

    fn note(seq: i64) -> Arc<LiveEvent> {
        event(
            seq,
            "alice",
            serde_json::json!({ "kind": "task.created", "data": { "title": format!("t{seq}") } }),
        )
    }

    fn direct_message(seq: i64, to: &str) -> Arc<LiveEvent> {
        event(
            seq,
            "alice",
            serde_json::json!({
                "kind": "message.sent",
                "data": {
                    "id": format!("M-{seq}"), "to": to, "recipients": [to], "thread": format!("M-{seq}"),
                    "kind": "chat", "urgent": false, "body": "private",
                },
            }),
        )
    }

    /// The SSE events of a chunk: each one's id, in order.
    fn ids(chunk: &Bytes) -> Vec<i64> {
        let text = std::str::from_utf8(chunk).expect("utf-8");
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split("\n\n")
            .filter(|frame| !frame.is_empty())
            .map(|frame| {
                let id = frame
                    .lines()
                    .next()
                    .and_then(|line| line.strip_prefix("id: "));
                id.and_then(|id| id.parse().ok()).expect("an id line")
            })
            .collect()
    }

    /// Every frame queued for a reader leaves in one chunk, in order, without what it may not
    /// read (another agent's direct message) nor what it was already sent.
    #[test]
    fn queued_frames_leave_in_one_chunk_in_order_without_others_messages() {
        let bob = Viewer::Agent {
            name: "bob".into(),
            role: None,
        };
        let filter = EventFilter {
            after: Some(2),
            ..EventFilter::default()
        };
        let queued = vec![
            note(2),
            note(3),
            direct_message(4, "carol"),
            direct_message(5, "bob"),
            note(6),
            note(7),
        ];
        let mut last_sent = 2;
        let chunk = live_chunk(&queued, &filter, &bob, &mut last_sent).expect("a chunk");
        assert_eq!(ids(&chunk), [3, 5, 6, 7]);
        assert_eq!(last_sent, 7);
        let text = std::str::from_utf8(&chunk).expect("utf-8");
        assert!(!text.contains("M-4"), "carol's message leaked: {text}");
        assert!(text.contains("M-5"));

        // Nothing new for this reader: no chunk, and the position stays.
        let nothing = vec![note(7), direct_message(8, "carol")];
        assert_eq!(live_chunk(&nothing, &filter, &bob, &mut last_sent), None);
        assert_eq!(last_sent, 7);
    }

    /// A lone frame is sent as it is: the shared buffer, not a copy.
    #[test]
    fn a_lone_frame_is_not_copied() {
        let lone = note(1);
        let mut last_sent = 0;
        let chunk = live_chunk(
            std::slice::from_ref(&lone),
            &EventFilter::default(),
            &Viewer::Admin,
            &mut last_sent,
        )
        .expect("a chunk");
        assert_eq!(chunk.as_ptr(), lone.frame().as_ptr());
    }
}
