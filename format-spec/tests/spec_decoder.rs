//! An SMQ v1 reader written only from SPEC.md (header offsets, §4 byte rules, §5 field
//! order), with no bincode or serde. It must decode exactly what the writer wrote and agree
//! with the reference reader on every field, and on which corrupted encodings are invalid:
//! that is what shows the spec describes the bytes.

use std::path::Path;

use smq_format::codec::decode_section;
use smq_format::*;

type R<T> = std::result::Result<T, String>;

/// Nesting bound for metadata arrays (SPEC.md §5.8: at most 16 nested arrays).
const MAX_DEPTH: usize = smq_format::manifest::MAX_ARRAY_DEPTH;

/// A bounds-checked little-endian reader over decompressed section bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cursor { b, pos: 0 }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("need {n} bytes at {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn i8(&mut self) -> R<i8> {
        Ok(i8::from_le_bytes(self.array()?))
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn i16(&mut self) -> R<i16> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> R<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> R<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn f32(&mut self) -> R<f32> {
        Ok(f32::from_bits(self.u32()?))
    }
    fn f64(&mut self) -> R<f64> {
        Ok(f64::from_bits(self.u64()?))
    }

    fn bool(&mut self) -> R<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(format!("bool byte {x}")),
        }
    }

    fn hash(&mut self) -> R<[u8; 32]> {
        self.array()
    }

    /// A u64 element count, refused when the bytes left cannot hold that many elements
    /// of at least `min_size` bytes (so nothing is allocated from an unchecked count).
    fn count(&mut self, min_size: usize) -> R<usize> {
        let n = self.u64()?;
        let left = (self.b.len() - self.pos) as u64;
        match n.checked_mul(min_size as u64) {
            Some(need) if need <= left => Ok(n as usize),
            _ => Err(format!("count {n} exceeds the {left} bytes left")),
        }
    }

    fn string(&mut self) -> R<String> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
    }

    fn bytes(&mut self) -> R<Vec<u8>> {
        let n = self.count(1)?;
        Ok(self.take(n)?.to_vec())
    }

    fn vec<T>(&mut self, min_size: usize, mut f: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        let n = self.count(min_size)?;
        (0..n).map(|_| f(self)).collect()
    }

    fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> R<T>) -> R<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            x => Err(format!("option tag {x}")),
        }
    }

    fn finish(&self) -> R<()> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.b.len() - self.pos))
        }
    }
}

// ---- SPEC.md §5, field by field. Struct literals list fields in encoding order, and Rust
// evaluates them in the order written, so each literal is the spec's field table.

fn manifest(c: &mut Cursor) -> R<Manifest> {
    Ok(Manifest {
        source: source_info(c)?,
        config: model_config(c)?,
        tokenizer: c.option(tokenizer)?,
        tensors: c.vec(1, tensor_entry)?,
    })
}

fn source_info(c: &mut Cursor) -> R<SourceInfo> {
    Ok(SourceInfo {
        file_name: c.string()?,
        file_size: c.u64()?,
        blake3: c.hash()?,
        gguf_version: c.u32()?,
        alignment: c.u64()?,
        data_offset: c.u64()?,
        zero_padding: c.bool()?,
    })
}

fn model_config(c: &mut Cursor) -> R<ModelConfig> {
    Ok(ModelConfig {
        architecture: c.string()?,
        name: c.option(Cursor::string)?,
        file_type: c.option(Cursor::u32)?,
        context_length: c.option(Cursor::u64)?,
        embedding_length: c.option(Cursor::u64)?,
        block_count: c.option(Cursor::u64)?,
        feed_forward_length: c.option(Cursor::u64)?,
        head_count: c.option(Cursor::u64)?,
        head_count_kv: c.option(Cursor::u64)?,
        key_length: c.option(Cursor::u64)?,
        value_length: c.option(Cursor::u64)?,
        rms_norm_epsilon: c.option(Cursor::f32)?,
        layer_norm_epsilon: c.option(Cursor::f32)?,
        rope_dimension_count: c.option(Cursor::u64)?,
        rope_freq_base: c.option(Cursor::f32)?,
        rope_scaling_type: c.option(Cursor::string)?,
        rope_scaling_factor: c.option(Cursor::f32)?,
        rope_scaling_original_context_length: c.option(Cursor::u64)?,
        sliding_window: c.option(Cursor::u64)?,
        attn_logit_softcapping: c.option(Cursor::f32)?,
        final_logit_softcapping: c.option(Cursor::f32)?,
        vocab_size: c.option(Cursor::u64)?,
        expert_count: c.option(Cursor::u64)?,
        expert_used_count: c.option(Cursor::u64)?,
    })
}

fn tokenizer(c: &mut Cursor) -> R<TokenizerSpec> {
    Ok(TokenizerSpec {
        model: c.string()?,
        pre: c.option(Cursor::string)?,
        token_bytes: c.bytes()?,
        token_offsets: c.vec(4, Cursor::u32)?,
        scores: c.vec(4, Cursor::f32)?,
        token_types: c.vec(4, Cursor::i32)?,
        merge_bytes: c.bytes()?,
        merge_offsets: c.vec(4, Cursor::u32)?,
        bos_id: c.option(Cursor::u32)?,
        eos_id: c.option(Cursor::u32)?,
        eot_id: c.option(Cursor::u32)?,
        unknown_id: c.option(Cursor::u32)?,
        padding_id: c.option(Cursor::u32)?,
        separator_id: c.option(Cursor::u32)?,
        add_bos: c.option(Cursor::bool)?,
        add_eos: c.option(Cursor::bool)?,
        add_space_prefix: c.option(Cursor::bool)?,
        chat_template: c.option(Cursor::string)?,
    })
}

fn tensor_entry(c: &mut Cursor) -> R<TensorEntry> {
    Ok(TensorEntry {
        name: c.string()?,
        ggml_type: {
            let id = c.u32()?;
            GgmlType::from_id(id).ok_or_else(|| format!("ggml type id {id}"))?
        },
        shape: c.vec(8, Cursor::u64)?,
        layout: TensorLayout::from_id(c.u32()?),
        offset: c.u64()?,
        size: c.u64()?,
        source_offset: c.u64()?,
        blake3: c.hash()?,
    })
}

fn metadata(c: &mut Cursor) -> R<Metadata> {
    let entries = c.vec(1, |c| {
        Ok(MetadataEntry {
            key: c.string()?,
            value: metadata_value(c, 0)?,
        })
    })?;
    Ok(Metadata { entries })
}

/// §5.7: the u32 variant index is the GGUF value type id.
fn metadata_value(c: &mut Cursor, depth: usize) -> R<MetadataValue> {
    Ok(match c.u32()? {
        0 => MetadataValue::U8(c.u8()?),
        1 => MetadataValue::I8(c.i8()?),
        2 => MetadataValue::U16(c.u16()?),
        3 => MetadataValue::I16(c.i16()?),
        4 => MetadataValue::U32(c.u32()?),
        5 => MetadataValue::I32(c.i32()?),
        6 => MetadataValue::F32(c.f32()?),
        7 => MetadataValue::Bool(c.bool()?),
        8 => MetadataValue::String(c.string()?),
        9 => {
            // §5.8: at most MAX_DEPTH nested arrays; every item of the declared type.
            if depth >= MAX_DEPTH {
                return Err("metadata arrays nest too deeply".into());
            }
            let element_type = c.u32()?;
            if element_type > 12 {
                return Err(format!("array element type {element_type}"));
            }
            let items = c.vec(1, |c| metadata_value(c, depth + 1))?;
            if items.iter().any(|v| v.type_id() != element_type) {
                return Err("array item of another type".into());
            }
            MetadataValue::Array(MetadataArray {
                element_type,
                items,
            })
        }
        10 => MetadataValue::U64(c.u64()?),
        11 => MetadataValue::I64(c.i64()?),
        12 => MetadataValue::F64(c.f64()?),
        x => return Err(format!("metadata value type {x}")),
    })
}

/// Decodes a whole section, requiring every byte to be used (§4: these files have minor 0).
fn decode_all<T>(raw: &[u8], f: impl FnOnce(&mut Cursor) -> R<T>) -> R<T> {
    let mut c = Cursor::new(raw);
    let v = f(&mut c)?;
    c.finish()?;
    Ok(v)
}

// ---- SPEC.md §2: the header by offsets.

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn parse_header(b: &[u8]) -> Header {
    assert!(b.len() >= 256);
    assert_eq!(&b[0..8], &[0x89, b'S', b'M', b'Q', 0x0d, 0x0a, 0x1a, 0x0a]);
    assert_eq!(
        blake3::hash(&b[0..224]).as_bytes(),
        &b[224..256],
        "header_blake3 covers bytes 0..224"
    );
    assert!(b[152..224].iter().all(|&x| x == 0), "reserved bytes");
    let section = |at: usize| Section {
        offset: le_u64(b, at),
        len: le_u64(b, at + 8),
    };
    Header {
        major: u16::from_le_bytes([b[8], b[9]]),
        minor: u16::from_le_bytes([b[10], b[11]]),
        flags: u32::from_le_bytes(b[12..16].try_into().unwrap()),
        file_len: le_u64(b, 16),
        data: section(24),
        manifest: section(40),
        manifest_raw_len: le_u64(b, 56),
        metadata: section(64),
        metadata_raw_len: le_u64(b, 80),
        manifest_blake3: b[88..120].try_into().unwrap(),
        metadata_blake3: b[120..152].try_into().unwrap(),
    }
}

fn slice(file: &[u8], s: Section) -> &[u8] {
    &file[s.offset as usize..(s.offset + s.len) as usize]
}

/// Decompresses a stored section as §4 says: exactly `raw_len` bytes.
fn decompress(stored: &[u8], raw_len: u64) -> Vec<u8> {
    assert!(raw_len <= 1 << 30);
    let raw = zstd::stream::decode_all(stored).expect("a zstd stream");
    assert_eq!(raw.len() as u64, raw_len, "decompressed length");
    raw
}

// ---- The test model: every Option both set and unset somewhere, several types.

struct Fixture {
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
    metadata: Metadata,
}

fn fixture() -> Fixture {
    let mk = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
            .collect()
    };
    let tensors = vec![
        (
            "token_embd.weight".into(),
            GgmlType::Q8_0,
            vec![64, 3],
            mk(2 * 34 * 3, 1),
        ),
        (
            "blk.0.attn_q.weight".into(),
            GgmlType::Q4K,
            vec![256, 2],
            mk(2 * 144, 2),
        ),
        ("empty".into(), GgmlType::F32, vec![0, 4], vec![]),
        (
            "output_norm.weight".into(),
            GgmlType::F32,
            vec![7],
            mk(28, 3),
        ),
        (
            "blk.0.ffn.bias".into(),
            GgmlType::F16,
            vec![3, 1, 5, 2],
            mk(60, 4),
        ),
        ("blk.0.q6".into(), GgmlType::Q6K, vec![256], mk(210, 5)),
    ];
    let arr = |element_type: u32, items: Vec<MetadataValue>| {
        MetadataValue::Array(MetadataArray {
            element_type,
            items,
        })
    };
    use MetadataValue as V;
    let kv = [
        ("general.architecture", V::String("llama".into())),
        ("u8", V::U8(200)),
        ("i8", V::I8(-5)),
        ("u16", V::U16(65_000)),
        ("i16", V::I16(-30_000)),
        ("u32", V::U32(4_000_000_000)),
        ("i32", V::I32(-2_000_000_000)),
        ("f32", V::F32(-1.5e-7)),
        ("bool", V::Bool(true)),
        ("u64", V::U64(u64::MAX - 1)),
        ("i64", V::I64(i64::MIN + 3)),
        ("f64", V::F64(std::f64::consts::PI)),
        ("utf8 ключ", V::String("значение ✓".into())),
        ("empty", arr(4, vec![])),
        ("bools", arr(7, vec![V::Bool(false), V::Bool(true)])),
        (
            "nested",
            arr(
                9,
                vec![
                    arr(8, vec![V::String("a".into()), V::String(String::new())]),
                    arr(9, vec![arr(12, vec![V::F64(-0.25)])]),
                ],
            ),
        ),
    ];
    let metadata = Metadata {
        entries: kv
            .into_iter()
            .map(|(k, value)| MetadataEntry {
                key: k.into(),
                value,
            })
            .collect(),
    };
    Fixture { tensors, metadata }
}

fn source() -> SourceInfo {
    SourceInfo {
        file_name: "model.gguf".into(),
        file_size: 123_456_789,
        blake3: *blake3::hash(b"source").as_bytes(),
        gguf_version: 3,
        alignment: 32,
        data_offset: 8_192,
        zero_padding: false,
    }
}

fn config() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        name: Some("Tiny".into()),
        context_length: Some(2048),
        head_count: Some(8),
        head_count_kv: Some(2),
        rms_norm_epsilon: Some(1e-5),
        rope_scaling_type: Some("linear".into()),
        final_logit_softcapping: Some(30.0),
        expert_used_count: Some(0),
        ..Default::default()
    }
}

fn tokenizer_spec() -> TokenizerSpec {
    // Token 2 is not UTF-8: token texts are kept as raw bytes.
    let tokens: [&[u8]; 5] = [b"<s>", b"</s>", &[0xff, 0x41], b"", "é".as_bytes()];
    let mut token_bytes = Vec::new();
    let mut token_offsets = vec![0u32];
    for t in tokens {
        token_bytes.extend_from_slice(t);
        token_offsets.push(token_bytes.len() as u32);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: None,
        token_bytes,
        token_offsets,
        scores: vec![0.0, -1.0, -2.5, f32::MIN_POSITIVE, 3.0],
        token_types: vec![3, 3, 1, 1, -7],
        merge_bytes: b"a bc d".to_vec(),
        merge_offsets: vec![0, 3, 6],
        bos_id: Some(0),
        eos_id: Some(1),
        eot_id: None,
        unknown_id: Some(4),
        padding_id: None,
        separator_id: None,
        add_bos: Some(true),
        add_eos: Some(false),
        add_space_prefix: None,
        chat_template: Some("{{ messages }}".into()),
    }
}

fn write(path: &Path, fx: &Fixture, tokenizer: Option<TokenizerSpec>) -> Manifest {
    let inputs: Vec<TensorInput> = fx
        .tensors
        .iter()
        .enumerate()
        .map(|(i, (name, ty, shape, bytes))| TensorInput {
            name: name.clone(),
            ggml_type: *ty,
            shape: shape.clone(),
            source_offset: 1000 - 96 * i as u64,
            bytes,
        })
        .collect();
    write_smq(
        path,
        source(),
        config(),
        tokenizer,
        &fx.metadata,
        &inputs,
        &|_, _| {},
    )
    .unwrap()
}

/// Writes the fixture and checks the file against SPEC.md §2–§7 by hand, comparing every
/// decoded field with the reference reader.
fn check_written(fx: &Fixture, tokenizer: Option<TokenizerSpec>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    let written = write(&path, fx, tokenizer);
    let file = std::fs::read(&path).unwrap();
    let reference = SmqFile::open(&path).unwrap();

    // §2: the header by offsets.
    let h = parse_header(&file);
    assert_eq!(&h, reference.header());
    assert_eq!((h.major, h.minor, h.flags), (1, 0, 0));
    assert_eq!(h.file_len, file.len() as u64);

    // §3: layout as written.
    assert_eq!(h.data.offset, 4096);
    assert!(
        file[256..4096].iter().all(|&b| b == 0),
        "padding after header"
    );
    assert_eq!(h.manifest.offset, h.data.offset + h.data.len);
    assert_eq!(h.metadata.offset, h.manifest.offset + h.manifest.len);
    assert_eq!(h.file_len, h.metadata.offset + h.metadata.len);

    // §7: section hashes cover the stored (compressed) bytes.
    let stored_manifest = slice(&file, h.manifest);
    let stored_metadata = slice(&file, h.metadata);
    assert_eq!(blake3::hash(stored_manifest).as_bytes(), &h.manifest_blake3);
    assert_eq!(blake3::hash(stored_metadata).as_bytes(), &h.metadata_blake3);

    // §4/§5: the manifest decoded by hand equals the reference reader's.
    let raw = decompress(stored_manifest, h.manifest_raw_len);
    let m = decode_all(&raw, manifest).unwrap();
    assert_eq!(&m, reference.manifest());
    assert_eq!(m, written);

    // §5.7: the metadata section likewise.
    let raw = decompress(stored_metadata, h.metadata_raw_len);
    let md = decode_all(&raw, metadata).unwrap();
    assert_eq!(md, reference.metadata().unwrap());
    assert_eq!(md, fx.metadata);

    // §3/§6/§7: tensors 64-aligned, zero between, sized by the type table, hashed.
    let data = slice(&file, h.data);
    let mut pos = 0u64;
    for (t, (name, ty, shape, bytes)) in m.tensors.iter().zip(&fx.tensors) {
        assert_eq!((&t.name, t.ggml_type, &t.shape), (name, *ty, shape));
        assert_eq!(t.offset % 64, 0);
        assert!(t.offset >= pos);
        let gap = &data[pos as usize..t.offset as usize];
        assert!(gap.iter().all(|&b| b == 0), "gap before {name}");
        let mut size = shape[0] / ty.block_size() * ty.type_size();
        for d in &shape[1..] {
            size *= d;
        }
        assert_eq!(t.size, size);
        let stored = &data[t.offset as usize..(t.offset + t.size) as usize];
        assert_eq!(stored, &bytes[..]);
        assert_eq!(blake3::hash(stored).as_bytes(), &t.blake3);
        pos = t.offset + t.size;
    }
    assert_eq!(pos, h.data.len);
}

#[test]
fn spec_decoder_reads_what_the_writer_wrote() {
    let fx = fixture();
    check_written(&fx, Some(tokenizer_spec()));
}

#[test]
fn spec_decoder_reads_a_file_without_tokenizer() {
    let fx = fixture();
    check_written(&fx, None);
}

/// Every single-byte corruption of the decoded section must be judged the same way by the
/// spec decoder and the reference reader: both refuse it, or both decode the same value.
fn agree_on_corruptions<T: std::fmt::Debug + ReferenceDecode>(
    raw: &[u8],
    ours: fn(&mut Cursor) -> R<T>,
) {
    let mut refused = 0;
    for i in 0..raw.len() {
        for new in [raw[i] ^ 0x01, raw[i] ^ 0x80, 0x02, 0xff] {
            if new == raw[i] {
                continue;
            }
            let mut bad = raw.to_vec();
            bad[i] = new;
            let stored = zstd::bulk::compress(&bad, 1).unwrap();
            let theirs = T::reference(&stored, bad.len() as u64);
            let mine = decode_all(&bad, ours);
            match (&mine, &theirs) {
                // Debug text, so that NaN produced by a flipped float compares equal.
                (Ok(a), Some(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "byte {i}"),
                (Err(_), None) => refused += 1,
                _ => panic!(
                    "byte {i} set to {new:#x}: spec decoder {}, reference {}",
                    if mine.is_ok() { "accepts" } else { "refuses" },
                    if theirs.is_some() {
                        "accepts"
                    } else {
                        "refuses"
                    },
                ),
            }
        }
    }
    assert!(refused > 0, "no corruption was refused");
}

/// The reference reader's decoding of each section type, so the corruption test is
/// written once for both.
trait ReferenceDecode: Sized {
    fn reference(stored: &[u8], raw_len: u64) -> Option<Self>;
}

impl ReferenceDecode for Manifest {
    fn reference(stored: &[u8], raw_len: u64) -> Option<Self> {
        decode_section(stored, raw_len, "manifest", false).ok()
    }
}

impl ReferenceDecode for Metadata {
    fn reference(stored: &[u8], raw_len: u64) -> Option<Self> {
        decode_section(stored, raw_len, "metadata", false).ok()
    }
}

fn raw_sections(fx: &Fixture) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.smq");
    write(&path, fx, Some(tokenizer_spec()));
    let file = std::fs::read(&path).unwrap();
    let h = parse_header(&file);
    (
        decompress(slice(&file, h.manifest), h.manifest_raw_len),
        decompress(slice(&file, h.metadata), h.metadata_raw_len),
    )
}

#[test]
fn spec_decoder_and_reference_agree_on_corrupt_manifests() {
    let (manifest_raw, _) = raw_sections(&fixture());
    agree_on_corruptions(&manifest_raw, manifest);
}

#[test]
fn spec_decoder_and_reference_agree_on_corrupt_metadata() {
    let (_, metadata_raw) = raw_sections(&fixture());
    agree_on_corruptions(&metadata_raw, metadata);
}

#[test]
fn truncated_and_extended_sections_are_refused_by_both() {
    let (manifest_raw, metadata_raw) = raw_sections(&fixture());
    for cut in [1, 8, manifest_raw.len() / 2] {
        let short = &manifest_raw[..manifest_raw.len() - cut];
        assert!(decode_all(short, manifest).is_err());
        let stored = zstd::bulk::compress(short, 1).unwrap();
        assert!(decode_section::<Manifest>(&stored, short.len() as u64, "m", false).is_err());
    }
    let mut long = metadata_raw.clone();
    long.push(0);
    assert!(decode_all(&long, metadata).is_err());
    let stored = zstd::bulk::compress(&long, 1).unwrap();
    assert!(decode_section::<Metadata>(&stored, long.len() as u64, "m", false).is_err());
}
