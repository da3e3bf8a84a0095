//! Import, export and the direct path on synthetic files, and parsing of the real models.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use smq_format::{map_file, GgmlType, MetadataArray, MetadataValue, SmqFile};

use crate::gguf::{GgufBuilder, GgufFile, TensorTable};
use crate::{export, hash_file, import, open_gguf_direct};

fn strings(items: &[&str]) -> MetadataValue {
    MetadataValue::Array(MetadataArray {
        element_type: 8,
        items: items
            .iter()
            .map(|s| MetadataValue::String(s.to_string()))
            .collect(),
    })
}

fn filler(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A small llama-shaped GGUF with a tokenizer; its last tensor leaves trailing padding.
fn synthetic_model(version: u32, alignment: u64) -> Vec<u8> {
    use MetadataValue as V;
    GgufBuilder::new(version)
        .kv("general.architecture", V::String("llama".into()))
        .kv("general.name", V::String("synthetic".into()))
        .alignment(alignment)
        .kv("llama.block_count", V::U32(1))
        .kv("llama.embedding_length", V::U32(32))
        .kv("llama.attention.head_count", V::U32(4))
        .kv("llama.attention.head_count_kv", V::U32(2))
        .kv("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5))
        .kv("tokenizer.ggml.model", V::String("gpt2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            strings(&["<s>", "</s>", "a", "b", "ab"]),
        )
        .kv("tokenizer.ggml.merges", strings(&["a b"]))
        .kv("tokenizer.ggml.bos_token_id", V::U32(0))
        .kv("tokenizer.ggml.eos_token_id", V::U32(1))
        .tensor(
            "token_embd.weight",
            GgmlType::Q8_0,
            vec![32, 5],
            filler(170, 1),
        )
        .tensor(
            "blk.0.attn_q.weight",
            GgmlType::Q4K,
            vec![256, 2],
            filler(288, 2),
        )
        .tensor(
            "blk.0.ffn.weight",
            GgmlType::F16,
            vec![4, 2, 3],
            filler(48, 3),
        )
        .tensor("output_norm.weight", GgmlType::F32, vec![3], filler(12, 4))
        .to_bytes()
        .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn no_progress(_: u64, _: u64) {}

#[test]
fn import_export_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for (version, alignment) in [(2, 32), (3, 1), (3, 64), (3, 4096)] {
        let bytes = synthetic_model(version, alignment);
        let src = write(dir.path(), "in.gguf", &bytes);
        let smq = dir.path().join("out.smq");
        let back = dir.path().join("back.gguf");

        let (last_done, last_total) = (AtomicU64::new(0), AtomicU64::new(0));
        let progress = |done: u64, total: u64| {
            assert!(done <= total);
            last_done.store(done, Ordering::Relaxed);
            last_total.store(total, Ordering::Relaxed);
        };
        let rep = import(&src, &smq, &progress).unwrap();
        assert_eq!(rep.source_size, bytes.len() as u64);
        assert_eq!(rep.tensor_count, 4);
        assert_eq!(rep.source_blake3, *blake3::hash(&bytes).as_bytes());
        assert_eq!(rep.smq_size, std::fs::metadata(&smq).unwrap().len());
        // Progress ends complete and covers at least every tensor byte.
        let done = last_done.load(Ordering::Relaxed);
        assert_eq!(done, last_total.load(Ordering::Relaxed));
        assert!(done >= 170 + 288 + 48 + 12);

        let file = SmqFile::open(&smq).unwrap();
        file.verify().unwrap();
        let parsed = GgufFile::parse(&bytes).unwrap();
        let m = file.manifest();
        assert_eq!(m.source.file_name, "in.gguf");
        assert_eq!(m.source.gguf_version, version);
        assert_eq!(m.source.alignment, alignment);
        assert_eq!(m.source.data_offset, parsed.data_offset);
        assert!(m.source.zero_padding);
        assert_eq!(m.config.architecture, "llama");
        assert_eq!(m.config.head_count_kv, Some(2));
        let tok = m.tokenizer.as_ref().unwrap();
        assert_eq!(tok.n_tokens(), 5);
        assert_eq!(tok.token(4), Some(&b"ab"[..]));
        assert_eq!(file.metadata().unwrap(), parsed.metadata);
        for (e, t) in m.tensors.iter().zip(&parsed.tensors) {
            assert_eq!(e.source_offset, t.offset);
            assert_eq!(file.tensor_data(e), parsed.tensor_data(&bytes, t).unwrap());
        }

        let rep = export(&smq, &back).unwrap();
        assert!(rep.byte_identical, "v{version} align {alignment}");
        assert!(rep.exact_possible);
        assert_eq!(rep.note(), None);
        assert_eq!(rep.bytes_written, bytes.len() as u64);
        assert!(std::fs::read(&back).unwrap() == bytes);
    }
}

#[test]
fn nonzero_padding_exports_exact_content_but_not_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = synthetic_model(3, 32);
    *bytes.last_mut().unwrap() = 0xaa; // inside the padding after the last tensor
    let src = write(dir.path(), "pad.gguf", &bytes);
    let smq = dir.path().join("pad.smq");
    let back = dir.path().join("back.gguf");
    import(&src, &smq, &no_progress).unwrap();
    assert!(!SmqFile::open(&smq).unwrap().manifest().source.zero_padding);

    let rep = export(&smq, &back).unwrap();
    assert!(!rep.byte_identical);
    assert!(!rep.exact_possible);
    assert!(rep.note().unwrap().contains("padding"));

    let out = std::fs::read(&back).unwrap();
    assert_eq!(out.len(), bytes.len());
    let (a, b) = (
        GgufFile::parse(&bytes).unwrap(),
        GgufFile::parse(&out).unwrap(),
    );
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.tensors, b.tensors);
    assert!(b.zero_padding);
    let mut expect = bytes.clone();
    *expect.last_mut().unwrap() = 0;
    assert!(out == expect);
}

#[test]
fn direct_open_matches_import() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = synthetic_model(3, 64);
    let src = write(dir.path(), "m.gguf", &bytes);
    let smq = dir.path().join("m.smq");
    import(&src, &smq, &no_progress).unwrap();
    let imported = SmqFile::open(&smq).unwrap();
    let direct = open_gguf_direct(&src).unwrap();

    let (a, b) = (imported.manifest(), &direct.manifest);
    assert_eq!(a.config, b.config);
    assert_eq!(a.tokenizer, b.tokenizer);
    let mut source = a.source.clone();
    source.blake3 = [0; 32];
    assert_eq!(source, b.source);
    assert_eq!(
        direct.data_offset,
        GgufFile::parse(&bytes).unwrap().data_offset
    );
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(
            (&x.name, x.ggml_type, &x.shape),
            (&y.name, y.ggml_type, &y.shape)
        );
        assert_eq!((x.size, x.source_offset), (y.size, y.offset));
        assert_eq!(y.blake3, [0; 32]);
        assert_eq!(imported.tensor_data(x), direct.tensor_data(y));
        assert_eq!(direct.tensor_data(y).len() as u64, y.size);
    }
}

#[test]
fn hostile_source_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = synthetic_model(3, 32);
    bytes.truncate(bytes.len() - 40); // cuts into the last tensors
    let src = write(dir.path(), "cut.gguf", &bytes);
    let dst = dir.path().join("cut.smq");
    let err = import(&src, &dst, &no_progress).unwrap_err().to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("past the end"),
        "{err}"
    );
    assert!(!dst.exists());
    assert!(open_gguf_direct(&src).is_err());
    // Nothing but the source is left in the directory (no temp files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Position just past the first occurrence of `needle` in `bytes`.
fn after(bytes: &[u8], needle: &[u8]) -> usize {
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present");
    at + needle.len()
}

#[test]
fn broken_metadata_fails_after_the_copy_started_and_leaves_nothing() {
    // The tensor table is sound, so the copy starts; the full parse (a string value that
    // is not UTF-8) and the description (a token id beyond the vocabulary) fail beside it.
    let dir = tempfile::tempdir().unwrap();
    let good = synthetic_model(3, 32);
    let mut bad_utf8 = good.clone();
    bad_utf8[after(&good, b"synthetic") - 1] = 0xff;
    let mut bad_id = good.clone();
    // The key, then its value type (u32), then the value.
    let id_at = after(&good, b"tokenizer.ggml.bos_token_id") + 4;
    bad_id[id_at..id_at + 4].copy_from_slice(&99u32.to_le_bytes());
    for (name, bytes, expect) in [
        ("utf8.gguf", bad_utf8, "UTF-8"),
        ("id.gguf", bad_id, "tokenizer.ggml.bos_token_id"),
    ] {
        assert!(TensorTable::read(&bytes).is_ok());
        let src = write(dir.path(), name, &bytes);
        let dst = dir.path().join("out.smq");
        let err = import(&src, &dst, &no_progress).unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: {err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(!dst.exists());
        std::fs::remove_file(&src).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{name}");
    }
}

#[test]
fn hash_file_is_blake3_of_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = filler(3 << 20, 9);
    let p = write(dir.path(), "blob", &bytes);
    assert_eq!(hash_file(&p).unwrap(), *blake3::hash(&bytes).as_bytes());
    assert!(hash_file(&dir.path().join("missing")).is_err());
}

/// The real models, if they are cached; `None` (with a note) otherwise.
fn real_model(name: &str) -> Option<PathBuf> {
    crate::test_models::find(name)
}

fn type_counts(f: &GgufFile) -> Vec<(GgmlType, usize)> {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in &f.tensors {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ggml_type) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.ggml_type, 1)),
        }
    }
    counts.sort_by_key(|(ty, _)| ty.id());
    counts
}

// Expected values below were obtained once with the Python `gguf` package:
//   r = gguf.GGUFReader(path); r.fields[...].contents(), len(r.tensors), r.data_offset,
//   collections.Counter(t.tensor_type.name for t in r.tensors),
//   sum(len(t.encode()) for t in r.fields["tokenizer.ggml.tokens"].contents()).
// (GGUFReader's field count includes 3 pseudo-fields for the header, so 36 fields = 33 keys.)

#[test]
fn real_smollm2_matches_gguf_py() {
    let Some(path) = real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let map = map_file(&path).unwrap();
    let f = GgufFile::parse(&map).unwrap();
    // The tensor-table scan (what an import copies from) finds what the full parse finds.
    assert_eq!(TensorTable::read(&map).unwrap(), f.table);
    assert_eq!(f.version, 3);
    assert_eq!(f.file_size, 98_362_432);
    assert_eq!(f.metadata.entries.len(), 33);
    assert_eq!(f.tensor_count(), 272);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.data_offset, 1_785_664);
    assert!(f.zero_padding);
    assert_eq!(
        type_counts(&f),
        [
            (GgmlType::F32, 61),
            (GgmlType::Q4_1, 210),
            (GgmlType::Q8_0, 1)
        ]
    );
    let last = f.tensors.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.offset, last.size),
        ("output_norm.weight", 96_574_464, 2304)
    );

    let d = crate::describe_gguf(&f, "x", [0; 32]).unwrap();
    let c = &d.config;
    assert_eq!(c.architecture, "llama");
    assert_eq!(c.name.as_deref(), Some("Smollm2 135M 8k Lc100K Mix1 Ep2"));
    assert_eq!(c.file_type, Some(3));
    assert_eq!(
        (
            c.block_count,
            c.embedding_length,
            c.context_length,
            c.feed_forward_length
        ),
        (Some(30), Some(576), Some(8192), Some(1536))
    );
    assert_eq!((c.head_count, c.head_count_kv), (Some(9), Some(3)));
    assert_eq!(
        (c.vocab_size, c.rope_dimension_count),
        (Some(49152), Some(64))
    );
    assert_eq!(c.rope_freq_base, Some(100_000.0));
    assert_eq!(c.rms_norm_epsilon, Some(1e-5));

    let t = d.tokenizer.unwrap();
    assert_eq!(
        (t.model.as_str(), t.pre.as_deref()),
        ("gpt2", Some("smollm"))
    );
    assert_eq!(t.n_tokens(), 49152);
    assert_eq!(t.token_bytes.len(), 369_170);
    assert_eq!(t.token_types.len(), 49152);
    assert!(t.scores.is_empty());
    assert_eq!((t.n_merges(), t.merge_bytes.len()), (48900, 417_477));
    assert_eq!(
        (t.bos_id, t.eos_id, t.unknown_id, t.padding_id, t.eot_id),
        (Some(1), Some(2), Some(0), Some(2), None)
    );
    assert_eq!(
        (t.add_bos, t.add_eos, t.add_space_prefix),
        (Some(false), None, Some(false))
    );
    assert_eq!(t.chat_template.map(|s| s.len()), Some(368));
}

#[test]
fn real_gemma3_matches_gguf_py() {
    let Some(path) = real_model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let map = map_file(&path).unwrap();
    let f = GgufFile::parse(&map).unwrap();
    // The tensor-table scan (what an import copies from) finds what the full parse finds.
    assert_eq!(TensorTable::read(&map).unwrap(), f.table);
    assert_eq!(f.version, 3);
    assert_eq!(f.file_size, 253_113_024);
    assert_eq!(f.metadata.entries.len(), 33);
    assert_eq!(f.tensor_count(), 236);
    assert_eq!(f.data_offset, 6_525_120);
    assert!(f.zero_padding);
    assert_eq!(
        type_counts(&f),
        [
            (GgmlType::F32, 109),
            (GgmlType::Q5_0, 81),
            (GgmlType::Q8_0, 10),
            (GgmlType::Q4K, 27),
            (GgmlType::Q6K, 9)
        ]
    );

    let d = crate::describe_gguf(&f, "x", [0; 32]).unwrap();
    let c = &d.config;
    assert_eq!(c.architecture, "gemma3");
    assert_eq!(c.name.as_deref(), Some("Gemma 3 270m"));
    assert_eq!(c.file_type, Some(15));
    assert_eq!(
        (
            c.block_count,
            c.embedding_length,
            c.context_length,
            c.feed_forward_length
        ),
        (Some(18), Some(640), Some(32768), Some(2048))
    );
    assert_eq!((c.head_count, c.head_count_kv), (Some(4), Some(1)));
    assert_eq!((c.key_length, c.value_length), (Some(256), Some(256)));
    assert_eq!((c.sliding_window, c.vocab_size), (Some(512), None));
    assert_eq!(c.rope_freq_base, Some(1_000_000.0));
    assert_eq!(c.rms_norm_epsilon, Some(1e-6));

    let t = d.tokenizer.unwrap();
    assert_eq!(
        (t.model.as_str(), t.pre.as_deref()),
        ("llama", Some("default"))
    );
    assert_eq!(t.n_tokens(), 262_144);
    assert_eq!(t.token_bytes.len(), 2_315_366);
    assert_eq!((t.scores.len(), t.token_types.len()), (262_144, 262_144));
    assert_eq!(t.n_merges(), 0);
    assert_eq!(
        (t.bos_id, t.eos_id, t.unknown_id, t.padding_id),
        (Some(2), Some(1), Some(3), Some(0))
    );
    assert_eq!((t.add_bos, t.add_eos), (Some(true), Some(false)));
}

#[test]
fn real_models_round_trip_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let Some(src) = real_model(name) else {
            continue;
        };
        let smq = dir.path().join("m.smq");
        let back = dir.path().join("m.gguf");
        let rep = import(&src, &smq, &no_progress).unwrap();
        assert_eq!(rep.source_blake3, hash_file(&src).unwrap());
        SmqFile::open(&smq).unwrap().verify().unwrap();
        let rep = export(&smq, &back).unwrap();
        assert!(rep.byte_identical, "{name}: export differs from the source");
        assert_eq!(hash_file(&back).unwrap(), hash_file(&src).unwrap());

        let direct = open_gguf_direct(&src).unwrap();
        let imported = SmqFile::open(&smq).unwrap();
        assert_eq!(direct.manifest.config, imported.manifest().config);
        assert_eq!(direct.manifest.tokenizer, imported.manifest().tokenizer);
    }
}
