//! Writing an SMQ file: header, page-aligned data section with 64-byte aligned tensors,
//! then the manifest and metadata sections; atomically, hashed with blake3.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use rayon::prelude::*;

use crate::atomic::AtomicFile;
use crate::codec::encode_section;
use crate::error::{Error, Result};
use crate::header::{
    Header, Section, DATA_ALIGNMENT, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, TENSOR_ALIGNMENT,
};
use crate::manifest::{
    Manifest, Metadata, ModelConfig, SourceInfo, TensorEntry, TensorLayout, TokenizerSpec,
};
use crate::validate::{validate_manifest, validate_metadata};
use crate::GgmlType;

/// One tensor to write: its bytes are copied exactly as given.
pub struct TensorInput<'a> {
    pub name: String,
    pub ggml_type: GgmlType,
    pub shape: Vec<u64>,
    /// Offset of the tensor in the source GGUF's data section.
    pub source_offset: u64,
    pub bytes: &'a [u8],
}

/// Rounds `v` up to a multiple of `align` (a power of two), `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Writes an SMQ file at `path` atomically and returns the manifest it wrote.
/// `progress(done, total)` is called as tensor bytes are written.
pub fn write_smq(
    path: &Path,
    source: SourceInfo,
    config: ModelConfig,
    tokenizer: Option<TokenizerSpec>,
    metadata: &Metadata,
    tensors: &[TensorInput<'_>],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Manifest> {
    // Lay tensors out in the given order; offsets are relative to the data section.
    let mut entries = Vec::with_capacity(tensors.len());
    let mut end = 0u64;
    for t in tensors {
        let offset = align_up(end, TENSOR_ALIGNMENT)
            .ok_or_else(|| Error::Write("tensor offsets overflow".into()))?;
        let size = t.bytes.len() as u64;
        end = offset
            .checked_add(size)
            .ok_or_else(|| Error::Write("tensor offsets overflow".into()))?;
        entries.push(TensorEntry {
            name: t.name.clone(),
            ggml_type: t.ggml_type,
            shape: t.shape.clone(),
            layout: TensorLayout::Ggml,
            offset,
            size,
            source_offset: t.source_offset,
            blake3: [0; 32],
        });
    }
    let data_len = end;
    // Each tensor hash is independent: hash them on all cores (large ones split further).
    let hashes: Vec<[u8; 32]> = tensors.par_iter().map(|t| hash_bytes(t.bytes)).collect();
    for (e, h) in entries.iter_mut().zip(hashes) {
        e.blake3 = h;
    }
    let manifest = Manifest {
        source,
        config,
        tokenizer,
        tensors: entries,
    };
    // Refuse to write what a reader would refuse to open.
    validate_manifest(&manifest, data_len).map_err(|e| Error::Write(e.to_string()))?;
    validate_metadata(metadata).map_err(|e| Error::Write(e.to_string()))?;

    let (manifest_bytes, manifest_raw_len) = encode_section(&manifest, "manifest")?;
    let (metadata_bytes, metadata_raw_len) = encode_section(metadata, "metadata")?;

    let mut out = AtomicFile::create(path)?;
    let io_err = |out: &AtomicFile, e: std::io::Error| Error::io(out.temp_path(), e);
    // Header placeholder, then zeros up to the page-aligned data section.
    write_zeros(&mut out, DATA_ALIGNMENT).map_err(|e| io_err(&out, e))?;
    let mut pos = 0u64;
    for (t, e) in tensors.iter().zip(&manifest.tensors) {
        write_zeros(&mut out, e.offset - pos).map_err(|e| io_err(&out, e))?;
        out.write_all(t.bytes).map_err(|e| io_err(&out, e))?;
        pos = e.offset + e.size;
        progress(pos, data_len);
    }
    let data = Section {
        offset: DATA_ALIGNMENT,
        len: data_len,
    };
    let manifest_section = Section {
        offset: DATA_ALIGNMENT + data_len,
        len: manifest_bytes.len() as u64,
    };
    let metadata_section = Section {
        offset: manifest_section.offset + manifest_section.len,
        len: metadata_bytes.len() as u64,
    };
    out.write_all(&manifest_bytes)
        .and_then(|_| out.write_all(&metadata_bytes))
        .map_err(|e| io_err(&out, e))?;
    let header = Header {
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
        flags: 0,
        file_len: metadata_section.offset + metadata_section.len,
        data,
        manifest: manifest_section,
        manifest_raw_len,
        metadata: metadata_section,
        metadata_raw_len,
        manifest_blake3: *blake3::hash(&manifest_bytes).as_bytes(),
        metadata_blake3: *blake3::hash(&metadata_bytes).as_bytes(),
    };
    out.seek(SeekFrom::Start(0))
        .and_then(|_| out.write_all(&header.encode()))
        .map_err(|e| io_err(&out, e))?;
    out.commit()?;
    Ok(manifest)
}

/// blake3 of a byte slice; large slices use blake3's multi-threaded mode.
pub fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    // Below ~128 KiB the thread hand-off costs more than it saves.
    if bytes.len() >= 128 * 1024 {
        *blake3::Hasher::new()
            .update_rayon(bytes)
            .finalize()
            .as_bytes()
    } else {
        *blake3::hash(bytes).as_bytes()
    }
}

/// Writes `n` zero bytes (padding).
pub fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

const _: () = assert!(HEADER_LEN as u64 <= DATA_ALIGNMENT);
