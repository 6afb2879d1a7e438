//! A long history written straight into a project's database before its server starts: many
//! finished tasks (each created, claimed and done, so the event log and the search index grow
//! as they do in use) and a few left ready. Writing through the store rather than over HTTP
//! keeps a 100,000-task history to seconds.

use conclave_core::model::{Actor, NewAgent, NewTask, TaskFinish};
use conclave_core::{Store, StoreConfig};

/// Tasks written per transaction.
const BATCH: usize = 2000;

/// What was written.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct History {
    pub tasks: usize,
    /// Of them, left ready (the rest are done).
    pub ready: usize,
    pub seconds: f64,
}

/// Writes `tasks` tasks into the store `store_url` names (a SQLite file, created if missing, or
/// a PostgreSQL URL): all but `ready`
/// of them created, claimed and finished by agent `history`, the last `ready` created only.
pub fn write_history(store_url: &str, tasks: usize, ready: usize) -> anyhow::Result<History> {
    let started = std::time::Instant::now();
    let store = Store::open_url(store_url, StoreConfig::default())?;
    let worker = "history";
    store.write(|tx| {
        tx.register_agent(
            "admin",
            NewAgent {
                name: worker.to_string(),
                ..NewAgent::default()
            },
        )
        .map(|_| ())
    })?;
    let agent = Actor::Agent(worker.to_string());
    let finished = tasks.saturating_sub(ready);
    let mut written = 0;
    while written < tasks {
        let end = (written + BATCH).min(tasks);
        store.write(|tx| {
            for i in written..end {
                let task = tx.create_task(
                    &Actor::Admin,
                    NewTask {
                        title: format!("history task {i}"),
                        body: Some(format!("part {i} of a long history")),
                        ..NewTask::default()
                    },
                )?;
                if i < finished {
                    tx.claim_task(worker, Some(task.id))?;
                    tx.finish_task(
                        &agent,
                        task.id,
                        TaskFinish {
                            summary: Some(format!("finished part {i}")),
                            files: vec![format!("src/part_{i}.rs")],
                            ..TaskFinish::default()
                        },
                    )?;
                }
            }
            Ok(())
        })?;
        written = end;
    }
    // A server that has run through this history would have indexed it for search as it went.
    store.flush_search_backlog()?;
    Ok(History {
        tasks,
        ready: tasks.min(ready),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_holds_finished_and_ready_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = dir.path().join("conclave.db");
        let history = write_history(&database.to_string_lossy(), 5, 2).expect("history");
        assert_eq!(history.tasks, 5);
        let store = Store::open(&database, StoreConfig::default()).expect("store");
        let counts = store.read(|r| r.task_status_counts()).expect("counts");
        let count = |name: &str| {
            counts
                .iter()
                .find(|(status, _)| status.as_str() == name)
                .map_or(0, |(_, n)| *n)
        };
        assert_eq!(count("done"), 3);
        assert_eq!(count("ready"), 2);
    }
}
