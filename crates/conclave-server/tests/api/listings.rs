//! Listings that must stay flat as history grows: `/api/tasks` pages, and `/api/status`, which
//! lists open work and the latest finished tasks and only counts the rest.

use conclave_core::model::STATUS_FINISHED_TASKS;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::TestServer;

fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|task| task["id"].as_str().expect("id").to_string())
        .collect()
}

async fn cancel(server: &TestServer, id: &str) {
    let (status, body) = server
        .as_admin()
        .post(
            &format!("/api/tasks/{id}/cancel"),
            json!({ "reason": "not needed" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn task_pages_follow_one_another_to_the_end() {
    let server = TestServer::start().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(server.task(&format!("task {i}")).await);
    }
    let admin = server.as_admin();
    let mut seen = Vec::new();
    let mut path = "/api/tasks?limit=3".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = admin.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        let page_ids = ids(&page);
        assert!(
            page_ids.len() <= 3,
            "a page holds at most the limit: {page}"
        );
        seen.extend(page_ids);
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/tasks?limit=3&after={after}"),
            None => break,
        }
    }
    assert_eq!(seen, created, "every task once, in id order");
    assert_eq!(pages, 3);

    // Without a limit, a short history is one page with nothing after it.
    let (_, all) = admin.get("/api/tasks").await;
    assert_eq!(ids(&all), created);
    assert!(all.get("next_after").is_none(), "{all}");
    assert!(
        all.get("counts").is_none(),
        "a page carries no counts: {all}"
    );
}

#[tokio::test]
async fn status_counts_all_history_but_lists_only_the_latest_finished_tasks() {
    let server = TestServer::start().await;
    let finished = STATUS_FINISHED_TASKS as usize + 3;
    let mut created = Vec::new();
    for i in 0..finished + 2 {
        created.push(server.task(&format!("task {i}")).await);
    }
    for id in &created[..finished] {
        cancel(&server, id).await;
    }
    let (status, report) = server.as_admin().get("/api/status").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let listed = ids(&report);
    assert_eq!(
        listed.len(),
        STATUS_FINISHED_TASKS as usize + 2,
        "the open tasks and the latest finished ones"
    );
    assert!(
        !listed.contains(&created[0]),
        "the oldest finished task is counted, not listed"
    );
    assert!(listed.contains(&created[finished + 1]));
    assert_eq!(report["task_counts"]["cancelled"], finished as u64);
    assert_eq!(report["task_counts"]["ready"], 2);
}
