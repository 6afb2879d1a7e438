//! Tool calls answered directly: the common `tools/call` request of an agent (a plain POST in one
//! of the protocol versions before per-request negotiation, with nothing the SDK's transport
//! would have to check beyond what is checked here) is handed to the same dispatch
//! ([`Service::handle_request`]) the SDK's serve loop would call, and its answer is written as
//! the SDK writes it. Everything else — `initialize`, `tools/list`, notifications, other versions, an `Origin`
//! header, a host given with a port, a body that is not such a request — goes through the SDK's
//! [`StreamableHttpService`](rmcp::transport::StreamableHttpService) unchanged.
//!
//! Why: served statelessly, the SDK builds a service for every request (a peer, a transport, a
//! cancellation tree, and three spawned tasks that hop between the runtime's threads). That was
//! 0.15–0.2 ms of server CPU per call, more than the operation itself for most tools (issue 14:
//! an MCP tool call ≤ 0.3 ms of server CPU). The request context the handler gets here carries
//! what the SDK's would (the request id, its `_meta`, and the HTTP request's parts, where the
//! token middleware put the agent), with one peer made once at start-up: Conclave's tools never
//! send anything back to the client through it.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use rmcp::Service;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorData, ServerJsonRpcMessage};
use rmcp::service::{RequestContext, RoleServer, RunningService, serve_directly_with_ct};
use tokio_util::sync::CancellationToken;

use super::ConclaveTools;

/// Protocol versions whose `tools/call` is answered directly: the versions before per-request
/// negotiation (SEP-2567) and the standard headers (SEP-2243), which the SDK handles itself.
const DIRECT_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];

/// The tools, the hosts a direct call may name, and the peer every direct call's context holds.
#[derive(Clone)]
pub struct DirectCalls {
    tools: ConclaveTools,
    /// Allowed hosts given without a port (lower case, no brackets): a request naming one of
    /// them is one the SDK would let through too; any other `Host` goes to the SDK to judge.
    hosts: Arc<[String]>,
    peer: Arc<OnceLock<RunningService<RoleServer, ConclaveTools>>>,
    shutdown: CancellationToken,
}

impl DirectCalls {
    pub(super) fn new(
        tools: ConclaveTools,
        allowed_hosts: &[String],
        shutdown: CancellationToken,
    ) -> DirectCalls {
        let hosts = allowed_hosts
            .iter()
            .filter_map(|host| portless_host(host))
            .collect();
        DirectCalls {
            tools,
            hosts,
            peer: Arc::new(OnceLock::new()),
            shutdown,
        }
    }

    /// The answer to `parts` and `body` when it is a tool call this module answers; `None` (and
    /// nothing done) when the SDK must see the request.
    pub(super) async fn try_answer(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Option<Response> {
        if !self.is_plain_call(&parts.headers, &parts.uri) {
            return None;
        }
        let message = match serde_json::from_slice::<ClientJsonRpcMessage>(body) {
            Ok(message) => message,
            Err(error) => return invalid_tool_call(body, &error.to_string()),
        };
        let ClientJsonRpcMessage::Request(request) = message else {
            return None;
        };
        let id = request.id;
        let ClientRequest::CallToolRequest(mut call) = request.request else {
            // The SDK reads a `tools/call` whose params do not fit as a request of another kind.
            return invalid_tool_call(
                body,
                "its params must hold the tool's name (a string) and, optionally, its arguments \
                 (an object)",
            );
        };
        if call
            .params
            .meta
            .as_ref()
            .is_some_and(|meta| meta.protocol_version().is_some())
        {
            return None;
        }
        let mut context = RequestContext::new(id.clone(), self.peer().clone());
        if let Some(meta) = call.params.meta.take() {
            context.meta = meta;
        }
        context.extensions.insert(parts.clone());
        self.tools.app.metrics().count_mcp_direct_call();
        // The SDK's own dispatch (what its serve loop calls): the tool router, the result shaped
        // for the protocol version, errors mapped as the SDK maps them.
        let request = ClientRequest::CallToolRequest(call);
        let message = match Service::handle_request(&self.tools, request, context).await {
            Ok(result) => ServerJsonRpcMessage::response(result, id),
            Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
        };
        Some(json_response(&message))
    }

    /// Whether the headers are those of a plain call: JSON in, JSON and SSE accepted (as the
    /// transport requires), a version answered here, an allowed host without a port, and no
    /// `Origin`, session or standard (SEP-2243) header for the SDK to check.
    fn is_plain_call(&self, headers: &http::HeaderMap, uri: &http::Uri) -> bool {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let version_is_direct = header("mcp-protocol-version")
            .is_some_and(|version| DIRECT_VERSIONS.contains(&version));
        let no_other_checks = ["origin", "mcp-session-id", "mcp-method", "mcp-name"]
            .iter()
            .all(|name| !headers.contains_key(*name))
            && !headers
                .keys()
                .any(|name| name.as_str().starts_with("mcp-param-"));
        sent_as_json(headers)
            && version_is_direct
            && no_other_checks
            && accepts_json_and_sse(headers)
            && self.host_is_plainly_allowed(headers, uri)
    }

    fn host_is_plainly_allowed(&self, headers: &http::HeaderMap, uri: &http::Uri) -> bool {
        let host = match headers.get(http::header::HOST) {
            Some(value) => match value.to_str() {
                Ok(host) => host,
                Err(_) => return false,
            },
            None => match uri.authority() {
                Some(authority) => authority.as_str(),
                None => return false,
            },
        };
        let Ok(authority) = http::uri::Authority::try_from(host) else {
            return false;
        };
        let name = authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        self.hosts.contains(&name)
    }

    /// The peer of the one service made for direct calls (made at the first call: it needs the
    /// runtime). It holds a transport that never carries a message, and ends with the server.
    fn peer(&self) -> &rmcp::service::Peer<RoleServer> {
        self.peer
            .get_or_init(|| {
                let silent = (
                    futures::sink::drain::<rmcp::service::TxJsonRpcMessage<RoleServer>>(),
                    futures::stream::pending::<rmcp::service::RxJsonRpcMessage<RoleServer>>(),
                );
                serve_directly_with_ct(
                    self.tools.clone(),
                    silent,
                    None,
                    self.shutdown.child_token(),
                )
            })
            .peer()
    }
}

/// The answer to a `tools/call` request whose params the SDK's types cannot read (a `name`
/// that is not a string, `arguments` that are not an object): invalid params (-32602), with the
/// request's id. (The SDK answers such a body "method not found", -32601: the method exists.)
/// `None` for any other body the SDK's types cannot read: the SDK answers it.
fn invalid_tool_call(body: &Bytes, why: &str) -> Option<Response> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let is_tool_call = value["jsonrpc"] == "2.0" && value["method"] == "tools/call";
    let id: rmcp::model::RequestId = serde_json::from_value(value.get("id")?.clone()).ok()?;
    if !is_tool_call {
        return None;
    }
    let error = ErrorData::invalid_params(format!("tools/call: {why}"), None);
    Some(json_response(&ServerJsonRpcMessage::error(error, Some(id))))
}

/// An allowed host that names no port, in lower case and without brackets ("::1" and "[::1]"
/// alike); `None` for one with a port (the SDK matches those).
fn portless_host(host: &str) -> Option<String> {
    let host = host.trim();
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']')?,
        // One colon: a name or an IPv4 address with a port. More: an IPv6 literal.
        None if host.matches(':').count() == 1 => return None,
        None => host,
    };
    (!bare.is_empty()).then(|| bare.to_ascii_lowercase())
}

/// Whether the request's `Content-Type` is `application/json` (parameters aside).
pub(super) fn sent_as_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `Accept` names both `application/json` and `text/event-stream`, plainly (an entry
/// with parameters, such as a weight, is left to the SDK to judge).
fn accepts_json_and_sse(headers: &http::HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for entry in value.split(',') {
            if entry.contains(';') {
                return false;
            }
            let essence = entry.trim();
            json |= essence.eq_ignore_ascii_case("application/json");
            sse |= essence.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

/// The JSON answer the SDK's transport gives a request in JSON-response mode.
fn json_response(message: &ServerJsonRpcMessage) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            Bytes::from(body),
        )
            .into_response(),
        Err(error) => {
            let error =
                ErrorData::internal_error(format!("cannot write the answer: {error}"), None);
            let answer = serde_json::json!({ "jsonrpc": "2.0", "id": null, "error": error });
            (http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(answer)).into_response()
        }
    }
}
