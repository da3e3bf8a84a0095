//! `smq run`: generate text, streamed to stdout as it comes (or one JSON object); with
//! `--chat` the prompt is one user turn of the model's chat template.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::Instant;

use serde_json::json;
use smq_runtime::chat::ChatMessage;
use smq_runtime::generate::{FinishReason, GenerateParams, Session};
use smq_runtime::sampling::SamplerParams;
use smq_runtime::tokenizer::TextStream;

use super::chat::ChatFormat;
use super::{fail, print_json, CliError, CliResult};
use crate::cli::{RunArgs, SamplingArgs};
use crate::model_open;
use crate::stop::StopFilter;

pub fn run(args: &RunArgs) -> CliResult {
    let start = Instant::now();
    let threads = model_open::setup_threads(&args.model)?;
    let mut mapped = model_open::open(&args.model)?;
    let (model, tokenizer, chat_template) = model_open::load(&mut mapped)?;
    let n_ctx = model_open::context_size(&args.model, &model)?;
    let load_ms = start.elapsed().as_secs_f64() * 1000.0;

    let mut stops = args.sampling.stop.clone();
    let (prompt, chat_text) = if args.chat {
        let mut format = ChatFormat::new(
            chat_template.as_deref(),
            &tokenizer,
            args.chat_template_fallback,
        )?;
        let mut messages: Vec<ChatMessage> = args
            .system
            .iter()
            .map(|s| ChatMessage::new("system", s.as_str()))
            .collect();
        messages.push(ChatMessage::new("user", args.prompt.as_str()));
        let p = format.prompt(&tokenizer, &messages)?;
        // After rendering: a failed render may have switched the format to ChatML.
        stops.extend(format.stops());
        (p.ids, Some(p.text))
    } else {
        (tokenizer.encode(&args.prompt, true, true), None)
    };
    if prompt.is_empty() {
        return Err(fail("the prompt is empty"));
    }
    if prompt.len() > n_ctx {
        return Err(fail(format!(
            "the prompt has {} tokens but the context holds {n_ctx} (raise --ctx or shorten the prompt)",
            prompt.len()
        )));
    }
    let seed = args.sampling.seed.unwrap_or_else(random_seed);
    let params = generate_params(&args.sampling, args.n_predict, seed)?;

    let mut session = Session::new(&model, n_ctx)?;
    let mut stream = TextStream::new();
    let mut filter = StopFilter::new(&stops);
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
            "chat_prompt": chat_text,
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

/// Generation settings from the sampling options, checked.
pub fn generate_params(
    sampling: &SamplingArgs,
    max_tokens: usize,
    seed: u64,
) -> Result<GenerateParams, CliError> {
    let params = GenerateParams {
        max_tokens,
        sampler: SamplerParams {
            temperature: sampling.temp,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repeat_penalty: sampling.repeat_penalty,
            seed,
            ..SamplerParams::default()
        },
        stop_at_eog: true,
    };
    params.sampler.validate().map_err(fail)?;
    Ok(params)
}

pub fn random_seed() -> u64 {
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
