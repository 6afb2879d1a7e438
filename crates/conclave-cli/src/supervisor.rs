//! The supervisor behind `conclave up`: it runs the team described by `conclave.toml` and keeps
//! it healthy without a person.
//!
//! - [`plan`]: who the agents are (`count` replicas, settings merged with `[defaults]`) and the
//!   exact command line each one's client gets.
//! - [`process`]: starting a client in its own process group, reading its stdout, and ending
//!   it with escalation (stdin closed, then SIGINT, SIGTERM, SIGKILL).
//! - [`stream`]: what a `stream-json` line means (session id, context in use, tool calls, cost),
//!   and the rotated raw copy kept at `.conclave/agents/NAME/stream.jsonl`.
//! - [`wake`]: the user message that wakes an idle agent, quoting what arrived (bounded).
//! - [`follow`]: the server's event stream (SSE), resumed after the last event seen.
//! - [`team`]: the one task that owns every agent's state and acts on everything that happens
//!   (lines, exits, events, the clock): status reports, waking, crash restarts with backoff,
//!   recycling, budgets, hibernation, control requests, and finishing when the team is done.

pub mod follow;
pub mod plan;
pub mod process;
pub mod stream;
pub mod team;
pub mod wake;

pub use team::{Supervisor, SupervisorOptions, check_team};
