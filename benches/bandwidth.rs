//! Read-bandwidth probe: how fast this machine streams memory with 1 and N threads, and
//! what that makes the decode ceiling of each real model (weight bytes read per token ÷
//! bandwidth). Decode speed is judged against this ceiling.
//!
//!   cargo bench --bench bandwidth

use std::time::Instant;

use smq_converter::direct::open_gguf_direct;
use smq_converter::test_models;
use smq_runtime::quant::cpu::cpu_model_name;

/// Large enough to defeat every cache level.
const BUFFER_BYTES: usize = 1 << 30;

/// Sums the buffer as u64 words in parallel chunks (one per thread); best of 5.
fn read_bandwidth(buffer: &[u64], threads: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let chunk = buffer.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = pool.install(|| {
            use rayon::prelude::*;
            buffer
                .par_chunks(chunk)
                .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buffer.len() * 8) as f64 / best / 1e9
}

fn main() {
    let buffer: Vec<u64> = (0..BUFFER_BYTES / 8).map(|i| i as u64).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu: {}", cpu_model_name());
    let one = read_bandwidth(&buffer, 1);
    let all = read_bandwidth(&buffer, threads);
    println!("read bandwidth: {one:.1} GB/s (1 thread), {all:.1} GB/s ({threads} threads)");
    for file in [test_models::SMOLLM2, test_models::GEMMA3] {
        let Some(path) = test_models::find(file) else {
            continue;
        };
        let mapped = open_gguf_direct(&path).expect("open model");
        // Every weight matrix is read once per generated token; the embedding table only
        // for one row, unless it doubles as the (tied) output matrix.
        let tied = mapped.tensor("output.weight").is_none();
        let bytes: u64 = mapped
            .manifest
            .tensors
            .iter()
            .filter(|t| t.name != "token_embd.weight" || tied)
            .map(|t| t.size)
            .sum();
        println!(
            "{file}: {:.1} MB of weights per token -> decode ceiling {:.0} tok/s ({threads} threads)",
            bytes as f64 / 1e6,
            all * 1e9 / bytes as f64
        );
    }
}
