//! The PostgreSQL engine: connection handling and transactions; the rules are the shared ones.
//!
//! Several servers may share one database, so every write runs in a real transaction that first
//! takes one transaction-scoped advisory lock (`pg_advisory_xact_lock`) for the whole store: writes
//! are serialized across all servers exactly as SQLite's single writer serializes them within
//! one, and every domain rule written for that (one winner per claim, no two conflicting leases,
//! fencing tokens that only grow, delivery bookkeeping) holds unchanged. The transaction runs at
//! READ COMMITTED on purpose: each statement after the lock sees everything committed by the
//! writers before it (under REPEATABLE READ the snapshot would date from before the lock wait).
//!
//! The event log is ordered by the same lock: an event's sequence number is the log's largest
//! plus one (the `events_next_seq` trigger of the schema), taken while the lock is held, and the lock is released only after the commit is
//! visible. So events commit in sequence order with no gaps, and a follower that resumes "after
//! seq N" can never miss an event that commits later with a smaller number.
//!
//! Reads run on a REPEATABLE READ, READ ONLY transaction (one consistent snapshot per read) from
//! the same small pool, without the lock. Within one process a mutex also queues the writers
//! before they ask PostgreSQL for the lock: the events of each commit then reach the sink in
//! sequence order, and only one connection per server waits on the lock.
//!
//! Live events cross servers by following the log: a server hands its sink its own events as
//! it commits them and the events other servers committed, always in sequence order and each
//! once (see [`PgEngine::follow`]). A commit with events sends a `NOTIFY` on the store's channel
//! that wakes the other servers' followers at once; they read the log by sequence number when
//! woken and at least every [`FOLLOW_INTERVAL`] (a lost notification, a broken listening
//! connection), so order and completeness never rest on the notifications.
//!
//! The `postgres` client is synchronous (it drives its own small runtime): call it from blocking
//! threads, never from an async task, as the server already does for the store.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Condvar, Mutex};

use chrono::Utc;

use super::db::{Db, PgConn};
use super::group_commit::CommitStats;
use super::pg_tls::PgTarget;
use super::{Reader, StoreConfig, Tx, lock};
use crate::error::{CoreError, Result};
use crate::model::{Event, EventFilter};

/// Mixed into the store's lock key for the sweeper's lock.
const SWEEPER_LOCK: i64 = 0x5357_4545_5045;

/// How often a server looks for events other servers wrote.
pub(super) const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// Events read per query while following.
const FOLLOW_PAGE: i64 = 1000;

/// Connections one server keeps open at most (writes take one at a time; reads the rest).
const POOL_SIZE: usize = 8;

pub(super) struct PgEngine {
    connect: PgTarget,
    pool: Mutex<PoolState>,
    freed: Condvar,
    /// Queues this process's writers (see the module docs).
    write_gate: Mutex<CommitStats>,
    /// The advisory lock's key: the store's schema, hashed, so that stores in different schemas
    /// of one database do not wait for each other.
    lock_key: i64,
    /// The last sequence number handed to the sink (see [`PgEngine::follow`]).
    published: Mutex<i64>,
    follower_started: std::sync::atomic::AtomicBool,
    /// The connection holding the sweeper's session lock, while this server is the sweeper.
    sweeper: Mutex<Option<postgres::Client>>,
    /// This engine's name in the notifications it sends, so that its follower can skip its own.
    server_id: String,
}

struct PoolState {
    idle: Vec<PgConn>,
    open: usize,
}

/// A connection taken from the pool; it goes back when dropped, unless it broke.
struct Pooled<'e> {
    engine: &'e PgEngine,
    conn: Option<RefCell<PgConn>>,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let conn = conn.into_inner();
        let mut pool = lock(&self.engine.pool);
        if conn.client.is_closed() {
            pool.open -= 1;
        } else {
            pool.idle.push(conn);
        }
        drop(pool);
        self.engine.freed.notify_one();
    }
}

impl Pooled<'_> {
    fn cell(&self) -> &RefCell<PgConn> {
        match &self.conn {
            Some(conn) => conn,
            None => unreachable!("a pooled connection is present until dropped"),
        }
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.cell().borrow_mut().client.batch_execute(sql)?)
    }
}

impl PgEngine {
    /// Connects, brings the schema up to date, and keeps the connection for the pool.
    pub(super) fn open(url: &str) -> Result<PgEngine> {
        let connect = PgTarget::parse(url)
            .map_err(|error| CoreError::invalid(format!("bad PostgreSQL URL: {error}")))?;
        let mut client = connect_with(&connect)?;
        let schema: String = client
            .query_one("SELECT current_schema()::text", &[])?
            .get(0);
        let lock_key = lock_key_of(&schema);
        super::schema::migrate_postgres(&mut client, lock_key)?;
        let last_seq: i64 = client
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?
            .get(0);
        Ok(PgEngine {
            connect,
            pool: Mutex::new(PoolState {
                idle: vec![PgConn::new(client)],
                open: 1,
            }),
            freed: Condvar::new(),
            write_gate: Mutex::new(CommitStats::default()),
            lock_key,
            published: Mutex::new(last_seq),
            follower_started: std::sync::atomic::AtomicBool::new(false),
            sweeper: Mutex::new(None),
            server_id: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// The `LISTEN`/`NOTIFY` channel of this store's event log (one per schema, like the lock).
    fn channel(&self) -> String {
        format!("conclave_events_{:x}", self.lock_key)
    }

    /// A connection listening on [`PgEngine::channel`], for the follower.
    fn listener(&self) -> Result<postgres::Client> {
        let mut client = connect_with(&self.connect)?;
        client.batch_execute(&format!("LISTEN {}", self.channel()))?;
        Ok(client)
    }

    fn take(&self) -> Result<Pooled<'_>> {
        let mut pool = lock(&self.pool);
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(Pooled {
                    engine: self,
                    conn: Some(RefCell::new(conn)),
                });
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                return match connect_with(&self.connect) {
                    Ok(client) => Ok(Pooled {
                        engine: self,
                        conn: Some(RefCell::new(PgConn::new(client))),
                    }),
                    Err(error) => {
                        lock(&self.pool).open -= 1;
                        Err(error)
                    }
                };
            }
            pool = self
                .freed
                .wait(pool)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    pub(super) fn stats(&self) -> CommitStats {
        *lock(&self.write_gate)
    }

    /// Runs `change` in one transaction under the store's write lock; commits if it answers
    /// `Ok` and hands its events to `publish` before the next writer of this process starts.
    pub(super) fn write<T>(
        &self,
        config: &StoreConfig,
        publish: &dyn Fn(&[Event]),
        change: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut stats = lock(&self.write_gate);
        let conn = self.take()?;
        conn.batch(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({})",
            self.lock_key
        ))?;
        let mut tx = Tx {
            db: Db::Pg(conn.cell()),
            now: Utc::now(),
            config,
            events: Vec::new(),
        };
        let result = catch_unwind(AssertUnwindSafe(|| change(&mut tx)));
        let events = std::mem::take(&mut tx.events);
        match result {
            Ok(Ok(value)) => {
                // The notification is sent when (and only if) the transaction commits.
                let commit = if events.is_empty() {
                    "COMMIT".to_string()
                } else {
                    format!("NOTIFY {}, '{}'; COMMIT", self.channel(), self.server_id)
                };
                if let Err(error) = conn.batch(&commit) {
                    let _ = conn.batch("ROLLBACK");
                    return Err(error);
                }
                stats.commits += 1;
                stats.operations += 1;
                if !events.is_empty()
                    && let Err(error) = self.deliver(&events, publish)
                {
                    // The change is committed; the follower delivers the events later.
                    tracing::warn!(%error, "could not read the events before this write's");
                }
                Ok(value)
            }
            Ok(Err(error)) => {
                stats.refused += 1;
                conn.batch("ROLLBACK")?;
                Err(error)
            }
            Err(payload) => {
                let _ = conn.batch("ROLLBACK");
                drop(conn);
                drop(stats);
                resume_unwind(payload)
            }
        }
    }

    /// Hands a committed write's events to the sink, after any that other servers committed
    /// before it (their numbers are lower, and the sink must see the log in order). Events the
    /// follower has already delivered are not delivered again.
    fn deliver(&self, own: &[Event], publish: &dyn Fn(&[Event])) -> Result<()> {
        let mut published = lock(&self.published);
        let first = own.first().map_or(0, |event| event.seq);
        while first > *published + 1 {
            let missed = self.read(|r| {
                r.events(&EventFilter {
                    after: Some(*published),
                    before: Some(first),
                    limit: Some(FOLLOW_PAGE),
                    ..Default::default()
                })
            })?;
            let Some(last) = missed.last().map(|event| event.seq) else {
                break;
            };
            publish(&missed);
            *published = last;
        }
        let fresh: Vec<Event> = own
            .iter()
            .filter(|event| event.seq > *published)
            .cloned()
            .collect();
        if let Some(last) = fresh.last().map(|event| event.seq) {
            publish(&fresh);
            *published = last;
        }
        Ok(())
    }

    /// Hands the sink every event committed since the last one it got, whichever server wrote
    /// it: the server's follower thread calls this every [`FOLLOW_INTERVAL`], so that SSE
    /// streams, inbox waits and supervisors on this server see other servers' events (in
    /// sequence order and without gaps: numbers follow commit order, see the module docs).
    pub(super) fn follow(&self, publish: &dyn Fn(&[Event])) -> Result<()> {
        let mut published = lock(&self.published);
        loop {
            let events = self.read(|r| {
                r.events(&EventFilter {
                    after: Some(*published),
                    limit: Some(FOLLOW_PAGE),
                    ..Default::default()
                })
            })?;
            let Some(last) = events.last().map(|event| event.seq) else {
                return Ok(());
            };
            publish(&events);
            *published = last;
            if events.len() < usize::try_from(FOLLOW_PAGE).unwrap_or(usize::MAX) {
                return Ok(());
            }
        }
    }

    /// Whether this server is the one that sweeps: the one holding a session-level advisory lock
    /// on a connection of its own. When that server dies its connection closes, PostgreSQL
    /// releases the lock, and the next server to try (every sweep interval) takes over.
    pub(super) fn holds_sweeper_lock(&self) -> Result<bool> {
        let mut sweeper = lock(&self.sweeper);
        if let Some(client) = sweeper.as_mut() {
            // A connection that broke has lost the lock with it.
            if !client.is_closed() && client.simple_query("SELECT 1").is_ok() {
                return Ok(true);
            }
            *sweeper = None;
        }
        let mut client = connect_with(&self.connect)?;
        let held: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&(self.lock_key ^ SWEEPER_LOCK)],
            )?
            .get(0);
        if held {
            *sweeper = Some(client);
        }
        Ok(held)
    }

    /// Starts the thread that calls [`PgEngine::follow`] (once per store; it ends with the store).
    pub(super) fn start_follower(&self, store: std::sync::Weak<super::StoreInner>) {
        if self
            .follower_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("conclave-pg-follow".into())
            .spawn(move || {
                let mut listener: Option<postgres::Client> = None;
                loop {
                    wait_for_others(&mut listener, &store);
                    let Some(inner) = store.upgrade() else {
                        return;
                    };
                    let store = super::Store { inner };
                    if let super::Engine::Pg(engine) = &store.inner.engine
                        && let Err(error) = engine.follow(&|events| store.publish(events))
                    {
                        tracing::warn!(%error, "could not follow the event log");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start following the event log");
        }
    }

    /// Runs `query` on one consistent snapshot.
    pub(super) fn read<T>(&self, query: impl FnOnce(&Reader<'_>) -> Result<T>) -> Result<T> {
        let conn = self.take()?;
        conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            query(&Reader {
                db: Db::Pg(conn.cell()),
            })
        }));
        let ended = conn.batch("ROLLBACK");
        match result {
            Ok(answer) => {
                let answer = answer?;
                ended?;
                Ok(answer)
            }
            Err(payload) => resume_unwind(payload),
        }
    }
}

impl Drop for PgEngine {
    /// Closing a `postgres` connection blocks on the driver's runtime, which panics on an async
    /// executor's thread; the last handle on a store may well be dropped there (a server's
    /// shutdown). So the connections are closed on a thread of their own.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut lock(&self.pool).idle);
        let sweeper = lock(&self.sweeper).take();
        if idle.is_empty() && sweeper.is_none() {
            return;
        }
        let closing = std::thread::Builder::new()
            .name("conclave-pg-close".into())
            .spawn(move || drop((idle, sweeper)));
        if let Ok(closing) = closing {
            let _ = closing.join();
        }
    }
}

/// Waits until another server notifies a commit with events, or [`FOLLOW_INTERVAL`] passes:
/// the notification wakes followers at once, and the interval remains the fallback (a lost
/// notification, a listening connection that broke). Order never rests on notifications: the
/// follower reads the log by sequence number either way. Notifications this server sent are
/// skipped (its own events reach the sink as it commits them).
fn wait_for_others(
    listener: &mut Option<postgres::Client>,
    store: &std::sync::Weak<super::StoreInner>,
) {
    if listener.as_ref().is_none_or(postgres::Client::is_closed) {
        *listener = store.upgrade().and_then(|inner| match &inner.engine {
            super::Engine::Pg(engine) => engine
                .listener()
                .inspect_err(|error| tracing::debug!(%error, "cannot LISTEN; polling the log"))
                .ok(),
            super::Engine::Sqlite { .. } => None,
        });
    }
    let Some(client) = listener.as_mut() else {
        std::thread::sleep(FOLLOW_INTERVAL);
        return;
    };
    let own = store.upgrade().and_then(|inner| match &inner.engine {
        super::Engine::Pg(engine) => Some(engine.server_id.clone()),
        super::Engine::Sqlite { .. } => None,
    });
    let deadline = std::time::Instant::now() + FOLLOW_INTERVAL;
    let mut notifications = client.notifications();
    let broke = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match postgres::fallible_iterator::FallibleIterator::next(
            &mut notifications.timeout_iter(left),
        ) {
            Ok(Some(notification)) if Some(notification.payload()) != own.as_deref() => {
                break false;
            }
            Ok(Some(_)) if !left.is_zero() => {}
            Ok(_) => break false,
            Err(error) => {
                tracing::debug!(%error, "the LISTEN connection broke; polling the log");
                break true;
            }
        }
    };
    drop(notifications);
    if broke {
        *listener = None;
    }
}

fn connect_with(target: &PgTarget) -> Result<postgres::Client> {
    // TLS as the URL's `sslmode` asks (see `pg_tls`).
    let mut client = target.connect()?;
    // Plan each statement for its parameters: the store's `(?1 IS NULL OR column = ?1)` filters
    // then use their indexes, where a generic plan (PostgreSQL's choice after a few runs) scans
    // the table. Planning these small statements costs far less than such a scan.
    client.batch_execute("SET plan_cache_mode = force_custom_plan")?;
    Ok(client)
}

/// A stable 63-bit key from the schema's name (FNV-1a), for the advisory locks.
pub(super) fn lock_key_of(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"conclave-store:".iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(hash >> 1).unwrap_or(i64::MAX)
}
