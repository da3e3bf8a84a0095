//! Q6_K: 6.5625 bits per weight; 16 sub-blocks of 16 with int8 scales.

use half::f16;
use smq_format::GgmlType;

use super::panel_scalar::{PanelBlock, Runs};
use super::{check_row_lengths, pod_block, BlockQ8K, QK_K};
use crate::quant::{KernelPath, WeightBlock};

/// ggml's `block_q6_K`: `w = d*scales[s]*(q-32)` with `q` in 0..64.
///
/// Two halves of 128 elements; half `n` uses `ql[64n..]`, `qh[32n..]`, `scales[8n..]`.
/// Within a half, for `l` in 0..32 and `k` in 0..4, element `32k+l` takes its low 4 bits
/// from `ql[l + 32*(k%2)]` (low nibble for k<2, high for k>=2) and its top 2 bits from
/// bits `2k..2k+2` of `qh[l]`; its scale is `scales[2k + l/16]`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
pod_block!(BlockQ6K, 210);

impl BlockQ6K {
    /// Unsigned quant (0..64) of element `i` (0..256).
    #[inline(always)]
    fn quant(&self, i: usize) -> u8 {
        let (n, r) = (i / 128, i % 128);
        let (k, l) = (r / 32, r % 32);
        let low = (self.ql[64 * n + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
        let high = (self.qh[32 * n + l] >> (2 * k)) & 3;
        low | (high << 4)
    }
}

impl PanelBlock for BlockQ6K {
    fn runs(&self) -> Runs {
        Runs {
            q: std::array::from_fn(|i| self.quant(i) as i8 - 32),
            scales: self.scales.map(i32::from),
            mins: [0; 16],
            d: self.d,
            dmin: None,
        }
    }
}

impl WeightBlock for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    const BLOCK_ELEMS: usize = QK_K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let out = &mut out[..QK_K];
        let d = self.d.to_f32();
        for (i, y) in out.iter_mut().enumerate() {
            // Element i lies in sub-block i/16 (the layout above gives the same index).
            let dl = d * self.scales[i / 16] as f32;
            *y = dl * (self.quant(i) as i32 - 32) as f32;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8K]) -> f32 {
        check_row_lengths(w.len(), a.len());
        let mut sum = 0.0f32;
        for (x, y) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for s in 0..16 {
                let dot: i32 = (16 * s..16 * s + 16)
                    .map(|i| (x.quant(i) as i32 - 32) * y.qs[i] as i32)
                    .sum();
                sumi += x.scales[s] as i32 * dot;
            }
            sum += y.d * x.d.to_f32() * sumi as f32;
        }
        sum
    }

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8K]) -> f32 {
        dispatch!(path, w, a)
    }

    panel_dispatch!(q6k);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::x86::{ctrl_pair, f16_to_f32, hsum_ps, load128, load256, q6k_quants};
    use super::{BlockQ6K, BlockQ8K};

    /// Quants stay unsigned (0..64) so `maddubs` takes them directly (pairs at most
    /// 2·63·128, no saturation); the `-32` offset is applied once per super-block as
    /// `32·Σ scale·bsum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn vec_dot(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            crate::quant::prefetch_ahead(x);
            let d = _mm256_set1_ps(y.d * f16_to_f32(x.d.to_bits()));
            let sc_bytes = load128(x.scales.as_ptr());
            let bs = load256(y.bsums.as_ptr());
            let offset = _mm256_madd_epi16(bs, _mm256_cvtepi8_epi16(sc_bytes));
            let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(offset));
            for n in 0..2 {
                // This half's 8 scales as i16, in both 128-bit lanes.
                let sc = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(if n == 0 {
                    sc_bytes
                } else {
                    _mm_srli_si128::<8>(sc_bytes)
                }));
                let ql0 = load256(x.ql.as_ptr().add(64 * n));
                let ql1 = load256(x.ql.as_ptr().add(64 * n + 32));
                let qh = load256(x.qh.as_ptr().add(32 * n));
                let q = q6k_quants(ql0, ql1, qh);
                for (k, &qk) in q.iter().enumerate() {
                    let av = load256(y.qs.as_ptr().add(128 * n + 32 * k));
                    let p = _mm256_maddubs_epi16(qk, av);
                    let p = _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, ctrl_pair(k)));
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc)
    }
}
