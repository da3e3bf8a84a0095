//! Weight rows of the legacy 32-element types unpacked once for a whole prompt.
//!
//! The panel kernels unpack a weight block (nibbles, fifth bits, Q8_0's sign flip) each
//! time they meet it, once per 16-token panel: a prompt of 512 tokens unpacks every
//! block 32 times. A matmul over a prompt instead unpacks a group of rows once into
//! [`UnpackedRows`] (32 unsigned bytes and f32 scales per block, block-major so a pass
//! of rows reads one short run per block) and runs every panel over it with one kernel
//! for all five types: the types differ only in the offset taken out (`offset · Σa`,
//! from the panel's per-token sums) or the min added (`m · s`).
//!
//! The integers are those of the panel kernels and the single-token kernels; the float
//! epilogue per block is the panel kernels' (`acc += f32(isum) · (d_a · d_w)`, then
//! `acc += m · s`).

use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

/// One block's 32 unsigned quants, aligned for one vector load.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
pub struct Quants32(pub [u8; 32]);

/// How a type's unsigned quants map back to its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    /// Value `(q - 2^k) · d`: Q4_0 (k = 3), Q5_0 (4), Q8_0 stored as `q + 128` (7).
    Shift(u32),
    /// Value `q · d + m` (Q4_1, Q5_1).
    Min,
}

/// `rows` weight rows of `blocks` blocks each, unpacked.
#[derive(Clone, Debug)]
pub struct UnpackedRows {
    pub rows: usize,
    pub blocks: usize,
    /// `q[b * rows + r]`: block `b` of row `r`.
    pub q: Vec<Quants32>,
    /// `d[b * rows + r]`: the block's scale.
    pub d: Vec<f32>,
    /// `m[b * rows + r]`: the block's min (types with [`Offset::Min`]; empty otherwise).
    pub m: Vec<f32>,
    pub offset: Offset,
    /// Largest quant the type has (15, 31 or 255): bounds the AVX2 kernel's i16 sums.
    pub max_quant: u8,
}

impl Default for UnpackedRows {
    fn default() -> Self {
        UnpackedRows {
            rows: 0,
            blocks: 0,
            q: Vec::new(),
            d: Vec::new(),
            m: Vec::new(),
            offset: Offset::Min,
            max_quant: 0,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl UnpackedRows {
    /// Resizes for `rows` rows of `blocks` blocks (contents unspecified until filled).
    fn reset(&mut self, rows: usize, blocks: usize, offset: Offset, max_quant: u8) {
        let n = rows * blocks;
        self.rows = rows;
        self.blocks = blocks;
        self.q.resize(n, Quants32::default());
        self.d.resize(n, 0.0);
        self.m
            .resize(if offset == Offset::Min { n } else { 0 }, 0.0);
        self.offset = offset;
        self.max_quant = max_quant;
    }
}

/// A legacy weight type that [`UnpackedRows`] can hold.
pub trait Unpackable: Sized {
    const OFFSET: Offset;
    const MAX_QUANT: u8;
}

impl Unpackable for BlockQ4_0 {
    const OFFSET: Offset = Offset::Shift(3);
    const MAX_QUANT: u8 = 15;
}
impl Unpackable for BlockQ4_1 {
    const OFFSET: Offset = Offset::Min;
    const MAX_QUANT: u8 = 15;
}
impl Unpackable for BlockQ5_0 {
    const OFFSET: Offset = Offset::Shift(4);
    const MAX_QUANT: u8 = 31;
}
impl Unpackable for BlockQ5_1 {
    const OFFSET: Offset = Offset::Min;
    const MAX_QUANT: u8 = 31;
}
impl Unpackable for BlockQ8_0 {
    const OFFSET: Offset = Offset::Shift(7);
    const MAX_QUANT: u8 = 255;
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::quant::legacy::x86::{expand_bits, h2f, unpack_nibbles};
    use crate::quant::panel::{Q8Panel, GROUPS};
    use crate::quant::PANEL_TOKENS;

    /// Instantiates one type's unpacker: `$quants(block)` gives the 32 unsigned quants.
    macro_rules! unpacker {
        ($name:ident, $B:ty, |$blk:ident| $quants:expr $(, min |$mb:ident| $min:expr)?) => {
            /// Unpacks `w` (`w.len() / bpr` rows of `bpr` blocks) into `out`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub fn $name(w: &[$B], bpr: usize, out: &mut UnpackedRows) {
                assert!(bpr > 0 && w.len().is_multiple_of(bpr), "whole rows");
                let rows = w.len() / bpr;
                out.reset(rows, bpr, <$B>::OFFSET, <$B>::MAX_QUANT);
                for (r, row) in w.chunks_exact(bpr).enumerate() {
                    for (b, $blk) in row.iter().enumerate() {
                        // The weights stream in once per matmul: ask for them ahead
                        // (the loads were latency-bound, ~10% of a 128-token prompt).
                        crate::quant::prefetch_ahead($blk);
                        let i = b * rows + r;
                        let q: __m256i = $quants;
                        // SAFETY: `Quants32` is 32 writable, 32-byte aligned bytes.
                        unsafe { _mm256_store_si256(out.q[i].0.as_mut_ptr().cast(), q) };
                        out.d[i] = h2f($blk.d);
                        $(
                            let $mb = $blk;
                            out.m[i] = h2f($min);
                        )?
                    }
                }
            }
        };
    }

    /// 32 packed 4-bit quants plus their fifth bits (`qh` bit j for element j) as 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn five_bits(qs: &[u8; 16], qh: &[u8; 4]) -> __m256i {
        let high = _mm256_and_si256(expand_bits(qh), _mm256_set1_epi8(16));
        _mm256_or_si256(unpack_nibbles(qs), high)
    }

    /// Q8_0 quants as `q + 128`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn flipped(qs: &[i8; 32]) -> __m256i {
        // SAFETY: `qs` is 32 readable bytes; unaligned load.
        let q = unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) };
        _mm256_xor_si256(q, _mm256_set1_epi8(0x80u8 as i8))
    }

    unpacker!(unpack_q4_0, BlockQ4_0, |x| unpack_nibbles(&x.qs));
    unpacker!(
        unpack_q4_1,
        BlockQ4_1,
        |x| unpack_nibbles(&x.qs),
        min | x | x.m
    );
    unpacker!(unpack_q5_0, BlockQ5_0, |x| five_bits(&x.qs, &x.qh));
    unpacker!(
        unpack_q5_1,
        BlockQ5_1,
        |x| five_bits(&x.qs, &x.qh),
        min | x | x.m
    );
    unpacker!(unpack_q8_0, BlockQ8_0, |x| flipped(&x.qs));

    /// Checks the shapes every kernel relies on.
    fn check(u: &UnpackedRows, p: &Q8Panel, out: &[[f32; PANEL_TOKENS]]) {
        assert_eq!(out.len(), u.rows, "one output row per weight row");
        assert_eq!(p.blocks(), u.blocks, "panel and rows differ in length");
        assert!(
            p.qs.len() == p.blocks() * GROUPS
                && p.s.len() == p.blocks()
                && p.sum.len() == p.blocks(),
            "panel parts differ in length"
        );
        assert_eq!(u.q.len(), u.rows * u.blocks, "unpacked size");
        assert_eq!(u.d.len(), u.q.len(), "unpacked scales");
        if u.offset == Offset::Min {
            assert_eq!(u.m.len(), u.q.len(), "unpacked mins");
        }
    }

    /// Blocks of a row per sweep over the rows: the panel's part for them (about 11 KB)
    /// stays in L1 while every row passes over it; each row's accumulators carry over
    /// to the next sweep through `out`, so the sum is the same, in the same order.
    const K_BLOCKS: usize = 16;

    /// Group `g` (four quants) of one block as one little-endian word.
    #[inline(always)]
    fn group(q: &[u8; 32], g: usize) -> i32 {
        i32::from_le_bytes([q[4 * g], q[4 * g + 1], q[4 * g + 2], q[4 * g + 3]])
    }

    /// AVX-512 VNNI: four rows per pass, one zmm of 16 token lanes per row; each group
    /// of four weight bytes is broadcast from memory and `vpdpbusd`-ed with the panel.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub fn panel_dot_vnni(u: &UnpackedRows, p: &Q8Panel, out: &mut [[f32; PANEL_TOKENS]]) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        #[inline]
        fn pass<const R: usize>(
            u: &UnpackedRows,
            r0: usize,
            p: &Q8Panel,
            blocks: std::ops::Range<usize>,
            out: &mut [[f32; PANEL_TOKENS]],
        ) {
            let mut acc = [_mm512_setzero_ps(); R];
            if blocks.start > 0 {
                for (a, o) in acc.iter_mut().zip(&out[r0..r0 + R]) {
                    // SAFETY: `o` is 16 readable f32.
                    *a = unsafe { _mm512_loadu_ps(o.as_ptr()) };
                }
            }
            assert!(
                r0 + R <= u.rows && blocks.end <= u.blocks,
                "rows and blocks in range"
            );
            for b in blocks {
                // SAFETY (all panel loads): `Lanes` entries are 64 aligned bytes, and
                // `check` keeps block `b`'s entries in bounds (unchecked: innermost loop).
                let qs = unsafe { p.qs.as_ptr().add(b * GROUPS) };
                let a: [__m512i; GROUPS] = std::array::from_fn(|g| unsafe {
                    _mm512_load_si512((*qs.add(g)).0.as_ptr().cast())
                });
                let da = unsafe { _mm512_load_ps((*p.d.as_ptr().add(b)).0.as_ptr()) };
                let base = match u.offset {
                    Offset::Shift(k) => {
                        let sum = unsafe {
                            _mm512_load_si512((*p.sum.as_ptr().add(b)).0.as_ptr().cast())
                        };
                        _mm512_sub_epi32(
                            _mm512_setzero_si512(),
                            _mm512_sll_epi32(sum, _mm_cvtsi32_si128(k as i32)),
                        )
                    }
                    Offset::Min => _mm512_setzero_si512(),
                };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row `r0 + i` of block `b` is in bounds (assert above).
                    let at = b * u.rows + r0 + i;
                    let q = unsafe { &(*u.q.as_ptr().add(at)).0 };
                    let mut s = base;
                    for (g, a) in a.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, _mm512_set1_epi32(group(q, g)), *a);
                    }
                    let dw = _mm512_set1_ps(unsafe { *u.d.as_ptr().add(at) });
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(da, dw), *acc);
                    if u.offset == Offset::Min {
                        // SAFETY: as above (`check`: the mins are as long as the quants).
                        let m = _mm512_set1_ps(unsafe { *u.m.as_ptr().add(at) });
                        let sa = unsafe { _mm512_load_ps((*p.s.as_ptr().add(b)).0.as_ptr()) };
                        *acc = _mm512_fmadd_ps(m, sa, *acc);
                    }
                }
            }
            for (o, acc) in out[r0..r0 + R].iter_mut().zip(acc) {
                // SAFETY: `o` is 16 writable f32.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
            }
        }
        check(u, p, out);
        for k0 in (0..u.blocks).step_by(K_BLOCKS) {
            let blocks = k0..(k0 + K_BLOCKS).min(u.blocks);
            let mut r = 0;
            while r + 4 <= u.rows {
                pass::<4>(u, r, p, blocks.clone(), out);
                r += 4;
            }
            while r < u.rows {
                pass::<1>(u, r, p, blocks.clone(), out);
                r += 1;
            }
        }
    }

    /// Whether [`panel_dot_avx2`] takes these rows: its i16 sums hold 4- and 5-bit
    /// quants only (Q8_0 keeps its sign-trick panel kernel).
    pub fn avx2_takes(u: &UnpackedRows) -> bool {
        avx2_takes_quants(u.max_quant)
    }

    /// [`avx2_takes`] for a type whose largest quant is `max_quant`.
    pub const fn avx2_takes_quants(max_quant: u8) -> bool {
        max_quant <= 31
    }

    /// AVX2: eight rows per pass, tokens 0..8 and 8..16 as two ymm halves; `maddubs`
    /// (u8 × i8 → i16 pairs) and `madd` with ones stand in for `vpdpbusd`. A pair is at
    /// most 2·31·127 = 7874, so four groups fit an i16 sum, and all eight for 4-bit
    /// quants (2·15·127 = 3810 a pair).
    ///
    /// The offset kind and the quant width are type parameters of the inner loops, not
    /// run-time tests: with sixteen ymm registers the loops only stay free of spills and
    /// branches when each instance does one thing.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn panel_dot_avx2(u: &UnpackedRows, p: &Q8Panel, out: &mut [[f32; PANEL_TOKENS]]) {
        check(u, p, out);
        assert!(
            avx2_takes(u),
            "quants above 31 overflow the AVX2 kernel's i16 sums"
        );
        let four_bit = u.max_quant <= 15;
        match (u.offset, four_bit) {
            (Offset::Min, true) => avx2_sweeps::<true, true>(u, p, 0, out),
            (Offset::Min, false) => avx2_sweeps::<true, false>(u, p, 0, out),
            (Offset::Shift(k), true) => avx2_sweeps::<false, true>(u, p, k, out),
            (Offset::Shift(k), false) => avx2_sweeps::<false, false>(u, p, k, out),
        }
    }

    /// [`panel_dot_avx2`] for one offset kind (`MIN`: a min per block, else a shift of
    /// `shift` bits) and quant width (`FOUR_BIT`: eight groups per i16 sum, else four).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn avx2_sweeps<const MIN: bool, const FOUR_BIT: bool>(
        u: &UnpackedRows,
        p: &Q8Panel,
        shift: u32,
        out: &mut [[f32; PANEL_TOKENS]],
    ) {
        for k0 in (0..u.blocks).step_by(K_BLOCKS) {
            let blocks = k0..(k0 + K_BLOCKS).min(u.blocks);
            let mut r = 0;
            // Eight rows share each activation load (measured: 2 rows 90, 4 rows 100,
            // 8 rows 104 GMAC/s on one thread).
            while r + 8 <= u.rows {
                avx2_pass::<8, MIN, FOUR_BIT>(u, r, p, shift, blocks.clone(), out);
                r += 8;
            }
            while r + 4 <= u.rows {
                avx2_pass::<4, MIN, FOUR_BIT>(u, r, p, shift, blocks.clone(), out);
                r += 4;
            }
            while r < u.rows {
                avx2_pass::<1, MIN, FOUR_BIT>(u, r, p, shift, blocks.clone(), out);
                r += 1;
            }
        }
    }

    /// Rows `r0..r0 + R` over `blocks`, accumulating into `out` (which holds the sums of
    /// the earlier blocks when `blocks` does not start at 0).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn avx2_pass<const R: usize, const MIN: bool, const FOUR_BIT: bool>(
        u: &UnpackedRows,
        r0: usize,
        p: &Q8Panel,
        shift: u32,
        blocks: std::ops::Range<usize>,
        out: &mut [[f32; PANEL_TOKENS]],
    ) {
        assert!(
            r0 + R <= u.rows && blocks.end <= u.blocks,
            "rows and blocks in range"
        );
        // One accumulator per row for each half of the tokens.
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        if blocks.start > 0 {
            for i in 0..R {
                // SAFETY: `out[r0 + i]` is 16 readable f32.
                unsafe {
                    lo[i] = _mm256_loadu_ps(out[r0 + i].as_ptr());
                    hi[i] = _mm256_loadu_ps(out[r0 + i].as_ptr().add(8));
                }
            }
        }
        // One half of the tokens after the other: a block's weight broadcasts are not
        // shared between the halves (holding them would spill), and the sweep's weights
        // are still in L1 for the second half.
        for (h, acc) in [(0, &mut lo), (1, &mut hi)] {
            for b in blocks.clone() {
                // SAFETY: `check` and the assert above keep every index below in bounds:
                // block `b` of rows `r0..r0 + R` is `b * rows + r0 + i` < rows · blocks.
                unsafe {
                    let at = b * u.rows + r0;
                    let q = u.q.as_ptr().add(at);
                    let d = u.d.as_ptr().add(at);
                    let m = if MIN { u.m.as_ptr().add(at) } else { d };
                    avx2_half::<R, MIN, FOUR_BIT>(p, b, h, shift, q, d, m, acc);
                }
            }
        }
        for i in 0..R {
            // SAFETY: `out[r0 + i]` is 16 writable f32.
            unsafe {
                _mm256_storeu_ps(out[r0 + i].as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(out[r0 + i].as_mut_ptr().add(8), hi[i]);
            }
        }
    }

    /// One block of `R` rows against the tokens of half `h` (0: tokens 0..8, 1: 8..16).
    ///
    /// # Safety
    /// AVX2, FMA; `q`, `d` (and `m` when `MIN`) point at `R` readable entries; `b` is a
    /// block of the panel (`b < p.blocks()`, with `p.s` filled when `MIN`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_half<const R: usize, const MIN: bool, const FOUR_BIT: bool>(
        p: &Q8Panel,
        b: usize,
        h: usize,
        shift: u32,
        q: *const Quants32,
        d: *const f32,
        m: *const f32,
        acc: &mut [__m256; R],
    ) {
        // SAFETY (panel loads): 32 of the 64 aligned bytes of each `Lanes` entry of
        // block `b` (the caller's bounds; unchecked here, as this is the innermost loop).
        let qs = unsafe { p.qs.as_ptr().add(b * GROUPS) };
        let a: [__m256i; GROUPS] = std::array::from_fn(|g| unsafe {
            _mm256_load_si256((*qs.add(g)).0.as_ptr().add(8 * h).cast())
        });
        let da = unsafe { _mm256_load_ps((*p.d.as_ptr().add(b)).0.as_ptr().add(8 * h)) };
        let base = if MIN {
            _mm256_setzero_si256()
        } else {
            let sum =
                unsafe { _mm256_load_si256((*p.sum.as_ptr().add(b)).0.as_ptr().add(8 * h).cast()) };
            _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_sll_epi32(sum, _mm_cvtsi32_si128(shift as i32)),
            )
        };
        let ones = _mm256_set1_epi16(1);
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `q.add(i)` is a readable block of quants.
            let qi = unsafe { &(*q.add(i)).0 };
            // Group `g`'s four weight bytes in every lane (a broadcast load).
            let w = |g: usize| _mm256_set1_epi32(group(qi, g));
            // i16 sums of `n` groups from `g0`, widened to i32.
            let groups = |g0: usize, n: usize| {
                let mut s = _mm256_maddubs_epi16(w(g0), a[g0]);
                for (g, ag) in a.iter().enumerate().skip(g0 + 1).take(n - 1) {
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w(g), *ag));
                }
                _mm256_madd_epi16(s, ones)
            };
            let dot = if FOUR_BIT {
                groups(0, GROUPS)
            } else {
                _mm256_add_epi32(groups(0, 4), groups(4, 4))
            };
            let s = _mm256_add_epi32(base, dot);
            let dw = _mm256_set1_ps(unsafe { *d.add(i) });
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(da, dw), *acc);
            if MIN {
                let mi = _mm256_set1_ps(unsafe { *m.add(i) });
                let sa = unsafe { _mm256_load_ps((*p.s.as_ptr().add(b)).0.as_ptr().add(8 * h)) };
                *acc = _mm256_fmadd_ps(mi, sa, *acc);
            }
        }
    }
}
