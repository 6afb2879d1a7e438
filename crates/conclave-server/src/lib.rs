//! Conclave's server: the HTTP JSON API, the live event stream, the MCP endpoint, the hook
//! endpoints and the dashboard (`/`, see [`dashboard`]), all on one port over one
//! [`conclave_core::Store`].
//!
//! [`run`] takes an already bound listener and a shutdown token (tests bind port 0);
//! [`serve_project`] is what `conclave serve` calls: it takes the project's lock, opens its store,
//! binds, writes `.conclave/server.json`, and serves until shut down.

mod api;
mod app;
mod attribution;
mod auth;
mod branch_travel;
mod dashboard;
mod error;
mod extract;
mod hooks;
mod live;
mod mcp;
mod merge_queue;
mod metrics;
mod ops;
mod routes;
mod session;
pub mod tls;
mod worktree_tasks;

pub use merge_queue::MergeQueue;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use conclave_core::Store;
use conclave_core::config::{Config, DEFAULT_LISTEN};
use conclave_core::project::{Project, ServerInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use app::{App, AppSettings, ServerLimits};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use live::{LiveQueueLimits, LiveStats};
pub use mcp::tool_definitions_json;
pub use routes::openapi_document;

/// The largest request body accepted (bigger ones get 413).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Builds the whole HTTP service.
pub fn router(app: App) -> Router {
    let (mcp_service, direct_calls) = mcp::service(app.clone());
    let mcp = Router::new()
        .nest_service("/mcp", mcp_service)
        .layer(axum::middleware::from_fn_with_state(
            direct_calls,
            mcp::answer_requests,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    routes::router(&app)
        .merge(dashboard::router())
        .merge(mcp.with_state(app.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see /api/openapi.json)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (see /api/openapi.json)",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal("internal error").into_response()
}

async fn count_requests(State(app): State<App>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    app.metrics()
        .count_request(response.status().as_u16(), micros);
    response
}

/// Serves `app` on `listener` until `shutdown` is cancelled, sweeping expired claims and leases
/// in the background.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_tls(listener, None, app, shutdown).await
}

/// [`run`], speaking HTTPS on `listener` when `tls` is given (see [`tls`]).
pub async fn run_with_tls(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: App,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_periodically(app.clone(), shutdown.clone()));
    let merge_runner = app.settings().merge.clone().map(|queue| {
        tokio::spawn(merge_queue::run_merge_queue(
            app.clone(),
            queue,
            shutdown.clone(),
        ))
    });
    let limits = app.settings().limits;
    let service = router(app);
    serve_connections(listener, tls, service, limits, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sweeper.await;
    // Not awaited: a landing may be inside a long check. An entry left `merging` is retried at
    // the next start (the engine's compare-and-swap makes that safe).
    if let Some(runner) = merge_runner {
        runner.abort();
    }
    Ok(())
}

/// How long a graceful shutdown waits for responses in flight (a reader that stopped reading
/// would otherwise hold it forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The accept loop: at most `limits.max_connections` connections at once (more wait in the
/// listen queue, with a log line when the cap is reached), each closed when it does not send a
/// request head within `limits.header_read_timeout` (half-sent requests and idle keep-alive
/// connections alike). Responses already being sent (event streams, inbox waits) are not timed.
async fn serve_connections(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection cap reached: new connections wait until one closes"
                );
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait for connections to close.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let Some(tls) = &tls else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection closed with an error");
                }
                drop(permit);
            });
            continue;
        };
        // The handshake happens in the connection's task, within the header-read timeout.
        let (tls, http, watcher) = (tls.clone(), http.clone(), graceful.watcher());
        let handshake_limit = limits.header_read_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_limit, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%error, "connection closed with an error");
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open at shutdown; closing them");
    }
}

async fn sweep_periodically(app: App, shutdown: CancellationToken) {
    let ttl = app
        .store()
        .config()
        .claim_ttl_secs
        .min(app.store().config().lease_ttl_secs);
    // Often enough that an expiry is noticed within a small fraction of the TTL.
    let period = Duration::from_millis((ttl * 1000 / 10).clamp(200, 15_000) as u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let store = app.store().clone();
        match tokio::task::spawn_blocking(move || store.sweep()).await {
            Ok(Ok(report))
                if !report.reclaimed_tasks.is_empty() || !report.expired_leases.is_empty() =>
            {
                tracing::info!(?report.reclaimed_tasks, ?report.expired_leases, "swept expired claims and leases");
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "sweep failed"),
            Err(error) => tracing::warn!(%error, "sweep task failed"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Overrides `[server] listen` from `conclave.toml`.
    pub listen: Option<String>,
    /// Allow binding a non-loopback address.
    pub allow_remote: bool,
    /// Overrides `[store] url` from `conclave.toml` (`postgres://...` or `sqlite://PATH`).
    pub store: Option<String>,
    /// This machine's name among the team's hosts (`--host`; default its hostname): agents
    /// registered on another host keep their worktrees there, and `[merge] host` says whether
    /// this server runs the merge queue (docs/scale-out.md).
    pub host: Option<String>,
}

/// Holds the project's server lock for as long as it lives. The OS drops the lock when the
/// process dies, so a crashed server never blocks the next start.
pub struct ServerLock {
    _file: std::fs::File,
}

impl ServerLock {
    pub fn acquire(project: &Project) -> anyhow::Result<ServerLock> {
        project
            .ensure_state_dir()
            .context("cannot create the .conclave folder")?;
        let path = project.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(ServerLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let running = project
                    .read_server_info()
                    .map(|info| format!(" at {} (pid {})", info.url, info.pid))
                    .unwrap_or_default();
                anyhow::bail!(
                    "another conclave server is already running on {}{running}; stop it first or use it",
                    project.state_dir().display()
                )
            }
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// A store URL fit for messages: the password, if any, replaced by `***`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A running project server's pieces, for `conclave serve` and `conclave up`.
pub struct ProjectServer {
    pub app: App,
    pub listener: TcpListener,
    /// Present when `[server] tls_cert`/`tls_key` are set: serve with [`run_with_tls`].
    pub tls: Option<TlsAcceptor>,
    pub url: String,
    pub admin_token: String,
    pub lock: ServerLock,
}

/// Locks the project, opens its store and binds the listener (checking the loopback rule).
pub async fn open_project_server(
    project: &Project,
    options: &ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<ProjectServer> {
    let config = Config::load(&project.config_file())?;
    let lock = ServerLock::acquire(project)?;
    let admin_token = project
        .ensure_admin_token()
        .context("cannot create the admin token")?;
    // Errors name where the address came from: the flag, or the key in conclave.toml.
    let (listen, source) = match (&options.listen, &config.server.listen) {
        (Some(listen), _) => (listen.clone(), "--listen"),
        (None, Some(listen)) => (listen.clone(), "[server] listen in conclave.toml"),
        (None, None) => (DEFAULT_LISTEN.to_string(), "the default address"),
    };
    let allow_remote = options.allow_remote || config.server.allow_remote;
    let addr: SocketAddr = conclave_core::config::parse_listen(&listen)
        .map_err(|why| anyhow::anyhow!("{source}: {why}"))?;
    if !addr.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "refusing to listen on {addr}: it is not a loopback address and would expose the team to the network; pass --allow-remote to do it anyway"
        );
    }
    let store_config = config.store_config();
    // The store: `--store`, else `[store] url`, else the project's SQLite file.
    let store_url = match (&options.store, &config.store.url) {
        (Some(url), _) => {
            conclave_core::config::validate_store_url(url)
                .map_err(|why| anyhow::anyhow!("--store {why}"))?;
            Some(url.clone())
        }
        (None, Some(url)) => Some(url.clone()),
        (None, None) => None,
    };
    let store = match store_url {
        Some(url) => {
            let shown = redact_password(&url);
            // The PostgreSQL driver is synchronous: it connects on a blocking thread.
            tokio::task::spawn_blocking(move || Store::open_url(&url, store_config))
                .await?
                .with_context(|| format!("cannot open the store at {shown}"))?
        }
        None => {
            let database = project.database();
            tokio::task::spawn_blocking(move || Store::open(&database, store_config))
                .await?
                .with_context(|| {
                    format!("cannot open the store at {}", project.database().display())
                })?
        }
    };
    keep_presence(&store, shutdown.clone()).await?;
    let listener = TcpListener::bind(addr).await.map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "; another program uses port {}: choose another port with --listen 127.0.0.1:PORT \
                 or [server] listen in conclave.toml (port 0 picks a free one)",
                addr.port()
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("cannot listen on {addr} ({source}): {error}{hint}")
    })?;
    let local = listener.local_addr()?;
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(
            &project.root().join(cert),
            &project.root().join(key),
        )?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}");
    let mut allowed_hosts = config.server.allowed_hosts.clone();
    if !local.ip().is_loopback() && !local.ip().is_unspecified() {
        allowed_hosts.push(local.ip().to_string());
    }
    let settings = AppSettings {
        project_root: Some(project.root().to_path_buf()),
        allowed_hosts,
        keep_working: config.server.keep_working,
        merge: config.merge.clone().map(|merge| {
            let host = options.host.clone().unwrap_or_else(machine_name);
            let agent_hosts = config
                .agents
                .iter()
                .filter_map(|agent| agent.host.clone())
                .collect();
            merge_queue::MergeQueue::on_host(merge, project.root().to_path_buf(), host, agent_hosts)
        }),
        limits: ServerLimits {
            max_connections: config
                .server
                .max_connections
                .unwrap_or(ServerLimits::default().max_connections)
                .max(1),
            ..ServerLimits::default()
        },
    };
    let app = App::new(store, &admin_token, settings, shutdown);
    Ok(ProjectServer {
        app,
        listener,
        tls,
        url,
        admin_token,
        lock,
    })
}

/// This machine's hostname (`localhost` when it cannot be read).
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// How often a server renews its presence row, and how old a row may be before another server
/// may take the database over even though the recorded pid runs (it may be another program now).
const PRESENCE_PERIOD: Duration = Duration::from_secs(5);
const PRESENCE_STALE_AFTER: Duration = Duration::from_secs(30);

/// Records this process as the database's one server (refusing when another live server uses
/// it, even if `server.lock` was deleted), renews that until `shutdown`, then removes it. A server
/// that finds itself replaced (it was stopped for longer than the stale time) stops serving.
async fn keep_presence(store: &Store, shutdown: CancellationToken) -> anyhow::Result<()> {
    let host = machine_name();
    let me = conclave_core::store::ServerPresence {
        instance: format!(
            "{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ),
        pid: std::process::id(),
        host,
    };
    let is_alive = |pid: u32| std::path::Path::new("/proc").join(pid.to_string()).exists();
    {
        let (store, me) = (store.clone(), me.clone());
        tokio::task::spawn_blocking(move || {
            store.claim_presence(&me, PRESENCE_STALE_AFTER, is_alive)
        })
        .await?
        .context("cannot start the server")?;
    }
    let store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(PRESENCE_PERIOD) => {}
            }
            let (renewing, me) = (store.clone(), me.clone());
            match tokio::task::spawn_blocking(move || renewing.renew_presence(&me)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::error!(
                        "another conclave server took this database over while this one was stopped; stopping"
                    );
                    shutdown.cancel();
                    return;
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot renew the server's presence"),
                Err(error) => tracing::warn!(%error, "presence task failed"),
            }
        }
        let _ = tokio::task::spawn_blocking(move || store.release_presence(&me)).await;
    });
    Ok(())
}

/// Writes `.conclave/server.json` naming `url` and this process, so that commands, hooks and
/// `conclave up` find the server (`conclave serve`, and `conclave up` serving in-process).
pub fn announce(project: &Project, url: &str) -> anyhow::Result<()> {
    project
        .write_server_info(&ServerInfo {
            url: url.to_string(),
            pid: std::process::id(),
            started_at: chrono::Utc::now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .context("cannot write .conclave/server.json")
}

/// Prints the dashboard link (it carries the admin token) on a line of its own, on stderr.
pub fn print_dashboard_link(url: &str, admin_token: &str) {
    eprintln!("conclave: dashboard (keep this link private; it carries the admin token):");
    eprintln!("{url}/?token={admin_token}");
}

/// `conclave serve`: serves the project in the foreground until `shutdown`.
pub async fn serve_project(
    project: &Project,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = open_project_server(project, &options, shutdown.clone()).await?;
    announce(project, &server.url)?;
    eprintln!(
        "conclave: serving {} on {}",
        project.root().display(),
        server.url
    );
    print_dashboard_link(&server.url, &server.admin_token);
    let result = run_with_tls(server.listener, server.tls, server.app, shutdown).await;
    project.remove_server_info();
    drop(server.lock);
    eprintln!("conclave: server stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn store_urls_are_shown_without_their_password() {
        assert_eq!(
            redact_password("postgres://conclave:s3cret@db.internal:5432/team"),
            "postgres://conclave:***@db.internal:5432/team"
        );
        assert_eq!(
            redact_password("postgres://conclave@db.internal/team"),
            "postgres://conclave@db.internal/team"
        );
        assert_eq!(
            redact_password("sqlite:///var/lib/conclave.db"),
            "sqlite:///var/lib/conclave.db"
        );
    }
}
