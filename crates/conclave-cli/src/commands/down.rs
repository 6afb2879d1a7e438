//! `conclave down`: stops the team gracefully, agents first, then the server. It signals the
//! supervisor named in `.conclave/supervisor.json` (which ends its agents, then its in-process
//! server); then, if a server still runs for the project (one `up` joined), it stops that too.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::context::Context;
use conclave_supervisor::process::is_alive;

/// How long `down` waits for a process to end after SIGTERM.
const WAIT: Duration = Duration::from_secs(40);

pub async fn run(context: &Context) -> anyhow::Result<()> {
    let project = context.project()?;
    let mut stopped_something = false;
    if let Some(info) = super::up::read_supervisor_info(project)
        && let Ok(pid) = i32::try_from(info.pid)
        && is_alive(pid)
    {
        eprintln!("conclave: stopping the supervisor (pid {pid}) and its agents");
        stop(pid).await?;
        stopped_something = true;
    }
    if let Some(info) = project.read_server_info()
        && let Ok(pid) = i32::try_from(info.pid)
        && is_alive(pid)
    {
        eprintln!("conclave: stopping the server (pid {pid})");
        stop(pid).await?;
        stopped_something = true;
    }
    if !stopped_something {
        eprintln!("conclave: nothing runs for {}", project.root().display());
    }
    Ok(())
}

async fn stop(pid: i32) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    let started = Instant::now();
    while is_alive(pid) {
        if started.elapsed() > WAIT {
            anyhow::bail!("pid {pid} did not stop within {WAIT:?}; send it SIGKILL if needed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("conclave: stopped");
    Ok(())
}
