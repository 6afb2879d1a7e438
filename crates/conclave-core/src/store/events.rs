//! The append-only event log: queries, and the sweeper that expires claims and leases.

use super::db::{Row, ToValue, Value, params};
use serde::{Deserialize, Serialize};

use super::{Reader, Store, Tx, ms_to_time};
use crate::error::Result;
use crate::model::{Event, EventFilter, EventPayload, TaskId};

const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 10_000;

fn event_from_row(row: &Row<'_>) -> Result<Event> {
    let data: String = row.get(6)?;
    // An old row whose data does not fit its kind reads as an unrecognized payload, verbatim.
    let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
    Ok(Event {
        seq: row.get(0)?,
        ts: ms_to_time(row.get(1)?),
        actor: row.get(2)?,
        task: row.get::<Option<i64>>(4)?.map(TaskId),
        agent: row.get(5)?,
        payload: EventPayload::read(row.get(3)?, data),
    })
}

impl Reader<'_> {
    /// How many events of exactly this kind the log holds (`agent.alert` for `conclave status`).
    pub fn count_events(&self, kind: &str) -> Result<i64> {
        self.conn().query_row(
            "SELECT count(*) FROM events WHERE kind = ?1",
            params![kind],
            |row| row.get(0),
        )
    }

    /// The `file.touched` events `agent` recorded while it worked on `task`, oldest first: what
    /// `done` checks the fencing tokens of. Read through the task's index, so its cost follows
    /// the task's own events, not the log.
    pub fn touches_of_task(&self, task: TaskId, agent: &str) -> Result<Vec<Event>> {
        self.conn().query_map(
            "SELECT seq, ts, actor, kind, task_id, agent, data FROM events INDEXED BY events_by_task
             WHERE task_id = ?1 AND kind = 'file.touched' AND agent = ?2 ORDER BY seq",
            params![task.0, agent],
            event_from_row,
        )
    }

    /// Events matching `filter`, oldest first (or newest first with `desc`).
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let (sql, values) = event_query(filter);
        let rows = self.conn().query_map(&sql, &values, event_from_row)?;
        Ok(rows)
    }

    /// The highest sequence number written so far (0 for an empty log).
    pub fn last_seq(&self) -> Result<i64> {
        self.conn().query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM events",
            params![],
            |row| row.get(0),
        )
    }
}

/// The query of [`Reader::events`] and its parameters.
pub(crate) fn event_query(filter: &EventFilter) -> (String, Vec<Value>) {
    // Only the conditions the filter sets are written, so that the database can walk the
    // index that fits (`events_by_kind` for a kind, `events_by_task` for a task, ...). The
    // catch-all form, `(?4 IS NULL OR kind = ?4)`, reads well but uses no index: a query for
    // a kind that is rare or absent walked the whole log (60 ms of `/api/status`'s CPU
    // at 400,000 events, through the waiting-confirmations count).
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut condition = |sql: &str, value: Value| {
        values.push(value);
        conditions.push(sql.replace('?', &format!("?{}", values.len())));
    };
    if let Some(after) = filter.after {
        condition("seq > ?", after.to_value());
    }
    if let Some(agent) = &filter.agent {
        // Both sides name the same parameter.
        condition("(agent = ? OR actor = ?)", agent.to_value());
    }
    if let Some(task) = filter.task {
        condition("task_id = ?", task.0.to_value());
    }
    match filter.kind.as_deref() {
        Some(kind) if kind.ends_with('.') => {
            condition("kind LIKE ?", format!("{kind}%").to_value());
        }
        Some(kind) => condition("kind = ?", kind.to_value()),
        None => {}
    }
    if let Some(since) = filter.since {
        condition("ts >= ?", since.timestamp_millis().to_value());
    }
    if let Some(until) = filter.until {
        condition("ts <= ?", until.timestamp_millis().to_value());
    }
    if let Some(before) = filter.before {
        condition("seq < ?", before.to_value());
    }
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    values.push(limit.to_value());
    let order = if filter.desc { "DESC" } else { "ASC" };
    let filtered = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT seq, ts, actor, kind, task_id, agent, data FROM events {filtered}
         ORDER BY seq {order} LIMIT ?{}",
        values.len()
    );
    (sql, values)
}

/// What one sweep changed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    pub reclaimed_tasks: Vec<TaskId>,
    pub expired_leases: Vec<String>,
    /// Idempotency keys older than [`IDEMPOTENCY_WINDOW_SECS`] that were forgotten.
    #[serde(default)]
    pub expired_idempotency_keys: usize,
}

/// How long a request's `Idempotency-Key` is remembered: a retry within a day is answered from
/// the stored response; after that the key is forgotten (and may be used again).
pub const IDEMPOTENCY_WINDOW_SECS: i64 = 24 * 3600;

impl Tx<'_> {
    pub fn sweep(&mut self) -> Result<SweepReport> {
        let reclaimed_tasks = self.expire_claims()?;
        let expired_leases = self
            .purge_expired_leases()?
            .into_iter()
            .map(|lease| lease.path)
            .collect();
        let expired_idempotency_keys = self.conn().execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            params![self.now_ms() - IDEMPOTENCY_WINDOW_SECS * 1000],
        )?;
        Ok(SweepReport {
            reclaimed_tasks,
            expired_leases,
            expired_idempotency_keys,
        })
    }
}

impl Store {
    /// Whether this server sweeps: always on SQLite (one server); on PostgreSQL, the one server
    /// of those sharing the database that holds the sweeper's lock (see `store/pg.rs`).
    pub fn is_sweeper(&self) -> Result<bool> {
        match &self.inner.engine {
            super::Engine::Sqlite { .. } => Ok(true),
            super::Engine::Pg(engine) => engine.holds_sweeper_lock(),
        }
    }

    /// Expires claims and leases whose time is up. The server runs this periodically. The
    /// liveness noted in memory is persisted first, in the same transaction, so that no claim
    /// of an agent this server has heard from expires. On PostgreSQL only the sweeping server
    /// (see [`Store::is_sweeper`]) expires anything; the others only persist liveness.
    pub fn sweep(&self) -> Result<SweepReport> {
        if !self.is_sweeper()? {
            self.flush_liveness()?;
            return Ok(SweepReport::default());
        }
        self.with_heard(|tx, heard| {
            tx.record_liveness(heard)?;
            tx.sweep()
        })
    }
}
