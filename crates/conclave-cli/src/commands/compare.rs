//! `conclave compare --task FILE --check CMD [--ways ...] [--team FILE] [--repeat N] [--budget USD]
//! [--timeout DUR]`: the comparison of `conclave_compare` for the project in the current folder.
//! Prints a line per run as it ends under one table header, then the folder it wrote. Exit 0
//! when every run ran (whether or not its check passed), 1 when the comparison itself failed a
//! run or could not start.

use std::time::Duration;

use anyhow::Context as _;
use conclave_compare::report::SCRIPTED_BANNER;
use conclave_compare::{CompareOptions, Progress, RunRecord, compare, parse_ways};
use conclave_core::project::Project;

use tokio_util::sync::CancellationToken;

use crate::cli::CompareArgs;
use crate::output::note;

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let root = Project::find(&cwd).map_or(cwd, |project| project.root().to_path_buf());
    let task = std::fs::read_to_string(&args.task)
        .with_context(|| format!("cannot read the task {}", args.task.display()))?;
    if task.trim().is_empty() {
        return Err(conclave_compare::CompareError::EmptyTask(args.task).into());
    }
    let timeout = conclave_core::config::parse_duration(&args.timeout)
        .map_err(|error| anyhow::anyhow!("--timeout {}: {error}", args.timeout))?;
    let ways = parse_ways(&args.ways)?;
    if let Some(budget) = args.budget {
        anyhow::ensure!(
            budget.is_finite() && budget > 0.0,
            "--budget {budget}: give a positive number of US dollars"
        );
    }
    let claude_bin = super::claude::claude_bin()?;
    let options = CompareOptions {
        out_dir: args
            .out
            .unwrap_or_else(|| Project::at(&root).state_dir().join("compare")),
        project_root: root,
        task,
        check: args.check,
        ways,
        team_file: args.team,
        repeat: args.repeat,
        budget_usd: args.budget,
        timeout,
        conclave_bin: std::env::current_exe().context("cannot find the conclave binary")?,
        claude_bin,
        scripted: args.scripted,
        tool_definition_chars: super::claude::conclave_tool_definition_chars(),
        check_timeout: Duration::from_secs(args.check_timeout),
        interrupt: CancellationToken::new(),
    };
    // The ways run in process groups of their own, out of the terminal's reach: Ctrl-C stops
    // the running one here, so that nothing is left running.
    let on_signal = options.interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            note!("conclave compare: interrupted; stopping the running way");
            on_signal.cancel();
        }
    });
    if options.scripted {
        note!("{SCRIPTED_BANNER}");
    }
    note!(
        "conclave compare: {} way{} × {} run{}, at most {} s a run{}",
        options.ways.len(),
        if options.ways.len() == 1 { "" } else { "s" },
        options.repeat,
        if options.repeat == 1 { "" } else { "s" },
        options.timeout.as_secs(),
        options
            .budget_usd
            .map(|budget| format!(" and ${budget:.2}"))
            .unwrap_or_default()
    );
    note!("{}", header());
    let (comparison, folder, all_ran) = compare(&options, |progress| match progress {
        Progress::Started { way, repeat, dir } => {
            note!("  … {way} run {repeat} started in {}", dir.display());
        }
        Progress::Ended(run) => note!("{}", row(run)),
    })
    .await?;
    let passed = comparison.runs.iter().filter(|r| r.check_passed).count();
    note!(
        "conclave compare: {} run{}, {passed} passed the check{}",
        comparison.runs.len(),
        if comparison.runs.len() == 1 { "" } else { "s" },
        if comparison.scripted {
            " (scripted)"
        } else {
            ""
        }
    );
    note!("folder: {}", folder.display());
    note!("report: {}", folder.join("report.md").display());
    note!(
        "data:   {}",
        folder.join(format!("{}.json", comparison.name)).display()
    );
    anyhow::ensure!(
        !options.interrupt.is_cancelled(),
        "interrupted: the report holds the runs so far ({})",
        folder.join("report.md").display()
    );
    anyhow::ensure!(
        all_ran,
        "not every run could be carried out; the report says why ({})",
        folder.join("report.md").display()
    );
    Ok(())
}

const COLUMNS: &str = "way            run  ended     check        wall s    cost $    input   output  cache r  calls agents files confl sendb denial  coordination";

fn header() -> String {
    COLUMNS.to_string()
}

/// One run as a line of the progress table.
fn row(run: &RunRecord) -> String {
    let check = match (run.check_passed, run.check_exit) {
        (true, _) => "passed".to_string(),
        (false, Some(code)) => format!("failed ({code})"),
        (false, None) if run.ended == "error" || run.ended == "interrupted" => {
            "not run".to_string()
        }
        (false, None) => "timed out".to_string(),
    };
    let mut line = format!(
        "{:<14} {:>3}  {:<9} {:<11} {:>7.1} {:>9.4} {:>8} {:>8} {:>8} {:>6} {:>6} {:>5} {:>5} {:>5} {:>6}  {:.1} % ≈ {}",
        run.way,
        run.repeat,
        run.ended,
        check,
        run.wall_secs,
        run.cost_usd,
        run.input_tokens,
        run.output_tokens,
        run.cache_read_tokens,
        run.turns,
        run.agents,
        run.files_changed,
        run.merge_conflicts,
        run.send_backs,
        run.lease_denials,
        run.coordination_percent,
        run.coordination_tokens,
    );
    if let Some(error) = &run.error {
        line.push_str(&format!("\n    {error}"));
    }
    line
}
