//! The [`Script`]: how the stand-in decides the reply to each main request.
//!
//! A script has a default *lane* and any number of per-agent lanes keyed by the caller's API
//! key ([`RecordedRequest::api_key`]). A lane holds a queue of steps (fixed replies, or
//! closures that build the reply from the request) and optionally a rule that answers once the
//! queue is empty. A request from a key that has its own lane only ever uses that lane, so two
//! agents never take each other's replies; keys without a lane share the default lane.
//!
//! Only main requests ([`RequestKind::Main`](crate::RequestKind::Main)) are scripted. Side
//! requests get [`Script::side_reply`], which by default is a short text, or a JSON object
//! that fits the requested schema when the CLI asks for structured output (session titles).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};

use crate::record::{AnsweredBy, RecordedRequest};
use crate::reply::Reply;

/// Builds a reply from the request; used for rules that may answer many requests.
pub type Rule = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

/// Builds one reply from the request; used for one queued step.
type OnceStep = Box<dyn FnOnce(&RecordedRequest) -> Reply + Send>;

/// The text a main request gets when its lane has nothing left.
pub const EXHAUSTED_TEXT: &str = "(stand-in: the script has no reply left)";

/// The text side requests get by default.
pub const SIDE_TEXT: &str = "Stand-in reply";

enum Step {
    Fixed(Reply),
    Computed(OnceStep),
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Step>,
    rule: Option<Rule>,
}

#[derive(Default)]
struct ScriptState {
    default_lane: Lane,
    agent_lanes: HashMap<String, Lane>,
    side_rule: Option<Rule>,
}

impl ScriptState {
    fn lane_mut(&mut self, api_key: Option<&str>) -> &mut Lane {
        match api_key {
            Some(key) if self.agent_lanes.contains_key(key) => self
                .agent_lanes
                .get_mut(key)
                .unwrap_or(&mut self.default_lane),
            _ => &mut self.default_lane,
        }
    }
}

/// Decides the stand-in's replies. A cheap-to-clone handle: the stand-in and the test share
/// one script, so a test can push more replies while agents run.
///
/// ```
/// use conclave_standin::{Reply, Script};
/// use serde_json::json;
///
/// // One agent: write a file, then finish.
/// let script = Script::new()
///     .then(Reply::tool_use("Write", json!({"file_path": "/tmp/x/hello.txt", "content": "hi"})))
///     .then(Reply::text("Done."));
///
/// // Two agents told apart by ANTHROPIC_API_KEY, plus a catch-all rule for everyone else.
/// let script = Script::from_fn(|_request| Reply::text("nothing to do"))
///     .agent("key-alice", [Reply::text("alice here")])
///     .agent("key-bob", [Reply::text("bob here")]);
/// ```
#[derive(Clone, Default)]
pub struct Script {
    state: Arc<Mutex<ScriptState>>,
}

impl Script {
    /// An empty script: every main request gets [`EXHAUSTED_TEXT`] until replies are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// A script whose default lane answers with `replies`, in order.
    pub fn replies(replies: impl IntoIterator<Item = Reply>) -> Self {
        let script = Self::new();
        for reply in replies {
            script.push(reply);
        }
        script
    }

    /// A script whose default lane answers every main request with `rule`.
    pub fn from_fn(rule: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static) -> Self {
        let script = Self::new();
        script.lock().default_lane.rule = Some(Arc::new(rule));
        script
    }

    /// Appends a reply to the default lane.
    #[must_use]
    pub fn then(self, reply: Reply) -> Self {
        self.push(reply);
        self
    }

    /// Appends a step to the default lane that builds its reply from the request it answers
    /// (e.g. to quote an id that came back in a tool result).
    #[must_use]
    pub fn then_with(self, step: impl FnOnce(&RecordedRequest) -> Reply + Send + 'static) -> Self {
        self.lock()
            .default_lane
            .queue
            .push_back(Step::Computed(Box::new(step)));
        self
    }

    /// Gives the agent whose API key is `api_key` its own lane and appends `replies` to it.
    #[must_use]
    pub fn agent(self, api_key: &str, replies: impl IntoIterator<Item = Reply>) -> Self {
        for reply in replies {
            self.push_for(api_key, reply);
        }
        self.lock()
            .agent_lanes
            .entry(api_key.to_owned())
            .or_default();
        self
    }

    /// Gives the agent whose API key is `api_key` its own lane answered by `rule` once its
    /// queue is empty.
    #[must_use]
    pub fn agent_fn(
        self,
        api_key: &str,
        rule: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.lock()
            .agent_lanes
            .entry(api_key.to_owned())
            .or_default()
            .rule = Some(Arc::new(rule));
        self
    }

    /// Replaces the generic answer to side requests.
    #[must_use]
    pub fn side_fn(self, rule: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static) -> Self {
        self.lock().side_rule = Some(Arc::new(rule));
        self
    }

    /// Appends a reply to the default lane of a running script.
    pub fn push(&self, reply: Reply) {
        self.lock().default_lane.queue.push_back(Step::Fixed(reply));
    }

    /// Appends a reply to an agent's lane of a running script, creating the lane if needed.
    pub fn push_for(&self, api_key: &str, reply: Reply) {
        self.lock()
            .agent_lanes
            .entry(api_key.to_owned())
            .or_default()
            .queue
            .push_back(Step::Fixed(reply));
    }

    /// How many queued steps the default lane has left.
    pub fn remaining(&self) -> usize {
        self.lock().default_lane.queue.len()
    }

    /// How many queued steps an agent's lane has left (0 if it has no lane).
    pub fn remaining_for(&self, api_key: &str) -> usize {
        self.lock()
            .agent_lanes
            .get(api_key)
            .map_or(0, |lane| lane.queue.len())
    }

    /// The reply to a main request: the next step of the caller's lane, else the lane's rule,
    /// else [`EXHAUSTED_TEXT`].
    pub(crate) fn main_reply(&self, request: &RecordedRequest) -> (Reply, AnsweredBy) {
        let (step, rule) = {
            let mut state = self.lock();
            let lane = state.lane_mut(request.api_key());
            match lane.queue.pop_front() {
                Some(step) => (Some(step), None),
                None => (None, lane.rule.clone()),
            }
        };
        // Closures run with the lock released, so they may use the script themselves.
        match (step, rule) {
            (Some(Step::Fixed(reply)), _) => (reply, AnsweredBy::Script),
            (Some(Step::Computed(step)), _) => (step(request), AnsweredBy::Script),
            (None, Some(rule)) => (rule(request), AnsweredBy::Script),
            (None, None) => (Reply::text(EXHAUSTED_TEXT), AnsweredBy::Exhausted),
        }
    }

    /// The reply to a side request: the side rule if set, else a generic answer.
    pub(crate) fn side_reply(&self, request: &RecordedRequest) -> Reply {
        let rule = self.lock().side_rule.clone();
        match rule {
            Some(rule) => rule(request),
            None => generic_side_reply(request),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ScriptState> {
        // A panicking rule cannot leave the state half-changed (it runs unlocked), so a
        // poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Script")
            .field("default_queue", &state.default_lane.queue.len())
            .field("default_rule", &state.default_lane.rule.is_some())
            .field("agents", &state.agent_lanes.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A short text, or — when the request asks for structured output — a JSON object with a
/// placeholder for every property of the schema.
fn generic_side_reply(request: &RecordedRequest) -> Reply {
    let schema = request
        .output_format()
        .filter(|format| format.get("type").and_then(Value::as_str) == Some("json_schema"))
        .and_then(|format| format.get("schema"));
    match schema {
        Some(schema) => Reply::text(placeholder_for(schema).to_string()),
        None => Reply::text(SIDE_TEXT),
    }
}

/// A value that satisfies a simple JSON schema.
fn placeholder_for(schema: &Value) -> Value {
    let schema_type = schema.get("type").and_then(|t| match t {
        Value::Array(types) => types.first().and_then(Value::as_str),
        other => other.as_str(),
    });
    match schema_type {
        Some("object") => {
            let properties = schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|properties| {
                    properties
                        .iter()
                        .map(|(name, property)| (name.clone(), placeholder_for(property)))
                        .collect::<Map<_, _>>()
                })
                .unwrap_or_default();
            Value::Object(properties)
        }
        Some("array") => Value::Array(Vec::new()),
        Some("integer" | "number") => Value::from(0),
        Some("boolean") => Value::Bool(false),
        Some("null") => Value::Null,
        _ => Value::String(SIDE_TEXT.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;
    use crate::record::RequestKind;
    use crate::reply::Block;

    fn request_from(api_key: &str, body: Value) -> RecordedRequest {
        RecordedRequest {
            index: 0,
            received_at: SystemTime::now(),
            method: "POST".into(),
            path: "/v1/messages".into(),
            query: None,
            headers: BTreeMap::from([("x-api-key".to_owned(), api_key.to_owned())]),
            body,
            kind: RequestKind::Main,
            answered_by: AnsweredBy::Script,
        }
    }

    fn first_text(reply: &Reply) -> String {
        match reply.content().first() {
            Some(Block::Text(text)) => text.clone(),
            other => panic!("expected a text block, got {other:?}"),
        }
    }

    #[test]
    fn lanes_keep_agents_apart() {
        let script = Script::replies([Reply::text("default 1")])
            .agent("a", [Reply::text("a 1"), Reply::text("a 2")])
            .agent("b", [Reply::text("b 1")]);
        let cases = [
            ("a", "a 1", AnsweredBy::Script),
            ("b", "b 1", AnsweredBy::Script),
            ("other", "default 1", AnsweredBy::Script),
            ("b", EXHAUSTED_TEXT, AnsweredBy::Exhausted),
            ("a", "a 2", AnsweredBy::Script),
            ("other", EXHAUSTED_TEXT, AnsweredBy::Exhausted),
        ];
        for (key, expected_text, expected_by) in cases {
            let (reply, by) = script.main_reply(&request_from(key, Value::Null));
            assert_eq!(
                (first_text(&reply).as_str(), by),
                (expected_text, expected_by),
                "{key}"
            );
        }
    }

    #[test]
    fn queue_goes_before_rule_and_steps_see_the_request() {
        let script = Script::from_fn(|_| Reply::text("rule"))
            .then_with(|request| Reply::text(request.model().unwrap_or("none")));
        let request = request_from("k", json!({"model": "m1"}));
        assert_eq!(first_text(&script.main_reply(&request).0), "m1");
        assert_eq!(first_text(&script.main_reply(&request).0), "rule");
        assert_eq!(first_text(&script.main_reply(&request).0), "rule");
    }

    #[test]
    fn side_reply_fits_a_title_schema() {
        let script = Script::new();
        let request = request_from(
            "k",
            json!({"output_config": {"format": {"type": "json_schema", "schema": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["title"]
            }}}}),
        );
        let text = first_text(&script.side_reply(&request));
        assert_eq!(
            serde_json::from_str::<Value>(&text).ok(),
            Some(json!({"title": SIDE_TEXT, "n": 0}))
        );
        let plain = request_from("k", json!({}));
        assert_eq!(first_text(&script.side_reply(&plain)), SIDE_TEXT);
    }
}
