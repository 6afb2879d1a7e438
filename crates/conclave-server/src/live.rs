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
//!   keeps that order without making every write wait for a thousand queues;
//! - a reader takes everything queued for it at each wake-up ([`Subscriber::recv`]), and the
//!   stream writes it as one body chunk: one system call per wake-up, not one per event;
//! - during a burst, wake-ups are gathered on one hub-wide deadline ([`GATHER`]): an event that
//!   follows a wake-up by less than that waits for the deadline, so that a reader is woken (and
//!   writes) at most once per window however many events the window holds. After a quiet
//!   window an event wakes its readers at once, so a lone event is not delayed.

use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use conclave_core::model::Event;
use tokio::sync::Notify;

/// The longest a queued event waits for its reader to be woken, during a burst: readers are
/// woken at most once per window, and the events of the window leave together. Stream latency
/// (at most this) is traded for one write per reader per window instead of one per event.
pub(crate) const GATHER: Duration = Duration::from_millis(5);

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
    /// Events queued for readers, counted once per reader.
    pub queued_events: u64,
    /// Times a reader was woken for what was queued for it.
    pub wakeups: u64,
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
    queued_events: AtomicU64,
    wakeups: AtomicU64,
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
    /// On the fan-out thread's list of readers to wake (so it is listed once per window).
    wake_due: bool,
}

/// What a subscriber receives next.
pub(crate) enum Received {
    /// Every event queued for the reader (at least one), in order, up to the size it asked for.
    Events(Vec<Arc<LiveEvent>>),
    /// The reader fell behind its budget; what was queued is gone.
    Lagged,
}

impl LiveHub {
    pub(crate) fn new(limits: LiveQueueLimits) -> LiveHub {
        LiveHub::gathering_for(limits, GATHER)
    }

    /// A hub whose wake-ups during a burst are gathered over `gather` windows.
    fn gathering_for(limits: LiveQueueLimits, gather: Duration) -> LiveHub {
        let shared = Arc::new(Shared {
            limits,
            subscribers: Mutex::new(Vec::new()),
            peak_queued_bytes: AtomicUsize::new(0),
            peak_queued_events: AtomicUsize::new(0),
            lagged_readers: AtomicU64::new(0),
            queued_events: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        });
        let (sender, receiver) = mpsc::channel::<Work>();
        let fan_out = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("conclave-live-fan-out".into())
            .spawn(move || fan_out.run(&receiver, gather));
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
    #[cfg(test)]
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
            queued_events: self.shared.queued_events.load(Ordering::Relaxed),
            wakeups: self.shared.wakeups.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    /// The fan-out thread: queues each published batch for its readers and wakes them, at
    /// once after a quiet window, else at the end of the current one (see [`GATHER`]).
    fn run(&self, work: &mpsc::Receiver<Work>, gather: Duration) {
        // Readers with something queued and not yet woken for it.
        let mut to_wake: Vec<Arc<Subscriber>> = Vec::new();
        // When readers were last woken; `None` until the first time.
        let mut last_wake: Option<Instant> = None;
        loop {
            let next = match last_wake {
                Some(last) if !to_wake.is_empty() => {
                    let deadline = last + gather;
                    work.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
                _ => work
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(Work::Publish(batch)) => self.fan_out(batch, &mut to_wake),
                Ok(Work::Settle(done)) => {
                    self.wake(&mut to_wake);
                    let _ = done.send(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.wake(&mut to_wake);
                    return;
                }
            }
            let now = Instant::now();
            if !to_wake.is_empty() && last_wake.is_none_or(|last| now >= last + gather) {
                self.wake(&mut to_wake);
                last_wake = Some(now);
            }
        }
    }

    fn wake(&self, to_wake: &mut Vec<Arc<Subscriber>>) {
        for subscriber in to_wake.drain(..) {
            lock(&subscriber.queue).wake_due = false;
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            // One consumer per queue: a stored permit wakes it even if it is not waiting yet.
            subscriber.ready.notify_one();
        }
    }

    fn fan_out(&self, batch: Vec<Event>, to_wake: &mut Vec<Arc<Subscriber>>) {
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
                let admitted = subscriber
                    .admits
                    .as_ref()
                    .is_none_or(|admits| admits(&event));
                if admitted && self.offer(subscriber, &event, size) {
                    to_wake.push(subscriber.clone());
                }
            }
        }
    }

    /// Queues `event` for `subscriber`; answers whether it must be added to the readers to
    /// wake (it is not on that list yet).
    fn offer(&self, subscriber: &Subscriber, event: &Arc<LiveEvent>, size: usize) -> bool {
        let mut queue = lock(&subscriber.queue);
        if queue.lagged {
            return false;
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
            self.queued_events.fetch_add(1, Ordering::Relaxed);
            self.peak_queued_bytes
                .fetch_max(queue.bytes, Ordering::Relaxed);
            self.peak_queued_events
                .fetch_max(queue.events.len(), Ordering::Relaxed);
        }
        !std::mem::replace(&mut queue.wake_due, true)
    }
}

impl Subscriber {
    /// Every event queued for this reader, in order, waiting for one: as many as fit in
    /// `max_bytes` of frames (at least one), the rest left queued for the next call.
    pub(crate) async fn recv(&self, max_bytes: usize) -> Received {
        loop {
            {
                let mut queue = lock(&self.queue);
                if !queue.events.is_empty() {
                    let mut taken = Vec::new();
                    let mut bytes = 0;
                    while let Some((_, size)) = queue.events.front() {
                        if !taken.is_empty() && bytes + size > max_bytes {
                            break;
                        }
                        bytes += size;
                        if let Some((event, _)) = queue.events.pop_front() {
                            taken.push(event);
                        }
                    }
                    queue.bytes = queue.bytes.saturating_sub(bytes);
                    return Received::Events(taken);
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
            match reading.recv(usize::MAX).await {
                Received::Events(got) => {
                    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [seq]);
                }
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
        assert!(matches!(stalled.recv(usize::MAX).await, Received::Lagged));
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
        assert!(matches!(stalled.recv(usize::MAX).await, Received::Lagged));
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
        let Received::Events(first) = everything.recv(1).await else {
            panic!("an event")
        };
        let Received::Events(same) = also_everything.recv(1).await else {
            panic!("an event")
        };
        let (first, same) = (&first[0], &same[0]);
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
        let Received::Events(got) = even_only.recv(usize::MAX).await else {
            panic!("an event")
        };
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    }

    fn seqs(received: Received) -> Vec<i64> {
        match received {
            Received::Events(events) => events.iter().map(|event| event.seq).collect(),
            Received::Lagged => panic!("not lagged"),
        }
    }

    /// A reader takes everything queued for it in one call, in order, and within the size it
    /// asks for (at least one event, however big).
    #[tokio::test]
    async fn a_reader_takes_all_that_is_queued_at_once_in_order() {
        let hub = LiveHub::new(LiveQueueLimits::default());
        let reader = hub.subscribe();
        let batch: Vec<Event> = (1..=50).map(|seq| event(seq, 10)).collect();
        let frame_size = LiveEvent::new(event(1, 10)).frame().len();
        hub.publish(&batch[..20]);
        hub.publish(&batch[20..]);
        hub.settle();
        assert_eq!(
            seqs(reader.recv(usize::MAX).await),
            (1..=50).collect::<Vec<_>>()
        );
        assert!(lock(&reader.queue).events.is_empty());
        assert_eq!(lock(&reader.queue).bytes, 0);

        hub.publish(&batch[..3]);
        hub.settle();
        assert_eq!(seqs(reader.recv(2 * frame_size).await), [1, 2]);
        assert_eq!(
            seqs(reader.recv(1).await),
            [3],
            "one event even past the size"
        );
        assert_eq!(lock(&reader.queue).bytes, 0);
    }

    /// During a burst a reader is woken once per gather window, not once per event. With a
    /// window longer than the test, the first event wakes each reader at once and the other
    /// 99 wait for the window's end (here the settle, which wakes whoever is due).
    #[tokio::test]
    async fn a_burst_wakes_each_reader_once_per_window() {
        let hub = LiveHub::gathering_for(LiveQueueLimits::default(), Duration::from_secs(3600));
        let readers: Vec<_> = (0..10).map(|_| hub.subscribe()).collect();
        for seq in 1..=100 {
            hub.publish(&[event(seq, 10)]);
        }
        hub.settle();
        let stats = hub.stats();
        assert_eq!(stats.queued_events, 1000);
        assert_eq!(
            stats.wakeups, 20,
            "one at the burst's start, one at the window's end"
        );
        for reader in &readers {
            let mut got = Vec::new();
            while got.len() < 100 {
                got.extend(seqs(reader.recv(usize::MAX).await));
            }
            assert_eq!(got, (1..=100).collect::<Vec<_>>());
        }
    }

    /// A lone event after a quiet time wakes its reader at once, not at the end of a window.
    #[test]
    fn a_lone_event_wakes_its_reader_at_once() {
        let hub = LiveHub::gathering_for(LiveQueueLimits::default(), Duration::from_secs(3600));
        let _reader = hub.subscribe();
        hub.publish(&[event(1, 1)]);
        // No settle (it wakes whoever is due): the wake-up must come by itself, where a
        // gathered event would wait for the hour-long window.
        let started = Instant::now();
        while hub.stats().wakeups == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never woken");
            std::thread::yield_now();
        }
    }
}
