//! The commands that run a model, through the real binary on SmolLM2: generation (greedy
//! ids as llama.cpp gives them, seeds, stop strings, end of turn), tokenize, logits,
//! bench, and the one-line errors of bad runs.

mod common;

use common::{arg, read, real_model, small_model, write, Sandbox, SMOLLM};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference/smollm2-135m-instruct-q4_1.json"
    );
    serde_json::from_slice(&read(std::path::Path::new(path))).unwrap()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn generation_matches_llama_cpp_and_honours_its_options() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let reference = reference();
    let greedy = &reference["greedy"][0];
    assert_eq!(greedy["prompt"], "The capital of France is");
    // The reference's first five steps are confident (margins ≥ 0.8).
    let expected = &ids(&greedy["ids"])[..5];

    // Through the cache, then in place: same greedy ids as llama.cpp.
    for direct in [false, true] {
        let mut args = vec!["run", model, "-p", "The capital of France is"];
        args.extend(["-n", "5", "--temp", "0", "--json"]);
        if direct {
            args.push("--direct");
        }
        let out = sb.ok(args).json();
        assert_eq!(ids(&out["ids"]), expected, "direct={direct}");
        assert_eq!(out["finish_reason"], "length");
        assert!(out["text"].as_str().unwrap().starts_with(" Paris."));
    }

    // Same seed, same sampled output.
    let sampled = |seed: &str| {
        let args = ["run", model, "-p", "Once upon a time", "-n", "12"];
        sb.ok(args
            .into_iter()
            .chain(["--temp", "0.9", "--seed", seed, "--json"]))
            .json()["ids"]
            .clone()
    };
    assert_eq!(sampled("7"), sampled("7"));

    // A stop string ends generation and is not printed.
    let out = sb
        .ok([
            "run",
            model,
            "-p",
            "The capital of France is",
            "-n",
            "16",
            "--temp",
            "0",
            "--stop",
            "\n",
            "--json",
        ])
        .json();
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["text"], " Paris.");

    // A chat turn ends at <|im_end|>, as in the reference (7 tokens, the last one EOS).
    let chat = &reference["greedy"][3];
    let prompt = chat["prompt"].as_str().unwrap();
    let out = sb
        .ok([
            "run", model, "-p", prompt, "-n", "32", "--temp", "0", "--json",
        ])
        .json();
    assert_eq!(out["finish_reason"], "eos");
    let want = ids(&chat["ids"]);
    assert_eq!(ids(&out["ids"]), want[..want.len() - 1]);
    assert_eq!(out["text"], chat["text"]);

    // Streaming mode prints the same text.
    let streamed = sb.ok(["run", model, "-p", prompt, "-n", "32", "--temp", "0"]);
    assert_eq!(streamed.stdout.trim_end(), chat["text"].as_str().unwrap());
}

#[test]
fn tokenize_logits_and_bench() {
    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let sb = Sandbox::new();
    let model = arg(&model);
    let reference = reference();

    let strings: Vec<String> = serde_json::from_slice(&read(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference/strings.json"
    ))))
    .unwrap();
    for (i, s) in strings.iter().enumerate().take(6) {
        let out = sb.ok(["tokenize", model, s.as_str(), "--json"]).json();
        assert_eq!(
            ids(&out["ids"]),
            ids(&reference["tokenize"][i]["ids"]),
            "{s:?}"
        );
    }

    let first = &reference["logits"][0];
    let out_file = sb.path("logits.f32");
    sb.ok([
        "logits",
        model,
        "-p",
        first["prompt"].as_str().unwrap(),
        "-o",
        arg(&out_file),
    ]);
    let bytes = read(&out_file);
    assert_eq!(
        bytes.len(),
        4 * reference["n_vocab"].as_u64().unwrap() as usize
    );
    let logits: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let argmax = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    assert_eq!(argmax as u64, first["top"][0][0].as_u64().unwrap());

    let bench = sb
        .ok(["bench", model, "-p", "16", "-n", "4", "-r", "1", "--json"])
        .json();
    for key in [
        "pp_tok_s",
        "tg_tok_s",
        "threads",
        "n_prompt",
        "n_gen",
        "load_ms",
        "ttft_ms",
        "tg_p50_ms",
        "tg_p95_ms",
        "tg_p99_ms",
        "peak_rss_mb",
        "cpu",
        "kernel_path",
    ] {
        assert!(!bench[key].is_null(), "bench --json lacks {key}");
    }
    assert!(bench["pp_tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_runs_fail_with_one_line() {
    let sb = Sandbox::new();
    let missing = sb.path("missing.smq");
    sb.run(["run", arg(&missing), "-p", "hi"])
        .assert_clean_error();

    // A model of an architecture smq does not run is named, with the supported ones.
    let foo = sb.path("foo.gguf");
    let gguf = small_model(3)
        .kv("general.architecture", common::string("foo"))
        .to_bytes()
        .unwrap();
    write(&foo, &gguf);
    let r = sb.run(["run", arg(&foo), "-p", "hi", "--direct"]);
    r.assert_clean_error();
    assert!(r.error_line().contains("'foo'"), "{}", r.error_line());
    assert!(r.error_line().contains("llama"), "{}", r.error_line());

    let Some(model) = real_model(SMOLLM) else {
        return;
    };
    let model = arg(&model);
    let r = sb.run(["run", model, "-p", "hi", "--threads", "0"]);
    r.assert_clean_error();
    assert!(r.error_line().contains("--threads"));

    let long = "word ".repeat(64);
    let r = sb.run(["run", model, "-p", long.as_str(), "--ctx", "16"]);
    r.assert_clean_error();
    assert!(r.error_line().contains("context"), "{}", r.error_line());

    // A converted file that fails verification is refused by --verify, naming the tensor.
    let smq = sb.path("m.smq");
    sb.ok(["import", model, "-o", arg(&smq)]);
    let f = smq_format::SmqFile::open(&smq).unwrap();
    let t = f.manifest().tensors.last().unwrap().clone();
    let at = (f.header().data.offset + t.offset + t.size / 2) as usize;
    drop(f);
    let mut bytes = read(&smq);
    bytes[at] ^= 0x20;
    let bad = sb.path("bad.smq");
    write(&bad, &bytes);
    let r = sb.run(["run", arg(&bad), "-p", "hi", "--verify"]);
    r.assert_clean_error();
    assert!(r.error_line().contains(&t.name), "{}", r.error_line());
}
