//! Guarantees 1 and 3 under contention: many simultaneous claimers of one task, and lockers of
//! one path, over real HTTP: exactly one wins, every round.

use reqwest::StatusCode;
use serde_json::json;

use crate::TestServer;

const CONTENDERS: usize = 16;
const ROUNDS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_simultaneous_claimers_wins_every_round() {
    let server = TestServer::start().await;
    let mut tokens = Vec::new();
    for i in 0..CONTENDERS {
        tokens.push(server.agent(&format!("agent-{i}"), None).await);
    }
    for round in 0..ROUNDS {
        let id = server.task(&format!("contested {round}")).await;
        let claims = tokens.iter().map(|token| {
            let caller = server.with_token(token);
            let id = id.clone();
            async move { caller.post("/api/tasks/claim", json!({ "id": id })).await }
        });
        let results = futures::future::join_all(claims).await;
        let winners: Vec<_> = results
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
            assert_eq!(*status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"]["code"], "conflict");
        }
        let (_, task) = server.as_admin().get(&format!("/api/tasks/{id}")).await;
        assert_eq!(task["assignee"], winners[0].1["task"]["assignee"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_next_never_hands_one_task_to_two_agents() {
    let server = TestServer::start().await;
    let mut tokens = Vec::new();
    for i in 0..CONTENDERS {
        tokens.push(server.agent(&format!("agent-{i}"), None).await);
    }
    let n_tasks = 5;
    for i in 0..n_tasks {
        server.task(&format!("task {i}")).await;
    }
    let claims = tokens.iter().map(|token| {
        let caller = server.with_token(token);
        async move { caller.post("/api/tasks/claim", json!({})).await }
    });
    let results = futures::future::join_all(claims).await;
    let mut taken: Vec<String> = results
        .iter()
        .filter_map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            body["task"]["id"].as_str().map(str::to_string)
        })
        .collect();
    taken.sort();
    let before = taken.len();
    taken.dedup();
    assert_eq!(taken.len(), before, "a task was handed out twice");
    assert_eq!(taken.len(), n_tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_many_simultaneous_lockers_wins_every_round() {
    let server = TestServer::start().await;
    let mut tokens = Vec::new();
    for i in 0..CONTENDERS {
        tokens.push(server.agent(&format!("agent-{i}"), None).await);
    }
    for round in 0..ROUNDS {
        // Mix a literal and an overlapping glob so that conflicts go through glob matching too.
        let locks = tokens.iter().enumerate().map(|(i, token)| {
            let caller = server.with_token(token);
            let path = if i % 2 == 0 {
                format!("src/round{round}/lib.rs")
            } else {
                format!("src/round{round}/**")
            };
            async move { caller.post("/api/leases", json!({ "paths": [path] })).await }
        });
        let results = futures::future::join_all(locks).await;
        let winners = results
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
            assert_eq!(*status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"]["code"], "lease_conflict");
            assert!(
                body["error"]["conflicts"][0]["holder"].is_string(),
                "{body}"
            );
        }
    }
}
