//! Integration tests of the `conclave` binary: real processes, a real server on loopback, a real
//! database in a temporary project. One test binary, one module per area.

mod attach;
mod attribution;
mod bench;
mod branch_travel;
mod compare;
mod config;
mod coordination;
mod errors;
mod follow;
mod hook;
mod hosts;
mod pipeline;
mod pipes;
mod queue;
mod retry;
mod serve;
mod steering;
mod store;
mod support;
mod task_diff;
mod terminal;
mod tokens;
mod tour;
