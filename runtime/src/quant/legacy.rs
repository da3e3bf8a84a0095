//! ggml's 32-element "legacy" weight blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Layout (shared by the 4- and 5-bit types): byte `j` of `qs` holds element `j` in its
//! low nibble and element `j + 16` in its high nibble; for 5-bit types bit `j` of the
//! little-endian `qh` word is the fifth bit of element `j`.
//!
//! Values: Q4_0 `(q - 8) d`, Q5_0 `(q - 16) d`, Q8_0 `q d`, Q4_1/Q5_1 `q d + m`.
//! Q4_0/Q5_0/Q8_0 are dotted with Q8_0 activations; Q4_1/Q5_1 with Q8_1, whose
//! precomputed `s = d_a Σa` turns the `m` term into one multiply per block.
//!
//! Per block the dot is an exact integer sum `Σ q_w q_a`; every path then adds
//! `d_w d_a · isum` (plus `m s`) in f32, so paths differ only in float summation order.

use half::f16;
use smq_format::GgmlType;

pub use super::act::BlockQ8_0;
use super::act::{BlockQ8_1, QK8};
use super::legacy_panel::{self, PanelBlock};
use super::panel::Q8Panel;
#[cfg(target_arch = "x86_64")]
use super::unpacked::{self, UnpackedRows};
use super::{KernelPath, WeightBlock, PANEL_TOKENS};

/// ggml's `block_q4_0` (18 bytes).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// ggml's `block_q4_1` (20 bytes).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// ggml's `block_q5_0` (22 bytes).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// ggml's `block_q5_1` (24 bytes).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// The 32 unsigned 4-bit values of a block, in element order.
#[inline]
fn nibbles(qs: &[u8; 16]) -> [u8; QK8] {
    let mut q = [0u8; QK8];
    for j in 0..16 {
        q[j] = qs[j] & 0x0F;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// The 32 unsigned 5-bit values of a block, in element order.
#[inline]
fn fivebit(qh: &[u8; 4], qs: &[u8; 16]) -> [u8; QK8] {
    let h = u32::from_le_bytes(*qh);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((h >> j) & 1) as u8) << 4;
    }
    q
}

/// `Σ (q_j - offset) a_j` over one block.
#[inline]
fn idot(q: &[u8; QK8], offset: i32, a: &[i8; QK8]) -> i32 {
    q.iter()
        .zip(a)
        .map(|(&w, &x)| (w as i32 - offset) * x as i32)
        .sum()
}

/// A type's `vec_dot`: its kernel on the SIMD path asked for, else the scalar reference.
macro_rules! dispatch {
    ($path:expr, $kernel:ident, $w:expr, $a:expr) => {{
        debug_assert!($path.is_supported());
        debug_assert_eq!($w.len(), $a.len());
        match $path {
            // SAFETY (both arms): the caller checked that this CPU supports `path`.
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => unsafe { x86::vnni::$kernel($w, $a) },
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => unsafe { x86::avx2::$kernel($w, $a) },
            _ => Self::vec_dot_ref($w, $a),
        }
    }};
}

/// A type's `vec_dot_x4`: its four-token kernel on the SIMD path asked for, else four
/// single-token dot products.
macro_rules! dispatch_x4 {
    ($path:expr, $kernel:ident, $w:expr, $a:expr) => {{
        debug_assert!($path.is_supported());
        debug_assert!($a.iter().all(|a| a.len() == $w.len()));
        match $path {
            // SAFETY (both arms): the caller checked that this CPU supports `path`.
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => unsafe { x86::vnni::$kernel($w, $a) },
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => unsafe { x86::avx2::$kernel($w, $a) },
            _ => $a.map(|a| Self::vec_dot($path, $w, a)),
        }
    }};
}

/// A type's panel kernels (prompt processing): its own on every path (the portable rule
/// on the scalar one), and on the SIMD paths the shared one over rows unpacked by
/// `$unpack` (elsewhere the trait's defaults: nothing unpacks).
macro_rules! panel_kernel {
    ($kernel:ident, $unpack:ident) => {
        #[cfg(target_arch = "x86_64")]
        fn unpack_rows(path: KernelPath, w: &[Self], bpr: usize, out: &mut UnpackedRows) -> bool {
            match path {
                // SAFETY: the caller checked that this CPU supports `path`.
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx512Vnni => unsafe { unpacked::x86::$unpack(w, bpr, out) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2
                    if unpacked::x86::avx2_takes_quants(
                        <Self as unpacked::Unpackable>::MAX_QUANT,
                    ) =>
                unsafe { unpacked::x86::$unpack(w, bpr, out) },
                _ => return false,
            }
            true
        }

        #[cfg(target_arch = "x86_64")]
        fn unpacked_panel_dot(
            path: KernelPath,
            rows: &UnpackedRows,
            panel: &Q8Panel,
            out: &mut [[f32; PANEL_TOKENS]],
        ) {
            debug_assert!(path.is_supported());
            match path {
                // SAFETY: the caller checked that this CPU supports `path`.
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx512Vnni => unsafe {
                    unpacked::x86::panel_dot_vnni(rows, panel, out)
                },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2 => unsafe { unpacked::x86::panel_dot_avx2(rows, panel, out) },
                _ => unreachable!("no unpacked {} panel kernel on {}", Self::TYPE, path.name()),
            }
        }

        fn panel_dot(
            path: KernelPath,
            w: &[Self],
            panel: &Q8Panel,
            out: &mut [[f32; PANEL_TOKENS]],
        ) {
            debug_assert!(path.is_supported());
            match path {
                // SAFETY: the caller checked that this CPU supports `path`.
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx512Vnni => unsafe {
                    legacy_panel::x86::vnni::$kernel(w, panel, out)
                },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2 => unsafe { legacy_panel::x86::avx2::$kernel(w, panel, out) },
                _ => legacy_panel::panel_dot(w, panel, out),
            }
        }
    };
}

/// The quants of `q` with `offset` taken out, as signed bytes (all fit: -16..=31).
#[inline]
fn offset_quants(q: [u8; QK8], offset: i8) -> [i8; QK8] {
    q.map(|v| v as i8 - offset)
}

impl PanelBlock for BlockQ4_0 {
    fn quants(&self) -> [i8; QK8] {
        offset_quants(nibbles(&self.qs), 8)
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn min(&self) -> Option<f16> {
        None
    }
}

impl PanelBlock for BlockQ4_1 {
    fn quants(&self) -> [i8; QK8] {
        offset_quants(nibbles(&self.qs), 0)
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn min(&self) -> Option<f16> {
        Some(self.m)
    }
}

impl PanelBlock for BlockQ5_0 {
    fn quants(&self) -> [i8; QK8] {
        offset_quants(fivebit(&self.qh, &self.qs), 16)
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn min(&self) -> Option<f16> {
        None
    }
}

impl PanelBlock for BlockQ5_1 {
    fn quants(&self) -> [i8; QK8] {
        offset_quants(fivebit(&self.qh, &self.qs), 0)
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn min(&self) -> Option<f16> {
        Some(self.m)
    }
}

impl PanelBlock for BlockQ8_0 {
    fn quants(&self) -> [i8; QK8] {
        self.qs
    }
    fn scale(&self) -> f16 {
        self.d
    }
    fn min(&self) -> Option<f16> {
        None
    }
}

impl WeightBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_ELEMS: usize = QK8;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, q) in out[..QK8].iter_mut().zip(nibbles(&self.qs)) {
            *o = (q as i32 - 8) as f32 * d;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        w.iter()
            .zip(a)
            .map(|(w, a)| w.d.to_f32() * a.d.to_f32() * idot(&nibbles(&w.qs), 8, &a.qs) as f32)
            .sum()
    }

    panel_kernel!(q4_0, unpack_q4_0);

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8_0]) -> f32 {
        dispatch!(path, q4_0, w, a)
    }
}

impl WeightBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_ELEMS: usize = QK8;
    type Act = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (o, q) in out[..QK8].iter_mut().zip(nibbles(&self.qs)) {
            *o = q as f32 * d + m;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                w.d.to_f32() * a.d.to_f32() * idot(&nibbles(&w.qs), 0, &a.qs) as f32
                    + w.m.to_f32() * a.s.to_f32()
            })
            .sum()
    }

    panel_kernel!(q4_1, unpack_q4_1);

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8_1]) -> f32 {
        dispatch!(path, q4_1, w, a)
    }

    fn vec_dot_x4(path: KernelPath, w: &[Self], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        dispatch_x4!(path, q4_1_x4, w, a)
    }
}

impl WeightBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_ELEMS: usize = QK8;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, q) in out[..QK8].iter_mut().zip(fivebit(&self.qh, &self.qs)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                w.d.to_f32() * a.d.to_f32() * idot(&fivebit(&w.qh, &w.qs), 16, &a.qs) as f32
            })
            .sum()
    }

    panel_kernel!(q5_0, unpack_q5_0);

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8_0]) -> f32 {
        dispatch!(path, q5_0, w, a)
    }

    fn vec_dot_x4(path: KernelPath, w: &[Self], a: [&[BlockQ8_0]; 4]) -> [f32; 4] {
        dispatch_x4!(path, q5_0_x4, w, a)
    }
}

impl WeightBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_ELEMS: usize = QK8;
    type Act = BlockQ8_1;

    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (o, q) in out[..QK8].iter_mut().zip(fivebit(&self.qh, &self.qs)) {
            *o = q as f32 * d + m;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_1]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                w.d.to_f32() * a.d.to_f32() * idot(&fivebit(&w.qh, &w.qs), 0, &a.qs) as f32
                    + w.m.to_f32() * a.s.to_f32()
            })
            .sum()
    }

    panel_kernel!(q5_1, unpack_q5_1);

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8_1]) -> f32 {
        dispatch!(path, q5_1, w, a)
    }
}

impl WeightBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_ELEMS: usize = QK8;
    type Act = BlockQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out[..QK8].iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    fn vec_dot_ref(w: &[Self], a: &[BlockQ8_0]) -> f32 {
        debug_assert_eq!(w.len(), a.len());
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let isum: i32 =
                    w.qs.iter()
                        .zip(&a.qs)
                        .map(|(&x, &y)| x as i32 * y as i32)
                        .sum();
                w.d.to_f32() * a.d.to_f32() * isum as f32
            })
            .sum()
    }

    panel_kernel!(q8_0, unpack_q8_0);

    fn vec_dot(path: KernelPath, w: &[Self], a: &[BlockQ8_0]) -> f32 {
        dispatch!(path, q8_0, w, a)
    }

    fn vec_dot_x4(path: KernelPath, w: &[Self], a: [&[BlockQ8_0]; 4]) -> [f32; 4] {
        dispatch_x4!(path, q8_0_x4, w, a)
    }
}

/// x86 kernels. One body per type, instantiated twice by `kernels!`: with
/// `maddubs + madd` (AVX2) and with `vpdpbusd` on ymm (AVX-512 VL + VNNI) as the
/// unsigned×signed byte dot. Activation bytes must lie in -127..=127 (the quantizer
/// guarantees it), which keeps the sign trick and `maddubs` free of overflow.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// f16 → f32 with the F16C instruction (exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub fn h2f(h: half::f16) -> f32 {
        crate::quant::f16c::f16_to_f32(h.to_bits())
    }

    /// 16 packed bytes → 32 unsigned nibbles (low nibbles first, then high).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
        // SAFETY: `qs` is 16 readable bytes; unaligned load.
        let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        // Both lanes hold the 16 bytes (a load, no shuffle); the upper lane is shifted by
        // 4 so that masking leaves low nibbles below and high nibbles above.
        let both = _mm256_broadcastsi128_si256(v);
        let shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
    }

    /// A 32-bit mask → 32 bytes, 0xFF where bit j is set.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub fn expand_bits(qh: &[u8; 4]) -> __m256i {
        let v = _mm256_set1_epi32(i32::from_le_bytes(*qh));
        // Byte j takes mask byte j / 8 (shuffles act per 128-bit lane; both lanes
        // hold the same word), then tests bit j % 8.
        let pick = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let b = _mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit);
        _mm256_cmpeq_epi8(b, bit)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub fn load32(p: &[i8; 32]) -> __m256i {
        // SAFETY: `p` is 32 readable bytes; unaligned load.
        unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    macro_rules! kernels {
        ($name:ident, $features:tt, |$a:ident, $b:ident| $dot:expr) => {
            pub mod $name {
                use super::super::{
                    BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
                };
                use super::{expand_bits, h2f, hsum, load32, unpack_nibbles};
                use crate::quant::f16c::f16x2_to_f32;

                /// `a · b` of two halves with a single conversion.
                #[target_feature(enable = $features)]
                #[inline]
                fn scale_product(a: half::f16, b: half::f16) -> f32 {
                    let v = f16x2_to_f32(a.to_bits(), b.to_bits());
                    _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
                }
                use std::arch::x86_64::*;

                /// Unsigned bytes × signed bytes, summed in groups of 4 into i32 lanes.
                #[target_feature(enable = $features)]
                #[inline]
                fn dot_u8_i8($a: __m256i, $b: __m256i) -> __m256i {
                    $dot
                }

                /// Signed × signed via |w| × (a with w's sign).
                #[target_feature(enable = $features)]
                #[inline]
                fn dot_i8_i8(w: __m256i, a: __m256i) -> __m256i {
                    dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
                }

                /// Runs `$block` over block pairs with two accumulators (hides FMA
                /// latency), then the odd block; yields the summed vector.
                macro_rules! two_acc {
                    ($w:ident, $act:ident, |$x:ident, $y:ident| $blk:expr) => {{
                        let mut acc0 = _mm256_setzero_ps();
                        let mut acc1 = _mm256_setzero_ps();
                        let mut wp = $w.chunks_exact(2);
                        let mut ap = $act.chunks_exact(2);
                        for (ww, aa) in (&mut wp).zip(&mut ap) {
                            // Weights stream from memory once per token: ask for them
                            // early so the loads below find them in cache. A prefetch
                            // past the end of the matrix is harmless.
                            _mm_prefetch::<_MM_HINT_T0>(
                                ww.as_ptr().cast::<i8>().wrapping_add(crate::quant::PREFETCH_AHEAD),
                            );
                            let ($x, $y) = (&ww[0], &aa[0]);
                            let (s, d) = $blk;
                            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc0);
                            let ($x, $y) = (&ww[1], &aa[1]);
                            let (s, d) = $blk;
                            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc1);
                        }
                        for ($x, $y) in wp.remainder().iter().zip(ap.remainder()) {
                            let (s, d) = $blk;
                            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc0);
                        }
                        _mm256_add_ps(acc0, acc1)
                    }};
                }

                #[target_feature(enable = $features)]
                pub fn q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
                    let acc = two_acc!(w, a, |x, y| (
                        dot_i8_i8(load32(&x.qs), load32(&y.qs)),
                        scale_product(x.d, y.d)
                    ));
                    hsum(acc)
                }

                #[target_feature(enable = $features)]
                pub fn q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
                    let eight = _mm256_set1_epi8(8);
                    let acc = two_acc!(w, a, |x, y| (
                        dot_i8_i8(_mm256_sub_epi8(unpack_nibbles(&x.qs), eight), load32(&y.qs)),
                        scale_product(x.d, y.d)
                    ));
                    hsum(acc)
                }

                #[target_feature(enable = $features)]
                pub fn q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
                    // q - 16 as a signed byte: where the fifth bit is clear, setting the
                    // top four bits of the nibble gives nibble - 16 in two's complement;
                    // where it is set, q - 16 is the nibble itself.
                    let top = _mm256_set1_epi8(0xF0u8 as i8);
                    let acc = two_acc!(w, a, |x, y| (
                        dot_i8_i8(
                            _mm256_or_si256(
                                unpack_nibbles(&x.qs),
                                _mm256_andnot_si256(expand_bits(&x.qh), top)
                            ),
                            load32(&y.qs)
                        ),
                        scale_product(x.d, y.d)
                    ));
                    hsum(acc)
                }

                #[target_feature(enable = $features)]
                pub fn q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
                    // One conversion gives [d, m] of the weights and one [d, s] of the
                    // activations; their product is [d·d', m·s]: lane 0 scales the
                    // integer dot, lane 1 (the min term) is summed in a vector.
                    let mut summs = _mm_setzero_ps();
                    let acc = two_acc!(w, a, |x, y| {
                        let scales = _mm_mul_ps(
                            f16x2_to_f32(x.d.to_bits(), x.m.to_bits()),
                            f16x2_to_f32(y.d.to_bits(), y.s.to_bits()),
                        );
                        summs = _mm_add_ps(summs, scales);
                        (
                            dot_u8_i8(unpack_nibbles(&x.qs), load32(&y.qs)),
                            _mm_cvtss_f32(scales),
                        )
                    });
                    hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(summs))
                }

                /// Four accumulator pairs, one per token, in the block order and
                /// pairing of `two_acc!` so the results equal four single-token calls.
                macro_rules! four_tokens {
                    ($w:ident, $act:ident, |$x:ident, $i:ident| $prep:expr, |$wv:ident, $y:ident, $j:ident| $blk:expr) => {{
                        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                        for ($i, $x) in $w.iter().enumerate() {
                            _mm_prefetch::<_MM_HINT_T0>(
                                ($x as *const _ as *const i8).wrapping_add(crate::quant::PREFETCH_AHEAD),
                            );
                            let $wv = $prep;
                            for ($j, (acc, act)) in acc.iter_mut().zip(&$act).enumerate() {
                                let $y = &act[$i];
                                let (s, d) = $blk;
                                let a = &mut acc[$i % 2];
                                *a = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), *a);
                            }
                        }
                        acc
                    }};
                }

                /// `q8_0` for four tokens: each weight block is loaded once.
                #[target_feature(enable = $features)]
                pub fn q8_0_x4(w: &[BlockQ8_0], a: [&[BlockQ8_0]; 4]) -> [f32; 4] {
                    // Per block once: |w|, w (for the signs) and w's scale.
                    let acc = four_tokens!(
                        w,
                        a,
                        |x, i| {
                            let wv = load32(&x.qs);
                            (_mm256_sign_epi8(wv, wv), wv, h2f(x.d))
                        },
                        |p, y, _j| (
                            dot_u8_i8(p.0, _mm256_sign_epi8(load32(&y.qs), p.1)),
                            p.2 * h2f(y.d)
                        )
                    );
                    let mut out = [0.0; 4];
                    for (o, a) in out.iter_mut().zip(acc) {
                        *o = hsum(_mm256_add_ps(a[0], a[1]));
                    }
                    out
                }

                /// `q5_0` for four tokens: each weight block is unpacked once.
                #[target_feature(enable = $features)]
                pub fn q5_0_x4(w: &[BlockQ5_0], a: [&[BlockQ8_0]; 4]) -> [f32; 4] {
                    let top = _mm256_set1_epi8(0xF0u8 as i8);
                    let acc = four_tokens!(
                        w,
                        a,
                        |x, i| {
                            let wv = _mm256_or_si256(
                                unpack_nibbles(&x.qs),
                                _mm256_andnot_si256(expand_bits(&x.qh), top),
                            );
                            (_mm256_sign_epi8(wv, wv), wv, h2f(x.d))
                        },
                        |p, y, _j| (
                            dot_u8_i8(p.0, _mm256_sign_epi8(load32(&y.qs), p.1)),
                            p.2 * h2f(y.d)
                        )
                    );
                    let mut out = [0.0; 4];
                    for (o, a) in out.iter_mut().zip(acc) {
                        *o = hsum(_mm256_add_ps(a[0], a[1]));
                    }
                    out
                }

                /// `q4_1` for four tokens: each weight block is unpacked once.
                #[target_feature(enable = $features)]
                pub fn q4_1_x4(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
                    let mut summs = [_mm_setzero_ps(); 4];
                    let acc = four_tokens!(
                        w,
                        a,
                        |x, i| (
                            unpack_nibbles(&x.qs),
                            f16x2_to_f32(x.d.to_bits(), x.m.to_bits())
                        ),
                        |p, y, j| {
                            let scales = _mm_mul_ps(p.1, f16x2_to_f32(y.d.to_bits(), y.s.to_bits()));
                            summs[j] = _mm_add_ps(summs[j], scales);
                            (dot_u8_i8(p.0, load32(&y.qs)), _mm_cvtss_f32(scales))
                        }
                    );
                    let mut out = [0.0; 4];
                    for ((o, a), s) in out.iter_mut().zip(acc).zip(summs) {
                        *o = hsum(_mm256_add_ps(a[0], a[1])) + _mm_cvtss_f32(_mm_movehdup_ps(s));
                    }
                    out
                }

                #[target_feature(enable = $features)]
                pub fn q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
                    let bit4 = _mm256_set1_epi8(0x10);
                    // The m·s term rides along in the same pass over the blocks.
                    let mut summs = 0.0f32;
                    let acc = two_acc!(w, a, |x, y| {
                        summs += h2f(x.m) * h2f(y.s);
                        (
                            dot_u8_i8(
                                _mm256_or_si256(
                                    unpack_nibbles(&x.qs),
                                    _mm256_and_si256(expand_bits(&x.qh), bit4),
                                ),
                                load32(&y.qs),
                            ),
                            scale_product(x.d, y.d),
                        )
                    });
                    hsum(acc) + summs
                }
            }
        };
    }

    kernels!(avx2, "avx2,fma,f16c", |a, b| _mm256_madd_epi16(
        _mm256_maddubs_epi16(a, b),
        _mm256_set1_epi16(1)
    ));
    kernels!(
        vnni,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        |a, b| _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_and_fifth_bit_order() {
        let mut b = BlockQ5_0 {
            d: f16::from_f32(1.0),
            qh: 0x8000_0001u32.to_le_bytes(),
            qs: [0; 16],
        };
        b.qs[0] = 0x21; // element 0 = 1, element 16 = 2
        b.qs[15] = 0x30; // element 15 = 0, element 31 = 3
        let mut out = [0f32; 32];
        b.dequantize(&mut out);
        assert_eq!(out[0], (1 + 16 - 16) as f32);
        assert_eq!(out[16], (2 - 16) as f32);
        assert_eq!(out[15], -16.0);
        assert_eq!(out[31], (3 + 16 - 16) as f32);
        assert_eq!(out[1], -16.0);
    }
}
