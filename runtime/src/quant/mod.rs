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

use smq_format::GgmlType;

/// A block of activations quantized to 8 bits (Q8_0, Q8_1, Q8_K).
pub trait ActBlock: Copy + Default + Send + Sync + 'static {
    /// Elements per block.
    const BLOCK_ELEMS: usize;
    /// Quantizes `x` (a multiple of `BLOCK_ELEMS` long) into `out` (one block per
    /// `BLOCK_ELEMS` elements), rounding exactly as llama.cpp's reference quantizer does.
    fn quantize_row(x: &[f32], out: &mut [Self]);
}

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
}

pub mod act;
pub mod cpu;
mod f16c;
pub mod float;
pub mod kquants;
pub mod legacy;
pub mod matmul;

pub use cpu::KernelPath;
