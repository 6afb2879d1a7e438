//! `conclave bench` end to end, in miniature: every phase runs against a real server and gives
//! figures (the figures themselves are measured by running it for real, docs/benchmarks.md).

use crate::support::TestProject;

/// A tiny run of every phase: the floor, each operation alone (more lock requests than one
/// agent may hold leases), sixteen clients, a team, the paced run, the streams run and a short
/// history, each with the operations it ran.
#[test]
fn a_small_bench_runs_every_phase_and_reports_each() {
    let project = TestProject::init();
    let report = project
        .run(&[
            "bench",
            "--json",
            "--requests",
            "300",
            "--agents",
            "3",
            "--team-ops",
            "24",
            "--rate",
            "40",
            "--rate-secs",
            "1",
            "--paced-agents",
            "2",
            "--paced-rate",
            "40",
            "--scale-tasks",
            "40",
        ])
        .json();
    let names = |phase: &str| -> Vec<String> {
        report[phase]
            .as_array()
            .unwrap_or_else(|| panic!("no {phase} in {report}"))
            .iter()
            .filter_map(|stats| stats["operation"].as_str().map(str::to_string))
            .collect()
    };
    let sequential = names("sequential");
    for operation in ["claim", "lock", "send", "note", "mcp claim", "mcp status"] {
        assert!(
            sequential.iter().any(|name| name == operation),
            "{sequential:?}"
        );
    }
    let lock = report["sequential"]
        .as_array()
        .and_then(|all| all.iter().find(|stats| stats["operation"] == "lock"))
        .expect("the lock phase");
    assert_eq!(lock["requests"], 300, "past the per-agent lease cap of 256");
    // Each one-client operation has a floor measured next to it, and its ratio is to that floor.
    let floor = lock["floor_p50_ms"].as_f64().expect("an adjacent floor");
    let p50 = lock["p50_ms"].as_f64().expect("p50");
    let ratio = lock["p50_to_floor"].as_f64().expect("ratio");
    assert!(floor > 0.0 && (ratio - p50 / floor).abs() < 1e-9, "{lock}");
    assert_eq!(report["teams"][0]["agents"], 3);
    let paced = &report["paced"];
    assert_eq!(paced["agents"], 2, "{paced}");
    assert_eq!(paced["streams"], 0);
    assert_eq!(paced["rate"], 40);
    assert_eq!(paced["all"]["requests"], 40);
    let streams = &report["streams"];
    assert_eq!(streams["streams"], 3, "{streams}");
    assert!(streams["stream_frames"].as_u64() > Some(0), "{streams}");
    assert!(!names("floor").is_empty());
    assert!(
        report["scale"]["reads"]
            .as_array()
            .is_some_and(|reads| !reads.is_empty())
    );
}
