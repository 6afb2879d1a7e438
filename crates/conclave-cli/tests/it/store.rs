//! `conclave store migrate` and `conclave serve --store`: a project's history moved to
//! PostgreSQL and served from there. Runs when PostgreSQL is available (`CONCLAVE_TEST_PG`, or
//! the throwaway local cluster of scripts/pg-test-cluster.sh); otherwise skipped and recorded
//! (under `CI=true`, a failure).

use conclave_core::store::testing::postgres_test_url;

use crate::support::{Server, TestProject, add_agent};

/// Work recorded on SQLite moves with `store migrate`; a server started with `--store` then
/// serves the same event log, and goes on from where the project was.
#[test]
fn a_project_moves_to_postgres_and_is_served_from_there() {
    let Some(url) = postgres_test_url() else {
        return;
    };
    let project = TestProject::init();
    let before = {
        let _server = Server::start(&project);
        let coder = add_agent(&project, "coder", &[]);
        assert_eq!(
            project.run(&["task", "add", "design the schema"]).ok(),
            "T-1"
        );
        project.run_as(&coder, &["task", "claim"]).ok();
        project.run_as(&coder, &["lock", "src/schema.rs"]).ok();
        project
            .run(&["msg", "send", "coder", "the schema comes first"])
            .ok();
        project.export()
    };
    assert!(before.len() >= 5, "{before:?}");

    let run = project.run(&[
        "store",
        "migrate",
        "--from",
        ".conclave/conclave.db",
        "--to",
        &url,
    ]);
    let report = run.ok();
    assert!(report.contains("events"), "{report}");
    assert!(report.contains("event log digest"), "{report}");
    // Into a store that is not empty: refused, nothing changed.
    let again = project.run(&[
        "store",
        "migrate",
        "--from",
        ".conclave/conclave.db",
        "--to",
        &url,
    ]);
    assert!(again.stderr.contains("not empty"), "{again:?}");

    let _server = Server::start_command(
        &project,
        "postgres-server.log",
        &["serve", "--listen", "127.0.0.1:0", "--store", &url],
    );
    assert_eq!(
        project.export(),
        before,
        "the same history, served from PostgreSQL"
    );
    assert_eq!(project.run(&["task", "add", "after the move"]).ok(), "T-2");
}

#[test]
fn a_store_url_that_is_neither_engine_is_refused() {
    let project = TestProject::init();
    let run = project.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "mysql://db/x",
    ]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("--store"), "{run:?}");
}
