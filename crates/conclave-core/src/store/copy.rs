//! Moving a project's whole history from one store to another (`conclave store migrate`).
//!
//! Every table is copied row for row, ids and sequence numbers included, from one snapshot of
//! the source into one transaction of the destination: the destination holds all of it or, on
//! any error, none of it. The destination must be empty (freshly migrated). Afterwards both are
//! compared: the row count of every table, and a digest of the whole event log (every field of
//! every event, in sequence order); any difference is an error. Works in either direction
//! (SQLite to PostgreSQL, or back).

use std::time::Instant;

use sha2::{Digest, Sha256};

use super::db::{Db, Value, params};
use super::{Reader, Store};
use crate::error::{CoreError, Result};

/// The tables and their columns, in an order that satisfies the foreign keys (agents before
/// their tasks and leases, tasks before their dependencies, steps and notes). The first column
/// orders the copy. `task_status_counts` is not among them: the destination's triggers keep it
/// as the tasks are inserted.
const TABLES: &[(&str, &[&str])] = &[
    (
        "agents",
        &[
            "name",
            "role",
            "model",
            "caps",
            "status",
            "session_id",
            "pid",
            "host",
            "last_seen",
            "context_tokens",
            "context_window",
            "cost_usd",
            "restarts",
            "created_at",
            "isolation",
            "coordination",
        ],
    ),
    ("agent_tokens", &["token_hash", "agent", "created_at"]),
    (
        "tasks",
        &[
            "id",
            "title",
            "body",
            "status",
            "priority",
            "role",
            "caps",
            "assignee",
            "claim_expires_at",
            "attempts",
            "result",
            "files",
            "parent",
            "created_by",
            "created_at",
            "updated_at",
            "blocked_reason",
            "pipeline",
            "approve",
            "awaiting_approval",
            "cost_usd",
        ],
    ),
    ("task_deps", &["task_id", "depends_on"]),
    (
        "leases",
        &[
            "id",
            "pattern",
            "mode",
            "holder",
            "task_id",
            "reason",
            "fencing_token",
            "acquired_at",
            "expires_at",
            "ttl_ms",
            "is_glob",
        ],
    ),
    (
        "messages",
        &[
            "id",
            "sender",
            "recipient",
            "thread",
            "kind",
            "urgent",
            "body",
            "created_at",
        ],
    ),
    ("deliveries", &["message_id", "agent", "acked_at"]),
    // `superseded_by` names a later note: it is filled in by a second pass.
    (
        "notes",
        &[
            "id",
            "author",
            "kind",
            "title",
            "body",
            "tags",
            "files",
            "task_id",
            "supersedes",
            "created_at",
        ],
    ),
    (
        "task_steps",
        &[
            "id", "task_id", "at", "actor", "stage", "role", "verdict", "to_stage", "comments",
            "summary",
        ],
    ),
    (
        "merge_queue",
        &[
            "task_id",
            "position",
            "branch",
            "agent",
            "state",
            "attempts",
            "outcome",
            "enqueued_at",
            "updated_at",
        ],
    ),
    (
        "events",
        &["seq", "ts", "actor", "kind", "task_id", "agent", "data"],
    ),
    (
        "idempotency_keys",
        &["actor", "key", "fingerprint", "response", "created_at"],
    ),
    ("search_index", &["rowid", "kind", "ref", "title", "body"]),
    ("counters", &["name", "value"]),
    ("merge_queue_control", &["id", "paused", "reason"]),
];

/// Tables whose ids come from a PostgreSQL identity, to be moved past the copied ids.
const IDENTITIES: &[&str] = &["tasks", "leases", "messages", "notes", "task_steps"];

/// Rows read and written per round trip.
const BATCH_ROWS: usize = 500;

/// What a copy moved, checked on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// `(table, rows)` for every table, equal on both sides.
    pub tables: Vec<(String, i64)>,
    /// The event log's digest, equal on both sides.
    pub events_digest: String,
    pub millis: u128,
}

impl CopyReport {
    pub fn rows(&self, table: &str) -> i64 {
        self.tables
            .iter()
            .find(|(name, _)| name == table)
            .map_or(0, |(_, rows)| *rows)
    }
}

impl Store {
    /// Copies everything `self` holds into `destination` (empty), then checks that both hold
    /// the same (see the module docs).
    pub fn copy_into(&self, destination: &Store) -> Result<CopyReport> {
        let started = Instant::now();
        let destination_events = destination.read(|r| r.last_seq())?;
        let destination_tasks = destination.read(|r| count(r.conn(), "tasks"))?;
        if destination_events > 0 || destination_tasks > 0 {
            return Err(CoreError::conflict(
                "the destination store is not empty: migrate into a new database",
            ));
        }
        // What waits in the source's search backlog goes into its index first, where the copy
        // takes it (the backlog itself is not copied: PostgreSQL has none).
        self.flush_search_backlog()?;
        destination.write(|tx| {
            let to = tx.conn();
            self.read(|source| copy_tables(source.conn(), to))
        })?;
        let source = self.read(summarize)?;
        let copied = destination.read(summarize)?;
        if source != copied {
            return Err(CoreError::Database(format!(
                "the copy differs from its source: source {source:?}, copy {copied:?}"
            )));
        }
        // The per-status counts are not copied: the destination's triggers counted the tasks
        // as they were inserted. They must agree with what the source's tasks hold.
        let source_counts = self.read(|r| r.task_status_counts_by_scan())?;
        let copied_counts = destination.read(|r| r.task_status_counts())?;
        if source_counts != copied_counts {
            return Err(CoreError::Database(format!(
                "the copy's task counts differ from its source's tasks: source {source_counts:?}, copy {copied_counts:?}"
            )));
        }
        Ok(CopyReport {
            tables: source.0,
            events_digest: source.1,
            millis: started.elapsed().as_millis(),
        })
    }
}

fn count(db: Db<'_>, table: &str) -> Result<i64> {
    db.query_row(&format!("SELECT count(*) FROM {table}"), params![], |row| {
        row.get(0)
    })
}

fn copy_tables(from: Db<'_>, to: Db<'_>) -> Result<()> {
    // The rows a fresh schema starts with are replaced by the source's.
    to.execute("DELETE FROM counters", params![])?;
    to.execute("DELETE FROM merge_queue_control", params![])?;
    for (table, columns) in TABLES {
        copy_table(from, to, table, columns)?;
    }
    let superseded: Vec<(i64, i64)> = from.query_map(
        "SELECT id, superseded_by FROM notes WHERE superseded_by IS NOT NULL",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    for (id, by) in superseded {
        to.execute(
            "UPDATE notes SET superseded_by = ?2 WHERE id = ?1",
            params![id, by],
        )?;
    }
    if to.is_postgres() {
        for table in IDENTITIES {
            to.query_row(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                        COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
                ),
                params![],
                |_| Ok(()),
            )?;
        }
    }
    Ok(())
}

/// Copies one table in batches, walking it in the order of its first column.
fn copy_table(from: Db<'_>, to: Db<'_>, table: &str, columns: &[&str]) -> Result<()> {
    let list = columns.join(", ");
    let key = columns[0];
    let rows: Vec<Vec<Value>> = from.query_map(
        &format!("SELECT {list} FROM {table} ORDER BY {key}"),
        params![],
        |row| (0..columns.len()).map(|i| row.get::<Value>(i)).collect(),
    )?;
    for batch in rows.chunks(BATCH_ROWS) {
        let mut placeholders = Vec::with_capacity(batch.len());
        let mut values = Vec::with_capacity(batch.len() * columns.len());
        for row in batch {
            let start = values.len();
            placeholders.push(format!(
                "({})",
                (1..=columns.len())
                    .map(|i| format!("?{}", start + i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            values.extend(row.iter().cloned());
        }
        to.execute(
            &format!(
                "INSERT INTO {table} ({list}) VALUES {}",
                placeholders.join(", ")
            ),
            &values,
        )?;
    }
    Ok(())
}

/// Row counts of every table, and the event log's digest.
type Summary = (Vec<(String, i64)>, String);

fn summarize(reader: &Reader<'_>) -> Result<Summary> {
    let db = reader.conn();
    let mut tables = Vec::with_capacity(TABLES.len());
    for (table, _) in TABLES {
        tables.push((table.to_string(), count(db, table)?));
    }
    let mut digest = Sha256::new();
    let mut after = 0_i64;
    loop {
        let page: Vec<(i64, String)> = db.query_map(
            "SELECT seq, ts, actor, kind, task_id, agent, data FROM events
             WHERE seq > ?1 ORDER BY seq LIMIT 5000",
            params![after],
            |row| {
                let seq: i64 = row.get(0)?;
                let line = format!(
                    "{seq}\t{}\t{}\t{}\t{:?}\t{:?}\t{}\n",
                    row.get::<i64>(1)?,
                    row.get::<String>(2)?,
                    row.get::<String>(3)?,
                    row.get::<Option<i64>>(4)?,
                    row.get::<Option<String>>(5)?,
                    row.get::<String>(6)?
                );
                Ok((seq, line))
            },
        )?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = *last;
        for (_, line) in &page {
            digest.update(line.as_bytes());
        }
    }
    let events_digest = digest
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok((tables, events_digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    /// A column added by a migration but missing here would be lost by `store migrate` without
    /// any count differing: every column of every table the SQLite schema holds must be copied.
    #[test]
    fn every_column_of_the_schema_is_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("c.db"), StoreConfig::default()).expect("store");
        let schema: Vec<(String, String)> = store
            .read(|r| {
                r.conn().query_map(
                    "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
                       AND m.name NOT LIKE 'search_index_%' AND m.name != 'search_index'
                       AND m.name != 'search_backlog'
                       AND m.name != 'schema_version'",
                    params![],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
            })
            .expect("schema");
        assert!(schema.len() > 20, "read the schema: {schema:?}");
        // Copied apart, after every note exists (`copy_tables`); and live servers' presence,
        // which belongs to the source's servers, not to the history.
        // The per-status task counts are kept by the destination's own triggers as the tasks
        // are copied in, and checked against the source's tasks afterwards.
        let copied_apart = |table: &str, column: &str| {
            (table, column) == ("notes", "superseded_by")
                || table == "server_presence"
                || table == "task_status_counts"
        };
        let missing: Vec<String> = schema
            .iter()
            .filter(|(table, column)| {
                !copied_apart(table, column)
                    && !TABLES
                        .iter()
                        .any(|(t, columns)| t == table && columns.contains(&column.as_str()))
            })
            .map(|(table, column)| format!("{table}.{column}"))
            .collect();
        assert!(missing.is_empty(), "not copied: {missing:?}");
    }
}
