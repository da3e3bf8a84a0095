//! K-quant kernels: scalar references against the `gguf` package and against f64 math,
//! every SIMD path against the scalar reference, and the Q8_K quantizer against a
//! direct transcription of llama.cpp's rule.
//!
//! Tolerance for SIMD vs scalar dot products: both compute the same exact integer sums
//! per super-block and differ only in float rounding (order of the per-block
//! `d·sumi` / `dmin·summ` additions, and f32 products of the scales). That error is at
//! most a few ulps times `(blocks + 2)` times the sum of the magnitudes of the summed
//! terms, which the tests bound by `mag = Σ |a_i|·(|scaled quant part| + |min part|)`
//! computed in f64. `1e-5·mag` is about 15× the worst case for the 8-block rows used
//! here (eps 6e-8 × 10 terms), so a kernel that drops or misweights even one element
//! of a 2048-long row fails. The absolute `1e-30` only covers rows whose every term
//! underflows (zero scales).

use smq_runtime::quant::kquants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K,
};
use smq_runtime::quant::{ActBlock, KernelPath, WeightBlock};

/// xorshift64*: deterministic and good enough to fill test blocks.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly bell-shaped, with occasional outliers like real activations.
    fn activation(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        if self.below(64) == 0 {
            s * 20.0
        } else {
            s
        }
    }
    /// A random finite f16 (any sign, normal or subnormal, exponent never all-ones).
    fn finite_f16_bits(&mut self) -> u16 {
        let mut bits = self.next_u64() as u16;
        if (bits >> 10) & 0x1F == 0x1F {
            bits &= !(1 << 14);
        }
        bits
    }
}

/// What the tests need from each weight type beyond the trait.
trait TestBlock: WeightBlock<Act = BlockQ8K> {
    const NAME: &'static str;
    const SIZE: usize;
    /// Byte offsets of the f16 scale fields (random bytes there could be NaN/inf).
    const F16_OFFSETS: &'static [usize];
    /// Byte ranges holding quants (zeroed to isolate the min term).
    const QUANT_BYTES: &'static [(usize, usize)];
    /// Whether the type has a min term (`- dmin*m`).
    const HAS_MIN: bool;
    fn from_bytes(b: &[u8]) -> Option<Self>;
    fn to_bytes_vec(&self) -> Vec<u8>;
}

macro_rules! test_block {
    ($t:ty, $name:expr, $f16:expr, $quants:expr, $min:expr) => {
        impl TestBlock for $t {
            const NAME: &'static str = $name;
            const SIZE: usize = <$t>::SIZE;
            const F16_OFFSETS: &'static [usize] = $f16;
            const QUANT_BYTES: &'static [(usize, usize)] = $quants;
            const HAS_MIN: bool = $min;
            fn from_bytes(b: &[u8]) -> Option<Self> {
                <$t>::from_bytes(b)
            }
            fn to_bytes_vec(&self) -> Vec<u8> {
                self.to_bytes().to_vec()
            }
        }
    };
}

test_block!(BlockQ2K, "q2_k", &[80, 82], &[(16, 80)], true);
test_block!(BlockQ3K, "q3_k", &[108], &[(0, 96)], false);
test_block!(BlockQ4K, "q4_k", &[0, 2], &[(16, 144)], true);
test_block!(BlockQ5K, "q5_k", &[0, 2], &[(16, 176)], true);
test_block!(BlockQ6K, "q6_k", &[208], &[(0, 192)], false);

fn random_block<T: TestBlock>(rng: &mut Rng) -> T {
    let mut bytes: Vec<u8> = (0..T::SIZE).map(|_| rng.next_u64() as u8).collect();
    for &off in T::F16_OFFSETS {
        bytes[off..off + 2].copy_from_slice(&rng.finite_f16_bits().to_le_bytes());
    }
    T::from_bytes(&bytes).expect("size matches")
}

fn random_activations(rng: &mut Rng, blocks: usize) -> Vec<BlockQ8K> {
    let x: Vec<f32> = (0..blocks * QK_K).map(|_| rng.activation()).collect();
    let mut a = vec![BlockQ8K::default(); blocks];
    BlockQ8K::quantize_row(&x, &mut a);
    a
}

fn dequant_row<T: TestBlock>(w: &[T]) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len() * QK_K];
    for (b, o) in w.iter().zip(out.chunks_exact_mut(QK_K)) {
        b.dequantize(o);
    }
    out
}

/// Per element, the min term alone (dequantize with all quants zero gives `-dmin*m`).
fn min_part_row<T: TestBlock>(w: &[T]) -> Vec<f32> {
    if !T::HAS_MIN {
        return vec![0.0; w.len() * QK_K];
    }
    let zeroed: Vec<T> = w
        .iter()
        .map(|b| {
            let mut bytes = b.to_bytes_vec();
            for &(s, e) in T::QUANT_BYTES {
                bytes[s..e].fill(0);
            }
            T::from_bytes(&bytes).expect("size matches")
        })
        .collect();
    dequant_row(&zeroed)
}

/// `(exact dot in f64 of the dequantized values, magnitude bound)`.
fn f64_dot_and_mag<T: TestBlock>(w: &[T], a: &[BlockQ8K]) -> (f64, f64) {
    let wv = dequant_row(w);
    let mv = min_part_row(w);
    let mut dot = 0.0f64;
    let mut mag = 0.0f64;
    for (i, (&wi, &mi)) in wv.iter().zip(&mv).enumerate() {
        let blk = &a[i / QK_K];
        let ai = blk.d as f64 * blk.qs[i % QK_K] as f64;
        dot += wi as f64 * ai;
        // wi = p - |m| with p the scaled-quant part; bound both parts.
        mag += ai.abs() * ((wi as f64 - mi as f64).abs() + (mi as f64).abs());
    }
    (dot, mag)
}

fn tol(mag: f64) -> f64 {
    1e-5 * mag + 1e-30
}

fn simd_paths() -> Vec<KernelPath> {
    let paths: Vec<KernelPath> = KernelPath::supported()
        .into_iter()
        .filter(|p| *p != KernelPath::Scalar)
        .collect();
    for p in [KernelPath::Avx2, KernelPath::Avx512Vnni] {
        if !paths.contains(&p) {
            eprintln!(
                "skipped: kernel path {} is not supported on this CPU",
                p.name()
            );
        }
    }
    paths
}

/// Checks reference vs f64 math and every SIMD path vs the reference on one row.
fn check_row<T: TestBlock>(w: &[T], a: &[BlockQ8K], what: &str) {
    let reference = T::vec_dot_ref(w, a);
    let (exact, mag) = f64_dot_and_mag(w, a);
    assert!(
        (reference as f64 - exact).abs() <= tol(mag),
        "{} {what}: reference {reference} vs f64 {exact} (mag {mag})",
        T::NAME
    );
    assert_eq!(
        T::vec_dot(KernelPath::Scalar, w, a).to_bits(),
        reference.to_bits()
    );
    for path in simd_paths() {
        let got = T::vec_dot(path, w, a);
        assert!(
            (got as f64 - reference as f64).abs() <= tol(mag),
            "{} {what} on {}: {got} vs reference {reference} (mag {mag})",
            T::NAME,
            path.name()
        );
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/kquants/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Blocks and gguf-dequantized values of one fixture pair.
fn load_fixture<T: TestBlock>(kind: &str) -> (Vec<T>, Vec<f32>) {
    let bytes = fixture(&format!("{}_{kind}.bin", T::NAME));
    let values = fixture(&format!("{}_{kind}.f32", T::NAME));
    assert_eq!(bytes.len() % T::SIZE, 0);
    let blocks: Vec<T> = bytes
        .chunks_exact(T::SIZE)
        .map(|c| T::from_bytes(c).expect("exact chunk"))
        .collect();
    let values: Vec<f32> = values
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(values.len(), blocks.len() * QK_K);
    (blocks, values)
}

/// `dequantize` must equal gguf-py bit for bit, and the struct must round-trip bytes.
fn check_dequant_fixture<T: TestBlock>(kind: &str) {
    let (blocks, expected) = load_fixture::<T>(kind);
    let got = dequant_row(&blocks);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            g.to_bits() == e.to_bits() || (*g == 0.0 && *e == 0.0),
            "{} {kind} element {i}: {g} vs gguf {e}",
            T::NAME
        );
    }
    let bytes = fixture(&format!("{}_{kind}.bin", T::NAME));
    let back: Vec<u8> = blocks.iter().flat_map(|b| b.to_bytes_vec()).collect();
    assert_eq!(back, bytes);
}

#[test]
fn dequantize_matches_gguf_on_real_blocks() {
    check_dequant_fixture::<BlockQ4K>("real");
    check_dequant_fixture::<BlockQ6K>("real");
}

#[test]
fn dequantize_matches_gguf_on_random_blocks() {
    check_dequant_fixture::<BlockQ2K>("random");
    check_dequant_fixture::<BlockQ3K>("random");
    check_dequant_fixture::<BlockQ5K>("random");
}

#[test]
fn from_bytes_rejects_wrong_lengths() {
    assert!(BlockQ4K::from_bytes(&[0u8; 143]).is_none());
    assert!(BlockQ4K::from_bytes(&[0u8; 145]).is_none());
    assert!(BlockQ6K::from_bytes(&[]).is_none());
    assert!(BlockQ8K::from_bytes(&[0u8; 291]).is_none());
    assert_eq!(
        [
            BlockQ2K::SIZE,
            BlockQ3K::SIZE,
            BlockQ4K::SIZE,
            BlockQ5K::SIZE,
            BlockQ6K::SIZE,
            BlockQ8K::SIZE
        ],
        [84, 110, 144, 176, 210, 292]
    );
}

/// Real Gemma rows (8 super-blocks = 2048 columns each) with random activations.
fn check_real_rows<T: TestBlock>() {
    let (blocks, _) = load_fixture::<T>("real");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (r, row) in blocks.chunks_exact(8).enumerate() {
        for trial in 0..8 {
            let a = random_activations(&mut rng, row.len());
            check_row(row, &a, &format!("real row {r} trial {trial}"));
        }
    }
}

#[test]
fn q4k_real_rows() {
    check_real_rows::<BlockQ4K>();
}

#[test]
fn q6k_real_rows() {
    check_real_rows::<BlockQ6K>();
}

/// Random blocks (random bytes, finite random f16 scales), rows of 1..=8 super-blocks.
fn check_random_rows<T: TestBlock>() {
    let mut rng = Rng(0xd1b5_4a32_d192_ed03 ^ T::SIZE as u64);
    for trial in 0..300 {
        let n = 1 + rng.below(8) as usize;
        let w: Vec<T> = (0..n).map(|_| random_block(&mut rng)).collect();
        let a = random_activations(&mut rng, n);
        check_row(&w, &a, &format!("random trial {trial}"));
    }
    // The gguf-checked random fixture blocks as one row.
    if let Ok(bytes) = std::fs::read(format!(
        "{}/tests/fixtures/kquants/{}_random.bin",
        env!("CARGO_MANIFEST_DIR"),
        T::NAME
    )) {
        let w: Vec<T> = bytes
            .chunks_exact(T::SIZE)
            .map(|c| T::from_bytes(c).expect("exact chunk"))
            .collect();
        let a = random_activations(&mut rng, w.len());
        check_row(&w, &a, "random fixture row");
    }
}

#[test]
fn q2k_random_rows() {
    check_random_rows::<BlockQ2K>();
}

#[test]
fn q3k_random_rows() {
    check_random_rows::<BlockQ3K>();
}

#[test]
fn q4k_random_rows() {
    check_random_rows::<BlockQ4K>();
}

#[test]
fn q5k_random_rows() {
    check_random_rows::<BlockQ5K>();
}

#[test]
fn q6k_random_rows() {
    check_random_rows::<BlockQ6K>();
}

/// Extreme quants against extreme activations, including -128 (which the quantizer
/// never makes but the kernels must not overflow on): every weight byte all ones or
/// all zeros, every activation at a bound.
fn check_extremes<T: TestBlock>() {
    for wbyte in [0x00u8, 0xFF, 0x55, 0xAA] {
        let mut bytes = vec![wbyte; T::SIZE];
        for &off in T::F16_OFFSETS {
            bytes[off..off + 2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        }
        let w = [T::from_bytes(&bytes).expect("size matches"); 2];
        for q in [-128i8, 127, -127] {
            let mut a = [BlockQ8K {
                d: 0.25,
                qs: [q; QK_K],
                bsums: [16 * q as i16; QK_K / 16],
            }; 2];
            a[1].d = -0.125;
            check_row(
                &w,
                &a,
                &format!("extreme weights {wbyte:#x} activations {q}"),
            );
        }
    }
}

#[test]
fn extremes_do_not_overflow() {
    check_extremes::<BlockQ2K>();
    check_extremes::<BlockQ3K>();
    check_extremes::<BlockQ4K>();
    check_extremes::<BlockQ5K>();
    check_extremes::<BlockQ6K>();
}

// ---------------------------------------------------------------------------------
// Q8_K quantizer

/// llama.cpp's `quantize_row_q8_K_ref`, transcribed directly.
fn q8k_direct(x: &[f32]) -> BlockQ8K {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut out = BlockQ8K::default();
    if amax == 0.0 {
        return out;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (k, s) in out.bsums.iter_mut().enumerate() {
        *s = out.qs[16 * k..16 * k + 16].iter().map(|&q| q as i16).sum();
    }
    out.d = 1.0 / iscale;
    out
}

/// Quantizes one block through `quantize_row` (the dispatched path) and checks the
/// portable `quantize` gives the same bits.
fn quantize_one(x: &[f32]) -> BlockQ8K {
    let mut out = [BlockQ8K::default()];
    BlockQ8K::quantize_row(x, &mut out);
    let scalar = BlockQ8K::quantize(x.try_into().expect("one block"));
    assert_same_q8k(&out[0], &scalar, "dispatched vs portable");
    out[0]
}

fn assert_same_q8k(got: &BlockQ8K, want: &BlockQ8K, what: &str) {
    assert_eq!(got.d.to_bits(), want.d.to_bits(), "{what}: d");
    assert_eq!(got.qs, want.qs, "{what}: qs");
    assert_eq!(got.bsums, want.bsums, "{what}: bsums");
}

#[test]
fn q8k_matches_direct_rule_on_random_rows() {
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..64 * QK_K)
        .map(|i| rng.activation() * (1 + i / QK_K) as f32)
        .collect();
    let mut out = vec![BlockQ8K::default(); 64];
    BlockQ8K::quantize_row(&x, &mut out);
    for (b, (got, chunk)) in out.iter().zip(x.chunks_exact(QK_K)).enumerate() {
        let want = q8k_direct(chunk);
        assert_same_q8k(got, &want, &format!("block {b}"));
        let scalar = BlockQ8K::quantize(chunk.try_into().expect("one block"));
        assert_same_q8k(&scalar, &want, &format!("scalar block {b}"));
    }
}

#[test]
fn q8k_rounds_ties_to_even() {
    // max = -127 makes iscale exactly 1, so x*iscale lands on the ties themselves.
    let mut x = [0.0f32; QK_K];
    x[0] = -127.0;
    let ties = [
        (0.5f32, 0i8),
        (1.5, 2),
        (2.5, 2),
        (3.5, 4),
        (-0.5, 0),
        (-1.5, -2),
        (-2.5, -2),
        (126.5, 126),
        (-126.5, -126),
        (127.0, 127),
    ];
    for (k, &(v, _)) in ties.iter().enumerate() {
        x[1 + k] = v;
    }
    let got = quantize_one(&x);
    assert_same_q8k(&got, &q8k_direct(&x), "ties");
    assert_eq!(got.d, 1.0);
    assert_eq!(got.qs[0], -127);
    for (k, &(v, q)) in ties.iter().enumerate() {
        assert_eq!(got.qs[1 + k], q, "tie {v}");
    }
    let first16: i16 = -127 + ties.iter().map(|&(_, q)| q as i16).sum::<i16>();
    assert_eq!(got.bsums[0], first16);
}

#[test]
fn q8k_keeps_sign_of_first_largest_magnitude() {
    let mut x = [0.25f32; QK_K];
    x[3] = -5.0;
    x[10] = 5.0;
    let got = quantize_one(&x);
    assert_same_q8k(&got, &q8k_direct(&x), "negative first");
    assert_eq!((got.qs[3], got.qs[10]), (-127, 127));
    assert!(got.d > 0.0);

    x[3] = 5.0;
    x[10] = -5.0;
    let got = quantize_one(&x);
    assert_same_q8k(&got, &q8k_direct(&x), "positive first");
    assert_eq!((got.qs[3], got.qs[10]), (-127, 127));
    assert!(got.d < 0.0, "a positive max gives a negative scale");
    assert!((got.d * got.qs[3] as f32 - 5.0).abs() < 1e-6);
}

#[test]
fn q8k_all_zero_block() {
    let mut x = vec![0.0f32; 2 * QK_K];
    x[QK_K + 7] = -0.0;
    x[QK_K + 9] = 1e-3;
    let mut out = [BlockQ8K {
        d: 9.0,
        qs: [5; QK_K],
        bsums: [80; QK_K / 16],
    }; 2];
    BlockQ8K::quantize_row(&x, &mut out);
    assert_eq!(
        out[0],
        BlockQ8K::default(),
        "all-zero block resets every field"
    );
    assert_same_q8k(&out[1], &q8k_direct(&x[QK_K..]), "second block");
    assert_eq!(out[1].qs[9], -127);
}

// ---------------------------------------------------------------------------------
// Panel (prompt-processing) kernels: up to 16 tokens per call

/// `panel_dot` of `rows` rows (`w`, whole rows) against `acts` (1..=16 tokens): the
/// scalar kernel, which is the panel rule, within float reordering of `vec_dot_ref`,
/// and every SIMD kernel equal to it bit for bit (so a prompt gives the same logits on
/// every path). Lanes past the last token are unspecified and not checked.
fn check_panel<T: TestBlock>(w: &[T], rows: usize, acts: &[Vec<BlockQ8K>], what: &str) {
    let bpr = w.len() / rows;
    assert_eq!(bpr * rows, w.len());
    let refs: Vec<&[BlockQ8K]> = acts.iter().map(Vec::as_slice).collect();
    let panel = BlockQ8K::build_panel(&refs);
    let mut rule = vec![[f32::NAN; 16]; rows];
    T::panel_dot(KernelPath::Scalar, w, &panel, &mut rule);
    for (r, (lanes, row)) in rule.iter().zip(w.chunks_exact(bpr)).enumerate() {
        for (t, a) in acts.iter().enumerate() {
            let reference = T::vec_dot_ref(row, a);
            let mag = f64_dot_and_mag(row, a).1;
            let g = lanes[t];
            assert!(
                (g as f64 - reference as f64).abs() <= tol(mag),
                "{} scalar panel {what}: row {r} token {t}: {g} vs reference {reference} \
                 (mag {mag})",
                T::NAME
            );
        }
    }
    for path in simd_paths() {
        let mut out = vec![[f32::NAN; 16]; rows];
        T::panel_dot(path, w, &panel, &mut out);
        for (r, (got, want)) in out.iter().zip(&rule).enumerate() {
            for t in 0..acts.len() {
                assert_eq!(
                    got[t].to_bits(),
                    want[t].to_bits(),
                    "{} panel {what} on {}: row {r} token {t}: {} vs scalar {}",
                    T::NAME,
                    path.name(),
                    got[t],
                    want[t]
                );
            }
        }
    }
}

/// A Q8_K block with every quant `q` (bsums consistent), scale `d`.
fn constant_activation(q: i8, d: f32) -> BlockQ8K {
    BlockQ8K {
        d,
        qs: [q; QK_K],
        bsums: [16 * q as i16; QK_K / 16],
    }
}

/// Random activations for `tokens` tokens; every fifth token is an extreme one (all
/// quants at -128, -127 or 127), the rest are quantized from random floats.
fn random_tokens(rng: &mut Rng, tokens: usize, blocks: usize) -> Vec<Vec<BlockQ8K>> {
    (0..tokens)
        .map(|t| {
            if t % 5 == 3 {
                let q = [-128i8, -127, 127][rng.below(3) as usize];
                let d = if rng.below(2) == 0 { 0.0625 } else { -0.5 };
                vec![constant_activation(q, d); blocks]
            } else {
                random_activations(rng, blocks)
            }
        })
        .collect()
}

/// Random blocks (all quant values, random scales), 1..=9 rows (passes of several rows
/// plus leftovers), 1..=8 super-blocks, 1..=16 tokens.
fn check_panel_random<T: TestBlock>() {
    let mut rng = Rng(0x0bad_5eed_1234_5678 ^ T::SIZE as u64);
    for trial in 0..80 {
        let rows = 1 + rng.below(9) as usize;
        let bpr = 1 + rng.below(8) as usize;
        let tokens = match trial % 4 {
            0 => 16,
            1 => 1,
            _ => 1 + rng.below(16) as usize,
        };
        let w: Vec<T> = (0..rows * bpr).map(|_| random_block(&mut rng)).collect();
        let acts = random_tokens(&mut rng, tokens, bpr);
        check_panel(&w, rows, &acts, &format!("random trial {trial}"));
    }
}

/// Extreme weights (every byte 0x00, 0xFF, 0x55 or 0xAA) against extreme activations.
fn check_panel_extremes<T: TestBlock>() {
    let blocks: Vec<T> = [0x00u8, 0xFF, 0x55, 0xAA]
        .iter()
        .map(|&wbyte| {
            let mut bytes = vec![wbyte; T::SIZE];
            for &off in T::F16_OFFSETS {
                bytes[off..off + 2]
                    .copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
            }
            T::from_bytes(&bytes).expect("size matches")
        })
        .collect();
    // Five rows of two super-blocks: every pair of patterns appears in some row.
    let w: Vec<T> = [(0, 1), (1, 1), (2, 3), (3, 0), (1, 2)]
        .iter()
        .flat_map(|&(a, b)| [blocks[a], blocks[b]])
        .collect();
    let acts: Vec<Vec<BlockQ8K>> = [-128i8, 127, -127, 0, 1, -1]
        .iter()
        .flat_map(|&q| {
            [
                vec![constant_activation(q, 0.25); 2],
                vec![
                    constant_activation(q, 0.25),
                    constant_activation(-q.max(-127), -0.125),
                ],
            ]
        })
        .collect();
    check_panel(&w, 5, &acts, "extremes");
}

#[test]
fn panel_q2k_random() {
    check_panel_random::<BlockQ2K>();
}

#[test]
fn panel_q3k_random() {
    check_panel_random::<BlockQ3K>();
}

#[test]
fn panel_q4k_random() {
    check_panel_random::<BlockQ4K>();
}

#[test]
fn panel_q5k_random() {
    check_panel_random::<BlockQ5K>();
}

#[test]
fn panel_q6k_random() {
    check_panel_random::<BlockQ6K>();
}

/// Zero-length rows (a matrix of zero columns) give zeros, not a panic.
#[test]
fn panel_of_empty_rows_gives_zeros() {
    let empty: Vec<BlockQ8K> = Vec::new();
    let panel = BlockQ8K::build_panel(&[&empty, &empty]);
    for path in KernelPath::supported() {
        let mut out = vec![[f32::NAN; 16]; 3];
        BlockQ4K::panel_dot(path, &[], &panel, &mut out);
        assert!(
            out.iter().all(|o| o.iter().all(|&v| v == 0.0)),
            "{}",
            path.name()
        );
        let mut out = vec![[f32::NAN; 16]; 2];
        BlockQ6K::panel_dot(path, &[], &panel, &mut out);
        assert!(
            out.iter().all(|o| o.iter().all(|&v| v == 0.0)),
            "{}",
            path.name()
        );
    }
}

#[test]
fn panel_extremes_do_not_overflow() {
    check_panel_extremes::<BlockQ2K>();
    check_panel_extremes::<BlockQ3K>();
    check_panel_extremes::<BlockQ4K>();
    check_panel_extremes::<BlockQ5K>();
    check_panel_extremes::<BlockQ6K>();
}

/// The gguf-checked fixture blocks as rows of 8 super-blocks (the random fixtures: one
/// row of all their blocks).
fn check_panel_fixture<T: TestBlock>(kind: &str, bpr: usize) {
    let (blocks, _) = load_fixture::<T>(kind);
    let rows = blocks.len() / bpr;
    let w = &blocks[..rows * bpr];
    let mut rng = Rng(0x51f1_5eed ^ T::SIZE as u64);
    for tokens in [16, 5] {
        let acts = random_tokens(&mut rng, tokens, bpr);
        check_panel(w, rows, &acts, &format!("{kind} fixture, {tokens} tokens"));
    }
}

#[test]
fn panel_fixture_rows() {
    check_panel_fixture::<BlockQ4K>("real", 8);
    check_panel_fixture::<BlockQ6K>("real", 8);
    let (q5, _) = load_fixture::<BlockQ5K>("random");
    check_panel_fixture::<BlockQ5K>("random", q5.len());
    let (q2, _) = load_fixture::<BlockQ2K>("random");
    check_panel_fixture::<BlockQ2K>("random", q2.len());
    let (q3, _) = load_fixture::<BlockQ3K>("random");
    check_panel_fixture::<BlockQ3K>("random", q3.len());
}

/// Whole real Gemma 3 matrices (Q4_K attn_output 1024→640 and ffn_down 2048→640, Q6_K
/// ffn_down 2048→640) against 16 and 11 random tokens.
#[test]
fn panel_real_gemma_matrices() {
    use smq_converter::direct::open_gguf_direct;
    use smq_converter::test_models;
    let Some(path) = test_models::find(test_models::GEMMA3) else {
        return;
    };
    let model = open_gguf_direct(&path).expect("open model");
    fn run<T: TestBlock>(bytes: &[u8], rows: usize, name: &str) {
        let w: Vec<T> = bytes
            .chunks_exact(T::SIZE)
            .map(|c| T::from_bytes(c).expect("exact chunk"))
            .collect();
        let bpr = w.len() / rows;
        let mut rng = Rng(0x6e6d_6d61 ^ rows as u64);
        for tokens in [16, 11] {
            let acts = random_tokens(&mut rng, tokens, bpr);
            check_panel(&w, rows, &acts, &format!("{name}, {tokens} tokens"));
        }
    }
    use smq_format::GgmlType;
    for (name, want) in [
        ("blk.0.attn_output.weight", GgmlType::Q4K),
        ("blk.2.ffn_down.weight", GgmlType::Q4K),
        ("blk.0.ffn_down.weight", GgmlType::Q6K),
    ] {
        let (entry, bytes) = model.tensor(name).expect("tensor present");
        let rows = entry.shape[1] as usize;
        assert_eq!(entry.ggml_type, want, "{name}");
        if want == GgmlType::Q4K {
            run::<BlockQ4K>(bytes, rows, name);
        } else {
            run::<BlockQ6K>(bytes, rows, name);
        }
    }
}
