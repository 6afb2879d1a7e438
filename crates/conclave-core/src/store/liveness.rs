//! Liveness without a write per request.
//!
//! Every request of an agent proves it alive, and its claims live on as long as it is heard from.
//! Writing that on every request cost two `UPDATE`s per request; instead [`Store::note_alive`]
//! records the time in memory, and the times are persisted in one operation per flush: by a
//! background thread every [`Store::liveness_flush_interval`] (a twentieth of the claim TTL, at
//! most a second), and at the start of every sweep, in the sweep's own transaction, so that this
//! server never expires a claim whose holder it has heard from. Other servers on the same
//! database see the persisted times, at most one flush interval late: far inside the TTL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::db::params;
use chrono::Utc;

use super::{Store, Tx, lock};
use crate::error::Result;
use crate::event::AgentStatusChanged;
use crate::model::{AgentStatus, EventPayload};

/// Agents heard from since the last flush, with when (Unix ms).
#[derive(Default)]
pub(super) struct Liveness {
    heard: Mutex<HashMap<String, i64>>,
    /// Agents whose liveness this store has persisted at least once.
    persisted: Mutex<HashSet<String>>,
    flusher_started: AtomicBool,
}

impl Store {
    /// Notes that `agent` was heard from just now. Costs a map insert; the time reaches the
    /// database (the agent's `last_seen`, its claims' expiry) with the next flush. Returns true
    /// when this store has never persisted the agent's liveness: the caller should then flush at
    /// once ([`Store::flush_liveness`]), since an agent's first request turns it from `offline`
    /// to `idle`, which must not wait.
    #[must_use = "a first-heard agent needs a flush"]
    pub fn note_alive(&self, agent: &str) -> bool {
        let now = Utc::now().timestamp_millis();
        {
            let mut heard = lock(&self.inner.liveness.heard);
            match heard.get_mut(agent) {
                Some(at) => *at = (*at).max(now),
                None => {
                    heard.insert(agent.to_string(), now);
                }
            }
        }
        self.start_liveness_flusher();
        !lock(&self.inner.liveness.persisted).contains(agent)
    }

    /// Persists every liveness noted since the last flush, in one operation; returns how many
    /// agents it covered.
    pub fn flush_liveness(&self) -> Result<usize> {
        self.with_heard(|tx, heard| {
            tx.record_liveness(heard)?;
            Ok(heard.len())
        })
    }

    /// How often noted liveness is persisted: a small fraction of the claim TTL, so that a claim
    /// is never expired for want of a flush, and within a second.
    pub fn liveness_flush_interval(&self) -> Duration {
        let ms = (self.config().claim_ttl_secs.saturating_mul(1000) / 20).clamp(20, 1000);
        Duration::from_millis(u64::try_from(ms).unwrap_or(1000))
    }

    /// Runs `change` with the liveness noted so far, in one write; if the write fails, the noted
    /// times are kept for the next attempt.
    pub(super) fn with_heard<T>(
        &self,
        change: impl FnOnce(&mut Tx<'_>, &HashMap<String, i64>) -> Result<T>,
    ) -> Result<T> {
        let heard = std::mem::take(&mut *lock(&self.inner.liveness.heard));
        let result = self.write(|tx| change(tx, &heard));
        if result.is_ok() {
            lock(&self.inner.liveness.persisted).extend(heard.into_keys());
        } else if !heard.is_empty() {
            let mut pending = lock(&self.inner.liveness.heard);
            for (agent, at) in heard {
                let slot = pending.entry(agent).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        result
    }

    /// Starts the thread that flushes noted liveness periodically, once per store. It holds the
    /// store weakly and ends when the store is dropped.
    fn start_liveness_flusher(&self) {
        if self
            .inner
            .liveness
            .flusher_started
            .swap(true, Ordering::AcqRel)
        {
            return;
        }
        let store = Arc::downgrade(&self.inner);
        let interval = self.liveness_flush_interval();
        let spawned = std::thread::Builder::new()
            .name("conclave-liveness".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = store.upgrade() else {
                        return;
                    };
                    if let Err(error) = (Store { inner }).flush_liveness() {
                        tracing::warn!(%error, "could not persist the agents' liveness");
                    }
                }
            });
        if let Err(error) = spawned {
            // The sweep still flushes: claims stay correct, other servers see liveness later.
            tracing::warn!(%error, "could not start the liveness flusher");
        }
    }
}

impl Tx<'_> {
    /// Records that each agent was heard from at its time: its `last_seen`, and the claim expiry
    /// of the tasks it holds, move forward (never back). An agent heard from for the first time
    /// turns from `offline` (as registered) to `idle`, with an event.
    pub(crate) fn record_liveness(&mut self, heard: &HashMap<String, i64>) -> Result<()> {
        if heard.is_empty() {
            return Ok(());
        }
        let ttl_ms = self.config().claim_ttl_secs.saturating_mul(1000);
        let seen = "UPDATE agents SET last_seen = max(COALESCE(last_seen, 0), ?2) WHERE name = ?1";
        let claims = "UPDATE tasks SET claim_expires_at = max(COALESCE(claim_expires_at, 0), ?2)
             WHERE assignee = ?1 AND status IN ('claimed', 'in_progress', 'review', 'blocked')";
        let first =
            "UPDATE agents SET status = ?2 WHERE name = ?1 AND last_seen IS NULL AND status = ?3";
        let db = self.conn();
        let mut woke = Vec::new();
        for (agent, at) in heard {
            let changed = db.execute(
                first,
                params![
                    agent,
                    AgentStatus::Idle.as_str(),
                    AgentStatus::Offline.as_str()
                ],
            )?;
            if changed == 1 {
                woke.push(agent.as_str());
            }
            db.execute(seen, params![agent, at])?;
            db.execute(claims, params![agent, at.saturating_add(ttl_ms)])?;
        }
        woke.sort_unstable();
        for agent in woke {
            let changed = AgentStatusChanged {
                from: AgentStatus::Offline,
                to: AgentStatus::Idle,
                waiting_for: None,
            };
            self.emit(
                agent,
                None,
                Some(agent),
                EventPayload::AgentStatusChanged(changed),
            )?;
        }
        Ok(())
    }
}
