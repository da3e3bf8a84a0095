//! Row-parallel loops for the forward pass's per-token ops (norms, RoPE, GLU, residual
//! adds) over a batch.
//!
//! The tokens of a batch are independent rows, so handing whole rows to different
//! threads of the [`Team`] changes no arithmetic: every element is computed by the same
//! code as on one thread, and the logits stay bit-identical. Small batches (decoding one
//! token) stay on the calling thread, where a parallel region (one to two microseconds)
//! would cost more than it saves.

use std::sync::Mutex;

use crate::ops;
use crate::team::{Chunks, Team};

/// How much work an op does per element, which sets the smallest batch worth a
/// parallel region (about 1.5 µs on a 2-core VM, measured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// An `exp`, a table lookup, a norm or a rotation per element (about 2 ns for
    /// GLUs, 0.6 ns for norms): splitting pays from a few thousand elements.
    Heavy,
    /// An add or a multiply (memory-bound): splitting pays only for large batches.
    Light,
}

impl Cost {
    /// Batches with fewer elements run on the calling thread.
    fn min_elems(self) -> usize {
        match self {
            Cost::Heavy => 4 * 1024,
            Cost::Light => 32 * 1024,
        }
    }
}

/// Elements per claimed part, at least: enough that claiming a part is in the noise.
const PART_ELEMS: usize = 2 * 1024;

/// Calls `f(first_row, rows)` on consecutive runs of whole `row_len`-long rows of
/// `data`, on every thread of the team when the batch is large enough.
pub fn rows(data: &mut [f32], row_len: usize, cost: Cost, f: impl Fn(usize, &mut [f32]) + Sync) {
    let Some(per) = rows_per_part(data.len(), row_len, cost) else {
        return f(0, data);
    };
    let parts = data
        .chunks_mut(per * row_len)
        .enumerate()
        .map(|(i, c)| (i * per, c));
    run_parts(parts, &|row, c| f(row, c));
}

/// [`rows`] over two batches with the same number of rows (of `a_len` and `b_len`
/// elements): `f(first_row, a_rows, b_rows)`.
pub fn rows2(
    a: &mut [f32],
    a_len: usize,
    b: &mut [f32],
    b_len: usize,
    cost: Cost,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    if a_len == 0 || b_len == 0 {
        return f(0, a, b);
    }
    assert_eq!(a.len() / a_len * b_len, b.len(), "row counts differ");
    let Some(per) = rows_per_part(a.len() + b.len(), a_len + b_len, cost) else {
        return f(0, a, b);
    };
    let parts = a
        .chunks_mut(per * a_len)
        .zip(b.chunks_mut(per * b_len))
        .enumerate()
        .map(|(i, c)| (i * per, c));
    run_parts(parts, &|row, (ca, cb)| f(row, ca, cb));
}

/// Rows per part when `len` elements in rows of `row_len` are worth splitting, else
/// `None`.
fn rows_per_part(len: usize, row_len: usize, cost: Cost) -> Option<usize> {
    let threads = Team::global().threads();
    if threads == 1 || row_len == 0 || len < cost.min_elems() {
        return None;
    }
    let n_rows = len / row_len;
    // About four parts per thread, so a thread briefly taken away by the host does not
    // hold up the region.
    let per = n_rows
        .div_ceil(4 * threads)
        .max(PART_ELEMS.div_ceil(row_len));
    (per < n_rows).then_some(per)
}

/// Runs `f(first_row, part)` once per part, the parts claimed by the team's threads.
fn run_parts<T: Send>(parts: impl Iterator<Item = (usize, T)>, f: &(dyn Fn(usize, T) + Sync)) {
    // Each slot is taken exactly once (its index is claimed once); the lock only makes
    // handing a `&mut` part to another thread expressible without `unsafe`.
    let slots: Vec<Mutex<Option<(usize, T)>>> = parts.map(|p| Mutex::new(Some(p))).collect();
    let next = Chunks::new(slots.len(), 1);
    Team::global().run(&|_| {
        while let Some(claimed) = next.claim() {
            for i in claimed {
                let part = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some((row, p)) = part {
                    f(row, p);
                }
            }
        }
    });
}

/// The elements of `x` that line up with `part`, a run of rows starting at row `first`.
fn same_rows<'a>(x: &'a [f32], first: usize, part: &[f32], row_len: usize) -> &'a [f32] {
    &x[first * row_len..first * row_len + part.len()]
}

/// [`ops::rmsnorm`] of a batch, rows split across the team.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    assert_eq!(out.len(), x.len(), "rmsnorm lengths");
    let dim = weight.len();
    rows(out, dim, Cost::Heavy, |r, o| {
        ops::rmsnorm(o, same_rows(x, r, o, dim), weight, eps)
    });
}

/// [`ops::rmsnorm_inplace`] of a batch (of tokens, or of heads for QK norms).
pub fn rmsnorm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    rows(x, weight.len(), Cost::Heavy, |_, c| {
        ops::rmsnorm_inplace(c, weight, eps)
    });
}

/// [`ops::swiglu`] of a batch (element-wise, so split anywhere).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu lengths");
    rows(gate, 1, Cost::Heavy, |i, g| {
        ops::swiglu(g, same_rows(up, i, g, 1))
    });
}

/// [`ops::geglu`] of a batch.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "geglu lengths");
    rows(gate, 1, Cost::Heavy, |i, g| {
        ops::geglu(g, same_rows(up, i, g, 1))
    });
}

/// [`ops::add_inplace`] of a batch (the residual adds).
pub fn add_inplace(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add lengths");
    rows(acc, 1, Cost::Light, |i, a| {
        ops::add_inplace(a, same_rows(x, i, a, 1))
    });
}

/// [`ops::add_bias`] of a batch.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    rows(x, bias.len(), Cost::Light, |_, c| ops::add_bias(c, bias));
}

/// [`ops::scale`] of a batch.
pub fn scale(x: &mut [f32], s: f32) {
    rows(x, 1, Cost::Light, |_, c| ops::scale(c, s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_visited_once_with_its_index() {
        for (n_rows, row_len) in [(1, 5), (3, 7), (512, 576), (37, 1000), (2, 9000)] {
            let mut data: Vec<f32> = vec![0.0; n_rows * row_len];
            rows(&mut data, row_len, Cost::Heavy, |first, c| {
                assert_eq!(c.len() % row_len, 0);
                for (k, row) in c.chunks_exact_mut(row_len).enumerate() {
                    for v in row.iter_mut() {
                        *v += (first + k) as f32 + 1.0;
                    }
                }
            });
            for (r, row) in data.chunks_exact(row_len).enumerate() {
                assert!(row.iter().all(|&v| v == r as f32 + 1.0), "row {r}");
            }
        }
    }

    #[test]
    fn paired_batches_split_at_the_same_rows() {
        let (n_rows, a_len, b_len) = (300, 64, 16);
        let mut a = vec![0.0f32; n_rows * a_len];
        let mut b = vec![0.0f32; n_rows * b_len];
        rows2(
            &mut a,
            a_len,
            &mut b,
            b_len,
            Cost::Heavy,
            |first, ca, cb| {
                assert_eq!(ca.len() / a_len, cb.len() / b_len);
                for (k, (ra, rb)) in ca
                    .chunks_exact_mut(a_len)
                    .zip(cb.chunks_exact_mut(b_len))
                    .enumerate()
                {
                    ra.fill((first + k) as f32);
                    rb.fill(-((first + k) as f32));
                }
            },
        );
        for r in 0..n_rows {
            assert!(a[r * a_len..(r + 1) * a_len].iter().all(|&v| v == r as f32));
            assert!(b[r * b_len..(r + 1) * b_len]
                .iter()
                .all(|&v| v == -(r as f32)));
        }
    }

    /// Each batch op gives exactly the single-threaded op's bits, on batches large
    /// enough to be split (and on odd lengths that leave a short last part).
    #[test]
    fn batch_ops_are_bit_identical_to_the_serial_ops() {
        let dim = 576;
        let n = 131 * dim;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let y: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 997) as f32 / 211.0 - 2.0)
            .collect();
        let w: Vec<f32> = (0..dim).map(|i| 0.5 + (i % 13) as f32 / 7.0).collect();
        let eps = 1e-6;

        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        ops::rmsnorm(&mut a, &x, &w, eps);
        rmsnorm(&mut b, &x, &w, eps);
        assert_eq!(a, b, "rmsnorm");

        let (mut a, mut b) = (x.clone(), x.clone());
        ops::rmsnorm_inplace(&mut a, &w[..64], eps);
        rmsnorm_inplace(&mut b, &w[..64], eps);
        assert_eq!(a, b, "rmsnorm_inplace");

        let m = n - 3;
        let (mut a, mut b) = (x[..m].to_vec(), x[..m].to_vec());
        ops::swiglu(&mut a, &y[..m]);
        swiglu(&mut b, &y[..m]);
        assert_eq!(a, b, "swiglu");

        let (mut a, mut b) = (x[..m].to_vec(), x[..m].to_vec());
        ops::geglu(&mut a, &y[..m]);
        geglu(&mut b, &y[..m]);
        assert_eq!(a, b, "geglu");

        let (mut a, mut b) = (x[..m].to_vec(), x[..m].to_vec());
        ops::add_inplace(&mut a, &y[..m]);
        add_inplace(&mut b, &y[..m]);
        assert_eq!(a, b, "add_inplace");

        let (mut a, mut b) = (x.clone(), x.clone());
        ops::add_bias(&mut a, &w);
        add_bias(&mut b, &w);
        assert_eq!(a, b, "add_bias");

        let (mut a, mut b) = (x[..m].to_vec(), x[..m].to_vec());
        ops::scale(&mut a, 0.0625);
        scale(&mut b, 0.0625);
        assert_eq!(a, b, "scale");
    }
}
