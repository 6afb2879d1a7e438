//! `conclave serve`: run the server in the foreground until SIGINT or SIGTERM.

use anyhow::Context as _;
use conclave_core::project::Project;
use conclave_server::ServeOptions;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::output::note;

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
    if let Some(host) = &args.host {
        conclave_core::config::validate_host_name(host)
            .map_err(|error| anyhow::anyhow!("--host {host:?}: {error}"))?;
    }
    let options = ServeOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
        store: args.store,
        host: args.host,
    };
    conclave_server::serve_project(&project, options, shutdown).await
}

/// The first SIGINT or SIGTERM cancels `shutdown` (saying `what` it stops); a second one ends the
/// process at once, killing the process groups of its children first (`up` starts each agent in a
/// group of its own, which a Ctrl-C in the terminal does not reach).
///
/// Nothing in the loop may panic: a panic would end this task, and every later signal would be
/// swallowed (the handler stays installed). So its note goes through `note!`, which drops the line
/// when stderr is a closed pipe.
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
                note!("conclave: {what} (signal again to stop at once)");
                shutdown.cancel();
            } else {
                kill_child_process_groups();
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// SIGKILLs every child of this process that leads a process group of its own (with everything
/// in that group). Linux only (it reads `/proc`); elsewhere it does nothing.
fn kill_child_process_groups() {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if parent_and_group(&stat) == Some((me, pid))
            && let Ok(pid) = i32::try_from(pid)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The parent pid and process group of a `/proc/PID/stat` line (`PID (COMM) STATE PPID PGRP ...`;
/// COMM may hold spaces and parentheses, so fields are counted from the last `)`).
fn parent_and_group(stat: &str) -> Option<(u32, u32)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(1);
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((parent, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_parent_and_group_even_with_odd_names() {
        assert_eq!(
            parent_and_group("4242 (claude) S 100 4242 4242 0 -1 4194560"),
            Some((100, 4242))
        );
        assert_eq!(parent_and_group("7 (a) b (c)) R 1 7 7 0"), Some((1, 7)));
        assert_eq!(parent_and_group("garbage"), None);
    }
}
