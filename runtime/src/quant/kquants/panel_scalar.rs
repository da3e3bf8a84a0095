//! The K-quant panel rule in portable code: the scalar path's prompt kernel, and the
//! definition every SIMD panel kernel (`panel_x86`) gives the bits of on every lane.
//!
//! Per token lane, row and super-block, two exact integers:
//! `sumi = Σ_runs scale · Σ_run q·a` (signed quants: the `-32` of Q6_K and the `-4` of
//! Q3_K taken out) and, for the types with mins, `mn = Σ_runs min · Σ_run a`. Runs are
//! the 16-element runs of the Q8_K sums; a 32-element Q4_K/Q5_K sub-block gives its
//! scale and min to both its runs, which gives the same integers. Then the float
//! epilogue, in this order: `acc = fma(f32(sumi), d_a · d, acc)` and, with mins,
//! `acc = fma(-f32(mn), d_a · dmin, acc)`.

use half::f16;

use super::panel::{check_shape, Q8KPanel, GROUPS_K};
use super::QK_K;
use crate::quant::panel::LaneDots;
use crate::quant::PANEL_TOKENS;

/// One super-block as the panel rule reads it.
pub(crate) struct Runs {
    /// The quants in element order as they enter the integer dot product.
    pub q: [i8; QK_K],
    /// The scale of each 16-element run.
    pub scales: [i32; 16],
    /// The min of each run (zeros for the types without mins).
    pub mins: [i32; 16],
    pub d: f16,
    /// `dmin` of the types with mins (Q2_K, Q4_K, Q5_K).
    pub dmin: Option<f16>,
}

/// A K-quant weight block in the panel rule's terms.
pub(crate) trait PanelBlock {
    fn runs(&self) -> Runs;
}

/// Every row of `w` against every token of `p` by the rule (see the module).
pub(crate) fn panel_dot<B: PanelBlock>(w: &[B], p: &Q8KPanel, out: &mut [[f32; PANEL_TOKENS]]) {
    if !check_shape(w.len(), p, out) {
        return;
    }
    let bpr = p.blocks();
    for (row, o) in w.chunks_exact(bpr).zip(out.iter_mut()) {
        let mut acc = [0.0f32; PANEL_TOKENS];
        for (b, blk) in row.iter().enumerate() {
            let x = blk.runs();
            let groups = &p.qs[b * GROUPS_K..(b + 1) * GROUPS_K];
            let mut sumi = [0i32; PANEL_TOKENS];
            for (s, (q, a)) in x.q.chunks_exact(16).zip(groups.chunks_exact(4)).enumerate() {
                let mut dots = LaneDots::new();
                for (w4, a) in q.chunks_exact(4).zip(a) {
                    dots.add(w4, a);
                }
                for (acc, d) in sumi.iter_mut().zip(dots.per_token()) {
                    *acc += x.scales[s] * d;
                }
            }
            let da = &p.d[b].0;
            let d = x.d.to_f32();
            for ((acc, &s), &da) in acc.iter_mut().zip(&sumi).zip(da) {
                *acc = (s as f32).mul_add(da * d, *acc);
            }
            if let Some(dmin) = x.dmin {
                let mut mn = [0i32; PANEL_TOKENS];
                for (k, pair) in p.sum16[b * 8..(b + 1) * 8].iter().enumerate() {
                    let (m0, m1) = (x.mins[2 * k], x.mins[2 * k + 1]);
                    for (mn, sums) in mn.iter_mut().zip(&pair.0) {
                        *mn += m0 * i32::from(sums[0]) + m1 * i32::from(sums[1]);
                    }
                }
                let dmin = dmin.to_f32();
                for ((acc, &m), &da) in acc.iter_mut().zip(&mn).zip(da) {
                    *acc = (-(m as f32)).mul_add(da * dmin, *acc);
                }
            }
        }
        *o = acc;
    }
}
