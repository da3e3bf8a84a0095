//! GGUF to SMQ: parse and validate the GGUF, hash it, and write the SMQ file with every
//! tensor's bytes copied unchanged.
//!
//! The whole-file hash runs on its own thread from the start, beside parsing and the
//! writer's copy, and the parsed GGUF and the source map are released while the device
//! is still writing, before the final fsync.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use smq_format::writer::{write_smq_parts, SmqParts, WrittenSmq};
use smq_format::{map_file, TensorInput};

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
    let cancel = AtomicBool::new(false);
    let (written, source_size, tensor_count) = std::thread::scope(|s| {
        let source_hash = s.spawn(|| hash_cancellable(bytes, &cancel));
        let written = write_from(src, dst, bytes, progress, move || {
            source_hash
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        // On an early error the hash is not needed: stop it rather than wait for it.
        cancel.store(true, Ordering::Relaxed);
        written
    })?;
    // The parsed GGUF is gone by now; unmapping the source is the last big release,
    // done while write-back of the output is still in flight.
    drop(map);
    let manifest = written.commit()?;
    let smq_size = std::fs::metadata(dst).map_err(|e| Error::io(dst, e))?.len();

    Ok(ImportReport {
        source_size,
        smq_size,
        tensor_count,
        source_blake3: manifest.source.blake3,
        elapsed_secs: start.elapsed().as_secs_f64(),
    })
}

/// Parses the mapped GGUF `bytes` and writes (without committing) the SMQ file;
/// `source_hash` yields the whole file's blake3 once the writer needs it. Returns the
/// written file, the source size and the tensor count.
fn write_from(
    src: &Path,
    dst: &Path,
    bytes: &[u8],
    progress: &(dyn Fn(u64, u64) + Sync),
    source_hash: impl FnOnce() -> Option<[u8; 32]> + Send,
) -> Result<(WrittenSmq, u64, usize)> {
    let gguf = GgufFile::parse(bytes).map_err(|e| with_path(src, e))?;
    let file_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The real hash replaces this zero one (`source_blake3` below).
    let desc = describe_gguf(&gguf, &file_name, [0; 32]).map_err(|e| with_path(src, e))?;

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

    let parts = SmqParts {
        source: desc.source,
        source_blake3: Some(Box::new(move || {
            source_hash().ok_or_else(|| smq_format::Error::Write("source hash cancelled".into()))
        })),
        config: desc.config,
        tokenizer: desc.tokenizer,
        metadata: &gguf.metadata,
        tensors: &tensors,
    };
    let written = write_smq_parts(dst, parts, progress)?;
    Ok((written, gguf.file_size, gguf.tensors.len()))
}

/// blake3 of a whole file, hashed on all cores over a read-only map.
pub fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let map = map_file(path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(&map);
    Ok(*hasher.finalize().as_bytes())
}

/// blake3 of `bytes` on the calling thread, in steps so that it can stop early (`None`)
/// once `cancel` is set.
fn hash_cancellable(bytes: &[u8], cancel: &AtomicBool) -> Option<[u8; 32]> {
    // Large enough for blake3's SIMD paths, small enough to stop within milliseconds.
    const STEP: usize = 16 << 20;
    let mut hasher = blake3::Hasher::new();
    for piece in bytes.chunks(STEP) {
        if cancel.load(Ordering::Relaxed) {
            return None;
        }
        hasher.update(piece);
    }
    Some(*hasher.finalize().as_bytes())
}

/// Prefixes parse and metadata errors with the file they came from.
pub(crate) fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Gguf(msg) => Error::Gguf(format!("{}: {msg}", path.display())),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stepped_hash_is_blake3_and_stops_when_cancelled() {
        // Spans several steps and ends mid-step.
        let bytes: Vec<u8> = (0..(40u32 << 20) + 777).map(|i| (i % 251) as u8).collect();
        let go = AtomicBool::new(false);
        assert_eq!(
            hash_cancellable(&bytes, &go),
            Some(*blake3::hash(&bytes).as_bytes())
        );
        assert_eq!(
            hash_cancellable(&[], &go),
            Some(*blake3::hash(&[]).as_bytes())
        );
        let stop = AtomicBool::new(true);
        assert_eq!(hash_cancellable(&bytes, &stop), None);
    }

    #[test]
    fn unparsable_source_fails_without_output() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("bad.gguf");
        std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
        let dst = dir.path().join("out.smq");
        let err = import(&src, &dst, &|_, _| {}).unwrap_err();
        assert!(err.to_string().contains("bad.gguf"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
