//! `conclave loop --prompt FILE [--until CMD] [--max N] [--budget USD] [--confirm] [--model M]
//! [--agent NAME]`: the `claude -p` loop of the supervisor crate ([`conclave_supervisor::loop_run`])
//! against the project's running server. One line per iteration, a total at the end; the exit
//! code says why it ended (0 the check passed, 6 the iterations or budget ran out or a person
//! stopped it, 7 nothing could run, 130 interrupted).
//!
//! With `--confirm` the loop waits for a person before each iteration after the first. The
//! terminal's answer (a line read from stdin) and the dashboard's are recorded the same way, by
//! the server; whichever comes first decides.

use std::time::Duration;

use anyhow::Context as _;
use std::io::BufRead as _;
use std::path::PathBuf;

use conclave_core::model::{ConfirmDecision, Confirmation, ConfirmationAnswer};
use conclave_supervisor::loop_run::{
    ConfirmEach, IterationReport, LoopExtras, LoopOptions, iteration_line, run_loop_with,
};
use tokio::sync::mpsc;
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
        args.until.is_some() || args.max.is_some() || args.budget.is_some() || args.confirm,
        "give --until, --max, --budget or --confirm: otherwise the loop never ends"
    );
    let url = reachable_url(&context.server_url()?);
    let admin = admin_client(project, &url)?;
    let prompt_file = args.prompt.clone();
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
    let extras = LoopExtras {
        confirm: args.confirm.then(|| ConfirmEach {
            terminal: read_terminal_answers(prompt_file),
            on_wait: Box::new(ask_in_terminal),
        }),
        ..LoopExtras::default()
    };
    let report = run_loop_with(
        project,
        &admin,
        &url,
        &options,
        extras,
        interrupt,
        print_iteration,
    )
    .await?;
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
    note!("{}", iteration_line(it));
}

fn ask_in_terminal(waiting: &Confirmation) {
    note!(
        "conclave: iteration {} waits for you: Enter continues, s stops, e edits the prompt \
         (or answer on the dashboard)",
        waiting.next_iteration
    );
}

/// Reads the terminal's answers on a thread of its own (stdin blocks): a line is an answer, `e`
/// opens the prompt file in `$EDITOR` (default `vi`) and continues with what it then holds. The
/// channel closes at the end of stdin, leaving the answer to the dashboard.
fn read_terminal_answers(prompt_file: PathBuf) -> mpsc::UnboundedReceiver<ConfirmationAnswer> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let answer = match line.trim().to_ascii_lowercase().as_str() {
                "" | "c" | "y" | "continue" => ConfirmationAnswer {
                    decision: ConfirmDecision::Continue,
                    prompt: None,
                },
                "s" | "n" | "q" | "stop" => ConfirmationAnswer {
                    decision: ConfirmDecision::Stop,
                    prompt: None,
                },
                "e" | "edit" => match edit(&prompt_file) {
                    Ok(prompt) => ConfirmationAnswer {
                        decision: ConfirmDecision::Continue,
                        prompt: Some(prompt),
                    },
                    Err(error) => {
                        note!("conclave: {error:#}; answer again");
                        continue;
                    }
                },
                other => {
                    note!(
                        "conclave: {other:?} is not an answer: Enter continues, s stops, e edits"
                    );
                    continue;
                }
            };
            if sender.send(answer).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Opens the prompt in `$EDITOR` and answers what the file holds afterwards.
fn edit(prompt_file: &std::path::Path) -> anyhow::Result<String> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    // `sh -c` so that an EDITOR with arguments ("code --wait") works as in other tools.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(prompt_file)
        .status()
        .with_context(|| format!("cannot start the editor {editor}"))?;
    anyhow::ensure!(status.success(), "the editor {editor} ended with {status}");
    let prompt = std::fs::read_to_string(prompt_file)
        .with_context(|| format!("cannot read {}", prompt_file.display()))?;
    anyhow::ensure!(!prompt.trim().is_empty(), "the prompt is empty");
    Ok(prompt)
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
