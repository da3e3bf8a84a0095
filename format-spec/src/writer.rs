//! Writing an SMQ file: header, page-aligned data section with 64-byte aligned tensors,
//! then the manifest and metadata sections; atomically, hashed with blake3.
//!
//! The data section is copied out in large writes while other threads hash the tensors,
//! produce the description (an importer parses its source's metadata then), validate it
//! and encode the manifest and metadata sections, so that the copy (which feeds the
//! device) never waits for them. Write-back to the device is started as the data goes out,
//! which leaves the final fsync little to wait for.

use std::borrow::Cow;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::atomic::{start_writeback, AtomicFile};
use crate::codec::encode_section;
use crate::error::{Error, Result};
use crate::header::{
    Header, Section, DATA_ALIGNMENT, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, TENSOR_ALIGNMENT,
};
use crate::manifest::{
    Manifest, Metadata, ModelConfig, SourceInfo, TensorEntry, TensorLayout, TokenizerSpec,
};
use crate::span_writer::{write_spans, Part};
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

/// A part of the file produced when the writer needs it, on a helper thread (see
/// [`SmqParts`]).
pub type Deferred<'a, T> = Box<dyn FnOnce() -> Result<T> + Send + 'a>;

/// Produces the source file's blake3 when the writer needs it (see [`SmqParts`]).
pub type DeferredHash<'a> = Deferred<'a, [u8; 32]>;

/// Everything in an SMQ file besides the tensors.
pub struct SmqDescription<'a> {
    pub source: SourceInfo,
    pub config: ModelConfig,
    pub tokenizer: Option<TokenizerSpec>,
    pub metadata: Cow<'a, Metadata>,
}

/// Everything an SMQ file is written from (see [`write_smq_parts`]).
pub struct SmqParts<'a> {
    pub tensors: &'a [TensorInput<'a>],
    /// The rest of the file. Called on a helper thread as soon as the copy of the tensor
    /// data starts, so a caller can parse it while the data goes out. Nothing is
    /// committed before it is known and validated.
    pub description: Deferred<'a, SmqDescription<'a>>,
    /// When set, replaces `description.source.blake3`. It is called on a helper thread
    /// only once the tensor hashes are done, so the caller can hash the source file
    /// concurrently and hand over the result here.
    pub source_blake3: Option<DeferredHash<'a>>,
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
        tensors,
        description: Box::new(move || {
            Ok(SmqDescription {
                source,
                config,
                tokenizer,
                metadata: Cow::Borrowed(metadata),
            })
        }),
        source_blake3: None,
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
        tensors,
        description,
        source_blake3,
    } = parts;
    let (entries, data_len) = layout(tensors)?;
    let mut out = AtomicFile::create(path)?;
    let parts: Vec<Part<'_>> = tensors
        .iter()
        .zip(&entries)
        .map(|(t, e)| Part {
            offset: DATA_ALIGNMENT + e.offset,
            bytes: t.bytes,
        })
        .collect();
    // Set when the sections cannot be finished: the copy is pointless then.
    let stop = AtomicBool::new(false);
    let (data, sections) = std::thread::scope(|s| {
        // The copy below is the one serial stream feeding the device (buffered writes to
        // one file do not run in parallel), so everything else runs beside it: the
        // tensor hashes on one thread; the description, its validation and both encoded
        // sections on another.
        let hashes = s.spawn(|| tensor_hashes(tensors, &stop));
        let sections = s.spawn(|| {
            let sections = finish_sections(entries, data_len, description, hashes, source_blake3);
            if sections.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            sections
        });
        let data = write_data(&mut out, &parts, data_len, progress, &stop);
        if data.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        (data, join(sections))
    });
    // A failed copy stops the hashing, so its error comes first; a failed description
    // stops the copy early (without an error of its own).
    data.map_err(|e| Error::io(out.temp_path(), e))?;
    let Sections {
        manifest,
        manifest_bytes,
        manifest_raw_len,
        metadata_bytes,
        metadata_raw_len,
    } = sections?;

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

/// The finished manifest and both encoded sections (stored bytes, decoded length).
struct Sections {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    manifest_raw_len: u64,
    metadata_bytes: Vec<u8>,
    metadata_raw_len: u64,
}

/// blake3 of every tensor, on one thread (the other core is busy copying the same bytes
/// out); `None` once `stop` is set.
fn tensor_hashes(tensors: &[TensorInput<'_>], stop: &AtomicBool) -> Option<Vec<[u8; 32]>> {
    let mut hashes = Vec::with_capacity(tensors.len());
    for t in tensors {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        hashes.push(*blake3::hash(t.bytes).as_bytes());
    }
    Some(hashes)
}

/// Produces and validates the description, encodes the metadata section, then fills in
/// the tensor hashes and the source hash and encodes the manifest.
fn finish_sections(
    entries: Vec<TensorEntry>,
    data_len: u64,
    description: Deferred<'_, SmqDescription<'_>>,
    hashes: std::thread::ScopedJoinHandle<'_, Option<Vec<[u8; 32]>>>,
    source_blake3: Option<DeferredHash<'_>>,
) -> Result<Sections> {
    let SmqDescription {
        source,
        config,
        tokenizer,
        metadata,
    } = description()?;
    let mut manifest = Manifest {
        source,
        config,
        tokenizer,
        tensors: entries,
    };
    // Refuse to write what a reader would refuse to open. Hashes are not part of the
    // validation, so checking before they are known is complete.
    validate_manifest(&manifest, data_len).map_err(|e| Error::Write(e.to_string()))?;
    validate_metadata(&metadata).map_err(|e| Error::Write(e.to_string()))?;
    let (metadata_bytes, metadata_raw_len) = encode_section(&*metadata, "metadata")?;
    // An owned metadata (a whole vocabulary) is released here, beside the copy.
    drop(metadata);

    let hashes = join(hashes).ok_or_else(|| Error::Write("tensor hashing stopped".into()))?;
    for (e, h) in manifest.tensors.iter_mut().zip(hashes) {
        e.blake3 = h;
    }
    if let Some(h) = source_blake3 {
        manifest.source.blake3 = h()?;
    }
    let (manifest_bytes, manifest_raw_len) = encode_section(&manifest, "manifest")?;
    Ok(Sections {
        manifest,
        manifest_bytes,
        manifest_raw_len,
        metadata_bytes,
        metadata_raw_len,
    })
}

/// Writes the header placeholder, the zeros up to the data section and the data section
/// itself: the tensors' `parts` at their file offsets, zero padding between, in aligned
/// spans (see [`span_writer`]). Write-back is requested after every span, from
/// a thread of its own so that the kernel's block allocation and I/O submission for it
/// run beside the copy. Returns early, without an error, once `stop` is set.
fn write_data(
    out: &mut AtomicFile,
    parts: &[Part<'_>],
    data_len: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let flusher_file = out.file().try_clone()?;
    let (requests, pending) = std::sync::mpsc::channel::<(u64, u64)>();
    std::thread::scope(|s| {
        s.spawn(move || {
            for (offset, len) in pending {
                start_writeback(&flusher_file, offset, len);
            }
        });
        // File offset up to which write-back has been requested.
        let mut flushed = 0u64;
        let written = write_spans(out.file(), parts, DATA_ALIGNMENT + data_len, |written| {
            // The flusher only ends with this scope, so the send cannot fail.
            let _ = requests.send((flushed, written - flushed));
            flushed = written;
            progress(written.saturating_sub(DATA_ALIGNMENT), data_len);
            !stop.load(Ordering::Relaxed)
        });
        // Closing the channel lets the flusher finish.
        drop(requests);
        written
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
        let big = (2 * crate::span_writer::SPAN as usize) / 4 + 5;
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
            tensors,
            description: Box::new(|| {
                Ok(SmqDescription {
                    source: source(),
                    config: ModelConfig::default(),
                    tokenizer: None,
                    metadata: Cow::Borrowed(metadata),
                })
            }),
            source_blake3,
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
        // Progress rises to the data length, once per span of the file.
        let seen = seen.into_inner().unwrap();
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(seen.last(), Some(&(pos as u64, pos as u64)));
        let spans = (DATA_ALIGNMENT + pos as u64).div_ceil(crate::span_writer::SPAN);
        assert!(spans >= 3);
        assert_eq!(seen.len() as u64, spans);
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
        // A description that fails stops the copy and leaves nothing either.
        let failing = SmqParts {
            tensors: &tensors,
            description: Box::new(|| Err(Error::Write("no description".into()))),
            source_blake3: None,
        };
        let err = write_smq_parts(&path, failing, &|_, _| {})
            .err()
            .expect("a failing description fails the write");
        assert!(err.to_string().contains("no description"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
