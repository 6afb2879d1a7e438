//! One module per command group; [`run`] dispatches a parsed command line to it.

mod agent;
mod attach;
mod bench;
pub mod claude;
mod compare;
mod demo;
mod down;
pub mod hook;
mod init;
mod lock;
mod log;
pub mod loop_cmd;
mod msg;
mod note;
mod queue;
mod serve;
mod status;
mod store;
mod task;
mod up;

pub use claude::ClaudeExited;
pub use loop_cmd::LoopEnded;

use crate::cli::{Cli, Command};
use crate::context::Context;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init => init::run(),
        Command::Serve(args) => serve::run(args).await,
        // main runs hooks before starting the async runtime; this is the same, only slower.
        Command::Hook(args) => {
            hook::run(&args.event, args.strict);
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Store(command) => store::run(command).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Compare(args) => compare::run(args).await,
        command => {
            let context = Context::from_env()?;
            match command {
                Command::Init
                | Command::Compare(_)
                | Command::Serve(_)
                | Command::Bench(_)
                | Command::Hook(_)
                | Command::Store(_)
                | Command::Demo(_) => {
                    unreachable!("handled above")
                }
                Command::Agent(command) => agent::run(&context, command).await,
                Command::Task(command) => task::run(&context, command).await,
                Command::Lock(args) => lock::lock(&context, args).await,
                Command::Unlock(args) => lock::unlock(&context, args).await,
                Command::Locks(flag) => lock::list(&context, flag.json).await,
                Command::Queue(args) => queue::run(&context, args).await,
                Command::Msg(command) => msg::run(&context, command).await,
                Command::Note(command) => note::run(&context, command).await,
                Command::Log(args) => log::log(&context, args).await,
                Command::Export => log::export(&context).await,
                Command::Status(flag) => status::run(&context, flag.json).await,
                Command::Claude(args) => claude::run(&context, args).await,
                Command::Up(args) => up::run(&context, args).await,
                Command::Loop(args) => loop_cmd::run(&context, args).await,
                Command::Down => down::run(&context).await,
                Command::Attach(args) => attach::run(&context, args).await,
            }
        }
    }
}
