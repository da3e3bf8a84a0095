//! Quantized weight blocks and the fused kernels that use them.
//!
//! Every weight type is one `#[repr(C)]` block struct implementing [`WeightBlock`]. The
//! trait names the activation block it is dotted with, so pairing a weight with the
//! wrong activation type does not compile. Each type has one scalar reference
//! (`dequantize`, `vec_dot_ref`); every SIMD path is tested against it.
//!
//! Activations are quantized once per matmul to the matching 8-bit block type with
//! llama.cpp's rounding, so integer dot products equal llama.cpp's exactly and only the
//! float summation order differs.
//!
//! Prompt kernels (`panel_dot`) have one float order too: each type's panel rule, whose
//! portable code is the scalar path's kernel and whose bits every SIMD kernel gives, so
//! a prompt's logits are the same on every path (the single-token kernels used for
//! decoding keep their own, faster orders).

use smq_format::GgmlType;

/// A block of activations quantized to 8 bits (Q8_0, Q8_1, Q8_K).
pub trait ActBlock: Copy + Default + Send + Sync + 'static {
    /// Elements per block.
    const BLOCK_ELEMS: usize;
    /// Quantizes `x` (a multiple of `BLOCK_ELEMS` long) into `out` (one block per
    /// `BLOCK_ELEMS` elements), rounding exactly as llama.cpp's reference quantizer does.
    fn quantize_row(x: &[f32], out: &mut [Self]);
    /// Quantized activations of up to [`PANEL_TOKENS`] tokens laid out one token per
    /// vector lane, for the prompt-processing kernels ([`WeightBlock::panel_dot`]).
    type Panel: Send + Sync + 'static;
    /// Builds a panel from 1..=[`PANEL_TOKENS`] quantized rows of equal length; the
    /// lanes of missing tokens hold zeros.
    fn build_panel(rows: &[&[Self]]) -> Self::Panel;
    /// The panel of 1..=[`PANEL_TOKENS`] float rows of equal length: the same as
    /// quantizing each row and building the panel from them (types may do it in one
    /// pass, without the rows).
    fn quantize_panel(xs: &[&[f32]]) -> Self::Panel {
        let rows: Vec<Vec<Self>> = xs
            .iter()
            .map(|x| {
                let mut row = vec![Self::default(); x.len() / Self::BLOCK_ELEMS];
                Self::quantize_row(x, &mut row);
                row
            })
            .collect();
        let refs: Vec<&[Self]> = rows.iter().map(Vec::as_slice).collect();
        Self::build_panel(&refs)
    }
}

/// Tokens per activation panel: the 16 i32 lanes of an AVX-512 register (two AVX2
/// registers).
pub const PANEL_TOKENS: usize = 16;

/// A block of quantized weights.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    /// The ggml type whose bytes this struct overlays.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK_ELEMS: usize;
    /// The activation block type this weight is dotted with.
    type Act: ActBlock;
    /// Scalar reference: the block's `BLOCK_ELEMS` values as f32.
    fn dequantize(&self, out: &mut [f32]);
    /// Scalar reference: dot product of one weight row with one quantized activation row.
    fn vec_dot_ref(w: &[Self], a: &[Self::Act]) -> f32;
    /// The same dot product on `path` (which the caller has checked this CPU supports).
    /// A path with no code of its own for this type runs the next lower one.
    fn vec_dot(path: KernelPath, w: &[Self], a: &[Self::Act]) -> f32;
    /// One weight row against four activation rows (prompt processing), equal bit for
    /// bit to four `vec_dot` calls; kernels that unpack each weight block once for the
    /// four override it.
    fn vec_dot_x4(path: KernelPath, w: &[Self], a: [&[Self::Act]; 4]) -> [f32; 4] {
        a.map(|a| Self::vec_dot(path, w, a))
    }
    /// Prompt kernel: every row of `w` (whole rows of `panel`'s length in blocks) against
    /// every token of `panel`: `out[r][t] = vec_dot(row r, token t)` up to float
    /// summation order. Lanes of missing tokens are unspecified. Every path gives the
    /// same bits: the type's panel rule, whose portable code is the scalar path's kernel.
    fn panel_dot(
        path: KernelPath,
        w: &[Self],
        panel: &<Self::Act as ActBlock>::Panel,
        out: &mut [[f32; PANEL_TOKENS]],
    );
    /// Unpacks whole rows of `w` (`bpr` blocks each) into `out` for
    /// [`Self::unpacked_panel_dot`], which then runs any number of panels without
    /// unpacking again. Returns false, leaving `out` as it was, when this type has no
    /// such kernel on `path`.
    fn unpack_rows(
        _path: KernelPath,
        _w: &[Self],
        _bpr: usize,
        _out: &mut unpacked::UnpackedRows,
    ) -> bool {
        false
    }
    /// [`Self::panel_dot`] over rows that [`Self::unpack_rows`] unpacked on `path`.
    fn unpacked_panel_dot(
        _path: KernelPath,
        _rows: &unpacked::UnpackedRows,
        _panel: &<Self::Act as ActBlock>::Panel,
        _out: &mut [[f32; PANEL_TOKENS]],
    ) {
        unreachable!("{} has no unpacked panel kernel", Self::TYPE)
    }
}

/// How far ahead of the block being read the decode kernels prefetch weights, which
/// stream from memory once per token: about memory latency × a thread's bandwidth, with
/// margin (4 KB measured best among 1-16 KB; 1 KB left the loads waiting on DRAM).
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_AHEAD: usize = 4096;

/// Asks for the weights [`PREFETCH_AHEAD`] bytes after `block` (a prefetch past the end
/// of the matrix is harmless: it never faults).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(block: &T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: prefetching is a hint without memory-safety effects, on any address.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(
            (block as *const T)
                .cast::<i8>()
                .wrapping_add(PREFETCH_AHEAD),
        )
    }
}

pub mod act;
pub mod cpu;
mod f16c;
pub mod float;
pub mod kquants;
pub mod legacy;
mod legacy_panel;
pub mod matmul;
pub mod panel;
pub mod unpacked;

pub use cpu::KernelPath;
