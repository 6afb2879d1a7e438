//! Property test of the store's task and lease state machine against a small reference model.
//!
//! Each case registers three agents (`a` and `b` are coders, `c` is a reviewer) in an in-memory
//! store, then runs a generated sequence of operations (add task, claim by id or "next", update,
//! done, fail, cancel, reopen, lock, unlock, release an agent the supervisor knows died) both on the
//! store and on [`Model`], a plain-Rust statement of the intended rules (SPEC §4 guarantees 1 and 3,
//! and the claim-release half of 2). After every operation it checks:
//!
//! - **Outcome**: the store succeeds exactly when the model says so, failing with the error code
//!   the model predicts; a claim with no id takes the task the model picks (highest priority, then
//!   lowest id, among ready tasks whose role fits).
//! - **State**: every task's status, assignee, attempts and dependencies, and the set of leases
//!   (path, holder, mode, tied task, fencing token), equal the model's.
//! - **Invariants**, read from the store itself, whatever the model says: held tasks have an
//!   assignee and unheld unfinished ones none; a `ready` task has all its dependencies `done` and a
//!   `pending` one has some not done; no two leases of different holders overlap
//!   ([`conclave_core::paths::overlaps`]) unless both are shared; a lease tied to a task is held by
//!   that task's holder while it holds it; fencing tokens are unique and every grant's token is
//!   larger than every token granted before.
//! - **Events**: sequence numbers strictly increase; an operation that changed something appended
//!   at least one event, and one that failed (or changed nothing) appended none.
//!
//! Claim and lease TTLs are the defaults (minutes), so nothing expires during a case; expiry and
//! the sweeper are tested elsewhere. Tasks reserved by `assign` are not generated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use conclave_core::model::{
    Actor, Lease, LeaseMode, LeaseRelease, LeaseRequest, NewAgent, NewTask, Task, TaskDecision,
    TaskFinish, TaskId, TaskStatus, TaskStatusUpdate,
};
use conclave_core::paths::{normalize_lease_path, overlaps};
use conclave_core::store::testing::{Engine, test_store, with_engine};
use conclave_core::{CoreError, Store, StoreConfig};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// `(name, role)` of the agents every case registers.
const AGENTS: [(&str, &str); 3] = [("a", "coder"), ("b", "coder"), ("c", "reviewer")];

/// Lease paths the operations pick from: literals, a directory, globs, and one spelling that
/// normalizes to another (`./src//a.rs` is `src/a.rs`).
const PATHS: [&str; 8] = [
    "src/a.rs",
    "src/b.rs",
    "src",
    "src/*.rs",
    "docs/**",
    "docs/guide.md",
    "README.md",
    "./src//a.rs",
];

// ---- operations --------------------------------------------------------------------------------
//
// Cases are generated as `Op`s, which name tasks, actors and leases loosely (by index among those
// that exist, or "whoever may"), so that most operations hit something real rather than fail on a
// missing task. Each `Op` is resolved against the model's current state (which the checks keep
// equal to the store's) into a concrete `Step`: that is what runs, and what a failure trace shows.

/// Who performs a step: the admin (a person or the supervisor) or a registered agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Agent(&'static str),
}

impl Who {
    fn actor(self) -> Actor {
        match self {
            Who::Admin => Actor::Admin,
            Who::Agent(name) => Actor::Agent(name.to_string()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Who::Admin => "admin",
            Who::Agent(name) => name,
        }
    }
}

impl fmt::Debug for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn agent_role(name: &str) -> &'static str {
    AGENTS
        .iter()
        .find(|(agent, _)| *agent == name)
        .map(|(_, role)| *role)
        .expect("known agent")
}

/// One concrete operation on the store.
#[derive(Clone, Debug)]
enum Step {
    AddTask {
        creator: Who,
        after: Vec<TaskId>,
        role: Option<&'static str>,
        priority: i64,
        /// Each finish waits for a person's approval.
        approve: bool,
    },
    /// With no task: claim the best ready task that fits.
    Claim {
        agent: &'static str,
        task: Option<TaskId>,
    },
    Update {
        by: Who,
        task: TaskId,
        status: TaskStatus,
    },
    Done {
        by: Who,
        task: TaskId,
    },
    Fail {
        by: Who,
        task: TaskId,
    },
    Cancel {
        by: Who,
        task: TaskId,
    },
    Reopen {
        by: Who,
        task: TaskId,
    },
    Lock {
        agent: &'static str,
        paths: Vec<&'static str>,
        mode: LeaseMode,
    },
    Unlock {
        by: Who,
        path: &'static str,
        force: bool,
    },
    /// `tx.release_agent`: the supervisor knows the agent's process died.
    Release {
        agent: &'static str,
    },
    /// A person's decision on a task waiting for approval: approve it or reject it.
    Decide {
        by: Who,
        task: TaskId,
        approve: bool,
    },
}

/// Who, as generated. `Entitled` is whoever the rules let do the step: the holder of the task or
/// lease it is about, or for reopening (and cancelling an unheld task) the task's creator.
#[derive(Clone, Copy, Debug)]
enum By {
    Admin,
    Agent(usize),
    Entitled,
}

/// A task, as generated (picked by index): one in a state the operation accepts (ready for a
/// claim, held for update/done/fail, unfinished for cancel, finished for reopen) when there is
/// one, any task, or the next id, not created yet.
#[derive(Clone, Debug)]
enum TaskRef {
    Apt(Index),
    Any(Index),
    Missing,
}

/// A lease path, as generated: one from [`PATHS`], or the path of a lease in force.
#[derive(Clone, Debug)]
enum PathRef {
    Pool(usize),
    Leased(Index),
}

#[derive(Clone, Debug)]
enum Op {
    AddTask {
        creator: Option<usize>,
        /// Dependencies, picked by index among the tasks that exist.
        after: Vec<Index>,
        /// Also depend on a task that does not exist (the id the new task would get): refused.
        ghost: bool,
        role: Option<&'static str>,
        priority: i64,
        approve: bool,
    },
    Claim {
        agent: usize,
        task: Option<TaskRef>,
    },
    Update {
        by: By,
        task: TaskRef,
        status: TaskStatus,
    },
    Done {
        by: By,
        task: TaskRef,
    },
    Fail {
        by: By,
        task: TaskRef,
    },
    Cancel {
        by: By,
        task: TaskRef,
    },
    Reopen {
        by: By,
        task: TaskRef,
    },
    Lock {
        agent: usize,
        paths: Vec<usize>,
        mode: LeaseMode,
    },
    Unlock {
        by: By,
        path: PathRef,
        force: bool,
    },
    /// `busy`: rather an agent that holds a task, if one does.
    Release {
        agent: usize,
        busy: bool,
    },
    Decide {
        by: By,
        task: TaskRef,
        approve: bool,
    },
}

fn agent() -> impl Strategy<Value = usize> {
    0..AGENTS.len()
}

fn by() -> impl Strategy<Value = By> {
    prop_oneof![
        1 => Just(By::Admin),
        2 => agent().prop_map(By::Agent),
        4 => Just(By::Entitled),
    ]
}

fn task_ref() -> impl Strategy<Value = TaskRef> {
    prop_oneof![
        6 => any::<Index>().prop_map(TaskRef::Apt),
        3 => any::<Index>().prop_map(TaskRef::Any),
        1 => Just(TaskRef::Missing),
    ]
}

fn path_ref() -> impl Strategy<Value = PathRef> {
    prop_oneof![
        1 => (0..PATHS.len()).prop_map(PathRef::Pool),
        2 => any::<Index>().prop_map(PathRef::Leased),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let role = prop_oneof![Just(None), Just(Some("coder")), Just(Some("reviewer"))];
    let status = prop_oneof![
        4 => Just(TaskStatus::InProgress),
        2 => Just(TaskStatus::Blocked),
        2 => Just(TaskStatus::Review),
        1 => Just(TaskStatus::Claimed),
        // Not settable by `update`: must be refused as invalid input.
        1 => Just(TaskStatus::Done),
    ];
    let mode = prop_oneof![Just(LeaseMode::Exclusive), Just(LeaseMode::Shared)];
    prop_oneof![
        7 => (
            proptest::option::weighted(0.3, agent()),
            prop_oneof![
                2 => proptest::collection::vec(any::<Index>(), 0),
                2 => proptest::collection::vec(any::<Index>(), 1),
                1 => proptest::collection::vec(any::<Index>(), 2),
            ],
            proptest::bool::weighted(0.05),
            role,
            0..3i64,
            proptest::bool::weighted(0.25),
        )
            .prop_map(|(creator, after, ghost, role, priority, approve)| Op::AddTask {
                creator,
                after,
                ghost,
                role,
                priority,
                approve,
            }),
        8 => (agent(), proptest::option::weighted(0.5, task_ref()))
            .prop_map(|(agent, task)| Op::Claim { agent, task }),
        3 => (by(), task_ref(), status).prop_map(|(by, task, status)| Op::Update { by, task, status }),
        5 => (by(), task_ref()).prop_map(|(by, task)| Op::Done { by, task }),
        1 => (by(), task_ref()).prop_map(|(by, task)| Op::Fail { by, task }),
        1 => (by(), task_ref()).prop_map(|(by, task)| Op::Cancel { by, task }),
        4 => (by(), task_ref()).prop_map(|(by, task)| Op::Reopen { by, task }),
        5 => (agent(), proptest::collection::vec(0..PATHS.len(), 1..=2), mode)
            .prop_map(|(agent, paths, mode)| Op::Lock { agent, paths, mode }),
        3 => (by(), path_ref(), proptest::bool::weighted(0.2))
            .prop_map(|(by, path, force)| Op::Unlock { by, path, force }),
        4 => (agent(), proptest::bool::weighted(0.75)).prop_map(|(agent, busy)| Op::Release { agent, busy }),
        3 => (by(), task_ref(), any::<bool>())
            .prop_map(|(by, task, approve)| Op::Decide { by, task, approve }),
    ]
}

impl Op {
    /// The concrete step this operation means in the model's current state.
    fn resolve(&self, model: &Model) -> Step {
        let count = model.tasks.len();
        let pick = |task: &TaskRef, apt: &dyn Fn(TaskId, &ModelTask) -> bool| {
            let apt: Vec<TaskId> = model
                .tasks
                .iter()
                .filter(|(id, t)| apt(**id, t))
                .map(|(id, _)| *id)
                .collect();
            match task {
                TaskRef::Apt(index) if !apt.is_empty() => apt[index.index(apt.len())],
                TaskRef::Apt(index) | TaskRef::Any(index) if count > 0 => {
                    TaskId(index.index(count) as i64 + 1)
                }
                _ => TaskId(count as i64 + 1),
            }
        };
        let ready = |task: &TaskRef| pick(task, &|_, t| t.status == TaskStatus::Ready);
        let held = |task: &TaskRef| pick(task, &|_, t| t.held());
        let unfinished = |task: &TaskRef| pick(task, &|_, t| !t.status.is_finished());
        let awaiting = |task: &TaskRef| pick(task, &|_, t| t.awaiting_approval);
        // Reopening matters most to a task that others (still unfinished) depend on.
        let finished = |task: &TaskRef| {
            pick(task, &|id, t| {
                t.status.is_finished()
                    && model
                        .dependents(id)
                        .iter()
                        .any(|d| !model.tasks[d].status.is_finished())
            })
        };
        let holder_of = |id: TaskId| {
            let task = model.tasks.get(&id)?;
            task.assignee.clone().filter(|_| task.held())
        };
        let creator_of = |id: TaskId| model.tasks.get(&id).map(|t| t.creator.clone());
        let who = |by: By, entitled: Option<String>| match by {
            By::Admin => Who::Admin,
            By::Agent(index) => Who::Agent(AGENTS[index].0),
            By::Entitled => match entitled.as_deref() {
                None | Some("admin") => Who::Admin,
                Some(name) => Who::Agent(agent_named(name)),
            },
        };
        match self {
            Op::AddTask {
                creator,
                after,
                ghost,
                role,
                priority,
                approve,
            } => {
                let mut deps: BTreeSet<TaskId> = BTreeSet::new();
                if count > 0 {
                    deps.extend(
                        after
                            .iter()
                            .map(|index| TaskId(index.index(count) as i64 + 1)),
                    );
                }
                if *ghost {
                    deps.insert(TaskId(count as i64 + 1));
                }
                Step::AddTask {
                    creator: creator.map_or(Who::Admin, |index| Who::Agent(AGENTS[index].0)),
                    after: deps.into_iter().collect(),
                    role: *role,
                    priority: *priority,
                    approve: *approve,
                }
            }
            Op::Claim { agent, task: id } => Step::Claim {
                agent: AGENTS[*agent].0,
                task: id.as_ref().map(ready),
            },
            Op::Update {
                by,
                task: id,
                status,
            } => {
                let id = held(id);
                Step::Update {
                    by: who(*by, holder_of(id)),
                    task: id,
                    status: *status,
                }
            }
            Op::Done { by, task: id } => {
                let id = held(id);
                Step::Done {
                    by: who(*by, holder_of(id)),
                    task: id,
                }
            }
            Op::Fail { by, task: id } => {
                let id = held(id);
                Step::Fail {
                    by: who(*by, holder_of(id)),
                    task: id,
                }
            }
            Op::Cancel { by, task: id } => {
                let id = unfinished(id);
                Step::Cancel {
                    by: who(*by, holder_of(id).or(creator_of(id))),
                    task: id,
                }
            }
            Op::Reopen { by, task: id } => {
                let id = finished(id);
                Step::Reopen {
                    by: who(*by, creator_of(id)),
                    task: id,
                }
            }
            Op::Lock { agent, paths, mode } => Step::Lock {
                agent: AGENTS[*agent].0,
                paths: paths.iter().map(|p| PATHS[*p]).collect(),
                mode: *mode,
            },
            Op::Unlock { by, path, force } => {
                let leased: Vec<&ModelLease> = model.leases.values().collect();
                let (path, holder) = match path {
                    PathRef::Leased(index) if !leased.is_empty() => {
                        let lease = leased[index.index(leased.len())];
                        (pool_path(&lease.path), Some(lease.holder.clone()))
                    }
                    PathRef::Leased(_) => (PATHS[0], None),
                    PathRef::Pool(p) => (PATHS[*p], None),
                };
                Step::Unlock {
                    by: who(*by, holder),
                    path,
                    force: *force,
                }
            }
            Op::Release { agent, busy } => {
                let holders: Vec<&'static str> = AGENTS
                    .iter()
                    .map(|(name, _)| *name)
                    .filter(|name| model.first_held_task(name).is_some())
                    .collect();
                let agent = if *busy && !holders.is_empty() {
                    holders[*agent % holders.len()]
                } else {
                    AGENTS[*agent].0
                };
                Step::Release { agent }
            }
            Op::Decide {
                by,
                task: id,
                approve,
            } => Step::Decide {
                // Only a person decides: the entitled one is the admin.
                by: who(*by, None),
                task: awaiting(id),
                approve: *approve,
            },
        }
    }
}

fn agent_named(name: &str) -> &'static str {
    AGENTS
        .iter()
        .find(|(agent, _)| *agent == name)
        .expect("known agent")
        .0
}

/// The [`PATHS`] entry spelling a normalized lease path.
fn pool_path(normalized_path: &str) -> &'static str {
    PATHS
        .iter()
        .find(|p| normalized(p) == normalized_path)
        .expect("leases come from the pool")
}

// ---- the reference model -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelTask {
    status: TaskStatus,
    /// The holder while held; kept as a record once done, failed or cancelled; cleared by reopen
    /// and release.
    assignee: Option<String>,
    attempts: i64,
    deps: Vec<TaskId>,
    priority: i64,
    role: Option<String>,
    creator: String,
    /// Blocked by the server because a dependency failed or was cancelled (not held).
    blocked_by_deps: bool,
    /// Each finish waits for a person's approval.
    approve: bool,
    /// Finished by its agent (still named as assignee), waiting in review for a person; not held.
    awaiting_approval: bool,
}

impl ModelTask {
    fn held(&self) -> bool {
        self.status.is_held() && !self.blocked_by_deps && !self.awaiting_approval
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelLease {
    path: String,
    holder: String,
    mode: LeaseMode,
    task: Option<TaskId>,
    fencing_token: i64,
}

/// What the model says a successful operation did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Effect {
    /// Whether any state changed (and so at least one event must be logged).
    changed: bool,
    /// For a claim: the task taken, if any.
    claimed: Option<TaskId>,
}

impl Effect {
    fn changed() -> Self {
        Effect {
            changed: true,
            claimed: None,
        }
    }
}

/// The intended rules, kept as simple as they can be stated.
#[derive(Debug, Default, Clone)]
struct Model {
    tasks: BTreeMap<TaskId, ModelTask>,
    /// Keyed by (normalized path, holder): a holder has at most one lease per path.
    leases: BTreeMap<(String, String), ModelLease>,
    /// The last fencing token granted (the store's counter starts at 0).
    last_token: i64,
}

type Prediction = Result<Effect, &'static str>;

impl Model {
    fn task(&self, id: TaskId) -> Result<&ModelTask, &'static str> {
        self.tasks.get(&id).ok_or("not_found")
    }

    fn deps_done(&self, id: TaskId) -> bool {
        self.tasks[&id]
            .deps
            .iter()
            .all(|dep| self.tasks[dep].status == TaskStatus::Done)
    }

    fn dependents(&self, id: TaskId) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, task)| task.deps.contains(&id))
            .map(|(dependent, _)| *dependent)
            .collect()
    }

    /// `pending` becomes `ready` when every dependency is done; an unheld `ready` task whose
    /// dependency is no longer done waits again. Held and finished tasks are left alone: a holder
    /// whose dependency is reopened keeps its task (and is told).
    fn refresh_readiness(&mut self, id: TaskId) {
        let done = self.deps_done(id);
        let dead = self.tasks[&id].deps.iter().any(|dep| {
            matches!(
                self.tasks[dep].status,
                TaskStatus::Failed | TaskStatus::Cancelled
            )
        });
        let task = self.tasks.get_mut(&id).expect("task");
        let waiting =
            matches!(task.status, TaskStatus::Pending | TaskStatus::Ready) || task.blocked_by_deps;
        if waiting && dead {
            // A dependency that failed or was cancelled will never be done.
            task.status = TaskStatus::Blocked;
            task.blocked_by_deps = true;
            return;
        }
        if task.blocked_by_deps {
            task.blocked_by_deps = false;
            task.status = if done {
                TaskStatus::Ready
            } else {
                TaskStatus::Pending
            };
            return;
        }
        match (task.status, done) {
            (TaskStatus::Pending, true) => task.status = TaskStatus::Ready,
            (TaskStatus::Ready, false) => task.status = TaskStatus::Pending,
            _ => {}
        }
    }

    fn fits(task: &ModelTask, agent: &str) -> bool {
        task.role
            .as_deref()
            .is_none_or(|role| role == agent_role(agent))
    }

    /// The task that new leases of `agent` are tied to: the lowest-id task it holds.
    fn first_held_task(&self, agent: &str) -> Option<TaskId> {
        self.tasks
            .iter()
            .find(|(_, task)| task.held() && task.assignee.as_deref() == Some(agent))
            .map(|(id, _)| *id)
    }

    fn release_task_leases(&mut self, task: TaskId) {
        self.leases.retain(|_, lease| lease.task != Some(task));
    }

    /// The holder (or the admin) may act on a held task; nobody may act on an unheld one.
    fn check_held_by(&self, by: Who, id: TaskId) -> Result<(), &'static str> {
        let task = self.task(id)?;
        if !task.held() {
            return Err("conflict");
        }
        if let Who::Agent(name) = by
            && task.assignee.as_deref() != Some(name)
        {
            return Err("forbidden");
        }
        Ok(())
    }

    fn apply(&mut self, step: &Step) -> Prediction {
        match *step {
            Step::AddTask {
                creator,
                ref after,
                role,
                priority,
                approve,
            } => {
                if after.iter().any(|dep| !self.tasks.contains_key(dep)) {
                    return Err("not_found");
                }
                let id = TaskId(self.tasks.len() as i64 + 1);
                self.tasks.insert(
                    id,
                    ModelTask {
                        status: TaskStatus::Pending,
                        assignee: None,
                        attempts: 0,
                        deps: after.clone(),
                        priority,
                        role: role.map(str::to_string),
                        creator: creator.name().to_string(),
                        blocked_by_deps: false,
                        approve,
                        awaiting_approval: false,
                    },
                );
                self.refresh_readiness(id);
                Ok(Effect::changed())
            }
            Step::Claim { agent, task } => {
                let id = match task {
                    Some(id) => {
                        let task = self.task(id)?;
                        match task.status {
                            TaskStatus::Ready if Self::fits(task, agent) => {}
                            TaskStatus::Ready => return Err("forbidden"),
                            _ if task.held() => return Err("conflict"),
                            _ => return Err("not_ready"),
                        }
                        id
                    }
                    None => {
                        let best = self
                            .tasks
                            .iter()
                            .filter(|(_, task)| task.status == TaskStatus::Ready)
                            .filter(|(_, task)| Self::fits(task, agent))
                            // Highest priority first; among equals the lowest id.
                            .max_by_key(|(id, task)| (task.priority, std::cmp::Reverse(**id)));
                        match best {
                            Some((id, _)) => *id,
                            None => return Ok(Effect::default()),
                        }
                    }
                };
                let task = self.tasks.get_mut(&id).expect("task");
                task.status = TaskStatus::Claimed;
                task.assignee = Some(agent.to_string());
                Ok(Effect {
                    changed: true,
                    claimed: Some(id),
                })
            }
            Step::Update {
                by,
                task: id,
                status,
            } => {
                if !matches!(
                    status,
                    TaskStatus::InProgress
                        | TaskStatus::Blocked
                        | TaskStatus::Review
                        | TaskStatus::Claimed
                ) {
                    return Err("invalid_input");
                }
                self.check_held_by(by, id)?;
                self.tasks.get_mut(&id).expect("task").status = status;
                Ok(Effect::changed())
            }
            Step::Done { by, task: id } => {
                self.check_held_by(by, id)?;
                self.release_task_leases(id);
                let task = self.tasks.get_mut(&id).expect("task");
                if task.approve {
                    // It waits for a person; nothing depending on it moves yet.
                    task.status = TaskStatus::Review;
                    task.awaiting_approval = true;
                    return Ok(Effect::changed());
                }
                task.status = TaskStatus::Done;
                for dependent in self.dependents(id) {
                    self.refresh_readiness(dependent);
                }
                Ok(Effect::changed())
            }
            Step::Fail { by, task: id } => {
                self.check_held_by(by, id)?;
                self.tasks.get_mut(&id).expect("task").status = TaskStatus::Failed;
                self.release_task_leases(id);
                for dependent in self.dependents(id) {
                    self.refresh_readiness(dependent);
                }
                Ok(Effect::changed())
            }
            Step::Cancel { by, task: id } => {
                let task = self.task(id)?;
                if task.status.is_finished() {
                    return Err("conflict");
                }
                if let Who::Agent(name) = by
                    && task.creator != name
                    && task.assignee.as_deref() != Some(name)
                {
                    return Err("forbidden");
                }
                let task = self.tasks.get_mut(&id).expect("task");
                task.status = TaskStatus::Cancelled;
                task.blocked_by_deps = false;
                task.awaiting_approval = false;
                self.release_task_leases(id);
                // Its waiting dependents can never become ready: they are blocked.
                for dependent in self.dependents(id) {
                    self.refresh_readiness(dependent);
                }
                Ok(Effect::changed())
            }
            Step::Reopen { by, task: id } => {
                let task = self.task(id)?;
                if !task.status.is_finished() {
                    return Err("conflict");
                }
                if let Who::Agent(name) = by
                    && task.creator != name
                {
                    return Err("forbidden");
                }
                let task = self.tasks.get_mut(&id).expect("task");
                task.status = TaskStatus::Pending;
                task.assignee = None;
                self.refresh_readiness(id);
                for dependent in self.dependents(id) {
                    self.refresh_readiness(dependent);
                }
                Ok(Effect::changed())
            }
            Step::Lock {
                agent,
                ref paths,
                mode,
            } => {
                let mut patterns: Vec<String> = Vec::new();
                for path in paths {
                    let pattern = normalized(path);
                    if !patterns.contains(&pattern) {
                        patterns.push(pattern);
                    }
                }
                // All or nothing: any conflicting lease of another holder refuses the request.
                for pattern in &patterns {
                    let conflict = self.leases.values().any(|lease| {
                        lease.holder != agent
                            && !(mode == LeaseMode::Shared && lease.mode == LeaseMode::Shared)
                            && paths_overlap(pattern, &lease.path)
                    });
                    if conflict {
                        return Err("lease_conflict");
                    }
                }
                let task = self.first_held_task(agent);
                for pattern in patterns {
                    // A new lease, or the holder's own lease renewed: new mode, task and token.
                    self.last_token += 1;
                    self.leases.insert(
                        (pattern.clone(), agent.to_string()),
                        ModelLease {
                            path: pattern,
                            holder: agent.to_string(),
                            mode,
                            task,
                            fencing_token: self.last_token,
                        },
                    );
                }
                Ok(Effect::changed())
            }
            Step::Unlock { by, path, force } => {
                if force && by != Who::Admin {
                    return Err("forbidden");
                }
                let pattern = normalized(path);
                let on_path: Vec<(String, String)> = self
                    .leases
                    .keys()
                    .filter(|(path, _)| *path == pattern)
                    .cloned()
                    .collect();
                let releasable: Vec<(String, String)> = on_path
                    .iter()
                    .filter(|(_, holder)| force || *holder == by.name())
                    .cloned()
                    .collect();
                if releasable.is_empty() {
                    return Err(if on_path.is_empty() {
                        "not_found"
                    } else {
                        "forbidden"
                    });
                }
                for key in releasable {
                    self.leases.remove(&key);
                }
                Ok(Effect::changed())
            }
            Step::Release { agent } => {
                let held: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, task)| task.held() && task.assignee.as_deref() == Some(agent))
                    .map(|(id, _)| *id)
                    .collect();
                for id in &held {
                    let task = self.tasks.get_mut(id).expect("task");
                    // Back to the team: ready again, pending if a dependency was reopened while
                    // it was held, blocked if one failed meanwhile.
                    task.status = TaskStatus::Pending;
                    task.assignee = None;
                    task.attempts += 1;
                    self.refresh_readiness(*id);
                }
                let leases_before = self.leases.len();
                self.leases.retain(|_, lease| lease.holder != agent);
                let changed = !held.is_empty() || self.leases.len() != leases_before;
                Ok(Effect {
                    changed,
                    claimed: None,
                })
            }
            Step::Decide {
                by,
                task: id,
                approve,
            } => {
                if by != Who::Admin {
                    return Err("forbidden");
                }
                if !self.task(id)?.awaiting_approval {
                    return Err("conflict");
                }
                let task = self.tasks.get_mut(&id).expect("task");
                task.awaiting_approval = false;
                if approve {
                    task.status = TaskStatus::Done;
                    for dependent in self.dependents(id) {
                        self.refresh_readiness(dependent);
                    }
                } else {
                    // Back to the agent that finished it (every agent of the model exists).
                    task.status = TaskStatus::InProgress;
                }
                Ok(Effect::changed())
            }
        }
    }
}

fn normalized(path: &str) -> String {
    normalize_lease_path(path)
        .expect("pool paths are valid")
        .as_str()
        .to_string()
}

fn paths_overlap(a: &str, b: &str) -> bool {
    overlaps(
        &normalize_lease_path(a).expect("valid"),
        &normalize_lease_path(b).expect("valid"),
    )
}

// ---- running an operation on the store ---------------------------------------------------------

/// What the store answered, in the terms the checks need.
#[derive(Debug, Default)]
struct Answer {
    claimed: Option<TaskId>,
    granted: Vec<Lease>,
}

/// For steps whose answer the checks do not need (they read the state afterwards).
fn no_answer<T>(_: T) -> Answer {
    Answer::default()
}

/// Runs `step`; a lease request goes, when `via_snapshot`, the way servers send it: compared
/// with the held leases on a read snapshot first, then granted under the writer lock.
fn run_on_store(store: &Store, step: &Step, via_snapshot: bool) -> Result<Answer, CoreError> {
    let lease_request = |paths: &[&str], mode| LeaseRequest {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        mode,
        ..Default::default()
    };
    let lease_snapshot = match step {
        Step::Lock {
            agent, paths, mode, ..
        // As on the server, a snapshot that cannot be taken leaves the grant to compare
        // everything (and to give the error).
        } if via_snapshot => store
            .read(|r| r.lease_snapshot(agent, &lease_request(paths, *mode)))
            .ok(),
        _ => None,
    };
    store.write(|tx| match *step {
        Step::AddTask {
            creator,
            ref after,
            role,
            priority,
            approve,
        } => tx
            .create_task(
                &creator.actor(),
                NewTask {
                    title: "a task".into(),
                    after: after.clone(),
                    role: role.map(str::to_string),
                    priority: Some(priority),
                    approve,
                    ..Default::default()
                },
            )
            .map(no_answer),
        Step::Claim { agent, task } => tx.claim_task(agent, task).map(|outcome| Answer {
            claimed: outcome.task.map(|task| task.id),
            granted: Vec::new(),
        }),
        Step::Update { by, task, status } => tx
            .update_task_status(&by.actor(), task, TaskStatusUpdate { status, note: None })
            .map(no_answer),
        Step::Done { by, task } => tx
            .finish_task(&by.actor(), task, TaskFinish::default())
            .map(no_answer),
        Step::Fail { by, task } => tx.fail_task(&by.actor(), task, "gave up").map(no_answer),
        Step::Cancel { by, task } => tx
            .cancel_task(&by.actor(), task, Some("not needed".into()))
            .map(no_answer),
        Step::Reopen { by, task } => tx
            .reopen_task(&by.actor(), task, Some("again".into()))
            .map(no_answer),
        Step::Lock {
            agent,
            ref paths,
            mode,
        } => match &lease_snapshot {
            Some(snapshot) => tx.acquire_leases_after(agent, lease_request(paths, mode), snapshot),
            None => tx.acquire_leases(agent, lease_request(paths, mode)),
        }
        .map(|granted| Answer {
            claimed: None,
            granted,
        }),
        Step::Unlock { by, path, force } => tx
            .release_leases(
                &by.actor(),
                LeaseRelease {
                    paths: vec![path.to_string()],
                    force,
                },
            )
            .map(no_answer),
        Step::Release { agent } => tx
            .release_agent("admin", agent, "process died")
            .map(no_answer),
        Step::Decide { by, task, approve } => {
            let decision = TaskDecision {
                comment: Some("looked at it".into()),
            };
            if approve {
                tx.approve_task(&by.actor(), task, decision).map(no_answer)
            } else {
                tx.reject_task(&by.actor(), task, decision).map(no_answer)
            }
        }
    })
}

/// The store's tasks, leases and last event sequence number, from one snapshot.
fn snapshot(store: &Store) -> (Vec<Task>, Vec<Lease>, i64) {
    let now = chrono::Utc::now().timestamp_millis();
    store
        .read(|r| Ok((r.tasks(None, None)?, r.leases(now)?, r.last_seq()?)))
        .expect("read snapshot")
}

fn new_store() -> Store {
    let store = test_store(StoreConfig::default()).expect("open store");
    for (name, role) in AGENTS {
        store
            .write(|tx| {
                tx.register_agent(
                    "admin",
                    NewAgent {
                        name: name.into(),
                        role: Some(role.into()),
                        ..Default::default()
                    },
                )
            })
            .expect("register agent");
    }
    store
}

// ---- checks ------------------------------------------------------------------------------------

/// Fails the case with the operations run so far.
macro_rules! ensure {
    ($cond:expr, $trace:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!(
                "{}\n\noperations (→ store answer):\n{}",
                format!($($fmt)+),
                $trace.join("\n")
            )));
        }
    };
}

/// Invariants that must hold in any reachable store state, checked on the store alone.
fn check_invariants(
    tasks: &[Task],
    leases: &[Lease],
    trace: &[String],
) -> Result<(), TestCaseError> {
    let status_of: BTreeMap<TaskId, TaskStatus> = tasks.iter().map(|t| (t.id, t.status)).collect();
    for task in tasks {
        let held = conclave_core::store::is_held(task);
        ensure!(
            !held || task.assignee.is_some(),
            trace,
            "{} is {} but has no assignee",
            task.id,
            task.status
        );
        ensure!(
            !task.awaiting_approval
                || (task.status == TaskStatus::Review
                    && task.assignee.is_some()
                    && task.claim_expires_at.is_none()),
            trace,
            "{} waits for approval while {} (assignee {:?}, claim until {:?})",
            task.id,
            task.status,
            task.assignee,
            task.claim_expires_at
        );
        ensure!(
            held || task.status.is_finished() || task.assignee.is_none() || task.awaiting_approval,
            trace,
            "{} is {} yet assigned to {:?}",
            task.id,
            task.status,
            task.assignee
        );
        let waiting_on: Vec<TaskId> = task
            .depends_on
            .iter()
            .copied()
            .filter(|dep| status_of[dep] != TaskStatus::Done)
            .collect();
        ensure!(
            task.status != TaskStatus::Ready || waiting_on.is_empty(),
            trace,
            "{} is ready but its dependencies {:?} are not done",
            task.id,
            waiting_on
        );
        ensure!(
            task.status != TaskStatus::Pending || !waiting_on.is_empty(),
            trace,
            "{} is pending although every dependency is done",
            task.id
        );
        let dead = task
            .depends_on
            .iter()
            .any(|dep| matches!(status_of[dep], TaskStatus::Failed | TaskStatus::Cancelled));
        ensure!(
            !matches!(task.status, TaskStatus::Pending | TaskStatus::Ready) || !dead,
            trace,
            "{} is {} although a dependency failed or was cancelled",
            task.id,
            task.status
        );
        ensure!(
            task.blocked_reason.is_none() || (task.status == TaskStatus::Blocked && dead),
            trace,
            "{} carries a blocked reason {:?} while {}",
            task.id,
            task.blocked_reason,
            task.status
        );
    }

    let mut tokens = BTreeSet::new();
    for (i, first) in leases.iter().enumerate() {
        ensure!(
            tokens.insert(first.fencing_token),
            trace,
            "fencing token {} is used twice",
            first.fencing_token
        );
        for second in &leases[i + 1..] {
            let both_shared = first.mode == LeaseMode::Shared && second.mode == LeaseMode::Shared;
            ensure!(
                first.holder == second.holder
                    || both_shared
                    || !paths_overlap(&first.path, &second.path),
                trace,
                "conflicting leases: {} {} by {} and {} {} by {}",
                first.mode,
                first.path,
                first.holder,
                second.mode,
                second.path,
                second.holder
            );
        }
        if let Some(tied) = first.task {
            let task = tasks.iter().find(|t| t.id == tied);
            ensure!(
                task.is_some_and(|t| conclave_core::store::is_held(t)
                    && t.assignee.as_deref() == Some(&first.holder)),
                trace,
                "lease {} of {} is tied to {} which {} does not hold",
                first.path,
                first.holder,
                tied,
                first.holder
            );
        }
    }
    Ok(())
}

/// The sequence numbers logged since `before` strictly increase and end at `last_seq`.
fn new_event_seqs(store: &Store, before: i64) -> Vec<i64> {
    let filter = conclave_core::model::EventFilter {
        after: Some(before),
        limit: Some(10_000),
        ..Default::default()
    };
    store
        .read(|r| r.events(&filter))
        .expect("read events")
        .into_iter()
        .map(|event| event.seq)
        .collect()
}

/// Runs steps (each chosen knowing the model's state) on a fresh store and on the model, checking
/// everything after each.
fn run_case(mut next_step: impl FnMut(&Model) -> Option<Step>) -> Result<(), TestCaseError> {
    let store = new_store();
    let mut model = Model::default();
    let mut trace: Vec<String> = Vec::new();
    let mut highest_token_granted = 0;
    let (_, _, mut last_seq) = snapshot(&store);

    let mut number = 0;
    while let Some(step) = next_step(&model) {
        number += 1;
        let predicted = model.apply(&step);
        // Every other lease request goes through a snapshot, as the server's do.
        let answer = run_on_store(&store, &step, number % 2 == 0);
        trace.push(format!(
            "{number:>3}. {step:?} → {}",
            match &answer {
                Ok(Answer {
                    claimed: Some(id), ..
                }) => format!("ok, took {id}"),
                Ok(_) => "ok".to_string(),
                Err(error) => format!("{} ({error})", error.code()),
            }
        ));

        // Outcome.
        let effect = match (&predicted, &answer) {
            (Ok(effect), Ok(answer)) => {
                ensure!(
                    effect.claimed == answer.claimed,
                    trace,
                    "claim took {:?}; the model expected {:?}",
                    answer.claimed,
                    effect.claimed
                );
                for lease in &answer.granted {
                    ensure!(
                        lease.fencing_token > highest_token_granted,
                        trace,
                        "fencing token {} granted after {}",
                        lease.fencing_token,
                        highest_token_granted
                    );
                    highest_token_granted = lease.fencing_token;
                }
                Some(effect)
            }
            (Err(code), Err(error)) => {
                ensure!(
                    *code == error.code(),
                    trace,
                    "store failed with {} ({error}); the model expected {code}",
                    error.code()
                );
                None
            }
            (Ok(_), Err(error)) => {
                ensure!(
                    false,
                    trace,
                    "store refused ({error}); the model expected success"
                );
                None
            }
            (Err(code), Ok(_)) => {
                ensure!(false, trace, "store succeeded; the model expected {code}");
                None
            }
        };

        // State.
        let (tasks, leases, seq) = snapshot(&store);
        let store_tasks: BTreeMap<TaskId, (TaskStatus, Option<String>, i64, Vec<TaskId>)> = tasks
            .iter()
            .map(|t| {
                (
                    t.id,
                    (
                        t.status,
                        t.assignee.clone(),
                        t.attempts,
                        t.depends_on.clone(),
                    ),
                )
            })
            .collect();
        let model_tasks: BTreeMap<TaskId, (TaskStatus, Option<String>, i64, Vec<TaskId>)> = model
            .tasks
            .iter()
            .map(|(id, t)| {
                (
                    *id,
                    (t.status, t.assignee.clone(), t.attempts, t.deps.clone()),
                )
            })
            .collect();
        ensure!(
            store_tasks == model_tasks,
            trace,
            "tasks (status, assignee, attempts, deps) differ\n store: {store_tasks:?}\n model: {model_tasks:?}"
        );
        let store_awaiting: BTreeSet<TaskId> = tasks
            .iter()
            .filter(|t| t.awaiting_approval)
            .map(|t| t.id)
            .collect();
        let model_awaiting: BTreeSet<TaskId> = model
            .tasks
            .iter()
            .filter(|(_, t)| t.awaiting_approval)
            .map(|(id, _)| *id)
            .collect();
        ensure!(
            store_awaiting == model_awaiting,
            trace,
            "tasks waiting for approval differ\n store: {store_awaiting:?}\n model: {model_awaiting:?}"
        );
        let mut store_leases: Vec<ModelLease> = leases
            .iter()
            .map(|l| ModelLease {
                path: l.path.clone(),
                holder: l.holder.clone(),
                mode: l.mode,
                task: l.task,
                fencing_token: l.fencing_token,
            })
            .collect();
        store_leases.sort_by(|x, y| (&x.path, &x.holder).cmp(&(&y.path, &y.holder)));
        // The model's map is keyed, and so ordered, by (path, holder) too.
        let model_leases: Vec<ModelLease> = model.leases.values().cloned().collect();
        ensure!(
            store_leases == model_leases,
            trace,
            "leases differ\n store: {store_leases:?}\n model: {model_leases:?}"
        );
        check_invariants(&tasks, &leases, &trace)?;

        // Events.
        let seqs = new_event_seqs(&store, last_seq);
        ensure!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            trace,
            "event sequence numbers do not increase: {seqs:?}"
        );
        ensure!(
            seqs.last().copied().unwrap_or(last_seq) == seq,
            trace,
            "last_seq {seq} is not the last new event of {seqs:?}"
        );
        let changed = effect.is_some_and(|effect| effect.changed);
        ensure!(
            changed != seqs.is_empty(),
            trace,
            "{} events appended, but the operation {}",
            seqs.len(),
            if changed {
                "changed state"
            } else {
                "failed or changed nothing"
            }
        );
        last_seq = seq;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_follows_the_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut ops = ops.iter();
        run_case(|model| ops.next().map(|op| op.resolve(model)))?;
    }
}

proptest! {
    // Each case on PostgreSQL opens a schema of its own: fewer cases keep the suite quick.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_follows_the_reference_model_on_postgres(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let mut result = Ok(());
        with_engine(Engine::Postgres, || {
            let mut ops = ops.iter();
            result = run_case(|model| ops.next().map(|op| op.resolve(model)));
        });
        result?;
    }
}

// ---- focused cases -------------------------------------------------------------------------------

fn add(after: &[i64]) -> Step {
    Step::AddTask {
        creator: Who::Admin,
        after: after.iter().copied().map(TaskId).collect(),
        role: None,
        priority: 0,
        approve: false,
    }
}

/// A task that waits for approval holds back its dependents until a person approves it; a
/// rejection gives it back to its agent, and only the admin decides.
fn an_approval_task_holds_its_dependents_until_a_person_approves() {
    let coder = AGENTS[0].0;
    let first = TaskId(1);
    let model = run_steps(vec![
        Step::AddTask {
            creator: Who::Admin,
            after: vec![],
            role: None,
            priority: 0,
            approve: true,
        },
        add(&[1]),
        Step::Claim {
            agent: coder,
            task: Some(first),
        },
        Step::Done {
            by: Who::Agent(coder),
            task: first,
        },
        Step::Decide {
            by: Who::Agent(coder),
            task: first,
            approve: true,
        },
        Step::Decide {
            by: Who::Admin,
            task: first,
            approve: false,
        },
        Step::Done {
            by: Who::Agent(coder),
            task: first,
        },
        Step::Release { agent: coder },
    ]);
    assert_eq!(status(&model, 1), TaskStatus::Review);
    assert_eq!(status(&model, 2), TaskStatus::Pending);
    let model = run_steps(vec![
        Step::AddTask {
            creator: Who::Admin,
            after: vec![],
            role: None,
            priority: 0,
            approve: true,
        },
        add(&[1]),
        Step::Claim {
            agent: coder,
            task: Some(first),
        },
        Step::Done {
            by: Who::Agent(coder),
            task: first,
        },
        Step::Decide {
            by: Who::Admin,
            task: first,
            approve: true,
        },
    ]);
    assert_eq!(status(&model, 1), TaskStatus::Done);
    assert_eq!(status(&model, 2), TaskStatus::Ready);
}

/// Runs fixed steps through the same checks as the property; returns the model's final state.
fn run_steps(steps: Vec<Step>) -> Model {
    let mut steps = steps.into_iter();
    let mut last = None;
    let result = run_case(|model| {
        let next = steps.next();
        if next.is_none() {
            last = Some(model.clone());
        }
        next
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    last.expect("ran to the end")
}

fn status(model: &Model, id: i64) -> TaskStatus {
    model.tasks[&TaskId(id)].status
}

/// Claiming "next" takes the highest priority, then the lowest id, among ready tasks that fit.
fn claim_next_prefers_priority_then_age_among_fitting_tasks() {
    let task = |role, priority| Step::AddTask {
        creator: Who::Admin,
        after: vec![],
        role,
        priority,
        approve: false,
    };
    let model = run_steps(vec![
        task(None, 1),
        task(Some("reviewer"), 2),
        task(Some("coder"), 1),
        add(&[]),
        Step::Claim {
            agent: "a",
            task: None,
        },
        Step::Claim {
            agent: "c",
            task: None,
        },
        Step::Claim {
            agent: "b",
            task: None,
        },
        Step::Claim {
            agent: "c",
            task: None,
        },
        Step::Claim {
            agent: "c",
            task: None,
        },
    ]);
    let holders: Vec<Option<&str>> = model
        .tasks
        .values()
        .map(|t| t.assignee.as_deref())
        .collect();
    assert_eq!(holders, [Some("a"), Some("c"), Some("b"), Some("c")]);
}

/// Leases taken while holding tasks are tied to the lowest-id one and go when it is done; a
/// lease taken while holding nothing stays.
fn leases_are_tied_to_the_first_held_task() {
    let lock = |agent, path| Step::Lock {
        agent,
        paths: vec![path],
        mode: LeaseMode::Exclusive,
    };
    let model = run_steps(vec![
        lock("a", "README.md"),
        add(&[]),
        add(&[]),
        Step::Claim {
            agent: "a",
            task: Some(TaskId(2)),
        },
        Step::Claim {
            agent: "a",
            task: Some(TaskId(1)),
        },
        lock("a", "src/b.rs"),
        Step::Done {
            by: Who::Agent("a"),
            task: TaskId(1),
        },
    ]);
    let left: Vec<&str> = model.leases.values().map(|l| l.path.as_str()).collect();
    assert_eq!(left, ["README.md"]);
}

/// Shared leases coexist; an exclusive one (or an upgrade to exclusive) conflicts with any
/// overlapping lease of another holder, globs and directories included.
fn lease_modes_and_overlaps() {
    let lock = |agent, paths: &[&'static str], mode| Step::Lock {
        agent,
        paths: paths.to_vec(),
        mode,
    };
    let model = run_steps(vec![
        lock("a", &["src"], LeaseMode::Shared),
        lock("b", &["src/a.rs"], LeaseMode::Shared),
        lock("c", &["docs/**", "src/*.rs"], LeaseMode::Exclusive),
        lock("c", &["docs/guide.md"], LeaseMode::Exclusive),
        lock("a", &["./src//a.rs"], LeaseMode::Exclusive),
        lock("a", &["src"], LeaseMode::Exclusive),
        Step::Unlock {
            by: Who::Agent("a"),
            path: "src/a.rs",
            force: false,
        },
        Step::Unlock {
            by: Who::Admin,
            path: "src/a.rs",
            force: true,
        },
        lock("a", &["src"], LeaseMode::Exclusive),
    ]);
    let leases: Vec<(&str, &str, LeaseMode)> = model
        .leases
        .values()
        .map(|l| (l.path.as_str(), l.holder.as_str(), l.mode))
        .collect();
    assert_eq!(
        leases,
        [
            ("docs/guide.md", "c", LeaseMode::Exclusive),
            ("src", "a", LeaseMode::Exclusive)
        ]
    );
}

/// The store leaves a held task with its holder when a dependency is reopened (the holder is told).
fn a_held_task_stays_held_when_its_dependency_is_reopened() {
    let model = run_steps(vec![
        add(&[]),
        add(&[1]),
        Step::Claim {
            agent: "a",
            task: Some(TaskId(1)),
        },
        Step::Done {
            by: Who::Agent("a"),
            task: TaskId(1),
        },
        Step::Claim {
            agent: "b",
            task: Some(TaskId(2)),
        },
        Step::Reopen {
            by: Who::Admin,
            task: TaskId(1),
        },
        Step::Update {
            by: Who::Agent("b"),
            task: TaskId(2),
            status: TaskStatus::InProgress,
        },
    ]);
    assert_eq!(status(&model, 1), TaskStatus::Ready);
    assert_eq!(status(&model, 2), TaskStatus::InProgress);
}

/// ...but if its holder then dies, the task must not come back `ready` (claimable by anyone)
/// while that dependency is not done: it waits again, as `pending`.
fn a_released_task_waits_again_for_a_reopened_dependency() {
    let model = run_steps(vec![
        add(&[]),
        add(&[1]),
        Step::Claim {
            agent: "a",
            task: Some(TaskId(1)),
        },
        Step::Done {
            by: Who::Agent("a"),
            task: TaskId(1),
        },
        Step::Claim {
            agent: "b",
            task: Some(TaskId(2)),
        },
        Step::Reopen {
            by: Who::Admin,
            task: TaskId(1),
        },
        Step::Release { agent: "b" },
    ]);
    assert_eq!(status(&model, 2), TaskStatus::Pending);
}

/// Each focused case above runs once per engine.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            use super::*;
            $(#[test] fn $name() { with_engine(Engine::Sqlite, super::$name) })*
        }
        mod on_postgres {
            use super::*;
            $(#[test] fn $name() { with_engine(Engine::Postgres, super::$name) })*
        }
    };
}

on_both_engines!(
    an_approval_task_holds_its_dependents_until_a_person_approves,
    claim_next_prefers_priority_then_age_among_fitting_tasks,
    leases_are_tied_to_the_first_held_task,
    lease_modes_and_overlaps,
    a_held_task_stays_held_when_its_dependency_is_reopened,
    a_released_task_waits_again_for_a_reopened_dependency,
);
