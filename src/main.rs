//! The `smq` command line. Model logic lives in the library crates; this binary parses
//! arguments, shows progress and prints results.

mod cli;
mod commands;
mod model_open;
mod progress;
mod stop;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let process_start = Instant::now();
    restore_default_sigpipe();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Import(a) => commands::import::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Cache(c) => commands::cache::run(c),
        Command::Run(a) => commands::run::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Logits(a) => commands::logits::run(a),
        Command::Perplexity(a) => commands::perplexity::run(a),
        Command::Bench(a) => commands::bench::run(a, process_start),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the inner error carried.
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, which turns `smq inspect big.smq | head` into a panic on the
/// next print. Restoring the default makes smq end quietly, like other command-line tools.
fn restore_default_sigpipe() {
    #[cfg(target_os = "linux")]
    {
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        // SAFETY: resetting a signal to its default disposition at startup, before any
        // other thread exists, is what every C program starts with.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
