//! Causal (and sliding-window) attention over the fp16 KV cache, for a batch of query
//! tokens.
//!
//! The work is split into tasks of one KV head and a tile of query tokens (for short
//! batches, also one query head). A task takes its queries through three kernels:
//! scores against the key tiles of the cache (16 positions per vector, each converted
//! key vector reused by up to 8 queries), a softmax per query, and the weighted sum of
//! the value rows (each converted value row reused by the query heads of a token).
//!
//! # Rounding
//! What is rounded where follows llama.cpp's default CPU attention, which the reference
//! logits come from: the query is rounded to fp16, keys and values are fp16, sums are
//! f32, and the probabilities are rounded to fp16 before they weight the values. The
//! order of operations is chosen so that vectors compute it exactly; the scalar kernels
//! in [`reference`] define it and every SIMD path gives the same bits:
//! - score = (Σ_d q[d]·k[d]) · scale, one fused multiply-add per dimension in order;
//! - softmax: m = max score, e = exp(score − m) with [`reference::exp`], sum = 16
//!   partial sums (position index mod 16) added lane 0 to 15, p = fp16(e · (1 / sum));
//! - out = Σ_pos p·v[pos], one fused multiply-add per position in position order.

mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::kv_cache::{KvCache, KEY_TILE};
use crate::model::Hparams;
use crate::quant::cpu::best_path;
use crate::quant::float::f32_to_f16_row;
use crate::quant::KernelPath;
use crate::team::{Chunks, Team};

/// The value rows of one KV head: row `pos` is `data[pos * stride + offset..][..dv]`.
#[derive(Clone, Copy)]
pub(crate) struct ValueRows<'a> {
    pub data: &'a [f16],
    pub stride: usize,
    pub offset: usize,
    pub dv: usize,
}

impl<'a> ValueRows<'a> {
    #[inline]
    fn row(&self, pos: usize) -> &'a [f16] {
        let start = pos * self.stride + self.offset;
        &self.data[start..start + self.dv]
    }
}

type ScoresFn = fn(&[f32], usize, &[f16], f32, &mut [f32], usize);
type SoftmaxFn = fn(&mut [f32]);
type WeightedSumFn = fn(&[&[f32]], ValueRows<'_>, usize, &mut [&mut [f32]]);

/// The three kernels of one path.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    /// Scores of queries against one key tile (see [`reference::scores`]).
    scores: ScoresFn,
    /// Softmax in place with fp16-rounded probabilities (see [`reference::softmax`]).
    softmax: SoftmaxFn,
    /// Probability-weighted sums of value rows (see [`reference::weighted_sum`]).
    weighted_sum: WeightedSumFn,
}

impl Kernels {
    /// The kernels of `path` (which this CPU must support).
    pub(crate) fn for_path(path: KernelPath) -> Kernels {
        match path {
            KernelPath::Scalar => Kernels {
                scores: reference::scores,
                softmax: reference::softmax,
                weighted_sum: reference::weighted_sum,
            },
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => x86::avx2_kernels(),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => x86::avx512_kernels(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => Kernels::for_path(KernelPath::Scalar),
        }
    }
}

/// Query tokens per task for long batches.
const TOKEN_TILE: usize = 16;

/// Query heads of one token whose value sums run together.
const HEADS_PER_SUM: usize = 4;

/// Causal attention of the queries of `n_tokens` tokens (positions `pos0..`) over the
/// cached keys and values of `layer`, which already include these tokens. With a
/// `window`, a query at position `p` sees positions `p - window + 1 ..= p` only.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    hp: &Hparams,
    kv: &KvCache,
    layer: usize,
    pos0: usize,
    q: &[f32],
    att: &mut [f32],
    window: Option<usize>,
    scale: f32,
) {
    attention_with(
        Kernels::for_path(best_path()),
        hp,
        kv,
        layer,
        pos0,
        q,
        att,
        window,
        scale,
    );
}

/// [`attention`] with the kernels of a given path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with(
    kernels: Kernels,
    hp: &Hparams,
    kv: &KvCache,
    layer: usize,
    pos0: usize,
    q: &[f32],
    att: &mut [f32],
    window: Option<usize>,
    scale: f32,
) {
    let (hd, hdv) = (hp.head_dim, hp.head_dim_v);
    let group = hp.n_head / hp.n_head_kv;
    let n_tokens = att.len() / (hp.n_head * hdv);
    assert_eq!(q.len(), n_tokens * hp.n_head * hd, "query length");
    let threads = Team::global().threads();
    let token_tile = TOKEN_TILE.min(n_tokens.max(1));
    let token_tiles = n_tokens.div_ceil(token_tile);
    // Short batches (decoding) split the heads of a group too, so both threads work.
    let head_split = if hp.n_head_kv * token_tiles < 2 * threads {
        group
    } else {
        1
    };
    let heads_per_task = group / head_split;
    let n_tasks = hp.n_head_kv * token_tiles * head_split;
    let values = kv.values(layer);
    let out = AttOut(att.as_mut_ptr(), att.len());
    let next = Chunks::new(n_tasks, 1);
    let run = |_thread: usize| {
        let mut scratch = Scratch::default();
        while let Some(range) = next.claim() {
            for i in range {
                // Later token tiles see more positions: hand them out first.
                let i = n_tasks - 1 - i;
                let tile = i / (hp.n_head_kv * head_split);
                let rest = i % (hp.n_head_kv * head_split);
                let (kvh, part) = (rest / head_split, rest % head_split);
                let task = Task {
                    kvh,
                    heads: kvh * group + part * heads_per_task
                        ..kvh * group + (part + 1) * heads_per_task,
                    tokens: tile * token_tile..((tile + 1) * token_tile).min(n_tokens),
                };
                let values = ValueRows {
                    data: values,
                    stride: hp.kv_dim_v(),
                    offset: kvh * hdv,
                    dv: hdv,
                };
                let ctx = TaskContext {
                    kernels,
                    hp,
                    kv,
                    layer,
                    pos0,
                    q,
                    window,
                    scale,
                    values,
                };
                // SAFETY: every (token, head) output belongs to exactly one task.
                unsafe { run_task(&ctx, &task, out, &mut scratch) };
            }
        }
    };
    if n_tasks == 1 {
        run(0);
    } else {
        Team::global().run(&run);
    }
}

/// What every task of one attention call shares.
struct TaskContext<'a> {
    kernels: Kernels,
    hp: &'a Hparams,
    kv: &'a KvCache,
    layer: usize,
    pos0: usize,
    q: &'a [f32],
    window: Option<usize>,
    scale: f32,
    values: ValueRows<'a>,
}

/// One KV head's query heads `heads` for the tokens `tokens` (batch indices).
struct Task {
    kvh: usize,
    heads: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
}

/// Per-thread buffers: the task's fp16-rounded queries and its scores/probabilities.
#[derive(Default)]
struct Scratch {
    q16: Vec<f16>,
    qs: Vec<f32>,
    scores: Vec<f32>,
}

/// The attention output (pointer, length), written by several tasks at once.
#[derive(Clone, Copy)]
struct AttOut(*mut f32, usize);
// SAFETY: tasks write disjoint (token, head) slices while `attention_with` holds the
// `&mut` borrow of the whole buffer.
unsafe impl Send for AttOut {}
unsafe impl Sync for AttOut {}

impl AttOut {
    /// Output slice `[start, start + len)`.
    ///
    /// # Safety
    /// No other thread may use these elements at the same time.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.1, "attention output out of range");
        // SAFETY: in bounds (checked); exclusive per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Positions a query at batch index `t` sees.
fn visible(ctx: &TaskContext, t: usize) -> std::ops::Range<usize> {
    let pos = ctx.pos0 + t;
    let first = ctx.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    first..pos + 1
}

/// Runs one task: scores, softmax and weighted sums of its queries.
///
/// # Safety
/// The task's (token, head) outputs must not be used by another thread meanwhile.
unsafe fn run_task(ctx: &TaskContext, task: &Task, out: AttOut, s: &mut Scratch) {
    let hp = ctx.hp;
    let (hd, hdv) = (hp.head_dim, hp.head_dim_v);
    let q_stride = hp.n_head * hd;
    let n_heads = task.heads.len();
    let nq = task.tokens.len() * n_heads;
    // Queries token-major: query `ti * n_heads + hi` is head `heads[hi]` of token `ti`.
    s.q16.resize(hd, f16::ZERO);
    s.qs.resize(nq * hd, 0.0);
    let mut qs = s.qs.chunks_exact_mut(hd);
    for t in task.tokens.clone() {
        for h in task.heads.clone() {
            let q = &ctx.q[t * q_stride + h * hd..][..hd];
            f32_to_f16_row(q, &mut s.q16);
            s.q16
                .convert_to_f32_slice(qs.next().expect("one slot per query"));
        }
    }
    let first = visible(ctx, task.tokens.start).start;
    let last = visible(ctx, task.tokens.end - 1).end - 1;
    let (tile0, tile1) = (first / KEY_TILE, last / KEY_TILE);
    let base = tile0 * KEY_TILE;
    let span = (tile1 + 1 - tile0) * KEY_TILE;
    s.scores.clear();
    s.scores.resize(nq * span, 0.0);
    for tile in tile0..=tile1 {
        let keys = ctx.kv.key_tile(ctx.layer, task.kvh, tile);
        let col = (tile - tile0) * KEY_TILE;
        (ctx.kernels.scores)(&s.qs, hd, keys, ctx.scale, &mut s.scores[col..], span);
    }
    for (ti, t) in task.tokens.clone().enumerate() {
        let vis = visible(ctx, t);
        let (lo, hi) = (vis.start - base, vis.end - base);
        for hi_ in 0..n_heads {
            let row = (ti * n_heads + hi_) * span;
            (ctx.kernels.softmax)(&mut s.scores[row + lo..row + hi]);
        }
        for h0 in (0..n_heads).step_by(HEADS_PER_SUM) {
            let n = (h0 + HEADS_PER_SUM).min(n_heads) - h0;
            // Fixed-size arrays: no allocation per token (this runs per decoded token).
            let p: [&[f32]; HEADS_PER_SUM] = std::array::from_fn(|k| {
                let row = (ti * n_heads + h0 + k) * span;
                if k < n {
                    &s.scores[row + lo..row + hi]
                } else {
                    &[]
                }
            });
            let mut outs: [&mut [f32]; HEADS_PER_SUM] = Default::default();
            for (k, o) in outs.iter_mut().enumerate().take(n) {
                let h = task.heads.start + h0 + k;
                // SAFETY: head `h` of token `t` belongs to this task only.
                *o = unsafe { out.slice((t * hp.n_head + h) * hdv, hdv) };
            }
            (ctx.kernels.weighted_sum)(&p[..n], ctx.values, vis.start, &mut outs[..n]);
        }
    }
}

#[cfg(test)]
mod tests;
