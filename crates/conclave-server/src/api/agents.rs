//! `/api/agents`: register agents, issue tokens, report status, release what an agent holds.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::model::{
    Actor, Agent, AgentControl, AgentCreated, AgentList, AgentTokenList, AgentUpdate, EventPayload,
    NewAgent, ReasonRequest, TokenIssued, TokensRevoked,
};

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::ops::{IdempotencyKey, require_admin};

pub async fn register(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiJson(new): ApiJson<NewAgent>,
) -> ApiResult<Response> {
    require_admin(&actor, "register agents")?;
    let key = key.with_body(&new);
    let written = app
        .write(&actor, &key, move |tx| {
            let (agent, token) = tx.register_agent(conclave_core::model::ADMIN_NAME, new)?;
            Ok(AgentCreated { agent, token })
        })
        .await?;
    Ok(written.created())
}

pub async fn list(State(app): State<App>) -> ApiResult<Json<AgentList>> {
    let agents = app.read(|r| r.agents()).await?;
    Ok(Json(AgentList { agents }))
}

pub async fn show(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(app.read(move |r| r.agent(&name)).await?))
}

/// The admin (supervisor) reports on any agent; an agent reports on itself.
pub async fn update(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(update): ApiJson<AgentUpdate>,
) -> ApiResult<Response> {
    if let Actor::Agent(me) = &actor {
        if *me != name {
            return Err(ApiError::forbidden(format!(
                "{me} may not change agent {name}"
            )));
        }
        // An agent reports on its own session; what it may claim (role) and what the
        // supervisor accounts (pid, cost, restarts) are the admin's to set.
        if update.role.is_some()
            || update.model.is_some()
            || update.pid.is_some()
            || update.host.is_some()
            || update.cost_usd.is_some()
            || update.restarts.is_some()
        {
            return Err(ApiError::forbidden(
                "an agent may report only its status, session id and context use; role, model, \
                 pid, host, cost and restarts are set by an admin",
            ));
        }
    }
    let key = key.with_body(&update);
    let by = actor.name().to_string();
    let written = app
        .write(&actor, &key, move |tx| tx.update_agent(&by, &name, update))
        .await?;
    Ok(written.ok())
}

pub async fn issue_token(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    require_admin(&actor, "issue tokens")?;
    let written = app
        .write(&actor, &key, move |tx| {
            let token = tx.issue_token(conclave_core::model::ADMIN_NAME, &name)?;
            Ok(TokenIssued { token })
        })
        .await?;
    Ok(written.created())
}

/// Lists an agent's tokens by id (admin): enough to revoke one, never the token itself.
pub async fn tokens(
    State(app): State<App>,
    actor: Actor,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<AgentTokenList>> {
    require_admin(&actor, "list tokens")?;
    let tokens = app
        .read({
            let name = name.clone();
            move |r| r.agent_tokens(&name)
        })
        .await?;
    Ok(Json(AgentTokenList {
        agent: name,
        tokens,
    }))
}

/// Revokes all of an agent's tokens (admin).
pub async fn revoke_tokens(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    revoke(app, actor, key, name, None).await
}

/// Revokes one of an agent's tokens by its id (admin).
pub async fn revoke_token(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    revoke(app, actor, key, name, Some(id)).await
}

async fn revoke(
    app: App,
    actor: Actor,
    key: IdempotencyKey,
    name: String,
    id: Option<String>,
) -> ApiResult<Response> {
    require_admin(&actor, "revoke tokens")?;
    let written = app
        .write(&actor, &key, move |tx| {
            let revoked =
                tx.revoke_tokens(conclave_core::model::ADMIN_NAME, &name, id.as_deref())?;
            Ok(TokensRevoked {
                agent: name,
                revoked: u64::try_from(revoked).unwrap_or(u64::MAX),
            })
        })
        .await?;
    Ok(written.ok())
}

/// Gives back everything an agent holds (its process is known to be dead).
pub async fn release(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<ReasonRequest>,
) -> ApiResult<Response> {
    require_admin(&actor, "release an agent's claims")?;
    let key = key.with_body(&request);
    let reason = request
        .reason
        .unwrap_or_else(|| "released by an admin".to_string());
    let written = app
        .write(&actor, &key, move |tx| {
            tx.read().agent(&name)?;
            tx.release_agent(conclave_core::model::ADMIN_NAME, &name, &reason)
        })
        .await?;
    Ok(written.ok())
}

/// Removes an agent from the team (admin): its tasks and leases given back, its waiting merge
/// queue entries dropped, its tokens revoked, its status `stopped`; every step is an event.
pub async fn remove(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<ReasonRequest>,
) -> ApiResult<Response> {
    require_admin(&actor, "remove an agent")?;
    let key = key.with_body(&request);
    let reason = request
        .reason
        .unwrap_or_else(|| format!("{name} was removed from the team"));
    let agent = name.clone();
    let written = app
        .write(&actor, &key, move |tx| {
            tx.remove_agent(conclave_core::model::ADMIN_NAME, &name, &reason)
        })
        .await?;
    // A worktree agent's worktree goes with it (its task branches stay).
    if !written.replayed {
        crate::worktree_tasks::prune(&app, &agent).await;
    }
    if let Some(queue) = app.settings().merge.clone() {
        queue.wake();
    }
    Ok(written.ok())
}

/// Asks the supervisor to pause, resume, stop or restart an agent (admin). The request is an
/// `agent.control` event; the supervisor that runs the agent follows the log and acts on it.
pub async fn control(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(control): ApiJson<AgentControl>,
) -> ApiResult<Response> {
    require_admin(&actor, "control agents")?;
    let key = key.with_body(&control);
    let written = app
        .write(&actor, &key, move |tx| {
            let agent = tx.read().agent(&name)?;
            tx.emit(
                conclave_core::model::ADMIN_NAME,
                None,
                Some(&agent.name),
                EventPayload::AgentControl(control.clone()),
            )?;
            Ok(agent)
        })
        .await?;
    Ok(written.ok())
}
