//! AVX2 helpers shared by the K-quant kernels.

use std::arch::x86_64::*;

pub(super) use crate::quant::f16c::f16_to_f32;

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `pshufb` control that copies 16-bit element `k` (0..8) of each 128-bit lane to all
/// 8 positions of that lane: with the same 8 scales in both lanes, one 32-element
/// sub-block's scale in every i16 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ctrl_same(k: usize) -> __m256i {
    let pair = (((2 * k + 1) << 8) | (2 * k)) as i16;
    _mm256_set1_epi16(pair)
}

/// `pshufb` control that puts 16-bit element `2p` (of 8) in every i16 of the low lane
/// and element `2p + 1` in every i16 of the high lane: the scales of two consecutive
/// 16-element sub-blocks, matching 32 bytes of quants where each 128-bit lane is one
/// sub-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ctrl_pair(p: usize) -> __m256i {
    let lo = (((4 * p + 1) << 8) | (4 * p)) as i16;
    let hi = (((4 * p + 3) << 8) | (4 * p + 2)) as i16;
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// Unaligned 32-byte load.
///
/// # Safety
/// `p` must be valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load256<T>(p: *const T) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// Unaligned 16-byte load.
///
/// # Safety
/// `p` must be valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load128<T>(p: *const T) -> __m128i {
    _mm_loadu_si128(p.cast())
}

/// The Q4_K/Q5_K min term on 8 lanes: each 6-bit min (bytes of `m8`) paired with the two
/// 16-element activation sums of its sub-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn min_products(m8: __m128i, bsums: &[i16; 16]) -> __m256i {
    let m_dup = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    // SAFETY: `bsums` is 16 i16 values, one 256-bit load.
    let bs = unsafe { load256(bsums.as_ptr()) };
    _mm256_madd_epi16(bs, m_dup)
}

/// Q6_K's 6-bit quants of one 128-element half (`ql` bytes `64n..64n + 64` as `ql0`,
/// `ql1`; `qh` bytes `32n..32n + 32`), unsigned 0..64, as four 32-element runs in
/// element order. The top bits are moved to bits 4..5 of each byte with 16-bit shifts:
/// the mask drops whatever crossed from the neighbouring byte.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6k_quants(ql0: __m256i, ql1: __m256i, qh: __m256i) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x30);
    [
        _mm256_or_si256(
            _mm256_and_si256(ql0, m4),
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(ql1, m4),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
            _mm256_and_si256(qh, m2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
        ),
    ]
}
