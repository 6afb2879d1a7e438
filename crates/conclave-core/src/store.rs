//! The durable store: one database holding all coordination state and the event log, on one of
//! two engines: an embedded SQLite file (WAL; the default) or a PostgreSQL server (`store/pg.rs`),
//! which several servers may share. The domain rules in `store/*.rs` are written once, against
//! the small SQL interface of `store/db.rs`; the engines differ only in SQL dialect and in how
//! connections and transactions are handled. What follows describes SQLite; `store/pg.rs` says
//! how PostgreSQL keeps the same guarantees.
//!
//! Every change goes through [`Store::write`], which runs a closure on the single writer
//! connection; the closure's events are inserted into the `events` table in the same transaction
//! and handed to the event sink only after the commit. Concurrent writes share one transaction
//! and one commit, each in its own savepoint (group commit, see `store/group_commit.rs`). Reads go
//! through [`Store::read`] on a pool of read-only connections, so readers never wait for the
//! writer (WAL).
//!
//! Liveness (an agent was heard from) is kept in memory by [`Store::note_alive`] and persisted in
//! batches, not written on every request (see `store/liveness.rs`).
//!
//! The API is synchronous (rusqlite); async callers run it on a blocking thread.

mod agents;
mod checkpoint;
mod copy;
pub(crate) mod db;
mod events;
mod group_commit;
mod leases;
mod liveness;
mod messages;
mod notes;
mod pg;
pub mod pg_tls;
mod presence;
mod queue;
mod schema;
mod search_backlog;
mod steps;
mod tasks;
#[doc(hidden)]
pub mod testing;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use group_commit::WriteLane;

use chrono::{DateTime, TimeZone, Utc};
use db::{Db, OptionalExtension, params};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::model::{Actor, Event, EventPayload, Pipeline, TaskId};

pub use agents::{ReleaseReport, RemovalReport, hash_token};
pub use copy::CopyReport;
pub use events::{IDEMPOTENCY_WINDOW_SECS, SweepReport};
pub use group_commit::CommitStats;
pub use leases::MAX_LEASE_TTL_SECS;
pub use leases::{
    LeaseSnapshot, MAX_PAIRS_UNDER_LOCK, MAX_PATHS, MAX_REPORTED_CONFLICTS,
    MAX_WHOLE_TREE_TTL_SECS, SNAPSHOT_IN_PLACE_ROWS, SnapshotStale,
};
pub use messages::parse_message_id;
pub use notes::parse_note_id;
pub use presence::ServerPresence;
pub use schema::{PG_SCHEMA_VERSION, SCHEMA_VERSION};
pub use tasks::{ClaimOutcome, TaskPage, is_held};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` under WAL: nothing acknowledged is lost when the process dies.
    #[default]
    Normal,
    /// `synchronous=FULL`: also survives power loss, at several times the commit cost.
    Full,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a task claim lives without a request from its holder.
    pub claim_ttl_secs: i64,
    /// Default lifetime of a file lease.
    pub lease_ttl_secs: i64,
    /// Live file leases one agent may hold at once.
    pub max_leases_per_agent: usize,
    pub durability: Durability,
    /// The pipelines tasks may be created in (`[[pipeline]]`). A task copies its pipeline's
    /// definition when it is created, so these matter only for new tasks.
    pub pipelines: Vec<Pipeline>,
    /// Roles every task of which waits for a person's approval when its agent finishes it
    /// (`[defaults] approve = ["role:reviewer"]`).
    pub approve_roles: Vec<String>,
    /// Whether the server lands worktree agents' branches through a merge queue (`[merge]`): a
    /// task finished by an agent in its own worktree then waits in `review` until its branch
    /// lands (store/queue.rs), whatever way it finishes (a plain `done`, a pipeline's last pass,
    /// a person's approval).
    pub merge_queue: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            claim_ttl_secs: 600,
            lease_ttl_secs: 600,
            max_leases_per_agent: 256,
            durability: Durability::Normal,
            pipelines: Vec::new(),
            approve_roles: Vec::new(),
            merge_queue: false,
        }
    }
}

/// Receives the events of each committed transaction, in sequence order.
pub type EventSink = Arc<dyn Fn(&[Event]) + Send + Sync>;

const READ_POOL_SIZE: usize = 4;

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    engine: Engine,
    config: StoreConfig,
    sink: Mutex<Option<EventSink>>,
    liveness: liveness::Liveness,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store> {
        make_private(path)?;
        let mut writer = Connection::open(path)?;
        configure(&writer, config.durability)?;
        schema::migrate(&mut writer)?;
        // SQLite gives its `-wal` and `-shm` files the database file's mode; older versions
        // left them readable by others.
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            make_private(Path::new(&side))?;
        }
        let mut readers = Vec::with_capacity(READ_POOL_SIZE);
        for _ in 0..READ_POOL_SIZE {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            reader.busy_timeout(std::time::Duration::from_secs(10))?;
            reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            plan_without_bound_values(&reader)?;
            keep_temporary_data_in_memory(&reader)?;
            readers.push(Mutex::new(reader));
        }
        // Checkpoints run on their own thread (`store/checkpoint.rs`); the writer's own is a
        // backstop for when that thread falls far behind.
        writer.pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_BACKSTOP_PAGES,
        )?;
        let store = Store::from_parts(writer, readers, config);
        checkpoint::start(path, Arc::downgrade(&store.inner))?;
        search_backlog::start(Arc::downgrade(&store.inner));
        Ok(store)
    }

    /// A private in-memory database (tests, benchmarks of the domain alone).
    pub fn open_in_memory(config: StoreConfig) -> Result<Store> {
        let mut writer = Connection::open_in_memory()?;
        configure(&writer, config.durability)?;
        schema::migrate(&mut writer)?;
        Ok(Store::from_parts(writer, Vec::new(), config))
    }

    fn from_parts(
        writer: Connection,
        readers: Vec<Mutex<Connection>>,
        config: StoreConfig,
    ) -> Self {
        Store::with_engine(
            Engine::Sqlite {
                writer: WriteLane::new(writer),
                readers,
            },
            config,
        )
    }

    /// Opens the store a URL names: `postgres://` or `postgresql://` for PostgreSQL (see
    /// `store/pg.rs`), anything else (a path, or `sqlite://path`) for a SQLite file.
    pub fn open_url(url: &str, config: StoreConfig) -> Result<Store> {
        if is_postgres_url(url) {
            Store::open_postgres(url, config)
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            Store::open(Path::new(path), config)
        }
    }

    /// Connects to a PostgreSQL database and brings its schema up to date. Call it, and every
    /// method of the store it answers, from a blocking thread (the driver is synchronous).
    pub fn open_postgres(url: &str, config: StoreConfig) -> Result<Store> {
        Ok(Store::with_engine(
            Engine::Pg(pg::PgEngine::open(url)?),
            config,
        ))
    }

    /// Creates the schema `schema` in the PostgreSQL database `url` names, and answers a URL
    /// whose connections work in it: a store opened there is apart from every other schema's
    /// (throwaway stores for tests and benchmarks). `schema` is a plain lower-case name.
    pub fn create_postgres_schema(url: &str, schema: &str) -> Result<String> {
        validate_schema_name(schema)?;
        let mut client = pg_tls::PgTarget::parse(url)
            .map_err(CoreError::invalid)?
            .connect()?;
        client.batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        let separator = if url.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{url}{separator}options=-c%20search_path%3D{schema}"
        ))
    }

    /// Drops a schema [`Store::create_postgres_schema`] made, with everything in it.
    pub fn drop_postgres_schema(url: &str, schema: &str) -> Result<()> {
        validate_schema_name(schema)?;
        let mut client = pg_tls::PgTarget::parse(url)
            .map_err(CoreError::invalid)?
            .connect()?;
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        Ok(())
    }

    /// Whether this store is on PostgreSQL (shared by several servers) rather than SQLite.
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.engine, Engine::Pg(_))
    }

    /// The SQLite write lane (its tests line callers up on it).
    #[cfg(test)]
    fn sqlite_lane(&self) -> &WriteLane {
        match &self.inner.engine {
            Engine::Sqlite { writer, .. } => writer,
            Engine::Pg(_) => panic!("a PostgreSQL store has no SQLite write lane"),
        }
    }

    fn with_engine(engine: Engine, config: StoreConfig) -> Self {
        Store {
            inner: Arc::new(StoreInner {
                engine,
                config,
                sink: Mutex::new(None),
                liveness: liveness::Liveness::default(),
            }),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Sets the function that receives every committed event (the server's broadcast).
    ///
    /// On PostgreSQL the sink also gets the events other servers write to the same database
    /// (a follower thread reads the log when another server's `NOTIFY` wakes it, and at least
    /// every fifth of a second), in sequence order.
    pub fn set_event_sink(&self, sink: EventSink) {
        *lock(&self.inner.sink) = Some(sink);
        if let Engine::Pg(engine) = &self.inner.engine {
            engine.start_follower(std::sync::Arc::downgrade(&self.inner));
        }
    }

    /// Runs `change` atomically: if it returns `Ok`, its changes and events are committed before
    /// this returns; if it returns `Err` (or panics), nothing it did is kept. Concurrent calls
    /// share one transaction, each `change` in its own savepoint; a call that finds no other
    /// waiting runs and commits at once.
    pub fn write<T>(&self, change: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        // Events reach the sink while the writer is still held, so that subscribers see them in
        // sequence order (a stream that has sent seq 11 never gets seq 10 afterwards). The sink
        // must not block: the server's is a broadcast send.
        let publish = |events: &[Event]| self.publish(events);
        match &self.inner.engine {
            Engine::Sqlite { writer, .. } => writer.write(&self.inner.config, &publish, change),
            Engine::Pg(engine) => engine.write(&self.inner.config, &publish, change),
        }
    }

    /// Runs `change` like [`Store::write`], at once on the calling thread, when the SQLite write
    /// connection is idle (free, nobody waiting for it); gives `change` back, unrun, when it is
    /// busy, or when the store is on PostgreSQL (whose driver must not run on an async thread).
    /// The change then commits in a transaction of its own, and nothing here waits for another
    /// caller's operation: an async caller spares the hand-off to a blocking thread and back
    /// (which costs more than a short write) and falls back to that hand-off under contention.
    pub fn try_write_now<T, F>(&self, change: F) -> std::result::Result<Result<T>, F>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T>,
    {
        let publish = |events: &[Event]| self.publish(events);
        match &self.inner.engine {
            Engine::Sqlite { writer, .. } => {
                writer.try_write_now(&self.inner.config, &publish, change)
            }
            Engine::Pg(_) => Err(change),
        }
    }

    /// Runs `change` like [`Store::write`] without blocking the calling thread: on SQLite it is
    /// handed to the write lane's writer thread, which runs it with the other writes queued
    /// meanwhile (group commit) and calls `done` with its result once its batch has ended, after
    /// the commit. An async caller awaits `done`'s channel instead of holding a thread while it
    /// waits for the connection. On PostgreSQL both are given back, unrun (run them on a
    /// blocking thread with [`Store::write`]).
    pub fn submit_write<T, F, D>(&self, change: F, done: D) -> std::result::Result<(), (F, D)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
        D: FnOnce(Result<T>) + Send + 'static,
    {
        let Engine::Sqlite { writer, .. } = &self.inner.engine else {
            return Err((change, done));
        };
        let write = Box::new(SubmittedWrite {
            change: Some(change),
            result: None,
            done,
        });
        if writer.submit(write) {
            group_commit::start_writer(Arc::downgrade(&self.inner));
        }
        Ok(())
    }

    /// Moves what waits in the search backlog into the full-text index (`store/search_backlog.rs`),
    /// a bounded batch per write so that other writes pass in between; answers how many entries.
    /// Costs one read when nothing waits, and nothing on PostgreSQL.
    pub fn flush_search_backlog(&self) -> Result<usize> {
        if self.is_postgres() {
            return Ok(0);
        }
        let mut indexed = 0;
        loop {
            match self.index_search_batch()? {
                0 => return Ok(indexed),
                batch => indexed += batch,
            }
        }
    }

    /// Indexes the oldest batch waiting in the search backlog (SQLite); answers how many entries
    /// (0, after one read, when nothing waits).
    fn index_search_batch(&self) -> Result<usize> {
        if !self.read(|r| r.search_backlog_waits())? {
            return Ok(0);
        }
        self.write(|tx| tx.index_search_backlog(search_backlog::BATCH))
    }

    /// Full-text search ([`Reader::search`]) over everything written so far: what waits in the
    /// search backlog is indexed first.
    pub fn search(
        &self,
        text: &str,
        kinds: &[&str],
        limit: i64,
        viewer: &crate::audience::Viewer,
    ) -> Result<Vec<crate::model::SearchHit>> {
        self.flush_search_backlog()?;
        self.read(|r| r.search(text, kinds, limit, viewer))
    }

    /// Transactions committed so far and the operations they held (operations per commit tells
    /// how much group commit batches).
    pub fn commit_stats(&self) -> CommitStats {
        match &self.inner.engine {
            Engine::Sqlite { writer, .. } => writer.stats(),
            Engine::Pg(engine) => engine.stats(),
        }
    }

    /// Like [`Store::write`] for a request that carries an `Idempotency-Key`: the first request with
    /// a key runs `change` and stores its answer with the key in the same transaction; a retry with
    /// the same key gets the stored answer back without running anything. `fingerprint` identifies
    /// the request (method, path, body), so a key reused for another request is refused.
    pub fn write_idempotent(
        &self,
        actor: &Actor,
        key: &str,
        fingerprint: &str,
        change: impl FnOnce(&mut Tx<'_>) -> Result<Value>,
    ) -> Result<(Value, bool)> {
        self.write(idempotent_change(
            actor.clone(),
            key.to_string(),
            fingerprint,
            change,
        ))
    }

    /// Runs `query` against a consistent snapshot of the database.
    pub fn read<T>(&self, query: impl FnOnce(&Reader<'_>) -> Result<T>) -> Result<T> {
        let readers = match &self.inner.engine {
            Engine::Sqlite { readers, .. } => readers,
            Engine::Pg(engine) => return engine.read(query),
        };
        if readers.is_empty() {
            // An in-memory database has only the writer's connection: the read takes its turn
            // there (in a savepoint of its own, writing nothing).
            return self.write(|tx| query(&tx.read()));
        }
        // Take the first free reader; if all are busy, wait on one chosen by thread.
        for reader in readers {
            if let Ok(conn) = reader.try_lock() {
                return read_snapshot(&conn, query);
            }
        }
        let index = thread_index() % readers.len();
        let conn = lock(&readers[index]);
        read_snapshot(&conn, query)
    }

    /// Runs a short `query` at once, on the calling thread, when a SQLite read connection is
    /// free; gives `query` back, unrun, when none is free, the database is in memory, or the
    /// store is on PostgreSQL (whose driver must not run on an async thread). For point reads
    /// that take microseconds (a token lookup per request): an async caller saves the hand-off
    /// to a blocking thread and back, and never waits here for a busy connection.
    pub fn try_read_now<T, F>(&self, query: F) -> std::result::Result<Result<T>, F>
    where
        F: FnOnce(&Reader<'_>) -> Result<T>,
    {
        let Engine::Sqlite { readers, .. } = &self.inner.engine else {
            return Err(query);
        };
        for reader in readers {
            if let Ok(conn) = reader.try_lock() {
                return Ok(read_snapshot(&conn, query));
            }
        }
        Err(query)
    }

    fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let sink = lock(&self.inner.sink).clone();
        if let Some(sink) = sink {
            sink(events);
        }
    }
}

/// A write handed to the writer thread by [`Store::submit_write`].
struct SubmittedWrite<T, F, D> {
    change: Option<F>,
    result: Option<Result<T>>,
    done: D,
}

impl<T, F, D> group_commit::QueuedWrite for SubmittedWrite<T, F, D>
where
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
    D: FnOnce(Result<T>) + Send + 'static,
{
    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        let Some(change) = self.change.take() else {
            return false;
        };
        let result = change(tx);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, failure: Option<CoreError>) {
        let result = match (failure, self.result) {
            // A refusal may rest on a batch-mate's uncommitted change: when the batch did not
            // commit, the storage error is the answer (as for a blocking caller).
            (Some(error), _) => Err(error),
            (None, Some(result)) => result,
            (None, None) => Err(CoreError::Database(
                "the write failed before its change finished (it panicked)".to_string(),
            )),
        };
        (self.done)(result);
    }
}

/// The operation [`Store::write_idempotent`] runs, for callers that choose how to run it (for
/// instance [`Store::try_write_now`] first): the stored answer when the key was used before by the
/// same request, else `change`'s answer, stored with the key in the same transaction. The answer
/// says whether it was replayed.
pub fn idempotent_change<F>(
    actor: Actor,
    key: String,
    fingerprint: &str,
    change: F,
) -> impl FnOnce(&mut Tx<'_>) -> Result<(Value, bool)> + use<F>
where
    F: FnOnce(&mut Tx<'_>) -> Result<Value>,
{
    let fingerprint = sha256_hex(fingerprint.as_bytes());
    move |tx: &mut Tx<'_>| {
        let stored: Option<(String, String)> = tx
            .conn()
            .query_row(
                "SELECT fingerprint, response FROM idempotency_keys WHERE actor = ?1 AND key = ?2",
                params![actor.name(), key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((stored_fingerprint, response)) = stored {
            if stored_fingerprint != fingerprint {
                return Err(CoreError::IdempotencyMismatch(key));
            }
            return Ok((serde_json::from_str(&response)?, true));
        }
        let response = change(tx)?;
        tx.conn().execute(
            "INSERT INTO idempotency_keys (actor, key, fingerprint, response, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                actor.name(),
                key,
                fingerprint,
                serde_json::to_string(&response)?,
                tx.now_ms()
            ],
        )?;
        Ok((response, false))
    }
}

fn read_snapshot<T>(conn: &Connection, query: impl FnOnce(&Reader<'_>) -> Result<T>) -> Result<T> {
    /// Ends the read transaction however the query ends, a panic included, so that a pooled
    /// connection is never left inside one.
    struct EndRead<'c>(&'c Connection);
    impl Drop for EndRead<'_> {
        fn drop(&mut self) {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
    // One deferred transaction so that a multi-query read sees a single snapshot.
    conn.execute_batch("BEGIN")?;
    let _end = EndRead(conn);
    query(&Reader {
        db: Db::Sqlite(conn),
    })
}

fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut hasher);
    hasher.finish() as usize
}

/// Statements each SQLite connection keeps prepared: every statement of the store goes through
/// the cache (`store/db.rs`), and there are about a hundred of them.
const STATEMENT_CACHE: usize = 256;

fn configure(conn: &Connection, durability: Durability) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    plan_without_bound_values(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    keep_temporary_data_in_memory(conn)?;
    Ok(())
}

/// Keeps SQLite's temporary data in memory: a savepoint's sub-journal (the originals of the pages
/// an operation of a write batch changes) would otherwise spill into a new temporary file once
/// it passes 64 KiB, which a message's twenty-odd pages do; sorts and temporary tables of reads
/// likewise. Bounded: a write changes a bounded number of pages, and reads are paginated.
fn keep_temporary_data_in_memory(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Turns on SQLite's query planner stability guarantee, so that no plan depends on the values
/// bound to a statement.
///
/// Without it SQLite marks a statement for re-preparation whenever a planning heuristic looked
/// at a bound value (`col = ?` estimates, `LIMIT ?`, `LIKE ?`, STAT4), and
/// `sqlite3_clear_bindings` then expires every such statement: rusqlite clears the bindings of
/// each statement it returns to the cache, so nearly every cached statement was compiled again
/// (`sqlite3Reprepare`, 5% of the server's CPU on the write path) on every use. What the
/// guarantee gives up is not used here: no query binds a `LIKE` pattern to a column indexed
/// with `NOCASE` (the only case where SQLite's default `LIKE` uses an index), and the store
/// does not `ANALYZE` (no STAT4 samples).
fn plan_without_bound_values(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// A poisoned mutex only means another thread panicked mid-call; SQLite rolled its work back.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    // Every authenticated request hashes its token (twice when it is not the admin's): one
    // allocation here rather than one per byte.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// One write transaction. Domain operations are methods on it (see the `store/*.rs` modules).
pub struct Tx<'c> {
    /// The write connection: SQLite's, inside this operation's savepoint of the open batch, or a
    /// PostgreSQL one inside this operation's transaction.
    db: Db<'c>,
    now: DateTime<Utc>,
    config: &'c StoreConfig,
    events: Vec<Event>,
}

impl<'c> Tx<'c> {
    pub(crate) fn conn(&self) -> Db<'c> {
        self.db
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.now.timestamp_millis()
    }

    pub fn config(&self) -> &StoreConfig {
        self.config
    }

    /// Reads inside this transaction (they see its uncommitted changes).
    pub fn read(&self) -> Reader<'_> {
        Reader { db: self.db }
    }

    /// Appends an event to the log in this transaction.
    pub fn emit(
        &mut self,
        actor: &str,
        task: Option<TaskId>,
        agent: Option<&str>,
        payload: EventPayload,
    ) -> Result<()> {
        let ts = self.now_ms();
        let data_text = serde_json::to_string(&payload.data())?;
        // On PostgreSQL a trigger numbers the event under the store's write lock, so that commit
        // order is sequence order with nothing skipped (see `store/pg.rs`).
        let seq = self.db.insert(
            "INSERT INTO events (ts, actor, kind, task_id, agent, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![ts, actor, payload.kind(), task.map(|t| t.0), agent, data_text],
            "seq",
        )?;
        self.events.push(Event {
            seq,
            ts: self.now,
            actor: actor.to_string(),
            task,
            agent: agent.map(str::to_string),
            payload,
        });
        Ok(())
    }
}

/// Read access to a snapshot (or to a write transaction's view).
pub struct Reader<'c> {
    db: Db<'c>,
}

impl<'c> Reader<'c> {
    pub(crate) fn conn(&self) -> Db<'c> {
        self.db
    }
}

fn validate_schema_name(schema: &str) -> Result<()> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(())
    } else {
        Err(CoreError::invalid(format!(
            "schema name {schema:?}: use lower-case letters, digits and '_'"
        )))
    }
}

/// Whether a store URL names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The engine under a store.
// One per store, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Sqlite {
        writer: WriteLane,
        readers: Vec<Mutex<Connection>>,
    },
    Pg(pg::PgEngine),
}

pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(crate) fn opt_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(ms_to_time)
}

pub(crate) fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(crate) fn to_json_list(items: &[String]) -> Result<String> {
    Ok(serde_json::to_string(items)?)
}

/// Names (agents, roles, tags) are short and free of spaces and control characters.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid(format!(
            "{what} {name:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Free text has a bounded size so that no single request can bloat the store or a context.
/// Creates `path` if missing and makes it readable and writable by its owner only (0600).
fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |error: std::io::Error| {
            CoreError::invalid(format!("cannot protect {}: {error}", path.display()))
        };
        if !path.exists() {
            if path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.ends_with("-wal") || name.ends_with("-shm")
            }) {
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

pub(crate) fn validate_text(what: &str, text: &str, max_len: usize, required: bool) -> Result<()> {
    if required && text.trim().is_empty() {
        return Err(CoreError::invalid(format!("{what} must not be empty")));
    }
    if text.contains('\0') {
        return Err(CoreError::invalid(format!("{what} contains a NUL byte")));
    }
    if text.len() > max_len {
        return Err(CoreError::invalid(format!(
            "{what} is {} bytes long; the limit is {max_len}",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod planner_tests {
    use rusqlite::{Connection, StatementStatus};

    /// Runs a cached lookup with three different bound values and says how many times SQLite
    /// compiled it again.
    fn reprepares(conn: &Connection) -> i32 {
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, owner TEXT, n INTEGER);
             CREATE INDEX t_by_owner ON t (owner);
             INSERT INTO t (owner, n) VALUES ('a', 0), ('b', 1), ('c', 2);",
        )
        .expect("schema");
        let sql = "SELECT id FROM t WHERE owner = ?1 AND n = ?2 ORDER BY id LIMIT ?3";
        for (owner, n, limit) in [("a", 0, 1), ("b", 1, 2), ("c", 2, 3)] {
            let mut statement = conn.prepare_cached(sql).expect("prepare");
            let _: Vec<i64> = statement
                .query_map(rusqlite::params![owner, n, limit], |row| row.get(0))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
        }
        conn.prepare_cached(sql)
            .expect("prepare")
            .get_status(StatementStatus::RePrepare)
    }

    #[test]
    fn cached_statements_are_not_compiled_again_for_new_values() {
        // Without the guarantee, rusqlite's clearing of bindings on return to the cache expires
        // the statement each time: the control shows the test can see what it checks.
        let plain = Connection::open_in_memory().expect("open");
        assert!(
            reprepares(&plain) > 0,
            "control: SQLite re-prepares by default"
        );
        let configured = Connection::open_in_memory().expect("open");
        super::plan_without_bound_values(&configured).expect("configure");
        assert_eq!(reprepares(&configured), 0);
    }
}
