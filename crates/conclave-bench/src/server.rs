//! The server under test: a real `conclave serve` process over a throwaway project, so that its
//! CPU time and memory can be read from `/proc` apart from the load generator's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// How long a server may take to come up (a scale run's database included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's process figures at one moment (Linux `/proc`; zeros elsewhere).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessSample {
    /// User + system CPU time since the process started, in milliseconds.
    pub cpu_ms: f64,
    /// Resident memory now, in MiB.
    pub rss_mib: f64,
    /// The most resident memory so far (VmHWM), in MiB.
    pub peak_rss_mib: f64,
}

/// A throwaway project (made by `conclave init`) that a server can be started on.
pub struct BenchProject {
    pub dir: tempfile::TempDir,
    exe: PathBuf,
    /// The PostgreSQL schema this project's server runs in, when the bench runs on PostgreSQL.
    postgres: Option<ScratchSchema>,
}

/// A throwaway PostgreSQL schema: `url` is the database's, `store_url` one whose connections
/// work inside `schema`.
struct ScratchSchema {
    url: String,
    schema: String,
    store_url: String,
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        // The PostgreSQL driver is synchronous and must not run on an async worker thread.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped =
            std::thread::spawn(move || conclave_core::Store::drop_postgres_schema(&url, &schema))
                .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "bench: could not drop the PostgreSQL schema {}",
                self.schema
            );
        }
    }
}

impl BenchProject {
    /// `conclave init` in a new temporary folder, then a `conclave.toml` whose `[server]`
    /// section holds `extra_server_config` (the limits a load test needs).
    /// With `postgres` (a `postgres://` URL), the server runs on a new schema of that database.
    pub async fn create(
        exe: &Path,
        extra_server_config: &str,
        postgres: Option<&str>,
    ) -> anyhow::Result<BenchProject> {
        let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
        let status = tokio::process::Command::new(exe)
            .arg("init")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .with_context(|| format!("cannot run {} init", exe.display()))?;
        anyhow::ensure!(status.success(), "`conclave init` failed ({status})");
        // The settings of a load test replace the commented template `init` writes.
        std::fs::write(
            dir.path().join("conclave.toml"),
            format!("# Written by `conclave bench`.\n[server]\n{extra_server_config}\n"),
        )?;
        let postgres = match postgres {
            Some(url) => {
                let url = url.to_string();
                let schema = format!(
                    "conclave_bench_{}_{}",
                    std::process::id(),
                    dir.path()
                        .file_name()
                        .map_or(String::new(), |name| name.to_string_lossy().to_lowercase())
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
                );
                let (base, name) = (url.clone(), schema.clone());
                let store_url = tokio::task::spawn_blocking(move || {
                    conclave_core::Store::create_postgres_schema(&base, &name)
                })
                .await??;
                Some(ScratchSchema {
                    url,
                    schema,
                    store_url,
                })
            }
            None => None,
        };
        Ok(BenchProject {
            dir,
            exe: exe.to_path_buf(),
            postgres,
        })
    }

    /// Where the project's store is (where a scale run writes its history before the server
    /// starts): the PostgreSQL schema's URL, or the project's database file.
    pub fn store_url(&self) -> String {
        match &self.postgres {
            Some(scratch) => scratch.store_url.clone(),
            None => self
                .dir
                .path()
                .join(".conclave")
                .join("conclave.db")
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// Starts `conclave serve` on a free loopback port and waits until `/healthz` answers.
    pub async fn serve(&self, http: &reqwest::Client) -> anyhow::Result<BenchServer> {
        let started = Instant::now();
        let server_json = self.dir.path().join(".conclave").join("server.json");
        let _ = std::fs::remove_file(&server_json);
        let mut command = tokio::process::Command::new(&self.exe);
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        if let Some(scratch) = &self.postgres {
            command.args(["--store", &scratch.store_url]);
        }
        let child = command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `conclave serve`")?;
        let pid = child.id().context("the server exited at once")?;
        let mut server = BenchServer {
            child,
            pid,
            url: String::new(),
            admin: String::new(),
            start_ms: 0.0,
        };
        loop {
            if started.elapsed() > START_TIMEOUT {
                anyhow::bail!("the server did not answer within {START_TIMEOUT:?}");
            }
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("`conclave serve` exited ({status})");
            }
            if server.url.is_empty()
                && let Ok(text) = std::fs::read_to_string(&server_json)
                && let Ok(info) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = info["url"].as_str()
            {
                server.url = url.to_string();
            }
            if !server.url.is_empty()
                && let Ok(response) = http.get(format!("{}/healthz", server.url)).send().await
                && response.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.start_ms = started.elapsed().as_secs_f64() * 1000.0;
        server.admin =
            std::fs::read_to_string(self.dir.path().join(".conclave").join("admin.token"))
                .context("no admin token")?
                .trim()
                .to_string();
        Ok(server)
    }
}

/// A running `conclave serve`, ended when dropped.
pub struct BenchServer {
    child: tokio::process::Child,
    pid: u32,
    pub url: String,
    pub admin: String,
    /// From spawning the process to the first answer of `/healthz`, in milliseconds.
    pub start_ms: f64,
}

impl BenchServer {
    pub fn sample(&self) -> ProcessSample {
        sample_process(self.pid)
    }

    /// Ends the server (SIGKILL: nothing of a throwaway project needs keeping).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The benchmark's own process (the load generator), to tell its CPU from the server's.
pub fn sample_generator() -> ProcessSample {
    sample_process(std::process::id())
}

/// Reads `pid`'s CPU time and memory from `/proc`.
fn sample_process(pid: u32) -> ProcessSample {
    let mut sample = ProcessSample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        sample.cpu_ms = cpu_ms_from_stat(&stat).unwrap_or(0.0);
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        sample.rss_mib = kib_field(&status, "VmRSS:") / 1024.0;
        sample.peak_rss_mib = kib_field(&status, "VmHWM:") / 1024.0;
    }
    sample
}

/// User + system time from a `/proc/PID/stat` line, in milliseconds. The fields are counted
/// after the command name's closing parenthesis (the name may hold spaces); the clock is
/// USER_HZ, 100 on every Linux.
fn cpu_ms_from_stat(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) * 10.0)
}

fn kib_field(status: &str, name: &str) -> f64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "42 (conclave serve) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(cpu_ms_from_stat(stat), Some(3250.0));
    }

    #[test]
    fn memory_fields_are_read_in_kib() {
        let status = "Name:\tconclave\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), 10240.0);
        assert_eq!(kib_field(status, "VmHWM:"), 20480.0);
        assert_eq!(kib_field(status, "VmSwap:"), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample_process(std::process::id());
        assert!(sample.rss_mib > 0.0, "{sample:?}");
    }
}
