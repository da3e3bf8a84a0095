//! SMQ to GGUF: rebuild the source GGUF from the SMQ's metadata section and tensor
//! directory. For sources whose padding was all zero the result is byte-identical.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use smq_format::{AtomicFile, SmqFile};

use crate::error::{Error, Result};
use crate::gguf::reader::TensorInfo;
use crate::gguf::{align_up, write_gguf, write_header, GgufLayout, TensorWrite};

/// What an export did.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportReport {
    pub bytes_written: u64,
    pub tensor_count: usize,
    /// blake3 of the written GGUF.
    pub blake3: [u8; 32],
    /// The written file hashes the same as the source the SMQ was imported from.
    pub byte_identical: bool,
    /// False when the source had non-zero padding bytes, which SMQ does not keep: the
    /// export then has every key/value and tensor exact but cannot match byte for byte.
    pub exact_possible: bool,
    pub elapsed_secs: f64,
}

impl ExportReport {
    /// A one-line explanation when the export is not byte-identical to the source.
    pub fn note(&self) -> Option<&'static str> {
        match (self.byte_identical, self.exact_possible) {
            (true, _) => None,
            (false, false) => Some(
                "source GGUF had non-zero padding bytes: metadata and tensors are exact, \
                 the file cannot be byte-identical",
            ),
            (false, true) => Some("export differs from the source GGUF (blake3 mismatch)"),
        }
    }
}

/// Writes the GGUF that `smq` was imported from to `dst` (atomically).
pub fn export(smq: &Path, dst: &Path) -> Result<ExportReport> {
    let start = Instant::now();
    let file = SmqFile::open(smq)?;
    // Never hand out a GGUF built from bytes that fail their hash.
    file.verify()?;
    let metadata = file.metadata()?;
    let manifest = file.manifest();
    let source = &manifest.source;
    // A layout from a newer minor version may not be the GGUF bytes: refuse, don't guess.
    if let Some(t) = manifest
        .tensors
        .iter()
        .find(|t| t.layout != smq_format::TensorLayout::Ggml)
    {
        return Err(Error::Invalid(format!(
            "tensor '{}' uses layout {} unknown to this smq; export it with a newer smq",
            t.name,
            t.layout.id()
        )));
    }

    let tensors: Vec<TensorWrite<'_>> = manifest
        .tensors
        .iter()
        .map(|t| TensorWrite {
            info: TensorInfo {
                name: t.name.clone(),
                ggml_type: t.ggml_type,
                shape: t.shape.clone(),
                offset: t.source_offset,
                size: t.size,
            },
            data: file.tensor_data(t),
        })
        .collect();

    // The header is a pure function of metadata and tensor infos; if it does not end
    // where the source's did, the SMQ does not describe its source faithfully.
    let infos: Vec<TensorInfo> = tensors.iter().map(|t| t.info.clone()).collect();
    let header_len = write_header(&mut std::io::sink(), source.gguf_version, &metadata, &infos)?;
    if !source.alignment.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "{}: source alignment {} is not a power of two",
            smq.display(),
            source.alignment
        )));
    }
    let data_offset = align_up(header_len, source.alignment);
    if data_offset != Some(source.data_offset) {
        return Err(Error::Invalid(format!(
            "{}: rebuilt GGUF header puts the data section at {data_offset:?}, the source had it at {}",
            smq.display(),
            source.data_offset
        )));
    }

    let layout = GgufLayout {
        version: source.gguf_version,
        alignment: source.alignment,
        file_size: Some(source.file_size),
    };
    let mut out = AtomicFile::create(dst)?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, out.file()),
        hasher: blake3::Hasher::new(),
    };
    let bytes_written = write_gguf(&mut w, &layout, &metadata, &tensors).map_err(|e| match e {
        Error::Write(io) => Error::io(dst, io),
        other => other,
    })?;
    w.flush().map_err(|e| Error::io(dst, e))?;
    let blake3 = *w.hasher.finalize().as_bytes();
    drop(w);
    out.commit()?;

    Ok(ExportReport {
        bytes_written,
        tensor_count: tensors.len(),
        blake3,
        byte_identical: blake3 == source.blake3,
        exact_possible: source.zero_padding,
        elapsed_secs: start.elapsed().as_secs_f64(),
    })
}

/// Hashes bytes as they pass through to the file.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
