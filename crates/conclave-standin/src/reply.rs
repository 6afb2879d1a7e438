//! What the stand-in answers to one request: a [`Reply`] made of content [`Block`]s, or an
//! HTTP error, optionally delayed or held back by a [`Gate`] until a test opens it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

/// One content block of a scripted assistant message.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Plain text (`text` block, streamed as `text_delta`).
    Text(String),
    /// A tool call (`tool_use` block, streamed as `input_json_delta`). The stand-in gives it a
    /// fresh `toolu_…` id.
    ToolUse {
        /// The tool's name as the CLI lists it, e.g. `Write` or `mcp__conclave__claim`.
        name: String,
        /// The tool's input object.
        input: Value,
    },
}

impl Block {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// A tool call block.
    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Self::ToolUse {
            name: name.into(),
            input,
        }
    }
}

/// What one answer is: an assistant message or an HTTP error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReplyBody {
    Message(Vec<Block>),
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
}

/// A scripted answer to one Messages API request.
///
/// The stop reason follows from the blocks: `tool_use` if any block is a tool call, `end_turn`
/// otherwise. Token counts default to rough estimates (about four characters a token of the
/// request and of the reply); set them to fake a filling context or a spent budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub(crate) body: ReplyBody,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cache_read_input_tokens: u64,
    pub(crate) cache_creation_input_tokens: u64,
    pub(crate) delay: Option<Duration>,
    pub(crate) gate: Option<Gate>,
}

impl Reply {
    /// An answer made of the given blocks, in order.
    pub fn blocks(blocks: impl IntoIterator<Item = Block>) -> Self {
        Self::from_body(ReplyBody::Message(blocks.into_iter().collect()))
    }

    /// A final text answer (stop reason `end_turn`).
    pub fn text(text: impl Into<String>) -> Self {
        Self::blocks([Block::text(text)])
    }

    /// One tool call (stop reason `tool_use`).
    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Self::blocks([Block::tool_use(name, input)])
    }

    /// Several tool calls in one answer; the CLI runs them and sends back all their results
    /// in its next request.
    pub fn tool_uses<N: Into<String>>(calls: impl IntoIterator<Item = (N, Value)>) -> Self {
        Self::blocks(
            calls
                .into_iter()
                .map(|(name, input)| Block::tool_use(name, input)),
        )
    }

    /// An HTTP error answer with the API's error body
    /// (`{"type":"error","error":{"type":error_type,"message":message}}`).
    ///
    /// Mind that the CLI retries: a 5xx or 529 up to `CLAUDE_CODE_MAX_RETRIES` times with
    /// backoff, and a 400 several times with fewer beta features. Every retry is a new request
    /// that takes the next scripted reply, so script as many errors as retries you expect, or
    /// answer from a rule.
    pub fn error(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::from_body(ReplyBody::Error {
            status,
            error_type: error_type.into(),
            message: message.into(),
        })
    }

    /// Appends a text block.
    #[must_use]
    pub fn then_text(self, text: impl Into<String>) -> Self {
        self.then_block(Block::text(text))
    }

    /// Appends a tool call block.
    #[must_use]
    pub fn then_tool_use(self, name: impl Into<String>, input: Value) -> Self {
        self.then_block(Block::tool_use(name, input))
    }

    /// Appends a block (ignored on an error reply).
    #[must_use]
    pub fn then_block(mut self, block: Block) -> Self {
        if let ReplyBody::Message(blocks) = &mut self.body {
            blocks.push(block);
        }
        self
    }

    /// Reports `input_tokens` in `message_start` (the CLI counts it as context in use and
    /// prices it into `total_cost_usd`).
    #[must_use]
    pub fn with_usage(mut self, input_tokens: u64) -> Self {
        self.input_tokens = Some(input_tokens);
        self
    }

    /// Reports `output_tokens` in `message_delta`.
    #[must_use]
    pub fn with_output_tokens(mut self, output_tokens: u64) -> Self {
        self.output_tokens = Some(output_tokens);
        self
    }

    /// Reports prompt-cache tokens (`cache_read_input_tokens`, `cache_creation_input_tokens`).
    #[must_use]
    pub fn with_cache_tokens(mut self, read: u64, creation: u64) -> Self {
        self.cache_read_input_tokens = read;
        self.cache_creation_input_tokens = creation;
        self
    }

    /// Waits this long before answering.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Holds the answer back until `gate` is opened (or the stand-in shuts down, which answers
    /// 529 `overloaded_error`). Lets a test keep an agent "mid-turn" while it looks around.
    #[must_use]
    pub fn held_by(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    /// The blocks of this reply (empty for an error reply).
    pub fn content(&self) -> &[Block] {
        match &self.body {
            ReplyBody::Message(blocks) => blocks,
            ReplyBody::Error { .. } => &[],
        }
    }

    fn from_body(body: ReplyBody) -> Self {
        Self {
            body,
            input_tokens: None,
            output_tokens: None,
            cache_read_input_tokens: 0,
            cache_creation_input_tokens: 0,
            delay: None,
            gate: None,
        }
    }
}

/// A latch that scripted replies can wait on ([`Reply::held_by`]). Cheap to clone; all clones
/// share one state. Once opened it stays open.
#[derive(Debug, Clone)]
pub struct Gate {
    state: Arc<watch::Sender<bool>>,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Opens the gate and releases every reply held by it.
    pub fn open(&self) {
        self.state.send_replace(true);
    }

    /// Whether the gate has been opened.
    pub fn is_open(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once the gate is open.
    pub async fn opened(&self) {
        let mut receiver = self.state.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = receiver.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builders_compose_blocks_in_order() {
        let reply = Reply::text("I will write it")
            .then_tool_use("Write", json!({"file_path": "a"}))
            .with_usage(10);
        assert_eq!(
            reply.content(),
            &[
                Block::text("I will write it"),
                Block::tool_use("Write", json!({"file_path": "a"}))
            ]
        );
        assert_eq!(reply.input_tokens, Some(10));
    }

    #[tokio::test]
    async fn gate_releases_waiters_when_opened() {
        let gate = Gate::new();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.opened().await }
        });
        assert!(!gate.is_open());
        gate.open();
        assert!(waiter.await.is_ok());
        assert!(gate.is_open());
    }
}
