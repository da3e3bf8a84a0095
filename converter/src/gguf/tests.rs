//! Reader/writer round trips and hostile inputs.

use smq_format::{GgmlType, Metadata, MetadataArray, MetadataEntry, MetadataValue, TYPE_TABLE};

use super::*;
use crate::Error;

fn entry(key: &str, value: MetadataValue) -> MetadataEntry {
    MetadataEntry {
        key: key.to_string(),
        value,
    }
}

fn array(element_type: u32, items: Vec<MetadataValue>) -> MetadataValue {
    MetadataValue::Array(MetadataArray {
        element_type,
        items,
    })
}

/// One key per value type, plus nested and empty arrays and a NaN with a payload.
fn every_value_type() -> Vec<MetadataEntry> {
    use MetadataValue as V;
    vec![
        entry("t.u8", V::U8(200)),
        entry("t.i8", V::I8(-100)),
        entry("t.u16", V::U16(60000)),
        entry("t.i16", V::I16(-30000)),
        entry("t.u32", V::U32(4_000_000_000)),
        entry("t.i32", V::I32(-2_000_000_000)),
        entry("t.f32", V::F32(1.5e-6)),
        entry("t.f32_nan", V::F32(f32::from_bits(0x7fc0_1234))),
        entry("t.bool_t", V::Bool(true)),
        entry("t.bool_f", V::Bool(false)),
        entry("t.string", V::String("héllo ▁world".into())),
        entry("t.empty_string", V::String(String::new())),
        entry("t.u64", V::U64(u64::MAX)),
        entry("t.i64", V::I64(i64::MIN)),
        entry("t.f64", V::F64(-2.5e300)),
        entry("t.arr_u8", array(0, vec![V::U8(1), V::U8(2)])),
        entry("t.arr_i32", array(5, vec![V::I32(-1), V::I32(7)])),
        entry("t.arr_f32", array(6, vec![V::F32(0.25)])),
        entry("t.arr_bool", array(7, vec![V::Bool(true), V::Bool(false)])),
        entry(
            "t.arr_str",
            array(8, vec![V::String("a b".into()), V::String(String::new())]),
        ),
        entry("t.arr_f64", array(12, vec![V::F64(1.0)])),
        entry("t.arr_empty_str", array(8, vec![])),
        entry("t.arr_empty_arr", array(9, vec![])),
        entry(
            "t.arr_nested",
            array(
                9,
                vec![
                    array(4, vec![V::U32(1), V::U32(2)]),
                    array(4, vec![]),
                    array(4, vec![V::U32(3)]),
                ],
            ),
        ),
        entry(
            "t.arr_nested_strings",
            array(
                9,
                vec![array(9, vec![array(8, vec![V::String("deep".into())])])],
            ),
        ),
    ]
}

/// Deterministic non-zero filler bytes.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn builder_with_every_type(version: u32, alignment: u64) -> GgufBuilder {
    let mut b = GgufBuilder::new(version).alignment(alignment);
    for e in every_value_type() {
        b = b.kv(e.key, e.value);
    }
    for (i, row) in TYPE_TABLE.iter().enumerate() {
        let one_d = vec![row.block_size * 2];
        let three_d = vec![row.block_size, 2, 3];
        for (j, shape) in [one_d, three_d].into_iter().enumerate() {
            let len = row.ty.tensor_bytes(&shape).unwrap() as usize;
            b = b.tensor(
                format!("{}.{j}", row.name),
                row.ty,
                shape,
                filler(len, (i * 2 + j) as u64),
            );
        }
    }
    b.tensor("empty", GgmlType::F32, vec![0, 3], Vec::new())
}

#[test]
fn round_trip_every_type_version_and_alignment() {
    for version in [2, 3] {
        for alignment in [1u64, 8, 32, 64, 4096] {
            let b = builder_with_every_type(version, alignment);
            let bytes = b.to_bytes().unwrap();
            let f = GgufFile::parse(&bytes)
                .unwrap_or_else(|e| panic!("v{version} align {alignment}: {e}"));
            assert_eq!(f.version, version);
            assert_eq!(f.alignment, alignment);
            // Debug text compares NaNs too (PartialEq would not); bits are checked below.
            assert_eq!(format!("{:?}", f.metadata), format!("{:?}", b.metadata()));
            assert_eq!(f.data_offset % alignment, 0);
            assert!(f.data_offset >= f.tensor_info_end);
            assert!(f.zero_padding);
            assert_eq!(f.file_size, bytes.len() as u64);
            assert_eq!(f.tensor_count(), TYPE_TABLE.len() * 2 + 1);
            for (i, row) in TYPE_TABLE.iter().enumerate() {
                for j in 0..2 {
                    let t = f.tensor(&format!("{}.{j}", row.name)).unwrap();
                    assert_eq!(t.ggml_type, row.ty);
                    assert_eq!(t.offset % alignment, 0);
                    let expect = filler(t.size as usize, (i * 2 + j) as u64);
                    assert_eq!(f.tensor_data(&bytes, t).unwrap(), &expect[..]);
                }
            }
            assert_eq!(f.tensor("empty").unwrap().size, 0);
            assert_eq!(TensorTable::read(&bytes).unwrap(), f.table);
            // The NaN payload survives bit for bit.
            match f.metadata.get("t.f32_nan") {
                Some(MetadataValue::F32(x)) => assert_eq!(x.to_bits(), 0x7fc0_1234),
                other => panic!("{other:?}"),
            }

            // Writing the parsed file back with its own offsets reproduces every byte.
            let tensors: Vec<TensorWrite<'_>> = f
                .tensors
                .iter()
                .map(|t| TensorWrite {
                    info: t.clone(),
                    data: f.tensor_data(&bytes, t).unwrap(),
                })
                .collect();
            let layout = GgufLayout {
                version,
                alignment,
                file_size: Some(f.file_size),
            };
            let mut again = Vec::new();
            write_gguf(&mut again, &layout, &f.metadata, &tensors).unwrap();
            assert!(
                again == bytes,
                "v{version} align {alignment}: rewrite differs"
            );
        }
    }
}

#[test]
fn default_alignment_without_key() {
    let bytes = GgufBuilder::new(3)
        .tensor("a", GgmlType::F32, vec![3], vec![1u8; 12])
        .tensor("b", GgmlType::F16, vec![5], vec![2u8; 10])
        .to_bytes()
        .unwrap();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.alignment, 32);
    assert!(f.metadata.entries.is_empty());
    assert_eq!(f.tensors[1].offset, 32);
    assert_eq!(f.data_offset % 32, 0);
}

fn small_file() -> Vec<u8> {
    GgufBuilder::new(3)
        .kv(
            "general.architecture",
            MetadataValue::String("llama".into()),
        )
        .kv(
            "tokenizer.ggml.tokens",
            array(8, vec![MetadataValue::String("<s>".into())]),
        )
        .kv(
            "x.nested",
            array(9, vec![array(6, vec![MetadataValue::F32(1.0)])]),
        )
        .tensor("a", GgmlType::Q8_0, vec![32, 2], filler(68, 1))
        .tensor("b", GgmlType::F32, vec![3], filler(12, 2))
        .to_bytes()
        .unwrap()
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = small_file();
    let f = GgufFile::parse(&bytes).unwrap();
    let content_end = f.data_offset + f.tensors.iter().map(|t| t.offset + t.size).max().unwrap();
    assert!(
        content_end < bytes.len() as u64,
        "the file should end in padding"
    );
    for len in 0..bytes.len() {
        let r = GgufFile::parse(&bytes[..len]);
        let scan = TensorTable::read(&bytes[..len]);
        if (len as u64) < content_end {
            let msg = r.expect_err("truncated file parsed").to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            // The scan checks the same bounds.
            assert!(scan.is_err(), "cut at {len}: the scan read a table");
        } else {
            // Only trailing padding is missing: still a complete file.
            assert!(r.is_ok(), "cut at {len} inside the final padding failed");
            assert_eq!(scan.unwrap(), r.unwrap().table);
        }
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    // Flipping any byte must give Ok or Err, never a panic or a huge allocation.
    let bytes = small_file();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let scan = TensorTable::read(&b);
            // The scan is never stricter than the parse, and never disagrees with it.
            if let Ok(f) = GgufFile::parse(&b) {
                assert_eq!(scan.unwrap(), f.table, "byte {i} ^ {flip:#x}");
            }
        }
    }
}

/// Hand-encoded GGUF pieces for inputs the writer refuses to produce.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensors: u64, kvs: u64) -> Raw {
        let mut v = b"GGUF".to_vec();
        v.extend(version.to_le_bytes());
        v.extend(tensors.to_le_bytes());
        v.extend(kvs.to_le_bytes());
        Raw(v)
    }
    fn u32(mut self, x: u32) -> Raw {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn u64(mut self, x: u64) -> Raw {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn str(mut self, s: &[u8]) -> Raw {
        self.0.extend((s.len() as u64).to_le_bytes());
        self.0.extend(s);
        self
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend(b);
        self
    }
    fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(type_id).u64(offset)
    }
    /// Pads to 32 and appends `data_len` zero bytes of tensor data.
    fn data(mut self, data_len: usize) -> Vec<u8> {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.resize(self.0.len() + data_len, 0);
        self.0
    }
}

/// Like [`parse_err`], for errors in the file's structure (counts, lengths, nesting,
/// bounds), which the tensor-table scan must find too.
fn structural_err(bytes: &[u8]) -> String {
    let scan = TensorTable::read(bytes).expect_err("the scan read a hostile file");
    assert!(matches!(scan, Error::Gguf(_)), "{scan:?}");
    parse_err(bytes)
}

fn parse_err(bytes: &[u8]) -> String {
    match GgufFile::parse(bytes) {
        Ok(_) => panic!("parsed a hostile file"),
        Err(e) => {
            assert!(matches!(e, Error::Gguf(_)), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut b = small_file();
    b[0] = b'X';
    assert!(parse_err(&b).contains("magic"));
    for v in [0u32, 1, 4, 0x0300_0000] {
        let bytes = Raw::header(v, 0, 0).data(0);
        let msg = parse_err(&bytes);
        assert!(
            msg.contains("version") || msg.contains("big-endian"),
            "{msg}"
        );
    }
    for v in [2u32, 3] {
        let f = GgufFile::parse(&Raw::header(v, 0, 0).data(0)).unwrap();
        assert_eq!(f.version, v);
        assert!(f.tensors.is_empty());
    }
}

#[test]
fn absurd_counts_and_lengths_fail_without_allocating() {
    let msg = structural_err(&Raw::header(3, 1 << 60, 0).data(64));
    assert!(msg.contains("tensor count"), "{msg}");
    let msg = structural_err(&Raw::header(3, 0, u64::MAX).data(64));
    assert!(msg.contains("key/value count"), "{msg}");
    // A 2^40-byte key.
    let bytes = Raw::header(3, 0, 1).u64(1 << 40).bytes(b"abc").data(64);
    assert!(structural_err(&bytes).contains("truncated"));
    // A 2^40-byte string value.
    let bytes = Raw::header(3, 0, 1).str(b"k").u32(8).u64(1 << 40).data(64);
    assert!(structural_err(&bytes).contains("truncated"));
    // Arrays of 2^62 elements, of scalars, strings and arrays.
    for ty in [0u32, 8, 9, 12] {
        let bytes = Raw::header(3, 0, 1)
            .str(b"k")
            .u32(9)
            .u32(ty)
            .u64(1 << 62)
            .data(64);
        let msg = structural_err(&bytes);
        assert!(msg.contains("array length"), "{msg}");
    }
    // Within the bytes left but beyond the value budget: 2^24 one-byte elements.
    let bytes = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(9)
        .u32(0)
        .u64(1 << 24)
        .data(1 << 24);
    assert!(structural_err(&bytes).contains("more than"));
    // u64::MAX elements: the size check itself must not overflow.
    let bytes = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(9)
        .u32(12)
        .u64(u64::MAX)
        .data(64);
    assert!(structural_err(&bytes).contains("array length"));
}

#[test]
fn nesting_depth_is_bounded() {
    let nested = |depth: usize| {
        let mut r = Raw::header(3, 0, 1).str(b"deep").u32(9);
        for _ in 1..depth {
            r = r.u32(9).u64(1);
        }
        r.u32(0).u64(1).bytes(&[7]).data(0)
    };
    let ok = GgufFile::parse(&nested(MAX_ARRAY_DEPTH)).unwrap();
    assert_eq!(ok.metadata.entries.len(), 1);
    assert!(structural_err(&nested(MAX_ARRAY_DEPTH + 1)).contains("nested"));
    // A million levels must not blow the stack either.
    assert!(structural_err(&nested(1_000_000)).contains("nested"));
}

#[test]
fn bad_values() {
    let unknown = Raw::header(3, 0, 1).str(b"k").u32(13).u32(0).data(0);
    assert!(structural_err(&unknown).contains("unknown metadata value type 13"));
    let unknown_elem = Raw::header(3, 0, 1).str(b"k").u32(9).u32(99).u64(0).data(0);
    assert!(structural_err(&unknown_elem).contains("unknown array element type 99"));
    let bad_bool = Raw::header(3, 0, 1).str(b"k").u32(7).bytes(&[2]).data(0);
    assert!(parse_err(&bad_bool).contains("bool"));
    let bad_key = Raw::header(3, 0, 1)
        .str(b"k\xff")
        .u32(0)
        .bytes(&[1])
        .data(0);
    assert!(parse_err(&bad_key).contains("UTF-8"));
    let bad_str = Raw::header(3, 0, 1).str(b"k").u32(8).str(b"\xc3(").data(0);
    assert!(parse_err(&bad_str).contains("UTF-8"));
    let bad_name = Raw::header(3, 1, 0).tensor("\u{0}ok", &[4], 0, 0);
    let mut bad_name = bad_name.0;
    let name_at = 24 + 8; // header, then the name length
    bad_name[name_at] = 0xfe;
    let bad_name = Raw(bad_name).data(16);
    assert!(parse_err(&bad_name).contains("UTF-8"));
}

#[test]
fn duplicates_are_rejected() {
    let meta = Metadata {
        entries: vec![
            entry("a", MetadataValue::U8(1)),
            entry("a", MetadataValue::U8(2)),
        ],
    };
    let mut bytes = Vec::new();
    write_header(&mut bytes, 3, &meta, &[]).unwrap();
    assert!(parse_err(&bytes).contains("duplicate metadata key `a`"));

    let bytes = Raw::header(3, 2, 0)
        .tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .data(48);
    assert!(parse_err(&bytes).contains("duplicate tensor name `w`"));
}

#[test]
fn bad_alignment_values() {
    for (value_type, payload) in [(4u32, 0u64), (4, 3), (4, 48), (10, 32), (5, 32)] {
        let mut r = Raw::header(3, 0, 1)
            .str(b"general.alignment")
            .u32(value_type);
        r = if value_type == 10 {
            r.u64(payload)
        } else {
            r.u32(payload as u32)
        };
        let msg = structural_err(&r.data(0));
        assert!(msg.contains("general.alignment"), "{msg}");
    }
}

#[test]
fn bad_tensor_infos() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            Raw::header(3, 1, 0).tensor("t", &[], 0, 0).data(0),
            "dimensions",
        ),
        (
            Raw::header(3, 1, 0)
                .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
                .data(4),
            "dimensions",
        ),
        (
            Raw::header(3, 1, 0).tensor("t", &[4], 4, 0).data(64),
            "unknown ggml type id 4",
        ),
        (
            Raw::header(3, 1, 0).tensor("t", &[4], 999, 0).data(64),
            "unknown ggml type",
        ),
        (
            Raw::header(3, 1, 0).tensor("t", &[16], 2, 0).data(64),
            "block size",
        ),
        (
            Raw::header(3, 1, 0)
                .tensor("t", &[1 << 32, 1 << 32], 0, 0)
                .data(64),
            "overflows",
        ),
        (
            Raw::header(3, 1, 0)
                .tensor("t", &[u64::MAX / 2], 0, 0)
                .data(64),
            "overflows",
        ),
        (
            Raw::header(3, 1, 0).tensor("t", &[4], 0, 8).data(64),
            "alignment",
        ),
        (
            Raw::header(3, 1, 0).tensor("t", &[4], 0, 0).data(15),
            "past the end",
        ),
        (
            Raw::header(3, 1, 0)
                .tensor("t", &[4], 0, u64::MAX - 31)
                .data(64),
            "past the end",
        ),
        (
            Raw::header(3, 2, 0)
                .tensor("a", &[16], 0, 0)
                .tensor("b", &[16], 0, 32)
                .data(128),
            "overlaps",
        ),
        (
            Raw::header(3, 2, 0)
                .tensor("a", &[4], 0, 32)
                .tensor("b", &[64], 0, 0)
                .data(256),
            "overlaps",
        ),
    ];
    for (bytes, expect) in cases {
        let msg = structural_err(&bytes);
        assert!(msg.contains(expect), "expected `{expect}` in: {msg}");
    }
}

#[test]
fn empty_tensors_are_allowed_anywhere() {
    let bytes = Raw::header(3, 3, 0)
        .tensor("a", &[8], 0, 0)
        .tensor("e0", &[0], 0, 0)
        .tensor("e1", &[32, 0, 2], 0, 32)
        .data(32);
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(
        f.tensors.iter().map(|t| t.size).collect::<Vec<_>>(),
        [32, 0, 0]
    );
}

#[test]
fn nonzero_padding_is_detected_but_accepted() {
    let bytes = small_file();
    let f = GgufFile::parse(&bytes).unwrap();
    assert!(f.zero_padding);

    // A byte after the last tensor (inside the final alignment padding).
    let mut trailing = bytes.clone();
    *trailing.last_mut().unwrap() = 1;
    assert!(!GgufFile::parse(&trailing).unwrap().zero_padding);

    // A byte in the gap between the tensors (tensor a is 68 bytes, b starts at 96).
    let mut gap = bytes.clone();
    gap[f.data_offset as usize + 70] = 9;
    assert!(!GgufFile::parse(&gap).unwrap().zero_padding);

    // A byte between the tensor infos and the data section, if there is a gap.
    if f.data_offset > f.tensor_info_end {
        let mut pad = bytes.clone();
        pad[f.tensor_info_end as usize] = 1;
        assert!(!GgufFile::parse(&pad).unwrap().zero_padding);
    }
}

#[test]
fn writer_rejects_inconsistent_input() {
    let wrong_len = GgufBuilder::new(3)
        .tensor("w", GgmlType::F32, vec![4], vec![0u8; 15])
        .to_bytes();
    assert!(wrong_len.is_err());
    let bad_align = GgufBuilder::new(3).alignment(24).to_bytes();
    assert!(bad_align.is_err());
    let mixed = GgufBuilder::new(3)
        .kv(
            "m",
            array(4, vec![MetadataValue::U32(1), MetadataValue::U8(2)]),
        )
        .to_bytes();
    assert!(mixed.is_err());
    let data = [0u8; 64];
    let overlap = [
        TensorWrite {
            info: TensorInfo {
                name: "a".into(),
                ggml_type: GgmlType::F32,
                shape: vec![16],
                offset: 0,
                size: 64,
            },
            data: &data,
        },
        TensorWrite {
            info: TensorInfo {
                name: "b".into(),
                ggml_type: GgmlType::F32,
                shape: vec![16],
                offset: 32,
                size: 64,
            },
            data: &data,
        },
    ];
    let layout = GgufLayout {
        version: 3,
        alignment: 32,
        file_size: None,
    };
    let meta = Metadata { entries: vec![] };
    assert!(write_gguf(&mut Vec::new(), &layout, &meta, &overlap).is_err());
    let short = GgufLayout {
        file_size: Some(10),
        ..layout
    };
    assert!(write_gguf(&mut Vec::new(), &short, &meta, &overlap[..1]).is_err());
}
