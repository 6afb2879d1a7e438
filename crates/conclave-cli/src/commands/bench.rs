//! `conclave bench`: runs the benchmark (`conclave-bench`) against a `conclave serve` of this
//! same executable and prints its figures: a table for people, `--json` for machines.

use conclave_bench::{BenchOptions, BenchReport, OperationStats, TeamRun, run_bench};

use crate::cli::BenchArgs;
use crate::output::{note, outln};

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.requests == 0 {
        anyhow::bail!("--requests must be at least 1");
    }
    if let Some(url) = &args.store
        && !conclave_core::store::is_postgres_url(url)
    {
        anyhow::bail!("--store {url:?}: expected a postgres://... URL (SQLite always runs)");
    }
    // SQLite always; PostgreSQL too when named, in the same run so that the figures compare.
    let mut engines = vec![("sqlite", None)];
    if let Some(url) = &args.store {
        engines.push(("postgres", Some(url.clone())));
    }
    let exe = std::env::current_exe()?;
    let mut reports = Vec::new();
    for (engine, postgres) in engines {
        let mut options = BenchOptions::new(exe.clone());
        options.requests = args.requests;
        options.teams = args.agents.clone();
        options.team_ops = args.team_ops;
        options.rate = args.rate;
        options.rate_secs = args.rate_secs;
        options.paced_agents = args.paced_agents;
        options.paced_rate = args.paced_rate;
        options.scale_tasks = args.scale_tasks;
        options.postgres = postgres;
        let report = run_bench(options, |step| note!("bench ({engine}): {step}")).await?;
        reports.push((engine, report));
    }
    if args.json {
        // One engine prints the report it always printed; several are keyed by engine.
        let value = match reports.as_slice() {
            [(_, report)] => serde_json::to_value(report)?,
            _ => serde_json::Value::Object(
                reports
                    .iter()
                    .map(|(engine, report)| Ok((engine.to_string(), serde_json::to_value(report)?)))
                    .collect::<anyhow::Result<_>>()?,
            ),
        };
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    for (i, (engine, report)) in reports.iter().enumerate() {
        if i > 0 {
            outln!()?;
        }
        outln!("== {engine}")?;
        print_report(report)?;
    }
    Ok(())
}

fn print_report(report: &BenchReport) -> anyhow::Result<()> {
    outln!(
        "{} cores · load {:.2} before, {:.2} after · {:.0} s",
        report.cores,
        report.load_before,
        report.load_after,
        report.seconds
    )?;
    outln!()?;
    outln!("floor (GET /healthz)")?;
    print_table(&report.floor)?;
    outln!()?;
    outln!(
        "one agent, one request at a time (p50 ratio to the floor measured right after each; rate ratio to the run's)"
    )?;
    print_table(&report.sequential)?;
    outln!()?;
    outln!("sixteen clients (ratios to the sixteen-client floor)")?;
    print_table(&report.concurrent)?;
    let teams = report
        .teams
        .iter()
        .chain(&report.paced)
        .chain(&report.streams);
    for team in teams {
        outln!()?;
        print_team(team)?;
    }
    if let Some(scale) = &report.scale {
        outln!()?;
        outln!(
            "a history of {} tasks ({} events, written in {:.1} s): server up in {:.0} ms, RSS {:.0} MiB",
            scale.history.tasks,
            scale.events,
            scale.history.seconds,
            scale.start_ms,
            scale.server.rss_mib
        )?;
        print_table(&scale.reads)?;
    }
    Ok(())
}

fn print_team(team: &TeamRun) -> anyhow::Result<()> {
    let pace = team
        .rate
        .map_or("full speed".to_string(), |rate| format!("{rate} ops/s"));
    outln!(
        "{} agents, {} live streams, {pace}: {:.0} ops/s, p99 {:.2} ms; server CPU {:.0}% (load generator {:.0}%), RSS {:.0} MiB (peak {:.0})",
        team.agents,
        team.streams,
        team.all.per_sec,
        team.all.p99_ms,
        team.server_cpu_percent,
        team.generator_cpu_percent,
        team.server.rss_mib,
        team.server.peak_rss_mib
    )?;
    if team.streams > 0 {
        outln!(
            "  the streams received {} SSE frames in all ({:.0} per second)",
            team.stream_frames,
            team.stream_frames_per_sec
        )?;
    }
    print_table(&team.operations)
}

fn print_table(rows: &[OperationStats]) -> anyhow::Result<()> {
    outln!(
        "  {:<30} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>9}",
        "operation",
        "n",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "req/s",
        "floor",
        "p50 x",
        "rate x",
        "cpu ms/op"
    )?;
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    for s in rows {
        outln!(
            "  {:<30} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.0} {:>7} {:>7} {:>7} {:>9}",
            s.operation,
            s.requests,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.max_ms,
            s.per_sec,
            s.floor_p50_ms
                .map_or("-".to_string(), |ms| format!("{ms:.2}")),
            ratio(s.p50_to_floor),
            ratio(s.rate_to_floor),
            s.server_cpu_ms
                .map_or("-".to_string(), |ms| format!("{ms:.3}"))
        )?;
    }
    Ok(())
}
