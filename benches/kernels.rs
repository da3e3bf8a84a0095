//! Kernel benchmark: matrix-vector (decode) and matrix-matrix (prompt) products of every
//! weight type in the real models, at their real shapes, on real tensors. Prints GB/s of
//! weight bytes streamed and GMAC/s, with the CPU model and kernel path.
//!
//!   cargo bench --bench kernels            # every path this CPU supports
//!   SMQ_BENCH_THREADS=1 cargo bench --bench kernels

use std::time::Instant;

use smq_converter::direct::open_gguf_direct;
use smq_converter::test_models;
use smq_runtime::quant::cpu::cpu_model_name;
use smq_runtime::quant::matmul::{matmul_with, WeightMatrix};
use smq_runtime::quant::KernelPath;

/// One tensor of each type the real models use (name, model file).
const CASES: &[(&str, &str)] = &[
    ("blk.0.ffn_gate.weight", test_models::SMOLLM2), // q4_1 576x1536
    ("blk.0.ffn_down.weight", test_models::SMOLLM2), // q4_1 1536x576
    ("token_embd.weight", test_models::SMOLLM2),     // q8_0 576x49152 (tied LM head)
    ("blk.0.ffn_gate.weight", test_models::GEMMA3),  // q5_0 640x2048
    ("blk.0.attn_q.weight", test_models::GEMMA3),    // q4_k or q5_0
    ("blk.0.ffn_down.weight", test_models::GEMMA3),  // q6_k / q4_k 2048x640
    ("token_embd.weight", test_models::GEMMA3),      // q8_0 640x262144 (tied LM head)
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads: usize = std::env::var("SMQ_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    println!("cpu: {} | threads: {threads}", cpu_model_name());
    println!(
        "{:<34} {:<6} {:>13} {:<12} {:>9} {:>8} {:>9} {:>8}",
        "tensor", "type", "shape", "path", "mv GB/s", "mv µs", "mm GMAC/s", "mm ms"
    );
    for &(name, file) in CASES {
        let Some(path) = test_models::find(file) else {
            continue;
        };
        let mapped = open_gguf_direct(&path).expect("open model");
        let Some((entry, bytes)) = mapped.tensor(name) else {
            continue;
        };
        let (cols, rows) = (entry.shape[0] as usize, entry.shape[1] as usize);
        let w = WeightMatrix::new(entry.ggml_type, rows, cols, bytes).expect("weight view");
        let n_prompt = 128;
        let x: Vec<f32> = (0..cols * n_prompt)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0)
            .collect();
        let mut out = vec![0.0f32; rows * n_prompt];
        for p in KernelPath::supported() {
            // Matrix-vector: the LM heads are big enough to stream from memory; small
            // matrices stay in cache, as they do between tokens.
            let reps = (200_000_000 / bytes.len()).clamp(3, 2000);
            let mut mv = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                matmul_with(p, &w, &x[..cols], 1, &mut out[..rows]);
                mv.push(t.elapsed().as_secs_f64());
            }
            let mv = median(mv);
            let mut mm = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                matmul_with(p, &w, &x, n_prompt, &mut out);
                mm.push(t.elapsed().as_secs_f64());
            }
            let mm = median(mm);
            println!(
                "{:<34} {:<6} {:>13} {:<12} {:>9.1} {:>8.1} {:>9.1} {:>8.2}",
                format!("{}:{name}", &file[..6]),
                entry.ggml_type.name(),
                format!("{cols}x{rows}"),
                p.name(),
                bytes.len() as f64 / mv / 1e9,
                mv * 1e6,
                (rows * cols * n_prompt) as f64 / mm / 1e9,
                mm * 1e3
            );
        }
    }
}
