//! A scripted stand-in for the Anthropic Messages API, so tests (and demos) can drive the real
//! Claude Code CLI end to end with no network and no key; plus [`claude_cli`], the way tests
//! get that CLI and an isolated environment to run it in.
//!
//! # Serving
//!
//! [`StandIn::start`] binds `127.0.0.1:0` and serves in the background; point the CLI at
//! [`StandInHandle::url`] with `ANTHROPIC_BASE_URL`. [`run`] serves a [`StandIn`] on a listener
//! you bound until a shutdown future resolves, for hosting it in a binary. The stand-in answers:
//!
//! - `POST /v1/messages` (with or without `?beta=true`): streamed as `text/event-stream`
//!   (`message_start`, `ping`, `content_block_start`, `content_block_delta` with `text_delta`
//!   or `input_json_delta`, `content_block_stop`, `message_delta` with stop reason `tool_use`
//!   or `end_turn`, `message_stop`) when the body says `"stream": true`, else one JSON message;
//! - `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, about four characters a token;
//! - anything else: 404 with the API's error body.
//!
//! Every request is recorded ([`RecordedRequest`]: method, path, query, all headers, the JSON
//! body, its [`RequestKind`] and how it was answered) and can be read back with
//! [`StandIn::requests`], [`StandIn::main_requests`], or awaited with [`StandIn::wait_for`].
//!
//! # Scripting
//!
//! A [`Script`] decides the [`Reply`] to each *main* request: a `POST /v1/messages` that
//! lists tools and asks for no structured output, i.e. one turn of the agent loop. Replies
//! come from a queue ([`Script::then`], [`Script::replies`]), steps computed from the request
//! ([`Script::then_with`]), or a rule once the queue is empty ([`Script::from_fn`]). When all
//! run out, the turn gets [`EXHAUSTED_TEXT`] and is flagged in
//! [`StandIn::exhausted_requests`].
//!
//! *Side* requests never consume the script. The 2.1.328 CLI makes one only when
//! nonessential traffic is allowed: an interactive session asks the main model for a session
//! title (`"tools": []`, `output_config.format` a JSON schema). They get [`SIDE_TEXT`], or a
//! JSON object fitting the schema; [`Script::side_fn`] overrides that.
//!
//! # Several agents on one stand-in
//!
//! Each agent process gets its own API key (`ANTHROPIC_API_KEY`, sent as `x-api-key`; or
//! `ANTHROPIC_AUTH_TOKEN`, sent as `authorization: Bearer`), and the script gives each key its
//! own lane ([`Script::agent`], [`Script::agent_fn`], [`Script::push_for`]). A key with a lane
//! only ever takes replies from it; other keys share the default lane. Sub-agents the CLI
//! spawns itself (its `Agent` tool) share their parent's key and lane; a rule can tell them
//! apart by [`RecordedRequest::system_text`] or [`RecordedRequest::session_id`].
//!
//! ```no_run
//! use conclave_standin::{Reply, Script, StandIn, claude_cli::CliEnv};
//! use serde_json::json;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let script = Script::new()
//!     .then(Reply::tool_use("Write", json!({"file_path": "/tmp/repo/hello.txt", "content": "hi\n"})))
//!     .then(Reply::text("Wrote hello.txt."));
//! let stand_in = StandIn::start(script).await?;
//! let cli_env = CliEnv::new(&stand_in.url(), "agent-1")?;
//! // cli_env.command(&claude_bin).args(["-p", "write the file", ...]) ...
//! let turns = stand_in.main_requests();
//! # Ok(()) }
//! ```

pub mod claude_cli;
pub mod demo;
mod record;
mod reply;
mod script;
mod server;
mod wire;

pub use record::{AnsweredBy, RecordedRequest, RequestKind, ToolResult};
pub use reply::{Block, Gate, Reply};
pub use script::{EXHAUSTED_TEXT, Rule, SIDE_TEXT, Script};
pub use server::{StandIn, StandInError, StandInHandle, run};
