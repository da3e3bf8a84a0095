//! Llama (SmolLM2, TinyLlama, Llama 2/3 without RoPE frequency factors).
//!
//! Per block: RMSNorm → Q/K/V projections → RoPE (adjacent pairs) → causal grouped-query
//! attention → output projection → residual; RMSNorm → SwiGLU FFN → residual.
//! Then a final RMSNorm and the LM head (tied to the embeddings when `output.weight` is
//! absent).

use smq_format::ModelConfig;

use super::{attention, embed, rope_qk, Scratch};
use crate::kv_cache::KvCache;
use crate::model::{Hparams, LayerSpec, Model, ModelError};
use crate::ops::{add_inplace, rmsnorm, swiglu, RopeStyle};
use crate::quant::matmul::matmul;

pub(crate) fn configure(hp: &mut Hparams, _cfg: &ModelConfig) -> Result<LayerSpec, ModelError> {
    hp.rope.style = RopeStyle::Normal;
    hp.attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
    Ok(LayerSpec::default())
}

/// Runs `tokens` through every block, leaving the residual stream in `s.x`.
pub(crate) fn forward(
    m: &Model,
    kv: &mut KvCache,
    s: &mut Scratch,
    tokens: &[u32],
) -> Result<(), ModelError> {
    let hp = &m.hp;
    let nt = tokens.len();
    let pos0 = kv.len();
    let x = &mut s.x[..nt * hp.n_embd];
    let xb = &mut s.xb[..nt * hp.n_embd];
    let xb2 = &mut s.xb2[..nt * hp.n_embd];
    let q = &mut s.q[..nt * hp.n_head * hp.head_dim];
    let k = &mut s.k[..nt * hp.kv_dim()];
    let v = &mut s.v[..nt * hp.kv_dim_v()];
    let att = &mut s.att[..nt * hp.n_head * hp.head_dim_v];
    let gate = &mut s.gate[..nt * hp.n_ff];
    let up = &mut s.up[..nt * hp.n_ff];

    embed(m, tokens, x)?;

    for (il, w) in m.layers.iter().enumerate() {
        // Attention.
        rmsnorm(xb, x, w.attn_norm, hp.rms_eps);
        matmul(&w.wq, xb, nt, q);
        matmul(&w.wk, xb, nt, k);
        matmul(&w.wv, xb, nt, v);
        rope_qk(hp, &hp.rope, pos0, q, k, &mut s.rope_cs);
        kv.store(il, k, v);
        attention(hp, kv, il, pos0, q, att, None, hp.attn_scale);
        matmul(&w.wo, att, nt, xb2);
        add_inplace(x, xb2);

        // Feed-forward.
        rmsnorm(xb, x, w.ffn_norm, hp.rms_eps);
        matmul(&w.ffn_gate, xb, nt, gate);
        matmul(&w.ffn_up, xb, nt, up);
        swiglu(gate, up);
        matmul(&w.ffn_down, gate, nt, xb2);
        add_inplace(x, xb2);
    }
    Ok(())
}
