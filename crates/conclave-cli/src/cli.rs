//! The command line as clap sees it: every command, argument and flag, with its help text.
//!
//! Spellings here are a contract with scripts (`conclave task add`, `--json`, ...): change them only
//! by adding, never by renaming. Values that have a domain type (`T-3`, a message kind) are parsed
//! here, so that a malformed one is a usage error (exit 2) before anything is sent.

use clap::{Args, Parser, Subcommand};
use conclave_core::model::{MessageKind, NoteKind, TaskId};

#[derive(Debug, Parser)]
#[command(
    name = "conclave",
    version,
    about = "Coordinate several coding agents on one codebase",
    long_about = "Coordinate several coding agents on one codebase.\n\n\
        Commands find the project by walking up to the folder holding .conclave/ or conclave.toml, \
        the server from CONCLAVE_URL or .conclave/server.json, and act as the admin \
        (.conclave/admin.token) or, when CONCLAVE_AGENT and CONCLAVE_TOKEN are set, as that agent.\n\n\
        Exit codes: 0 ok, 1 error, 2 usage, 3 nothing ready to claim, 4 lease conflict, \
        5 server not reachable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create .conclave/ and a commented conclave.toml in the current folder
    Init,
    /// Run the coordination server in the foreground
    Serve(ServeArgs),
    /// Register agents and issue their tokens
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Create, list, claim and finish tasks
    #[command(subcommand)]
    Task(TaskCommand),
    /// Lease files or globs to the current agent (exits 4 when someone else holds one)
    Lock(LockArgs),
    /// Release file leases
    Unlock(UnlockArgs),
    /// List the file leases in force
    Locks(JsonFlag),
    /// Send and read messages
    #[command(subcommand)]
    Msg(MsgCommand),
    /// Record and search shared knowledge
    #[command(subcommand)]
    Note(NoteCommand),
    /// Show the event log (most recent events, oldest first), or follow it live
    Log(LogArgs),
    /// Print the whole event log as JSON Lines
    Export,
    /// Agents, tasks by status and leases at a glance
    Status(JsonFlag),
    /// Run Claude Code joined to the team as agent NAME (registers it, passes the Conclave MCP
    /// server and hooks); arguments after -- go to claude
    Claude(ClaudeArgs),
    /// The command hook Claude Code runs: reads the hook's JSON on stdin, prints the server's
    /// answer (always exits 0; fails open unless --strict)
    Hook(HookArgs),
    /// Measure claim, lock and message latency over loopback HTTP (a private server, temporary store)
    Bench(BenchArgs),
    /// Run the team of conclave.toml: start (or join) the server, then every agent as a headless
    /// Claude Code, and keep them healthy; exits 0 when the team has finished
    Up(UpArgs),
    /// Stop the team started by `conclave up` (agents first, then its server)
    Down,
    /// Follow one agent's live stream: tool calls, text and cost
    Attach(AttachArgs),
    /// A scripted three-agent team in a throwaway project, for a first look without an API key
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to make the throwaway project (default: a new temporary folder, kept afterwards)
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Stop when the scripted team has finished instead of waiting for Ctrl-C
    #[arg(long)]
    pub exit_when_done: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run in the background (output in .conclave/supervisor.log)
    #[arg(long)]
    pub detach: bool,
    /// Keep running when the team has nothing left to do
    #[arg(long)]
    pub stay: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The agent to follow
    pub name: String,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, each its own agent
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Requests per client and operation
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClaudeArgs {
    /// The agent's name on the team (registered if new, else given a fresh token)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The role it plays (tasks that name a role go to agents with that role)
    #[arg(long, value_name = "R")]
    pub role: Option<String>,
    /// Deny edits while the server cannot be reached (default from [server] strict)
    #[arg(long)]
    pub strict: bool,
    /// Arguments passed to claude unchanged
    #[arg(last = true, value_name = "CLAUDE ARGS")]
    pub claude_args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The hook event
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::commands::hook::EVENTS))]
    pub event: String,
    /// Fail closed: deny a file edit when the server cannot be reached (also CONCLAVE_STRICT=1)
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default from conclave.toml, else 127.0.0.1:7420; port 0 picks one)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Allow listening on a non-loopback address
    #[arg(long)]
    pub allow_remote: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent; prints its token on stdout
    Add {
        name: String,
        /// The role it plays (tasks that name a role go to agents with that role)
        #[arg(long, value_name = "R")]
        role: Option<String>,
        /// A capability tag (repeatable)
        #[arg(long = "cap", value_name = "TAG")]
        caps: Vec<String>,
        /// The model it runs on
        #[arg(long, value_name = "M")]
        model: Option<String>,
    },
    /// List the registered agents
    List(JsonFlag),
    /// Issue a fresh token for an agent; prints it on stdout
    Token { name: String },
    /// Ask the supervisor to end an agent's process (status stopped)
    Stop { name: String },
    /// Ask the supervisor to restart an agent's process (resuming its session)
    Restart { name: String },
    /// Ask the supervisor to stop waking an agent
    Pause { name: String },
    /// Ask the supervisor to wake an agent again (or start a stopped one)
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task; prints its id on stdout
    Add {
        title: String,
        #[arg(long, value_name = "B")]
        body: Option<String>,
        /// A task that must be done first (repeatable)
        #[arg(long, value_name = "ID", value_parser = parse_task_id)]
        after: Vec<TaskId>,
        /// The role an agent needs to claim it
        #[arg(long, value_name = "R")]
        role: Option<String>,
        /// A capability tag an agent needs to claim it (repeatable)
        #[arg(long = "cap", value_name = "TAG")]
        caps: Vec<String>,
        /// Higher runs first (default 0)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        priority: Option<i64>,
        /// The task this one is part of
        #[arg(long, value_name = "ID", value_parser = parse_task_id)]
        parent: Option<TaskId>,
    },
    /// List tasks
    List {
        /// Only tasks in this status (pending, ready, claimed, in_progress, review, blocked, done,
        /// failed, cancelled)
        #[arg(long, value_name = "S")]
        status: Option<String>,
        /// Only tasks held by this agent
        #[arg(long, value_name = "AGENT")]
        assignee: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one task
    Show {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long)]
        json: bool,
    },
    /// Change a task's title, body, priority, role or dependencies
    Edit {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long, value_name = "T")]
        title: Option<String>,
        #[arg(long, value_name = "B")]
        body: Option<String>,
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        priority: Option<i64>,
        /// The role an agent needs ("" clears it)
        #[arg(long, value_name = "R")]
        role: Option<String>,
        /// Add a dependency (repeatable)
        #[arg(long, value_name = "ID", value_parser = parse_task_id)]
        after: Vec<TaskId>,
    },
    /// Cancel a task
    Cancel {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long, value_name = "R")]
        reason: Option<String>,
    },
    /// Give a task to an agent
    Assign {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        agent: String,
    },
    /// Put a finished or failed task back to work
    Reopen {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long, value_name = "R")]
        reason: Option<String>,
    },
    /// Claim a task as the current agent (the best ready one without ID); prints its id, exits 3
    /// when nothing is ready
    Claim {
        #[arg(value_parser = parse_task_id)]
        id: Option<TaskId>,
    },
    /// Report progress on a task you hold
    Update {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long, value_name = "S", value_parser = ["in_progress", "blocked", "review"])]
        status: String,
        #[arg(long, value_name = "N")]
        note: Option<String>,
    },
    /// Finish a task you hold
    Done {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long, value_name = "S")]
        summary: Option<String>,
        /// A file the work touched (repeatable)
        #[arg(long = "file", value_name = "F")]
        files: Vec<String>,
    },
    /// Give up on a task you hold
    Fail {
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        #[arg(long, value_name = "R")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Paths or globs relative to the project root
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Share the lease with other readers instead of holding it alone
    #[arg(long)]
    pub shared: bool,
    /// Seconds the lease lasts (default from the server)
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<i64>,
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// The task the lease serves (default: your current task)
    #[arg(long, value_name = "ID", value_parser = parse_task_id)]
    pub task: Option<TaskId>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Release leases held by others (admin only)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum MsgCommand {
    /// Send a message to an agent, role:NAME or all; prints its id on stdout
    Send {
        to: String,
        body: String,
        #[arg(long, value_name = "T")]
        thread: Option<String>,
        /// chat, question, answer, alert or handoff
        #[arg(long, value_name = "K", value_parser = parse_message_kind)]
        kind: Option<MessageKind>,
        /// Deliver into the recipient's session as soon as possible
        #[arg(long)]
        urgent: bool,
    },
    /// Print your unread messages and acknowledge them
    Inbox {
        /// Wait up to this many seconds for a message when none is waiting
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List recent messages
    List {
        #[arg(long, value_name = "T")]
        thread: Option<String>,
        /// At most this many (most recent)
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Print one thread in full
    Thread {
        thread: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NoteCommand {
    /// Record a note; prints its id on stdout
    Add {
        title: String,
        /// decision, discovery, interface or warning
        #[arg(long, value_name = "K", value_parser = parse_note_kind)]
        kind: Option<NoteKind>,
        #[arg(long, value_name = "B")]
        body: Option<String>,
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        #[arg(long = "file", value_name = "F")]
        files: Vec<String>,
        /// The note this one replaces (N-<n>)
        #[arg(long, value_name = "N-ID")]
        supersedes: Option<String>,
        #[arg(long, value_name = "ID", value_parser = parse_task_id)]
        task: Option<TaskId>,
    },
    /// List notes (superseded ones only with --all)
    List {
        #[arg(long, value_name = "K", value_parser = parse_note_kind)]
        kind: Option<NoteKind>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Search notes, messages and task results
    Search {
        query: String,
        /// Only hits of this kind (note, message, task)
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Keep printing events as they happen
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Events by or about this agent
    #[arg(long, value_name = "A")]
    pub agent: Option<String>,
    #[arg(long, value_name = "T", value_parser = parse_task_id)]
    pub task: Option<TaskId>,
    /// An event kind (task.claimed) or a prefix ending in a dot (task.)
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// One JSON object per event (with --follow, one per line)
    #[arg(long)]
    pub json: bool,
    /// How many of the most recent events to show first (default 100)
    #[arg(long, value_name = "N")]
    pub limit: Option<i64>,
}

fn parse_task_id(text: &str) -> Result<TaskId, String> {
    text.parse()
        .map_err(|error: conclave_core::CoreError| error.to_string())
}

fn parse_message_kind(text: &str) -> Result<MessageKind, String> {
    text.parse()
        .map_err(|error: conclave_core::CoreError| error.to_string())
}

fn parse_note_kind(text: &str) -> Result<NoteKind, String> {
    text.parse()
        .map_err(|error: conclave_core::CoreError| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_priorities_and_repeated_flags_parse() {
        let cli = Cli::try_parse_from([
            "conclave",
            "task",
            "add",
            "x",
            "--priority",
            "-2",
            "--after",
            "T-1",
            "--after",
            "3",
        ])
        .expect("parse");
        let Command::Task(TaskCommand::Add {
            priority, after, ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(priority, Some(-2));
        assert_eq!(after, vec![TaskId(1), TaskId(3)]);
    }

    #[test]
    fn malformed_ids_are_usage_errors() {
        let error = Cli::try_parse_from(["conclave", "task", "show", "X-1"]).expect_err("bad id");
        assert!(error.to_string().contains("not a task id"), "{error}");
    }
}
