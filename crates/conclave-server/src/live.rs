//! The live event fan-out behind `/api/events/stream`: every committed event is queued for each
//! subscriber that may see it, and each subscriber's queue is bounded by bytes as well as by
//! count.
//!
//! A reader that stops reading (or reads too slowly) must not pin the server's memory: a shared
//! ring (such as `tokio::sync::broadcast`) keeps every slot a slow receiver has not seen, however
//! big the events are. Here, when a subscriber's queue would exceed its budget, the queue is
//! emptied at once (its memory freed) and the subscriber is marked lagged; the stream then ends
//! with a "lagged" event and the client resumes with `Last-Event-ID` from the store.
//!
//! With many readers (a team of 1,000 agents, each with its stream open) the cost is per reader
//! and per event, so it is kept to the least (issue 14):
//! - each event is serialized once, into its SSE frame, shared by every reader ([`LiveEvent`]);
//! - a subscriber says which events it may see ([`LiveHub::subscribe_where`]: its filter and
//!   the audience rule), and is neither queued nor woken for the others (a direct message wakes
//!   its sender and recipients, not the whole team);
//! - the fan-out runs on a thread of its own: the store publishes while it still holds its
//!   writer (so that events reach subscribers in sequence order), and a hand-off to one channel
//!   keeps that order without making every write wait for a thousand queues.

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};

use axum::body::Bytes;
use conclave_core::model::Event;
use tokio::sync::Notify;

/// How much one subscriber may have queued before it is dropped as lagged.
#[derive(Debug, Clone, Copy)]
pub struct LiveQueueLimits {
    /// Bytes of events (as SSE frames) queued for one reader.
    pub max_bytes: usize,
    /// Events queued for one reader.
    pub max_events: usize,
}

impl Default for LiveQueueLimits {
    fn default() -> Self {
        LiveQueueLimits {
            max_bytes: 4 * 1024 * 1024,
            max_events: 4096,
        }
    }
}

/// Figures about the live fan-out, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Readers subscribed now.
    pub subscribers: usize,
    /// The most bytes ever queued for one reader.
    pub peak_queued_bytes: usize,
    /// The most events ever queued for one reader.
    pub peak_queued_events: usize,
    /// Readers dropped because they fell behind their budget.
    pub lagged_readers: u64,
}

/// A committed event as every reader receives it: the event itself (for filters) and its SSE
/// frame, serialized once for all of them.
pub(crate) struct LiveEvent {
    event: Event,
    frame: Bytes,
}

impl LiveEvent {
    pub(crate) fn new(event: Event) -> LiveEvent {
        let frame = sse_frame(&event);
        LiveEvent { event, frame }
    }

    /// `id: <seq>`, `data: <the event as JSON>`, and the blank line that ends an SSE event.
    pub(crate) fn frame(&self) -> Bytes {
        self.frame.clone()
    }
}

impl Deref for LiveEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The SSE frame of `event`. Compact JSON holds no line break (those inside strings are
/// escaped), so the event is one `data` line.
pub(crate) fn sse_frame(event: &Event) -> Bytes {
    let mut frame = Vec::with_capacity(256);
    // Writing into a Vec cannot fail; an event that cannot be serialized is sent as `null`.
    let _ = write!(frame, "id: {}\ndata: ", event.seq);
    let data_starts = frame.len();
    if serde_json::to_writer(&mut frame, event).is_err() {
        frame.truncate(data_starts);
        frame.extend_from_slice(b"null");
    }
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// Which events a subscriber may see.
type Admits = Box<dyn Fn(&Event) -> bool + Send + Sync>;

/// The fan-out: one queue per subscriber, filled by the fan-out thread.
pub(crate) struct LiveHub {
    shared: Arc<Shared>,
    /// To the fan-out thread; it ends when the hub (and so this sender) is dropped.
    work: Mutex<mpsc::Sender<Work>>,
}

enum Work {
    Publish(Vec<Event>),
    /// Answered once everything handed over before it is queued (for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Settle(mpsc::Sender<()>),
}

struct Shared {
    limits: LiveQueueLimits,
    subscribers: Mutex<Vec<Weak<Subscriber>>>,
    peak_queued_bytes: AtomicUsize,
    peak_queued_events: AtomicUsize,
    lagged_readers: AtomicU64,
}

/// One reader's queue.
pub(crate) struct Subscriber {
    queue: Mutex<Queue>,
    ready: Notify,
    admits: Option<Admits>,
}

#[derive(Default)]
struct Queue {
    /// Each event with the size of its frame.
    events: VecDeque<(Arc<LiveEvent>, usize)>,
    bytes: usize,
    lagged: bool,
}

/// What a subscriber receives next.
pub(crate) enum Received {
    Event(Arc<LiveEvent>),
    /// The reader fell behind its budget; what was queued is gone.
    Lagged,
}

impl LiveHub {
    pub(crate) fn new(limits: LiveQueueLimits) -> LiveHub {
        let shared = Arc::new(Shared {
            limits,
            subscribers: Mutex::new(Vec::new()),
            peak_queued_bytes: AtomicUsize::new(0),
            peak_queued_events: AtomicUsize::new(0),
            lagged_readers: AtomicU64::new(0),
        });
        let (sender, receiver) = mpsc::channel::<Work>();
        let fan_out = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("conclave-live-fan-out".into())
            .spawn(move || {
                for work in receiver {
                    match work {
                        Work::Publish(batch) => fan_out.fan_out(batch),
                        Work::Settle(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        if let Err(error) = spawned {
            // Without the thread every send fails and live readers get nothing; the store and
            // every request still work, and a reader resumes from the log.
            tracing::error!(%error, "could not start the live event fan-out thread");
        }
        LiveHub {
            shared,
            work: Mutex::new(sender),
        }
    }

    /// A new subscriber that receives every event published from now on.
    pub(crate) fn subscribe(&self) -> Arc<Subscriber> {
        self.add(None)
    }

    /// A new subscriber that receives the events published from now on that `admits` lets
    /// through; it is not woken for the others.
    pub(crate) fn subscribe_where(
        &self,
        admits: impl Fn(&Event) -> bool + Send + Sync + 'static,
    ) -> Arc<Subscriber> {
        self.add(Some(Box::new(admits)))
    }

    fn add(&self, admits: Option<Admits>) -> Arc<Subscriber> {
        let subscriber = Arc::new(Subscriber {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            admits,
        });
        lock(&self.shared.subscribers).push(Arc::downgrade(&subscriber));
        subscriber
    }

    /// Hands `batch` to the fan-out thread, which queues it for every subscriber (called as
    /// the store commits, in sequence order).
    pub(crate) fn publish(&self, batch: &[Event]) {
        if lock(&self.shared.subscribers).is_empty() {
            return;
        }
        // Fails only if the fan-out thread is gone (see `new`).
        let _ = lock(&self.work).send(Work::Publish(batch.to_vec()));
    }

    /// Waits until everything published so far is queued for its subscribers.
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        let (done, wait) = mpsc::channel();
        if lock(&self.work).send(Work::Settle(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    pub(crate) fn stats(&self) -> LiveStats {
        let subscribers = lock(&self.shared.subscribers)
            .iter()
            .filter(|weak| weak.strong_count() > 0)
            .count();
        LiveStats {
            subscribers,
            peak_queued_bytes: self.shared.peak_queued_bytes.load(Ordering::Relaxed),
            peak_queued_events: self.shared.peak_queued_events.load(Ordering::Relaxed),
            lagged_readers: self.shared.lagged_readers.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    fn fan_out(&self, batch: Vec<Event>) {
        let subscribers: Vec<Arc<Subscriber>> = {
            let mut subscribers = lock(&self.subscribers);
            subscribers.retain(|weak| weak.strong_count() > 0);
            subscribers.iter().filter_map(Weak::upgrade).collect()
        };
        if subscribers.is_empty() {
            return;
        }
        for event in batch {
            let event = Arc::new(LiveEvent::new(event));
            let size = event.frame.len();
            for subscriber in &subscribers {
                if subscriber
                    .admits
                    .as_ref()
                    .is_none_or(|admits| admits(&event))
                {
                    self.offer(subscriber, &event, size);
                }
            }
        }
    }

    fn offer(&self, subscriber: &Subscriber, event: &Arc<LiveEvent>, size: usize) {
        let mut queue = lock(&subscriber.queue);
        if queue.lagged {
            return;
        }
        if queue.bytes + size > self.limits.max_bytes
            || queue.events.len() + 1 > self.limits.max_events
        {
            // Free what it pinned now; the reader resumes from the store.
            queue.events = VecDeque::new();
            queue.bytes = 0;
            queue.lagged = true;
            self.lagged_readers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                limit_bytes = self.limits.max_bytes,
                limit_events = self.limits.max_events,
                "an event stream reader fell behind; dropping it (it resumes with Last-Event-ID)"
            );
        } else {
            queue.events.push_back((event.clone(), size));
            queue.bytes += size;
            self.peak_queued_bytes
                .fetch_max(queue.bytes, Ordering::Relaxed);
            self.peak_queued_events
                .fetch_max(queue.events.len(), Ordering::Relaxed);
        }
        drop(queue);
        // One consumer per queue: a stored permit wakes it even if it is not waiting yet.
        subscriber.ready.notify_one();
    }
}

impl Subscriber {
    /// The next queued event, waiting for one.
    pub(crate) async fn recv(&self) -> Received {
        loop {
            {
                let mut queue = lock(&self.queue);
                if let Some((event, size)) = queue.events.pop_front() {
                    queue.bytes = queue.bytes.saturating_sub(size);
                    return Received::Event(event);
                }
                if queue.lagged {
                    return Received::Lagged;
                }
            }
            self.ready.notified().await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, text_len: usize) -> Event {
        serde_json::from_value(serde_json::json!({
            "seq": seq,
            "ts": "2030-01-01T00:00:00Z",
            "actor": "admin",
            "kind": "task.created",
            "task": 1,
            "agent": null,
            "data": { "title": "x".repeat(text_len) },
        }))
        .expect("an event")
    }

    #[tokio::test]
    async fn a_reader_that_does_not_read_is_dropped_at_its_byte_budget() {
        let hub = LiveHub::new(LiveQueueLimits {
            max_bytes: 64 * 1024,
            max_events: 4096,
        });
        let stalled = hub.subscribe();
        let reading = hub.subscribe();
        for seq in 1..=200 {
            hub.publish(&[event(seq, 10_000)]);
            match reading.recv().await {
                Received::Event(got) => assert_eq!(got.seq, seq),
                Received::Lagged => panic!("a reader that keeps up is never lagged"),
            }
        }
        hub.settle();
        let stats = hub.stats();
        assert!(
            stats.peak_queued_bytes <= 64 * 1024,
            "{} bytes queued",
            stats.peak_queued_bytes
        );
        assert_eq!(stats.lagged_readers, 1);
        assert!(
            lock(&stalled.queue).events.is_empty(),
            "its memory is freed"
        );
        assert!(matches!(stalled.recv().await, Received::Lagged));
    }

    #[tokio::test]
    async fn the_event_count_is_bounded_too() {
        let hub = LiveHub::new(LiveQueueLimits {
            max_bytes: usize::MAX,
            max_events: 10,
        });
        let stalled = hub.subscribe();
        for seq in 1..=10 {
            hub.publish(&[event(seq, 1)]);
        }
        hub.settle();
        assert_eq!(hub.stats().lagged_readers, 0);
        hub.publish(&[event(11, 1)]);
        hub.settle();
        assert_eq!(hub.stats().lagged_readers, 1);
        assert_eq!(hub.stats().peak_queued_events, 10);
        assert!(matches!(stalled.recv().await, Received::Lagged));
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let hub = LiveHub::new(LiveQueueLimits::default());
        let gone = hub.subscribe();
        drop(gone);
        hub.publish(&[event(1, 1)]);
        hub.settle();
        assert_eq!(hub.stats().subscribers, 0);
    }

    /// Every reader gets the same frame (one serialization, shared), and a reader is queued
    /// only what it admits.
    #[tokio::test]
    async fn readers_share_one_frame_and_get_only_what_they_admit() {
        let hub = LiveHub::new(LiveQueueLimits::default());
        let everything = hub.subscribe();
        let also_everything = hub.subscribe();
        let even_only = hub.subscribe_where(|event| event.seq % 2 == 0);
        hub.publish(&[event(1, 3), event(2, 3)]);
        hub.settle();
        let Received::Event(first) = everything.recv().await else {
            panic!("an event")
        };
        let Received::Event(same) = also_everything.recv().await else {
            panic!("an event")
        };
        assert_eq!(first.seq, 1);
        assert_eq!(
            first.frame().as_ptr(),
            same.frame().as_ptr(),
            "one frame for both readers"
        );
        let text = String::from_utf8(first.frame().to_vec()).expect("utf-8");
        assert!(text.starts_with("id: 1\ndata: {"), "{text}");
        assert!(
            text.ends_with("}\n\n") && text.matches('\n').count() == 3,
            "{text:?}"
        );
        let parsed: Event =
            serde_json::from_str(&text["id: 1\ndata: ".len()..text.len() - 2]).expect("json");
        assert_eq!(parsed.seq, 1);
        assert_eq!(
            lock(&even_only.queue).events.len(),
            1,
            "seq 1 was not queued"
        );
        let Received::Event(got) = even_only.recv().await else {
            panic!("an event")
        };
        assert_eq!(got.seq, 2);
    }
}
