//! Bearer-token authentication: the admin token, or one of an agent's tokens (stored hashed).
//! An agent acts only as itself; `X-Conclave-Agent`, when sent, must name the token's agent.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use conclave_core::model::Actor;

use crate::app::App;
use crate::error::ApiError;

pub const AGENT_HEADER: &str = "x-conclave-agent";

pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim()).filter(|t| !t.is_empty())
}

/// Resolves a token to the actor it belongs to.
pub async fn authenticate(app: &App, headers: &axum::http::HeaderMap) -> Result<Actor, ApiError> {
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
    let agent = app.read(move |r| r.agent_for_token(&token)).await?;
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

/// Middleware: refuses requests without a valid token, else puts the [`Actor`] in extensions.
pub async fn require_token(State(app): State<App>, mut request: Request, next: Next) -> Response {
    match authenticate(&app, request.headers()).await {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}
