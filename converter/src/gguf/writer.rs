//! A GGUF writer: the exact inverse of the reader for files whose padding is zero.
//!
//! Two levels: [`write_gguf`] writes a header, metadata and tensor infos exactly as given
//! (offsets included) followed by the tensor bytes at those offsets, which is what export
//! needs to reproduce a source file; [`GgufBuilder`] lays tensors out itself and is the
//! convenient way to build synthetic files in tests. [`write_header`] alone lets tests
//! write deliberately inconsistent headers.

use std::io::Write;

use smq_format::{GgmlType, Metadata, MetadataEntry, MetadataValue};

use super::reader::{align_up, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};

/// How the file is laid out, beyond its metadata and tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgufLayout {
    /// GGUF version written in the header (the encoding is the same for 2 and 3).
    pub version: u32,
    /// Alignment of the data section start. The caller's metadata must carry a matching
    /// `general.alignment` when it is not 32 (not checked, so tests can write mismatches).
    pub alignment: u64,
    /// Pad the file with zeros up to this length (it is an error if the content is longer).
    /// `None` pads the end to the alignment, as the gguf-py and ggml writers do.
    pub file_size: Option<u64>,
}

/// One tensor to write: its info (with a data-relative offset) and its bytes.
#[derive(Clone, Debug)]
pub struct TensorWrite<'a> {
    pub info: TensorInfo,
    pub data: &'a [u8],
}

/// Writes the header, metadata and tensor infos exactly as given; returns the bytes
/// written (the offset where the tensor-info table ends). Nothing is validated.
pub fn write_header<W: Write>(
    w: &mut W,
    version: u32,
    metadata: &Metadata,
    tensors: &[TensorInfo],
) -> Result<u64> {
    let mut w = Counting {
        inner: w,
        written: 0,
    };
    w.write_all(&GGUF_MAGIC)?;
    w.write_all(&version.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(metadata.entries.len() as u64).to_le_bytes())?;
    for e in &metadata.entries {
        write_string(&mut w, &e.key)?;
        w.write_all(&e.value.type_id().to_le_bytes())?;
        write_value(&mut w, &e.value, &e.key)?;
    }
    for t in tensors {
        write_string(&mut w, &t.name)?;
        w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
        for d in &t.shape {
            w.write_all(&d.to_le_bytes())?;
        }
        w.write_all(&t.ggml_type.id().to_le_bytes())?;
        w.write_all(&t.offset.to_le_bytes())?;
    }
    Ok(w.written)
}

/// Writes a whole GGUF file: header, zero padding to the aligned data section, each
/// tensor's bytes at its data-relative offset (gaps zero-filled), then zeros up to
/// `layout.file_size` (or to the alignment). Tensors may be listed in any order but must not overlap, and each
/// tensor's bytes must have the length its type and shape imply. Returns the file length.
pub fn write_gguf<W: Write>(
    w: &mut W,
    layout: &GgufLayout,
    metadata: &Metadata,
    tensors: &[TensorWrite<'_>],
) -> Result<u64> {
    let a = layout.alignment;
    if a == 0 || !a.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "GGUF alignment {a} is not a nonzero power of two"
        )));
    }
    for t in tensors {
        let expected = t.info.ggml_type.tensor_bytes(&t.info.shape);
        if expected != Some(t.data.len() as u64) {
            return Err(Error::Invalid(format!(
                "tensor `{}`: {} bytes given, its {} shape {:?} needs {expected:?}",
                t.info.name,
                t.data.len(),
                t.info.ggml_type,
                t.info.shape
            )));
        }
    }

    let infos: Vec<TensorInfo> = tensors.iter().map(|t| t.info.clone()).collect();
    let info_end = write_header(w, layout.version, metadata, &infos)?;
    let data_offset =
        align_up(info_end, a).ok_or_else(|| Error::Invalid("data offset overflows".into()))?;
    write_zeros(w, data_offset - info_end)?;

    let mut order: Vec<&TensorWrite<'_>> = tensors.iter().collect();
    order.sort_by_key(|t| t.info.offset);
    let mut pos = 0u64;
    for t in order {
        if t.data.is_empty() {
            continue;
        }
        if t.info.offset < pos {
            return Err(Error::Invalid(format!(
                "tensor `{}` at data offset {} overlaps the previous tensor",
                t.info.name, t.info.offset
            )));
        }
        write_zeros(w, t.info.offset - pos)?;
        w.write_all(t.data)?;
        pos = t.info.offset + t.data.len() as u64;
    }

    let end = data_offset
        .checked_add(pos)
        .ok_or_else(|| Error::Invalid("file length overflows".into()))?;
    match layout.file_size {
        Some(size) if size < end => Err(Error::Invalid(format!(
            "GGUF content takes {end} bytes, more than the requested file size {size}"
        ))),
        Some(size) => {
            write_zeros(w, size - end)?;
            Ok(size)
        }
        None => {
            let padded =
                align_up(end, a).ok_or_else(|| Error::Invalid("file length overflows".into()))?;
            write_zeros(w, padded - end)?;
            Ok(padded)
        }
    }
}

/// Offsets for tensors of the given byte sizes, packed in order, each aligned.
pub fn layout_offsets(sizes: impl IntoIterator<Item = u64>, alignment: u64) -> Result<Vec<u64>> {
    let overflow = || Error::Invalid("tensor layout overflows".into());
    let mut pos = 0u64;
    let mut out = Vec::new();
    for size in sizes {
        let offset = align_up(pos, alignment).ok_or_else(overflow)?;
        out.push(offset);
        pos = offset.checked_add(size).ok_or_else(overflow)?;
    }
    Ok(out)
}

/// Builds a GGUF file in memory order: key/values and tensors in the order added,
/// tensors packed at aligned offsets, zero padding.
///
/// ```
/// use smq_converter::gguf::GgufBuilder;
/// use smq_format::{GgmlType, MetadataValue};
/// let mut bytes = Vec::new();
/// GgufBuilder::new(3)
///     .alignment(64)
///     .kv("general.architecture", MetadataValue::String("llama".into()))
///     .tensor("w", GgmlType::F32, vec![4], vec![0u8; 16])
///     .write_to(&mut bytes)
///     .unwrap();
/// let parsed = smq_converter::gguf::GgufFile::parse(&bytes).unwrap();
/// assert_eq!(parsed.alignment, 64);
/// ```
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    version: u32,
    alignment: u64,
    entries: Vec<MetadataEntry>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

impl GgufBuilder {
    pub fn new(version: u32) -> Self {
        GgufBuilder {
            version,
            alignment: DEFAULT_ALIGNMENT,
            entries: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the data alignment and records it as `general.alignment` (u32), replacing an
    /// earlier value in place or appending the key here.
    pub fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = alignment;
        // An alignment beyond u32 cannot be stored; write_to reports it.
        let value = MetadataValue::U32(u32::try_from(alignment).unwrap_or(0));
        self.set(ALIGNMENT_KEY, value);
        self
    }

    /// Adds a key/value (a repeated key replaces the earlier value in place).
    pub fn kv(mut self, key: impl Into<String>, value: MetadataValue) -> Self {
        self.set(&key.into(), value);
        self
    }

    /// Adds a tensor; `data` must have the length its type and shape imply.
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        shape: Vec<u64>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        self.tensors
            .push((name.into(), ggml_type, shape, data.into()));
        self
    }

    fn set(&mut self, key: &str, value: MetadataValue) {
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => e.value = value,
            None => self.entries.push(MetadataEntry {
                key: key.to_string(),
                value,
            }),
        }
    }

    /// The metadata as it will be written.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            entries: self.entries.clone(),
        }
    }

    /// Writes the file; returns its length.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64> {
        if u32::try_from(self.alignment).is_err() {
            return Err(Error::Invalid(format!(
                "alignment {} does not fit general.alignment (u32)",
                self.alignment
            )));
        }
        let sizes = self.tensors.iter().map(|(_, _, _, d)| d.len() as u64);
        let offsets = layout_offsets(sizes, self.alignment.max(1))?;
        let tensors: Vec<TensorWrite<'_>> = self
            .tensors
            .iter()
            .zip(offsets)
            .map(|((name, ty, shape, data), offset)| TensorWrite {
                info: TensorInfo {
                    name: name.clone(),
                    ggml_type: *ty,
                    shape: shape.clone(),
                    offset,
                    size: data.len() as u64,
                },
                data,
            })
            .collect();
        let layout = GgufLayout {
            version: self.version,
            alignment: self.alignment,
            file_size: None,
        };
        write_gguf(w, &layout, &self.metadata(), &tensors)
    }

    /// The file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

fn write_string<W: Write>(w: &mut W, s: &str) -> Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(())
}

fn write_value<W: Write>(w: &mut W, v: &MetadataValue, key: &str) -> Result<()> {
    match v {
        MetadataValue::U8(x) => w.write_all(&[*x])?,
        MetadataValue::I8(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::U16(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::I16(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::U32(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::I32(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::F32(x) => w.write_all(&x.to_bits().to_le_bytes())?,
        MetadataValue::Bool(x) => w.write_all(&[u8::from(*x)])?,
        MetadataValue::String(s) => write_string(w, s)?,
        MetadataValue::U64(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::I64(x) => w.write_all(&x.to_le_bytes())?,
        MetadataValue::F64(x) => w.write_all(&x.to_bits().to_le_bytes())?,
        MetadataValue::Array(a) => {
            w.write_all(&a.element_type.to_le_bytes())?;
            w.write_all(&(a.items.len() as u64).to_le_bytes())?;
            for item in &a.items {
                // A mixed array has no GGUF encoding: the reader would misparse it.
                if item.type_id() != a.element_type {
                    return Err(Error::Invalid(format!(
                        "`{key}`: array of type {} holds a value of type {}",
                        a.element_type,
                        item.type_id()
                    )));
                }
                write_value(w, item, key)?;
            }
        }
    }
    Ok(())
}

fn write_zeros<W: Write>(w: &mut W, n: u64) -> Result<()> {
    Ok(smq_format::writer::write_zeros(w, n)?)
}

/// Counts bytes passing through, so the header writer knows where it ended.
struct Counting<'w, W: Write> {
    inner: &'w mut W,
    written: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
