//! Conclave's core: the domain model, its rules, and the durable store that enforces them.
//!
//! Nothing here knows about HTTP, MCP or processes: the server and the CLI call into this crate.
//! Every change of state happens in one [`store::Tx`] and writes its [`model::Event`] to the
//! append-only log in the same transaction.

pub mod audience;
pub mod config;
pub mod error;
pub mod event;
pub mod model;
pub mod paths;
pub mod project;
pub mod store;

pub use error::{CoreError, LeaseConflict, Result};
pub use store::{Store, StoreConfig};
