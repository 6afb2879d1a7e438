//! `conclave up` end to end: the supervisor runs real Claude Code processes (driven by the
//! stand-in, one lane per agent through its API key) from a `conclave.toml`, against a real
//! `conclave serve`, and keeps them working: finishing, waking, restarting, recycling,
//! budgets, resuming and hibernation.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use conclave_standin::claude_cli::{CliEnv, claude_or_skip};
use conclave_standin::{RecordedRequest, Reply, Script, StandIn, StandInHandle};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::support::{AGENT_TIMEOUT, AgentProcess, BIN, Team, api_key, events, serial};

/// One agent of a test team: its name, role and extra `conclave.toml` lines.
pub(crate) struct Member {
    pub name: &'static str,
    pub role: Option<&'static str>,
    pub extra: &'static str,
}

/// A team under `conclave up`: the project, the stand-in, and the agents' homes.
pub(crate) struct UpTeam {
    pub team: Team,
    pub stand_in: StandInHandle,
    claude: std::path::PathBuf,
    _homes: Vec<CliEnv>,
    supervisor_env: CliEnv,
}

impl UpTeam {
    /// Starts the server and the stand-in, and writes `conclave.toml` for `members`.
    pub(crate) async fn start(script: Script, members: &[Member]) -> Result<Option<UpTeam>> {
        UpTeam::start_with(script, members, true).await
    }

    /// The same; `serve` false leaves the project with no server (`conclave up` serves it).
    pub(crate) async fn start_with(
        script: Script,
        members: &[Member],
        serve: bool,
    ) -> Result<Option<UpTeam>> {
        let Some(claude) = claude_or_skip() else {
            return Ok(None);
        };
        let team = if serve {
            Team::start().await?
        } else {
            Team::create().await?
        };
        let stand_in = StandIn::start(script).await?;
        let mut toml = String::new();
        let mut homes = Vec::new();
        for member in members {
            let home = CliEnv::new(&stand_in.url(), &api_key(member.name))?;
            let env: Vec<String> = home
                .vars()
                .iter()
                .map(|(key, value)| format!("{key} = {}", json!(value)))
                .collect();
            toml.push_str(&format!("[[agent]]\nname = {}\n", json!(member.name)));
            if let Some(role) = member.role {
                toml.push_str(&format!("role = {}\n", json!(role)));
            }
            toml.push_str("permission_mode = \"acceptEdits\"\n");
            toml.push_str(member.extra);
            toml.push_str(&format!("env = {{ {} }}\n\n", env.join(", ")));
            homes.push(home);
        }
        std::fs::write(team.path("conclave.toml"), toml)?;
        let supervisor_env = CliEnv::new(&stand_in.url(), "key-supervisor")?;
        Ok(Some(UpTeam {
            team,
            stand_in,
            claude,
            _homes: homes,
            supervisor_env,
        }))
    }

    /// `conclave up ARGS`, its stderr captured.
    pub(crate) fn up(&self, args: &[&str]) -> Result<AgentProcess> {
        let mut command = self.supervisor_env.command(Path::new(BIN));
        command
            .arg("up")
            .args(args)
            .current_dir(self.team.root())
            .env("CONCLAVE_CLAUDE_BIN", &self.claude)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        AgentProcess::spawn(command)
    }

    pub(crate) async fn agent(&self, name: &str) -> Result<Value> {
        let list = self
            .team
            .conclave_json(&["agent", "list", "--json"])
            .await?;
        list["agents"]
            .as_array()
            .and_then(|agents| agents.iter().find(|a| a["name"] == name))
            .cloned()
            .with_context(|| format!("{name} is not listed: {list}"))
    }

    /// Polls until `check` holds for agent `name`'s record.
    pub(crate) async fn wait_agent(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + AGENT_TIMEOUT;
        loop {
            // Not listed until the supervisor has registered it.
            let agent = self.agent(name).await.unwrap_or(Value::Null);
            if check(&agent) {
                return Ok(agent);
            }
            ensure!(tokio::time::Instant::now() < deadline, "{what}: {agent:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn requests(&self, name: &str) -> Vec<RecordedRequest> {
        self.stand_in.main_requests_for(&api_key(name))
    }

    pub(crate) async fn wait_requests(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&[RecordedRequest]) -> bool,
    ) -> Result<()> {
        let key = api_key(name);
        self.stand_in
            .wait_for(what, AGENT_TIMEOUT, |requests| {
                let mine: Vec<RecordedRequest> = requests
                    .iter()
                    .filter(|r| r.is_main() && r.api_key() == Some(key.as_str()))
                    .cloned()
                    .collect();
                done(&mine)
            })
            .await?;
        Ok(())
    }
}

/// Waits for `conclave up` to exit; its stderr comes with a failure.
pub(crate) async fn finished(mut up: AgentProcess) -> Result<String> {
    let output = up.finish(AGENT_TIMEOUT).await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.success(),
        "conclave up failed ({}): {stderr}",
        output.status
    );
    Ok(stderr)
}

/// The text of every user and system message of a request.
pub(crate) fn context_text(request: &RecordedRequest) -> String {
    let mut text = Vec::new();
    for message in request.messages() {
        if !matches!(message["role"].as_str(), Some("user" | "system")) {
            continue;
        }
        match &message["content"] {
            Value::String(content) => text.push(content.clone()),
            Value::Array(blocks) => text.extend(
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str().or(b["content"].as_str()))
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    text.join("\n")
}

/// The task id a `claim` result names (`Claimed T-3 ...`).
fn claimed_id(content: &str) -> Option<String> {
    let rest = content.split("Claimed ").nth(1)?;
    let id: String = rest
        .chars()
        .take_while(|c| *c == 'T' || *c == '-' || c.is_ascii_digit())
        .collect();
    (id.len() > 2).then_some(id)
}

/// An agent that claims, finishes what it claimed, and ends its turn when nothing is ready.
pub(crate) fn worker(request: &RecordedRequest) -> Reply {
    match request.tool_results().last() {
        None => Reply::tool_use("mcp__conclave__claim", json!({})),
        Some(result) => match claimed_id(&result.content) {
            Some(id) => Reply::tool_use(
                "mcp__conclave__done",
                json!({"id": id, "summary": "finished"}),
            ),
            None => Reply::text("Nothing more for me now."),
        },
    }
}

/// Idle after a turn ended (a newly registered agent is idle too, with no window yet).
pub(crate) fn after_first_turn(agent: &Value) -> bool {
    agent["status"] == "idle" && agent["context_window"].is_i64()
}

pub(crate) fn kinds(events: &[Value], agent: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["agent"] == agent)
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_runs_a_two_agent_team_through_dependent_tasks_to_the_end() -> Result<()> {
    let _serial = serial().await;
    // The tester starts first and finds nothing ready; the builder's first call is slowed so
    // that the tester is idle by the time the build is done, and must be woken for the test.
    let script = Script::new()
        .agent_fn(&api_key("builder"), |request| {
            let reply = worker(request);
            if request.tool_results().is_empty() {
                reply.with_delay(Duration::from_secs(3))
            } else {
                reply
            }
        })
        .agent_fn(&api_key("tester"), worker);
    let members = [
        Member {
            name: "tester",
            role: Some("tester"),
            extra: "",
        },
        Member {
            name: "builder",
            role: Some("builder"),
            extra: "",
        },
    ];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let build = team
        .conclave(&["task", "add", "Build it", "--role", "builder"])
        .await?;
    let test = team
        .conclave(&[
            "task", "add", "Test it", "--role", "tester", "--after", &build,
        ])
        .await?;
    let stderr = finished(up_team.up(&[])?).await?;
    assert!(stderr.contains("finished"), "{stderr}");
    for (id, holder) in [(&build, "builder"), (&test, "tester")] {
        let task = team.conclave_json(&["task", "show", id, "--json"]).await?;
        assert_eq!(task["status"], "done", "{task:#}");
        assert_eq!(task["assignee"], holder, "{task:#}");
    }
    let events = events(team).await?;
    let tester = kinds(&events, "tester");
    for kind in ["agent.started", "agent.tool", "agent.turn", "agent.woken"] {
        assert!(
            tester.iter().any(|k| k == kind),
            "{kind} missing: {tester:?}"
        );
    }
    let agent = up_team.agent("tester").await?;
    assert!(
        agent["session_id"].is_string() && agent["context_window"].as_i64() > Some(0),
        "{agent:#}"
    );
    assert!(agent["cost_usd"].as_f64() > Some(0.0), "{agent:#}");
    assert!(team.path(".conclave/agents/tester/stream.jsonl").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_a_killed_agent_and_its_task_is_claimed_again() -> Result<()> {
    let _serial = serial().await;
    let dones = Arc::new(AtomicUsize::new(0));
    let script = Script::new().agent_fn(&api_key("solo"), {
        let dones = dones.clone();
        move |request| {
            let reply = worker(request);
            let is_done = request
                .tool_results()
                .last()
                .and_then(|r| claimed_id(&r.content))
                .is_some();
            // The first attempt hangs before finishing: it gets killed there.
            if is_done && dones.fetch_add(1, Ordering::SeqCst) == 0 {
                reply.with_delay(Duration::from_secs(90))
            } else {
                reply
            }
        }
    });
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let team = &up_team.team;
    let task = team.conclave(&["task", "add", "Fix the parser"]).await?;
    let up = up_team.up(&[])?;
    let dones_seen = dones.clone();
    up_team
        .wait_requests("solo", "the first done", move |_| {
            dones_seen.load(Ordering::SeqCst) > 0
        })
        .await?;
    let agent = up_team.agent("solo").await?;
    let pid = agent["pid"].as_i64().context("no pid")?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    finished(up).await?;
    let shown = team
        .conclave_json(&["task", "show", &task, "--json"])
        .await?;
    assert_eq!(shown["status"], "done", "{shown:#}");
    assert_eq!(shown["attempts"], 1, "{shown:#}");
    let agent = up_team.agent("solo").await?;
    assert_eq!(agent["restarts"], 1, "{agent:#}");
    let events = events(team).await?;
    let kinds = kinds(&events, "solo");
    for kind in ["agent.crashed", "task.reclaimed", "agent.restarted"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    let claims = events
        .iter()
        .filter(|e| e["kind"] == "task.claimed")
        .count();
    assert_eq!(claims, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_recycles_a_full_context_with_its_handoff() -> Result<()> {
    let _serial = serial().await;
    let handoff = "parser half done; lexer next";
    let script = Script::new().agent(
        &api_key("solo"),
        [
            Reply::text("Working hard.").with_usage(600_000),
            Reply::tool_use("mcp__conclave__handoff", json!({"summary": handoff})),
            Reply::text("Handed off."),
            Reply::text("Picked up the handoff."),
        ],
    );
    let members = [Member {
        name: "solo",
        role: None,
        extra: "recycle_at = 0.5\n",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    finished(up_team.up(&[])?).await?;
    let requests = up_team.requests("solo");
    ensure!(requests.len() == 4, "{requests:#?}");
    assert_ne!(requests[3].session_id(), requests[0].session_id());
    let fresh = context_text(&requests[3]);
    assert!(fresh.contains(handoff), "{fresh}");
    assert!(fresh.contains("handoff"), "{fresh}");
    let events = events(&up_team.team).await?;
    assert!(kinds(&events, "solo").iter().any(|k| k == "agent.recycled"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_stops_an_agent_past_its_budget() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent(
        &api_key("solo"),
        [Reply::text("Spent a lot.").with_usage(200_000)],
    );
    let members = [Member {
        name: "solo",
        role: None,
        extra: "budget_usd = 0.01\n",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    finished(up_team.up(&[])?).await?;
    let agent = up_team.agent("solo").await?;
    assert_eq!(agent["status"], "stopped", "{agent:#}");
    let events = events(&up_team.team).await?;
    let alert = events
        .iter()
        .find(|e| e["kind"] == "agent.budget_exceeded")
        .context("no agent.budget_exceeded event")?;
    assert_eq!(alert["data"]["budget_usd"], 0.01, "{alert:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_wakes_an_idle_agent_with_the_message_that_arrived() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), worker);
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let up = up_team.up(&["--stay"])?;
    up_team
        .wait_agent("solo", "idle after its first turn", after_first_turn)
        .await?;
    let before = up_team.requests("solo").len();
    let message = "the flaky test is in lexer.rs";
    up_team
        .team
        .conclave(&["msg", "send", "solo", message])
        .await?;
    up_team
        .wait_requests("solo", "a request quoting the message", move |requests| {
            requests.len() > before
                && requests[before..]
                    .iter()
                    .any(|r| context_text(r).contains(message))
        })
        .await?;
    up_team.team.conclave(&["down"]).await?;
    finished(up).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_killed_and_started_again_resumes_the_sessions() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new()
        .agent(&api_key("solo"), [Reply::text("First session turn.")])
        .agent_fn(&api_key("solo"), |_| Reply::text("Resumed."));
    let members = [Member {
        name: "solo",
        role: None,
        extra: "",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let mut up = up_team.up(&["--stay"])?;
    let agent = up_team
        .wait_agent("solo", "idle after its first turn", after_first_turn)
        .await?;
    let session = agent["session_id"]
        .as_str()
        .context("no session id")?
        .to_string();
    drop(up.stdin().ok());
    drop(up); // SIGKILLs the supervisor's process group
    let up = up_team.up(&["--stay"])?;
    up_team
        .wait_requests("solo", "a resumed turn", |requests| requests.len() >= 2)
        .await?;
    let requests = up_team.requests("solo");
    assert_eq!(requests[1].session_id(), Some(session.as_str()));
    assert!(
        context_text(&requests[1]).contains("resumed"),
        "{}",
        context_text(&requests[1])
    );
    let earlier: Vec<&Value> = requests[1]
        .messages()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    assert!(
        !earlier.is_empty(),
        "the resumed session has no earlier turns"
    );
    up_team.team.conclave(&["down"]).await?;
    finished(up).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_hibernates_an_idle_agent_and_a_message_wakes_its_session() -> Result<()> {
    let _serial = serial().await;
    let script = Script::new().agent_fn(&api_key("solo"), worker);
    let members = [Member {
        name: "solo",
        role: None,
        extra: "hibernate_after = \"2s\"\n",
    }];
    let Some(up_team) = UpTeam::start(script, &members).await? else {
        return Ok(());
    };
    let up = up_team.up(&["--stay"])?;
    let agent = up_team
        .wait_agent("solo", "hibernated", |a| a["status"] == "hibernated")
        .await?;
    let session = agent["session_id"]
        .as_str()
        .context("no session id")?
        .to_string();
    let before = up_team.requests("solo").len();
    let message = "wake up, the review is in";
    up_team
        .team
        .conclave(&["msg", "send", "solo", message])
        .await?;
    up_team
        .wait_requests("solo", "the woken turn", move |requests| {
            requests.len() > before
        })
        .await?;
    let woken = &up_team.requests("solo")[before];
    assert_eq!(woken.session_id(), Some(session.as_str()));
    assert!(
        context_text(woken).contains(message),
        "{}",
        context_text(woken)
    );
    up_team.team.conclave(&["down"]).await?;
    finished(up).await?;
    let events = events(&up_team.team).await?;
    let kinds = kinds(&events, "solo");
    for kind in ["agent.hibernated", "agent.woken"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    Ok(())
}
