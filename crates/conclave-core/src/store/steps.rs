//! Pipelines and a person's checkpoints: what happens when an agent finishes a task that passes
//! through stages or needs approval, written once for every caller (HTTP, MCP, CLI, dashboard).
//!
//! A pipeline task is held by one stage at a time; its `role` is the current stage's role. The
//! stage's agent finishes it with a verdict:
//! - `pass`: on to the next stage (`ready` for that role), or `done` after the last stage;
//! - `send_back` with comments: back to the previous stage (or a named earlier one), `ready` and
//!   reserved for the agent that passed it there, who is told by a message. The send-back that
//!   uses up the pipeline's `max_rounds` blocks the task for a person instead.
//!
//! A task requires approval when it was created with `approve`, when its current stage has
//! `approve`, or when its role is one of the store's `approve_roles`. A pass (or plain finish)
//! then leaves it in `review`, waiting for a person and held by nobody (its claim lease stops);
//! the admin approves (it moves on as a pass would) or rejects (back `in_progress` to the agent
//! that finished it, with the comment as a message). Only the admin decides.
//!
//! Every verdict and decision is a row of the task's history (`task_steps`), read on its own so
//! that listing tasks stays one query.

use rusqlite::{OptionalExtension, Row, params};
use serde_json::json;

use super::tasks::{MAX_BODY, TASK_COLUMNS, task_from_row};
use super::{Reader, Tx, ms_to_time, validate_text};
use crate::error::{CoreError, Result};
use crate::model::{
    Actor, PipelineState, StepVerdict, Task, TaskDecision, TaskId, TaskStatus, TaskStep,
};

fn step_from_row(row: &Row<'_>) -> rusqlite::Result<TaskStep> {
    let verdict: String = row.get(4)?;
    Ok(TaskStep {
        at: ms_to_time(row.get(0)?),
        actor: row.get(1)?,
        stage: row
            .get::<_, Option<i64>>(2)?
            .and_then(|stage| usize::try_from(stage).ok()),
        role: row.get(3)?,
        verdict: verdict.parse().unwrap_or(StepVerdict::Pass),
        to_stage: row
            .get::<_, Option<i64>>(5)?
            .and_then(|stage| usize::try_from(stage).ok()),
        comments: row.get(6)?,
        summary: row.get(7)?,
    })
}

impl Reader<'_> {
    /// A task's history, oldest first: each stage's verdict and each person's decision.
    pub fn task_steps(&self, id: TaskId) -> Result<Vec<TaskStep>> {
        let mut statement = self.conn().prepare_cached(
            "SELECT at, actor, stage, role, verdict, to_stage, comments, summary
             FROM task_steps WHERE task_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map(params![id.0], step_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many tasks wait for a person's decision.
    pub fn approvals_waiting(&self) -> Result<i64> {
        Ok(self.conn().query_row(
            "SELECT count(*) FROM tasks WHERE awaiting_approval = 1 AND status = 'review'",
            [],
            |row| row.get(0),
        )?)
    }

    /// The tasks waiting for a person's decision, oldest first.
    pub fn tasks_awaiting_approval(&self) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE awaiting_approval = 1 AND status = 'review'
             ORDER BY id"
        );
        let mut statement = self.conn().prepare(&sql)?;
        let rows = statement.query_map([], task_from_row)?;
        let mut tasks: Vec<Task> = rows.collect::<rusqlite::Result<_>>()?;
        for task in &mut tasks {
            task.depends_on = self.dependencies(task.id)?;
        }
        Ok(tasks)
    }

    /// The agent that last passed `id` at pipeline stage `stage`: the one a send-back returns to.
    fn stage_holder(&self, id: TaskId, stage: usize) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT actor FROM task_steps WHERE task_id = ?1 AND stage = ?2 AND verdict = 'pass'
                 ORDER BY id DESC LIMIT 1",
                params![id.0, i64::try_from(stage).unwrap_or(i64::MAX)],
                |row| row.get(0),
            )
            .optional()?)
    }
}

impl Tx<'_> {
    /// The starting state of a task created in pipeline `name`. A role given with it must be the
    /// first stage's (the pipeline decides the role).
    pub(crate) fn start_pipeline(&self, name: &str, role: Option<&str>) -> Result<PipelineState> {
        let pipelines = &self.config().pipelines;
        let Some(pipeline) = pipelines.iter().find(|pipeline| pipeline.name == name) else {
            let known: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
            return Err(CoreError::invalid(format!(
                "unknown pipeline {name:?} (configured: {})",
                if known.is_empty() {
                    "none; add a [[pipeline]] to conclave.toml".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let state = PipelineState {
            pipeline: pipeline.clone(),
            stage: 0,
            send_backs: 0,
        };
        let first = state.current().map(|stage| stage.role.as_str());
        if let Some(role) = role
            && Some(role) != first
        {
            return Err(CoreError::invalid(format!(
                "pipeline {name:?} starts with role {}; leave the role out (the pipeline sets it)",
                first.unwrap_or("none")
            )));
        }
        Ok(state)
    }

    fn record_step(&mut self, task: &Task, actor: &str, step: StepRecord<'_>) -> Result<()> {
        let to_i64 = |stage: usize| i64::try_from(stage).unwrap_or(i64::MAX);
        self.conn().execute(
            "INSERT INTO task_steps (task_id, at, actor, stage, role, verdict, to_stage, comments,
                summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                task.id.0,
                self.now_ms(),
                actor,
                task.pipeline.as_ref().map(|state| to_i64(state.stage)),
                task.role,
                step.verdict.as_str(),
                step.to_stage.map(to_i64),
                step.comments.filter(|text| !text.is_empty()),
                step.summary.filter(|text| !text.is_empty()),
            ],
        )?;
        Ok(())
    }

    fn set_pipeline_state(&mut self, id: TaskId, state: &PipelineState) -> Result<()> {
        self.conn().execute(
            "UPDATE tasks SET pipeline = ?2 WHERE id = ?1",
            params![id.0, serde_json::to_string(state)?],
        )?;
        Ok(())
    }

    /// Whether a finish of `task` as it stands waits for a person.
    fn needs_approval(&self, task: &Task) -> bool {
        let stage_wants = task
            .pipeline
            .as_ref()
            .and_then(PipelineState::current)
            .is_some_and(|stage| stage.approve);
        let role_wants = task
            .role
            .as_ref()
            .is_some_and(|role| self.config().approve_roles.contains(role));
        task.approve || stage_wants || role_wants
    }

    /// A holder's `pass` (or plain finish): waits for approval when the task needs it, else
    /// moves on.
    pub(crate) fn pass_stage(
        &mut self,
        actor: &Actor,
        task: &Task,
        summary: String,
        files: Vec<String>,
        comments: Option<String>,
    ) -> Result<Task> {
        let approval = self.needs_approval(task);
        if task.pipeline.is_some() || approval {
            self.record_step(
                task,
                actor.name(),
                StepRecord {
                    verdict: StepVerdict::Pass,
                    to_stage: None,
                    comments: comments.as_deref(),
                    summary: Some(&summary),
                },
            )?;
        }
        if !approval {
            self.move_on(actor.name(), task, &summary, &files)?;
            return self.read().task(task.id);
        }
        self.conn().execute(
            "UPDATE tasks SET status = 'review', awaiting_approval = 1, claim_expires_at = NULL,
                result = ?2, files = ?3, updated_at = ?4 WHERE id = ?1",
            params![
                task.id.0,
                summary,
                super::to_json_list(&files)?,
                self.now_ms()
            ],
        )?;
        self.emit(
            actor.name(),
            "task.waiting_approval",
            Some(task.id),
            task.assignee.as_deref(),
            json!({
                "summary": summary, "files": files, "stage": task.pipeline.as_ref().map(|s| s.stage),
                "role": task.role,
            }),
        )?;
        self.release_task_leases(actor.name(), task.id, "task waits for approval")?;
        self.read().task(task.id)
    }

    /// The task goes on after a pass (approved if it needed to be): to the next stage, ready for
    /// its role, or done after the last.
    fn move_on(&mut self, actor: &str, task: &Task, summary: &str, files: &[String]) -> Result<()> {
        let next = task
            .pipeline
            .as_ref()
            .filter(|state| state.stage + 1 < state.pipeline.stages.len())
            .map(|state| PipelineState {
                stage: state.stage + 1,
                ..state.clone()
            });
        let Some(next) = next else {
            return self.complete_task(actor, task, summary, files);
        };
        let role = next.current().map(|stage| stage.role.clone());
        self.set_pipeline_state(task.id, &next)?;
        self.conn().execute(
            "UPDATE tasks SET status = 'ready', role = ?2, assignee = NULL, claim_expires_at = NULL,
                awaiting_approval = 0, result = ?3, files = ?4, updated_at = ?5 WHERE id = ?1",
            params![
                task.id.0,
                role,
                summary,
                super::to_json_list(files)?,
                self.now_ms()
            ],
        )?;
        self.emit(
            actor,
            "task.passed",
            Some(task.id),
            task.assignee.as_deref(),
            json!({
                "pipeline": next.pipeline.name, "from_stage": next.stage - 1, "stage": next.stage,
                "role": role, "summary": summary,
            }),
        )?;
        self.release_task_leases(actor, task.id, "stage passed")?;
        // `task.ready` is what offers a task to the agents that fit it.
        self.emit(actor, "task.ready", Some(task.id), None, json!({ "role": role }))
    }

    /// A holder's `send_back`: the task returns to an earlier stage with the comments, reserved
    /// for the agent that passed it there; or, when that uses up the pipeline's rounds, it is
    /// blocked for a person.
    pub(crate) fn send_back(
        &mut self,
        actor: &Actor,
        task: &Task,
        summary: String,
        comments: &str,
        to_stage: Option<&str>,
    ) -> Result<Task> {
        let id = task.id;
        let Some(state) = &task.pipeline else {
            return Err(CoreError::invalid(format!(
                "{id} is not in a pipeline: send_back needs stages to go back to (finish it or \
                 fail it)"
            )));
        };
        if comments.trim().is_empty() {
            return Err(CoreError::invalid(
                "send_back needs comments: say what must change",
            ));
        }
        validate_text("comments", comments, MAX_BODY, true)?;
        let earlier = &state.pipeline.stages[..state.stage.min(state.pipeline.stages.len())];
        let target = match to_stage {
            Some(role) => earlier.iter().rposition(|stage| stage.role == role),
            None => state.stage.checked_sub(1),
        };
        let Some(target) = target else {
            let roles: Vec<&str> = earlier.iter().map(|stage| stage.role.as_str()).collect();
            return Err(CoreError::invalid(match (to_stage, roles.is_empty()) {
                (_, true) => format!(
                    "{id} is at the first stage of pipeline {:?}: there is nothing to send it \
                     back to (pass it or fail it)",
                    state.pipeline.name
                ),
                (Some(role), false) => format!(
                    "{id} has no earlier stage {role:?} (earlier stages: {})",
                    roles.join(", ")
                ),
                (None, false) => format!("{id} has no previous stage"),
            }));
        };
        self.record_step(
            task,
            actor.name(),
            StepRecord {
                verdict: StepVerdict::SendBack,
                to_stage: Some(target),
                comments: Some(comments),
                summary: Some(&summary),
            },
        )?;
        let next = PipelineState {
            stage: target,
            send_backs: state.send_backs + 1,
            ..state.clone()
        };
        let role = next.current().map(|stage| stage.role.clone());
        self.set_pipeline_state(id, &next)?;
        self.release_task_leases(actor.name(), id, "task sent back")?;
        self.emit(
            actor.name(),
            "task.sent_back",
            Some(id),
            task.assignee.as_deref(),
            json!({
                "pipeline": next.pipeline.name, "from_stage": state.stage, "stage": target,
                "role": role, "comments": comments, "send_backs": next.send_backs,
            }),
        )?;
        if next.rounds_exhausted() {
            let reason = format!(
                "sent back {} times in pipeline {:?} (max_rounds {}): a person decides; the \
                 whole exchange is in its history",
                next.send_backs, next.pipeline.name, next.pipeline.max_rounds
            );
            self.conn().execute(
                "UPDATE tasks SET status = 'blocked', blocked_reason = ?2, role = ?3,
                    assignee = NULL, claim_expires_at = NULL, updated_at = ?4 WHERE id = ?1",
                params![id.0, reason, role, self.now_ms()],
            )?;
            self.emit(
                actor.name(),
                "task.blocked",
                Some(id),
                None,
                json!({ "reason": reason }),
            )?;
            return self.read().task(id);
        }
        // The agent that held the stage knows the work; a name that is no longer registered
        // would keep the task from everyone, so then any agent of the role may take it.
        let holder = match self.read().stage_holder(id, target)? {
            Some(name) if self.read().find_agent(&name)?.is_some() => Some(name),
            _ => None,
        };
        self.conn().execute(
            "UPDATE tasks SET status = 'ready', role = ?2, assignee = ?3, claim_expires_at = NULL,
                updated_at = ?4 WHERE id = ?1",
            params![id.0, role, holder, self.now_ms()],
        )?;
        self.emit(
            actor.name(),
            "task.ready",
            Some(id),
            holder.as_deref(),
            json!({ "role": role }),
        )?;
        if let Some(holder) = &holder {
            let body = format!(
                "{id} \"{}\" was sent back to you by {} (stage {}): {comments}\nClaim it, make \
                 the changes and finish it again.",
                task.title,
                actor.name(),
                role.as_deref().unwrap_or("?"),
            );
            self.notify(holder, &body)?;
        }
        self.read().task(id)
    }

    /// A task waiting for a person, checked: the decision is the admin's alone.
    fn awaiting_decision(&self, actor: &Actor, id: TaskId, verb: &str) -> Result<Task> {
        if !actor.is_admin() {
            return Err(CoreError::forbidden(format!(
                "cannot {verb} {id}: only a person (the admin) may"
            )));
        }
        let task = self.read().task(id)?;
        if !(task.awaiting_approval && task.status == TaskStatus::Review) {
            return Err(CoreError::conflict(format!(
                "cannot {verb} {id}: it is {} and waits for no decision",
                task.status
            )));
        }
        Ok(task)
    }

    /// A person approves a waiting task: it moves on as its agent's pass said (next stage, or
    /// done).
    pub fn approve_task(
        &mut self,
        actor: &Actor,
        id: TaskId,
        decision: TaskDecision,
    ) -> Result<Task> {
        if let Some(comment) = &decision.comment {
            validate_text("comment", comment, MAX_BODY, false)?;
        }
        let task = self.awaiting_decision(actor, id, "approve")?;
        self.record_step(
            &task,
            actor.name(),
            StepRecord {
                verdict: StepVerdict::Approved,
                to_stage: None,
                comments: decision.comment.as_deref(),
                summary: None,
            },
        )?;
        self.conn().execute(
            "UPDATE tasks SET awaiting_approval = 0 WHERE id = ?1",
            params![id.0],
        )?;
        self.emit(
            actor.name(),
            "task.approved",
            Some(id),
            task.assignee.as_deref(),
            json!({ "comment": decision.comment }),
        )?;
        let summary = task.result.clone().unwrap_or_default();
        self.move_on(actor.name(), &task, &summary, &task.files)?;
        self.read().task(id)
    }

    /// A person rejects a waiting task: it goes back `in_progress` to the agent that finished
    /// it, who gets the comment as a message (or to `ready` when that agent is gone).
    pub fn reject_task(&mut self, actor: &Actor, id: TaskId, decision: TaskDecision) -> Result<Task> {
        if let Some(comment) = &decision.comment {
            validate_text("comment", comment, MAX_BODY, false)?;
        }
        let task = self.awaiting_decision(actor, id, "reject")?;
        self.record_step(
            &task,
            actor.name(),
            StepRecord {
                verdict: StepVerdict::Rejected,
                to_stage: None,
                comments: decision.comment.as_deref(),
                summary: None,
            },
        )?;
        let agent = match task.assignee.as_deref() {
            Some(name) if self.read().find_agent(name)?.is_some() => Some(name.to_string()),
            _ => None,
        };
        match &agent {
            Some(_) => {
                let expires = self.now_ms() + self.config().claim_ttl_secs * 1000;
                self.conn().execute(
                    "UPDATE tasks SET status = 'in_progress', awaiting_approval = 0,
                        claim_expires_at = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id.0, expires, self.now_ms()],
                )?;
            }
            None => {
                self.conn().execute(
                    "UPDATE tasks SET status = 'ready', assignee = NULL, awaiting_approval = 0,
                        claim_expires_at = NULL, updated_at = ?2 WHERE id = ?1",
                    params![id.0, self.now_ms()],
                )?;
            }
        }
        self.emit(
            actor.name(),
            "task.rejected",
            Some(id),
            agent.as_deref(),
            json!({ "comment": decision.comment }),
        )?;
        match &agent {
            Some(agent) => {
                let body = format!(
                    "{id} \"{}\" was rejected by {}: {}\nIt is yours again (in progress): make \
                     the changes and finish it again.",
                    task.title,
                    actor.name(),
                    decision.comment.as_deref().unwrap_or("(no comment)")
                );
                self.notify(agent, &body)?;
            }
            None => self.emit(actor.name(), "task.ready", Some(id), None, json!({}))?,
        }
        self.read().task(id)
    }
}

/// What one history row says beyond the task's own position.
struct StepRecord<'a> {
    verdict: StepVerdict,
    to_stage: Option<usize>,
    comments: Option<&'a str>,
    summary: Option<&'a str>,
}
