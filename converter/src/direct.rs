//! Running a GGUF in place: the same manifest import would build, but pointing into the
//! GGUF's own data section instead of an SMQ file's.

use std::path::Path;

use smq_format::{map_file, Manifest, MappedModel, TensorEntry, TensorLayout};

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::import::with_path;
use crate::manifest_from_gguf::describe_gguf;

/// Maps and validates a GGUF and describes it as a [`MappedModel`]: tensor offsets are the
/// GGUF's data-relative offsets, `data_offset` is the GGUF data section's start. Nothing is
/// hashed, so every blake3 field (tensors and source) is zero.
pub fn open_gguf_direct(path: &Path) -> Result<MappedModel> {
    let map = map_file(path)?;
    let gguf = GgufFile::parse(&map).map_err(|e| with_path(path, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let desc = describe_gguf(&gguf, &file_name, [0; 32]).map_err(|e| with_path(path, e))?;
    let tensors = gguf
        .tensors
        .iter()
        .map(|t| TensorEntry {
            name: t.name.clone(),
            ggml_type: t.ggml_type,
            shape: t.shape.clone(),
            layout: TensorLayout::Ggml,
            offset: t.offset,
            size: t.size,
            source_offset: t.offset,
            blake3: [0; 32],
        })
        .collect();
    Ok(MappedModel {
        manifest: Manifest {
            source: desc.source,
            config: desc.config,
            tokenizer: desc.tokenizer,
            tensors,
        },
        data_offset: gguf.data_offset,
        map,
    })
}
