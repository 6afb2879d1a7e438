//! Write attribution for shell commands (issue 11): every file a `Bash` tool call creates,
//! changes or deletes is recorded as `file.touched` by the agent that ran it, with its task and
//! the command, in a shared tree or in the agent's own worktree.
//!
//! The `PreToolUse` hook of a `Bash` call snapshots the git tree of the agent's `cwd`
//! ([`TreeSnapshot::capture`]: `git status --porcelain` and the stamps of the listed files); the
//! `PostToolUse` hook of the same call (same session and `tool_use_id`) snapshots it again and
//! compares. Between the two, the snapshot waits in [`ShellRuns`], bounded in entries, in the
//! paths held, and in time (a call whose `PostToolUse` never comes is forgotten).
//!
//! Who wrote a changed file is judged by [`judge`]:
//! - another agent's `Edit`/`Write` of it during the command (its `file.touched`, or the lease its
//!   `PreToolUse` took just before writing) accounts for it: not the shell's doing;
//! - a lease of another agent whose own shell command ran in the same tree at the same time
//!   accounts for it too (that agent's `PostToolUse` attributes it);
//! - otherwise it is the caller's, marked `ambiguous` with the other `candidates` when other
//!   agents' shell commands ran in the same tree at the same time;
//! - in a shared tree, a caller's write to a file another agent holds a lease on raises an
//!   `agent.alert` naming both agents and the command, and an urgent message to the holder.
//!
//! Manifests and lockfiles changed (by a shell command here, by `Edit`/`Write` in the hooks) are
//! also recorded as `file.dependency_changed`, which the task API shows on the task.
//!
//! The snapshots run in the server process, so they see the agent's files only when the server
//! runs on the agent's host (every setup today); for another host, nothing is attributed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use conclave_core::event::{AgentAlert, DependencyChanged, FileTouched, MAX_COMMAND_CHARS};
use conclave_core::model::{
    Actor, EventFilter, EventPayload, FILE_WRITING_TOOLS, MessageKind, NewMessage,
};
use conclave_core::paths;
use conclave_git::{ChangeKind, DependencyFile, Git, TreeSnapshot, dependency_file};

use crate::app::{App, OpError};
use crate::ops::IdempotencyKey;

/// Shell calls whose `PostToolUse` is awaited at once; the oldest is forgotten beyond.
const MAX_PENDING_RUNS: usize = 256;
/// Paths held in all waiting snapshots together (about 100 bytes each).
const MAX_HELD_PATHS: usize = 200_000;
/// A snapshot listing more paths than this (a tree full of untracked output) is not kept: the
/// command is not attributed.
const MAX_SNAPSHOT_PATHS: usize = 50_000;
/// A waiting snapshot older than this is forgotten: longer than Claude Code's longest `Bash`
/// timeout (10 minutes).
const RUN_TTL: Duration = Duration::from_secs(15 * 60);
/// Finished runs remembered, to tell whether another agent's command ran at the same time.
const MAX_FINISHED_RUNS: usize = 512;
/// The most files one command is credited with (a generator writing thousands of files is
/// recorded by its first ones; dependency files always are).
const MAX_TOUCHED_PER_COMMAND: usize = 500;
/// Files named in one alert.
const MAX_ALERT_FILES: usize = 20;
/// Events read to find other agents' edits during a command.
const EVIDENCE_EVENTS: i64 = 10_000;

/// Who ran what, where: the key of a waiting snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RunKey {
    agent: String,
    session: String,
    tool_use: String,
}

struct PendingRun {
    tree: PathBuf,
    started: Instant,
    started_at: DateTime<Utc>,
    snapshot: TreeSnapshot,
}

#[derive(Debug, Clone)]
struct FinishedRun {
    agent: String,
    tree: PathBuf,
    finished: Instant,
}

/// The shell calls between their `PreToolUse` and `PostToolUse`, and the recently finished ones,
/// in memory (bounded; lost on restart, when those calls simply go unattributed).
#[derive(Default)]
pub struct ShellRuns {
    state: Mutex<RunsState>,
    /// The project root as a real path (symlinks resolved, as git reports work trees), found
    /// once: changed files are mapped against it.
    real_root: OnceLock<Option<PathBuf>>,
}

#[derive(Default)]
struct RunsState {
    pending: HashMap<RunKey, PendingRun>,
    held_paths: usize,
    finished: VecDeque<FinishedRun>,
}

impl ShellRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunsState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, key: RunKey, run: PendingRun) {
        let mut state = self.lock();
        let now = Instant::now();
        state.expire(now);
        if let Some(old) = state.pending.remove(&key) {
            state.held_paths -= old.snapshot.entries.len();
        }
        let size = run.snapshot.entries.len();
        while !state.pending.is_empty()
            && (state.pending.len() >= MAX_PENDING_RUNS || state.held_paths + size > MAX_HELD_PATHS)
        {
            state.evict_oldest();
        }
        state.held_paths += size;
        state.pending.insert(key, run);
    }

    fn take(&self, key: &RunKey) -> Option<PendingRun> {
        let mut state = self.lock();
        state.expire(Instant::now());
        let run = state.pending.remove(key)?;
        state.held_paths -= run.snapshot.entries.len();
        Some(run)
    }

    /// Other agents whose shell commands ran in `tree` at some point between `since` and now
    /// (still running, or finished).
    fn concurrent(&self, agent: &str, tree: &Path, since: Instant) -> Vec<String> {
        let mut state = self.lock();
        state.expire(Instant::now());
        let mut others = BTreeSet::new();
        for (key, run) in &state.pending {
            if key.agent != agent && run.tree == tree {
                others.insert(key.agent.clone());
            }
        }
        for run in &state.finished {
            if run.agent != agent && run.tree == tree && run.finished >= since {
                others.insert(run.agent.clone());
            }
        }
        others.into_iter().collect()
    }

    fn finished(&self, run: FinishedRun) {
        let mut state = self.lock();
        if state.finished.len() >= MAX_FINISHED_RUNS {
            state.finished.pop_front();
        }
        state.finished.push_back(run);
    }

    #[cfg(test)]
    fn pending_len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.pending.len(), state.held_paths)
    }
}

impl RunsState {
    fn expire(&mut self, now: Instant) {
        let expired: Vec<RunKey> = self
            .pending
            .iter()
            .filter(|(_, run)| now.duration_since(run.started) > RUN_TTL)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            if let Some(run) = self.pending.remove(&key) {
                self.held_paths -= run.snapshot.entries.len();
            }
        }
        while self
            .finished
            .front()
            .is_some_and(|run| now.duration_since(run.finished) > RUN_TTL)
        {
            self.finished.pop_front();
        }
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .pending
            .iter()
            .min_by_key(|(_, run)| run.started)
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest
            && let Some(run) = self.pending.remove(&key)
        {
            self.held_paths -= run.snapshot.entries.len();
        }
    }
}

/// A `Bash` tool call as its hooks describe it.
#[derive(Debug, Clone)]
pub struct ShellCall {
    pub session: String,
    pub tool_use: String,
    pub cwd: PathBuf,
    pub command: String,
}

impl ShellCall {
    /// The call, when the hook input is a `Bash` call with a working folder. Without a
    /// `tool_use_id` (older clients) the session and the command tell the pre and post apart.
    pub fn from_hook(
        tool_name: Option<&str>,
        session_id: Option<&str>,
        tool_use_id: Option<&str>,
        cwd: Option<&str>,
        tool_input: Option<&serde_json::Value>,
    ) -> Option<ShellCall> {
        if tool_name != Some("Bash") {
            return None;
        }
        let cwd = PathBuf::from(cwd?);
        if !cwd.is_absolute() {
            return None;
        }
        let command = tool_input
            .and_then(|input| input.get("command"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string();
        let tool_use = match tool_use_id {
            Some(id) if !id.is_empty() => id.chars().take(200).collect(),
            _ => format!("command:{command}"),
        };
        Some(ShellCall {
            session: session_id.unwrap_or("").chars().take(200).collect(),
            tool_use,
            cwd,
            command,
        })
    }

    fn key(&self, agent: &str) -> RunKey {
        RunKey {
            agent: agent.to_string(),
            session: self.session.clone(),
            tool_use: self.tool_use.clone(),
        }
    }
}

/// `PreToolUse` of a `Bash` call: snapshots the tree of its working folder. Never fails the
/// hook: a folder outside git, or a git error, leaves the call unattributed.
pub async fn before_shell(app: &App, agent: &str, call: &ShellCall) {
    // Before the snapshot: whatever other agents record from here on may explain a change.
    let started = Instant::now();
    let started_at = Utc::now();
    let cwd = call.cwd.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        let tree = tree_top(&cwd)?;
        TreeSnapshot::capture(&tree).ok()
    })
    .await
    .ok()
    .flatten();
    let Some(snapshot) = snapshot else { return };
    if snapshot.entries.len() > MAX_SNAPSHOT_PATHS {
        tracing::warn!(
            agent,
            paths = snapshot.entries.len(),
            "too many changed files to attribute shell writes in {}",
            snapshot.root.display()
        );
        return;
    }
    let run = PendingRun {
        tree: snapshot.root.clone(),
        started,
        started_at,
        snapshot,
    };
    app.shell_runs().insert(call.key(agent), run);
}

/// `PostToolUse` of a `Bash` call: compares the tree with its snapshot and records what the
/// command wrote (see the module's documentation). Never fails the hook.
pub async fn after_shell(app: &App, actor: &Actor, agent: &str, call: &ShellCall) {
    if let Err(error) = attribute(app, actor, agent, call).await {
        tracing::warn!(agent, ?error, "attributing a shell command's writes failed");
    }
}

async fn attribute(app: &App, actor: &Actor, agent: &str, call: &ShellCall) -> Result<(), OpError> {
    let runs = app.shell_runs();
    let Some(run) = runs.take(&call.key(agent)) else {
        return Ok(());
    };
    let project_root = app.settings().project_root.clone();
    let before = run.snapshot;
    let on_thread = app.clone();
    // Git runs on a blocking thread: the snapshot, and once per server the real project root.
    let (tree, changes, real_root) = tokio::task::spawn_blocking(move || {
        let real_root = on_thread
            .shell_runs()
            .real_root
            .get_or_init(|| {
                project_root
                    .as_deref()
                    .map(|root| std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()))
            })
            .clone();
        let after = TreeSnapshot::capture_after(&before)?;
        let changes = before.changes(&after);
        Ok::<_, conclave_git::GitError>((after.root, changes, real_root))
    })
    .await
    .map_err(|error| OpError::Worker(format!("snapshot thread: {error}")))?
    .map_err(|error| OpError::Worker(error.to_string()))?;
    runs.finished(FinishedRun {
        agent: agent.to_string(),
        tree: tree.clone(),
        finished: Instant::now(),
    });
    // Without a project root (a server started outside one), the tree's own paths are used.
    let root = real_root.unwrap_or_else(|| tree.clone());
    let mut files: Vec<(String, ChangeKind)> = changes
        .into_iter()
        .filter_map(|change| {
            project_file(&root, &tree, &change.path).map(|path| (path, change.kind))
        })
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    // Dependency files first, so that the cap never drops them.
    files.sort_by_key(|(path, _)| dependency_file(path).is_none());
    files.truncate(MAX_TOUCHED_PER_COMMAND);
    let shared_tree = !in_agent_worktree(&root, &tree);
    let concurrent = runs.concurrent(agent, &tree, run.started);
    let caller = agent.to_string();
    let command = bounded_command(&call.command);
    let since = run.started_at;
    app.write(actor, &IdempotencyKey::default(), move |tx| {
        // Read first (the reader borrows the transaction), then write.
        let (judged, task) = {
            let reader = tx.read();
            let edits = recent_edits(&reader, &caller, since)?;
            let now_ms = Utc::now().timestamp_millis();
            let mut judged = Vec::with_capacity(files.len());
            for (path, kind) in files {
                let holders = match paths::normalize_lease_path(&crate::hooks::escape_glob(&path)) {
                    Ok(pattern) => reader.lease_holders_overlapping(&pattern, now_ms)?,
                    Err(_) => Vec::new(),
                };
                let evidence = Evidence {
                    editors: edits.get(&path).cloned().unwrap_or_default(),
                    lease_holders: holders,
                    concurrent: concurrent.clone(),
                };
                judged.push((path, kind, judge(&caller, shared_tree, &evidence)));
            }
            let task = reader.first_held_task(&caller)?;
            (judged, task)
        };
        let mut alerts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, kind, verdict) in judged {
            let Verdict::Caller {
                ambiguous_with,
                alert_holders,
            } = verdict
            else {
                continue;
            };
            if let Some(dependency) = dependency_event(&path, "Bash", Some(&command)) {
                tx.emit(&caller, task, Some(&caller), dependency)?;
            }
            let touched = FileTouched {
                path: path.clone(),
                tool: "Bash".to_string(),
                command: Some(command.clone()),
                change: Some(change_name(kind).to_string()),
                ambiguous: !ambiguous_with.is_empty(),
                candidates: ambiguous_with,
                // A shell write takes no lease: nothing for `done` to compare.
                fencing_token: None,
            };
            tx.emit(
                &caller,
                task,
                Some(&caller),
                EventPayload::FileTouched(touched),
            )?;
            for holder in alert_holders {
                alerts.entry(holder).or_default().push(path.clone());
            }
        }
        for (holder, files) in alerts {
            let named = name_files(&files);
            let alert = AgentAlert {
                cause: "shell_write".to_string(),
                message: format!(
                    "{caller}'s shell command `{command}` wrote {named}, leased by {holder}"
                ),
            };
            tx.emit(
                &caller,
                task,
                Some(&caller),
                EventPayload::AgentAlert(alert),
            )?;
            let body = format!(
                "{caller}'s shell command `{command}` wrote {named}, which you hold a lease on. \
                 Look at the file before you go on, and settle it with {caller}."
            );
            tx.send_message(
                &Actor::System,
                NewMessage {
                    to: holder.clone(),
                    body,
                    thread: None,
                    kind: MessageKind::Alert,
                    urgent: true,
                },
            )?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// `file.dependency_changed` for a changed manifest or lockfile, none for another file.
pub fn dependency_event(path: &str, tool: &str, command: Option<&str>) -> Option<EventPayload> {
    let dependency = dependency_file(path)?;
    let file = match dependency {
        DependencyFile::Manifest { .. } => "manifest",
        DependencyFile::Lockfile { .. } => "lockfile",
    };
    Some(EventPayload::FileDependencyChanged(DependencyChanged {
        path: path.to_string(),
        ecosystem: dependency.ecosystem().to_string(),
        file: file.to_string(),
        tool: tool.to_string(),
        command: command.map(bounded_command),
    }))
}

/// What points at other agents for one changed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// Agents whose `Edit`/`Write` of the file happened during the command (the caller's own
    /// included: its edit is recorded already).
    pub editors: Vec<String>,
    /// Agents holding a live lease that covers the file.
    pub lease_holders: Vec<String>,
    /// Agents whose shell commands ran in the same tree during the command.
    pub concurrent: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Another agent's edit, or the lease of another agent whose shell ran meanwhile, accounts
    /// for the change: not the caller's.
    Accounted { by: Vec<String> },
    /// The caller's write; `ambiguous_with` names other agents who may have written it too, and
    /// `alert_holders` the other agents whose lease it broke (in a shared tree).
    Caller {
        ambiguous_with: Vec<String>,
        alert_holders: Vec<String>,
    },
}

/// Who changed a file during `caller`'s shell command, from the evidence: an edit recorded
/// during the command explains it; else the lease of another agent whose shell ran meanwhile;
/// else it is the caller's (ambiguous when other agents' commands ran in the tree meanwhile).
pub(crate) fn judge(caller: &str, shared_tree: bool, evidence: &Evidence) -> Verdict {
    let others = |names: &[String]| -> Vec<String> {
        let set: BTreeSet<&String> = names.iter().filter(|name| *name != caller).collect();
        set.into_iter().cloned().collect()
    };
    if !evidence.editors.is_empty() {
        let editors: BTreeSet<&String> = evidence.editors.iter().collect();
        return Verdict::Accounted {
            by: editors.into_iter().cloned().collect(),
        };
    }
    let holders = others(&evidence.lease_holders);
    let concurrent = others(&evidence.concurrent);
    let running_holders: Vec<String> = holders
        .iter()
        .filter(|holder| concurrent.contains(holder))
        .cloned()
        .collect();
    if !running_holders.is_empty() {
        return Verdict::Accounted {
            by: running_holders,
        };
    }
    Verdict::Caller {
        ambiguous_with: concurrent,
        alert_holders: if shared_tree { holders } else { Vec::new() },
    }
}

/// Per project path, the agents that edited it since `since`: a `file.touched` by a
/// file-writing tool (the caller's own included: that edit is recorded already), or, for other
/// agents, the lease their `PreToolUse` took just before writing.
fn recent_edits(
    reader: &conclave_core::store::Reader<'_>,
    caller: &str,
    since: DateTime<Utc>,
) -> conclave_core::Result<HashMap<String, Vec<String>>> {
    let mut edits: HashMap<String, Vec<String>> = HashMap::new();
    for kind in ["file.touched", "lease."] {
        let filter = EventFilter {
            kind: Some(kind.to_string()),
            since: Some(since),
            limit: Some(EVIDENCE_EVENTS),
            desc: true,
            ..EventFilter::default()
        };
        for event in reader.events(&filter)? {
            let Some(agent) = event.agent.clone() else {
                continue;
            };
            let path = match &event.payload {
                // The caller's own Edit recorded its write already.
                EventPayload::FileTouched(touched)
                    if FILE_WRITING_TOOLS.contains(&touched.tool.as_str()) =>
                {
                    touched.path.clone()
                }
                EventPayload::LeaseGranted(lease) | EventPayload::LeaseRenewed(lease)
                    if agent != caller =>
                {
                    lease.path.clone()
                }
                _ => continue,
            };
            let path = unescape_glob(&path);
            let agents = edits.entry(path).or_default();
            if !agents.contains(&agent) {
                agents.push(agent);
            }
        }
    }
    Ok(edits)
}

/// The file a lease pattern written by the hooks names (`app/[[]id]` → `app/[id]`).
fn unescape_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        let escaped = ['[', '*', '?']
            .iter()
            .find(|special| rest.starts_with(&format!("[{special}]")));
        match escaped {
            Some(special) => {
                out.push(*special);
                rest = &rest[3..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

fn change_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Created => "created",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
    }
}

fn bounded_command(command: &str) -> String {
    let command = command.trim();
    if command.chars().count() <= MAX_COMMAND_CHARS {
        return command.to_string();
    }
    let mut cut: String = command.chars().take(MAX_COMMAND_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn name_files(files: &[String]) -> String {
    let shown: Vec<&str> = files
        .iter()
        .take(MAX_ALERT_FILES)
        .map(String::as_str)
        .collect();
    let mut text = shown.join(", ");
    if files.len() > MAX_ALERT_FILES {
        text.push_str(&format!(" and {} more", files.len() - MAX_ALERT_FILES));
    }
    text
}

/// The top folder of the git work tree holding `dir` (real path), if any.
fn tree_top(dir: &Path) -> Option<PathBuf> {
    let output = Git::new(dir)
        .output(&["rev-parse", "--show-toplevel"])
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    std::fs::canonicalize(text).ok()
}

/// The project-relative path of a file a shell command changed (`path`, relative to the work
/// tree `tree`), by the one mapping every way in uses ([`paths::project_path`]), so that shell
/// writes name the same files as leases and edits whichever tree they happened in; `None` for a
/// file outside the project or in Conclave's own folder.
fn project_file(root: &Path, tree: &Path, path: &str) -> Option<String> {
    let relative = paths::project_path(root, tree, path)?;
    (relative != ".conclave" && !relative.starts_with(".conclave/")).then_some(relative)
}

/// Whether `tree` is an agent's own worktree (under the project's worktrees folder) rather than
/// the tree the team shares.
fn in_agent_worktree(root: &Path, tree: &Path) -> bool {
    tree.starts_with(root.join(paths::WORKTREES_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn another_agents_edit_during_the_command_is_not_the_callers() {
        let evidence = Evidence {
            editors: names(&["bob"]),
            lease_holders: names(&["bob"]),
            concurrent: Vec::new(),
        };
        assert_eq!(
            judge("alice", true, &evidence),
            Verdict::Accounted {
                by: names(&["bob"])
            }
        );
    }

    #[test]
    fn a_write_to_a_file_leased_by_an_idle_agent_is_the_callers_and_alerts_in_a_shared_tree() {
        let evidence = Evidence {
            lease_holders: names(&["bob", "alice"]),
            ..Evidence::default()
        };
        assert_eq!(
            judge("alice", true, &evidence),
            Verdict::Caller {
                ambiguous_with: Vec::new(),
                alert_holders: names(&["bob"]),
            }
        );
        // In the caller's own worktree the holder's copy is untouched: no alert.
        assert_eq!(
            judge("alice", false, &evidence),
            Verdict::Caller {
                ambiguous_with: Vec::new(),
                alert_holders: Vec::new(),
            }
        );
    }

    #[test]
    fn a_holder_whose_own_shell_ran_meanwhile_accounts_for_its_file() {
        let evidence = Evidence {
            lease_holders: names(&["bob"]),
            concurrent: names(&["bob", "carol"]),
            ..Evidence::default()
        };
        assert_eq!(
            judge("alice", true, &evidence),
            Verdict::Accounted {
                by: names(&["bob"])
            }
        );
    }

    #[test]
    fn an_unleased_file_written_while_others_ran_commands_is_ambiguous() {
        let evidence = Evidence {
            concurrent: names(&["carol", "alice", "bob"]),
            ..Evidence::default()
        };
        assert_eq!(
            judge("alice", true, &evidence),
            Verdict::Caller {
                ambiguous_with: names(&["bob", "carol"]),
                alert_holders: Vec::new(),
            }
        );
        // The caller's own lease and its own concurrent calls point at nobody else.
        let own = Evidence {
            lease_holders: names(&["alice"]),
            concurrent: names(&["alice"]),
            ..Evidence::default()
        };
        assert_eq!(
            judge("alice", true, &own),
            Verdict::Caller {
                ambiguous_with: Vec::new(),
                alert_holders: Vec::new(),
            }
        );
        // Its own Edit during the command recorded the write already.
        let edited = Evidence {
            editors: names(&["alice"]),
            ..own
        };
        assert_eq!(
            judge("alice", true, &edited),
            Verdict::Accounted {
                by: names(&["alice"])
            }
        );
    }

    #[test]
    fn escaped_lease_patterns_read_back_as_file_names() {
        assert_eq!(unescape_glob("app/[[]id]/page.tsx"), "app/[id]/page.tsx");
        assert_eq!(unescape_glob("a/[*]b[?]"), "a/*b?");
        assert_eq!(unescape_glob("plain/é.rs"), "plain/é.rs");
        let path = "x/[y]*?.rs";
        assert_eq!(unescape_glob(&crate::hooks::escape_glob(path)), path);
    }

    #[test]
    fn project_paths_map_worktrees_and_skip_conclaves_own_folder() {
        // The project in a folder of its repository, the team's tree at the repository's top.
        let root = Path::new("/repo/app");
        let main = Path::new("/repo");
        assert_eq!(
            project_file(root, main, "app/src/a.rs").as_deref(),
            Some("src/a.rs")
        );
        assert_eq!(
            project_file(root, main, "other/b.rs"),
            None,
            "outside the project"
        );
        assert_eq!(project_file(root, main, "app/.conclave/x"), None);
        assert!(!in_agent_worktree(root, main));
        // An agent's worktree: its files are the project's.
        let root = Path::new("/repo");
        let worktree = Path::new("/repo/.conclave/worktrees/alice");
        assert_eq!(
            project_file(root, worktree, "src/a.rs").as_deref(),
            Some("src/a.rs")
        );
        assert_eq!(project_file(root, worktree, ".conclave/x"), None);
        assert!(in_agent_worktree(root, worktree));
        assert!(!in_agent_worktree(root, root));
        // Without a project root, the tree's own paths.
        assert_eq!(
            project_file(main, main, "src/a.rs").as_deref(),
            Some("src/a.rs")
        );
    }

    #[test]
    fn manifests_and_lockfiles_make_dependency_events_with_the_command() {
        let Some(EventPayload::FileDependencyChanged(changed)) =
            dependency_event("crates/x/Cargo.lock", "Bash", Some("cargo add serde"))
        else {
            panic!("a lockfile is a dependency file");
        };
        assert_eq!(changed.ecosystem, "cargo");
        assert_eq!(changed.file, "lockfile");
        assert_eq!(changed.command.as_deref(), Some("cargo add serde"));
        assert!(dependency_event("src/main.rs", "Edit", None).is_none());
    }

    fn snapshot_of(paths: usize) -> TreeSnapshot {
        let entries = (0..paths)
            .map(|n| {
                (
                    format!("f{n}"),
                    conclave_git::SnapshotEntry {
                        status: "??".into(),
                        stamp: None,
                    },
                )
            })
            .collect();
        TreeSnapshot {
            root: PathBuf::from("/t"),
            entries,
        }
    }

    fn key(n: usize) -> RunKey {
        RunKey {
            agent: "alice".into(),
            session: "s".into(),
            tool_use: format!("t{n}"),
        }
    }

    #[test]
    fn waiting_snapshots_are_bounded_in_number_and_in_paths_held() {
        let runs = ShellRuns::default();
        for n in 0..MAX_PENDING_RUNS + 10 {
            runs.insert(
                key(n),
                PendingRun {
                    tree: PathBuf::from("/t"),
                    started: Instant::now(),
                    started_at: Utc::now(),
                    snapshot: snapshot_of(1),
                },
            );
        }
        assert_eq!(runs.pending_len(), (MAX_PENDING_RUNS, MAX_PENDING_RUNS));
        assert!(runs.take(&key(0)).is_none(), "the oldest was forgotten");
        assert!(runs.take(&key(MAX_PENDING_RUNS + 9)).is_some());
        // A big snapshot pushes older ones out to stay within the paths held.
        runs.insert(
            key(9999),
            PendingRun {
                tree: PathBuf::from("/t"),
                started: Instant::now(),
                started_at: Utc::now(),
                snapshot: snapshot_of(MAX_HELD_PATHS - 10),
            },
        );
        let (count, held) = runs.pending_len();
        assert!(held <= MAX_HELD_PATHS, "{held}");
        assert!(count <= 11, "{count}");
        assert!(runs.take(&key(9999)).is_some());
    }

    #[test]
    fn a_snapshot_whose_post_never_came_expires() {
        let runs = ShellRuns::default();
        let Some(long_ago) = Instant::now().checked_sub(RUN_TTL + Duration::from_secs(1)) else {
            return; // a machine up for less than the TTL cannot express the case
        };
        runs.insert(
            key(1),
            PendingRun {
                tree: PathBuf::from("/t"),
                started: long_ago,
                started_at: Utc::now(),
                snapshot: snapshot_of(3),
            },
        );
        assert!(runs.take(&key(1)).is_none());
        assert_eq!(runs.pending_len(), (0, 0));
    }

    #[test]
    fn other_agents_commands_in_the_same_tree_overlapping_the_window_are_concurrent() {
        let runs = ShellRuns::default();
        let start = Instant::now();
        runs.insert(
            RunKey {
                agent: "bob".into(),
                session: "s".into(),
                tool_use: "b".into(),
            },
            PendingRun {
                tree: PathBuf::from("/t"),
                started: start,
                started_at: Utc::now(),
                snapshot: snapshot_of(0),
            },
        );
        runs.finished(FinishedRun {
            agent: "carol".into(),
            tree: PathBuf::from("/t"),
            finished: Instant::now(),
        });
        runs.finished(FinishedRun {
            agent: "dave".into(),
            tree: PathBuf::from("/elsewhere"),
            finished: Instant::now(),
        });
        assert_eq!(
            runs.concurrent("alice", Path::new("/t"), start),
            names(&["bob", "carol"])
        );
        assert_eq!(
            runs.concurrent("bob", Path::new("/t"), Instant::now()),
            Vec::<String>::new()
        );
    }
}
