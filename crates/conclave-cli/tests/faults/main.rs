//! The fault suite: real `conclave serve` processes on loopback, hurt the way a machine hurts them.
//!
//! - `sigkill`: N rounds of SIGKILL under concurrent agents' acknowledged writes, with the event
//!   log, the live stream and idempotent retries checked after every restart;
//! - `agents`: an agent-like client SIGKILLed or SIGSTOPped while it holds a claim and a lease;
//! - `storage`: the database on a read-only mount, and on a full filesystem that later grows.
//!
//! Bounded for CI (a few rounds, the whole binary well under a minute); `CONCLAVE_FAULT_ROUNDS`
//! asks for more SIGKILL rounds.

mod agents;
mod harness;
mod sigkill;
mod storage;
