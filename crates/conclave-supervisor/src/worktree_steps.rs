//! The git steps of worktree agents on a host that does not run the server (docs/scale-out.md).
//!
//! On the server's host, the server switches an agent's worktree to its task branch inside the
//! claim and commits it inside the `done` (conclave-server's `worktree_tasks`). An agent started
//! by `conclave up --server URL --host build-2` has its worktree in build-2's clone, where the
//! server cannot reach. Its MCP traffic already passes through this host's relay
//! ([`crate::relay`]), which sees the claim before the agent does and the `done` before the
//! server does, so the relay runs those steps here, at the same moments:
//!
//! - **claim**: refused while the worktree holds uncommitted work (it would belong to no task);
//!   after the server's answer, and before the agent sees it, the integration branch is taken
//!   from the shared remote (`[merge] remote`), the task's branch brought in if another host
//!   published it, and the worktree switched to `conclave/<task>`;
//! - **done**: what the agent left uncommitted becomes one commit on the task's branch, and the
//!   branch is pushed to the shared remote *before* the `done` is forwarded, so the queue's host
//!   finds it there; a push the remote refuses stops the `done` with git's reason;
//! - **fail**: the same commit and push ("Given up by …"), so the next holder, on any host,
//!   continues from it.
//!
//! The steps apply to MCP `tools/call` requests, and to the same calls of the JSON API
//! (`POST /api/tasks/claim`, `/api/tasks/{id}/done`, `/fail`: `conclave task claim|done|fail`
//! run by the agent through `CONCLAVE_URL`), of the agents listed in [`WorktreeSteps`] (this
//! host's worktree agents, identified by their token, asked of the server once). Other
//! requests, and other agents', pass through unchanged. A person's assignment
//! (`conclave task assign`) does not pass through the relay: work done on the still detached
//! worktree goes on the task's branch at `done`, as on the server's host.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use conclave_client::Client;
use conclave_core::config::MergeSection;
use conclave_git::{
    AgentWorktrees, DoneCommit, GitError, Identity, Repo, SharedRemote, ShellCommand, TaskSummary,
    commit_on_done, task_branch,
};
use serde_json::Value;

/// The tool calls the steps follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCall {
    /// `claim`, with the task it names (none: the best ready one).
    Claim { task: Option<String> },
    /// `done` of a task, with the agent's summary.
    Done {
        task: String,
        summary: Option<String>,
    },
    /// `fail` of a task, with the reason.
    Fail { task: String, reason: String },
}

/// How the call reached the relay, and so how its answer is worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// An MCP `tools/call` (`POST /mcp`): answers are tool results.
    Mcp,
    /// The JSON API (`POST /api/tasks/claim`, `/api/tasks/{id}/done`, `/fail`: the CLI's
    /// `conclave task claim|done|fail` run by the agent): refusals are API errors.
    Api,
}

impl StepCall {
    /// The call a request makes, when it is one the steps follow.
    pub fn of_request(path: &str, body: &[u8]) -> Option<(StepCall, Way)> {
        if path == "/mcp" {
            return StepCall::parse(body).map(|call| (call, Way::Mcp));
        }
        let rest = path.strip_prefix("/api/tasks/")?;
        let request: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).ok()?
        };
        let text = |name: &str| request[name].as_str().map(str::to_string);
        let call = match rest.split_once('/') {
            None if rest == "claim" => StepCall::Claim { task: text("id") },
            Some((task, "done")) => StepCall::Done {
                task: task.to_string(),
                summary: text("summary"),
            },
            Some((task, "fail")) => StepCall::Fail {
                task: task.to_string(),
                reason: text("reason").unwrap_or_default(),
            },
            _ => return None,
        };
        Some((call, Way::Api))
    }

    /// The call a JSON-RPC request body makes, when it is one the steps follow.
    pub fn parse(body: &[u8]) -> Option<StepCall> {
        let request: Value = serde_json::from_slice(body).ok()?;
        if request["method"] != "tools/call" {
            return None;
        }
        let arguments = &request["params"]["arguments"];
        let text = |name: &str| arguments[name].as_str().map(str::to_string);
        match request["params"]["name"].as_str()? {
            "claim" => Some(StepCall::Claim { task: text("id") }),
            "done" => Some(StepCall::Done {
                task: text("id")?,
                summary: text("summary"),
            }),
            "fail" => Some(StepCall::Fail {
                task: text("id")?,
                reason: text("reason").unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

/// This host's worktree agents and where their worktrees and branches live.
#[derive(Debug)]
pub struct WorktreeSteps {
    root: PathBuf,
    merge: MergeSection,
    remote: String,
    agents: BTreeSet<String>,
    /// Agent names by the `Authorization` header their requests carry (asked of the server
    /// once per token).
    identities: Mutex<HashMap<String, Option<String>>>,
}

impl WorktreeSteps {
    /// Steps for `agents` (worktree agents of this host) in the clone at `root`. Refused when
    /// `[merge] remote` names no remote, or one this clone lacks: their branches could not
    /// reach the queue's host.
    pub fn new(
        root: &Path,
        merge: &MergeSection,
        agents: impl IntoIterator<Item = String>,
    ) -> anyhow::Result<WorktreeSteps> {
        let agents: BTreeSet<String> = agents.into_iter().collect();
        let names: Vec<&str> = agents.iter().map(String::as_str).collect();
        let remote = merge.remote.clone().with_context(|| {
            format!(
                "{} work in worktrees on this host, away from the merge queue's: set [merge] \
                 remote to a git remote every clone shares (docs/scale-out.md), so that their \
                 branches reach it",
                names.join(", ")
            )
        })?;
        let repo = Repo::open(root, Identity::default())
            .with_context(|| format!("{} is not a git clone", root.display()))?;
        SharedRemote::open(&repo, &remote)?;
        Ok(WorktreeSteps {
            root: root.to_path_buf(),
            merge: merge.clone(),
            remote,
            agents,
            identities: Mutex::new(HashMap::new()),
        })
    }

    /// The agent behind `authorization`, when it is one of this host's worktree agents.
    pub async fn agent_of(&self, upstream: &Client, authorization: &str) -> Option<String> {
        let known = self
            .identities
            .lock()
            .ok()
            .and_then(|identities| identities.get(authorization).cloned());
        let name = match known {
            Some(name) => name,
            None => {
                let status = get_json(upstream, authorization, "/api/status")
                    .await
                    .ok()?;
                let name = status["me"].as_str().map(str::to_string);
                if let Ok(mut identities) = self.identities.lock() {
                    identities.insert(authorization.to_string(), name.clone());
                }
                name
            }
        };
        name.filter(|name| self.agents.contains(name))
    }

    fn worktrees(&self, agent: &str) -> Result<AgentWorktrees, GitError> {
        let repo = Repo::open(&self.root, Identity::agent(agent))?;
        let setup = self
            .merge
            .setup
            .as_ref()
            .map(|command| ShellCommand::new(command.clone(), self.merge.check_timeout()));
        Ok(AgentWorktrees::new(repo)?.with_setup(setup))
    }

    fn remote(&self, repo: &Repo) -> Result<SharedRemote, GitError> {
        SharedRemote::open(repo, &self.remote)
    }

    /// Before a claim is forwarded: the refusal to answer when `agent`'s worktree holds
    /// uncommitted work. Blocking.
    pub fn refuse_claim(&self, agent: &str) -> Option<String> {
        let dirty = (|| -> Result<_, GitError> {
            let trees = self.worktrees(agent)?;
            let path = trees.path_of(agent)?;
            if !path.is_dir() {
                return Ok(None);
            }
            let git = trees.repo().git_at(&path);
            let files = git.dirty_files()?;
            if files.is_empty() {
                return Ok(None);
            }
            let head = git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?;
            Ok(Some((path, head.trim().to_string(), files)))
        })();
        match dirty {
            Ok(None) => None,
            Ok(Some((path, head, files))) => {
                let shown: Vec<&str> = files.iter().take(10).map(String::as_str).collect();
                let on = match head.strip_prefix("conclave/") {
                    Some(task) => format!(
                        " on {head}: if {task} is a task you hold, finish it first (done \
                         commits them); else discard them (git stash -u) and claim again"
                    ),
                    None => ": they belong to no task; discard them (git stash -u) and claim \
                             again"
                        .to_string(),
                };
                Some(format!(
                    "cannot claim: your worktree {} has uncommitted changes ({}){on}",
                    path.display(),
                    shown.join(", ")
                ))
            }
            Err(error) => Some(format!("cannot claim: cannot read your worktree: {error}")),
        }
    }

    /// After the server granted `agent` the claim of `task`: the integration branch from the
    /// shared remote, the task's branch brought in, the worktree switched. Answers the line the
    /// agent reads. Blocking.
    pub fn after_claim(&self, agent: &str, task: &str) -> Result<String, GitError> {
        let trees = self.worktrees(agent)?;
        let remote = self.remote(trees.repo())?;
        let into = self.merge.into_branch();
        let branch = task_branch(task)?;
        // The queue's clone publishes the integration branch; here it is only followed.
        if remote.follow(into)?.is_none() {
            trees.repo().ensure_integration_branch(into, None)?;
        }
        remote.bring(&branch)?;
        let checkout = match trees.start_task(agent, task, into) {
            // The task changed hands between two agents of this host (a pipeline's next stage,
            // a holder that died): the branch is still checked out in the other's worktree.
            Err(GitError::CheckedOutElsewhere { path, branch }) => {
                let Some((previous, _)) = trees.locate(&path) else {
                    return Err(GitError::CheckedOutElsewhere { branch, path });
                };
                trees.hand_over(&path, &previous, task, into)?;
                tracing::info!(%previous, task = %task, "the task's branch handed over from its previous holder's worktree");
                trees.start_task(agent, task, into)?
            }
            other => other?,
        };
        Ok(format!(
            "Your worktree is on its branch {} ({}).",
            checkout.branch,
            if checkout.resumed {
                "with the work already on it"
            } else {
                "new, from the integration branch's tip"
            }
        ))
    }

    /// Before a `done` or `fail` of `task` by `agent` is forwarded: its uncommitted work
    /// becomes one commit on the task's branch, and the branch is pushed to the shared remote.
    /// Answers the line the agent reads; an error stops the call. Blocking.
    pub fn publish(&self, agent: &str, task: &TaskSummary) -> Result<String, GitError> {
        let trees = self.worktrees(agent)?;
        let branch = task_branch(&task.id)?;
        let path = trees.path_of(agent)?;
        let into = self.merge.into_branch();
        let git = trees.repo().git_at(&path);
        let head = if path.is_dir() {
            git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?
                .trim()
                .to_string()
        } else {
            String::new()
        };
        if head == "HEAD"
            && trees.repo().branch_tip(&branch)?.is_none()
            && !git.dirty_files()?.is_empty()
        {
            // Work done on a worktree no claim switched (a task given by assignment): it is the
            // task's being finished, so it goes on the task's branch from where it stands.
            git.run(&["switch", "--quiet", "--no-track", "-c", &branch])?;
        }
        // After that switch, the worktree may be on the branch now.
        let on_branch =
            path.is_dir() && git.run(&["rev-parse", "--abbrev-ref", "HEAD"])?.trim() == branch;
        let done = if on_branch {
            Some(commit_on_done(trees.repo().git(), &path, task, into)?)
        } else {
            None
        };
        let remote = self.remote(trees.repo())?;
        if trees.repo().branch_tip(&branch)?.is_none() {
            return Ok(format!(
                "{branch} does not exist in this clone: there is nothing to push."
            ));
        }
        let tip = remote.push(&branch)?;
        Ok(describe(&branch, done.as_ref(), remote.name(), tip.short()))
    }
}

fn describe(branch: &str, done: Option<&DoneCommit>, remote: &str, short: &str) -> String {
    match done {
        None => format!(
            "Your worktree is not on {branch}: its commits as they are were pushed to {remote} \
             ({short})."
        ),
        Some(done) if !done.has_changes() => format!(
            "{branch} changes nothing: there is nothing to merge (pushed to {remote} at {short})."
        ),
        Some(done) => format!(
            "{branch}{} changes {} file(s); pushed to {remote} at {short}, it waits in the merge \
             queue (the task is done once it lands).",
            match &done.committed {
                Some(commit) => format!(" (your uncommitted work committed as {})", commit.short()),
                None => String::new(),
            },
            done.changed_files.len()
        ),
    }
}

/// At the start of a host's share away from the server: the local integration branch becomes
/// the shared remote's (when it has one), so new worktrees start from what has landed. Does
/// nothing without `[merge] remote`. Blocking.
pub fn follow_integration(root: &Path, merge: &MergeSection) -> anyhow::Result<()> {
    let Some(name) = &merge.remote else {
        return Ok(());
    };
    let repo = Repo::open(root, Identity::default())?;
    SharedRemote::open(&repo, name)?
        .follow(merge.into_branch())
        .with_context(|| format!("cannot take {} from {name}", merge.into_branch()))?;
    Ok(())
}

/// A GET with the agent's own credentials.
pub async fn get_json(upstream: &Client, authorization: &str, path: &str) -> anyhow::Result<Value> {
    let answer = upstream
        .http()
        .get(format!("{}{path}", upstream.base_url()))
        .header("Authorization", authorization)
        .send()
        .await?
        .error_for_status()?;
    Ok(answer.json().await?)
}

/// The task id a claim's answer names (`Claimed T-3 [in_progress] ...`).
pub fn claimed_task(answer_text: &str) -> Option<String> {
    let rest = answer_text.strip_prefix("Claimed ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_followed_are_claim_done_and_fail_tool_calls() {
        let call = |name: &str, arguments: Value| {
            serde_json::to_vec(&serde_json::json!({
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": name, "arguments": arguments}
            }))
            .expect("json")
        };
        assert_eq!(
            StepCall::parse(&call("claim", serde_json::json!({}))),
            Some(StepCall::Claim { task: None })
        );
        assert_eq!(
            StepCall::parse(&call(
                "done",
                serde_json::json!({"id": "T-2", "summary": "s"})
            )),
            Some(StepCall::Done {
                task: "T-2".into(),
                summary: Some("s".into())
            })
        );
        assert_eq!(
            StepCall::parse(&call(
                "fail",
                serde_json::json!({"id": "T-2", "reason": "r"})
            )),
            Some(StepCall::Fail {
                task: "T-2".into(),
                reason: "r".into()
            })
        );
        assert_eq!(StepCall::parse(&call("send", serde_json::json!({}))), None);
        assert_eq!(StepCall::parse(b"{\"method\":\"tools/list\"}"), None);
        assert_eq!(StepCall::parse(b"not json"), None);
    }

    #[test]
    fn the_api_routes_followed_are_claim_done_and_fail() {
        assert_eq!(
            StepCall::of_request("/api/tasks/claim", b""),
            Some((StepCall::Claim { task: None }, Way::Api))
        );
        assert_eq!(
            StepCall::of_request("/api/tasks/claim", b"{\"id\":\"T-4\"}"),
            Some((
                StepCall::Claim {
                    task: Some("T-4".into())
                },
                Way::Api
            ))
        );
        assert_eq!(
            StepCall::of_request("/api/tasks/T-4/done", b"{\"summary\":\"s\"}"),
            Some((
                StepCall::Done {
                    task: "T-4".into(),
                    summary: Some("s".into())
                },
                Way::Api
            ))
        );
        assert_eq!(
            StepCall::of_request("/api/tasks/T-4/fail", b"{\"reason\":\"r\"}"),
            Some((
                StepCall::Fail {
                    task: "T-4".into(),
                    reason: "r".into()
                },
                Way::Api
            ))
        );
        assert_eq!(StepCall::of_request("/api/tasks/T-4/status", b"{}"), None);
        assert_eq!(StepCall::of_request("/api/tasks", b"{}"), None);
        assert_eq!(StepCall::of_request("/hooks/stop", b"{}"), None);
    }

    #[test]
    fn a_claims_answer_names_its_task() {
        assert_eq!(
            claimed_task("Claimed T-12 [in_progress] Add a flag").as_deref(),
            Some("T-12")
        );
        assert_eq!(claimed_task("Nothing ready fits you now."), None);
    }
}
