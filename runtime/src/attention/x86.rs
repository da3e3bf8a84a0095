//! The attention kernels in AVX2 and AVX-512: the same operations as [`super::reference`]
//! in the same order per output element, 16 positions (scores) or 16 dimensions
//! (weighted sums) side by side.

use std::arch::x86_64::*;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::reference;
use super::{Kernels, ValueRows};
use crate::exp::x86::{exp16, exp8};
use crate::kv_cache::KEY_TILE;

pub(super) fn avx2_kernels() -> Kernels {
    debug_assert!(crate::quant::KernelPath::Avx2.is_supported());
    Kernels {
        scores: avx2::scores,
        softmax: avx2::softmax,
        weighted_sum: avx2::weighted_sum,
    }
}

pub(super) fn avx512_kernels() -> Kernels {
    debug_assert!(crate::quant::KernelPath::Avx512Vnni.is_supported());
    Kernels {
        scores: avx512::scores,
        softmax: avx512::softmax,
        weighted_sum: avx512::weighted_sum,
    }
}

/// Checks shared by both paths' `scores`: the tile holds `dk` rows of 16 keys and every
/// query's 16 outputs fit. Returns the number of queries.
fn check_scores(qs: &[f32], dk: usize, tile: &[f16], out: &[f32], stride: usize) -> usize {
    assert!(dk > 0 && qs.len().is_multiple_of(dk), "query length");
    assert!(tile.len() >= dk * KEY_TILE, "key tile length");
    let nq = qs.len() / dk;
    if nq > 0 {
        assert!((nq - 1) * stride + KEY_TILE <= out.len(), "scores length");
    }
    nq
}

/// Checks shared by both paths' `weighted_sum`, or `None` when the shape is one the
/// SIMD code does not take (the caller then runs the reference): at most 4 queries,
/// equal lengths, `dv` a multiple of 16. Returns the number of positions.
fn check_weighted_sum(
    p: &[&[f32]],
    values: &ValueRows<'_>,
    first: usize,
    out: &[&mut [f32]],
) -> Option<usize> {
    let len = p.first().map_or(0, |p| p.len());
    if p.is_empty()
        || p.len() > 4
        || out.len() != p.len()
        || !values.dv.is_multiple_of(16)
        || p.iter().any(|pi| pi.len() != len)
        || out.iter().any(|o| o.len() != values.dv)
    {
        return None;
    }
    if len > 0 {
        let end = (first + len - 1) * values.stride + values.offset + values.dv;
        assert!(end <= values.data.len(), "value rows out of range");
    }
    Some(len)
}

/// The safe entry points of one path's module (the [`Kernels`] it hands out): shape
/// checks, then the module's own `scores_checked`, `softmax_simd` and `sums::<N>`.
macro_rules! entry_points {
    () => {
        pub(super) fn scores(
            qs: &[f32],
            dk: usize,
            tile: &[f16],
            scale: f32,
            out: &mut [f32],
            stride: usize,
        ) {
            let nq = check_scores(qs, dk, tile, out, stride);
            let (q, t, o) = (qs.as_ptr(), tile.as_ptr(), out.as_mut_ptr());
            // SAFETY: this path is only chosen on CPUs with its features; lengths checked.
            unsafe { scores_checked(q, nq, dk, t, scale, o, stride) }
        }

        pub(super) fn softmax(x: &mut [f32]) {
            // SAFETY: this path is only chosen on CPUs with its features.
            unsafe { softmax_simd(x) }
        }

        pub(super) fn weighted_sum(
            p: &[&[f32]],
            values: ValueRows<'_>,
            first: usize,
            out: &mut [&mut [f32]],
        ) {
            let Some(len) = check_weighted_sum(p, &values, first, out) else {
                return reference::weighted_sum(p, values, first, out);
            };
            // SAFETY: this path is only chosen on CPUs with its features; shapes checked.
            unsafe {
                match p.len() {
                    1 => sums::<1>(p, values, first, len, out),
                    2 => sums::<2>(p, values, first, len, out),
                    3 => sums::<3>(p, values, first, len, out),
                    _ => sums::<4>(p, values, first, len, out),
                }
            }
        }
    };
}

mod avx512 {
    use super::*;

    entry_points!();

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }

    /// # Safety
    /// `qs` holds `nq * dk` values, `tile` `dk * 16`, `out` `(nq - 1) * stride + 16`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn scores_checked(
        qs: *const f32,
        nq: usize,
        dk: usize,
        tile: *const f16,
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut i = 0;
        // SAFETY (all calls): query block `i..i + N` is in range per the contract.
        unsafe {
            while i + 8 <= nq {
                block::<8>(qs.add(i * dk), dk, tile, scale, out.add(i * stride), stride);
                i += 8;
            }
            let (q, o) = (qs.add(i * dk), out.add(i * stride));
            match nq - i {
                1 => block::<1>(q, dk, tile, scale, o, stride),
                2 => block::<2>(q, dk, tile, scale, o, stride),
                3 => block::<3>(q, dk, tile, scale, o, stride),
                4 => block::<4>(q, dk, tile, scale, o, stride),
                5 => block::<5>(q, dk, tile, scale, o, stride),
                6 => block::<6>(q, dk, tile, scale, o, stride),
                7 => block::<7>(q, dk, tile, scale, o, stride),
                _ => {}
            }
        }
    }

    /// Scores of `N` queries: one zmm of 16 positions per query, each converted key
    /// vector used `N` times.
    ///
    /// # Safety
    /// As [`scores_checked`] with `nq = N`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn block<const N: usize>(
        q: *const f32,
        dk: usize,
        tile: *const f16,
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        for d in 0..dk {
            // SAFETY: row `d` of the tile and dimension `d` of each query are in range.
            unsafe {
                let k = _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(d * KEY_TILE).cast()));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(splat(*q.add(i * dk + d)), k, *a);
                }
            }
        }
        let s = splat(scale);
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: query `i`'s 16 outputs are in range.
            unsafe { _mm512_storeu_ps(out.add(i * stride), _mm512_mul_ps(*a, s)) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn softmax_simd(x: &mut [f32]) {
        let n = x.len();
        let full = n / 16 * 16;
        let tail: __mmask16 = ((1u32 << (n - full)) - 1) as __mmask16;
        let ptr = x.as_mut_ptr();
        // SAFETY (all accesses): chunks `c < full` are whole, the tail is masked.
        unsafe {
            let mut m = splat(f32::NEG_INFINITY);
            for c in (0..full).step_by(16) {
                m = _mm512_max_ps(m, _mm512_loadu_ps(ptr.add(c)));
            }
            m = _mm512_max_ps(
                m,
                _mm512_mask_loadu_ps(splat(f32::NEG_INFINITY), tail, ptr.add(full)),
            );
            let max = splat(_mm512_reduce_max_ps(m));
            let mut sum = _mm512_setzero_ps();
            for c in (0..full).step_by(16) {
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(c)), max));
                _mm512_storeu_ps(ptr.add(c), e);
                sum = _mm512_add_ps(sum, e);
            }
            let e = exp16(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(tail, ptr.add(full)),
                max,
            ));
            _mm512_mask_storeu_ps(ptr.add(full), tail, e);
            sum = _mm512_mask_add_ps(sum, tail, sum, e);
            let mut lanes = [0.0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), sum);
            let total = lanes.iter().fold(0.0f32, |a, &l| a + l);
            let inv = splat(if total == 0.0 { 0.0 } else { 1.0 / total });
            let round = |v: __m512| {
                _mm512_cvtph_ps(_mm512_cvtps_ph(
                    _mm512_mul_ps(v, inv),
                    _MM_FROUND_TO_NEAREST_INT,
                ))
            };
            for c in (0..full).step_by(16) {
                _mm512_storeu_ps(ptr.add(c), round(_mm512_loadu_ps(ptr.add(c))));
            }
            let t = round(_mm512_maskz_loadu_ps(tail, ptr.add(full)));
            _mm512_mask_storeu_ps(ptr.add(full), tail, t);
        }
    }

    /// # Safety
    /// `p` and `out` hold `N` slices of `len` and `dv` elements; the value rows
    /// `first..first + len` are in range; `dv` is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn sums<const N: usize>(
        p: &[&[f32]],
        values: ValueRows<'_>,
        first: usize,
        len: usize,
        out: &mut [&mut [f32]],
    ) {
        let pp: [*const f32; N] = std::array::from_fn(|i| p[i].as_ptr());
        let oo: [*mut f32; N] = std::array::from_fn(|i| out[i].as_mut_ptr());
        // SAFETY: `first * stride + offset` is in range when `len > 0` (checked), and
        // `chunk` reads nothing when `len == 0`.
        let rows = values
            .data
            .as_ptr()
            .wrapping_add(first * values.stride + values.offset);
        let mut j = 0;
        // SAFETY (all calls): columns `j..j + 16 * V` are within `dv`.
        unsafe {
            while j + 64 <= values.dv {
                chunk::<N, 4>(pp, rows.add(j), values.stride, len, oo.map(|o| o.add(j)));
                j += 64;
            }
            while j < values.dv {
                chunk::<N, 1>(pp, rows.add(j), values.stride, len, oo.map(|o| o.add(j)));
                j += 16;
            }
        }
    }

    /// `16 * V` output columns of `N` queries, the value vectors converted once per
    /// position and used `N` times.
    ///
    /// # Safety
    /// As [`sums`], for the columns at `rows` and `out`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn chunk<const N: usize, const V: usize>(
        p: [*const f32; N],
        rows: *const f16,
        stride: usize,
        len: usize,
        out: [*mut f32; N],
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; N];
        for k in 0..len {
            // SAFETY: row `k` and probability `k` are in range per the contract.
            unsafe {
                let row = rows.add(k * stride);
                let v: [__m512; V] = std::array::from_fn(|c| {
                    _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16 * c).cast()))
                });
                for (a, pi) in acc.iter_mut().zip(p) {
                    let pk = splat(*pi.add(k));
                    for (ac, vc) in a.iter_mut().zip(v) {
                        *ac = _mm512_fmadd_ps(pk, vc, *ac);
                    }
                }
            }
        }
        for (a, o) in acc.iter().zip(out) {
            for (c, ac) in a.iter().enumerate() {
                // SAFETY: the chunk's 16 * V columns are in range.
                unsafe { _mm512_storeu_ps(o.add(16 * c), *ac) };
            }
        }
    }
}

mod avx2 {
    use super::*;

    entry_points!();

    #[target_feature(enable = "avx2,fma,f16c")]
    fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }

    /// # Safety
    /// `qs` holds `nq * dk` values, `tile` `dk * 16`, `out` `(nq - 1) * stride + 16`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_checked(
        qs: *const f32,
        nq: usize,
        dk: usize,
        tile: *const f16,
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        // The tile in f32 once for all the task's queries: a conversion costs two
        // of the three vector ports' slots here, more than the multiply-adds it feeds.
        KEYS_F32.with_borrow_mut(|keys| {
            keys.resize(dk * KEY_TILE, 0.0);
            // SAFETY: the tile holds `dk * 16` values per the contract.
            unsafe { std::slice::from_raw_parts(tile, dk * KEY_TILE) }.convert_to_f32_slice(keys);
            let k = keys.as_ptr();
            let mut i = 0;
            // SAFETY (all calls): query block `i..i + N` is in range per the contract.
            unsafe {
                while i + 6 <= nq {
                    block::<6>(qs.add(i * dk), dk, k, scale, out.add(i * stride), stride);
                    i += 6;
                }
                let (q, o) = (qs.add(i * dk), out.add(i * stride));
                match nq - i {
                    1 => block::<1>(q, dk, k, scale, o, stride),
                    2 => block::<2>(q, dk, k, scale, o, stride),
                    3 => block::<3>(q, dk, k, scale, o, stride),
                    4 => block::<4>(q, dk, k, scale, o, stride),
                    5 => block::<5>(q, dk, k, scale, o, stride),
                    _ => {}
                }
            }
        });
    }

    thread_local! {
        /// The key tile being scored, in f32.
        static KEYS_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Scores of `N` queries: two ymm of 8 positions per query (six queries fill 12 of
    /// the 16 registers with accumulators).
    ///
    /// # Safety
    /// As [`scores_checked`] with `nq = N`, `keys` the tile in f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn block<const N: usize>(
        q: *const f32,
        dk: usize,
        keys: *const f32,
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for d in 0..dk {
            // SAFETY: row `d` of the tile and dimension `d` of each query are in range.
            unsafe {
                let row = keys.add(d * KEY_TILE);
                let k0 = _mm256_loadu_ps(row);
                let k1 = _mm256_loadu_ps(row.add(8));
                for (i, a) in acc.iter_mut().enumerate() {
                    let qd = splat(*q.add(i * dk + d));
                    a[0] = _mm256_fmadd_ps(qd, k0, a[0]);
                    a[1] = _mm256_fmadd_ps(qd, k1, a[1]);
                }
            }
        }
        let s = splat(scale);
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: query `i`'s 16 outputs are in range.
            unsafe {
                _mm256_storeu_ps(out.add(i * stride), _mm256_mul_ps(a[0], s));
                _mm256_storeu_ps(out.add(i * stride + 8), _mm256_mul_ps(a[1], s));
            }
        }
    }

    /// Whole chunks of 16 (two ymm: lanes 0-7 and 8-15) in SIMD, the tail with the
    /// scalar [`crate::exp::exp_nonpositive`], which gives the same bits.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn softmax_simd(x: &mut [f32]) {
        let n = x.len();
        let full = n / 16 * 16;
        let ptr = x.as_mut_ptr();
        let mut lanes = [0.0f32; 16];
        let mut max = f32::NEG_INFINITY;
        // SAFETY (all accesses): chunks `c < full` are whole.
        unsafe {
            let mut m = splat(f32::NEG_INFINITY);
            for c in (0..full).step_by(8) {
                m = _mm256_max_ps(m, _mm256_loadu_ps(ptr.add(c)));
            }
            let mut ml = [0.0f32; 8];
            _mm256_storeu_ps(ml.as_mut_ptr(), m);
            for &v in ml.iter().chain(&x[full..]) {
                if v > max {
                    max = v;
                }
            }
            let mv = splat(max);
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in (0..full).step_by(16) {
                let e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(c)), mv));
                let e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(ptr.add(c + 8)), mv));
                _mm256_storeu_ps(ptr.add(c), e0);
                _mm256_storeu_ps(ptr.add(c + 8), e1);
                s0 = _mm256_add_ps(s0, e0);
                s1 = _mm256_add_ps(s1, e1);
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), s0);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), s1);
        }
        for (i, v) in x[full..].iter_mut().enumerate() {
            *v = crate::exp::exp_nonpositive(*v - max);
            lanes[i] += *v;
        }
        let total = lanes.iter().fold(0.0f32, |a, &l| a + l);
        let inv = if total == 0.0 { 0.0 } else { 1.0 / total };
        let iv = splat(inv);
        // SAFETY: as above.
        unsafe {
            for c in (0..full).step_by(8) {
                let v = _mm256_mul_ps(_mm256_loadu_ps(ptr.add(c)), iv);
                let r = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
                _mm256_storeu_ps(ptr.add(c), r);
            }
        }
        for v in x[full..].iter_mut() {
            *v = f16::from_f32(*v * inv).to_f32();
        }
    }

    /// # Safety
    /// As `avx512::sums`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sums<const N: usize>(
        p: &[&[f32]],
        values: ValueRows<'_>,
        first: usize,
        len: usize,
        out: &mut [&mut [f32]],
    ) {
        let pp: [*const f32; N] = std::array::from_fn(|i| p[i].as_ptr());
        let oo: [*mut f32; N] = std::array::from_fn(|i| out[i].as_mut_ptr());
        let rows = values
            .data
            .as_ptr()
            .wrapping_add(first * values.stride + values.offset);
        for j in (0..values.dv).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; N];
            for k in 0..len {
                // SAFETY: row `k`, columns `j..j + 16` and probability `k` are in range.
                unsafe {
                    let row = rows.add(k * values.stride + j);
                    let v0 = _mm256_cvtph_ps(_mm_loadu_si128(row.cast()));
                    let v1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8).cast()));
                    for (a, pi) in acc.iter_mut().zip(pp) {
                        let pk = splat(*pi.add(k));
                        a[0] = _mm256_fmadd_ps(pk, v0, a[0]);
                        a[1] = _mm256_fmadd_ps(pk, v1, a[1]);
                    }
                }
            }
            for (a, o) in acc.iter().zip(oo) {
                // SAFETY: columns `j..j + 16` of each output are in range.
                unsafe {
                    _mm256_storeu_ps(o.add(j), a[0]);
                    _mm256_storeu_ps(o.add(j + 8), a[1]);
                }
            }
        }
    }
}
