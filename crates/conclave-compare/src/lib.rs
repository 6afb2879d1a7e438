//! `conclave compare` (issue 16): the same task, from the same commit, done in several ways of
//! working — one `claude -p` session, the `conclave loop`, a coordinated team, as many
//! uncoordinated instances sharing one tree, a pipeline — each measured the same way and checked
//! by the same command, so that a user can see for their own repository whether coordination
//! pays.
//!
//! Every run (a way, a repeat) gets a fresh git worktree of the project at one commit, under the
//! comparison's folder, with its own `conclave.toml` and its own private `conclave serve`: its
//! own event log, so that every figure of the run is read back from that log and the agents'
//! records ([`measure`]) whichever way ran. The way runs to its end, its budget or the timeout;
//! then the check runs in the run's tree. The worktrees stay for inspection.
//!
//! - [`ways`]: how each way is run.
//! - [`measure`]: a run's figures, from its server.
//! - [`report`]: medians and spread, the JSON, the Markdown report.
//! - [`chart`]: a bar chart per metric, SVG made by `plotters`.

pub mod chart;
pub mod measure;
pub mod report;
pub mod ways;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors of the comparison itself (not of the ways it runs, which are recorded).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("unknown way {0:?}: expected single, loop, team, uncoordinated or pipeline")]
    UnknownWay(String),
    #[error("no ways to compare")]
    NoWays,
    #[error("the task file {0} is empty")]
    EmptyTask(PathBuf),
    #[error(
        "{0} is not inside a git repository with a commit: compare runs each way in a git worktree"
    )]
    NoCommit(PathBuf),
}

/// A way of working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Way {
    /// One `claude -p` session with the whole task.
    Single,
    /// `conclave loop` with the check as `--until`.
    Loop,
    /// A team (`conclave up`): the team file, or an architect and two coders.
    Team,
    /// As many plain `claude -p` sessions as the team has agents, each with the whole task, no
    /// Conclave tools or hooks, one shared tree.
    Uncoordinated,
    /// A coder → reviewer pipeline (`conclave up` with a `[[pipeline]]`).
    Pipeline,
}

impl Way {
    pub const ALL: [Way; 5] = [
        Way::Single,
        Way::Loop,
        Way::Team,
        Way::Uncoordinated,
        Way::Pipeline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Way::Single => "single",
            Way::Loop => "loop",
            Way::Team => "team",
            Way::Uncoordinated => "uncoordinated",
            Way::Pipeline => "pipeline",
        }
    }
}

impl fmt::Display for Way {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Way {
    type Err = CompareError;

    fn from_str(text: &str) -> Result<Way, CompareError> {
        Way::ALL
            .into_iter()
            .find(|way| way.as_str() == text.trim())
            .ok_or_else(|| CompareError::UnknownWay(text.to_string()))
    }
}

/// `single,loop,team` → the ways, in the order given, each once.
pub fn parse_ways(text: &str) -> Result<Vec<Way>, CompareError> {
    let mut ways = Vec::new();
    for word in text.split(',').filter(|word| !word.trim().is_empty()) {
        let way: Way = word.parse()?;
        if !ways.contains(&way) {
            ways.push(way);
        }
    }
    if ways.is_empty() {
        return Err(CompareError::NoWays);
    }
    Ok(ways)
}

/// What to compare, and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The project's root (a git repository with a commit).
    pub project_root: PathBuf,
    /// The task text every way is given.
    pub task: String,
    /// The check command (`sh -c`, in the run's tree): exit 0 means the task is done.
    pub check: String,
    pub ways: Vec<Way>,
    /// A team file for `team` (and the instance count of `uncoordinated`); none means an
    /// architect and two coders with the project's `[defaults]`.
    pub team_file: Option<PathBuf>,
    pub repeat: u32,
    /// What one run may spend, in dollars.
    pub budget_usd: Option<f64>,
    /// How long one run may take (the check not counted).
    pub timeout: Duration,
    /// The folder the comparison writes into (its own subfolder is made in it).
    pub out_dir: PathBuf,
    /// The `conclave` binary, for the private servers, `up` and `loop`.
    pub conclave_bin: PathBuf,
    /// The Claude Code binary every way runs.
    pub claude_bin: PathBuf,
    /// The model is the scripted stand-in: said in the output and the report.
    pub scripted: bool,
    /// The characters of the Conclave tool definitions in each model request.
    pub tool_definition_chars: usize,
    /// How long the check may run.
    pub check_timeout: Duration,
    /// Cancelled by a person (Ctrl-C): the running way is stopped like at its timeout, recorded
    /// as `interrupted`, and no further run starts.
    pub interrupt: tokio_util::sync::CancellationToken,
}

/// The figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub way: String,
    /// 1 for the first repeat.
    pub repeat: u32,
    /// The run's worktree (with its `.conclave/` and event log).
    pub dir: PathBuf,
    /// How the way ended: `finished`, `timeout`, `budget`, `stalled`, `failed`, `interrupted`,
    /// or `error` (the comparison could not run it; see `error`).
    pub ended: String,
    pub error: Option<String>,
    pub wall_secs: f64,
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    /// Model calls, every agent together.
    pub turns: i64,
    /// Agents (client sessions of their own) that took part.
    pub agents: i64,
    pub files_changed: i64,
    /// Merge-queue send-backs for conflicts (`queue.sent_back` with reason `conflict`).
    pub merge_conflicts: i64,
    /// Pipeline send-backs and merge-queue send-backs of other kinds.
    pub send_backs: i64,
    pub lease_denials: i64,
    /// The check's exit code; none when it timed out or could not run.
    pub check_exit: Option<i32>,
    pub check_passed: bool,
    /// The check's last output lines.
    pub check_tail: String,
    /// Estimated coordination tokens (every agent), and their share of the input.
    pub coordination_tokens: i64,
    pub coordination_percent: f64,
}

/// The comparison as written to `compare-<time>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Comparison {
    /// `compare-20261201-021500`.
    pub name: String,
    pub started_at: String,
    /// The model was the scripted stand-in: the figures show the machinery, not a model.
    pub scripted: bool,
    pub commit: String,
    pub task: String,
    pub check: String,
    pub ways: Vec<String>,
    pub repeat: u32,
    pub budget_usd: Option<f64>,
    pub timeout_secs: u64,
    /// The tokens estimated from characters use this many characters a token.
    pub chars_per_token: f64,
    pub runs: Vec<RunRecord>,
    /// Per way, per metric: median, least and most over the repeats.
    pub summary: BTreeMap<String, BTreeMap<String, report::Spread>>,
}

pub use ways::{Progress, compare};
