//! Q8_K: the 8-bit activation block for K-quant weights (ggml's `block_q8_K`).

use super::{pod_block, Q8KPanel, QK_K};
use crate::quant::ActBlock;

/// 256 activations quantized to int8 with one f32 scale, plus the sums of each run of
/// 16 quants (used by the weight types' min/offset corrections).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale: element `i` is `d * qs[i]`. A float (not f16), possibly negative.
    pub d: f32,
    pub qs: [i8; QK_K],
    /// `bsums[k]` = sum of `qs[16k..16k+16]`.
    pub bsums: [i16; QK_K / 16],
}
pod_block!(BlockQ8K, 292);

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// ggml's `nearest_int`: adding 1.5·2^23 leaves the value rounded to an integer
/// (ties to even) in the low mantissa bits. Exact for |x| < 2^22, which always holds
/// here (|x| ≤ 127 plus rounding). Written this way, rather than with
/// `round_ties_even`, so the loop vectorizes on baseline x86-64.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

impl BlockQ8K {
    /// Quantizes 256 values with llama.cpp's `quantize_row_q8_K_ref` rule: `max` is the
    /// value of largest magnitude (first one on ties, sign kept), `iscale = -127/max`,
    /// `q = min(127, nearest_int(iscale*x))`, `d = 1/iscale`. An all-zero (or all-NaN)
    /// block gives `d = 0` and zero quants.
    pub fn quantize(x: &[f32; QK_K]) -> BlockQ8K {
        // max |x| first (order-free, vectorizes), then the first element reaching it:
        // the same element ggml's strictly-greater scan keeps. NaNs never win.
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 {
            return BlockQ8K::default();
        }
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let mut out = BlockQ8K {
            d: 1.0 / iscale,
            ..BlockQ8K::default()
        };
        for (q, &v) in out.qs.iter_mut().zip(x.iter()) {
            // The lower clamp never binds for finite input; it keeps NaN garbage in range.
            *q = nearest_int(iscale * v).clamp(-128, 127) as i8;
        }
        for (s, chunk) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
            *s = chunk.iter().map(|&q| q as i16).sum();
        }
        out
    }

    /// The block's values as f32 (`d * q`).
    pub fn dequantize(&self, out: &mut [f32]) {
        for (o, &q) in out[..QK_K].iter_mut().zip(self.qs.iter()) {
            *o = self.d * q as f32;
        }
    }
}

impl ActBlock for BlockQ8K {
    const BLOCK_ELEMS: usize = QK_K;
    type Panel = Q8KPanel;

    fn build_panel(rows: &[&[Self]]) -> Q8KPanel {
        Q8KPanel::build(rows)
    }

    fn quantize_row(x: &[f32], out: &mut [Self]) {
        assert_eq!(
            x.len(),
            out.len() * QK_K,
            "Q8_K row: {} values for {} blocks",
            x.len(),
            out.len()
        );
        #[cfg(target_arch = "x86_64")]
        if crate::quant::KernelPath::Avx2.is_supported() {
            for (o, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
                let chunk: &[f32; QK_K] = chunk.try_into().expect("chunks_exact gives QK_K");
                // SAFETY: AVX2, FMA and F16C were just detected.
                *o = unsafe { avx2::quantize(chunk) };
            }
            return;
        }
        for (o, chunk) in out.iter_mut().zip(x.chunks_exact(QK_K)) {
            let chunk: &[f32; QK_K] = chunk.try_into().expect("chunks_exact gives QK_K");
            *o = BlockQ8K::quantize(chunk);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8K, QK_K};

    /// `nearest_int(x*s)` for 8 floats at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round8(p: *const f32, s: __m256) -> __m256i {
        let v = _mm256_mul_ps(_mm256_loadu_ps(p), s);
        _mm256_cvtps_epi32(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(v))
    }

    /// Same rule and same bits as [`BlockQ8K::quantize`] for finite input: the product
    /// `iscale*x` is the same IEEE multiply, `round_ps` to nearest is ties-to-even like
    /// `nearest_int`, and the saturating packs give `min(127, q)`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize(x: &[f32; QK_K]) -> BlockQ8K {
        let p = x.as_ptr();
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut vmax = _mm256_setzero_ps();
        for i in (0..QK_K).step_by(8) {
            // max_ps returns the second operand when either is NaN: NaNs never win.
            vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(p.add(i)), abs_mask), vmax);
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(vmax),
            _mm256_extractf128_ps::<1>(vmax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let amax = _mm_cvtss_f32(m);
        if amax == 0.0 {
            return BlockQ8K::default();
        }
        // The first element of largest magnitude, as the reference's strict scan keeps.
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for i in (0..QK_K).step_by(8) {
            let v = _mm256_loadu_ps(p.add(i));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                _mm256_and_ps(v, abs_mask),
                target,
            ));
            if hit != 0 {
                max = x[i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let vs = _mm256_set1_ps(iscale);
        let mut out = BlockQ8K {
            d: 1.0 / iscale,
            ..BlockQ8K::default()
        };
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let bias = _mm256_set1_epi8(-128);
        let mut sums = [0i64; 4];
        for j in (0..QK_K).step_by(32) {
            let q0 = round8(p.add(j), vs);
            let q1 = round8(p.add(j + 8), vs);
            let q2 = round8(p.add(j + 16), vs);
            let q3 = round8(p.add(j + 24), vs);
            // packs work per 128-bit lane; the permute restores element order.
            let q16a = _mm256_packs_epi32(q0, q1);
            let q16b = _mm256_packs_epi32(q2, q3);
            let q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b), order);
            _mm256_storeu_si256(out.qs.as_mut_ptr().add(j).cast(), q8);
            // Sums of 8 bytes of q+128 (unsigned), four per 32 bytes.
            let sad = _mm256_sad_epu8(_mm256_xor_si256(q8, bias), _mm256_setzero_si256());
            _mm256_storeu_si256(sums.as_mut_ptr().cast(), sad);
            out.bsums[j / 16] = (sums[0] + sums[1] - 16 * 128) as i16;
            out.bsums[j / 16 + 1] = (sums[2] + sums[3] - 16 * 128) as i16;
        }
        out
    }
}
