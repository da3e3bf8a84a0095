//! Model architectures: one file per family with its forward pass written out top to
//! bottom, plus the few steps they share (embedding lookup, cached attention, LM head).

pub mod gemma3;
pub mod llama;
pub mod qwen2;
pub mod qwen3;
pub mod smollm3;

use smq_format::ModelConfig;

use crate::aligned::AlignedF32;
use crate::kv_cache::KvCache;
use crate::model::{Hparams, Model, ModelError, TensorSpec};
use crate::ops;
use crate::quant::matmul::{dequantize_row, matmul};

/// The architectures smq runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    SmolLm3,
    Gemma3,
}

/// `general.architecture` names, in the order they are listed in error messages.
const TABLE: &[(&str, Architecture)] = &[
    ("llama", Architecture::Llama),
    ("qwen2", Architecture::Qwen2),
    ("qwen3", Architecture::Qwen3),
    ("smollm3", Architecture::SmolLm3),
    ("gemma3", Architecture::Gemma3),
];

impl Architecture {
    pub fn from_name(name: &str) -> Result<Architecture, ModelError> {
        TABLE
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, a)| a)
            .ok_or_else(|| ModelError::UnsupportedArchitecture {
                name: name.to_string(),
                supported: TABLE.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            })
    }

    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }

    /// Completes the shared hyperparameters with the architecture's own and names the
    /// tensors beyond the llama core that it reads.
    pub(crate) fn configure(
        self,
        hp: &mut Hparams,
        cfg: &ModelConfig,
    ) -> Result<TensorSpec, ModelError> {
        match self {
            Architecture::Llama => llama::configure(hp, cfg),
            Architecture::Qwen2 => qwen2::configure(hp, cfg),
            Architecture::Qwen3 => qwen3::configure(hp, cfg),
            Architecture::SmolLm3 => smollm3::configure(hp, cfg),
            Architecture::Gemma3 => gemma3::configure(hp, cfg),
        }
    }
}

/// Which positions of a batch need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outputs {
    /// None (all but the last batch of a long prompt).
    None,
    /// Only the last token (prompt processing, decoding).
    Last,
    /// Every token (perplexity).
    All,
}

/// Activation buffers of one session, sized for `max_batch` tokens at once.
pub struct Scratch {
    pub max_batch: usize,
    /// Residual stream, `n_embd` per token.
    pub x: AlignedF32,
    /// Normed input of the current sub-layer.
    pub xb: AlignedF32,
    /// Output of a sub-layer before the residual add.
    pub xb2: AlignedF32,
    pub q: AlignedF32,
    pub k: AlignedF32,
    pub v: AlignedF32,
    /// Attention output, `n_head · head_dim_v` per token.
    pub att: AlignedF32,
    pub gate: AlignedF32,
    pub up: AlignedF32,
    /// RoPE cos/sin of one position.
    pub rope_cs: Vec<f32>,
}

impl Scratch {
    pub fn new(hp: &Hparams, max_batch: usize) -> Scratch {
        let b = max_batch;
        Scratch {
            max_batch: b,
            x: AlignedF32::zeros(b * hp.n_embd),
            xb: AlignedF32::zeros(b * hp.n_embd),
            xb2: AlignedF32::zeros(b * hp.n_embd),
            q: AlignedF32::zeros(b * hp.n_head * hp.head_dim),
            k: AlignedF32::zeros(b * hp.kv_dim()),
            v: AlignedF32::zeros(b * hp.kv_dim_v()),
            att: AlignedF32::zeros(b * hp.n_head * hp.head_dim_v),
            gate: AlignedF32::zeros(b * hp.n_ff),
            up: AlignedF32::zeros(b * hp.n_ff),
            rope_cs: vec![0.0; hp.head_dim],
        }
    }

    /// The buffers cut to a batch of `nt` tokens, each one borrowed on its own.
    pub(crate) fn batch(&mut self, hp: &Hparams, nt: usize) -> Batch<'_> {
        Batch {
            x: &mut self.x[..nt * hp.n_embd],
            xb: &mut self.xb[..nt * hp.n_embd],
            xb2: &mut self.xb2[..nt * hp.n_embd],
            q: &mut self.q[..nt * hp.n_head * hp.head_dim],
            k: &mut self.k[..nt * hp.kv_dim()],
            v: &mut self.v[..nt * hp.kv_dim_v()],
            att: &mut self.att[..nt * hp.n_head * hp.head_dim_v],
            gate: &mut self.gate[..nt * hp.n_ff],
            up: &mut self.up[..nt * hp.n_ff],
            rope_cs: &mut self.rope_cs,
        }
    }
}

/// [`Scratch`] for one batch (see the fields of `Scratch` for what each holds).
pub(crate) struct Batch<'s> {
    pub x: &'s mut [f32],
    pub xb: &'s mut [f32],
    pub xb2: &'s mut [f32],
    pub q: &'s mut [f32],
    pub k: &'s mut [f32],
    pub v: &'s mut [f32],
    pub att: &'s mut [f32],
    pub gate: &'s mut [f32],
    pub up: &'s mut [f32],
    pub rope_cs: &'s mut [f32],
}

/// Runs `tokens` (at most `scratch.max_batch`, positions `kv.len()..`) through the model,
/// appends their keys and values to `kv`, and writes the logits of the requested
/// positions to `logits` (`n_vocab` per position).
pub fn forward(
    model: &Model,
    kv: &mut KvCache,
    scratch: &mut Scratch,
    tokens: &[u32],
    outputs: Outputs,
    logits: &mut Vec<f32>,
) -> Result<(), ModelError> {
    if tokens.is_empty() || tokens.len() > scratch.max_batch {
        return Err(ModelError::InvalidRequest(format!(
            "a batch holds 1 to {} tokens, got {}",
            scratch.max_batch,
            tokens.len()
        )));
    }
    kv.check_room(tokens.len())?;
    match model.arch {
        // The llama family differs only in what `configure` set up (biases, QK-norm,
        // NoPE layers, RoPE style), which the shared block reads from the model.
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::SmolLm3 => {
            llama::forward(model, kv, scratch, tokens)?
        }
        Architecture::Gemma3 => gemma3::forward(model, kv, scratch, tokens)?,
    }
    kv.advance(tokens.len());
    lm_head(model, scratch, tokens.len(), outputs, logits);
    Ok(())
}

/// Looks up the embedding rows of `tokens` into `x`.
pub(crate) fn embed(model: &Model, tokens: &[u32], x: &mut [f32]) -> Result<(), ModelError> {
    crate::profile::time(crate::profile::Op::Embedding, || {
        embed_rows(model, tokens, x)
    })
}

fn embed_rows(model: &Model, tokens: &[u32], x: &mut [f32]) -> Result<(), ModelError> {
    let n_embd = model.hp.n_embd;
    for (&id, row) in tokens.iter().zip(x.chunks_exact_mut(n_embd)) {
        if id as usize >= model.hp.n_vocab {
            return Err(ModelError::TokenOutOfRange {
                id,
                n_vocab: model.hp.n_vocab,
            });
        }
        dequantize_row(&model.token_embd, id as usize, row).map_err(|e| ModelError::BadTensor {
            name: "token_embd.weight".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Applies RoPE to the queries and keys of `n_tokens` tokens at positions `pos0..`,
/// with the frequencies divided by `freq_factors` when given.
pub(crate) fn rope_qk(
    hp: &Hparams,
    rope: &ops::Rope,
    freq_factors: Option<&[f32]>,
    pos0: usize,
    q: &mut [f32],
    k: &mut [f32],
    cs: &mut [f32],
) {
    let q_dim = hp.n_head * hp.head_dim;
    let kv_dim = hp.kv_dim();
    let tokens = |t0: usize, q: &mut [f32], k: &mut [f32], cs: &mut [f32]| {
        for (t, (qt, kt)) in q
            .chunks_exact_mut(q_dim)
            .zip(k.chunks_exact_mut(kv_dim))
            .enumerate()
        {
            match freq_factors {
                Some(f) => rope.angles_with_factors(pos0 + t0 + t, f, cs),
                None => rope.angles(pos0 + t0 + t, cs),
            }
            rope.apply(qt, hp.head_dim, cs);
            rope.apply(kt, hp.head_dim, cs);
        }
    };
    let n_tokens = q.len().checked_div(q_dim).unwrap_or(0);
    if n_tokens <= 1 {
        return tokens(0, q, k, cs);
    }
    // Whole tokens per thread; each part brings its own angle buffer.
    let cs_len = cs.len();
    crate::par::rows2(q, q_dim, k, kv_dim, crate::par::Cost::Heavy, |t0, q, k| {
        tokens(t0, q, k, &mut vec![0.0; cs_len])
    });
}

pub(crate) use crate::attention::attention;

/// Final norm and LM head for the positions `outputs` asks for.
fn lm_head(
    model: &Model,
    scratch: &mut Scratch,
    n_tokens: usize,
    outputs: Outputs,
    logits: &mut Vec<f32>,
) {
    crate::profile::time(crate::profile::Op::LmHead, || {
        lm_head_rows(model, scratch, n_tokens, outputs, logits)
    })
}

fn lm_head_rows(
    model: &Model,
    scratch: &mut Scratch,
    n_tokens: usize,
    outputs: Outputs,
    logits: &mut Vec<f32>,
) {
    let hp = &model.hp;
    let e = hp.n_embd;
    let (first, n_out) = match outputs {
        Outputs::None => return,
        Outputs::Last => (n_tokens - 1, 1),
        Outputs::All => (0, n_tokens),
    };
    let rows = &scratch.x[first * e..(first + n_out) * e];
    let normed = &mut scratch.xb[..n_out * e];
    ops::rmsnorm(normed, rows, model.output_norm, hp.rms_eps);
    logits.clear();
    logits.resize(n_out * hp.n_vocab, 0.0);
    matmul(&model.output, normed, n_out, logits);
    if let Some(b) = model.output_bias {
        ops::add_bias(logits, b);
    }
}
