//! Activation panels: the quantized activations of up to [`PANEL_TOKENS`] tokens laid out
//! one token per vector lane, for the prompt-processing kernels.
//!
//! One token at a time, a kernel must sum each row's products horizontally and apply a
//! scale per row and block. With the tokens spread over the lanes of one register, a
//! weight's four bytes are broadcast to every lane and multiplied with four activation
//! bytes of sixteen tokens at once (`vpdpbusd`): every lane ends with its own token's
//! exact integer dot product, and the per-block float epilogue is shared by sixteen
//! tokens. The layout is built once per matmul from the ordinary quantized rows, so the
//! integers are those of the single-token kernels.

use half::f16;

use super::act::{BlockQ8_0, BlockQ8_1, QK8};
use super::PANEL_TOKENS;

/// Sixteen values, one per token, aligned for a single 64-byte load.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(64))]
pub struct Lanes<T>(pub [T; PANEL_TOKENS]);

/// Groups of four activation bytes per 32-element block.
pub const GROUPS: usize = QK8 / 4;

/// Q8_0 or Q8_1 activations of up to 16 tokens.
#[derive(Clone, Debug, Default)]
pub struct Q8Panel {
    /// Per block, [`GROUPS`] entries: entry `g` holds elements `4g..4g + 4` of every token.
    pub qs: Vec<Lanes<[i8; 4]>>,
    /// Per block: every token's scale `d`.
    pub d: Vec<Lanes<f32>>,
    /// Per block: every token's Q8_1 `s` (`f16(d Σq)`, as stored); zeros for Q8_0.
    pub s: Vec<Lanes<f32>>,
    /// Per block: every token's `Σq`, for the offset corrections of unsigned weights.
    pub sum: Vec<Lanes<i32>>,
    /// Tokens present (the other lanes are zeros).
    pub tokens: usize,
}

/// Blocks per token of 1..=16 equal-length quantized rows, the tokens of one panel.
///
/// Panics otherwise (a caller bug: matmul cuts the panels).
pub(crate) fn panel_shape<T>(rows: &[&[T]]) -> usize {
    assert!(
        (1..=PANEL_TOKENS).contains(&rows.len()),
        "a panel holds 1..=16 tokens"
    );
    let blocks = rows[0].len();
    assert!(
        rows.iter().all(|r| r.len() == blocks),
        "panel rows differ in length"
    );
    blocks
}

/// Checks that `w_blocks` weight blocks are `out.len()` rows of `bpr` blocks (panics
/// otherwise: a caller bug). Rows of no blocks have zero dot products; returns whether
/// there is anything to compute.
pub(crate) fn check_rows(w_blocks: usize, bpr: usize, out: &mut [[f32; PANEL_TOKENS]]) -> bool {
    let rows = out.len();
    assert!(
        w_blocks == rows * bpr,
        "{w_blocks} weight blocks are not {rows} rows of {bpr} blocks"
    );
    if bpr == 0 {
        out.fill([0.0; PANEL_TOKENS]);
    }
    bpr > 0
}

/// Exact integer dot products of weight quants with the token lanes of a panel, for
/// the portable panel kernels. A group's 64 activation bytes are multiplied with the
/// four weights repeated, each product in an i16 (at most 2^14 in magnitude), and
/// neighbouring products are summed into an i32 (`acc[2t + h]` for token `t`, bytes
/// `2h, 2h + 1` of a group): plain lane-wise arithmetic that compilers turn into
/// widening vector multiplies and adds (on NEON). A token's two sums are added at the
/// end (exact integers: the order does not matter).
pub(crate) struct LaneDots([i32; 2 * PANEL_TOKENS]);

impl LaneDots {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        LaneDots([0; 2 * PANEL_TOKENS])
    }

    /// Adds four weight quants `w` times the same four elements of every token.
    #[inline(always)]
    pub(crate) fn add(&mut self, w: &[i8], a: &Lanes<[i8; 4]>) {
        let w: [i16; 4 * PANEL_TOKENS] = std::array::from_fn(|j| i16::from(w[j % 4]));
        let a = a.0.as_flattened();
        for (j, acc) in self.0.iter_mut().enumerate() {
            let (p0, p1) = (
                w[2 * j] * i16::from(a[2 * j]),
                w[2 * j + 1] * i16::from(a[2 * j + 1]),
            );
            *acc += i32::from(p0) + i32::from(p1);
        }
    }

    /// Each token's dot product.
    #[inline(always)]
    pub(crate) fn per_token(&self) -> [i32; PANEL_TOKENS] {
        std::array::from_fn(|t| self.0[2 * t] + self.0[2 * t + 1])
    }
}

/// The row loop of every panel kernel: `$pass::<R>(rows, bpr, panel, out)` over passes
/// of `$per_pass` rows (independent accumulation chains sharing each activation load),
/// then over the leftover rows one at a time.
#[cfg(target_arch = "x86_64")]
macro_rules! over_rows {
    ($w:ident, $p:ident, $out:ident, $pass:ident, $per_pass:expr) => {{
        let bpr = $p.blocks();
        if $crate::quant::panel::check_rows($w.len(), bpr, $out) {
            const PER_PASS: usize = $per_pass;
            let rows = $out.len();
            let mut r = 0;
            while r + PER_PASS <= rows {
                $pass::<PER_PASS>(&$w[r * bpr..], bpr, $p, &mut $out[r..]);
                r += PER_PASS;
            }
            while r < rows {
                $pass::<1>(&$w[r * bpr..], bpr, $p, &mut $out[r..]);
                r += 1;
            }
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use over_rows;

impl Q8Panel {
    /// Blocks per token row.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Transposes `rows` (one quantized row per token, equal lengths) into lanes;
    /// `parts(block)` gives a block's `d`, `s` (if any) and quants.
    fn build<B>(rows: &[&[B]], parts: impl Fn(&B) -> (f16, Option<f16>, &[i8; QK8])) -> Self {
        let blocks = panel_shape(rows);
        let mut p = Q8Panel::zeroed(blocks, rows.len());
        for (t, row) in rows.iter().enumerate() {
            for (b, block) in row.iter().enumerate() {
                let (d, s, q) = parts(block);
                let sum = q.iter().map(|&v| v as i32).sum();
                p.set(b, t, d.to_f32(), s.map_or(0.0, f16::to_f32), sum, q);
            }
        }
        p
    }

    /// A panel of `blocks` blocks per token for `tokens` tokens, all zeros.
    pub(crate) fn zeroed(blocks: usize, tokens: usize) -> Self {
        Q8Panel {
            qs: vec![Lanes::default(); blocks * GROUPS],
            d: vec![Lanes::default(); blocks],
            s: vec![Lanes::default(); blocks],
            sum: vec![Lanes::default(); blocks],
            tokens,
        }
    }

    /// Token `t`'s block `b`: scale `d`, Q8_1 `s` (0 for Q8_0), `Σq` and the quants.
    #[inline(always)]
    pub(crate) fn set(&mut self, b: usize, t: usize, d: f32, s: f32, sum: i32, q: &[i8; QK8]) {
        self.d[b].0[t] = d;
        self.s[b].0[t] = s;
        self.sum[b].0[t] = sum;
        for (g, four) in q.chunks_exact(4).enumerate() {
            self.qs[b * GROUPS + g].0[t].copy_from_slice(four);
        }
    }

    pub fn from_q8_0(rows: &[&[BlockQ8_0]]) -> Self {
        Self::build(rows, |b| (b.d, None, &b.qs))
    }

    pub fn from_q8_1(rows: &[&[BlockQ8_1]]) -> Self {
        Self::build(rows, |b| (b.d, Some(b.s), &b.qs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_hold_each_tokens_bytes_in_order() {
        let rows: Vec<Vec<BlockQ8_1>> = (0..3)
            .map(|t| {
                (0..2)
                    .map(|b| BlockQ8_1 {
                        d: f16::from_f32(t as f32 + 1.0),
                        s: f16::from_f32(b as f32 - 2.0),
                        qs: std::array::from_fn(|i| (t * 40 + b * 7 + i) as i8),
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[BlockQ8_1]> = rows.iter().map(Vec::as_slice).collect();
        let p = Q8Panel::from_q8_1(&refs);
        assert_eq!((p.blocks(), p.tokens), (2, 3));
        for (t, row) in rows.iter().enumerate() {
            for (b, block) in row.iter().enumerate() {
                assert_eq!(p.d[b].0[t], t as f32 + 1.0);
                assert_eq!(p.s[b].0[t], b as f32 - 2.0);
                let q = block.qs;
                assert_eq!(p.sum[b].0[t], q.iter().map(|&v| v as i32).sum::<i32>());
                for (i, &v) in q.iter().enumerate() {
                    assert_eq!(p.qs[b * GROUPS + i / 4].0[t][i % 4], v);
                }
            }
        }
        // Missing tokens are zeros, so they add nothing to any lane's sum.
        assert!(p.qs.iter().all(|l| l.0[3..].iter().all(|v| *v == [0; 4])));
        assert!(p.d.iter().all(|l| l.0[3..].iter().all(|&v| v == 0.0)));
    }
}
