//! The portable reference of the attention kernels: the rounding every SIMD path
//! reproduces bit for bit (see the module above for the rules).

use half::f16;

use super::ValueRows;
use crate::kv_cache::KEY_TILE;

/// Below this, `exp` returns 0: e^-87 is near f32's smallest normal, and a probability
/// that small rounds to 0 in fp16 anyway.
pub(super) const EXP_MIN: f32 = -87.0;
pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n · LN2_HI` is exact for the `n` that occur.
pub(super) const LN2_HI: f32 = 355.0 / 512.0;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor coefficients of e^r on |r| <= ln2/2, highest degree first (Horner order).
pub(super) const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^x for x <= 0 (larger x are taken as 0): e^x = 2^n · e^r with n = round(x·log2 e),
/// r = x − n·ln 2 and e^r a degree-6 polynomial, all fused multiply-adds; about 2 ulp.
/// Returns 0 for x below [`EXP_MIN`], for −inf and for NaN.
pub(super) fn exp(x: f32) -> f32 {
    if x.is_nan() || x < EXP_MIN {
        return 0.0;
    }
    let x = x.min(0.0);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    // n is in -126..=0 here, so 2^n is a normal float.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

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
