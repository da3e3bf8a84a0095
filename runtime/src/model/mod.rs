//! A loaded model: hyperparameters from the manifest config and zero-copy views of every
//! weight inside the mapped file.
//!
//! A [`Model`] borrows the [`MappedModel`] it was loaded from and is immutable, so one
//! model can serve many sessions at once (each session owns its KV cache and scratch).

mod error;
pub mod tensor;

use std::collections::HashSet;

use smq_format::{MappedModel, ModelConfig};

pub use error::ModelError;

use crate::arch::Architecture;
use crate::ops::{Rope, RopeStyle};
use crate::quant::matmul::WeightMatrix;

/// Upper bounds that keep a hostile config from sizing huge buffers.
const MAX_LAYERS: u64 = 1024;
const MAX_DIM: u64 = 1 << 20;
const MAX_CONTEXT: u64 = 1 << 24;

/// The hyperparameters the forward pass uses.
#[derive(Clone, Debug)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head dimension of queries and keys.
    pub head_dim: usize,
    /// Per-head dimension of values.
    pub head_dim_v: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    /// RoPE of the global (full attention) layers.
    pub rope: Rope,
    /// Sliding-window attention: the window and the RoPE of the windowed layers.
    pub sliding: Option<SlidingWindow>,
    /// NoPE layers: with `Some(n)`, every `n`-th layer (`(il + 1) % n == 0`) attends
    /// without positional encoding (SmolLM3).
    pub no_rope_every: Option<usize>,
    /// Factor applied to `q·k` in attention.
    pub attn_scale: f32,
}

/// Interleaved sliding-window attention (Gemma 2/3): every `pattern`-th layer attends to
/// the whole context, the others to the last `window` positions only.
#[derive(Clone, Copy, Debug)]
pub struct SlidingWindow {
    pub window: usize,
    pub pattern: usize,
    pub rope: Rope,
}

impl Hparams {
    /// The window of layer `il`, `None` for full attention.
    pub fn layer_window(&self, il: usize) -> Option<usize> {
        let sw = self.sliding.as_ref()?;
        (sw.pattern == 0 || il % sw.pattern < sw.pattern - 1).then_some(sw.window)
    }

    /// Whether layer `il` rotates its queries and keys.
    pub fn layer_has_rope(&self, il: usize) -> bool {
        self.no_rope_every
            .is_none_or(|n| n == 0 || !(il + 1).is_multiple_of(n))
    }

    /// The RoPE of layer `il`.
    pub fn layer_rope(&self, il: usize) -> Rope {
        match (&self.sliding, self.layer_window(il)) {
            (Some(sw), Some(_)) => sw.rope,
            _ => self.rope,
        }
    }

    /// Keys/values per position of one layer (all KV heads).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    pub fn kv_dim_v(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }

    /// Reads the hyperparameters every architecture shares; the architecture then
    /// adjusts the rest (RoPE style, sliding window, attention scale).
    fn from_config(cfg: &ModelConfig, n_vocab: usize) -> Result<Hparams, ModelError> {
        let n_embd = dim(cfg.embedding_length, "embedding_length")?;
        let n_layer = required(cfg.block_count, "block_count")?;
        if n_layer == 0 || n_layer > MAX_LAYERS {
            return Err(invalid(format!("block_count {n_layer}")));
        }
        let n_head = dim(cfg.head_count, "attention.head_count")?;
        let n_head_kv = match cfg.head_count_kv {
            Some(_) => dim(cfg.head_count_kv, "attention.head_count_kv")?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(invalid(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match cfg.key_length {
            Some(_) => dim(cfg.key_length, "attention.key_length")?,
            None => {
                if n_embd % n_head != 0 {
                    return Err(invalid(format!(
                        "embedding_length {n_embd} is not a multiple of head_count {n_head}"
                    )));
                }
                n_embd / n_head
            }
        };
        let head_dim_v = match cfg.value_length {
            Some(_) => dim(cfg.value_length, "attention.value_length")?,
            None => head_dim,
        };
        let n_rot = match cfg.rope_dimension_count {
            Some(_) => dim(cfg.rope_dimension_count, "rope.dimension_count")?,
            None => head_dim,
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(invalid(format!(
                "rope.dimension_count {n_rot} must be even and at most the head size {head_dim}"
            )));
        }
        let freq_base = cfg.rope_freq_base.unwrap_or(10_000.0);
        if !(freq_base.is_finite() && freq_base > 0.0) {
            return Err(invalid(format!("rope.freq_base {freq_base}")));
        }
        // Like llama.cpp, a file that names no scaling type scales linearly by
        // `rope.scaling.factor` when it states one.
        let freq_scale = match cfg.rope_scaling_type.as_deref() {
            Some("none") => 1.0,
            None | Some("linear") => match cfg.rope_scaling_factor {
                Some(f) if f.is_finite() && f > 0.0 => 1.0 / f,
                // llama.cpp reads a factor of 0 as "not scaled".
                None | Some(0.0) => 1.0,
                Some(f) => return Err(invalid(format!("rope.scaling.factor {f}"))),
            },
            Some(other) => {
                return Err(invalid(format!(
                    "rope scaling '{other}' is not supported (supported: none, linear)"
                )))
            }
        };
        let rms_eps = required(cfg.rms_norm_epsilon, "attention.layer_norm_rms_epsilon")?;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(invalid(format!("layer_norm_rms_epsilon {rms_eps}")));
        }
        let n_ctx_train = required(cfg.context_length, "context_length")?;
        if n_ctx_train == 0 || n_ctx_train > MAX_CONTEXT {
            return Err(invalid(format!("context_length {n_ctx_train}")));
        }
        if let Some(v) = cfg.vocab_size {
            if v != n_vocab as u64 {
                return Err(invalid(format!(
                    "vocab_size {v} differs from token_embd's {n_vocab} rows"
                )));
            }
        }
        Ok(Hparams {
            n_vocab,
            n_embd,
            n_layer: n_layer as usize,
            n_ff: dim(cfg.feed_forward_length, "feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_ctx_train: n_ctx_train as usize,
            rms_eps,
            rope: Rope {
                style: RopeStyle::Normal,
                n_rot,
                freq_base,
                freq_scale,
            },
            sliding: None,
            no_rope_every: None,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }
}

fn required<T>(v: Option<T>, key: &'static str) -> Result<T, ModelError> {
    v.ok_or(ModelError::MissingKey(key))
}

fn dim(v: Option<u64>, key: &'static str) -> Result<usize, ModelError> {
    let v = required(v, key)?;
    if v == 0 || v > MAX_DIM {
        return Err(invalid(format!("{key} = {v}")));
    }
    Ok(v as usize)
}

fn invalid(msg: String) -> ModelError {
    ModelError::InvalidConfig(msg)
}

/// The weights of one transformer block. Optional tensors belong to some architectures
/// only; the architecture decides at load time which ones it requires.
pub struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub wq: WeightMatrix<'a>,
    pub wk: WeightMatrix<'a>,
    pub wv: WeightMatrix<'a>,
    pub wo: WeightMatrix<'a>,
    /// Projection biases (Qwen 2 has Q/K/V biases; llama files may carry any of them).
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub bo: Option<&'a [f32]>,
    /// Per-head RMSNorm of queries and keys (Gemma 3, Qwen 3).
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    /// RMSNorm of the attention output before the residual add (Gemma 2/3).
    pub post_attn_norm: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub ffn_gate: WeightMatrix<'a>,
    pub ffn_up: WeightMatrix<'a>,
    pub ffn_down: WeightMatrix<'a>,
    pub ffn_gate_b: Option<&'a [f32]>,
    pub ffn_up_b: Option<&'a [f32]>,
    pub ffn_down_b: Option<&'a [f32]>,
    /// RMSNorm of the FFN output before the residual add (Gemma 2/3).
    pub post_ffn_norm: Option<&'a [f32]>,
}

/// Which tensors beyond the llama core an architecture reads. Required ones must be
/// present; optional ones are read when the file has them. A tensor the architecture
/// does not read makes loading fail, so that no weight is silently ignored.
#[derive(Clone, Copy, Debug, Default)]
pub struct TensorSpec {
    /// Required: per-head RMSNorm of queries and keys (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Required: RMSNorm of the attention and FFN outputs before their residual adds.
    pub post_norms: bool,
    /// Optional: biases of the Q/K/V/output and FFN projections.
    pub biases: bool,
    /// Optional: `output.bias` of the LM head.
    pub output_bias: bool,
    /// Optional: `rope_freqs.weight`, per-pair RoPE frequency divisors (Llama 3.1+).
    pub rope_freqs: bool,
}

/// A model ready to run: hyperparameters plus views of its weights.
pub struct Model<'a> {
    pub arch: Architecture,
    pub hp: Hparams,
    pub token_embd: WeightMatrix<'a>,
    pub output_norm: &'a [f32],
    /// The LM head; the embedding matrix when the model ties them.
    pub output: WeightMatrix<'a>,
    pub output_bias: Option<&'a [f32]>,
    /// RoPE frequency divisors, one per rotated pair (`n_rot / 2`), for every layer that
    /// uses the model's main RoPE.
    pub rope_freqs: Option<&'a [f32]>,
    pub layers: Vec<LayerWeights<'a>>,
    /// Tokens that end generation (EOS, end-of-turn), from the tokenizer metadata.
    pub eog_ids: Vec<u32>,
    pub mapped: &'a MappedModel,
}

impl<'a> Model<'a> {
    /// Loads a model from a mapped file: checks the config and every tensor's presence,
    /// type and shape. No weight byte is copied.
    pub fn load(mapped: &'a MappedModel) -> Result<Model<'a>, ModelError> {
        let cfg = &mapped.manifest.config;
        let arch = Architecture::from_name(&cfg.architecture)?;

        let n_embd = dim(cfg.embedding_length, "embedding_length")?;
        let (embd_entry, _) = tensor::entry(mapped, "token_embd.weight")?;
        let n_vocab = match embd_entry.shape.as_slice() {
            [c, v] if *c == n_embd as u64 && *v > 0 && *v <= MAX_CONTEXT => *v as usize,
            other => {
                return Err(ModelError::BadShape {
                    name: "token_embd.weight".into(),
                    got: other.to_vec(),
                    expected: vec![n_embd as u64, cfg.vocab_size.unwrap_or(0)],
                })
            }
        };
        let mut hp = Hparams::from_config(cfg, n_vocab)?;
        let spec = arch.configure(&mut hp, cfg)?;

        let mut t = Tensors::new(mapped);
        let token_embd = t.matrix("token_embd.weight", n_embd, n_vocab)?;
        // Tied embeddings: without `output.weight` the LM head is the embedding matrix.
        let output = match t.optional_matrix("output.weight", n_embd, n_vocab)? {
            Some(m) => m,
            None => t.matrix("token_embd.weight", n_embd, n_vocab)?,
        };
        let output_bias = t.optional_vector(spec.output_bias, "output.bias", n_vocab)?;
        let output_norm = t.vector("output_norm.weight", n_embd)?;
        let rope_freqs =
            t.optional_vector(spec.rope_freqs, "rope_freqs.weight", hp.rope.n_rot / 2)?;
        if let Some(f) = rope_freqs {
            // Each factor divides a frequency: zero, negative or NaN would corrupt every
            // position silently.
            if let Some(bad) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(ModelError::BadTensor {
                    name: "rope_freqs.weight".into(),
                    reason: format!("holds the factor {bad}; factors must be positive"),
                });
            }
        }

        let layers = (0..hp.n_layer)
            .map(|il| load_layer(&mut t, &hp, spec, il))
            .collect::<Result<Vec<_>, _>>()?;
        t.check_all_used(arch)?;

        Ok(Model {
            arch,
            hp,
            token_embd,
            output_norm,
            output,
            output_bias,
            rope_freqs,
            layers,
            eog_ids: eog_ids(mapped),
            mapped,
        })
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.contains(&id)
    }
}

fn load_layer<'a>(
    t: &mut Tensors<'a>,
    hp: &Hparams,
    spec: TensorSpec,
    il: usize,
) -> Result<LayerWeights<'a>, ModelError> {
    let w = |s: &str| format!("blk.{il}.{s}.weight");
    let b = |s: &str| format!("blk.{il}.{s}.bias");
    let e = hp.n_embd;
    let q_dim = hp.n_head * hp.head_dim;
    let kv_dim = hp.kv_dim();
    let kv_dim_v = hp.kv_dim_v();
    let o_dim = hp.n_head * hp.head_dim_v;
    let ff = hp.n_ff;
    let bias = spec.biases;
    Ok(LayerWeights {
        attn_norm: t.vector(&w("attn_norm"), e)?,
        wq: t.matrix(&w("attn_q"), e, q_dim)?,
        wk: t.matrix(&w("attn_k"), e, kv_dim)?,
        wv: t.matrix(&w("attn_v"), e, kv_dim_v)?,
        wo: t.matrix(&w("attn_output"), o_dim, e)?,
        bq: t.optional_vector(bias, &b("attn_q"), q_dim)?,
        bk: t.optional_vector(bias, &b("attn_k"), kv_dim)?,
        bv: t.optional_vector(bias, &b("attn_v"), kv_dim_v)?,
        bo: t.optional_vector(bias, &b("attn_output"), e)?,
        q_norm: t.required_vector(spec.qk_norm, &w("attn_q_norm"), hp.head_dim)?,
        k_norm: t.required_vector(spec.qk_norm, &w("attn_k_norm"), hp.head_dim)?,
        post_attn_norm: t.required_vector(spec.post_norms, &w("post_attention_norm"), e)?,
        ffn_norm: t.vector(&w("ffn_norm"), e)?,
        ffn_gate: t.matrix(&w("ffn_gate"), e, ff)?,
        ffn_up: t.matrix(&w("ffn_up"), e, ff)?,
        ffn_down: t.matrix(&w("ffn_down"), ff, e)?,
        ffn_gate_b: t.optional_vector(bias, &b("ffn_gate"), ff)?,
        ffn_up_b: t.optional_vector(bias, &b("ffn_up"), ff)?,
        ffn_down_b: t.optional_vector(bias, &b("ffn_down"), e)?,
        post_ffn_norm: t.required_vector(spec.post_norms, &w("post_ffw_norm"), e)?,
    })
}

/// The model's tensors, remembering which ones were read.
struct Tensors<'a> {
    mapped: &'a MappedModel,
    used: HashSet<String>,
}

impl<'a> Tensors<'a> {
    fn new(mapped: &'a MappedModel) -> Tensors<'a> {
        Tensors {
            mapped,
            used: HashSet::new(),
        }
    }

    fn matrix(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<WeightMatrix<'a>, ModelError> {
        self.used.insert(name.to_string());
        tensor::matrix(self.mapped, name, cols, rows)
    }

    fn optional_matrix(
        &mut self,
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Option<WeightMatrix<'a>>, ModelError> {
        self.used.insert(name.to_string());
        tensor::optional_matrix(self.mapped, name, cols, rows)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<&'a [f32], ModelError> {
        self.used.insert(name.to_string());
        tensor::vector(self.mapped, name, len)
    }

    /// A vector the architecture requires when `wanted`, `None` otherwise.
    fn required_vector(
        &mut self,
        wanted: bool,
        name: &str,
        len: usize,
    ) -> Result<Option<&'a [f32]>, ModelError> {
        wanted.then(|| self.vector(name, len)).transpose()
    }

    /// A vector the architecture reads when `wanted` and the file has it.
    fn optional_vector(
        &mut self,
        wanted: bool,
        name: &str,
        len: usize,
    ) -> Result<Option<&'a [f32]>, ModelError> {
        if !wanted || self.mapped.tensor(name).is_none() {
            return Ok(None);
        }
        self.vector(name, len).map(Some)
    }

    /// Fails on the first tensor of the file that was never read: the architecture does
    /// not know what to do with it, and ignoring it would give wrong outputs silently.
    fn check_all_used(&self, arch: Architecture) -> Result<(), ModelError> {
        match self
            .mapped
            .manifest
            .tensors
            .iter()
            .find(|e| !self.used.contains(&e.name))
        {
            Some(e) => Err(ModelError::UnexpectedTensor {
                name: e.name.clone(),
                arch: arch.name(),
            }),
            None => Ok(()),
        }
    }
}

/// Token texts that end a turn in common chat formats (as llama.cpp recognizes them).
const EOG_TEXTS: &[&[u8]] = &[
    b"<|eot_id|>",
    b"<|im_end|>",
    b"<|end|>",
    b"<end_of_turn>",
    b"<|endoftext|>",
    b"<|end_of_text|>",
    b"<EOT>",
];

/// The end-of-generation ids: EOS, EOT and the control tokens named in [`EOG_TEXTS`].
fn eog_ids(mapped: &MappedModel) -> Vec<u32> {
    let Some(tok) = &mapped.manifest.tokenizer else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = [tok.eos_id, tok.eot_id].into_iter().flatten().collect();
    for id in 0..tok.n_tokens() {
        // Only control / user-defined tokens (types 3 and 4) count, so that plain text
        // pieces that happen to spell a marker are never treated as an end.
        let special = matches!(tok.token_types.get(id), Some(3) | Some(4));
        if special && tok.token(id).is_some_and(|t| EOG_TEXTS.contains(&t)) {
            ids.push(id as u32);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}
