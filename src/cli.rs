//! Command-line definitions (clap). Each subcommand's behaviour lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "smq",
    version,
    about = "Convert GGUF language models to SMQ and run them fast on the CPU",
    long_about = "smq converts GGUF language models into SMQ, a format whose tensors are \
                  aligned for zero-copy memory mapping and checksummed with blake3, and runs \
                  them on the CPU with fused quantized kernels.\n\n\
                  A MODEL argument is an .smq file, or a .gguf file that is converted once \
                  through the conversion cache ($SMQ_CACHE_DIR, else $XDG_CACHE_HOME/smq, \
                  else ~/.cache/smq)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a GGUF file to SMQ (into the cache unless -o is given)
    Import(ImportArgs),
    /// Rebuild the original GGUF from an SMQ file
    Export(ExportArgs),
    /// Show a model's architecture, hyperparameters, tokenizer and tensors (.gguf or .smq)
    Inspect(InspectArgs),
    /// Check every blake3 hash of an SMQ file; exit 0 only if all match
    Verify(VerifyArgs),
    /// Manage the conversion cache
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The GGUF file to convert
    pub input: PathBuf,
    /// Where to write the SMQ file (default: the conversion cache)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite OUTPUT if it exists
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The SMQ file to export
    pub input: PathBuf,
    /// Where to write the GGUF file
    #[arg(short, long)]
    pub output: PathBuf,
    /// Overwrite OUTPUT if it exists
    #[arg(long)]
    pub force: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A .gguf or .smq file
    pub file: PathBuf,
    /// Print everything as one JSON object
    #[arg(long)]
    pub json: bool,
    /// List every tensor (by default the table is shortened for large models)
    #[arg(long)]
    pub all_tensors: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The SMQ file to check
    pub file: PathBuf,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List cached conversions
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print the cache directory
    Path,
    /// Remove every cached conversion
    Clear,
    /// Remove one cached conversion by its source hash (or a unique prefix of it)
    Rm { hash: String },
}
