//! Tokenizer fidelity: token ids against llama.cpp's on the real models (skipped with a
//! note when the models are not cached), plus small synthetic vocabularies that pin the
//! algorithms' rules without any model.

use std::path::PathBuf;

use serde_json::Value;
use smq_format::TokenizerSpec;
use smq_runtime::tokenizer::{TextStream, Tokenizer, TokenizerError};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference")
}

/// The model's tokenizer, or `None` (with a note) when the model is not cached.
fn load(model_file: &str) -> Option<Tokenizer> {
    let path = smq_converter::test_models::find(model_file)?;
    let model = smq_converter::direct::open_gguf_direct(&path).expect("open gguf");
    let spec = model
        .manifest
        .tokenizer
        .as_ref()
        .expect("model has a tokenizer");
    Some(Tokenizer::from_spec(spec).expect("tokenizer loads"))
}

fn reference(json_file: &str) -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join(json_file)).expect("reference json");
    serde_json::from_str(&text).expect("reference parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Every reference string and prompt tokenizes to llama.cpp's ids, every string's token
/// pieces concatenate back to it, and the greedy continuations decode to llama.cpp's text.
fn check_model(model_file: &str, json_file: &str) {
    let Some(tok) = load(model_file) else {
        return;
    };
    let reference = reference(json_file);
    assert_eq!(
        tok.n_vocab() as u64,
        reference["n_vocab"].as_u64().unwrap(),
        "n_vocab"
    );

    let mut failures = Vec::new();
    let mut passed = 0;
    for case in reference["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let add_special = case["add_special"].as_bool().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, add_special, parse_special);
        if got == want {
            passed += 1;
        } else {
            failures.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }

        let mut pieces = Vec::new();
        for &id in &got {
            pieces.extend_from_slice(&tok.token_piece(id, true).unwrap());
        }
        if pieces != text.as_bytes() {
            failures.push(format!(
                "{text:?}: pieces give back {:?}",
                String::from_utf8_lossy(&pieces)
            ));
        }
    }
    eprintln!(
        "{model_file}: {passed}/{} reference strings tokenize exactly",
        reference["tokenize"].as_array().unwrap().len()
    );

    for case in reference["logits"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["prompt_ids"]);
        let got = tok.encode(prompt, true, true);
        if got != want {
            failures.push(format!(
                "prompt {prompt:?} (add_special)\n   want {want:?}\n   got  {got:?}"
            ));
        }
    }

    for case in reference["greedy"].as_array().unwrap() {
        let gen = ids(&case["ids"]);
        let want = case["text"].as_str().unwrap();
        let decoded = tok.decode(&gen);
        if decoded != want {
            failures.push(format!(
                "decode {gen:?}\n   want {want:?}\n   got  {decoded:?}"
            ));
        }
        let mut stream = TextStream::default();
        let mut streamed = String::new();
        for &id in &gen {
            streamed.push_str(&stream.push(&tok, id));
        }
        streamed.push_str(&stream.finish());
        if streamed != want {
            failures.push(format!(
                "stream {gen:?}\n   want {want:?}\n   got  {streamed:?}"
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{model_file}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct-q4_1.json",
    );
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_model("gemma-3-270m-q4_k_m.gguf", "gemma-3-270m-q4_k_m.json");
}

#[test]
fn smollm2_special_tokens() {
    let Some(tok) = load("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let im_end = tok.encode("<|im_end|>", false, true);
    assert_eq!(im_end.len(), 1);
    assert!(tok.is_end_of_generation(im_end[0]));
    assert!(tok.is_end_of_generation(tok.eos_id().unwrap()));
    // Without parse_special the control text is ordinary text.
    assert!(tok.encode("<|im_end|>", false, false).len() > 1);
    let im_start = tok.encode("<|im_start|>", false, true);
    assert_eq!(im_start.len(), 1);
    assert!(!tok.is_end_of_generation(im_start[0]));
    // Control tokens print nothing.
    assert_eq!(tok.decode(&im_start), "");
}

#[test]
fn gemma3_special_tokens() {
    let Some(tok) = load("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    assert_eq!(tok.bos_id(), Some(2));
    assert_eq!(tok.encode("hi", true, true)[0], 2);
    let eot = tok.encode("<end_of_turn>", false, true);
    assert_eq!(eot.len(), 1);
    assert!(tok.is_end_of_generation(eot[0]));
    assert!(tok.is_end_of_generation(1));
    assert!(!tok.is_end_of_generation(2));
}

// ---- synthetic vocabularies ----

fn blob(items: &[&str]) -> (Vec<u8>, Vec<u32>) {
    let mut bytes = Vec::new();
    let mut offsets = vec![0u32];
    for s in items {
        bytes.extend_from_slice(s.as_bytes());
        offsets.push(bytes.len() as u32);
    }
    (bytes, offsets)
}

fn bpe_spec(tokens: &[&str], merges: &[&str]) -> TokenizerSpec {
    let (token_bytes, token_offsets) = blob(tokens);
    let (merge_bytes, merge_offsets) = blob(merges);
    TokenizerSpec {
        model: "gpt2".into(),
        pre: Some("gpt-2".into()),
        token_bytes,
        token_offsets,
        token_types: tokens
            .iter()
            .map(|t| if t.starts_with("<|") { 3 } else { 1 })
            .collect(),
        merge_bytes,
        merge_offsets,
        eos_id: Some(0),
        ..TokenizerSpec::default()
    }
}

#[test]
fn bpe_merges_by_rank_and_falls_back_to_bytes() {
    // Ids:            0          1    2    3    4     5     6      7
    let tokens = ["<|end|>", "a", "b", "c", "Ġ", "ab", "bc", "Ġab"];
    // "b c" ranks before "a b": "abc" becomes a + bc, not ab + c.
    let spec = bpe_spec(&tokens, &["b c", "a b", "Ġ ab"]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.encode("abc", false, false), [1, 6]);
    assert_eq!(tok.encode("ab ab", false, false), [5, 7]);
    assert_eq!(tok.encode("ab<|end|>c", false, true), [5, 0, 3]);
    assert_eq!(tok.decode(&[5, 7]), "ab ab");
    assert!(tok.is_end_of_generation(0));
    // gpt2 vocabularies add no BOS unless the metadata asks.
    assert_eq!(tok.encode("a", true, true), [1]);
}

#[test]
fn bpe_equal_ranks_merge_leftmost_first() {
    let tokens = ["a", "aa", "aaa"];
    let spec = bpe_spec(&tokens, &["a a", "aa a"]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    // "aaaa": pairs (0,1), (1,2), (2,3) all rank 0; leftmost wins twice -> aa aa.
    assert_eq!(tok.encode("aaaa", false, false), [1, 1]);
    assert_eq!(tok.encode("aaa", false, false), [2]);
}

fn spm_spec(tokens: &[(&str, f32, i32)]) -> TokenizerSpec {
    let texts: Vec<&str> = tokens.iter().map(|t| t.0).collect();
    let (token_bytes, token_offsets) = blob(&texts);
    TokenizerSpec {
        model: "llama".into(),
        token_bytes,
        token_offsets,
        scores: tokens.iter().map(|t| t.1).collect(),
        token_types: tokens.iter().map(|t| t.2).collect(),
        ..TokenizerSpec::default()
    }
}

#[test]
fn spm_merges_by_score_with_space_prefix_and_byte_fallback() {
    let mut tokens = vec![("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)];
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.extend(bytes.iter().map(|b| (b.as_str(), 0.0, 6)));
    let base = tokens.len() as u32;
    tokens.extend([
        ("▁", -1.0, 1),
        ("h", -1.0, 1),
        ("i", -1.0, 1),
        ("▁h", -3.0, 1),
        ("hi", -2.0, 1),
        ("▁hi", -1.5, 1),
    ]);
    let spec = spm_spec(&tokens);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    let (sp, h, i, hi, sp_hi) = (base, base + 1, base + 2, base + 4, base + 5);
    // Defaults for llama vocabularies: BOS 1 added, space prefix on.
    // "▁hi": "hi" (-2) beats "▁h" (-3), then "▁" + "hi" -> "▁hi".
    assert_eq!(tok.encode("hi", true, false), [1, sp_hi]);
    assert_eq!(tok.encode("ih", false, false), [sp, i, h]);
    // "é" has no token: its two UTF-8 bytes fall back to byte tokens.
    assert_eq!(tok.encode("é", false, false), [sp, 3 + 0xC3, 3 + 0xA9]);
    // llama.cpp strips the space prefix from the first token only; a leading BOS (which
    // prints nothing) uses that up.
    assert_eq!(tok.decode(&[sp_hi, hi]), "hihi");
    assert_eq!(tok.decode(&[1, sp_hi, hi]), " hihi");
    assert_eq!(tok.decode(&[sp, 3 + 0xC3, 3 + 0xA9]), "é");
    // The space prefix is repeated after a special token.
    assert_eq!(tok.encode("hi</s>hi", false, true), [sp_hi, 2, sp_hi]);
    assert!(tok.is_end_of_generation(2));
}

#[test]
fn text_stream_holds_back_partial_characters() {
    let mut tokens = vec![("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)];
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.extend(bytes.iter().map(|b| (b.as_str(), 0.0, 6)));
    let tok = Tokenizer::from_spec(&spm_spec(&tokens)).unwrap();
    let mut s = TextStream::default();
    // "€" is E2 82 AC.
    assert_eq!(s.push(&tok, 3 + 0xE2), "");
    assert_eq!(s.push(&tok, 3 + 0x82), "");
    assert_eq!(s.push(&tok, 3 + 0xAC), "€");
    assert_eq!(s.push(&tok, 3 + b'a' as u32), "a");
    assert_eq!(s.push(&tok, 2), "", "control tokens print nothing");
    // A byte that can never start a character is replaced at once.
    assert_eq!(s.push(&tok, 3 + 0xFF), "\u{FFFD}");
    assert_eq!(s.push(&tok, 3 + 0xE2), "");
    assert_eq!(s.finish(), "\u{FFFD}");
}

#[test]
fn bad_specs_are_errors() {
    let mut spec = bpe_spec(&["a"], &[]);
    spec.model = "t5".into();
    assert_eq!(
        Tokenizer::from_spec(&spec).err(),
        Some(TokenizerError::UnsupportedModel("t5".into()))
    );
    let mut spec = bpe_spec(&["a"], &[]);
    spec.pre = Some("nonesuch".into());
    let err = Tokenizer::from_spec(&spec).err().unwrap();
    assert!(err.to_string().contains("nonesuch"), "{err}");
    // Duplicate token text.
    assert!(Tokenizer::from_spec(&bpe_spec(&["a", "a"], &[])).is_err());
    // Offsets past the blob.
    let mut spec = bpe_spec(&["a", "b"], &[]);
    spec.token_offsets[2] = 1000;
    assert!(Tokenizer::from_spec(&spec).is_err());
    // Fewer scores than tokens.
    let mut spec = bpe_spec(&["a", "b"], &[]);
    spec.scores = vec![0.0];
    assert!(Tokenizer::from_spec(&spec).is_err());
    // Empty vocabulary.
    assert!(Tokenizer::from_spec(&bpe_spec(&[], &[])).is_err());
    // BOS required but absent.
    let mut spec = bpe_spec(&["a"], &[]);
    spec.add_bos = Some(true);
    spec.bos_id = Some(7);
    assert!(Tokenizer::from_spec(&spec).is_err());
}
