//! A process-wide, off-by-default profiler of the forward pass: wall time and call count
//! per step ([`Op`]), for "where does a decoded token's time go".
//!
//! The architectures wrap each step in [`time`]. Disabled (the default), that costs one
//! relaxed atomic load and a branch; enabled, an `Instant` pair and two relaxed atomic
//! adds per step. Steps must not nest, so that the per-op times add up to at most the
//! wall time of the forward pass. The steps that fan out to the thread team are timed on
//! the calling thread, which waits for the team: their time is wall time, not CPU time.
//!
//! Measuring never changes what a step computes or the order the steps run in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// The steps of a forward pass, in the order a block runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Embedding lookup (and Gemma's √n_embd scaling).
    Embedding,
    /// The RMSNorms of a block: before attention and FFN, and Gemma's post-attention and
    /// post-FFN norms.
    Norm,
    /// The fused Q/K/V projection (one `matmul_group`) and its biases.
    QkvMatmul,
    /// Per-head QK RMSNorm (when the model has it), RoPE, and Gemma's query scaling.
    QkNormRope,
    /// Writing the batch's keys and values into the cache.
    KvStore,
    /// Causal attention over the cache.
    Attention,
    /// The attention output projection and its bias.
    OutputProj,
    /// The gate/up projections and, where no bias comes between them, the gated
    /// activation too (`matmul_gated`); else one `matmul_group` and the biases.
    GateUpMatmul,
    /// The gated activation (SwiGLU, GeGLU) of models with gate/up biases.
    Glu,
    /// The FFN down projection and its bias.
    DownProj,
    /// The two residual adds of a block.
    Residual,
    /// The final RMSNorm, the LM head and its bias.
    LmHead,
}

impl Op {
    /// Every op, in forward-pass order.
    pub const ALL: [Op; 12] = [
        Op::Embedding,
        Op::Norm,
        Op::QkvMatmul,
        Op::QkNormRope,
        Op::KvStore,
        Op::Attention,
        Op::OutputProj,
        Op::GateUpMatmul,
        Op::Glu,
        Op::DownProj,
        Op::Residual,
        Op::LmHead,
    ];

    /// A short snake_case name (table rows, JSON keys).
    pub fn name(self) -> &'static str {
        match self {
            Op::Embedding => "embedding",
            Op::Norm => "norm",
            Op::QkvMatmul => "qkv_matmul",
            Op::QkNormRope => "qk_norm_rope",
            Op::KvStore => "kv_store",
            Op::Attention => "attention",
            Op::OutputProj => "attn_output",
            Op::GateUpMatmul => "gate_up_matmul",
            Op::Glu => "glu",
            Op::DownProj => "ffn_down",
            Op::Residual => "residual",
            Op::LmHead => "final_norm_lm_head",
        }
    }

    /// Whether the op is a matrix product over the weights.
    pub fn is_matmul(self) -> bool {
        matches!(
            self,
            Op::QkvMatmul | Op::OutputProj | Op::GateUpMatmul | Op::DownProj | Op::LmHead
        )
    }
}

const N_OPS: usize = Op::ALL.len();

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; N_OPS] = [const { AtomicU64::new(0) }; N_OPS];
static CALLS: [AtomicU64; N_OPS] = [const { AtomicU64::new(0) }; N_OPS];

/// Turns recording on or off for the whole process (the totals are kept; see [`reset`]).
pub fn enable(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// Whether recording is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Zeroes every op's totals.
pub fn reset() {
    for (n, c) in NANOS.iter().zip(&CALLS) {
        n.store(0, Relaxed);
        c.store(0, Relaxed);
    }
}

/// Runs `f`, adding its wall time and one call to `op`'s totals when recording is on.
#[inline]
pub fn time<R>(op: Op, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Relaxed) {
        return f();
    }
    let start = Instant::now();
    let r = f();
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    NANOS[op as usize].fetch_add(nanos, Relaxed);
    CALLS[op as usize].fetch_add(1, Relaxed);
    r
}

/// One op's totals since the last [`reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpTime {
    pub op: Op,
    pub name: &'static str,
    pub nanos: u64,
    pub calls: u64,
}

/// Every op's totals, in [`Op::ALL`] order.
pub fn snapshot() -> Vec<OpTime> {
    Op::ALL
        .iter()
        .map(|&op| OpTime {
            op,
            name: op.name(),
            nanos: NANOS[op as usize].load(Relaxed),
            calls: CALLS[op as usize].load(Relaxed),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_indices_match_the_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
        let mut names: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_OPS);
    }
}
