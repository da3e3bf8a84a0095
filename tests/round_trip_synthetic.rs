//! Round trip of synthetic GGUF files through the CLI (import -o, verify, export): the
//! export must be byte-identical to the input. The files cover every ggml type in the
//! type table, odd shapes, GGUF v2 and v3, every metadata value type including empty and
//! nested arrays, and unusual alignments and layouts.

mod common;

use std::path::Path;

use common::*;
use smq_converter::gguf::{write_gguf, GgufBuilder, GgufLayout, TensorInfo, TensorWrite};
use smq_format::{GgmlType, Metadata, MetadataEntry, MetadataValue, SmqFile, TYPE_TABLE};

/// Imports `bytes` (written as `name`), verifies, exports and compares; also checks the
/// SMQ holds the same metadata and tensor bytes as the GGUF.
fn round_trip(sb: &Sandbox, name: &str, gguf: &[u8]) {
    let src = sb.path(&format!("{name}.gguf"));
    let smq = sb.path(&format!("{name}.smq"));
    let back = sb.path(&format!("{name}.back.gguf"));
    write(&src, gguf);

    sb.ok(["import", arg(&src), "-o", arg(&smq)]);
    let v = sb.ok(["verify", arg(&smq), "--json"]).json();
    assert_eq!(v["ok"], true, "{name}: {v}");
    let e = sb
        .ok(["export", arg(&smq), "-o", arg(&back), "--json"])
        .json();
    assert_eq!(e["byte_identical"], true, "{name}: {e}");

    let out = read(&back);
    assert_eq!(out.len(), gguf.len(), "{name}: export length");
    if let Some(i) = out.iter().zip(gguf).position(|(a, b)| a != b) {
        panic!("{name}: export differs from the input at byte {i}");
    }
    check_smq_matches(name, gguf, &smq);
}

fn check_smq_matches(name: &str, gguf_bytes: &[u8], smq_path: &Path) {
    let gguf = smq_converter::GgufFile::parse(gguf_bytes).expect("parse own GGUF");
    let smq = SmqFile::open(smq_path).expect("open SMQ");
    let entries = &smq.manifest().tensors;
    assert_eq!(entries.len(), gguf.tensors.len(), "{name}: tensor count");
    for (entry, info) in entries.iter().zip(&gguf.tensors) {
        assert_eq!(entry.name, info.name);
        assert_eq!(
            (entry.ggml_type, &entry.shape),
            (info.ggml_type, &info.shape)
        );
        let expected = gguf.tensor_data(gguf_bytes, info).expect("tensor bytes");
        assert!(
            smq.tensor_data(entry) == expected,
            "{name}: tensor `{}` bytes differ",
            entry.name
        );
    }
    // NaN compares unequal to itself, so compare the metadata through its bit patterns.
    let ours = smq.metadata().expect("SMQ metadata");
    assert_eq!(
        format!("{:?}", bits(&ours)),
        format!("{:?}", bits(&gguf.metadata)),
        "{name}: metadata differs"
    );
}

/// Metadata with floats replaced by their bit patterns, for exact comparison.
fn bits(m: &Metadata) -> Vec<(String, String)> {
    fn show(v: &MetadataValue) -> String {
        match v {
            MetadataValue::F32(x) => format!("f32:{:#x}", x.to_bits()),
            MetadataValue::F64(x) => format!("f64:{:#x}", x.to_bits()),
            MetadataValue::Array(a) => {
                let items: Vec<String> = a.items.iter().map(show).collect();
                format!("[{}: {}]", a.element_type, items.join(", "))
            }
            other => format!("{other:?}"),
        }
    }
    m.entries
        .iter()
        .map(|e| (e.key.clone(), show(&e.value)))
        .collect()
}

/// Key/values of every GGUF value type, with empty and nested arrays and odd floats.
fn all_value_kinds(b: GgufBuilder) -> GgufBuilder {
    use MetadataValue as V;
    b.kv("general.architecture", string("llama"))
        .kv("test.u8", V::U8(255))
        .kv("test.i8", V::I8(-128))
        .kv("test.u16", V::U16(65535))
        .kv("test.i16", V::I16(-32768))
        .kv("test.u32", V::U32(u32::MAX))
        .kv("test.i32", V::I32(i32::MIN))
        .kv("test.u64", V::U64(u64::MAX))
        .kv("test.i64", V::I64(i64::MIN))
        .kv("test.f32.nan", V::F32(f32::from_bits(0x7fc0_1234)))
        .kv("test.f32.neg_zero", V::F32(-0.0))
        .kv("test.f64.subnormal", V::F64(f64::from_bits(1)))
        .kv("test.f64.inf", V::F64(f64::NEG_INFINITY))
        .kv("test.bool.true", V::Bool(true))
        .kv("test.bool.false", V::Bool(false))
        .kv("test.string.empty", string(""))
        .kv("test.string.unicode", string("héllo ✓ \u{0}\n\t end"))
        .kv("", string("empty key"))
        .kv("test.array.empty_u8", array(T_U8, vec![]))
        .kv("test.array.empty_string", array(T_STRING, vec![]))
        .kv("test.array.empty_array", array(T_ARRAY, vec![]))
        .kv(
            "test.array.f32",
            array(T_F32, vec![V::F32(1.5), V::F32(f32::NAN), V::F32(-0.0)]),
        )
        .kv(
            "test.array.i64",
            array(T_I64, vec![V::I64(-1), V::I64(i64::MAX)]),
        )
        .kv(
            "test.array.strings",
            array(T_STRING, vec![string(""), string("x"), string("yz")]),
        )
        .kv(
            "test.array.nested2",
            array(
                T_ARRAY,
                vec![
                    array(T_U32, vec![V::U32(1), V::U32(2)]),
                    array(T_U32, vec![]),
                    array(T_STRING, vec![string("mixed inner types")]),
                ],
            ),
        )
        .kv(
            "test.array.nested3",
            array(
                T_ARRAY,
                vec![array(
                    T_ARRAY,
                    vec![array(T_U8, vec![V::U8(7)]), array(T_ARRAY, vec![])],
                )],
            ),
        )
}

/// Shapes for a type with block size `bs`: 1-D, 2-D, 3-D and 4-D, with row counts and
/// byte sizes that are not multiples of the alignment.
fn shapes(bs: u64) -> [Vec<u64>; 5] {
    [
        vec![bs],
        vec![bs * 3],
        vec![bs, 3, 5],
        vec![bs * 2, 7],
        vec![bs, 1, 2, 3],
    ]
}

/// One tensor of every type in the table (shape chosen by `variant`), plus a few with
/// sizes that break any alignment.
fn every_type(mut b: GgufBuilder, variant: usize, seed: u64) -> GgufBuilder {
    for (i, row) in TYPE_TABLE.iter().enumerate() {
        let all = shapes(row.block_size);
        let shape = all[(i + variant) % all.len()].clone();
        let data = tensor_bytes(row.ty, &shape, seed + i as u64);
        b = b.tensor(format!("t.{}", row.name), row.ty, shape, data);
    }
    let odd: [(&str, GgmlType, Vec<u64>); 4] = [
        ("odd.i8", GgmlType::I8, vec![7, 3]),
        ("odd.f16", GgmlType::F16, vec![13]),
        ("odd.q4_0", GgmlType::Q4_0, vec![32, 5]),
        ("odd.q6_k", GgmlType::Q6K, vec![256, 3, 1, 1]),
    ];
    for (i, (name, ty, shape)) in odd.into_iter().enumerate() {
        let data = tensor_bytes(ty, &shape, seed + 1000 + i as u64);
        b = b.tensor(name, ty, shape, data);
    }
    b
}

#[test]
fn every_type_every_alignment_v2_v3() {
    let sb = Sandbox::new();
    let alignments = [None, Some(1), Some(8), Some(64), Some(4096)];
    let mut case = 0;
    for version in [2u32, 3] {
        for alignment in alignments {
            // The alignment key goes in the middle of the metadata, as some writers do.
            let mut b = GgufBuilder::new(version).kv("general.name", string("synthetic"));
            if let Some(a) = alignment {
                b = b.alignment(a);
            }
            b = every_type(all_value_kinds(b), case, case as u64 * 7919);
            let bytes = b.to_bytes().expect("build GGUF");
            let name = format!("v{version}-align{}", alignment.unwrap_or(32));
            round_trip(&sb, &name, &bytes);
            case += 1;
        }
    }
}

#[test]
fn no_tensors_and_no_metadata() {
    let sb = Sandbox::new();
    round_trip(&sb, "empty", &GgufBuilder::new(3).to_bytes().unwrap());
    let only_kv = all_value_kinds(GgufBuilder::new(2)).to_bytes().unwrap();
    round_trip(&sb, "only-kv", &only_kv);
    let only_tensor = GgufBuilder::new(3)
        .tensor("x", GgmlType::F32, vec![3], bytes(12, 1))
        .to_bytes()
        .unwrap();
    round_trip(&sb, "only-tensor", &only_tensor);
}

#[test]
fn explicit_layout_with_gaps_and_trailing_padding() {
    // Tensors listed out of offset order, with gaps bigger than the alignment and zero
    // bytes after the last tensor: the export must put every byte back where it was.
    let sb = Sandbox::new();
    let specs: [(&str, GgmlType, Vec<u64>, u64); 4] = [
        ("late", GgmlType::Q8_0, vec![32, 3], 4096),
        ("first", GgmlType::F32, vec![5], 0),
        ("middle", GgmlType::Q5K, vec![256], 640),
        ("gap", GgmlType::BF16, vec![9, 2], 1024),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, ty, shape, _))| tensor_bytes(*ty, shape, 40 + i as u64))
        .collect();
    let tensors: Vec<TensorWrite<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((name, ty, shape, offset), d)| TensorWrite {
            info: TensorInfo {
                name: name.to_string(),
                ggml_type: *ty,
                shape: shape.clone(),
                offset: *offset,
                size: d.len() as u64,
            },
            data: d,
        })
        .collect();
    let metadata = Metadata {
        entries: vec![
            MetadataEntry {
                key: "general.architecture".into(),
                value: string("gemma3"),
            },
            MetadataEntry {
                key: "general.alignment".into(),
                value: MetadataValue::U32(128),
            },
        ],
    };
    for (version, file_size) in [(3, None), (2, Some(3 * 4096 + 17))] {
        let layout = GgufLayout {
            version,
            alignment: 128,
            file_size,
        };
        let mut bytes = Vec::new();
        write_gguf(&mut bytes, &layout, &metadata, &tensors).expect("write GGUF");
        round_trip(&sb, &format!("layout-v{version}"), &bytes);
    }
}

#[test]
fn empty_tensor() {
    // A tensor with a zero dimension has no bytes; it must survive the round trip too.
    let sb = Sandbox::new();
    let bytes = GgufBuilder::new(3)
        .tensor("before", GgmlType::F32, vec![4], bytes(16, 3))
        .tensor("empty", GgmlType::Q4_0, vec![32, 0], Vec::new())
        .tensor("after", GgmlType::F16, vec![3], bytes(6, 4))
        .to_bytes()
        .unwrap();
    round_trip(&sb, "empty-tensor", &bytes);
}
