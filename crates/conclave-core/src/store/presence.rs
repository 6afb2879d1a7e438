//! The one server that may use an embedded database at a time.
//!
//! The project's `server.lock` file keeps a second server away, but only while the file exists:
//! deleting it let a second server open the same database, whose writes then reached neither
//! the first server's live streams nor its inbox waits. So the database itself records which
//! server uses it (one row, renewed by the server's sweeper) and a server refuses to start while
//! another one is alive there.
//!
//! A PostgreSQL store is meant to be shared by several servers: there, presence is not claimed
//! and every call here succeeds without writing.

use std::time::Duration;

use super::db::{OptionalExtension, params};

use super::Store;
use crate::error::{CoreError, Result};

/// Who is serving a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPresence {
    /// Unique per server process start.
    pub instance: String,
    pub pid: u32,
    pub host: String,
}

impl Store {
    /// Records `me` as the database's server, unless another server is alive there: one whose
    /// row was renewed within `stale_after` and which, on this host, still runs (`is_alive`
    /// tells by pid; a server killed with SIGKILL is taken over at once).
    pub fn claim_presence(
        &self,
        me: &ServerPresence,
        stale_after: Duration,
        is_alive: impl Fn(u32) -> bool,
    ) -> Result<()> {
        if self.is_postgres() {
            return Ok(());
        }
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        self.write(|tx| {
            let now = tx.now_ms();
            let current: Option<(String, i64, String, i64)> = tx
                .conn()
                .query_row(
                    "SELECT instance, pid, host, beat_at FROM server_presence WHERE id = 1",
                    params![],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            if let Some((instance, pid, host, beat_at)) = current {
                let pid = u32::try_from(pid).unwrap_or(0);
                let fresh = now - beat_at < stale_ms;
                // Our own pid recorded by an earlier process: that process is gone.
                let alive = host != me.host || (pid != me.pid && is_alive(pid));
                if instance != me.instance && fresh && alive {
                    return Err(CoreError::conflict(format!(
                        "another conclave server (pid {pid} on {host}) is using this database, \
                         last seen {} s ago; stop it first, or wait {} s if it is gone",
                        (now - beat_at) / 1000,
                        stale_ms / 1000
                    )));
                }
            }
            tx.conn().execute(
                "INSERT INTO server_presence (id, instance, pid, host, started_at, beat_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (id) DO UPDATE SET instance = ?1, pid = ?2, host = ?3,
                    started_at = ?4, beat_at = ?4",
                params![me.instance, me.pid, me.host, now],
            )?;
            Ok(())
        })
    }

    /// Renews `me`'s row; `false` when another server has taken the database over (this one
    /// was stopped for longer than the stale time), which must then stop serving.
    pub fn renew_presence(&self, me: &ServerPresence) -> Result<bool> {
        if self.is_postgres() {
            return Ok(true);
        }
        self.write(|tx| {
            let updated = tx.conn().execute(
                "UPDATE server_presence SET beat_at = ?2 WHERE id = 1 AND instance = ?1",
                params![me.instance, tx.now_ms()],
            )?;
            Ok(updated == 1)
        })
    }

    /// Removes `me`'s row when it stops, so that the next server starts without waiting.
    pub fn release_presence(&self, me: &ServerPresence) -> Result<()> {
        if self.is_postgres() {
            return Ok(());
        }
        self.write(|tx| {
            tx.conn().execute(
                "DELETE FROM server_presence WHERE id = 1 AND instance = ?1",
                params![me.instance],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    fn presence(instance: &str, pid: u32) -> ServerPresence {
        ServerPresence {
            instance: instance.into(),
            pid,
            host: "here".into(),
        }
    }

    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.sqlite");
        let store = Store::open(&path, StoreConfig::default()).expect("open");
        store
            .claim_presence(&presence("a", 1), Duration::ZERO, |_| false)
            .expect("write");
        drop(store);
        let store = Store::open(&path, StoreConfig::default()).expect("reopen");
        for name in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"] {
            let file = dir.path().join(name);
            if let Ok(meta) = std::fs::metadata(&file) {
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
            }
        }
        drop(store);
    }

    #[test]
    fn a_second_live_server_is_refused_and_a_dead_one_taken_over() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db.sqlite");
        let first = Store::open(&path, StoreConfig::default()).expect("first");
        let second = Store::open(&path, StoreConfig::default()).expect("second");
        let minute = Duration::from_secs(60);
        first
            .claim_presence(&presence("a", 10), minute, |_| true)
            .expect("first claims");
        let error = second
            .claim_presence(&presence("b", 20), minute, |_| true)
            .expect_err("first is alive");
        assert!(error.to_string().contains("pid 10"), "{error}");
        // The first process died (SIGKILL: its row is fresh, but its pid is gone).
        second
            .claim_presence(&presence("b", 20), minute, |pid| pid != 10)
            .expect("taken over");
        assert!(!first.renew_presence(&presence("a", 10)).expect("renew"));
        assert!(second.renew_presence(&presence("b", 20)).expect("renew"));
        second
            .release_presence(&presence("b", 20))
            .expect("release");
        first
            .claim_presence(&presence("c", 30), minute, |_| true)
            .expect("free after release");
        // A stale row (its server stopped, its pid reused) is taken over too.
        second
            .claim_presence(&presence("d", 40), Duration::ZERO, |_| true)
            .expect("stale");
    }
}
