//! Tasks: the dependency DAG, readiness, atomic claims under a lease, and the status machine.
//!
//! Transitions (admin may do what a holder may):
//! `pending → ready` when every dependency is done; `ready → claimed` by `claim`;
//! `claimed|in_progress|blocked|review` among themselves by the holder's `update`;
//! held → `done` / `failed` by the holder; anything unfinished → `cancelled`;
//! held → `ready` when the claim lease expires or the holder is released (attempts + 1);
//! `done|failed|cancelled → ready|pending` by `reopen`.

use std::collections::{BTreeSet, HashSet};

use super::db::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{
    Reader, Tx, json_list, ms_to_time, opt_time, to_json_list, validate_name, validate_text,
};
use crate::error::{CoreError, Result};
use crate::event::{
    NoData, OptionalReason, Reason, TaskAssigned, TaskClaimed, TaskCreated, TaskDone, TaskEdited,
    TaskReopened, TaskUpdated,
};
use crate::model::EventPayload;
use crate::model::{
    Actor, Agent, MessageKind, NewMessage, NewTask, PipelineState, Task, TaskAssign, TaskEdit,
    TaskFinish, TaskId, TaskStatus, TaskStatusUpdate, TaskStep, Verdict,
};

pub(crate) const TASK_COLUMNS: &str = "id, title, body, status, priority, role, caps, assignee, \
    claim_expires_at, attempts, result, files, parent, created_by, created_at, updated_at, \
    blocked_reason, pipeline, approve, awaiting_approval, cost_usd";

const MAX_TITLE: usize = 200;
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Files one `done` may list (each a path of at most [`MAX_FILE_PATH`] bytes).
pub const MAX_FILES: usize = 1000;
const MAX_FILE_PATH: usize = 4096;

/// The most tasks one page (or the finished part of [`Reader::open_and_recent_tasks`]) holds.
const MAX_TASK_PAGE: i64 = 1000;
/// Up to this many tasks, dependencies are looked up task by task rather than by reading every
/// dependency edge.
const DEPENDENCY_LOOKUPS_MAX: usize = 2000;

/// Which page of tasks [`Reader::task_page`] reads.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    pub status: Option<TaskStatus>,
    pub assignee: Option<String>,
    /// Tasks with an id above this one (the last id of the previous page); none for the first.
    pub after: Option<TaskId>,
    /// At most this many (1 to 1,000).
    pub limit: i64,
}

/// The answer to a claim: the task taken, or nothing when no ready task fits.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClaimOutcome {
    pub task: Option<Task>,
    /// The task's history so far: the earlier stages' verdicts and summaries, send-backs with
    /// their comments, a person's decisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TaskStep>,
}

pub(crate) fn task_from_row(row: &Row<'_>) -> Result<Task> {
    let status: String = row.get(3)?;
    Ok(Task {
        id: TaskId(row.get(0)?),
        title: row.get(1)?,
        body: row.get(2)?,
        status: status.parse().unwrap_or(TaskStatus::Pending),
        priority: row.get(4)?,
        role: row.get(5)?,
        caps: json_list(&row.get::<String>(6)?),
        depends_on: Vec::new(),
        assignee: row.get(7)?,
        claim_expires_at: opt_time(row.get(8)?),
        attempts: row.get(9)?,
        result: row.get(10)?,
        blocked_reason: row.get(16)?,
        files: json_list(&row.get::<String>(11)?),
        parent: row.get::<Option<i64>>(12)?.map(TaskId),
        created_by: row.get(13)?,
        created_at: ms_to_time(row.get(14)?),
        updated_at: ms_to_time(row.get(15)?),
        pipeline: row
            .get::<Option<String>>(17)?
            .and_then(|text| serde_json::from_str(&text).ok()),
        approve: row.get(18)?,
        awaiting_approval: row.get(19)?,
        cost_usd: row.get(20)?,
        // Read from the event log by the task API when it shows one task.
        dependency_changes: Vec::new(),
    })
}

/// A finish's summary (empty when none), after checking it and its file list against the limits.
pub(crate) fn validated_summary(finish: &TaskFinish, max_summary: usize) -> Result<String> {
    let summary = finish.summary.clone().unwrap_or_default();
    validate_text("summary", &summary, max_summary, false)?;
    if finish.files.len() > MAX_FILES {
        return Err(CoreError::invalid(format!(
            "{} files listed; the limit is {MAX_FILES} (list the directories instead)",
            finish.files.len()
        )));
    }
    for file in &finish.files {
        validate_text("file", file, MAX_FILE_PATH, true)?;
    }
    Ok(summary)
}

/// Whether an agent holds `task`: claimed, in progress, in review, or blocked by its holder. A
/// task the server blocked (a dependency failed, or its pipeline's send-backs ran out) is not
/// held, nor is one waiting for a person's approval (a reservation or the agent that finished it
/// may be named all the same).
pub fn is_held(task: &Task) -> bool {
    task.status.is_held() && !is_blocked_by_server(task) && !task.awaiting_approval
}

fn is_blocked_by_server(task: &Task) -> bool {
    task.status == TaskStatus::Blocked && task.blocked_reason.is_some()
}

/// Blocked because a dependency failed or was cancelled: it waits again by itself when the
/// dependency is reopened. A pipeline task whose send-backs ran out waits for a person instead.
pub(crate) fn is_blocked_by_dependency(task: &Task) -> bool {
    is_blocked_by_server(task)
        && !task
            .pipeline
            .as_ref()
            .is_some_and(PipelineState::rounds_exhausted)
}

impl Reader<'_> {
    pub fn task(&self, id: TaskId) -> Result<Task> {
        self.find_task(id)?
            .ok_or_else(|| CoreError::not_found(format!("no task {id}")))
    }

    pub fn find_task(&self, id: TaskId) -> Result<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        let task = self
            .conn()
            .query_row(&sql, params![id.0], task_from_row)
            .optional()?;
        match task {
            Some(mut task) => {
                task.depends_on = self.dependencies(id)?;
                Ok(Some(task))
            }
            None => Ok(None),
        }
    }

    /// Tasks, optionally of one status or held by one agent, in id order. Unbounded: listings
    /// that grow with history use [`Reader::task_page`] or [`Reader::open_and_recent_tasks`].
    pub fn tasks(&self, status: Option<TaskStatus>, assignee: Option<&str>) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR assignee = ?2) ORDER BY id"
        );
        let rows = self.conn().query_map(
            &sql,
            params![status.map(TaskStatus::as_str), assignee],
            task_from_row,
        )?;
        let mut tasks: Vec<Task> = rows;
        self.attach_dependencies(&mut tasks)?;
        Ok(tasks)
    }

    /// One page of tasks in id order: at most `page.limit` (1 to 1,000) with an id above
    /// `page.after`, optionally of one status or assignee. Costs what the page holds, found
    /// through the primary key (and the status or assignee index), however long the history.
    pub fn task_page(&self, page: &TaskPage) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE id > ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR assignee = ?3)
             ORDER BY id LIMIT ?4"
        );
        let rows = self.conn().query_map(
            &sql,
            params![
                page.after.map_or(0, |id| id.0),
                page.status.map(TaskStatus::as_str),
                page.assignee,
                page.limit.clamp(1, MAX_TASK_PAGE)
            ],
            task_from_row,
        )?;
        let mut tasks: Vec<Task> = rows;
        self.attach_dependencies(&mut tasks)?;
        Ok(tasks)
    }

    /// What a dashboard shows: every unfinished task, every failed one (work left until reopened
    /// or cancelled), and the `finished` (at most 1,000) most recently done or cancelled ones, all
    /// in id order. Its cost follows the
    /// open work, not the history: both halves are read through indexes.
    pub fn open_and_recent_tasks(&self, finished: i64) -> Result<Vec<Task>> {
        let open = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE status IN ('pending', 'ready', 'claimed', 'in_progress', 'blocked', 'review',
                              'failed')"
        );
        // Walks the partial index of finished tasks (schema migration 3) backwards and stops after
        // `finished` rows; without `INDEXED BY`, SQLite (no statistics) picks the status index
        // and sorts every finished task. The WHERE term is the index's own, as it must be.
        let recent = format!(
            "SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_finished_by_update
             WHERE status IN ('done', 'failed', 'cancelled')
             ORDER BY updated_at DESC, id DESC LIMIT ?1"
        );
        let mut tasks: Vec<Task> = { self.conn().query_map(&open, params![], task_from_row)? };
        {
            let rows = self.conn().query_map(
                &recent,
                params![finished.clamp(0, MAX_TASK_PAGE)],
                task_from_row,
            )?;
            // Failed tasks are work left until someone reopens or cancels them (the supervisor's
            // outcome names them), so all of them are in the open list already.
            for task in rows {
                if task.status != TaskStatus::Failed {
                    tasks.push(task);
                }
            }
        }
        tasks.sort_by_key(|task| task.id);
        self.attach_dependencies(&mut tasks)?;
        Ok(tasks)
    }

    /// How many tasks are in each status (every status listed, zeros included), read from the
    /// counts the database keeps as tasks change (schema migration 8): one row per status,
    /// however long the history.
    pub fn task_status_counts(&self) -> Result<Vec<(TaskStatus, usize)>> {
        self.status_counts("SELECT status, tasks FROM task_status_counts")
    }

    /// The same counts as [`Reader::task_status_counts`], counted over every task: what the
    /// kept counts must always equal (checked by `store migrate` and the tests).
    pub fn task_status_counts_by_scan(&self) -> Result<Vec<(TaskStatus, usize)>> {
        self.status_counts("SELECT status, count(*) FROM tasks GROUP BY status")
    }

    fn status_counts(&self, sql: &str) -> Result<Vec<(TaskStatus, usize)>> {
        let rows = self.conn().query_map(sql, params![], |row| {
            Ok((row.get::<String>(0)?, row.get::<i64>(1)?))
        })?;
        let mut counts: Vec<(TaskStatus, usize)> =
            TaskStatus::ALL.iter().map(|status| (*status, 0)).collect();
        for row in rows {
            let (status, count) = row;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
                slot.1 = usize::try_from(count).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    /// Fills in `depends_on` for `tasks`: through the edges' primary key, task by task, for a few;
    /// in one pass over the edges for many.
    fn attach_dependencies(&self, tasks: &mut [Task]) -> Result<()> {
        if self.conn().is_postgres() && tasks.len() > 1 {
            // A lookup per task would be a network round trip per task: one query instead.
            return self.attach_dependencies_at_once(tasks);
        }
        if tasks.len() <= DEPENDENCY_LOOKUPS_MAX {
            for task in tasks.iter_mut() {
                task.depends_on = self.dependencies(task.id)?;
            }
            return Ok(());
        }
        let edges = self.conn().query_map(
            "SELECT task_id, depends_on FROM task_deps ORDER BY depends_on",
            params![],
            |row| Ok((row.get::<i64>(0)?, row.get::<i64>(1)?)),
        )?;
        let mut by_task: std::collections::HashMap<i64, Vec<TaskId>> = Default::default();
        for edge in edges {
            let (task, dep) = edge;
            by_task.entry(task).or_default().push(TaskId(dep));
        }
        for task in tasks.iter_mut() {
            task.depends_on = by_task.remove(&task.id.0).unwrap_or_default();
        }
        Ok(())
    }

    /// [`Reader::attach_dependencies`] in one query over the tasks' ids (PostgreSQL).
    fn attach_dependencies_at_once(&self, tasks: &mut [Task]) -> Result<()> {
        let ids: Vec<i64> = tasks.iter().map(|task| task.id.0).collect();
        let edges = self.conn().query_map(
            "SELECT task_id, depends_on FROM task_deps
             WHERE task_id = ANY (ARRAY(SELECT jsonb_array_elements_text(?1::jsonb)::bigint))
             ORDER BY depends_on",
            params![serde_json::to_string(&ids)?],
            |row| Ok((row.get::<i64>(0)?, row.get::<i64>(1)?)),
        )?;
        let mut by_task: std::collections::HashMap<i64, Vec<TaskId>> = Default::default();
        for (task, dep) in edges {
            by_task.entry(task).or_default().push(TaskId(dep));
        }
        for task in tasks.iter_mut() {
            task.depends_on = by_task.remove(&task.id.0).unwrap_or_default();
        }
        Ok(())
    }

    pub fn dependencies(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.id_list(
            "SELECT depends_on FROM task_deps WHERE task_id = ?1 ORDER BY depends_on",
            id,
        )
    }

    pub fn dependents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.id_list(
            "SELECT task_id FROM task_deps WHERE depends_on = ?1 ORDER BY task_id",
            id,
        )
    }

    fn id_list(&self, sql: &str, id: TaskId) -> Result<Vec<TaskId>> {
        let rows = self
            .conn()
            .query_map(sql, params![id.0], |row| row.get(0).map(TaskId))?;
        Ok(rows)
    }

    /// Tasks held by an agent (claimed, in progress, in review or blocked).
    pub fn held_tasks(&self, agent: &str) -> Result<Vec<Task>> {
        // Through the assignee index and the held statuses only: a lease, a note and a hook ask
        // this on every request, and an agent's finished tasks (which keep their assignee) grow
        // with history. (`tasks()`'s optional filters cannot use an index.)
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE assignee = ?1 AND status IN ('claimed', 'in_progress', 'review', 'blocked')
             ORDER BY id"
        );
        let mut tasks: Vec<Task> = self.conn().query_map(&sql, params![agent], task_from_row)?;
        tasks.retain(is_held);
        self.attach_dependencies(&mut tasks)?;
        Ok(tasks)
    }

    /// Every task in someone's hands (claimed, in progress, in review or blocked), by id,
    /// without its dependencies: who works on what, for the `status` tool's team lines. It walks
    /// the status index, so its cost follows the tasks in hand, not the history.
    pub fn tasks_in_hand(&self) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE status IN ('claimed', 'in_progress', 'review', 'blocked')
             ORDER BY id"
        );
        self.conn().query_map(&sql, params![], task_from_row)
    }

    /// The first task (by id) that `agent` holds, as [`Reader::held_tasks`] orders them: the
    /// task a lease, a note or a cost is attributed to. It stops at the first held row and loads
    /// no dependencies, since a lease grant asks this under the writer lock.
    pub fn first_held_task(&self, agent: &str) -> Result<Option<TaskId>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE assignee = ?1 AND status IN ('claimed', 'in_progress', 'review', 'blocked')
             ORDER BY id"
        );
        self.conn().query_first(&sql, params![agent], |row| {
            let task = task_from_row(row)?;
            Ok(is_held(&task).then_some(task.id))
        })
    }

    /// The highest-priority (then oldest) ready task that fits `agent`, walking the ready queue
    /// in order on its index and stopping at the first fit.
    fn best_ready_task(&self, agent: &Agent) -> Result<Option<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE status = 'ready' ORDER BY priority DESC, id ASC"
        );
        self.conn().query_first(&sql, params![], |row| {
            let task = task_from_row(row)?;
            Ok(task
                .fits(&agent.name, agent.role.as_deref(), &agent.caps)
                .then_some(task))
        })
    }

    /// Unfinished dependencies of a task, with their status, for "not ready" explanations.
    fn blocking_dependencies(&self, id: TaskId) -> Result<Vec<(TaskId, TaskStatus)>> {
        let mut out = Vec::new();
        for dep in self.dependencies(id)? {
            let status = self.task(dep)?.status;
            if status != TaskStatus::Done {
                out.push((dep, status));
            }
        }
        Ok(out)
    }

    /// Whether `from` can reach `target` by following "depends on" edges.
    fn depends_transitively(&self, from: TaskId, target: TaskId) -> Result<bool> {
        let mut stack = vec![from];
        let mut seen = HashSet::new();
        while let Some(current) = stack.pop() {
            if current == target {
                return Ok(true);
            }
            if seen.insert(current) {
                stack.extend(self.dependencies(current)?);
            }
        }
        Ok(false)
    }
}

impl Tx<'_> {
    pub fn create_task(&mut self, actor: &Actor, new: NewTask) -> Result<Task> {
        let title = new.title.trim().to_string();
        validate_text("title", &title, MAX_TITLE, true)?;
        let body = new.body.unwrap_or_default();
        validate_text("body", &body, MAX_BODY, false)?;
        if let Some(role) = &new.role {
            validate_name("role", role)?;
        }
        for cap in &new.caps {
            validate_name("capability", cap)?;
        }
        let deps: BTreeSet<TaskId> = new.after.iter().copied().collect();
        for dep in &deps {
            self.read().task(*dep)?;
        }
        if let Some(parent) = new.parent {
            self.read().task(parent)?;
        }
        let pipeline = match &new.pipeline {
            Some(name) => Some(self.start_pipeline(name, new.role.as_deref())?),
            None => None,
        };
        let role = match &pipeline {
            Some(state) => state.current().map(|stage| stage.role.clone()),
            None => new.role.clone(),
        };
        let now = self.now_ms();
        let id = TaskId(self.conn().insert(
            "INSERT INTO tasks (title, body, status, priority, role, caps, parent, created_by,
                created_at, updated_at, pipeline, approve)
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
            params![
                title,
                body,
                new.priority.unwrap_or(0),
                role,
                to_json_list(&new.caps)?,
                new.parent.map(|p| p.0),
                actor.name(),
                now,
                pipeline.as_ref().map(serde_json::to_string).transpose()?,
                new.approve
            ],
            "id",
        )?);
        for dep in &deps {
            self.conn().execute(
                "INSERT INTO task_deps (task_id, depends_on) VALUES (?1, ?2)",
                params![id.0, dep.0],
            )?;
        }
        let created = TaskCreated {
            title,
            after: deps.iter().copied().collect(),
            role: role.clone(),
            priority: new.priority.unwrap_or(0),
            pipeline: new.pipeline.clone(),
            approve: new.approve,
        };
        self.emit(
            actor.name(),
            Some(id),
            None,
            EventPayload::TaskCreated(created),
        )?;
        self.refresh_readiness(actor.name(), id)?;
        self.read().task(id)
    }

    /// Moves a pending task to ready when all its dependencies are done, and a ready (unheld)
    /// task back to pending when one is not. A waiting task whose dependency failed or was
    /// cancelled can never become ready by itself: it becomes `blocked` with the reason, and its
    /// creator (and the agent it is reserved for) is told; it waits again when that dependency
    /// is reopened.
    pub(crate) fn refresh_readiness(&mut self, actor: &str, id: TaskId) -> Result<()> {
        let task = self.read().task(id)?;
        let blocking = self.read().blocking_dependencies(id)?;
        let dead: Vec<String> = blocking
            .iter()
            .filter(|(_, status)| matches!(status, TaskStatus::Failed | TaskStatus::Cancelled))
            .map(|(dep, status)| format!("{dep} {status}"))
            .collect();
        let unheld_waiting = task.status == TaskStatus::Pending || is_blocked_by_dependency(&task);
        if (unheld_waiting || task.status == TaskStatus::Ready) && !dead.is_empty() {
            let reason = format!("dependency {}", dead.join(", "));
            if task.blocked_reason.as_deref() == Some(reason.as_str()) {
                return Ok(());
            }
            self.conn().execute(
                "UPDATE tasks SET status = 'blocked', blocked_reason = ?2, updated_at = ?3
                 WHERE id = ?1",
                params![id.0, reason, self.now_ms()],
            )?;
            let blocked = Reason {
                reason: reason.clone(),
            };
            self.emit(
                actor,
                Some(id),
                task.assignee.as_deref(),
                EventPayload::TaskBlocked(blocked),
            )?;
            let body = format!(
                "{id} \"{}\" is blocked: its {reason}, so it can never become ready by itself. \
                 Reopen the dependency, edit {id}'s dependencies, or cancel it.",
                task.title
            );
            let mut told = Vec::new();
            for agent in [Some(task.created_by.as_str()), task.assignee.as_deref()]
                .into_iter()
                .flatten()
            {
                if !told.contains(&agent) && self.read().find_agent(agent)?.is_some() {
                    self.notify(agent, &body)?;
                    told.push(agent);
                }
            }
            return Ok(());
        }
        let waiting = !blocking.is_empty();
        let next = match (task.status, waiting) {
            (TaskStatus::Pending, false) => TaskStatus::Ready,
            (TaskStatus::Ready, true) => TaskStatus::Pending,
            (TaskStatus::Blocked, waiting) if is_blocked_by_dependency(&task) => {
                if waiting {
                    TaskStatus::Pending
                } else {
                    TaskStatus::Ready
                }
            }
            _ => return Ok(()),
        };
        self.conn().execute(
            "UPDATE tasks SET status = ?2, blocked_reason = NULL, updated_at = ?3 WHERE id = ?1",
            params![id.0, next.as_str(), self.now_ms()],
        )?;
        let kind = if next == TaskStatus::Ready {
            EventPayload::TaskReady(NoData {})
        } else {
            EventPayload::TaskPending(NoData {})
        };
        self.emit(actor, Some(id), task.assignee.as_deref(), kind)
    }

    fn set_status(&mut self, id: TaskId, status: TaskStatus) -> Result<()> {
        self.conn().execute(
            "UPDATE tasks SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id.0, status.as_str(), self.now_ms()],
        )?;
        Ok(())
    }

    /// Claims a task for `agent`: the one named, or the highest-priority ready task that fits.
    pub fn claim_task(&mut self, agent: &str, id: Option<TaskId>) -> Result<ClaimOutcome> {
        let me = self.read().agent(agent)?;
        let task = match id {
            Some(id) => {
                let task = self.read().task(id)?;
                self.check_claimable(&task, &me)?;
                task
            }
            None => match self.read().best_ready_task(&me)? {
                Some(task) => task,
                None => {
                    return Ok(ClaimOutcome {
                        task: None,
                        history: Vec::new(),
                    });
                }
            },
        };
        let expires = self.now_ms() + self.config().claim_ttl_secs * 1000;
        // The status guard makes the claim atomic even if two writers raced past the checks.
        let changed = self.conn().execute(
            "UPDATE tasks SET status = 'claimed', assignee = ?2, claim_expires_at = ?3, updated_at = ?4
             WHERE id = ?1 AND status = 'ready'",
            params![task.id.0, agent, expires, self.now_ms()],
        )?;
        if changed != 1 {
            return Err(CoreError::conflict(format!(
                "{} was claimed by someone else",
                task.id
            )));
        }
        let claimed = TaskClaimed {
            title: task.title.clone(),
            attempts: task.attempts,
        };
        self.emit(
            agent,
            Some(task.id),
            Some(agent),
            EventPayload::TaskClaimed(claimed),
        )?;
        Ok(ClaimOutcome {
            task: Some(self.read().task(task.id)?),
            history: self.read().task_steps(task.id)?,
        })
    }

    fn check_claimable(&self, task: &Task, me: &Agent) -> Result<()> {
        match task.status {
            TaskStatus::Ready => {}
            status if is_held(task) => {
                let holder = task.assignee.as_deref().unwrap_or("another agent");
                let whose = if holder == me.name {
                    "you already hold it"
                } else {
                    holder
                };
                return Err(CoreError::conflict(format!(
                    "{} is already {status} by {whose}",
                    task.id
                )));
            }
            TaskStatus::Pending => {
                let waits: Vec<String> = self
                    .read()
                    .blocking_dependencies(task.id)?
                    .iter()
                    .map(|(id, status)| format!("{id} ({status})"))
                    .collect();
                return Err(CoreError::NotReady(format!(
                    "{} is not ready: it waits on {}",
                    task.id,
                    waits.join(", ")
                )));
            }
            status => {
                return Err(CoreError::NotReady(format!(
                    "{} is {status}; only ready tasks can be claimed",
                    task.id
                )));
            }
        }
        if !task.fits(&me.name, me.role.as_deref(), &me.caps) {
            let mut needs = Vec::new();
            if let Some(role) = &task.role {
                needs.push(format!("role {role}"));
            }
            if !task.caps.is_empty() {
                needs.push(format!("capabilities {}", task.caps.join(", ")));
            }
            if let Some(assignee) = &task.assignee {
                needs.push(format!("to be {assignee} (it is assigned)"));
            }
            return Err(CoreError::forbidden(format!(
                "{} needs {}; {} has role {} and capabilities [{}]",
                task.id,
                needs.join(" and "),
                me.name,
                me.role.as_deref().unwrap_or("none"),
                me.caps.join(", ")
            )));
        }
        Ok(())
    }

    /// The task, checked to be held and changeable by `actor` (its holder, or the admin).
    fn held_by(&self, actor: &Actor, id: TaskId, verb: &str) -> Result<Task> {
        let task = self.read().task(id)?;
        if !is_held(&task) {
            return Err(CoreError::conflict(format!(
                "cannot {verb} {id}: it is {} (claim it first)",
                task.status
            )));
        }
        if let Actor::Agent(name) = actor
            && task.assignee.as_deref() != Some(name.as_str())
        {
            return Err(CoreError::forbidden(format!(
                "cannot {verb} {id}: it is held by {}",
                task.assignee.as_deref().unwrap_or("nobody")
            )));
        }
        Ok(task)
    }

    pub fn update_task_status(
        &mut self,
        actor: &Actor,
        id: TaskId,
        update: TaskStatusUpdate,
    ) -> Result<Task> {
        if !matches!(
            update.status,
            TaskStatus::InProgress | TaskStatus::Blocked | TaskStatus::Review | TaskStatus::Claimed
        ) {
            return Err(CoreError::invalid(format!(
                "status {} cannot be set by update: use claimed, in_progress, blocked or \
                 review (done, fail and cancel have their own commands)",
                update.status
            )));
        }
        if let Some(note) = &update.note {
            validate_text("note", note, MAX_BODY, false)?;
        }
        let task = self.held_by(actor, id, "update")?;
        self.set_status(id, update.status)?;
        let updated = TaskUpdated {
            from: task.status,
            to: update.status,
            note: update.note,
        };
        self.emit(
            actor.name(),
            Some(id),
            task.assignee.as_deref(),
            EventPayload::TaskUpdated(updated),
        )?;
        self.read().task(id)
    }

    pub fn finish_task(&mut self, actor: &Actor, id: TaskId, finish: TaskFinish) -> Result<Task> {
        let summary = validated_summary(&finish, MAX_BODY)?;
        if let Some(comments) = &finish.comments {
            validate_text("comments", comments, MAX_BODY, false)?;
        }
        if let Some(stage) = &finish.to_stage {
            validate_name("to_stage", stage)?;
        }
        let task = self.held_by(actor, id, "finish")?;
        if self.read().waits_in_merge_queue(&task)? {
            return Err(CoreError::conflict(format!(
                "{id} is already waiting in the merge queue"
            )));
        }
        match finish.verdict.unwrap_or_default() {
            Verdict::Pass => {
                if finish.to_stage.is_some() {
                    return Err(CoreError::invalid(
                        "to_stage goes with verdict send_back; a pass moves to the next stage",
                    ));
                }
                self.pass_stage(actor, &task, summary, finish.files, finish.comments)
            }
            Verdict::SendBack => {
                let comments = finish.comments.unwrap_or_default();
                self.send_back(actor, &task, summary, &comments, finish.to_stage.as_deref())
            }
        }
    }

    /// Marks a task done with its result, releases its leases and lets its dependents move.
    pub(crate) fn complete_task(
        &mut self,
        actor: &str,
        task: &Task,
        summary: &str,
        files: &[String],
    ) -> Result<()> {
        let id = task.id;
        self.conn().execute(
            "UPDATE tasks SET status = 'done', result = ?2, files = ?3, claim_expires_at = NULL,
                awaiting_approval = 0, updated_at = ?4 WHERE id = ?1",
            params![id.0, summary, to_json_list(files)?, self.now_ms()],
        )?;
        self.index_search("task", &id.to_string(), &task.title, summary)?;
        let done = TaskDone {
            summary: summary.to_string(),
            files: files.to_vec(),
        };
        self.emit(
            actor,
            Some(id),
            task.assignee.as_deref(),
            EventPayload::TaskDone(done),
        )?;
        self.release_task_leases(actor, id, "task done")?;
        for dependent in self.read().dependents(id)? {
            self.refresh_readiness(actor, dependent)?;
        }
        Ok(())
    }

    pub fn fail_task(&mut self, actor: &Actor, id: TaskId, reason: &str) -> Result<Task> {
        validate_text("reason", reason, MAX_BODY, true)?;
        let task = self.held_by(actor, id, "fail")?;
        self.conn().execute(
            "UPDATE tasks SET status = 'failed', result = ?2, claim_expires_at = NULL,
                updated_at = ?3 WHERE id = ?1",
            params![id.0, reason, self.now_ms()],
        )?;
        self.index_search("task", &id.to_string(), &task.title, reason)?;
        let failed = Reason {
            reason: reason.to_string(),
        };
        self.emit(
            actor.name(),
            Some(id),
            task.assignee.as_deref(),
            EventPayload::TaskFailed(failed),
        )?;
        self.release_task_leases(actor.name(), id, "task failed")?;
        for dependent in self.read().dependents(id)? {
            self.refresh_readiness(actor.name(), dependent)?;
        }
        self.read().task(id)
    }

    /// Cancels an unfinished task. The admin may cancel any; an agent, what it created or holds.
    pub fn cancel_task(
        &mut self,
        actor: &Actor,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task> {
        let task = self.read().task(id)?;
        if task.status.is_finished() {
            return Err(CoreError::conflict(format!(
                "{id} is already {}",
                task.status
            )));
        }
        if let Actor::Agent(name) = actor
            && task.created_by != *name
            && task.assignee.as_deref() != Some(name.as_str())
        {
            return Err(CoreError::forbidden(format!(
                "cannot cancel {id}: only its creator ({}), its holder or an admin may",
                task.created_by
            )));
        }
        self.conn().execute(
            "UPDATE tasks SET status = 'cancelled', claim_expires_at = NULL, blocked_reason = NULL,
                awaiting_approval = 0, updated_at = ?2 WHERE id = ?1",
            params![id.0, self.now_ms()],
        )?;
        self.emit(
            actor.name(),
            Some(id),
            task.assignee.as_deref(),
            EventPayload::TaskCancelled(OptionalReason {
                reason: reason.clone(),
            }),
        )?;
        self.release_task_leases(actor.name(), id, "task cancelled")?;
        for dependent in self.read().dependents(id)? {
            self.refresh_readiness(actor.name(), dependent)?;
        }
        if let Some(holder) = task.assignee.as_deref()
            && holder != actor.name()
            && is_held(&task)
        {
            let body = format!(
                "{id} \"{}\", which you hold, was cancelled by {}{}. Stop working on it.",
                task.title,
                actor.name(),
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
            self.notify(holder, &body)?;
        }
        self.read().task(id)
    }

    /// Gives a task to an agent (admin). A ready or held task becomes claimed by it at once; a
    /// pending task is reserved for it and waits for its dependencies.
    pub fn assign_task(&mut self, actor: &Actor, id: TaskId, assign: TaskAssign) -> Result<Task> {
        let agent = self.read().agent(&assign.agent)?;
        let task = self.read().task(id)?;
        if task.status.is_finished() {
            return Err(CoreError::conflict(format!(
                "{id} is {}; reopen it before assigning",
                task.status
            )));
        }
        let previous = task.assignee.clone().filter(|_| is_held(&task));
        if matches!(task.status, TaskStatus::Pending) || is_blocked_by_dependency(&task) {
            self.conn().execute(
                "UPDATE tasks SET assignee = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.0, agent.name, self.now_ms()],
            )?;
        } else {
            let expires = self.now_ms() + self.config().claim_ttl_secs * 1000;
            // A task waiting for a person, or blocked because its send-backs ran out, is the
            // person's to give: the decision is this assignment, and the rounds start over.
            let pipeline = task.pipeline.clone().map(|mut state| {
                if state.rounds_exhausted() {
                    state.send_backs = 0;
                }
                state
            });
            self.conn().execute(
                "UPDATE tasks SET status = 'claimed', assignee = ?2, claim_expires_at = ?3,
                    blocked_reason = NULL, awaiting_approval = 0, pipeline = ?5, updated_at = ?4
                 WHERE id = ?1",
                params![
                    id.0,
                    agent.name,
                    expires,
                    self.now_ms(),
                    pipeline.as_ref().map(serde_json::to_string).transpose()?
                ],
            )?;
        }
        let assigned = TaskAssigned {
            from: previous.clone(),
            title: task.title.clone(),
        };
        self.emit(
            actor.name(),
            Some(id),
            Some(&agent.name),
            EventPayload::TaskAssigned(assigned),
        )?;
        if let Some(previous) = previous.filter(|p| *p != agent.name) {
            self.release_task_leases(actor.name(), id, "task reassigned")?;
            let body = format!(
                "{id} \"{}\" was reassigned from you to {} by {}. Stop working on it.",
                task.title,
                agent.name,
                actor.name()
            );
            self.notify(&previous, &body)?;
        }
        self.read().task(id)
    }

    /// Changes a task's description, priority, requirements or dependencies. Holders of tasks
    /// that depend on it are told when its title or body changes.
    pub fn edit_task(&mut self, actor: &Actor, id: TaskId, edit: TaskEdit) -> Result<Task> {
        let before = self.read().task(id)?;
        if let Actor::Agent(name) = actor
            && before.created_by != *name
            && before.assignee.as_deref() != Some(name.as_str())
        {
            return Err(CoreError::forbidden(format!(
                "cannot edit {id}: only its creator ({}), its holder or an admin may",
                before.created_by
            )));
        }
        if let Some(title) = &edit.title {
            validate_text("title", title.trim(), MAX_TITLE, true)?;
        }
        if let Some(body) = &edit.body {
            validate_text("body", body, MAX_BODY, false)?;
        }
        let role = match edit.role.as_deref() {
            Some("") => Some(None),
            Some(role) => {
                validate_name("role", role)?;
                Some(Some(role.to_string()))
            }
            None => None,
        };
        if let Some(caps) = &edit.caps {
            for cap in caps {
                validate_name("capability", cap)?;
            }
        }
        for dep in &edit.after {
            self.read().task(*dep)?;
            if *dep == id || self.read().depends_transitively(*dep, id)? {
                return Err(CoreError::Cycle(format!(
                    "{id} cannot wait on {dep}: {dep} already waits on {id}"
                )));
            }
        }
        self.conn().execute(
            "UPDATE tasks SET title = COALESCE(?2, title), body = COALESCE(?3, body),
                priority = COALESCE(?4, priority), caps = COALESCE(?5, caps), updated_at = ?6
             WHERE id = ?1",
            params![
                id.0,
                edit.title.as_deref().map(str::trim),
                edit.body,
                edit.priority,
                edit.caps.as_deref().map(to_json_list).transpose()?,
                self.now_ms()
            ],
        )?;
        if let Some(role) = &role {
            self.conn().execute(
                "UPDATE tasks SET role = ?2 WHERE id = ?1",
                params![id.0, role],
            )?;
        }
        for dep in &edit.after {
            self.conn().execute(
                "INSERT OR IGNORE INTO task_deps (task_id, depends_on) VALUES (?1, ?2)",
                params![id.0, dep.0],
            )?;
        }
        let after = self.read().task(id)?;
        let mut changed = Vec::new();
        if after.title != before.title {
            changed.push("title");
        }
        if after.body != before.body {
            changed.push("body");
        }
        if after.priority != before.priority {
            changed.push("priority");
        }
        if after.role != before.role {
            changed.push("role");
        }
        if after.caps != before.caps {
            changed.push("caps");
        }
        if after.depends_on != before.depends_on {
            changed.push("dependencies");
        }
        let edited = TaskEdited {
            changed: changed.iter().map(|field| field.to_string()).collect(),
            title: after.title.clone(),
            priority: after.priority,
        };
        self.emit(
            actor.name(),
            Some(id),
            after.assignee.as_deref(),
            EventPayload::TaskEdited(edited),
        )?;
        if !edit.after.is_empty() {
            self.refresh_readiness(actor.name(), id)?;
        }
        if changed
            .iter()
            .any(|field| matches!(*field, "title" | "body"))
        {
            let what = format!("was changed by {} ({})", actor.name(), changed.join(", "));
            self.notify_dependents(&after, &what)?;
        }
        self.read().task(id)
    }

    /// Puts a finished task back in play. Tasks that depend on it wait again, and their holders
    /// are told.
    pub fn reopen_task(
        &mut self,
        actor: &Actor,
        id: TaskId,
        reason: Option<String>,
    ) -> Result<Task> {
        let task = self.read().task(id)?;
        if !task.status.is_finished() {
            return Err(CoreError::conflict(format!(
                "{id} is {}; only done, failed or cancelled tasks can be reopened",
                task.status
            )));
        }
        if let Actor::Agent(name) = actor
            && task.created_by != *name
        {
            return Err(CoreError::forbidden(format!(
                "cannot reopen {id}: only its creator ({}) or an admin may",
                task.created_by
            )));
        }
        self.conn().execute(
            "UPDATE tasks SET status = 'pending', assignee = NULL, claim_expires_at = NULL,
                awaiting_approval = 0, updated_at = ?2 WHERE id = ?1",
            params![id.0, self.now_ms()],
        )?;
        // A pipeline task put back in play goes through its stages again from the first.
        if let Some(state) = &task.pipeline {
            let restarted = PipelineState {
                stage: 0,
                send_backs: 0,
                ..state.clone()
            };
            self.conn().execute(
                "UPDATE tasks SET pipeline = ?2, role = ?3 WHERE id = ?1",
                params![
                    id.0,
                    serde_json::to_string(&restarted)?,
                    restarted.current().map(|stage| stage.role.as_str())
                ],
            )?;
        }
        let reopened = TaskReopened {
            from: task.status,
            reason: reason.clone(),
        };
        self.emit(
            actor.name(),
            Some(id),
            None,
            EventPayload::TaskReopened(reopened),
        )?;
        self.refresh_readiness(actor.name(), id)?;
        for dependent in self.read().dependents(id)? {
            self.refresh_readiness(actor.name(), dependent)?;
        }
        let what = format!(
            "was reopened by {}{}",
            actor.name(),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        self.notify_dependents(&task, &what)?;
        self.read().task(id)
    }

    /// Messages the holders of tasks that depend on `task` that it `what`.
    fn notify_dependents(&mut self, task: &Task, what: &str) -> Result<()> {
        for dependent_id in self.read().dependents(task.id)? {
            let dependent = self.read().task(dependent_id)?;
            if let (Some(holder), true) = (dependent.assignee.as_deref(), is_held(&dependent)) {
                let body = format!(
                    "{} \"{}\", which your task {} depends on, {what}. Check that your work still fits.",
                    task.id, task.title, dependent.id
                );
                self.notify(holder, &body)?;
            }
        }
        Ok(())
    }

    /// A message from the server itself to one agent.
    pub(crate) fn notify(&mut self, agent: &str, body: &str) -> Result<()> {
        self.send_message(
            &Actor::System,
            NewMessage {
                to: agent.to_string(),
                body: body.to_string(),
                thread: None,
                kind: MessageKind::Alert,
                urgent: true,
            },
        )?;
        Ok(())
    }

    /// Returns tasks whose claim lease ran out to `ready` (via releasing their holders).
    pub(crate) fn expire_claims(&mut self) -> Result<Vec<TaskId>> {
        let holders: Vec<String> = {
            self.conn().query_map(
                "SELECT DISTINCT assignee FROM tasks
                 WHERE claim_expires_at IS NOT NULL AND claim_expires_at <= ?1
                 AND status IN ('claimed', 'in_progress', 'review', 'blocked')",
                params![self.now_ms()],
                |row| row.get(0),
            )?
        };
        let mut reclaimed = Vec::new();
        for holder in holders {
            let reason = format!(
                "claim lease expired: no request from {holder} for {}",
                crate::model::format_duration_secs(self.config().claim_ttl_secs)
            );
            let report = self.release_agent(crate::model::SYSTEM_NAME, &holder, &reason)?;
            reclaimed.extend(report.tasks);
        }
        Ok(reclaimed)
    }
}
