use super::*;
use crate::model::Hparams;
use crate::ops::{Rope, RopeStyle};

/// A deterministic xorshift stream of floats in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * amp).collect()
    }
}

fn hparams(n_head: usize, n_head_kv: usize, head_dim: usize, head_dim_v: usize) -> Hparams {
    let rope = Rope {
        style: RopeStyle::Normal,
        n_rot: head_dim,
        freq_base: 10000.0,
        freq_scale: 1.0,
    };
    Hparams {
        n_vocab: 8,
        n_embd: n_head * head_dim,
        n_layer: 1,
        n_ff: 8,
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        n_ctx_train: 4096,
        rms_eps: 1e-6,
        rope,
        sliding: None,
        no_rope_every: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

/// A cache holding `n_pos` random positions of layer 0.
fn filled_cache(hp: &Hparams, n_pos: usize, n_ctx: usize, rng: &mut Rng) -> KvCache {
    let mut kv = KvCache::new(hp, n_ctx).unwrap();
    let k = rng.vec(n_pos * hp.kv_dim(), 2.0);
    let v = rng.vec(n_pos * hp.kv_dim_v(), 2.0);
    kv.store(0, &k, &v);
    kv.advance(n_pos);
    kv
}

/// Attention in f64 straight from the definition (no rounding but the cache's fp16).
fn naive(
    hp: &Hparams,
    kv: &KvCache,
    pos0: usize,
    q: &[f32],
    window: Option<usize>,
    scale: f32,
) -> Vec<f32> {
    let (hd, hdv) = (hp.head_dim, hp.head_dim_v);
    let n_tokens = q.len() / (hp.n_head * hd);
    let group = hp.n_head / hp.n_head_kv;
    let mut out = vec![0.0f32; n_tokens * hp.n_head * hdv];
    for t in 0..n_tokens {
        let pos = pos0 + t;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..hp.n_head {
            let kvh = h / group;
            let qh = &q[(t * hp.n_head + h) * hd..][..hd];
            let key = |p: usize, d: usize| {
                let tile = kv.key_tile(0, kvh, p / KEY_TILE);
                f64::from(tile[d * KEY_TILE + p % KEY_TILE].to_f32())
            };
            let s: Vec<f64> = (first..=pos)
                .map(|p| {
                    (0..hd).map(|d| f64::from(qh[d]) * key(p, d)).sum::<f64>() * f64::from(scale)
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for j in 0..hdv {
                let mut acc = 0.0f64;
                for (i, p) in (first..=pos).enumerate() {
                    let v = kv.values(0)[p * hp.kv_dim_v() + kvh * hdv + j].to_f32();
                    acc += e[i] / sum * f64::from(v);
                }
                out[(t * hp.n_head + h) * hdv + j] = acc as f32;
            }
        }
    }
    out
}

/// Runs attention with `kernels` over a fresh cache of `pos0 + n_tokens` positions.
#[allow(clippy::too_many_arguments)]
fn run(
    kernels: Kernels,
    hp: &Hparams,
    kv: &KvCache,
    pos0: usize,
    n_tokens: usize,
    q: &[f32],
    window: Option<usize>,
) -> Vec<f32> {
    let mut att = vec![f32::NAN; n_tokens * hp.n_head * hp.head_dim_v];
    attention_with(kernels, hp, kv, 0, pos0, q, &mut att, window, hp.attn_scale);
    att
}

/// Shapes that exercise every branch: GQA groups of 1, 3, 4 and 5 (more heads than one
/// value sum takes), head sizes with and without whole 64- and 16-column chunks,
/// windows, a prefilled cache, single tokens and batches that are not whole tiles.
const SHAPES: [(usize, usize, usize, usize); 6] = [
    (2, 2, 64, 64),
    (9, 3, 64, 64),
    (4, 1, 256, 256),
    (5, 1, 80, 80),
    (6, 2, 32, 48),
    (3, 1, 72, 40),
];

#[test]
fn reference_attention_is_close_to_exact_softmax_attention() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for &(nh, nkv, hd, hdv) in &SHAPES {
        let hp = hparams(nh, nkv, hd, hdv);
        for (pos0, nt, window) in [(0, 37, None), (20, 5, Some(9)), (3, 1, None)] {
            let kv = filled_cache(&hp, pos0 + nt, 64, &mut rng);
            let q = rng.vec(nt * nh * hd, 1.5);
            let got = run(
                Kernels::for_path(KernelPath::Scalar),
                &hp,
                &kv,
                pos0,
                nt,
                &q,
                window,
            );
            let want = naive(&hp, &kv, pos0, &q, window, hp.attn_scale);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // fp16 rounding of q and of the probabilities: ~1e-3 relative.
                assert!((g - w).abs() < 4e-3, "{nh}/{nkv}/{hd}: out[{i}] {g} vs {w}");
            }
        }
    }
}

#[test]
fn every_path_gives_the_reference_bits() {
    let mut rng = Rng(0x0bad_cafe_f00d_d00d);
    let reference = Kernels::for_path(KernelPath::Scalar);
    for path in KernelPath::supported() {
        let kernels = Kernels::for_path(path);
        for &(nh, nkv, hd, hdv) in &SHAPES {
            let hp = hparams(nh, nkv, hd, hdv);
            for (pos0, nt, window) in [
                (0, 40, None),
                (0, 33, Some(7)),
                (17, 1, None),
                (50, 3, Some(20)),
                (0, 16, None),
            ] {
                let kv = filled_cache(&hp, pos0 + nt, 100, &mut rng);
                // Large queries give scores spread over the whole exp range.
                let q = rng.vec(nt * nh * hd, 6.0);
                let want = run(reference, &hp, &kv, pos0, nt, &q, window);
                let got = run(kernels, &hp, &kv, pos0, nt, &q, window);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(
                    same,
                    "{}: shape {nh}/{nkv}/{hd}/{hdv}, pos0 {pos0}, {nt} tokens",
                    path.name()
                );
            }
        }
    }
}

#[test]
fn a_batch_equals_its_tokens_one_at_a_time() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for path in KernelPath::supported() {
        let kernels = Kernels::for_path(path);
        let hp = hparams(9, 3, 64, 64);
        let (pos0, nt) = (5, 29);
        let kv = filled_cache(&hp, pos0 + nt, 64, &mut rng);
        let q = rng.vec(nt * 9 * 64, 3.0);
        let batch = run(kernels, &hp, &kv, pos0, nt, &q, Some(11));
        let per_query = 9 * 64;
        for t in 0..nt {
            let one = run(
                kernels,
                &hp,
                &kv,
                pos0 + t,
                1,
                &q[t * per_query..(t + 1) * per_query],
                Some(11),
            );
            assert_eq!(
                one.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                batch[t * per_query..(t + 1) * per_query]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>(),
                "{}: token {t}",
                path.name()
            );
        }
    }
}

#[test]
fn softmax_kernels_agree_on_every_length() {
    let mut rng = Rng(0xfeed_beef_0000_0001);
    for path in KernelPath::supported() {
        let kernels = Kernels::for_path(path);
        for n in 1..70 {
            let x = rng.vec(n, 30.0);
            let mut want = x.clone();
            reference::softmax(&mut want);
            let mut got = x;
            (kernels.softmax)(&mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} length {n}", path.name());
            let sum: f32 = want.iter().sum();
            assert!((sum - 1.0).abs() < 1e-2, "sums to {sum}");
        }
    }
}
