//! The durable store: one SQLite database (WAL) holding all coordination state and the event log.
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
mod events;
mod group_commit;
mod leases;
mod liveness;
mod messages;
mod notes;
mod presence;
mod queue;
mod schema;
mod steps;
mod tasks;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use group_commit::WriteLane;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::model::{Actor, Event, EventPayload, Pipeline, TaskId};

pub use agents::{ReleaseReport, RemovalReport, hash_token};
pub use events::{IDEMPOTENCY_WINDOW_SECS, SweepReport};
pub use group_commit::CommitStats;
pub use leases::MAX_LEASE_TTL_SECS;
pub use leases::{MAX_REPORTED_CONFLICTS, MAX_WHOLE_TREE_TTL_SECS};
pub use messages::parse_message_id;
pub use notes::parse_note_id;
pub use presence::ServerPresence;
pub use schema::SCHEMA_VERSION;
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
    writer: WriteLane,
    readers: Vec<Mutex<Connection>>,
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
            readers.push(Mutex::new(reader));
        }
        Ok(Store::from_parts(writer, readers, config))
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
        Store {
            inner: Arc::new(StoreInner {
                writer: WriteLane::new(writer),
                readers,
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
    pub fn set_event_sink(&self, sink: EventSink) {
        *lock(&self.inner.sink) = Some(sink);
    }

    /// Runs `change` atomically: if it returns `Ok`, its changes and events are committed before
    /// this returns; if it returns `Err` (or panics), nothing it did is kept. Concurrent calls
    /// share one transaction, each `change` in its own savepoint; a call that finds no other
    /// waiting runs and commits at once.
    pub fn write<T>(&self, change: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        // Events reach the sink while the writer is still held, so that subscribers see them in
        // sequence order (a stream that has sent seq 11 never gets seq 10 afterwards). The sink
        // must not block: the server's is a broadcast send.
        self.inner
            .writer
            .write(&self.inner.config, &|events| self.publish(events), change)
    }

    /// Transactions committed so far and the operations they held (operations per commit tells
    /// how much group commit batches).
    pub fn commit_stats(&self) -> CommitStats {
        self.inner.writer.stats()
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
        let fingerprint = sha256_hex(fingerprint.as_bytes());
        self.write(|tx| {
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
                    return Err(CoreError::IdempotencyMismatch(key.to_string()));
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
        })
    }

    /// Runs `query` against a consistent snapshot of the database.
    pub fn read<T>(&self, query: impl FnOnce(&Reader<'_>) -> Result<T>) -> Result<T> {
        if self.inner.readers.is_empty() {
            // An in-memory database has only the writer's connection: the read takes its turn
            // there (in a savepoint of its own, writing nothing).
            return self.write(|tx| query(&tx.read()));
        }
        // Take the first free reader; if all are busy, wait on one chosen by thread.
        for reader in &self.inner.readers {
            if let Ok(conn) = reader.try_lock() {
                return read_snapshot(&conn, query);
            }
        }
        let index = thread_index() % self.inner.readers.len();
        let conn = lock(&self.inner.readers[index]);
        read_snapshot(&conn, query)
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
    query(&Reader { conn })
}

fn thread_index() -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut hasher);
    hasher.finish() as usize
}

fn configure(conn: &Connection, durability: Durability) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// A poisoned mutex only means another thread panicked mid-call; SQLite rolled its work back.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One write transaction. Domain operations are methods on it (see the `store/*.rs` modules).
pub struct Tx<'c> {
    /// The writer connection, inside this operation's savepoint of the open transaction.
    conn: &'c Connection,
    now: DateTime<Utc>,
    config: &'c StoreConfig,
    events: Vec<Event>,
}

impl Tx<'_> {
    pub(crate) fn conn(&self) -> &Connection {
        self.conn
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
        Reader { conn: self.conn }
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
        self.conn.execute(
            "INSERT INTO events (ts, actor, kind, task_id, agent, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![ts, actor, payload.kind(), task.map(|t| t.0), agent, data_text],
        )?;
        let seq = self.conn.last_insert_rowid();
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
    conn: &'c Connection,
}

impl Reader<'_> {
    pub(crate) fn conn(&self) -> &Connection {
        self.conn
    }
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
