//! The fault suite: real `conclave serve` processes on loopback, hurt the way a machine hurts them.
//!
//! - `sigkill`: N rounds of SIGKILL under concurrent agents' acknowledged writes, with the event
//!   log, the live stream and idempotent retries checked after every restart;
//! - `agents`: an agent-like client SIGKILLed or SIGSTOPped while it holds a claim and a lease;
//! - `storage`: the database on a read-only mount, and on a full filesystem that later grows;
//! - `memory`: a stalled live-stream reader while an agent makes the largest writes allowed,
//!   with the server process's peak RSS bounded.
//!
//! Bounded for CI (a few rounds, the whole binary well under a minute); `CONCLAVE_FAULT_ROUNDS`
//! asks for more SIGKILL rounds.

mod agents;
mod harness;
mod memory;
mod sigkill;
mod storage;
