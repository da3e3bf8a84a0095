//! Element-wise and per-row operations of the forward pass, in plain Rust.
//!
//! Each op follows the arithmetic of llama.cpp's CPU backend where that matters for
//! fidelity (sum precision in RMSNorm, the incremental RoPE angle, the fp16 GELU table,
//! flash attention's fp16 query and fp16 value accumulator), so smq's logits stay within
//! the noise llama.cpp itself shows between two CPUs.

use std::sync::OnceLock;

use half::f16;

/// RMSNorm of each `dim`-long row of `x` into `out`, times `weight`.
///
/// The sum of squares is accumulated in f64 and the scale is computed in f32, as ggml does.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    debug_assert_eq!(out.len(), x.len());
    for (o, xr) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        let scale = rms_scale(xr, eps);
        for ((o, &v), &w) in o.iter_mut().zip(xr).zip(weight) {
            *o = (v * scale) * w;
        }
    }
}

/// RMSNorm of each `weight.len()`-long row of `x`, in place.
pub fn rmsnorm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for xr in x.chunks_exact_mut(dim) {
        let scale = rms_scale(xr, eps);
        for (v, &w) in xr.iter_mut().zip(weight) {
            *v = (*v * scale) * w;
        }
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (llama.cpp's "normal" mode, used by llama).
    Normal,
    /// Halves `(i, i + n_rot/2)` (GPT-NeoX style, used by Gemma, Qwen).
    Neox,
}

/// Rotary position embedding parameters of one layer.
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated dimensions per head (the first `n_rot` of each head).
    pub n_rot: usize,
    pub freq_base: f32,
    /// Position scale (1 / linear scaling factor).
    pub freq_scale: f32,
}

impl Rope {
    /// Fills `cos_sin` (`n_rot` values: cos, sin per pair) for position `pos`.
    ///
    /// The angle is advanced by repeated multiplication in f32, like ggml's rope cache, so
    /// the rounding of the angles matches llama.cpp's.
    pub fn angles(&self, pos: usize, cos_sin: &mut [f32]) {
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let mut theta = pos as f32;
        for pair in cos_sin[..self.n_rot].chunks_exact_mut(2) {
            let t = self.freq_scale * theta;
            pair[0] = t.cos();
            pair[1] = t.sin();
            theta *= theta_scale;
        }
    }

    /// Rotates every head (`head_dim` long) of one token's `x` by the angles of `cos_sin`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos_sin: &[f32]) {
        let half = self.n_rot / 2;
        for head in x.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::Normal => {
                    for (pair, cs) in head[..self.n_rot]
                        .chunks_exact_mut(2)
                        .zip(cos_sin.chunks_exact(2))
                    {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * cs[0] - x1 * cs[1];
                        pair[1] = x0 * cs[1] + x1 * cs[0];
                    }
                }
                RopeStyle::Neox => {
                    let (lo, hi) = head[..self.n_rot].split_at_mut(half);
                    for ((a, b), cs) in lo.iter_mut().zip(hi).zip(cos_sin.chunks_exact(2)) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * cs[0] - x1 * cs[1];
                        *b = x0 * cs[1] + x1 * cs[0];
                    }
                }
            }
        }
    }
}

impl Rope {
    /// Like [`Rope::angles`], with the frequency of pair `i` divided by `factors[i]`
    /// (Llama 3's `rope_freqs`; `factors` holds `n_rot / 2` values). The division comes
    /// before the position scale, in ggml's order.
    pub fn angles_with_factors(&self, pos: usize, factors: &[f32], cos_sin: &mut [f32]) {
        let theta_scale = self.freq_base.powf(-2.0 / self.n_rot as f32);
        let mut theta = pos as f32;
        for (pair, &ff) in cos_sin[..self.n_rot].chunks_exact_mut(2).zip(factors) {
            let t = self.freq_scale * (theta / ff);
            pair[0] = t.cos();
            pair[1] = t.sin();
            theta *= theta_scale;
        }
    }
}

/// Adds `bias` to every `bias.len()`-long row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `x / (1 + e^-x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up` (SwiGLU), element-wise.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_COEF_A: f32 = 0.044_715;

/// GELU, tanh approximation, in f32.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// GELU as llama.cpp's CPU backend evaluates it: the input rounded to fp16 and looked
/// up in a 65536-entry table of fp16 results; exact 0 / identity beyond ±10.
#[inline]
pub fn gelu_tanh_f16(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_tanh(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// `gate = gelu(gate) * up` (GeGLU), element-wise, with llama.cpp's fp16 GELU.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh_f16(*g) * u;
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// `acc += x`.
pub fn add_inplace(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Dot product of two fp16 vectors, accumulated in f32 over 8 lanes.
#[inline]
fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::cpu::best_path() >= crate::quant::KernelPath::Avx2 {
        // SAFETY: the best path is one this CPU supports, and AVX2 implies F16C here.
        return unsafe { f16_simd::dot(a, b) };
    }
    dot_f16_scalar(a, b)
}

/// `out += p · v` over fp16 values, each element a separate multiply and add (no FMA),
/// so every path gives the same bits.
fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::cpu::best_path() >= crate::quant::KernelPath::Avx2 {
        // SAFETY: as in `dot_f16`.
        return unsafe { f16_simd::axpy(out, p, v) };
    }
    for (a, &x) in out.iter_mut().zip(v) {
        *a += p * x.to_f32();
    }
}

/// The fp16 loops of attention on 8 lanes, in the same lane order and with the same
/// separate multiplies and adds as the scalar code.
#[cfg(target_arch = "x86_64")]
mod f16_simd {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,f16c")]
    fn load8(x: &[f16]) -> __m256 {
        // SAFETY: callers pass at least 8 elements; unaligned load.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.as_ptr().cast()) })
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn dot(a: &[f16], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let chunks = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..chunks).step_by(8) {
            acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(&a[i..]), load8(&b[i..])));
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut sum: f32 = lanes.iter().sum();
        for (x, y) in a[chunks..n].iter().zip(&b[chunks..n]) {
            sum += x.to_f32() * y.to_f32();
        }
        sum
    }

    /// [`dot`] of `q` with eight keys at once: eight independent accumulators instead
    /// of one latency-bound chain, each summed in the same order as `dot` does.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn scores(
        q: &[f16],
        keys: super::HeadRows<'_>,
        visible: std::ops::Range<usize>,
        scores: &mut [f32],
    ) {
        let dk = q.len();
        debug_assert!(dk.is_multiple_of(8));
        let first = visible.start;
        let mut i = 0;
        while i + 8 <= scores.len() {
            let rows: [&[f16]; 8] = std::array::from_fn(|j| keys.row(first + i + j, dk));
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in (0..dk).step_by(8) {
                let qc = load8(&q[c..]);
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(qc, load8(&row[c..])));
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
                scores[i + j] = lanes.iter().sum();
            }
            i += 8;
        }
        for (j, s) in scores.iter_mut().enumerate().skip(i) {
            *s = dot(q, keys.row(first + j, dk));
        }
    }

    /// A loop of [`axpy`] over the visible positions, with 64 outputs at a time held
    /// in registers across the positions instead of loaded and stored per position.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn weighted_sum(
        out: &mut [f32],
        p: &[f32],
        values: super::HeadRows<'_>,
        visible: std::ops::Range<usize>,
    ) {
        let dv = out.len();
        debug_assert!(dv.is_multiple_of(8));
        let first = visible.start;
        for s0 in (0..dv).step_by(64) {
            let vecs = 64.min(dv - s0) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (k, a) in acc.iter_mut().enumerate().take(vecs) {
                // SAFETY: `s0 + 8k + 8 <= dv`; unaligned load.
                *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(s0 + 8 * k)) };
            }
            for (i, &pi) in p.iter().enumerate() {
                let row = values.row(first + i, dv);
                let pv = _mm256_set1_ps(pi);
                for (k, a) in acc.iter_mut().enumerate().take(vecs) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, load8(&row[s0 + 8 * k..])));
                }
            }
            for (k, a) in acc.iter().enumerate().take(vecs) {
                // SAFETY: as above; unaligned store.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(s0 + 8 * k), *a) };
            }
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn axpy(out: &mut [f32], p: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let chunks = n / 8 * 8;
        let pv = _mm256_set1_ps(p);
        for i in (0..chunks).step_by(8) {
            // SAFETY: `i + 8 <= n` for both slices; unaligned loads and stores.
            unsafe {
                let o = _mm256_loadu_ps(out.as_ptr().add(i));
                let r = _mm256_add_ps(o, _mm256_mul_ps(pv, load8(&v[i..])));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
            }
        }
        for (a, &x) in out[chunks..n].iter_mut().zip(&v[chunks..n]) {
            *a += p * x.to_f32();
        }
    }
}

/// The portable reference of [`dot_f16`]: eight lane sums, then the tail.
fn dot_f16_scalar(a: &[f16], b: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l].to_f32() * cb[l].to_f32();
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += x.to_f32() * y.to_f32();
    }
    sum
}

/// One KV head inside a cache: row `pos` is `data[pos * stride + offset..][..len]`.
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub data: &'a [f16],
    pub stride: usize,
    pub offset: usize,
}

impl<'a> HeadRows<'a> {
    #[inline]
    fn row(&self, pos: usize, len: usize) -> &'a [f16] {
        let start = pos * self.stride + self.offset;
        &self.data[start..start + len]
    }
}

/// Scratch of one attention task: the query rounded to fp16 and one score per position.
#[derive(Default)]
pub struct AttentionScratch {
    q16: Vec<f16>,
    scores: Vec<f32>,
}

/// Attention of one query head over cached positions, with the rounding of llama.cpp's
/// default CPU attention (no flash attention), which the reference logits come from:
/// the query is rounded to fp16 for `q·k` over the fp16 keys (f32 sums), the softmax is
/// f32 with a double-precision sum, and the probabilities are rounded to fp16 before
/// they weight the fp16 values (f32 sums).
///
/// Only positions in `visible` are attended (the causal and sliding-window mask).
pub fn attention_head(
    out: &mut [f32],
    q: &[f32],
    keys: HeadRows<'_>,
    values: HeadRows<'_>,
    visible: std::ops::Range<usize>,
    kq_scale: f32,
    scratch: &mut AttentionScratch,
) {
    scratch.q16.clear();
    scratch.q16.extend(q.iter().map(|&x| f16::from_f32(x)));
    scratch.scores.clear();
    scratch.scores.resize(visible.len(), 0.0);
    scores_f16(&scratch.q16, keys, visible.clone(), &mut scratch.scores);
    for s in scratch.scores.iter_mut() {
        *s *= kq_scale;
    }
    let max = scratch
        .scores
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for s in scratch.scores.iter_mut() {
        *s = (*s - max).exp();
        sum += f64::from(*s);
    }
    let inv = if sum == 0.0 { 0.0 } else { (1.0 / sum) as f32 };
    for s in scratch.scores.iter_mut() {
        *s = f16::from_f32(*s * inv).to_f32();
    }
    out.fill(0.0);
    weighted_sum_f16(out, &scratch.scores, values, visible);
}

/// `scores[i] = q · key(visible.start + i)`, each equal bit for bit to [`dot_f16`].
fn scores_f16(q: &[f16], keys: HeadRows<'_>, visible: std::ops::Range<usize>, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::cpu::best_path() >= crate::quant::KernelPath::Avx2 && q.len().is_multiple_of(8)
    {
        // SAFETY: as in `dot_f16`.
        return unsafe { f16_simd::scores(q, keys, visible, scores) };
    }
    for (s, pos) in scores.iter_mut().zip(visible) {
        *s = dot_f16(q, keys.row(pos, q.len()));
    }
}

/// `out += Σ_i p[i] · value(visible.start + i)`, adding the positions in order to each
/// element, as a loop of [`axpy_f16`] calls does (same bits).
fn weighted_sum_f16(
    out: &mut [f32],
    p: &[f32],
    values: HeadRows<'_>,
    visible: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::cpu::best_path() >= crate::quant::KernelPath::Avx2
        && out.len().is_multiple_of(8)
    {
        // SAFETY: as in `dot_f16`.
        return unsafe { f16_simd::weighted_sum(out, p, values, visible) };
    }
    let dv = out.len();
    for (pos, &p) in visible.zip(p) {
        axpy_f16(out, p, values.row(pos, dv));
    }
}

/// Index of the largest value (the first one on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 5.0];
        let w = [1.0f32; 4];
        let mut out = [0.0f32; 4];
        rmsnorm(&mut out, &x, &w, 0.0);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
        assert!((out[0] / out[1] + 0.75).abs() < 1e-6);
    }

    #[test]
    fn rope_preserves_norm_and_rotates_pairs() {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let rope = Rope {
                style,
                n_rot: 8,
                freq_base: 10000.0,
                freq_scale: 1.0,
            };
            let mut cs = [0.0f32; 8];
            rope.angles(7, &mut cs);
            let mut x: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
            let before: f32 = x.iter().map(|v| v * v).sum();
            rope.apply(&mut x, 8, &cs);
            let after: f32 = x.iter().map(|v| v * v).sum();
            assert!((before - after).abs() < 1e-4);
            // The first pair rotates by `pos` radians exactly.
            let (i0, i1) = match style {
                RopeStyle::Normal => (0, 1),
                RopeStyle::Neox => (0, 4),
            };
            let (a, b) = (
                -3.5f32,
                if style == RopeStyle::Normal {
                    -2.5
                } else {
                    0.5
                },
            );
            assert!((x[i0] - (a * 7f32.cos() - b * 7f32.sin())).abs() < 1e-5);
            assert!((x[i1] - (a * 7f32.sin() + b * 7f32.cos())).abs() < 1e-5);
        }
    }

    #[test]
    fn rope_position_zero_is_identity() {
        let rope = Rope {
            style: RopeStyle::Neox,
            n_rot: 4,
            freq_base: 1e6,
            freq_scale: 1.0,
        };
        let mut cs = [0.0f32; 4];
        rope.angles(0, &mut cs);
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        rope.apply(&mut x[..], 6, &cs);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0f32, 2.0, 3.0, -1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
        assert_eq!(x[3], 0.0);
    }

    #[test]
    fn gelu_table_tracks_exact_gelu() {
        for i in -200..200 {
            let x = i as f32 * 0.05;
            let exact = gelu_tanh(x);
            assert!((gelu_tanh_f16(x) - exact).abs() <= 2e-3 * (1.0 + exact.abs()));
        }
        assert_eq!(gelu_tanh_f16(-11.0), 0.0);
        assert_eq!(gelu_tanh_f16(12.0), 12.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
    }

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn attention_matches_plain_softmax() {
        let dk = 4;
        let n = 5;
        let keys: Vec<f16> = (0..n * dk)
            .map(|i| f16::from_f32(((i * 7 % 11) as f32 - 5.0) * 0.1))
            .collect();
        let values: Vec<f16> = (0..n * dk)
            .map(|i| f16::from_f32(((i * 5 % 13) as f32 - 6.0) * 0.25))
            .collect();
        let q = [0.5f32, -1.0, 0.25, 2.0];
        let mut out = [0.0f32; 4];
        let rows = |data| HeadRows {
            data,
            stride: dk,
            offset: 0,
        };
        attention_head(
            &mut out,
            &q,
            rows(&keys),
            rows(&values),
            1..4,
            0.5,
            &mut AttentionScratch::default(),
        );
        let mut scores: Vec<f32> = (1..4)
            .map(|p| {
                (0..dk)
                    .map(|d| q[d] * keys[p * dk + d].to_f32())
                    .sum::<f32>()
                    * 0.5
            })
            .collect();
        softmax(&mut scores);
        for d in 0..dk {
            let expect: f32 = (1..4)
                .map(|p| scores[p - 1] * values[p * dk + d].to_f32())
                .sum();
            assert!(
                (out[d] - expect).abs() < 2e-3,
                "{d}: {} vs {expect}",
                out[d]
            );
        }
    }

    /// The SIMD attention loops equal the scalar ones bit for bit, tails included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fp16_simd_loops_equal_the_scalar_reference() {
        if !crate::quant::KernelPath::Avx2.is_supported() {
            println!("skipped: AVX2 is not supported on this CPU");
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        };
        for n in [1usize, 7, 8, 13, 64, 256, 259] {
            let a: Vec<f16> = (0..n).map(|_| f16::from_f32(next())).collect();
            let b: Vec<f16> = (0..n).map(|_| f16::from_f32(next())).collect();
            // SAFETY: AVX2 (and with it F16C here) was checked above.
            let simd = unsafe { f16_simd::dot(&a, &b) };
            assert_eq!(
                simd.to_bits(),
                dot_f16_scalar(&a, &b).to_bits(),
                "dot n={n}"
            );

            let p = next();
            let mut want: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut got = want.clone();
            for (o, &x) in want.iter_mut().zip(&b) {
                *o += p * x.to_f32();
            }
            // SAFETY: as above.
            unsafe { f16_simd::axpy(&mut got, p, &b) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "axpy n={n}");
        }
    }

    #[test]
    fn argmax_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    /// The batched attention loops give the bits of the per-position ones.
    #[test]
    fn batched_scores_and_weighted_sums_equal_per_position_loops() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0)
        };
        for (dim, stride, offset) in [(64usize, 192usize, 64usize), (256, 256, 0), (8, 24, 16)] {
            let rows = 37;
            let data: Vec<f16> = (0..rows * stride).map(|_| rnd()).collect();
            let heads = HeadRows {
                data: &data,
                stride,
                offset,
            };
            let q: Vec<f16> = (0..dim).map(|_| rnd()).collect();
            for visible in [0..0, 3..4, 0..8, 5..22, 0..37] {
                let mut got = vec![f32::NAN; visible.len()];
                scores_f16(&q, heads, visible.clone(), &mut got);
                for (g, pos) in got.iter().zip(visible.clone()) {
                    let want = dot_f16(&q, heads.row(pos, dim));
                    assert_eq!(
                        g.to_bits(),
                        want.to_bits(),
                        "score {pos} of {visible:?}, dim {dim}"
                    );
                }
                let p: Vec<f32> = got.iter().map(|v| v * 0.01).collect();
                let mut out: Vec<f32> = (0..dim).map(|i| i as f32 * 0.5).collect();
                let mut want = out.clone();
                weighted_sum_f16(&mut out, &p, heads, visible.clone());
                for (pos, &pi) in visible.clone().zip(&p) {
                    axpy_f16(&mut want, pi, heads.row(pos, dim));
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&out),
                    bits(&want),
                    "weighted sum of {visible:?}, dim {dim}"
                );
            }
        }
    }
}
