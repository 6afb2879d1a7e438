//! Group commit: concurrent writes share one transaction and one commit.
//!
//! Callers queue for the single write connection in arrival order. The caller that finds no
//! transaction open begins one (a "batch"); every caller runs its own operation inside a
//! savepoint of the open batch, so an operation that fails rolls back alone and leaves no row and
//! no event. A caller that finishes while others are queued hands them the connection and waits;
//! the caller that finishes with nobody queued (or the batch full) commits the batch once, hands
//! its events to the sink in sequence order while it still holds the connection, and only then
//! wakes every member with the outcome: no answer leaves before its commit.
//!
//! Nobody waits for company. A caller that finds the queue empty runs and commits at once; there
//! is no timer anywhere in this module, and batches form only from callers who were already
//! waiting for the connection.
//!
//! A caller that cannot block (the server's async handlers) hands its write to the lane's writer
//! thread instead ([`WriteLane::submit`]): that thread takes every write queued for it, runs them
//! back to back in one turn of the lane (each in a savepoint, like any batch member), and answers
//! each through its callback once the batch has ended. No thread is woken per write, and no
//! blocking thread waits for the connection on a request's behalf.
//!
//! A blocking caller runs its operation on its own thread rather than handing it to a writer thread:
//! operations borrow from their callers (`Store::write` takes any `FnOnce`), and moving a
//! borrowing closure to another thread would take `unsafe` (forbidden in this workspace) or
//! `'static` closures at every call site. Running in place also spares a lone caller two thread
//! hand-offs. One thread at a time owns the connection all the same: the one whose turn it is.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use rusqlite::Connection;

use super::{Engine, StoreConfig, StoreInner, Tx, lock};
use crate::error::{CoreError, Result};
use crate::model::Event;

/// Operations one transaction may hold: bounds how long the first member of a busy batch waits.
const MAX_BATCH_OPERATIONS: usize = 64;

/// How many transactions committed and how many operations they held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions that committed.
    pub commits: u64,
    /// Operations that committed (their answer was `Ok`), across all those transactions.
    pub operations: u64,
    /// Operations refused (rolled back to their savepoint), which wrote nothing.
    pub refused: u64,
}

/// The single write connection and the queue of callers waiting for it.
pub(super) struct WriteLane {
    state: Mutex<LaneState>,
    /// Writes handed to the writer thread ([`WriteLane::submit`]).
    submitted: Arc<Submitted>,
}

/// A write handed to the writer thread: its change, run in the thread's turn, and the answer to
/// its caller, given once the batch has ended.
pub(super) trait QueuedWrite: Send {
    /// Runs the change; answers whether it succeeded (a refusal writes nothing).
    fn run(&mut self, tx: &mut Tx<'_>) -> bool;
    /// Answers the caller: the change's own result, or `failure` when its batch did not commit
    /// (or the change never ran).
    fn answer(self: Box<Self>, failure: Option<CoreError>);
}

/// The writes waiting for the writer thread, and whether that thread runs.
#[derive(Default)]
struct Submitted {
    queue: Mutex<SubmittedQueue>,
    ready: Condvar,
}

#[derive(Default)]
struct SubmittedQueue {
    writes: VecDeque<Box<dyn QueuedWrite>>,
    thread_started: bool,
}

/// How long the idle writer thread waits before checking that its store still exists.
const WRITER_IDLE_CHECK: Duration = Duration::from_secs(1);

struct LaneState {
    /// The connection while nobody runs an operation on it (`None` while someone does).
    conn: Option<Connection>,
    /// The transaction in progress, if any.
    batch: Option<OpenBatch>,
    /// Callers waiting for the connection, in arrival order, each woken through its own condvar.
    queue: VecDeque<Arc<Condvar>>,
    stats: CommitStats,
}

struct OpenBatch {
    outcome: Arc<BatchOutcome>,
    /// Events of the operations that succeeded so far, in sequence order.
    events: Vec<Event>,
    operations: usize,
    refused: usize,
    /// Set when the transaction cannot go on (a savepoint could not be undone, or SQLite rolled
    /// the whole transaction back): the batch then ends at once and rolls back.
    broken: Option<String>,
}

impl OpenBatch {
    /// A batch with no operation yet, and the outcome its members will wait on.
    fn new() -> Self {
        OpenBatch {
            outcome: Arc::new(BatchOutcome {
                result: Mutex::new(None),
                done: Condvar::new(),
            }),
            events: Vec::new(),
            operations: 0,
            refused: 0,
            broken: None,
        }
    }
}

/// How a batch ended, for every member to read once it is set.
struct BatchOutcome {
    result: Mutex<Option<std::result::Result<(), CommitFailure>>>,
    done: Condvar,
}

/// Why a batch did not commit. `rusqlite::Error` cannot be cloned, so each member gets its own
/// error rebuilt from this.
#[derive(Debug, Clone)]
struct CommitFailure {
    code: Option<rusqlite::ffi::Error>,
    message: String,
}

impl CommitFailure {
    fn from_error(error: &rusqlite::Error) -> Self {
        let code = match error {
            rusqlite::Error::SqliteFailure(code, _) => Some(*code),
            _ => None,
        };
        CommitFailure {
            code,
            message: error.to_string(),
        }
    }

    fn to_error(&self) -> CoreError {
        let code = self
            .code
            .unwrap_or_else(|| rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR));
        CoreError::Storage(rusqlite::Error::SqliteFailure(
            code,
            Some(format!(
                "the transaction holding this change did not commit: {}",
                self.message
            )),
        ))
    }
}

/// What one turn of the connection ran: its operations, how many were refused, the events of
/// those that succeeded (in sequence order), and why the batch cannot go on, if so.
struct Turn {
    operations: usize,
    refused: usize,
    events: Vec<Event>,
    broken: Option<String>,
}

/// What one operation came to, before its batch ends.
enum Ran<T> {
    Done(T),
    Refused(CoreError),
    Panicked(Box<dyn std::any::Any + Send>),
}

impl WriteLane {
    pub(super) fn new(conn: Connection) -> Self {
        WriteLane {
            state: Mutex::new(LaneState {
                conn: Some(conn),
                batch: None,
                queue: VecDeque::new(),
                stats: CommitStats::default(),
            }),
            submitted: Arc::default(),
        }
    }

    /// Queues `write` for the writer thread; answers whether the caller must start that thread
    /// ([`start_writer`]), which happens once, at the first write handed over.
    pub(super) fn submit(&self, write: Box<dyn QueuedWrite>) -> bool {
        let mut queue = lock(&self.submitted.queue);
        queue.writes.push_back(write);
        let start = !queue.thread_started;
        queue.thread_started = true;
        drop(queue);
        self.submitted.ready.notify_one();
        start
    }

    /// Runs the submitted `writes` in one turn of the lane (they join the open batch, if any, as
    /// members, or open one), then answers each once the batch has ended.
    fn run_submitted(
        &self,
        config: &StoreConfig,
        publish: &dyn Fn(&[Event]),
        writes: Vec<Box<dyn QueuedWrite>>,
    ) {
        let (mut conn, outcome, _) = self.take_turn();
        let mut ran = Vec::with_capacity(writes.len());
        let mut events = Vec::new();
        let mut refused = 0;
        let mut broken = None;
        let mut writes = writes.into_iter();
        for mut write in writes.by_ref() {
            let (back, ok, written, why) = run_submitted_write(conn, config, write.as_mut());
            conn = back;
            if ok {
                events.extend(written);
            } else {
                refused += 1;
            }
            ran.push(write);
            if why.is_some() {
                broken = why;
                break;
            }
        }
        // A write after the one that broke the batch never ran: it goes back to the head of the
        // queue, for the next turn.
        let unrun: Vec<_> = writes.collect();
        if !unrun.is_empty() {
            let mut queue = lock(&self.submitted.queue);
            for write in unrun.into_iter().rev() {
                queue.writes.push_front(write);
            }
        }
        let turn = Turn {
            operations: ran.len(),
            refused,
            events,
            broken,
        };
        let failure = self.close_turn(conn, &outcome, turn, true, publish).err();
        for write in ran {
            write.answer(failure.as_ref().map(CommitFailure::to_error));
        }
    }

    pub(super) fn stats(&self) -> CommitStats {
        lock(&self.state).stats
    }

    /// Callers waiting for the connection right now (tests use it to line callers up).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Runs `inspect` on the write connection while nobody writes (tests read its settings).
    #[cfg(test)]
    pub(super) fn with_connection<T>(
        &self,
        inspect: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let state = lock(&self.state);
        let conn = state
            .conn
            .as_ref()
            .expect("no write is in progress in this test");
        inspect(conn)
    }

    /// Runs `change` in a savepoint of the open batch (opening one if none is), and answers once
    /// the batch has committed. `publish` receives the batch's events after the commit, in
    /// sequence order, before any member is answered.
    pub(super) fn write<T>(
        &self,
        config: &StoreConfig,
        publish: &dyn Fn(&[Event]),
        change: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let (conn, outcome, opens) = self.take_turn();
        self.run_turn(conn, outcome, opens, true, config, publish, change)
    }

    /// Runs `change` like [`WriteLane::write`] when the lane is idle (the connection free and
    /// nobody queued), committing it in a transaction of its own; gives `change` back, unrun,
    /// when the lane is busy. Never waits for another caller: it neither queues nor hands the
    /// connection to callers who queue meanwhile (they form the next batch once it commits), so
    /// an async caller can run a short write on its own thread, sparing the hand-off to a
    /// blocking thread and back, without ever blocking on someone else's operation.
    pub(super) fn try_write_now<T, F>(
        &self,
        config: &StoreConfig,
        publish: &dyn Fn(&[Event]),
        change: F,
    ) -> std::result::Result<Result<T>, F>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T>,
    {
        let Some((conn, outcome)) = self.try_take_idle_turn() else {
            return Err(change);
        };
        Ok(self.run_turn(conn, outcome, true, false, config, publish, change))
    }

    /// Runs this caller's operation on `conn`, then hands the connection to the next in line
    /// (when `may_hand_over` and the batch can go on) or ends the batch; answers once the batch
    /// has ended.
    #[allow(clippy::too_many_arguments)]
    fn run_turn<T>(
        &self,
        conn: Connection,
        outcome: Arc<BatchOutcome>,
        opens: bool,
        may_hand_over: bool,
        config: &StoreConfig,
        publish: &dyn Fn(&[Event]),
        change: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let (conn, ran, events, broken) = run_operation(conn, opens, config, change);
        let turn = match &ran {
            Ran::Done(_) => Turn {
                operations: 1,
                refused: 0,
                events,
                broken,
            },
            Ran::Refused(_) | Ran::Panicked(_) => Turn {
                operations: 1,
                refused: 1,
                events: Vec::new(),
                broken,
            },
        };
        let result = self.close_turn(conn, &outcome, turn, may_hand_over, publish);
        match ran {
            Ran::Panicked(payload) => resume_unwind(payload),
            Ran::Done(value) => match result {
                Ok(()) => Ok(value),
                Err(failure) => Err(failure.to_error()),
            },
            // A refusal may rest on a batch-mate's uncommitted change: if that change did not
            // commit either, the refusal is not trustworthy and the storage error is the answer.
            Ran::Refused(error) => match result {
                Ok(()) => Err(error),
                Err(failure) => Err(failure.to_error()),
            },
        }
    }

    /// Records `turn` in the open batch, then hands the connection to the next in line (when
    /// `may_hand_over` and the batch can go on) or ends the batch; answers how the batch ended,
    /// once it has.
    fn close_turn(
        &self,
        conn: Connection,
        outcome: &BatchOutcome,
        turn: Turn,
        may_hand_over: bool,
        publish: &dyn Fn(&[Event]),
    ) -> std::result::Result<(), CommitFailure> {
        let ends_batch = {
            let mut state = lock(&self.state);
            let LaneState {
                conn: slot,
                batch,
                queue,
                ..
            } = &mut *state;
            let Some(open) = batch.as_mut() else {
                // Unreachable: the batch stays open while its member holds the connection.
                *slot = Some(conn);
                return Err(CommitFailure {
                    code: None,
                    message: "the write batch vanished".to_string(),
                });
            };
            open.events.extend(turn.events);
            open.operations += turn.operations;
            open.refused += turn.refused;
            if let Some(reason) = turn.broken {
                open.broken.get_or_insert(reason);
            }
            // A refused first operation rolled the (then empty) transaction back: the batch ends
            // there, and whoever is queued opens the next.
            let hand_over = may_hand_over
                && open.broken.is_none()
                && !conn.is_autocommit()
                && !queue.is_empty()
                && open.operations < MAX_BATCH_OPERATIONS;
            if hand_over {
                *slot = Some(conn);
                if let Some(next) = queue.front() {
                    next.notify_one();
                }
                None
            } else {
                batch.take().map(|batch| (conn, batch))
            }
        };
        if let Some((conn, batch)) = ends_batch {
            self.end_batch(conn, batch, publish);
        }
        outcome.wait()
    }

    /// The connection and a new batch, when the connection is free and nobody waits for it (then
    /// no batch is open either: a batch stays open only while a member holds the connection or
    /// a queued caller has been handed it).
    fn try_take_idle_turn(&self) -> Option<(Connection, Arc<BatchOutcome>)> {
        let mut state = lock(&self.state);
        if !state.queue.is_empty() || state.batch.is_some() {
            return None;
        }
        let conn = state.conn.take()?;
        let batch = OpenBatch::new();
        let outcome = Arc::clone(&batch.outcome);
        state.batch = Some(batch);
        Some((conn, outcome))
    }

    /// Waits until the connection is free and this caller is first in line; returns it with the
    /// outcome of the batch this caller joins and whether this caller opens that batch.
    fn take_turn(&self) -> (Connection, Arc<BatchOutcome>, bool) {
        let mut state = lock(&self.state);
        if !(state.queue.is_empty() && state.conn.is_some()) {
            let turn = Arc::new(Condvar::new());
            state.queue.push_back(Arc::clone(&turn));
            while !(state.conn.is_some()
                && state
                    .queue
                    .front()
                    .is_some_and(|first| Arc::ptr_eq(first, &turn)))
            {
                state = turn
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.queue.pop_front();
        }
        let opens = state.batch.is_none();
        let outcome = match &state.batch {
            Some(open) => Arc::clone(&open.outcome),
            None => {
                let batch = OpenBatch::new();
                let outcome = Arc::clone(&batch.outcome);
                state.batch = Some(batch);
                outcome
            }
        };
        match state.conn.take() {
            Some(conn) => (conn, outcome, opens),
            // The loop above waits until the connection is there; the fast path checked it.
            None => unreachable!("the write connection is free when a turn is taken"),
        }
    }

    /// Commits (or, when broken, rolls back) `batch`, publishes its events, answers its members,
    /// and gives the connection to the next caller in line.
    fn end_batch(&self, conn: Connection, batch: OpenBatch, publish: &dyn Fn(&[Event])) {
        let OpenBatch {
            outcome,
            events,
            operations,
            refused,
            broken,
        } = batch;
        // Nothing to commit when the batch's only operation was refused and rolled back.
        let empty = conn.is_autocommit();
        let result = match broken {
            Some(reason) => {
                rollback(&conn);
                Err(CommitFailure {
                    code: None,
                    message: reason,
                })
            }
            None if empty => Ok(()),
            None => match conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(error) => {
                    rollback(&conn);
                    Err(CommitFailure::from_error(&error))
                }
            },
        };
        // Published while this thread still holds the connection, so that subscribers see events
        // in sequence order across batches too. The sink must not block (the server's is a
        // broadcast send); a panic in it must not take the connection down with it.
        let sink_panic = if result.is_ok() && !events.is_empty() {
            catch_unwind(AssertUnwindSafe(|| publish(&events))).err()
        } else {
            None
        };
        outcome.finish(result.clone());
        let mut state = lock(&self.state);
        if result.is_ok() && !empty {
            state.stats.commits += 1;
            state.stats.operations += (operations - refused) as u64;
        }
        state.stats.refused += refused as u64;
        state.conn = Some(conn);
        if let Some(next) = state.queue.front() {
            next.notify_one();
        }
        drop(state);
        if let Some(payload) = sink_panic {
            resume_unwind(payload);
        }
    }
}

impl BatchOutcome {
    fn finish(&self, result: std::result::Result<(), CommitFailure>) {
        *lock(&self.result) = Some(result);
        self.done.notify_all();
    }

    fn wait(&self) -> std::result::Result<(), CommitFailure> {
        let mut result = lock(&self.result);
        loop {
            if let Some(result) = result.as_ref() {
                return result.clone();
            }
            result = self
                .done
                .wait(result)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// What [`run_operation`] gives back: the connection, what the operation came to, its events
/// (when it succeeded), and why the batch cannot go on, if so.
type Outcome<T> = (Connection, Ran<T>, Vec<Event>, Option<String>);

/// Runs one operation, opening the batch's transaction first when `opens`.
///
/// The operation that opens the batch runs without a savepoint: nothing else is in the
/// transaction yet, so when it is refused the whole transaction rolls back and the batch ends
/// empty. A savepoint copies the original of every page the operation changes into a
/// sub-journal (about twenty pages for a message), so a lone writer, the common case, is spared
/// that work. Every later member runs in a savepoint, so that its refusal undoes only itself.
fn run_operation<T>(
    conn: Connection,
    opens: bool,
    config: &StoreConfig,
    change: impl FnOnce(&mut Tx<'_>) -> Result<T>,
) -> Outcome<T> {
    if opens {
        // IMMEDIATE: take the database's write lock now, so that another process writing the
        // same database makes this wait (busy timeout) instead of failing half-way.
        if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
            let reason = error.to_string();
            return (conn, Ran::Refused(error.into()), Vec::new(), Some(reason));
        }
    } else if let Err(error) = conn.execute_batch("SAVEPOINT operation") {
        let reason = error.to_string();
        return (conn, Ran::Refused(error.into()), Vec::new(), Some(reason));
    }
    let mut tx = Tx {
        db: super::db::Db::Sqlite(&conn),
        now: Utc::now(),
        config,
        events: Vec::new(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| change(&mut tx)));
    let events = std::mem::take(&mut tx.events);
    let ran = match result {
        Ok(Ok(value)) if opens => return (conn, Ran::Done(value), events, None),
        Ok(Ok(value)) => match conn.execute_batch("RELEASE operation") {
            Ok(()) => return (conn, Ran::Done(value), events, None),
            Err(error) => Ran::Refused(error.into()),
        },
        Ok(Err(error)) => Ran::Refused(error),
        Err(payload) => Ran::Panicked(payload),
    };
    let broken = if opens {
        undo_first_operation(&conn)
    } else {
        undo_operation(&conn)
    };
    (conn, ran, Vec::new(), broken)
}

/// Runs one submitted write on `conn`: without a savepoint when no transaction is open (it opens
/// the batch, as [`run_operation`]'s first operation does), else in a savepoint. Answers the
/// connection, whether the change succeeded, its events, and why the batch cannot go on.
fn run_submitted_write(
    conn: Connection,
    config: &StoreConfig,
    write: &mut dyn QueuedWrite,
) -> (Connection, bool, Vec<Event>, Option<String>) {
    let opens = conn.is_autocommit();
    let opening = if opens {
        conn.execute_batch("BEGIN IMMEDIATE")
    } else {
        conn.execute_batch("SAVEPOINT operation")
    };
    if let Err(error) = opening {
        return (conn, false, Vec::new(), Some(error.to_string()));
    }
    let mut tx = Tx {
        db: super::db::Db::Sqlite(&conn),
        now: Utc::now(),
        config,
        events: Vec::new(),
    };
    // A panicking change is a refused one (its caller hears that the write failed); the writer
    // thread goes on.
    let ok = catch_unwind(AssertUnwindSafe(|| write.run(&mut tx))).unwrap_or(false);
    let events = std::mem::take(&mut tx.events);
    let ok = ok
        && (opens
            || match conn.execute_batch("RELEASE operation") {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "could not release a write's savepoint");
                    false
                }
            });
    if ok {
        return (conn, true, events, None);
    }
    let broken = if opens {
        undo_first_operation(&conn)
    } else {
        undo_operation(&conn)
    };
    (conn, false, Vec::new(), broken)
}

/// Starts the writer thread of `store`'s SQLite lane: it runs the writes handed over with
/// [`WriteLane::submit`], a batch at a time, and ends once the store is dropped. When the thread
/// cannot start, the writes queued so far are run on this thread, and later ones start it again.
pub(super) fn start_writer(store: Weak<StoreInner>) {
    let Some(inner) = store.upgrade() else {
        return;
    };
    let Engine::Sqlite { writer, .. } = &inner.engine else {
        return;
    };
    let submitted = Arc::clone(&writer.submitted);
    let spawned = std::thread::Builder::new()
        .name("conclave-writer".into())
        .spawn(move || run_writer(&submitted, &store));
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the writer thread; writing on this thread");
        lock(&writer.submitted.queue).thread_started = false;
        let store = super::Store {
            inner: Arc::clone(&inner),
        };
        let writes: Vec<_> = lock(&writer.submitted.queue).writes.drain(..).collect();
        writer.run_submitted(&inner.config, &|events| store.publish(events), writes);
    }
}

fn run_writer(submitted: &Submitted, store: &Weak<StoreInner>) {
    loop {
        let writes: Vec<Box<dyn QueuedWrite>> = {
            let mut queue = lock(&submitted.queue);
            if queue.writes.is_empty() {
                queue = submitted
                    .ready
                    .wait_timeout(queue, WRITER_IDLE_CHECK)
                    .map_or_else(|poisoned| poisoned.into_inner().0, |(queue, _)| queue);
            }
            let take = queue.writes.len().min(MAX_BATCH_OPERATIONS);
            queue.writes.drain(..take).collect()
        };
        let Some(inner) = store.upgrade() else {
            // The store is gone: its callers hear that their writes never ran.
            for write in writes {
                write.answer(Some(CoreError::Database(
                    "the store closed before this write ran".to_string(),
                )));
            }
            return;
        };
        if writes.is_empty() {
            continue;
        }
        let Engine::Sqlite { writer, .. } = &inner.engine else {
            return;
        };
        let store = super::Store {
            inner: Arc::clone(&inner),
        };
        writer.run_submitted(&inner.config, &|events| store.publish(events), writes);
    }
}

/// Rolls back the transaction the refused first operation of a batch opened (nothing else is in
/// it); returns why the batch cannot go on when that fails.
fn undo_first_operation(conn: &Connection) -> Option<String> {
    if conn.is_autocommit() {
        // SQLite already rolled it back (after an I/O or out-of-memory error, for instance).
        return None;
    }
    match conn.execute_batch("ROLLBACK") {
        Ok(()) => None,
        Err(error) => Some(format!("could not undo a refused change: {error}")),
    }
}

/// Rolls the current operation back to its savepoint; returns why the batch cannot go on when
/// that fails or when SQLite has already rolled the whole transaction back (after an I/O or
/// out-of-memory error, for instance).
fn undo_operation(conn: &Connection) -> Option<String> {
    if conn.is_autocommit() {
        return Some("SQLite rolled the transaction back".to_string());
    }
    match conn.execute_batch("ROLLBACK TO operation; RELEASE operation") {
        Ok(()) => None,
        Err(error) => Some(format!("could not undo a refused change: {error}")),
    }
}

/// Ends the transaction without committing, if one is still open.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(error) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(%error, "could not roll a failed write batch back");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::model::{Actor, EventPayload, NewTask, TaskId};
    use crate::store::{Store, StoreConfig};

    /// A store on a file (so reads go through the read-only pool and see only what committed),
    /// with a sink that records what it is given.
    fn store_with_sink() -> (tempfile::TempDir, Store, Arc<Mutex<Vec<Event>>>) {
        let dir = tempfile::tempdir().expect("dir");
        let store =
            Store::open(&dir.path().join("db.sqlite"), StoreConfig::default()).expect("open");
        let published = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&published);
        store.set_event_sink(Arc::new(move |events: &[Event]| {
            lock(&sink).extend(events.iter().cloned());
        }));
        (dir, store, published)
    }

    fn new_task(title: &str) -> NewTask {
        NewTask {
            title: title.into(),
            ..Default::default()
        }
    }

    /// Creates a task; the caller then checks, through a read-only connection, that the task is
    /// there as soon as the answer is: the answer came after the commit.
    fn create_and_check(store: &Store, title: &str) -> Result<TaskId> {
        let id = store
            .write(|tx| tx.create_task(&Actor::Admin, new_task(title)))?
            .id;
        let seen = store.read(|r| r.find_task(id))?;
        assert!(seen.is_some(), "{title} answered before its commit");
        Ok(id)
    }

    /// Starts, in `scope`, a write that takes the connection, runs `change`, and holds the
    /// connection until the sender it answers with is used (others queue behind it meanwhile);
    /// returns once `change` has run.
    fn hold_the_connection<'scope, T: Send + 'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        store: &'scope Store,
        change: impl FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'scope,
    ) -> (
        mpsc::Sender<()>,
        std::thread::ScopedJoinHandle<'scope, Result<T>>,
    ) {
        let (entered_tx, entered) = mpsc::channel();
        let (go_tx, go) = mpsc::channel::<()>();
        let holder = scope.spawn(move || {
            store.write(|tx| {
                let result = change(tx);
                entered_tx.send(()).expect("signal");
                go.recv().expect("go");
                result
            })
        });
        entered.recv().expect("the holder has the connection");
        (go_tx, holder)
    }

    fn wait_until_queued(store: &Store, count: usize) {
        while store.sqlite_lane().queued() < count {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// On an idle lane a write runs in place and has committed when it answers; while another
    /// caller holds the connection it is given back unrun, and once that caller is done and the
    /// lane idle again, it runs. A caller that queues behind an in-place write is not taken into
    /// its transaction (the in-place caller never waits for another's operation): it commits in
    /// a transaction of its own.
    #[test]
    fn a_write_runs_in_place_only_on_an_idle_lane_and_answers_after_its_commit() {
        let (_dir, store, published) = store_with_sink();
        let before = store.commit_stats();
        let published_before = lock(&published).len();
        let id = match store.try_write_now(|tx| tx.create_task(&Actor::Admin, new_task("idle"))) {
            Ok(result) => result.expect("commits").id,
            Err(_) => panic!("an idle lane runs the write in place"),
        };
        assert!(store.read(|r| r.find_task(id)).expect("read").is_some());
        assert_eq!(store.commit_stats().commits - before.commits, 1);
        assert!(
            lock(&published).len() > published_before,
            "its events are published"
        );

        std::thread::scope(|scope| {
            let (go_tx, holder) = hold_the_connection(scope, &store, |tx| {
                tx.create_task(&Actor::Admin, new_task("held"))
            });
            let ran = std::cell::Cell::new(false);
            let given_back = store.try_write_now(|tx| {
                ran.set(true);
                tx.create_task(&Actor::Admin, new_task("busy"))
            });
            assert!(given_back.is_err(), "a busy lane gives the write back");
            assert!(!ran.get(), "unrun");
            go_tx.send(()).expect("go");
            holder.join().expect("holder").expect("holder commits");
        });

        let (entered_tx, entered) = mpsc::channel();
        let (go_tx, go) = mpsc::channel::<()>();
        let before = store.commit_stats();
        std::thread::scope(|scope| {
            let writer = &store;
            let in_place = scope.spawn(move || {
                writer.try_write_now(move |tx| {
                    entered_tx.send(()).expect("signal");
                    go.recv().expect("go");
                    tx.create_task(&Actor::Admin, new_task("in place"))
                })
            });
            entered.recv().expect("in-place write is running");
            let queued = scope.spawn(|| create_and_check(&store, "queued"));
            wait_until_queued(&store, 1);
            go_tx.send(()).expect("go");
            match in_place.join().expect("in place") {
                Ok(result) => {
                    result.expect("in-place write commits");
                }
                Err(_) => panic!("the lane was idle"),
            }
            queued.join().expect("queued").expect("queued commits");
        });
        assert_eq!(store.commit_stats().commits - before.commits, 2);
    }

    /// Four writes that meet at the connection share one transaction: the refused one leaves no
    /// row and no event, the others commit together, and the sink gets their events in sequence
    /// order.
    #[test]
    fn a_batch_commits_once_and_a_refused_operation_in_it_writes_nothing() {
        let (_dir, store, published) = store_with_sink();
        let before = store.commit_stats();
        std::thread::scope(|scope| {
            // Holds the connection until the others have queued behind it.
            let (go_tx, first) = hold_the_connection(scope, &store, |tx| {
                Ok(tx.create_task(&Actor::Admin, new_task("first"))?.id)
            });
            let second = scope.spawn(|| create_and_check(&store, "second"));
            wait_until_queued(&store, 1);
            let refused = scope.spawn(|| {
                store.write(|tx| {
                    tx.create_task(&Actor::Admin, new_task("refused"))?;
                    Err::<(), _>(CoreError::conflict("refused on purpose"))
                })
            });
            wait_until_queued(&store, 2);
            let third = scope.spawn(|| create_and_check(&store, "third"));
            wait_until_queued(&store, 3);
            go_tx.send(()).expect("go");

            first.join().expect("first").expect("first commits");
            second.join().expect("second").expect("second commits");
            let error = refused.join().expect("refused").expect_err("refused");
            assert_eq!(error.code(), "conflict");
            third.join().expect("third").expect("third commits");
        });
        let after = store.commit_stats();
        assert_eq!(
            after.commits - before.commits,
            1,
            "one commit for the batch"
        );
        assert_eq!(after.operations - before.operations, 3);
        assert_eq!(after.refused - before.refused, 1);

        let titles: Vec<String> = store
            .read(|r| r.tasks(None, None))
            .expect("tasks")
            .into_iter()
            .map(|task| task.title)
            .collect();
        assert_eq!(titles, ["first", "second", "third"]);
        let logged = store
            .read(|r| r.events(&Default::default()))
            .expect("events");
        let published = lock(&published).clone();
        // Each creation logs `task.created` and `task.ready`; the refused one logged nothing.
        assert_eq!(published.len(), 6, "{published:?}");
        assert_eq!(
            published.iter().map(|e| e.seq).collect::<Vec<_>>(),
            logged.iter().map(|e| e.seq).collect::<Vec<_>>(),
            "the sink got exactly the logged events, in sequence order"
        );
        assert!(published.windows(2).all(|pair| pair[0].seq < pair[1].seq));
        let created: Vec<&str> = published
            .iter()
            .filter_map(|event| match &event.payload {
                EventPayload::TaskCreated(created) => Some(created.title.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(created, ["first", "second", "third"]);
    }

    /// The operation that opens a batch runs without a savepoint: when it is refused, its
    /// transaction rolls back whole (no row, no event), the batch ends there, and the callers
    /// queued behind it form the next batch and commit.
    #[test]
    fn a_refused_first_operation_rolls_back_alone_and_the_queue_goes_on() {
        let (_dir, store, published) = store_with_sink();
        let before = store.commit_stats();
        let published_before = lock(&published).len();
        std::thread::scope(|scope| {
            let (go_tx, first) = hold_the_connection(scope, &store, |tx| {
                tx.create_task(&Actor::Admin, new_task("refused first"))?;
                Err::<(), _>(CoreError::conflict("refused on purpose"))
            });
            let second = scope.spawn(|| create_and_check(&store, "second"));
            wait_until_queued(&store, 1);
            let third = scope.spawn(|| create_and_check(&store, "third"));
            wait_until_queued(&store, 2);
            go_tx.send(()).expect("go");
            let error = first.join().expect("first").expect_err("refused");
            assert_eq!(error.code(), "conflict", "its own error, not a storage one");
            second.join().expect("second").expect("second commits");
            third.join().expect("third").expect("third commits");
        });
        let after = store.commit_stats();
        assert_eq!(after.refused - before.refused, 1);
        assert_eq!(after.operations - before.operations, 2);
        assert_eq!(
            after.commits - before.commits,
            1,
            "the refused batch committed nothing; the two queued behind it share one commit"
        );
        let titles: Vec<String> = store
            .read(|r| r.tasks(None, None))
            .expect("tasks")
            .into_iter()
            .map(|task| task.title)
            .collect();
        assert_eq!(titles, ["second", "third"]);
        assert_eq!(
            lock(&published).len() - published_before,
            4,
            "only the committed tasks' events"
        );
        // A refused lone write (the in-place path) leaves the lane usable too.
        let refused = store.write(|tx| {
            tx.create_task(&Actor::Admin, new_task("alone"))?;
            Err::<(), _>(CoreError::conflict("refused on purpose"))
        });
        assert!(refused.is_err());
        create_and_check(&store, "after").expect("the next write commits");
        let count = store.read(|r| r.tasks(None, None)).expect("tasks").len();
        assert_eq!(count, 3);
    }

    /// Writes handed to the writer thread while the connection is busy run together after it:
    /// in one batch, each answered through its callback only after the commit; a refused one
    /// writes nothing and hears its own error; a panicking one hears an error and the thread
    /// goes on to the next writes.
    #[test]
    fn submitted_writes_share_a_batch_and_are_answered_after_its_commit() {
        let (_dir, store, published) = store_with_sink();
        let before = store.commit_stats();
        let (answers_tx, answers) = mpsc::channel::<(&'static str, Result<bool>)>();
        std::thread::scope(|scope| {
            let (go_tx, holder) = hold_the_connection(scope, &store, |tx| {
                tx.create_task(&Actor::Admin, new_task("held"))
            });
            for title in ["first", "refused", "panics", "second"] {
                let answer = answers_tx.clone();
                let check = store.clone();
                let submitted = store.submit_write(
                    move |tx| {
                        let task = tx.create_task(&Actor::Admin, new_task(title))?;
                        match title {
                            "refused" => Err(CoreError::conflict("refused on purpose")),
                            "panics" => panic!("a change that panics"),
                            _ => Ok(task.id),
                        }
                    },
                    move |result: Result<TaskId>| {
                        // Answered after the commit: a committed task is readable by then.
                        let seen = result
                            .map(|id| check.read(|r| r.find_task(id)).expect("read").is_some());
                        answer.send((title, seen)).expect("answer");
                    },
                );
                assert!(submitted.is_ok(), "SQLite takes submitted writes");
            }
            // All four wait behind the holder, then run in the writer thread's one turn.
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                answers.try_recv().is_err(),
                "nothing answered before the holder ends"
            );
            go_tx.send(()).expect("go");
            holder.join().expect("holder").expect("holder commits");
        });
        let mut got: Vec<(&str, Result<bool>)> = (0..4)
            .map(|_| {
                answers
                    .recv_timeout(Duration::from_secs(10))
                    .expect("an answer")
            })
            .collect();
        got.sort_by_key(|(title, _)| *title);
        let summary: Vec<(&str, std::result::Result<bool, &'static str>)> = got
            .iter()
            .map(|(title, result)| {
                (
                    *title,
                    result.as_ref().map(|seen| *seen).map_err(CoreError::code),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("first", Ok(true)),
                ("panics", Err("internal")),
                ("refused", Err("conflict")),
                ("second", Ok(true)),
            ]
        );
        let titles: Vec<String> = store
            .read(|r| r.tasks(None, None))
            .expect("tasks")
            .into_iter()
            .map(|task| task.title)
            .collect();
        assert_eq!(titles, ["held", "first", "second"]);
        let after = store.commit_stats();
        assert_eq!(after.operations - before.operations, 3);
        assert_eq!(after.refused - before.refused, 2);
        assert!(
            after.commits - before.commits <= 2,
            "the submitted writes shared a commit: {before:?} → {after:?}"
        );
        assert_eq!(lock(&published).len(), 6, "two events per committed task");
    }

    /// A caller that finds nobody waiting commits alone, at once: every sequential write is its
    /// own commit (no batching window could have gathered anything, and nothing waited for one).
    #[test]
    fn a_lone_caller_commits_alone() {
        let (_dir, store, published) = store_with_sink();
        let before = store.commit_stats();
        for n in 0..20 {
            create_and_check(&store, &format!("task {n}")).expect("create");
            assert_eq!(store.sqlite_lane().queued(), 0);
        }
        let after = store.commit_stats();
        assert_eq!(after.commits - before.commits, 20);
        assert_eq!(after.operations - before.operations, 20);
        assert_eq!(lock(&published).len(), 40, "two events per task");
    }

    /// An operation that panics rolls back alone; the connection comes back to the store and the
    /// batch it was in still commits the others.
    #[test]
    fn a_panicking_operation_rolls_back_and_the_store_goes_on() {
        let (_dir, store, _published) = store_with_sink();
        std::thread::scope(|scope| {
            let (go_tx, first) = hold_the_connection(scope, &store, |tx| {
                Ok(tx.create_task(&Actor::Admin, new_task("kept"))?.id)
            });
            let panicking = scope.spawn(|| {
                store.write(|tx| -> Result<()> {
                    tx.create_task(&Actor::Admin, new_task("lost"))?;
                    panic!("an operation panics");
                })
            });
            wait_until_queued(&store, 1);
            go_tx.send(()).expect("go");
            first.join().expect("first").expect("first commits");
            assert!(panicking.join().is_err(), "the panic reaches its caller");
        });
        create_and_check(&store, "after").expect("the store still writes");
        let titles: Vec<String> = store
            .read(|r| r.tasks(None, None))
            .expect("tasks")
            .into_iter()
            .map(|task| task.title)
            .collect();
        assert_eq!(titles, ["kept", "after"]);
    }

    /// Many concurrent writers: every answer is a commit, sequence numbers are gap-free and the
    /// sink sees them in order, and at least some writes shared a commit.
    #[test]
    fn concurrent_writes_keep_every_guarantee() {
        let (_dir, store, published) = store_with_sink();
        let before = store.commit_stats();
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let store = &store;
                scope.spawn(move || {
                    for n in 0..25 {
                        create_and_check(store, &format!("t{thread}-{n}")).expect("create");
                    }
                });
            }
        });
        let after = store.commit_stats();
        assert_eq!(after.operations - before.operations, 200);
        assert!(after.commits - before.commits <= 200);
        let seqs: Vec<i64> = lock(&published).iter().map(|e| e.seq).collect();
        assert_eq!(seqs.len(), 400, "two events per task");
        assert!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{seqs:?}"
        );
    }
}
