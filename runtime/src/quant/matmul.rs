//! The runtime's matrix-multiply entry point: a typed view of a weight matrix in the
//! mmap, activation quantization, and the row-parallel loop over the fused kernels.
//!
//! `out[t * rows + r] = dot(row r of W, x[t * cols .. (t + 1) * cols])`.
//!
//! Each activation row is quantized once per call to the weight type's activation
//! block type. Output rows are split into chunks of whole 16-row groups that the
//! threads of the [`Team`] claim; within a chunk the token loop is innermost, so a
//! weight row is read from memory once and reused from cache for every token.

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use smq_format::GgmlType;

use super::act::BlockQ8_0;
use super::float;
use super::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1};
use super::unpacked::UnpackedRows;
use super::{ActBlock, KernelPath, WeightBlock, PANEL_TOKENS};
use crate::team::{Chunks, Team};

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
    matmul_group_with(path, &mut [(w, out)], x, n_tokens)
}

/// Several matrices applied to the same input (Q/K/V, gate/up) in one parallel region:
/// `out_i[t * rows_i + r] = dot(row r of W_i, x[t * cols ..])`.
pub fn matmul_group(jobs: &mut [(&WeightMatrix, &mut [f32])], x: &[f32], n_tokens: usize) {
    matmul_group_with(super::cpu::best_path(), jobs, x, n_tokens)
}

/// [`matmul_group`] on an explicit kernel path.
pub fn matmul_group_with(
    path: KernelPath,
    jobs: &mut [(&WeightMatrix, &mut [f32])],
    x: &[f32],
    n_tokens: usize,
) {
    // Never run code this CPU cannot execute, whatever the caller asked for.
    let path = if path.is_supported() {
        path
    } else {
        KernelPath::Scalar
    };
    for (w, out) in jobs.iter() {
        assert_eq!(x.len(), n_tokens * w.cols, "activation length");
        assert_eq!(out.len(), n_tokens * w.rows, "output length");
    }
    if n_tokens == 0 {
        return;
    }
    let mut acts = ActCache::default();
    let prepared: Vec<Prepared> = jobs
        .iter_mut()
        .filter(|(w, _)| w.rows > 0)
        .map(|(w, out)| prepare(path, w, x, n_tokens, Out::new(out), &mut acts))
        .collect();
    run_prepared(&prepared);
}

/// `$body` with `B` the block type of quantized `$ty`; `$other` (bound to the type)
/// for the float types.
macro_rules! for_quant_block {
    ($ty:expr, $B:ident => $body:expr, $other:pat => $fallback:expr) => {
        match $ty {
            GgmlType::Q4_0 => {
                type $B = BlockQ4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $B = BlockQ4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $B = BlockQ5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $B = BlockQ5_1;
                $body
            }
            GgmlType::Q8_0 => {
                type $B = BlockQ8_0;
                $body
            }
            GgmlType::Q2K => {
                type $B = BlockQ2K;
                $body
            }
            GgmlType::Q3K => {
                type $B = BlockQ3K;
                $body
            }
            GgmlType::Q4K => {
                type $B = BlockQ4K;
                $body
            }
            GgmlType::Q5K => {
                type $B = BlockQ5K;
                $body
            }
            GgmlType::Q6K => {
                type $B = BlockQ6K;
                $body
            }
            $other => $fallback,
        }
    };
}

/// An element-wise gate activation, `gate[i] = act(gate[i]) · up[i]` (SwiGLU, GeGLU):
/// the same values on any split of the two slices.
pub type GateFn = fn(&mut [f32], &[f32]);

/// The gated FFN's input projections and activation:
/// `gate = act(W_gate · x) · (W_up · x)`, with `up` as scratch of the same size.
///
/// For prompts, when both matrices have the same quantized type, each group of rows
/// runs through both matrices together and `tile` is applied to the two results while
/// they are in cache: one output written instead of two, and no pass over both
/// afterwards (`up` is left unwritten). Otherwise the two matmuls run as
/// one group and `batch` applies the activation. `tile` and `batch` must compute the
/// same function (e.g. `ops::swiglu` and its batch split); either way `gate` ends with
/// the same bits.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated(
    w_gate: &WeightMatrix,
    w_up: &WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    gate: &mut [f32],
    up: &mut [f32],
    tile: GateFn,
    batch: GateFn,
) {
    matmul_gated_with(
        super::cpu::best_path(),
        w_gate,
        w_up,
        x,
        n_tokens,
        gate,
        up,
        tile,
        batch,
    )
}

/// [`matmul_gated`] on an explicit kernel path.
#[allow(clippy::too_many_arguments)]
pub fn matmul_gated_with(
    path: KernelPath,
    w_gate: &WeightMatrix,
    w_up: &WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    gate: &mut [f32],
    up: &mut [f32],
    tile: GateFn,
    batch: GateFn,
) {
    let path = if path.is_supported() {
        path
    } else {
        KernelPath::Scalar
    };
    let same_shape = w_gate.ty == w_up.ty && w_gate.rows == w_up.rows && w_gate.cols == w_up.cols;
    if same_shape && n_tokens >= PANEL_MIN_TOKENS && w_gate.rows > 0 {
        assert_eq!(x.len(), n_tokens * w_gate.cols, "activation length");
        assert_eq!(gate.len(), n_tokens * w_gate.rows, "output length");
        let mut acts = ActCache::default();
        let out = Out::new(gate);
        let fused = for_quant_block!(w_gate.ty, B => {
            Some(gated::<B>(path, w_gate, w_up, x, n_tokens, out, &mut acts, tile))
        }, _ => None);
        if let Some(fused) = fused {
            run_prepared(&[fused]);
            return;
        }
    }
    matmul_group_with(
        path,
        &mut [(w_gate, &mut *gate), (w_up, &mut *up)],
        x,
        n_tokens,
    );
    batch(gate, up);
}

/// The fused gate/up row task for quantized type `B`.
#[allow(clippy::too_many_arguments)]
fn gated<'a, B: WeightBlock>(
    path: KernelPath,
    w_gate: &WeightMatrix<'a>,
    w_up: &WeightMatrix<'a>,
    x: &[f32],
    n_tokens: usize,
    out: Out,
    acts: &mut ActCache,
    tile: GateFn,
) -> Prepared<'a> {
    let gate = cast_blocks::<B>(w_gate.data).expect("validated by WeightMatrix::new");
    let up = cast_blocks::<B>(w_up.data).expect("validated by WeightMatrix::new");
    let rows = w_gate.rows;
    let bpr = w_gate.cols / B::BLOCK_ELEMS;
    let act = acts.get::<B::Act>(x, w_gate.cols, n_tokens, true);
    Prepared {
        rows,
        // Each row is two rows' work.
        chunk: chunk_rows(2 * rows, w_gate.cols)
            .div_ceil(2)
            .next_multiple_of(16),
        long_chunks: true,
        run: Box::new(move |range| {
            let mut lanes = [[0.0f32; PANEL_TOKENS]; PANEL_ROWS];
            let mut lanes_up = [[0.0f32; PANEL_TOKENS]; PANEL_ROWS];
            let (mut g, mut u) = (GroupRows::default(), GroupRows::default());
            let end = range.end;
            for r0 in range.step_by(PANEL_ROWS) {
                let n = PANEL_ROWS.min(end - r0);
                let rows_of = |w: &'a [B]| &w[r0 * bpr..(r0 + n) * bpr];
                g.load(path, rows_of(gate), bpr, act.panels.len());
                u.load(path, rows_of(up), bpr, act.panels.len());
                for (pi, panel) in act.panels.iter().enumerate() {
                    g.dot(path, panel, &mut lanes[..n]);
                    u.dot(path, panel, &mut lanes_up[..n]);
                    tile(lanes[..n].as_flattened_mut(), lanes_up[..n].as_flattened());
                    let t0 = pi * PANEL_TOKENS;
                    let tile = Tile {
                        rows,
                        owned_end: end,
                        r0,
                        t0,
                        n_tok: PANEL_TOKENS.min(n_tokens - t0),
                    };
                    out.set_tile(path, &lanes[..n], tile);
                }
            }
        }),
    }
}

/// The output of one matmul, written by several threads at once: every chunk of rows
/// writes only its own rows (`out[t * rows + r]` for its `r`), so writes never overlap.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Out` is only used to write disjoint elements from different threads while the
// `&mut [f32]` it came from is borrowed by `matmul_group_with`.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn new(out: &mut [f32]) -> Out {
        Out {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    #[inline(always)]
    fn set(&self, i: usize, v: f32) {
        assert!(i < self.len, "output index {i} out of {}", self.len);
        // SAFETY: in bounds (checked), and no other thread writes element `i` (see type).
        unsafe { *self.ptr.add(i) = v }
    }

    /// Writes a panel kernel's results, `lanes[i][t]` for output row `r0 + i` and token
    /// `t0 + t`, into the token-major output: a transpose, with 8x8 AVX blocks where
    /// the path allows (the values are only moved, never changed).
    fn set_tile(&self, path: KernelPath, lanes: &[[f32; PANEL_TOKENS]], tile: Tile) {
        let n = lanes.len();
        if n == 0 || tile.n_tok == 0 {
            return;
        }
        assert!(tile.n_tok <= PANEL_TOKENS, "tile of {} tokens", tile.n_tok);
        // The rows must be the caller's own (see type): checked per tile, not per element.
        assert!(
            tile.r0 + n <= tile.owned_end && tile.owned_end <= tile.rows,
            "tile rows {}..{} outside the chunk ending at {}",
            tile.r0,
            tile.r0 + n,
            tile.owned_end
        );
        // The highest index written, checked once for the whole tile.
        let end = (tile.t0 + tile.n_tok - 1) * tile.rows + tile.r0 + n;
        assert!(
            end <= self.len,
            "output tile ends at {end}, past {}",
            self.len
        );
        #[cfg(target_arch = "x86_64")]
        if path >= KernelPath::Avx2 {
            // SAFETY: AVX is part of every path from Avx2 up, which the caller checked
            // this CPU supports; the tile is in bounds (checked above) and its rows
            // belong to the calling chunk (see type).
            unsafe { self.set_tile_avx(lanes, tile) };
            return;
        }
        let _ = path;
        // SAFETY: as above.
        unsafe { self.set_tile_scalar(lanes, tile, 0..n, 0..tile.n_tok) };
    }

    /// The scalar transpose of the `rows` x `toks` part of a tile.
    ///
    /// # Safety
    /// The whole tile must be in bounds and owned by the caller (see [`Out::set_tile`]).
    unsafe fn set_tile_scalar(
        &self,
        lanes: &[[f32; PANEL_TOKENS]],
        tile: Tile,
        rows: std::ops::Range<usize>,
        toks: std::ops::Range<usize>,
    ) {
        for t in toks {
            let base = (tile.t0 + t) * tile.rows + tile.r0;
            for i in rows.clone() {
                // SAFETY: inside the tile (caller's contract).
                unsafe { *self.ptr.add(base + i) = lanes[i][t] };
            }
        }
    }

    /// [`Out::set_tile_scalar`] of the whole tile, full 8x8 blocks transposed in AVX
    /// registers and stored as one 8-row run per token.
    ///
    /// # Safety
    /// The CPU must support AVX; the tile as for [`Out::set_tile_scalar`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    unsafe fn set_tile_avx(&self, lanes: &[[f32; PANEL_TOKENS]], tile: Tile) {
        use std::arch::x86_64::*;
        let n = lanes.len();
        let (n8, t8) = (n & !7, tile.n_tok & !7);
        for t in (0..t8).step_by(8) {
            for i in (0..n8).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (k, rk) in r.iter_mut().enumerate() {
                    *rk = _mm256_loadu_ps(lanes[i + k][t..t + 8].as_ptr());
                }
                // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves:
                // column k of the 8x8 block ends up in `c[k]`.
                let a0 = _mm256_unpacklo_ps(r[0], r[1]);
                let a1 = _mm256_unpackhi_ps(r[0], r[1]);
                let a2 = _mm256_unpacklo_ps(r[2], r[3]);
                let a3 = _mm256_unpackhi_ps(r[2], r[3]);
                let a4 = _mm256_unpacklo_ps(r[4], r[5]);
                let a5 = _mm256_unpackhi_ps(r[4], r[5]);
                let a6 = _mm256_unpacklo_ps(r[6], r[7]);
                let a7 = _mm256_unpackhi_ps(r[6], r[7]);
                let b0 = _mm256_shuffle_ps::<0x44>(a0, a2);
                let b1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
                let b2 = _mm256_shuffle_ps::<0x44>(a1, a3);
                let b3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
                let b4 = _mm256_shuffle_ps::<0x44>(a4, a6);
                let b5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
                let b6 = _mm256_shuffle_ps::<0x44>(a5, a7);
                let b7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
                let c = [
                    _mm256_permute2f128_ps::<0x20>(b0, b4),
                    _mm256_permute2f128_ps::<0x20>(b1, b5),
                    _mm256_permute2f128_ps::<0x20>(b2, b6),
                    _mm256_permute2f128_ps::<0x20>(b3, b7),
                    _mm256_permute2f128_ps::<0x31>(b0, b4),
                    _mm256_permute2f128_ps::<0x31>(b1, b5),
                    _mm256_permute2f128_ps::<0x31>(b2, b6),
                    _mm256_permute2f128_ps::<0x31>(b3, b7),
                ];
                for (k, ck) in c.into_iter().enumerate() {
                    let at = (tile.t0 + t + k) * tile.rows + tile.r0 + i;
                    // SAFETY: rows `i..i + 8` of token `t + k` lie inside the tile.
                    unsafe { _mm256_storeu_ps(self.ptr.add(at), ck) };
                }
            }
        }
        // The ragged edges: leftover rows for every token, leftover tokens for the rest.
        // SAFETY: both parts lie inside the tile.
        unsafe {
            self.set_tile_scalar(lanes, tile, n8..n, 0..tile.n_tok);
            self.set_tile_scalar(lanes, tile, 0..n8, t8..tile.n_tok);
        }
    }
}

/// Where a panel kernel's result tile goes in a token-major output of `rows` rows:
/// output rows from `r0`, tokens `t0..t0 + n_tok`, inside the writer's chunk of rows
/// (which ends at `owned_end`).
#[derive(Clone, Copy, Debug)]
struct Tile {
    rows: usize,
    owned_end: usize,
    r0: usize,
    t0: usize,
    n_tok: usize,
}

/// One matmul ready to run: `run(range)` computes output rows `range` for every token.
struct Prepared<'a> {
    rows: usize,
    chunk: usize,
    /// Chunks long enough (prompts) that the region's end is cut finer.
    long_chunks: bool,
    run: Box<dyn Fn(std::ops::Range<usize>) + Sync + 'a>,
}

/// Runs every chunk of every prepared matmul on the team, chunks claimed in order.
///
/// For prompts, the last quarter of the rows goes out in chunks of [`TAIL_ROWS`]: the
/// threads then run out of work within one small chunk of each other, instead of one
/// waiting for another's last large chunk. (Decoding keeps its few chunks: a claim
/// costs more than a short chunk's imbalance.)
fn run_prepared(prepared: &[Prepared]) {
    let total: usize = prepared.iter().map(|p| p.rows).sum();
    let mut chunks: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut done = 0;
    for (i, p) in prepared.iter().enumerate() {
        let mut r = 0;
        while r < p.rows {
            let size = if p.long_chunks && 4 * done >= 3 * total {
                p.chunk.min(TAIL_ROWS)
            } else {
                p.chunk
            };
            let end = (r + size).min(p.rows);
            chunks.push((i, r..end));
            done += end - r;
            r = end;
        }
    }
    let team = Team::global();
    if chunks.len() == 1 || team.threads() == 1 {
        for (i, r) in chunks {
            (prepared[i].run)(r);
        }
        return;
    }
    let next = Chunks::new(chunks.len(), 1);
    team.run(&|_| {
        while let Some(c) = next.claim() {
            for (i, r) in &chunks[c] {
                (prepared[*i].run)(r.clone());
            }
        }
    });
}

/// Quantizes the activations (per the weight type) and wraps the row kernel.
fn prepare<'a>(
    path: KernelPath,
    w: &WeightMatrix<'a>,
    x: &'a [f32],
    n_tokens: usize,
    out: Out,
    acts: &mut ActCache,
) -> Prepared<'a> {
    for_quant_block!(w.ty, B => quantized::<B>(path, w, x, n_tokens, out, acts), other => match other {
        GgmlType::F32 => {
            let wv = cast_floats::<f32>(w.data).expect("validated by WeightMatrix::new");
            let cols = w.cols;
            rows_task(w, n_tokens, out, move |r, t| {
                float::dot_f32(
                    path,
                    &wv[r * cols..(r + 1) * cols],
                    &x[t * cols..(t + 1) * cols],
                )
            })
        }
        GgmlType::F16 => {
            let wv = cast_floats::<f16>(w.data).expect("validated by WeightMatrix::new");
            let mut xa = vec![f16::ZERO; x.len()];
            float::f32_to_f16_row(x, &mut xa);
            let cols = w.cols;
            rows_task(w, n_tokens, out, move |r, t| {
                float::dot_f16(
                    path,
                    &wv[r * cols..(r + 1) * cols],
                    &xa[t * cols..(t + 1) * cols],
                )
            })
        }
        GgmlType::BF16 => {
            let wv = cast_floats::<bf16>(w.data).expect("validated by WeightMatrix::new");
            let mut xa = vec![bf16::ZERO; x.len()];
            float::f32_to_bf16_row(x, &mut xa);
            let cols = w.cols;
            rows_task(w, n_tokens, out, move |r, t| {
                float::dot_bf16(
                    path,
                    &wv[r * cols..(r + 1) * cols],
                    &xa[t * cols..(t + 1) * cols],
                )
            })
        }
        other => unreachable!("WeightMatrix::new admits no {other} matrix"),
    })
}

/// A row task from a per-(row, token) dot product.
fn rows_task<'a, F>(w: &WeightMatrix, n_tokens: usize, out: Out, dot: F) -> Prepared<'a>
where
    F: Fn(usize, usize) -> f32 + Sync + 'a,
{
    let rows = w.rows;
    Prepared {
        rows,
        chunk: chunk_rows(rows, w.cols),
        long_chunks: n_tokens >= PANEL_MIN_TOKENS,
        run: Box::new(move |range| {
            for r in range {
                for t in 0..n_tokens {
                    out.set(t * rows + r, dot(r, t));
                }
            }
        }),
    }
}

/// Quantizes the activations to `B::Act` and wraps the fused block kernels: panels of
/// 16 tokens for prompts, four tokens at a time for short batches, single rows for
/// decoding.
fn quantized<'a, B: WeightBlock>(
    path: KernelPath,
    w: &WeightMatrix<'a>,
    x: &[f32],
    n_tokens: usize,
    out: Out,
    acts: &mut ActCache,
) -> Prepared<'a> {
    let blocks = cast_blocks::<B>(w.data).expect("validated by WeightMatrix::new");
    let rows = w.rows;
    let bpr = w.cols / B::BLOCK_ELEMS;
    let apr = w.cols / <B::Act as ActBlock>::BLOCK_ELEMS;
    let chunk = chunk_rows(rows, w.cols);
    let panels = n_tokens >= PANEL_MIN_TOKENS;
    let act = acts.get::<B::Act>(x, w.cols, n_tokens, panels);
    if panels {
        return Prepared {
            rows,
            chunk,
            long_chunks: true,
            run: Box::new(move |range| {
                // Within a chunk the panel loop is innermost, so the chunk's weights
                // stay in cache for every panel.
                let mut lanes = [[0.0f32; PANEL_TOKENS]; PANEL_ROWS];
                let mut group = GroupRows::default();
                let end = range.end;
                for r0 in range.step_by(PANEL_ROWS) {
                    // Up to the chunk's end, not the matrix's: the rows past it belong
                    // to the next chunk (another thread's, and work done twice).
                    let n = PANEL_ROWS.min(end - r0);
                    group.load(
                        path,
                        &blocks[r0 * bpr..(r0 + n) * bpr],
                        bpr,
                        act.panels.len(),
                    );
                    for (pi, panel) in act.panels.iter().enumerate() {
                        group.dot(path, panel, &mut lanes[..n]);
                        let t0 = pi * PANEL_TOKENS;
                        let tile = Tile {
                            rows,
                            owned_end: end,
                            r0,
                            t0,
                            n_tok: PANEL_TOKENS.min(n_tokens - t0),
                        };
                        out.set_tile(path, &lanes[..n], tile);
                    }
                }
            }),
        };
    }
    Prepared {
        rows,
        chunk,
        long_chunks: n_tokens >= PANEL_MIN_TOKENS,
        run: Box::new(move |range| {
            let tok = |t: usize| &act.rows[t * apr..(t + 1) * apr];
            for r in range {
                let row = &blocks[r * bpr..(r + 1) * bpr];
                let mut t = 0;
                while t + 4 <= n_tokens {
                    let four =
                        B::vec_dot_x4(path, row, [tok(t), tok(t + 1), tok(t + 2), tok(t + 3)]);
                    for (k, v) in four.into_iter().enumerate() {
                        out.set((t + k) * rows + r, v);
                    }
                    t += 4;
                }
                for t in t..n_tokens {
                    out.set(t * rows + r, B::vec_dot(path, row, tok(t)));
                }
            }
        }),
    }
}

/// One group of up to [`PANEL_ROWS`] weight rows, ready to run every panel over.
struct GroupRows<'w, B> {
    w: &'w [B],
    unpacked: UnpackedRows,
    is_unpacked: bool,
}

thread_local! {
    /// Unpacked-row buffers of finished groups, reused by the next (an allocation, its
    /// zero-fill and its free per chunk cost about 2% of a short prompt).
    static SPARE_UNPACKED: std::cell::RefCell<Vec<UnpackedRows>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl<B> Default for GroupRows<'_, B> {
    fn default() -> Self {
        GroupRows {
            w: &[],
            unpacked: SPARE_UNPACKED.with_borrow_mut(Vec::pop).unwrap_or_default(),
            is_unpacked: false,
        }
    }
}

impl<B> Drop for GroupRows<'_, B> {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.unpacked);
        SPARE_UNPACKED.with_borrow_mut(|spare| spare.push(buffer));
    }
}

impl<'w, B: WeightBlock> GroupRows<'w, B> {
    /// Takes rows `w` (`bpr` blocks each) for `n_panels` panels: unpacked once when the
    /// type has the shared kernel on `path` and there are enough panels to pay for it
    /// (unpacking costs about one panel of the per-type kernels and saves ~30% of each).
    fn load(&mut self, path: KernelPath, w: &'w [B], bpr: usize, n_panels: usize) {
        self.w = w;
        self.is_unpacked = n_panels >= 4 && B::unpack_rows(path, w, bpr, &mut self.unpacked);
    }

    /// Every row against one panel: `lanes[i][t]` for row `i`, token `t`.
    fn dot(
        &self,
        path: KernelPath,
        panel: &<B::Act as ActBlock>::Panel,
        lanes: &mut [[f32; PANEL_TOKENS]],
    ) {
        if self.is_unpacked {
            B::unpacked_panel_dot(path, &self.unpacked, panel, lanes);
        } else {
            B::panel_dot(path, self.w, panel, lanes);
        }
    }
}

/// Quantized activations of one matmul input: the rows (`cols / A::BLOCK_ELEMS` blocks
/// per token) and, for prompts, their 16-token panels.
struct Acts<A: ActBlock> {
    rows: Vec<A>,
    panels: Vec<A::Panel>,
}

/// The activations of one input quantized once per activation type, shared by every
/// matrix of a group (Q, K and V all read the same normed input).
#[derive(Default)]
struct ActCache {
    entries: Vec<(TypeId, bool, Arc<dyn Any + Send + Sync>)>,
}

impl ActCache {
    fn get<A: ActBlock>(
        &mut self,
        x: &[f32],
        cols: usize,
        n_tokens: usize,
        panels: bool,
    ) -> Arc<Acts<A>> {
        let key = TypeId::of::<A>();
        if let Some((_, _, a)) = self.entries.iter().find(|e| e.0 == key && e.1 == panels) {
            return Arc::clone(a).downcast().expect("keyed by type");
        }
        let acts = Arc::new(quantize_acts::<A>(x, cols, n_tokens, panels));
        self.entries.push((key, panels, acts.clone()));
        acts
    }
}

/// Quantizes `n_tokens` rows of `cols` values, 16 tokens per task on the team: for
/// prompts straight into panels (`panels`), else into rows.
fn quantize_acts<A: ActBlock>(x: &[f32], cols: usize, n_tokens: usize, panels: bool) -> Acts<A> {
    let n_groups = n_tokens.div_ceil(PANEL_TOKENS);
    let token_rows = |gi: usize| {
        let first = gi * PANEL_TOKENS;
        let last = (first + PANEL_TOKENS).min(n_tokens);
        &x[first * cols..last * cols]
    };
    if panels {
        let slots: Vec<Mutex<Option<A::Panel>>> = (0..n_groups).map(|_| Mutex::new(None)).collect();
        on_team(n_groups, |gi| {
            let xs: Vec<&[f32]> = token_rows(gi).chunks_exact(cols).collect();
            let panel = A::quantize_panel(&xs);
            *slots[gi].lock().unwrap_or_else(|e| e.into_inner()) = Some(panel);
        });
        let panels = slots
            .into_iter()
            .map(|s| {
                let slot = s.into_inner().unwrap_or_else(|e| e.into_inner());
                slot.expect("every group quantized")
            })
            .collect();
        return Acts {
            rows: Vec::new(),
            panels,
        };
    }
    let apr = cols / A::BLOCK_ELEMS;
    let mut rows = vec![A::default(); apr * n_tokens];
    let groups: Vec<Mutex<&mut [A]>> = rows
        .chunks_mut(apr * PANEL_TOKENS)
        .map(Mutex::new)
        .collect();
    on_team(n_groups, |gi| {
        let mut out = groups[gi].lock().unwrap_or_else(|e| e.into_inner());
        for (xr, ar) in token_rows(gi)
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(apr))
        {
            A::quantize_row(xr, ar);
        }
    });
    drop(groups);
    Acts {
        rows,
        panels: Vec::new(),
    }
}

/// Runs `work(i)` for `i` in `0..n` on the team (inline when there is one item).
fn on_team(n: usize, work: impl Fn(usize) + Sync) {
    if n <= 1 {
        (0..n).for_each(&work);
        return;
    }
    let next = Chunks::new(n, 1);
    Team::global().run(&|_| {
        while let Some(r) = next.claim() {
            r.for_each(&work);
        }
    });
}

/// Prompts at least this long use the panel kernels (below, a panel's empty lanes
/// cost more than the four-token kernels lose).
const PANEL_MIN_TOKENS: usize = 8;

/// Rows of the small chunks at the end of a region (whole 16-row groups, so chunk
/// boundaries stay on cache lines of the output).
const TAIL_ROWS: usize = 16;

/// Rows per panel-kernel call: their results for one panel fit in 4 KB on the stack.
const PANEL_ROWS: usize = 64;

/// Rows per parallel chunk: whole 16-row groups, about four chunks per thread for
/// balance, and at least enough rows that a chunk outweighs claiming it.
fn chunk_rows(rows: usize, cols: usize) -> usize {
    const GROUP: usize = 16;
    // ~32K weight elements per chunk keeps claiming overhead in the noise.
    const MIN_ELEMS: usize = 32 * 1024;
    let threads = Team::global().threads();
    let balanced = rows.div_ceil(4 * threads);
    let min_rows = MIN_ELEMS.div_ceil(cols.max(1));
    balanced.max(min_rows).div_ceil(GROUP).max(1) * GROUP
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A row task of a prompt matmul writes its own rows and no others (other threads
    /// own them), for ranges that are not whole 64-row groups.
    #[test]
    fn a_panel_task_writes_only_its_rows() {
        let (rows, cols, n_tokens) = (144usize, 64usize, 40usize);
        // Q8_0 blocks (34 bytes: f16 scale, 32 quants) with varied bytes.
        let data: Vec<u8> = (0..rows * cols / 32 * 34)
            .map(|i| match i % 34 {
                0 => 0x00,
                1 => 0x2c, // scale 1/16
                _ => (i * 37 % 251) as u8,
            })
            .collect();
        let w = WeightMatrix::new(GgmlType::Q8_0, rows, cols, &data).unwrap();
        let x: Vec<f32> = (0..cols * n_tokens)
            .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        for path in KernelPath::supported() {
            let mut want = vec![0.0f32; rows * n_tokens];
            matmul_with(path, &w, &x, n_tokens, &mut want);
            for range in [0..16, 16..96, 80..144] {
                let mut out = vec![f32::NAN; rows * n_tokens];
                let task = prepare(
                    path,
                    &w,
                    &x,
                    n_tokens,
                    Out::new(&mut out),
                    &mut ActCache::default(),
                );
                (task.run)(range.clone());
                for t in 0..n_tokens {
                    for r in 0..rows {
                        let got = out[t * rows + r];
                        if range.contains(&r) {
                            assert_eq!(got, want[t * rows + r], "{path:?} row {r} token {t}");
                        } else {
                            assert!(got.is_nan(), "{path:?} {range:?} wrote row {r}");
                        }
                    }
                }
            }
        }
    }

    /// The fused gate/up/activation step gives the bits of the two matmuls followed by
    /// the activation, for prompts (fused, with and without unpacked rows) and short
    /// batches (unfused), on every path.
    #[test]
    fn gated_matmul_equals_matmuls_then_activation() {
        let (rows, cols) = (80usize, 96usize);
        let q8_0_rows = |seed: usize| -> Vec<u8> {
            (0..rows * cols / 32 * 34)
                .map(|i| match i % 34 {
                    0 => 0x00,
                    1 => 0x2c,
                    _ => ((i + seed) * 37 % 251) as u8,
                })
                .collect()
        };
        let (gd, ud) = (q8_0_rows(1), q8_0_rows(7));
        let wg = WeightMatrix::new(GgmlType::Q8_0, rows, cols, &gd).unwrap();
        let wu = WeightMatrix::new(GgmlType::Q8_0, rows, cols, &ud).unwrap();
        for n_tokens in [3usize, 20, 70] {
            let x: Vec<f32> = (0..cols * n_tokens)
                .map(|i| (i * 7919 % 1000) as f32 / 250.0 - 2.0)
                .collect();
            for path in KernelPath::supported() {
                let mut want_g = vec![0.0f32; rows * n_tokens];
                let mut want_u = vec![0.0f32; rows * n_tokens];
                matmul_with(path, &wg, &x, n_tokens, &mut want_g);
                matmul_with(path, &wu, &x, n_tokens, &mut want_u);
                crate::ops::swiglu(&mut want_g, &want_u);
                let mut gate = vec![f32::NAN; rows * n_tokens];
                let mut up = vec![f32::NAN; rows * n_tokens];
                matmul_gated_with(
                    path,
                    &wg,
                    &wu,
                    &x,
                    n_tokens,
                    &mut gate,
                    &mut up,
                    crate::ops::swiglu,
                    crate::ops::swiglu,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&gate), bits(&want_g), "{path:?}, {n_tokens} tokens");
            }
        }
    }

    /// The SIMD tile writer moves exactly the values the scalar one does, on ragged
    /// shapes, and touches nothing outside the tile.
    #[test]
    fn tile_transpose_matches_scalar_on_ragged_shapes() {
        let paths = KernelPath::supported();
        for n in [1, 3, 7, 8, 9, 13, 16, 61, 64] {
            for n_tok in [1, 2, 7, 8, 9, 15, 16] {
                let (r0, t0) = (5, 3);
                let rows = r0 + n + 2;
                let n_tokens = t0 + n_tok + 1;
                let lanes: Vec<[f32; PANEL_TOKENS]> = (0..n)
                    .map(|i| std::array::from_fn(|t| (i * 100 + t) as f32 + 0.25))
                    .collect();
                let tile = Tile {
                    rows,
                    owned_end: r0 + n,
                    r0,
                    t0,
                    n_tok,
                };
                let mut expected = vec![-1.0f32; rows * n_tokens];
                for (i, l) in lanes.iter().enumerate() {
                    for (t, &v) in l.iter().enumerate().take(n_tok) {
                        expected[(t0 + t) * rows + r0 + i] = v;
                    }
                }
                for &path in &paths {
                    let mut got = vec![-1.0f32; rows * n_tokens];
                    Out::new(&mut got).set_tile(path, &lanes, tile);
                    assert_eq!(got, expected, "{path:?}, {n} rows, {n_tok} tokens");
                }
            }
        }
    }

    /// A tile reaching past the writer's chunk (rows another thread owns) is refused.
    #[test]
    #[should_panic(expected = "outside the chunk")]
    fn a_tile_past_its_chunk_panics() {
        let lanes = vec![[0.0f32; PANEL_TOKENS]; 64];
        let mut out = vec![0.0f32; 160 * 4];
        let tile = Tile {
            rows: 160,
            owned_end: 80,
            r0: 64,
            t0: 0,
            n_tok: 4,
        };
        Out::new(&mut out).set_tile(KernelPath::Scalar, &lanes, tile);
    }
}
