//! The live event fan-out behind `/api/events/stream`: every committed event is queued for each
//! subscriber, and each subscriber's queue is bounded by bytes as well as by count.
//!
//! A reader that stops reading (or reads too slowly) must not pin the server's memory: a shared
//! ring (such as `tokio::sync::broadcast`) keeps every slot a slow receiver has not seen, however
//! big the events are. Here, when a subscriber's queue would exceed its budget, the queue is
//! emptied at once (its memory freed) and the subscriber is marked lagged; the stream then ends
//! with a "lagged" event and the client resumes with `Last-Event-ID` from the store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use conclave_core::model::Event;
use tokio::sync::Notify;

/// How much one subscriber may have queued before it is dropped as lagged.
#[derive(Debug, Clone, Copy)]
pub struct LiveQueueLimits {
    /// Bytes of events (as JSON) queued for one reader.
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

/// The fan-out: one queue per subscriber.
pub(crate) struct LiveHub {
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
}

#[derive(Default)]
struct Queue {
    /// Each event with its size as JSON.
    events: VecDeque<(Arc<Event>, usize)>,
    bytes: usize,
    lagged: bool,
}

/// What a subscriber receives next.
pub(crate) enum Received {
    Event(Arc<Event>),
    /// The reader fell behind its budget; what was queued is gone.
    Lagged,
}

impl LiveHub {
    pub(crate) fn new(limits: LiveQueueLimits) -> LiveHub {
        LiveHub {
            limits,
            subscribers: Mutex::new(Vec::new()),
            peak_queued_bytes: AtomicUsize::new(0),
            peak_queued_events: AtomicUsize::new(0),
            lagged_readers: AtomicU64::new(0),
        }
    }

    /// A new subscriber that receives every event published from now on.
    pub(crate) fn subscribe(&self) -> Arc<Subscriber> {
        let subscriber = Arc::new(Subscriber {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        lock(&self.subscribers).push(Arc::downgrade(&subscriber));
        subscriber
    }

    /// Queues `batch` for every subscriber (called as the store commits).
    pub(crate) fn publish(&self, batch: &[Event]) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|weak| weak.strong_count() > 0);
        if subscribers.is_empty() {
            return;
        }
        for event in batch {
            let size = json_size(event);
            let event = Arc::new(event.clone());
            for subscriber in subscribers.iter().filter_map(Weak::upgrade) {
                self.offer(&subscriber, &event, size);
            }
        }
    }

    fn offer(&self, subscriber: &Subscriber, event: &Arc<Event>, size: usize) {
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

    pub(crate) fn stats(&self) -> LiveStats {
        let subscribers = lock(&self.subscribers)
            .iter()
            .filter(|weak| weak.strong_count() > 0)
            .count();
        LiveStats {
            subscribers,
            peak_queued_bytes: self.peak_queued_bytes.load(Ordering::Relaxed),
            peak_queued_events: self.peak_queued_events.load(Ordering::Relaxed),
            lagged_readers: self.lagged_readers.load(Ordering::Relaxed),
        }
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

/// The size of an event as the stream sends it.
pub(crate) fn json_size(event: &Event) -> usize {
    let mut counter = ByteCounter(0);
    // Writing into a counter cannot fail; an event that cannot be serialized counts as empty.
    let _ = serde_json::to_writer(&mut counter, event);
    counter.0
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        assert_eq!(hub.stats().lagged_readers, 0);
        hub.publish(&[event(11, 1)]);
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
        assert_eq!(hub.stats().subscribers, 0);
    }
}
