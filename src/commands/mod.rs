//! One module per subcommand. Each returns `Result<(), CliError>`; `main` prints the
//! error on one line and exits non-zero.

pub mod bench;
pub mod cache;
pub mod chat;
pub mod export;
pub mod import;
pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod run;
pub mod tokenize;
pub mod verify;

use std::path::Path;

/// An error for the user: one line, saying what went wrong and, where possible, what to do.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

pub fn fail(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

/// Names the file an error is about, unless the message already does.
pub fn about(path: &Path, e: impl std::fmt::Display) -> CliError {
    let msg = e.to_string();
    let shown = path.display().to_string();
    if msg.contains(&shown) {
        CliError(msg)
    } else {
        CliError(format!("{shown}: {msg}"))
    }
}

/// Refuses to overwrite an existing output unless `--force` was given.
pub fn check_output(path: &Path, force: bool) -> CliResult {
    if path.exists() && !force {
        return Err(fail(format!(
            "{} already exists (use --force to overwrite it)",
            path.display()
        )));
    }
    Ok(())
}

/// Fails early with a clear message when an input file is missing or not a file.
pub fn check_input(path: &Path) -> CliResult {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(fail(format!("{} is not a file", path.display()))),
        Err(e) => Err(fail(format!("{}: {e}", path.display()))),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes as MB (10^6), the unit throughput is reported in.
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Prints one JSON object on its own line (the last line of stdout for `--json`).
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
