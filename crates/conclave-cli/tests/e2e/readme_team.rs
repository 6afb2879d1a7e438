//! The README's example team ("A team with your API key") runs under `conclave up` against the
//! scripted stand-in: the test reads README.md at test time, takes the shell block of that
//! section apart, and runs its steps in order in a throwaway repo: the exported API key,
//! `conclave init` (after `git init`), the `conclave.toml` lines appended verbatim, the server,
//! the task, `conclave up` and `conclave down`. What the test adds is in the environment
//! `conclave up` runs in (which the agents inherit), never in `conclave.toml`: the stand-in's
//! key and `ANTHROPIC_BASE_URL`, a temporary `HOME`, nonessential traffic off (`CliEnv`), the
//! pinned CLI (`CONCLAVE_CLAUDE_BIN`) and a default model (`ANTHROPIC_MODEL`) that tells an
//! agent without `model` apart from one with `--model opus`.
//!
//! The agents all inherit the one key, as in the README, so they share one lane of the script,
//! which tells them apart by the first message the supervisor sends each ("You are coder-1, ...").
//! The architect claims the README's task, splits it with `add_tasks` into two coder tasks (once
//! both coders have found nothing ready and gone idle) and finishes it; the supervisor wakes
//! each coder, which claims one task, writes the file it names, and finishes it with `done`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use conclave_core::config::{AgentSpec, Config};
use conclave_standin::claude_cli::{CliEnv, claude_or_skip};
use conclave_standin::{Gate, RecordedRequest, Reply, Script, StandIn, StandInHandle};
use serde_json::{Value, json};

use crate::supervisor::kinds;
use crate::support::{AgentProcess, BIN, Server, Team, events, serial};

/// The section of README.md whose shell block is run.
const SECTION: &str = "## A team with your API key";
/// The key the test exports in place of the README's `sk-ant-...`.
const KEY: &str = "key-readme-team";
/// The whole team's run, from `conclave up` to its exit.
const UP_TIMEOUT: Duration = Duration::from_secs(240);
/// The client's default model in the test (`ANTHROPIC_MODEL`).
const DEFAULT_MODEL: &str = "stand-in-default-model";
/// The files the two coder tasks name, relative to the project root.
const FILES: [&str; 2] = ["src/export/json_flag.rs", "src/export/json_output.rs"];

/// One step of the README's shell block.
#[derive(Debug)]
enum Step {
    /// `export NAME=...`
    Export(String),
    /// `cat >> conclave.toml <<'TOML'` ... `TOML`: the lines in between.
    AppendConfig(String),
    /// `conclave ARGS &`
    Background(Vec<String>),
    /// `conclave ARGS`
    Conclave(Vec<String>),
}

/// The shell block that follows [`SECTION`] in the README.
fn readme_block(readme: &str) -> Result<String> {
    let section = readme
        .split_once(SECTION)
        .with_context(|| format!("README.md has no section {SECTION:?}"))?
        .1;
    let start = section
        .split_once("```sh\n")
        .context("no ```sh block in the section")?
        .1;
    let block = start
        .split_once("```")
        .context("the ```sh block is not closed")?
        .0;
    Ok(block.to_string())
}

/// The steps of a shell block, in order. Fails on a line it does not know how to run, so that
/// a README change shows up here.
fn steps(block: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let words = shell_words(line)?;
        if words.is_empty() {
            continue;
        }
        if words[0] == "cat" {
            let Some(marker) = line
                .split_once("<<")
                .map(|(_, m)| m.trim().trim_matches('\''))
            else {
                bail!("a cat without a heredoc: {line}");
            };
            ensure!(
                line.contains(">> conclave.toml"),
                "the heredoc does not append to conclave.toml: {line}"
            );
            let mut text = String::new();
            loop {
                let line = lines
                    .next()
                    .with_context(|| format!("the heredoc {marker} is not closed"))?;
                if line.trim() == marker {
                    break;
                }
                text.push_str(line);
                text.push('\n');
            }
            steps.push(Step::AppendConfig(text));
            continue;
        }
        for command in words.split(|word| word == "&&") {
            match command {
                [] => bail!("an empty command in {line}"),
                [export, assignment] if export == "export" => {
                    let name = assignment
                        .split_once('=')
                        .with_context(|| format!("export without a value: {line}"))?
                        .0;
                    steps.push(Step::Export(name.to_string()));
                }
                // The test's repo stands for `your-repo`.
                [cd, _] if cd == "cd" => {}
                [conclave, args @ ..] if conclave == "conclave" => match args {
                    [rest @ .., amp] if amp == "&" => steps.push(Step::Background(rest.to_vec())),
                    _ => steps.push(Step::Conclave(args.to_vec())),
                },
                _ => bail!("the test does not know how to run {command:?} (README line: {line})"),
            }
        }
    }
    Ok(steps)
}

/// A line split into words the way `sh` would for these simple lines: quotes grouped, a
/// `#` that starts a word begins a comment, and `&` alone is kept as a word.
fn shell_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => break,
            '\'' | '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                        None => bail!("unclosed quote in {line}"),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The last tool call of the conversation (its name and input) and its result, when this
/// request reports one.
fn last_call(request: &RecordedRequest) -> Option<(String, Value, String)> {
    let result = request.tool_results().pop()?;
    let tool_use = request
        .messages()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|block| block["id"] == result.tool_use_id.as_str())?;
    Some((
        tool_use["name"].as_str()?.to_string(),
        tool_use["input"].clone(),
        result.content,
    ))
}

/// The id of the task this session claimed (`Claimed T-2 [claimed] ...`).
fn claimed_task(request: &RecordedRequest) -> Option<String> {
    request.all_tool_results().iter().rev().find_map(|result| {
        let rest = result.content.strip_prefix("Claimed ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// Whether this session has already finished a task (`T-2 done; ...`).
fn finished_a_task(request: &RecordedRequest) -> bool {
    request
        .all_tool_results()
        .iter()
        .any(|result| !result.is_error && result.content.contains(" done; "))
}

/// Who sent the request: the name in the supervisor's first message of the session.
fn agent_of(request: &RecordedRequest) -> Option<String> {
    let prompt = request.user_prompt()?;
    let rest = prompt.split("You are ").nth(1)?;
    let name = rest.split([',', ' ']).next()?;
    Some(name.to_string())
}

/// What the team's script shares between the agents' requests.
struct Story {
    root: PathBuf,
    /// Opened once both coders have found nothing ready: the architect's `add_tasks` waits for
    /// it, so that the coders are idle when their tasks arrive and the supervisor must wake them.
    coders_idle: Gate,
    idle: Mutex<BTreeSet<String>>,
}

/// The whole team's script: one lane (one key, as in the README), each agent told apart by
/// its name.
fn team_member(story: &Story, request: &RecordedRequest) -> Reply {
    match agent_of(request).as_deref() {
        Some("architect") => architect(story, request),
        Some(name) if name.starts_with("coder-") => coder(story, name, request),
        other => Reply::text(format!("The script does not know {other:?}.")),
    }
}

fn architect(story: &Story, request: &RecordedRequest) -> Reply {
    let Some((tool, _, result)) = last_call(request) else {
        // The start of a turn.
        return if finished_a_task(request) {
            Reply::text("The design is done; the coders have their tasks.")
        } else {
            Reply::tool_use("mcp__conclave__claim", json!({}))
        };
    };
    match tool.as_str() {
        "mcp__conclave__claim" if result.starts_with("Claimed") => {
            Reply::text("Two parts: the flag, and the JSON output. One task each for the coders.")
                .then_tool_use(
                    "mcp__conclave__add_tasks",
                    json!({"tasks": [
                        {"title": "Parse --json in the export command", "role": "coder",
                         "body": format!("File: {}", FILES[0])},
                        {"title": "Print the export as JSON", "role": "coder",
                         "body": format!("File: {}", FILES[1])},
                    ]}),
                )
                .held_by(&story.coders_idle)
        }
        "mcp__conclave__add_tasks" if result.starts_with("Created") => {
            match claimed_task(request) {
                Some(id) => Reply::tool_use(
                    "mcp__conclave__done",
                    json!({"id": id, "summary": format!("split into coder tasks: {result}")}),
                ),
                None => Reply::text("I hold no task."),
            }
        }
        _ => Reply::text("Done for now."),
    }
}

/// A coder does one task: claim, write the file its task names, done; then it ends its turns
/// (so that the other coder gets the other task).
fn coder(story: &Story, me: &str, request: &RecordedRequest) -> Reply {
    let Some((tool, _, result)) = last_call(request) else {
        return if finished_a_task(request) {
            Reply::text("My part is done.")
        } else {
            Reply::tool_use("mcp__conclave__claim", json!({}))
        };
    };
    match tool.as_str() {
        "mcp__conclave__claim" if result.starts_with("Claimed") => {
            let file = result
                .lines()
                .find_map(|line| line.strip_prefix("File: "))
                .unwrap_or("unnamed.rs")
                .trim();
            Reply::tool_use(
                "Write",
                json!({
                    "file_path": story.root.join(file).display().to_string(),
                    "content": format!("// written by {me}\n"),
                }),
            )
        }
        "mcp__conclave__claim" => {
            let mut idle = story.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.insert(me.to_string());
            if idle.len() == 2 {
                story.coders_idle.open();
            }
            Reply::text("Nothing is ready for me; I'll be woken.")
        }
        "Write" => match claimed_task(request) {
            Some(id) => Reply::tool_use(
                "mcp__conclave__done",
                json!({"id": id, "summary": "written"}),
            ),
            None => Reply::text("I hold no task."),
        },
        _ => Reply::text("My part is done."),
    }
}

/// The README's agents as the supervisor names them, with their specs.
fn expected_agents(config: &Config) -> Vec<(String, &AgentSpec)> {
    let mut agents = Vec::new();
    for spec in &config.agents {
        match spec.count {
            Some(count) => {
                agents.extend((1..=count).map(|n| (format!("{}-{n}", spec.name), spec)));
            }
            None => agents.push((spec.name.clone(), spec)),
        }
    }
    agents
}

/// The `system/init` line of an agent's raw stream.
fn init_line(root: &Path, agent: &str) -> Result<Value> {
    let path = root
        .join(".conclave/agents")
        .join(agent)
        .join("stream.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["type"] == "system" && line["subtype"] == "init")
        .with_context(|| format!("no system/init line in {}", path.display()))
}

/// Checks what the README's team did, while the server still runs.
async fn check_the_team(
    team: &Team,
    stand_in: &StandInHandle,
    config: &Config,
    task_title: &str,
    up_stderr: &str,
) -> Result<()> {
    let expected = expected_agents(config);
    let names: Vec<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["architect", "coder-1", "coder-2"],
        "the README's agents"
    );
    assert!(
        up_stderr.contains(&format!(
            "running {} agent(s): {}",
            names.len(),
            names.join(", ")
        )),
        "{up_stderr}"
    );
    assert!(up_stderr.contains("the team has finished"), "{up_stderr}");
    assert!(up_stderr.contains("/?token="), "{up_stderr}");

    let requests: Vec<RecordedRequest> = stand_in.main_requests_for(KEY);
    let list = team.conclave_json(&["agent", "list", "--json"]).await?;
    for (name, spec) in &expected {
        let record = list["agents"]
            .as_array()
            .and_then(|agents| agents.iter().find(|a| a["name"] == name.as_str()))
            .with_context(|| format!("{name} is not listed: {list:#}"))?;
        assert_eq!(record["role"].as_str(), spec.role.as_deref(), "{record:#}");
        let init = init_line(team.root(), name)?;
        let mode = spec
            .settings
            .permission_mode
            .as_deref()
            .unwrap_or("default");
        assert_eq!(init["permissionMode"], mode, "{name}: {init:#}");
        let mine: Vec<&RecordedRequest> = requests
            .iter()
            .filter(|r| agent_of(r).as_deref() == Some(name.as_str()))
            .collect();
        ensure!(!mine.is_empty(), "{name} made no model call");
        // `model = "opus"` is passed as `--model opus`, which the client resolves to an Opus
        // model; an agent without `model` gets the client's default (ANTHROPIC_MODEL here).
        let init_model = init["model"].as_str().unwrap_or_default();
        for request in &mine {
            let model = request.model().unwrap_or_default();
            match &spec.settings.model {
                Some(wanted) => {
                    assert!(
                        model.contains(wanted.as_str()) && model != DEFAULT_MODEL,
                        "{name} asked for {model}, not {wanted}"
                    );
                    assert!(init_model.contains(wanted.as_str()), "{name}: {init:#}");
                }
                None => {
                    assert_eq!(model, DEFAULT_MODEL, "{name}");
                    assert_eq!(init_model, DEFAULT_MODEL, "{name}");
                }
            }
            if let Some(prompt) = &spec.settings.prompt {
                assert!(
                    request.system_text().contains(prompt.as_str()),
                    "{name}'s system prompt lacks the README's prompt"
                );
            }
        }
    }

    let tasks = team.conclave_json(&["task", "list", "--json"]).await?;
    let tasks = tasks["tasks"].as_array().context("no task list")?.clone();
    ensure!(tasks.len() == 3, "{tasks:#?}");
    for task in &tasks {
        assert_eq!(task["status"], "done", "{task:#}");
    }
    let (designs, coder_tasks): (Vec<&Value>, Vec<&Value>) =
        tasks.iter().partition(|task| task["role"] == "architect");
    ensure!(designs.len() == 1, "{tasks:#?}");
    assert_eq!(designs[0]["title"], task_title, "{tasks:#?}");
    assert_eq!(designs[0]["assignee"], "architect", "{tasks:#?}");
    let mut coders: Vec<&str> = coder_tasks
        .into_iter()
        .map(|task| {
            assert_eq!(task["role"], "coder", "{task:#}");
            task["assignee"].as_str().unwrap_or_default()
        })
        .collect();
    coders.sort_unstable();
    assert_eq!(coders, ["coder-1", "coder-2"], "one task each: {tasks:#?}");
    for file in FILES {
        let text = std::fs::read_to_string(team.path(file))
            .with_context(|| format!("{file} was not written"))?;
        assert!(text.starts_with("// written by coder-"), "{file}: {text}");
    }

    let events = events(team).await?;
    for coder in ["coder-1", "coder-2"] {
        let kinds = kinds(&events, coder);
        for kind in ["agent.started", "agent.tool", "agent.turn"] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "{coder}: {kind} missing: {kinds:?}"
            );
        }
    }
    // Both coders were idle when the tasks arrived: the supervisor woke each with a task.
    for coder in ["coder-1", "coder-2"] {
        let woken = events.iter().any(|e| {
            e["kind"] == "agent.woken"
                && e["agent"] == coder
                && e["data"]["tasks"].as_array().is_some_and(|t| !t.is_empty())
        });
        assert!(woken, "{coder} was not woken with a task");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_team_runs_under_conclave_up() -> Result<()> {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .with_context(|| format!("reading {}", readme_path.display()))?;
    let steps = steps(&readme_block(&readme)?)?;
    let config_text = steps
        .iter()
        .find_map(|step| match step {
            Step::AppendConfig(text) => Some(text.as_str()),
            _ => None,
        })
        .context("the README appends nothing to conclave.toml")?;
    let config = Config::parse(config_text)
        .map_err(|error| anyhow::anyhow!("the README's conclave.toml lines: {error}"))?;
    ensure!(
        steps.iter().any(
            |step| matches!(step, Step::Conclave(args) if args.first().is_some_and(|a| a == "up"))
        ),
        "the README runs no `conclave up`: {steps:?}"
    );

    // The task the README adds: the title of its `conclave task add`.
    let task_title = steps
        .iter()
        .find_map(|step| match step {
            Step::Conclave(args) if args.get(..2) == Some(&["task".into(), "add".into()][..]) => {
                args.get(2).cloned()
            }
            _ => None,
        })
        .context("the README adds no task")?;

    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let _serial = serial().await;

    let mut team: Option<Team> = None;
    let mut stand_in: Option<StandInHandle> = None;
    let mut up_env: Option<CliEnv> = None;
    for step in &steps {
        match step {
            // The test's key stands for the user's; the base URL sends it to the stand-in.
            Step::Export(name) => ensure!(
                name == "ANTHROPIC_API_KEY",
                "the README exports {name}, which the test does not provide"
            ),
            Step::Conclave(args) if args == &["init"] => {
                ensure!(team.is_none(), "init runs twice");
                let created = Team::create().await?;
                let story = Story {
                    root: created.root().to_path_buf(),
                    coders_idle: Gate::new(),
                    idle: Mutex::new(BTreeSet::new()),
                };
                let script =
                    Script::new().agent_fn(KEY, move |request| team_member(&story, request));
                let handle = StandIn::start(script).await?;
                let mut env = CliEnv::new(&handle.url(), KEY)?;
                env.set("CONCLAVE_CLAUDE_BIN", claude.to_string_lossy());
                // The client's default model, so that an agent without `model` is told apart
                // from one given `--model` (this CLI's default is an Opus model too).
                env.set("ANTHROPIC_MODEL", DEFAULT_MODEL);
                up_env = Some(env);
                stand_in = Some(handle);
                team = Some(created);
            }
            Step::AppendConfig(text) => {
                let team = team.as_ref().context("conclave.toml before init")?;
                let path = team.path("conclave.toml");
                let mut config = std::fs::read_to_string(&path)?;
                config.push_str(text);
                std::fs::write(&path, config)?;
            }
            Step::Background(args) => {
                ensure!(
                    args == &["serve"],
                    "the test runs only `conclave serve &`: {args:?}"
                );
                let team = team.as_mut().context("serve before init")?;
                // Any free port, not 7420: the test must not clash with a server of the machine.
                team.server = Some(Server::start(team.root(), "127.0.0.1:0").await?);
            }
            Step::Conclave(args) if args.first().is_some_and(|a| a == "up") => {
                let team = team.as_ref().context("up before init")?;
                let env = up_env.as_ref().context("no environment")?;
                let mut command = env.command(Path::new(BIN));
                command
                    .args(args)
                    .current_dir(team.root())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let mut up = AgentProcess::spawn(command)?;
                let output = up.finish(UP_TIMEOUT).await?;
                let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
                ensure!(
                    output.status.success(),
                    "conclave up failed ({}): {stderr}",
                    output.status
                );
                let stand_in = stand_in.as_ref().context("no stand-in")?;
                check_the_team(team, stand_in, &config, &task_title, &stderr).await?;
            }
            Step::Conclave(args) => {
                let team = team.as_ref().context("a conclave command before init")?;
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                team.conclave(&args).await?;
            }
        }
    }
    let team = team.context("the README never ran conclave init")?;
    ensure!(
        conclave_core::project::Project::at(team.root())
            .read_server_info()
            .is_none(),
        "the README's last step leaves the server running"
    );
    Ok(())
}
