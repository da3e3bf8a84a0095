//! The portable reference of the attention kernels: the rounding every SIMD path
//! reproduces bit for bit (see the module above for the rules).

use half::f16;

use super::ValueRows;
use crate::exp::exp_nonpositive as exp;
use crate::kv_cache::KEY_TILE;

/// Scores of `qs.len() / dk` queries (fp16-rounded, `dk` values each) against one key
/// tile: `out[i * stride + lane] = (Σ_d qs[i][d] · key[lane][d]) · scale`, the sum one
/// fused multiply-add per dimension in dimension order.
pub(super) fn scores(
    qs: &[f32],
    dk: usize,
    tile: &[f16],
    scale: f32,
    out: &mut [f32],
    stride: usize,
) {
    for (i, q) in qs.chunks_exact(dk).enumerate() {
        for lane in 0..KEY_TILE {
            let mut s = 0.0f32;
            for (d, &qd) in q.iter().enumerate() {
                s = qd.mul_add(tile[d * KEY_TILE + lane].to_f32(), s);
            }
            out[i * stride + lane] = s * scale;
        }
    }
}

/// Softmax in place, each probability rounded to fp16: m = max, e = [`exp`](x − m),
/// sum = 16 partial sums (index mod 16, each in index order) added lane 0 to 15.
pub(super) fn softmax(x: &mut [f32]) {
    let max = x
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut lanes = [0.0f32; 16];
    for (i, v) in x.iter_mut().enumerate() {
        *v = exp(*v - max);
        lanes[i % 16] += *v;
    }
    let sum = lanes.iter().fold(0.0f32, |a, &l| a + l);
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for v in x.iter_mut() {
        *v = f16::from_f32(*v * inv).to_f32();
    }
}

/// `out[i][j] = Σ_k p[i][k] · value(first + k)[j]` for queries `i` that see the same
/// positions, one fused multiply-add per position in position order, from 0.
pub(super) fn weighted_sum(
    p: &[&[f32]],
    values: ValueRows<'_>,
    first: usize,
    out: &mut [&mut [f32]],
) {
    for (pi, oi) in p.iter().zip(out.iter_mut()) {
        oi.fill(0.0);
        for (k, &pk) in pi.iter().enumerate() {
            let row = values.row(first + k);
            for (o, v) in oi.iter_mut().zip(row) {
                *o = pk.mul_add(v.to_f32(), *o);
            }
        }
    }
}
