//! Q5_K: 5.5 bits per weight; Q4_K plus one high bit per weight.

use half::f16;
use smq_format::GgmlType;

use super::panel_scalar::{PanelBlock, Runs};
use super::{check_row_lengths, pod_block, unpack_scale_min_k4, BlockQ8K, QK_K};
use crate::quant::{KernelPath, WeightBlock};

/// ggml's `block_q5_K`: `w = d*sc_j*q - dmin*m_j` with `q` in 0..32.
///
/// The low 4 bits are laid out as in Q4_K. The 5th bit of element `64c+l` is bit `2c`
/// of `qh[l]`, that of element `64c+32+l` bit `2c+1`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
pod_block!(BlockQ5K, 176);

impl BlockQ5K {
    /// Quant `l` (0..32) of sub-block `j` (0..8), in 0..32.
    #[inline(always)]
    fn quant(&self, j: usize, l: usize) -> u8 {
        let c = j / 2;
        let nib = (self.qs[32 * c + l] >> (4 * (j % 2))) & 0xF;
        nib | (((self.qh[l] >> j) & 1) << 4)
    }
}

impl PanelBlock for BlockQ5K {
    fn runs(&self) -> Runs {
        let (sc, m) = unpack_scale_min_k4(&self.scales);
        Runs {
            q: std::array::from_fn(|i| self.quant(i / 32, i % 32) as i8),
            scales: std::array::from_fn(|s| i32::from(sc[s / 2])),
            mins: std::array::from_fn(|s| i32::from(m[s / 2])),
            d: self.d,
            dmin: Some(self.dmin),
        }
    }
}

impl WeightBlock for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5K;
    const BLOCK_ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let out = &mut out[..QK_K];
        let d = self.d.to_f32();
        let dmin = self.dmin.to_f32();
        let (sc, m) = unpack_scale_min_k4(&self.scales);
        for j in 0..8 {
            let dl = d * sc[j] as f32;
            let ml = dmin * m[j] as f32;
            for l in 0..32 {
                out[32 * j + l] = dl * self.quant(j, l) as f32 - ml;
            }
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        check_row_lengths(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let (sc, m) = unpack_scale_min_k4(&x.scales);
            let mut sumi = 0i32;
            for (j, &scale) in sc.iter().enumerate() {
                let dot: i32 = (0..32)
                    .map(|l| x.quant(j, l) as i32 * y.qs[32 * j + l] as i32)
                    .sum();
                sumi += scale as i32 * dot;
            }
            let summ = super::min_dot(&m, &y.bsums);
            sum += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summ as f32;
        }
        sum
    }

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8K]) -> f32 {
        dispatch!(path, w, a)
    }

    panel_dispatch!(q5k);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{ctrl_same, f16_to_f32, hsum_ps, load256, min_products};
    use super::{BlockQ5K, BlockQ8K};

    /// As Q4_K, with the high bits OR-ed in: `qh` is shifted right by 2 per chunk so
    /// the current chunk's two bits sit at bits 0 and 1 of every byte (16-bit shifts
    /// are safe: at most 6 bits move, and only bits 0..1 are read).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn vec_dot(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let bit4 = _mm256_set1_epi8(0x10);
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
            let mut hbits = load256(x.qh.as_ptr());
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let qv = load256(x.qs.as_ptr().add(32 * c));
                let h_lo = _mm256_and_si256(_mm256_slli_epi16::<4>(hbits), bit4);
                let h_hi = _mm256_and_si256(_mm256_slli_epi16::<3>(hbits), bit4);
                hbits = _mm256_srli_epi16::<2>(hbits);
                let lo = _mm256_or_si256(_mm256_and_si256(qv, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(qv), m4), h_hi);
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
