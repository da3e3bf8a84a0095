//! `smq perplexity`: the reference rule (no BOS, special tokens not parsed, windows back to
//! back from the start, each from an empty context, every token after the first scored).

use serde_json::json;
use smq_runtime::generate::perplexity;

use super::{check_input, fail, print_json, CliResult};
use crate::cli::PerplexityArgs;
use crate::model_open;

pub fn run(args: &PerplexityArgs) -> CliResult {
    check_input(&args.file)?;
    model_open::setup_threads(&args.model)?;
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| fail(format!("{}: {e}", args.file.display())))?;
    let mut mapped = model_open::open(&args.model)?;
    let (model, tokenizer, _) = model_open::load(&mut mapped)?;
    let ids = tokenizer.encode(&text, false, false);
    let start = std::time::Instant::now();
    let p = perplexity(&model, &ids, args.window, args.max_windows)?;
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        print_json(&json!({
            "ppl": p.ppl,
            "mean_nll": p.mean_nll,
            "windows": p.windows,
            "window": args.window,
            "scored_tokens": p.scored_tokens,
            "seconds": secs,
        }));
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} windows of {}), {:.1} s",
            p.ppl, p.scored_tokens, p.windows, args.window, secs
        );
    }
    Ok(())
}
