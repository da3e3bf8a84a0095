//! Qwen 2 / Qwen 2.5.
//!
//! The llama block (see `llama.rs`) with two differences: the Q/K/V projections carry
//! biases, and RoPE pairs dimension `i` with `i + n_rot/2` (NeoX style). The LM head may
//! be tied to the embeddings (small models) and may carry a bias.

use smq_format::ModelConfig;

use crate::model::{Hparams, ModelError, TensorSpec};
use crate::ops::RopeStyle;

pub(crate) fn configure(hp: &mut Hparams, _cfg: &ModelConfig) -> Result<TensorSpec, ModelError> {
    hp.rope.style = RopeStyle::Neox;
    hp.attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
    Ok(TensorSpec {
        biases: true,
        output_bias: true,
        ..TensorSpec::default()
    })
}
