//! `smq run`: generate text, streamed to stdout as it comes (or one JSON object).

use std::io::Write;
use std::ops::ControlFlow;
use std::time::Instant;

use serde_json::json;
use smq_runtime::generate::{FinishReason, GenerateParams, Session};
use smq_runtime::sampling::SamplerParams;
use smq_runtime::tokenizer::TextStream;

use super::{fail, print_json, CliResult};
use crate::cli::RunArgs;
use crate::model_open;
use crate::stop::StopFilter;

pub fn run(args: &RunArgs) -> CliResult {
    let start = Instant::now();
    let threads = model_open::setup_threads(&args.model)?;
    let mapped = model_open::open(&args.model)?;
    let (model, tokenizer) = model_open::load(&mapped)?;
    let n_ctx = model_open::context_size(&args.model, &model)?;
    let load_ms = start.elapsed().as_secs_f64() * 1000.0;

    let prompt = tokenizer.encode(&args.prompt, true, true);
    if prompt.is_empty() {
        return Err(fail("the prompt is empty"));
    }
    if prompt.len() > n_ctx {
        return Err(fail(format!(
            "the prompt has {} tokens but the context holds {n_ctx} (raise --ctx or shorten the prompt)",
            prompt.len()
        )));
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let params = GenerateParams {
        max_tokens: args.n_predict,
        sampler: SamplerParams {
            temperature: args.temp,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed,
            ..SamplerParams::default()
        },
        stop_at_eog: true,
    };
    params.sampler.validate().map_err(fail)?;

    let mut session = Session::new(&model, n_ctx)?;
    let mut stream = TextStream::new();
    let mut filter = StopFilter::new(&args.stop);
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut first_token_ms = None;
    let emit = |piece: &str, text: &mut String, stdout: &mut std::io::StdoutLock| {
        text.push_str(piece);
        if !args.json {
            // A closed stdout (e.g. `| head`) ends the output, not the program with a panic.
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    };
    let generation = session.generate(&prompt, &params, |id| {
        first_token_ms.get_or_insert_with(|| start.elapsed().as_secs_f64() * 1000.0);
        let piece = stream.push(&tokenizer, id);
        let (out, stopped) = filter.push(&piece);
        emit(&out, &mut text, &mut stdout);
        if stopped {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if generation.finish_reason != FinishReason::Stop {
        let tail = stream.finish();
        let (out, _) = filter.push(&tail);
        emit(&out, &mut text, &mut stdout);
        let rest = filter.finish();
        emit(&rest, &mut text, &mut stdout);
    }
    let t = generation.timings;
    if args.json {
        print_json(&json!({
            "text": text,
            "ids": generation.ids,
            "prompt_ids": prompt,
            "finish_reason": generation.finish_reason.as_str(),
            "seed": seed,
            "threads": threads,
            "load_ms": load_ms,
            "ttft_ms": first_token_ms,
            "prompt_tokens": t.n_prompt,
            "prompt_ms": t.prompt_ms,
            "prompt_tok_s": t.prompt_tok_s(),
            "gen_tokens": t.n_gen,
            "gen_ms": t.gen_ms,
            "gen_tok_s": t.gen_tok_s(),
        }));
    } else {
        let _ = writeln!(stdout);
    }
    eprintln!(
        "load {load_ms:.0} ms | prompt {} tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | {} | {threads} threads",
        t.n_prompt,
        t.prompt_tok_s(),
        t.n_gen,
        t.gen_tok_s(),
        generation.finish_reason.as_str()
    );
    Ok(())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; hashing the time mixes in more entropy.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
