//! The scripted team of `conclave demo`: three agents (an architect and two coders) whose model
//! turns are played by the stand-in, so that a newcomer sees a team at work with no API key.
//!
//! Each agent is a small state machine over its conversation: it looks at the last tool call the
//! CLI reports back and decides the next one. The story: the architect designs (T-1) and records a
//! decision; both coders wait for it, then implement their parts (T-2, T-3), and both need
//! `src/lib.rs`: the second coder's edit is denied by the lease hook, it messages the holder, waits
//! in its inbox, and edits once the first coder is done and says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{RecordedRequest, Reply, Script};

/// The agents of the demo team: (name, role, API key that selects its script lane).
pub const DEMO_AGENTS: &[(&str, &str, &str)] = &[
    ("architect", "architect", "demo-architect"),
    ("coder-1", "coder", "demo-coder-1"),
    ("coder-2", "coder", "demo-coder-2"),
];

/// The tasks the demo seeds: (title, role, index of the task it waits on).
pub const DEMO_TASKS: &[(&str, &str, Option<usize>)] = &[
    ("Design the greeting API", "architect", None),
    ("Implement greet()", "coder", Some(0)),
    ("Implement farewell()", "coder", Some(0)),
];

/// How long coder-1 "works" on the shared file before finishing: long enough for coder-2 to run
/// into its lease.
const HOLD_SHARED_FILE: Duration = Duration::from_secs(12);

pub fn demo_script(project_root: &Path) -> Script {
    let root = project_root.to_path_buf();
    let architect_root = root.clone();
    let coder_1_root = root.clone();
    Script::new()
        .agent_fn("demo-architect", move |request| {
            architect(&architect_root, request)
        })
        .agent_fn("demo-coder-1", move |request| {
            coder(&coder_1_root, request, &CODER_1)
        })
        .agent_fn("demo-coder-2", move |request| {
            coder(&root, request, &CODER_2)
        })
}

/// The last tool call of the conversation and its result, or none at the start of a turn.
struct LastCall {
    tool: String,
    input: Value,
    result: String,
    is_error: bool,
}

fn last_call(request: &RecordedRequest) -> Option<LastCall> {
    let messages = request.messages();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let result = last_user
        .get("content")?
        .as_array()?
        .iter()
        .rev()
        .find(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))?;
    let id = result.get("tool_use_id")?.as_str()?;
    let text = match result.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let tool_use = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .find(|block| block.get("id").and_then(Value::as_str) == Some(id))?;
    Some(LastCall {
        tool: tool_use.get("name")?.as_str()?.to_string(),
        input: tool_use.get("input").cloned().unwrap_or(Value::Null),
        result: text,
        is_error: result
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The task id of the latest successful claim in the conversation (`Claimed T-2 ...`).
fn claimed_task(request: &RecordedRequest) -> Option<String> {
    request.all_tool_results().iter().rev().find_map(|result| {
        let rest = result.content.strip_prefix("Claimed ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

fn tool(name: &str, input: Value) -> Reply {
    Reply::text(narration(name)).then_tool_use(name, input)
}

fn narration(tool: &str) -> &'static str {
    match tool {
        "mcp__conclave__claim" => "Let me take the next task that fits me.",
        "mcp__conclave__done" => "That part is finished; marking the task done.",
        "mcp__conclave__send" => "Someone else holds that file; I'll ask them.",
        "mcp__conclave__inbox" => "Waiting for an answer.",
        "mcp__conclave__note" => "Recording the decision for the team.",
        _ => "Working on it.",
    }
}

fn path_in(root: &Path, relative: &str) -> String {
    let path: PathBuf = root.join(relative);
    path.display().to_string()
}

fn architect(root: &Path, request: &RecordedRequest) -> Reply {
    let Some(call) = last_call(request) else {
        return tool("mcp__conclave__claim", json!({}));
    };
    match call.tool.as_str() {
        "mcp__conclave__claim" if call.result.starts_with("Claimed") => tool(
            "Write",
            json!({
                "file_path": path_in(root, "docs/design.md"),
                "content": "# Greeting API\n\n- `greet(name) -> String` lives in `src/greet.rs`.\n- `farewell(name) -> String` lives in `src/farewell.rs`.\n- `src/lib.rs` declares both modules.\n",
            }),
        ),
        "Write" => tool(
            "mcp__conclave__note",
            json!({
                "kind": "decision",
                "title": "greet and farewell are separate modules declared in src/lib.rs",
                "body": "See docs/design.md.",
            }),
        ),
        "mcp__conclave__note" => match claimed_task(request) {
            Some(id) => tool(
                "mcp__conclave__done",
                json!({ "id": id, "summary": "API designed in docs/design.md", "files": ["docs/design.md"] }),
            ),
            None => Reply::text("Design recorded."),
        },
        _ => Reply::text("The design is done; the coders can start."),
    }
}

/// What distinguishes the two coders.
struct Coder {
    own_file: &'static str,
    function: &'static str,
    /// The other coder, whom a coder messages when it finds the shared file leased.
    peer: &'static str,
    /// Holds the shared file a while before finishing (so that the other runs into the lease).
    holds_shared_file: bool,
}

const CODER_1: Coder = Coder {
    own_file: "src/greet.rs",
    function: "greet",
    peer: "coder-2",
    holds_shared_file: true,
};

const CODER_2: Coder = Coder {
    own_file: "src/farewell.rs",
    function: "farewell",
    peer: "coder-1",
    holds_shared_file: false,
};

fn coder(root: &Path, request: &RecordedRequest, me: &Coder) -> Reply {
    let Some(call) = last_call(request) else {
        return tool("mcp__conclave__claim", json!({}));
    };
    let write_shared = || {
        tool(
            "Write",
            json!({
                "file_path": path_in(root, "src/lib.rs"),
                "content": "pub mod farewell;\npub mod greet;\n",
            }),
        )
    };
    let finish = || match claimed_task(request) {
        Some(id) => tool(
            "mcp__conclave__done",
            json!({ "id": id, "summary": format!("{}() implemented", me.function), "files": [me.own_file, "src/lib.rs"] }),
        ),
        None => Reply::text("Nothing to finish."),
    };
    match call.tool.as_str() {
        "mcp__conclave__claim" if call.result.starts_with("Claimed") => tool(
            "Write",
            json!({
                "file_path": path_in(root, me.own_file),
                "content": format!("pub fn {}(name: &str) -> String {{\n    format!(\"{} {{name}}\")\n}}\n", me.function, if me.function == "greet" { "Hello," } else { "Goodbye," }),
            }),
        ),
        "mcp__conclave__claim" => {
            Reply::text("Nothing is ready for me yet; I'll wait to be woken.")
        }
        "Write"
            if call.input["file_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("src/lib.rs")) =>
        {
            if call.is_error {
                tool(
                    "mcp__conclave__send",
                    json!({
                        "to": me.peer,
                        "body": format!("I need src/lib.rs to declare `mod {}`. Tell me when you are done with it.", me.function),
                        "kind": "question",
                    }),
                )
            } else if me.holds_shared_file {
                finish().with_delay(HOLD_SHARED_FILE)
            } else {
                finish()
            }
        }
        "Write" => write_shared(),
        "mcp__conclave__send" if call.input["kind"] == "question" => {
            tool("mcp__conclave__inbox", json!({ "wait_secs": 120 }))
        }
        "mcp__conclave__inbox" => write_shared(),
        "mcp__conclave__done" => tool(
            "mcp__conclave__send",
            json!({ "to": me.peer, "body": "src/lib.rs is free now: my task is done.", "kind": "answer" }),
        ),
        _ => Reply::text("My part is done."),
    }
}
