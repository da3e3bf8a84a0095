//! The llama-family architectures (llama with grouped-query attention, an untied LM head,
//! RoPE frequency factors and linear RoPE scaling; qwen2; qwen3; smollm3) run end to end
//! on small synthetic GGUF files and are compared with an independent, straightforward
//! f64 forward pass written here from the same (dequantized) weights.
//!
//! Each case also checks that it is sensitive to what it claims to test: the reference
//! with one feature turned off (the Q bias dropped, NeoX RoPE replaced by adjacent pairs,
//! the frequency factors ignored, ...) must be far outside the tolerance.

use std::path::Path;

use half::f16;
use smq_converter::GgufBuilder;
use smq_format::{GgmlType, MappedModel, MetadataValue};
use smq_runtime::generate::Session;
use smq_runtime::model::{Model, ModelError};
use smq_runtime::ops::argmax;

/// Largest allowed `max |smq − reference|` over the logits, relative to the largest
/// `|reference logit|`, with F32 weights. The runtime keeps llama.cpp's rounding: keys,
/// values, queries and attention probabilities in fp16 (about 1e-3 relative each).
const TOL_F32: f64 = 1e-2;
/// The same with Q8_0 weights: activations are also quantized to Q8_0 before every
/// matrix product (8 bits per 32-value block).
const TOL_Q8_0: f64 = 3e-2;
/// A feature that is turned off in the reference must move the logits at least this many
/// tolerances away, so that the comparison really checks it.
const SENSITIVITY: f64 = 5.0;

const N_CTX: usize = 32;
const RMS_EPS: f32 = 1e-5;
const FREQ_BASE: f32 = 10_000.0;

/// What a synthetic model holds and how its forward pass works.
#[derive(Clone, Debug)]
struct Spec {
    arch: &'static str,
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    /// `attention.key_length`, when the head size is not `n_embd / n_head`.
    key_length: Option<usize>,
    n_ff: usize,
    n_vocab: usize,
    wtype: GgmlType,
    /// RoPE pairs `(i, i + n_rot/2)` instead of `(2i, 2i+1)`.
    neox: bool,
    qkv_bias: bool,
    /// `attn_output.bias` and the three FFN biases.
    other_biases: bool,
    qk_norm: bool,
    untied_output: bool,
    output_bias: bool,
    rope_freqs: bool,
    /// `rope.scaling.factor`, with `rope.scaling.type = linear` when `scaling_type_key`
    /// (llama.cpp scales linearly when the type is absent, too).
    linear_scaling: Option<f32>,
    scaling_type_key: bool,
    /// Layers with `(il + 1) % n == 0` use no RoPE.
    no_rope_every: Option<usize>,
}

impl Spec {
    fn base(arch: &'static str) -> Spec {
        Spec {
            arch,
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            key_length: None,
            n_ff: 128,
            n_vocab: 32,
            wtype: GgmlType::F32,
            neox: false,
            qkv_bias: false,
            other_biases: false,
            qk_norm: false,
            untied_output: false,
            output_bias: false,
            rope_freqs: false,
            linear_scaling: None,
            scaling_type_key: true,
            no_rope_every: None,
        }
    }

    fn head_dim(&self) -> usize {
        self.key_length.unwrap_or(self.n_embd / self.n_head)
    }

    fn tolerance(&self) -> f64 {
        if self.wtype == GgmlType::Q8_0 {
            TOL_Q8_0
        } else {
            TOL_F32
        }
    }
}

// ---------------------------------------------------------------------------------------
// Synthetic weights.

/// xorshift64*: deterministic weights without a dependency.
struct Rng(u64);

impl Rng {
    /// Uniform in `[-amp, amp)`.
    fn uniform(&mut self, amp: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
    }

    fn vec(&mut self, n: usize, center: f32, amp: f32) -> Vec<f32> {
        (0..n).map(|_| center + self.uniform(amp)).collect()
    }
}

/// A `rows × cols` matrix as the reference sees it (dequantized values).
struct Matrix {
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    /// `W · x`.
    fn apply(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.cols);
        self.data
            .chunks_exact(self.cols)
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Q8_0: blocks of 32 values, an fp16 scale `amax / 127` and 32 signed bytes. Returns the
/// bytes and the values they decode to.
fn quantize_q8_0(values: &[f32]) -> (Vec<u8>, Vec<f64>) {
    let mut bytes = Vec::with_capacity(values.len() / 32 * 34);
    let mut decoded = Vec::with_capacity(values.len());
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        let d16 = f16::from_f32(d);
        bytes.extend_from_slice(&d16.to_bits().to_le_bytes());
        for &v in block {
            let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            bytes.push(q as u8);
            decoded.push(f64::from(q) * f64::from(d16.to_f32()));
        }
    }
    (bytes, decoded)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct Layer {
    attn_norm: Vec<f64>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    bq: Vec<f64>,
    bk: Vec<f64>,
    bv: Vec<f64>,
    bo: Vec<f64>,
    q_norm: Vec<f64>,
    k_norm: Vec<f64>,
    ffn_norm: Vec<f64>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
    b_gate: Vec<f64>,
    b_up: Vec<f64>,
    b_down: Vec<f64>,
}

/// The reference's copy of the weights. Optional tensors absent from the file are zero
/// (biases) or one (norms, frequency factors); the reference reads the spec, not these
/// placeholders, to decide what it applies, so an ablated spec ignores a tensor that is
/// there.
struct Weights {
    token_embd: Matrix,
    output: Matrix,
    output_bias: Vec<f64>,
    output_norm: Vec<f64>,
    rope_freqs: Vec<f64>,
    layers: Vec<Layer>,
}

/// Collects the GGUF tensors and the reference weights side by side.
struct Writer {
    builder: GgufBuilder,
    rng: Rng,
    wtype: GgmlType,
}

impl Writer {
    fn matrix(&mut self, name: &str, rows: usize, cols: usize, amp: f32) -> Matrix {
        let values = self.rng.vec(rows * cols, 0.0, amp);
        let shape = vec![cols as u64, rows as u64];
        let (bytes, data) = match self.wtype {
            GgmlType::Q8_0 => quantize_q8_0(&values),
            _ => (
                f32_bytes(&values),
                values.iter().map(|&v| f64::from(v)).collect(),
            ),
        };
        let b = std::mem::replace(&mut self.builder, GgufBuilder::new(3));
        self.builder = b.tensor(name, self.wtype, shape, bytes);
        Matrix { cols, data }
    }

    /// An F32 vector when `present`, else `n` copies of `absent`.
    fn vector(
        &mut self,
        present: bool,
        name: &str,
        n: usize,
        center: f32,
        amp: f32,
        absent: f64,
    ) -> Vec<f64> {
        if !present {
            return vec![absent; n];
        }
        let values = self.rng.vec(n, center, amp);
        let b = std::mem::replace(&mut self.builder, GgufBuilder::new(3));
        self.builder = b.tensor(name, GgmlType::F32, vec![n as u64], f32_bytes(&values));
        values.iter().map(|&v| f64::from(v)).collect()
    }

    fn kv(&mut self, key: String, value: MetadataValue) {
        let b = std::mem::replace(&mut self.builder, GgufBuilder::new(3));
        self.builder = b.kv(key, value);
    }
}

/// Writes the synthetic model of `spec` to `path`, passing the finished builder through
/// `edit` first, and returns the reference weights.
fn write_model(
    spec: &Spec,
    path: &Path,
    seed: u64,
    edit: impl FnOnce(GgufBuilder) -> GgufBuilder,
) -> Weights {
    let mut w = Writer {
        builder: GgufBuilder::new(3),
        rng: Rng(seed | 1),
        wtype: spec.wtype,
    };
    let a = spec.arch;
    let u32v = |v: usize| MetadataValue::U32(v as u32);
    w.kv(
        "general.architecture".into(),
        MetadataValue::String(a.into()),
    );
    w.kv(format!("{a}.context_length"), u32v(N_CTX * 4));
    w.kv(format!("{a}.embedding_length"), u32v(spec.n_embd));
    w.kv(format!("{a}.block_count"), u32v(spec.n_layer));
    w.kv(format!("{a}.feed_forward_length"), u32v(spec.n_ff));
    w.kv(format!("{a}.attention.head_count"), u32v(spec.n_head));
    w.kv(format!("{a}.attention.head_count_kv"), u32v(spec.n_head_kv));
    w.kv(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        MetadataValue::F32(RMS_EPS),
    );
    w.kv(format!("{a}.rope.freq_base"), MetadataValue::F32(FREQ_BASE));
    if let Some(kl) = spec.key_length {
        w.kv(format!("{a}.attention.key_length"), u32v(kl));
        w.kv(format!("{a}.attention.value_length"), u32v(kl));
    }
    if let Some(f) = spec.linear_scaling {
        if spec.scaling_type_key {
            w.kv(
                format!("{a}.rope.scaling.type"),
                MetadataValue::String("linear".into()),
            );
        }
        w.kv(format!("{a}.rope.scaling.factor"), MetadataValue::F32(f));
    }

    let (e, hd, ff, nv) = (spec.n_embd, spec.head_dim(), spec.n_ff, spec.n_vocab);
    let q_dim = spec.n_head * hd;
    let kv_dim = spec.n_head_kv * hd;
    let amp = |cols: usize| 2.0 / (cols as f32).sqrt();

    let token_embd = w.matrix("token_embd.weight", nv, e, 1.0);
    let output = if spec.untied_output {
        w.matrix("output.weight", nv, e, 3.0 * amp(e))
    } else {
        Matrix {
            cols: e,
            data: token_embd.data.clone(),
        }
    };
    let output_bias = w.vector(spec.output_bias, "output.bias", nv, 0.0, 3.0, 0.0);
    let output_norm = w.vector(true, "output_norm.weight", e, 1.0, 0.3, 1.0);
    // Llama 3-style divisors: 1 for the fast pairs, growing for the slow ones.
    let rope_freqs = if spec.rope_freqs {
        let f: Vec<f32> = (0..hd / 2).map(|i| 1.0 + 0.75 * i as f32).collect();
        let b = std::mem::replace(&mut w.builder, GgufBuilder::new(3));
        w.builder = b.tensor(
            "rope_freqs.weight",
            GgmlType::F32,
            vec![(hd / 2) as u64],
            f32_bytes(&f),
        );
        f.iter().map(|&v| f64::from(v)).collect()
    } else {
        vec![1.0; hd / 2]
    };

    let layers = (0..spec.n_layer)
        .map(|il| {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            let b = |s: &str| format!("blk.{il}.{s}.bias");
            let (qb, ob) = (spec.qkv_bias, spec.other_biases);
            Layer {
                attn_norm: w.vector(true, &n("attn_norm"), e, 1.0, 0.3, 1.0),
                wq: w.matrix(&n("attn_q"), q_dim, e, amp(e)),
                wk: w.matrix(&n("attn_k"), kv_dim, e, amp(e)),
                wv: w.matrix(&n("attn_v"), kv_dim, e, amp(e)),
                wo: w.matrix(&n("attn_output"), e, q_dim, amp(q_dim)),
                bq: w.vector(qb, &b("attn_q"), q_dim, 0.0, 1.0, 0.0),
                bk: w.vector(qb, &b("attn_k"), kv_dim, 0.0, 1.0, 0.0),
                bv: w.vector(qb, &b("attn_v"), kv_dim, 0.0, 1.0, 0.0),
                bo: w.vector(ob, &b("attn_output"), e, 0.0, 0.5, 0.0),
                q_norm: w.vector(spec.qk_norm, &n("attn_q_norm"), hd, 1.0, 0.5, 1.0),
                k_norm: w.vector(spec.qk_norm, &n("attn_k_norm"), hd, 1.0, 0.5, 1.0),
                ffn_norm: w.vector(true, &n("ffn_norm"), e, 1.0, 0.3, 1.0),
                gate: w.matrix(&n("ffn_gate"), ff, e, amp(e)),
                up: w.matrix(&n("ffn_up"), ff, e, amp(e)),
                down: w.matrix(&n("ffn_down"), e, ff, amp(ff)),
                b_gate: w.vector(ob, &b("ffn_gate"), ff, 0.0, 0.5, 0.0),
                b_up: w.vector(ob, &b("ffn_up"), ff, 0.0, 0.5, 0.0),
                b_down: w.vector(ob, &b("ffn_down"), e, 0.0, 0.5, 0.0),
            }
        })
        .collect();

    let bytes = edit(w.builder).to_bytes().expect("write synthetic gguf");
    std::fs::write(path, bytes).expect("save synthetic gguf");
    Weights {
        token_embd,
        output,
        output_bias,
        output_norm,
        rope_freqs,
        layers,
    }
}

// ---------------------------------------------------------------------------------------
// The reference forward pass, in f64, over the whole sequence at once.

fn rmsnorm(x: &[f64], w: &[f64]) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + f64::from(RMS_EPS)).sqrt();
    x.iter().zip(w).map(|(v, w)| v * s * w).collect()
}

fn add(a: &mut [f64], b: &[f64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Rotates every `hd`-long head of `x` for position `pos`.
fn rope(spec: &Spec, freqs: &[f64], x: &mut [f64], hd: usize, pos: usize) {
    let freq_scale = spec.linear_scaling.map_or(1.0, |f| 1.0 / f64::from(f));
    let half = hd / 2;
    for head in x.chunks_exact_mut(hd) {
        for (i, &ff) in freqs.iter().enumerate().take(half) {
            let inv_freq = f64::from(FREQ_BASE).powf(-2.0 * i as f64 / hd as f64);
            let factor = if spec.rope_freqs { ff } else { 1.0 };
            let theta = pos as f64 * inv_freq / factor * freq_scale;
            let (a, b) = if spec.neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * theta.cos() - x1 * theta.sin();
            head[b] = x0 * theta.sin() + x1 * theta.cos();
        }
    }
}

/// Last-position logits of `tokens`.
fn reference_logits(spec: &Spec, w: &Weights, tokens: &[u32]) -> Vec<f64> {
    let hd = spec.head_dim();
    let group = spec.n_head / spec.n_head_kv;
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| w.token_embd.row(t as usize).to_vec())
        .collect();
    for (il, l) in w.layers.iter().enumerate() {
        let use_rope = spec.no_rope_every.is_none_or(|n| (il + 1) % n != 0);
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let xn = rmsnorm(x, &l.attn_norm);
            let mut q = l.wq.apply(&xn);
            let mut k = l.wk.apply(&xn);
            let mut v = l.wv.apply(&xn);
            if spec.qkv_bias {
                add(&mut q, &l.bq);
                add(&mut k, &l.bk);
                add(&mut v, &l.bv);
            }
            if spec.qk_norm {
                q = q.chunks(hd).flat_map(|h| rmsnorm(h, &l.q_norm)).collect();
                k = k.chunks(hd).flat_map(|h| rmsnorm(h, &l.k_norm)).collect();
            }
            if use_rope {
                rope(spec, &w.rope_freqs, &mut q, hd, pos);
                rope(spec, &w.rope_freqs, &mut k, hd, pos);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for (pos, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0.0; spec.n_head * hd];
            for h in 0..spec.n_head {
                let kvh = h / group;
                let qh = &qs[pos][h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        let kh = &ks[p][kvh * hd..(kvh + 1) * hd];
                        qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for (p, e) in exps.iter().enumerate() {
                    let vh = &vs[p][kvh * hd..(kvh + 1) * hd];
                    for d in 0..hd {
                        att[h * hd + d] += e / sum * vh[d];
                    }
                }
            }
            let mut o = l.wo.apply(&att);
            if spec.other_biases {
                add(&mut o, &l.bo);
            }
            add(x, &o);

            let xn = rmsnorm(x, &l.ffn_norm);
            let mut g = l.gate.apply(&xn);
            let mut u = l.up.apply(&xn);
            if spec.other_biases {
                add(&mut g, &l.b_gate);
                add(&mut u, &l.b_up);
            }
            let act: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let mut d = l.down.apply(&act);
            if spec.other_biases {
                add(&mut d, &l.b_down);
            }
            add(x, &d);
        }
    }
    let last = xs.last().expect("at least one token");
    let mut logits = w.output.apply(&rmsnorm(last, &w.output_norm));
    if spec.output_bias {
        add(&mut logits, &w.output_bias);
    }
    logits
}

// ---------------------------------------------------------------------------------------
// Running and comparing.

/// `max |a − b| / max |b|`.
fn rel_diff(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((f64::from(*x) - y).abs()));
    diff / scale
}

fn open(path: &Path) -> MappedModel {
    smq_converter::open_gguf_direct(path).expect("open synthetic gguf")
}

/// Loads `spec`'s model, evaluates a prompt in batches of 4, then decodes greedily;
/// after the prompt and after every decoded token the logits must match the reference.
/// Every ablation (the reference with one feature changed) must miss by far.
fn check(spec: &Spec, ablations: &[(&str, Spec)]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.gguf", spec.arch));
    let weights = write_model(spec, &path, 0x5eed ^ spec.n_layer as u64, |b| b);
    let mapped = open(&path);
    let model = Model::load(&mapped).expect("load synthetic model");
    let mut session = Session::with_batch(&model, N_CTX, 4).unwrap();
    let tol = spec.tolerance();

    let mut tokens: Vec<u32> = vec![1, 7, 30, 2, 19, 11];
    let mut logits = session.eval(&tokens).unwrap().to_vec();
    let mut worst_ablation = vec![f64::INFINITY; ablations.len()];
    for step in 0..4 {
        let expect = reference_logits(spec, &weights, &tokens);
        let diff = rel_diff(&logits, &expect);
        println!("{} step {step}: relative difference {diff:.2e}", spec.arch);
        assert!(
            diff <= tol,
            "{}: position {} differs by {diff:.3e} (tolerance {tol:.0e})",
            spec.arch,
            tokens.len() - 1
        );
        let ref_argmax =
            expect
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if *v > expect[best] { i } else { best });
        // The same top token, unless the reference itself ties within the tolerance.
        let top = argmax(&logits);
        let gap =
            (expect[ref_argmax] - expect[top]) / expect.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            top == ref_argmax || gap <= tol,
            "{}: top token {top}, reference {ref_argmax} (gap {gap:.2e})",
            spec.arch
        );
        for (worst, (_, ab)) in worst_ablation.iter_mut().zip(ablations) {
            *worst = worst.min(rel_diff(&logits, &reference_logits(ab, &weights, &tokens)));
        }
        let next = argmax(&logits) as u32;
        tokens.push(next);
        logits = session.eval(&[next]).unwrap().to_vec();
    }
    for ((name, _), worst) in ablations.iter().zip(worst_ablation) {
        println!("{}: without {name}: {worst:.2e}", spec.arch);
        assert!(
            worst > SENSITIVITY * tol,
            "{}: the test cannot tell {name} apart (closest {worst:.2e})",
            spec.arch
        );
    }
}

/// `spec` with `f` applied, for ablations.
fn with(spec: &Spec, f: impl FnOnce(&mut Spec)) -> Spec {
    let mut s = spec.clone();
    f(&mut s);
    s
}

// ---------------------------------------------------------------------------------------
// The cases.

/// Llama 3.1-style: GQA, untied head, `rope_freqs` divisors.
fn llama3() -> Spec {
    Spec {
        untied_output: true,
        rope_freqs: true,
        ..Spec::base("llama")
    }
}

#[test]
fn llama_gqa_untied_rope_freqs() {
    let s = llama3();
    check(
        &s,
        &[
            ("adjacent-pair RoPE", with(&s, |s| s.neox = true)),
            ("rope_freqs", with(&s, |s| s.rope_freqs = false)),
        ],
    );
}

#[test]
fn llama_rope_freqs_q8_0() {
    let s = Spec {
        wtype: GgmlType::Q8_0,
        ..llama3()
    };
    check(&s, &[("rope_freqs", with(&s, |s| s.rope_freqs = false))]);
}

#[test]
fn llama_linear_rope_scaling_and_biases() {
    let s = Spec {
        linear_scaling: Some(4.0),
        qkv_bias: true,
        other_biases: true,
        ..Spec::base("llama")
    };
    check(
        &s,
        &[
            ("linear scaling", with(&s, |s| s.linear_scaling = None)),
            ("output/FFN biases", with(&s, |s| s.other_biases = false)),
        ],
    );
}

#[test]
fn scaling_factor_without_type_is_linear() {
    let s = Spec {
        linear_scaling: Some(2.0),
        scaling_type_key: false,
        n_head_kv: 4,
        ..Spec::base("llama")
    };
    check(
        &s,
        &[("linear scaling", with(&s, |s| s.linear_scaling = None))],
    );
}

fn qwen2() -> Spec {
    Spec {
        neox: true,
        qkv_bias: true,
        ..Spec::base("qwen2")
    }
}

#[test]
fn qwen2_biases_neox_tied() {
    let s = qwen2();
    check(
        &s,
        &[
            ("Q/K/V biases", with(&s, |s| s.qkv_bias = false)),
            ("NeoX RoPE", with(&s, |s| s.neox = false)),
        ],
    );
}

#[test]
fn qwen2_untied_output_bias_q8_0() {
    let s = Spec {
        untied_output: true,
        output_bias: true,
        wtype: GgmlType::Q8_0,
        ..qwen2()
    };
    check(
        &s,
        &[
            ("Q/K/V biases", with(&s, |s| s.qkv_bias = false)),
            ("output.bias", with(&s, |s| s.output_bias = false)),
        ],
    );
}

#[test]
fn qwen3_qk_norm_head_dim_from_key_length() {
    let s = Spec {
        neox: true,
        qk_norm: true,
        key_length: Some(32),
        ..Spec::base("qwen3")
    };
    check(
        &s,
        &[
            ("QK-norm", with(&s, |s| s.qk_norm = false)),
            ("NeoX RoPE", with(&s, |s| s.neox = false)),
        ],
    );
}

#[test]
fn smollm3_nope_every_fourth_layer() {
    let s = Spec {
        n_layer: 4,
        untied_output: true,
        no_rope_every: Some(4),
        ..Spec::base("smollm3")
    };
    check(
        &s,
        &[
            ("the NoPE layer", with(&s, |s| s.no_rope_every = None)),
            ("RoPE", with(&s, |s| s.no_rope_every = Some(1))),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// Refusals.

fn load_error(spec: &Spec, edit: impl FnOnce(GgufBuilder) -> GgufBuilder) -> ModelError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_model(spec, &path, 7, edit);
    let mapped = open(&path);
    match Model::load(&mapped) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e,
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let s = Spec::base("mamba");
    let err = load_error(&s, |b| b).to_string();
    assert!(err.contains("'mamba'"), "{err}");
    for name in ["llama", "qwen2", "qwen3", "smollm3", "gemma3"] {
        assert!(err.contains(name), "{err} does not list {name}");
    }
}

#[test]
fn qwen3_requires_qk_norm() {
    let s = Spec::base("qwen3");
    let err = load_error(&s, |b| b);
    assert!(
        matches!(&err, ModelError::MissingTensor(n) if n == "blk.0.attn_q_norm.weight"),
        "{err}"
    );
}

#[test]
fn unread_tensor_is_refused() {
    // Qwen 2 has no RoPE frequency factors: a file with them must not load as if they
    // were not there.
    let s = qwen2();
    let err = load_error(&s, |b| {
        b.tensor(
            "rope_freqs.weight",
            GgmlType::F32,
            vec![8],
            f32_bytes(&[1.0; 8]),
        )
    });
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { name, arch: "qwen2" } if name == "rope_freqs.weight"),
        "{err}"
    );
}

#[test]
fn bad_rope_freqs_are_refused() {
    let s = Spec::base("llama");
    let err = load_error(&s, |b| {
        b.tensor(
            "rope_freqs.weight",
            GgmlType::F32,
            vec![8],
            f32_bytes(&[1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        )
    });
    assert!(
        matches!(&err, ModelError::BadTensor { name, .. } if name == "rope_freqs.weight"),
        "{err}"
    );
}
