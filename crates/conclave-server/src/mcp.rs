//! The MCP endpoint (`/mcp`, streamable HTTP, built with the official SDK `rmcp`): the agent's
//! tool set. All MCP code lives in this module (rmcp breaks its API often).
//!
//! Served statelessly: no MCP session is kept in memory, so a client keeps working across a
//! server restart. The agent is the owner of the bearer token (checked by the auth middleware in
//! front); no tool takes an identity argument. Results are short text a model reads easily,
//! bounded in size; errors say what to do next. What a tool does is an operation of
//! [`crate::ops`], shared with the hooks and the JSON API; this module parses arguments and words
//! the results.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use conclave_core::CoreError;
use conclave_core::model::{
    Actor, LeaseList, LeaseMode, LeaseRelease, LeaseRequest, MessageKind, NewMessage, NewNote,
    NewTask, NoteKind, ReleasedLeases, Task, TaskFinish, TaskId, TaskStatus, TaskStatusUpdate,
    Verdict, format_duration_secs,
};
use conclave_core::store::{ClaimOutcome, TaskPage};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;

use crate::app::App;
use crate::ops::{self, IdempotencyKey, OpError};

/// The most text one tool result carries.
const MAX_RESULT_CHARS: usize = 6000;
const MAX_INBOX_WAIT_SECS: i64 = 300;

mod direct;

pub use direct::DirectCalls;

pub type McpService = StreamableHttpService<ConclaveTools, NeverSessionManager>;

/// The `/mcp` service, and the tool calls answered before it ([`answer_requests`]'s state).
/// Mount both behind the token middleware.
pub fn service(app: App) -> (McpService, DirectCalls) {
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.extend(app.settings().allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // The API's limit, not rmcp's 4 MiB default: one bound on what a request can make us hold.
        .with_max_request_body_bytes(crate::MAX_BODY_BYTES)
        .with_allowed_hosts(hosts.clone())
        .with_cancellation_token(app.shutdown_token().child_token());
    let tools = ConclaveTools {
        app: app.clone(),
        tool_router: Arc::new(slim_schemas(ConclaveTools::tool_router())),
    };
    let direct = DirectCalls::new(tools.clone(), &hosts, app.shutdown_token().child_token());
    let sdk = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    (sdk, direct)
}

/// Reads a POST's body once (over [`crate::MAX_BODY_BYTES`] it is refused with 413), answers
/// a plain tool call directly ([`DirectCalls`]), and hands anything else to the SDK's service.
///
/// Answers a POST whose body is not JSON with a JSON-RPC parse error (code -32700, HTTP 400),
/// and JSON that is not a JSON-RPC message with an invalid request (-32600), as JSON-RPC and
/// MCP's HTTP transport say, where the SDK would answer 415 with plain text:
/// only when it answers 415 (its answer both to a wrong content type and to a body it cannot
/// read) is the body checked here for being JSON at all.
pub async fn answer_requests(
    axum::extract::State(direct): axum::extract::State<DirectCalls>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.method() != http::Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, crate::MAX_BODY_BYTES).await else {
        return crate::ApiError::new(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over {} bytes", crate::MAX_BODY_BYTES),
        )
        .into_response();
    };
    if let Some(response) = direct.try_answer(&parts, &bytes).await {
        return response;
    }
    let sent_as_json = direct::sent_as_json(&parts.headers);
    let response = next
        .run(axum::extract::Request::from_parts(
            parts,
            axum::body::Body::from(bytes.clone()),
        ))
        .await;
    if response.status() != http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return response;
    }
    let (code, message, id) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Err(error) => (
            -32700,
            format!("Parse error: {error}"),
            serde_json::Value::Null,
        ),
        // JSON sent as JSON that the SDK could not read as a JSON-RPC message: an invalid
        // request, answered with its id when it has a usable one.
        Ok(body) if sent_as_json => {
            let id = match &body["id"] {
                id @ (serde_json::Value::String(_) | serde_json::Value::Number(_)) => id.clone(),
                _ => serde_json::Value::Null,
            };
            (
                -32600,
                "Invalid Request: not a JSON-RPC 2.0 request, notification or response".to_string(),
                id,
            )
        }
        // Any other content type: the SDK's 415 stands.
        Ok(_) => return response,
    };
    let answer = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message }
    });
    (http::StatusCode::BAD_REQUEST, axum::Json(answer)).into_response()
}

#[derive(Clone)]
pub struct ConclaveTools {
    app: App,
    tool_router: Arc<ToolRouter<Self>>,
}

type ToolResult = Result<CallToolResult, rmcp::ErrorData>;

fn text(body: impl Into<String>) -> ToolResult {
    let mut body = body.into();
    if body.len() > MAX_RESULT_CHARS {
        body = ops::cut_to(&body, MAX_RESULT_CHARS);
        body.push_str("\n… (cut; narrow the request)");
    }
    Ok(CallToolResult::success(vec![ContentBlock::text(body)]))
}

fn failure(error: OpError, hint: &str) -> ToolResult {
    let mut message = format!("Error ({}): {error}", error.code());
    if !hint.is_empty() {
        message.push('\n');
        message.push_str(hint);
    }
    Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
}

/// A tool's outcome as the model reads it: the text, or the error with a hint of what to do next.
fn answer(result: Result<String, OpError>, hint: &str) -> ToolResult {
    match result {
        Ok(body) => text(body),
        Err(error) => failure(error, hint),
    }
}

fn actor_of(parts: &http::request::Parts) -> Result<Actor, CoreError> {
    // The token middleware in front of `/mcp` puts the actor there; without it, nobody may act.
    parts
        .extensions
        .get::<Actor>()
        .cloned()
        .ok_or_else(|| CoreError::Forbidden("no agent token".to_string()))
}

fn agent_of(parts: &http::request::Parts) -> Result<(Actor, String), CoreError> {
    let actor = actor_of(parts)?;
    let name = actor
        .agent()
        .ok_or_else(|| {
            CoreError::Forbidden(
                "the Conclave tools need an agent's token, not the admin's".to_string(),
            )
        })?
        .to_string();
    Ok((actor, name))
}

fn task_line(task: &Task) -> String {
    let mut line = format!("{} [{}] {}", task.id, task.status, task.title);
    if let Some(role) = &task.role {
        let _ = write!(line, " (role {role})");
    }
    if task.priority != 0 {
        let _ = write!(line, " prio {}", task.priority);
    }
    if !task.depends_on.is_empty() {
        let deps: Vec<String> = task.depends_on.iter().map(ToString::to_string).collect();
        let _ = write!(line, " after {}", deps.join(","));
    }
    if let Some(holder) = &task.assignee {
        let _ = write!(line, " — {holder}");
    }
    line
}

fn default_status() -> String {
    "open".to_string()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ClaimArgs {
    // Task id; omit to take the best ready task for you (the tool says so).
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UpdateArgs {
    pub id: String,
    // in_progress, blocked or review (the tool says so).
    pub status: String,
    // A progress note for the log.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DoneArgs {
    pub id: String,
    /// What was done
    #[serde(default)]
    pub summary: Option<String>,
    /// Files changed
    #[serde(default)]
    pub files: Vec<String>,
    /// pass (default) or send_back
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub comments: Option<String>,
    /// Role to send back to
    #[serde(default)]
    pub to_stage: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FailArgs {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NewTaskArgs {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    // Ids that must be done first; "#2" means the 2nd task of this call (the tool says so).
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub role: Option<String>,
    // Higher runs first (default 0).
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub pipeline: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddTasksArgs {
    pub tasks: Vec<NewTaskArgs>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct TasksArgs {
    // open (default), all, or one status (the tool says so).
    #[serde(default = "default_status")]
    pub status: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct LockArgs {
    // Paths or globs relative to the project root.
    pub paths: Vec<String>,
    /// Read lease
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UnlockArgs {
    pub paths: Vec<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SendArgs {
    // Agent name, role:<name>, or all (the tool says so).
    pub to: String,
    pub body: String,
    #[serde(default)]
    pub thread: Option<String>,
    /// chat (default), question, answer, alert
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct InboxArgs {
    /// max 300
    #[serde(default)]
    pub wait_secs: i64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NoteArgs {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    // decision, discovery (default), interface, warning (the tool says so).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Note id it replaces
    #[serde(default)]
    pub supersedes: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    pub query: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct HandoffArgs {
    /// State of your work, next steps, pitfalls
    pub summary: String,
}

type Parts = Extension<http::request::Parts>;

/// Finished tasks the `tasks` tool lists with "all" (the latest ones).
const TOOL_FINISHED_TASKS: i64 = 100;
/// Tasks of one status the `tasks` tool lists.
const TOOL_TASK_PAGE: i64 = 200;

#[tool_router]
impl ConclaveTools {
    #[tool(description = "Who you are, your tasks and leases, unread count, the team.")]
    async fn status(&self, Extension(parts): Parts) -> ToolResult {
        answer(self.status_text(&parts).await, "")
    }

    #[tool(description = "Claim a ready task (by id, or the best one for you).")]
    async fn claim(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<ClaimArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, _) = agent_of(&parts)?;
            let id = args.id.as_deref().map(str::parse::<TaskId>).transpose()?;
            let (written, checkout) =
                ops::claim_task_on_branch(&self.app, &actor, &IdempotencyKey::default(), id)
                    .await?;
            let outcome: ClaimOutcome = written.parse()?;
            Ok::<_, OpError>(match outcome.task {
                Some(task) => {
                    // The first line is a contract: a remote host's relay reads the task id from
                    // it (conclave-supervisor worktree_steps::claimed_task) to switch the worktree.
                    let mut body = format!("Claimed {}\n", task_line(&task));
                    if !task.body.is_empty() {
                        let _ = writeln!(body, "{}", task.body);
                    }
                    if let Some(checkout) = checkout {
                        let _ = writeln!(
                            body,
                            "Your worktree is on its branch {} ({}).",
                            checkout.branch,
                            if checkout.resumed {
                                "with the work already on it"
                            } else {
                                "new, from the integration branch's tip"
                            }
                        );
                    }
                    body.push_str("Edits lease files for you. Finish with done (or fail).");
                    body
                }
                None => "Nothing ready fits you now. Wait with inbox(wait_secs) or check tasks."
                    .to_string(),
            })
        }
        .await;
        answer(result, "See tasks for what is ready.")
    }

    #[tool(description = "Set your task's status: in_progress, blocked or review.")]
    async fn update(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<UpdateArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, _) = agent_of(&parts)?;
            let id = args.id.parse::<TaskId>()?;
            let status: TaskStatus = args.status.parse()?;
            let update = TaskStatusUpdate {
                status,
                note: args.note,
            };
            ops::set_task_status(&self.app, &actor, &IdempotencyKey::default(), id, update).await?;
            Ok::<_, OpError>(format!("{id} is now {status}."))
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Mark your task done, with a summary.")]
    async fn done(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<DoneArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, _) = agent_of(&parts)?;
            let id = args.id.parse::<TaskId>()?;
            let verdict = match args.verdict.as_deref() {
                None | Some("pass") => None,
                Some("send_back") => Some(Verdict::SendBack),
                Some(other) => {
                    return Err(CoreError::invalid(format!(
                        "verdict {other:?}: expected pass or send_back"
                    ))
                    .into());
                }
            };
            let finish = TaskFinish {
                summary: args.summary,
                files: args.files,
                verdict,
                comments: args.comments,
                to_stage: args.to_stage,
            };
            let (written, branch) = ops::finish_task_on_branch(
                &self.app,
                &actor,
                &IdempotencyKey::default(),
                id,
                finish,
            )
            .await?;
            // A pipeline or approval task moves on rather than ending: say where it went.
            let task = written.parse()?;
            if let Some(branch) = branch
                && task.status == TaskStatus::Review
                && !task.awaiting_approval
            {
                return Ok(format!(
                    "{id} finished; its leases are released. {} It is done once its branch \
                     lands (you are told if it is sent back). claim for more work.",
                    branch.describe()
                ));
            }
            Ok::<_, OpError>(if task.awaiting_approval {
                format!("{id} waits for a person's approval. claim for more work.")
            } else if task.status == TaskStatus::Ready {
                format!("{id} handed to its next stage. claim for more work.")
            } else {
                format!("{id} done; its leases are released. claim for more work.")
            })
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Give up your task with a reason.")]
    async fn fail(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<FailArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, _) = agent_of(&parts)?;
            let id = args.id.parse::<TaskId>()?;
            ops::fail_task(
                &self.app,
                &actor,
                &IdempotencyKey::default(),
                id,
                args.reason,
            )
            .await?;
            Ok::<_, OpError>(format!("{id} failed; its leases are released."))
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Create tasks (split work). after: ids, or \"#n\" for the nth task here.")]
    async fn add_tasks(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<AddTasksArgs>,
    ) -> ToolResult {
        let result = async {
            let actor = actor_of(&parts)?;
            if args.tasks.is_empty() || args.tasks.len() > 50 {
                return Err(CoreError::invalid("give 1 to 50 tasks").into());
            }
            let by = actor.clone();
            let created = self
                .app
                .write(&actor, &IdempotencyKey::default(), move |tx| {
                    let mut ids: Vec<TaskId> = Vec::new();
                    for new in args.tasks {
                        let mut after = Vec::new();
                        for reference in &new.after {
                            let id = match reference.strip_prefix('#') {
                                Some(n) => n
                                    .parse::<usize>()
                                    .ok()
                                    .and_then(|n| n.checked_sub(1))
                                    .and_then(|i| ids.get(i).copied())
                                    .ok_or_else(|| {
                                        CoreError::invalid(format!(
                                            "{reference} does not name an earlier task of this call"
                                        ))
                                    })?,
                                None => reference.parse()?,
                            };
                            after.push(id);
                        }
                        let task = tx.create_task(
                            &by,
                            NewTask {
                                title: new.title,
                                body: new.body,
                                after,
                                role: new.role,
                                priority: new.priority,
                                pipeline: new.pipeline,
                                ..NewTask::default()
                            },
                        )?;
                        ids.push(task.id);
                    }
                    Ok(ids)
                })
                .await?;
            let ids: Vec<String> = created.parse()?.iter().map(ToString::to_string).collect();
            Ok(format!("Created {}.", ids.join(", ")))
        }
        .await;
        answer(result, "Nothing was created.")
    }

    #[tool(description = "List tasks: open (default), all, or a status.")]
    async fn tasks(&self, Parameters(args): Parameters<TasksArgs>) -> ToolResult {
        let result = async {
            // Bounded by what is open, never by all history: "all" adds the latest finished
            // tasks, a status is listed a page at a time.
            let (tasks, more) = match args.status.as_str() {
                "open" => (self.app.read(|r| r.open_and_recent_tasks(0)).await?, false),
                "all" => (
                    self.app
                        .read(|r| r.open_and_recent_tasks(TOOL_FINISHED_TASKS))
                        .await?,
                    false,
                ),
                status => {
                    let page = TaskPage {
                        status: Some(status.parse::<TaskStatus>()?),
                        limit: TOOL_TASK_PAGE + 1,
                        ..TaskPage::default()
                    };
                    let mut tasks = self.app.read(move |r| r.task_page(&page)).await?;
                    let more = tasks.len() as i64 > TOOL_TASK_PAGE;
                    tasks.truncate(TOOL_TASK_PAGE as usize);
                    (tasks, more)
                }
            };
            let mut lines: Vec<String> = tasks.iter().map(task_line).collect();
            if more {
                lines.push(format!(
                    "(only the first {TOOL_TASK_PAGE}; `conclave task list` shows every one)"
                ));
            }
            Ok::<_, OpError>(if lines.is_empty() {
                "No tasks.".to_string()
            } else {
                lines.join("\n")
            })
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Lease paths/globs before editing (edits lease files automatically).")]
    async fn lock(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<LockArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, name) = agent_of(&parts)?;
            let request = LeaseRequest {
                paths: args.paths.clone(),
                mode: if args.shared {
                    LeaseMode::Shared
                } else {
                    LeaseMode::Exclusive
                },
                ttl_secs: args.ttl_secs,
                reason: args.reason,
                task: None,
            };
            let list: LeaseList = ops::acquire_leases(
                &self.app,
                &actor,
                &IdempotencyKey::default(),
                &name,
                request,
            )
            .await?
            .parse()?;
            let lines: Vec<String> = list
                .leases
                .iter()
                .map(|l| {
                    let left = (l.expires_at - chrono::Utc::now()).num_seconds();
                    format!(
                        "{} {} for {} (token {})",
                        l.path,
                        l.mode,
                        format_duration_secs(left),
                        l.fencing_token
                    )
                })
                .collect();
            Ok::<_, OpError>(format!("Leased: {}", lines.join("; ")))
        }
        .await;
        answer(result, "Message the holder (send) or pick other work.")
    }

    #[tool(description = "Release your leases on paths.")]
    async fn unlock(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<UnlockArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, _) = agent_of(&parts)?;
            let release = LeaseRelease {
                paths: args.paths,
                force: false,
            };
            let released: ReleasedLeases =
                ops::release_leases(&self.app, &actor, &IdempotencyKey::default(), release)
                    .await?
                    .parse()?;
            let n = released.released.len();
            Ok::<_, OpError>(format!("Released {n} lease(s)."))
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Send a message to an agent, role:<name>, or all.")]
    async fn send(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<SendArgs>,
    ) -> ToolResult {
        let result = async {
            let actor = actor_of(&parts)?;
            let kind = args
                .kind
                .as_deref()
                .map(str::parse::<MessageKind>)
                .transpose()?
                .unwrap_or_default();
            let new = NewMessage {
                to: args.to,
                body: args.body,
                thread: args.thread,
                kind,
                urgent: args.urgent,
            };
            let sent = ops::send_message(&self.app, &actor, &IdempotencyKey::default(), new)
                .await?
                .parse()?;
            Ok::<_, OpError>(format!(
                "Sent {} to {} agent(s).",
                sent.id,
                sent.deliveries.len()
            ))
        }
        .await;
        answer(result, "status lists the team's names.")
    }

    #[tool(description = "Read and acknowledge your messages; wait_secs waits for one.")]
    async fn inbox(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<InboxArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, name) = agent_of(&parts)?;
            let wait = Duration::from_secs(args.wait_secs.clamp(0, MAX_INBOX_WAIT_SECS) as u64);
            let shown = ops::deliver_inbox(
                &self.app,
                &actor,
                &name,
                wait,
                |_| true,
                MAX_RESULT_CHARS - 200,
            )
            .await?;
            Ok::<_, OpError>(shown.unwrap_or_else(|| "No messages.".to_string()))
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Record a note for the team: decision, discovery, interface, warning.")]
    async fn note(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<NoteArgs>,
    ) -> ToolResult {
        let result = async {
            let actor = actor_of(&parts)?;
            let kind = args
                .kind
                .as_deref()
                .map(str::parse::<NoteKind>)
                .transpose()?
                .unwrap_or_default();
            let new = NewNote {
                title: args.title,
                kind,
                body: args.body,
                tags: args.tags,
                supersedes: args.supersedes,
                ..NewNote::default()
            };
            let note = ops::add_note(&self.app, &actor, &IdempotencyKey::default(), new)
                .await?
                .parse()?;
            Ok::<_, OpError>(format!("Noted {}.", note.id))
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Search notes, messages and task results.")]
    async fn search(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<SearchArgs>,
    ) -> ToolResult {
        let result = async {
            let actor = actor_of(&parts)?;
            let hits = ops::search(&self.app, &actor, args.query, Vec::new(), 15).await?;
            if hits.is_empty() {
                return Ok("No matches.".to_string());
            }
            let lines: Vec<String> = hits
                .iter()
                .map(|h| format!("{} {}: {}", h.id, h.title, h.snippet))
                .collect();
            Ok::<_, OpError>(lines.join("\n"))
        }
        .await;
        answer(result, "")
    }

    #[tool(description = "Leave a handoff for your successor session.")]
    async fn handoff(
        &self,
        Extension(parts): Parts,
        Parameters(args): Parameters<HandoffArgs>,
    ) -> ToolResult {
        let result = async {
            let (actor, name) = agent_of(&parts)?;
            let new = NewMessage {
                to: name,
                body: args.summary,
                thread: Some("handoff".to_string()),
                kind: MessageKind::Handoff,
                urgent: false,
            };
            ops::send_message(&self.app, &actor, &IdempotencyKey::default(), new).await?;
            Ok::<_, OpError>("Handoff saved; your next session gets it at start.".to_string())
        }
        .await;
        answer(result, "")
    }
}

impl ConclaveTools {
    async fn status_text(&self, parts: &http::request::Parts) -> Result<String, OpError> {
        let (_, name) = agent_of(parts)?;
        let now = chrono::Utc::now().timestamp_millis();
        let me = name.clone();
        let (agent, held, leases, unread, agents, held_by_all) = self
            .app
            .read(move |r| {
                Ok((
                    r.agent(&me)?,
                    r.held_tasks(&me)?,
                    r.leases_of(&me, now)?,
                    r.unread_count(&me)?,
                    r.agents()?,
                    r.tasks_in_hand()?,
                ))
            })
            .await?;
        let mut body = format!(
            "You are {} (role {}).\n",
            agent.name,
            agent.role.as_deref().unwrap_or("none")
        );
        if held.is_empty() {
            body.push_str("No task held: claim one.\n");
        }
        for task in &held {
            let _ = writeln!(body, "Task: {}", task_line(task));
        }
        for lease in &leases {
            let left = (lease.expires_at - chrono::Utc::now()).num_seconds();
            let _ = writeln!(
                body,
                "Lease: {} {} ({} left)",
                lease.path,
                lease.mode,
                format_duration_secs(left)
            );
        }
        let _ = writeln!(
            body,
            "Unread messages: {unread}{}",
            if unread > 0 { " (inbox)" } else { "" }
        );
        body.push_str("Team:\n");
        for other in agents.iter().filter(|a| a.name != name) {
            let tasks: Vec<String> = held_by_all
                .iter()
                .filter(|t| {
                    t.assignee.as_deref() == Some(other.name.as_str()) && t.status.is_held()
                })
                .map(|t| t.id.to_string())
                .collect();
            let _ = writeln!(
                body,
                "- {} ({}) {}{}",
                other.name,
                other.role.as_deref().unwrap_or("no role"),
                other.status,
                if tasks.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", tasks.join(","))
                }
            );
        }
        Ok(body)
    }
}

#[tool_handler(router = self.tool_router, name = "conclave", version = "0.1.0")]
impl ServerHandler for ConclaveTools {}

/// Drops `$schema`, titles and integer `format`s from input schemas: every byte of the tool list
/// sits in every agent's context all session long.
fn slim_schemas<S>(mut router: ToolRouter<S>) -> ToolRouter<S> {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("$schema");
                // A schema's title, not a property named `title` (note and task titles).
                if map.get("title").is_some_and(serde_json::Value::is_string) {
                    map.remove("title");
                }
                // An optional argument's empty default says nothing the model needs.
                if map.get("default").is_some_and(|default| {
                    default.is_null()
                        || default == &serde_json::Value::Bool(false)
                        || default.as_array().is_some_and(Vec::is_empty)
                }) {
                    map.remove("default");
                }
                // `["string", "null"]` for an optional argument: not being in `required` says it.
                if let Some(serde_json::Value::Array(types)) = map.get("type")
                    && types.len() == 2
                    && types.contains(&serde_json::Value::from("null"))
                    && let Some(base) = types.iter().find(|t| *t != "null").cloned()
                {
                    map.insert("type".to_string(), base);
                }
                if map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.contains("int") || f == "double")
                {
                    map.remove("format");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    for route in router.map.values_mut() {
        let mut value = serde_json::Value::Object((*route.attr.input_schema).clone());
        walk(&mut value);
        if let serde_json::Value::Object(map) = value {
            route.attr.input_schema = Arc::new(map);
        }
    }
    router
}

/// The tool definitions as a client receives them (name, description, input schema), as
/// compact JSON: what each agent carries in its context.
pub fn tool_definitions_json() -> String {
    let router = slim_schemas(ConclaveTools::tool_router());
    let tools: Vec<serde_json::Value> = router
        .list_all()
        .into_iter()
        .map(|tool| {
            serde_json::json!({
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
            })
        })
        .collect();
    serde_json::to_string(&tools).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole tool list sits in every agent's context: under 4,000 characters as the model
    /// sees it, where each name carries the 15-character `mcp__conclave__` prefix.
    #[test]
    fn the_tool_definitions_stay_under_four_thousand_characters() {
        let json = tool_definitions_json();
        let tools: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json");
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        for verb in [
            "status",
            "claim",
            "update",
            "done",
            "fail",
            "add_tasks",
            "tasks",
            "lock",
            "unlock",
            "send",
            "inbox",
            "note",
            "search",
            "handoff",
        ] {
            assert!(names.contains(&verb), "missing tool {verb}: {names:?}");
        }
        println!(
            "tool definitions: {} characters for {} tools",
            json.len(),
            tools.len()
        );
        assert!(
            json.len() + 15 * tools.len() < 4000,
            "{} characters",
            json.len()
        );
        assert!(
            !json.contains("\"format\""),
            "integer formats should be stripped"
        );
    }
}
