//! WAL checkpoints off the write path.
//!
//! SQLite copies the write-ahead log back into the database file (a checkpoint) when the log
//! passes `wal_autocheckpoint` pages, by default 1,000, and it does so inside the commit that
//! crossed the mark, on the write connection. Under `synchronous=NORMAL` a checkpoint also syncs
//! the log and the database file: about once every hundred commits here, one commit took
//! milliseconds longer while every write queued behind it waited (group commit holds the one
//! write connection). That was the tail of every write's latency.
//!
//! Instead a background thread checkpoints (`PASSIVE`: it never waits for, nor blocks, the
//! writer or a reader) on a connection of its own, every [`CHECKPOINT_INTERVAL`] when something
//! was committed since the last (backing off to [`IDLE_INTERVAL`] while nothing is). The writer keeps an automatic checkpoint only as a backstop at
//! [`WRITER_BACKSTOP_PAGES`], which the log reaches only if the thread falls far behind (or
//! could not start). Durability does not change: a commit is durable in the log before it is
//! answered, whoever copies it into the database file later.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use rusqlite::Connection;

use super::{Engine, StoreInner};
use crate::error::Result;

/// How often the checkpointer looks for new commits to copy back while commits come in. Small
/// checkpoints, often: a checkpoint's stall of the writer grows with the pages it copies and
/// syncs. Measured (`conclave bench`, sixteen clients sending): p99 30 ms at 250 ms, 8–9 ms at
/// 50 ms, 6 ms at 15 ms, 4.7–5.0 ms at 5 ms.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(5);

/// The longest the checkpointer sleeps while nothing is committed: it backs off from
/// [`CHECKPOINT_INTERVAL`] to this when idle, so that an idle server does not wake it 200 times a
/// second.
pub(super) const IDLE_INTERVAL: Duration = Duration::from_millis(100);

/// The writer's own automatic checkpoint, a backstop: 10,000 pages (about 40 MB of log).
pub(super) const WRITER_BACKSTOP_PAGES: u32 = 10_000;

/// Starts the checkpointer of the SQLite database at `path` for `store`. It holds the store
/// weakly and ends when the store is dropped. When it cannot start, the writer's backstop
/// checkpoints as SQLite always did.
pub(super) fn start(path: &Path, store: Weak<StoreInner>) -> Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // The database file is synced after each checkpoint (SQLite's rule for `NORMAL`); the log,
    // whose frames are durable already, before it.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let spawned = std::thread::Builder::new()
        .name("conclave-checkpoint".into())
        .spawn(move || run(&conn, &store));
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the WAL checkpointer; the writer checkpoints");
    }
    Ok(())
}

fn run(conn: &Connection, store: &Weak<StoreInner>) {
    let mut copied_up_to = 0;
    let mut interval = CHECKPOINT_INTERVAL;
    loop {
        std::thread::sleep(interval);
        let Some(inner) = store.upgrade() else {
            return;
        };
        let Engine::Sqlite { writer, .. } = &inner.engine else {
            return;
        };
        let commits = writer.stats().commits;
        drop(inner);
        if commits == copied_up_to {
            interval = (interval * 2).min(IDLE_INTERVAL);
            continue;
        }
        interval = CHECKPOINT_INTERVAL;
        match checkpoint(conn) {
            Ok(()) => copied_up_to = commits,
            Err(error) => tracing::warn!(%error, "WAL checkpoint failed; retrying"),
        }
    }
}

/// Copies what the log holds into the database file, as far as no reader still needs it.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::{Actor, NewTask};
    use crate::store::{Store, StoreConfig};

    /// Commits reach the database file without the writer checkpointing: its automatic
    /// checkpoint is the far backstop, yet the file grows soon after a few hundred commits (far
    /// fewer log pages than the backstop), so the background thread copied them.
    #[test]
    fn the_background_thread_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.sqlite");
        let store = Store::open(&path, StoreConfig::default()).expect("open");
        let Engine::Sqlite { writer, .. } = &store.inner.engine else {
            panic!("a file store is on SQLite");
        };
        let backstop: u32 = writer
            .with_connection(|conn| {
                conn.pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            })
            .expect("pragma");
        assert_eq!(backstop, WRITER_BACKSTOP_PAGES);
        std::thread::sleep(CHECKPOINT_INTERVAL * 3);
        let before = std::fs::metadata(&path).expect("size").len();
        for n in 0..300 {
            store
                .write(|tx| {
                    tx.create_task(
                        &Actor::Admin,
                        NewTask {
                            title: format!("task {n} {}", "x".repeat(150)),
                            ..Default::default()
                        },
                    )
                })
                .expect("create");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).expect("size").len() <= before {
            assert!(
                Instant::now() < deadline,
                "nothing was checkpointed into the database file within 10 s"
            );
            std::thread::sleep(CHECKPOINT_INTERVAL);
        }
    }
}
