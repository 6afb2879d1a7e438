//! What coordination costs an agent in context (issue 16), counted from what the supervisor sees:
//! the model calls in the stream (their reported usage), the Conclave tool calls and results in
//! it, the text the supervisor itself sends (first messages, wake-ups, handoff requests), and the
//! size of the SessionStart hook's context that the server records with `agent.session_start`.
//!
//! Every model call re-reads its whole context, so a piece of coordination text costs its size
//! once per call that carries it: the tool definitions and the protocol text in every call, a
//! Conclave tool result in every call after it came back, until the session ends. The totals
//! (input, output, cache) are the API's own numbers; the coordination parts are estimated from
//! characters at [`CHARS_PER_TOKEN`] and say so ([`Coordination::chars_per_token`]).

use conclave_core::model::{CHARS_PER_TOKEN, Coordination};

use crate::pricing::Usage;

/// The prefix Claude Code gives the names of the Conclave MCP server's tools.
pub const CONCLAVE_TOOL_PREFIX: &str = "mcp__conclave__";

/// What every model call of an agent carries whatever happens: the Conclave tool definitions as
/// the model receives them and the Conclave protocol text in the system prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FixedCosts {
    pub tool_definition_chars: usize,
    pub protocol_chars: usize,
}

/// The characters the Conclave tool definitions take in a model request: `definitions_json` is
/// the server's list (`conclave_server::tool_definitions_json`, names without the prefix), and
/// Claude Code prefixes each of the `tools` names with [`CONCLAVE_TOOL_PREFIX`].
pub fn tool_definition_chars(definitions_json: &str, tools: usize) -> usize {
    definitions_json.chars().count() + tools * CONCLAVE_TOOL_PREFIX.len()
}

/// Characters to estimated tokens.
pub fn estimate_tokens(chars: usize) -> i64 {
    (chars as f64 / CHARS_PER_TOKEN).round() as i64
}

/// One agent's running account.
#[derive(Debug, Clone, Default)]
pub struct CoordinationMeter {
    fixed: FixedCosts,
    account: Coordination,
    /// The id of the last model call counted (the CLI prints a line per content block of a
    /// call, each with the call's usage).
    last_call: Option<String>,
    /// Model calls of the current session so far.
    calls_in_session: i64,
    /// Output tokens counted from the current turn's calls (the turn's result corrects them).
    turn_output: i64,
    /// Coordination characters in the current session's context, by part.
    tool_chars: usize,
    injected_chars: usize,
    handoff_chars: usize,
}

impl CoordinationMeter {
    pub fn new(fixed: FixedCosts) -> CoordinationMeter {
        CoordinationMeter {
            fixed,
            account: Coordination {
                chars_per_token: CHARS_PER_TOKEN,
                ..Coordination::default()
            },
            ..CoordinationMeter::default()
        }
    }

    /// Goes on from an account reported before (a supervisor restarted): totals carry on, the
    /// context of the current session is unknown and starts empty.
    pub fn resume(fixed: FixedCosts, account: Option<Coordination>) -> CoordinationMeter {
        let mut meter = CoordinationMeter::new(fixed);
        if let Some(account) = account {
            meter.account = account;
            meter.account.chars_per_token = CHARS_PER_TOKEN;
        }
        meter
    }

    /// Sets the size of the tool definitions every later call carries.
    pub fn set_tool_definition_chars(&mut self, chars: usize) {
        self.fixed.tool_definition_chars = chars;
    }

    /// The account so far.
    pub fn account(&self) -> &Coordination {
        &self.account
    }

    /// A fresh session starts: nothing of the last one is in its context.
    pub fn new_session(&mut self) {
        self.calls_in_session = 0;
        self.turn_output = 0;
        self.tool_chars = 0;
        self.injected_chars = 0;
        self.handoff_chars = 0;
        self.last_call = None;
    }

    /// A model call with its reported usage; a repeated line of the same call is not counted
    /// again. Answers whether it was a new call.
    pub fn model_call(&mut self, id: Option<&str>, usage: &Usage) -> bool {
        if id.is_some() && self.last_call.as_deref() == id {
            return false;
        }
        self.last_call = id.map(str::to_string);
        self.calls_in_session += 1;
        let account = &mut self.account;
        account.model_calls += 1;
        account.input_tokens += usage.input + usage.cache_read + usage.cache_creation;
        account.output_tokens += usage.output;
        self.turn_output += usage.output;
        account.cache_read_tokens += usage.cache_read;
        account.cache_creation_tokens += usage.cache_creation;
        account.definitions_tokens +=
            estimate_tokens(self.fixed.tool_definition_chars + self.fixed.protocol_chars);
        account.tool_tokens += estimate_tokens(self.tool_chars);
        account.injected_tokens += estimate_tokens(self.injected_chars);
        account.handoff_tokens += estimate_tokens(self.handoff_chars);
        true
    }

    /// A turn ended; `output` is its calls' output tokens added up by the client, which is the
    /// truth when a call's line was printed before its output was complete.
    pub fn turn_result(&mut self, output: Option<i64>) {
        if let Some(output) = output
            && output > self.turn_output
        {
            self.account.output_tokens += output - self.turn_output;
        }
        self.turn_output = 0;
    }

    /// A Conclave tool call the model wrote (its name and input) or its result: in the context
    /// of every later call of the session.
    pub fn conclave_tool(&mut self, chars: usize) {
        self.tool_chars += chars;
    }

    /// A user message the supervisor sent (a first message, a wake-up): before the next call.
    pub fn injected(&mut self, chars: usize) {
        self.injected_chars += chars;
    }

    /// A handoff request or handoff text: before the next call.
    pub fn handoff(&mut self, chars: usize) {
        self.handoff_chars += chars;
    }

    /// The SessionStart hook's context, learnt from the server's event possibly after calls of
    /// the session were counted: those calls carried it too.
    pub fn session_context(&mut self, chars: usize) {
        self.injected_chars += chars;
        self.account.injected_tokens += estimate_tokens(chars) * self.calls_in_session;
    }
}

/// Whether a tool name is one of Conclave's MCP tools.
pub fn is_conclave_tool(name: &str) -> bool {
    name.starts_with(CONCLAVE_TOOL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: i64, cache_read: i64) -> Usage {
        Usage {
            input,
            output: 10,
            cache_read,
            cache_creation: 0,
        }
    }

    /// A session whose sizes are known: 400 characters of definitions and 400 of protocol
    /// (200 tokens a call), a 100-character first message, a 40 + 160 character Conclave tool
    /// exchange between the first and second call, and a SessionStart context of 80 characters
    /// learnt after the first call.
    #[test]
    fn each_part_counts_once_per_call_that_carries_it() {
        let mut meter = CoordinationMeter::new(FixedCosts {
            tool_definition_chars: 400,
            protocol_chars: 400,
        });
        meter.injected(100);
        assert!(meter.model_call(Some("m1"), &usage(1000, 0)));
        assert!(!meter.model_call(Some("m1"), &usage(1000, 0)), "same call");
        meter.session_context(80);
        meter.conclave_tool(40);
        meter.conclave_tool(160);
        assert!(meter.model_call(Some("m2"), &usage(200, 1000)));
        let account = meter.account();
        assert_eq!(account.model_calls, 2);
        assert_eq!(account.input_tokens, 2200);
        assert_eq!(account.output_tokens, 20);
        // The turn's result says its calls wrote 50 tokens in all: 30 more than the lines said.
        meter.turn_result(Some(50));
        assert_eq!(meter.account().output_tokens, 50);
        meter.turn_result(None);
        assert_eq!(meter.account().output_tokens, 50);
        let account = meter.account();
        assert_eq!(account.cache_read_tokens, 1000);
        assert_eq!(account.definitions_tokens, 400);
        assert_eq!(account.tool_tokens, 50);
        // 25 first message + 20 hook context, in both calls.
        assert_eq!(account.injected_tokens, 90);
        assert_eq!(account.tokens(), 540);
        assert!((account.percent_of_input() - 540.0 / 22.0).abs() < 1e-9);

        // A new session carries only the fixed costs until something is added again.
        meter.new_session();
        meter.handoff(400);
        meter.model_call(Some("m3"), &usage(500, 0));
        let account = meter.account();
        assert_eq!(account.definitions_tokens, 600);
        assert_eq!(account.tool_tokens, 50);
        assert_eq!(account.injected_tokens, 90);
        assert_eq!(account.handoff_tokens, 100);
        // A result saying less than the calls' lines takes nothing back.
        meter.turn_result(Some(5));
        assert_eq!(
            meter.account().output_tokens,
            60,
            "never less than the calls said"
        );
    }

    #[test]
    fn the_description_gives_share_amount_and_how_it_was_estimated() {
        let account = Coordination {
            input_tokens: 387_000,
            definitions_tokens: 12_000,
            chars_per_token: 4.0,
            ..Coordination::default()
        };
        assert_eq!(
            account.describe(),
            "coordination: 3.1 % of input, ≈ 12 k tokens (estimated at 4 characters a token)"
        );
        assert_eq!(
            tool_definition_chars("[{\"name\":\"claim\"}]", 1),
            18 + 15,
            "each name gains the mcp__conclave__ prefix"
        );
        assert!(is_conclave_tool("mcp__conclave__claim") && !is_conclave_tool("Write"));
    }
}
