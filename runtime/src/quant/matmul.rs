//! The runtime's matrix-multiply entry point: a typed view of a weight matrix in the
//! mmap, activation quantization, and the row-parallel loop over the fused kernels.
//!
//! `out[t * rows + r] = dot(row r of W, x[t * cols .. (t + 1) * cols])`.
//!
//! Each activation row is quantized once per call to the weight type's activation
//! block type. Output rows are split over the rayon pool in chunks of whole 16-row
//! groups; within a chunk the token loop is innermost, so a weight row is read from
//! memory once and reused from L1 for every token.

use half::{bf16, f16};
use rayon::prelude::*;
use smq_format::GgmlType;

use super::act::BlockQ8_0;
use super::float;
use super::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1};
use super::{ActBlock, KernelPath, WeightBlock};

/// Why a weight matrix or a byte buffer cannot be used by the kernels.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("no CPU kernel for tensor type {0}")]
    UnsupportedType(GgmlType),
    #[error("row length {cols} is not a multiple of the {ty} block size {block}")]
    PartialBlock {
        ty: GgmlType,
        cols: usize,
        block: usize,
    },
    #[error("{ty} matrix of {rows}x{cols} needs {expected} bytes, got {actual}")]
    SizeMismatch {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("matrix shape {rows}x{cols} overflows the address space")]
    Overflow { rows: usize, cols: usize },
    #[error("{len} bytes are not a whole number of {size}-byte elements")]
    Length { len: usize, size: usize },
    #[error("data at {addr:#x} is not aligned to {align} bytes")]
    Misaligned { addr: usize, align: usize },
    #[error("row {row} out of range for a matrix of {rows} rows")]
    RowOutOfRange { row: usize, rows: usize },
}

/// Views `bytes` as a slice of `T`, checking length and alignment.
///
/// # Safety
/// Every bit pattern must be a valid `T` (plain integers and floats, no padding
/// that matters, no references).
unsafe fn cast_slice<T>(bytes: &[u8]) -> Result<&[T], KernelError> {
    let size = std::mem::size_of::<T>();
    let align = std::mem::align_of::<T>();
    if size == 0 || !bytes.len().is_multiple_of(size) {
        return Err(KernelError::Length {
            len: bytes.len(),
            size,
        });
    }
    let addr = bytes.as_ptr() as usize;
    if !addr.is_multiple_of(align) {
        return Err(KernelError::Misaligned { addr, align });
    }
    // SAFETY: the length is a whole number of elements, the pointer is aligned, the
    // lifetime is the input's, and the caller vouches for bit-pattern validity.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Views raw tensor bytes (from the mmap) as weight blocks.
///
/// Every `WeightBlock` implementor is a `#[repr(C)]` struct of integer and f16/f32
/// fields that overlays ggml's bytes, so any bit pattern is a valid value.
pub fn cast_blocks<B: WeightBlock>(bytes: &[u8]) -> Result<&[B], KernelError> {
    // SAFETY: see above; weight blocks are plain data by the module's convention.
    unsafe { cast_slice::<B>(bytes) }
}

/// Views raw bytes as f32 / f16 / bf16 elements (float weight rows).
pub fn cast_floats<T: float::FloatElem>(bytes: &[u8]) -> Result<&[T], KernelError> {
    // SAFETY: f32, f16 and bf16 accept every bit pattern.
    unsafe { cast_slice::<T>(bytes) }
}

/// A weight matrix view into the mmap: `rows` output rows of `cols` elements each.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// Alignment the typed view of `ty` needs (its block struct's alignment).
fn type_align(ty: GgmlType) -> Option<usize> {
    use std::mem::align_of;
    Some(match ty {
        GgmlType::F32 => align_of::<f32>(),
        GgmlType::F16 => align_of::<f16>(),
        GgmlType::BF16 => align_of::<bf16>(),
        GgmlType::Q4_0 => align_of::<BlockQ4_0>(),
        GgmlType::Q4_1 => align_of::<BlockQ4_1>(),
        GgmlType::Q5_0 => align_of::<BlockQ5_0>(),
        GgmlType::Q5_1 => align_of::<BlockQ5_1>(),
        GgmlType::Q8_0 => align_of::<BlockQ8_0>(),
        GgmlType::Q2K => align_of::<BlockQ2K>(),
        GgmlType::Q3K => align_of::<BlockQ3K>(),
        GgmlType::Q4K => align_of::<BlockQ4K>(),
        GgmlType::Q5K => align_of::<BlockQ5K>(),
        GgmlType::Q6K => align_of::<BlockQ6K>(),
        _ => return None,
    })
}

impl<'a> WeightMatrix<'a> {
    /// Checks that `ty` has a kernel, `cols` is whole blocks, `data` holds exactly
    /// `rows` rows and is aligned for the block type.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let align = type_align(ty).ok_or(KernelError::UnsupportedType(ty))?;
        let block = ty.block_size() as usize;
        if !cols.is_multiple_of(block) {
            return Err(KernelError::PartialBlock { ty, cols, block });
        }
        let expected = (cols / block)
            .checked_mul(ty.type_size() as usize)
            .and_then(|row| row.checked_mul(rows))
            .ok_or(KernelError::Overflow { rows, cols })?;
        if data.len() != expected {
            return Err(KernelError::SizeMismatch {
                ty,
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        let addr = data.as_ptr() as usize;
        if !addr.is_multiple_of(align) {
            return Err(KernelError::Misaligned { addr, align });
        }
        Ok(WeightMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() as usize * self.ty.type_size() as usize
    }

    /// The raw bytes of one row.
    pub fn row_data(&self, row: usize) -> Result<&'a [u8], KernelError> {
        if row >= self.rows {
            return Err(KernelError::RowOutOfRange {
                row,
                rows: self.rows,
            });
        }
        let rb = self.row_bytes();
        Ok(&self.data[row * rb..(row + 1) * rb])
    }
}

/// `out[t * rows + r] = dot(row r, x[t * cols ..])` on the best kernel path.
///
/// Panics if `x` or `out` do not hold exactly `n_tokens` rows (a caller bug, not
/// bad model input: the matrix itself was validated by [`WeightMatrix::new`]).
pub fn matmul(w: &WeightMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    matmul_with(super::cpu::best_path(), w, x, n_tokens, out)
}

/// [`matmul`] on an explicit kernel path; an unsupported path falls back to scalar.
pub fn matmul_with(
    path: KernelPath,
    w: &WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), n_tokens * w.cols, "activation length");
    assert_eq!(out.len(), n_tokens * w.rows, "output length");
    if n_tokens == 0 || w.rows == 0 {
        return;
    }
    // Never run code this CPU cannot execute, whatever the caller asked for.
    let path = if path.is_supported() {
        path
    } else {
        KernelPath::Scalar
    };
    match w.ty {
        GgmlType::Q4_0 => quantized::<BlockQ4_0>(path, w, x, n_tokens, out),
        GgmlType::Q4_1 => quantized::<BlockQ4_1>(path, w, x, n_tokens, out),
        GgmlType::Q5_0 => quantized::<BlockQ5_0>(path, w, x, n_tokens, out),
        GgmlType::Q5_1 => quantized::<BlockQ5_1>(path, w, x, n_tokens, out),
        GgmlType::Q8_0 => quantized::<BlockQ8_0>(path, w, x, n_tokens, out),
        GgmlType::Q2K => quantized::<BlockQ2K>(path, w, x, n_tokens, out),
        GgmlType::Q3K => quantized::<BlockQ3K>(path, w, x, n_tokens, out),
        GgmlType::Q4K => quantized::<BlockQ4K>(path, w, x, n_tokens, out),
        GgmlType::Q5K => quantized::<BlockQ5K>(path, w, x, n_tokens, out),
        GgmlType::Q6K => quantized::<BlockQ6K>(path, w, x, n_tokens, out),
        GgmlType::F32 => {
            let wv = cast_floats::<f32>(w.data).expect("validated by WeightMatrix::new");
            run_rows(w.rows, w.cols, n_tokens, out, |r, t| {
                let row = &wv[r * w.cols..(r + 1) * w.cols];
                float::dot_f32(path, row, &x[t * w.cols..(t + 1) * w.cols])
            });
        }
        GgmlType::F16 => {
            let wv = cast_floats::<f16>(w.data).expect("validated by WeightMatrix::new");
            let mut xa = vec![f16::ZERO; x.len()];
            float::f32_to_f16_row(x, &mut xa);
            run_rows(w.rows, w.cols, n_tokens, out, |r, t| {
                let row = &wv[r * w.cols..(r + 1) * w.cols];
                float::dot_f16(path, row, &xa[t * w.cols..(t + 1) * w.cols])
            });
        }
        GgmlType::BF16 => {
            let wv = cast_floats::<bf16>(w.data).expect("validated by WeightMatrix::new");
            let mut xa = vec![bf16::ZERO; x.len()];
            float::f32_to_bf16_row(x, &mut xa);
            run_rows(w.rows, w.cols, n_tokens, out, |r, t| {
                let row = &wv[r * w.cols..(r + 1) * w.cols];
                float::dot_bf16(path, row, &xa[t * w.cols..(t + 1) * w.cols])
            });
        }
        other => unreachable!("WeightMatrix::new admits no {other} matrix"),
    }
}

/// Quantizes the activations to `B::Act` and runs the fused block dot products.
fn quantized<B: WeightBlock>(
    path: KernelPath,
    w: &WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) {
    let blocks = cast_blocks::<B>(w.data).expect("validated by WeightMatrix::new");
    let bpr = w.cols / B::BLOCK_ELEMS;
    let apr = w.cols / <B::Act as ActBlock>::BLOCK_ELEMS;
    let mut act = vec![B::Act::default(); apr * n_tokens];
    for (xr, ar) in x.chunks_exact(w.cols).zip(act.chunks_exact_mut(apr)) {
        B::Act::quantize_row(xr, ar);
    }
    let row = |r: usize| &blocks[r * bpr..(r + 1) * bpr];
    let tok = |t: usize| &act[t * apr..(t + 1) * apr];
    run_rows_x4(
        w.rows,
        w.cols,
        n_tokens,
        out,
        |r, t| B::vec_dot(path, row(r), tok(t)),
        |r, t| B::vec_dot_x4(path, row(r), [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)]),
    );
}

/// Rows per parallel task: whole 16-row groups, about four tasks per thread for
/// balance, and at least enough rows that a task outweighs rayon's dispatch cost.
fn chunk_rows(rows: usize, cols: usize) -> usize {
    const GROUP: usize = 16;
    // ~32K weight elements per task keeps scheduling overhead in the noise.
    const MIN_ELEMS: usize = 32 * 1024;
    let threads = rayon::current_num_threads().max(1);
    let balanced = rows.div_ceil(4 * threads);
    let min_rows = MIN_ELEMS.div_ceil(cols.max(1));
    balanced.max(min_rows).div_ceil(GROUP).max(1) * GROUP
}

/// Evaluates `dot(r, t)` for every row and token into `out[t * rows + r]`, rows split
/// over the thread pool, tokens innermost.
fn run_rows<F>(rows: usize, cols: usize, n_tokens: usize, out: &mut [f32], dot: F)
where
    F: Fn(usize, usize) -> f32 + Sync,
{
    run_rows_x4(rows, cols, n_tokens, out, &dot, |r, t| {
        std::array::from_fn(|k| dot(r, t + k))
    })
}

/// [`run_rows`] where `dot4(r, t)` gives tokens `t..t + 4` of row `r` at once (equal to
/// four `dot` calls), so a weight row is unpacked once per four tokens.
fn run_rows_x4<F, F4>(rows: usize, cols: usize, n_tokens: usize, out: &mut [f32], dot: F, dot4: F4)
where
    F: Fn(usize, usize) -> f32 + Sync,
    F4: Fn(usize, usize) -> [f32; 4] + Sync,
{
    let chunk = chunk_rows(rows, cols);
    if n_tokens == 1 {
        let body = |(ci, o): (usize, &mut [f32])| {
            for (i, v) in o.iter_mut().enumerate() {
                *v = dot(ci * chunk + i, 0);
            }
        };
        if rows <= chunk {
            body((0, out));
        } else {
            out.par_chunks_mut(chunk).enumerate().for_each(body);
        }
        return;
    }
    // Row-major [row][token] scratch so each task owns one contiguous piece, then a
    // transpose into the [token][row] output (rows * n_tokens copies, negligible next
    // to rows * n_tokens * cols multiply-adds).
    let mut tmp = vec![0.0f32; rows * n_tokens];
    let body = |(ci, o): (usize, &mut [f32])| {
        for (i, per_tok) in o.chunks_exact_mut(n_tokens).enumerate() {
            let r = ci * chunk + i;
            let mut quads = per_tok.chunks_exact_mut(4);
            for (q, v) in (&mut quads).enumerate() {
                v.copy_from_slice(&dot4(r, 4 * q));
            }
            let done = n_tokens - quads.into_remainder().len();
            for (t, v) in per_tok.iter_mut().enumerate().skip(done) {
                *v = dot(r, t);
            }
        }
    };
    if rows <= chunk {
        body((0, &mut tmp));
    } else {
        tmp.par_chunks_mut(chunk * n_tokens)
            .enumerate()
            .for_each(body);
    }
    for (r, per_tok) in tmp.chunks_exact(n_tokens).enumerate() {
        for (t, &v) in per_tok.iter().enumerate() {
            out[t * rows + r] = v;
        }
    }
}

/// Dequantizes row `row` of `w` into `out` (`w.cols` values): the embedding lookup.
pub fn dequantize_row(w: &WeightMatrix, row: usize, out: &mut [f32]) -> Result<(), KernelError> {
    assert_eq!(out.len(), w.cols, "output length");
    let bytes = w.row_data(row)?;
    fn blocks<B: WeightBlock>(bytes: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
        for (b, o) in cast_blocks::<B>(bytes)?
            .iter()
            .zip(out.chunks_exact_mut(B::BLOCK_ELEMS))
        {
            b.dequantize(o);
        }
        Ok(())
    }
    match w.ty {
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(bytes, out),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(bytes, out),
        GgmlType::Q5_0 => blocks::<BlockQ5_0>(bytes, out),
        GgmlType::Q5_1 => blocks::<BlockQ5_1>(bytes, out),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(bytes, out),
        GgmlType::Q2K => blocks::<BlockQ2K>(bytes, out),
        GgmlType::Q3K => blocks::<BlockQ3K>(bytes, out),
        GgmlType::Q4K => blocks::<BlockQ4K>(bytes, out),
        GgmlType::Q5K => blocks::<BlockQ5K>(bytes, out),
        GgmlType::Q6K => blocks::<BlockQ6K>(bytes, out),
        GgmlType::F32 => {
            out.copy_from_slice(cast_floats::<f32>(bytes)?);
            Ok(())
        }
        GgmlType::F16 => {
            for (o, v) in out.iter_mut().zip(cast_floats::<f16>(bytes)?) {
                *o = v.to_f32();
            }
            Ok(())
        }
        GgmlType::BF16 => {
            for (o, v) in out.iter_mut().zip(cast_floats::<bf16>(bytes)?) {
                *o = v.to_f32();
            }
            Ok(())
        }
        other => Err(KernelError::UnsupportedType(other)),
    }
}
