//! Q2_K: 2.625 bits per weight; 16 sub-blocks of 16 with 4-bit scales and mins.

use half::f16;
use smq_format::GgmlType;

use super::panel_scalar::{PanelBlock, Runs};
use super::{check_row_lengths, pod_block, BlockQ8K, QK_K};
use crate::quant::{KernelPath, WeightBlock};

/// ggml's `block_q2_K`: `w = d*(scales[i]&15)*q - dmin*(scales[i]>>4)` with `q` in 0..4.
///
/// Element `128c+32s+l` (c in 0..2, s in 0..4, l in 0..32) is `(qs[32c+l] >> 2s) & 3`,
/// in sub-block `(128c+32s+l)/16`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
pod_block!(BlockQ2K, 84);

impl BlockQ2K {
    /// Quant (0..4) of element `i`.
    #[inline(always)]
    fn quant(&self, i: usize) -> u8 {
        let (c, r) = (i / 128, i % 128);
        let (s, l) = (r / 32, r % 32);
        (self.qs[32 * c + l] >> (2 * s)) & 3
    }
}

impl PanelBlock for BlockQ2K {
    fn runs(&self) -> Runs {
        Runs {
            q: std::array::from_fn(|i| self.quant(i) as i8),
            scales: self.scales.map(|s| i32::from(s & 0xF)),
            mins: self.scales.map(|s| i32::from(s >> 4)),
            d: self.d,
            dmin: Some(self.dmin),
        }
    }
}

impl WeightBlock for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2K;
    const BLOCK_ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let out = &mut out[..QK_K];
        let d = self.d.to_f32();
        let dmin = self.dmin.to_f32();
        for (i, y) in out.iter_mut().enumerate() {
            let sc = self.scales[i / 16];
            let dl = d * (sc & 0xF) as f32;
            let ml = dmin * (sc >> 4) as f32;
            *y = dl * self.quant(i) as f32 - ml;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        check_row_lengths(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            let mut summ = 0i32;
            for (s, &sc) in x.scales.iter().enumerate() {
                let dot: i32 = (16 * s..16 * s + 16)
                    .map(|i| x.quant(i) as i32 * y.qs[i] as i32)
                    .sum();
                sumi += (sc & 0xF) as i32 * dot;
                summ += (sc >> 4) as i32 * y.bsums[s] as i32;
            }
            sum += y.d * x.d.to_f32() * sumi as f32 - y.d * x.dmin.to_f32() * summ as f32;
        }
        sum
    }

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8K]) -> f32 {
        dispatch!(path, w, a)
    }

    panel_dispatch!(q2k);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{ctrl_pair, f16_to_f32, hsum_ps, load128, load256};
    use super::{BlockQ2K, BlockQ8K};

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn vec_dot(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            crate::quant::prefetch_ahead(x);
            let dy = y.d;
            let d = _mm256_set1_ps(dy * f16_to_f32(x.d.to_bits()));
            let dmin = _mm256_set1_ps(dy * f16_to_f32(x.dmin.to_bits()));
            let raw = load128(x.scales.as_ptr());
            let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
            let mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));

            let bs = load256(y.bsums.as_ptr());
            acc_m = _mm256_fmadd_ps(
                dmin,
                _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins16)),
                acc_m,
            );

            let sc_halves = [
                _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                _mm256_permute2x128_si256::<0x11>(sc16, sc16),
            ];
            let mut sumi = _mm256_setzero_si256();
            for (c, &sc) in sc_halves.iter().enumerate() {
                let mut qv = load256(x.qs.as_ptr().add(32 * c));
                for s in 0..4 {
                    let q = _mm256_and_si256(qv, m3);
                    qv = _mm256_srli_epi16::<2>(qv);
                    let av = load256(y.qs.as_ptr().add(128 * c + 32 * s));
                    let p = _mm256_maddubs_epi16(q, av);
                    let p = _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, ctrl_pair(s)));
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(_mm256_sub_ps(acc, acc_m))
    }
}
