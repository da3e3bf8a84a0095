//! Q4_K: 4.5 bits per weight; 8 sub-blocks of 32 with 6-bit scales and mins.

use half::f16;
use smq_format::GgmlType;

use super::panel_scalar::{PanelBlock, Runs};
use super::{check_row_lengths, pod_block, unpack_scale_min_k4, BlockQ8K, QK_K};
use crate::quant::{KernelPath, WeightBlock};

/// ggml's `block_q4_K`: `w = d*sc_j*q - dmin*m_j` with `q` in 0..16.
///
/// `qs` holds 4 chunks of 32 bytes; chunk `c` covers elements `64c..64c+64`: the low
/// nibble of byte `32c+l` is element `64c+l` (sub-block `2c`), the high nibble element
/// `64c+32+l` (sub-block `2c+1`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    /// Packed 6-bit scales and mins (see [`unpack_scale_min_k4`]).
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
pod_block!(BlockQ4K, 144);

impl PanelBlock for BlockQ4K {
    fn runs(&self) -> Runs {
        let (sc, m) = unpack_scale_min_k4(&self.scales);
        Runs {
            // Chunk c: low nibbles are elements 64c.., high nibbles 64c + 32...
            q: std::array::from_fn(|i| {
                let (c, half, l) = (i / 64, i / 32 % 2, i % 32);
                ((self.qs[32 * c + l] >> (4 * half)) & 0xF) as i8
            }),
            scales: std::array::from_fn(|s| i32::from(sc[s / 2])),
            mins: std::array::from_fn(|s| i32::from(m[s / 2])),
            d: self.d,
            dmin: Some(self.dmin),
        }
    }
}

impl WeightBlock for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const BLOCK_ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let out = &mut out[..QK_K];
        let d = self.d.to_f32();
        let dmin = self.dmin.to_f32();
        let (sc, m) = unpack_scale_min_k4(&self.scales);
        for c in 0..4 {
            let q = &self.qs[32 * c..32 * c + 32];
            for (half, shift) in [(0usize, 0u32), (1, 4)] {
                let j = 2 * c + half;
                let dl = d * sc[j] as f32;
                let ml = dmin * m[j] as f32;
                let o = &mut out[64 * c + 32 * half..64 * c + 32 * half + 32];
                for (y, &b) in o.iter_mut().zip(q) {
                    *y = dl * ((b >> shift) & 0xF) as f32 - ml;
                }
            }
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        check_row_lengths(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let (sc, m) = unpack_scale_min_k4(&x.scales);
            let mut sumi = 0i32;
            for c in 0..4 {
                let q = &x.qs[32 * c..32 * c + 32];
                let lo = &y.qs[64 * c..64 * c + 32];
                let hi = &y.qs[64 * c + 32..64 * c + 64];
                let mut dot_lo = 0i32;
                let mut dot_hi = 0i32;
                for l in 0..32 {
                    dot_lo += (q[l] & 0xF) as i32 * lo[l] as i32;
                    dot_hi += (q[l] >> 4) as i32 * hi[l] as i32;
                }
                sumi += sc[2 * c] as i32 * dot_lo + sc[2 * c + 1] as i32 * dot_hi;
            }
            // The min term needs only the activation sums per 32 (two Q8_K bsums).
            let summ = super::min_dot(&m, &y.bsums);
            sum += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summ as f32;
        }
        sum
    }

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8K]) -> f32 {
        dispatch!(path, w, a)
    }

    panel_dispatch!(q4k);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{ctrl_same, f16_to_f32, hsum_ps, load256, min_products};
    use super::{BlockQ4K, BlockQ8K};

    /// Per super-block: `maddubs` (u4 × i8 → pairs in i16, at most 2·15·128) then
    /// `madd` with the sub-block scale into i32; one float FMA per super-block for the
    /// scales and one for the min term.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn vec_dot(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            crate::quant::prefetch_ahead(x);
            let dy = y.d;
            let d = _mm256_set1_ps(dy * f16_to_f32(x.d.to_bits()));
            let dmin = _mm256_set1_ps(dy * f16_to_f32(x.dmin.to_bits()));
            let (sc, m) = super::unpack_scale_min_k4(&x.scales);
            let sc8 = _mm_cvtsi64_si128(i64::from_le_bytes(sc));
            let m8 = _mm_cvtsi64_si128(i64::from_le_bytes(m));

            let prod_m = min_products(m8, &y.bsums);
            acc_m = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(prod_m), acc_m);

            let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let qv = load256(x.qs.as_ptr().add(32 * c));
                let lo = _mm256_and_si256(qv, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(qv), m4);
                let a_lo = load256(y.qs.as_ptr().add(64 * c));
                let a_hi = load256(y.qs.as_ptr().add(64 * c + 32));
                let p_lo = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(lo, a_lo),
                    _mm256_shuffle_epi8(scales, ctrl_same(2 * c)),
                );
                let p_hi = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(hi, a_hi),
                    _mm256_shuffle_epi8(scales, ctrl_same(2 * c + 1)),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(_mm256_sub_ps(acc, acc_m))
    }
}
