//! The merge queue's state (issue 11, docs/worktrees.md): one entry per task branch waiting to
//! land on the integration branch, in order of completion, and whether a person paused it.
//!
//! The server's runner (conclave-server `merge_queue`) does the git side with conclave-git and
//! records each outcome here; every change is an event (`queue.*`). An entry's life:
//! `queued → merging → landed`, or `→ sent_back` (a conflict or a failing check: its task goes
//! back to its agent, `in_progress` with its claim renewed), from which the agent's next `done`
//! re-queues it; a person may `skip` an entry or `retry` a sent-back or skipped one. While its
//! entry waits, the task is `review` with no claim expiry (the agent is not working on it); the
//! task becomes `done`, and its dependents ready, only when its branch lands, so tasks that
//! depend on each other land in dependency order.
//!
//! A task joins the queue when it is finished for good by an agent in its own worktree
//! ([`Tx::lands_through_merge_queue`]): a plain task at its agent's `done`; a pipeline task at its
//! last stage's pass (earlier passes hand the same branch on to the next stage); a task needing
//! approval when a person approves it. A conflict or a failing check returns it to the agent that
//! finished it last (for a pipeline, the last stage's), with the details.

use super::db::{OptionalExtension, Row, params};

use super::{Reader, Tx, ms_to_time, to_json_list, validate_text};
use crate::error::{CoreError, Result};
use crate::event::{NoData, OptionalReason, QueueBranch, QueueLanded, QueueSentBack, TaskUpdated};
use crate::model::{
    Actor, EventPayload, Isolation, QueueEntry, QueueState, QueueView, Task, TaskId, TaskStatus,
};

/// An entry's recorded outcome is cut to this many bytes (the agent's message carries the same).
pub const MAX_QUEUE_OUTCOME: usize = 16 * 1024;
/// Landed and skipped entries `GET /api/queue` still shows (the newest ones).
pub const QUEUE_HISTORY: usize = 50;

const ENTRY_COLUMNS: &str =
    "task_id, branch, agent, position, state, attempts, outcome, enqueued_at, updated_at";

/// The branch a task's work lives on (conclave-git's `task_branch`).
pub fn task_branch_name(id: TaskId) -> String {
    format!("conclave/{id}")
}

fn entry_from_row(row: &Row<'_>) -> Result<QueueEntry> {
    let state: String = row.get(4)?;
    Ok(QueueEntry {
        task: TaskId(row.get(0)?),
        branch: row.get(1)?,
        agent: row.get(2)?,
        position: row.get(3)?,
        state: state.parse().unwrap_or(QueueState::Queued),
        attempts: row.get(5)?,
        outcome: row.get(6)?,
        enqueued_at: ms_to_time(row.get(7)?),
        updated_at: ms_to_time(row.get(8)?),
    })
}

/// `text` cut to [`MAX_QUEUE_OUTCOME`] bytes on a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_QUEUE_OUTCOME {
        return text.to_string();
    }
    let mut end = MAX_QUEUE_OUTCOME;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[cut at {MAX_QUEUE_OUTCOME} bytes]", &text[..end])
}

impl Reader<'_> {
    /// The queue: waiting and sent-back entries in order, then the newest landed and skipped
    /// ones ([`QUEUE_HISTORY`]), and the pause flag.
    pub fn merge_queue(&self) -> Result<QueueView> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM merge_queue
             WHERE state IN ('queued', 'merging', 'sent_back')
                OR task_id IN (SELECT task_id FROM merge_queue
                               WHERE state IN ('landed', 'skipped')
                               ORDER BY updated_at DESC, position DESC LIMIT ?1)
             ORDER BY position"
        );
        let rows = self
            .conn()
            .query_map(&sql, params![QUEUE_HISTORY as i64], entry_from_row)?;
        let entries = rows;
        let (paused, paused_reason) = self.conn().query_row(
            "SELECT paused, reason FROM merge_queue_control WHERE id = 1",
            params![],
            |row| Ok((row.get::<i64>(0)? != 0, row.get(1)?)),
        )?;
        Ok(QueueView {
            paused,
            paused_reason,
            entries,
        })
    }

    pub fn merge_entry(&self, task: TaskId) -> Result<QueueEntry> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM merge_queue WHERE task_id = ?1");
        self.conn()
            .query_row(&sql, params![task.0], entry_from_row)
            .optional()?
            .ok_or_else(|| CoreError::not_found(format!("{task} is not in the merge queue")))
    }

    /// The entry to land next, if the queue is not paused: one left `merging` (a landing a
    /// crash interrupted: retried first), else the oldest queued one.
    pub fn next_merge(&self) -> Result<Option<QueueEntry>> {
        if self.merge_queue_paused()? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM merge_queue WHERE state IN ('merging', 'queued')
             ORDER BY state = 'merging' DESC, position LIMIT 1"
        );
        self.conn()
            .query_row(&sql, params![], entry_from_row)
            .optional()
    }

    pub fn merge_queue_paused(&self) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT paused FROM merge_queue_control WHERE id = 1",
            params![],
            |row| row.get::<i64>(0),
        )? != 0)
    }

    /// Whether `task`'s holder works in its own worktree (so the task's work is on its branch).
    pub fn held_in_a_worktree(&self, task: &Task) -> Result<bool> {
        let Some(holder) = task.assignee.as_deref() else {
            return Ok(false);
        };
        Ok(self
            .find_agent(holder)?
            .is_some_and(|agent| agent.isolation == Isolation::Worktree))
    }

    /// Whether `task` waits in the merge queue now (its entry queued or being landed).
    pub fn waits_in_merge_queue(&self, task: &Task) -> Result<bool> {
        Ok(task.status == TaskStatus::Review
            && self
                .merge_entry(task.id)
                .is_ok_and(|entry| matches!(entry.state, QueueState::Queued | QueueState::Merging)))
    }
}

impl Tx<'_> {
    /// Whether finishing `task` goes through the merge queue: the server runs one
    /// ([`crate::store::StoreConfig::merge_queue`]) and the task's holder works in its own
    /// worktree. This holds for a plain task's `done`, a pipeline's last pass and a person's
    /// approval alike: the task is `done` only once its branch landed.
    pub fn lands_through_merge_queue(&self, task: &Task) -> Result<bool> {
        Ok(self.config().merge_queue && self.read().held_in_a_worktree(task)?)
    }

    /// A finished task whose branch must land first (its agent's `done`, a pipeline's last
    /// pass, or a person's approval; [`Tx::lands_through_merge_queue`]): the task waits in
    /// `review` (no claim expiry, leases released, the summary and files kept as its result) and
    /// its branch joins the end of the queue, in the name of the agent that holds it (the one a
    /// conflict or a failing check returns it to). It becomes `done` in [`Tx::land_merge`].
    pub(crate) fn join_merge_queue(
        &mut self,
        actor: &str,
        task: &Task,
        summary: &str,
        files: &[String],
    ) -> Result<()> {
        let id = task.id;
        let Some(holder) = task.assignee.clone() else {
            return Err(CoreError::conflict(format!(
                "{id} has no holder: its branch cannot join the merge queue"
            )));
        };
        self.conn().execute(
            "UPDATE tasks SET status = 'review', result = ?2, files = ?3, claim_expires_at = NULL,
                awaiting_approval = 0, updated_at = ?4 WHERE id = ?1",
            params![id.0, summary, to_json_list(files)?, self.now_ms()],
        )?;
        // An approved task was in `review` already (waiting for the person, now for the queue).
        if task.status != TaskStatus::Review {
            let updated = TaskUpdated {
                from: task.status,
                to: TaskStatus::Review,
                note: Some("finished: waiting in the merge queue".to_string()),
            };
            self.emit(
                actor,
                Some(id),
                Some(&holder),
                EventPayload::TaskUpdated(updated),
            )?;
        }
        self.release_task_leases(actor, id, "task finished: waiting in the merge queue")?;
        let branch = task_branch_name(id);
        self.conn().execute(
            "INSERT INTO merge_queue (task_id, branch, agent, position, state, enqueued_at, updated_at)
             VALUES (?1, ?2, ?3, (SELECT coalesce(max(position), 0) + 1 FROM merge_queue),
                     'queued', ?4, ?4)
             ON CONFLICT (task_id) DO UPDATE SET branch = excluded.branch, agent = excluded.agent,
                position = excluded.position, state = 'queued', outcome = NULL,
                enqueued_at = excluded.enqueued_at, updated_at = excluded.updated_at",
            params![id.0, branch, holder, self.now_ms()],
        )?;
        self.emit(
            actor,
            Some(id),
            Some(&holder),
            EventPayload::QueueEnqueued(QueueBranch { branch }),
        )
    }

    /// Before landing: an entry whose agent no longer holds its task (the task was reassigned,
    /// released, reopened or cancelled while it waited, or the agent was removed) is a stale
    /// holder's work and must not land. Such an entry is taken out of the queue (`skipped`, its
    /// outcome saying why) and returned; a current one is left alone (`None`).
    pub fn drop_stale_merge(&mut self, task: TaskId) -> Result<Option<QueueEntry>> {
        let entry = self.read().merge_entry(task)?;
        if !matches!(entry.state, QueueState::Queued | QueueState::Merging) {
            return Ok(None);
        }
        let current = self.read().task(task)?;
        let agent_exists = self.read().find_agent(&entry.agent)?.is_some();
        let why = if !agent_exists {
            format!("{} was removed", entry.agent)
        } else if current.assignee.as_deref() != Some(entry.agent.as_str()) {
            format!(
                "{task} is now {}",
                current
                    .assignee
                    .as_deref()
                    .map_or("held by no one".to_string(), |a| format!("{a}'s"))
            )
        } else if current.status != TaskStatus::Review {
            format!("{task} is {} now, not waiting to land", current.status)
        } else {
            return Ok(None);
        };
        let outcome = bounded(&format!("not landed: stale holder ({why})"));
        self.set_entry(task, QueueState::Skipped, Some(&outcome), 0)?;
        self.emit(
            crate::model::SYSTEM_NAME,
            Some(task),
            Some(&entry.agent),
            EventPayload::QueueSkipped(QueueBranch {
                branch: entry.branch.clone(),
            }),
        )?;
        if agent_exists {
            let body = format!(
                "{task}: your branch {} was taken out of the merge queue without landing: {why}.",
                entry.branch
            );
            self.notify(&entry.agent, &body)?;
        }
        Ok(Some(self.read().merge_entry(task)?))
    }

    /// Takes every waiting entry of `agent` out of the queue (`skipped`, with `reason` as the
    /// outcome), as when the agent is removed; returns their tasks.
    pub fn drop_merges_of(
        &mut self,
        actor: &str,
        agent: &str,
        reason: &str,
    ) -> Result<Vec<TaskId>> {
        let waiting: Vec<QueueEntry> = {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM merge_queue
                 WHERE agent = ?1 AND state IN ('queued', 'merging') ORDER BY position"
            );
            self.conn()
                .query_map(&sql, params![agent], entry_from_row)?
        };
        let outcome = bounded(&format!("not landed: {reason}"));
        for entry in &waiting {
            self.set_entry(entry.task, QueueState::Skipped, Some(&outcome), 0)?;
            self.emit(
                actor,
                Some(entry.task),
                Some(agent),
                EventPayload::QueueSkipped(QueueBranch {
                    branch: entry.branch.clone(),
                }),
            )?;
        }
        Ok(waiting.into_iter().map(|entry| entry.task).collect())
    }

    /// The runner starts landing `task`'s entry (queued or left merging by a crash).
    pub fn begin_merge(&mut self, task: TaskId) -> Result<QueueEntry> {
        let entry = self.read().merge_entry(task)?;
        if !matches!(entry.state, QueueState::Queued | QueueState::Merging) {
            return Err(CoreError::conflict(format!(
                "{task}'s merge queue entry is {}, not waiting",
                entry.state
            )));
        }
        self.set_entry(task, QueueState::Merging, entry.outcome.as_deref(), 1)?;
        self.emit(
            crate::model::SYSTEM_NAME,
            Some(task),
            Some(&entry.agent),
            EventPayload::QueueMerging(QueueBranch {
                branch: entry.branch,
            }),
        )?;
        self.read().merge_entry(task)
    }

    /// The branch is on the integration branch: the entry is landed and the task `done` (its
    /// dependents refreshed), with the summary its agent gave when it finished.
    pub fn land_merge(&mut self, task: TaskId, outcome: &str) -> Result<QueueEntry> {
        let entry = self.read().merge_entry(task)?;
        if entry.state == QueueState::Landed {
            return Ok(entry);
        }
        self.set_entry(task, QueueState::Landed, Some(outcome), 0)?;
        self.emit(
            crate::model::SYSTEM_NAME,
            Some(task),
            Some(&entry.agent),
            EventPayload::QueueLanded(QueueLanded {
                branch: entry.branch.clone(),
                outcome: bounded(outcome),
            }),
        )?;
        let current = self.read().task(task)?;
        if current.status == TaskStatus::Review
            && current.assignee.as_deref() == Some(entry.agent.as_str())
        {
            // Completed as it stands: its pass (and any approval) was recorded when it joined.
            let summary = current.result.clone().unwrap_or_default();
            self.complete_task(&entry.agent, &current, &summary, &current.files)?;
        }
        self.read().merge_entry(task)
    }

    /// A conflict or a failing check: the entry is sent back and the task returns to its agent
    /// (`in_progress`, claim renewed) with `details` as its result and in a message.
    pub fn send_back_merge(
        &mut self,
        task: TaskId,
        reason: &str,
        details: &str,
    ) -> Result<QueueEntry> {
        let entry = self.read().merge_entry(task)?;
        let details = bounded(details);
        self.set_entry(task, QueueState::SentBack, Some(&details), 0)?;
        self.emit(
            crate::model::SYSTEM_NAME,
            Some(task),
            Some(&entry.agent),
            EventPayload::QueueSentBack(QueueSentBack {
                branch: entry.branch.clone(),
                reason: reason.to_string(),
                details: details.clone(),
            }),
        )?;
        let what = match reason {
            "conflict" => "conflicts with the integration branch",
            "check_failed" => "failed the merge check",
            other => other,
        };
        let body = format!(
            "{task}: your branch {} {what}, so it did not land. Fix it on your branch (you may \
             merge the integration branch into it) and finish {task} again.\n\n{details}",
            entry.branch
        );
        // A pipeline's history shows the queue's verdict beside the stages' (the task stays at
        // the stage that finished it; the pipeline's send-back rounds are the agents' own).
        let current = self.read().task(task)?;
        if current.pipeline.is_some() {
            self.record_queue_send_back(&current, what)?;
        }
        self.return_to_agent(&entry, &body)?;
        self.read().merge_entry(task)
    }

    /// A landing that could not finish for a reason of its own (a git error, the integration
    /// branch refused): the entry waits again in its place, with the reason.
    pub fn release_merge(&mut self, task: TaskId, outcome: &str) -> Result<QueueEntry> {
        self.set_entry(task, QueueState::Queued, Some(&bounded(outcome)), 0)?;
        self.read().merge_entry(task)
    }

    /// A person takes an entry out of the queue; a task waiting on it goes back to its agent.
    pub fn skip_merge(&mut self, actor: &Actor, task: TaskId) -> Result<QueueEntry> {
        let entry = self.read().merge_entry(task)?;
        if !matches!(
            entry.state,
            QueueState::Queued | QueueState::Merging | QueueState::SentBack
        ) {
            return Err(CoreError::conflict(format!(
                "{task}'s merge queue entry is {}: nothing to skip",
                entry.state
            )));
        }
        self.set_entry(task, QueueState::Skipped, entry.outcome.as_deref(), 0)?;
        self.emit(
            actor.name(),
            Some(task),
            Some(&entry.agent),
            EventPayload::QueueSkipped(QueueBranch {
                branch: entry.branch.clone(),
            }),
        )?;
        let body = format!(
            "{task}: {} took your branch {} out of the merge queue; it did not land. Finish \
             {task} again to queue it again.",
            actor.name(),
            entry.branch
        );
        self.return_to_agent(&entry, &body)?;
        self.read().merge_entry(task)
    }

    /// A person puts a sent-back or skipped entry back at the end of the queue (the task waits
    /// in `review` again), or clears the outcome of a queued one.
    pub fn retry_merge(&mut self, actor: &Actor, task: TaskId) -> Result<QueueEntry> {
        let entry = self.read().merge_entry(task)?;
        if matches!(entry.state, QueueState::Landed | QueueState::Merging) {
            return Err(CoreError::conflict(format!(
                "{task}'s merge queue entry is {}: nothing to retry",
                entry.state
            )));
        }
        let current = self.read().task(task)?;
        if current.status != TaskStatus::Review {
            if current.assignee.as_deref() != Some(entry.agent.as_str())
                || !crate::store::is_held(&current)
            {
                return Err(CoreError::conflict(format!(
                    "{task} is {} and not held by {}: it cannot wait for its branch",
                    current.status, entry.agent
                )));
            }
            self.conn().execute(
                "UPDATE tasks SET status = 'review', claim_expires_at = NULL, updated_at = ?2
                 WHERE id = ?1",
                params![task.0, self.now_ms()],
            )?;
            let updated = TaskUpdated {
                from: current.status,
                to: TaskStatus::Review,
                note: Some("waiting in the merge queue again".to_string()),
            };
            self.emit(
                actor.name(),
                Some(task),
                Some(&entry.agent),
                EventPayload::TaskUpdated(updated),
            )?;
        }
        self.conn().execute(
            "UPDATE merge_queue SET state = 'queued', outcome = NULL, updated_at = ?2,
                position = (SELECT coalesce(max(position), 0) + 1 FROM merge_queue)
             WHERE task_id = ?1",
            params![task.0, self.now_ms()],
        )?;
        self.emit(
            actor.name(),
            Some(task),
            Some(&entry.agent),
            EventPayload::QueueRetried(QueueBranch {
                branch: entry.branch,
            }),
        )?;
        self.read().merge_entry(task)
    }

    /// Stops the queue after its current landing (`reason` shown with the queue).
    pub fn pause_merge_queue(&mut self, actor: &Actor, reason: Option<String>) -> Result<bool> {
        if let Some(reason) = &reason {
            validate_text("reason", reason, MAX_QUEUE_OUTCOME, false)?;
        }
        if self.read().merge_queue_paused()? {
            return Ok(false);
        }
        self.conn().execute(
            "UPDATE merge_queue_control SET paused = 1, reason = ?1 WHERE id = 1",
            params![reason],
        )?;
        self.emit(
            actor.name(),
            None,
            None,
            EventPayload::QueuePaused(OptionalReason { reason }),
        )?;
        Ok(true)
    }

    pub fn resume_merge_queue(&mut self, actor: &Actor) -> Result<bool> {
        if !self.read().merge_queue_paused()? {
            return Ok(false);
        }
        self.conn().execute(
            "UPDATE merge_queue_control SET paused = 0, reason = NULL WHERE id = 1",
            params![],
        )?;
        self.emit(
            actor.name(),
            None,
            None,
            EventPayload::QueueResumed(NoData {}),
        )?;
        Ok(true)
    }

    fn set_entry(
        &mut self,
        task: TaskId,
        state: QueueState,
        outcome: Option<&str>,
        attempt: i64,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE merge_queue SET state = ?2, outcome = ?3, attempts = attempts + ?4,
                updated_at = ?5 WHERE task_id = ?1",
            params![task.0, state.as_str(), outcome, attempt, self.now_ms()],
        )?;
        Ok(())
    }

    /// Gives a task waiting on its entry back to the entry's agent, `in_progress` with a fresh
    /// claim and `body` as its result, and tells the agent.
    fn return_to_agent(&mut self, entry: &QueueEntry, body: &str) -> Result<()> {
        let current = self.read().task(entry.task)?;
        let waiting = current.status == TaskStatus::Review
            && current.assignee.as_deref() == Some(entry.agent.as_str());
        if waiting {
            let expires = self.now_ms() + self.config().claim_ttl_secs * 1000;
            self.conn().execute(
                "UPDATE tasks SET status = 'in_progress', result = ?2, claim_expires_at = ?3,
                    updated_at = ?4 WHERE id = ?1",
                params![entry.task.0, body, expires, self.now_ms()],
            )?;
            let updated = TaskUpdated {
                from: TaskStatus::Review,
                to: TaskStatus::InProgress,
                note: Some("sent back by the merge queue".to_string()),
            };
            self.emit(
                crate::model::SYSTEM_NAME,
                Some(entry.task),
                Some(&entry.agent),
                EventPayload::TaskUpdated(updated),
            )?;
        }
        if self.read().find_agent(&entry.agent)?.is_some() {
            self.notify(&entry.agent, body)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageKind, NewAgent, NewTask, TaskFinish};
    use crate::store::{Store, StoreConfig};

    fn store_with_worktree_agent() -> Store {
        let store = Store::open_in_memory(StoreConfig {
            merge_queue: true,
            ..StoreConfig::default()
        })
        .expect("store");
        register(&store, "alice", Isolation::Worktree);
        store
    }

    fn register(store: &Store, name: &str, isolation: Isolation) {
        store
            .write(|tx| {
                tx.register_agent(
                    "admin",
                    NewAgent {
                        name: name.into(),
                        isolation,
                        ..Default::default()
                    },
                )
            })
            .expect("register");
    }

    fn claimed_task(store: &Store, title: &str, after: &[TaskId]) -> TaskId {
        let id = store
            .write(|tx| {
                tx.create_task(
                    &Actor::Admin,
                    NewTask {
                        title: title.into(),
                        after: after.to_vec(),
                        ..Default::default()
                    },
                )
            })
            .expect("create")
            .id;
        if after.is_empty() {
            store
                .write(|tx| tx.claim_task("alice", Some(id)))
                .expect("claim");
        }
        id
    }

    fn finish(store: &Store, id: TaskId) -> Task {
        store
            .write(|tx| {
                tx.finish_task(
                    &Actor::Agent("alice".into()),
                    id,
                    TaskFinish {
                        summary: Some("did it".into()),
                        files: vec!["src/a.rs".into()],
                        ..TaskFinish::default()
                    },
                )
            })
            .expect("finish into the queue")
    }

    fn lands_through_queue(store: &Store, id: TaskId) -> bool {
        store
            .write(|tx| {
                let task = tx.read().task(id)?;
                tx.lands_through_merge_queue(&task)
            })
            .expect("read")
    }

    fn task_status(store: &Store, id: TaskId) -> TaskStatus {
        store.read(|r| r.task(id)).expect("task").status
    }

    #[test]
    fn removing_an_agent_drops_its_waiting_entries_and_revokes_its_tokens() {
        let store = store_with_worktree_agent();
        let waiting = claimed_task(&store, "waiting", &[]);
        let held = claimed_task(&store, "held", &[]);
        finish(&store, waiting);
        let report = store
            .write(|tx| tx.remove_agent("admin", "alice", "alice left the team"))
            .expect("remove");
        assert_eq!(report.merges_dropped, vec![waiting]);
        assert_eq!(report.tokens_revoked, 1);
        assert!(report.released.tasks.contains(&held), "{report:?}");
        let entry = store.read(|r| r.merge_entry(waiting)).expect("entry");
        assert_eq!(entry.state, QueueState::Skipped);
        assert!(store.read(|r| r.next_merge()).expect("next").is_none());
        // Nothing is held by the removed agent, and nothing lets it act.
        assert_eq!(task_status(&store, held), TaskStatus::Ready);
        assert!(
            store
                .read(|r| r.agent_tokens("alice"))
                .expect("tokens")
                .is_empty()
        );
        let agent = store.read(|r| r.agent("alice")).expect("agent");
        assert_eq!(agent.status, crate::model::AgentStatus::Stopped);
    }

    #[test]
    fn an_entry_whose_task_changed_hands_is_dropped_not_landed() {
        let store = store_with_worktree_agent();
        register(&store, "bob", Isolation::Shared);
        let kept = claimed_task(&store, "kept", &[]);
        let moved = claimed_task(&store, "moved", &[]);
        finish(&store, kept);
        finish(&store, moved);
        store
            .write(|tx| {
                tx.assign_task(
                    &Actor::Admin,
                    moved,
                    crate::model::TaskAssign {
                        agent: "bob".into(),
                    },
                )
            })
            .expect("reassign");

        let current = store
            .write(|tx| tx.drop_stale_merge(kept))
            .expect("check kept");
        assert!(current.is_none(), "alice still holds {kept}");
        let dropped = store
            .write(|tx| tx.drop_stale_merge(moved))
            .expect("check moved")
            .expect("dropped");
        assert_eq!(dropped.state, QueueState::Skipped);
        assert!(
            dropped
                .outcome
                .as_deref()
                .unwrap_or_default()
                .contains("bob"),
            "{dropped:?}"
        );
        // The task stays with its new holder.
        let task = store.read(|r| r.task(moved)).expect("task");
        assert_eq!(task.assignee.as_deref(), Some("bob"));
        assert_eq!(task.status, TaskStatus::Claimed);
    }

    #[test]
    fn a_finished_task_waits_in_review_until_its_branch_lands_then_its_dependent_is_ready() {
        let store = store_with_worktree_agent();
        let first = claimed_task(&store, "first", &[]);
        let second = claimed_task(&store, "second", &[first]);
        assert!(lands_through_queue(&store, first));
        let waiting = finish(&store, first);
        assert_eq!(waiting.status, TaskStatus::Review);
        assert_eq!(waiting.claim_expires_at, None, "no expiry while it waits");
        assert_eq!(task_status(&store, second), TaskStatus::Pending);
        let next = store
            .read(|r| r.next_merge())
            .expect("next")
            .expect("entry");
        assert_eq!((next.task, next.branch.as_str()), (first, "conclave/T-1"));
        assert_eq!(next.state, QueueState::Queued);

        let merging = store.write(|tx| tx.begin_merge(first)).expect("begin");
        assert_eq!((merging.state, merging.attempts), (QueueState::Merging, 1));
        // A restart finds it merging: it is still the next one.
        let again = store
            .read(|r| r.next_merge())
            .expect("next")
            .expect("entry");
        assert_eq!(again.state, QueueState::Merging);

        let landed = store
            .write(|tx| tx.land_merge(first, "landed at abc"))
            .expect("land");
        assert_eq!(landed.state, QueueState::Landed);
        let done = store.read(|r| r.task(first)).expect("task");
        assert_eq!(done.status, TaskStatus::Done);
        assert_eq!(done.result.as_deref(), Some("did it"));
        assert_eq!(task_status(&store, second), TaskStatus::Ready);
        assert!(store.read(|r| r.next_merge()).expect("next").is_none());
        // Landing twice (a retry after a crash) changes nothing.
        let twice = store
            .write(|tx| tx.land_merge(first, "again"))
            .expect("land again");
        assert_eq!(twice.outcome.as_deref(), Some("landed at abc"));
    }

    #[test]
    fn a_conflict_sends_the_task_back_to_its_agent_and_done_requeues_it_at_the_end() {
        let store = store_with_worktree_agent();
        let first = claimed_task(&store, "first", &[]);
        let second = claimed_task(&store, "second", &[]);
        finish(&store, first);
        finish(&store, second);
        store.write(|tx| tx.begin_merge(first)).expect("begin");
        store
            .write(|tx| tx.send_back_merge(first, "conflict", "src/a.rs\n<<<<<<< ours"))
            .expect("send back");
        let back = store.read(|r| r.task(first)).expect("task");
        assert_eq!(back.status, TaskStatus::InProgress);
        assert_eq!(back.assignee.as_deref(), Some("alice"));
        assert!(back.claim_expires_at.is_some(), "claim renewed");
        assert!(
            back.result
                .as_deref()
                .is_some_and(|r| r.contains("<<<<<<<"))
        );
        let inbox = store.read(|r| r.inbox("alice")).expect("inbox");
        let alert = inbox.last().expect("a message");
        assert_eq!(alert.kind, MessageKind::Alert);
        assert!(alert.body.contains("conflicts") && alert.body.contains("src/a.rs"));
        // The other entry is next; the fixed one goes behind it.
        let next = store
            .read(|r| r.next_merge())
            .expect("next")
            .expect("entry");
        assert_eq!(next.task, second);
        finish(&store, first);
        let view = store.read(|r| r.merge_queue()).expect("view");
        let order: Vec<TaskId> = view
            .entries
            .iter()
            .filter(|e| e.state == QueueState::Queued)
            .map(|e| e.task)
            .collect();
        assert_eq!(order, vec![second, first]);
    }

    #[test]
    fn pause_holds_the_queue_and_skip_and_retry_move_entries() {
        let store = store_with_worktree_agent();
        let first = claimed_task(&store, "first", &[]);
        finish(&store, first);
        assert!(
            store
                .write(|tx| tx.pause_merge_queue(&Actor::Admin, Some("release".into())))
                .expect("pause")
        );
        assert!(store.read(|r| r.next_merge()).expect("next").is_none());
        let view = store.read(|r| r.merge_queue()).expect("view");
        assert!(view.paused);
        assert_eq!(view.paused_reason.as_deref(), Some("release"));
        assert!(
            store
                .write(|tx| tx.resume_merge_queue(&Actor::Admin))
                .expect("resume")
        );
        assert!(store.read(|r| r.next_merge()).expect("next").is_some());

        let skipped = store
            .write(|tx| tx.skip_merge(&Actor::Admin, first))
            .expect("skip");
        assert_eq!(skipped.state, QueueState::Skipped);
        assert_eq!(task_status(&store, first), TaskStatus::InProgress);
        assert!(store.read(|r| r.next_merge()).expect("next").is_none());
        assert!(
            store
                .write(|tx| tx.skip_merge(&Actor::Admin, first))
                .is_err()
        );

        let retried = store
            .write(|tx| tx.retry_merge(&Actor::Admin, first))
            .expect("retry");
        assert_eq!(retried.state, QueueState::Queued);
        assert_eq!(task_status(&store, first), TaskStatus::Review);
        let kinds: Vec<String> = store
            .read(|r| {
                r.events(&crate::model::EventFilter {
                    kind: Some("queue.".into()),
                    ..Default::default()
                })
            })
            .expect("events")
            .iter()
            .map(|e| e.payload.kind().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "queue.enqueued",
                "queue.paused",
                "queue.resumed",
                "queue.skipped",
                "queue.retried"
            ]
        );
    }

    #[test]
    fn an_agent_released_while_its_branch_waits_leaves_the_entry_to_land() {
        let store = store_with_worktree_agent();
        let first = claimed_task(&store, "first", &[]);
        let second = claimed_task(&store, "second", &[]);
        finish(&store, first);
        let report = store
            .write(|tx| tx.release_agent("supervisor", "alice", "crashed"))
            .expect("release");
        assert_eq!(
            report.tasks,
            vec![second],
            "only the unfinished task goes back"
        );
        let waiting = store.read(|r| r.task(first)).expect("task");
        assert_eq!(
            (waiting.status, waiting.assignee.as_deref()),
            (TaskStatus::Review, Some("alice"))
        );
        store.write(|tx| tx.begin_merge(first)).expect("begin");
        store
            .write(|tx| tx.land_merge(first, "landed"))
            .expect("land");
        assert_eq!(task_status(&store, first), TaskStatus::Done);
    }

    #[test]
    fn only_the_holder_finishes_into_the_queue_and_a_shared_agent_does_not_go_through_it() {
        let store = store_with_worktree_agent();
        register(&store, "bob", Isolation::Shared);
        let first = claimed_task(&store, "first", &[]);
        let refused = store
            .write(|tx| tx.finish_task(&Actor::Agent("bob".into()), first, TaskFinish::default()));
        assert!(matches!(refused, Err(CoreError::Forbidden(_))));
        let bobs = store
            .write(|tx| {
                tx.create_task(
                    &Actor::Admin,
                    NewTask {
                        title: "b".into(),
                        ..Default::default()
                    },
                )
            })
            .expect("create")
            .id;
        store
            .write(|tx| tx.claim_task("bob", Some(bobs)))
            .expect("claim");
        assert!(!lands_through_queue(&store, bobs));
    }

    /// A store with a merge queue, pipeline `reviewed` (coder → reviewer) and one worktree agent
    /// per role.
    fn store_with_pipeline() -> Store {
        let stages = ["coder", "reviewer"]
            .iter()
            .map(|role| crate::model::PipelineStage {
                role: role.to_string(),
                approve: false,
            })
            .collect();
        let store = Store::open_in_memory(StoreConfig {
            merge_queue: true,
            pipelines: vec![crate::model::Pipeline {
                name: "reviewed".into(),
                stages,
                max_rounds: 3,
            }],
            ..StoreConfig::default()
        })
        .expect("store");
        for (name, role) in [("carol", "coder"), ("rex", "reviewer")] {
            store
                .write(|tx| {
                    tx.register_agent(
                        "admin",
                        NewAgent {
                            name: name.into(),
                            role: Some(role.into()),
                            isolation: Isolation::Worktree,
                            ..Default::default()
                        },
                    )
                })
                .expect("register");
        }
        store
    }

    fn claim_and_pass(store: &Store, agent: &str, id: TaskId, summary: &str) -> Task {
        store
            .write(|tx| tx.claim_task(agent, Some(id)))
            .expect("claim");
        store
            .write(|tx| {
                tx.finish_task(
                    &Actor::Agent(agent.into()),
                    id,
                    TaskFinish {
                        summary: Some(summary.into()),
                        ..TaskFinish::default()
                    },
                )
            })
            .expect("pass")
    }

    fn done_events(store: &Store, id: TaskId) -> usize {
        store
            .read(|r| {
                r.events(&crate::model::EventFilter {
                    task: Some(id),
                    kind: Some("task.done".into()),
                    ..Default::default()
                })
            })
            .expect("events")
            .len()
    }

    #[test]
    fn a_pipeline_task_joins_the_queue_at_its_last_pass_and_a_send_back_returns_to_that_stage() {
        let store = store_with_pipeline();
        let id = store
            .write(|tx| {
                tx.create_task(
                    &Actor::Admin,
                    NewTask {
                        title: "the parser".into(),
                        pipeline: Some("reviewed".into()),
                        ..Default::default()
                    },
                )
            })
            .expect("create")
            .id;

        // The coder's pass hands the task (and its branch) on: nothing is queued yet.
        let at_review = claim_and_pass(&store, "carol", id, "drafted");
        assert_eq!(at_review.status, TaskStatus::Ready);
        assert_eq!(at_review.role.as_deref(), Some("reviewer"));
        assert!(store.read(|r| r.merge_entry(id)).is_err(), "not queued");

        // The reviewer's pass is the last: the branch waits in the queue, the task is not done.
        let waiting = claim_and_pass(&store, "rex", id, "looks right");
        assert_eq!(waiting.status, TaskStatus::Review);
        assert_eq!(waiting.assignee.as_deref(), Some("rex"));
        let entry = store.read(|r| r.merge_entry(id)).expect("entry");
        assert_eq!(
            (entry.state, entry.agent.as_str(), entry.branch.as_str()),
            (QueueState::Queued, "rex", "conclave/T-1")
        );
        assert_eq!(done_events(&store, id), 0);
        let again = store
            .write(|tx| tx.finish_task(&Actor::Agent("rex".into()), id, TaskFinish::default()));
        assert!(
            matches!(again, Err(CoreError::Conflict(_))),
            "a waiting task is not finished twice: {again:?}"
        );

        // A conflict sends it back to the last stage (the reviewer), noted in its history.
        store.write(|tx| tx.begin_merge(id)).expect("begin");
        store
            .write(|tx| tx.send_back_merge(id, "conflict", "src/parse.rs"))
            .expect("send back");
        let back = store.read(|r| r.task(id)).expect("task");
        assert_eq!(back.status, TaskStatus::InProgress);
        assert_eq!(back.assignee.as_deref(), Some("rex"));
        assert_eq!(back.role.as_deref(), Some("reviewer"));
        assert_eq!(back.pipeline.as_ref().map(|p| p.stage), Some(1));
        let inbox = store.read(|r| r.inbox("rex")).expect("inbox");
        assert!(
            inbox
                .last()
                .is_some_and(|m| m.body.contains("src/parse.rs")),
            "{inbox:?}"
        );
        let steps = store.read(|r| r.task_steps(id)).expect("steps");
        let last = steps.last().expect("a step");
        assert_eq!(
            (last.actor.as_str(), last.verdict, last.to_stage),
            (
                crate::model::SYSTEM_NAME,
                crate::model::StepVerdict::SendBack,
                Some(1)
            )
        );
        assert!(
            last.comments
                .as_deref()
                .is_some_and(|c| c.contains("conflicts"))
        );

        // The reviewer fixes it and passes again: queued again, then landed and done once.
        store
            .write(|tx| {
                tx.finish_task(
                    &Actor::Agent("rex".into()),
                    id,
                    TaskFinish {
                        summary: Some("merged the integration branch in".into()),
                        ..TaskFinish::default()
                    },
                )
            })
            .expect("pass again");
        assert_eq!(
            store.read(|r| r.merge_entry(id)).expect("entry").state,
            QueueState::Queued
        );
        store.write(|tx| tx.begin_merge(id)).expect("begin");
        store.write(|tx| tx.land_merge(id, "landed")).expect("land");
        let done = store.read(|r| r.task(id)).expect("task");
        assert_eq!(done.status, TaskStatus::Done);
        assert_eq!(
            done.result.as_deref(),
            Some("merged the integration branch in")
        );
        assert_eq!(done_events(&store, id), 1);
        let passes = store
            .read(|r| r.task_steps(id))
            .expect("steps")
            .iter()
            .filter(|step| step.verdict == crate::model::StepVerdict::Pass)
            .count();
        assert_eq!(passes, 3, "landing records no pass of its own");
    }

    #[test]
    fn an_approval_task_joins_the_queue_when_approved_and_is_done_when_it_lands() {
        let store = store_with_worktree_agent();
        let id = store
            .write(|tx| {
                tx.create_task(
                    &Actor::Admin,
                    NewTask {
                        title: "migrate".into(),
                        approve: true,
                        ..Default::default()
                    },
                )
            })
            .expect("create")
            .id;
        store
            .write(|tx| tx.claim_task("alice", Some(id)))
            .expect("claim");
        let waiting = finish(&store, id);
        assert!(waiting.awaiting_approval);
        assert!(store.read(|r| r.merge_entry(id)).is_err(), "not queued");

        // Rejected: back to alice; her next done waits for the person again.
        store
            .write(|tx| {
                tx.reject_task(
                    &Actor::Admin,
                    id,
                    crate::model::TaskDecision {
                        comment: Some("name the columns".into()),
                    },
                )
            })
            .expect("reject");
        assert_eq!(task_status(&store, id), TaskStatus::InProgress);
        assert!(finish(&store, id).awaiting_approval);

        let approved = store
            .write(|tx| tx.approve_task(&Actor::Admin, id, crate::model::TaskDecision::default()))
            .expect("approve");
        assert_eq!(
            approved.status,
            TaskStatus::Review,
            "not done before it lands"
        );
        assert!(!approved.awaiting_approval);
        assert!(crate::store::is_held(&approved));
        assert_eq!(store.read(|r| r.approvals_waiting()).expect("count"), 0);
        let entry = store.read(|r| r.merge_entry(id)).expect("entry");
        assert_eq!(
            (entry.state, entry.agent.as_str()),
            (QueueState::Queued, "alice")
        );
        assert_eq!(done_events(&store, id), 0);

        // A failing check returns it to alice; the fix waits for the person again.
        store.write(|tx| tx.begin_merge(id)).expect("begin");
        store
            .write(|tx| tx.send_back_merge(id, "check_failed", "test x failed"))
            .expect("send back");
        let back = store.read(|r| r.task(id)).expect("task");
        assert_eq!(
            (
                back.status,
                back.assignee.as_deref(),
                back.awaiting_approval
            ),
            (TaskStatus::InProgress, Some("alice"), false)
        );
        assert!(finish(&store, id).awaiting_approval);
        store
            .write(|tx| tx.approve_task(&Actor::Admin, id, crate::model::TaskDecision::default()))
            .expect("approve again");

        store.write(|tx| tx.begin_merge(id)).expect("begin");
        store.write(|tx| tx.land_merge(id, "landed")).expect("land");
        assert_eq!(task_status(&store, id), TaskStatus::Done);
        assert_eq!(done_events(&store, id), 1);
    }

    #[test]
    fn without_a_merge_queue_a_worktree_agents_task_is_done_at_once() {
        let store = Store::open_in_memory(StoreConfig::default()).expect("store");
        register(&store, "alice", Isolation::Worktree);
        let id = claimed_task(&store, "first", &[]);
        assert_eq!(finish(&store, id).status, TaskStatus::Done);
        assert!(store.read(|r| r.merge_entry(id)).is_err());
    }
}
