//! The HTTP client of the Conclave API.
//!
//! It adds the bearer token and, when acting as an agent, the `X-Conclave-Agent` header; turns the
//! server's JSON error bodies into [`ApiError`]s (code and message); sends an `Idempotency-Key` with
//! every mutating request and retries such a request once, with the same key, when the connection
//! fails, so that a retried request is applied at most once. A server that cannot be reached at
//! all is an [`Unreachable`] error (exit 5).
//!
//! Several servers: the URL may be a comma-separated list (`--server URL1,URL2`,
//! `CONCLAVE_URL=URL1,URL2`). A request goes to the current URL; when its connection cannot be
//! made (so the request never left), the client moves on to the next URL and sends it there,
//! and stays with the one that answered. HTTPS: the built-in web roots, plus the PEM CA
//! certificate of `CONCLAVE_CA_CERT` (or one given to [`Client::with_ca`]) for a server whose
//! certificate a private CA signed.
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
/// A PEM file of CA certificates trusted besides the built-in ones (a private CA's).
pub const ENV_CA_CERT: &str = "CONCLAVE_CA_CERT";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for an ordinary request (a waiting one gets its wait on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_DELAY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The servers, in order of preference; at least one.
    urls: std::sync::Arc<[String]>,
    /// The index in `urls` of the one requests go to (shared by clones).
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
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

/// The URLs of a comma-separated list, each without a trailing slash; at least one.
pub fn parse_urls(text: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = text
        .split(',')
        .map(|url| url.trim().trim_end_matches('/').to_string())
        .filter(|url| !url.is_empty())
        .collect();
    anyhow::ensure!(!urls.is_empty(), "no server URL in {text:?}");
    for url in &urls {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{url:?} is not an http:// or https:// URL"
        );
    }
    Ok(urls)
}

/// The CA file `CONCLAVE_CA_CERT` names, if set.
pub fn ca_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os(ENV_CA_CERT)
        .filter(|path| !path.is_empty())
        .map(std::path::PathBuf::from)
}

/// An HTTP client that trusts the built-in web roots and the CA certificates in `ca` (PEM).
pub fn http_client(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("conclave-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "{} holds no PEM certificate",
            path.display()
        );
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

impl Client {
    /// A client of the server(s) at `base_url` (one URL or a comma-separated list), trusting the
    /// CA of `CONCLAVE_CA_CERT` when set.
    pub fn new(base_url: String, token: String, agent: Option<String>) -> anyhow::Result<Client> {
        Client::with_ca(base_url, token, agent, ca_from_env().as_deref())
    }

    /// The same, trusting the CA certificates in the PEM file `ca` besides the built-in roots.
    pub fn with_ca(
        base_url: String,
        token: String,
        agent: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Client> {
        let urls = parse_urls(&base_url)?;
        let http = http_client(ca)?
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            urls: urls.into(),
            current: Default::default(),
            token,
            agent,
            key_prefix: random_key(),
            n_requests: Default::default(),
        })
    }

    /// The URL requests go to now.
    pub fn base_url(&self) -> &str {
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.urls[index % self.urls.len()]
    }

    /// Every URL, in order of preference.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The token requests carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The HTTP client itself (TLS settings included), for the relay.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Moves to the URL after `failed`, unless another request moved already; returns whether
    /// there is another URL to try.
    pub fn fail_over(&self, failed: &str) -> bool {
        if self.urls.len() < 2 {
            return false;
        }
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed);
        if self.urls[index % self.urls.len()] == failed {
            let next = (index + 1) % self.urls.len();
            // Only one of the requests that failed at once moves the index.
            let _ = self.current.compare_exchange(
                index,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(failed, next = %self.urls[next], "server unreachable: failing over");
        }
        true
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
        let mut failovers = 0;
        loop {
            let base = self.base_url().to_string();
            let mut request = self
                .request(&base, Method::GET, path, query)
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(id) = last_event_id {
                request = request.header("Last-Event-ID", id.to_string());
            }
            match request.send().await {
                Ok(response) => return check_status(response).await,
                Err(error)
                    if error.is_connect()
                        && failovers + 1 < self.urls.len()
                        && self.fail_over(&base) =>
                {
                    failovers += 1;
                }
                Err(error) => return Err(self.transport_error(&base, &error)),
            }
        }
    }

    fn request(
        &self,
        base: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
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
        let mut failovers = 0;
        let response = loop {
            attempt += 1;
            let base = self.base_url().to_string();
            let mut request = self
                .request(&base, method.clone(), path, query)
                .timeout(REQUEST_TIMEOUT + wait);
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            tracing::debug!(%method, path, attempt, "request");
            match request.send().await {
                Ok(response) => break (base, response),
                // No connection, so the request never left: the next server gets it.
                Err(error)
                    if error.is_connect()
                        && failovers + 1 < self.urls.len()
                        && self.fail_over(&base) =>
                {
                    failovers += 1;
                }
                // The request may or may not have arrived: the same key makes a retry safe.
                Err(error) if attempt == 1 && (error.is_connect() || error.is_request()) => {
                    tracing::debug!(%error, "retrying once");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(error) => return Err(self.transport_error(&base, &error)),
            }
        };
        let (base, response) = response;
        let response = check_status(response).await?;
        let text = response
            .text()
            .await
            .map_err(|error| self.transport_error(&base, &error))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "unexpected answer from the server to {method} {path}: {}",
                excerpt(&text)
            )
        })
    }

    fn transport_error(&self, base: &str, error: &reqwest::Error) -> anyhow::Error {
        if error.is_connect() {
            let what = if self.urls.len() > 1 {
                format!(
                    "cannot reach any conclave server of {} ({})",
                    self.urls.join(", "),
                    error_chain(error)
                )
            } else {
                format!("cannot reach the conclave server at {base}")
            };
            return Unreachable { what }.into();
        }
        if error.is_timeout() {
            return anyhow::anyhow!("the conclave server at {base} did not answer in time");
        }
        anyhow::anyhow!("request to {base} failed: {}", error_chain(error))
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
    fn url_lists_are_split_and_checked() {
        assert_eq!(
            parse_urls("http://a:1/, https://b:2").expect("two"),
            ["http://a:1", "https://b:2"]
        );
        assert!(parse_urls(" , ").is_err());
        assert!(parse_urls("a:1").is_err());
    }

    /// The first server is gone (nothing listens on its port): requests go to the second, and
    /// the client stays with it.
    #[tokio::test]
    async fn an_unreachable_server_is_passed_over_for_the_next() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let alive = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let body = r#"{"ok":true}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let client =
            Client::with_ca(format!("{dead},{alive}"), "t".into(), None, None).expect("client");
        assert_eq!(client.base_url(), dead);
        let answer: serde_json::Value = client.get("/healthz", &[]).await.expect("failed over");
        assert_eq!(answer["ok"], true);
        assert_eq!(client.base_url(), alive);
        let posted: serde_json::Value = client
            .post("/api/x", &serde_json::json!({}))
            .await
            .expect("stays");
        assert_eq!(posted["ok"], true);

        let lone = Client::with_ca(dead.clone(), "t".into(), None, None).expect("client");
        let error = lone
            .get::<serde_json::Value>("/healthz", &[])
            .await
            .expect_err("nothing listens");
        assert!(error.downcast_ref::<Unreachable>().is_some(), "{error:#}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("coder-1"), "coder-1");
    }
}
