//! `conclave`: the command line of Conclave (server, CLI for people and scripts).
//!
//! This file only parses arguments, sets up logging, runs the command and turns its error into an
//! exit code (see [`error::exit_code`]); everything else lives in the modules below.

mod cli;
mod commands;
mod context;
mod error;
mod output;
mod output_relay;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Hooks run once per tool call: answer them without starting an async runtime.
    if let cli::Command::Hook(args) = &cli.command {
        commands::hook::run(&args.event, args.strict);
        return ExitCode::SUCCESS;
    }
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            output::note!("error: cannot start the async runtime: {error}");
            return ExitCode::from(error::EXIT_ERROR);
        }
    };
    // The commands that run until signalled must not stop when their output's reader goes away.
    let relay = match &cli.command {
        cli::Command::Serve(_) | cli::Command::Up(_) | cli::Command::Demo(_) => {
            output_relay::OutputRelay::install()
                .map_err(|error| tracing::warn!(%error, "cannot relay stdout and stderr"))
                .ok()
        }
        _ => None,
    };
    let result = runtime.block_on(commands::run(cli));
    if let Some(relay) = relay {
        relay.finish();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        // `conclave claude` exits as claude did; claude has said why already.
        Err(error) if error.is::<commands::ClaudeExited>() => {
            let code = error
                .downcast_ref::<commands::ClaudeExited>()
                .map_or(error::EXIT_ERROR, |exited| exited.code);
            ExitCode::from(code)
        }
        // `conclave loop` has printed why it ended; the code says it to scripts.
        Err(error) if error.is::<commands::LoopEnded>() => {
            let code = error
                .downcast_ref::<commands::LoopEnded>()
                .map_or(error::EXIT_ERROR, |ended| ended.code);
            ExitCode::from(code)
        }
        Err(error) => {
            output::note!("error: {}", error::one_line(&error));
            ExitCode::from(error::exit_code(&error))
        }
    }
}

/// Logs go to stderr, filtered by `CONCLAVE_LOG` (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCLAVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// `conclave export | head` closes our stdout early; that is not an error.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
