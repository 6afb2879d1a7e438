//! Keeps the long-running commands (`serve`, `up`, `demo`) running when whoever reads their
//! output goes away: `conclave up 2>&1 | head -1`, a closed terminal, a log shipper that died.
//!
//! `println!`/`eprintln!` panic when a write fails, and a long-running command prints from many
//! places (the server, the supervisor, its signal handler) at any time. Rather than trusting each
//! of them, [`OutputRelay::install`] points file descriptors 1 and 2 at pipes of our own, read by
//! one thread each that copies to the real stdout and stderr and, once a copy fails, keeps reading
//! and drops the rest. Our own writes therefore never fail, and the process serves until it is
//! signalled. [`OutputRelay::finish`] puts the real descriptors back and waits (briefly) for what
//! is still in the pipes, so the last lines (`conclave: server stopped`) are not lost.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

/// How long [`OutputRelay::finish`] waits for each pipe to drain (a child that inherited the
/// pipe and still runs would keep it open forever).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How long a panic on the main thread waits for its message to be relayed.
const PANIC_MESSAGE_WAIT: Duration = Duration::from_millis(200);

/// The relays of stdout and stderr; see the module docs.
#[derive(Debug)]
pub struct OutputRelay {
    streams: Vec<RelayedStream>,
}

#[derive(Debug)]
struct RelayedStream {
    which: Stream,
    /// A copy of the real descriptor, put back by `finish`.
    original: OwnedFd,
    /// Signalled by the copying thread when its pipe has reached its end.
    drained: mpsc::Receiver<()>,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn current(self) -> io::Result<OwnedFd> {
        match self {
            Stream::Stdout => io::stdout().as_fd().try_clone_to_owned(),
            Stream::Stderr => io::stderr().as_fd().try_clone_to_owned(),
        }
    }

    /// Makes descriptor 1 or 2 refer to what `fd` refers to.
    fn replace_with(self, fd: impl AsFd) -> io::Result<()> {
        match self {
            Stream::Stdout => nix::unistd::dup2_stdout(fd)?,
            Stream::Stderr => nix::unistd::dup2_stderr(fd)?,
        }
        Ok(())
    }
}

impl OutputRelay {
    /// Relays stdout and stderr through pipes of our own (see the module docs).
    pub fn install() -> io::Result<OutputRelay> {
        let mut streams = Vec::new();
        for which in [Stream::Stdout, Stream::Stderr] {
            // Everything printed so far goes straight to the real stream.
            let _ = io::stdout().flush();
            let original = which.current()?;
            let destination = File::from(which.current()?);
            let (reader, writer) = io::pipe()?;
            which.replace_with(&writer)?;
            drop(writer);
            let (done, drained) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("{which:?} relay").to_lowercase())
                .spawn(move || {
                    copy_until_closed(reader, destination);
                    let _ = done.send(());
                })?;
            streams.push(RelayedStream {
                which,
                original,
                drained,
            });
        }
        // A panic on the main thread ends the process right after its message is written into
        // the pipe: give the relay a moment to copy the message out, or it would be lost.
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous_hook(info);
            if std::thread::current().name() == Some("main") {
                std::thread::sleep(PANIC_MESSAGE_WAIT);
            }
        }));
        Ok(OutputRelay { streams })
    }

    /// Puts the real stdout and stderr back and waits a moment for the lines still on their way.
    pub fn finish(self) {
        let _ = io::stdout().flush();
        for stream in self.streams {
            // Replacing descriptor 1 or 2 closes our last end of the pipe (unless a child still
            // holds it), so the copying thread reads to the end and stops.
            if stream.which.replace_with(&stream.original).is_ok() {
                let _ = stream.drained.recv_timeout(DRAIN_WAIT);
            }
        }
    }
}

/// Copies `from` to `to` until `from` ends; once a write to `to` fails (its reader is gone), keeps
/// reading and drops the rest, so that writers to `from` never block or fail.
fn copy_until_closed(mut from: impl Read, mut to: impl Write) {
    let mut buffer = [0u8; 8192];
    let mut destination_open = true;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if destination_open && to.write_all(&buffer[..n]).is_err() {
            destination_open = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination whose reader has gone: every write fails like a closed pipe.
    struct ClosedPipe {
        writes: usize,
    }

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copies_everything_to_an_open_destination() {
        let mut copied = Vec::new();
        copy_until_closed(&b"one\ntwo\n"[..], &mut copied);
        assert_eq!(copied, b"one\ntwo\n");
    }

    #[test]
    fn a_closed_destination_is_tried_once_and_the_source_still_read_to_its_end() {
        let (reader, mut writer) = io::pipe().expect("pipe");
        // More than a pipe holds: the writer would block forever if the copy stopped reading.
        let writing = std::thread::spawn(move || {
            let chunk = [b'x'; 4096];
            for _ in 0..64 {
                writer.write_all(&chunk)?;
            }
            io::Result::Ok(())
        });
        let mut closed = ClosedPipe { writes: 0 };
        copy_until_closed(reader, &mut closed);
        assert!(writing.join().expect("writer thread").is_ok());
        assert_eq!(closed.writes, 1);
    }
}
