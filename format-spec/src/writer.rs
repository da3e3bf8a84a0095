//! Writing an SMQ file: header, page-aligned data section with 64-byte aligned tensors,
//! then the manifest and metadata sections; atomically, hashed with blake3.
//!
//! The data section is copied out in large writes while other threads hash the tensors,
//! encode the manifest and encode the metadata, so that the copy (which feeds the
//! device) never waits for them. Write-back to the device is started as the data goes out,
//! which leaves the final fsync little to wait for.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::atomic::{start_writeback, AtomicFile};
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

/// Produces the source file's blake3 when the writer needs it (see [`SmqParts`]).
pub type DeferredHash<'a> = Box<dyn FnOnce() -> Result<[u8; 32]> + Send + 'a>;

/// Everything an SMQ file is written from (see [`write_smq_parts`]).
pub struct SmqParts<'a> {
    pub source: SourceInfo,
    /// When set, replaces `source.blake3`. It is called on a helper thread only once the
    /// tensor hashes are done, so the caller can hash the source file concurrently and
    /// hand over the result here.
    pub source_blake3: Option<DeferredHash<'a>>,
    pub config: ModelConfig,
    pub tokenizer: Option<TokenizerSpec>,
    pub metadata: &'a Metadata,
    pub tensors: &'a [TensorInput<'a>],
}

/// A completely written SMQ file that is not yet durable nor at its path: [`commit`]
/// makes it both. Dropped instead, it removes its temp file.
///
/// [`commit`]: WrittenSmq::commit
#[must_use = "nothing appears at the target path until the file is committed"]
pub struct WrittenSmq {
    pub manifest: Manifest,
    file: AtomicFile,
}

impl WrittenSmq {
    /// fsyncs the file, renames it onto the target path and fsyncs the directory.
    pub fn commit(self) -> Result<Manifest> {
        self.file.commit()?;
        Ok(self.manifest)
    }
}

/// Largest single write of tensor bytes; bounds how long one system call runs between
/// progress reports and write-back requests.
const MAX_WRITE: usize = 8 << 20;

/// Bytes written between requests to start write-back to the device.
const WRITEBACK_STEP: u64 = 8 << 20;

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
    let parts = SmqParts {
        source,
        source_blake3: None,
        config,
        tokenizer,
        metadata,
        tensors,
    };
    write_smq_parts(path, parts, progress)?.commit()
}

/// Writes an SMQ file into a temp file beside `path`; [`WrittenSmq::commit`] then puts it
/// in place. Splitting the two lets a caller release its inputs while the device is still
/// busy. `progress(done, total)` is called as tensor bytes are written.
pub fn write_smq_parts(
    path: &Path,
    parts: SmqParts<'_>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<WrittenSmq> {
    let SmqParts {
        source,
        source_blake3,
        config,
        tokenizer,
        metadata,
        tensors,
    } = parts;
    let (entries, data_len) = layout(tensors)?;
    let manifest = Manifest {
        source,
        config,
        tokenizer,
        tensors: entries,
    };
    // Refuse to write what a reader would refuse to open. Hashes are not part of the
    // validation, so checking before they are known is complete.
    validate_manifest(&manifest, data_len).map_err(|e| Error::Write(e.to_string()))?;
    validate_metadata(metadata).map_err(|e| Error::Write(e.to_string()))?;

    let mut out = AtomicFile::create(path)?;
    let offsets: Vec<u64> = manifest.tensors.iter().map(|e| e.offset).collect();
    let (data, metadata_enc, manifest_enc) = std::thread::scope(|s| {
        // The copy below is the one serial stream feeding the device (buffered writes to
        // one file do not run in parallel), so everything else runs beside it: hashing
        // and then the manifest (which holds the hashes) on one thread, the metadata
        // section on another.
        let manifest_enc = s.spawn(move || finish_manifest(manifest, tensors, source_blake3));
        let metadata_enc = s.spawn(|| encode_section(metadata, "metadata"));
        let data = write_data(&mut out, tensors, &offsets, data_len, progress);
        (data, join(metadata_enc), join(manifest_enc))
    });
    data.map_err(|e| Error::io(out.temp_path(), e))?;
    let (metadata_bytes, metadata_raw_len) = metadata_enc?;
    let (manifest, manifest_bytes, manifest_raw_len) = manifest_enc?;

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
    out.write_all(&manifest_bytes)
        .and_then(|_| out.write_all(&metadata_bytes))
        .and_then(|_| out.seek(SeekFrom::Start(0)))
        .and_then(|_| out.write_all(&header.encode()))
        .map_err(|e| Error::io(out.temp_path(), e))?;
    out.start_writeback(0, header.file_len);
    Ok(WrittenSmq {
        manifest,
        file: out,
    })
}

/// Waits for a helper thread, re-raising its panic here.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Lays tensors out in the given order, each 64-byte aligned; offsets are relative to
/// the data section. Returns the entries (hashes still zero) and the data section length.
fn layout(tensors: &[TensorInput<'_>]) -> Result<(Vec<TensorEntry>, u64)> {
    let overflow = || Error::Write("tensor offsets overflow".into());
    let mut entries = Vec::with_capacity(tensors.len());
    let mut end = 0u64;
    for t in tensors {
        let offset = align_up(end, TENSOR_ALIGNMENT).ok_or_else(overflow)?;
        let size = t.bytes.len() as u64;
        end = offset.checked_add(size).ok_or_else(overflow)?;
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
    Ok((entries, end))
}

/// Fills in the tensor hashes and the source hash, then encodes the manifest. Returns
/// the finished manifest, its stored bytes and its decoded length.
fn finish_manifest(
    mut manifest: Manifest,
    tensors: &[TensorInput<'_>],
    source_blake3: Option<DeferredHash<'_>>,
) -> Result<(Manifest, Vec<u8>, u64)> {
    for (e, t) in manifest.tensors.iter_mut().zip(tensors) {
        // One thread: the other core is busy copying the same bytes out.
        e.blake3 = *blake3::hash(t.bytes).as_bytes();
    }
    if let Some(h) = source_blake3 {
        manifest.source.blake3 = h()?;
    }
    let (bytes, raw_len) = encode_section(&manifest, "manifest")?;
    Ok((manifest, bytes, raw_len))
}

/// Writes the header placeholder, the zeros up to the data section and the data section
/// itself: tensors at their offsets (relative to the data section), zero padding between.
/// Write-back is requested every few MB, from a thread of its own so that the kernel's
/// block allocation and I/O submission for it run beside the copy.
fn write_data(
    out: &mut AtomicFile,
    tensors: &[TensorInput<'_>],
    offsets: &[u64],
    data_len: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> std::io::Result<()> {
    let flusher_file = out.file().try_clone()?;
    let (requests, pending) = std::sync::mpsc::channel::<(u64, u64)>();
    std::thread::scope(|s| {
        s.spawn(move || {
            for (offset, len) in pending {
                start_writeback(&flusher_file, offset, len);
            }
        });
        write_zeros(out, DATA_ALIGNMENT)?;
        let mut pos = 0u64;
        // File offset up to which write-back has been requested.
        let mut flushed = 0u64;
        for (t, &offset) in tensors.iter().zip(offsets) {
            write_zeros(out, offset - pos)?;
            pos = offset;
            for piece in t.bytes.chunks(MAX_WRITE) {
                out.write_all(piece)?;
                pos += piece.len() as u64;
                let written = DATA_ALIGNMENT + pos;
                if written - flushed >= WRITEBACK_STEP {
                    // The flusher only ends with this scope, so the send cannot fail.
                    let _ = requests.send((flushed, written - flushed));
                    flushed = written;
                }
                progress(pos, data_len);
            }
        }
        // Closing the channel lets the flusher finish.
        drop(requests);
        Ok(())
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MetadataEntry, MetadataValue};
    use crate::SmqFile;

    fn source() -> SourceInfo {
        SourceInfo {
            file_name: "s.gguf".into(),
            file_size: 1,
            blake3: [7; 32],
            gguf_version: 3,
            alignment: 32,
            data_offset: 64,
            zero_padding: true,
        }
    }

    fn metadata() -> Metadata {
        Metadata {
            entries: vec![MetadataEntry {
                key: "general.architecture".into(),
                value: MetadataValue::String("llama".into()),
            }],
        }
    }

    /// A tensor larger than one write and one write-back step, between two small ones
    /// whose odd sizes need padding.
    fn tensor_bytes() -> Vec<(GgmlType, Vec<u64>, Vec<u8>)> {
        let mk = |n: usize, seed: u32| -> Vec<u8> {
            (0..n as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed as u8)
                .collect()
        };
        let big = (MAX_WRITE + WRITEBACK_STEP as usize) / 4 + 5;
        vec![
            (GgmlType::F32, vec![3], mk(12, 1)),
            (GgmlType::F32, vec![big as u64], mk(big * 4, 2)),
            (GgmlType::F16, vec![7], mk(14, 3)),
        ]
    }

    fn inputs(owned: &[(GgmlType, Vec<u64>, Vec<u8>)]) -> Vec<TensorInput<'_>> {
        owned
            .iter()
            .enumerate()
            .map(|(i, (ty, shape, bytes))| TensorInput {
                name: format!("t{i}"),
                ggml_type: *ty,
                shape: shape.clone(),
                source_offset: i as u64 * 64,
                bytes,
            })
            .collect()
    }

    fn parts<'a>(
        tensors: &'a [TensorInput<'a>],
        metadata: &'a Metadata,
        source_blake3: Option<DeferredHash<'a>>,
    ) -> SmqParts<'a> {
        SmqParts {
            source: source(),
            source_blake3,
            config: ModelConfig::default(),
            tokenizer: None,
            metadata,
            tensors,
        }
    }

    #[test]
    fn large_tensors_are_written_whole_with_zero_padding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.smq");
        let owned = tensor_bytes();
        let seen = std::sync::Mutex::new(Vec::new());
        let m = write_smq(
            &path,
            source(),
            ModelConfig::default(),
            None,
            &metadata(),
            &inputs(&owned),
            &|done, total| seen.lock().unwrap().push((done, total)),
        )
        .unwrap();
        let f = SmqFile::open(&path).unwrap();
        f.verify().unwrap();
        let file = std::fs::read(&path).unwrap();
        let data = f.header().data.offset as usize;
        let mut pos = 0;
        for ((_, _, bytes), e) in owned.iter().zip(&m.tensors) {
            assert_eq!(e.blake3, *blake3::hash(bytes).as_bytes());
            assert_eq!(f.tensor_data(e), &bytes[..]);
            let at = data + e.offset as usize;
            assert!(file[data + pos..at].iter().all(|&b| b == 0), "padding");
            pos = (e.offset + e.size) as usize;
        }
        assert!(file[HEADER_LEN..data].iter().all(|&b| b == 0));
        // Progress rises to the data length and the big tensor reports in steps.
        let seen = seen.into_inner().unwrap();
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(seen.last(), Some(&(pos as u64, pos as u64)));
        assert!(seen.len() > owned.len());
    }

    #[test]
    fn deferred_source_hash_gives_the_same_file_as_a_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let owned = tensor_bytes();
        let tensors = inputs(&owned);
        let meta = metadata();
        let known = dir.path().join("known.smq");
        let mut src = source();
        src.blake3 = [42; 32];
        write_smq(
            &known,
            src,
            ModelConfig::default(),
            None,
            &meta,
            &tensors,
            &|_, _| {},
        )
        .unwrap();
        let deferred = dir.path().join("deferred.smq");
        let written = write_smq_parts(
            &deferred,
            parts(&tensors, &meta, Some(Box::new(|| Ok([42; 32])))),
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(written.manifest.source.blake3, [42; 32]);
        // Not visible before the commit.
        assert!(!deferred.exists());
        let m = written.commit().unwrap();
        assert_eq!(m.source.blake3, [42; 32]);
        assert_eq!(
            std::fs::read(&known).unwrap(),
            std::fs::read(&deferred).unwrap()
        );
    }

    #[test]
    fn uncommitted_or_failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let owned = tensor_bytes();
        let tensors = inputs(&owned);
        let meta = metadata();
        let path = dir.path().join("m.smq");
        drop(write_smq_parts(&path, parts(&tensors, &meta, None), &|_, _| {}).unwrap());
        let failing: DeferredHash = Box::new(|| Err(Error::Write("no hash".into())));
        let err = write_smq_parts(&path, parts(&tensors, &meta, Some(failing)), &|_, _| {})
            .err()
            .expect("a failing source hash fails the write");
        assert!(err.to_string().contains("no hash"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
