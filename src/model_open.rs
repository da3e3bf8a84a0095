//! Turning a MODEL argument into a mapped model: an .smq directly, a .gguf through the
//! conversion cache, or a .gguf in place with `--direct`. Also sets up the thread pool.

use std::io::Read;
use std::path::Path;

use smq_format::{MappedModel, SmqFile, MAGIC};
use smq_runtime::arch::Architecture;
use smq_runtime::model::Model;
use smq_runtime::tokenizer::Tokenizer;

use crate::cli::ModelArgs;
use crate::commands::{check_input, fail, CliError};

/// The model's file kind, told by its magic bytes (not its extension).
enum Kind {
    Smq,
    Gguf,
}

fn kind_of(path: &Path) -> Result<Kind, CliError> {
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    if n == 8 && magic == MAGIC {
        Ok(Kind::Smq)
    } else if n >= 4 && &magic[..4] == b"GGUF" {
        Ok(Kind::Gguf)
    } else {
        Err(fail(format!(
            "{}: not an SMQ or GGUF file (unrecognised magic bytes)",
            path.display()
        )))
    }
}

/// The number of worker threads `--threads` asks for (default: one per physical core).
pub fn thread_count(args: &ModelArgs) -> Result<usize, CliError> {
    match args.threads {
        Some(0) => Err(fail("--threads must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(physical_cores()),
    }
}

/// Physical cores this process may use: SMT siblings share one core's execution units,
/// so a second thread per core slows the kernels down. Counts distinct (package, core)
/// pairs in /proc/cpuinfo, capped by the CPUs this process is allowed to run on.
fn physical_cores() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = std::fs::read_to_string("/proc/cpuinfo").ok().map(|info| {
        let mut pairs = std::collections::HashSet::new();
        let mut package = None;
        for line in info.lines() {
            let value = line.split_once(':').map(|(_, v)| v.trim().to_string());
            if line.starts_with("physical id") {
                package = value;
            } else if line.starts_with("core id") {
                pairs.insert((package.clone(), value));
            }
        }
        pairs.len()
    });
    match cores {
        Some(n) if n > 0 => n.min(allowed),
        _ => allowed,
    }
}

/// Runs `work` on a pool of `threads` workers. The model's parallel loops then start on
/// a worker that takes part in them, instead of handing every matmul to another thread
/// and sleeping until it is done (two context switches per matmul, hundreds per token).
pub fn on_pool<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> Result<R, CliError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| fail(format!("cannot start {threads} worker threads: {e}")))?;
    Ok(pool.install(work))
}

/// Worker threads of the pool the command runs on.
pub fn setup_threads(_args: &ModelArgs) -> Result<usize, CliError> {
    Ok(rayon::current_num_threads())
}

/// Maps the model named by `args`.
pub fn open(args: &ModelArgs) -> Result<MappedModel, CliError> {
    let path = &args.model;
    check_input(path)?;
    match kind_of(path)? {
        Kind::Smq if args.direct => Err(fail("--direct applies to .gguf models only")),
        Kind::Smq => open_smq(path, args.verify),
        Kind::Gguf if args.direct && args.verify => Err(fail(
            "--verify checks SMQ hashes; a GGUF run with --direct has none",
        )),
        Kind::Gguf if args.direct => smq_converter::direct::open_gguf_direct(path)
            .map_err(|e| fail(format!("{}: {e}", path.display()))),
        Kind::Gguf => {
            let (entry, _) = crate::commands::import::import_to_cache(path)?;
            open_smq(&entry, args.verify)
        }
    }
}

fn open_smq(path: &Path, verify: bool) -> Result<MappedModel, CliError> {
    let file = SmqFile::open(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    if verify {
        file.verify().map_err(|e| {
            fail(format!(
                "{}: fails verification: {e} (re-import the model)",
                path.display()
            ))
        })?;
    }
    Ok(file.into_mapped())
}

/// The model's weights, its tokenizer and its chat template (`tokenizer.chat_template`),
/// ready to run. The tokenizer takes over the manifest's token table rather than copying
/// it, so loading allocates little beyond the manifest.
pub fn load(mapped: &mut MappedModel) -> Result<(Model<'_>, Tokenizer, Option<String>), CliError> {
    // An architecture smq cannot run is the first thing to report, whatever else is wrong.
    Architecture::from_name(&mapped.manifest.config.architecture)?;
    let mut spec = mapped
        .manifest
        .tokenizer
        .take()
        .ok_or_else(|| fail("the model has no tokenizer"))?;
    let chat_template = spec.chat_template.take();
    let tokenizer = Tokenizer::from_owned(spec)?;
    let mapped: &MappedModel = mapped;
    let mut model = Model::load(mapped)?;
    // The tokenizer knows every token that ends a turn (by type and by name).
    model.eog_ids = tokenizer.end_of_generation_ids().to_vec();
    Ok((model, tokenizer, chat_template))
}

/// The context size to use: `--ctx`, else the model's own capped at a default that keeps
/// the KV cache small.
pub fn context_size(args: &ModelArgs, model: &Model) -> Result<usize, CliError> {
    const DEFAULT_MAX_CTX: usize = 4096;
    let model_ctx = model.hp.n_ctx_train;
    match args.ctx {
        Some(0) => Err(fail("--ctx must be at least 1")),
        Some(n) if n > model_ctx => Err(fail(format!(
            "--ctx {n} exceeds the model's context length {model_ctx}"
        ))),
        Some(n) => Ok(n),
        None => Ok(model_ctx.min(DEFAULT_MAX_CTX)),
    }
}
