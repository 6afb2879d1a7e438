//! `conclave store migrate`: move a project's whole history from one store to another.
//!
//! Typically from the project's SQLite file to a PostgreSQL database that several servers will
//! share (`--to postgres://...`), or back. The copy is one transaction on the destination and is
//! checked afterwards (row counts of every table, a digest of the event log); see
//! `conclave_core::store::copy`. No server may be using the project meanwhile: the command
//! takes the project's server lock when the source is the project's own database.

use std::path::Path;

use anyhow::Context as _;
use conclave_core::project::Project;
use conclave_core::store::is_postgres_url;
use conclave_core::{Store, StoreConfig};

use crate::cli::{StoreCommand, StoreMigrateArgs};

pub async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Migrate(args) => migrate(args).await,
    }
}

async fn migrate(args: StoreMigrateArgs) -> anyhow::Result<()> {
    for (flag, url) in [("--from", &args.from), ("--to", &args.to)] {
        if is_postgres_url(url) || url.starts_with("sqlite://") {
            conclave_core::config::validate_store_url(url)
                .map_err(|why| anyhow::anyhow!("{flag} {why}"))?;
        }
    }
    let source_path = sqlite_path(&args.from);
    if let Some(path) = &source_path
        && !path.exists()
    {
        anyhow::bail!("--from {}: no such database", path.display());
    }
    // A server writing the source meanwhile would leave the copy behind it.
    let _lock = match (
        &source_path,
        std::env::current_dir()
            .ok()
            .and_then(|cwd| Project::find(&cwd)),
    ) {
        (Some(path), Some(project)) if same_file(path, &project.database()) => Some(
            conclave_server::ServerLock::acquire(&project)
                .context("stop the project's server before migrating its store")?,
        ),
        _ => None,
    };
    let (from, to) = (args.from.clone(), args.to.clone());
    let shown_to = conclave_server::redact_password(&args.to);
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let source = Store::open_url(&from, StoreConfig::default())
            .with_context(|| format!("cannot open {}", conclave_server::redact_password(&from)))?;
        let destination = Store::open_url(&to, StoreConfig::default())
            .with_context(|| format!("cannot open {}", conclave_server::redact_password(&to)))?;
        Ok(source.copy_into(&destination)?)
    })
    .await??;
    println!(
        "migrated to {shown_to} in {:.1} s, checked:",
        report.millis as f64 / 1000.0
    );
    for (table, rows) in &report.tables {
        println!("  {table:<20} {rows:>10} rows");
    }
    println!("  event log digest     {}", report.events_digest);
    println!(
        "point the servers at it with [store] url = \"{shown_to}\" in conclave.toml (or serve --store)"
    );
    Ok(())
}

/// The file a SQLite store URL names (`sqlite://PATH` or a bare path); `None` for PostgreSQL.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    if is_postgres_url(url) {
        return None;
    }
    Some(Path::new(url.strip_prefix("sqlite://").unwrap_or(url)).to_path_buf())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
