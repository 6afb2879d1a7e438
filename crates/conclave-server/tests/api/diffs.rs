//! `GET /api/tasks/{id}/diff` over a real git repository: the task's branch against the
//! integration branch (what it changed since it forked, not what landed since), the file list
//! complete when the patch is cut, and a clear 404 for a task with no branch.

use std::path::Path;
use std::process::Command;

use conclave_core::StoreConfig;
use conclave_server::AppSettings;
use reqwest::StatusCode;

use crate::TestServer;

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Tester")
        .env("GIT_AUTHOR_EMAIL", "tester@example.invalid")
        .env("GIT_COMMITTER_NAME", "Tester")
        .env("GIT_COMMITTER_EMAIL", "tester@example.invalid")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write(dir: &Path, path: &str, text: &str) {
    std::fs::write(dir.join(path), text).expect("write");
}

/// A repository whose `conclave/integration` moved on after `conclave/T-1` forked from it.
fn project_with_a_task_branch(root: &Path) {
    git(root, &["init", "--quiet", "--initial-branch=main"]);
    write(root, "README.md", "project\n");
    git(root, &["add", "--all"]);
    git(root, &["commit", "--quiet", "-m", "initial"]);
    git(root, &["branch", "conclave/integration"]);
    git(root, &["checkout", "--quiet", "-b", "conclave/T-1"]);
    write(root, "README.md", "project\n<b>escaped?</b>\n");
    let long: String = (0..300).map(|n| format!("row {n}\n")).collect();
    write(root, "table.txt", &long);
    git(root, &["add", "--all"]);
    git(root, &["commit", "--quiet", "-m", "T-1: the table"]);
    git(root, &["checkout", "--quiet", "conclave/integration"]);
    write(root, "landed.txt", "someone else's work\n");
    git(root, &["add", "--all"]);
    git(root, &["commit", "--quiet", "-m", "another task landed"]);
}

#[tokio::test]
async fn a_tasks_branch_diff_is_what_it_changed_bounded_and_a_task_without_one_is_a_404() {
    let project = tempfile::tempdir().expect("tempdir");
    project_with_a_task_branch(project.path());
    let settings = AppSettings {
        project_root: Some(project.path().to_path_buf()),
        ..AppSettings::default()
    };
    let server = TestServer::with(StoreConfig::default(), settings).await;
    let coder = server.agent("coder", None).await;
    let with_branch = server.task("Add the table").await;
    let shared = server.task("Work in the shared tree").await;
    assert_eq!(with_branch, "T-1");

    // Any agent may read it, as the other reads.
    let (status, diff) = server
        .with_token(&coder)
        .get(&format!("/api/tasks/{with_branch}/diff"))
        .await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert_eq!(diff["branch"], "conclave/T-1");
    assert_eq!(diff["into"], "conclave/integration");
    let paths: Vec<&str> = diff["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| file["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, ["README.md", "table.txt"], "{diff}");
    assert_eq!(
        (diff["added"].as_u64(), diff["removed"].as_u64()),
        (Some(301), Some(0))
    );
    assert_eq!(diff["truncated"], false);
    let patch = diff["patch"].as_str().expect("patch");
    assert!(patch.contains("+<b>escaped?</b>"), "{patch}");
    assert!(
        !patch.contains("landed.txt"),
        "what landed after the fork is not the branch's: {patch}"
    );

    let (status, cut) = server
        .as_admin()
        .get(&format!("/api/tasks/{with_branch}/diff?max_bytes=400"))
        .await;
    assert_eq!(status, StatusCode::OK, "{cut}");
    assert_eq!(cut["truncated"], true);
    assert_eq!(cut["max_bytes"], 400);
    let cut_patch = cut["patch"].as_str().expect("patch");
    assert!(
        cut_patch.len() <= 400 && cut_patch.ends_with('\n'),
        "{cut_patch:?}"
    );
    assert_eq!(cut["files"], diff["files"], "the file list stays complete");
    assert_eq!(cut["added"], diff["added"]);

    let (status, body) = server
        .as_admin()
        .get(&format!("/api/tasks/{shared}/diff"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("T-2 has no branch") && message.contains("conclave/T-2"),
        "{message}"
    );

    let (status, body) = server.as_admin().get("/api/tasks/T-99/diff").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = server
        .anonymous()
        .call(
            reqwest::Method::GET,
            &format!("/api/tasks/{with_branch}/diff"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn a_server_whose_project_is_not_a_git_repository_says_the_task_has_no_branch() {
    let project = tempfile::tempdir().expect("tempdir");
    let settings = AppSettings {
        project_root: Some(project.path().to_path_buf()),
        ..AppSettings::default()
    };
    let server = TestServer::with(StoreConfig::default(), settings).await;
    let task = server.task("Anything").await;
    let (status, body) = server
        .as_admin()
        .get(&format!("/api/tasks/{task}/diff"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("not a git repository"), "{message}");
}
