//! Write → open → verify round trips and the refusals a reader owes: truncation, flipped
//! bytes in every section, future major versions.

use std::path::Path;

use smq_format::*;

fn source() -> SourceInfo {
    SourceInfo {
        file_name: "test.gguf".into(),
        file_size: 1234,
        blake3: [3; 32],
        gguf_version: 3,
        alignment: 32,
        data_offset: 640,
        zero_padding: true,
    }
}

fn metadata() -> Metadata {
    Metadata {
        entries: vec![
            MetadataEntry {
                key: "general.architecture".into(),
                value: MetadataValue::String("llama".into()),
            },
            MetadataEntry {
                key: "nested".into(),
                value: MetadataValue::Array(MetadataArray {
                    element_type: 9,
                    items: vec![MetadataValue::Array(MetadataArray {
                        element_type: 4,
                        items: vec![MetadataValue::U32(1), MetadataValue::U32(2)],
                    })],
                }),
            },
        ],
    }
}

fn tokenizer() -> TokenizerSpec {
    TokenizerSpec {
        model: "gpt2".into(),
        token_bytes: b"abc".to_vec(),
        token_offsets: vec![0, 1, 2, 3],
        bos_id: Some(0),
        ..Default::default()
    }
}

/// Three tensors with odd sizes so padding between them is exercised.
fn tensor_bytes() -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> {
    let mk = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    vec![
        ("a".into(), GgmlType::F32, vec![5], mk(20, 1)),
        ("b".into(), GgmlType::Q4K, vec![256, 3], mk(3 * 144, 2)),
        ("c".into(), GgmlType::F16, vec![3, 1, 7], mk(42, 3)),
    ]
}

fn write(path: &Path) -> Manifest {
    let owned = tensor_bytes();
    let inputs: Vec<TensorInput> = owned
        .iter()
        .enumerate()
        .map(|(i, (n, t, s, b))| TensorInput {
            name: n.clone(),
            ggml_type: *t,
            shape: s.clone(),
            source_offset: i as u64 * 1000,
            bytes: b,
        })
        .collect();
    let config = ModelConfig {
        architecture: "llama".into(),
        head_count: Some(4),
        head_count_kv: Some(2),
        ..Default::default()
    };
    write_smq(
        path,
        source(),
        config,
        Some(tokenizer()),
        &metadata(),
        &inputs,
        &|_, _| {},
    )
    .unwrap()
}

#[test]
fn round_trip_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    let written = write(&path);
    let f = SmqFile::open(&path).unwrap();
    assert_eq!(f.manifest(), &written);
    assert_eq!(f.metadata().unwrap(), metadata());
    f.verify().unwrap();
    for ((name, _, _, bytes), entry) in tensor_bytes().iter().zip(&f.manifest().tensors) {
        assert_eq!(&entry.name, name);
        assert_eq!(f.tensor_data(entry), &bytes[..]);
        assert_eq!(entry.offset % TENSOR_ALIGNMENT, 0);
        assert_eq!((f.header().data.offset + entry.offset) % 64, 0);
    }
    assert_eq!(f.header().data.offset % DATA_ALIGNMENT, 0);
    // No temp files are left next to the output.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn truncation_anywhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    write(&path);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.smq");
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        assert!(SmqFile::open(&cut).is_err(), "cut at {len} accepted");
    }
}

#[test]
fn flipped_tensor_byte_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    let m = write(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let f = SmqFile::open(&path).unwrap();
    let b = &m.tensors[1];
    let at = (f.header().data.offset + b.offset + 17) as usize;
    drop(f);
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let f = SmqFile::open(&path).expect("tensor bytes are only checked by verify");
    let err = f.verify().unwrap_err().to_string();
    assert!(err.contains("'b'"), "{err}");
    assert_eq!(f.corrupt_tensors(), vec!["b".to_string()]);
}

#[test]
fn flipped_byte_in_header_manifest_or_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    write(&path);
    let bytes = std::fs::read(&path).unwrap();
    let h = Header::decode(&bytes).unwrap();
    let bad = dir.path().join("bad.smq");
    for at in [
        0usize,
        9,
        20,
        100,
        230,
        h.manifest.offset as usize,
        (h.manifest.offset + h.manifest.len - 1) as usize,
    ] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        assert!(SmqFile::open(&bad).is_err(), "flip at {at} accepted");
    }
    let mut b = bytes.clone();
    b[h.metadata.offset as usize + 1] ^= 0x01;
    std::fs::write(&bad, &b).unwrap();
    let f = SmqFile::open(&bad).unwrap();
    assert!(f.metadata().is_err());
    assert!(f.verify().is_err());
}

#[test]
fn future_major_version_is_refused_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    write(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut h = Header::decode(&bytes).unwrap();
    h.major = 2;
    bytes[..HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(&path, &bytes).unwrap();
    let err = SmqFile::open(&path).err().unwrap().to_string();
    assert!(err.contains("2.0"), "{err}");
}

#[test]
fn newer_minor_version_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    write(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut h = Header::decode(&bytes).unwrap();
    h.minor = 9;
    bytes[..HEADER_LEN].copy_from_slice(&h.encode());
    std::fs::write(&path, &bytes).unwrap();
    SmqFile::open(&path).unwrap().verify().unwrap();
}

#[test]
fn lying_section_lengths_do_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    write(&path);
    let bytes = std::fs::read(&path).unwrap();
    let h0 = Header::decode(&bytes).unwrap();
    let variants: [fn(&mut Header); 7] = [
        |h| h.manifest_raw_len = u64::MAX,
        |h| h.manifest_raw_len = 1 << 40,
        |h| h.manifest.len = u64::MAX - 5,
        |h| h.data.len = 1 << 62,
        |h| h.data.offset = 4097,
        |h| h.metadata.offset = h.manifest.offset,
        |h| h.file_len += 1,
    ];
    let bad = dir.path().join("bad.smq");
    for (i, f) in variants.iter().enumerate() {
        let mut h = h0.clone();
        f(&mut h);
        let mut b = bytes.clone();
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        std::fs::write(&bad, &b).unwrap();
        assert!(SmqFile::open(&bad).is_err(), "variant {i} accepted");
    }
}

#[test]
fn writer_refuses_inconsistent_tensors_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    let bytes = vec![0u8; 10];
    let inputs = [TensorInput {
        name: "x".into(),
        ggml_type: GgmlType::F32,
        shape: vec![4],
        source_offset: 0,
        bytes: &bytes,
    }];
    let err = write_smq(
        &path,
        source(),
        ModelConfig::default(),
        None,
        &metadata(),
        &inputs,
        &|_, _| {},
    );
    assert!(err.is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn deeply_nested_metadata_is_refused_without_exhausting_the_stack() {
    // Entry count, key "k", then 200 000 nested single-item arrays, hand-encoded.
    let mut raw = Vec::new();
    raw.extend_from_slice(&1u64.to_le_bytes());
    raw.extend_from_slice(&1u64.to_le_bytes());
    raw.push(b'k');
    for _ in 0..200_000 {
        raw.extend_from_slice(&9u32.to_le_bytes()); // variant: Array
        raw.extend_from_slice(&9u32.to_le_bytes()); // element type: Array
        raw.extend_from_slice(&1u64.to_le_bytes()); // one item
    }
    raw.extend_from_slice(&0u32.to_le_bytes());
    raw.push(7);
    let stored = zstd::bulk::compress(&raw, 1).unwrap();
    let err = smq_format::codec::decode_section::<Metadata>(&stored, raw.len() as u64, "m", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nested"), "{err}");
}

#[test]
fn array_items_must_match_the_declared_type() {
    let bad = Metadata {
        entries: vec![MetadataEntry {
            key: "a".into(),
            value: MetadataValue::Array(MetadataArray {
                element_type: 4,
                items: vec![MetadataValue::U8(1)],
            }),
        }],
    };
    let (stored, raw_len) = smq_format::codec::encode_section(&bad, "m").unwrap();
    assert!(smq_format::codec::decode_section::<Metadata>(&stored, raw_len, "m", false).is_err());
}

#[test]
fn newer_minor_may_append_fields_and_unknown_layouts_decode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    let mut manifest = write(&path);
    // A layout id this reader does not know survives decoding as `Unknown`.
    manifest.tensors[0].layout = TensorLayout::from_id(7);
    let (mut stored, mut raw_len) = smq_format::codec::encode_section(&manifest, "m").unwrap();
    let decoded: Manifest =
        smq_format::codec::decode_section(&stored, raw_len, "m", false).unwrap();
    assert_eq!(decoded.tensors[0].layout, TensorLayout::Unknown(7));
    // Appended bytes: refused at this minor version, ignored from a newer one.
    let mut raw = zstd::bulk::decompress(&stored, raw_len as usize).unwrap();
    raw.extend_from_slice(&[1, 2, 3]);
    raw_len = raw.len() as u64;
    stored = zstd::bulk::compress(&raw, 1).unwrap();
    assert!(smq_format::codec::decode_section::<Manifest>(&stored, raw_len, "m", false).is_err());
    assert!(smq_format::codec::decode_section::<Manifest>(&stored, raw_len, "m", true).is_ok());
}

#[test]
fn duplicate_metadata_keys_are_refused_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = metadata();
    meta.entries.push(meta.entries[0].clone());
    let err = write_smq(
        &dir.path().join("m.smq"),
        source(),
        ModelConfig::default(),
        None,
        &meta,
        &[],
        &|_, _| {},
    );
    assert!(err.is_err());
}

#[test]
fn writer_refuses_malformed_metadata_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let mut nested = MetadataValue::U8(1);
    for _ in 0..20 {
        nested = MetadataValue::Array(MetadataArray {
            element_type: nested.type_id(),
            items: vec![nested],
        });
    }
    let mixed = MetadataValue::Array(MetadataArray {
        element_type: 4,
        items: vec![MetadataValue::U8(1)],
    });
    for value in [nested, mixed] {
        let meta = Metadata {
            entries: vec![MetadataEntry {
                key: "k".into(),
                value,
            }],
        };
        let written = write_smq(
            &dir.path().join("m.smq"),
            source(),
            ModelConfig::default(),
            None,
            &meta,
            &[],
            &|_, _| {},
        );
        assert!(written.is_err());
    }
}
