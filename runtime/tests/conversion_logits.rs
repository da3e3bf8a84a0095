//! The round-trip promise: a model run from its GGUF in place (`--direct`) and from the
//! SMQ it converts to gives bit-identical logits, because both hand the runtime the same
//! bytes through the same kernels.

use smq_converter::test_models;
use smq_format::{MappedModel, SmqFile};
use smq_runtime::generate::Session;
use smq_runtime::model::Model;

/// Several prompts of different lengths (ids well inside both vocabularies), including one
/// longer than a prompt batch so batched and single-token paths both run.
fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 2, 3],
        (0..17).map(|i| 100 + i * 37).collect(),
        (0..150).map(|i| (i * 7919 + 11) % 40_000).collect(),
    ]
}

fn logits(mapped: &MappedModel) -> Vec<Vec<f32>> {
    let model = Model::load(mapped).unwrap();
    let mut session = Session::new(&model, 256).unwrap();
    prompts()
        .iter()
        .map(|p| {
            let mut out = session.logits_for(p).unwrap();
            // Also one decode step after the prompt.
            out.extend_from_slice(session.eval(&[42]).unwrap());
            out
        })
        .collect()
}

fn check(file: &str) {
    let Some(gguf) = test_models::find(file) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let smq = dir.path().join("m.smq");
    smq_converter::import::import(&gguf, &smq, &|_, _| {}).unwrap();
    let direct = smq_converter::direct::open_gguf_direct(&gguf).unwrap();
    let converted = SmqFile::open(&smq).unwrap().into_mapped();
    let (a, b) = (logits(&direct), logits(&converted));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len());
        let differing = x
            .iter()
            .zip(y)
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        assert_eq!(differing, 0, "{file} prompt {i}: {differing} logits differ");
    }
}

#[test]
fn smollm2_gguf_and_smq_give_bit_identical_logits() {
    check(test_models::SMOLLM2);
}

#[test]
fn gemma3_gguf_and_smq_give_bit_identical_logits() {
    check(test_models::GEMMA3);
}
