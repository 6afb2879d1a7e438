//! A loop's checkpoints for a person (`conclave loop --confirm`): the loop asks before its next
//! iteration (`POST /api/agents/{name}/confirmation`), a person answers continue or stop from
//! the terminal or the dashboard alike (`POST /api/agents/{name}/confirm`), and anyone may see
//! what waits (`GET /api/confirmations`).
//!
//! The state is the event log itself (`agent.confirm_requested`, `agent.confirmed`): a request
//! is waiting while no answer names its sequence number. The answer is checked and recorded in
//! one transaction, so two people answering at once give one decision and one conflict.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use conclave_core::CoreError;
use conclave_core::event::AgentConfirmed;
use conclave_core::model::{
    Actor, ConfirmDecision, Confirmation, ConfirmationAnswer, ConfirmationList,
    ConfirmationRequest, EventFilter, EventPayload, MAX_CONFIRMATION_PROMPT,
    MAX_CONFIRMATION_SUMMARY,
};
use conclave_core::store::Reader;
use serde::Deserialize;

use crate::app::App;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ops::{IdempotencyKey, require_admin};

/// Requests (and answers) read to find each agent's latest: far more than loops run at once.
const RECENT: i64 = 200;

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationQuery {
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only those still waiting for a person.
    #[serde(default)]
    pub waiting: bool,
}

/// Each agent's latest request, newest first, with its answer when there is one.
fn latest_per_agent(
    reader: &Reader<'_>,
    agent: Option<&str>,
) -> Result<Vec<Confirmation>, CoreError> {
    let recent = |kind: &str| EventFilter {
        agent: agent.map(str::to_string),
        kind: Some(kind.to_string()),
        limit: Some(RECENT),
        desc: true,
        ..EventFilter::default()
    };
    let answers = reader.events(&recent("agent.confirmed"))?;
    let mut seen = std::collections::HashSet::new();
    let mut latest = Vec::new();
    for event in reader.events(&recent("agent.confirm_requested"))? {
        let (Some(name), EventPayload::AgentConfirmRequested(request)) =
            (event.agent.clone(), &event.payload)
        else {
            continue;
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let answer = answers.iter().find_map(|answer| match &answer.payload {
            EventPayload::AgentConfirmed(data) if data.request == event.seq => {
                Some((data, answer.actor.clone()))
            }
            _ => None,
        });
        latest.push(Confirmation {
            agent: name,
            seq: event.seq,
            next_iteration: request.next_iteration,
            summary: request.summary.clone(),
            requested_at: event.ts,
            decision: answer.as_ref().map(|(data, _)| data.decision),
            prompt: answer.as_ref().and_then(|(data, _)| data.prompt.clone()),
            decided_by: answer.map(|(_, by)| by),
        });
    }
    Ok(latest)
}

/// How many loops wait for a person now (for `/api/status`).
pub fn waiting_count(reader: &Reader<'_>) -> Result<i64, CoreError> {
    let waiting = latest_per_agent(reader, None)?
        .iter()
        .filter(|confirmation| confirmation.decision.is_none())
        .count();
    Ok(i64::try_from(waiting).unwrap_or(i64::MAX))
}

pub async fn list(
    State(app): State<App>,
    ApiQuery(query): ApiQuery<ConfirmationQuery>,
) -> ApiResult<Json<ConfirmationList>> {
    let mut confirmations = app
        .read(move |r| latest_per_agent(r, query.agent.as_deref()))
        .await?;
    if query.waiting {
        confirmations.retain(|confirmation| confirmation.decision.is_none());
    }
    Ok(Json(ConfirmationList { confirmations }))
}

/// A loop asks for a person's confirmation before its next iteration (admin: the loop runs
/// with the admin's client).
pub async fn request(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<ConfirmationRequest>,
) -> ApiResult<Response> {
    require_admin(&actor, "ask for a confirmation")?;
    if request.summary.chars().count() > MAX_CONFIRMATION_SUMMARY {
        return Err(CoreError::InvalidInput(format!(
            "summary is longer than {MAX_CONFIRMATION_SUMMARY} characters"
        ))
        .into());
    }
    let key = key.with_body(&request);
    let written = app
        .write(&actor, &key, move |tx| {
            let agent = tx.read().agent(&name)?;
            tx.emit(
                conclave_core::model::ADMIN_NAME,
                None,
                Some(&agent.name),
                EventPayload::AgentConfirmRequested(request.clone()),
            )?;
            latest_per_agent(&tx.read(), Some(&agent.name))?
                .into_iter()
                .next()
                .ok_or_else(|| CoreError::NotFound("the request just recorded".into()))
        })
        .await?;
    Ok(written.created())
}

/// A person answers the agent's waiting request: continue (perhaps with a new prompt) or stop.
pub async fn answer(
    State(app): State<App>,
    actor: Actor,
    key: IdempotencyKey,
    ApiPath(name): ApiPath<String>,
    ApiJson(answer): ApiJson<ConfirmationAnswer>,
) -> ApiResult<Response> {
    require_admin(&actor, "answer a loop's confirmation")?;
    // A stop runs no prompt, so one sent with it is dropped rather than recorded.
    let mut answer = answer;
    if answer.decision == ConfirmDecision::Stop {
        answer.prompt = None;
    }
    if let Some(prompt) = &answer.prompt
        && (prompt.trim().is_empty() || prompt.chars().count() > MAX_CONFIRMATION_PROMPT)
    {
        return Err(CoreError::InvalidInput(format!(
            "prompt must be 1 to {MAX_CONFIRMATION_PROMPT} characters, not blank"
        ))
        .into());
    }
    let key = key.with_body(&answer);
    let by = actor.clone();
    let written = app
        .write(&actor, &key, move |tx| {
            let agent = tx.read().agent(&name)?;
            let waiting = latest_per_agent(&tx.read(), Some(&agent.name))?
                .into_iter()
                .next()
                .filter(|latest| latest.decision.is_none())
                .ok_or_else(|| {
                    CoreError::Conflict(format!("{} is not waiting for a confirmation", agent.name))
                })?;
            tx.emit(
                by.name(),
                None,
                Some(&agent.name),
                EventPayload::AgentConfirmed(AgentConfirmed {
                    request: waiting.seq,
                    decision: answer.decision,
                    prompt: answer.prompt.clone(),
                }),
            )?;
            Ok(Confirmation {
                decision: Some(answer.decision),
                prompt: answer.prompt.clone(),
                decided_by: Some(by.name().to_string()),
                ..waiting
            })
        })
        .await?;
    Ok(written.ok())
}
