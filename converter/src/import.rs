//! GGUF to SMQ: parse and validate the GGUF, hash it, and write the SMQ file with every
//! tensor's bytes copied unchanged.
//!
//! Only the tensor table is read before the copy starts (a scan that steps over the
//! metadata values); the full parse, the description and the validation run beside the
//! copy, as does the whole-file hash, on threads of their own. The parsed GGUF and the
//! source map are released while the device is still writing, before the final fsync.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use smq_format::writer::{write_smq_parts, SmqParts, WrittenSmq};
use smq_format::{map_file, SmqDescription, TensorInput};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorTable};
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
    let table = TensorTable::read(bytes).map_err(|scan_error| {
        // The full parse names a broken value more precisely than the scan can.
        with_path(src, GgufFile::parse(bytes).err().unwrap_or(scan_error))
    })?;
    let file_name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tensors = table
        .tensors
        .iter()
        .map(|t| {
            Ok(TensorInput {
                name: t.name.clone(),
                ggml_type: t.ggml_type,
                shape: t.shape.clone(),
                source_offset: t.offset,
                bytes: table.tensor_data(bytes, t)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    // The writer's deferred parts report the format's error type; a converter error
    // from them is kept here so that it reaches the caller unchanged.
    let deferred_error = Mutex::new(None);
    let keep = |e: Error| {
        let message = smq_format::Error::Write(e.to_string());
        *deferred_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        message
    };
    let cancel = AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let source_hash = s.spawn(|| hash_cancellable(bytes, &cancel));
        let parts = SmqParts {
            tensors: &tensors,
            description: Box::new(|| describe(src, &file_name, bytes, &table).map_err(keep)),
            source_blake3: Some(Box::new(move || {
                source_hash
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    .ok_or_else(|| smq_format::Error::Write("source hash cancelled".into()))
            })),
        };
        let written = write_smq_parts(dst, parts, progress);
        // On an early error the hash is not needed: stop it rather than wait for it.
        cancel.store(true, Ordering::Relaxed);
        written
    });
    let written: WrittenSmq = written.map_err(|e| {
        let kept = deferred_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        kept.unwrap_or(Error::Format(e))
    })?;
    let (source_size, tensor_count) = (table.file_size, table.tensors.len());
    drop(tensors);
    // Unmapping the source is the last big release, done while write-back of the
    // output is still in flight.
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

/// Parses the whole GGUF (`table` is its tensor table, read first) and describes it as
/// an SMQ file; the real source hash replaces the zero one later.
fn describe<'a>(
    src: &Path,
    file_name: &str,
    bytes: &[u8],
    table: &TensorTable,
) -> Result<SmqDescription<'a>> {
    let gguf = GgufFile::parse(bytes).map_err(|e| with_path(src, e))?;
    if gguf.table != *table {
        // Only possible if the file changed under the map between the two reads.
        return Err(Error::Invalid(format!(
            "{}: the tensor table changed while it was read",
            src.display()
        )));
    }
    let desc = describe_gguf(&gguf, file_name, [0; 32]).map_err(|e| with_path(src, e))?;
    Ok(SmqDescription {
        source: desc.source,
        config: desc.config,
        tokenizer: desc.tokenizer,
        metadata: Cow::Owned(gguf.metadata),
    })
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
