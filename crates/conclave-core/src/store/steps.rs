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
//! With a merge queue, a task held in a worktree leaves for good through it: the last stage's
//! pass (or the approval of it, or of a plain task) puts its branch in the queue instead of
//! marking it `done` (store/queue.rs); every stage works on that one branch.
//!
//! Every verdict and decision is a row of the task's history (`task_steps`), read on its own so
//! that listing tasks stays one query.

use super::db::{OptionalExtension, Row, params};

use super::tasks::{MAX_BODY, TASK_COLUMNS, task_from_row};
use super::{Reader, Tx, ms_to_time, validate_text};
use crate::error::{CoreError, Result};
use crate::event::{Decision, NoData, Reason, TaskPassed, TaskSentBack, TaskWaitingApproval};
use crate::model::{
    Actor, EventPayload, PipelineState, StepVerdict, Task, TaskDecision, TaskId, TaskStatus,
    TaskStep,
};

fn step_from_row(row: &Row<'_>) -> Result<TaskStep> {
    let verdict: String = row.get(4)?;
    Ok(TaskStep {
        at: ms_to_time(row.get(0)?),
        actor: row.get(1)?,
        stage: row
            .get::<Option<i64>>(2)?
            .and_then(|stage| usize::try_from(stage).ok()),
        role: row.get(3)?,
        verdict: verdict.parse().unwrap_or(StepVerdict::Pass),
        to_stage: row
            .get::<Option<i64>>(5)?
            .and_then(|stage| usize::try_from(stage).ok()),
        comments: row.get(6)?,
        summary: row.get(7)?,
    })
}

impl Reader<'_> {
    /// A task's history, oldest first: each stage's verdict and each person's decision.
    pub fn task_steps(&self, id: TaskId) -> Result<Vec<TaskStep>> {
        let rows = self.conn().query_map(
            "SELECT at, actor, stage, role, verdict, to_stage, comments, summary
             FROM task_steps WHERE task_id = ?1 ORDER BY id",
            params![id.0],
            step_from_row,
        )?;
        Ok(rows)
    }

    /// How many tasks wait for a person's decision.
    pub fn approvals_waiting(&self) -> Result<i64> {
        self.conn().query_row(
            "SELECT count(*) FROM tasks WHERE awaiting_approval = 1 AND status = 'review'",
            params![],
            |row| row.get(0),
        )
    }

    /// The tasks waiting for a person's decision, oldest first.
    pub fn tasks_awaiting_approval(&self) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE awaiting_approval = 1 AND status = 'review'
             ORDER BY id"
        );
        let rows = self.conn().query_map(&sql, params![], task_from_row)?;
        let mut tasks: Vec<Task> = rows;
        for task in &mut tasks {
            task.depends_on = self.dependencies(task.id)?;
        }
        Ok(tasks)
    }

    /// The agent that last passed `id` at pipeline stage `stage`: the one a send-back returns to.
    fn stage_holder(&self, id: TaskId, stage: usize) -> Result<Option<String>> {
        self
            .conn()
            .query_row(
                "SELECT actor FROM task_steps WHERE task_id = ?1 AND stage = ?2 AND verdict = 'pass'
                 ORDER BY id DESC LIMIT 1",
                params![id.0, i64::try_from(stage).unwrap_or(i64::MAX)],
                |row| row.get(0),
            )
            .optional()
    }
}

impl Tx<'_> {
    /// The starting state of a task created in pipeline `name`. A role given with it must be the
    /// first stage's (the pipeline decides the role).
    pub(crate) fn start_pipeline(&self, name: &str, role: Option<&str>) -> Result<PipelineState> {
        let pipelines = &self.config().pipelines;
        let Some(pipeline) = pipelines.iter().find(|pipeline| pipeline.name == name) else {
            let known: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
            // Not found, like any other named thing that does not exist: the name itself is
            // well-formed, the configuration just has no such pipeline.
            return Err(CoreError::not_found(format!(
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
        let waiting = TaskWaitingApproval {
            summary,
            files,
            stage: task.pipeline.as_ref().map(|state| state.stage),
            role: task.role.clone(),
        };
        self.emit(
            actor.name(),
            Some(task.id),
            task.assignee.as_deref(),
            EventPayload::TaskWaitingApproval(waiting),
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
            // Finished for good: in a worktree, the task's branch lands first (store/queue.rs).
            if self.lands_through_merge_queue(task)? {
                return self.join_merge_queue(actor, task, summary, files);
            }
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
        let passed = TaskPassed {
            pipeline: next.pipeline.name.clone(),
            from_stage: next.stage - 1,
            stage: next.stage,
            role,
            summary: summary.to_string(),
        };
        self.emit(
            actor,
            Some(task.id),
            task.assignee.as_deref(),
            EventPayload::TaskPassed(passed),
        )?;
        self.release_task_leases(actor, task.id, "stage passed")?;
        // `task.ready` is what offers a task to the agents that fit it.
        self.emit(
            actor,
            Some(task.id),
            None,
            EventPayload::TaskReady(NoData {}),
        )
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
            // The task's state, not the request, is what stands in the way.
            return Err(CoreError::conflict(format!(
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
        let sent_back = TaskSentBack {
            pipeline: next.pipeline.name.clone(),
            from_stage: state.stage,
            stage: target,
            role: role.clone(),
            comments: comments.to_string(),
            send_backs: next.send_backs,
        };
        self.emit(
            actor.name(),
            Some(id),
            task.assignee.as_deref(),
            EventPayload::TaskSentBack(sent_back),
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
                Some(id),
                None,
                EventPayload::TaskBlocked(Reason { reason }),
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
            Some(id),
            holder.as_deref(),
            EventPayload::TaskReady(NoData {}),
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

    /// The merge queue sent `task` back (a conflict or a failing check, `what`): a row of its
    /// history at the stage it stays at, in the queue's name.
    pub(crate) fn record_queue_send_back(&mut self, task: &Task, what: &str) -> Result<()> {
        let comments = format!("the merge queue: its branch {what}");
        self.record_step(
            task,
            crate::model::SYSTEM_NAME,
            StepRecord {
                verdict: StepVerdict::SendBack,
                to_stage: task.pipeline.as_ref().map(|state| state.stage),
                comments: Some(&comments),
                summary: None,
            },
        )
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

    /// Checks a person's decision on a waiting task and records it in the task's history; the
    /// task as it was before the decision.
    fn record_decision(
        &mut self,
        actor: &Actor,
        id: TaskId,
        decision: &TaskDecision,
        verdict: StepVerdict,
        verb: &str,
    ) -> Result<Task> {
        if let Some(comment) = &decision.comment {
            validate_text("comment", comment, MAX_BODY, false)?;
        }
        let task = self.awaiting_decision(actor, id, verb)?;
        self.record_step(
            &task,
            actor.name(),
            StepRecord {
                verdict,
                to_stage: None,
                comments: decision.comment.as_deref(),
                summary: None,
            },
        )?;
        Ok(task)
    }

    /// A person approves a waiting task: it moves on as its agent's pass said (next stage, or
    /// done; in a worktree, into the merge queue, done when its branch lands).
    pub fn approve_task(
        &mut self,
        actor: &Actor,
        id: TaskId,
        decision: TaskDecision,
    ) -> Result<Task> {
        let task = self.record_decision(actor, id, &decision, StepVerdict::Approved, "approve")?;
        self.conn().execute(
            "UPDATE tasks SET awaiting_approval = 0 WHERE id = ?1",
            params![id.0],
        )?;
        self.emit(
            actor.name(),
            Some(id),
            task.assignee.as_deref(),
            EventPayload::TaskApproved(Decision {
                comment: decision.comment.clone(),
            }),
        )?;
        let summary = task.result.clone().unwrap_or_default();
        self.move_on(actor.name(), &task, &summary, &task.files)?;
        self.read().task(id)
    }

    /// A person rejects a waiting task: it goes back `in_progress` to the agent that finished
    /// it, who gets the comment as a message (or to `ready` when that agent is gone).
    pub fn reject_task(
        &mut self,
        actor: &Actor,
        id: TaskId,
        decision: TaskDecision,
    ) -> Result<Task> {
        let task = self.record_decision(actor, id, &decision, StepVerdict::Rejected, "reject")?;
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
            Some(id),
            agent.as_deref(),
            EventPayload::TaskRejected(Decision {
                comment: decision.comment.clone(),
            }),
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
            None => self.emit(
                actor.name(),
                Some(id),
                None,
                EventPayload::TaskReady(NoData {}),
            )?,
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

#[cfg(test)]
mod tests {
    use super::super::{Store, StoreConfig};
    use crate::model::*;

    fn reviewed(max_rounds: u32, approve_at: &[&str]) -> Pipeline {
        Pipeline {
            name: "reviewed".into(),
            stages: ["coder", "reviewer", "tester"]
                .iter()
                .map(|role| PipelineStage {
                    role: role.to_string(),
                    approve: approve_at.contains(role),
                })
                .collect(),
            max_rounds,
        }
    }

    fn store_with(pipelines: Vec<Pipeline>, approve_roles: &[&str]) -> Store {
        let store = Store::open_in_memory(StoreConfig {
            pipelines,
            approve_roles: approve_roles.iter().map(|r| r.to_string()).collect(),
            ..StoreConfig::default()
        })
        .expect("store");
        for (name, role) in [
            ("coder-1", "coder"),
            ("reviewer-1", "reviewer"),
            ("tester-1", "tester"),
        ] {
            store
                .write(|tx| {
                    tx.register_agent(
                        "admin",
                        NewAgent {
                            name: name.into(),
                            role: Some(role.into()),
                            ..NewAgent::default()
                        },
                    )
                })
                .expect("register");
        }
        store
    }

    fn create(store: &Store, new: NewTask) -> crate::error::Result<Task> {
        store.write(|tx| tx.create_task(&Actor::Admin, new))
    }

    fn in_pipeline(store: &Store) -> TaskId {
        create(
            store,
            NewTask {
                title: "parse the config".into(),
                pipeline: Some("reviewed".into()),
                ..NewTask::default()
            },
        )
        .expect("create")
        .id
    }

    /// `agent` claims the next task that fits it and finishes it with `finish`.
    fn take_and_finish(store: &Store, agent: &str, id: TaskId, finish: TaskFinish) -> Task {
        let claimed = store
            .write(|tx| tx.claim_task(agent, None))
            .expect("claim")
            .task
            .expect("a task for the agent");
        assert_eq!(claimed.id, id, "{agent} should get {id}");
        store
            .write(|tx| tx.finish_task(&Actor::Agent(agent.into()), id, finish))
            .expect("finish")
    }

    fn pass(summary: &str) -> TaskFinish {
        TaskFinish {
            summary: Some(summary.into()),
            ..TaskFinish::default()
        }
    }

    fn send_back(comments: &str) -> TaskFinish {
        TaskFinish {
            summary: Some("reviewed".into()),
            verdict: Some(Verdict::SendBack),
            comments: Some(comments.into()),
            ..TaskFinish::default()
        }
    }

    fn kinds(store: &Store, id: TaskId) -> Vec<String> {
        store
            .read(|r| {
                r.events(&EventFilter {
                    task: Some(id),
                    ..EventFilter::default()
                })
            })
            .expect("events")
            .into_iter()
            .map(|event| event.kind().to_string())
            .collect()
    }

    fn inbox(store: &Store, agent: &str) -> Vec<String> {
        store
            .read(|r| r.inbox(agent))
            .expect("inbox")
            .into_iter()
            .map(|message| message.body)
            .collect()
    }

    #[test]
    fn a_pipeline_task_passes_coder_reviewer_tester_carrying_the_summaries() {
        let store = store_with(vec![reviewed(3, &[])], &[]);
        let id = in_pipeline(&store);
        let task = store.read(|r| r.task(id)).expect("task");
        assert_eq!(
            (task.status, task.role.as_deref()),
            (TaskStatus::Ready, Some("coder"))
        );
        // Only the current stage's role may take it.
        assert!(
            store
                .write(|tx| tx.claim_task("reviewer-1", None))
                .expect("claim")
                .task
                .is_none()
        );
        let after_coder = take_and_finish(&store, "coder-1", id, pass("wrote it"));
        assert_eq!(
            (after_coder.status, after_coder.role.as_deref()),
            (TaskStatus::Ready, Some("reviewer"))
        );
        assert_eq!(after_coder.assignee, None);
        // The reviewer's claim shows what the coder said.
        let claim = store
            .write(|tx| tx.claim_task("reviewer-1", None))
            .expect("claim");
        assert_eq!(claim.history.len(), 1);
        assert_eq!(claim.history[0].actor, "coder-1");
        assert_eq!(claim.history[0].summary.as_deref(), Some("wrote it"));
        store
            .write(|tx| tx.finish_task(&Actor::Agent("reviewer-1".into()), id, pass("looks right")))
            .expect("review");
        let done = take_and_finish(&store, "tester-1", id, pass("tests pass"));
        assert_eq!(done.status, TaskStatus::Done);
        assert_eq!(done.result.as_deref(), Some("tests pass"));
        let steps = store.read(|r| r.task_steps(id)).expect("steps");
        let who: Vec<(&str, Option<usize>, StepVerdict)> = steps
            .iter()
            .map(|step| (step.actor.as_str(), step.stage, step.verdict))
            .collect();
        assert_eq!(
            who,
            [
                ("coder-1", Some(0), StepVerdict::Pass),
                ("reviewer-1", Some(1), StepVerdict::Pass),
                ("tester-1", Some(2), StepVerdict::Pass),
            ]
        );
        let kinds = kinds(&store, id);
        assert_eq!(
            kinds.iter().filter(|kind| *kind == "task.passed").count(),
            2
        );
        assert_eq!(kinds.last().map(String::as_str), Some("task.done"));
    }

    #[test]
    fn a_send_back_returns_to_the_coder_with_the_comments_then_passes() {
        let store = store_with(vec![reviewed(3, &[])], &[]);
        let id = in_pipeline(&store);
        take_and_finish(&store, "coder-1", id, pass("first try"));
        let back = take_and_finish(&store, "reviewer-1", id, send_back("handle empty input"));
        assert_eq!(
            (back.status, back.role.as_deref(), back.assignee.as_deref()),
            (TaskStatus::Ready, Some("coder"), Some("coder-1"))
        );
        assert_eq!(
            back.pipeline.as_ref().map(|p| (p.stage, p.send_backs)),
            Some((0, 1))
        );
        let told = inbox(&store, "coder-1");
        assert!(
            told.iter()
                .any(|body| body.contains("handle empty input") && body.contains("reviewer-1")),
            "{told:?}"
        );
        // The coder answers and passes it; it goes to review again, then on.
        take_and_finish(&store, "coder-1", id, pass("empty input handled"));
        take_and_finish(&store, "reviewer-1", id, pass("good now"));
        let done = take_and_finish(&store, "tester-1", id, pass("green"));
        assert_eq!(done.status, TaskStatus::Done);
        let steps = store.read(|r| r.task_steps(id)).expect("steps");
        let sent_back = steps
            .iter()
            .find(|step| step.verdict == StepVerdict::SendBack)
            .expect("the send-back is recorded");
        assert_eq!(
            (
                sent_back.stage,
                sent_back.to_stage,
                sent_back.comments.as_deref()
            ),
            (Some(1), Some(0), Some("handle empty input"))
        );
        assert!(kinds(&store, id).contains(&"task.sent_back".to_string()));
    }

    #[test]
    fn a_send_back_may_name_an_earlier_stage_but_not_a_later_one_and_needs_comments() {
        let store = store_with(vec![reviewed(3, &[])], &[]);
        let id = in_pipeline(&store);
        take_and_finish(&store, "coder-1", id, pass("code"));
        take_and_finish(&store, "reviewer-1", id, pass("ok"));
        store
            .write(|tx| tx.claim_task("tester-1", Some(id)))
            .expect("claim");
        let tester = Actor::Agent("tester-1".into());
        let mut to_tester = send_back("x");
        to_tester.to_stage = Some("tester".into());
        let error = store
            .write(|tx| tx.finish_task(&tester, id, to_tester))
            .expect_err("not earlier");
        assert!(error.to_string().contains("coder, reviewer"), "{error}");
        let error = store
            .write(|tx| tx.finish_task(&tester, id, send_back("  ")))
            .expect_err("no comments");
        assert!(error.to_string().contains("comments"), "{error}");
        let mut to_coder = send_back("the parser fails on tabs");
        to_coder.to_stage = Some("coder".into());
        let back = store
            .write(|tx| tx.finish_task(&tester, id, to_coder))
            .expect("send back to the coder");
        assert_eq!(
            (back.role.as_deref(), back.assignee.as_deref()),
            (Some("coder"), Some("coder-1"))
        );
    }

    #[test]
    fn the_first_stage_and_plain_tasks_cannot_send_back() {
        let store = store_with(vec![reviewed(3, &[])], &[]);
        let id = in_pipeline(&store);
        store
            .write(|tx| tx.claim_task("coder-1", Some(id)))
            .expect("claim");
        let error = store
            .write(|tx| tx.finish_task(&Actor::Agent("coder-1".into()), id, send_back("x")))
            .expect_err("first stage");
        assert!(error.to_string().contains("first stage"), "{error}");
        let plain = create(
            &store,
            NewTask {
                title: "plain".into(),
                ..NewTask::default()
            },
        )
        .expect("create")
        .id;
        store
            .write(|tx| tx.claim_task("coder-1", Some(plain)))
            .expect("claim");
        let error = store
            .write(|tx| tx.finish_task(&Actor::Agent("coder-1".into()), plain, send_back("x")))
            .expect_err("no pipeline");
        assert!(error.to_string().contains("not in a pipeline"), "{error}");
    }

    #[test]
    fn reaching_max_rounds_blocks_the_task_for_a_person_with_the_whole_exchange() {
        let store = store_with(vec![reviewed(2, &[])], &[]);
        let id = in_pipeline(&store);
        take_and_finish(&store, "coder-1", id, pass("v1"));
        take_and_finish(&store, "reviewer-1", id, send_back("round one: naming"));
        take_and_finish(&store, "coder-1", id, pass("v2"));
        let blocked = take_and_finish(
            &store,
            "reviewer-1",
            id,
            send_back("round two: still wrong"),
        );
        assert_eq!(blocked.status, TaskStatus::Blocked);
        assert_eq!(blocked.assignee, None);
        let reason = blocked.blocked_reason.clone().expect("a reason");
        assert!(reason.contains("max_rounds 2"), "{reason}");
        assert!(!crate::store::is_held(&blocked));
        // Nobody can claim it; the coder is not woken for it.
        assert!(
            store
                .write(|tx| tx.claim_task("coder-1", None))
                .expect("claim")
                .task
                .is_none()
        );
        assert!(
            !inbox(&store, "coder-1")
                .iter()
                .any(|body| body.contains("round two"))
        );
        let exchange: Vec<(String, StepVerdict, Option<String>)> = store
            .read(|r| r.task_steps(id))
            .expect("steps")
            .into_iter()
            .map(|step| (step.actor, step.verdict, step.comments))
            .collect();
        assert_eq!(exchange.len(), 4);
        assert_eq!(
            exchange[3],
            (
                "reviewer-1".to_string(),
                StepVerdict::SendBack,
                Some("round two: still wrong".to_string())
            )
        );
        assert!(kinds(&store, id).contains(&"task.blocked".to_string()));
        // A person steps in by giving it to an agent: the rounds start over.
        let given = store
            .write(|tx| {
                tx.assign_task(
                    &Actor::Admin,
                    id,
                    TaskAssign {
                        agent: "coder-1".into(),
                    },
                )
            })
            .expect("assign");
        assert_eq!(given.status, TaskStatus::Claimed);
        assert!(crate::store::is_held(&given));
        assert_eq!(given.pipeline.map(|p| p.send_backs), Some(0));
    }

    #[test]
    fn an_approval_task_waits_for_a_person_until_approved() {
        let store = store_with(Vec::new(), &[]);
        let id = create(
            &store,
            NewTask {
                title: "migrate the database".into(),
                approve: true,
                ..NewTask::default()
            },
        )
        .expect("create")
        .id;
        let waiting = take_and_finish(&store, "coder-1", id, pass("migrated"));
        assert_eq!(waiting.status, TaskStatus::Review);
        assert!(waiting.awaiting_approval);
        assert_eq!(
            waiting.claim_expires_at, None,
            "no lease runs out while a person decides"
        );
        assert!(!crate::store::is_held(&waiting));
        assert_eq!(store.read(|r| r.approvals_waiting()).expect("count"), 1);
        // Releasing the agent (its process died) does not take the decision away.
        store
            .write(|tx| tx.release_agent("conclave", "coder-1", "process ended"))
            .expect("release");
        assert_eq!(
            store.read(|r| r.task(id)).expect("task").status,
            TaskStatus::Review
        );
        let approved = store
            .write(|tx| {
                tx.approve_task(
                    &Actor::Admin,
                    id,
                    TaskDecision {
                        comment: Some("fine".into()),
                    },
                )
            })
            .expect("approve");
        assert_eq!(approved.status, TaskStatus::Done);
        assert_eq!(approved.result.as_deref(), Some("migrated"));
        assert!(!approved.awaiting_approval);
        assert_eq!(store.read(|r| r.approvals_waiting()).expect("count"), 0);
        let kinds = kinds(&store, id);
        for kind in ["task.waiting_approval", "task.approved", "task.done"] {
            assert!(kinds.contains(&kind.to_string()), "{kind} in {kinds:?}");
        }
    }

    #[test]
    fn a_rejected_task_returns_to_its_agent_with_the_comment() {
        let store = store_with(Vec::new(), &["coder"]);
        let id = create(
            &store,
            NewTask {
                title: "rename the module".into(),
                role: Some("coder".into()),
                ..NewTask::default()
            },
        )
        .expect("create")
        .id;
        let waiting = take_and_finish(&store, "coder-1", id, pass("renamed"));
        assert!(waiting.awaiting_approval, "the role needs approval");
        let rejected = store
            .write(|tx| {
                tx.reject_task(
                    &Actor::Admin,
                    id,
                    TaskDecision {
                        comment: Some("keep the old name as an alias".into()),
                    },
                )
            })
            .expect("reject");
        assert_eq!(
            (rejected.status, rejected.assignee.as_deref()),
            (TaskStatus::InProgress, Some("coder-1"))
        );
        assert!(crate::store::is_held(&rejected));
        assert!(
            inbox(&store, "coder-1")
                .iter()
                .any(|body| body.contains("keep the old name as an alias"))
        );
        // Finishing again waits again.
        let again = store
            .write(|tx| tx.finish_task(&Actor::Agent("coder-1".into()), id, pass("aliased")))
            .expect("finish");
        assert!(again.awaiting_approval);
        let verdicts: Vec<StepVerdict> = store
            .read(|r| r.task_steps(id))
            .expect("steps")
            .into_iter()
            .map(|step| step.verdict)
            .collect();
        assert_eq!(
            verdicts,
            [StepVerdict::Pass, StepVerdict::Rejected, StepVerdict::Pass]
        );
    }

    #[test]
    fn an_agent_cannot_approve_or_reject() {
        let store = store_with(Vec::new(), &[]);
        let id = create(
            &store,
            NewTask {
                title: "t".into(),
                approve: true,
                ..NewTask::default()
            },
        )
        .expect("create")
        .id;
        take_and_finish(&store, "coder-1", id, pass("done"));
        for agent in ["coder-1", "reviewer-1"] {
            let actor = Actor::Agent(agent.into());
            let error = store
                .write(|tx| tx.approve_task(&actor, id, TaskDecision::default()))
                .expect_err("approve");
            assert!(
                matches!(error, crate::error::CoreError::Forbidden(_)),
                "{error}"
            );
            store
                .write(|tx| tx.reject_task(&actor, id, TaskDecision::default()))
                .expect_err("reject");
            // Nor finish it again on its own.
            store
                .write(|tx| tx.finish_task(&actor, id, pass("again")))
                .expect_err("not held");
        }
        assert!(store.read(|r| r.task(id)).expect("task").awaiting_approval);
        // A task that waits for nothing cannot be approved.
        let plain = create(
            &store,
            NewTask {
                title: "u".into(),
                ..NewTask::default()
            },
        )
        .expect("create")
        .id;
        store
            .write(|tx| tx.approve_task(&Actor::Admin, plain, TaskDecision::default()))
            .expect_err("nothing to approve");
    }

    #[test]
    fn an_approval_stage_waits_then_moves_to_the_next_stage() {
        let store = store_with(vec![reviewed(3, &["reviewer"])], &[]);
        let id = in_pipeline(&store);
        let after_coder = take_and_finish(&store, "coder-1", id, pass("code"));
        assert!(
            !after_coder.awaiting_approval,
            "the coder stage needs no person"
        );
        let waiting = take_and_finish(&store, "reviewer-1", id, pass("approve this"));
        assert!(waiting.awaiting_approval);
        assert_eq!(waiting.role.as_deref(), Some("reviewer"));
        let waiting_list = store.read(|r| r.tasks_awaiting_approval()).expect("list");
        assert_eq!(waiting_list.iter().map(|t| t.id).collect::<Vec<_>>(), [id]);
        let moved = store
            .write(|tx| tx.approve_task(&Actor::Admin, id, TaskDecision::default()))
            .expect("approve");
        assert_eq!(
            (moved.status, moved.role.as_deref()),
            (TaskStatus::Ready, Some("tester"))
        );
        let done = take_and_finish(&store, "tester-1", id, pass("ok"));
        assert_eq!(done.status, TaskStatus::Done);
    }

    #[test]
    fn a_reopened_pipeline_task_starts_again_at_the_first_stage() {
        let store = store_with(vec![reviewed(3, &[])], &[]);
        let id = in_pipeline(&store);
        take_and_finish(&store, "coder-1", id, pass("a"));
        take_and_finish(&store, "reviewer-1", id, pass("b"));
        take_and_finish(&store, "tester-1", id, pass("c"));
        let reopened = store
            .write(|tx| tx.reopen_task(&Actor::Admin, id, Some("regressed".into())))
            .expect("reopen");
        assert_eq!(
            (reopened.status, reopened.role.as_deref()),
            (TaskStatus::Ready, Some("coder"))
        );
        assert_eq!(reopened.pipeline.map(|p| p.stage), Some(0));
    }

    #[test]
    fn unknown_pipelines_and_contradicting_roles_are_refused() {
        let store = store_with(vec![reviewed(3, &[])], &[]);
        let error = create(
            &store,
            NewTask {
                title: "t".into(),
                pipeline: Some("nope".into()),
                ..NewTask::default()
            },
        )
        .expect_err("unknown");
        assert!(error.to_string().contains("reviewed"), "{error}");
        create(
            &store,
            NewTask {
                title: "t".into(),
                pipeline: Some("reviewed".into()),
                role: Some("tester".into()),
                ..NewTask::default()
            },
        )
        .expect_err("role contradicts the first stage");
    }
}
