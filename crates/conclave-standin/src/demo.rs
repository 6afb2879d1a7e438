//! The scripted team of `conclave demo`: three agents (an architect and two coders) whose model
//! turns are played by the stand-in, so that a newcomer sees a team at work with no API key.
//!
//! Each agent is a small state machine over its conversation: it looks at the last tool call the
//! CLI reports back and decides the next one. The story: the architect designs (T-1) and records a
//! decision; both coders wait for it, then implement their parts (T-2, T-3), and both need
//! `src/lib.rs`: the second coder's edit is denied by the lease hook, it messages the holder, waits
//! in its inbox, and edits once the first coder is done and says so.
//!
//! The agents behave as a careful model would with the real CLI: they read a file that exists
//! before they write it (Claude Code refuses a write to an unread file: "File has not been read
//! yet"), tell a lease denial (recognised by the hook's own reason text, [`LEASE_DENIAL_MARKS`])
//! from any other tool error, and never ask the same question twice. Whatever the story did not
//! expect (a tool error, a second denial after asking, an unknown step) makes the agent stop:
//! it ends its turn with a text that starts with [`STOP_MARK`] and says what it met, and answers
//! every later turn of that conversation the same way, with no tool call, so that a surprise costs
//! one turn instead of a loop.

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

/// The longest coder-1 holds the shared file waiting for coder-2 to run into its lease and ask
/// (it finishes as soon as the question arrives).
const HOLD_SHARED_FILE: Duration = Duration::from_secs(90);

/// The start of the text with which a scripted agent stops when it meets something the story
/// did not expect.
pub const STOP_MARK: &str = "Stopping: ";

/// The file both coders need.
const SHARED_FILE: &str = "src/lib.rs";

/// What the lease hook's denial says (`deny_reason` in conclave-server's `hooks.rs`: "Conclave:
/// src/lib.rs is leased by coder-1 …"); a tool error without these is some other failure.
pub const LEASE_DENIAL_MARKS: [&str; 2] = ["Conclave: ", " is leased by "];

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

/// The demo team in worktrees (`conclave demo --worktrees`): the same story, each agent
/// writing in its own worktree (`<project>/.conclave/worktrees/<agent>`). The coders' trees are
/// separate, so the second coder's edit of the shared file draws a warning instead of a denial
/// and nobody waits: both add the same `src/lib.rs`, and the merge queue lands all three
/// branches on the integration branch after the check.
pub fn demo_script_in_worktrees(project_root: &Path) -> Script {
    let tree = |agent: &str| project_root.join(".conclave").join("worktrees").join(agent);
    let (architect_root, coder_1_root, coder_2_root) =
        (tree("architect"), tree("coder-1"), tree("coder-2"));
    let coder_1 = Coder {
        holds_shared_file: false,
        ..CODER_1
    };
    Script::new()
        .agent_fn("demo-architect", move |request| {
            architect(&architect_root, request)
        })
        .agent_fn("demo-coder-1", move |request| {
            coder(&coder_1_root, request, &coder_1)
        })
        .agent_fn("demo-coder-2", move |request| {
            coder(&coder_2_root, request, &CODER_2)
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

impl LastCall {
    /// A tool error that is the lease hook's denial (see [`LEASE_DENIAL_MARKS`]).
    fn is_lease_denial(&self) -> bool {
        self.is_error
            && LEASE_DENIAL_MARKS
                .iter()
                .all(|mark| self.result.contains(mark))
    }

    fn touches(&self, relative: &str) -> bool {
        self.input["file_path"]
            .as_str()
            .is_some_and(|path| path.ends_with(relative))
    }

    /// The first line of the result, shortened: what to quote when stopping.
    fn quoted_result(&self) -> String {
        let line = self.result.lines().next().unwrap_or_default().trim();
        let mut quoted: String = line.chars().take(200).collect();
        if quoted.len() < line.len() {
            quoted.push('…');
        }
        quoted
    }
}

/// Ends the turn with a text saying what the agent met, and no tool call.
fn stop(what: &str) -> Reply {
    Reply::text(format!(
        "{STOP_MARK}{what}. This is not part of the scripted story, so I stop here instead of trying again."
    ))
}

/// The stop text of an earlier turn of this conversation, if the agent stopped already.
fn stopped_before(request: &RecordedRequest) -> Option<String> {
    assistant_blocks(request)
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .find(|text| text.starts_with(STOP_MARK))
        .map(str::to_string)
}

/// Whether the agent already asked a question by message in this conversation.
fn asked_before(request: &RecordedRequest) -> bool {
    assistant_blocks(request).any(|block| {
        block.get("type").and_then(Value::as_str) == Some("tool_use")
            && block.get("name").and_then(Value::as_str) == Some("mcp__conclave__send")
            && block.pointer("/input/kind").and_then(Value::as_str) == Some("question")
    })
}

fn assistant_blocks(request: &RecordedRequest) -> impl Iterator<Item = &Value> {
    request
        .messages()
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
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
        "Read" => "Reading the file before I change it.",
        _ => "Working on it.",
    }
}

fn path_in(root: &Path, relative: &str) -> String {
    let path: PathBuf = root.join(relative);
    path.display().to_string()
}

fn architect(root: &Path, request: &RecordedRequest) -> Reply {
    if let Some(stopped) = stopped_before(request) {
        return Reply::text(stopped);
    }
    let Some(call) = last_call(request) else {
        return tool("mcp__conclave__claim", json!({}));
    };
    if call.is_error {
        return stop(&format!("{} failed: {}", call.tool, call.quoted_result()));
    }
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
    if let Some(stopped) = stopped_before(request) {
        return Reply::text(stopped);
    }
    let Some(call) = last_call(request) else {
        return tool("mcp__conclave__claim", json!({}));
    };
    if call.is_error && !call.is_lease_denial() {
        return stop(&format!("{} failed: {}", call.tool, call.quoted_result()));
    }
    // The story has one collision, on the shared file; a lease denial elsewhere is a surprise.
    if call.is_lease_denial() && !(call.tool == "Write" && call.touches(SHARED_FILE)) {
        return stop(&format!(
            "{} was denied a lease I did not expect to need: {}",
            call.tool,
            call.quoted_result()
        ));
    }
    let shared_path = path_in(root, SHARED_FILE);
    // Claude Code writes a file that exists only after it was read in this session.
    let write_shared = || {
        tool(
            "Write",
            json!({
                "file_path": shared_path,
                "content": "pub mod farewell;\npub mod greet;\n",
            }),
        )
    };
    let read_or_write_shared = || {
        if root.join(SHARED_FILE).exists() {
            tool("Read", json!({ "file_path": shared_path }))
        } else {
            write_shared()
        }
    };
    let finish = || match claimed_task(request) {
        Some(id) => tool(
            "mcp__conclave__done",
            json!({ "id": id, "summary": format!("{}() implemented", me.function), "files": [me.own_file, SHARED_FILE] }),
        ),
        None => stop("I have no claimed task to finish"),
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
        "Write" if call.touches(SHARED_FILE) && call.is_lease_denial() => {
            if asked_before(request) {
                stop(&format!(
                    "{SHARED_FILE} is still leased after I asked {}: {}",
                    me.peer,
                    call.quoted_result()
                ))
            } else {
                tool(
                    "mcp__conclave__send",
                    json!({
                        "to": me.peer,
                        "body": format!("I need {SHARED_FILE} to declare `mod {}`. Tell me when you are done with it.", me.function),
                        "kind": "question",
                    }),
                )
            }
        }
        // The holder keeps the shared file until the other coder has run into it and asked
        // (bounded), whatever the machine's speed: the collision is the story's point.
        "Write" if call.touches(SHARED_FILE) && me.holds_shared_file && !asked_before(request) => {
            tool(
                "mcp__conclave__inbox",
                json!({ "wait_secs": HOLD_SHARED_FILE.as_secs() }),
            )
        }
        "Write" if call.touches(SHARED_FILE) => finish(),
        "Write" if call.touches(me.own_file) => read_or_write_shared(),
        "Read" if call.touches(SHARED_FILE) => write_shared(),
        "mcp__conclave__send" if call.input["kind"] == "question" => {
            tool("mcp__conclave__inbox", json!({ "wait_secs": 120 }))
        }
        "mcp__conclave__inbox" if me.holds_shared_file && !asked_before(request) => finish(),
        "mcp__conclave__inbox" => read_or_write_shared(),
        "mcp__conclave__done" => tool(
            "mcp__conclave__send",
            json!({ "to": me.peer, "body": format!("{SHARED_FILE} is free now: my task is done."), "kind": "answer" }),
        ),
        "mcp__conclave__send" => Reply::text("My part is done."),
        other => stop(&format!("a {other} call I did not plan for came back")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::record::{AnsweredBy, RequestKind};
    use crate::reply::Block;

    /// A request whose conversation is `messages`, from coder-2's lane.
    fn request(messages: Value) -> RecordedRequest {
        RecordedRequest {
            index: 0,
            received_at: SystemTime::now(),
            method: "POST".into(),
            path: "/v1/messages".into(),
            query: None,
            headers: BTreeMap::from([("x-api-key".to_owned(), "demo-coder-2".to_owned())]),
            body: json!({ "messages": messages }),
            kind: RequestKind::Main,
            answered_by: AnsweredBy::Script,
        }
    }

    /// An assistant tool call and the user message with its result.
    fn exchange(id: &str, name: &str, input: Value, result: &str, is_error: bool) -> [Value; 2] {
        [
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": id, "name": name, "input": input}
            ]}),
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": id, "content": result, "is_error": is_error}
            ]}),
        ]
    }

    fn tool_names(reply: &Reply) -> Vec<String> {
        reply
            .content()
            .iter()
            .filter_map(|block| match block {
                Block::ToolUse { name, .. } => Some(name.clone()),
                Block::Text(_) => None,
            })
            .collect()
    }

    fn text(reply: &Reply) -> String {
        reply
            .content()
            .iter()
            .filter_map(|block| match block {
                Block::Text(text) => Some(text.as_str()),
                Block::ToolUse { .. } => None,
            })
            .collect()
    }

    const DENIAL: &str = "Conclave: src/lib.rs is leased by coder-1 for T-2 for 9m58s more \
        (exclusive lease on src/lib.rs). Do not edit it now: message coder-1 (send) to coordinate, \
        or pick other work (claim).";

    fn write_shared(id: &str, result: &str, is_error: bool) -> [Value; 2] {
        exchange(
            id,
            "Write",
            json!({"file_path": "/p/src/lib.rs", "content": "x"}),
            result,
            is_error,
        )
    }

    #[test]
    fn an_unexpected_tool_error_stops_the_agent_instead_of_repeating() {
        let root = Path::new("/nonexistent-demo-root");
        let not_read = "File has not been read yet. Read it first before writing to it.";
        let mut messages: Vec<Value> = write_shared("t1", not_read, true).into();
        let reply = coder(root, &request(json!(messages)), &CODER_2);
        assert_eq!(tool_names(&reply), Vec::<String>::new(), "{reply:?}");
        let said = text(&reply);
        assert!(
            said.starts_with(STOP_MARK) && said.contains("File has not been read yet"),
            "{said}"
        );
        // Woken again later in the same conversation, it stays stopped: still no tool call.
        messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": said}]}));
        messages.push(json!({"role": "user", "content": "You have a new message."}));
        let again = coder(root, &request(json!(messages)), &CODER_2);
        assert_eq!(tool_names(&again), Vec::<String>::new(), "{again:?}");
        assert!(text(&again).starts_with(STOP_MARK));
    }

    #[test]
    fn a_lease_denial_is_asked_about_once_and_a_second_one_stops() {
        let root = Path::new("/nonexistent-demo-root");
        let mut messages: Vec<Value> = write_shared("t1", DENIAL, true).into();
        let first = coder(root, &request(json!(messages)), &CODER_2);
        assert_eq!(tool_names(&first), ["mcp__conclave__send"]);

        messages.extend(exchange(
            "t2",
            "mcp__conclave__send",
            json!({"to": "coder-1", "body": "?", "kind": "question"}),
            "Sent M-1",
            false,
        ));
        messages.extend(exchange(
            "t3",
            "mcp__conclave__inbox",
            json!({"wait_secs": 120}),
            "No messages.",
            false,
        ));
        messages.extend(write_shared("t4", DENIAL, true));
        let second = coder(root, &request(json!(messages)), &CODER_2);
        assert_eq!(tool_names(&second), Vec::<String>::new(), "{second:?}");
        assert!(text(&second).contains("still leased after I asked coder-1"));
    }

    #[test]
    fn a_file_that_exists_is_read_before_it_is_written() {
        let project = tempfile::tempdir().expect("tempdir");
        let root = project.path();
        let own = exchange(
            "t1",
            "Write",
            json!({"file_path": path_in(root, "src/farewell.rs"), "content": "x"}),
            "File created successfully",
            false,
        );
        let next = coder(root, &request(json!(own)), &CODER_2);
        assert_eq!(tool_names(&next), ["Write"], "a new file needs no read");

        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(root.join(SHARED_FILE), "pub mod greet;\n").expect("write");
        let next = coder(root, &request(json!(own)), &CODER_2);
        assert_eq!(tool_names(&next), ["Read"]);
        let read = exchange(
            "t2",
            "Read",
            json!({"file_path": path_in(root, SHARED_FILE)}),
            "1\tpub mod greet;",
            false,
        );
        let next = coder(root, &request(json!(read)), &CODER_2);
        assert_eq!(tool_names(&next), ["Write"]);
    }
}
