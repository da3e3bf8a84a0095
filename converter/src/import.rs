//! GGUF to SMQ: parse and validate the GGUF, hash it, and write the SMQ file with every
//! tensor's bytes copied unchanged.

use std::path::Path;
use std::time::Instant;

use smq_format::{map_file, write_smq, TensorInput};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::manifest_from_gguf::describe_gguf;

/// What an import did.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportReport {
    pub source_size: u64,
    pub smq_size: u64,
    pub tensor_count: usize,
    /// blake3 of the whole source file.
    pub source_blake3: [u8; 32],
    pub elapsed_secs: f64,
}

/// Converts the GGUF at `src` into an SMQ file at `dst` (written atomically).
/// `progress(done, total)` reports tensor bytes written.
pub fn import(
    src: &Path,
    dst: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ImportReport> {
    let start = Instant::now();
    let map = map_file(src)?;
    let bytes: &[u8] = &map;
    let gguf = GgufFile::parse(bytes).map_err(|e| with_path(src, e))?;
    let source_blake3 = hash_bytes(bytes);

    let file_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let desc = describe_gguf(&gguf, &file_name, source_blake3).map_err(|e| with_path(src, e))?;

    let tensors = gguf
        .tensors
        .iter()
        .map(|t| {
            Ok(TensorInput {
                name: t.name.clone(),
                ggml_type: t.ggml_type,
                shape: t.shape.clone(),
                source_offset: t.offset,
                bytes: gguf.tensor_data(bytes, t)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    write_smq(
        dst,
        desc.source,
        desc.config,
        desc.tokenizer,
        &gguf.metadata,
        &tensors,
        progress,
    )?;
    let smq_size = std::fs::metadata(dst).map_err(|e| Error::io(dst, e))?.len();

    Ok(ImportReport {
        source_size: gguf.file_size,
        smq_size,
        tensor_count: gguf.tensors.len(),
        source_blake3,
        elapsed_secs: start.elapsed().as_secs_f64(),
    })
}

/// blake3 of a whole file, hashed on all cores over a read-only map.
pub fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let map = map_file(path)?;
    Ok(hash_bytes(&map))
}

fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(bytes);
    *hasher.finalize().as_bytes()
}

/// Prefixes parse and metadata errors with the file they came from.
pub(crate) fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Gguf(msg) => Error::Gguf(format!("{}: {msg}", path.display())),
        other => other,
    }
}
