//! The benchmark harness behind `conclave bench`: latency of the coordination primitives over
//! loopback HTTP. A crate of its own so that the HTTP client and temporary folders it needs stay
//! out of the server's dependencies.
//!
//! Starts a private server on a temporary database, registers `clients` agents, and has them all
//! hammer one operation at a time concurrently (claim, lock, message send), recording each
//! request's latency. Bounded in count; touches nothing but its temporary folder and loopback.

use std::time::{Duration, Instant};

use anyhow::Context;
use conclave_core::{Store, StoreConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use conclave_server::{App, AppSettings};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub clients: usize,
    pub requests_per_client: usize,
    /// A PostgreSQL database to run on (in a throwaway schema, dropped afterwards) instead of a
    /// temporary SQLite file.
    pub postgres: Option<String>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            clients: 16,
            requests_per_client: 200,
            postgres: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OperationStats {
    pub operation: String,
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub throughput_per_sec: f64,
}

pub async fn run_bench(
    options: BenchOptions,
    progress: impl Fn(&str),
) -> anyhow::Result<Vec<OperationStats>> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let scratch = options.postgres.clone().map(|url| {
        let schema = format!(
            "conclave_bench_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        );
        (url, schema)
    });
    let store = match &scratch {
        Some((url, schema)) => {
            let (url, schema) = (url.clone(), schema.clone());
            // The PostgreSQL driver is synchronous: it runs on a blocking thread.
            tokio::task::spawn_blocking(move || {
                let scratch_url = Store::create_postgres_schema(&url, &schema)?;
                Store::open_postgres(&scratch_url, StoreConfig::default())
            })
            .await??
        }
        None => Store::open(&dir.path().join("bench.db"), StoreConfig::default())?,
    };
    let shutdown = CancellationToken::new();
    let admin = "cva_bench_admin";
    let app = App::new(store, admin, AppSettings::default(), shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(conclave_server::run(listener, app, shutdown.clone()));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients * 2)
        .build()?;

    let mut tokens = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        let answer: serde_json::Value = http
            .post(format!("{base}/api/agents"))
            .bearer_auth(admin)
            .json(&json!({ "name": format!("bench-{i}") }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens.push(answer["token"].as_str().context("no token")?.to_string());
    }
    let total_tasks = options.clients * options.requests_per_client;
    progress(&format!("creating {total_tasks} tasks to claim"));
    for i in 0..total_tasks {
        http.post(format!("{base}/api/tasks"))
            .bearer_auth(admin)
            .json(&json!({ "title": format!("bench task {i}") }))
            .send()
            .await?
            .error_for_status()?;
    }

    let mut results = Vec::new();
    for operation in ["claim", "lock", "send"] {
        progress(&format!(
            "{operation}: {} clients x {} requests",
            options.clients, options.requests_per_client
        ));
        let started = Instant::now();
        let workers = tokens.iter().enumerate().map(|(client, token)| {
            let http = http.clone();
            let base = base.clone();
            let token = token.clone();
            let n_clients = options.clients;
            let n = options.requests_per_client;
            async move {
                let mut latencies = Vec::with_capacity(n);
                for i in 0..n {
                    let request = match operation {
                        "claim" => http
                            .post(format!("{base}/api/tasks/claim"))
                            .json(&json!({})),
                        "lock" => http
                            .post(format!("{base}/api/leases"))
                            .json(&json!({ "paths": [format!("bench/{client}/{i}.rs")] })),
                        _ => http.post(format!("{base}/api/messages")).json(&json!({
                            "to": format!("bench-{}", (client + 1) % n_clients),
                            "body": format!("message {i}"),
                        })),
                    };
                    let sent = Instant::now();
                    request
                        .bearer_auth(&token)
                        .send()
                        .await?
                        .error_for_status()?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            }
        });
        let mut latencies: Vec<Duration> = Vec::new();
        for worker in futures::future::join_all(workers).await {
            latencies.extend(worker?);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let percentile = |p: f64| {
            let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[index].as_secs_f64() * 1000.0
        };
        results.push(OperationStats {
            operation: operation.to_string(),
            requests: latencies.len(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            max_ms: percentile(1.0),
            throughput_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        });
    }
    shutdown.cancel();
    let _ = server.await;
    if let Some((url, schema)) = scratch {
        tokio::task::spawn_blocking(move || Store::drop_postgres_schema(&url, &schema)).await??;
    }
    Ok(results)
}
