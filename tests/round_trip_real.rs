//! Round trip of the real models through the CLI: import, verify, export, and a
//! byte-for-byte comparison of everything the SMQ holds against the source GGUF.
//! Each model's work stays in one test so it is imported only once.

mod common;

use std::path::Path;

use common::{arg, blake3_of, real_model, Sandbox, GEMMA, SMOLLM};
use serde_json::Value;
use smq_converter::gguf::GgufFile;
use smq_format::{map_file, SmqFile};

#[test]
fn smollm2_round_trip() {
    if let Some(model) = real_model(SMOLLM) {
        round_trip(&model, "llama");
    }
}

#[test]
fn gemma3_round_trip() {
    if let Some(model) = real_model(GEMMA) {
        round_trip(&model, "gemma3");
    }
}

fn round_trip(model: &Path, architecture: &str) {
    let sb = Sandbox::new();
    let smq = sb.path("model.smq");
    let back = sb.path("back.gguf");

    let imported = sb
        .ok(["import", arg(model), "-o", arg(&smq), "--json"])
        .json();
    assert_eq!(imported["cache_hit"], false);
    assert_eq!(imported["output"], arg(&smq));

    let verified = sb.ok(["verify", arg(&smq), "--json"]).json();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["corrupt_tensors"], serde_json::json!([]));

    let exported = sb
        .ok(["export", arg(&smq), "-o", arg(&back), "--json"])
        .json();
    assert_eq!(exported["byte_identical"], true, "{exported}");
    let source_hash = blake3_of(model);
    assert_eq!(
        blake3_of(&back),
        source_hash,
        "export of {} is not byte-identical to the source",
        model.display()
    );
    assert_eq!(
        imported["source_blake3"].as_str(),
        Some(blake3::Hash::from(source_hash).to_hex().as_str())
    );

    compare_contents(model, &smq);
    compare_inspect(&sb, model, &smq, architecture);
}

/// Every tensor's bytes and every key/value in the SMQ equal the GGUF's.
fn compare_contents(gguf_path: &Path, smq_path: &Path) {
    let map = map_file(gguf_path).expect("map gguf");
    let gguf = GgufFile::parse(&map).expect("parse gguf");
    let smq = SmqFile::open(smq_path).expect("open smq");
    let entries = &smq.manifest().tensors;

    let gguf_names: Vec<&str> = gguf.tensors.iter().map(|t| t.name.as_str()).collect();
    let smq_names: Vec<&str> = entries.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(smq_names, gguf_names, "tensor directory differs");

    for (entry, info) in entries.iter().zip(&gguf.tensors) {
        assert_eq!(entry.ggml_type, info.ggml_type, "{}: type", entry.name);
        assert_eq!(entry.shape, info.shape, "{}: shape", entry.name);
        assert_eq!(entry.source_offset, info.offset, "{}: offset", entry.name);
        let expected = gguf.tensor_data(&map, info).expect("gguf tensor bytes");
        let actual = smq.tensor_data(entry);
        assert_eq!(actual.len(), expected.len(), "{}: length", entry.name);
        assert!(actual == expected, "{}: tensor bytes differ", entry.name);
    }

    let metadata = smq.metadata().expect("smq metadata");
    assert_eq!(metadata.entries.len(), gguf.metadata.entries.len());
    assert!(metadata == gguf.metadata, "metadata differs");
}

/// `inspect --json` shows the same model whichever file it is given.
fn compare_inspect(sb: &Sandbox, gguf_path: &Path, smq_path: &Path, architecture: &str) {
    let g = sb.ok(["inspect", arg(gguf_path), "--json"]).json();
    let s = sb.ok(["inspect", arg(smq_path), "--json"]).json();

    assert_eq!(g["config"]["architecture"], architecture);
    assert_eq!(s["config"]["architecture"], architecture);
    assert_eq!(s["config"], g["config"]);
    assert_eq!(s["tokenizer"], g["tokenizer"]);
    assert_eq!(s["metadata_keys"], g["metadata_keys"]);
    assert_eq!(s["tensor_bytes"], g["tensor_bytes"]);

    let summary = |v: &Value| -> Vec<(String, String, Value)> {
        v["tensors"]
            .as_array()
            .expect("tensors array")
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().expect("name").to_string(),
                    t["type"].as_str().expect("type").to_string(),
                    t["shape"].clone(),
                )
            })
            .collect()
    };
    let (gt, st) = (summary(&g), summary(&s));
    assert!(!gt.is_empty());
    assert_eq!(st, gt, "inspect tensor lists differ");
}
