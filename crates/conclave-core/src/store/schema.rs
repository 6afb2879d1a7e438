//! Versioned schema migrations, applied in order at open time, one list per engine.
//!
//! SQLite: the database's `user_version` is the number of migrations applied. PostgreSQL: the
//! `schema_version` table holds it, and [`PG_MIGRATIONS`] has its own numbering (its first
//! migration is SQLite's six at once, written in PostgreSQL's types). Never edit a migration that
//! has shipped: add a new one at the end of its list, and the same change to the other list.

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
    // 2: bounded work per write as history grows. Leases keep their own TTL (renewals extend by
    // it) and say whether they are globs, so grants find overlapping leases through indexes;
    // sweeps find expired leases and old idempotency keys by index; search rows of a task are
    // found by rowid (task T-n is row -n; notes and messages keep positive rowids) instead of a
    // scan over the index's unindexed columns. A task the server blocks (a dependency failed or
    // was cancelled) keeps the reason.
    r#"
    ALTER TABLE tasks ADD COLUMN blocked_reason TEXT;
    ALTER TABLE leases ADD COLUMN ttl_ms INTEGER;
    ALTER TABLE leases ADD COLUMN is_glob INTEGER NOT NULL DEFAULT 0;
    UPDATE leases SET is_glob = 1
        WHERE instr(pattern, '*') > 0 OR instr(pattern, '?') > 0 OR instr(pattern, '[') > 0;
    CREATE INDEX leases_by_pattern ON leases (pattern);
    CREATE INDEX leases_by_expiry ON leases (expires_at);
    CREATE INDEX leases_by_task ON leases (task_id);
    CREATE INDEX leases_globs ON leases (expires_at) WHERE is_glob = 1;
    CREATE INDEX idempotency_by_age ON idempotency_keys (created_at);

    -- The server using this database (see store/presence.rs): one row.
    CREATE TABLE server_presence (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        instance   TEXT NOT NULL,
        pid        INTEGER NOT NULL,
        host       TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        beat_at    INTEGER NOT NULL
    );

    CREATE TEMP TABLE task_search AS
        SELECT rowid AS old, ref, title, body FROM search_index WHERE kind = 'task';
    DELETE FROM search_index WHERE kind = 'task';
    INSERT INTO search_index (rowid, kind, ref, title, body)
        SELECT -CAST(substr(ref, 3) AS INTEGER), 'task', ref, title, body FROM task_search
        WHERE old IN (SELECT max(old) FROM task_search GROUP BY ref);
    DROP TABLE task_search;
    "#,
    // 3: pipelines and a person's checkpoints. A pipeline task carries its pipeline's definition
    // and where it stands (JSON, see `PipelineState`); a task may require approval, and one that
    // waits for a person says so. Each stage's verdict and each decision is a row of its history.
    r#"
    ALTER TABLE tasks ADD COLUMN pipeline TEXT;
    ALTER TABLE tasks ADD COLUMN approve INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN awaiting_approval INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tasks_awaiting_approval ON tasks (id) WHERE awaiting_approval = 1;

    CREATE TABLE task_steps (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id  INTEGER NOT NULL REFERENCES tasks(id),
        at       INTEGER NOT NULL,
        actor    TEXT NOT NULL,
        stage    INTEGER,
        role     TEXT,
        verdict  TEXT NOT NULL,
        to_stage INTEGER,
        comments TEXT,
        summary  TEXT
    );
    CREATE INDEX task_steps_by_task ON task_steps (task_id, id);
    "#,
    // 4: the merge queue (store/queue.rs, issue 11). An agent says whether it works in its own
    // git worktree; one entry per task branch waiting to land (re-finishing a task sent back
    // re-queues its entry); one row says whether a person paused the queue.
    r#"
    ALTER TABLE agents ADD COLUMN isolation TEXT NOT NULL DEFAULT 'shared';

    CREATE TABLE merge_queue (
        task_id     INTEGER PRIMARY KEY REFERENCES tasks(id),
        branch      TEXT NOT NULL,
        agent       TEXT NOT NULL,
        position    INTEGER NOT NULL,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        outcome     TEXT,
        enqueued_at INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX merge_queue_by_state ON merge_queue (state, position);

    CREATE TABLE merge_queue_control (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        paused INTEGER NOT NULL DEFAULT 0,
        reason TEXT
    );
    INSERT INTO merge_queue_control (id, paused) VALUES (1, 0);
    "#,
    // 5: listings that do not grow with history. The dashboard reads the open tasks (through
    // `tasks_by_status`) and the most recently finished ones through this partial index, whose
    // WHERE term the query repeats verbatim.
    r#"
    CREATE INDEX tasks_finished_by_update ON tasks (updated_at)
        WHERE status IN ('done', 'failed', 'cancelled');
    "#,
    // 6: cost per task: what its holders spent while holding it (the supervisor's reports of an
    // agent's cost are added to the task it holds).
    r#"
    ALTER TABLE tasks ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
    "#,
    // 7: what coordination costs each agent in context (issue 16): the supervisor's latest
    // account, as JSON (`model::Coordination`).
    r#"
    ALTER TABLE agents ADD COLUMN coordination TEXT;
    "#,
    // 8: how many tasks are in each status, kept by the database itself in the transaction of
    // every change to a task's status (issue 14), so that `/api/status` counts without reading
    // every task of the history. Triggers rather than code in each operation: no way of
    // changing a task (or copying one in, `store migrate`) can leave the counts behind.
    r#"
    CREATE TABLE task_status_counts (
        status TEXT PRIMARY KEY,
        tasks  INTEGER NOT NULL
    );
    INSERT INTO task_status_counts (status, tasks)
        SELECT status, count(*) FROM tasks GROUP BY status;
    CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_status_counts (status, tasks) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET tasks = tasks + 1;
    END;
    CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_status_counts SET tasks = tasks - 1 WHERE status = OLD.status;
    END;
    CREATE TRIGGER tasks_counted_on_status AFTER UPDATE OF status ON tasks
        WHEN OLD.status IS NOT NEW.status
    BEGIN
        UPDATE task_status_counts SET tasks = tasks - 1 WHERE status = OLD.status;
        INSERT INTO task_status_counts (status, tasks) VALUES (NEW.status, 1)
            ON CONFLICT (status) DO UPDATE SET tasks = tasks + 1;
    END;
    "#,
    // 9: what is written for search waits here, in the transaction that wrote it, and the
    // full-text index takes it in batches (`store/search_backlog.rs`, issue 14): an FTS5 insert
    // writes a segment of its own at each commit, five pages for one message.
    r#"
    CREATE TABLE search_backlog (
        id    INTEGER PRIMARY KEY,
        kind  TEXT NOT NULL,
        ref   TEXT NOT NULL,
        title TEXT NOT NULL,
        body  TEXT NOT NULL
    );
    "#,
];

/// The PostgreSQL schema, in the same tables and columns as SQLite's (integers are `BIGINT`,
/// booleans 0/1, times milliseconds since the epoch, lists JSON text), so that the shared SQL
/// runs on both. Text compares and sorts byte by byte as in SQLite (`COLLATE "C"`), whatever the
/// database's locale: the lease range queries (`pattern > 'src/' AND pattern < 'src0'`) rest on
/// it. Full-text search is a `tsvector` column kept by PostgreSQL itself.
const PG_MIGRATIONS: &[&str] = &[
    // 1: everything of SQLite's migrations 1 to 6.
    r#"
    CREATE TABLE counters (
        name  TEXT COLLATE "C" PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('fencing_token', 0);

    CREATE TABLE agents (
        name           TEXT COLLATE "C" PRIMARY KEY,
        role           TEXT COLLATE "C",
        model          TEXT COLLATE "C",
        caps           TEXT COLLATE "C" NOT NULL DEFAULT '[]',
        status         TEXT COLLATE "C" NOT NULL,
        session_id     TEXT COLLATE "C",
        pid            BIGINT,
        host           TEXT COLLATE "C",
        last_seen      BIGINT,
        context_tokens BIGINT,
        context_window BIGINT,
        cost_usd       DOUBLE PRECISION NOT NULL DEFAULT 0,
        restarts       BIGINT NOT NULL DEFAULT 0,
        created_at     BIGINT NOT NULL,
        isolation      TEXT COLLATE "C" NOT NULL DEFAULT 'shared'
    );

    CREATE TABLE agent_tokens (
        token_hash TEXT COLLATE "C" PRIMARY KEY,
        agent      TEXT COLLATE "C" NOT NULL REFERENCES agents(name),
        created_at BIGINT NOT NULL
    );

    CREATE TABLE tasks (
        id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        title             TEXT COLLATE "C" NOT NULL,
        body              TEXT COLLATE "C" NOT NULL DEFAULT '',
        status            TEXT COLLATE "C" NOT NULL,
        priority          BIGINT NOT NULL DEFAULT 0,
        role              TEXT COLLATE "C",
        caps              TEXT COLLATE "C" NOT NULL DEFAULT '[]',
        assignee          TEXT COLLATE "C" REFERENCES agents(name),
        claim_expires_at  BIGINT,
        attempts          BIGINT NOT NULL DEFAULT 0,
        result            TEXT COLLATE "C",
        files             TEXT COLLATE "C" NOT NULL DEFAULT '[]',
        parent            BIGINT REFERENCES tasks(id),
        created_by        TEXT COLLATE "C" NOT NULL,
        created_at        BIGINT NOT NULL,
        updated_at        BIGINT NOT NULL,
        blocked_reason    TEXT COLLATE "C",
        pipeline          TEXT COLLATE "C",
        approve           BIGINT NOT NULL DEFAULT 0,
        awaiting_approval BIGINT NOT NULL DEFAULT 0,
        cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX tasks_by_status ON tasks (status, priority DESC, id);
    CREATE INDEX tasks_by_assignee ON tasks (assignee);
    CREATE INDEX tasks_awaiting_approval ON tasks (id) WHERE awaiting_approval = 1;
    CREATE INDEX tasks_finished_by_update ON tasks (updated_at)
        WHERE status IN ('done', 'failed', 'cancelled');

    CREATE TABLE task_deps (
        task_id    BIGINT NOT NULL REFERENCES tasks(id),
        depends_on BIGINT NOT NULL REFERENCES tasks(id),
        PRIMARY KEY (task_id, depends_on)
    );
    CREATE INDEX task_deps_reverse ON task_deps (depends_on);

    CREATE TABLE leases (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        pattern       TEXT COLLATE "C" NOT NULL,
        mode          TEXT COLLATE "C" NOT NULL,
        holder        TEXT COLLATE "C" NOT NULL REFERENCES agents(name),
        task_id       BIGINT REFERENCES tasks(id),
        reason        TEXT COLLATE "C",
        fencing_token BIGINT NOT NULL,
        acquired_at   BIGINT NOT NULL,
        expires_at    BIGINT NOT NULL,
        ttl_ms        BIGINT,
        is_glob       BIGINT NOT NULL DEFAULT 0,
        UNIQUE (holder, pattern)
    );
    CREATE INDEX leases_by_pattern ON leases (pattern);
    CREATE INDEX leases_by_expiry ON leases (expires_at);
    CREATE INDEX leases_by_task ON leases (task_id);
    CREATE INDEX leases_globs ON leases (expires_at) WHERE is_glob = 1;

    CREATE TABLE messages (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        sender     TEXT COLLATE "C" NOT NULL,
        recipient  TEXT COLLATE "C" NOT NULL,
        thread     TEXT COLLATE "C" NOT NULL,
        kind       TEXT COLLATE "C" NOT NULL,
        urgent     BIGINT NOT NULL DEFAULT 0,
        body       TEXT COLLATE "C" NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX messages_by_thread ON messages (thread);

    CREATE TABLE deliveries (
        message_id BIGINT NOT NULL REFERENCES messages(id),
        agent      TEXT COLLATE "C" NOT NULL REFERENCES agents(name),
        acked_at   BIGINT,
        PRIMARY KEY (message_id, agent)
    );
    CREATE INDEX deliveries_unacked ON deliveries (agent, acked_at);

    CREATE TABLE notes (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        author        TEXT COLLATE "C" NOT NULL,
        kind          TEXT COLLATE "C" NOT NULL,
        title         TEXT COLLATE "C" NOT NULL,
        body          TEXT COLLATE "C" NOT NULL DEFAULT '',
        tags          TEXT COLLATE "C" NOT NULL DEFAULT '[]',
        files         TEXT COLLATE "C" NOT NULL DEFAULT '[]',
        task_id       BIGINT REFERENCES tasks(id),
        supersedes    BIGINT REFERENCES notes(id),
        superseded_by BIGINT REFERENCES notes(id),
        created_at    BIGINT NOT NULL
    );

    -- `seq` is assigned under the store's write lock (see store/pg.rs), not by a sequence, so
    -- that it follows commit order without gaps.
    CREATE TABLE events (
        seq     BIGINT PRIMARY KEY,
        ts      BIGINT NOT NULL,
        actor   TEXT COLLATE "C" NOT NULL,
        kind    TEXT COLLATE "C" NOT NULL,
        task_id BIGINT,
        agent   TEXT COLLATE "C",
        data    TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX events_by_task ON events (task_id, seq);
    CREATE INDEX events_by_agent ON events (agent, seq);
    CREATE INDEX events_by_actor ON events (actor, seq);
    CREATE INDEX events_by_kind ON events (kind, seq);
    -- The next number, read while the inserting transaction holds the store's write lock.
    CREATE FUNCTION events_next_seq() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.seq IS NULL THEN
                NEW.seq := (SELECT COALESCE(MAX(seq), 0) + 1 FROM events);
            END IF;
            RETURN NEW;
        END $$;
    CREATE TRIGGER events_numbered BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION events_next_seq();
    -- The log is append-only: the database itself refuses to change or drop an event.
    CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the event log is append-only'; END $$;
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        FOR EACH ROW EXECUTE FUNCTION events_append_only();
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION events_append_only();
    CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

    CREATE TABLE idempotency_keys (
        actor       TEXT COLLATE "C" NOT NULL,
        key         TEXT COLLATE "C" NOT NULL,
        fingerprint TEXT COLLATE "C" NOT NULL,
        response    TEXT COLLATE "C" NOT NULL,
        created_at  BIGINT NOT NULL,
        PRIMARY KEY (actor, key)
    );
    CREATE INDEX idempotency_by_age ON idempotency_keys (created_at);

    -- Full-text search over notes, messages and task results (`ref` is N-1, M-1 or T-1), with
    -- SQLite's rowid scheme: task T-n is row -n, notes and messages take positive rows.
    CREATE TABLE search_index (
        rowid    BIGINT PRIMARY KEY,
        kind     TEXT COLLATE "C" NOT NULL,
        ref      TEXT COLLATE "C" NOT NULL,
        title    TEXT COLLATE "C" NOT NULL,
        body     TEXT COLLATE "C" NOT NULL,
        document tsvector GENERATED ALWAYS AS (
            setweight(to_tsvector('english', title), 'A') || to_tsvector('english', body)
        ) STORED
    );
    CREATE INDEX search_index_document ON search_index USING gin (document);

    CREATE TABLE server_presence (
        id         BIGINT PRIMARY KEY CHECK (id = 1),
        instance   TEXT COLLATE "C" NOT NULL,
        pid        BIGINT NOT NULL,
        host       TEXT COLLATE "C" NOT NULL,
        started_at BIGINT NOT NULL,
        beat_at    BIGINT NOT NULL
    );

    CREATE TABLE task_steps (
        id       BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        task_id  BIGINT NOT NULL REFERENCES tasks(id),
        at       BIGINT NOT NULL,
        actor    TEXT COLLATE "C" NOT NULL,
        stage    BIGINT,
        role     TEXT COLLATE "C",
        verdict  TEXT COLLATE "C" NOT NULL,
        to_stage BIGINT,
        comments TEXT COLLATE "C",
        summary  TEXT COLLATE "C"
    );
    CREATE INDEX task_steps_by_task ON task_steps (task_id, id);

    CREATE TABLE merge_queue (
        task_id     BIGINT PRIMARY KEY REFERENCES tasks(id),
        branch      TEXT COLLATE "C" NOT NULL,
        agent       TEXT COLLATE "C" NOT NULL,
        position    BIGINT NOT NULL,
        state       TEXT COLLATE "C" NOT NULL,
        attempts    BIGINT NOT NULL DEFAULT 0,
        outcome     TEXT COLLATE "C",
        enqueued_at BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE INDEX merge_queue_by_state ON merge_queue (state, position);

    CREATE TABLE merge_queue_control (
        id     BIGINT PRIMARY KEY CHECK (id = 1),
        paused BIGINT NOT NULL DEFAULT 0,
        reason TEXT COLLATE "C"
    );
    INSERT INTO merge_queue_control (id, paused) VALUES (1, 0);
    "#,
    // 2: SQLite's 7, what coordination costs each agent in context.
    r#"
    ALTER TABLE agents ADD COLUMN coordination TEXT COLLATE "C";
    "#,
    // 3: SQLite's 8, the per-status task counts kept by a trigger.
    r#"
    CREATE TABLE task_status_counts (
        status TEXT COLLATE "C" PRIMARY KEY,
        tasks  BIGINT NOT NULL
    );
    INSERT INTO task_status_counts (status, tasks)
        SELECT status, count(*) FROM tasks GROUP BY status;
    CREATE FUNCTION task_status_counted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE task_status_counts SET tasks = tasks - 1 WHERE status = OLD.status;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO task_status_counts (status, tasks) VALUES (NEW.status, 1)
                ON CONFLICT (status) DO UPDATE SET tasks = task_status_counts.tasks + 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER tasks_counted_on_insert_or_delete AFTER INSERT OR DELETE ON tasks
        FOR EACH ROW EXECUTE FUNCTION task_status_counted();
    CREATE TRIGGER tasks_counted_on_status AFTER UPDATE OF status ON tasks
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION task_status_counted();
    "#,
];

/// The PostgreSQL schema version this build writes.
pub const PG_SCHEMA_VERSION: usize = PG_MIGRATIONS.len();

/// Brings a PostgreSQL schema up to date. Servers starting together take turns (an advisory
/// lock on `lock_key`), so each migration runs once.
pub(crate) fn migrate_postgres(client: &mut postgres::Client, lock_key: i64) -> Result<()> {
    // A key apart from the write lock's, so that a migration never waits on a write.
    let migration_key = lock_key ^ 0x4d49_4752;
    client.batch_execute(&format!("SELECT pg_advisory_lock({migration_key})"))?;
    let result = apply_postgres_migrations(client);
    let unlocked = client.batch_execute(&format!("SELECT pg_advisory_unlock({migration_key})"));
    result?;
    unlocked?;
    Ok(())
}

fn apply_postgres_migrations(client: &mut postgres::Client) -> Result<()> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let applied: Option<i64> = client
        .query_opt("SELECT max(version) FROM schema_version", &[])?
        .and_then(|row| row.get(0));
    let applied = usize::try_from(applied.unwrap_or(0)).unwrap_or(0);
    if applied > PG_MIGRATIONS.len() {
        return Err(CoreError::invalid(format!(
            "the database has schema version {applied}, newer than this conclave ({}); upgrade conclave",
            PG_MIGRATIONS.len()
        )));
    }
    for (index, migration) in PG_MIGRATIONS.iter().enumerate().skip(applied) {
        let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
        let mut tx = client.transaction()?;
        tx.batch_execute(migration)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied PostgreSQL schema migration");
    }
    Ok(())
}

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

    /// A database written by version 1 keeps its search rows: a task's latest result moves to
    /// the task's rowid, notes and messages stay.
    #[test]
    fn version_2_moves_task_search_rows_to_their_rowids() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO search_index (kind, ref, title, body) VALUES ('note', 'N-1', 'n', 'alpha');
             INSERT INTO search_index (kind, ref, title, body) VALUES ('task', 'T-3', 't', 'old');
             INSERT INTO search_index (kind, ref, title, body) VALUES ('task', 'T-3', 't', 'new');
             INSERT INTO search_index (kind, ref, title, body) VALUES ('task', 'T-12', 'u', 'x');
             INSERT INTO agents (name, status, created_at) VALUES ('a', 'idle', 0);
             INSERT INTO leases (pattern, mode, holder, fencing_token, acquired_at, expires_at)
                 VALUES ('src/**', 'exclusive', 'a', 1, 0, 1);",
        )
        .expect("v1 rows");
        migrate(&mut conn).expect("migrate");
        let body: String = conn
            .query_row("SELECT body FROM search_index WHERE rowid = -3", [], |r| {
                r.get(0)
            })
            .expect("T-3");
        assert_eq!(body, "new");
        let count: i64 = conn
            .query_row("SELECT count(*) FROM search_index", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 3);
        let is_glob: i64 = conn
            .query_row("SELECT is_glob FROM leases", [], |r| r.get(0))
            .expect("lease");
        assert_eq!(is_glob, 1);
    }

    /// Tasks written before pipelines read as plain tasks that need no approval.
    #[test]
    fn version_3_leaves_existing_tasks_outside_pipelines_and_approvals() {
        let mut conn = Connection::open_in_memory().expect("open");
        for migration in &MIGRATIONS[..2] {
            conn.execute_batch(migration).expect("v1, v2");
        }
        conn.pragma_update(None, "user_version", 2)
            .expect("version");
        conn.execute(
            "INSERT INTO tasks (title, status, created_by, created_at, updated_at)
             VALUES ('old', 'review', 'admin', 0, 0)",
            [],
        )
        .expect("v2 task");
        migrate(&mut conn).expect("migrate");
        let (pipeline, approve, awaiting): (Option<String>, bool, bool) = conn
            .query_row(
                "SELECT pipeline, approve, awaiting_approval FROM tasks",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("task");
        assert_eq!((pipeline, approve, awaiting), (None, false, false));
    }

    /// A database written before the kept counts gets them from its tasks, then keeps them.
    #[test]
    fn version_8_counts_the_existing_tasks_by_status_and_keeps_counting() {
        let mut conn = Connection::open_in_memory().expect("open");
        for migration in &MIGRATIONS[..7] {
            conn.execute_batch(migration).expect("v1 to v7");
        }
        conn.pragma_update(None, "user_version", 7)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO tasks (title, status, created_by, created_at, updated_at)
                 VALUES ('a', 'done', 'admin', 0, 0), ('b', 'done', 'admin', 0, 0),
                        ('c', 'ready', 'admin', 0, 0);",
        )
        .expect("v7 tasks");
        migrate(&mut conn).expect("migrate");
        let counts = |conn: &Connection| -> Vec<(String, i64)> {
            let mut statement = conn
                .prepare(
                    "SELECT status, tasks FROM task_status_counts WHERE tasks > 0 ORDER BY status",
                )
                .expect("prepare");
            statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        assert_eq!(counts(&conn), [("done".into(), 2), ("ready".into(), 1)]);
        conn.execute_batch(
            "UPDATE tasks SET status = 'done' WHERE title = 'c';
             UPDATE tasks SET title = 'renamed' WHERE title = 'a';
             DELETE FROM tasks WHERE title = 'b';
             INSERT INTO tasks (title, status, created_by, created_at, updated_at)
                 VALUES ('d', 'pending', 'admin', 0, 0);",
        )
        .expect("changes");
        assert_eq!(counts(&conn), [("done".into(), 2), ("pending".into(), 1)]);
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
