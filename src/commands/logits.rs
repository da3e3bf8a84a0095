//! `smq logits`: the last position's logits of a prompt, as little-endian f32.

use std::io::Write;

use smq_format::AtomicFile;
use smq_runtime::generate::Session;

use super::{check_output, fail, CliResult};
use crate::cli::LogitsArgs;
use crate::model_open;

pub fn run(args: &LogitsArgs) -> CliResult {
    check_output(&args.output, args.force)?;
    model_open::setup_threads(&args.model)?;
    let mut mapped = model_open::open(&args.model)?;
    let (model, tokenizer, _) = model_open::load(&mut mapped)?;
    let n_ctx = model_open::context_size(&args.model, &model)?;
    let ids = tokenizer.encode(&args.prompt, true, true);
    if ids.len() > n_ctx {
        return Err(fail(format!(
            "the prompt has {} tokens but the context holds {n_ctx}",
            ids.len()
        )));
    }
    let logits = Session::new(&model, n_ctx.max(ids.len()))?.logits_for(&ids)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = AtomicFile::create(&args.output)?;
    out.write_all(&bytes)
        .map_err(|e| fail(format!("{}: {e}", args.output.display())))?;
    out.commit()?;
    eprintln!(
        "{} prompt tokens, {} logits written to {}",
        ids.len(),
        logits.len(),
        args.output.display()
    );
    Ok(())
}
