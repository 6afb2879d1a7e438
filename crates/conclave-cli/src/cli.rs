//! The command line as clap sees it: every command, argument and flag, with its help text.
//!
//! Spellings here are a contract with scripts (`conclave task add`, `--json`, ...): change them only
//! by adding, never by renaming. Values that have a domain type (`T-3`, a message kind) are parsed
//! here, so that a malformed one is a usage error (exit 2) before anything is sent.

use clap::{Args, Parser, Subcommand};
use conclave_core::model::{Isolation, MessageKind, NoteKind, TaskId, TaskStatus};

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
    /// Move a project's store: `conclave store migrate --from .conclave/conclave.db --to
    /// postgres://...`
    #[command(subcommand)]
    Store(StoreCommand),
    /// Lease files or globs to the current agent (exits 4 when someone else holds one)
    Lock(LockArgs),
    /// Release file leases
    Unlock(UnlockArgs),
    /// List the file leases in force
    Locks(JsonFlag),
    /// Show the merge queue, or pause, resume, skip, retry or merge an entry by hand
    Queue(QueueArgs),
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
    /// Measure the server over loopback: its HTTP floor, every operation over HTTP, MCP and hooks,
    /// teams of simulated agents, and a long history (a private server on a temporary project)
    Bench(BenchArgs),
    /// Run the team of conclave.toml: start (or join) the server, then every agent as a headless
    /// Claude Code, and keep them healthy until the team has an outcome
    #[command(after_help = UP_OUTCOMES)]
    Up(UpArgs),
    /// The `claude -p` loop: a fresh Claude Code per iteration, given the prompt and a summary of
    /// the team's state, until the check passes. Exit codes: 0 the check passed; 6 --max
    /// iterations or the --budget ran out; 7 no iteration could run (client missing, not logged
    /// in); 130 interrupted (Ctrl-C stops the running iteration and records it)
    Loop(LoopArgs),
    /// Run one task in several ways of working (single session, loop, team, uncoordinated
    /// instances, pipeline), each in a fresh worktree at the same commit, then the check; prints
    /// a table as it goes and writes the JSON, a Markdown report and charts into one folder.
    /// Exit 0 when every way ran (the report says which passed the check), 1 on its own errors
    Compare(CompareArgs),
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
    /// Each agent works in its own git worktree; the merge queue lands their branches on
    /// conclave/integration after a check (docs/worktrees.md)
    #[arg(long)]
    pub worktrees: bool,
}

/// The outcomes of `conclave up`, in its `--help` (docs/supervisor.md says the same).
const UP_OUTCOMES: &str = "\
Outcomes (the last lines printed name it, with a line per agent):
  finished  every task is done or cancelled                          exit 0
  stalled   agents idle or gone and tasks left; each task left is
            named with why none can proceed (nobody fits it, its
            agents crashed or were stopped by a budget, blocked,
            failed, held by a crashed agent)                         exit 6
  failed    no agent could run at all: a refused login or API key
            (at the first 401; fix: run `claude` once and /login,
            or set ANTHROPIC_API_KEY), a missing client binary,
            flags the client refuses (its error quoted)              exit 7
  stopped   by a person: `conclave down`, SIGTERM or Ctrl-C          exit 0
            a second Ctrl-C ends at once                             exit 130
A task waiting for approval, or in a paused merge queue, waits for a
person (a task the merge queue is landing, for the queue): `up` keeps
running and says so. A `mode = \"loop\"` agent's loop runs to its end first.
Failures (authentication, rate limits, refused flags, error results,
crash loops, a spent team budget) are printed as ALERT lines the moment
they happen and counted in `conclave status`.";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run in the background (output in .conclave/supervisor.log), after checking each agent's
    /// client: binary, version and one probe turn with its env and flags (exit 7 if refused)
    #[arg(long)]
    pub detach: bool,
    /// Keep running when the team has nothing left to do
    #[arg(long)]
    pub stay: bool,
    /// Address the in-process server listens on (default from [server] listen in conclave.toml,
    /// else 127.0.0.1:7420; port 0 picks one); ignored when joining a running server
    #[arg(long, value_name = "ADDR", conflicts_with = "server")]
    pub listen: Option<String>,
    /// Run this host's share of the team against a remote server (`URL1,URL2`: the next one
    /// when one cannot be reached); only the agents with `host =` this machine start. The
    /// admin token is read from .conclave/admin.token of this clone (docs/scale-out.md)
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// This machine's name, matched against `host =` of each [[agent]] (default: its hostname)
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoopArgs {
    /// The file holding the prompt every iteration is given
    #[arg(long, value_name = "FILE")]
    pub prompt: std::path::PathBuf,
    /// The check run after each iteration (with sh -c in the project root); the loop stops when
    /// it exits 0
    #[arg(long, value_name = "CMD")]
    pub until: Option<String>,
    /// Stop after N iterations (exit 6 unless the check passed)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max: Option<u32>,
    /// Stop once the iterations have cost this many US dollars in all (exit 6)
    #[arg(long, value_name = "USD")]
    pub budget: Option<f64>,
    /// The model each iteration uses (default: the client's own)
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// The agent the iterations run as (registered if new)
    #[arg(long, value_name = "NAME", default_value = "loop")]
    pub agent: String,
    /// Claude Code's --permission-mode for each iteration (for example acceptEdits)
    #[arg(long, value_name = "MODE")]
    pub permission_mode: Option<String>,
    /// Seconds the check may run before it counts as failed
    #[arg(long, value_name = "SECS", default_value_t = conclave_supervisor::loop_run::DEFAULT_CHECK_TIMEOUT.as_secs())]
    pub check_timeout: u64,
    /// Wait for a person before each iteration after the first: Enter continues, s stops
    /// (exit 6), e edits the prompt in $EDITOR; or answer on the dashboard's "waiting for you"
    /// list (POST /api/agents/NAME/confirm)
    #[arg(long)]
    pub confirm: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The file holding the task every way is given
    #[arg(long, value_name = "FILE")]
    pub task: std::path::PathBuf,
    /// The check run in each way's tree when it has ended (sh -c); exit 0 means the task is done
    #[arg(long, value_name = "CMD")]
    pub check: String,
    /// The ways to run, comma-separated
    #[arg(
        long,
        value_name = "WAYS",
        default_value = "single,loop,team,uncoordinated,pipeline"
    )]
    pub ways: String,
    /// The team file for the team way (default: an architect and two coders with the project's
    /// [defaults]); its agent count is the uncoordinated way's
    #[arg(long, value_name = "FILE")]
    pub team: Option<std::path::PathBuf>,
    /// Runs per way (medians and spread are reported)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// What one run may spend, in US dollars
    #[arg(long, value_name = "USD")]
    pub budget: Option<f64>,
    /// How long one run may take, the check not counted (30s, 10m, 1h)
    #[arg(long, value_name = "DUR", default_value = "30m")]
    pub timeout: String,
    /// The folder the comparison's own folder is made in (default .conclave/compare)
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    /// The model is Conclave's scripted stand-in (CI, docs): says so in the output and the report
    #[arg(long)]
    pub scripted: bool,
    /// Seconds the check may run before it counts as failed
    #[arg(long, value_name = "SECS", default_value_t = conclave_supervisor::loop_run::DEFAULT_CHECK_TIMEOUT.as_secs())]
    pub check_timeout: u64,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The agent to follow
    pub name: String,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Requests per operation in the one-client phases, and per client in the sixteen-client ones
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Team sizes of the mixed runs, comma-separated (the largest also runs with every agent's
    /// live stream open at --rate)
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub agents: Vec<usize>,
    /// Operations per team run, all agents together
    #[arg(long, default_value_t = 8000)]
    pub team_ops: usize,
    /// Operations per second of the fixed-rate run (0 skips it)
    #[arg(long, default_value_t = 1000)]
    pub rate: usize,
    /// Seconds of each fixed-rate run (the streams run and the paced run)
    #[arg(long, default_value_t = 5)]
    pub rate_secs: u64,
    /// Agents of the paced run: a team at --paced-rate without streams, to read latency when
    /// the server is not saturated (0 skips it)
    #[arg(long, default_value_t = 100)]
    pub paced_agents: usize,
    /// Operations per second of the paced run (0 skips it)
    #[arg(long, default_value_t = 5000)]
    pub paced_rate: usize,
    /// Tasks of history the scale run's server starts on (0 skips it)
    #[arg(long, default_value_t = 100_000)]
    pub scale_tasks: usize,
    /// Also run every phase on this PostgreSQL database (postgres://..., in a throwaway schema
    /// dropped afterwards), and print its figures after SQLite's
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Print JSON instead of tables
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
    /// The team's server, on this or another host (`URL1,URL2`: the next one when one cannot be
    /// reached); default CONCLAVE_URL, else the project's running server
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The host name the agent is listed with (default: this machine's hostname)
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
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

/// `conclave queue [--json]` and its subcommands.
#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub action: Option<QueueCommand>,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Stop landing after the current landing (admin)
    Pause,
    /// Start landing again (admin)
    Resume,
    /// Take an entry out of the queue; its task goes back to its agent (admin)
    Skip {
        /// The task whose entry it is (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        task: TaskId,
    },
    /// Put a sent-back or skipped entry back at the end of the queue (admin)
    Retry {
        /// The task whose entry it is (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        task: TaskId,
    },
    /// Land a waiting entry now, out of order, even while paused; the check still runs (admin)
    Merge {
        /// The task whose entry it is (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        task: TaskId,
    },
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
    /// The store: postgres://... (shared by several servers) or sqlite://PATH; overrides
    /// `[store] url` in conclave.toml (default .conclave/conclave.db)
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// This machine's name among the team's hosts (default its hostname): agents registered
    /// on another host keep their worktrees there, and `[merge] host` picks the server that
    /// runs the merge queue
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a project's whole history into a new, empty store, and check the copy (row counts
    /// of every table, the event log's digest). Stop the project's server first
    Migrate(StoreMigrateArgs),
}

#[derive(Debug, Args)]
pub struct StoreMigrateArgs {
    /// The store to copy: a SQLite file (`.conclave/conclave.db`, or sqlite://PATH) or
    /// postgres://...
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The new store: postgres://user@host/db (or a SQLite file); must be empty
    #[arg(long, value_name = "URL")]
    pub to: String,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent; prints its token on stdout
    Add {
        /// The agent's name on the team (letters, digits, `-` and `_`)
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
        /// `worktree`: it works in its own git worktree and its finished tasks land through
        /// the merge queue (default `shared`)
        #[arg(long, value_name = "I", value_parser = parse_isolation)]
        isolation: Option<Isolation>,
        /// Print, instead of the bare token, the environment that acts as the agent on another
        /// host (CONCLAVE_URL, CONCLAVE_AGENT, CONCLAVE_TOKEN as shell-quoted `export` lines)
        #[arg(long)]
        print_env: bool,
    },
    /// List the registered agents
    List(JsonFlag),
    /// Issue a fresh token for an agent; prints it on stdout
    Token {
        /// The agent (its old token stops working)
        name: String,
    },
    /// List an agent's tokens by id (never the tokens themselves)
    Tokens {
        /// The agent whose tokens to list
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Revoke an agent's tokens: all of them, or the one `--token-id` names
    Revoke {
        /// The agent whose tokens to revoke
        name: String,
        /// The id `conclave agent tokens` shows (at least 6 hex digits)
        #[arg(long, value_name = "ID")]
        token_id: Option<String>,
    },
    /// Remove an agent from the team: give back its tasks and leases, drop its waiting merge
    /// queue entries, revoke its tokens (it stays in the history, stopped)
    Remove {
        /// The agent to remove
        name: String,
        /// Why (recorded with the tasks given back)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Ask the supervisor to end an agent's process (status stopped)
    Stop {
        /// The agent to stop
        name: String,
    },
    /// Ask the supervisor to restart an agent's process (resuming its session)
    Restart {
        /// The agent to restart
        name: String,
    },
    /// Ask the supervisor to stop waking an agent
    Pause {
        /// The agent to pause
        name: String,
    },
    /// Ask the supervisor to wake an agent again (or start a stopped one)
    Resume {
        /// The agent to resume
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task; prints its id on stdout
    Add {
        /// What is to be done, in one line (not empty)
        #[arg(value_parser = parse_title)]
        title: String,
        /// Details: what done means, where to look
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
        /// Pass it through this pipeline's stages (a `[[pipeline]]` of conclave.toml)
        #[arg(long, value_name = "NAME")]
        pipeline: Option<String>,
        /// Wait for a person's approval when its agent finishes it
        #[arg(long)]
        approve: bool,
    },
    /// List tasks
    List {
        /// Only tasks in this status (pending, ready, claimed, in_progress, review, blocked, done,
        /// failed, cancelled)
        #[arg(long, value_name = "S", value_parser = parse_task_status)]
        status: Option<TaskStatus>,
        /// Only tasks held by this agent
        #[arg(long, value_name = "AGENT")]
        assignee: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one task
    Show {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Also print what the task's branch (conclave/T-3) changed since it forked from the
        /// integration branch; with --json, the diff's JSON instead of the task's
        #[arg(long)]
        diff: bool,
    },
    /// Change a task's title, body, priority, role or dependencies
    Edit {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// A new title (not empty)
        #[arg(long, value_name = "T", value_parser = parse_title)]
        title: Option<String>,
        /// A new body
        #[arg(long, value_name = "B")]
        body: Option<String>,
        /// A new priority (higher runs first)
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
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// Why, for the log and its holder
        #[arg(long, value_name = "R")]
        reason: Option<String>,
    },
    /// Give a task to an agent
    Assign {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// The agent who gets it
        agent: String,
    },
    /// Put a finished or failed task back to work
    Reopen {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// Why, for the log and the next holder
        #[arg(long, value_name = "R")]
        reason: Option<String>,
    },
    /// Claim a task as the current agent (the best ready one without ID); prints its id, exits 3
    /// when nothing is ready
    Claim {
        /// The task to claim (default: the best ready one for you)
        #[arg(value_parser = parse_task_id)]
        id: Option<TaskId>,
    },
    /// Report progress on a task you hold
    Update {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// Its new status: in_progress, blocked or review
        #[arg(long, value_name = "S", value_parser = ["in_progress", "blocked", "review"])]
        status: String,
        /// A word on the progress (for blocked: what it waits for)
        #[arg(long, value_name = "N")]
        note: Option<String>,
    },
    /// Finish a task you hold
    Done {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// What was done, for the team and the log
        #[arg(long, value_name = "S")]
        summary: Option<String>,
        /// A file the work touched (repeatable)
        #[arg(long = "file", value_name = "F")]
        files: Vec<String>,
        /// Pipeline tasks: send it back to an earlier stage with these comments instead of
        /// passing it on
        #[arg(long, value_name = "COMMENTS")]
        send_back: Option<String>,
        /// With --send-back: the role of the stage to send it to (default: the previous one)
        #[arg(long, value_name = "ROLE", requires = "send_back")]
        to_stage: Option<String>,
    },
    /// Give up on a task you hold
    Fail {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// Why it cannot be done (required)
        #[arg(long, value_name = "R")]
        reason: String,
    },
    /// Approve a task waiting for a decision: it moves on (admin)
    Approve {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// A word for the record
        #[arg(long, value_name = "C")]
        comment: Option<String>,
    },
    /// Reject a task waiting for a decision: back to its agent with the comment (admin)
    Reject {
        /// The task (T-3, or 3)
        #[arg(value_parser = parse_task_id)]
        id: TaskId,
        /// What to change, for the agent (required)
        #[arg(long, value_name = "C")]
        comment: String,
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
    /// Why you hold it, shown to whoever is refused
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// The task the lease serves (default: your current task)
    #[arg(long, value_name = "ID", value_parser = parse_task_id)]
    pub task: Option<TaskId>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Paths or globs to release, as they were leased
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
        /// An agent's name, role:NAME (every agent with that role) or all
        to: String,
        /// The message
        body: String,
        /// The thread it belongs to (default: a new one)
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
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List recent messages
    List {
        /// Only messages of this thread
        #[arg(long, value_name = "T")]
        thread: Option<String>,
        /// At most this many (most recent)
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print one thread in full
    Thread {
        /// The thread's id
        thread: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NoteCommand {
    /// Record a note; prints its id on stdout
    Add {
        /// The note in one line
        title: String,
        /// decision, discovery, interface or warning (default discovery)
        #[arg(long, value_name = "K", value_parser = parse_note_kind)]
        kind: Option<NoteKind>,
        /// The details
        #[arg(long, value_name = "B")]
        body: Option<String>,
        /// A tag to find it by (repeatable)
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// A file it is about (repeatable)
        #[arg(long = "file", value_name = "F")]
        files: Vec<String>,
        /// The note this one replaces (N-<n>)
        #[arg(long, value_name = "N-ID")]
        supersedes: Option<String>,
        /// The task it came from
        #[arg(long, value_name = "ID", value_parser = parse_task_id)]
        task: Option<TaskId>,
    },
    /// List notes (superseded ones only with --all)
    List {
        /// Only notes of this kind (decision, discovery, interface or warning)
        #[arg(long, value_name = "K", value_parser = parse_note_kind)]
        kind: Option<NoteKind>,
        /// Include superseded notes
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Search notes, messages and task results
    Search {
        /// Words to look for
        query: String,
        /// Only hits of this kind (note, message, task)
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// Print JSON instead of a table
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
    /// Events about this task
    #[arg(long, value_name = "T", value_parser = parse_task_id)]
    pub task: Option<TaskId>,
    /// An event kind (task.claimed) or a prefix ending in a dot (task.)
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,
    /// Print the events as JSON: one object {"events": [...]} holding each event (seq, ts, actor,
    /// kind, task, agent, data); with --follow, one event object per line (JSON Lines) as they
    /// happen
    #[arg(long)]
    pub json: bool,
    /// How many of the most recent events to show first (default 100)
    #[arg(long, value_name = "N")]
    pub limit: Option<i64>,
}

/// A title must say something: an empty one is a usage error (exit 2), like a malformed id.
fn parse_title(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("a title must not be empty".to_string());
    }
    Ok(text.to_string())
}

fn parse_task_status(text: &str) -> Result<TaskStatus, String> {
    text.parse().map_err(|_| {
        let known: Vec<String> = TaskStatus::ALL.iter().map(ToString::to_string).collect();
        format!("not a task status; use one of {}", known.join(", "))
    })
}

fn parse_task_id(text: &str) -> Result<TaskId, String> {
    text.parse()
        .map_err(|error: conclave_core::CoreError| error.to_string())
}

fn parse_message_kind(text: &str) -> Result<MessageKind, String> {
    text.parse()
        .map_err(|error: conclave_core::CoreError| error.to_string())
}

fn parse_isolation(text: &str) -> Result<Isolation, String> {
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

    /// Every argument of every command, with the command path that holds it.
    fn all_arguments(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in command.get_arguments() {
            out.push((path.to_string(), arg.clone()));
        }
        for sub in command.get_subcommands() {
            all_arguments(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_has_a_description() {
        let mut command = Cli::command();
        // Builds the generated --help and --version flags too, so they are checked like the rest.
        command.build();
        let mut arguments = Vec::new();
        all_arguments(&command, "conclave", &mut arguments);
        let missing: Vec<String> = arguments
            .iter()
            .filter(|(_, arg)| arg.get_help().is_none() && arg.get_long_help().is_none())
            .map(|(path, arg)| format!("{path} {}", arg.get_id()))
            .collect();
        assert!(
            arguments.len() > 50,
            "walked only {} arguments",
            arguments.len()
        );
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }
}
