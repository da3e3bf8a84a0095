//! `smq bench`: prompt processing (pp) and generation (tg) speed, like llama-bench, plus
//! time to first token, per-token latency percentiles and peak memory; with `--profile`,
//! where the time of a prompt token and of a decoded token goes, op by op.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smq_runtime::generate::Session;
use smq_runtime::model::ModelError;
use smq_runtime::profile::{self, OpTime};
use smq_runtime::quant::cpu::{best_path, cpu_model_name};

use super::{fail, print_json, CliResult};
use crate::cli::BenchArgs;
use crate::model_open;

/// Tokens of the prompt used to measure time to first token.
const TTFT_PROMPT: usize = 32;

pub fn run(args: &BenchArgs, process_start: Instant) -> CliResult {
    if args.repetitions == 0 || args.n_prompt == 0 || args.n_gen == 0 {
        return Err(fail("-p, -n and -r must be at least 1"));
    }
    let threads = model_open::setup_threads(&args.model)?;
    let load_start = Instant::now();
    let mut mapped = model_open::open(&args.model)?;
    let (model, _tokenizer, _) = model_open::load(&mut mapped)?;
    let load_ms = ms(load_start);
    let n_ctx = args.n_prompt.max(args.n_gen + 1).max(TTFT_PROMPT);
    let mut session = Session::new(&model, n_ctx)?;
    let vocab = model.hp.n_vocab as u32;
    let prompt = |n: usize| -> Vec<u32> {
        // Deterministic, spread over the vocabulary (what the tokens are doesn't matter
        // for speed, only that they are valid).
        (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect()
    };

    // Time to first token: from process start to the first sampled token of a short prompt.
    let logits = session.eval(&prompt(TTFT_PROMPT))?;
    let _first = argmax(logits);
    let ttft_ms = ms(process_start);

    // Warm-up, as llama-bench does by default: the first batch of a new length pays
    // for its buffers' first touch, which is not what a repetition should measure.
    if !args.no_warmup {
        session.reset();
        session.eval(&prompt(args.n_prompt))?;
        session.reset();
        session.eval(&prompt(1))?;
    }

    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..args.repetitions {
        session.reset();
        let ids = prompt(args.n_prompt);
        let t = Instant::now();
        session.eval(&ids)?;
        pp.push(args.n_prompt as f64 / t.elapsed().as_secs_f64());

        session.reset();
        let mut next = prompt(1)[0];
        let t = Instant::now();
        for _ in 0..args.n_gen {
            let step = Instant::now();
            next = argmax(session.eval(&[next])?);
            latencies.push(ms(step));
        }
        tg.push(args.n_gen as f64 / t.elapsed().as_secs_f64());
    }
    let profiled = if args.profile {
        Some((
            profile_pp(&mut session, &prompt(args.n_prompt))?,
            profile_tg(&mut session, args.n_gen, prompt(1)[0])?,
        ))
    } else {
        None
    };
    let peak_rss_mb = peak_rss_mb();
    let path = best_path().name();
    let cpu = cpu_model_name();
    let (pp_med, tg_med) = (median(&mut pp), median(&mut tg));
    let (p50, p95, p99) = (
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 95.0),
        percentile(&mut latencies, 99.0),
    );
    if args.json {
        let mut out = json!({
            "model": args.model.model,
            "cpu": cpu,
            "kernel_path": path,
            "threads": threads,
            "n_prompt": args.n_prompt,
            "n_gen": args.n_gen,
            "repetitions": args.repetitions,
            "pp_tok_s": pp_med,
            "tg_tok_s": tg_med,
            "pp_tok_s_all": pp,
            "tg_tok_s_all": tg,
            "load_ms": load_ms,
            "ttft_ms": ttft_ms,
            "tg_p50_ms": p50,
            "tg_p95_ms": p95,
            "tg_p99_ms": p99,
            "peak_rss_mb": peak_rss_mb,
        });
        if let Some((pp, tg)) = &profiled {
            out["profile"] = tg.to_json();
            out["profile_pp"] = pp.to_json();
        }
        print_json(&out);
    } else {
        println!("cpu: {cpu} | kernel path: {path} | {threads} threads");
        println!(
            "pp{}: {pp_med:.1} tok/s | tg{}: {tg_med:.1} tok/s (medians of {})",
            args.n_prompt, args.n_gen, args.repetitions
        );
        println!(
            "load {load_ms:.0} ms | time to first token {ttft_ms:.0} ms | tg latency p50 {p50:.2} / p95 {p95:.2} / p99 {p99:.2} ms | peak RSS {peak_rss_mb:.0} MB"
        );
        if let Some((pp, tg)) = &profiled {
            pp.print();
            tg.print();
        }
    }
    Ok(())
}

/// Where the time of the tokens of one profiled pp or tg pass went.
struct TokenProfile {
    /// "pp512" or "tg64": the pass, as in the speed line.
    pass: String,
    tokens: usize,
    /// Summed wall time of the decode steps (sampling excluded).
    wall: Duration,
    ops: Vec<OpTime>,
}

/// Processes one prompt from an empty context with the profiler on.
fn profile_pp(session: &mut Session, ids: &[u32]) -> Result<TokenProfile, ModelError> {
    session.reset();
    profile::reset();
    profile::enable(true);
    let t = Instant::now();
    let evaluated = session.eval(ids).map(|_| ());
    let wall = t.elapsed();
    profile::enable(false);
    evaluated?;
    Ok(TokenProfile {
        pass: format!("pp{}", ids.len()),
        tokens: ids.len(),
        wall,
        ops: profile::snapshot(),
    })
}

/// Decodes `n` tokens from an empty context with the profiler on.
fn profile_tg(session: &mut Session, n: usize, first: u32) -> Result<TokenProfile, ModelError> {
    session.reset();
    profile::reset();
    profile::enable(true);
    let mut wall = Duration::ZERO;
    let mut decode = || -> Result<(), ModelError> {
        let mut next = first;
        for _ in 0..n {
            let t = Instant::now();
            let logits = session.eval(&[next])?;
            wall += t.elapsed();
            next = argmax(logits);
        }
        Ok(())
    };
    let decoded = decode();
    // Off again before reporting an error, so nothing else is measured.
    profile::enable(false);
    decoded?;
    Ok(TokenProfile {
        pass: format!("tg{n}"),
        tokens: n,
        wall,
        ops: profile::snapshot(),
    })
}

impl TokenProfile {
    fn per_token_ms(&self, nanos: u64) -> f64 {
        nanos as f64 / 1e6 / self.tokens as f64
    }

    fn wall_ms(&self) -> f64 {
        self.wall.as_secs_f64() * 1000.0 / self.tokens as f64
    }

    /// Percent of the token's wall time.
    fn share(&self, ms: f64) -> f64 {
        let wall = self.wall_ms();
        if wall > 0.0 {
            100.0 * ms / wall
        } else {
            0.0
        }
    }

    /// Wall time not inside any timed op (session bookkeeping, dispatch, timer overhead).
    fn other_ms(&self) -> f64 {
        let timed: u64 = self.ops.iter().map(|o| o.nanos).sum();
        (self.wall_ms() - self.per_token_ms(timed)).max(0.0)
    }

    fn calls_per_token(&self, op: &OpTime) -> f64 {
        op.calls as f64 / self.tokens as f64
    }

    fn print(&self) {
        let per = if self.pass.starts_with("pp") {
            "per prompt token"
        } else {
            "per decoded token, sampling excluded"
        };
        println!(
            "profile of {} ({per}): wall {:.3} ms",
            self.pass,
            self.wall_ms()
        );
        println!(
            "  {:<20} {:>10} {:>8} {:>12}",
            "op", "ms/token", "share", "calls/token"
        );
        for op in &self.ops {
            let ms = self.per_token_ms(op.nanos);
            println!(
                "  {:<20} {:>10.4} {:>7.1}% {:>12.1}",
                op.name,
                ms,
                self.share(ms),
                self.calls_per_token(op)
            );
        }
        let other = self.other_ms();
        println!(
            "  {:<20} {:>10.4} {:>7.1}%",
            "other",
            other,
            self.share(other)
        );
        println!("  {:<20} {:>10.4} {:>7.1}%", "total", self.wall_ms(), 100.0);
    }

    fn to_json(&self) -> Value {
        let ops: Vec<Value> = self
            .ops
            .iter()
            .map(|op| {
                let ms = self.per_token_ms(op.nanos);
                json!({
                    "op": op.name,
                    "ms_per_token": ms,
                    "share_pct": self.share(ms),
                    "calls_per_token": self.calls_per_token(op),
                })
            })
            .collect();
        let other = self.other_ms();
        json!({
            "pass": self.pass,
            "tokens": self.tokens,
            "wall_ms_per_token": self.wall_ms(),
            "other_ms_per_token": other,
            "other_share_pct": self.share(other),
            "ops": ops,
        })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Peak resident set size of this process (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0 / 1e6)
}
