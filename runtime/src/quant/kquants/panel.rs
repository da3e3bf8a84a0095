//! Activation panels for the K-quant prompt kernels: the Q8_K activations of up to
//! [`PANEL_TOKENS`] tokens laid out one token per 32-bit lane, and the kernel dispatch.
//!
//! A kernel broadcasts four unsigned weight bytes to every lane and multiplies them with
//! four activation bytes of each of sixteen tokens (`vpdpbusd`, or `maddubs` on AVX2):
//! every lane accumulates its own token's exact integer dot product per sub-block, and
//! the scale epilogue runs once for sixteen tokens. The panel also holds the per-token
//! activation sums that the weight types' offsets need (Q2_K/Q4_K/Q5_K mins, the `-32`
//! and `-4` of Q6_K and Q3_K), so those corrections cost a few lane-wise multiply-adds
//! per row and super-block.

use super::{BlockQ8K, QK_K};
use crate::quant::panel::Lanes;
use crate::quant::PANEL_TOKENS;

/// Groups of four activation bytes per super-block.
pub const GROUPS_K: usize = QK_K / 4;

/// Q8_K activations of up to 16 tokens. The sums come from the blocks' `bsums` (the
/// sums of their quants, as every Q8_K producer writes them).
#[derive(Clone, Debug, Default)]
pub struct Q8KPanel {
    /// Per super-block, [`GROUPS_K`] entries: entry `g` holds elements `4g..4g + 4` of
    /// every token.
    pub qs: Vec<Lanes<[i8; 4]>>,
    /// Per super-block: every token's scale `d`.
    pub d: Vec<Lanes<f32>>,
    /// Per super-block, 8 entries: entry `k` holds every token's sums of the 16-element
    /// runs `2k` and `2k + 1` as an i16 pair (each at most 16·128 in magnitude), for the
    /// Q2_K min terms and the AVX2 Q3_K/Q6_K offsets.
    pub sum16: Vec<Lanes<[i16; 2]>>,
    /// Per super-block, 4 entries: entry `k` holds every token's sums of the 32-element
    /// sub-blocks `2k` and `2k + 1` as an i16 pair (each at most 32·128), for the
    /// Q4_K/Q5_K min terms (`vpmaddwd` with a pair of mins).
    pub sum32: Vec<Lanes<[i16; 2]>>,
    /// Per super-block, 16 entries: entry `s` holds every token's `-32 · Σ` of the
    /// 16-element run `s`: the starting value of a Q6_K sub-block sum (Q3_K's, shifted
    /// right by 3).
    pub neg32_sum16: Vec<Lanes<i32>>,
    /// Tokens present (the other lanes are zeros).
    pub tokens: usize,
}

impl Q8KPanel {
    /// Super-blocks per token row.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Transposes `rows` (one quantized row per token, equal lengths) into lanes.
    ///
    /// Panics unless there are 1..=16 rows of equal length (a caller bug).
    pub fn build(rows: &[&[BlockQ8K]]) -> Self {
        #[cfg(target_arch = "x86_64")]
        let simd = crate::quant::KernelPath::Avx2.is_supported();
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        Self::build_with(rows, simd)
    }

    /// [`Self::build`], transposing the quants with AVX2 when `simd` is set (which the
    /// caller has checked this CPU supports).
    fn build_with(rows: &[&[BlockQ8K]], simd: bool) -> Self {
        let blocks = crate::quant::panel::panel_shape(rows);
        let mut p = Q8KPanel {
            qs: vec![Lanes::default(); blocks * GROUPS_K],
            d: vec![Lanes::default(); blocks],
            sum16: vec![Lanes::default(); blocks * 8],
            sum32: vec![Lanes::default(); blocks * 4],
            neg32_sum16: vec![Lanes::default(); blocks * 16],
            tokens: rows.len(),
        };
        if simd {
            #[cfg(target_arch = "x86_64")]
            for (b, qs) in p.qs.chunks_exact_mut(GROUPS_K).enumerate() {
                // SAFETY: AVX2 was just detected.
                unsafe { x86::transpose_qs(rows, b, qs) };
            }
        }
        // `take` tells the optimizer that `t` < 16 (no bounds check per byte group).
        for (t, row) in rows.iter().enumerate().take(PANEL_TOKENS) {
            for (b, block) in row.iter().enumerate() {
                p.d[b].0[t] = block.d;
                if !simd {
                    let qs = &mut p.qs[b * GROUPS_K..(b + 1) * GROUPS_K];
                    let (groups, _) = block.qs.as_chunks::<4>();
                    for (lanes, group) in qs.iter_mut().zip(groups) {
                        lanes.0[t] = *group;
                    }
                }
                let s16 = block.bsums.map(i32::from);
                for k in 0..8 {
                    p.sum16[b * 8 + k].0[t] = [s16[2 * k] as i16, s16[2 * k + 1] as i16];
                }
                for k in 0..4 {
                    let s32 = |j: usize| (s16[2 * j] + s16[2 * j + 1]) as i16;
                    p.sum32[b * 4 + k].0[t] = [s32(2 * k), s32(2 * k + 1)];
                }
                for (s, &v) in s16.iter().enumerate() {
                    p.neg32_sum16[b * 16 + s].0[t] = -32 * v;
                }
            }
        }
        p
    }

    /// Token `t`'s row as Q8_K blocks again.
    pub fn token_row(&self, t: usize) -> Vec<BlockQ8K> {
        (0..self.blocks())
            .map(|b| {
                let mut blk = BlockQ8K {
                    d: self.d[b].0[t],
                    ..BlockQ8K::default()
                };
                for g in 0..GROUPS_K {
                    blk.qs[4 * g..4 * g + 4].copy_from_slice(&self.qs[b * GROUPS_K + g].0[t]);
                }
                for k in 0..8 {
                    let [lo, hi] = self.sum16[b * 8 + k].0[t];
                    blk.bsums[2 * k] = lo;
                    blk.bsums[2 * k + 1] = hi;
                }
                blk
            })
            .collect()
    }
}

/// The byte transpose of [`Q8KPanel::build`] with AVX2: 8×8 blocks of dwords (eight
/// tokens by eight groups of four) in 24 shuffles instead of 64 scalar copies.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockQ8K, Lanes, GROUPS_K};

    /// Rows of eight dwords to columns.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
        // Pairs of rows interleaved by dword, then by qword: u[k] holds column k (low
        // lane) and column k + 4 (high lane) of four rows.
        let t = [
            _mm256_unpacklo_epi32(r[0], r[1]),
            _mm256_unpackhi_epi32(r[0], r[1]),
            _mm256_unpacklo_epi32(r[2], r[3]),
            _mm256_unpackhi_epi32(r[2], r[3]),
            _mm256_unpacklo_epi32(r[4], r[5]),
            _mm256_unpackhi_epi32(r[4], r[5]),
            _mm256_unpacklo_epi32(r[6], r[7]),
            _mm256_unpackhi_epi32(r[6], r[7]),
        ];
        let u = [
            _mm256_unpacklo_epi64(t[0], t[2]),
            _mm256_unpackhi_epi64(t[0], t[2]),
            _mm256_unpacklo_epi64(t[1], t[3]),
            _mm256_unpackhi_epi64(t[1], t[3]),
            _mm256_unpacklo_epi64(t[4], t[6]),
            _mm256_unpackhi_epi64(t[4], t[6]),
            _mm256_unpacklo_epi64(t[5], t[7]),
            _mm256_unpackhi_epi64(t[5], t[7]),
        ];
        [
            _mm256_permute2x128_si256::<0x20>(u[0], u[4]),
            _mm256_permute2x128_si256::<0x20>(u[1], u[5]),
            _mm256_permute2x128_si256::<0x20>(u[2], u[6]),
            _mm256_permute2x128_si256::<0x20>(u[3], u[7]),
            _mm256_permute2x128_si256::<0x31>(u[0], u[4]),
            _mm256_permute2x128_si256::<0x31>(u[1], u[5]),
            _mm256_permute2x128_si256::<0x31>(u[2], u[6]),
            _mm256_permute2x128_si256::<0x31>(u[3], u[7]),
        ]
    }

    /// Fills super-block `b`'s [`GROUPS_K`] entries from the tokens' quants; tokens past
    /// the last row stay zero.
    #[target_feature(enable = "avx2")]
    pub(super) fn transpose_qs(rows: &[&[BlockQ8K]], b: usize, qs: &mut [Lanes<[i8; 4]>]) {
        assert_eq!(qs.len(), GROUPS_K);
        for (h, half) in rows.chunks(8).enumerate() {
            for o in 0..GROUPS_K / 8 {
                let mut r = [_mm256_setzero_si256(); 8];
                for (v, row) in r.iter_mut().zip(half) {
                    // SAFETY: `qs` has 256 bytes; `o` < 8.
                    *v = unsafe { _mm256_loadu_si256(row[b].qs.as_ptr().add(32 * o).cast()) };
                }
                for (k, v) in transpose8(r).into_iter().enumerate() {
                    let dst = &mut qs[8 * o + k];
                    // SAFETY: a `Lanes` is 64 bytes, 64-aligned; `h` < 2 (16 tokens at most).
                    unsafe {
                        let p = dst.0.as_mut_ptr().cast::<u8>().add(32 * h);
                        _mm256_store_si256(p.cast(), v);
                    }
                }
            }
        }
    }
}

/// Checks the shapes every panel kernel relies on (whole rows of the panel's length)
/// and answers zero-length rows, whose dot products are all zero. Returns whether a
/// kernel has work to do.
#[inline]
pub(crate) fn check_shape(w_blocks: usize, p: &Q8KPanel, out: &mut [[f32; PANEL_TOKENS]]) -> bool {
    crate::quant::panel::check_rows(w_blocks, p.blocks(), out)
}

/// Dispatches a type's panel product to its kernel on `path` (the portable rule on the
/// scalar path).
macro_rules! panel_dispatch {
    ($kernel:ident) => {
        fn panel_dot(
            path: KernelPath,
            w: &[Self],
            panel: &super::panel::Q8KPanel,
            out: &mut [[f32; crate::quant::PANEL_TOKENS]],
        ) {
            debug_assert!(path.is_supported());
            match path {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the caller checked that this CPU supports `path`.
                KernelPath::Avx512Vnni => unsafe { super::panel_x86::vnni::$kernel(w, panel, out) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                KernelPath::Avx2 => unsafe { super::panel_x86::avx2::$kernel(w, panel, out) },
                _ => super::panel_scalar::panel_dot(w, panel, out),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ActBlock;

    #[test]
    fn lanes_hold_each_tokens_quants_and_sums() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let rows: Vec<Vec<BlockQ8K>> = (0..13)
            .map(|_| {
                let x: Vec<f32> = (0..2 * QK_K)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                    })
                    .collect();
                let mut a = vec![BlockQ8K::default(); 2];
                BlockQ8K::quantize_row(&x, &mut a);
                a
            })
            .collect();
        let refs: Vec<&[BlockQ8K]> = rows.iter().map(Vec::as_slice).collect();
        let p = BlockQ8K::build_panel(&refs);
        assert_eq!((p.blocks(), p.tokens), (2, 13));
        for (t, row) in rows.iter().enumerate() {
            assert_eq!(&p.token_row(t), row, "token {t} round trip");
            for (b, blk) in row.iter().enumerate() {
                for s in 0..16 {
                    assert_eq!(p.neg32_sum16[b * 16 + s].0[t], -32 * blk.bsums[s] as i32);
                }
                for j in 0..8 {
                    let s32 = blk.bsums[2 * j] + blk.bsums[2 * j + 1];
                    assert_eq!(p.sum32[b * 4 + j / 2].0[t][j % 2], s32);
                }
            }
        }
        // The portable transpose gives the same panel.
        let portable = Q8KPanel::build_with(&refs, false);
        assert_eq!(portable.qs, p.qs);
        assert_eq!((portable.d, portable.sum16), (p.d.clone(), p.sum16.clone()));
        // Missing tokens are zeros, so they add nothing to any lane.
        assert!(p.qs.iter().all(|l| l.0[13..].iter().all(|v| *v == [0; 4])));
        assert!(p.d.iter().all(|l| l.0[13..].iter().all(|&v| v == 0.0)));
        assert!(p
            .sum32
            .iter()
            .all(|l| l.0[13..].iter().all(|v| *v == [0; 2])));
    }
}
