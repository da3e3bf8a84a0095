//! 8-bit activation blocks for the legacy 32-element weight types: Q8_0 (paired with
//! Q4_0, Q5_0, Q8_0) and Q8_1 (paired with Q4_1, Q5_1).
//!
//! Rounding follows the quantizer llama.cpp actually runs on x86 (`quantize_row_q8_0` /
//! `quantize_row_q8_1` in `ggml-cpu/arch/x86/quants.c`), not ggml's portable
//! `*_ref` functions, so the integer dot products match a llama.cpp x86 build exactly:
//! - `amax = max |x|`, `d = amax / 127` (f32), stored rounded to f16;
//! - `q = round_half_even(x * (127 / amax))`, using `127 / amax` rather than `1 / d`;
//! - Q8_1 only: `s = f16(d * Σq)` with the f32 `d`.
//!
//! The portable `*_ref` functions differ in two places (`1 / d` and round-half-away),
//! which changes a quantized value in a small fraction of blocks.

use half::f16;

use super::panel::Q8Panel;
use super::ActBlock;

/// Elements per legacy activation block.
pub const QK8: usize = 32;

/// ggml's `block_q8_0`: 32 signed bytes and one f16 scale (34 bytes). Also the Q8_0
/// weight block (see `legacy::BlockQ8_0`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8],
}

/// ggml's `block_q8_1`: like Q8_0 plus `s = d * Σqs` (36 bytes).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK8],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// Quantizes one 32-element block: returns the f32 scale `d` and writes `q`.
/// NaN inputs are not meaningful activations; they quantize to whatever the float
/// operations give, as in llama.cpp, and never panic.
#[inline]
fn quantize_block(x: &[f32], q: &mut [i8; QK8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(x) {
        // |v * id| <= 127 up to one rounding, so the cast never saturates in practice;
        // `as` saturates anyway, which keeps hostile inputs (inf, NaN) panic-free.
        *o = round_half_even(v * id) as i8;
    }
    d
}

/// Round half to even without a libm call (x86-64's baseline has no rounding
/// instruction, so `round_ties_even` becomes a call per element): adding 1.5·2^23 leaves
/// no fraction bits, so the addition itself rounds to nearest even. Exact for
/// |x| < 2^22, far beyond the ±127 of a quantized activation; NaN stays NaN.
#[inline]
fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// Quantizes a row of blocks on the best path this CPU has (same bits on every path):
/// `store(block, d, Σq)` finishes each block with its f32 scale and quant sum.
#[inline]
fn quantize_blocks<B>(
    x: &[f32],
    out: &mut [B],
    qs: impl Fn(&mut B) -> &mut [i8; QK8],
    store: impl Fn(&mut B, f32, i32),
) {
    assert_eq!(x.len(), out.len() * QK8, "row length");
    #[cfg(target_arch = "x86_64")]
    if super::KernelPath::Avx2.is_supported() {
        // SAFETY: AVX2, FMA and F16C were just detected.
        return unsafe { avx2::quantize_blocks(x, out, qs, store) };
    }
    for (xb, ob) in x.chunks_exact(QK8).zip(out.iter_mut()) {
        let q = qs(ob);
        let d = quantize_block(xb, q);
        let sum = q.iter().map(|&v| v as i32).sum();
        store(ob, d, sum);
    }
}

/// The Q8_0 (`with_s` false: `s` stays 0) or Q8_1 panel of float rows in one pass: each
/// block quantized as [`quantize_row`](ActBlock::quantize_row) does and written
/// straight into its lanes, the scales rounded through f16 as the blocks store them.
fn quantize_panel(xs: &[&[f32]], with_s: bool) -> Q8Panel {
    let n = super::panel::panel_shape(xs);
    assert!(n.is_multiple_of(QK8), "whole blocks");
    let mut p = Q8Panel::zeroed(n / QK8, xs.len());
    #[cfg(target_arch = "x86_64")]
    if super::KernelPath::Avx2.is_supported() {
        // SAFETY: AVX2, FMA and F16C were just detected.
        unsafe { avx2::quantize_panel(xs, with_s, &mut p) };
        return p;
    }
    quantize_panel_portable(xs, with_s, &mut p);
    p
}

/// [`quantize_panel`]'s loop in portable code, into the zeroed panel `p`.
fn quantize_panel_portable(xs: &[&[f32]], with_s: bool, p: &mut Q8Panel) {
    for (t, x) in xs.iter().enumerate() {
        for (b, xb) in x.chunks_exact(QK8).enumerate() {
            let mut q = [0i8; QK8];
            let d = quantize_block(xb, &mut q);
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            let s = if with_s {
                f16::from_f32(d * sum as f32).to_f32()
            } else {
                0.0
            };
            p.set(b, t, f16::from_f32(d).to_f32(), s, sum, &q);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q8Panel, QK8};

    /// [`super::quantize_block`] eight lanes at a time, with the same bits: the same
    /// IEEE max, divisions and multiplies; `cvtps_epi32` rounds to nearest even (the
    /// default rounding mode), like the magic-number rounding; lanes whose product is
    /// NaN become 0 as `NaN as i8` does; the saturating packs act as the `as i8` cast.
    /// [`super::quantize_blocks`] with the block quantizer inlined.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn quantize_blocks<B>(
        x: &[f32],
        out: &mut [B],
        qs: impl Fn(&mut B) -> &mut [i8; QK8],
        store: impl Fn(&mut B, f32, i32),
    ) {
        for (xb, ob) in x.chunks_exact(QK8).zip(out.iter_mut()) {
            let xb: &[f32; QK8] = xb.try_into().expect("a 32-element block");
            let (d, sum) = quantize_block(xb, qs(ob));
            store(ob, d, sum);
        }
    }

    /// [`super::quantize_panel`]'s loop, with the conversions inlined.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn quantize_panel(xs: &[&[f32]], with_s: bool, p: &mut Q8Panel) {
        // f32 -> f16 -> f32: the value a stored f16 scale reads back as.
        let via_f16 = |v: f32| {
            let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
            _mm_cvtss_f32(_mm_cvtph_ps(h))
        };
        for (t, x) in xs.iter().enumerate() {
            for (b, xb) in x.chunks_exact(QK8).enumerate() {
                let xb: &[f32; QK8] = xb.try_into().expect("a 32-element block");
                let mut q = [0i8; QK8];
                let (d, sum) = quantize_block(xb, &mut q);
                let s = if with_s { via_f16(d * sum as f32) } else { 0.0 };
                p.set(b, t, via_f16(d), s, sum, &q);
            }
        }
    }

    /// Also returns `Σq` (of the stored bytes).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn quantize_block(x: &[f32; QK8], q: &mut [i8; QK8]) -> (f32, i32) {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // SAFETY (all loads and the store): `x` and `q` are 32 elements; unaligned.
        let v: [__m256; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let mut vmax = _mm256_setzero_ps();
        for v in &v {
            // max_ps returns the second operand when either is NaN: NaNs never win, as
            // with `f32::max` in the scalar fold.
            vmax = _mm256_max_ps(_mm256_and_ps(*v, abs_mask), vmax);
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(vmax),
            _mm256_extractf128_ps::<1>(vmax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let ints: [__m256i; 4] = std::array::from_fn(|i| {
            let prod = _mm256_mul_ps(v[i], id);
            let ordered = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(prod, prod));
            _mm256_and_si256(_mm256_cvtps_epi32(prod), ordered)
        });
        let w01 = _mm256_packs_epi32(ints[0], ints[1]);
        let w23 = _mm256_packs_epi32(ints[2], ints[3]);
        let b = _mm256_packs_epi16(w01, w23);
        // The packs interleave 128-bit lanes: put the 4-byte groups back in order.
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), b) };
        // Σq: bytes times one in i16 pairs, pairs to i32, then across lanes.
        let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), b);
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(quads),
            _mm256_extracti128_si256::<1>(quads),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        (d, _mm_cvtsi128_si32(s))
    }
}

impl ActBlock for BlockQ8_0 {
    const BLOCK_ELEMS: usize = QK8;
    type Panel = Q8Panel;

    fn build_panel(rows: &[&[Self]]) -> Q8Panel {
        Q8Panel::from_q8_0(rows)
    }

    fn quantize_panel(xs: &[&[f32]]) -> Q8Panel {
        quantize_panel(xs, false)
    }

    fn quantize_row(x: &[f32], out: &mut [Self]) {
        quantize_blocks(x, out, |b| &mut b.qs, |b, d, _| b.d = f16::from_f32(d));
    }
}

impl ActBlock for BlockQ8_1 {
    const BLOCK_ELEMS: usize = QK8;
    type Panel = Q8Panel;

    fn build_panel(rows: &[&[Self]]) -> Q8Panel {
        Q8Panel::from_q8_1(rows)
    }

    fn quantize_panel(xs: &[&[f32]]) -> Q8Panel {
        quantize_panel(xs, true)
    }

    fn quantize_row(x: &[f32], out: &mut [Self]) {
        quantize_blocks(
            x,
            out,
            |b| &mut b.qs,
            |b, d, sum| {
                b.d = f16::from_f32(d);
                b.s = f16::from_f32(d * sum as f32);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward restatement of the rule, block by block, for comparison.
    fn expected_q(x: &[f32]) -> (f32, Vec<i8>) {
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
            }
        }
        let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
        let q = x
            .iter()
            .map(|&v| {
                let t = v * id;
                let r = t.round();
                // round half to even: fix the away-from-zero result on exact halves.
                let r = if (t - t.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
                    r - t.signum()
                } else {
                    r
                };
                r as i8
            })
            .collect();
        (amax / 127.0, q)
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn q8_0_and_q8_1_match_the_rule() {
        let mut seed = 7u64;
        let mut x: Vec<f32> = (0..32 * 64).map(|_| lcg(&mut seed) * 3.0).collect();
        // Block 1: all zeros; block 2: exact halves after scaling (amax 127 → id 1).
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
        for (i, v) in x[64..96].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[95] = 127.0;
        let mut b0 = vec![BlockQ8_0::default(); 64];
        let mut b1 = vec![BlockQ8_1::default(); 64];
        BlockQ8_0::quantize_row(&x, &mut b0);
        BlockQ8_1::quantize_row(&x, &mut b1);
        for i in 0..64 {
            let (d, q) = expected_q(&x[i * 32..(i + 1) * 32]);
            assert_eq!(b0[i].qs.to_vec(), q, "block {i}");
            assert_eq!(b1[i].qs.to_vec(), q, "block {i}");
            assert_eq!(b0[i].d, f16::from_f32(d));
            assert_eq!(b1[i].d, f16::from_f32(d));
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            assert_eq!(b1[i].s, f16::from_f32(d * sum as f32));
        }
        // Halves round to even: -15.5 → -16, -14.5 → -14, 0.5 → 0, 1.5 → 2.
        assert_eq!(b0[2].qs[0], -16);
        assert_eq!(b0[2].qs[1], -14);
        assert_eq!(b0[2].qs[16], 0);
        assert_eq!(b0[2].qs[17], 2);
        assert_eq!(b0[1].qs, [0; 32]);
        assert_eq!(b0[1].d, f16::ZERO);
    }

    /// The SIMD block quantizer gives the scalar one's bits, specials included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_block_quantizer_equals_scalar() {
        if !crate::quant::KernelPath::Avx2.is_supported() {
            return;
        }
        let mut seed = 99u64;
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            0.0,
            -0.0,
            1e-30,
            0.5,
            -1.5,
        ];
        for round in 0..2000 {
            let mut x: [f32; QK8] = std::array::from_fn(|_| lcg(&mut seed) * 10.0);
            match round % 4 {
                1 => x[round % QK8] = specials[round % specials.len()],
                2 => x.iter_mut().for_each(|v| *v = (*v * 4.0).round() * 0.5),
                3 => x = [0.0; QK8],
                _ => {}
            }
            let (mut a, mut b) = ([0i8; QK8], [0i8; QK8]);
            let da = quantize_block(&x, &mut a);
            // SAFETY: AVX2 was just detected.
            let (db, sum) = unsafe { avx2::quantize_block(&x, &mut b) };
            assert_eq!((da.to_bits(), a), (db.to_bits(), b), "{x:?}");
            assert_eq!(sum, a.iter().map(|&q| q as i32).sum::<i32>(), "{x:?}");
        }
    }

    /// The AVX2 panel quantizer gives the portable one's bits (the portable one runs
    /// where AVX2 is missing, e.g. on ARM), specials and f16-rounded scales included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_panel_quantizer_equals_portable() {
        if !crate::quant::KernelPath::Avx2.is_supported() {
            return;
        }
        let specials = [f32::NAN, f32::INFINITY, -0.0, 1e-30, 7e4, -3e3, 0.5];
        let mut seed = 5u64;
        for tokens in [1usize, 7, 16] {
            let xs: Vec<Vec<f32>> = (0..tokens)
                .map(|t| {
                    (0..160)
                        .map(|i| match (t * 7 + i) % 41 {
                            0 => specials[(t + i) % specials.len()],
                            1..=3 => lcg(&mut seed) * 1e-6,
                            _ => lcg(&mut seed) * (1.0 + (i / 32) as f32 * 300.0),
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            for with_s in [false, true] {
                let mut want = Q8Panel::zeroed(5, tokens);
                quantize_panel_portable(&refs, with_s, &mut want);
                let mut got = Q8Panel::zeroed(5, tokens);
                // SAFETY: AVX2 was just detected.
                unsafe { avx2::quantize_panel(&refs, with_s, &mut got) };
                let bits = |l: &[crate::quant::panel::Lanes<f32>]| {
                    l.iter()
                        .flat_map(|v| v.0.map(f32::to_bits))
                        .collect::<Vec<_>>()
                };
                assert_eq!(got.qs, want.qs, "{tokens} tokens, s {with_s}");
                assert_eq!(got.sum, want.sum, "{tokens} tokens, s {with_s}");
                assert_eq!(bits(&got.d), bits(&want.d), "{tokens} tokens, s {with_s}");
                assert_eq!(bits(&got.s), bits(&want.s), "{tokens} tokens, s {with_s}");
            }
        }
    }

    /// The one-pass panels hold what quantizing the rows and building the panel gives.
    #[test]
    fn quantize_panel_equals_rows_then_panel() {
        fn check<A: ActBlock<Panel = Q8Panel>>(xs: &[Vec<f32>]) {
            let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let rows: Vec<Vec<A>> = xs
                .iter()
                .map(|x| {
                    let mut r = vec![A::default(); x.len() / QK8];
                    A::quantize_row(x, &mut r);
                    r
                })
                .collect();
            let row_refs: Vec<&[A]> = rows.iter().map(Vec::as_slice).collect();
            let want = A::build_panel(&row_refs);
            let got = A::quantize_panel(&refs);
            assert_eq!(got.tokens, want.tokens);
            assert_eq!(got.qs, want.qs);
            assert_eq!(got.sum, want.sum);
            let bits = |l: &[crate::quant::panel::Lanes<f32>]| {
                l.iter()
                    .flat_map(|v| v.0.map(f32::to_bits))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&got.d), bits(&want.d));
            assert_eq!(bits(&got.s), bits(&want.s));
        }
        let mut seed = 99u64;
        for tokens in [1usize, 5, 16] {
            let xs: Vec<Vec<f32>> = (0..tokens)
                .map(|t| {
                    (0..96)
                        .map(|i| match (t + i) % 29 {
                            0 => 0.0,
                            1 => 1e-30,
                            _ => lcg(&mut seed) * 40.0,
                        })
                        .collect()
                })
                .collect();
            check::<BlockQ8_0>(&xs);
            check::<BlockQ8_1>(&xs);
        }
    }
}
