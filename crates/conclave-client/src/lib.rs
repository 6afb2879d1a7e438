//! The HTTP client of the Conclave API.
//!
//! It adds the bearer token and, when acting as an agent, the `X-Conclave-Agent` header; turns the
//! server's JSON error bodies into [`ApiError`]s (code and message); sends an `Idempotency-Key` with
//! every mutating request and retries such a request once, with the same key, when the connection
//! fails, so that a retried request is applied at most once. A server that cannot be reached at
//! all is an [`Unreachable`] error (exit 5).
//!
//! [`sse`] reads the server's event stream. The CLI's commands and the supervisor share this
//! crate, so that there is one client and one SSE reader.

pub mod error;
pub mod sse;

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use error::{ApiError, Unreachable};
pub use sse::EventStream;

/// The server's URL, in an agent's environment.
pub const ENV_URL: &str = "CONCLAVE_URL";
/// The agent's name, in its environment.
pub const ENV_AGENT: &str = "CONCLAVE_AGENT";
/// The agent's token, in its environment.
pub const ENV_TOKEN: &str = "CONCLAVE_TOKEN";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for an ordinary request (a waiting one gets its wait on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_DELAY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    token: String,
    agent: Option<String>,
    /// Random per invocation; each mutating request adds a counter so that keys never repeat.
    key_prefix: String,
    n_requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The error body every API error has.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    conflicts: Vec<conclave_core::LeaseConflict>,
}

impl Client {
    pub fn new(base_url: String, token: String, agent: Option<String>) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("conclave-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            base_url,
            token,
            agent,
            key_prefix: random_key(),
            n_requests: Default::default(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.call(Method::GET, path, query, None::<&()>, Duration::ZERO)
            .await
    }

    /// A GET that the server may hold open for up to `wait`.
    pub async fn get_waiting<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        wait: Duration,
    ) -> anyhow::Result<T> {
        self.call(Method::GET, path, query, None::<&()>, wait).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, &[], Some(body), Duration::ZERO)
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::DELETE, path, &[], None::<&()>, Duration::ZERO)
            .await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(Method::PATCH, path, &[], Some(body), Duration::ZERO)
            .await
    }

    /// Opens a streaming GET (server-sent events); the caller reads the body.
    pub async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<i64>,
    ) -> anyhow::Result<Response> {
        let mut request = self
            .request(Method::GET, path, query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        check_status(response).await
    }

    fn request(&self, method: Method, path: &str, query: &[(&str, String)]) -> RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .bearer_auth(&self.token);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(agent) = &self.agent {
            request = request.header("X-Conclave-Agent", agent);
        }
        request
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        wait: Duration,
    ) -> anyhow::Result<T> {
        let mutating = method != Method::GET;
        let key = mutating.then(|| {
            let n = self
                .n_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("{}-{n}", self.key_prefix)
        });
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut request = self
                .request(method.clone(), path, query)
                .timeout(REQUEST_TIMEOUT + wait);
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            tracing::debug!(%method, path, attempt, "request");
            match request.send().await {
                Ok(response) => break response,
                // The request may or may not have arrived: the same key makes a retry safe.
                Err(error) if attempt == 1 && (error.is_connect() || error.is_request()) => {
                    tracing::debug!(%error, "retrying once");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(error) => return Err(self.transport_error(&error)),
            }
        };
        let response = check_status(response).await?;
        let text = response
            .text()
            .await
            .map_err(|error| self.transport_error(&error))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "unexpected answer from the server to {method} {path}: {}",
                excerpt(&text)
            )
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> anyhow::Error {
        if error.is_connect() {
            return Unreachable {
                what: format!("cannot reach the conclave server at {}", self.base_url),
            }
            .into();
        }
        if error.is_timeout() {
            return anyhow::anyhow!(
                "the conclave server at {} did not answer in time",
                self.base_url
            );
        }
        anyhow::anyhow!(
            "request to {} failed: {}",
            self.base_url,
            error_chain(error)
        )
    }
}

/// Passes a successful response through; turns any other into an [`ApiError`].
async fn check_status(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    Err(api_error(status, &text).into())
}

fn api_error(status: StatusCode, text: &str) -> ApiError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ApiError {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            conflicts: body.error.conflicts,
        },
        Err(_) => ApiError {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: if text.trim().is_empty() {
                format!("the server answered {status}")
            } else {
                format!("the server answered {status}: {}", excerpt(text))
            },
            conflicts: Vec::new(),
        },
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= 200 {
        return text.to_string();
    }
    let cut: String = text.chars().take(200).collect();
    format!("{cut}…")
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn random_key() -> String {
    use rand::Rng;
    format!("cli-{:032x}", rand::rng().random::<u128>())
}

/// Percent-encodes one path segment (agent names, thread names).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_typed_errors() {
        let body = r#"{"error":{"code":"not_found","message":"no task T-9"}}"#;
        let error = api_error(StatusCode::NOT_FOUND, body);
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("not_found", "no task T-9")
        );
        let error = api_error(StatusCode::BAD_GATEWAY, "<html>oops</html>");
        assert_eq!(error.code, "http_502");
        assert!(error.message.contains("oops"), "{}", error.message);
    }

    #[test]
    fn lease_conflicts_are_read_from_the_body() {
        let body = r#"{"error":{"code":"lease_conflict","message":"held","conflicts":[{"requested":"a.rs",
            "held":"a.rs","holder":"alice","task":"T-1","mode":"exclusive","expires_at":"2030-01-01T00:00:00Z"}]}}"#;
        let error = api_error(StatusCode::CONFLICT, body);
        assert_eq!(error.conflicts.len(), 1);
        let text = error.to_string();
        assert!(
            text.contains("alice") && text.contains("T-1") && text.contains("00:00:00"),
            "{text}"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("coder-1"), "coder-1");
    }
}
