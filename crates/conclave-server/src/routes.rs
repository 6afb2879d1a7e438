//! The route table: every API operation once, with its handler and its documentation. The router
//! and the OpenAPI document are both built from [`operations`], so they cannot drift apart.

use axum::Router;
use axum::routing::{MethodRouter, delete, get, patch, post};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::api::{
    agents, confirmations, diffs, events, leases, messages, notes, queue, status, tasks,
};
use crate::app::App;
use crate::error::ErrorBody;
use conclave_core::model::*;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Answers without a token.
    pub public: bool,
    pub status: u16,
    request: Option<SchemaFn>,
    query: Option<SchemaFn>,
    response: Option<SchemaFn>,
    handler: MethodRouter<App>,
}

impl Operation {
    fn request<T: JsonSchema>(mut self) -> Self {
        self.request = Some(schema::<T>);
        self
    }

    fn query<T: JsonSchema>(mut self) -> Self {
        self.query = Some(schema::<T>);
        self
    }

    fn response<T: JsonSchema>(mut self) -> Self {
        self.response = Some(schema::<T>);
        self
    }

    fn created(mut self) -> Self {
        self.status = 201;
        self
    }

    fn public(mut self) -> Self {
        self.public = true;
        self
    }
}

fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    handler: MethodRouter<App>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        public: false,
        status: 200,
        request: None,
        query: None,
        response: None,
        handler,
    }
}

pub fn operations() -> Vec<Operation> {
    vec![
        op("get", "/healthz", "Liveness check", get(status::health))
            .public()
            .response::<Health>(),
        op("get", "/api/openapi.json", "This document", get(openapi)).public(),
        op(
            "get",
            "/metrics",
            "Prometheus metrics (text)",
            get(status::metrics),
        ),
        op(
            "get",
            "/api/status",
            "Agents, tasks and leases at a glance",
            get(status::status),
        )
        .response::<StatusReport>(),
        op(
            "post",
            "/api/agents",
            "Register an agent (admin); answers its first token",
            post(agents::register),
        )
        .request::<NewAgent>()
        .response::<AgentCreated>()
        .created(),
        op("get", "/api/agents", "List agents", get(agents::list)).response::<AgentList>(),
        op(
            "get",
            "/api/agents/{name}",
            "Show an agent",
            get(agents::show),
        )
        .response::<Agent>(),
        op(
            "patch",
            "/api/agents/{name}",
            "Report an agent's status (admin, or the agent itself)",
            patch(agents::update),
        )
        .request::<AgentUpdate>()
        .response::<Agent>(),
        op(
            "post",
            "/api/agents/{name}/tokens",
            "Issue another token for an agent (admin)",
            post(agents::issue_token),
        )
        .response::<TokenIssued>()
        .created(),
        op(
            "get",
            "/api/agents/{name}/tokens",
            "List an agent's tokens by id (admin)",
            get(agents::tokens),
        )
        .response::<AgentTokenList>(),
        op(
            "delete",
            "/api/agents/{name}/tokens",
            "Revoke all of an agent's tokens (admin)",
            delete(agents::revoke_tokens),
        )
        .response::<TokensRevoked>(),
        op(
            "delete",
            "/api/agents/{name}/tokens/{id}",
            "Revoke one of an agent's tokens by id (admin)",
            delete(agents::revoke_token),
        )
        .response::<TokensRevoked>(),
        op(
            "post",
            "/api/agents/{name}/control",
            "Ask the supervisor to pause, resume, stop or restart an agent (admin)",
            post(agents::control),
        )
        .request::<AgentControl>()
        .response::<Agent>(),
        op(
            "post",
            "/api/agents/{name}/confirmation",
            "A loop asks a person to confirm its next iteration (admin)",
            post(confirmations::request),
        )
        .request::<ConfirmationRequest>()
        .response::<Confirmation>()
        .created(),
        op(
            "post",
            "/api/agents/{name}/confirm",
            "Answer a loop waiting for confirmation: continue (perhaps with a new prompt) or stop (admin)",
            post(confirmations::answer),
        )
        .request::<ConfirmationAnswer>()
        .response::<Confirmation>(),
        op(
            "get",
            "/api/confirmations",
            "Each loop's latest request for confirmation, waiting or answered",
            get(confirmations::list),
        )
        .query::<confirmations::ConfirmationQuery>()
        .response::<ConfirmationList>(),
        op(
            "post",
            "/api/agents/{name}/release",
            "Return an agent's tasks and leases (admin)",
            post(agents::release),
        )
        .request::<ReasonRequest>()
        .response::<conclave_core::store::ReleaseReport>(),
        op(
            "post",
            "/api/agents/{name}/remove",
            "Remove an agent: its tasks and leases given back, its merge queue entries dropped, its tokens revoked (admin)",
            post(agents::remove),
        )
        .request::<ReasonRequest>()
        .response::<conclave_core::store::RemovalReport>(),
        op("post", "/api/tasks", "Create a task", post(tasks::create))
            .request::<NewTask>()
            .response::<Task>()
            .created(),
        op("get", "/api/tasks", "List tasks", get(tasks::list))
            .query::<tasks::TaskQuery>()
            .response::<TaskList>(),
        op(
            "post",
            "/api/tasks/claim",
            "Claim a task (agent): the one named, or the best ready one",
            post(tasks::claim),
        )
        .request::<ClaimRequest>()
        .response::<conclave_core::store::ClaimOutcome>(),
        op(
            "get",
            "/api/tasks/{id}",
            "Show a task, with the dependency manifests and lockfiles its holders changed",
            get(tasks::show),
        )
        .response::<Task>(),
        op(
            "patch",
            "/api/tasks/{id}",
            "Edit a task",
            patch(tasks::edit),
        )
        .request::<TaskEdit>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/status",
            "Set in_progress, blocked or review (holder)",
            post(tasks::set_status),
        )
        .request::<TaskStatusUpdate>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/done",
            "Finish a task (holder)",
            post(tasks::done),
        )
        .request::<TaskFinish>()
        .response::<Task>(),
        op(
            "get",
            "/api/comparisons",
            "Past `conclave compare` runs of this project, newest first, with their reports",
            get(crate::api::comparisons::list),
        )
        .response::<ComparisonList>(),
        op(
            "get",
            "/api/comparisons/{name}/{file}",
            "A comparison's Markdown report (report.md) or one of its SVG charts (<metric>.svg)",
            get(crate::api::comparisons::file),
        ),
        op(
            "get",
            "/api/queue",
            "The merge queue: its entries in order and whether it is paused",
            get(queue::show),
        )
        .response::<QueueView>(),
        op(
            "post",
            "/api/queue/pause",
            "Pause the merge queue after its current landing (admin)",
            post(queue::pause),
        )
        .response::<QueueView>(),
        op(
            "post",
            "/api/queue/resume",
            "Resume the merge queue (admin)",
            post(queue::resume),
        )
        .response::<QueueView>(),
        op(
            "post",
            "/api/queue/{task}/skip",
            "Take an entry out of the merge queue; its task goes back to its agent (admin)",
            post(queue::skip),
        )
        .response::<QueueEntry>(),
        op(
            "post",
            "/api/queue/{task}/retry",
            "Put a sent-back or skipped entry back at the end of the merge queue (admin)",
            post(queue::retry),
        )
        .response::<QueueEntry>(),
        op(
            "post",
            "/api/queue/{task}/merge",
            "Land a waiting entry now, out of order, check included (admin)",
            post(queue::merge),
        )
        .response::<QueueEntry>(),
        op(
            "get",
            "/api/overlaps",
            "Per pair of open task branches, the files both changed (commits and uncommitted work in their worktrees)",
            get(crate::api::overlaps::show),
        )
        .response::<OverlapReport>(),
        op(
            "get",
            "/api/tasks/{id}/steps",
            "A task's history: each stage's verdict and each person's decision",
            get(tasks::steps),
        )
        .response::<TaskStepList>(),
        op(
            "get",
            "/api/tasks/{id}/diff",
            "What the task's branch (conclave/T-n) changed since it forked from the integration branch (git diff into...branch): every file with its line counts, and the patch up to max_bytes (truncated says it was cut). 404 when the task does not exist or has no branch (its agent works in the shared tree, or the branch has landed and gone)",
            get(diffs::show),
        )
        .query::<diffs::DiffQuery>()
        .response::<TaskDiff>(),
        op(
            "post",
            "/api/tasks/{id}/approve",
            "Approve a task waiting for a decision (admin)",
            post(tasks::approve),
        )
        .request::<TaskDecision>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/reject",
            "Reject a task waiting for a decision: back to its agent with the comment (admin)",
            post(tasks::reject),
        )
        .request::<TaskDecision>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/fail",
            "Fail a task (holder)",
            post(tasks::fail),
        )
        .request::<TaskFailure>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/cancel",
            "Cancel a task",
            post(tasks::cancel),
        )
        .request::<TaskCancel>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/assign",
            "Assign a task to an agent (admin)",
            post(tasks::assign),
        )
        .request::<TaskAssign>()
        .response::<Task>(),
        op(
            "post",
            "/api/tasks/{id}/reopen",
            "Reopen a finished task",
            post(tasks::reopen),
        )
        .request::<ReasonRequest>()
        .response::<Task>(),
        op(
            "post",
            "/api/leases",
            "Lease paths or globs (agent); all or nothing",
            post(leases::acquire),
        )
        .request::<LeaseRequest>()
        .response::<LeaseList>(),
        op(
            "post",
            "/api/leases/release",
            "Release leases",
            post(leases::release),
        )
        .request::<LeaseRelease>()
        .response::<ReleasedLeases>(),
        op(
            "get",
            "/api/leases",
            "List leases in force",
            get(leases::list),
        )
        .response::<LeaseList>(),
        op(
            "post",
            "/api/messages",
            "Send a message to an agent, role:<name> or all",
            post(messages::send),
        )
        .request::<NewMessage>()
        .response::<Message>()
        .created(),
        op(
            "get",
            "/api/messages",
            "List messages (an agent sees its own)",
            get(messages::list),
        )
        .query::<messages::MessageQuery>()
        .response::<MessageList>(),
        op(
            "get",
            "/api/inbox",
            "Unacknowledged messages (agent), optionally waiting",
            get(messages::inbox),
        )
        .query::<messages::InboxQuery>()
        .response::<MessageList>(),
        op(
            "post",
            "/api/inbox/ack",
            "Acknowledge messages (agent)",
            post(messages::ack),
        )
        .request::<MessageAck>()
        .response::<AckResult>(),
        op("post", "/api/notes", "Write a note", post(notes::add))
            .request::<NewNote>()
            .response::<Note>()
            .created(),
        op("get", "/api/notes", "List notes", get(notes::list))
            .query::<notes::NoteQuery>()
            .response::<NoteList>(),
        op(
            "get",
            "/api/search",
            "Search notes, messages and task results",
            get(notes::search),
        )
        .query::<notes::SearchQuery>()
        .response::<SearchResults>(),
        op(
            "get",
            "/api/events",
            "Query the event log",
            get(events::list),
        )
        .query::<EventFilter>()
        .response::<EventList>(),
        op(
            "post",
            "/api/events",
            "Record the supervisor's observation of an agent (admin; kind agent.*)",
            post(events::record),
        )
        .request::<NewEvent>()
        .created(),
        op(
            "post",
            "/hooks/{event}",
            "Claude Code hook endpoint (agent): pre-tool-use, post-tool-use, session-start, user-prompt-submit, stop, pre-compact, session-end",
            post(crate::hooks::handle),
        ),
        op(
            "get",
            "/api/events/stream",
            "Follow the event log (SSE; resumes after Last-Event-ID)",
            get(events::stream),
        )
        .query::<EventFilter>(),
    ]
}

/// The API router: public operations, and the rest behind the token middleware.
pub fn router(app: &App) -> Router<App> {
    let mut public = Router::new();
    let mut private = Router::new();
    for operation in operations() {
        if operation.public {
            public = public.route(operation.path, operation.handler);
        } else {
            private = private.route(operation.path, operation.handler);
        }
    }
    let private = private.layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::auth::require_token,
    ));
    public.merge(private)
}

/// The OpenAPI 3.1 document of every operation.
/// `GET /api/openapi.json`.
async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document())
}

pub fn openapi_document() -> Value {
    // OpenAPI 3.1's schemas are JSON Schema draft 2020-12 (an optional value is
    // `type: [X, "null"]`); schemars' `openapi3()` settings would write 3.0's `nullable`.
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let error_schema = generator.subschema_for::<ErrorBody>();
    let mut paths: Map<String, Value> = Map::new();
    for operation in operations() {
        let mut entry = json!({
            "summary": operation.summary,
            "operationId": format!("{}_{}", operation.method, operation.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
        });
        let mut responses = Map::new();
        let ok = match operation.response {
            Some(response) => json!({
                "description": "success",
                "content": { "application/json": { "schema": response(&mut generator) } }
            }),
            None => json!({ "description": "success" }),
        };
        responses.insert(operation.status.to_string(), ok);
        responses.insert(
            "default".to_string(),
            json!({ "description": "error", "content": { "application/json": { "schema": error_schema.clone() } } }),
        );
        entry["responses"] = Value::Object(responses);
        if let Some(request) = operation.request {
            entry["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": request(&mut generator) } }
            });
        }
        let mut parameters: Vec<Value> = path_parameters(operation.path)
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true, "schema": path_parameter_schema(operation.path, name) })
            })
            .collect();
        if let Some(query) = operation.query {
            let query_schema = query(&mut generator);
            parameters.extend(query_parameters(&generator, &query_schema));
        }
        if !parameters.is_empty() {
            entry["parameters"] = Value::Array(parameters);
        }
        if operation.public {
            entry["security"] = json!([]);
        }
        let item = paths
            .entry(operation.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        item[operation.method] = entry;
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Conclave API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Coordination server for teams of coding agents. Every request but /healthz and /api/openapi.json needs `Authorization: Bearer <token>` (an agent's token or the admin token); the dashboard's session cookie also authenticates /api/* requests as admin, and a change made with it must be same-origin and carry `X-Conclave-Csrf: 1`. Mutating requests may carry `Idempotency-Key`."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "security": [{ "bearer": [] }]
    })
}

/// The schema of a path parameter: what the handler's parser accepts, so that a client (and
/// schemathesis) knows a malformed id is refused before it asks.
fn path_parameter_schema(path: &str, name: &str) -> Value {
    let task_id = name == "task" || (name == "id" && path.starts_with("/api/tasks/"));
    if task_id {
        json!({ "type": "string", "pattern": "^T-[1-9][0-9]{0,17}$", "description": "task id, e.g. T-3" })
    } else if name == "id" && path.contains("/tokens/") {
        json!({ "type": "string", "pattern": "^[0-9A-Fa-f]{6,}$", "description": "a token id (at least 6 hex digits)" })
    } else if name == "name" {
        json!({ "type": "string", "pattern": NAME_PATTERN })
    } else {
        json!({ "type": "string" })
    }
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// Query parameters from the properties of a query struct's schema.
fn query_parameters(generator: &SchemaGenerator, schema: &Schema) -> Vec<Value> {
    let resolved = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|reference| reference.rsplit('/').next())
        .and_then(|name| generator.definitions().get(name))
        .cloned()
        .unwrap_or_else(|| schema.as_value().clone());
    let required: Vec<&str> = resolved
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    resolved
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, property)| {
                    json!({
                        "name": name, "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": property,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}
