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

/// A 100-path lease request while other agents keep granting leases nearby: rows granted between
/// its snapshot and the writer lock are compared there only within a fixed budget, past which the
/// attempt writes nothing and is retried on a fresh snapshot. Whatever the interleaving, the
/// request ends granted, refused by a real conflict, or refused as retryable (503
/// `lease_check_busy`), and one contested path never has two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_lease_request_among_crowding_grants_keeps_the_guarantees() {
    let server = TestServer::start().await;
    let asker = server.agent("asker", None).await;
    let mut crowd = Vec::new();
    for i in 0..3 {
        crowd.push(server.agent(&format!("crowd-{i}"), None).await);
    }
    for round in 0..4 {
        let contested = format!("mine/r{round}/f0.rs");
        let asked: Vec<String> = (0..100).map(|k| format!("mine/r{round}/f{k}.rs")).collect();
        let asking = {
            let caller = server.with_token(&asker);
            let asked = asked.clone();
            async move { caller.post("/api/leases", json!({ "paths": asked })).await }
        };
        let crowding = crowd.iter().enumerate().map(|(i, token)| {
            let caller = server.with_token(token);
            let contested = contested.clone();
            async move {
                let mut answers = Vec::new();
                for batch in 0..2 {
                    let mut paths: Vec<String> = (0..25)
                        .map(|k| format!("crowd{i}/r{round}/b{batch}/f{k}.rs"))
                        .collect();
                    if i == 0 && batch == 1 {
                        paths.push(contested.clone());
                    }
                    answers.push(caller.post("/api/leases", json!({ "paths": paths })).await);
                }
                answers
            }
        });
        let (asked_answer, crowd_answers) =
            futures::join!(asking, futures::future::join_all(crowding));
        let (status, body) = &asked_answer;
        match *status {
            StatusCode::OK => assert_eq!(body["leases"].as_array().map(Vec::len), Some(100)),
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "lease_conflict"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "lease_check_busy", "{body}")
            }
            other => panic!("round {round}: {other} {body}"),
        }
        for (status, body) in crowd_answers.iter().flatten() {
            assert!(
                *status == StatusCode::OK
                    || (*status == StatusCode::CONFLICT
                        && body["error"]["code"] == "lease_conflict"),
                "round {round}: {status} {body}"
            );
        }
        let (_, leases) = server.with_token(&asker).get("/api/leases").await;
        let holders: Vec<&str> = leases["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .filter(|lease| lease["path"] == contested.as_str())
            .filter_map(|lease| lease["holder"].as_str())
            .collect();
        assert!(holders.len() <= 1, "round {round}: {holders:?}");
        let contested_by_crowd = crowd_answers[0][1].0 == StatusCode::OK;
        assert_eq!(
            *status == StatusCode::OK,
            !contested_by_crowd && holders == ["asker"],
            "round {round}: the asker's answer {status} agrees with who holds {contested}: {holders:?}"
        );
        if *status == StatusCode::OK {
            let (released, body) = server
                .with_token(&asker)
                .post("/api/leases/release", json!({ "paths": asked }))
                .await;
            assert_eq!(released, StatusCode::OK, "{body}");
        }
    }
}
