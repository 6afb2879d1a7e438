//! The failures the CLI tells apart, and the one place that turns any error into an exit code.
//!
//! Commands return `anyhow::Result`; the errors below travel inside it and [`exit_code`] recovers
//! them by downcasting, so a command never calls `process::exit` itself.

use std::fmt;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_NOTHING_READY: u8 = 3;
pub const EXIT_LEASE_CONFLICT: u8 = 4;
pub const EXIT_UNREACHABLE: u8 = 5;
/// `conclave up`: the team stalled (agents idle or gone, work left).
pub const EXIT_STALLED: u8 = 6;
/// `conclave up`: no agent could run at all (authentication, a missing binary, bad flags).
pub const EXIT_FAILED: u8 = 7;

pub use conclave_client::{ApiError, Unreachable};

/// `task claim` found nothing it could take.
#[derive(Debug, Clone)]
pub struct NothingReady {
    pub message: String,
}

impl fmt::Display for NothingReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NothingReady {}

/// `conclave up` ended with an outcome that is not a success; it printed why already.
#[derive(Debug, Clone)]
pub struct TeamEnded {
    /// `stalled` or `failed`.
    pub outcome: &'static str,
    pub code: u8,
}

impl fmt::Display for TeamEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the team {} (exit {}); the lines above say why",
            self.outcome, self.code
        )
    }
}

impl std::error::Error for TeamEnded {}

/// The exit code for an error that ended a command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<Unreachable>() {
            return EXIT_UNREACHABLE;
        }
        if cause.is::<NothingReady>() {
            return EXIT_NOTHING_READY;
        }
        if let Some(ended) = cause.downcast_ref::<TeamEnded>() {
            return ended.code;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>()
            && api.code == "lease_conflict"
        {
            return EXIT_LEASE_CONFLICT;
        }
    }
    EXIT_ERROR
}

/// The error as one line for people: the whole context chain, newlines folded.
pub fn one_line(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str) -> anyhow::Error {
        ApiError {
            status: 409,
            code: code.to_string(),
            message: "m".to_string(),
            conflicts: Vec::new(),
        }
        .into()
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        let cases: Vec<(anyhow::Error, u8)> = vec![
            (api("lease_conflict"), 4),
            (api("not_found"), 1),
            (Unreachable { what: "x".into() }.into(), 5),
            (
                NothingReady {
                    message: "x".into(),
                }
                .into(),
                3,
            ),
            (anyhow::anyhow!("plain"), 1),
            (
                anyhow::Error::from(Unreachable { what: "x".into() }).context("while listing"),
                5,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(exit_code(&error), expected, "{error:#}");
        }
    }

    #[test]
    fn messages_are_one_line() {
        let error = anyhow::anyhow!("first\nsecond").context("outer");
        assert_eq!(one_line(&error), "outer: first second");
    }
}
