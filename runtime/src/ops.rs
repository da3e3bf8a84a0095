//! Element-wise and per-row operations of the forward pass (attention has its own
//! module), one row or slice at a time; `par` splits them over a batch.
//!
//! Each op follows the arithmetic of llama.cpp's CPU backend where that matters for
//! fidelity (sum precision in RMSNorm, the incremental RoPE angle, the fp16 GELU table),
//! so smq's logits stay within the noise llama.cpp itself shows between two CPUs.

use std::sync::OnceLock;

use half::f16;

/// RMSNorm of each `dim`-long row of `x` into `out`, times `weight`.
///
/// The sum of squares is accumulated in f64 and the scale is computed in f32, as ggml does
/// (ggml sums in one chain; see [`rms_scale`]).
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

/// `1 / sqrt(mean(x²) + eps)`, the squares summed in f64 over eight lanes (element `i`
/// into lane `i % 8`, then the lanes in order): eight independent chains instead of one
/// latency-bound chain, the same on every CPU (plain Rust, vectorised by the compiler).
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f64::from(v * v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(rest) {
        *l += f64::from(v * v);
    }
    let sum = lanes.iter().fold(0.0f64, |a, &l| a + l);
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

/// `x / (1 + e^-x)`, from t = e^-|x| only (no overflow for large |x|): `x / (1 + t)`
/// for x >= 0, `x·t / (1 + t)` below. The reference of the SIMD version in [`swiglu`],
/// which gives the same bits.
#[inline]
pub fn silu(x: f32) -> f32 {
    let t = crate::exp::exp_nonpositive(-x.abs());
    let num = if x >= 0.0 { x } else { x * t };
    num / (1.0 + t)
}

/// `gate = silu(gate) * up` (SwiGLU), element-wise.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gate and up lengths");
    #[cfg(target_arch = "x86_64")]
    let done = {
        use crate::quant::KernelPath;
        let path = crate::quant::cpu::best_path();
        if path >= KernelPath::Avx512Vnni {
            // SAFETY: the best path is one this CPU supports (AVX-512 F and AVX2).
            unsafe { swiglu_avx512(gate, up) }
        } else if path >= KernelPath::Avx2 {
            // SAFETY: the best path is one this CPU supports (AVX2 + FMA + F16C).
            unsafe { swiglu_avx2(gate, up) }
        } else {
            0
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = silu(*g) * u;
    }
}

/// [`swiglu`] on whole groups of 16; returns how many elements it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn swiglu_avx512(gate: &mut [f32], up: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = gate.len() / 16 * 16;
    let one = _mm512_set1_ps(1.0);
    for i in (0..n).step_by(16) {
        // SAFETY: `i + 16 <= n` for both slices (equal lengths); unaligned accesses.
        unsafe {
            let x = _mm512_loadu_ps(gate.as_ptr().add(i));
            let neg_abs = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(x),
                _mm512_set1_epi32(i32::MIN),
            ));
            let t = crate::exp::x86::exp16(neg_abs);
            let nonneg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
            let num = _mm512_mask_blend_ps(nonneg, _mm512_mul_ps(x, t), x);
            let s = _mm512_div_ps(num, _mm512_add_ps(one, t));
            let u = _mm512_loadu_ps(up.as_ptr().add(i));
            _mm512_storeu_ps(gate.as_mut_ptr().add(i), _mm512_mul_ps(s, u));
        }
    }
    n
}

/// [`swiglu`] on whole groups of 8; returns how many elements it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn swiglu_avx2(gate: &mut [f32], up: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = gate.len() / 8 * 8;
    let sign = _mm256_set1_ps(-0.0);
    let one = _mm256_set1_ps(1.0);
    for i in (0..n).step_by(8) {
        // SAFETY: `i + 8 <= n` for both slices (equal lengths); unaligned accesses.
        unsafe {
            let x = _mm256_loadu_ps(gate.as_ptr().add(i));
            let t = crate::exp::x86::exp8(_mm256_or_ps(x, sign));
            let nonneg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
            let num = _mm256_blendv_ps(_mm256_mul_ps(x, t), x, nonneg);
            let s = _mm256_div_ps(num, _mm256_add_ps(one, t));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
        }
    }
    n
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
        assert!((silu(-2.0) - -0.238_405_84).abs() < 1e-6);
        assert_eq!(silu(200.0), 200.0);
        assert_eq!(silu(-200.0), 0.0);
        assert!(silu(f32::NAN).is_nan());
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            let exact = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            assert!(
                (f64::from(silu(x)) - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "silu({x})"
            );
        }
    }

    #[test]
    fn swiglu_simd_gives_the_scalar_bits() {
        let gate: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let up: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let check = |got: &[f32], done: usize, what: &str| {
            for (i, ((g, x), u)) in got.iter().zip(&gate).zip(&up).enumerate().take(done) {
                assert_eq!(g.to_bits(), (silu(*x) * u).to_bits(), "{what}: element {i}");
            }
        };
        let mut got = gate.clone();
        swiglu(&mut got, &up);
        check(&got, gate.len(), "best path");
        #[cfg(target_arch = "x86_64")]
        {
            use crate::quant::KernelPath;
            if KernelPath::Avx2.is_supported() {
                let mut got = gate.clone();
                // SAFETY: AVX2 + FMA + F16C checked.
                let done = unsafe { swiglu_avx2(&mut got, &up) };
                check(&got, done, "avx2");
            }
            if KernelPath::Avx512Vnni.is_supported() {
                let mut got = gate.clone();
                // SAFETY: AVX-512 checked.
                let done = unsafe { swiglu_avx512(&mut got, &up) };
                check(&got, done, "avx512");
            }
        }
    }

    #[test]
    fn argmax_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
