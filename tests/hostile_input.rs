//! Hostile and broken input through the CLI. Every refusal must exit 1 with exactly one
//! stderr line starting with `error: `, never panic, and leave no output or temp file.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use smq_converter::gguf::{write_header, GgufFile, TensorInfo};
use smq_format::{GgmlType, Metadata, MetadataEntry, MetadataValue, SmqFile};

/// Runs `smq ARGS` with its output directory `out` (empty beforehand) and checks the
/// refusal contract, including that `out` is still empty. Returns the error line.
fn refused(sb: &Sandbox, args: &[&str], out: &Path) -> String {
    assert!(dir_names(out).is_empty(), "{} not empty", out.display());
    let r = sb.run(args);
    r.assert_clean_error();
    assert_eq!(
        dir_names(out),
        Vec::<String>::new(),
        "{:?} left files behind",
        args
    );
    r.error_line().to_string()
}

/// Import into a file and into the cache, and inspect: all must refuse `gguf` cleanly.
/// The cache must end up without an entry, a partial build or a temp file.
fn gguf_refused(sb: &Sandbox, label: &str, gguf: &[u8]) -> String {
    let dir = sb.subdir(&format!("case-{label}"));
    let input = dir.join("in.gguf");
    write(&input, gguf);
    let out = sb.subdir(&format!("out-{label}"));
    let target = out.join("x.smq");
    let msg = refused(sb, &["import", arg(&input), "-o", arg(&target)], &out);
    refused(sb, &["inspect", arg(&input)], &out);
    refused(sb, &["inspect", "--json", arg(&input)], &out);
    msg
}

fn assert_cache_has_no_entries(sb: &Sandbox) {
    let left: Vec<String> = tree(&sb.cache_dir())
        .into_iter()
        .filter(|f| f.ends_with(".smq") || f.contains("partial") || f.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "cache holds {left:?} after failed imports");
}

/// Bytes of a header-only GGUF written exactly as given, padded to 32, then `data`.
fn raw_gguf(metadata: &Metadata, tensors: &[TensorInfo], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let end = write_header(&mut out, 3, metadata, tensors).expect("write header");
    out.resize(end.next_multiple_of(32) as usize, 0);
    out.extend_from_slice(data);
    out
}

fn info(name: &str, ty: GgmlType, shape: Vec<u64>, offset: u64) -> TensorInfo {
    let size = ty.tensor_bytes(&shape).unwrap_or(0);
    TensorInfo {
        name: name.into(),
        ggml_type: ty,
        shape,
        offset,
        size,
    }
}

fn kv(key: &str, value: MetadataValue) -> Metadata {
    Metadata {
        entries: vec![MetadataEntry {
            key: key.into(),
            value,
        }],
    }
}

/// A little-endian byte builder for hand-made headers.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn gguf(version: u32, tensors: u64, kvs: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(tensors).u64(kvs)
    }
    fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

#[test]
fn truncated_gguf_at_many_points() {
    let sb = Sandbox::new();
    let builder = small_model(11);
    let full = builder.to_bytes().unwrap();
    let gguf = GgufFile::parse(&full).unwrap();
    let kv_end = write_header(&mut std::io::sink(), 3, &builder.metadata(), &[]).unwrap();
    let data_end = gguf.data_offset
        + gguf
            .tensors
            .iter()
            .map(|t| t.offset + t.size)
            .max()
            .unwrap();
    // A cut at or after the last tensor byte only drops trailing padding, which is legal.
    let regions = [
        ("header", 0, 24, 8),
        ("kv", 24, kv_end, 12),
        ("infos", kv_end, gguf.tensor_info_end, 10),
        ("pad", gguf.tensor_info_end, gguf.data_offset, 2),
        ("data", gguf.data_offset, data_end, 10),
    ];
    let mut cuts = Vec::new();
    for (region, start, end, n) in regions {
        assert!(end > start, "{region} is empty");
        for k in 0..n {
            cuts.push((region, start + (end - start) * k / n));
        }
    }
    cuts.push(("data", data_end - 1));
    assert!(cuts.len() >= 40);
    for (region, cut) in cuts {
        let label = format!("cut-{cut}");
        let msg = gguf_refused(&sb, &label, &full[..cut as usize]);
        assert!(
            msg.contains("in.gguf"),
            "cut in {region} at {cut}: message does not name the file: {msg}"
        );
    }
}

#[test]
fn bad_magic_and_versions() {
    let sb = Sandbox::new();
    let good = small_model(3).to_bytes().unwrap();
    let patched = |at: usize, b: &[u8]| {
        let mut v = good.clone();
        v[at..at + b.len()].copy_from_slice(b);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", patched(0, b"GGUG"), "magic"),
        ("magic-lower", patched(0, b"gguf"), "magic"),
        ("v0", patched(4, &0u32.to_le_bytes()), "version"),
        ("v1", patched(4, &1u32.to_le_bytes()), "version"),
        ("v4", patched(4, &4u32.to_le_bytes()), "version"),
        ("vmax", patched(4, &u32::MAX.to_le_bytes()), "version"),
        ("big-endian", patched(4, &3u32.to_be_bytes()), "big-endian"),
        ("empty", Vec::new(), ""),
        ("text", b"hello, this is not a model\n".to_vec(), ""),
    ];
    for (label, bytes, needle) in cases {
        let msg = gguf_refused(&sb, label, &bytes);
        assert!(msg.contains(needle), "{label}: {msg}");
    }
    // The cache path refuses the same way and keeps nothing.
    let input = sb.path("case-v4/in.gguf");
    sb.run(["import", arg(&input)]).assert_clean_error();
    assert_cache_has_no_entries(&sb);
}

#[test]
fn absurd_counts_and_lengths_fail_fast() {
    let sb = Sandbox::new();
    let kv_header = |ty: u32| Raw::gguf(3, 0, 1).str("k").u32(ty);
    // 100k nested arrays: the reader must stop at its depth limit, not overflow the stack.
    let mut deep = kv_header(T_ARRAY);
    for _ in 0..100_000 {
        deep = deep.u32(T_ARRAY).u64(1);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("tensors-2^60", Raw::gguf(3, 1 << 60, 0).zeros(64).0),
        ("kvs-2^60", Raw::gguf(3, 0, 1 << 60).zeros(64).0),
        ("both-max", Raw::gguf(3, u64::MAX, u64::MAX).zeros(64).0),
        ("key-2^40", Raw::gguf(3, 0, 1).u64(1 << 40).zeros(64).0),
        ("string-2^40", kv_header(T_STRING).u64(1 << 40).zeros(64).0),
        (
            "array-2^60",
            kv_header(T_ARRAY).u32(T_U8).u64(1 << 60).zeros(64).0,
        ),
        (
            "string-array-2^40",
            kv_header(T_ARRAY).u32(T_STRING).u64(1 << 40).zeros(4096).0,
        ),
        (
            "tensor-name-2^40",
            Raw::gguf(3, 1, 0).u64(1 << 40).zeros(64).0,
        ),
        // Every small value counts against the reader's budget even when it fits the file.
        (
            "array-16M-u8",
            kv_header(T_ARRAY).u32(T_U8).u64(1 << 24).zeros(1 << 24).0,
        ),
        ("nested-100k", deep.zeros(64).0),
        // Shapes whose element count or byte size overflows.
        (
            "shape-2^96",
            Raw::gguf(3, 1, 0)
                .str("t")
                .u32(4)
                .u64(1 << 32)
                .u64(1 << 32)
                .u64(1 << 32)
                .u64(1)
                .u32(0)
                .u64(0)
                .zeros(64)
                .0,
        ),
        (
            "tensor-2^65-bytes",
            Raw::gguf(3, 1, 0)
                .str("t")
                .u32(2)
                .u64(1 << 40)
                .u64(1 << 22)
                .u32(GgmlType::F64.id())
                .u64(0)
                .zeros(64)
                .0,
        ),
    ];

    for (label, bytes) in &cases {
        let start = Instant::now();
        gguf_refused(&sb, label, bytes);
        let took = start.elapsed();
        // Three commands ran; a bounded parser finishes them in milliseconds.
        assert!(
            took < Duration::from_secs(5),
            "{label}: took {took:?} (allocating from an untrusted count?)"
        );
    }
}

#[test]
fn inconsistent_tensor_tables() {
    let sb = Sandbox::new();
    let none = Metadata { entries: vec![] };
    let f32x8 = |name, offset| info(name, GgmlType::F32, vec![8], offset);

    // Tensor data past the end of the file, or at an offset that overflows.
    let oob = raw_gguf(&none, &[f32x8("a", 0), f32x8("b", 32)], &bytes(40, 1));
    let msg = gguf_refused(&sb, "out-of-bounds", &oob);
    assert!(msg.contains("`b`"), "{msg}");
    let far = raw_gguf(&none, &[f32x8("a", 1 << 40)], &bytes(64, 1));
    gguf_refused(&sb, "far-offset", &far);
    let wrap = raw_gguf(&none, &[f32x8("a", u64::MAX - 31)], &bytes(64, 1));
    gguf_refused(&sb, "wrapping-offset", &wrap);

    // Overlapping tensors: the same bytes claimed twice, and a partial overlap.
    let same = raw_gguf(&none, &[f32x8("a", 0), f32x8("b", 0)], &bytes(64, 2));
    let msg = gguf_refused(&sb, "same-offset", &same);
    assert!(msg.contains("overlap"), "{msg}");
    let partial = raw_gguf(
        &none,
        &[info("a", GgmlType::F32, vec![16], 0), f32x8("b", 32)],
        &bytes(128, 3),
    );
    let msg = gguf_refused(&sb, "partial-overlap", &partial);
    assert!(msg.contains("overlap"), "{msg}");

    // A row length that is not a whole number of blocks.
    let bad_row = raw_gguf(
        &none,
        &[info("q", GgmlType::Q4_0, vec![33, 2], 0)],
        &bytes(64, 4),
    );
    let msg = gguf_refused(&sb, "row-not-blocks", &bad_row);
    assert!(msg.contains("block"), "{msg}");

    // A tensor offset that breaks the alignment.
    let misaligned = raw_gguf(&none, &[f32x8("a", 4)], &bytes(64, 5));
    gguf_refused(&sb, "misaligned", &misaligned);

    // Unknown tensor type ids: patch the type field (4 bytes before the offset) of the
    // last tensor info of a valid file.
    let good = small_model(5).to_bytes().unwrap();
    let info_end = GgufFile::parse(&good).unwrap().tensor_info_end as usize;
    for id in [4u32, 5, 31, 36, 40, 1000, u32::MAX] {
        let mut v = good.clone();
        v[info_end - 12..info_end - 8].copy_from_slice(&id.to_le_bytes());
        let msg = gguf_refused(&sb, &format!("type-{id}"), &v);
        assert!(msg.contains(&id.to_string()), "{msg}");
    }

    // Dimension counts outside 1..=4.
    for dims in [0u32, 5, u32::MAX] {
        let r = Raw::gguf(3, 1, 0).str("t").u32(dims).zeros(256);
        gguf_refused(&sb, &format!("dims-{dims}"), &r.0);
    }

    // Duplicate tensor names.
    let dup = raw_gguf(&none, &[f32x8("a", 0), f32x8("a", 32)], &bytes(64, 6));
    gguf_refused(&sb, "duplicate-tensor", &dup);

    sb.run(["import", arg(&sb.path("case-same-offset/in.gguf"))])
        .assert_clean_error();
    sb.run(["import", arg(&sb.path("case-type-1000/in.gguf"))])
        .assert_clean_error();
    assert_cache_has_no_entries(&sb);
}

#[test]
fn malformed_metadata() {
    let sb = Sandbox::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "alignment-3",
            raw_gguf(&kv("general.alignment", MetadataValue::U32(3)), &[], &[]),
        ),
        (
            "alignment-0",
            raw_gguf(&kv("general.alignment", MetadataValue::U32(0)), &[], &[]),
        ),
        (
            "alignment-u64",
            raw_gguf(&kv("general.alignment", MetadataValue::U64(32)), &[], &[]),
        ),
        (
            "duplicate-key",
            Raw::gguf(3, 0, 2)
                .str("k")
                .u32(4)
                .u32(1)
                .str("k")
                .u32(4)
                .u32(2)
                .zeros(32)
                .0
                .clone(),
        ),
        (
            "bool-2",
            Raw::gguf(3, 0, 1)
                .str("k")
                .u32(7)
                .bytes(&[2])
                .zeros(32)
                .0
                .clone(),
        ),
        (
            "value-type-13",
            Raw::gguf(3, 0, 1).str("k").u32(13).zeros(32).0,
        ),
        (
            "array-element-type-99",
            Raw::gguf(3, 0, 1)
                .str("k")
                .u32(T_ARRAY)
                .u32(99)
                .u64(1)
                .zeros(32)
                .0
                .clone(),
        ),
        (
            "key-invalid-utf8",
            Raw::gguf(3, 0, 1)
                .u64(2)
                .bytes(&[0xc3, 0x28])
                .u32(4)
                .u32(1)
                .zeros(32)
                .0
                .clone(),
        ),
        (
            "architecture-not-string",
            raw_gguf(&kv("general.architecture", MetadataValue::U32(7)), &[], &[]),
        ),
    ];
    for (label, bytes) in &cases {
        gguf_refused(&sb, label, bytes);
    }
}

/// A valid SMQ file (imported through the CLI) and its parsed header and directory.
struct SmqCase {
    bytes: Vec<u8>,
    tensor_ranges: Vec<(String, usize, usize)>,
    manifest: (usize, usize),
    metadata: (usize, usize),
}

fn make_smq(sb: &Sandbox) -> SmqCase {
    let src = sb.path("base.gguf");
    let smq = sb.path("base.smq");
    write(&src, &small_model(21).to_bytes().unwrap());
    sb.ok(["import", arg(&src), "-o", arg(&smq)]);
    sb.ok(["verify", arg(&smq)]);
    let f = SmqFile::open(&smq).unwrap();
    let h = f.header();
    let tensor_ranges = f
        .manifest()
        .tensors
        .iter()
        .map(|t| {
            let start = (h.data.offset + t.offset) as usize;
            (t.name.clone(), start, start + t.size as usize)
        })
        .collect();
    let range = |s: smq_format::Section| (s.offset as usize, (s.offset + s.len) as usize);
    SmqCase {
        bytes: read(&smq),
        tensor_ranges,
        manifest: range(h.manifest),
        metadata: range(h.metadata),
    }
}

/// Writes a damaged SMQ and checks verify, inspect and export all refuse it.
fn smq_refused(sb: &Sandbox, label: &str, bytes: &[u8]) -> Vec<String> {
    let input = sb.subdir(&format!("smq-{label}")).join("bad.smq");
    write(&input, bytes);
    let out = sb.subdir(&format!("out-{label}"));
    let gguf = out.join("x.gguf");
    vec![
        refused(sb, &["verify", arg(&input)], &out),
        refused(sb, &["verify", "--json", arg(&input)], &out),
        refused(sb, &["inspect", arg(&input)], &out),
        refused(sb, &["export", arg(&input), "-o", arg(&gguf)], &out),
    ]
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0x10;
    v
}

#[test]
fn corrupt_smq_tensor_is_named() {
    let sb = Sandbox::new();
    let case = make_smq(&sb);
    let names: Vec<&str> = case.tensor_ranges.iter().map(|t| t.0.as_str()).collect();
    for (name, start, end) in &case.tensor_ranges {
        let input = sb.path(&format!("tensor-{name}.smq"));
        write(&input, &flipped(&case.bytes, (start + end) / 2));
        let r = sb.run(["verify", arg(&input)]);
        r.assert_clean_error();
        let msg = r.error_line();
        assert!(msg.contains(name.as_str()), "{name}: {msg}");
        for other in names.iter().filter(|n| **n != name) {
            assert!(!msg.contains(other), "{name}: also blames {other}: {msg}");
        }
        let j = sb.run(["verify", "--json", arg(&input)]);
        assert_eq!(j.code, Some(1));
        assert_eq!(j.json()["corrupt_tensors"], serde_json::json!([name]));
        // Export never hands out a GGUF built from corrupt bytes.
        let out = sb.subdir(&format!("export-{name}"));
        let msg = refused(
            &sb,
            &["export", arg(&input), "-o", arg(&out.join("x.gguf"))],
            &out,
        );
        assert!(msg.contains(name.as_str()), "{name}: {msg}");
    }
}

#[test]
fn corrupt_smq_header_manifest_metadata() {
    let sb = Sandbox::new();
    let case = make_smq(&sb);
    // Magic, version, flags, lengths, section table, hashes, reserved bytes, header hash.
    for at in [
        0, 3, 8, 11, 12, 16, 30, 44, 60, 70, 90, 130, 160, 223, 224, 255,
    ] {
        smq_refused(&sb, &format!("header-{at}"), &flipped(&case.bytes, at));
    }
    let (ms, me) = case.manifest;
    for at in [ms, (ms + me) / 2, me - 1] {
        smq_refused(&sb, &format!("manifest-{at}"), &flipped(&case.bytes, at));
    }
    let (ds, de) = case.metadata;
    for at in [ds, (ds + de) / 2, de - 1] {
        let msgs = smq_refused(&sb, &format!("metadata-{at}"), &flipped(&case.bytes, at));
        assert!(msgs[0].contains("metadata"), "{}", msgs[0]);
    }
    // Truncated and extended files.
    let len = case.bytes.len();
    for cut in [0, 7, 8, 100, 255, 256, 4096, ms, me, len - 1] {
        smq_refused(&sb, &format!("cut-{cut}"), &case.bytes[..cut]);
    }
    let mut longer = case.bytes.clone();
    longer.push(0);
    smq_refused(&sb, "appended", &longer);
    // A GGUF handed to the SMQ-only commands.
    let gguf = small_model(1).to_bytes().unwrap();
    let input = sb.path("model.gguf");
    write(&input, &gguf);
    let out = sb.subdir("out-gguf-as-smq");
    refused(&sb, &["verify", arg(&input)], &out);
    refused(
        &sb,
        &["export", arg(&input), "-o", arg(&out.join("x.gguf"))],
        &out,
    );
}

#[test]
fn future_major_version_is_named() {
    let sb = Sandbox::new();
    let case = make_smq(&sb);
    let mut v = case.bytes.clone();
    v[8..10].copy_from_slice(&2u16.to_le_bytes());
    let hash = blake3::hash(&v[..224]);
    v[224..256].copy_from_slice(hash.as_bytes());
    for msg in smq_refused(&sb, "major-2", &v) {
        assert!(msg.contains("version"), "{msg}");
        assert!(msg.contains('2'), "{msg}");
    }
}

#[test]
fn missing_input_and_existing_output() {
    let sb = Sandbox::new();
    let out = sb.subdir("out");
    let missing = sb.path("does-not-exist.gguf");
    let target = out.join("x.smq");
    for args in [
        vec!["import", arg(&missing), "-o", arg(&target)],
        vec!["import", arg(&missing)],
        vec!["export", arg(&missing), "-o", arg(&target)],
        vec!["verify", arg(&missing)],
        vec!["inspect", arg(&missing)],
        vec!["inspect", arg(&out)],
    ] {
        let msg = refused(&sb, &args, &out);
        assert!(
            msg.contains("does-not-exist") || args[1] == arg(&out),
            "{msg}"
        );
    }

    // Output exists: refused without --force, and the existing file is untouched.
    let src = sb.path("m.gguf");
    let gguf = small_model(2).to_bytes().unwrap();
    write(&src, &gguf);
    let smq = sb.path("m.smq");
    let back = sb.path("m.back.gguf");
    write(&smq, b"precious");
    write(&back, b"precious too");
    let r = sb.run(["import", arg(&src), "-o", arg(&smq)]);
    r.assert_clean_error();
    assert!(r.error_line().contains("--force"), "{}", r.error_line());
    assert_eq!(read(&smq), b"precious");
    sb.ok(["import", arg(&src), "-o", arg(&smq), "--force"]);
    sb.ok(["verify", arg(&smq)]);
    let r = sb.run(["export", arg(&smq), "-o", arg(&back)]);
    r.assert_clean_error();
    assert_eq!(read(&back), b"precious too");
    sb.ok(["export", arg(&smq), "-o", arg(&back), "--force"]);
    assert_eq!(read(&back), gguf);

    // An output directory that does not exist.
    let nowhere: PathBuf = sb.path("no/such/dir/x.smq");
    sb.run(["import", arg(&src), "-o", arg(&nowhere)])
        .assert_clean_error();
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["import"],
        vec!["import", "a.gguf", "--bogus"],
        vec!["import", "a.gguf", "-o"],
        vec!["export", "a.smq"],
        vec!["verify"],
        vec!["verify", "a.smq", "b.smq"],
        vec!["inspect", "--jsn", "a.gguf"],
        vec!["cache"],
        vec!["cache", "rm"],
        vec!["cache", "frob"],
    ] {
        let r = sb.run(&args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty(), "{args:?}: no usage message");
    }
    assert!(!sb.cache_dir().exists(), "usage errors created the cache");
}
