//! `conclave.toml`: the server's settings and the team the supervisor runs.
//!
//! Parsing is strict (unknown fields are errors that name the line), and every field is optional:
//! a setting left out passes nothing to the agent CLI, so the client's own default applies.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{DEFAULT_MAX_ROUNDS, Pipeline, PipelineStage};
use crate::store::{Durability, StoreConfig};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub defaults: AgentSettings,
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentSpec>,
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineSpec>,
    /// `[merge]`: present, the server runs the merge queue (issue 11, docs/worktrees.md).
    #[serde(default)]
    pub merge: Option<MergeSection>,
    /// `[store]`: where the server keeps its state (default: `.conclave/conclave.db`).
    #[serde(default)]
    pub store: StoreSection,
}

/// `[store]`: the database the server uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `postgres://user@host/db` (a PostgreSQL database several servers may share), or
    /// `sqlite://PATH` (a SQLite file); left out, the project's `.conclave/conclave.db`.
    pub url: Option<String>,
}

/// Checks a store URL as `[store] url` and `--store` take it: `postgres://` or `postgresql://`
/// (parsed as PostgreSQL's own URL syntax), or `sqlite://` followed by a path.
pub fn validate_store_url(url: &str) -> Result<(), String> {
    if crate::store::is_postgres_url(url) {
        return crate::store::pg_tls::PgTarget::check(url)
            .map_err(|error| format!("{url:?} is not a PostgreSQL URL: {error}"));
    }
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(()),
        _ => Err(format!(
            "{url:?}: expected postgres://..., postgresql://... or sqlite://PATH"
        )),
    }
}

/// The integration branch [`MergeSection::into`] defaults to.
pub const DEFAULT_INTEGRATION_BRANCH: &str = "conclave/integration";
/// The check's time limit when `[merge] check_timeout` is left out.
pub const DEFAULT_CHECK_TIMEOUT: &str = "10m";

/// `[merge]`: how finished tasks' branches land (docs/worktrees.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeSection {
    /// The integration branch (default [`DEFAULT_INTEGRATION_BRANCH`]).
    pub into: Option<String>,
    /// The command that must pass before a branch lands (`sh -c`, in the scratch worktree).
    pub check: Option<String>,
    /// The check's time limit (default [`DEFAULT_CHECK_TIMEOUT`]).
    pub check_timeout: Option<String>,
    /// `merge` (default) or `rebase`.
    pub strategy: Option<String>,
    /// A command run in each new worktree (files git ignores that a build needs).
    pub setup: Option<String>,
    /// The user's own branch, moved by fast-forward after each landing when set.
    pub land_on: Option<String>,
    /// An edit of a file leased by an agent working in another worktree is denied (as in one
    /// shared tree) rather than allowed with a warning naming the holder and its task.
    #[serde(default)]
    pub strict_leases: bool,
    /// The git remote every clone shares (`origin`, say), through which task branches and the
    /// integration branch travel between hosts (docs/scale-out.md). Left out, nothing is pushed
    /// or fetched: every worktree agent must then run on the queue's host.
    pub remote: Option<String>,
    /// The host whose server runs the merge queue (a name as `[[agent]] host` takes it); left
    /// out, the server's own host (every server runs it).
    pub host: Option<String>,
}

impl MergeSection {
    /// Whether the queue runs in a server on `host` (no `[merge] host`: on every server's).
    pub fn queue_runs_on(&self, host: &str) -> bool {
        self.host.as_deref().is_none_or(|queue| queue == host)
    }

    pub fn into_branch(&self) -> &str {
        self.into.as_deref().unwrap_or(DEFAULT_INTEGRATION_BRANCH)
    }

    /// The check's time limit.
    pub fn check_timeout(&self) -> std::time::Duration {
        let text = self
            .check_timeout
            .as_deref()
            .unwrap_or(DEFAULT_CHECK_TIMEOUT);
        // validate() refused a bad value at load; the default is the fallback for a value
        // built by hand.
        parse_duration(text).unwrap_or(std::time::Duration::from_secs(600))
    }

    /// Whether the strategy is `rebase` (else `merge`).
    pub fn rebases(&self) -> bool {
        self.strategy.as_deref() == Some("rebase")
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(strategy) = &self.strategy
            && !matches!(strategy.as_str(), "merge" | "rebase")
        {
            return Err(format!(
                "[merge] strategy = {strategy:?}: expected \"merge\" or \"rebase\""
            ));
        }
        if let Some(timeout) = &self.check_timeout {
            parse_duration(timeout)
                .map_err(|error| format!("[merge] check_timeout = {timeout:?}: {error}"))?;
        }
        if self.into.as_deref().is_some_and(str::is_empty) {
            return Err("[merge] into must not be empty".to_string());
        }
        if let Some(remote) = &self.remote {
            validate_remote_name(remote)
                .map_err(|error| format!("[merge] remote = {remote:?}: {error}"))?;
        }
        if let Some(host) = &self.host {
            validate_host_name(host)
                .map_err(|error| format!("[merge] host = {host:?}: {error}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on; loopback unless `allow_remote`.
    pub listen: Option<String>,
    #[serde(default)]
    pub allow_remote: bool,
    /// Host names the server answers to when reached from elsewhere.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Seconds a task claim lives without a request from its holder (default 600).
    pub claim_ttl_secs: Option<i64>,
    /// Default seconds of a file lease (default 600).
    pub lease_ttl_secs: Option<i64>,
    /// Live file leases one agent may hold at once (default 256).
    pub max_leases_per_agent: Option<usize>,
    /// Connections served at once (default 512); a team of many agents, each with a live event
    /// stream open, needs more.
    pub max_connections: Option<usize>,
    /// `normal` (default) or `full`.
    pub durability: Option<String>,
    /// Hooks fail closed when the server cannot be reached.
    #[serde(default)]
    pub strict: bool,
    /// The Stop hook keeps an agent working while it holds an unfinished task.
    #[serde(default)]
    pub keep_working: bool,
    /// A PEM certificate chain: with `tls_key`, the server speaks HTTPS (docs/scale-out.md).
    /// Relative paths are from the project root.
    pub tls_cert: Option<String>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// A PEM CA certificate that clients on this clone trust besides the system's (for a
    /// server whose certificate a private CA signed); `CONCLAVE_CA_CERT` wins over it.
    pub tls_ca: Option<String>,
}

/// Settings shared by `[defaults]` and each `[[agent]]` (the agent's own win).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    pub command: Option<String>,
    pub model: Option<String>,
    pub permission_mode: Option<String>,
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Option<Vec<String>>,
    pub prompt: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub budget_usd: Option<f64>,
    /// What the whole team may spend (`[defaults]` only): reaching it stops every agent with an
    /// alert.
    pub team_budget_usd: Option<f64>,
    pub recycle_at: Option<f64>,
    /// Idle time after which the supervisor ends an agent's process (`"10m"`, `"30s"`, `"1h"`).
    pub hibernate_after: Option<String>,
    /// Restarts of a crashed agent allowed within `restart_window` (default 5).
    pub max_restarts: Option<u32>,
    /// The window `max_restarts` counts in (default `"10m"`).
    pub restart_window: Option<String>,
    pub cwd: Option<String>,
    /// Where the agent works: `"shared"` (the project's own tree, the default) or `"worktree"`
    /// (its own git worktree; needs a `[merge]` table, whose queue lands its branches).
    pub isolation: Option<Isolation>,
    /// Refused: the merge queue's check is `[merge] check`, one for the project.
    #[serde(
        default,
        deserialize_with = "refuse_check",
        skip_serializing_if = "Option::is_none"
    )]
    pub check: Option<NotSupported>,
    /// `[defaults]` only: `role:NAME` entries; every task of those roles waits for a person's
    /// approval when its agent finishes it (`approve = ["role:reviewer"]`).
    pub approve: Option<Vec<String>>,
}

/// The accepted values of `isolation`: `"shared"` (the default: the project's own tree) or
/// `"worktree"` (the agent's own git worktree under `.conclave/worktrees/<agent>`, its finished
/// tasks landing through the merge queue; docs/worktrees.md).
pub use crate::model::Isolation;

/// A setting that is reserved for a later change: it has no value, so a configuration holding
/// one cannot be built. Parsing such a key fails with "not supported yet" rather than doing
/// nothing without a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotSupported {}

fn refuse_check<'de, D: serde::Deserializer<'de>>(_: D) -> Result<Option<NotSupported>, D::Error> {
    Err(serde::de::Error::custom(
        "`check` is not supported yet per agent: the merge queue's check is `check` in the [merge] table",
    ))
}

impl AgentSettings {
    /// `self` with every field it leaves out taken from `defaults` (`env` tables are merged,
    /// the agent's own entries winning).
    pub fn or(&self, defaults: &AgentSettings) -> AgentSettings {
        let env = match (&defaults.env, &self.env) {
            (Some(base), Some(own)) => {
                let mut merged = base.clone();
                merged.extend(own.clone());
                Some(merged)
            }
            (base, own) => own.clone().or_else(|| base.clone()),
        };
        AgentSettings {
            command: self.command.clone().or_else(|| defaults.command.clone()),
            model: self.model.clone().or_else(|| defaults.model.clone()),
            permission_mode: self
                .permission_mode
                .clone()
                .or_else(|| defaults.permission_mode.clone()),
            allowed_tools: self
                .allowed_tools
                .clone()
                .or_else(|| defaults.allowed_tools.clone()),
            disallowed_tools: self
                .disallowed_tools
                .clone()
                .or_else(|| defaults.disallowed_tools.clone()),
            prompt: self.prompt.clone().or_else(|| defaults.prompt.clone()),
            env,
            budget_usd: self.budget_usd.or(defaults.budget_usd),
            // The team's, whatever an agent says (an agent's own is refused when loading).
            team_budget_usd: defaults.team_budget_usd,
            recycle_at: self.recycle_at.or(defaults.recycle_at),
            hibernate_after: self
                .hibernate_after
                .clone()
                .or_else(|| defaults.hibernate_after.clone()),
            max_restarts: self.max_restarts.or(defaults.max_restarts),
            restart_window: self
                .restart_window
                .clone()
                .or_else(|| defaults.restart_window.clone()),
            cwd: self.cwd.clone().or_else(|| defaults.cwd.clone()),
            isolation: self.isolation.or(defaults.isolation),
            check: self.check.or(defaults.check),
            approve: self.approve.clone().or_else(|| defaults.approve.clone()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(recycle_at) = self.recycle_at
            && !(recycle_at > 0.0 && recycle_at <= 1.0)
        {
            return Err(format!(
                "recycle_at = {recycle_at}: expected a share of the context window above 0 and at most 1"
            ));
        }
        if let Some(budget) = self.budget_usd
            && !(budget.is_finite() && budget > 0.0)
        {
            return Err(format!("budget_usd = {budget}: expected a positive amount"));
        }
        if let Some(budget) = self.team_budget_usd
            && !(budget.is_finite() && budget > 0.0)
        {
            return Err(format!(
                "team_budget_usd = {budget}: expected a positive amount"
            ));
        }
        for (what, value) in [
            ("hibernate_after", &self.hibernate_after),
            ("restart_window", &self.restart_window),
        ] {
            if let Some(text) = value {
                parse_duration(text).map_err(|error| format!("{what} = {text:?}: {error}"))?;
            }
        }
        Ok(())
    }
}

/// Parses a duration such as `"30s"`, `"10m"`, `"1h"`, `"500ms"` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| "expected a duration like \"30s\", \"10m\" or \"1h\"".to_string())?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|error| error.to_string())
}

/// Parses a listen address: an IP address and a port (`127.0.0.1:7420`, `[::1]:0`), or
/// `localhost` with or without a port, which means the IPv4 loopback (`127.0.0.1`, on port 7420
/// when none is given) rather than whatever the resolver says, so that it never reaches the
/// network.
pub fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    let port = match text.strip_prefix("localhost") {
        Some("") => DEFAULT_LISTEN
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or(7420),
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|port| port.parse::<u16>().ok())
            .ok_or_else(|| format!("{text:?} has no valid port after `localhost:`"))?,
        None => {
            return Err(format!(
                "{text:?} is not an address like 127.0.0.1:7420 (an IP address and a port; \
                 `localhost` stands for 127.0.0.1)"
            ));
        }
    };
    Ok(std::net::SocketAddr::from((loopback, port)))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub name: String,
    pub role: Option<String>,
    pub count: Option<u32>,
    #[serde(default)]
    pub caps: Vec<String>,
    /// `"team"` (default: a long-lived session woken by the supervisor) or `"loop"`: a fresh
    /// `claude -p` per iteration that claims one fitting ready task each time (issue 12).
    pub mode: Option<AgentMode>,
    /// `mode = "loop"`: the check run after each iteration (`sh -c` in the project root); the
    /// loop ends when it exits 0.
    pub until: Option<String>,
    /// `mode = "loop"`: the most iterations it runs.
    pub max_iterations: Option<u32>,
    /// `mode = "loop"`: before each iteration after the first, wait for a person's decision
    /// (continue, perhaps with more instructions, or stop) from the dashboard or the API, as
    /// `conclave loop --confirm` does.
    pub confirm: Option<bool>,
    /// The machine that runs this agent (docs/scale-out.md): `conclave up --server URL` on the
    /// host whose name (`--host`, default its hostname) matches starts it. An agent without
    /// `host` runs where `conclave up` runs without `--server`, next to the server.
    pub host: Option<String>,
    #[serde(flatten)]
    pub settings: AgentSettings,
}

/// How an `[[agent]]` works (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// One session at a time, woken when a message or a fitting task arrives.
    #[default]
    Team,
    /// `conclave loop` inside `conclave up`: a fresh session per iteration, one task each.
    Loop,
}

impl AgentSpec {
    /// Whether the agent runs as a loop (`mode = "loop"`).
    pub fn is_loop(&self) -> bool {
        self.mode == Some(AgentMode::Loop)
    }

    fn validate_mode(&self) -> Result<(), String> {
        if !self.is_loop() {
            for (key, set) in [
                ("until", self.until.is_some()),
                ("max_iterations", self.max_iterations.is_some()),
                ("confirm", self.confirm.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{key} is a setting of a loop: add mode = \"loop\" or remove it"
                    ));
                }
            }
            return Ok(());
        }
        if self
            .until
            .as_deref()
            .is_some_and(|until| until.trim().is_empty())
        {
            return Err("until must not be empty".to_string());
        }
        if self.max_iterations == Some(0) {
            return Err("max_iterations must be at least 1".to_string());
        }
        Ok(())
    }
}

/// A `[[pipeline]]` section: the stages (roles) a task created in it passes through in order.
///
/// ```toml
/// [[pipeline]]
/// name = "reviewed"
/// stages = ["coder", "reviewer", "tester"]  # roles, in order
/// max_rounds = 3                            # send-backs before a person must step in (default 3)
/// approve = ["reviewer"]                    # stages whose pass waits for a person (default none)
/// ```
///
/// `approve` names stages by their role; a role listed twice in `stages` needs approval at each.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    pub stages: Vec<String>,
    pub max_rounds: Option<u32>,
    #[serde(default)]
    pub approve: Vec<String>,
}

impl PipelineSpec {
    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        crate::store::validate_name("name", name).map_err(|error| error.to_string())?;
        if self.stages.is_empty() {
            return Err(format!("{name:?}: stages must list at least one role"));
        }
        for role in &self.stages {
            crate::store::validate_name("stage role", role)
                .map_err(|e| format!("{name:?}: {e}"))?;
        }
        if self.max_rounds == Some(0) {
            return Err(format!("{name:?}: max_rounds must be at least 1"));
        }
        if let Some(unknown) = self.approve.iter().find(|role| !self.stages.contains(role)) {
            return Err(format!(
                "{name:?}: approve names {unknown:?}, which is not one of its stages ({})",
                self.stages.join(", ")
            ));
        }
        Ok(())
    }

    /// The pipeline as the store uses it.
    pub fn to_pipeline(&self) -> Pipeline {
        Pipeline {
            name: self.name.clone(),
            stages: self
                .stages
                .iter()
                .map(|role| PipelineStage {
                    role: role.clone(),
                    approve: self.approve.contains(role),
                })
                .collect(),
            max_rounds: self.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl Config {
    /// Reads `path`; a missing file is the default configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config =
            toml::from_str(text).map_err(|error| describe_toml_error(text, &error))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(durability) = &self.server.durability
            && !matches!(durability.as_str(), "normal" | "full")
        {
            return Err(format!(
                "[server] durability = {durability:?}: expected \"normal\" or \"full\""
            ));
        }
        for (what, value) in [
            ("claim_ttl_secs", self.server.claim_ttl_secs),
            ("lease_ttl_secs", self.server.lease_ttl_secs),
        ] {
            if value.is_some_and(|secs| !(1..=crate::store::MAX_LEASE_TTL_SECS).contains(&secs)) {
                return Err(format!(
                    "[server] {what} must be between 1 and {} (a day)",
                    crate::store::MAX_LEASE_TTL_SECS
                ));
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(
                "[server] tls_cert and tls_key go together: set both to serve HTTPS".to_string(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for agent in &self.agents {
            if agent.name.is_empty() {
                return Err("[[agent]] name must not be empty".to_string());
            }
            if !names.insert(agent.name.clone()) {
                return Err(format!("[[agent]] name {:?} appears twice", agent.name));
            }
            if let Some(host) = &agent.host {
                validate_host_name(host).map_err(|error| {
                    format!("[[agent]] {:?}: host = {host:?}: {error}", agent.name)
                })?;
            }
            if agent.count == Some(0) {
                return Err(format!(
                    "[[agent]] {:?}: count must be at least 1",
                    agent.name
                ));
            }
            agent
                .settings
                .validate()
                .map_err(|error| format!("[[agent]] {:?}: {error}", agent.name))?;
            agent
                .validate_mode()
                .map_err(|error| format!("[[agent]] {:?}: {error}", agent.name))?;
            if agent.settings.team_budget_usd.is_some() {
                return Err(format!(
                    "[[agent]] {:?}: team_budget_usd is the whole team's: set it in [defaults]",
                    agent.name
                ));
            }
        }
        self.defaults
            .validate()
            .map_err(|error| format!("[defaults] {error}"))?;
        if self
            .agents
            .iter()
            .any(|agent| agent.settings.approve.is_some())
        {
            return Err(
                "[[agent]] approve is not a setting of one agent: list the roles whose tasks need \
                 approval in [defaults] approve = [\"role:NAME\"]"
                    .to_string(),
            );
        }
        for entry in self.defaults.approve.iter().flatten() {
            let role = entry
                .strip_prefix("role:")
                .ok_or_else(|| format!("[defaults] approve = {entry:?}: expected \"role:NAME\""))?;
            crate::store::validate_name("role", role)
                .map_err(|error| format!("[defaults] approve: {error}"))?;
        }
        let mut pipeline_names = std::collections::BTreeSet::new();
        for pipeline in &self.pipelines {
            pipeline
                .validate()
                .map_err(|error| format!("[[pipeline]] {error}"))?;
            if !pipeline_names.insert(pipeline.name.as_str()) {
                return Err(format!(
                    "[[pipeline]] name {:?} appears twice",
                    pipeline.name
                ));
            }
        }
        if let Some(merge) = &self.merge {
            merge.validate()?;
        }
        if self.merge.is_none()
            && let Some(agent) = self.agents.iter().find(|agent| {
                agent.settings.or(&self.defaults).isolation == Some(Isolation::Worktree)
            })
        {
            return Err(format!(
                "[[agent]] {:?}: isolation = \"worktree\" needs a [merge] table: its finished \
                 tasks' branches land through the merge queue (an empty `[merge]` takes the \
                 defaults; docs/worktrees.md)",
                agent.name
            ));
        }
        self.validate_pipeline_isolation()?;
        if let Some(url) = &self.store.url {
            validate_store_url(url).map_err(|error| format!("[store] url = {error}"))?;
        }
        Ok(())
    }

    /// Every stage of a pipeline must share one isolation: whether a finished task goes through
    /// the merge queue depends on the agent that finishes it, so a shared-tree last stage would
    /// mark done a task whose earlier stages committed on a branch that then never lands.
    fn validate_pipeline_isolation(&self) -> Result<(), String> {
        for pipeline in &self.pipelines {
            let mut seen: Option<(&str, Isolation)> = None;
            for agent in &self.agents {
                let settings = agent.settings.or(&self.defaults);
                if !agent
                    .role
                    .as_deref()
                    .is_some_and(|role| pipeline.stages.iter().any(|stage| stage == role))
                {
                    continue;
                }
                let isolation = settings.isolation.unwrap_or(Isolation::Shared);
                match seen {
                    None => seen = Some((agent.name.as_str(), isolation)),
                    Some((first, first_isolation)) if first_isolation != isolation => {
                        return Err(format!(
                            "[[pipeline]] {:?}: its stages' agents {first:?} ({}) and {:?} ({}) \
                             differ in isolation; give every agent of a pipeline's roles the same \
                             `isolation` (docs/worktrees.md, \"Pipelines and approvals\")",
                            pipeline.name,
                            first_isolation.as_str(),
                            agent.name,
                            isolation.as_str(),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Whether any agent of the team works in its own worktree.
    pub fn uses_worktrees(&self) -> bool {
        self.agents
            .iter()
            .any(|agent| agent.settings.or(&self.defaults).isolation == Some(Isolation::Worktree))
    }

    pub fn store_config(&self) -> StoreConfig {
        let defaults = StoreConfig::default();
        StoreConfig {
            claim_ttl_secs: self
                .server
                .claim_ttl_secs
                .unwrap_or(defaults.claim_ttl_secs),
            lease_ttl_secs: self
                .server
                .lease_ttl_secs
                .unwrap_or(defaults.lease_ttl_secs),
            max_leases_per_agent: self
                .server
                .max_leases_per_agent
                .unwrap_or(defaults.max_leases_per_agent),
            durability: match self.server.durability.as_deref() {
                Some("full") => Durability::Full,
                _ => Durability::Normal,
            },
            pipelines: self
                .pipelines
                .iter()
                .map(PipelineSpec::to_pipeline)
                .collect(),
            approve_roles: self
                .defaults
                .approve
                .iter()
                .flatten()
                .filter_map(|entry| entry.strip_prefix("role:"))
                .map(str::to_string)
                .collect(),
            merge_queue: self.merge.is_some(),
        }
    }
}

/// Checks a git remote's name as `[merge] remote` takes it: a name git accepts for a remote
/// (no spaces, no `:` or `..`, not starting with `-`), not a URL.
pub fn validate_remote_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err("a remote's name has 1 to 100 characters".to_string());
    }
    if name.starts_with('-') || name.starts_with('.') || name.ends_with('/') {
        return Err("a remote's name starts with a letter or digit".to_string());
    }
    if name.contains("..") || name.contains("//") {
        return Err("a remote's name is a name (`origin`), not a URL or a path".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/')))
    {
        return Err(format!(
            "{bad:?} cannot be in a remote's name (letters, digits, '-', '.', '_', '/'); name \
             the remote (`git remote add origin URL`), not its URL"
        ));
    }
    Ok(())
}

/// Checks a host name as `host =` and `--host` take it: what a hostname may hold (letters,
/// digits, `-`, `.`, `_`), 1 to 253 characters.
pub fn validate_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "{bad:?} cannot be in a host name (letters, digits, '-', '.', '_')"
        ));
    }
    Ok(())
}

/// toml's messages carry the span; say it as `line N: ...` so people find the spot.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end_matches('\n');
    match error.span() {
        Some(span) => {
            let start = key_line_start(text, span.clone(), message).unwrap_or(span.start);
            let line = text[..start.min(text.len())].matches('\n').count() + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{line_text}`): {message}")
        }
        None => message.to_string(),
    }
}

/// An error in an `[[agent]]`'s settings (flattened into it) points at the table's header; when
/// the message is about one key of the table that starts there (it begins `` `key` ``,
/// `key = ` or ``unknown field `key` ``), the offset of that key's line instead.
fn key_line_start(text: &str, span: std::ops::Range<usize>, message: &str) -> Option<usize> {
    let mut offset = span.start;
    for (index, line) in text.get(span.start..)?.split_inclusive('\n').enumerate() {
        if index > 0 && line.trim_start().starts_with('[') {
            return None; // the next table
        }
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            let about_key = [
                format!("`{key}`"),
                format!("{key} ="),
                format!("unknown field `{key}`"),
            ]
            .iter()
            .any(|start| message.starts_with(start.as_str()));
            if !key.is_empty() && about_key {
                return Some(offset);
            }
        }
        offset += line.len();
    }
    None
}

/// The commented file `conclave init` writes.
pub const EXAMPLE_CONFIG: &str = r#"# Conclave configuration. Every setting is optional; one left out passes nothing to the agent CLI.
# Docs: README.md and docs/ in the Conclave repository.

[server]
# listen = "127.0.0.1:7420"   # loopback by default; another address needs allow_remote = true
# claim_ttl_secs = 600         # a claimed task returns to ready after this long without a request
# lease_ttl_secs = 600         # default lifetime of a file lease
# durability = "normal"        # "full" also survives power loss, at ~10x the commit cost
# strict = false               # hooks deny edits when the server cannot be reached
# keep_working = false         # the Stop hook keeps an agent going while it holds a task
# tls_cert = "tls/cert.pem"    # with tls_key: serve HTTPS (a server other hosts reach)
# tls_key = "tls/key.pem"
# tls_ca = "tls/ca.pem"        # clients of this clone trust this CA too (or CONCLAVE_CA_CERT)

# [store]                      # default: .conclave/conclave.db (SQLite); see docs/store.md
# url = "postgres://conclave@db.internal/team"   # PostgreSQL, shared by several servers

[defaults]
# command = "claude"
# model = "sonnet"
# permission_mode = "acceptEdits"
# recycle_at = 0.7             # share of the context window at which an agent is recycled
# budget_usd = 5.0
# team_budget_usd = 20.0       # [defaults] only: the whole team stops when it has spent this
# hibernate_after = "10m"     # an idle agent's process ends after this; a message wakes it
# max_restarts = 5             # crash restarts allowed within restart_window, then "crashed"
# restart_window = "10m"
# approve = ["role:reviewer"] # every task of these roles waits for a person's approval
# isolation = "shared"         # "worktree": each agent in its own git worktree (needs [merge])

# [[agent]]
# name = "architect"
# role = "architect"
# model = "opus"
# prompt = "You own the design. Record decisions as notes."

# [[agent]]
# name = "coder"
# role = "coder"
# count = 2                    # coder-1, coder-2
# host = "build-2"             # runs on that machine: `conclave up --server URL --host build-2` there
# allowed_tools = ["Read", "Edit", "Write", "Bash(cargo *)"]
# env = { ANTHROPIC_BASE_URL = "http://127.0.0.1:9999" }

# [[agent]]
# name = "fixer"
# mode = "loop"                # a fresh session per iteration, one ready task each
# until = "cargo test"         # the loop ends when this passes
# max_iterations = 10
# confirm = true               # wait for a person (dashboard or API) before each next iteration

# [[pipeline]]                 # tasks created in it pass coder -> reviewer -> tester
# name = "reviewed"
# stages = ["coder", "reviewer", "tester"]
# max_rounds = 3               # send-backs before it is blocked for a person
# approve = ["reviewer"]       # stages whose pass waits for a person's approval

# [merge]                      # worktree agents' branches land here after a check (docs/worktrees.md)
# check = "cargo test"
# setup = "cp ../.env ."       # run in each new worktree
# strict_leases = false        # true: an edit of a file leased in another worktree is denied
# remote = "origin"            # agents on several hosts: branches travel through this remote
# host = "build-1"             # the host whose server runs the queue (default: the server's)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_agent_takes_until_and_max_iterations_and_others_may_not() {
        let config = Config::parse(
            "[[agent]]\nname = \"fixer\"\nmode = \"loop\"\nuntil = \"cargo test\"\nmax_iterations = 5\n",
        )
        .expect("a loop agent");
        assert!(config.agents[0].is_loop());
        assert_eq!(config.agents[0].until.as_deref(), Some("cargo test"));
        assert_eq!(config.agents[0].max_iterations, Some(5));
        let error = Config::parse("[[agent]]\nname = \"coder\"\nuntil = \"true\"\n")
            .expect_err("until without loop");
        assert!(error.contains("mode = \"loop\""), "{error}");
        let error =
            Config::parse("[[agent]]\nname = \"x\"\nmode = \"swarm\"\n").expect_err("unknown mode");
        assert!(error.contains("swarm"), "{error}");
        let error = Config::parse("[[agent]]\nname = \"x\"\nmode = \"loop\"\nmax_iterations = 0\n")
            .expect_err("zero iterations");
        assert!(error.contains("at least 1"), "{error}");
        let config = Config::parse("[[agent]]\nname = \"x\"\nmode = \"loop\"\nconfirm = true\n")
            .expect("a loop that asks a person");
        assert_eq!(config.agents[0].confirm, Some(true));
        let error = Config::parse("[[agent]]\nname = \"coder\"\nconfirm = true\n")
            .expect_err("confirm without loop");
        assert!(error.contains("confirm is a setting of a loop"), "{error}");
    }

    #[test]
    fn pipelines_and_approvals_parse_into_the_store_config() {
        let text = r#"
[defaults]
approve = ["role:architect"]
[[pipeline]]
name = "reviewed"
stages = ["coder", "reviewer", "tester"]
approve = ["reviewer"]
[[pipeline]]
name = "quick"
stages = ["coder"]
max_rounds = 1
"#;
        let store = Config::parse(text).expect("parse").store_config();
        assert_eq!(store.approve_roles, ["architect"]);
        let reviewed = &store.pipelines[0];
        assert_eq!(reviewed.max_rounds, DEFAULT_MAX_ROUNDS);
        let approvals: Vec<bool> = reviewed.stages.iter().map(|s| s.approve).collect();
        assert_eq!(approvals, [false, true, false]);
        assert_eq!(store.pipelines[1].max_rounds, 1);
    }

    #[test]
    fn bad_pipelines_and_approvals_are_refused() {
        let cases = [
            (
                "[[pipeline]]\nname = \"p\"\nstages = []\n",
                "at least one role",
            ),
            (
                "[[pipeline]]\nname = \"p\"\nstages = [\"a\"]\n[[pipeline]]\nname = \"p\"\nstages = [\"b\"]\n",
                "appears twice",
            ),
            (
                "[[pipeline]]\nname = \"p\"\nstages = [\"a\"]\nmax_rounds = 0\n",
                "max_rounds",
            ),
            (
                "[[pipeline]]\nname = \"p\"\nstages = [\"a\"]\napprove = [\"b\"]\n",
                "not one of its stages",
            ),
            ("[defaults]\napprove = [\"reviewer\"]\n", "role:NAME"),
            (
                "[[agent]]\nname = \"a\"\napprove = [\"role:x\"]\n",
                "[defaults]",
            ),
        ];
        for (text, expected) in cases {
            let error = Config::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
        let mixed = "[merge]\n[[pipeline]]\nname = \"p\"\nstages = [\"coder\", \"reviewer\"]\n\
                     [[agent]]\nname = \"c\"\nrole = \"coder\"\nisolation = \"worktree\"\n\
                     [[agent]]\nname = \"r\"\nrole = \"reviewer\"\n";
        let error = Config::parse(mixed).expect_err("mixed isolation in one pipeline");
        assert!(
            error.contains("\"c\" (worktree)") && error.contains("\"r\" (shared)"),
            "{error}"
        );
        Config::parse(&mixed.replace(
            "role = \"reviewer\"\n",
            "role = \"reviewer\"\nisolation = \"worktree\"\n",
        ))
        .expect("one isolation for every stage");
        // Roles no agent has are fine: agents may join later.
        Config::parse("[[pipeline]]\nname = \"p\"\nstages = [\"nobody-yet\"]\n")
            .expect("unknown role");
    }

    #[test]
    fn the_example_parses() {
        let config = Config::parse(EXAMPLE_CONFIG).expect("example");
        assert!(config.agents.is_empty());
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n";
        let error = Config::parse(text).expect_err("unknown field");
        assert!(
            error.contains("line 3") && error.contains("bogus"),
            "{error}"
        );
        let text = "[[agent]]\nname = \"a\"\ncount = \"two\"\n";
        let error = Config::parse(text).expect_err("wrong type");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn durations_parse() {
        use std::time::Duration;
        let cases = [
            ("30s", Some(Duration::from_secs(30))),
            ("10m", Some(Duration::from_secs(600))),
            ("1h", Some(Duration::from_secs(3600))),
            ("500ms", Some(Duration::from_millis(500))),
            ("2", Some(Duration::from_secs(2))),
            ("ten", None),
            ("5d", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "{text}");
        }
        let error = Config::parse("[defaults]\nhibernate_after = \"soon\"\n").expect_err("bad");
        assert!(error.contains("hibernate_after"), "{error}");
    }

    #[test]
    fn merge_names_a_shared_remote_and_the_queue_host() {
        let config = Config::parse("[merge]\nremote = \"origin\"\nhost = \"build-1\"\n")
            .expect("remote and host");
        let merge = config.merge.expect("merge");
        assert_eq!(merge.remote.as_deref(), Some("origin"));
        assert!(merge.queue_runs_on("build-1"));
        assert!(!merge.queue_runs_on("build-2"));
        let anywhere = Config::parse("[merge]\n")
            .expect("empty")
            .merge
            .expect("merge");
        assert!(anywhere.queue_runs_on("build-2"), "no host: every server's");
        for bad in [
            "",
            "git@host:repo.git",
            "https://example.com/r",
            "-x",
            "a b",
            "../up",
        ] {
            let text = format!("[merge]\nremote = {bad:?}\n");
            let error = Config::parse(&text).expect_err(bad);
            assert!(error.contains("[merge] remote"), "{bad:?}: {error}");
        }
        let error = Config::parse("[merge]\nhost = \"a b\"\n").expect_err("host");
        assert!(error.contains("[merge] host"), "{error}");
    }

    #[test]
    fn agent_settings_fall_back_to_defaults() {
        let text = r#"
[defaults]
model = "sonnet"
env = { A = "1", B = "2" }
[[agent]]
name = "coder"
model = "opus"
env = { B = "3" }
"#;
        let config = Config::parse(text).expect("parse");
        let merged = config.agents[0].settings.or(&config.defaults);
        assert_eq!(merged.model.as_deref(), Some("opus"));
        let env = merged.env.expect("env");
        assert_eq!((env["A"].as_str(), env["B"].as_str()), ("1", "3"));
    }

    #[test]
    fn agents_with_settings_parse() {
        let text = r#"
[defaults]
model = "sonnet"
[[agent]]
name = "coder"
role = "coder"
count = 2
allowed_tools = ["Read"]
env = { A = "b" }
"#;
        let config = Config::parse(text).expect("parse");
        assert_eq!(config.agents[0].count, Some(2));
        assert_eq!(
            config.agents[0].settings.allowed_tools.as_deref(),
            Some(&["Read".to_string()][..])
        );
    }

    #[test]
    fn isolation_worktree_is_accepted_with_a_merge_table_and_refused_without_one() {
        let text = "[defaults]\nisolation = \"worktree\"\n[merge]\n[[agent]]\nname = \"a\"\n[[agent]]\nname = \"b\"\nisolation = \"shared\"\n";
        let config = Config::parse(text).expect("worktree with [merge]");
        assert_eq!(
            config.agents[0].settings.or(&config.defaults).isolation,
            Some(Isolation::Worktree)
        );
        assert_eq!(
            config.agents[1].settings.or(&config.defaults).isolation,
            Some(Isolation::Shared),
            "an agent's own setting wins over [defaults]"
        );
        assert!(config.uses_worktrees());
        let error = Config::parse("[[agent]]\nname = \"a\"\nisolation = \"worktree\"\n")
            .expect_err("no [merge]");
        assert!(
            error.contains("\"a\"") && error.contains("[merge]"),
            "{error}"
        );
        let error = Config::parse("[defaults]\nisolation = \"sandbox\"\n").expect_err("unknown");
        assert!(error.contains("isolation"), "{error}");
    }

    #[test]
    fn isolation_shared_is_accepted() {
        let text =
            "[defaults]\nisolation = \"shared\"\n[[agent]]\nname = \"a\"\nisolation = \"shared\"\n";
        let config = Config::parse(text).expect("shared is what every agent gets");
        assert_eq!(config.defaults.isolation, Some(Isolation::Shared));
        assert_eq!(config.agents[0].settings.isolation, Some(Isolation::Shared));
    }

    /// Each refused key names itself, says "not supported yet" and points at its line.
    #[test]
    fn keys_that_would_do_nothing_are_refused_with_their_line() {
        let cases = [
            (
                "[defaults]\nmodel = \"sonnet\"\ncheck = \"cargo test\"\n",
                "check",
                3,
            ),
            (
                "[[agent]]\nname = \"coder\"\ncheck = \"cargo test\"\n",
                "check",
                3,
            ),
        ];
        let text = "[[agent]]\nname = \"coder\"\nmodel = \"opus\"\nmodle = \"x\"\n";
        let error = Config::parse(text).expect_err("typo");
        assert!(error.starts_with("line 4 "), "{error}");
        for (text, key, line) in cases {
            let error = Config::parse(text).expect_err(text);
            assert!(
                error.contains(key)
                    && error.contains("not supported yet")
                    && error.contains(&format!("line {line} ")),
                "{text:?} gave {error}"
            );
        }
    }

    #[test]
    fn agents_name_the_host_that_runs_them() {
        let text = "[[agent]]\nname = \"a\"\nhost = \"build-2\"\n[[agent]]\nname = \"b\"\n";
        let config = Config::parse(text).expect("host");
        assert_eq!(config.agents[0].host.as_deref(), Some("build-2"));
        assert_eq!(config.agents[1].host, None);
        for bad in ["", "two words", "a/b"] {
            let text = format!("[[agent]]\nname = \"a\"\nhost = {bad:?}\n");
            let error = Config::parse(&text).expect_err(bad);
            assert!(error.contains("host"), "{bad:?}: {error}");
        }
        // Not a setting of [defaults]: a host is where one agent runs.
        let error = Config::parse("[defaults]\nhost = \"x\"\n").expect_err("defaults");
        assert!(error.contains("host"), "{error}");
    }

    #[test]
    fn listen_addresses_accept_localhost_as_the_loopback() {
        let cases = [
            ("127.0.0.1:7420", Some("127.0.0.1:7420")),
            ("[::1]:0", Some("[::1]:0")),
            ("localhost", Some("127.0.0.1:7420")),
            ("localhost:9000", Some("127.0.0.1:9000")),
            (" localhost:0 ", Some("127.0.0.1:0")),
            ("localhost:x", None),
            ("example.com:80", None),
            ("7420", None),
        ];
        for (text, expected) in cases {
            let parsed = parse_listen(text).ok().map(|addr| addr.to_string());
            assert_eq!(parsed.as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn a_store_url_is_postgres_or_sqlite_and_checked_at_load() {
        let config = Config::parse("[store]\nurl = \"postgres://conclave@db.internal/team\"\n")
            .expect("postgres");
        assert_eq!(
            config.store.url.as_deref(),
            Some("postgres://conclave@db.internal/team")
        );
        Config::parse("[store]\nurl = \"sqlite:///var/lib/conclave.db\"\n").expect("sqlite");
        let error = Config::parse("[store]\nurl = \"mysql://x\"\n").expect_err("mysql");
        assert!(error.contains("[store] url"), "{error}");
        let error =
            Config::parse("[store]\nurl = \"postgres://x:notaport/db\"\n").expect_err("bad port");
        assert!(error.contains("not a PostgreSQL URL"), "{error}");
        let error = Config::parse("[store]\npath = \"x\"\n").expect_err("unknown key");
        assert!(error.contains("path"), "{error}");
    }
}
