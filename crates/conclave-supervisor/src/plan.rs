//! The team as `conclave.toml` describes it: one [`AgentPlan`] per agent process (an `[[agent]]`
//! with `count = 2` named `coder` becomes `coder-1` and `coder-2`), its settings merged with
//! `[defaults]`, and the command line its client is started with. A setting left out passes
//! nothing to the client.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use conclave_core::config::{AgentSettings, Config, Isolation, parse_duration};
use conclave_core::paths;

use crate::agent_files::{AgentFiles, ENV_CLAUDE_BIN, claude_bin, find_on_path};

/// Default share of the context window at which an agent is recycled.
pub const DEFAULT_RECYCLE_AT: f64 = 0.7;
/// Default idle time before an agent's process is ended.
pub const DEFAULT_HIBERNATE_AFTER: Duration = Duration::from_secs(600);
/// Default crash restarts allowed per window.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// Default window the restarts are counted in.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(600);

/// Appended to every agent's system prompt, before its own `prompt`.
pub const PROTOCOL: &str = "You are one agent of a team coordinated by Conclave. Use its MCP tools \
(mcp__conclave__*): `status` shows who you are, your task and the team; `claim` takes the best \
ready task for you; `update` reports progress; `done` finishes a task with a summary (`fail` gives \
it back with a reason); `add_tasks` splits work; `lock`/`unlock` lease files (edits lease them \
automatically); `send` messages an agent, `role:NAME` or `all`; `inbox` reads messages; `note` \
records decisions; `search` finds notes, messages and results; `handoff` leaves a summary for \
your successor session. Work on one task at a time: claim, do it, call done, then claim the next. \
When nothing is ready for you, end your turn: you will be woken when a message or a task arrives.";

/// One agent process the supervisor runs.
#[derive(Debug, Clone)]
pub struct AgentPlan {
    pub name: String,
    pub role: Option<String>,
    /// The machine that runs it (`host =`); none: the one next to the server.
    pub host: Option<String>,
    pub caps: Vec<String>,
    /// Its settings with `[defaults]` filled in.
    pub settings: AgentSettings,
    /// Where its client runs: the project root (its worktree, `.conclave/worktrees/NAME`, with
    /// `isolation = "worktree"`), or `cwd` inside it.
    pub cwd: PathBuf,
    pub recycle_at: f64,
    pub hibernate_after: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl AgentPlan {
    /// Where the agent works (`[defaults]` filled in; `shared` when neither says).
    pub fn isolation(&self) -> Isolation {
        self.settings.isolation.unwrap_or_default()
    }
}

/// Every agent process of the team, in the order of `conclave.toml`.
pub fn plan_team(config: &Config, root: &Path) -> anyhow::Result<Vec<AgentPlan>> {
    let mut plans = Vec::new();
    for spec in &config.agents {
        let settings = spec.settings.or(&config.defaults);
        let count = spec.count.unwrap_or(1);
        for n in 1..=count {
            let name = if spec.count.is_some() {
                format!("{}-{n}", spec.name)
            } else {
                spec.name.clone()
            };
            let duration = |what: &str, value: &Option<String>, default: Duration| match value {
                Some(text) => {
                    parse_duration(text).map_err(|error| anyhow::anyhow!("{name}: {what}: {error}"))
                }
                None => Ok(default),
            };
            plans.push(AgentPlan {
                role: spec.role.clone(),
                host: spec.host.clone(),
                caps: spec.caps.clone(),
                cwd: {
                    // A worktree agent's tree stands in for the project's (docs/worktrees.md).
                    let base = if settings.isolation == Some(Isolation::Worktree) {
                        root.join(paths::WORKTREES_DIR).join(&name)
                    } else {
                        root.to_path_buf()
                    };
                    settings
                        .cwd
                        .as_deref()
                        .map_or_else(|| base.clone(), |cwd| base.join(cwd))
                },
                recycle_at: settings.recycle_at.unwrap_or(DEFAULT_RECYCLE_AT),
                hibernate_after: duration(
                    "hibernate_after",
                    &settings.hibernate_after,
                    DEFAULT_HIBERNATE_AFTER,
                )?,
                max_restarts: settings.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
                restart_window: duration(
                    "restart_window",
                    &settings.restart_window,
                    DEFAULT_RESTART_WINDOW,
                )?,
                settings: settings.clone(),
                name,
            });
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for plan in &plans {
        if !names.insert(plan.name.clone()) {
            bail!(
                "two agents of conclave.toml are both named {:?} (count adds -1, -2...)",
                plan.name
            );
        }
    }
    Ok(plans)
}

/// Which agents of the team one supervisor runs (docs/scale-out.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostScope {
    /// This machine's name: `--host`, default its hostname ([`this_host`]).
    pub name: String,
    /// This supervisor runs where the project is served (`conclave up` without `--server`):
    /// agents that name no host are its too.
    pub main: bool,
}

impl HostScope {
    /// Whether an agent with `host` runs here: one naming this machine does; one naming none
    /// runs on the main host.
    pub fn runs(&self, host: Option<&str>) -> bool {
        match host {
            Some(host) => host == self.name,
            None => self.main,
        }
    }

    /// The plans of the agents that run here, in order.
    pub fn select(&self, plans: Vec<AgentPlan>) -> Vec<AgentPlan> {
        plans
            .into_iter()
            .filter(|plan| self.runs(plan.host.as_deref()))
            .collect()
    }
}

/// This machine's name as the kernel has it (`hostname`); `localhost` when it has none.
pub fn this_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The program an agent runs, and the arguments that come before Conclave's:
/// `CONCLAVE_CLAUDE_BIN` when set, else the `command` setting (split on spaces; its first word
/// looked up on `PATH`), else `claude` from `PATH`.
pub fn program(plan: &AgentPlan) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let from_env = std::env::var_os(ENV_CLAUDE_BIN).is_some_and(|bin| !bin.is_empty());
    match plan.settings.command.as_deref() {
        Some(command) if !from_env => {
            let mut words = command.split_whitespace();
            let first = words
                .next()
                .with_context(|| format!("{}: command is empty", plan.name))?;
            let path = if first.contains('/') {
                PathBuf::from(first)
            } else {
                find_on_path(first)
                    .with_context(|| format!("{}: cannot find {first:?} on PATH", plan.name))?
            };
            Ok((path, words.map(str::to_string).collect()))
        }
        _ => Ok((claude_bin()?, Vec::new())),
    }
}

/// The arguments Conclave passes: headless stream-json in and out, the MCP config and hook
/// settings, then only the settings the agent has, and `--resume` when continuing a session.
pub fn arguments(plan: &AgentPlan, files: &AgentFiles, resume: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push("--mcp-config".into());
    args.push(files.mcp_config.clone().into());
    args.push("--settings".into());
    args.push(files.settings.clone().into());
    let settings = &plan.settings;
    if let Some(model) = &settings.model {
        args.extend(["--model".into(), model.into()]);
    }
    if let Some(mode) = &settings.permission_mode {
        args.extend(["--permission-mode".into(), mode.into()]);
    }
    if let Some(tools) = settings.allowed_tools.as_ref().filter(|t| !t.is_empty()) {
        args.push("--allowedTools".into());
        args.extend(tools.iter().map(OsString::from));
    }
    if let Some(tools) = settings.disallowed_tools.as_ref().filter(|t| !t.is_empty()) {
        args.push("--disallowedTools".into());
        args.extend(tools.iter().map(OsString::from));
    }
    args.push("--append-system-prompt".into());
    args.push(system_prompt(plan).into());
    if let Some(session) = resume {
        args.extend(["--resume".into(), session.into()]);
    }
    args
}

/// The whole command line of an agent: the program and every argument.
///
/// `command` in `conclave.toml` is either a program (with arguments of its own) to which
/// Conclave's arguments are appended, or a template for another agent CLI when it holds a
/// placeholder: `{args}` (Conclave's usual arguments), `{mcp_config}`, `{settings}`, `{model}`,
/// `{permission_mode}`, `{prompt}` (protocol text and the agent's prompt), `{name}`, `{role}`,
/// `{resume}` (the session to resume). A template gets only what it names; a word whose
/// placeholder has no value (no `model` set, nothing to resume) is left out. The CLI must still
/// print stream-json on stdout and read stream-json user messages on stdin.
pub fn command_line(
    plan: &AgentPlan,
    files: &AgentFiles,
    resume: Option<&str>,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let (program, prefix) = program(plan)?;
    let standard: Vec<String> = arguments(plan, files, resume)
        .into_iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    if !prefix.iter().any(|word| word.contains('{')) {
        let mut args = prefix;
        args.extend(standard);
        return Ok((program, args));
    }
    let settings = &plan.settings;
    let values: Vec<(&str, Option<String>)> = vec![
        ("{mcp_config}", Some(files.mcp_config.display().to_string())),
        ("{settings}", Some(files.settings.display().to_string())),
        ("{model}", settings.model.clone()),
        ("{permission_mode}", settings.permission_mode.clone()),
        ("{prompt}", Some(system_prompt(plan))),
        ("{name}", Some(plan.name.clone())),
        ("{role}", plan.role.clone()),
        ("{resume}", resume.map(str::to_string)),
    ];
    let mut args = Vec::new();
    for word in prefix {
        if word == "{args}" {
            args.extend(standard.iter().cloned());
            continue;
        }
        let mut expanded = word.clone();
        let mut missing = false;
        for (placeholder, value) in &values {
            if expanded.contains(placeholder) {
                match value {
                    Some(value) => expanded = expanded.replace(placeholder, value),
                    None => missing = true,
                }
            }
        }
        if let Some(unknown) = expanded
            .find('{')
            .filter(|_| expanded.contains('}') && !missing)
        {
            let rest = &expanded[unknown..];
            if let Some(end) = rest.find('}') {
                let name = &rest[..=end];
                if name.len() > 2
                    && name[1..name.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    anyhow::bail!(
                        "{}: command has an unknown placeholder {name} (known: {{args}}, {{mcp_config}}, {{settings}}, {{model}}, {{permission_mode}}, {{prompt}}, {{name}}, {{role}}, {{resume}})",
                        plan.name
                    );
                }
            }
        }
        if !missing {
            args.push(expanded);
        }
    }
    Ok((program, args))
}

/// What a worktree agent is told besides [`PROTOCOL`].
pub const WORKTREE_PROTOCOL: &str = "You work in your own git worktree (your working directory), \
not in the project's tree. Each task you claim gets its own branch, conclave/<task id>, started \
from the integration branch (a pipeline's stages share it: you see earlier stages' commits); \
`done` commits what you left uncommitted and the merge queue merges the branch after the \
project's check passes. If the branch conflicts or fails the check, the task \
comes back to you with the details: fix it on the same branch (you may merge the integration \
branch into it) and call done again. Do not switch branches yourself.";

/// The protocol text (with the worktree part for a worktree agent), then the agent's own
/// `prompt`.
pub fn system_prompt(plan: &AgentPlan) -> String {
    let protocol = if plan.isolation() == Isolation::Worktree {
        format!("{PROTOCOL}\n\n{WORKTREE_PROTOCOL}")
    } else {
        PROTOCOL.to_string()
    };
    match plan.settings.prompt.as_deref().map(str::trim) {
        Some(prompt) if !prompt.is_empty() => format!("{protocol}\n\n{prompt}"),
        _ => protocol,
    }
}

/// The agent's `env` table (applied on top of the inherited environment).
pub fn extra_env(plan: &AgentPlan) -> BTreeMap<String, String> {
    plan.settings.env.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> AgentFiles {
        AgentFiles {
            mcp_config: PathBuf::from("/p/.conclave/agents/a/mcp.json"),
            settings: PathBuf::from("/p/.conclave/agents/a/settings.json"),
        }
    }

    fn args_of(text: &str, resume: Option<&str>) -> Vec<Vec<String>> {
        let config = Config::parse(text).expect("config");
        plan_team(&config, Path::new("/p"))
            .expect("plan")
            .iter()
            .map(|plan| {
                arguments(plan, &files(), resume)
                    .iter()
                    .map(|arg| arg.to_string_lossy().into_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn replicas_are_numbered_and_a_lone_agent_keeps_its_name() {
        let config = Config::parse(
            "[[agent]]\nname = \"lead\"\n[[agent]]\nname = \"coder\"\ncount = 2\nrole = \"coder\"\ncwd = \"sub\"\n",
        )
        .expect("config");
        let plans = plan_team(&config, Path::new("/p")).expect("plan");
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["lead", "coder-1", "coder-2"]);
        assert_eq!(plans[1].cwd, PathBuf::from("/p/sub"));
        assert_eq!(plans[0].cwd, PathBuf::from("/p"));
        assert_eq!(plans[0].hibernate_after, DEFAULT_HIBERNATE_AFTER);
    }

    #[test]
    fn a_worktree_agent_runs_in_its_own_worktree() {
        let config = Config::parse(
            "[defaults]\nisolation = \"worktree\"\n[merge]\n[[agent]]\nname = \"coder\"\ncount = 2\n[[agent]]\nname = \"lead\"\nisolation = \"shared\"\n[[agent]]\nname = \"web\"\ncwd = \"app\"\n",
        )
        .expect("config");
        let plans = plan_team(&config, Path::new("/p")).expect("plan");
        let cwds: Vec<(&str, &Path, Isolation)> = plans
            .iter()
            .map(|p| (p.name.as_str(), p.cwd.as_path(), p.isolation()))
            .collect();
        assert_eq!(
            cwds,
            [
                (
                    "coder-1",
                    Path::new("/p/.conclave/worktrees/coder-1"),
                    Isolation::Worktree
                ),
                (
                    "coder-2",
                    Path::new("/p/.conclave/worktrees/coder-2"),
                    Isolation::Worktree
                ),
                ("lead", Path::new("/p"), Isolation::Shared),
                (
                    "web",
                    Path::new("/p/.conclave/worktrees/web/app"),
                    Isolation::Worktree
                ),
            ]
        );
        assert!(system_prompt(&plans[0]).contains(WORKTREE_PROTOCOL));
        assert!(!system_prompt(&plans[2]).contains(WORKTREE_PROTOCOL));
    }

    #[test]
    fn each_host_runs_the_agents_named_for_it() {
        let config = Config::parse(
            "[[agent]]\nname = \"lead\"\n[[agent]]\nname = \"coder\"\ncount = 2\nhost = \"build-2\"\n[[agent]]\nname = \"tester\"\nhost = \"build-1\"\n",
        )
        .expect("config");
        let plans = plan_team(&config, Path::new("/p")).expect("plan");
        let names = |scope: &HostScope| -> Vec<String> {
            scope
                .select(plans.clone())
                .into_iter()
                .map(|plan| plan.name)
                .collect()
        };
        let main = HostScope {
            name: "build-1".to_string(),
            main: true,
        };
        assert_eq!(names(&main), ["lead", "tester"]);
        let second = HostScope {
            name: "build-2".to_string(),
            main: false,
        };
        assert_eq!(names(&second), ["coder-1", "coder-2"]);
        let elsewhere = HostScope {
            name: "laptop".to_string(),
            main: false,
        };
        assert!(names(&elsewhere).is_empty());
        assert!(!this_host().is_empty());
    }

    #[test]
    fn settings_left_out_pass_nothing() {
        let args = args_of("[[agent]]\nname = \"a\"\n", None);
        let joined = args[0].join(" ");
        for flag in ["--model", "--permission-mode", "--allowedTools", "--resume"] {
            assert!(!joined.contains(flag), "{joined}");
        }
        assert!(joined.starts_with(
            "-p --input-format stream-json --output-format stream-json --verbose --mcp-config"
        ));
    }

    #[test]
    fn settings_given_are_passed_and_defaults_fill_in() {
        let text = r#"
[defaults]
model = "sonnet"
permission_mode = "acceptEdits"
[[agent]]
name = "a"
allowed_tools = ["Read", "Bash(cargo *)"]
disallowed_tools = ["WebFetch"]
prompt = "You review."
"#;
        let args = &args_of(text, Some("s-1"))[0];
        let after = |flag: &str| {
            args.iter()
                .position(|arg| arg == flag)
                .and_then(|at| args.get(at + 1))
                .cloned()
        };
        assert_eq!(after("--model").as_deref(), Some("sonnet"));
        assert_eq!(after("--permission-mode").as_deref(), Some("acceptEdits"));
        assert_eq!(after("--allowedTools").as_deref(), Some("Read"));
        assert_eq!(after("--disallowedTools").as_deref(), Some("WebFetch"));
        assert_eq!(after("--resume").as_deref(), Some("s-1"));
        let prompt = after("--append-system-prompt").unwrap_or_default();
        assert!(prompt.starts_with(PROTOCOL) && prompt.ends_with("You review."));
    }

    #[test]
    fn a_command_template_gets_exactly_what_it_names() {
        let text = "[[agent]]\nname = \"a\"\nrole = \"coder\"\nmodel = \"m1\"\ncommand = \"/bin/echo --cfg={mcp_config} --model {model} --role={role} --resume={resume} {args}\"\n";
        let config = Config::parse(text).expect("config");
        let plans = plan_team(&config, Path::new("/p")).expect("plan");
        let (program, args) = command_line(&plans[0], &files(), None).expect("command");
        assert_eq!(program, PathBuf::from("/bin/echo"));
        assert_eq!(args[0], "--cfg=/p/.conclave/agents/a/mcp.json");
        assert_eq!(&args[1..4], ["--model", "m1", "--role=coder"]);
        assert!(!args.iter().any(|a| a.starts_with("--resume=")), "{args:?}");
        assert!(
            args.contains(&"stream-json".to_string()),
            "{{args}} expands: {args:?}"
        );

        let text = "[[agent]]\nname = \"a\"\ncommand = \"/bin/echo {bogus}\"\n";
        let config = Config::parse(text).expect("config");
        let plans = plan_team(&config, Path::new("/p")).expect("plan");
        let error = command_line(&plans[0], &files(), None).expect_err("unknown placeholder");
        assert!(error.to_string().contains("{bogus}"), "{error}");
    }
}
