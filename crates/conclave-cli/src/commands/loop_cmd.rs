//! `conclave loop --prompt FILE [--until CMD] [--max N] [--budget USD] [--model M] [--agent NAME]`:
//! the `claude -p` loop of the supervisor crate ([`conclave_supervisor::loop_run`]) against the
//! project's running server. One line per iteration, a total at the end; the exit code says why
//! it ended (0 the check passed, 6 the iterations or budget ran out, 7 nothing could run, 130
//! interrupted).

use std::time::Duration;

use anyhow::Context as _;
use conclave_supervisor::loop_run::{IterationReport, LoopOptions, run_loop};
use tokio_util::sync::CancellationToken;

use crate::cli::LoopArgs;
use crate::commands::claude::{admin_client, reachable_url};
use crate::context::Context;
use crate::output::note;

/// The loop ended some other way than its check passing: `conclave` exits with this code (the
/// reason is printed already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopEnded {
    pub code: u8,
}

impl std::fmt::Display for LoopEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the loop ended with code {}", self.code)
    }
}

impl std::error::Error for LoopEnded {}

pub async fn run(context: &Context, args: LoopArgs) -> anyhow::Result<()> {
    let project = context.project()?;
    let prompt = std::fs::read_to_string(&args.prompt)
        .with_context(|| format!("cannot read the prompt {}", args.prompt.display()))?;
    anyhow::ensure!(
        !prompt.trim().is_empty(),
        "the prompt {} is empty",
        args.prompt.display()
    );
    anyhow::ensure!(
        args.until.is_some() || args.max.is_some() || args.budget.is_some(),
        "give --until, --max or --budget: otherwise the loop never ends"
    );
    let url = reachable_url(&context.server_url()?);
    let admin = admin_client(project, &url)?;
    let options = LoopOptions {
        prompt,
        until: args.until,
        max: args.max,
        budget_usd: args.budget,
        model: args.model,
        agent: args.agent,
        permission_mode: args.permission_mode,
        check_timeout: Duration::from_secs(args.check_timeout),
        env: Default::default(),
        tool_definition_chars: crate::commands::claude::conclave_tool_definition_chars(),
    };
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            note!("conclave: interrupted; stopping the running iteration");
            on_signal.cancel();
        }
    });
    note!(
        "conclave: loop as agent {} on {url}{}{}",
        options.agent,
        options
            .until
            .as_deref()
            .map(|check| format!(", until `{check}` passes"))
            .unwrap_or_default(),
        options
            .max
            .map(|max| format!(", at most {max} iterations"))
            .unwrap_or_default(),
    );
    let report = run_loop(project, &admin, &url, &options, interrupt, print_iteration).await?;
    note!(
        "conclave: {}: {} iteration{}, ${:.4}, {}",
        report.end.describe(),
        report.iterations.len(),
        if report.iterations.len() == 1 {
            ""
        } else {
            "s"
        },
        report.cost_usd(),
        seconds(report.elapsed),
    );
    match report.end.exit_code() {
        0 => Ok(()),
        code => Err(LoopEnded { code }.into()),
    }
}

fn print_iteration(it: &IterationReport) {
    let check = match &it.check {
        Some(check) => match check.exit_code {
            Some(code) => format!("check exit {code}"),
            None => "check timed out".to_string(),
        },
        None if it.interrupted => "interrupted".to_string(),
        None if !it.ran => format!(
            "did not run: {}",
            it.failure.as_deref().unwrap_or("no result")
        ),
        None => "no check".to_string(),
    };
    note!(
        "iteration {}: ${:.4}, {} turns, {}, {}{}",
        it.number,
        it.cost_usd,
        it.turns.map_or_else(|| "?".to_string(), |t| t.to_string()),
        seconds(it.duration),
        check,
        if it.is_error {
            " (the client reported an error)"
        } else {
            ""
        },
    );
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
