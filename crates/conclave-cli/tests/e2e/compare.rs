//! `conclave compare` end to end: all five ways with the real Claude Code CLI against the scripted
//! stand-in, on a small seeded repository whose check (`sh check.sh`) fails until `greet.sh`
//! exists and greets. The report must be labelled scripted, every way must pass the check, and
//! every figure of the report must be what the run's own event log and agent records say — and
//! the model calls what the stand-in received from the run's tree.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::{CliEnv, claude_or_skip};
use conclave_standin::{RecordedRequest, Reply, Script, StandIn};
use serde_json::{Value, json};

use crate::support::{BIN, serial};

const GREETING: &str = "printf 'Hello, %s!\\n' \"$1\"\n";

/// The run trees in the order they appeared, and the tree each main request was answered for.
/// The runs of a comparison come one after the other, so the newest tree is the running one
/// (the CLI's request names no working directory).
#[derive(Clone, Default)]
struct Runs {
    out: PathBuf,
    seen: Arc<Mutex<Vec<PathBuf>>>,
    answered_for: Arc<Mutex<Vec<PathBuf>>>,
}

impl Runs {
    fn current(&self) -> Option<PathBuf> {
        let mut seen = self.seen.lock().ok()?;
        let mut fresh: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.out)
            .ok()?
            .filter_map(|entry| entry.ok())
            .flat_map(|comparison| {
                std::fs::read_dir(comparison.path().join("runs"))
                    .into_iter()
                    .flatten()
            })
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .filter(|path| !seen.contains(path))
            .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
            .collect();
        fresh.sort();
        seen.extend(fresh.into_iter().map(|(_, path)| path));
        let current = seen.last().cloned()?;
        self.answered_for.lock().ok()?.push(current.clone());
        Some(current)
    }

    fn requests_in(&self, dir: &Path) -> usize {
        self.answered_for
            .lock()
            .map(|all| all.iter().filter(|d| d.as_path() == dir).count())
            .unwrap_or(0)
    }
}

/// The model: a careful worker in each way. A Conclave team agent claims, writes `greet.sh` if
/// it is not there yet, and finishes the task with `done`; anyone else (one session, a loop
/// iteration, an uncoordinated instance) writes the file unless it is there, then ends.
fn model(runs: Runs) -> Script {
    Script::from_fn(move |request: &RecordedRequest| {
        let Some(dir) = runs.current() else {
            return Reply::text("Stopping: no run is going on.");
        };
        let target = dir.join("greet.sh");
        let written = std::fs::read_to_string(&target).is_ok_and(|text| text == GREETING);
        let write = || {
            Reply::tool_use(
                "Write",
                json!({"file_path": target.to_string_lossy(), "content": GREETING}),
            )
        };
        let team_agent = request.tool_names().contains(&"mcp__conclave__claim")
            && !request
                .system_text()
                .contains("iteration of `conclave loop`");
        let last = last_call(request);
        if !team_agent {
            return match last {
                None if !written => write(),
                None => Reply::text("greet.sh is there already."),
                Some(_) => Reply::text("Wrote greet.sh."),
            };
        }
        let claimed = request.all_tool_results().iter().rev().find_map(|result| {
            let rest = result.content.strip_prefix("Claimed ")?;
            rest.split_whitespace().next().map(str::to_string)
        });
        match last.as_deref() {
            None => Reply::tool_use("mcp__conclave__claim", json!({})),
            Some("mcp__conclave__claim") => match claimed {
                Some(_) if !written => write(),
                Some(id) => Reply::tool_use(
                    "mcp__conclave__done",
                    json!({"id": id, "summary": "greet.sh greets"}),
                ),
                None => Reply::text("Nothing for me now."),
            },
            Some("Write") => match claimed {
                Some(id) => Reply::tool_use(
                    "mcp__conclave__done",
                    json!({"id": id, "summary": "wrote greet.sh", "files": ["greet.sh"]}),
                ),
                None => Reply::text("Wrote greet.sh."),
            },
            Some(_) => Reply::text("Finished."),
        }
    })
}

/// The name of the tool whose result the request reports, if it reports one (else a new turn).
fn last_call(request: &RecordedRequest) -> Option<String> {
    let messages = request.messages();
    let last = messages.last()?;
    let id = last["content"]
        .as_array()?
        .iter()
        .rev()
        .find(|block| block["type"] == "tool_result")?["tool_use_id"]
        .as_str()?
        .to_string();
    messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|block| block["id"] == id.as_str())
        .and_then(|block| block["name"].as_str())
        .map(str::to_string)
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "git {args:?} failed");
    Ok(())
}

/// A repository whose check fails until the task is done.
fn seeded_repo(root: &Path) -> Result<()> {
    git(root, &["init", "-q", "-b", "main"])?;
    git(root, &["config", "user.email", "e2e@example.invalid"])?;
    git(root, &["config", "user.name", "e2e"])?;
    std::fs::write(root.join("README.md"), "# Greeter\n")?;
    std::fs::write(
        root.join("check.sh"),
        "test -f greet.sh || { echo 'greet.sh is missing'; exit 1; }\n\
         test \"$(sh greet.sh World)\" = 'Hello, World!'\n",
    )?;
    std::fs::write(
        root.join("conclave.toml"),
        "[server]\nclaim_ttl_secs = 600\n\n[defaults]\npermission_mode = \"acceptEdits\"\n\
         model = \"scripted-stand-in\"\nhibernate_after = \"30m\"\n",
    )?;
    std::fs::write(root.join(".gitignore"), ".conclave/\n")?;
    git(root, &["add", "-A"])?;
    git(root, &["commit", "-q", "-m", "seed"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_all_five_ways_and_its_figures_match_the_event_log() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let repo = tempfile::Builder::new()
        .prefix("conclave-compare-")
        .tempdir()?;
    let root = repo.path().canonicalize()?;
    seeded_repo(&root)?;
    let out = root.join(".conclave/compare");
    let task_file = root.join(".conclave/task.md");
    std::fs::create_dir_all(root.join(".conclave"))?;
    std::fs::write(
        &task_file,
        "# Add greet.sh\n\n`sh greet.sh NAME` prints `Hello, NAME!`. `sh check.sh` passes when it works.\n",
    )?;
    let runs_seen = Runs {
        out: out.clone(),
        ..Runs::default()
    };
    let stand_in = StandIn::start(model(runs_seen.clone())).await?;
    let mut env = CliEnv::new(&stand_in.url(), "key-compare")?;
    // Every MCP tool's full definition in each request, so it can be measured here.
    env.set("ENABLE_TOOL_SEARCH", "false");
    env.trust_folder(&root)?;
    let mut command = env.command(Path::new(BIN));
    command
        .args(["compare", "--task"])
        .arg(&task_file)
        .args(["--check", "sh check.sh", "--scripted", "--timeout", "150s"])
        .current_dir(&root)
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(std::time::Duration::from_secs(900), command.output())
        .await
        .context("conclave compare did not finish in time")??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("{stderr}");
    ensure!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status.code()
    );
    ensure!(stderr.contains("SCRIPTED"), "no scripted label: {stderr}");
    for way in ["single", "loop", "team", "uncoordinated", "pipeline"] {
        ensure!(
            stderr.lines().any(|line| line.starts_with(way)),
            "no progress line for {way}: {stderr}"
        );
    }

    let folder = std::fs::read_dir(&out)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.is_dir())
        .context("no comparison folder")?;
    let name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .context("folder name")?
        .to_string();
    let comparison: Value = serde_json::from_str(&std::fs::read_to_string(
        folder.join(format!("{name}.json")),
    )?)?;
    ensure!(comparison["scripted"] == true, "{comparison}");
    let report = std::fs::read_to_string(folder.join("report.md"))?;
    // How docs/compare.md's example was made: this scripted run's report and charts, kept.
    if let Some(keep) = std::env::var_os("CONCLAVE_COMPARE_EXAMPLE") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep)?;
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "svg" || ext == "md")
            {
                std::fs::copy(&path, keep.join(path.file_name().context("file name")?))?;
            }
        }
    }
    ensure!(report.contains("SCRIPTED"), "{report}");
    for chart in [
        "cost_usd",
        "wall_secs",
        "input_tokens",
        "coordination_tokens",
    ] {
        let svg = std::fs::read_to_string(folder.join(format!("{chart}.svg")))?;
        ensure!(
            svg.contains("<svg") && svg.contains("pipeline"),
            "{chart}.svg: {svg}"
        );
        ensure!(
            report.contains(&format!("({chart}.svg)")),
            "{chart} not in the report"
        );
    }

    let runs = comparison["runs"].as_array().context("runs")?;
    ensure!(runs.len() == 5, "{runs:?}");
    let requests = stand_in.main_requests();
    let definitions = conclave_definition_chars(&requests)?;
    for run in runs {
        let way = run["way"].as_str().context("way")?;
        ensure!(run["ended"] == "finished", "{way}: {run}");
        ensure!(run["check_passed"] == true, "{way} failed its check: {run}");
        ensure!(run["files_changed"] == 1, "{way}: {run}");
        ensure!(
            run["cost_usd"].as_f64() > Some(0.0),
            "{way} cost nothing: {run}"
        );
        let dir = PathBuf::from(run["dir"].as_str().context("dir")?);
        let log = EventLog::read(&dir)?;
        // Every figure is what the run's own records say.
        ensure!(
            (run["cost_usd"].as_f64().unwrap_or(-1.0) - log.cost_usd).abs() < 1e-9,
            "{way}: cost {} vs {}",
            run["cost_usd"],
            log.cost_usd
        );
        for (key, expected) in [
            ("turns", log.account["model_calls"].as_i64()),
            ("input_tokens", log.account["input_tokens"].as_i64()),
            ("output_tokens", log.account["output_tokens"].as_i64()),
            ("lease_denials", Some(log.count("lease.denied"))),
            ("send_backs", Some(log.count("task.sent_back"))),
            ("agents", Some(log.agents_that_ran)),
        ] {
            ensure!(
                run[key].as_i64() == expected,
                "{way}: {key} {} vs {expected:?}",
                run[key]
            );
        }
        // ... and the model calls are the requests the stand-in received from the run's tree.
        let received = runs_seen.requests_in(&dir);
        ensure!(
            run["turns"].as_i64() == Some(received as i64),
            "{way}: {} model calls counted, {received} requests received",
            run["turns"],
        );
        // A team's coder may not even start when the architect finishes first under load.
        let agents = run["agents"].as_i64().unwrap_or(0);
        let expected = match way {
            "single" | "loop" => 1..=1,
            "team" => 1..=3,
            "uncoordinated" => 3..=3,
            _ => 2..=2,
        };
        ensure!(expected.contains(&agents), "{way}: {run}");
        match way {
            "single" | "uncoordinated" => ensure!(
                run["coordination_tokens"] == 0,
                "{way} has no coordination: {run}"
            ),
            _ => ensure!(
                run["coordination_percent"].as_f64() > Some(0.0),
                "{way} coordinates: {run}"
            ),
        }
        if way == "team" {
            // The definitions part: as many as the model received, in every call.
            let protocol = conclave_supervisor::plan::PROTOCOL.chars().count();
            let per_call =
                conclave_supervisor::coordination::estimate_tokens(definitions + protocol);
            let definitions_tokens = log.account["definitions_tokens"].as_i64().unwrap_or(-1);
            ensure!(
                definitions_tokens == per_call * received as i64,
                "team: {definitions_tokens} definition tokens, expected {per_call} × {received}"
            );
        }
    }
    ensure!(
        report.contains("The check passed: single 1 of 1"),
        "{report}"
    );
    ensure!(report.contains("no spread was measured"), "{report}");

    // A team run's agents carry their coordination account: `status` and `agent list --json`
    // show it from the run's own server.
    let team_dir = runs
        .iter()
        .find(|run| run["way"] == "team")
        .and_then(|run| run["dir"].as_str())
        .map(PathBuf::from)
        .context("the team run")?;
    let team_server = crate::support::Server::start(&team_dir, "127.0.0.1:0").await?;
    let status = conclave_in(&team_dir, &["status"]).await?;
    ensure!(
        status.contains("architect: coordination: ")
            && status.contains("% of input, ≈ ")
            && status.contains("(estimated at 4 characters a token)"),
        "{status}"
    );
    let agents: Value =
        serde_json::from_str(&conclave_in(&team_dir, &["agent", "list", "--json"]).await?)?;
    let architect = agents["agents"]
        .as_array()
        .and_then(|list| list.iter().find(|agent| agent["name"] == "architect"))
        .context("the architect")?;
    ensure!(
        architect["coordination"]["definitions_tokens"].as_i64() > Some(0),
        "{architect}"
    );
    drop(team_server);

    // The project's server lists the comparison for the dashboard and serves its report.
    let server = crate::support::Server::start(&root, "127.0.0.1:0").await?;
    let token = std::fs::read_to_string(root.join(".conclave/admin.token"))?;
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("{}/api/comparisons", server.url))
        .bearer_auth(token.trim())
        .send()
        .await?
        .json()
        .await?;
    let listed = &list["comparisons"][0];
    ensure!(
        listed["name"] == name.as_str() && listed["scripted"] == true,
        "{list}"
    );
    ensure!(listed["passed"] == 5 && listed["runs"] == 5, "{list}");
    let served = http
        .get(format!(
            "{}{}",
            server.url,
            listed["report"].as_str().unwrap_or_default()
        ))
        .bearer_auth(token.trim())
        .send()
        .await?
        .text()
        .await?;
    ensure!(served == report, "the served report differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_repeats_a_way_in_fresh_trees_and_reports_its_median_and_spread() -> Result<()> {
    let _serial = serial().await;
    let Some(claude) = claude_or_skip() else {
        return Ok(());
    };
    let repo = tempfile::Builder::new()
        .prefix("conclave-compare-")
        .tempdir()?;
    let root = repo.path().canonicalize()?;
    seeded_repo(&root)?;
    let out = root.join("reports");
    let task_file = root.join("task.md");
    std::fs::write(
        &task_file,
        "- add greet.sh: `sh greet.sh NAME` prints `Hello, NAME!`\n",
    )?;
    let runs_seen = Runs {
        out: out.clone(),
        ..Runs::default()
    };
    let stand_in = StandIn::start(model(runs_seen.clone())).await?;
    let env = CliEnv::new(&stand_in.url(), "key-compare")?;
    let mut command = env.command(Path::new(BIN));
    command
        .args(["compare", "--task"])
        .arg(&task_file)
        .args(["--check", "sh check.sh", "--scripted", "--ways", "single"])
        .args(["--repeat", "2", "--timeout", "120s", "--out"])
        .arg(&out)
        .current_dir(&root)
        .env("CONCLAVE_CLAUDE_BIN", &claude)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), command.output())
        .await
        .context("conclave compare did not finish in time")??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status.code()
    );
    let folder = std::fs::read_dir(&out)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.is_dir())
        .context("no comparison folder")?;
    let name = folder
        .file_name()
        .and_then(|n| n.to_str())
        .context("name")?;
    let comparison: Value = serde_json::from_str(&std::fs::read_to_string(
        folder.join(format!("{name}.json")),
    )?)?;
    let runs = comparison["runs"].as_array().context("runs")?;
    ensure!(runs.len() == 2, "{runs:?}");
    // Each repeat had a tree of its own, from the same commit: both had to write the file.
    for (index, run) in runs.iter().enumerate() {
        ensure!(run["repeat"] == index as i64 + 1, "{run}");
        ensure!(
            run["check_passed"] == true && run["files_changed"] == 1,
            "{run}"
        );
        ensure!(
            run["dir"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!("runs/single-{}", index + 1))),
            "{run}"
        );
    }
    let costs: Vec<f64> = runs.iter().filter_map(|r| r["cost_usd"].as_f64()).collect();
    let spread = &comparison["summary"]["single"]["cost_usd"];
    ensure!(spread["runs"] == 2, "{spread}");
    ensure!(
        spread["min"].as_f64() == costs.iter().copied().reduce(f64::min)
            && spread["max"].as_f64() == costs.iter().copied().reduce(f64::max),
        "{spread} vs {costs:?}"
    );
    let report = std::fs::read_to_string(folder.join("report.md"))?;
    ensure!(
        report.contains("The check passed: single 2 of 2"),
        "{report}"
    );
    ensure!(!report.contains("no spread was measured"), "{report}");
    Ok(())
}

/// `conclave ARGS` in `dir` (its own server): its stdout.
async fn conclave_in(dir: &Path, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("CONCLAVE_URL")
        .env_remove("CONCLAVE_AGENT")
        .env_remove("CONCLAVE_TOKEN")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "conclave {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The Conclave tool definitions as the model received them (the stand-in's record), and the
/// same as Conclave counts them: they must agree.
fn conclave_definition_chars(requests: &[RecordedRequest]) -> Result<usize> {
    let request = requests
        .iter()
        .find(|request| {
            request
                .tool_names()
                .iter()
                .any(|n| n.starts_with("mcp__conclave__"))
        })
        .context("no request carried the Conclave tools")?;
    let tools: Vec<Value> = request.body["tools"]
        .as_array()
        .context("tools")?
        .iter()
        .filter(|tool| {
            tool["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("mcp__conclave__"))
        })
        .map(|tool| {
            json!({"name": tool["name"], "description": tool["description"],
                   "input_schema": tool["input_schema"]})
        })
        .collect();
    let received = serde_json::to_string(&tools)?.chars().count();
    let json = conclave_server::tool_definitions_json();
    let counted = conclave_supervisor::coordination::tool_definition_chars(&json, tools.len());
    ensure!(
        received == counted,
        "the model received {received} characters of Conclave tool definitions, Conclave counts {counted}"
    );
    Ok(counted)
}

/// A run's database, read directly.
struct EventLog {
    kinds: Vec<String>,
    cost_usd: f64,
    /// The agents' coordination accounts added up.
    account: Value,
    agents_that_ran: i64,
}

impl EventLog {
    fn read(dir: &Path) -> Result<EventLog> {
        let path = conclave_core::project::Project::at(dir).database();
        let db = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .with_context(|| format!("open {}", path.display()))?;
        let mut kinds = Vec::new();
        let mut statement = db.prepare("SELECT kind FROM events ORDER BY seq")?;
        for kind in statement.query_map([], |row| row.get::<_, String>(0))? {
            kinds.push(kind?);
        }
        let mut cost_usd = 0.0;
        let mut agents_that_ran = 0;
        let mut account = json!({"model_calls": 0, "input_tokens": 0, "output_tokens": 0,
                                 "definitions_tokens": 0});
        let mut statement = db.prepare("SELECT cost_usd, coordination FROM agents")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, f64>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        for row in rows {
            let (cost, coordination) = row?;
            cost_usd += cost;
            let coordination: Value = coordination
                .map(|text| serde_json::from_str(&text))
                .transpose()?
                .unwrap_or(Value::Null);
            if coordination["model_calls"].as_i64() > Some(0) || cost > 0.0 {
                agents_that_ran += 1;
            }
            for key in [
                "model_calls",
                "input_tokens",
                "output_tokens",
                "definitions_tokens",
            ] {
                let sum =
                    account[key].as_i64().unwrap_or(0) + coordination[key].as_i64().unwrap_or(0);
                account[key] = json!(sum);
            }
        }
        Ok(EventLog {
            kinds,
            cost_usd,
            account,
            agents_that_ran,
        })
    }

    fn count(&self, kind: &str) -> i64 {
        self.kinds.iter().filter(|k| *k == kind).count() as i64
    }
}
