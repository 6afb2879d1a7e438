//! Running a project's shell command (`[merge] setup`, `[merge] check`) with a time limit, in its
//! own process group, keeping only the last lines of its combined output.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{GitError, Result};

/// How many trailing lines of a command's output an outcome keeps.
pub const TAIL_LINES: usize = 40;
/// And at most this many bytes of them.
pub const TAIL_BYTES: usize = 8 * 1024;

/// A shell command line run with `sh -c` and a time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    pub command: String,
    pub timeout: Duration,
}

impl ShellCommand {
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        ShellCommand {
            command: command.into(),
            timeout,
        }
    }
}

/// How a shell command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutcome {
    /// The exit code; `None` when a signal ended it (including our kill at the time limit).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The last [`TAIL_LINES`] lines of stdout and stderr interleaved, bounded to [`TAIL_BYTES`].
    pub output_tail: String,
    pub elapsed: Duration,
}

impl ShellOutcome {
    pub fn succeeded(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// One line for an error message: "exit 3", "killed after 30 s".
    pub fn describe(&self) -> String {
        if self.timed_out {
            format!("killed after {} s (time limit)", self.elapsed.as_secs())
        } else {
            match self.exit_code {
                Some(code) => format!("exit {code}"),
                None => "ended by a signal".to_string(),
            }
        }
    }
}

/// Runs `command` in `dir` and waits for it, killing its whole process group at the time limit.
/// Whatever the command left running in its group is stopped when it ends too, so a check that
/// starts a server in the background does not outlive the check.
pub fn run_shell(command: &ShellCommand, dir: &Path) -> Result<ShellOutcome> {
    let started = Instant::now();
    let (mut reader, writer) =
        std::io::pipe().map_err(|source| GitError::io("creating a pipe", source))?;
    let writer_for_stderr = writer
        .try_clone()
        .map_err(|source| GitError::io("creating a pipe", source))?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .arg("-c")
            .arg(&command.command)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_for_stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| {
                GitError::io(
                    format!("running `{}` in {}", command.command, dir.display()),
                    source,
                )
            })?
    };
    // The Command (holding the pipe's write ends) is gone: only the child's copies keep it open.
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut tail = TailBuffer::default();
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => tail.push(&chunk[..n]),
            }
        }
        let _ = sender.send(tail.into_text());
    });
    let group = Pid::from_raw(child.id() as i32);
    let deadline = started + command.timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(GitError::io("waiting for a command", source)),
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = killpg(group, Signal::SIGTERM);
            let grace = Instant::now() + Duration::from_secs(2);
            while Instant::now() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(group, Signal::SIGKILL);
            break child
                .wait()
                .map_err(|source| GitError::io("waiting for a command", source))?;
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Stop what the command left behind in its group, which would also hold the pipe open.
    let _ = killpg(group, Signal::SIGKILL);
    let output_tail = receiver
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_else(|_| "(output unavailable: a process outside the group holds it)".into());
    Ok(ShellOutcome {
        exit_code: status.code(),
        timed_out,
        output_tail,
        elapsed: started.elapsed(),
    })
}

/// Keeps the last bytes of a stream (enough for [`TAIL_LINES`] lines within [`TAIL_BYTES`]).
#[derive(Default)]
struct TailBuffer {
    bytes: Vec<u8>,
}

impl TailBuffer {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        let keep = TAIL_BYTES * 2;
        if self.bytes.len() > keep {
            let cut = self.bytes.len() - keep;
            self.bytes.drain(..cut);
        }
    }

    fn into_text(self) -> String {
        bounded_tail(
            &String::from_utf8_lossy(&self.bytes),
            TAIL_LINES,
            TAIL_BYTES,
        )
    }
}

/// The last `max_lines` lines of `text`, cut further to at most `max_bytes` bytes (on a
/// character boundary), with a marker when something was cut.
pub fn bounded_tail(text: &str, max_lines: usize, max_bytes: usize) -> String {
    let text = text.trim_end_matches('\n');
    let lines: Vec<&str> = text.lines().collect();
    let skipped_lines = lines.len().saturating_sub(max_lines);
    let mut tail = lines[skipped_lines..].join("\n");
    let mut cut = skipped_lines > 0;
    if tail.len() > max_bytes {
        let mut start = tail.len() - max_bytes;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail = tail[start..].to_string();
        cut = true;
    }
    if cut { format!("[…]\n{tail}") } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(command: &str, timeout_ms: u64) -> ShellOutcome {
        let dir = tempfile::tempdir().expect("tempdir");
        run_shell(
            &ShellCommand::new(command, Duration::from_millis(timeout_ms)),
            dir.path(),
        )
        .expect("run")
    }

    #[test]
    fn exit_code_and_interleaved_output_tail_are_kept() {
        let outcome = run(
            "for i in $(seq 1 100); do echo line$i; done; echo oops >&2; exit 3",
            10_000,
        );
        assert_eq!(outcome.exit_code, Some(3));
        assert!(!outcome.succeeded());
        assert!(
            outcome.output_tail.starts_with("[…]\n"),
            "{}",
            outcome.output_tail
        );
        assert!(
            outcome.output_tail.ends_with("line100\noops"),
            "{}",
            outcome.output_tail
        );
        assert!(!outcome.output_tail.contains("line60\n"));
        assert_eq!(outcome.output_tail.lines().count(), TAIL_LINES + 1);
    }

    #[test]
    fn a_command_past_its_time_limit_is_killed_with_its_children() {
        let outcome = run("echo started; sleep 30 & sleep 30; echo never", 300);
        assert!(outcome.timed_out);
        assert!(!outcome.succeeded());
        assert!(
            outcome.elapsed < Duration::from_secs(10),
            "{:?}",
            outcome.elapsed
        );
        assert_eq!(outcome.output_tail, "started");
    }

    #[test]
    fn bounded_tail_cuts_on_a_character_boundary() {
        let text = "é".repeat(100);
        let tail = bounded_tail(&text, 10, 11);
        assert!(tail.starts_with("[…]\n"));
        assert!(tail.len() <= 11 + "[…]\n".len());
    }
}
