//! Gemma 3 (text).
//!
//! Differences from llama: the embeddings are scaled by √n_embd; queries and keys get a
//! per-head RMSNorm before RoPE (NeoX pairing); queries are pre-scaled by 1/√head_dim;
//! attention and FFN outputs are RMS-normed again before their residual adds; the FFN is
//! GELU(tanh)-gated; five of every six layers attend to a sliding window with their own
//! RoPE base (10 000), the sixth to the whole context with `rope.freq_base`.
//! Norm weights are used as stored: GGUF converters already folded Gemma's `1 + w`.

use smq_format::ModelConfig;

use super::{attention, embed, rope_qk, Batch, Scratch};
use crate::kv_cache::KvCache;
use crate::model::{Hparams, Model, ModelError, SlidingWindow, TensorSpec};
use crate::ops::{self, Rope, RopeStyle};
use crate::par::{add_inplace, geglu, rmsnorm, rmsnorm_inplace, scale};
use crate::profile::{time, Op};
use crate::quant::matmul::{matmul, matmul_gated, matmul_group};

/// One global layer after every five sliding-window layers.
const SWA_PATTERN: usize = 6;
/// RoPE base of the sliding-window layers (not stored in GGUF files).
const LOCAL_ROPE_BASE: f32 = 10_000.0;

pub(crate) fn configure(hp: &mut Hparams, cfg: &ModelConfig) -> Result<TensorSpec, ModelError> {
    hp.rope.style = RopeStyle::Neox;
    let window = cfg
        .sliding_window
        .ok_or(ModelError::MissingKey("attention.sliding_window"))?;
    if window == 0 {
        return Err(ModelError::InvalidConfig(
            "attention.sliding_window is 0".to_string(),
        ));
    }
    hp.sliding = Some(SlidingWindow {
        window: usize::try_from(window).unwrap_or(usize::MAX),
        pattern: SWA_PATTERN,
        rope: Rope {
            freq_base: LOCAL_ROPE_BASE,
            freq_scale: 1.0,
            ..hp.rope
        },
    });
    // Gemma 3 27B scales by the model width per head instead of the head size.
    let scale_dim = if hp.n_layer == 62 {
        hp.n_embd / hp.n_head
    } else {
        hp.head_dim
    };
    hp.attn_scale = 1.0 / (scale_dim as f32).sqrt();
    Ok(TensorSpec {
        qk_norm: true,
        post_norms: true,
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
    let missing =
        |what: &str, il: usize| ModelError::MissingTensor(format!("blk.{il}.{what}.weight"));

    embed(m, tokens, x)?;
    time(Op::Embedding, || scale(x, (hp.n_embd as f32).sqrt()));

    for (il, w) in m.layers.iter().enumerate() {
        let q_norm = w.q_norm.ok_or_else(|| missing("attn_q_norm", il))?;
        let k_norm = w.k_norm.ok_or_else(|| missing("attn_k_norm", il))?;
        let post_attn_norm = w
            .post_attn_norm
            .ok_or_else(|| missing("post_attention_norm", il))?;
        let post_ffn_norm = w
            .post_ffn_norm
            .ok_or_else(|| missing("post_ffw_norm", il))?;

        // Attention.
        time(Op::Norm, || rmsnorm(xb, x, w.attn_norm, hp.rms_eps));
        time(Op::QkvMatmul, || {
            matmul_group(
                &mut [(&w.wq, &mut *q), (&w.wk, &mut *k), (&w.wv, &mut *v)],
                xb,
                nt,
            )
        });
        time(Op::QkNormRope, || {
            rmsnorm_inplace(q, q_norm, hp.rms_eps);
            rmsnorm_inplace(k, k_norm, hp.rms_eps);
            rope_qk(hp, &hp.layer_rope(il), None, pos0, q, k, rope_cs);
            scale(q, hp.attn_scale);
        });
        time(Op::KvStore, || kv.store(il, k, v));
        time(Op::Attention, || {
            attention(hp, kv, il, pos0, q, att, hp.layer_window(il), 1.0)
        });
        time(Op::OutputProj, || matmul(&w.wo, att, nt, xb2));
        time(Op::Norm, || {
            rmsnorm_inplace(xb2, post_attn_norm, hp.rms_eps)
        });
        time(Op::Residual, || add_inplace(x, xb2));

        // Feed-forward.
        time(Op::Norm, || rmsnorm(xb, x, w.ffn_norm, hp.rms_eps));
        time(Op::GateUpMatmul, || {
            matmul_gated(&w.ffn_gate, &w.ffn_up, xb, nt, gate, up, ops::geglu, geglu)
        });
        time(Op::DownProj, || matmul(&w.ffn_down, gate, nt, xb2));
        time(Op::Norm, || rmsnorm_inplace(xb2, post_ffn_norm, hp.rms_eps));
        time(Op::Residual, || add_inplace(x, xb2));
    }
    Ok(())
}
