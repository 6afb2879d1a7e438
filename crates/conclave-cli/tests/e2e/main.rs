//! End-to-end tests of Conclave with the real Claude Code CLI: real `conclave serve` and
//! `conclave claude` processes, the pinned `claude` binary, and the scripted stand-in for the
//! Anthropic API on loopback. Each test has its own throwaway git repo and `HOME`s, and the
//! tests run one at a time ([`support::serial`]).
//!
//! Without the CLI (and without npm to install it) a test prints `skipped: <reason>` and
//! records the skip in the file `CONCLAVE_SKIP_LOG` names, which `scripts/test.sh` counts;
//! under `CI=true` it fails instead.

mod attribution;
mod compare;
mod demo;
mod hosts;
mod loop_cmd;
mod outages;
mod outcomes;
mod readme_team;
mod servers;
mod signals;
mod supervisor;
mod supervisor_control;
mod support;
mod team;
mod tool_list;
mod up_modes;
mod worktrees;
