//! The failures of an API call that callers tell apart: an error the server answered with, and a
//! server that could not be reached. They travel inside `anyhow::Error`; callers recover them by
//! downcasting (the CLI turns them into exit codes).

use std::fmt;

use conclave_core::LeaseConflict;

/// An error the server answered with (`{"error":{"code":..,"message":..}}`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    /// The stable machine-readable code (`not_found`, `lease_conflict`, ...).
    pub code: String,
    pub message: String,
    pub conflicts: Vec<LeaseConflict>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conflicts.is_empty() {
            return f.write_str(&self.message);
        }
        // Rendered here rather than taken from the message so that the time left is current.
        let parts: Vec<String> = self.conflicts.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ApiError {}

/// The server could not be reached at all (or no server is known for this project).
#[derive(Debug, Clone)]
pub struct Unreachable {
    pub what: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; start it with `conclave serve`, or `conclave up` to run the team",
            self.what
        )
    }
}

impl std::error::Error for Unreachable {}
