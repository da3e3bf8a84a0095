//! SmolLM3.
//!
//! The llama block (see `llama.rs`, adjacent-pair RoPE) where every fourth layer
//! (`(il + 1) % 4 == 0`) uses no positional encoding at all (NoPE): its queries and keys
//! go into attention unrotated. GGUF files do not store the interval; llama.cpp fixes it
//! at 4, as the released models use.

use smq_format::ModelConfig;

use crate::model::{Hparams, ModelError, TensorSpec};
use crate::ops::RopeStyle;

/// One NoPE layer after every three RoPE layers.
const NO_ROPE_EVERY: usize = 4;

pub(crate) fn configure(hp: &mut Hparams, _cfg: &ModelConfig) -> Result<TensorSpec, ModelError> {
    hp.rope.style = RopeStyle::Normal;
    hp.no_rope_every = Some(NO_ROPE_EVERY);
    hp.attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
    Ok(TensorSpec {
        biases: true,
        ..TensorSpec::default()
    })
}
