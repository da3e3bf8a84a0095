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
    signals::restore_default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command.model_args().map(model_open::thread_count) {
        None => dispatch(&cli.command, process_start),
        Some(Err(e)) => Err(e),
        Some(Ok(threads)) => {
            model_open::on_pool(threads, || dispatch(&cli.command, process_start)).and_then(|r| r)
        }
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

fn dispatch(command: &Command, process_start: Instant) -> commands::CliResult {
    match command {
        Command::Import(a) => commands::import::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Cache(c) => commands::cache::run(c),
        Command::Run(a) => commands::run::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Logits(a) => commands::logits::run(a),
        Command::Perplexity(a) => commands::perplexity::run(a),
        Command::Bench(a) => commands::bench::run(a, process_start),
    }
}

/// The signals smq handles: SIGPIPE back to its default, and Ctrl-C for `smq chat`.
pub mod signals {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set while an answer is being generated: Ctrl-C then stops the answer only.
    static ANSWERING: AtomicBool = AtomicBool::new(false);
    /// Set by Ctrl-C during an answer; read by the generation loop.
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    #[cfg(target_os = "linux")]
    mod sys {
        pub const SIGINT: i32 = 2;
        pub const SIGPIPE: i32 = 13;
        pub const SIG_DFL: usize = 0;
        extern "C" {
            // glibc's signal() keeps the handler installed and restarts interrupted
            // reads (BSD semantics), which is what both uses here want.
            pub fn signal(signum: i32, handler: usize) -> usize;
            pub fn _exit(status: i32) -> !;
        }
    }

    /// Rust ignores SIGPIPE, which turns `smq inspect big.smq | head` into a panic on the
    /// next print. Restoring the default makes smq end quietly, like other command-line
    /// tools.
    pub fn restore_default_sigpipe() {
        #[cfg(target_os = "linux")]
        // SAFETY: resetting a signal to its default disposition at startup, before any
        // other thread exists, is what every C program starts with.
        unsafe {
            sys::signal(sys::SIGPIPE, sys::SIG_DFL);
        }
    }

    /// Ctrl-C while answering sets a flag (see [`interrupted`]); anywhere else it exits
    /// at once with the shell's status for SIGINT. Elsewhere than Linux, Ctrl-C keeps
    /// its default (the process ends).
    pub fn catch_interrupt() {
        #[cfg(target_os = "linux")]
        {
            extern "C" fn on_interrupt(_signum: i32) {
                if ANSWERING.load(Ordering::SeqCst) {
                    INTERRUPTED.store(true, Ordering::SeqCst);
                } else {
                    // SAFETY: _exit is async-signal-safe; nothing is left to flush at the
                    // prompt (answers are flushed as they are written).
                    unsafe { sys::_exit(130) }
                }
            }
            // SAFETY: the handler only touches lock-free atomics and calls _exit, both
            // allowed in a signal handler.
            unsafe {
                sys::signal(sys::SIGINT, on_interrupt as extern "C" fn(i32) as usize);
            }
        }
    }

    /// Marks the start (true) or end (false) of an answer; starting clears a stale
    /// interrupt.
    pub fn set_answering(on: bool) {
        if on {
            INTERRUPTED.store(false, Ordering::SeqCst);
        }
        ANSWERING.store(on, Ordering::SeqCst);
    }

    /// Whether Ctrl-C was pressed since the answer started.
    pub fn interrupted() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}
