//! Q3_K: 3.4375 bits per weight; 16 sub-blocks of 16 with signed 6-bit scales.

use half::f16;
use smq_format::GgmlType;

use super::panel_scalar::{PanelBlock, Runs};
use super::{check_row_lengths, pod_block, BlockQ8K, QK_K};
use crate::quant::{KernelPath, WeightBlock};

/// ggml's `block_q3_K`: `w = d*(s_i-32)*q` with `q` in -4..4.
///
/// Element `128c+32s+l` (c in 0..2, s in 0..4, l in 0..32) has low bits
/// `(qs[32c+l] >> 2s) & 3` and high bit `(hmask[l] >> (4c+s)) & 1`; `q` is the low
/// bits minus 4 when the high bit is clear. It is in sub-block `(128c+32s+l)/16`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    /// 16 six-bit scales: low nibbles in bytes 0..8 (sub-blocks 0..8 in the low
    /// nibble, 8..16 in the high one), top 2 bits in bytes 8..12.
    pub scales: [u8; 12],
    pub d: f16,
}
pod_block!(BlockQ3K, 110);

impl BlockQ3K {
    /// The 16 sub-block scales, offset to -32..32.
    fn unpack_scales(&self) -> [i8; 16] {
        let s = &self.scales;
        std::array::from_fn(|i| {
            let low = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
            let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }

    /// Signed quant (-4..4) of element `i`.
    #[inline(always)]
    fn quant(&self, i: usize) -> i8 {
        let (c, r) = (i / 128, i % 128);
        let (s, l) = (r / 32, r % 32);
        let low = ((self.qs[32 * c + l] >> (2 * s)) & 3) as i8;
        let high = (self.hmask[l] >> (4 * c + s)) & 1;
        if high == 1 {
            low
        } else {
            low - 4
        }
    }
}

impl PanelBlock for BlockQ3K {
    fn runs(&self) -> Runs {
        Runs {
            q: std::array::from_fn(|i| self.quant(i)),
            scales: self.unpack_scales().map(i32::from),
            mins: [0; 16],
            d: self.d,
            dmin: None,
        }
    }
}

impl WeightBlock for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3K;
    const BLOCK_ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let out = &mut out[..QK_K];
        let d = self.d.to_f32();
        let sc = self.unpack_scales();
        for (i, y) in out.iter_mut().enumerate() {
            let dl = d * sc[i / 16] as f32;
            *y = dl * self.quant(i) as f32;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        check_row_lengths(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let sc = x.unpack_scales();
            let mut sumi = 0i32;
            for (s, &scale) in sc.iter().enumerate() {
                let dot: i32 = (16 * s..16 * s + 16)
                    .map(|i| x.quant(i) as i32 * y.qs[i] as i32)
                    .sum();
                sumi += scale as i32 * dot;
            }
            sum += y.d * x.d.to_f32() * sumi as f32;
        }
        sum
    }

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8K]) -> f32 {
        dispatch!(path, w, a)
    }

    panel_dispatch!(q3k);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{ctrl_pair, f16_to_f32, hsum_ps, load256};
    use super::{BlockQ3K, BlockQ8K};

    /// The 16 scales (already minus 32) as i8 lanes, unpacked four at a time in u32s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn unpack_scales(s: &[u8; 12]) -> __m128i {
        let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
        let a2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
        let lo = 0x0f0f_0f0f;
        let hi = 0x0303_0303;
        let v = _mm_setr_epi32(
            ((a0 & lo) | ((a2 & hi) << 4)) as i32,
            ((a1 & lo) | (((a2 >> 2) & hi) << 4)) as i32,
            (((a0 >> 4) & lo) | (((a2 >> 4) & hi) << 4)) as i32,
            (((a1 >> 4) & lo) | (((a2 >> 6) & hi) << 4)) as i32,
        );
        _mm_sub_epi8(v, _mm_set1_epi8(32))
    }

    /// Quants are made unsigned as `q + 4` (0..8: low bits plus 4 when the high bit is
    /// set) so one `maddubs` does the multiply; the `-4` comes back once per
    /// super-block as `4·Σ scale·bsum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn vec_dot(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let bit2 = _mm256_set1_epi8(4);
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            crate::quant::prefetch_ahead(x);
            let d = _mm256_set1_ps(y.d * f16_to_f32(x.d.to_bits()));
            let sc8 = unpack_scales(&x.scales);
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let bs = load256(y.bsums.as_ptr());
            let offset = _mm256_madd_epi16(bs, sc16);
            let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<2>(offset));
            // Scales of sub-blocks 0..8 and 8..16, each group in both 128-bit lanes.
            let sc_halves = [
                _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                _mm256_permute2x128_si256::<0x11>(sc16, sc16),
            ];
            // hmask is shifted right once per 32 elements so the current bit is bit 0.
            let mut hbits = load256(x.hmask.as_ptr());
            for (c, &sc) in sc_halves.iter().enumerate() {
                let mut qv = load256(x.qs.as_ptr().add(32 * c));
                for s in 0..4 {
                    let h = _mm256_and_si256(_mm256_slli_epi16::<2>(hbits), bit2);
                    hbits = _mm256_srli_epi16::<1>(hbits);
                    let q = _mm256_or_si256(_mm256_and_si256(qv, m3), h);
                    qv = _mm256_srli_epi16::<2>(qv);
                    let av = load256(y.qs.as_ptr().add(128 * c + 32 * s));
                    let p = _mm256_maddubs_epi16(q, av);
                    let p = _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, ctrl_pair(s)));
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc)
    }
}
