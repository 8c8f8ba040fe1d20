//! `tf`: the task factory's operator CLI. The command tree is `commands.rs`; `dispatch.rs`
//! sends each command to the module that does the work, directly or through tf-api; every
//! command answers an `output::Answer`, printed here in the format asked for.

mod commands;
mod consumer;
mod db;
mod dead_letters;
mod definitions;
mod demo;
mod dispatch;
mod output;
mod remote;
mod results;
mod runs;
mod schedules;
mod schemas;
mod topics;

use clap::Parser;
use commands::*;
pub use output::Format;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so a `println!` into a closed pipe (`tf … | head -1`) panics with a
    // backtrace. A command-line tool should end quietly there, as Unix tools do.
    // SAFETY: restoring a signal's default disposition at startup, before any thread exists
    // that could be writing to a pipe, races with nothing.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tf_telemetry::init_logging("warn");
    let cli = Cli::parse();
    if let Err(e) = tf_config::check_connection_settings() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cli_output = cli.output;
    let result = match &cli.api_url {
        Some(url) => match remote::Remote::new(url, cli.api_token.as_deref()) {
            Ok(api) => match dispatch::served_remotely(&api, &cli.command).await {
                Some(result) => result,
                None => dispatch::direct(cli).await,
            },
            Err(e) => Err(e),
        },
        None => dispatch::direct(cli).await,
    };
    match result.and_then(|answer| answer.print(cli_output)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
