//! x86 prompt kernels for K-quant rows (Q2_K..Q6_K) against a [`Q8KPanel`].
//!
//! Per row and super-block the quants are unpacked once into a 256-byte scratch of
//! unsigned bytes (Q2_K 0..4, Q3_K `q + 4` in 0..8, Q4_K 0..16, Q5_K 0..32, Q6_K 0..64);
//! each group of four is then broadcast to all token lanes straight from memory (a
//! load, no shuffle port) and multiplied with the panel's bytes of sixteen tokens.
//! Exact integers throughout, as in the single-token kernels:
//! - AVX-512 VNNI: `vpdpbusd` sums a sub-block per lane in i32, `vpmulld` applies its
//!   scale; Q6_K and Q3_K start each sub-block at the panel's `-32·Σa` (`-4·Σa`), and
//!   the min terms are a `vpdpwssd` of min pairs with the panel's 32-element (Q4_K,
//!   Q5_K) or 16-element (Q2_K) sums.
//! - AVX2 (tokens 0..8 and 8..16 as two ymm halves): `maddubs` gives i16 pair sums,
//!   added in i16 only as far as they cannot overflow (8 groups of 0..15 quants, 4 of
//!   0..31, 2 of 0..63, 4 of 0..7: at most 30720, 31744, 32256 and 7168), then `madd`
//!   with the sub-block scale pair gives i32; offsets and mins are `madd`s of scale or
//!   min pairs with the panel's sum pairs.
//!
//! Each pass keeps several rows in flight so one activation load feeds several rows.
//! Float work is one FMA per row, super-block and 16 tokens (two with a min term).

use std::arch::x86_64::*;

use super::panel::{Q8KPanel, GROUPS_K};
use super::{unpack_scale_min_k4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, QK_K};
use crate::quant::f16c::f16_to_f32;
use crate::quant::panel::Lanes;
use crate::quant::PANEL_TOKENS;

/// One row's unpacked quants of one super-block, one unsigned byte per element.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Quants([u8; QK_K]);

impl Quants {
    const ZERO: Quants = Quants([0; QK_K]);

    /// The four bytes at `o` as one little-endian lane value.
    #[inline(always)]
    fn dword(&self, o: usize) -> i32 {
        i32::from_le_bytes([self.0[o], self.0[o + 1], self.0[o + 2], self.0[o + 3]])
    }
}

/// Makes a scratch (quants, scales) opaque to the optimizer, so its values are read
/// back with broadcast loads (load ports only, or folded into the multiply as a
/// broadcast memory operand). Left visible, the stores are forwarded into register
/// broadcasts and shuffles: one or two shuffle-port uops per use, on the port the
/// multiply-adds need.
#[inline(always)]
fn spill<T>(v: &mut T) {
    std::hint::black_box(v);
}

/// Scratch offset of group `k` (elements `4k..4k + 4`) of 32-element sub-block `j` in
/// the Q4_K/Q5_K unpack order: per 64 quant bytes, their 64 low nibbles then their 64
/// high nibbles. Chunk `c = j / 2` is bytes `32c..32c + 32`; its low nibbles are
/// sub-block `2c`, its high nibbles sub-block `2c + 1`.
#[inline(always)]
const fn min_offset(j: usize, k: usize) -> usize {
    let c = j / 2;
    128 * (c / 2) + 64 * (j % 2) + 32 * (c % 2) + 4 * k
}

/// Two 6-bit values per i32 lane value as an i16 pair (for `madd`/`vpdpwssd`).
#[inline(always)]
fn pair(lo: i16, hi: i16) -> i32 {
    (lo as u16 as u32 | (hi as u16 as u32) << 16) as i32
}

/// Q3_K quants as unsigned `q + 4` (0..8) in element order: per 32-element run
/// (`c`, `s`), two bits of `qs[32c..]` at bit `2s` plus the `hmask` bit `4c + s` as 4
/// (set means `q` is the low bits, clear means 4 less). 16-bit shifts: the masks keep
/// only bits that came from the same byte.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack_q3k(x: &BlockQ3K, q: &mut Quants) {
    let m2 = _mm256_set1_epi8(3);
    let bit2 = _mm256_set1_epi8(4);
    // SAFETY: `hmask` has 32 bytes, `qs` 64, `q` 256 (64-aligned).
    unsafe {
        let hm = _mm256_loadu_si256(x.hmask.as_ptr().cast());
        for c in 0..2 {
            let v = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast());
            // Element run s of chunk c: low bits `v >> 2s`, high bit `hm >> (4c + s)`.
            let runs = [
                (v, hm, 4 * c),
                (_mm256_srli_epi16::<2>(v), hm, 4 * c + 1),
                (_mm256_srli_epi16::<4>(v), hm, 4 * c + 2),
                (_mm256_srli_epi16::<6>(v), hm, 4 * c + 3),
            ];
            for (s, (lo, hm, bit)) in runs.into_iter().enumerate() {
                // Move hmask bit `bit` (0..8) to bit 2.
                let h = match bit {
                    0 => _mm256_slli_epi16::<2>(hm),
                    1 => _mm256_slli_epi16::<1>(hm),
                    2 => hm,
                    3 => _mm256_srli_epi16::<1>(hm),
                    4 => _mm256_srli_epi16::<2>(hm),
                    5 => _mm256_srli_epi16::<3>(hm),
                    6 => _mm256_srli_epi16::<4>(hm),
                    _ => _mm256_srli_epi16::<5>(hm),
                };
                let u = _mm256_or_si256(_mm256_and_si256(lo, m2), _mm256_and_si256(h, bit2));
                _mm256_store_si256(q.0.as_mut_ptr().add(128 * c + 32 * s).cast(), u);
            }
        }
    }
}

/// Q3_K's 16 six-bit scales, offset to -32..32.
#[inline(always)]
fn q3k_scales(x: &BlockQ3K) -> [i8; 16] {
    let s = &x.scales;
    std::array::from_fn(|i| {
        let low = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// Q2_K quants (0..4) in element order: per 32-element run (`c`, `s`), bits `2s..2s + 2`
/// of `qs[32c..]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack_q2k(x: &BlockQ2K, q: &mut Quants) {
    let m2 = _mm256_set1_epi8(3);
    for c in 0..2 {
        // SAFETY: `qs` has 64 bytes, `q` 256 (64-aligned).
        unsafe {
            let v = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast());
            let runs = [
                v,
                _mm256_srli_epi16::<2>(v),
                _mm256_srli_epi16::<4>(v),
                _mm256_srli_epi16::<6>(v),
            ];
            for (s, r) in runs.into_iter().enumerate() {
                let dst = q.0.as_mut_ptr().add(128 * c + 32 * s);
                _mm256_store_si256(dst.cast(), _mm256_and_si256(r, m2));
            }
        }
    }
}

/// AVX-512 VNNI: sixteen tokens in the i32 lanes of one zmm.
pub(crate) mod vnni {
    use super::*;

    /// Rows a pass keeps in flight.
    const ROWS_PER_PASS: usize = 4;

    /// A panel entry as one aligned 64-byte load.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn ld<T>(l: &Lanes<T>) -> __m512i {
        debug_assert_eq!(std::mem::size_of::<Lanes<T>>(), 64);
        // SAFETY: every `Lanes` used here is 16 four-byte values: 64 bytes, 64-aligned.
        unsafe { _mm512_load_si512(l.0.as_ptr().cast()) }
    }

    /// Broadcast of scratch bytes `o..o + 4` to every lane.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn bcast(q: &Quants, o: usize) -> __m512i {
        _mm512_set1_epi32(q.dword(o))
    }

    /// Q4_K nibbles in [`min_offset`] order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn unpack_q4k(x: &BlockQ4K, q: &mut Quants) {
        let m4 = _mm512_set1_epi8(0x0F);
        for z in 0..2 {
            // SAFETY: `qs` has 128 bytes, `q` 256 (64-aligned).
            unsafe {
                let v = _mm512_loadu_si512(x.qs.as_ptr().add(64 * z).cast());
                let dst = q.0.as_mut_ptr().add(128 * z);
                _mm512_store_si512(dst.cast(), _mm512_and_si512(v, m4));
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                _mm512_store_si512(dst.add(64).cast(), hi);
            }
        }
    }

    /// Q5_K quants (nibble + 16·bit) in [`min_offset`] order. The 32 `qh` bytes sit in
    /// both 256-bit halves; a byte-wise test against the chunk's bit gives the mask of
    /// elements to raise by 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn unpack_q5k(x: &BlockQ5K, q: &mut Quants) {
        let m4 = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        // SAFETY: `qh` has 32 bytes.
        let hh = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(x.qh.as_ptr().cast()) });
        // Chunk c's low nibbles take bit 2c, its high nibbles bit 2c + 1.
        let bits = |a: i32, b: i32| {
            _mm512_inserti64x4::<1>(
                _mm512_set1_epi8((1u8 << a) as i8),
                _mm256_set1_epi8((1u8 << b) as i8),
            )
        };
        for z in 0..2 {
            let c = 2 * z as i32;
            // SAFETY: `qs` has 128 bytes, `q` 256 (64-aligned).
            unsafe {
                let v = _mm512_loadu_si512(x.qs.as_ptr().add(64 * z).cast());
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                let k_lo = _mm512_test_epi8_mask(hh, bits(2 * c, 2 * c + 2));
                let k_hi = _mm512_test_epi8_mask(hh, bits(2 * c + 1, 2 * c + 3));
                let dst = q.0.as_mut_ptr().add(128 * z);
                _mm512_store_si512(dst.cast(), _mm512_mask_add_epi8(lo, k_lo, lo, sixteen));
                _mm512_store_si512(
                    dst.add(64).cast(),
                    _mm512_mask_add_epi8(hi, k_hi, hi, sixteen),
                );
            }
        }
    }

    /// Q6_K quants (0..64) in element order. Per half of 128: the 64 `ql` bytes give
    /// elements 0..64 (low nibbles) and 64..128 (high nibbles); the 32 `qh` bytes, in
    /// both 256-bit halves, are shifted so each 32-element run's two bits land on bits
    /// 4..5 (16-bit shifts: the mask drops bits from the neighbouring byte).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn unpack_q6k(x: &BlockQ6K, q: &mut Quants) {
        let m4 = _mm512_set1_epi8(0x0F);
        let m2 = _mm512_set1_epi8(0x30);
        let halves =
            |a: i16, b: i16| _mm512_inserti64x4::<1>(_mm512_set1_epi16(a), _mm256_set1_epi16(b));
        let shl_lo = halves(4, 2);
        let shr_hi = halves(0, 2);
        for n in 0..2 {
            // SAFETY: `ql` has 128 bytes, `qh` 64, `q` 256 (64-aligned).
            unsafe {
                let l = _mm512_loadu_si512(x.ql.as_ptr().add(64 * n).cast());
                let hh =
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(x.qh.as_ptr().add(32 * n).cast()));
                // A | (B & C): the nibble or-ed with the masked top bits.
                let lo = _mm512_ternarylogic_epi32::<0xF8>(
                    _mm512_and_si512(l, m4),
                    _mm512_sllv_epi16(hh, shl_lo),
                    m2,
                );
                // (A & C) | B.
                let hi = _mm512_ternarylogic_epi32::<0xEC>(
                    _mm512_srli_epi16::<4>(l),
                    _mm512_and_si512(_mm512_srlv_epi16(hh, shr_hi), m2),
                    m4,
                );
                let dst = q.0.as_mut_ptr().add(128 * n);
                _mm512_store_si512(dst.cast(), lo);
                _mm512_store_si512(dst.add(64).cast(), hi);
            }
        }
    }

    /// Q4_K/Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
    macro_rules! min_kernel {
        ($name:ident, $B:ty, $unpack:ident) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub(crate) fn $name(w: &[$B], p: &Q8KPanel, out: &mut [[f32; PANEL_TOKENS]]) {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
                #[inline]
                fn pass<const R: usize>(
                    w: &[$B],
                    bpr: usize,
                    p: &Q8KPanel,
                    out: &mut [[f32; PANEL_TOKENS]],
                ) {
                    let mut acc = [_mm512_setzero_ps(); R];
                    let mut q = [Quants::ZERO; R];
                    let mut sc = [[0i32; 8]; R];
                    let mut mins = [[0i32; 4]; R];
                    let mut a = [_mm512_setzero_si512(); 8];
                    for b in 0..bpr {
                        for i in 0..R {
                            let x = &w[i * bpr + b];
                            // The first panel streams the rows in: ask for them ahead.
                            crate::quant::prefetch_ahead(x);
                            $unpack(x, &mut q[i]);
                            spill(&mut q[i]);
                            let (s, m) = unpack_scale_min_k4(&x.scales);
                            sc[i] = s.map(i32::from);
                            for k in 0..4 {
                                mins[i][k] = pair(m[2 * k] as i16, m[2 * k + 1] as i16);
                            }
                        }
                        spill(&mut sc);
                        spill(&mut mins);
                        let pq = &p.qs[b * GROUPS_K..(b + 1) * GROUPS_K];
                        let mut sumi = [_mm512_setzero_si512(); R];
                        for j in 0..8 {
                            for (k, v) in a.iter_mut().enumerate() {
                                *v = ld(&pq[8 * j + k]);
                            }
                            for i in 0..R {
                                let mut s = _mm512_setzero_si512();
                                for (k, &ak) in a.iter().enumerate() {
                                    s = _mm512_dpbusd_epi32(s, bcast(&q[i], min_offset(j, k)), ak);
                                }
                                let scaled = _mm512_mullo_epi32(s, _mm512_set1_epi32(sc[i][j]));
                                sumi[i] = _mm512_add_epi32(sumi[i], scaled);
                            }
                        }
                        let da = _mm512_castsi512_ps(ld(&p.d[b]));
                        let s32 = &p.sum32[b * 4..b * 4 + 4];
                        for i in 0..R {
                            let x = &w[i * bpr + b];
                            let mut mn = _mm512_setzero_si512();
                            for (k, s) in s32.iter().enumerate() {
                                mn = _mm512_dpwssd_epi32(mn, _mm512_set1_epi32(mins[i][k]), ld(s));
                            }
                            let dd = _mm512_mul_ps(da, _mm512_set1_ps(f16_to_f32(x.d.to_bits())));
                            let dm =
                                _mm512_mul_ps(da, _mm512_set1_ps(f16_to_f32(x.dmin.to_bits())));
                            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[i]), dd, acc[i]);
                            acc[i] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mn), dm, acc[i]);
                        }
                    }
                    for (o, acc) in out.iter_mut().zip(acc) {
                        // SAFETY: `o` is 16 writable f32.
                        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
                    }
                }
                crate::quant::panel::over_rows!(w, p, out, pass, ROWS_PER_PASS)
            }
        };
    }

    min_kernel!(q4k, BlockQ4K, unpack_q4k);
    min_kernel!(q5k, BlockQ5K, unpack_q5k);

    /// Types of 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K). Quants enter unsigned; a type
    /// with an offset (`q - 32`, `q - 4`) starts each sub-block sum at the panel's
    /// `-32·Σa` shifted right by `$shift` (exact: it is a multiple of 32); Q2_K's mins
    /// are a `vpdpwssd` of min pairs with the panel's 16-element sum pairs.
    macro_rules! sub16_kernel {
        (
            $name:ident, $B:ty, $unpack:path, offset $offset:expr, shift $shift:literal,
            scales |$sx:ident| $scales:expr $(, min |$mx:ident| $mins:expr)?
        ) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            pub(crate) fn $name(w: &[$B], p: &Q8KPanel, out: &mut [[f32; PANEL_TOKENS]]) {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
                #[inline]
                fn pass<const R: usize>(
                    w: &[$B],
                    bpr: usize,
                    p: &Q8KPanel,
                    out: &mut [[f32; PANEL_TOKENS]],
                ) {
                    let mut acc = [_mm512_setzero_ps(); R];
                    let mut q = [Quants::ZERO; R];
                    let mut sc = [[0i32; 16]; R];
                    #[allow(unused_mut, unused_variables)]
                    let mut mins = [[0i32; 8]; R];
                    let mut a = [_mm512_setzero_si512(); 4];
                    for b in 0..bpr {
                        for i in 0..R {
                            let x = &w[i * bpr + b];
                            // The first panel streams the rows in: ask for them ahead.
                            crate::quant::prefetch_ahead(x);
                            $unpack(x, &mut q[i]);
                            spill(&mut q[i]);
                            let $sx = x;
                            sc[i] = $scales;
                            $(
                                let $mx = x;
                                let m: [i16; 16] = $mins;
                                for k in 0..8 {
                                    mins[i][k] = pair(m[2 * k], m[2 * k + 1]);
                                }
                            )?
                        }
                        spill(&mut sc);
                        spill(&mut mins);
                        let pq = &p.qs[b * GROUPS_K..(b + 1) * GROUPS_K];
                        let neg = &p.neg32_sum16[b * 16..b * 16 + 16];
                        let mut sumi = [_mm512_setzero_si512(); R];
                        for (s, neg) in neg.iter().enumerate() {
                            for (k, v) in a.iter_mut().enumerate() {
                                *v = ld(&pq[4 * s + k]);
                            }
                            let start = if $offset {
                                _mm512_srai_epi32::<$shift>(ld(neg))
                            } else {
                                _mm512_setzero_si512()
                            };
                            for i in 0..R {
                                let mut t = start;
                                for (k, &ak) in a.iter().enumerate() {
                                    t = _mm512_dpbusd_epi32(t, bcast(&q[i], 16 * s + 4 * k), ak);
                                }
                                let scaled = _mm512_mullo_epi32(t, _mm512_set1_epi32(sc[i][s]));
                                sumi[i] = _mm512_add_epi32(sumi[i], scaled);
                            }
                        }
                        let da = _mm512_castsi512_ps(ld(&p.d[b]));
                        for i in 0..R {
                            let x = &w[i * bpr + b];
                            let dd = _mm512_mul_ps(da, _mm512_set1_ps(f16_to_f32(x.d.to_bits())));
                            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi[i]), dd, acc[i]);
                            $(
                                let _ = stringify!($mx);
                                let s16 = &p.sum16[b * 8..b * 8 + 8];
                                let mut mn = _mm512_setzero_si512();
                                for (k, s) in s16.iter().enumerate() {
                                    mn = _mm512_dpwssd_epi32(mn, _mm512_set1_epi32(mins[i][k]), ld(s));
                                }
                                let dm =
                                    _mm512_mul_ps(da, _mm512_set1_ps(f16_to_f32(x.dmin.to_bits())));
                                acc[i] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mn), dm, acc[i]);
                            )?
                        }
                    }
                    for (o, acc) in out.iter_mut().zip(acc) {
                        // SAFETY: `o` is 16 writable f32.
                        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
                    }
                }
                crate::quant::panel::over_rows!(w, p, out, pass, ROWS_PER_PASS)
            }
        };
    }

    sub16_kernel!(q6k, BlockQ6K, unpack_q6k, offset true, shift 0,
        scales |x| x.scales.map(i32::from));
    sub16_kernel!(q3k, BlockQ3K, super::unpack_q3k, offset true, shift 3,
        scales |x| super::q3k_scales(x).map(i32::from));
    sub16_kernel!(q2k, BlockQ2K, super::unpack_q2k, offset false, shift 0,
        scales |x| x.scales.map(|s| i32::from(s & 0xF)),
        min |x| x.scales.map(|s| i16::from(s >> 4)));
}

/// AVX2: tokens 0..8 and 8..16 as two ymm halves.
pub(crate) mod avx2 {
    use super::*;

    /// Rows a pass keeps in flight.
    const ROWS_PER_PASS: usize = 4;

    /// Half `h` (tokens `8h..8h + 8`) of a panel entry: one aligned 32-byte load.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn ld<T>(l: &Lanes<T>, h: usize) -> __m256i {
        debug_assert!(std::mem::size_of::<Lanes<T>>() == 64 && h < 2);
        // SAFETY: every `Lanes` used here is 64 bytes, 64-aligned; `h` is 0 or 1.
        unsafe { _mm256_load_si256(l.0.as_ptr().cast::<u8>().add(32 * h).cast()) }
    }

    /// Broadcast of scratch bytes `o..o + 4` to every lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn bcast(q: &Quants, o: usize) -> __m256i {
        _mm256_set1_epi32(q.dword(o))
    }

    /// Q4_K nibbles in [`min_offset`] order.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn unpack_q4k(x: &BlockQ4K, q: &mut Quants) {
        let m4 = _mm256_set1_epi8(0x0F);
        for c in 0..4 {
            // SAFETY: `qs` has 128 bytes, `q` 256 (64-aligned).
            unsafe {
                let v = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast());
                let dst = q.0.as_mut_ptr().add(128 * (c / 2) + 32 * (c % 2));
                _mm256_store_si256(dst.cast(), _mm256_and_si256(v, m4));
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                _mm256_store_si256(dst.add(64).cast(), hi);
            }
        }
    }

    /// Q5_K quants (nibble + 16·bit) in [`min_offset`] order; `qh` moves right by two
    /// bits per chunk (16-bit shifts: only bits 0..1 of each byte are read).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn unpack_q5k(x: &BlockQ5K, q: &mut Quants) {
        let m4 = _mm256_set1_epi8(0x0F);
        let bit4 = _mm256_set1_epi8(0x10);
        // SAFETY: `qh` has 32 bytes.
        let mut hbits = unsafe { _mm256_loadu_si256(x.qh.as_ptr().cast()) };
        for c in 0..4 {
            // SAFETY: `qs` has 128 bytes, `q` 256 (64-aligned).
            unsafe {
                let v = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c).cast());
                let h_lo = _mm256_and_si256(_mm256_slli_epi16::<4>(hbits), bit4);
                let h_hi = _mm256_and_si256(_mm256_slli_epi16::<3>(hbits), bit4);
                hbits = _mm256_srli_epi16::<2>(hbits);
                let lo = _mm256_or_si256(_mm256_and_si256(v, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), h_hi);
                let dst = q.0.as_mut_ptr().add(128 * (c / 2) + 32 * (c % 2));
                _mm256_store_si256(dst.cast(), lo);
                _mm256_store_si256(dst.add(64).cast(), hi);
            }
        }
    }

    /// Q6_K quants (0..64) in element order (the single-token kernel's unpack).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn unpack_q6k(x: &BlockQ6K, q: &mut Quants) {
        for n in 0..2 {
            // SAFETY: `ql` has 128 bytes, `qh` 64, `q` 256 (64-aligned).
            unsafe {
                let ql0 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * n).cast());
                let ql1 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * n + 32).cast());
                let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * n).cast());
                let v = super::super::x86::q6k_quants(ql0, ql1, qh);
                for (k, v) in v.into_iter().enumerate() {
                    _mm256_store_si256(q.0.as_mut_ptr().add(128 * n + 32 * k).cast(), v);
                }
            }
        }
    }

    /// Stores the two halves of each row's accumulator.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn store<const R: usize>(acc: &[[__m256; 2]; R], out: &mut [[f32; PANEL_TOKENS]]) {
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 writable f32.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
            }
        }
    }

    /// Q4_K/Q5_K: `$run` groups of four (8 for 0..15 quants, 4 for 0..31) are summed in
    /// i16 before the scale `madd`.
    macro_rules! min_kernel {
        ($name:ident, $B:ty, $unpack:ident, $run:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(crate) fn $name(w: &[$B], p: &Q8KPanel, out: &mut [[f32; PANEL_TOKENS]]) {
                #[target_feature(enable = "avx2,fma,f16c")]
                #[inline]
                fn pass<const R: usize>(
                    w: &[$B],
                    bpr: usize,
                    p: &Q8KPanel,
                    out: &mut [[f32; PANEL_TOKENS]],
                ) {
                    const RUN: usize = $run;
                    let mut acc = [[_mm256_setzero_ps(); 2]; R];
                    let mut q = [Quants::ZERO; R];
                    let mut sc = [[0i32; 8]; R];
                    let mut mins = [[0i32; 4]; R];
                    let mut a = [_mm256_setzero_si256(); 8];
                    for b in 0..bpr {
                        for i in 0..R {
                            let x = &w[i * bpr + b];
                            // The first panel streams the rows in: ask for them ahead.
                            crate::quant::prefetch_ahead(x);
                            $unpack(x, &mut q[i]);
                            spill(&mut q[i]);
                            let (s, m) = unpack_scale_min_k4(&x.scales);
                            for j in 0..8 {
                                sc[i][j] = pair(s[j] as i16, s[j] as i16);
                            }
                            for k in 0..4 {
                                mins[i][k] = pair(m[2 * k] as i16, m[2 * k + 1] as i16);
                            }
                        }
                        spill(&mut sc);
                        spill(&mut mins);
                        let pq = &p.qs[b * GROUPS_K..(b + 1) * GROUPS_K];
                        let s32 = &p.sum32[b * 4..b * 4 + 4];
                        for h in 0..2 {
                            let mut sumi = [_mm256_setzero_si256(); R];
                            for j in 0..8 {
                                for (k, v) in a.iter_mut().enumerate() {
                                    *v = ld(&pq[8 * j + k], h);
                                }
                                for i in 0..R {
                                    let scale = _mm256_set1_epi32(sc[i][j]);
                                    for run in a.chunks_exact(RUN).enumerate() {
                                        let (r0, ar) = run;
                                        let mut s16 = _mm256_setzero_si256();
                                        for (k, &ak) in ar.iter().enumerate() {
                                            let wq = bcast(&q[i], min_offset(j, RUN * r0 + k));
                                            s16 =
                                                _mm256_add_epi16(s16, _mm256_maddubs_epi16(wq, ak));
                                        }
                                        let s = _mm256_madd_epi16(s16, scale);
                                        sumi[i] = _mm256_add_epi32(sumi[i], s);
                                    }
                                }
                            }
                            // SAFETY: `Lanes<f32>` is 64 bytes, 64-aligned; `h` is 0 or 1.
                            let da = unsafe { _mm256_load_ps(p.d[b].0.as_ptr().add(8 * h)) };
                            for i in 0..R {
                                let x = &w[i * bpr + b];
                                let mut mn = _mm256_setzero_si256();
                                for (k, s) in s32.iter().enumerate() {
                                    let m =
                                        _mm256_madd_epi16(_mm256_set1_epi32(mins[i][k]), ld(s, h));
                                    mn = _mm256_add_epi32(mn, m);
                                }
                                let dd =
                                    _mm256_mul_ps(da, _mm256_set1_ps(f16_to_f32(x.d.to_bits())));
                                let dm =
                                    _mm256_mul_ps(da, _mm256_set1_ps(f16_to_f32(x.dmin.to_bits())));
                                let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[i]), dd, acc[i][h]);
                                acc[i][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mn), dm, v);
                            }
                        }
                    }
                    store(&acc, out);
                }
                crate::quant::panel::over_rows!(w, p, out, pass, ROWS_PER_PASS)
            }
        };
    }

    min_kernel!(q4k, BlockQ4K, unpack_q4k, 8);
    min_kernel!(q5k, BlockQ5K, unpack_q5k, 4);

    /// Types of 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K): `$run` groups of four per i16
    /// sum (2 for 0..63 quants, 4 for 0..7); an offset `2^$log2·Σ scale·Σa` taken out
    /// per super-block from the panel's 16-element sum pairs, or Q2_K's min term from
    /// the same pairs.
    macro_rules! sub16_kernel {
        (
            $name:ident, $B:ty, $unpack:path, run $run:expr, offset $offset:expr, log2 $log2:literal,
            scales |$sx:ident| $scales:expr $(, min |$mx:ident| $mins:expr)?
        ) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(crate) fn $name(w: &[$B], p: &Q8KPanel, out: &mut [[f32; PANEL_TOKENS]]) {
                #[target_feature(enable = "avx2,fma,f16c")]
                #[inline]
                fn pass<const R: usize>(
                    w: &[$B],
                    bpr: usize,
                    p: &Q8KPanel,
                    out: &mut [[f32; PANEL_TOKENS]],
                ) {
                    const RUN: usize = $run;
                    let mut acc = [[_mm256_setzero_ps(); 2]; R];
                    let mut q = [Quants::ZERO; R];
                    let mut sc = [[0i32; 16]; R];
                    let mut sc2 = [[0i32; 8]; R];
                    #[allow(unused_mut, unused_variables)]
                    let mut mins = [[0i32; 8]; R];
                    let mut a = [_mm256_setzero_si256(); 4];
                    for b in 0..bpr {
                        for i in 0..R {
                            let x = &w[i * bpr + b];
                            // The first panel streams the rows in: ask for them ahead.
                            crate::quant::prefetch_ahead(x);
                            $unpack(x, &mut q[i]);
                            spill(&mut q[i]);
                            let $sx = x;
                            let s: [i16; 16] = $scales;
                            for k in 0..16 {
                                sc[i][k] = pair(s[k], s[k]);
                            }
                            for k in 0..8 {
                                sc2[i][k] = pair(s[2 * k], s[2 * k + 1]);
                            }
                            $(
                                let $mx = x;
                                let m: [i16; 16] = $mins;
                                for k in 0..8 {
                                    mins[i][k] = pair(m[2 * k], m[2 * k + 1]);
                                }
                            )?
                        }
                        spill(&mut sc);
                        spill(&mut sc2);
                        spill(&mut mins);
                        let pq = &p.qs[b * GROUPS_K..(b + 1) * GROUPS_K];
                        let s16 = &p.sum16[b * 8..b * 8 + 8];
                        // `h` also picks the half of every panel load.
                        #[allow(clippy::needless_range_loop)]
                        for h in 0..2 {
                            let mut sumi = [_mm256_setzero_si256(); R];
                            for s in 0..16 {
                                for (k, v) in a.iter_mut().enumerate() {
                                    *v = ld(&pq[4 * s + k], h);
                                }
                                for i in 0..R {
                                    let scale = _mm256_set1_epi32(sc[i][s]);
                                    for (r0, ar) in a.chunks_exact(RUN).enumerate() {
                                        let mut pairs = _mm256_setzero_si256();
                                        for (k, &ak) in ar.iter().enumerate() {
                                            let wq = bcast(&q[i], 16 * s + 4 * (RUN * r0 + k));
                                            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(wq, ak));
                                        }
                                        let v = _mm256_madd_epi16(pairs, scale);
                                        sumi[i] = _mm256_add_epi32(sumi[i], v);
                                    }
                                }
                            }
                            // SAFETY: `Lanes<f32>` is 64 bytes, 64-aligned; `h` is 0 or 1.
                            let da = unsafe { _mm256_load_ps(p.d[b].0.as_ptr().add(8 * h)) };
                            for i in 0..R {
                                let x = &w[i * bpr + b];
                                let mut sumi = sumi[i];
                                if $offset {
                                    let mut off = _mm256_setzero_si256();
                                    for (k, s) in s16.iter().enumerate() {
                                        let m = _mm256_madd_epi16(_mm256_set1_epi32(sc2[i][k]), ld(s, h));
                                        off = _mm256_add_epi32(off, m);
                                    }
                                    sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<$log2>(off));
                                }
                                let dd = _mm256_mul_ps(da, _mm256_set1_ps(f16_to_f32(x.d.to_bits())));
                                acc[i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), dd, acc[i][h]);
                                $(
                                    let _ = stringify!($mx);
                                    let mut mn = _mm256_setzero_si256();
                                    for (k, s) in s16.iter().enumerate() {
                                        let m = _mm256_madd_epi16(_mm256_set1_epi32(mins[i][k]), ld(s, h));
                                        mn = _mm256_add_epi32(mn, m);
                                    }
                                    let dm =
                                        _mm256_mul_ps(da, _mm256_set1_ps(f16_to_f32(x.dmin.to_bits())));
                                    acc[i][h] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mn), dm, acc[i][h]);
                                )?
                            }
                        }
                    }
                    store(&acc, out);
                }
                crate::quant::panel::over_rows!(w, p, out, pass, ROWS_PER_PASS)
            }
        };
    }

    sub16_kernel!(q6k, BlockQ6K, unpack_q6k, run 2, offset true, log2 5,
        scales |x| x.scales.map(i16::from));
    sub16_kernel!(q3k, BlockQ3K, super::unpack_q3k, run 4, offset true, log2 2,
        scales |x| super::q3k_scales(x).map(i16::from));
    sub16_kernel!(q2k, BlockQ2K, super::unpack_q2k, run 4, offset false, log2 0,
        scales |x| x.scales.map(|s| i16::from(s & 0xF)),
        min |x| x.scales.map(|s| i16::from(s >> 4)));
}
