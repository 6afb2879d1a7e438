//! Test support: one store test suite, run on both engines.
//!
//! A test written against [`test_store`] runs on the engine [`with_engine`] chose for its thread:
//! SQLite in memory, or PostgreSQL in a schema of its own (created afresh for every store, so
//! tests run in parallel without seeing each other). PostgreSQL is found through
//! `CONCLAVE_TEST_PG` (a URL), or else by starting the throwaway local cluster of
//! `scripts/pg-test-cluster.sh` (a unix socket only). When neither works, a PostgreSQL test prints
//! `skipped: <reason>` and records the skip in the file `CONCLAVE_SKIP_LOG` names (which
//! `scripts/test.sh` counts); under `CI=true` it fails instead.
//!
//! Not part of the product's API: public only so that the crate's integration tests can use it.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Store, StoreConfig};

/// The engine a store test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

thread_local! {
    static ENGINE: Cell<Engine> = const { Cell::new(Engine::Sqlite) };
}

/// Runs `test` with [`test_store`] opening stores on `engine`; on PostgreSQL when none is
/// available, reports the skip (see the module docs) and does not run it.
pub fn with_engine(engine: Engine, test: impl FnOnce()) {
    if engine == Engine::Postgres && postgres_url().is_none() {
        return;
    }
    let before = ENGINE.with(|cell| cell.replace(engine));
    test();
    ENGINE.with(|cell| cell.set(before));
}

/// The engine of this thread's store tests.
pub fn current_engine() -> Engine {
    ENGINE.with(Cell::get)
}

/// A new, empty store on this thread's engine.
pub fn test_store(config: StoreConfig) -> crate::error::Result<Store> {
    match current_engine() {
        Engine::Sqlite => Store::open_in_memory(config),
        Engine::Postgres => {
            let url = fresh_postgres_schema().map_err(crate::error::CoreError::Database)?;
            Store::open_postgres(&url, config)
        }
    }
}

/// A URL for a new, empty store on this thread's engine that several [`Store`]s may open at
/// once (several "servers" on one database): a file for SQLite, a schema for PostgreSQL. The
/// directory keeps the SQLite file alive.
///
/// # Panics
///
/// When the location cannot be made.
pub fn shared_store_url() -> (tempfile_dir::Dir, String) {
    match current_engine() {
        Engine::Sqlite => {
            let dir = tempfile_dir::Dir::new();
            let path = dir.path().join("shared.db");
            let url = path.to_string_lossy().into_owned();
            (dir, url)
        }
        Engine::Postgres => (
            tempfile_dir::Dir::none(),
            fresh_postgres_schema().expect("a PostgreSQL schema for the test"),
        ),
    }
}

/// A temporary directory without a dependency on `tempfile` (a dev-dependency only).
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(Option<PathBuf>);

    impl Dir {
        /// # Panics
        ///
        /// When the directory cannot be created.
        pub fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "conclave-store-test-{}-{n}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ));
            std::fs::create_dir_all(&path).expect("temporary directory");
            Dir(Some(path))
        }

        pub(super) fn none() -> Self {
            Dir(None)
        }

        pub fn path(&self) -> &Path {
            self.0.as_deref().unwrap_or(Path::new("."))
        }
    }

    impl Default for Dir {
        fn default() -> Self {
            Dir::new()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            if let Some(path) = &self.0 {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

/// The PostgreSQL server for tests, or `None` after reporting why there is none.
///
/// # Panics
///
/// Under `CI=true` when there is none.
pub fn postgres_url() -> Option<String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    let found = FOUND.get_or_init(find_postgres);
    match found {
        Ok(url) => Some(url.clone()),
        Err(reason) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("PostgreSQL is required under CI=true: {reason}")
        }
        Err(reason) => {
            record_skip(reason);
            None
        }
    }
}

fn find_postgres() -> Result<String, String> {
    let url = match std::env::var("CONCLAVE_TEST_PG") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => start_local_cluster()?,
    };
    let mut client = postgres::Client::connect(&url, postgres::NoTls)
        .map_err(|error| format!("cannot connect to {url}: {error}"))?;
    drop_stale_schemas(&mut client);
    Ok(url)
}

/// Starts (or finds running) the throwaway cluster of `scripts/pg-test-cluster.sh`.
fn start_local_cluster() -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-test-cluster.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|error| format!("CONCLAVE_TEST_PG is unset and {error} running {script:?}"))?;
    if !output.status.success() {
        return Err(format!(
            "CONCLAVE_TEST_PG is unset and no local PostgreSQL could be started: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// How long a test schema is kept: older ones are left over from earlier runs.
const STALE_SCHEMA_SECS: i64 = 3600;

/// Drops the schemas earlier test runs left behind (their names carry their creation time).
fn drop_stale_schemas(client: &mut postgres::Client) {
    let Ok(rows) = client.query(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'conclave_test_%'",
        &[],
    ) else {
        return;
    };
    let cutoff = chrono::Utc::now().timestamp() - STALE_SCHEMA_SECS;
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .strip_prefix("conclave_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<i64>().ok());
        if created.is_some_and(|created| created < cutoff) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        }
    }
}

/// A URL naming a new, empty PostgreSQL schema for one test, or `None` after reporting the skip
/// (see [`postgres_url`]).
pub fn postgres_test_url() -> Option<String> {
    postgres_url()?;
    Some(fresh_postgres_schema().expect("a PostgreSQL schema for the test"))
}

/// Creates an empty schema and answers a URL whose connections use it.
fn fresh_postgres_schema() -> Result<String, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = postgres_url().ok_or("no PostgreSQL for tests")?;
    let schema = format!(
        "conclave_test_{}_{}_{}",
        chrono::Utc::now().timestamp(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Store::create_postgres_schema(&url, &schema).map_err(|error| error.to_string())
}

/// Reports the running test as skipped for `reason`: `skipped: <reason>` on stdout and, when
/// `CONCLAVE_SKIP_LOG` names a file, a line `<test name>: <reason>` appended to it.
///
/// # Panics
///
/// When the skip cannot be recorded: a skip that goes uncounted would pass for a success.
pub fn record_skip(reason: &str) {
    println!("skipped: {reason}");
    let Some(path) = std::env::var_os("CONCLAVE_SKIP_LOG") else {
        return;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("(unnamed test)");
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{test}: {reason}\n").as_bytes()));
    if let Err(error) = appended {
        panic!(
            "cannot record the skip in {} (CONCLAVE_SKIP_LOG): {error}",
            Path::new(&path).display()
        );
    }
}
