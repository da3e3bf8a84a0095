//! Legacy-quant, float and matmul kernels against their scalar references, against an
//! independent dequantizer (the `gguf` Python package, via a fixture of real blocks),
//! and against naive float math.
//!
//! Tolerances: SIMD paths sum the same exact per-block integer dot products as the
//! reference in a different float order, so they must agree to
//! `1e-5 * Σ|w_i a_i| + 1e-6` (Σ over dequantized weight × activation magnitudes).
//! Prompt (panel) kernels and float-row dots follow one rule on every path: the SIMD
//! ones must give the scalar kernels' bits exactly.

use half::{bf16, f16};
use smq_format::GgmlType;
use smq_runtime::quant::act::{BlockQ8_0, BlockQ8_1};
use smq_runtime::quant::float;
use smq_runtime::quant::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1};
use smq_runtime::quant::matmul::{
    cast_blocks, dequantize_row, matmul, matmul_with, KernelError, WeightMatrix,
};
use smq_runtime::quant::unpacked::UnpackedRows;
use smq_runtime::quant::{ActBlock, KernelPath, WeightBlock, PANEL_TOKENS};

/// Tiny deterministic PRNG (64-bit LCG, top bits).
struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
    fn byte(&mut self) -> u8 {
        self.next_u32() as u8
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }
    fn scale(&mut self) -> f16 {
        f16::from_f32(self.f() * 0.05)
    }
}

trait RandomBlock: WeightBlock {
    fn random(r: &mut Rng) -> Self;
}

impl RandomBlock for BlockQ4_0 {
    fn random(r: &mut Rng) -> Self {
        BlockQ4_0 {
            d: r.scale(),
            qs: r.bytes(),
        }
    }
}
impl RandomBlock for BlockQ4_1 {
    fn random(r: &mut Rng) -> Self {
        BlockQ4_1 {
            d: r.scale(),
            m: r.scale(),
            qs: r.bytes(),
        }
    }
}
impl RandomBlock for BlockQ5_0 {
    fn random(r: &mut Rng) -> Self {
        BlockQ5_0 {
            d: r.scale(),
            qh: r.bytes(),
            qs: r.bytes(),
        }
    }
}
impl RandomBlock for BlockQ5_1 {
    fn random(r: &mut Rng) -> Self {
        BlockQ5_1 {
            d: r.scale(),
            m: r.scale(),
            qh: r.bytes(),
            qs: r.bytes(),
        }
    }
}
impl RandomBlock for BlockQ8_0 {
    fn random(r: &mut Rng) -> Self {
        // All 256 byte values, -128 included (not produced by ggml's quantizer, but
        // legal bytes that the kernels must still handle exactly).
        BlockQ8_0 {
            d: r.scale(),
            qs: r.bytes::<32>().map(|b| b as i8),
        }
    }
}

fn simd_paths() -> Vec<KernelPath> {
    KernelPath::supported()
        .into_iter()
        .filter(|&p| p != KernelPath::Scalar)
        .collect()
}

fn dequant<B: WeightBlock>(w: &[B]) -> Vec<f32> {
    let mut out = vec![0.0; w.len() * B::BLOCK_ELEMS];
    for (b, o) in w.iter().zip(out.chunks_exact_mut(B::BLOCK_ELEMS)) {
        b.dequantize(o);
    }
    out
}

fn random_acts(r: &mut Rng, n: usize) -> Vec<f32> {
    // Mixed magnitudes per block so the scales differ.
    (0..n)
        .map(|i| r.f() * (1.0 + (i / 32 % 5) as f32 * 3.0))
        .collect()
}

fn quantize<A: ActBlock>(x: &[f32]) -> Vec<A> {
    let mut a = vec![A::default(); x.len() / A::BLOCK_ELEMS];
    A::quantize_row(x, &mut a);
    a
}

/// Σ|w_i| |x_i| for the tolerance scale.
fn magnitude(w: &[f32], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(a, b)| (a * b).abs() as f64).sum()
}

fn assert_close(got: f32, want: f32, scale: f64, what: &str) {
    let tol = 1e-5 * scale + 1e-6;
    assert!(
        ((got - want) as f64).abs() <= tol,
        "{what}: got {got}, want {want}, tol {tol}"
    );
}

/// Activation values as the kernels see them (dequantized activation blocks).
fn act_values_q8_0(a: &[BlockQ8_0]) -> Vec<f32> {
    a.iter()
        .flat_map(|b| b.qs.map(|q| q as f32 * b.d.to_f32()))
        .collect()
}
fn act_values_q8_1(a: &[BlockQ8_1]) -> Vec<f32> {
    a.iter()
        .flat_map(|b| b.qs.map(|q| q as f32 * b.d.to_f32()))
        .collect()
}

trait ActValues: ActBlock {
    fn values(a: &[Self]) -> Vec<f32>;
}
impl ActValues for BlockQ8_0 {
    fn values(a: &[Self]) -> Vec<f32> {
        act_values_q8_0(a)
    }
}
impl ActValues for BlockQ8_1 {
    fn values(a: &[Self]) -> Vec<f32> {
        act_values_q8_1(a)
    }
}

/// Every SIMD path agrees with `vec_dot_ref`, and `vec_dot_ref` agrees with a float
/// dot of the dequantized weights and activations (a third formulation).
fn check_vec_dot<B: WeightBlock>(w: &[B], x: &[f32], what: &str)
where
    B::Act: ActValues,
{
    let a = quantize::<B::Act>(x);
    let want = B::vec_dot_ref(w, &a);
    let wd = dequant(w);
    let av = <B::Act as ActValues>::values(&a);
    let scale = magnitude(&wd, &av);
    let float_dot: f64 = wd.iter().zip(&av).map(|(p, q)| *p as f64 * *q as f64).sum();
    // Q4_1/Q5_1 use s = f16(d Σq) rather than the exact Σ d q: allow its rounding
    // (2^-11 of |m| Σ|a|, bounded here by max|w| Σ|a|).
    let wmax = wd.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let asum: f64 = av.iter().map(|v| v.abs() as f64).sum();
    let s_err: f64 = 1e-3 * (scale + wmax * asum);
    assert!(
        (want as f64 - float_dot).abs() <= s_err + 1e-5,
        "{what}: ref {want} vs dequantized dot {float_dot}"
    );
    assert_eq!(
        B::vec_dot(KernelPath::Scalar, w, &a),
        want,
        "{what}: scalar"
    );
    for p in simd_paths() {
        let got = B::vec_dot(p, w, &a);
        assert_close(got, want, scale, &format!("{what} {}", p.name()));
    }
}

fn random_vec_dots<B: RandomBlock>()
where
    B::Act: ActValues,
{
    let mut r = Rng(B::TYPE.id() as u64 * 7919 + 1);
    for n in [1usize, 2, 3, 5, 17, 18, 20, 64] {
        for rep in 0..20 {
            let w: Vec<B> = (0..n).map(|_| B::random(&mut r)).collect();
            let x = random_acts(&mut r, n * 32);
            check_vec_dot(&w, &x, &format!("{} n={n} rep={rep}", B::TYPE));
        }
    }
}

#[test]
fn vec_dot_random_q4_0() {
    random_vec_dots::<BlockQ4_0>();
}
#[test]
fn vec_dot_random_q4_1() {
    random_vec_dots::<BlockQ4_1>();
}
#[test]
fn vec_dot_random_q5_0() {
    random_vec_dots::<BlockQ5_0>();
}
#[test]
fn vec_dot_random_q5_1() {
    random_vec_dots::<BlockQ5_1>();
}
#[test]
fn vec_dot_random_q8_0() {
    random_vec_dots::<BlockQ8_0>();
}

#[test]
fn vec_dot_integer_extremes_are_exact() {
    // Largest |products|: every weight at its extreme, every activation at ±127.
    // With d = 1 the float sums stay exact integers, so all paths must agree exactly.
    let one = f16::from_f32(1.0);
    let a = vec![
        BlockQ8_0 {
            d: one,
            qs: [127; 32],
        },
        BlockQ8_0 {
            d: one,
            qs: [-127; 32],
        },
    ];
    let w8 = vec![
        BlockQ8_0 {
            d: one,
            qs: [-128; 32],
        },
        BlockQ8_0 {
            d: one,
            qs: [-128; 32],
        },
    ];
    let w5 = [BlockQ5_0 {
        d: one,
        qh: [0; 4],
        qs: [0; 16],
    }; 2];
    let w4 = [BlockQ4_0 {
        d: one,
        qs: [0; 16],
    }; 2];
    assert_eq!(BlockQ8_0::vec_dot_ref(&w8, &a), 0.0);
    assert_eq!(
        BlockQ8_0::vec_dot_ref(&w8[..1], &a[..1]),
        -128.0 * 127.0 * 32.0
    );
    assert_eq!(
        BlockQ5_0::vec_dot_ref(&w5[..1], &a[..1]),
        -16.0 * 127.0 * 32.0
    );
    assert_eq!(
        BlockQ4_0::vec_dot_ref(&w4[..1], &a[..1]),
        -8.0 * 127.0 * 32.0
    );
    for p in KernelPath::supported() {
        assert_eq!(
            BlockQ8_0::vec_dot(p, &w8[..1], &a[..1]),
            -128.0 * 127.0 * 32.0,
            "{}",
            p.name()
        );
        assert_eq!(
            BlockQ5_0::vec_dot(p, &w5[..1], &a[..1]),
            -16.0 * 127.0 * 32.0
        );
        assert_eq!(
            BlockQ4_0::vec_dot(p, &w4[..1], &a[..1]),
            -8.0 * 127.0 * 32.0
        );
        assert_eq!(BlockQ8_0::vec_dot(p, &w8, &a), 0.0);
    }
}

// ---------------------------------------------------------------------------------
// Real blocks from real model files (fixture written by fixtures/make_fixtures.py).

struct Fixture {
    ty: String,
    name: String,
    raw: Vec<u8>,
    values: Vec<f32>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn fixtures() -> Vec<Fixture> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/legacy_blocks.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Fixture {
            ty: t["type"].as_str().unwrap().to_string(),
            name: t["tensor"].as_str().unwrap().to_string(),
            raw: hex(t["raw_hex"].as_str().unwrap()),
            values: hex(t["values_f32le_hex"].as_str().unwrap())
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        })
        .collect()
}

/// Bytes copied into u64-aligned storage (a stand-in for the aligned mmap).
struct Aligned(Vec<u64>, usize);

impl Aligned {
    fn new(bytes: &[u8]) -> Self {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        for (i, &b) in bytes.iter().enumerate() {
            v[i / 8] |= (b as u64) << (8 * (i % 8));
        }
        Aligned(v, bytes.len())
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the Vec holds at least `self.1` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.1) }
    }
}

fn check_fixture<B: WeightBlock>(f: &Fixture)
where
    B::Act: ActValues,
{
    let buf = Aligned::new(&f.raw);
    let blocks = cast_blocks::<B>(buf.bytes()).unwrap();
    let ours = dequant(blocks);
    assert_eq!(ours.len(), f.values.len());
    for (i, (a, b)) in ours.iter().zip(&f.values).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{} element {i}: {a} vs {b}",
            f.name
        );
    }
    let mut r = Rng(f.raw.len() as u64);
    for len in [1, 7, blocks.len()] {
        let x = random_acts(&mut r, len * 32);
        check_vec_dot(&blocks[..len], &x, &format!("{} ({len} blocks)", f.name));
    }
}

#[test]
fn real_blocks_dequantize_like_gguf_py_and_simd_matches() {
    let fx = fixtures();
    let mut seen = std::collections::BTreeSet::new();
    for f in &fx {
        match f.ty.as_str() {
            "Q4_1" => check_fixture::<BlockQ4_1>(f),
            "Q5_0" => check_fixture::<BlockQ5_0>(f),
            "Q8_0" => check_fixture::<BlockQ8_0>(f),
            other => panic!("unexpected fixture type {other}"),
        }
        seen.insert(f.ty.clone());
    }
    assert_eq!(seen.len(), 3, "fixture covers Q4_1, Q5_0 and Q8_0");
}

// ---------------------------------------------------------------------------------
// Float rows.

#[test]
fn float_dots_match_reference() {
    let mut r = Rng(99);
    for n in [1usize, 7, 8, 31, 32, 33, 39, 40, 63, 64, 71, 100, 576, 1003] {
        let w: Vec<f32> = (0..n).map(|_| r.f()).collect();
        let x: Vec<f32> = (0..n).map(|_| r.f() * 4.0).collect();
        let scale = magnitude(&w, &x);
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut x16 = vec![f16::ZERO; n];
        let mut xb = vec![bf16::ZERO; n];
        float::f32_to_f16_row(&x, &mut x16);
        float::f32_to_bf16_row(&x, &mut xb);
        let r32 = float::dot_f32_ref(&w, &x);
        let r16 = float::dot_f16_ref(&w16, &x16);
        let rb = float::dot_bf16_ref(&wb, &xb);
        // The references themselves: f16 / bf16 rounding of both operands.
        assert!(((r16 - r32) as f64).abs() <= 2e-3 * scale + 1e-6);
        assert!(((rb - r32) as f64).abs() <= 1.6e-2 * scale + 1e-6);
        let scalar = [
            float::dot_f32(KernelPath::Scalar, &w, &x),
            float::dot_f16(KernelPath::Scalar, &w16, &x16),
            float::dot_bf16(KernelPath::Scalar, &wb, &xb),
        ];
        for p in KernelPath::supported() {
            let got = [
                float::dot_f32(p, &w, &x),
                float::dot_f16(p, &w16, &x16),
                float::dot_bf16(p, &wb, &xb),
            ];
            assert_close(got[0], r32, scale, "f32");
            assert_close(got[1], r16, scale, "f16");
            assert_close(got[2], rb, scale, "bf16");
            // One summation order on every path: the scalar path's bits.
            assert_eq!(
                got.map(f32::to_bits),
                scalar.map(f32::to_bits),
                "{} n={n}: f32, f16, bf16",
                p.name()
            );
        }
    }
}

#[test]
fn activation_rounding_to_f16_and_bf16_is_nearest_even() {
    // 1 + 2^-11 is halfway between two f16 values: ties go to the even one (1.0).
    let mut h = [f16::ZERO; 2];
    float::f32_to_f16_row(&[1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)], &mut h);
    assert_eq!(h[0].to_f32(), 1.0);
    assert_eq!(h[1].to_f32(), 1.0 + 2.0 * 2f32.powi(-10));
    let mut b = [bf16::ZERO; 2];
    float::f32_to_bf16_row(&[1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)], &mut b);
    assert_eq!(b[0].to_f32(), 1.0);
    assert_eq!(b[1].to_f32(), 1.0 + 2.0 * 2f32.powi(-7));
}

// ---------------------------------------------------------------------------------
// matmul.

fn as_bytes<T>(v: &[T]) -> &[u8] {
    // SAFETY: the block types and floats are plain data without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// matmul on every path vs (a) a reference built from `vec_dot_ref` on the same
/// quantized activations (the scalar path's short batches: exact), (b) naive float math
/// on dequantized weights and unquantized activations (loose: bounded by activation
/// rounding); and prompts (panel kernels, with rows unpacked from four panels on) give
/// the scalar path's bits on every path.
fn check_matmul<B: RandomBlock>()
where
    B::Act: ActValues,
{
    let mut r = Rng(B::TYPE.id() as u64 + 1000);
    for (rows, cols) in [
        (1usize, 32usize),
        (15, 64),
        (17, 96),
        (100, 576),
        (333, 128),
    ] {
        let bpr = cols / 32;
        let w: Vec<B> = (0..rows * bpr).map(|_| B::random(&mut r)).collect();
        let wm = WeightMatrix::new(B::TYPE, rows, cols, as_bytes(&w)).unwrap();
        // 9 and more tokens take the panel kernels.
        for n_tokens in [1usize, 3, 6, 9, 16, 21, 40, 70] {
            let x = random_acts(&mut r, n_tokens * cols);
            let acts: Vec<Vec<B::Act>> = x.chunks_exact(cols).map(quantize::<B::Act>).collect();
            let mut want = vec![0.0f32; rows * n_tokens];
            for t in 0..n_tokens {
                for row in 0..rows {
                    want[t * rows + row] = B::vec_dot_ref(&w[row * bpr..(row + 1) * bpr], &acts[t]);
                }
            }
            let mut scalar = vec![f32::NAN; rows * n_tokens];
            matmul_with(KernelPath::Scalar, &wm, &x, n_tokens, &mut scalar);
            let prompt = n_tokens >= 9;
            if !prompt {
                assert_eq!(
                    scalar,
                    want,
                    "{} {rows}x{cols} t={n_tokens} scalar",
                    B::TYPE
                );
            }

            let wd = dequant(&w);
            for p in KernelPath::supported() {
                let mut got = vec![f32::NAN; rows * n_tokens];
                matmul_with(p, &wm, &x, n_tokens, &mut got);
                if prompt {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(
                        bits(&got) == bits(&scalar),
                        "{} {rows}x{cols} t={n_tokens}: {} differs from scalar",
                        B::TYPE,
                        p.name()
                    );
                }
                for t in 0..n_tokens {
                    let av = <B::Act as ActValues>::values(&acts[t]);
                    let xt = &x[t * cols..(t + 1) * cols];
                    for row in 0..rows {
                        let wr = &wd[row * cols..(row + 1) * cols];
                        let what = format!("{} {rows}x{cols} t={t} r={row} {}", B::TYPE, p.name());
                        let g = got[t * rows + row];
                        assert_close(g, want[t * rows + row], magnitude(wr, &av), &what);
                        // Naive: |Σ w (x - x̂)| <= Σ |w| · 0.6 · d_block (half a step
                        // plus the f16 rounding of d), plus float slack.
                        let naive: f64 =
                            wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let bound: f64 = wr
                            .chunks_exact(32)
                            .zip(xt.chunks_exact(32))
                            .map(|(wb, xb)| {
                                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                                wb.iter().map(|v| v.abs() as f64).sum::<f64>() * 0.6 * amax / 127.0
                            })
                            .sum::<f64>()
                            + 1e-3 * magnitude(wr, xt)
                            + 1e-5;
                        assert!(
                            (g as f64 - naive).abs() <= bound,
                            "{what}: {g} vs naive {naive}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_q4_0() {
    check_matmul::<BlockQ4_0>();
}
#[test]
fn matmul_q4_1() {
    check_matmul::<BlockQ4_1>();
}
#[test]
fn matmul_q5_0() {
    check_matmul::<BlockQ5_0>();
}
#[test]
fn matmul_q5_1() {
    check_matmul::<BlockQ5_1>();
}
#[test]
fn matmul_q8_0() {
    check_matmul::<BlockQ8_0>();
}

#[test]
fn matmul_float_types() {
    let mut r = Rng(5);
    for (rows, cols) in [(1usize, 8usize), (19, 40), (130, 576)] {
        let wf: Vec<f32> = (0..rows * cols).map(|_| r.f()).collect();
        let w16: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
        for n_tokens in [1usize, 4] {
            let x: Vec<f32> = (0..n_tokens * cols).map(|_| r.f()).collect();
            let cases: [(GgmlType, &[u8]); 3] = [
                (GgmlType::F32, as_bytes(&wf)),
                (GgmlType::F16, as_bytes(&w16)),
                (GgmlType::BF16, as_bytes(&wb)),
            ];
            for (ty, bytes) in cases {
                let wm = WeightMatrix::new(ty, rows, cols, bytes).unwrap();
                for p in KernelPath::supported() {
                    let mut got = vec![f32::NAN; rows * n_tokens];
                    matmul_with(p, &wm, &x, n_tokens, &mut got);
                    let mut row = vec![0f32; cols];
                    for t in 0..n_tokens {
                        let xt = &x[t * cols..(t + 1) * cols];
                        for rr in 0..rows {
                            dequantize_row(&wm, rr, &mut row).unwrap();
                            // Activation rounding: f16 2^-11, bf16 2^-8 relative.
                            let rel = match ty {
                                GgmlType::F32 => 1e-5,
                                GgmlType::F16 => 1e-3,
                                _ => 8e-3,
                            };
                            let naive: f64 =
                                row.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let g = got[t * rows + rr] as f64;
                            assert!(
                                (g - naive).abs() <= rel * magnitude(&row, xt) + 1e-6,
                                "{ty} {rows}x{cols} {}: {g} vs {naive}",
                                p.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_default_path_matches_scalar() {
    let mut r = Rng(77);
    let (rows, cols) = (257, 640);
    let w: Vec<BlockQ5_0> = (0..rows * cols / 32)
        .map(|_| BlockQ5_0::random(&mut r))
        .collect();
    let wm = WeightMatrix::new(GgmlType::Q5_0, rows, cols, as_bytes(&w)).unwrap();
    let x = random_acts(&mut r, 2 * cols);
    let (mut a, mut b) = (vec![0f32; 2 * rows], vec![0f32; 2 * rows]);
    matmul(&wm, &x, 2, &mut a);
    matmul_with(KernelPath::Scalar, &wm, &x, 2, &mut b);
    for (g, s) in a.iter().zip(&b) {
        assert!((g - s).abs() <= 1e-4 * s.abs().max(1.0), "{g} vs {s}");
    }
}

#[test]
fn dequantize_row_matches_blocks() {
    let mut r = Rng(3);
    let (rows, cols) = (5, 96);
    let w: Vec<BlockQ4_1> = (0..rows * 3).map(|_| BlockQ4_1::random(&mut r)).collect();
    let wm = WeightMatrix::new(GgmlType::Q4_1, rows, cols, as_bytes(&w)).unwrap();
    let all = dequant(&w);
    let mut out = vec![0f32; cols];
    for row in 0..rows {
        dequantize_row(&wm, row, &mut out).unwrap();
        assert_eq!(out, all[row * cols..(row + 1) * cols]);
    }
    assert_eq!(
        dequantize_row(&wm, rows, &mut out),
        Err(KernelError::RowOutOfRange { row: rows, rows })
    );
}

// ---------------------------------------------------------------------------------
// Validation of untrusted shapes and bytes.

#[test]
fn weight_matrix_rejects_bad_input() {
    let buf = Aligned::new(&[0u8; 34 * 4 + 8]);
    let b = buf.bytes();
    assert!(WeightMatrix::new(GgmlType::Q8_0, 2, 64, &b[..136]).is_ok());
    assert!(matches!(
        WeightMatrix::new(GgmlType::Q8_0, 2, 64, &b[..135]),
        Err(KernelError::SizeMismatch {
            expected: 136,
            actual: 135,
            ..
        })
    ));
    assert!(matches!(
        WeightMatrix::new(GgmlType::Q8_0, 1, 48, &b[..51]),
        Err(KernelError::PartialBlock { .. })
    ));
    assert!(matches!(
        WeightMatrix::new(GgmlType::Q8_0, 2, 64, &b[1..137]),
        Err(KernelError::Misaligned { align: 2, .. })
    ));
    assert!(matches!(
        WeightMatrix::new(GgmlType::F32, 1, 2, &b[2..10]),
        Err(KernelError::Misaligned { align: 4, .. })
    ));
    assert!(matches!(
        WeightMatrix::new(GgmlType::Q8_0, usize::MAX / 2, 64, b),
        Err(KernelError::Overflow { .. })
    ));
    for ty in [
        GgmlType::Q8_1,
        GgmlType::Q8K,
        GgmlType::IQ4NL,
        GgmlType::I32,
    ] {
        assert_eq!(
            WeightMatrix::new(ty, 1, 256, b).unwrap_err(),
            KernelError::UnsupportedType(ty)
        );
    }
    assert!(matches!(
        cast_blocks::<BlockQ4_0>(&b[..19]),
        Err(KernelError::Length { len: 19, size: 18 })
    ));
    assert!(matches!(
        cast_blocks::<BlockQ4_0>(&b[1..19]),
        Err(KernelError::Misaligned { .. })
    ));
    assert_eq!(cast_blocks::<BlockQ4_0>(&b[..36]).unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------
// K-quant dispatch: matmul reaches each K-quant type through `WeightBlock` (their
// kernels are tested with their module; this checks the wiring only).

fn check_kquant_dispatch<B: WeightBlock>() {
    let mut r = Rng(B::TYPE.id() as u64);
    let (rows, cols) = (21usize, 512usize);
    let n_bytes = rows * cols / B::BLOCK_ELEMS * std::mem::size_of::<B>();
    // Bytes below 0x3C keep every f16 field finite (|v| < 1) whatever its offset.
    let raw: Vec<u8> = (0..n_bytes).map(|_| r.byte() % 0x3C).collect();
    let buf = Aligned::new(&raw);
    let wm = WeightMatrix::new(B::TYPE, rows, cols, buf.bytes()).unwrap();
    let blocks = cast_blocks::<B>(buf.bytes()).unwrap();
    let bpr = cols / B::BLOCK_ELEMS;
    let n_tokens = 2;
    let x = random_acts(&mut r, n_tokens * cols);
    let acts: Vec<Vec<B::Act>> = x.chunks_exact(cols).map(quantize::<B::Act>).collect();
    let mut got = vec![f32::NAN; rows * n_tokens];
    matmul_with(KernelPath::Scalar, &wm, &x, n_tokens, &mut got);
    let mut row = vec![0f32; cols];
    for t in 0..n_tokens {
        for rr in 0..rows {
            let want = B::vec_dot_ref(&blocks[rr * bpr..(rr + 1) * bpr], &acts[t]);
            assert_eq!(got[t * rows + rr].to_bits(), want.to_bits(), "{}", B::TYPE);
        }
    }
    for rr in 0..rows {
        dequantize_row(&wm, rr, &mut row).unwrap();
        assert_eq!(
            row,
            dequant(&blocks[rr * bpr..(rr + 1) * bpr]),
            "{}",
            B::TYPE
        );
    }
}

#[test]
fn matmul_dispatches_kquants() {
    use smq_runtime::quant::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
    check_kquant_dispatch::<BlockQ2K>();
    check_kquant_dispatch::<BlockQ3K>();
    check_kquant_dispatch::<BlockQ4K>();
    check_kquant_dispatch::<BlockQ5K>();
    check_kquant_dispatch::<BlockQ6K>();
}

/// The four-token kernels equal four single-token dot products bit for bit, on every
/// path (so a prompt evaluated in a batch and token by token gives the same logits).
fn check_x4<B: RandomBlock>() {
    let mut r = Rng(B::TYPE.id() as u64 * 104_729 + 3);
    for n in [1usize, 2, 3, 17, 18, 64] {
        let w: Vec<B> = (0..n).map(|_| B::random(&mut r)).collect();
        let acts: Vec<Vec<B::Act>> = (0..4)
            .map(|_| quantize::<B::Act>(&random_acts(&mut r, n * 32)))
            .collect();
        for path in KernelPath::supported() {
            let four = B::vec_dot_x4(path, &w, [&acts[0], &acts[1], &acts[2], &acts[3]]);
            for (k, a) in acts.iter().enumerate() {
                let one = B::vec_dot(path, &w, a);
                assert_eq!(
                    four[k].to_bits(),
                    one.to_bits(),
                    "{} {path:?} n={n} token {k}: {} vs {one}",
                    B::TYPE,
                    four[k]
                );
            }
        }
    }
}

#[test]
fn four_token_kernels_equal_single_token_ones() {
    check_x4::<BlockQ4_0>();
    check_x4::<BlockQ4_1>();
    check_x4::<BlockQ5_0>();
    check_x4::<BlockQ5_1>();
    check_x4::<BlockQ8_0>();
}

/// Panel kernels (prompt processing) on rows `w` (`bpr` blocks each) against `acts`
/// (1..=16 tokens): the scalar kernel, which is the panel rule, within float reordering
/// of `vec_dot_ref`; every SIMD kernel, the type's own and the shared one over unpacked
/// rows, equal to it bit for bit (so a prompt gives the same logits on every path).
/// Lanes past the last token are unspecified and not checked.
fn check_panel_rows<B: WeightBlock>(w: &[B], bpr: usize, acts: &[Vec<B::Act>], what: &str)
where
    B::Act: ActValues,
{
    let rows = w.len() / bpr;
    assert_eq!(rows * bpr, w.len(), "whole rows");
    let tokens = acts.len();
    let refs: Vec<&[B::Act]> = acts.iter().map(Vec::as_slice).collect();
    let panel = B::Act::build_panel(&refs);
    let mut rule = vec![[f32::NAN; PANEL_TOKENS]; rows];
    B::panel_dot(KernelPath::Scalar, w, &panel, &mut rule);
    let wd = dequant(w);
    for (row, lanes) in rule.iter().enumerate() {
        let wr = &w[row * bpr..(row + 1) * bpr];
        for (t, a) in acts.iter().enumerate() {
            let av = <B::Act as ActValues>::values(a);
            assert_close(
                lanes[t],
                B::vec_dot_ref(wr, a),
                magnitude(&wd[row * bpr * 32..(row + 1) * bpr * 32], &av),
                &format!(
                    "{} scalar panel {what}: row {row} token {t}/{tokens}",
                    B::TYPE
                ),
            );
        }
    }
    let same = |got: &[[f32; PANEL_TOKENS]], kernel: &str| {
        for (row, (g, r)) in got.iter().zip(&rule).enumerate() {
            for t in 0..tokens {
                assert_eq!(
                    g[t].to_bits(),
                    r[t].to_bits(),
                    "{} {kernel} panel {what}: row {row} token {t}/{tokens}: {} vs scalar {}",
                    B::TYPE,
                    g[t],
                    r[t]
                );
            }
        }
    };
    for path in simd_paths() {
        let mut out = vec![[f32::NAN; PANEL_TOKENS]; rows];
        B::panel_dot(path, w, &panel, &mut out);
        same(&out, path.name());
        let mut unpacked = UnpackedRows::default();
        if B::unpack_rows(path, w, bpr, &mut unpacked) {
            let mut out = vec![[f32::NAN; PANEL_TOKENS]; rows];
            B::unpacked_panel_dot(path, &unpacked, &panel, &mut out);
            same(&out, &format!("{} unpacked", path.name()));
        }
    }
}

/// Random blocks for every panel fill (1..=16 tokens) and row counts around the
/// kernels' passes of rows.
fn check_panel<B: RandomBlock>()
where
    B::Act: ActValues,
{
    let mut r = Rng(B::TYPE.id() as u64 * 7919 + 11);
    for (rows, bpr) in [(1usize, 1usize), (3, 2), (4, 18), (7, 5), (16, 48)] {
        let w: Vec<B> = (0..rows * bpr).map(|_| B::random(&mut r)).collect();
        for tokens in [1usize, 5, 15, 16] {
            let acts: Vec<Vec<B::Act>> = (0..tokens)
                .map(|_| quantize::<B::Act>(&random_acts(&mut r, bpr * 32)))
                .collect();
            check_panel_rows(&w, bpr, &acts, &format!("{rows}x{bpr}, {tokens} tokens"));
        }
    }
}

#[test]
fn panel_kernels_match_reference() {
    check_panel::<BlockQ4_0>();
    check_panel::<BlockQ4_1>();
    check_panel::<BlockQ5_0>();
    check_panel::<BlockQ5_1>();
    check_panel::<BlockQ8_0>();
}

/// Activation rows whose quants sit at the bounds: all +127, all -127, alternating,
/// a single spike, all zero, and scales from tiny (f16 subnormal) to large.
fn extreme_acts(blocks: usize) -> Vec<Vec<f32>> {
    let n = blocks * 32;
    let pattern = |f: &dyn Fn(usize) -> f32| (0..n).map(f).collect::<Vec<f32>>();
    vec![
        pattern(&|_| 1.0),
        pattern(&|_| -300.0),
        pattern(&|i| if i % 2 == 0 { 2.5 } else { -2.5 }),
        pattern(&|i| if i % 32 == 7 { -1.0e-5 } else { 0.0 }),
        pattern(&|_| 0.0),
        pattern(&|i| (i % 32) as f32 * 1.0e-6 - 1.6e-5),
        pattern(&|i| if i % 3 == 0 { 3.0e3 } else { -1.0 }),
    ]
}

/// Weight blocks with every byte 0x00, 0xFF, 0x55 or 0xAA (quants at both ends, fifth
/// bits all set or clear) and scales and mins of both signs, tiny to large.
fn extreme_blocks<B: WeightBlock>() -> Vec<B> {
    let scales = [1.0f32, -0.5, 6.0e-8, 3.0e4];
    let mut out = Vec::new();
    for byte in [0x00u8, 0xFF, 0x55, 0xAA] {
        for (k, &d) in scales.iter().enumerate() {
            let mut raw = vec![byte; std::mem::size_of::<B>()];
            // The f16 fields lead every legacy block: d, then m for Q4_1/Q5_1.
            raw[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            if matches!(B::TYPE, GgmlType::Q4_1 | GgmlType::Q5_1) {
                let m = -scales[(k + 1) % scales.len()];
                raw[2..4].copy_from_slice(&f16::from_f32(m).to_bits().to_le_bytes());
            }
            let buf = Aligned::new(&raw);
            out.push(cast_blocks::<B>(buf.bytes()).unwrap()[0]);
        }
    }
    out
}

fn check_panel_extremes<B: WeightBlock>()
where
    B::Act: ActValues,
{
    let w = extreme_blocks::<B>();
    // Rows of four blocks: every pattern meets every activation pattern.
    let bpr = 4;
    let acts: Vec<Vec<B::Act>> = extreme_acts(bpr)
        .iter()
        .map(|x| quantize::<B::Act>(x))
        .collect();
    check_panel_rows(&w, bpr, &acts, "extremes");
    check_panel_rows(&w, bpr, &acts[..1], "extremes, one token");
}

#[test]
fn panel_kernels_on_extreme_blocks() {
    check_panel_extremes::<BlockQ4_0>();
    check_panel_extremes::<BlockQ4_1>();
    check_panel_extremes::<BlockQ5_0>();
    check_panel_extremes::<BlockQ5_1>();
    check_panel_extremes::<BlockQ8_0>();
}

fn check_panel_fixture<B: WeightBlock>(f: &Fixture)
where
    B::Act: ActValues,
{
    let buf = Aligned::new(&f.raw);
    let blocks = cast_blocks::<B>(buf.bytes()).unwrap();
    let mut r = Rng(f.raw.len() as u64 + 17);
    // One row of every block, and rows of six.
    let six = blocks.len() / 6 * 6;
    for (w, bpr) in [(blocks, blocks.len()), (&blocks[..six], 6)] {
        for tokens in [16usize, 9] {
            let acts: Vec<Vec<B::Act>> = (0..tokens)
                .map(|_| quantize::<B::Act>(&random_acts(&mut r, bpr * 32)))
                .collect();
            check_panel_rows(w, bpr, &acts, &format!("{} rows of {bpr}", f.name));
        }
    }
}

#[test]
fn panel_kernels_on_real_blocks() {
    for f in &fixtures() {
        match f.ty.as_str() {
            "Q4_1" => check_panel_fixture::<BlockQ4_1>(f),
            "Q5_0" => check_panel_fixture::<BlockQ5_0>(f),
            "Q8_0" => check_panel_fixture::<BlockQ8_0>(f),
            other => panic!("unexpected fixture type {other}"),
        }
    }
}

/// Whole real matrices (Gemma 3's Q5_0 attention query and Q8_0 value projections,
/// SmolLM2's Q4_1 query and FFN down projections) against 16 and 11 tokens of random
/// activations, when the models are present.
#[test]
fn panel_kernels_on_real_matrices() {
    use smq_converter::direct::open_gguf_direct;
    use smq_converter::test_models;
    fn run<B: WeightBlock>(bytes: &[u8], rows: usize, name: &str)
    where
        B::Act: ActValues,
    {
        let buf = Aligned::new(bytes);
        let w = cast_blocks::<B>(buf.bytes()).unwrap();
        let bpr = w.len() / rows;
        let mut r = Rng(rows as u64 * 31 + bpr as u64);
        for tokens in [16usize, 11] {
            let acts: Vec<Vec<B::Act>> = (0..tokens)
                .map(|_| quantize::<B::Act>(&random_acts(&mut r, bpr * 32)))
                .collect();
            check_panel_rows(w, bpr, &acts, &format!("{name}, {tokens} tokens"));
        }
    }
    for (model, tensors) in [
        (
            test_models::GEMMA3,
            &[
                ("blk.0.attn_q.weight", GgmlType::Q5_0),
                ("blk.0.attn_v.weight", GgmlType::Q8_0),
            ][..],
        ),
        (
            test_models::SMOLLM2,
            &[
                ("blk.0.attn_q.weight", GgmlType::Q4_1),
                ("blk.29.ffn_down.weight", GgmlType::Q4_1),
            ][..],
        ),
    ] {
        let Some(path) = test_models::find(model) else {
            eprintln!("skipped: {model} not found");
            continue;
        };
        let m = open_gguf_direct(&path).expect("open model");
        for &(name, ty) in tensors {
            let (entry, bytes) = m.tensor(name).expect("tensor present");
            assert_eq!(entry.ggml_type, ty, "{name}");
            let rows = entry.shape[1] as usize;
            match ty {
                GgmlType::Q4_1 => run::<BlockQ4_1>(bytes, rows, name),
                GgmlType::Q5_0 => run::<BlockQ5_0>(bytes, rows, name),
                _ => run::<BlockQ8_0>(bytes, rows, name),
            }
        }
    }
}
