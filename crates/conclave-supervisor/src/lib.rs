//! The supervisor behind `conclave up`: it runs the team described by `conclave.toml` and keeps
//! it healthy without a person. The `conclave` binary is a thin layer of commands over it.
//!
//! - [`plan`]: who the agents are (`count` replicas, settings merged with `[defaults]`) and the
//!   exact command line each one's client gets.
//! - [`agent_files`]: what an agent's client needs before it starts (its registration, token,
//!   `mcp.json` and `settings.json`), shared with `conclave claude`.
//! - [`machine`]: the team as a state machine, per agent: restarts with backoff, recycling,
//!   budgets, hibernation, wake-ups, control requests, and finishing when the team is done. No
//!   I/O: it answers each input with effects.
//! - [`team`]: the driver that feeds the machine (lines, exits, events, the clock) and carries
//!   out its effects through [`process::ProcessSide`] and [`team::ServerSide`].
//! - [`process`]: starting a client in its own process group, reading its stdout, and ending
//!   it with escalation (stdin closed, then SIGINT, SIGTERM, SIGKILL).
//! - [`stream`]: what a `stream-json` line means (session id, context in use, tool calls, cost),
//!   the one reader of it (`conclave attach` uses it too), and the rotated raw copy kept at
//!   `.conclave/agents/NAME/stream.jsonl`.
//! - [`probe`]: the check of each agent's client (binary, version, one turn) `up --detach`
//!   makes before it returns.
//! - [`pricing`]: a dated per-model rate table that prices each model call as it arrives.
//! - [`coordination`]: what coordination costs each agent in context (tool definitions, Conclave
//!   tool traffic, injected text, handoffs), against all its input.
//! - [`wake`]: the user message that wakes an idle agent, quoting what arrived (bounded).
//! - [`loop_run`]: `conclave loop`, a fresh client per iteration until a check passes.
//! - [`loop_agent`]: `mode = "loop"` agents, loops run by `conclave up` beside the team.
//! - [`follow`]: the server's event stream, resumed after the last event seen.
//! - [`worktrees`]: `isolation = "worktree"` agents' own git worktrees, repaired and made before
//!   the team starts.
//! - [`relay`]: the loopback relay through which agents reach remote servers (failover, TLS).
//! - [`worktree_steps`]: the git steps of worktree agents on a host away from the server
//!   (switch on claim, commit and push on done), run by the relay.

pub mod agent_files;
pub mod coordination;
pub mod follow;
pub mod loop_agent;
pub mod loop_run;
pub mod machine;
pub mod plan;
pub mod pricing;
pub mod probe;
pub mod process;
pub mod relay;
pub mod stream;
pub mod team;
pub mod wake;
pub mod worktree_steps;
pub mod worktrees;

pub use machine::Outcome;
pub use team::{Supervisor, SupervisorOptions, check_share, check_team};
