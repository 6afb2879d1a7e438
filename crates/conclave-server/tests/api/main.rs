//! Integration tests of the HTTP API: a real server on loopback over a real database file.

mod auth;
mod concurrency;
mod confirmations;
mod contract;
mod dashboard;
mod diffs;
mod errors;
mod events;
mod fencing;
mod flows;
mod limits;
mod listings;
mod mcp;
mod privacy;

use std::net::SocketAddr;

use conclave_core::{Store, StoreConfig};
use conclave_server::{App, AppSettings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "cva_test_admin_token";

/// A server on a random loopback port over a fresh database in a temporary folder.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    /// The server's state, for figures a test asserts on (such as what live readers hold).
    pub app: App,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_config(StoreConfig::default()).await
    }

    pub async fn with_config(config: StoreConfig) -> TestServer {
        TestServer::with(config, AppSettings::default()).await
    }

    pub async fn with(config: StoreConfig, settings: AppSettings) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("conclave.db"), config).expect("store");
        let shutdown = CancellationToken::new();
        let app = App::new(store, ADMIN, settings, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(conclave_server::run(
            listener,
            app.clone(),
            shutdown.clone(),
        ));
        TestServer {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            app,
            shutdown,
            _dir: dir,
        }
    }

    pub fn as_admin(&self) -> Caller<'_> {
        Caller {
            server: self,
            token: Some(ADMIN.to_string()),
        }
    }

    pub fn with_token(&self, token: &str) -> Caller<'_> {
        Caller {
            server: self,
            token: Some(token.to_string()),
        }
    }

    pub fn anonymous(&self) -> Caller<'_> {
        Caller {
            server: self,
            token: None,
        }
    }

    /// Registers an agent and returns its token.
    pub async fn agent(&self, name: &str, role: Option<&str>) -> String {
        let (status, body) = self
            .as_admin()
            .call(
                Method::POST,
                "/api/agents",
                Some(json!({ "name": name, "role": role })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    pub async fn task(&self, title: &str) -> String {
        let (status, body) = self
            .as_admin()
            .call(Method::POST, "/api/tasks", Some(json!({ "title": title })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Caller<'s> {
    server: &'s TestServer,
    token: Option<String>,
}

impl Caller<'_> {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .server
            .http
            .request(method, format!("{}{path}", self.server.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if is_json {
            contract::check_response(&method, path, status, &value);
        }
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
}
