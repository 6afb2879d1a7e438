//! `GET /api/tasks/{id}/diff`: what a task's branch (`conclave/T-n`, worktree isolation) changed
//! since it forked from the integration branch, for the person deciding on it (the dashboard's
//! "waiting for you" list, `conclave task show ID --diff`). The file list is always complete;
//! the patch is bounded (`max_bytes`). A task without a branch (its agent works in the shared
//! tree) has no diff: a 404 that says so. Any agent or person may read it.

use axum::Json;
use axum::extract::State;
use conclave_core::CoreError;
use conclave_core::config::DEFAULT_INTEGRATION_BRANCH;
use conclave_core::model::{DEFAULT_DIFF_BYTES, DiffFileStat, MAX_DIFF_BYTES, TaskDiff, TaskId};
use conclave_git::{GitError, Identity, Repo, branch_diff, task_branch};
use serde::Deserialize;

use crate::app::{App, OpError};
use crate::error::ApiResult;
use crate::extract::{ApiPath, ApiQuery};

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// The most bytes of patch text answered (default 262,144; at most 4,194,304: a larger
    /// number is read as that). The file list is complete whatever the bound.
    pub max_bytes: Option<u64>,
}

pub async fn show(
    State(app): State<App>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DiffQuery>,
) -> ApiResult<Json<TaskDiff>> {
    let id = id.parse::<TaskId>()?;
    // A task that does not exist is a 404 of its own, before git is asked anything.
    app.read(move |r| r.task(id)).await?;
    let max_bytes = query
        .max_bytes
        .unwrap_or(DEFAULT_DIFF_BYTES)
        .clamp(1, MAX_DIFF_BYTES);
    let into = app
        .settings()
        .merge
        .as_ref()
        .and_then(|queue| queue.settings().into.clone())
        .unwrap_or_else(|| DEFAULT_INTEGRATION_BRANCH.to_string());
    let no_branch = move |why: &str| -> OpError {
        CoreError::NotFound(format!(
            "{id} has no branch to show ({why}): only a task worked on in a worktree \
             (isolation = \"worktree\") has one"
        ))
        .into()
    };
    let Some(root) = app.settings().project_root.clone() else {
        return Err(no_branch("the server has no project folder").into());
    };
    let diff = tokio::task::spawn_blocking(move || -> Result<TaskDiff, OpError> {
        let Ok(repo) = Repo::open(&root, Identity::default()) else {
            return Err(no_branch("the project is not a git repository"));
        };
        let branch = task_branch(&id.to_string()).map_err(|error| worker(&error))?;
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let diff = match branch_diff(repo.git(), &into, &branch, max) {
            Ok(diff) => diff,
            Err(GitError::NoSuchBranch(missing)) if missing == branch => {
                return Err(no_branch(&format!("there is no branch {branch}")));
            }
            Err(GitError::NoSuchBranch(missing)) => {
                return Err(CoreError::NotFound(format!(
                    "the integration branch {missing} does not exist yet: {branch} has \
                     nothing to be compared with"
                ))
                .into());
            }
            Err(error) => return Err(worker(&error)),
        };
        let (added, removed) = diff.totals();
        Ok(TaskDiff {
            task: id,
            branch,
            into,
            base: diff.base.map(|base| base.0),
            head: diff.head.0,
            files: diff
                .files
                .into_iter()
                .map(|file| DiffFileStat {
                    binary: file.is_binary(),
                    path: file.path,
                    old_path: file.old_path,
                    added: file.added,
                    removed: file.removed,
                })
                .collect(),
            added,
            removed,
            patch: diff.patch,
            truncated: diff.truncated,
            max_bytes,
        })
    })
    .await
    .map_err(|error| OpError::Worker(format!("diff thread: {error}")))??;
    Ok(Json(diff))
}

fn worker(error: &GitError) -> OpError {
    OpError::Worker(error.to_string())
}
