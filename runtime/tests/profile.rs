//! The forward-pass profiler on the real models: every step of a decoded token is
//! counted the expected number of times, the timed steps fit inside the measured wall
//! time, and profiling leaves the logits bit-identical.
//!
//! The profiler is process-wide, so this file holds a single test (nothing else in this
//! binary runs a model at the same time). Without the models the test prints a note and
//! passes, unless SMQ_REQUIRE_MODELS=1.

use std::time::{Duration, Instant};

use smq_converter::test_models::{self, GEMMA3, SMOLLM2};
use smq_runtime::generate::Session;
use smq_runtime::model::Model;
use smq_runtime::profile::{self, Op, OpTime};

const PROMPT: [u32; 5] = [1, 504, 3458, 282, 4649];
const STEPS: usize = 4;

/// The logits after the prompt and after each decoded token (fed greedily), plus the
/// summed wall time of the decode steps.
fn decode(model: &Model) -> (Vec<Vec<u32>>, Duration) {
    let mut session = Session::new(model, 64).expect("session");
    let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut all = vec![bits(session.eval(&PROMPT).expect("prompt"))];
    // Only the decode steps count.
    profile::reset();
    let mut wall = Duration::ZERO;
    for _ in 0..STEPS {
        let next = smq_runtime::ops::argmax(&f32s(all.last().unwrap())) as u32;
        let t = Instant::now();
        let logits = session.eval(&[next]).expect("decode");
        wall += t.elapsed();
        all.push(bits(logits));
    }
    (all, wall)
}

fn f32s(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}

fn per_token_calls(ops: &[OpTime], op: Op) -> f64 {
    let t = ops.iter().find(|t| t.op == op).expect("op in snapshot");
    t.calls as f64 / STEPS as f64
}

fn check(file: &str, norms_per_layer: f64, embedding_calls: f64) {
    let Some(path) = test_models::find(file) else {
        return;
    };
    let mapped = smq_converter::direct::open_gguf_direct(&path).expect("open model");
    let model = Model::load(&mapped).expect("load model");
    let n_layer = model.hp.n_layer as f64;

    profile::enable(false);
    let (plain, _) = decode(&model);
    assert!(
        profile::snapshot()
            .iter()
            .all(|t| t.calls == 0 && t.nanos == 0),
        "{file}: nothing is recorded while the profiler is off"
    );

    profile::enable(true);
    let (profiled, wall) = decode(&model);
    profile::enable(false);
    let ops = profile::snapshot();

    assert_eq!(plain.len(), profiled.len());
    for (step, (a, b)) in plain.iter().zip(&profiled).enumerate() {
        assert!(a == b, "{file}: logits of step {step} differ when profiled");
    }

    for op in [
        Op::QkvMatmul,
        Op::OutputProj,
        Op::GateUpMatmul,
        Op::DownProj,
    ] {
        assert_eq!(per_token_calls(&ops, op), n_layer, "{file}: {op:?}");
    }
    // Neither real model has gate/up biases: the activation runs inside the gate/up
    // step, and no separate GLU step is timed.
    assert_eq!(per_token_calls(&ops, Op::Glu), 0.0, "{file}: Glu");
    for op in [Op::QkNormRope, Op::KvStore, Op::Attention, Op::Residual] {
        let expected = if op == Op::Residual { 2.0 } else { 1.0 } * n_layer;
        assert_eq!(per_token_calls(&ops, op), expected, "{file}: {op:?}");
    }
    assert_eq!(
        per_token_calls(&ops, Op::Norm),
        norms_per_layer * n_layer,
        "{file}"
    );
    assert_eq!(
        per_token_calls(&ops, Op::Embedding),
        embedding_calls,
        "{file}"
    );
    assert_eq!(per_token_calls(&ops, Op::LmHead), 1.0, "{file}");
    for t in &ops {
        if t.op.is_matmul() {
            assert!(t.nanos > 0, "{file}: {} has no time", t.name);
        }
    }

    // The steps run one after another on this thread inside `eval`: together they take
    // at most the wall time of the decode steps (shares sum to ≤ 100%).
    let timed: u64 = ops.iter().map(|t| t.nanos).sum();
    let wall_ns = u64::try_from(wall.as_nanos()).unwrap();
    assert!(timed > 0, "{file}: nothing timed");
    assert!(
        timed <= wall_ns,
        "{file}: timed {timed} ns > wall {wall_ns} ns"
    );
    println!(
        "{file}: {:.1}% of {:.3} ms per token in timed ops",
        100.0 * timed as f64 / wall_ns as f64,
        wall_ns as f64 / 1e6 / STEPS as f64
    );
}

#[test]
fn profiled_decode_counts_every_step_and_keeps_logits_identical() {
    // Llama: two norms per block, the embedding lookup.
    check(SMOLLM2, 2.0, 1.0);
    // Gemma 3: also the post-attention and post-FFN norms; the lookup and its scaling.
    check(GEMMA3, 4.0, 2.0);
}
