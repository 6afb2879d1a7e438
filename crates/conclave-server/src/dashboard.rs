//! The dashboard: one page at `/`, a static shell with a small script and stylesheet embedded in
//! the binary (no build step, nothing fetched from elsewhere). The script reads the JSON API and
//! follows `/api/events/stream`; every action it offers is a call to the same API the CLI uses.
//!
//! Logging in: `conclave serve` prints `http://HOST:PORT/?token=ADMIN_TOKEN`. Opening it sets the
//! session cookie (see [`crate::session::DashboardSession`]) and redirects to `/`, so the token does
//! not stay in the address bar or the history. Without a valid cookie or token the page is a short
//! 401 saying which link to open. Every HTML answer carries a Content-Security-Policy that allows
//! only this server's own script and style: no inline script, no other origin, no framing.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::app::App;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// Only this server's own script, style, images and connections; no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The dashboard's routes: the page and its assets (the assets hold no data and need no login).
pub fn router() -> Router<App> {
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/favicon.svg",
            get(|| asset(FAVICON_SVG, "image/svg+xml")),
        )
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn index(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let token = query.ok().and_then(|Query(query)| query.token);
    match token {
        Some(token) if app.is_admin_token(token.trim()) => log_in(&app),
        Some(_) => login_page("The token in that link is not this server's admin token."),
        None if app.session().is_presented(&headers) => page(StatusCode::OK, INDEX_HTML),
        None => login_page("You are not logged in to this dashboard."),
    }
}

/// Sets the session cookie and sends the browser to `/`, dropping the token from the URL.
fn log_in(app: &App) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(cookie) = HeaderValue::from_str(&app.session().set_cookie()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    secure_headers(headers);
    response
}

fn login_page(reason: &str) -> Response {
    let html = LOGIN_HTML.replace("{reason}", reason);
    page(StatusCode::UNAUTHORIZED, &html)
}

const LOGIN_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Conclave: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/app.css"></head>
<body class="login"><main class="login-box"><h1>Conclave</h1>
<p>{reason}</p>
<p>Open the link that <code>conclave serve</code> (or <code>conclave up</code>) prints on a line of
its own: <code>http://127.0.0.1:PORT/?token=…</code>. It carries the admin token, which this page
turns into a session cookie. The token is also in <code>.conclave/admin.token</code>.</p>
</main></body></html>
"#;

fn page(status: StatusCode, html: &str) -> Response {
    let mut response = (status, html.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on the page's own POSTs, which the
    // same-origin check would refuse. `same-origin` keeps the URL from leaving this server.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
