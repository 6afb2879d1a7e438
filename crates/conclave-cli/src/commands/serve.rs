//! `conclave serve`: run the server in the foreground until SIGINT or SIGTERM.

use anyhow::Context as _;
use conclave_core::project::Project;
use conclave_server::ServeOptions;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let project = Project::find(&cwd).with_context(|| {
        format!(
            "not inside a conclave project (no .conclave/ or conclave.toml in {} or above); \
             run `conclave init` first",
            cwd.display()
        )
    })?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), "shutting down")?;
    let options = ServeOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
    };
    conclave_server::serve_project(&project, options, shutdown).await
}

/// The first SIGINT or SIGTERM cancels `shutdown` (saying `what` it stops); a second one ends the
/// process at once.
pub(crate) fn spawn_signal_handler(
    shutdown: CancellationToken,
    what: &'static str,
) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        let mut n_signals = 0;
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            n_signals += 1;
            if n_signals == 1 {
                eprintln!("conclave: {what} (signal again to stop at once)");
                shutdown.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
