//! Float weight rows (F32, F16, BF16) dotted with an activation row.
//!
//! Following llama.cpp, the activation row is first converted to the weight's type
//! (F16 weights: activations rounded to f16; BF16 weights: rounded to bf16; F32: used
//! as is), then each product is formed in f32 and summed in f32. The `*_ref` functions
//! sum in f64 (the accuracy reference of the tests); every path sums in one f32 order,
//! that of the vector kernels (see `lanes_dot`), so a matmul of float weights gives
//! the same bits on every path.

use half::{bf16, f16};

use super::KernelPath;

/// Element types a float weight row can have. Sealed: only f32, f16 and bf16,
/// which accept every bit pattern (so raw mmap bytes may be viewed as them).
pub trait FloatElem: Copy + Send + Sync + sealed::Sealed + 'static {}
impl FloatElem for f32 {}
impl FloatElem for f16 {}
impl FloatElem for bf16 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// Rounds an activation row to f16 (round to nearest even, as ggml's conversion).
pub fn f32_to_f16_row(x: &[f32], out: &mut [f16]) {
    use half::slice::HalfFloatSliceExt;
    // Eight at a time with F16C where the CPU has it (same rounding as one at a time).
    out.convert_from_f32_slice(x);
}

/// Rounds an activation row to bf16 (round to nearest even, as ggml's conversion).
pub fn f32_to_bf16_row(x: &[f32], out: &mut [bf16]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16::from_f32(v);
    }
}

pub fn dot_f32_ref(w: &[f32], x: &[f32]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter().zip(x).map(|(&a, &b)| (a * b) as f64).sum::<f64>() as f32
}

pub fn dot_f16_ref(w: &[f16], x: &[f16]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter()
        .zip(x)
        .map(|(a, b)| (a.to_f32() * b.to_f32()) as f64)
        .sum::<f64>() as f32
}

pub fn dot_bf16_ref(w: &[bf16], x: &[bf16]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter()
        .zip(x)
        .map(|(a, b)| (a.to_f32() * b.to_f32()) as f64)
        .sum::<f64>() as f32
}

/// The summation order of every path's float dot, in portable code (the scalar path's
/// kernel): 32 lanes, element `i` of each run of 32 fused into lane `i % 32`, then a
/// run of 8 at a time into lanes 0..8; lanes `l`, `l + 8`, `l + 16`, `l + 24` added as
/// `(a0 + a1) + (a2 + a3)`, then the eight results as `(t0 + t2) + (t1 + t3)` with
/// `t_l = v_l + v_{l+4}`; the last `n % 8` products, rounded, added one by one.
#[inline]
fn lanes_dot<T: Copy>(w: &[T], x: &[T], f32_of: impl Fn(T) -> f32) -> f32 {
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let mut acc = [[0.0f32; 8]; 4];
    let runs = n / 32 * 32;
    for (w32, x32) in w[..runs].chunks_exact(32).zip(x[..runs].chunks_exact(32)) {
        for (a, (w8, x8)) in acc
            .iter_mut()
            .zip(w32.chunks_exact(8).zip(x32.chunks_exact(8)))
        {
            for (a, (&wv, &xv)) in a.iter_mut().zip(w8.iter().zip(x8)) {
                *a = f32_of(wv).mul_add(f32_of(xv), *a);
            }
        }
    }
    let eights = n / 8 * 8;
    for (w8, x8) in w[runs..eights]
        .chunks_exact(8)
        .zip(x[runs..eights].chunks_exact(8))
    {
        for (a, (&wv, &xv)) in acc[0].iter_mut().zip(w8.iter().zip(x8)) {
            *a = f32_of(wv).mul_add(f32_of(xv), *a);
        }
    }
    let v: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    let t: [f32; 4] = std::array::from_fn(|l| v[l] + v[l + 4]);
    let mut s = (t[0] + t[2]) + (t[1] + t[3]);
    for (&wv, &xv) in w[eights..].iter().zip(&x[eights..]) {
        s += f32_of(wv) * f32_of(xv);
    }
    s
}

/// Dot of an f32 weight row with an f32 activation row on `path` (checked by caller).
pub fn dot_f32(path: KernelPath, w: &[f32], x: &[f32]) -> f32 {
    debug_assert!(path.is_supported());
    match path {
        // SAFETY: the caller checked that this CPU supports `path` (both imply AVX2).
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 | KernelPath::Avx512Vnni => unsafe { x86::dot_f32(w, x) },
        _ => lanes_dot(w, x, |v| v),
    }
}

/// Dot of an f16 weight row with an f16-rounded activation row.
pub fn dot_f16(path: KernelPath, w: &[f16], x: &[f16]) -> f32 {
    debug_assert!(path.is_supported());
    match path {
        // SAFETY: as in `dot_f32`.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 | KernelPath::Avx512Vnni => unsafe { x86::dot_f16(w, x) },
        _ => lanes_dot(w, x, f16::to_f32),
    }
}

/// Dot of a bf16 weight row with a bf16-rounded activation row.
pub fn dot_bf16(path: KernelPath, w: &[bf16], x: &[bf16]) -> f32 {
    debug_assert!(path.is_supported());
    match path {
        // SAFETY: as in `dot_f32`.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 | KernelPath::Avx512Vnni => unsafe { x86::dot_bf16(w, x) },
        _ => lanes_dot(w, x, bf16::to_f32),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Shared driver: 32 elements per step in four accumulators, `load` widening 8
    /// elements at `p` to f32, then a scalar tail (the order of [`super::lanes_dot`]).
    macro_rules! dot_body {
        ($w:ident, $x:ident, $load:expr, $scalar:expr) => {{
            let n = $w.len().min($x.len());
            let (wp, xp) = ($w.as_ptr(), $x.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i + 8k + 8 <= n, within both slices.
                    let (wv, xv) = unsafe { ($load(wp.add(i + 8 * k)), $load(xp.add(i + 8 * k))) };
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                // SAFETY: i + 8 <= n.
                let (wv, xv) = unsafe { ($load(wp.add(i)), $load(xp.add(i))) };
                acc[0] = _mm256_fmadd_ps(wv, xv, acc[0]);
                i += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(v);
            for j in i..n {
                s += $scalar($w[j], $x[j]);
            }
            s
        }};
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller guarantees 8 readable elements at `p`.
            unsafe { _mm256_loadu_ps(p) }
        }
        dot_body!(w, x, load, |a: f32, b: f32| a * b)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_f16(w: &[f16], x: &[f16]) -> f32 {
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load(p: *const f16) -> __m256 {
            // SAFETY: the caller guarantees 8 readable elements at `p`.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        dot_body!(w, x, load, |a: f16, b: f16| a.to_f32() * b.to_f32())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_bf16(w: &[bf16], x: &[bf16]) -> f32 {
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        unsafe fn load(p: *const bf16) -> __m256 {
            // SAFETY: the caller guarantees 8 readable elements at `p`. bf16 is the
            // top half of an f32: widen to 32 bits and shift into place.
            let v = unsafe { _mm_loadu_si128(p.cast()) };
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
        }
        dot_body!(w, x, load, |a: bf16, b: bf16| a.to_f32() * b.to_f32())
    }
}
