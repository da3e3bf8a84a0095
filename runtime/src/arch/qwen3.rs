//! Qwen 3 (dense).
//!
//! The llama block (see `llama.rs`) with a per-head RMSNorm of queries and keys
//! (`attn_q_norm`, `attn_k_norm`) between the projections and RoPE, NeoX-style RoPE, and
//! a head size that need not be `n_embd / n_head` (it comes from `attention.key_length`).
//! No projection biases in the released models, though the loader accepts them as
//! llama.cpp does.

use smq_format::ModelConfig;

use crate::model::{Hparams, ModelError, TensorSpec};
use crate::ops::RopeStyle;

pub(crate) fn configure(hp: &mut Hparams, _cfg: &ModelConfig) -> Result<TensorSpec, ModelError> {
    hp.rope.style = RopeStyle::Neox;
    hp.attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
    Ok(TensorSpec {
        qk_norm: true,
        biases: true,
        ..TensorSpec::default()
    })
}
