//! e^x for x <= 0, in the same bits on every path: the scalar function is the
//! reference, and the AVX2 / AVX-512 versions run its operations in the same order.
//! Softmax (x − max) and the sigmoid (−|x|) only ever need non-positive arguments.

/// Below this, `exp` returns 0: e^-87 is near f32's smallest normal, and a probability
/// that small rounds to 0 in fp16 anyway.
const EXP_MIN: f32 = -87.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n · LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 355.0 / 512.0;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor coefficients of e^r on |r| <= ln2/2, highest degree first (Horner order).
const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^x for x <= 0 (a positive x counts as 0, giving 1): e^x = 2^n · e^r with n = round(x·log2 e),
/// r = x − n·ln 2 and e^r a degree-6 polynomial, all fused multiply-adds; about 2 ulp.
/// Returns 0 for x below [`EXP_MIN`], for −inf and for NaN.
pub fn exp_nonpositive(x: f32) -> f32 {
    if x.is_nan() || x < EXP_MIN {
        return 0.0;
    }
    let x = x.min(0.0);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    // n is in -126..=0 here, so 2^n is a normal float.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};

    /// [`super::exp_nonpositive`] on 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn exp8(x: __m256) -> __m256 {
        let valid = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_MIN), _CMP_GE_OQ);
        let x = _mm256_min_ps(x, _mm256_setzero_ps());
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_and_ps(valid, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)))
    }

    /// [`super::exp_nonpositive`] on 16 lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(crate) fn exp16(x: __m512) -> __m512 {
        let valid = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_MIN), _CMP_GE_OQ);
        let x = _mm512_min_ps(x, _mm512_setzero_ps());
        let n = _mm512_roundscale_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let bits = _mm512_slli_epi32(
            _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)),
            23,
        );
        _mm512_maskz_mov_ps(valid, _mm512_mul_ps(p, _mm512_castsi512_ps(bits)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_and_flushes_below_the_range() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = f64::from(exp_nonpositive(x));
            let want = f64::from(x).exp();
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(5.0), 1.0);
        assert_eq!(exp_nonpositive(-87.5), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(f32::NAN), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_versions_give_the_scalar_bits() {
        use crate::quant::KernelPath;
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.00513).collect();
        xs.extend([0.0, -0.0, 3.0, -87.0, f32::NEG_INFINITY, f32::NAN, f32::MIN]);
        while !xs.len().is_multiple_of(16) {
            xs.push(-1.0);
        }
        let want: Vec<u32> = xs.iter().map(|&x| exp_nonpositive(x).to_bits()).collect();
        if KernelPath::Avx2.is_supported() {
            let mut got = vec![0.0f32; xs.len()];
            for (x, g) in xs.chunks_exact(8).zip(got.chunks_exact_mut(8)) {
                // SAFETY: AVX2/FMA/F16C checked above; 8 floats each.
                unsafe { _mm256_storeu_ps(g.as_mut_ptr(), x86::exp8(_mm256_loadu_ps(x.as_ptr()))) };
            }
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == *w),
                "avx2"
            );
        }
        if KernelPath::Avx512Vnni.is_supported() {
            let mut got = vec![0.0f32; xs.len()];
            for (x, g) in xs.chunks_exact(16).zip(got.chunks_exact_mut(16)) {
                // SAFETY: AVX-512 checked above; 16 floats each.
                unsafe {
                    _mm512_storeu_ps(g.as_mut_ptr(), x86::exp16(_mm512_loadu_ps(x.as_ptr())))
                };
            }
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == *w),
                "avx512"
            );
        }
    }
}
