//! Sessions over a loaded model: prompt evaluation, token generation, last-position
//! logits and perplexity.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::arch::{forward, Outputs, Scratch};
use crate::kv_cache::KvCache;
use crate::model::{Model, ModelError};
use crate::sampling::{Sampler, SamplerParams};

/// Tokens evaluated per forward pass when processing a prompt (llama.cpp's default
/// micro-batch, so attention takes the same kernel variant for the same prompt).
pub const DEFAULT_BATCH: usize = 512;

/// One conversation with a model: its KV cache, scratch buffers and the tokens the cache
/// holds. Many sessions can share one [`Model`].
pub struct Session<'m> {
    model: &'m Model<'m>,
    kv: KvCache,
    scratch: Scratch,
    logits: Vec<f32>,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
}

/// Settings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    /// Stop when the model emits an end-of-generation token (EOS, end of turn).
    pub stop_at_eog: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            sampler: SamplerParams::default(),
            stop_at_eog: true,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model emitted an end-of-generation token.
    Eos,
    /// The caller's callback asked to stop (e.g. a stop string was produced).
    Stop,
    /// `max_tokens` was reached, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Wall-clock time of the two phases.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Tokens evaluated for the prompt (excluding a reused cached prefix).
    pub n_prompt: usize,
    pub prompt_ms: f64,
    /// Tokens generated.
    pub n_gen: usize,
    /// From the first sampled token to the end.
    pub gen_ms: f64,
}

impl Timings {
    pub fn prompt_tok_s(&self) -> f64 {
        rate(self.n_prompt, self.prompt_ms)
    }

    pub fn gen_tok_s(&self) -> f64 {
        rate(self.n_gen, self.gen_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids; an end-of-generation token is not included.
    pub ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

impl<'m> Session<'m> {
    /// A session whose cache holds `n_ctx` positions (at most the model's context length).
    pub fn new(model: &'m Model<'m>, n_ctx: usize) -> Result<Session<'m>, ModelError> {
        Session::with_batch(model, n_ctx, DEFAULT_BATCH)
    }

    /// Like [`Session::new`], evaluating prompts `n_batch` tokens at a time.
    pub fn with_batch(
        model: &'m Model<'m>,
        n_ctx: usize,
        n_batch: usize,
    ) -> Result<Session<'m>, ModelError> {
        let kv = KvCache::new(&model.hp, n_ctx)?;
        let n_batch = n_batch.clamp(1, n_ctx);
        Ok(Session {
            model,
            kv,
            scratch: Scratch::new(&model.hp, n_batch),
            logits: Vec::new(),
            tokens: Vec::new(),
        })
    }

    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    /// Positions the context holds.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    /// The tokens currently in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Empties the cache.
    pub fn reset(&mut self) {
        self.kv.clear();
        self.tokens.clear();
    }

    /// Appends `tokens` to the context and returns the logits of the last one
    /// (`n_vocab` values).
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidRequest("no tokens to evaluate".into()));
        }
        self.kv.check_room(tokens.len())?;
        let n_batch = self.scratch.max_batch;
        let n_chunks = tokens.len().div_ceil(n_batch);
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            // Only the very last position needs logits.
            let outputs = if i + 1 == n_chunks {
                Outputs::Last
            } else {
                Outputs::None
            };
            self.forward_chunk(chunk, outputs)?;
        }
        Ok(&self.logits)
    }

    /// Appends `tokens` and calls `each(i, logits)` with the logits after every token
    /// `tokens[i]`.
    pub fn eval_all(
        &mut self,
        tokens: &[u32],
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        self.kv.check_room(tokens.len())?;
        let n_vocab = self.model.hp.n_vocab;
        let n_batch = self.scratch.max_batch;
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            self.forward_chunk(chunk, Outputs::All)?;
            for (j, row) in self.logits.chunks_exact(n_vocab).enumerate() {
                each(c * n_batch + j, row);
            }
        }
        Ok(())
    }

    fn forward_chunk(&mut self, chunk: &[u32], outputs: Outputs) -> Result<(), ModelError> {
        let result = forward(
            self.model,
            &mut self.kv,
            &mut self.scratch,
            chunk,
            outputs,
            &mut self.logits,
        );
        if result.is_err() {
            // A failed batch may have written part of its keys; the cache no longer
            // matches `tokens` past this point.
            self.kv.truncate(self.tokens.len());
        } else {
            self.tokens.extend_from_slice(chunk);
        }
        result
    }

    /// Last-position logits of `ids` evaluated from an empty context.
    pub fn logits_for(&mut self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.reset();
        Ok(self.eval(ids)?.to_vec())
    }

    /// Generates up to `params.max_tokens` tokens after `prompt`, calling `on_token` with
    /// each one (return `ControlFlow::Break(())` to stop). A cached prefix shared with
    /// `prompt` is reused. Fails if the prompt does not fit in the context.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<Generation, ModelError> {
        params
            .sampler
            .validate()
            .map_err(ModelError::InvalidRequest)?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidRequest("the prompt is empty".into()));
        }
        if prompt.len() > self.n_ctx() {
            return Err(ModelError::ContextFull {
                needed: prompt.len(),
                n_ctx: self.n_ctx(),
            });
        }
        // Reuse the common prefix, but evaluate at least one token to get logits.
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.kv.truncate(common);
        self.tokens.truncate(common);

        let mut timings = Timings {
            n_prompt: prompt.len() - common,
            ..Timings::default()
        };
        let start = Instant::now();
        self.eval(&prompt[common..])?;
        timings.prompt_ms = ms_since(start);

        let start = Instant::now();
        let mut sampler = Sampler::new(params.sampler.clone());
        let mut history = prompt.to_vec();
        let mut ids = Vec::new();
        let finish_reason = loop {
            if ids.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            let id = sampler.sample(&mut self.logits, &history);
            if params.stop_at_eog && self.model.is_eog(id) {
                break FinishReason::Eos;
            }
            ids.push(id);
            history.push(id);
            if on_token(id).is_break() {
                break FinishReason::Stop;
            }
            if ids.len() >= params.max_tokens || self.kv.len() >= self.n_ctx() {
                break FinishReason::Length;
            }
            self.eval(&[id])?;
        };
        timings.n_gen = ids.len();
        timings.gen_ms = ms_since(start);
        Ok(Generation {
            ids,
            finish_reason,
            timings,
        })
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Result of [`perplexity`].
#[derive(Clone, Copy, Debug)]
pub struct Perplexity {
    pub ppl: f64,
    /// Mean negative log-likelihood (nats per token).
    pub mean_nll: f64,
    pub windows: usize,
    pub scored_tokens: usize,
}

/// Perplexity of `ids` under the reference rule: windows of `n_ctx` tokens back to back
/// from the start (at most `max_windows`), each from an empty cache; every token after
/// the first of a window is scored; `ppl = exp(mean NLL)`.
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    n_ctx: usize,
    max_windows: usize,
) -> Result<Perplexity, ModelError> {
    if n_ctx < 2 {
        return Err(ModelError::InvalidRequest(format!(
            "perplexity needs a context of at least 2 tokens, got {n_ctx}"
        )));
    }
    let windows = (ids.len() / n_ctx).min(max_windows);
    if windows == 0 {
        return Err(ModelError::InvalidRequest(format!(
            "the text has {} tokens, fewer than one window of {n_ctx}",
            ids.len()
        )));
    }
    let mut session = Session::new(model, n_ctx)?;
    let mut nll = 0.0f64;
    let mut scored = 0usize;
    for w in 0..windows {
        let window = &ids[w * n_ctx..(w + 1) * n_ctx];
        session.reset();
        session.eval_all(window, |i, logits| {
            if let Some(&next) = window.get(i + 1) {
                nll -= log_softmax_at(logits, next as usize);
                scored += 1;
            }
        })?;
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        ppl: mean_nll.exp(),
        mean_nll,
        windows,
        scored_tokens: scored,
    })
}

/// `log softmax(logits)[i]`, summed in f64.
pub fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits
        .get(i)
        .map_or(f64::NEG_INFINITY, |&l| l as f64 - max - sum.ln())
}
