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
    /// Generate text from a prompt
    Run(RunArgs),
    /// Talk with a model: one line per user turn from stdin, answers streamed to stdout
    #[command(
        long_about = "Talk with a model: each line read from stdin is a user turn, \
                  rendered with the model's chat template; the answer is streamed to stdout. \
                  The conversation stays in the KV cache, so each turn evaluates only its new \
                  tokens.\n\n\
                  /reset clears the conversation, /exit (or end of input) quits. Ctrl-C stops \
                  the answer being written (what was written is kept); at the prompt it quits."
    )]
    Chat(ChatArgs),
    /// Print the token ids of a text, as llama.cpp would give them
    Tokenize(TokenizeArgs),
    /// Write the last position's logits of a prompt as little-endian f32
    Logits(LogitsArgs),
    /// Perplexity of a text file (windows evaluated from an empty context)
    Perplexity(PerplexityArgs),
    /// Measure prompt processing and generation speed
    Bench(BenchArgs),
}

impl Command {
    /// The model options of the commands that run a model.
    pub fn model_args(&self) -> Option<&ModelArgs> {
        match self {
            Command::Run(a) => Some(&a.model),
            Command::Chat(a) => Some(&a.model),
            Command::Tokenize(a) => Some(&a.model),
            Command::Logits(a) => Some(&a.model),
            Command::Perplexity(a) => Some(&a.model),
            Command::Bench(a) => Some(&a.model),
            _ => None,
        }
    }
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

/// How to open a MODEL for the commands that run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// An .smq file, or a .gguf file (converted once through the cache)
    pub model: PathBuf,
    /// Run a .gguf in place without converting it (same kernels, same bytes)
    #[arg(long)]
    pub direct: bool,
    /// Check every tensor's blake3 before running (.smq)
    #[arg(long)]
    pub verify: bool,
    /// Worker threads (default: one per physical core)
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Context size in tokens (default: the model's, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
}

/// How tokens are picked, shared by `run` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 means greedy
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Keep only the K most likely tokens (0 disables)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 disables)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 disables)
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 (1 disables)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (same seed, same output); default: random
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the generated text contains this string (repeatable; not printed)
    #[arg(long)]
    pub stop: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (special tokens such as <|im_start|> are parsed)
    #[arg(short, long)]
    pub prompt: String,
    /// Maximum number of tokens to generate
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Send the prompt as a user turn through the model's chat template; generation
    /// ends at the model's end-of-turn token
    #[arg(long)]
    pub chat: bool,
    /// A system message before the user turn (with --chat)
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// If the model's chat template is missing or fails, use plain ChatML instead of
    /// stopping with an error (with --chat)
    #[arg(long, requires = "chat")]
    pub chat_template_fallback: bool,
    /// Print one JSON object (text, ids, finish_reason, timings) instead of streaming
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message that opens the conversation (kept by /reset)
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of tokens per answer
    #[arg(short = 'n', long, default_value_t = 1024)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// If the model's chat template is missing or fails, use plain ChatML instead of
    /// stopping with an error
    #[arg(long)]
    pub chat_template_fallback: bool,
    /// Print each answer as one JSON line (text, token counts, cache reuse, timings)
    /// instead of streaming it
    #[arg(long)]
    pub json: bool,
    /// After each answer, print token counts (new vs reused from the cache) and speed
    /// on stderr
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to tokenize (BOS added by the model's rule, special tokens parsed)
    pub text: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(short, long)]
    pub prompt: String,
    /// Output file: the last position's logits as little-endian f32
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text file to score
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// Tokens per window
    #[arg(long = "window", default_value_t = 128)]
    pub window: usize,
    /// At most this many windows from the start of the text
    #[arg(long, default_value_t = 16)]
    pub max_windows: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed per repetition (pp)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: usize,
    /// Tokens generated per repetition (tg)
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Repetitions (medians are reported)
    #[arg(short = 'r', long, default_value_t = 3)]
    pub repetitions: usize,
    /// Skip the untimed warm-up (one pp pass of -p tokens and one generated token, after
    /// the time-to-first-token pass) that first sizes the buffers of a batch this long
    #[arg(long)]
    pub no_warmup: bool,
    /// Then profile one more pp pass of -p tokens and one more tg pass of -n tokens:
    /// per-op milliseconds, share and calls per token (embedding, norms, Q/K/V, QK-norm + RoPE, KV store, attention, output
    /// projection, gate/up, GLU, down projection, residual adds, final norm + LM head),
    /// the token's wall time and the untimed remainder ("other")
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}
