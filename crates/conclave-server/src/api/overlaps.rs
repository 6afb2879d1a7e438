//! `/api/overlaps`: per pair of open task branches (`conclave/T-n`, worktree isolation), the
//! files both have changed since they forked, their worktrees' uncommitted work included
//! (`conclave_git::overlaps_with_work`), so that an overlap shows while the work goes on rather
//! than at the merge. Any agent or person may read it.

use axum::Json;
use axum::extract::State;
use conclave_core::model::{BranchOverlap, OpenBranch, OverlapReport, Task};
use conclave_git::{Identity, Repo, overlaps_with_work, task_branch};

use crate::app::{App, OpError};
use crate::error::ApiResult;

/// Open branches compared at most: each pair costs two `git diff`, so 24 branches (276 pairs)
/// stay within a second or two; beyond, the most recently updated tasks are compared.
const MAX_BRANCHES: usize = 24;

pub async fn show(State(app): State<App>) -> ApiResult<Json<OverlapReport>> {
    let mut open: Vec<Task> = app
        .read(|r| r.tasks(None, None))
        .await?
        .into_iter()
        .filter(|task| task.status.is_held())
        .collect();
    open.sort_by_key(|task| std::cmp::Reverse(task.updated_at));
    let Some(root) = app.settings().project_root.clone() else {
        return Ok(Json(empty(false)));
    };
    let report = tokio::task::spawn_blocking(move || -> Result<OverlapReport, OpError> {
        let Ok(repo) = Repo::open(&root, Identity::default()) else {
            return Ok(empty(false));
        };
        let mut branches = Vec::new();
        let mut left_out = 0;
        for task in open {
            let Ok(branch) = task_branch(&task.id.to_string()) else {
                continue;
            };
            let exists = repo
                .branch_tip(&branch)
                .map_err(|error| OpError::Worker(error.to_string()))?
                .is_some();
            if !exists {
                continue;
            }
            if branches.len() == MAX_BRANCHES {
                left_out += 1;
                continue;
            }
            branches.push(OpenBranch {
                task: task.id,
                branch,
                agent: task.assignee.clone(),
            });
        }
        // Oldest task first, so that pairs read in a stable order.
        branches.sort_by_key(|branch| branch.task);
        let names: Vec<String> = branches.iter().map(|b| b.branch.clone()).collect();
        let found = overlaps_with_work(&repo, &names)
            .map_err(|error| OpError::Worker(error.to_string()))?;
        let by_name = |name: &str| branches.iter().find(|b| b.branch == name).cloned();
        let overlaps = found
            .into_iter()
            .filter_map(|overlap| {
                Some(BranchOverlap {
                    first: by_name(&overlap.first)?,
                    second: by_name(&overlap.second)?,
                    files: overlap.files,
                })
            })
            .collect();
        Ok(OverlapReport {
            git: true,
            branches,
            left_out,
            overlaps,
        })
    })
    .await
    .map_err(|error| OpError::Worker(format!("overlap thread: {error}")))??;
    Ok(Json(report))
}

fn empty(git: bool) -> OverlapReport {
    OverlapReport {
        git,
        branches: Vec::new(),
        left_out: 0,
        overlaps: Vec::new(),
    }
}
