//! Versioned schema migrations, applied in order at open time.
//!
//! The database's `user_version` is the number of migrations applied. Never edit a migration that
//! has shipped: add a new one at the end of [`MIGRATIONS`].

use rusqlite::Connection;

use crate::error::{CoreError, Result};

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('fencing_token', 0);

    CREATE TABLE agents (
        name           TEXT PRIMARY KEY,
        role           TEXT,
        model          TEXT,
        caps           TEXT NOT NULL DEFAULT '[]',
        status         TEXT NOT NULL,
        session_id     TEXT,
        pid            INTEGER,
        host           TEXT,
        last_seen      INTEGER,
        context_tokens INTEGER,
        context_window INTEGER,
        cost_usd       REAL NOT NULL DEFAULT 0,
        restarts       INTEGER NOT NULL DEFAULT 0,
        created_at     INTEGER NOT NULL
    );

    CREATE TABLE agent_tokens (
        token_hash TEXT PRIMARY KEY,
        agent      TEXT NOT NULL REFERENCES agents(name),
        created_at INTEGER NOT NULL
    );

    CREATE TABLE tasks (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        title            TEXT NOT NULL,
        body             TEXT NOT NULL DEFAULT '',
        status           TEXT NOT NULL,
        priority         INTEGER NOT NULL DEFAULT 0,
        role             TEXT,
        caps             TEXT NOT NULL DEFAULT '[]',
        assignee         TEXT REFERENCES agents(name),
        claim_expires_at INTEGER,
        attempts         INTEGER NOT NULL DEFAULT 0,
        result           TEXT,
        files            TEXT NOT NULL DEFAULT '[]',
        parent           INTEGER REFERENCES tasks(id),
        created_by       TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    );
    CREATE INDEX tasks_by_status ON tasks (status, priority DESC, id);
    CREATE INDEX tasks_by_assignee ON tasks (assignee);

    CREATE TABLE task_deps (
        task_id    INTEGER NOT NULL REFERENCES tasks(id),
        depends_on INTEGER NOT NULL REFERENCES tasks(id),
        PRIMARY KEY (task_id, depends_on)
    );
    CREATE INDEX task_deps_reverse ON task_deps (depends_on);

    CREATE TABLE leases (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        pattern       TEXT NOT NULL,
        mode          TEXT NOT NULL,
        holder        TEXT NOT NULL REFERENCES agents(name),
        task_id       INTEGER REFERENCES tasks(id),
        reason        TEXT,
        fencing_token INTEGER NOT NULL,
        acquired_at   INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        UNIQUE (holder, pattern)
    );

    CREATE TABLE messages (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        sender     TEXT NOT NULL,
        recipient  TEXT NOT NULL,
        thread     TEXT NOT NULL,
        kind       TEXT NOT NULL,
        urgent     INTEGER NOT NULL DEFAULT 0,
        body       TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX messages_by_thread ON messages (thread);

    CREATE TABLE deliveries (
        message_id INTEGER NOT NULL REFERENCES messages(id),
        agent      TEXT NOT NULL REFERENCES agents(name),
        acked_at   INTEGER,
        PRIMARY KEY (message_id, agent)
    );
    CREATE INDEX deliveries_unacked ON deliveries (agent, acked_at);

    CREATE TABLE notes (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        author        TEXT NOT NULL,
        kind          TEXT NOT NULL,
        title         TEXT NOT NULL,
        body          TEXT NOT NULL DEFAULT '',
        tags          TEXT NOT NULL DEFAULT '[]',
        files         TEXT NOT NULL DEFAULT '[]',
        task_id       INTEGER REFERENCES tasks(id),
        supersedes    INTEGER REFERENCES notes(id),
        superseded_by INTEGER REFERENCES notes(id),
        created_at    INTEGER NOT NULL
    );

    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        kind    TEXT NOT NULL,
        task_id INTEGER,
        agent   TEXT,
        data    TEXT NOT NULL
    );
    CREATE INDEX events_by_task ON events (task_id, seq);
    CREATE INDEX events_by_agent ON events (agent, seq);
    CREATE INDEX events_by_actor ON events (actor, seq);
    CREATE INDEX events_by_kind ON events (kind, seq);
    -- The log is append-only: the database itself refuses to change or drop an event.
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;

    CREATE TABLE idempotency_keys (
        actor       TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response    TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (actor, key)
    );

    -- Full-text search over notes, messages and task results. `ref` is N-1, M-1 or T-1.
    CREATE VIRTUAL TABLE search_index USING fts5(
        kind UNINDEXED, ref UNINDEXED, title, body, tokenize = 'porter unicode61'
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(CoreError::invalid(format!(
            "the database has schema version {applied}, newer than this conclave ({}); upgrade conclave",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_record_the_version() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("first");
        migrate(&mut conn).expect("second is a no-op");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version as usize, SCHEMA_VERSION);
    }

    #[test]
    fn the_event_log_refuses_updates_and_deletes() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("migrate");
        conn.execute(
            "INSERT INTO events (ts, actor, kind, data) VALUES (1, 'a', 'k', '{}')",
            [],
        )
        .expect("insert");
        assert!(conn.execute("UPDATE events SET kind = 'x'", []).is_err());
        assert!(conn.execute("DELETE FROM events", []).is_err());
    }
}
