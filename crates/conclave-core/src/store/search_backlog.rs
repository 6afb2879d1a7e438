//! The search backlog: what an operation writes for search (a message, a note, a task's result)
//! is kept in a plain table in the operation's own transaction, and moved into the full-text
//! index in batches of [`BATCH`], by a thread of the store every [`INDEX_INTERVAL`] and before
//! every search.
//!
//! Why (issue 14): an FTS5 insert writes a new index segment at each commit, five of the
//! seventeen pages a message's commit wrote, and most of a note's. A backlog row is one page,
//! and a batch of a hundred entries writes one segment. Nothing is lost or seen late: the backlog
//! row commits with the operation (a crash keeps it, and the thread indexes it after a restart),
//! and [`Store::search`] takes in whatever waits before it reads. PostgreSQL keeps its own
//! `tsvector` column and has no backlog.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Engine, Store, StoreInner};

/// How often the backlog is moved into the index while entries wait.
pub(super) const INDEX_INTERVAL: Duration = Duration::from_millis(100);

/// Entries indexed per write: one write holds the write connection for about a millisecond,
/// so that a burst's backlog never keeps other writes waiting long (they pass between batches).
pub(super) const BATCH: usize = 64;

/// Starts the thread that indexes `store`'s backlog. It holds the store weakly and ends when the
/// store is dropped; if it cannot start, searches still take the backlog in before they read.
pub(super) fn start(store: Weak<StoreInner>) {
    let spawned = std::thread::Builder::new()
        .name("conclave-search-index".into())
        .spawn(move || run(&store));
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the search indexer; searches index what waits");
    }
}

fn run(store: &Weak<StoreInner>) {
    loop {
        std::thread::sleep(INDEX_INTERVAL);
        // A batch at a time, holding the store only while writing it: a store dropped with a long
        // backlog (the next process that opens the database indexes the rest) is not kept open,
        // and writing, by this thread.
        loop {
            let Some(inner) = store.upgrade() else {
                return;
            };
            if !matches!(inner.engine, Engine::Sqlite { .. }) {
                return;
            }
            let store = Store {
                inner: Arc::clone(&inner),
            };
            match store.index_search_batch() {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not index the search backlog; retrying");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::audience::Viewer;
    use crate::model::{Actor, NewNote};
    use crate::store::StoreConfig;

    fn note(store: &Store, title: &str) {
        store
            .write(|tx| {
                tx.add_note(
                    &Actor::Admin,
                    NewNote {
                        title: title.into(),
                        body: Some("a body to find".into()),
                        ..Default::default()
                    },
                )
            })
            .expect("note");
    }

    fn indexed_hits(store: &Store, word: &str) -> usize {
        store
            .read(|r| r.search(word, &[], 10, &Viewer::Admin))
            .expect("search")
            .len()
    }

    /// Waits (up to 10 s) until the index itself, not a store search, finds `word`.
    fn wait_until_indexed(store: &Store, word: &str, never: &str) {
        let started = Instant::now();
        while indexed_hits(store, word) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "{never}");
            std::thread::sleep(INDEX_INTERVAL / 2);
        }
    }

    /// A note's commit leaves its search entry in the backlog (not yet in the index); a search
    /// through the store indexes it first and finds it; the thread indexes the rest by itself;
    /// and a store reopened on a backlog (a crash before the thread ran) indexes it too.
    #[test]
    fn written_entries_wait_in_the_backlog_and_every_search_finds_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = Store::open(&path, StoreConfig::default()).expect("store");
        note(&store, "zebra crossing");
        assert!(store.read(|r| r.search_backlog_waits()).expect("waits"));
        assert_eq!(indexed_hits(&store, "zebra"), 0, "not in the index yet");
        let hits = store
            .search("zebra", &[], 10, &Viewer::Admin)
            .expect("search");
        assert_eq!(hits.len(), 1, "the store's search indexes what waits first");
        assert!(!store.read(|r| r.search_backlog_waits()).expect("waits"));

        // More than a batch waits: a search takes it all in, a batch per write.
        for n in 0..(BATCH * 2 + 5) {
            note(&store, &format!("antelope {n}"));
        }
        let hits = store
            .search("antelope", &[], 1000, &Viewer::Admin)
            .expect("search");
        assert_eq!(hits.len(), BATCH * 2 + 5);

        note(&store, "giraffe neck");
        wait_until_indexed(
            &store,
            "giraffe",
            "the indexing thread never took the backlog in",
        );
        drop(store);

        // A backlog left behind (written by hand, as a crash between commit and indexing would
        // leave it) is indexed by the next store on the same file.
        {
            let conn = rusqlite::Connection::open(&path).expect("open");
            conn.execute(
                "INSERT INTO search_backlog (kind, ref, title, body)
                 VALUES ('note', 'N-99', 'okapi stripes', 'left behind')",
                [],
            )
            .expect("backlog row");
        }
        let store = Store::open(&path, StoreConfig::default()).expect("reopen");
        wait_until_indexed(
            &store,
            "okapi",
            "the backlog of the last run was never indexed",
        );
    }
}
