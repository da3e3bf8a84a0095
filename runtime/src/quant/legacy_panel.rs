//! Prompt-processing kernels for the legacy 32-element weight types: rows of Q4_0, Q4_1,
//! Q5_0, Q5_1 or Q8_0 against a [`Q8Panel`] of up to 16 tokens.
//!
//! Weights enter the byte dot product unsigned (`vpdpbusd` and `maddubs` take u8 × i8):
//! 4-bit and 5-bit quants are unsigned already, and Q8_0 bytes are flipped to `q + 128`.
//! The offsets that the signed types subtract (8, 16, 128 per element) are taken out
//! once per block and token as `offset · Σa`, which the panel holds, so every lane ends
//! with exactly the integer the single-token kernels compute. Q4_1/Q5_1 add `m · s` as
//! they do.
//!
//! Per block the sixteen weight bytes of elements 0..16 (and 16..32) are broadcast to
//! every 128-bit lane; `shuffle_epi32` then spreads one group of four to all lanes.
//!
//! [`panel_dot`] is the rule in portable code (the scalar path's kernel): every SIMD
//! kernel, and the shared one over unpacked rows, gives its bits on every lane.

use half::f16;

use super::act::QK8;
use super::panel::{check_rows, LaneDots, Q8Panel, GROUPS};
use super::PANEL_TOKENS;

/// A legacy weight block as the panel rule reads it.
pub(crate) trait PanelBlock {
    /// The 32 quants as they enter the integer dot product, offsets taken out (Q4_0
    /// `q - 8`, Q5_0 `q - 16`; Q4_1/Q5_1 unsigned, Q8_0 as stored).
    fn quants(&self) -> [i8; QK8];
    /// The scale `d`.
    fn scale(&self) -> f16;
    /// The min `m` of Q4_1/Q5_1 (`None` for the types without one).
    fn min(&self) -> Option<f16>;
}

/// Every row of `w` against every token of `p`, the rule of all legacy panel kernels:
/// per token lane and block, the exact `isum = Σ q_w q_a`, then
/// `acc = fma(f32(isum), d_a · d_w, acc)` and, for Q4_1/Q5_1, `acc = fma(m, s_a, acc)`
/// (f16 scales read exactly, products and fused adds rounded to f32 as the vector
/// instructions round them).
pub(crate) fn panel_dot<B: PanelBlock>(w: &[B], p: &Q8Panel, out: &mut [[f32; PANEL_TOKENS]]) {
    let bpr = p.blocks();
    if !check_rows(w.len(), bpr, out) {
        return;
    }
    for (row, o) in w.chunks_exact(bpr).zip(out.iter_mut()) {
        let mut acc = [0.0f32; PANEL_TOKENS];
        for (b, blk) in row.iter().enumerate() {
            let q = blk.quants();
            let mut dots = LaneDots::new();
            for (w4, a) in q.chunks_exact(4).zip(&p.qs[b * GROUPS..(b + 1) * GROUPS]) {
                dots.add(w4, a);
            }
            let isum = dots.per_token();
            let dw = blk.scale().to_f32();
            for ((acc, &s), &da) in acc.iter_mut().zip(&isum).zip(&p.d[b].0) {
                *acc = (s as f32).mul_add(da * dw, *acc);
            }
            if let Some(m) = blk.min() {
                let m = m.to_f32();
                for (acc, &sa) in acc.iter_mut().zip(&p.s[b].0) {
                    *acc = m.mul_add(sa, *acc);
                }
            }
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use crate::quant::f16c::f16_to_f32;
    use crate::quant::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
    use crate::quant::panel::{Q8Panel, GROUPS};
    use crate::quant::PANEL_TOKENS;

    /// AVX-512 VNNI: one zmm of sixteen i32 lanes per row.
    ///
    /// Each row's block is unpacked once into 32 unsigned bytes on the stack; every
    /// group of four is then read back with a broadcast load, which uses only the load
    /// ports and leaves the vector ports to `vpdpbusd` (shuffling the groups out of a
    /// register costs a shuffle-port uop each and was about 1.5× slower).
    pub mod vnni {
        use super::*;
        use crate::quant::legacy::x86::unpack_nibbles;

        /// Unpacked quants of one block of each row in a pass.
        #[repr(C, align(32))]
        struct Unpacked([[u8; 32]; 4]);

        /// Instantiates one type's kernel. `$unpack(block)` gives the block's 32
        /// unsigned quants in element order; `$shift` is log2 of the offset to take out
        /// (`None` for Q4_1/Q5_1, which give their min `m` instead, to add `m · s`).
        macro_rules! kernel {
            ($name:ident, $B:ty, $shift:expr, |$blk:ident| $unpack:expr $(, min |$mb:ident| $min:expr)?) => {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
                pub fn $name(w: &[$B], p: &Q8Panel, out: &mut [[f32; PANEL_TOKENS]]) {
                    #[target_feature(
                        enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
                    )]
                    #[inline]
                    fn pass<const R: usize>(
                        w: &[$B],
                        bpr: usize,
                        p: &Q8Panel,
                        out: &mut [[f32; PANEL_TOKENS]],
                    ) {
                        let mut acc = [_mm512_setzero_ps(); R];
                        let mut a = [_mm512_setzero_si512(); GROUPS];
                        let mut unpacked = Unpacked([[0; 32]; 4]);
                        for b in 0..bpr {
                            for (i, u) in unpacked.0.iter_mut().take(R).enumerate() {
                                let $blk = &w[i * bpr + b];
                                let q: __m256i = $unpack;
                                // SAFETY: `u` is 32 writable, 32-byte aligned bytes.
                                unsafe { _mm256_store_si256(u.as_mut_ptr().cast(), q) };
                            }
                            // Keep the stores and the loads below apart (see `vnni`).
                            std::hint::black_box(&mut unpacked);
                            for (g, v) in a.iter_mut().enumerate() {
                                // SAFETY: `Lanes` is 64 bytes, 64-byte aligned.
                                *v = unsafe {
                                    _mm512_load_si512(p.qs[b * GROUPS + g].0.as_ptr().cast())
                                };
                            }
                            // SAFETY (three loads): as above.
                            let da = unsafe { _mm512_load_ps(p.d[b].0.as_ptr()) };
                            let base = match $shift {
                                Some(k) => {
                                    let sum = unsafe { _mm512_load_si512(p.sum[b].0.as_ptr().cast()) };
                                    _mm512_sub_epi32(
                                        _mm512_setzero_si512(),
                                        _mm512_sllv_epi32(sum, _mm512_set1_epi32(k)),
                                    )
                                }
                                None => _mm512_setzero_si512(),
                            };
                            for (i, acc) in acc.iter_mut().enumerate() {
                                let $blk = &w[i * bpr + b];
                                let u = &unpacked.0[i];
                                let mut s = base;
                                for (g, a) in a.iter().enumerate() {
                                    let four = i32::from_le_bytes([u[4 * g], u[4 * g + 1], u[4 * g + 2], u[4 * g + 3]]);
                                    s = _mm512_dpbusd_epi32(s, _mm512_set1_epi32(four), *a);
                                }
                                let dw = _mm512_set1_ps(f16_to_f32($blk.d.to_bits()));
                                *acc = _mm512_fmadd_ps(
                                    _mm512_cvtepi32_ps(s),
                                    _mm512_mul_ps(da, dw),
                                    *acc,
                                );
                                $(
                                    let $mb = $blk;
                                    let m = _mm512_set1_ps(f16_to_f32($min.to_bits()));
                                    // SAFETY: as above (a memory operand of the FMA).
                                    let sa = unsafe { _mm512_load_ps(p.s[b].0.as_ptr()) };
                                    *acc = _mm512_fmadd_ps(m, sa, *acc);
                                )?
                            }
                        }
                        for (o, acc) in out.iter_mut().zip(acc) {
                            // SAFETY: `o` is 16 writable f32.
                            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
                        }
                    }
                    crate::quant::panel::over_rows!(w, p, out, pass, 4)
                }
            };
        }

        /// Adds the fifth bits (`qh` bit j for element j) as 16.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        #[inline]
        fn fifth_bits(qh: &[u8; 4], q: __m256i) -> __m256i {
            _mm256_mask_add_epi8(q, u32::from_le_bytes(*qh), q, _mm256_set1_epi8(16))
        }

        /// Q8_0 quants flipped to `q + 128`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        #[inline]
        fn flipped(qs: &[i8; 32]) -> __m256i {
            // SAFETY: `qs` is 32 readable bytes.
            let q = unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) };
            _mm256_xor_si256(q, _mm256_set1_epi8(0x80u8 as i8))
        }

        kernel!(q4_0, BlockQ4_0, Some(3), |x| unpack_nibbles(&x.qs));
        kernel!(
            q4_1,
            BlockQ4_1,
            None,
            |x| unpack_nibbles(&x.qs),
            min | x | x.m
        );
        kernel!(q5_0, BlockQ5_0, Some(4), |x| fifth_bits(
            &x.qh,
            unpack_nibbles(&x.qs)
        ));
        kernel!(
            q5_1,
            BlockQ5_1,
            None,
            |x| fifth_bits(&x.qh, unpack_nibbles(&x.qs)),
            min | x | x.m
        );
        kernel!(q8_0, BlockQ8_0, Some(7), |x| flipped(&x.qs));
    }

    /// AVX2: tokens 0..8 and 8..16 as two ymm halves; `maddubs` (u8 × i8 → i16 pairs)
    /// and `madd` with ones stand in for `vpdpbusd`. The i16 sums are bounded: with
    /// activations in -127..=127, a pair is at most 2·15·127 = 3810 for 4-bit quants
    /// (eight groups fit in i16) and 2·31·127 = 7874 for 5-bit ones (four fit); Q8_0
    /// weights use the sign trick (|w| × a·sign(w), at most 2·128·127 per pair) and
    /// widen every group.
    pub mod avx2 {
        use super::*;

        /// Eight groups of four weight bytes, each spread over all lanes.
        type Groups = [__m256i; GROUPS];

        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn spread(lo: __m256i, hi: __m256i) -> Groups {
            [
                _mm256_shuffle_epi32::<0x00>(lo),
                _mm256_shuffle_epi32::<0x55>(lo),
                _mm256_shuffle_epi32::<0xAA>(lo),
                _mm256_shuffle_epi32::<0xFF>(lo),
                _mm256_shuffle_epi32::<0x00>(hi),
                _mm256_shuffle_epi32::<0x55>(hi),
                _mm256_shuffle_epi32::<0xAA>(hi),
                _mm256_shuffle_epi32::<0xFF>(hi),
            ]
        }

        /// The activation bytes of group `g` for the tokens of half `h`.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn act(p: &Q8Panel, b: usize, g: usize, h: usize) -> __m256i {
            // SAFETY: each `Lanes` entry is 64 bytes; `h` is 0 or 1.
            unsafe { _mm256_load_si256(p.qs[b * GROUPS + g].0.as_ptr().add(8 * h).cast()) }
        }

        /// Σ over groups of unsigned 4-bit weights × activations, in i32 lanes.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn dot_u4(w: &Groups, p: &Q8Panel, b: usize, h: usize) -> __m256i {
            let mut s = _mm256_maddubs_epi16(w[0], act(p, b, 0, h));
            for (g, w) in w.iter().enumerate().skip(1) {
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*w, act(p, b, g, h)));
            }
            _mm256_madd_epi16(s, _mm256_set1_epi16(1))
        }

        /// The same for 5-bit weights: two i16 partial sums of four groups.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn dot_u5(w: &Groups, p: &Q8Panel, b: usize, h: usize) -> __m256i {
            let half = |g0: usize| {
                let mut s = _mm256_maddubs_epi16(w[g0], act(p, b, g0, h));
                for (g, w) in w.iter().enumerate().skip(g0 + 1).take(3) {
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*w, act(p, b, g, h)));
                }
                _mm256_madd_epi16(s, _mm256_set1_epi16(1))
            };
            _mm256_add_epi32(half(0), half(4))
        }

        /// Signed weights (Q8_0) by the sign trick, widened per group.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn dot_i8(w: &Groups, p: &Q8Panel, b: usize, h: usize) -> __m256i {
            let ones = _mm256_set1_epi16(1);
            let mut s = _mm256_setzero_si256();
            for (g, w) in w.iter().enumerate() {
                let a = _mm256_sign_epi8(act(p, b, g, h), *w);
                let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(*w), a);
                s = _mm256_add_epi32(s, _mm256_madd_epi16(pairs, ones));
            }
            s
        }

        /// As the VNNI `kernel!`, plus `$dot`, the group dot product for the type.
        macro_rules! kernel {
            ($name:ident, $B:ty, $shift:expr, $dot:ident, |$blk:ident| $unpack:expr $(, min |$mb:ident| $min:expr)?) => {
                #[target_feature(enable = "avx2,fma,f16c")]
                pub fn $name(w: &[$B], p: &Q8Panel, out: &mut [[f32; PANEL_TOKENS]]) {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    #[inline]
                    fn pass<const R: usize>(
                        w: &[$B],
                        bpr: usize,
                        p: &Q8Panel,
                        out: &mut [[f32; PANEL_TOKENS]],
                    ) {
                        let mut acc = [[_mm256_setzero_ps(); 2]; R];
                        for b in 0..bpr {
                            for (i, acc) in acc.iter_mut().enumerate() {
                                let $blk = &w[i * bpr + b];
                                let (lo, hi): (__m256i, __m256i) = $unpack;
                                let groups = spread(lo, hi);
                                let dw = _mm256_set1_ps(f16_to_f32($blk.d.to_bits()));
                                for (h, acc) in acc.iter_mut().enumerate() {
                                    let mut s = $dot(&groups, p, b, h);
                                    if let Some(k) = $shift {
                                        // SAFETY: 32 of the 64 aligned bytes of `Lanes`.
                                        let sum = unsafe {
                                            _mm256_load_si256(p.sum[b].0.as_ptr().add(8 * h).cast())
                                        };
                                        s = _mm256_sub_epi32(s, _mm256_sllv_epi32(sum, _mm256_set1_epi32(k)));
                                    }
                                    // SAFETY (both loads): as above.
                                    let da = unsafe { _mm256_load_ps(p.d[b].0.as_ptr().add(8 * h)) };
                                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(da, dw), *acc);
                                    $(
                                        let $mb = $blk;
                                        let m = _mm256_set1_ps(f16_to_f32($min.to_bits()));
                                        let sa = unsafe { _mm256_load_ps(p.s[b].0.as_ptr().add(8 * h)) };
                                        *acc = _mm256_fmadd_ps(m, sa, *acc);
                                    )?
                                }
                            }
                        }
                        for (o, acc) in out.iter_mut().zip(acc) {
                            // SAFETY: `o` is 16 writable f32.
                            unsafe {
                                _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
                                _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
                            }
                        }
                    }
                    crate::quant::panel::over_rows!(w, p, out, pass, 1)
                }
            };
        }

        /// Sixteen packed bytes in both 128-bit lanes, split into low nibbles (elements
        /// 0..16) and high nibbles (16..32).
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn nibbles(qs: &[u8; 16]) -> (__m256i, __m256i) {
            // SAFETY: `qs` is 16 readable bytes.
            let z = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(qs.as_ptr().cast()) });
            let m = _mm256_set1_epi8(0x0F);
            (
                _mm256_and_si256(z, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(z), m),
            )
        }

        /// 0x10 in byte j of each lane where bit `first + j` of `qh` is set.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn bits16(h: u32) -> __m256i {
            let v = _mm256_set1_epi32(h as i32);
            // Byte j takes mask byte j / 8, then tests bit j % 8.
            let pick = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,
                1, 1, 1, 1,
            );
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit), bit);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn fifth_bits(qh: &[u8; 4], (lo, hi): (__m256i, __m256i)) -> (__m256i, __m256i) {
            let h = u32::from_le_bytes(*qh);
            (
                _mm256_or_si256(lo, bits16(h & 0xFFFF)),
                _mm256_or_si256(hi, bits16(h >> 16)),
            )
        }

        /// Q8_0 quants (signed) of elements 0..16 and 16..32, each in both lanes.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn signed(qs: &[i8; 32]) -> (__m256i, __m256i) {
            // SAFETY: `qs` is 32 readable bytes.
            unsafe {
                (
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast())),
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().add(16).cast())),
                )
            }
        }

        kernel!(q4_0, BlockQ4_0, Some(3), dot_u4, |x| nibbles(&x.qs));
        kernel!(
            q4_1,
            BlockQ4_1,
            None,
            dot_u4,
            |x| nibbles(&x.qs),
            min | x | x.m
        );
        kernel!(q5_0, BlockQ5_0, Some(4), dot_u5, |x| fifth_bits(
            &x.qh,
            nibbles(&x.qs)
        ));
        kernel!(
            q5_1,
            BlockQ5_1,
            None,
            dot_u5,
            |x| fifth_bits(&x.qh, nibbles(&x.qs)),
            min | x | x.m
        );
        kernel!(q8_0, BlockQ8_0, None, dot_i8, |x| signed(&x.qs));
    }
}
