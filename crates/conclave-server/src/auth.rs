//! Authentication: bearer tokens (the admin token, or one of an agent's tokens, stored hashed) and
//! the dashboard's session cookie.
//!
//! An agent acts only as itself; `X-Conclave-Agent`, when sent, must name the token's agent.
//!
//! The dashboard cookie ([`crate::session::DashboardSession`]) stands for the admin
//! on `/api/*` only: it survives server restarts (the page keeps working across
//! `conclave down`/`up`), changes when the admin token is replaced, and does not reveal the token. Because a browser sends cookies on its own, a state-changing request
//! authenticated by the cookie must also prove it comes from the page itself: it must carry
//! `X-Conclave-Csrf: 1` (a header a cross-site form cannot send, and that a cross-site `fetch`
//! cannot send without a CORS preflight this server never grants) and an `Origin` (or, without one,
//! a `Referer`) naming this server's `Host`. Requests with a bearer token are not affected.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use conclave_core::model::Actor;

use crate::app::App;
use crate::error::ApiError;

pub const AGENT_HEADER: &str = "x-conclave-agent";

/// The header the dashboard sends with every state-changing request.
pub const CSRF_HEADER: &str = "x-conclave-csrf";

pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim()).filter(|t| !t.is_empty())
}

/// Resolves a token to the actor it belongs to.
pub async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let Some(token) = bearer_token(headers) else {
        return Err(ApiError::unauthorized(
            "missing bearer token (send `Authorization: Bearer <token>`)",
        ));
    };
    let claimed = headers
        .get(AGENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    if app.is_admin_token(token) {
        return Ok(Actor::Admin);
    }
    let token = token.to_string();
    let agent = app.read_point(move |r| r.agent_for_token(&token)).await?;
    let Some(agent) = agent else {
        return Err(ApiError::unauthorized("unknown token"));
    };
    if let Some(claimed) = claimed
        && claimed != agent
    {
        return Err(ApiError::unauthorized(format!(
            "this token belongs to agent {agent}, not {claimed}"
        )));
    }
    app.heartbeat(&agent).await?;
    Ok(Actor::Agent(agent))
}

/// Middleware: refuses requests without a valid token (or, on `/api/*`, the dashboard's session
/// cookie with the same-origin checks), else puts the [`Actor`] in extensions.
pub async fn require_token(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let by_cookie = bearer_token(request.headers()).is_none()
        && request.uri().path().starts_with("/api/")
        && app.session().is_presented(request.headers());
    let actor = if by_cookie {
        check_same_origin(request.method(), request.headers()).map(|()| Actor::Admin)
    } else {
        authenticate(&app, request.headers()).await
    };
    match actor {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// Refuses a state-changing request that does not come from the dashboard page itself.
pub fn check_same_origin(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(ApiError::forbidden(format!(
            "cross-site request refused: {why}"
        )))
    };
    if headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| value.trim() != "1")
    {
        return refuse("a change made with the dashboard cookie must carry `X-Conclave-Csrf: 1`");
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return refuse("the request has no Host header");
    };
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let (source, url) = match (text(header::ORIGIN), text(header::REFERER)) {
        (Some(origin), _) => ("Origin", origin),
        (None, Some(referer)) => ("Referer", referer),
        (None, None) => return refuse("the request has neither Origin nor Referer"),
    };
    if url_authority(url).is_some_and(|authority| authority.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        refuse(&format!("{source} {url:?} is not this server ({host})"))
    }
}

/// The `host[:port]` of an `http(s)://` URL.
fn url_authority(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|authority| !authority.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_cookie_is_found_among_others_and_only_with_its_value() {
        let session = crate::session::DashboardSession::from_admin_token("cva_secret");
        let other = crate::session::DashboardSession::from_admin_token("cva_other");
        assert_ne!(session.cookie_name(), other.cookie_name());
        let mut headers = HeaderMap::new();
        let good = session.set_cookie();
        let pair = good.split(';').next().unwrap_or_default();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {pair}; c=d")).expect("header"),
        );
        assert!(session.is_presented(&headers));
        assert!(!other.is_presented(&headers));
        let forged = format!("{}=00", session.cookie_name());
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&forged).expect("header"),
        );
        assert!(!session.is_presented(&headers));
    }

    #[test]
    fn same_origin_rules() {
        let check = |origin: Option<&str>, referer: Option<&str>, csrf: bool| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7420"));
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_str(origin).expect("h"));
            }
            if let Some(referer) = referer {
                headers.insert(header::REFERER, HeaderValue::from_str(referer).expect("h"));
            }
            if csrf {
                headers.insert(CSRF_HEADER, HeaderValue::from_static("1"));
            }
            check_same_origin(&Method::POST, &headers).is_ok()
        };
        assert!(check(Some("http://127.0.0.1:7420"), None, true));
        assert!(check(None, Some("http://127.0.0.1:7420/?x=1"), true));
        assert!(!check(Some("http://127.0.0.1:7420"), None, false));
        assert!(!check(Some("http://evil.example"), None, true));
        assert!(!check(Some("http://127.0.0.1:7421"), None, true));
        assert!(!check(
            Some("http://127.0.0.1:7420.evil.example"),
            None,
            true
        ));
        assert!(!check(Some("null"), Some("http://127.0.0.1:7420/"), true));
        assert!(!check(
            None,
            Some("http://evil.example/http://127.0.0.1:7420"),
            true
        ));
        assert!(!check(None, None, true));
        assert!(check_same_origin(&Method::GET, &HeaderMap::new()).is_ok());
    }
}
