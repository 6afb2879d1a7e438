//! `conclave down`: stops the team gracefully, agents first, then the server. It signals the
//! supervisor named in `.conclave/supervisor.json` (which ends its agents, then its in-process
//! server); then, if a server still runs for the project (one `up` joined), it stops that too.
//!
//! A pid in those files may outlive its process: after a crash or a reboot the pid can belong to
//! some other program. So before signalling, `down` checks that the process started before the
//! file was written (its start time from `/proc`); a younger one is not ours, is left alone, and
//! the stale file is removed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::context::Context;
use crate::output::note;
use conclave_supervisor::process::is_alive;

/// How long `down` waits for a process to end after SIGTERM.
const WAIT: Duration = Duration::from_secs(40);

/// How much later than its recorded start a process may seem to have started and still be the
/// one recorded: the boot time in `/proc/stat` is whole seconds, and clocks tick.
const START_TIME_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

pub async fn run(context: &Context) -> anyhow::Result<()> {
    let project = context.project()?;
    let mut stopped_something = false;
    if let Some(info) = super::up::read_supervisor_info(project)
        && let Ok(pid) = i32::try_from(info.pid)
        && is_alive(pid)
    {
        if is_recorded_process(pid, info.started_at) {
            note!("conclave: stopping the supervisor (pid {pid}) and its agents");
            stop(pid).await?;
            stopped_something = true;
        } else {
            note_stranger(pid, ".conclave/supervisor.json");
            let _ = std::fs::remove_file(super::up::supervisor_file(project));
        }
    }
    if let Some(info) = project.read_server_info()
        && let Ok(pid) = i32::try_from(info.pid)
        && is_alive(pid)
    {
        if is_recorded_process(pid, info.started_at) {
            note!("conclave: stopping the server (pid {pid})");
            stop(pid).await?;
            stopped_something = true;
        } else {
            note_stranger(pid, ".conclave/server.json");
            project.remove_server_info();
        }
    }
    if !stopped_something {
        note!("conclave: nothing runs for {}", project.root().display());
    }
    Ok(())
}

fn note_stranger(pid: i32, file: &str) {
    note!(
        "conclave: pid {pid} from {file} now belongs to another program (it started after the file \
         was written); leaving it alone and removing the stale file"
    );
}

/// Whether `pid` can be the process that recorded itself at `recorded_at`: it must have started
/// before then. When the start time cannot be read (no `/proc`), the file is trusted.
fn is_recorded_process(pid: i32, recorded_at: DateTime<Utc>) -> bool {
    match process_start_time(pid) {
        Some(started) => started <= recorded_at + START_TIME_SLACK,
        None => true,
    }
}

/// When `pid` started, from `/proc/PID/stat` (in clock ticks after boot) and the boot time in
/// `/proc/stat`.
fn process_start_time(pid: i32) -> Option<DateTime<Utc>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks_after_boot = start_ticks(&stat)?;
    let boot_secs = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|ticks| *ticks > 0)?;
    let millis_after_boot = ticks_after_boot.checked_mul(1000)? / ticks_per_sec;
    let boot = DateTime::from_timestamp(boot_secs, 0)?;
    Some(boot + chrono::TimeDelta::milliseconds(i64::try_from(millis_after_boot).ok()?))
}

/// Field 22 of a `/proc/PID/stat` line (`starttime`), counted from after the command name in
/// parentheses, which may itself hold spaces and parentheses.
fn start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3 (state) onwards; starttime is field 22.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The `btime` line of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<i64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
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
    note!("conclave: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_even_with_an_odd_command_name() {
        let stat =
            "4242 (a b) c) S 1 4242 4242 0 -1 4194560 10 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(start_ticks(stat), Some(987_654));
        assert_eq!(start_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn the_boot_time_comes_from_the_btime_line() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764540000\nprocesses 9\n"),
            Some(1_764_540_000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_started_before_now_and_after_an_hour_ago() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        let now = Utc::now();
        assert!(is_recorded_process(pid, now));
        assert!(!is_recorded_process(pid, now - chrono::TimeDelta::hours(1)));
    }
}
