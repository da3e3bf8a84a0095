//! Llama (SmolLM2, TinyLlama, Llama 2/3, Mistral), and the block the whole llama family
//! shares (Qwen 2, Qwen 3 and SmolLM3 configure it in their own files).
//!
//! Per block: RMSNorm → Q/K/V projections (+ biases) → per-head QK RMSNorm (if the model
//! has it) → RoPE (unless the layer is a NoPE layer) → causal grouped-query attention →
//! output projection (+ bias) → residual; RMSNorm → SwiGLU FFN (+ biases) → residual.
//! Then a final RMSNorm and the LM head (tied to the embeddings when `output.weight` is
//! absent).
//!
//! Llama itself pairs adjacent dimensions in RoPE and may carry `rope_freqs.weight`
//! (Llama 3.1+: long-context frequency divisors) and projection biases.

use smq_format::ModelConfig;

use super::{attention, embed, rope_qk, Batch, Scratch};
use crate::kv_cache::KvCache;
use crate::model::{Hparams, Model, ModelError, TensorSpec};
use crate::ops::{self, RopeStyle};
use crate::par::{add_bias, add_inplace, rmsnorm, rmsnorm_inplace, swiglu};
use crate::profile::{time, Op};
use crate::quant::matmul::{matmul, matmul_gated, matmul_group};

pub(crate) fn configure(hp: &mut Hparams, _cfg: &ModelConfig) -> Result<TensorSpec, ModelError> {
    hp.rope.style = RopeStyle::Normal;
    hp.attn_scale = 1.0 / (hp.head_dim as f32).sqrt();
    Ok(TensorSpec {
        biases: true,
        rope_freqs: true,
        ..TensorSpec::default()
    })
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
    let Batch {
        x,
        xb,
        xb2,
        q,
        k,
        v,
        att,
        gate,
        up,
        rope_cs,
    } = s.batch(hp, nt);
    let bias = |x: &mut [f32], b: Option<&[f32]>| {
        if let Some(b) = b {
            add_bias(x, b);
        }
    };

    embed(m, tokens, x)?;

    for (il, w) in m.layers.iter().enumerate() {
        // Attention.
        time(Op::Norm, || rmsnorm(xb, x, w.attn_norm, hp.rms_eps));
        time(Op::QkvMatmul, || {
            matmul_group(
                &mut [(&w.wq, &mut *q), (&w.wk, &mut *k), (&w.wv, &mut *v)],
                xb,
                nt,
            );
            bias(q, w.bq);
            bias(k, w.bk);
            bias(v, w.bv);
        });
        time(Op::QkNormRope, || {
            if let (Some(q_norm), Some(k_norm)) = (w.q_norm, w.k_norm) {
                rmsnorm_inplace(q, q_norm, hp.rms_eps);
                rmsnorm_inplace(k, k_norm, hp.rms_eps);
            }
            if hp.layer_has_rope(il) {
                rope_qk(hp, &hp.rope, m.rope_freqs, pos0, q, k, rope_cs);
            }
        });
        time(Op::KvStore, || kv.store(il, k, v));
        time(Op::Attention, || {
            attention(hp, kv, il, pos0, q, att, None, hp.attn_scale)
        });
        time(Op::OutputProj, || {
            matmul(&w.wo, att, nt, xb2);
            bias(xb2, w.bo);
        });
        time(Op::Residual, || add_inplace(x, xb2));

        // Feed-forward.
        time(Op::Norm, || rmsnorm(xb, x, w.ffn_norm, hp.rms_eps));
        if w.ffn_gate_b.is_none() && w.ffn_up_b.is_none() {
            // No bias between the projections and the activation: one fused step.
            time(Op::GateUpMatmul, || {
                matmul_gated(
                    &w.ffn_gate,
                    &w.ffn_up,
                    xb,
                    nt,
                    gate,
                    up,
                    ops::swiglu,
                    swiglu,
                )
            });
        } else {
            time(Op::GateUpMatmul, || {
                matmul_group(
                    &mut [(&w.ffn_gate, &mut *gate), (&w.ffn_up, &mut *up)],
                    xb,
                    nt,
                );
                bias(gate, w.ffn_gate_b);
                bias(up, w.ffn_up_b);
            });
            time(Op::Glu, || swiglu(gate, up));
        }
        time(Op::DownProj, || {
            matmul(&w.ffn_down, gate, nt, xb2);
            bias(xb2, w.ffn_down_b);
        });
        time(Op::Residual, || add_inplace(x, xb2));
    }
    Ok(())
}
