//! Agents: registration, tokens (stored hashed), heartbeats, status reports, and releasing what a
//! dead agent held.

use super::db::{OptionalExtension, Row, params};
use rand::RngCore;

use super::{Reader, Tx, json_list, ms_to_time, opt_time, sha256_hex, to_json_list, validate_name};
use crate::error::{CoreError, Result};
use crate::event::{
    AgentRegistered, AgentSession, AgentStatusChanged, AgentTokenRevoked, NoData, Reason,
};
use crate::model::EventPayload;
use crate::model::{
    ADMIN_NAME, Agent, AgentStatus, AgentToken, AgentUpdate, NewAgent, SYSTEM_NAME, TaskStatus,
};

const AGENT_COLUMNS: &str = "name, role, model, caps, status, session_id, pid, host, last_seen, \
     context_tokens, context_window, cost_usd, restarts, created_at, isolation, coordination";

/// Tokens are stored as their SHA-256; a token cannot be read back, only checked.
pub fn hash_token(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("cvk_{hex}")
}

fn agent_from_row(row: &Row<'_>) -> Result<Agent> {
    let status: String = row.get(4)?;
    Ok(Agent {
        name: row.get(0)?,
        role: row.get(1)?,
        model: row.get(2)?,
        caps: json_list(&row.get::<String>(3)?),
        status: status.parse().unwrap_or(AgentStatus::Offline),
        session_id: row.get(5)?,
        pid: row.get(6)?,
        host: row.get(7)?,
        last_seen: opt_time(row.get(8)?),
        context_tokens: row.get(9)?,
        context_window: row.get(10)?,
        cost_usd: row.get(11)?,
        restarts: row.get(12)?,
        created_at: ms_to_time(row.get(13)?),
        isolation: row
            .get::<String>(14)?
            .parse()
            .unwrap_or(crate::model::Isolation::Shared),
        // An account that no longer parses is dropped, not fatal: it is replaced at the next
        // report.
        coordination: row
            .get::<Option<String>>(15)?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// Names that would be ambiguous as a message recipient or an actor.
fn validate_agent_name(name: &str) -> Result<()> {
    validate_name("agent name", name)?;
    if [ADMIN_NAME, SYSTEM_NAME, "all", "role"].contains(&name) {
        return Err(CoreError::invalid(format!(
            "agent name {name:?} is reserved"
        )));
    }
    Ok(())
}

fn validate_tags(caps: &[String]) -> Result<()> {
    for cap in caps {
        validate_name("capability", cap)?;
    }
    Ok(())
}

impl Reader<'_> {
    pub fn agent(&self, name: &str) -> Result<Agent> {
        self.find_agent(name)?
            .ok_or_else(|| CoreError::not_found(format!("no agent named {name:?}")))
    }

    pub fn find_agent(&self, name: &str) -> Result<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?1");
        self.conn()
            .query_row(&sql, params![name], agent_from_row)
            .optional()
    }

    pub fn agents(&self) -> Result<Vec<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, name");
        let rows = self.conn().query_map(&sql, params![], agent_from_row)?;
        Ok(rows)
    }

    /// How many agents are in each status (every status listed, zeros included).
    pub fn agent_status_counts(&self) -> Result<Vec<(AgentStatus, usize)>> {
        let rows = self.conn().query_map(
            "SELECT status, count(*) FROM agents GROUP BY status",
            params![],
            |row| Ok((row.get::<String>(0)?, row.get::<i64>(1)?)),
        )?;
        let mut counts: Vec<(AgentStatus, usize)> =
            AgentStatus::ALL.iter().map(|status| (*status, 0)).collect();
        for row in rows {
            let (status, count) = row;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                slot.1 = usize::try_from(count).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    /// The agent's tokens, oldest first.
    pub fn agent_tokens(&self, name: &str) -> Result<Vec<AgentToken>> {
        self.agent(name)?;
        let rows = self.conn().query_map(
            "SELECT substr(token_hash, 1, 12), created_at FROM agent_tokens
             WHERE agent = ?1 ORDER BY created_at, token_hash",
            params![name],
            |row| {
                Ok(AgentToken {
                    id: row.get(0)?,
                    created_at: ms_to_time(row.get(1)?),
                })
            },
        )?;
        Ok(rows)
    }

    /// The agent a token belongs to, if any.
    pub fn agent_for_token(&self, token: &str) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT agent FROM agent_tokens WHERE token_hash = ?1",
                params![hash_token(token)],
                |row| row.get(0),
            )
            .optional()
    }
}

impl Tx<'_> {
    /// Registers an agent and returns it with its first token.
    pub fn register_agent(&mut self, actor: &str, new: NewAgent) -> Result<(Agent, String)> {
        validate_agent_name(&new.name)?;
        if let Some(role) = &new.role {
            validate_name("role", role)?;
        }
        validate_tags(&new.caps)?;
        if self.read().find_agent(&new.name)?.is_some() {
            return Err(CoreError::conflict(format!(
                "an agent named {:?} already exists (use `conclave agent token {}` for another token)",
                new.name, new.name
            )));
        }
        self.conn().execute(
            "INSERT INTO agents (name, role, model, caps, status, created_at, isolation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                new.name,
                new.role,
                new.model,
                to_json_list(&new.caps)?,
                // Nothing runs yet: `offline` until its first request or the supervisor starts it.
                AgentStatus::Offline.as_str(),
                self.now_ms(),
                new.isolation.as_str()
            ],
        )?;
        let token = self.insert_token(&new.name)?;
        let agent = self.read().agent(&new.name)?;
        let registered = AgentRegistered {
            role: agent.role.clone(),
            caps: agent.caps.clone(),
            model: agent.model.clone(),
        };
        self.emit(
            actor,
            None,
            Some(&agent.name),
            EventPayload::AgentRegistered(registered),
        )?;
        Ok((agent, token))
    }

    /// Issues one more token for an existing agent (an agent may hold several).
    pub fn issue_token(&mut self, actor: &str, name: &str) -> Result<String> {
        self.read().agent(name)?;
        let token = self.insert_token(name)?;
        self.emit(
            actor,
            None,
            Some(name),
            EventPayload::AgentTokenIssued(NoData {}),
        )?;
        Ok(token)
    }

    /// Revokes one of the agent's tokens (by the id [`Reader::agent_tokens`] shows), or all of
    /// them; returns how many. A request made with a revoked token is refused from then on.
    pub fn revoke_tokens(&mut self, actor: &str, name: &str, id: Option<&str>) -> Result<usize> {
        self.read().agent(name)?;
        if let Some(id) = id
            && (id.len() < 6 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(CoreError::invalid(format!(
                "token id {id:?} is not a token id (at least 6 hex digits, as `agent tokens` shows)"
            )));
        }
        let revoked = self.conn().execute(
            "DELETE FROM agent_tokens WHERE agent = ?1 AND (?2 IS NULL OR token_hash LIKE ?2 || '%')",
            params![name, id.map(str::to_ascii_lowercase)],
        )?;
        if revoked == 0 {
            return Err(CoreError::not_found(match id {
                Some(id) => format!("{name} has no token {id}"),
                None => format!("{name} has no tokens"),
            }));
        }
        let revoked_tokens = AgentTokenRevoked {
            token: id.map(str::to_string),
            count: i64::try_from(revoked).unwrap_or(i64::MAX),
        };
        self.emit(
            actor,
            None,
            Some(name),
            EventPayload::AgentTokenRevoked(revoked_tokens),
        )?;
        Ok(revoked)
    }

    fn insert_token(&mut self, name: &str) -> Result<String> {
        let token = new_token();
        self.conn().execute(
            "INSERT INTO agent_tokens (token_hash, agent, created_at) VALUES (?1, ?2, ?3)",
            params![hash_token(&token), name, self.now_ms()],
        )?;
        Ok(token)
    }

    /// Records that the agent is alive and renews the claim leases of the tasks it holds, in this
    /// transaction (see [`Tx::record_liveness`]). The server notes liveness in memory instead
    /// ([`crate::Store::note_alive`]) and persists it in batches.
    pub fn heartbeat(&mut self, name: &str) -> Result<()> {
        let heard = std::collections::HashMap::from([(name.to_string(), self.now_ms())]);
        self.record_liveness(&heard)
    }

    /// Applies a status report (from the supervisor, a hook, or the agent itself). An agent that
    /// stops, crashes, hibernates or goes offline has no live process: its pid is cleared.
    pub fn update_agent(&mut self, actor: &str, name: &str, update: AgentUpdate) -> Result<Agent> {
        let before = self.read().agent(name)?;
        if let Some(role) = &update.role {
            validate_name("role", role)?;
        }
        for (what, value) in [
            ("context_tokens", update.context_tokens),
            ("context_window", update.context_window),
            ("restarts", update.restarts),
        ] {
            if value.is_some_and(|v| v < 0) {
                return Err(CoreError::invalid(format!("{what} must not be negative")));
            }
        }
        if update
            .cost_usd
            .is_some_and(|cost| !cost.is_finite() || cost < 0.0)
        {
            return Err(CoreError::invalid("cost_usd must be a non-negative number"));
        }
        let coordination = match &update.coordination {
            Some(account) => {
                if [
                    account.model_calls,
                    account.input_tokens,
                    account.output_tokens,
                    account.cache_read_tokens,
                    account.cache_creation_tokens,
                    account.definitions_tokens,
                    account.tool_tokens,
                    account.injected_tokens,
                    account.handoff_tokens,
                ]
                .iter()
                .any(|count| *count < 0)
                    || !account.chars_per_token.is_finite()
                    || account.chars_per_token < 0.0
                {
                    return Err(CoreError::invalid(
                        "coordination counts must not be negative",
                    ));
                }
                Some(
                    serde_json::to_string(account)
                        .map_err(|error| CoreError::invalid(format!("coordination: {error}")))?,
                )
            }
            None => None,
        };
        // What the agent spent since its last report goes to the task it holds (a lower report,
        // the client's total replacing an estimate, takes back what was counted, never below 0).
        if let Some(cost) = update.cost_usd {
            let spent = cost - before.cost_usd;
            if spent.abs() > f64::EPSILON {
                self.conn().execute(
                    "UPDATE tasks SET cost_usd = MAX(0, cost_usd + ?2)
                     WHERE assignee = ?1 AND status IN ('claimed', 'in_progress')",
                    params![name, spent],
                )?;
            }
        }
        self.conn().execute(
            "UPDATE agents SET
                status = COALESCE(?2, status), role = COALESCE(?3, role),
                model = COALESCE(?4, model), session_id = COALESCE(?5, session_id),
                pid = CASE WHEN ?2 IN ('stopped', 'crashed', 'hibernated', 'offline') AND ?6 IS NULL
                           THEN NULL ELSE COALESCE(?6, pid) END,
                host = COALESCE(?7, host),
                context_tokens = COALESCE(?8, context_tokens),
                context_window = COALESCE(?9, context_window),
                cost_usd = COALESCE(?10, cost_usd), restarts = COALESCE(?11, restarts),
                coordination = COALESCE(?12, coordination)
             WHERE name = ?1",
            params![
                name,
                update.status.map(AgentStatus::as_str),
                update.role,
                update.model,
                update.session_id,
                update.pid,
                update.host,
                update.context_tokens,
                update.context_window,
                update.cost_usd,
                update.restarts,
                coordination
            ],
        )?;
        if let Some(isolation) = update.isolation {
            self.conn().execute(
                "UPDATE agents SET isolation = ?2 WHERE name = ?1",
                params![name, isolation.as_str()],
            )?;
        }
        let after = self.read().agent(name)?;
        if after.status != before.status {
            let changed = AgentStatusChanged {
                from: before.status,
                to: after.status,
                waiting_for: None,
            };
            self.emit(
                actor,
                None,
                Some(name),
                EventPayload::AgentStatusChanged(changed),
            )?;
        }
        if after.session_id != before.session_id {
            let session = AgentSession {
                session_id: after.session_id.clone(),
            };
            self.emit(actor, None, Some(name), EventPayload::AgentSession(session))?;
        }
        Ok(after)
    }

    /// Marks an agent that starts a blocking inbox wait as `waiting`, saying for what: a reply
    /// from the agent it last wrote to, when that thread has had no answer, else any message.
    /// Answers the status to go back to when the wait ends; `None` when the agent is in a state
    /// a wait does not override (paused, stopped, ...) or already waiting.
    pub fn begin_wait(&mut self, name: &str) -> Result<Option<AgentStatus>> {
        let before = self.read().agent(name)?;
        if !matches!(
            before.status,
            AgentStatus::Idle | AgentStatus::Working | AgentStatus::Starting | AgentStatus::Offline
        ) {
            return Ok(None);
        }
        // The newest message it sent, if nobody has written in that thread since.
        let unanswered: Option<String> = self
            .conn()
            .query_row(
                "SELECT m.recipient FROM messages m
                 WHERE m.sender = ?1 AND NOT EXISTS (
                     SELECT 1 FROM messages later WHERE later.thread = m.thread AND later.id > m.id)
                 ORDER BY m.id DESC LIMIT 1",
                params![name],
                |row| row.get(0),
            )
            .optional()?;
        let waiting_for = match unanswered {
            Some(to) => format!("a reply from {to}"),
            None => "messages".to_string(),
        };
        self.set_wait_status(name, before.status, AgentStatus::Waiting, Some(waiting_for))?;
        Ok(Some(before.status))
    }

    /// Ends a wait [`Tx::begin_wait`] began: back to `previous`, unless something else changed
    /// the status meanwhile (the supervisor saw the turn end, a person paused it).
    pub fn end_wait(&mut self, name: &str, previous: AgentStatus) -> Result<()> {
        if self.read().agent(name)?.status == AgentStatus::Waiting {
            self.set_wait_status(name, AgentStatus::Waiting, previous, None)?;
        }
        Ok(())
    }

    fn set_wait_status(
        &mut self,
        name: &str,
        from: AgentStatus,
        to: AgentStatus,
        waiting_for: Option<String>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE agents SET status = ?2 WHERE name = ?1",
            params![name, to.as_str()],
        )?;
        let changed = AgentStatusChanged {
            from,
            to,
            waiting_for,
        };
        self.emit(
            name,
            None,
            Some(name),
            EventPayload::AgentStatusChanged(changed),
        )
    }

    /// Returns everything an agent holds to the team: its claimed tasks go back to `ready` (or
    /// `pending` when a dependency was reopened meanwhile)
    /// (attempts + 1) and its file leases are released, each with an event naming `reason`.
    /// A finished task whose branch waits in the merge queue stays as it is: its work is
    /// committed, and the queue lands it (or sends it back) without its agent.
    /// Used when its claim lease expires or when the supervisor knows its process died.
    pub fn release_agent(
        &mut self,
        actor: &str,
        name: &str,
        reason: &str,
    ) -> Result<ReleaseReport> {
        let held: Vec<i64> = self.conn().query_map(
            "SELECT id FROM tasks WHERE assignee = ?1 AND blocked_reason IS NULL
                 AND awaiting_approval = 0
                 AND status IN ('claimed', 'in_progress', 'review', 'blocked')
                 AND id NOT IN (SELECT task_id FROM merge_queue WHERE state IN ('queued', 'merging'))
                 ORDER BY id",
            params![name],
            |row| row.get(0),
        )?;
        let mut report = ReleaseReport::default();
        for id in held {
            let task_id = crate::model::TaskId(id);
            self.conn().execute(
                "UPDATE tasks SET status = ?2, assignee = NULL, claim_expires_at = NULL,
                    attempts = attempts + 1, updated_at = ?3 WHERE id = ?1",
                params![id, TaskStatus::Pending.as_str(), self.now_ms()],
            )?;
            let reclaimed = Reason {
                reason: reason.to_string(),
            };
            self.emit(
                actor,
                Some(task_id),
                Some(name),
                EventPayload::TaskReclaimed(reclaimed),
            )?;
            // Back to ready only if its dependencies are still all done (one may have been
            // reopened while it was held).
            self.refresh_readiness(actor, task_id)?;
            report.tasks.push(task_id);
        }
        report.leases = self.release_all_leases(actor, name, reason)?;
        Ok(report)
    }
}

/// What [`Tx::remove_agent`] did.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct RemovalReport {
    pub agent: String,
    /// The tasks and leases it held, given back.
    pub released: ReleaseReport,
    /// Its tokens revoked.
    pub tokens_revoked: u64,
    /// Its merge queue entries taken out of the queue without landing.
    pub merges_dropped: Vec<crate::model::TaskId>,
}

impl Tx<'_> {
    /// Removes an agent from the team: gives back its tasks and leases, drops its waiting merge
    /// queue entries, revokes every token, and marks it `stopped`, each step an event. The name
    /// stays in the history (events, finished tasks) and in the agent list; a new token
    /// (`conclave agent token NAME`) would bring it back.
    pub fn remove_agent(&mut self, actor: &str, name: &str, reason: &str) -> Result<RemovalReport> {
        self.read().agent(name)?;
        let released = self.release_agent(actor, name, reason)?;
        let merges_dropped = self.drop_merges_of(actor, name, reason)?;
        let tokens_revoked = if self.read().agent_tokens(name)?.is_empty() {
            0
        } else {
            self.revoke_tokens(actor, name, None)?
        };
        self.update_agent(
            actor,
            name,
            AgentUpdate {
                status: Some(AgentStatus::Stopped),
                ..AgentUpdate::default()
            },
        )?;
        Ok(RemovalReport {
            agent: name.to_string(),
            released,
            tokens_revoked: u64::try_from(tokens_revoked).unwrap_or(u64::MAX),
            merges_dropped,
        })
    }
}

/// What [`Tx::release_agent`] gave back.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ReleaseReport {
    pub tasks: Vec<crate::model::TaskId>,
    pub leases: Vec<String>,
}
