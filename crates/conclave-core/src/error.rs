//! The typed errors of the domain and the store.
//!
//! Every variant maps to one stable machine-readable `code()` (used verbatim in the HTTP error body
//! and by the CLI's exit codes), so callers branch on the variant, never on message text.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::TaskId;

/// One lease that stands in the way of a request, named so that the refused agent knows whom to ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LeaseConflict {
    /// The path or glob that was asked for.
    pub requested: String,
    /// The pattern of the lease that is held.
    pub held: String,
    pub holder: String,
    pub task: Option<TaskId>,
    pub mode: crate::model::LeaseMode,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Display for LeaseConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is leased by {}", self.held, self.holder)?;
        if let Some(task) = self.task {
            write!(f, " for {task}")?;
        }
        let left = (self.expires_at - Utc::now()).num_seconds().max(0);
        write!(
            f,
            " until {} ({} left)",
            self.expires_at.format("%H:%M:%S UTC"),
            crate::model::format_duration_secs(left)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotReady(String),
    #[error("dependency cycle: {0}")]
    Cycle(String),
    #[error("{}", lease_conflict_message(.0))]
    LeaseConflict(Vec<LeaseConflict>),
    /// A lease grant could not be decided within its bounded work under the writer lock
    /// (`store::leases::SnapshotStale`); nothing was written, and the request may be retried.
    #[error("{0}; nothing was granted, retry the request")]
    LeaseSnapshotStale(String),
    #[error("idempotency key {0:?} was already used for a different request")]
    IdempotencyMismatch(String),
    #[error("storage error: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("storage error: {0}")]
    Json(#[from] serde_json::Error),
    /// An error of the PostgreSQL engine, or a value that does not fit its column.
    #[error("storage error: {0}")]
    Database(String),
}

impl From<postgres::Error> for CoreError {
    fn from(error: postgres::Error) -> Self {
        // The server's own message and SQLSTATE say more than the client's summary.
        match error.as_db_error() {
            Some(db) => CoreError::Database(format!(
                "{} ({}){}",
                db.message(),
                db.code().code(),
                db.detail().map(|d| format!(": {d}")).unwrap_or_default()
            )),
            None => CoreError::Database(crate::store::pg_tls::describe(&error)),
        }
    }
}

fn lease_conflict_message(conflicts: &[LeaseConflict]) -> String {
    let parts: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
    let mut message = parts.join("; ");
    if conflicts.len() >= crate::store::MAX_REPORTED_CONFLICTS {
        message.push_str(" (the first conflicts found; there may be more)");
    }
    message
}

impl CoreError {
    /// The stable code of this error, as it appears in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::InvalidInput(_) => "invalid_input",
            CoreError::NotFound(_) => "not_found",
            CoreError::Conflict(_) => "conflict",
            CoreError::Forbidden(_) => "forbidden",
            CoreError::NotReady(_) => "not_ready",
            CoreError::Cycle(_) => "cycle",
            CoreError::LeaseConflict(_) => "lease_conflict",
            CoreError::LeaseSnapshotStale(_) => "lease_check_busy",
            CoreError::IdempotencyMismatch(_) => "idempotency_mismatch",
            CoreError::Storage(_) | CoreError::Json(_) | CoreError::Database(_) => "internal",
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        CoreError::InvalidInput(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        CoreError::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        CoreError::Conflict(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        CoreError::Forbidden(message.into())
    }
}

impl From<crate::paths::PathError> for CoreError {
    fn from(error: crate::paths::PathError) -> Self {
        CoreError::InvalidInput(error.to_string())
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
