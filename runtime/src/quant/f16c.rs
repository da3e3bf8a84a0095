//! Scalar fp16 → f32 for the x86 kernels, shared by every block type.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One IEEE half (raw bits) to f32 with the F16C instruction (exact).
///
/// The bits enter the vector register through `vmovd`, which zeroes the other lanes.
/// Written with intrinsics, the compiler sees that only lane 0 matters and loads it with
/// a 16-bit insert that merges into whatever register it picks, often a kernel's
/// accumulator: every block's scale conversion then waits for the previous block's FMA,
/// and the Q4_1 dot product ran latency-bound, about 3× slower.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    let v: __m128i;
    // SAFETY: `vmovd` from a general register only writes the output register.
    unsafe {
        std::arch::asm!(
            "vmovd {v}, {x:e}",
            v = lateout(xmm_reg) v,
            x = in(reg) u32::from(bits),
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    _mm_cvtss_f32(_mm_cvtph_ps(v))
}

/// Two halves (raw bits) to f32 in lanes 0 and 1 (lanes 2 and 3 are zero), with one
/// conversion: a block's two scales, e.g. `d` and `m`, cost one instead of two.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16x2_to_f32(lo: u16, hi: u16) -> __m128 {
    let v: __m128i;
    // SAFETY: `vmovd` from a general register only writes the output register.
    unsafe {
        std::arch::asm!(
            "vmovd {v}, {x:e}",
            v = lateout(xmm_reg) v,
            x = in(reg) u32::from(lo) | (u32::from(hi) << 16),
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    _mm_cvtph_ps(v)
}
