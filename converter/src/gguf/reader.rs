//! A hardened GGUF (v2, v3) parser over a byte slice.
//!
//! GGUF readers have a long history of memory-safety bugs caused by trusting counts,
//! lengths and offsets from the file. This parser follows three rules:
//! - every read first checks the bytes left in the slice;
//! - nothing is allocated from a count or length until that count is shown to fit in the
//!   bytes left (each element needs at least a known number of bytes);
//! - all size and offset arithmetic is checked.
//!
//! A malformed file yields `Error::Gguf` with a one-line message; the parser never panics.

use std::collections::HashSet;

use smq_format::{GgmlType, Metadata, MetadataArray, MetadataEntry, MetadataValue};

use crate::error::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Deepest array nesting accepted (an array of arrays is depth 2). Real files use 1;
/// the bound stops a crafted file from exhausting the stack through recursion.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most metadata values (array elements included) one file may hold. A one-byte value
/// decodes into a much larger `MetadataValue`, so without a cap a file of a few hundred
/// megabytes of u8 arrays could demand tens of gigabytes. The largest real vocabularies
/// need about 1.5 million values (tokens, scores, types, merges).
pub const MAX_METADATA_VALUES: u64 = 1 << 23;
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: u32 = 4;

/// GGUF metadata value type ids (equal to `MetadataValue::type_id`).
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// The fewest bytes one encoded value of type `ty` can take, or `None` for unknown types.
/// Used to prove a declared element count fits in the bytes left before allocating.
fn min_encoded_size(ty: u32) -> Option<u64> {
    use value_type::*;
    match ty {
        STRING => Some(8),    // the length prefix of an empty string
        ARRAY => Some(4 + 8), // element type and count of an empty array
        _ => fixed_size(ty),
    }
}

/// Smallest encoded tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 8 + 4 + 8;
/// Smallest encoded key/value: key length, value type, a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;

/// One tensor as described by the GGUF tensor-info table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// Dimensions in ggml order (`shape[0]` is the contiguous row length).
    pub shape: Vec<u64>,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Byte length (`ggml_type.tensor_bytes(shape)`).
    pub size: u64,
}

/// A parsed and validated GGUF file: its metadata and its tensor table, whose fields
/// read as the file's own (`gguf.tensors`, `gguf.data_offset`) through `Deref`. Tensor
/// bytes are not copied: slice them out of the same bytes with
/// [`TensorTable::tensor_data`].
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    /// Every key/value in file order.
    pub metadata: Metadata,
    pub table: TensorTable,
}

/// The tensor-info table of a GGUF file and where its data lies: everything needed to
/// copy the tensors. [`TensorTable::read`] reads it without decoding the metadata values.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorTable {
    pub version: u32,
    /// Tensor data alignment (`general.alignment` or 32).
    pub alignment: u64,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset where the tensor-info table ends.
    pub tensor_info_end: u64,
    /// Absolute offset of the data section (`tensor_info_end` rounded up to `alignment`).
    pub data_offset: u64,
    /// Length of the parsed byte slice.
    pub file_size: u64,
    /// True when every byte that is neither header nor tensor data is zero: the padding
    /// before the data section, gaps between tensors and bytes after the last tensor.
    pub zero_padding: bool,
}

impl GgufFile {
    /// Parses and validates a whole GGUF file held in `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<GgufFile> {
        let (metadata, table) = parse_layout(bytes, Values::Decode)?;
        Ok(GgufFile { metadata, table })
    }
}

impl std::ops::Deref for GgufFile {
    type Target = TensorTable;

    fn deref(&self) -> &TensorTable {
        &self.table
    }
}

impl TensorTable {
    /// Reads the tensor table of the GGUF file in `bytes`, stepping over the metadata
    /// values instead of decoding them (no allocation per value), so that a large
    /// vocabulary costs a scan rather than a parse. The bounds checks are those of
    /// [`GgufFile::parse`]; checks on the values themselves (UTF-8, bool bytes,
    /// duplicate keys) are left to it, so a file that passes here may still fail there.
    pub fn read(bytes: &[u8]) -> Result<TensorTable> {
        Ok(parse_layout(bytes, Values::Skip)?.1)
    }

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The tensor with this name, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `tensor` inside `bytes` (the slice this table was read from).
    pub fn tensor_data<'a>(&self, bytes: &'a [u8], tensor: &TensorInfo) -> Result<&'a [u8]> {
        let start = self
            .data_offset
            .checked_add(tensor.offset)
            .and_then(|s| usize::try_from(s).ok());
        let end = start.and_then(|s| s.checked_add(usize::try_from(tensor.size).ok()?));
        match (start, end) {
            (Some(s), Some(e)) if e <= bytes.len() => Ok(&bytes[s..e]),
            _ => Err(Error::gguf(format!(
                "tensor `{}` lies outside the given bytes",
                tensor.name
            ))),
        }
    }
}

/// Whether a parse decodes the metadata values or only steps over them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Values {
    Decode,
    /// Steps over every value except `general.alignment` (the table needs it); the
    /// returned metadata holds only that entry.
    Skip,
}

/// Header, metadata and tensor table of the GGUF file in `bytes`.
fn parse_layout(bytes: &[u8], values: Values) -> Result<(Metadata, TensorTable)> {
    let mut c = Cursor::new(bytes);

    let magic = c.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(Error::gguf(format!(
            "bad magic {magic:02x?} (expected \"GGUF\")"
        )));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::gguf("GGUF version 1 is not supported")),
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(Error::gguf("big-endian GGUF files are not supported"))
        }
        v => return Err(Error::gguf(format!("unknown GGUF version {v}"))),
    }

    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata key/value count")?;
    c.check_count(tensor_count, MIN_TENSOR_INFO_SIZE, "tensor count")?;
    c.check_count(kv_count, MIN_KV_SIZE, "metadata key/value count")?;

    let metadata = read_metadata(&mut c, kv_count, values)?;
    let alignment = alignment_of(&metadata)?;
    let tensors = read_tensor_infos(&mut c, tensor_count, alignment)?;

    let tensor_info_end = c.pos as u64;
    let file_size = bytes.len() as u64;
    let data_offset = align_up(tensor_info_end, alignment)
        .ok_or_else(|| Error::gguf("data section offset overflows"))?;
    if data_offset > file_size {
        return Err(Error::gguf(format!(
            "file ends at byte {file_size}, before its data section at {data_offset}"
        )));
    }

    let zero_padding = check_tensor_layout(bytes, &tensors, data_offset, tensor_info_end)?;
    let table = TensorTable {
        version,
        alignment,
        tensors,
        tensor_info_end,
        data_offset,
        file_size,
        zero_padding,
    };
    Ok((metadata, table))
}

/// Rounds `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// Reads `general.alignment`: it must be a u32, nonzero and a power of two.
fn alignment_of(metadata: &Metadata) -> Result<u64> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetadataValue::U32(a)) if *a != 0 && a.is_power_of_two() => Ok(u64::from(*a)),
        Some(MetadataValue::U32(a)) => Err(Error::gguf(format!(
            "{ALIGNMENT_KEY} = {a} is not a nonzero power of two"
        ))),
        Some(other) => Err(Error::gguf(format!(
            "{ALIGNMENT_KEY} has value type {} (expected u32)",
            other.type_id()
        ))),
    }
}

fn read_metadata(c: &mut Cursor<'_>, kv_count: u64, values: Values) -> Result<Metadata> {
    // check_count proved kv_count * MIN_KV_SIZE fits in the slice, so this is bounded.
    c.spend_values(kv_count, "metadata key/value count")?;
    let mut entries = Vec::with_capacity(if values == Values::Decode {
        kv_count as usize
    } else {
        1
    });
    let mut seen = HashSet::with_capacity(entries.capacity());
    for i in 0..kv_count {
        let key = c.str(|| format!("key of metadata entry {i}"))?;
        let ty = c.u32("metadata value type")?;
        if values == Values::Skip && key != ALIGNMENT_KEY {
            skip_value(c, ty, 0, key)?;
            continue;
        }
        if !seen.insert(key) {
            return Err(Error::gguf(format!("duplicate metadata key `{key}`")));
        }
        let value = read_value(c, ty, 0, key)?;
        entries.push(MetadataEntry {
            key: key.to_owned(),
            value,
        });
    }
    Ok(Metadata { entries })
}

/// Byte size of one value of a fixed-size type, `None` for strings, arrays and unknown
/// types.
fn fixed_size(ty: u32) -> Option<u64> {
    use value_type::*;
    Some(match ty {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 => 8,
        _ => return None,
    })
}

/// Steps over one value of type `ty` with the bounds, depth and count checks of
/// [`read_value`], without decoding it.
fn skip_value(c: &mut Cursor<'_>, ty: u32, depth: usize, key: &str) -> Result<()> {
    use value_type::*;
    let what = || format!("value of `{key}`");
    match ty {
        STRING => {
            let len = c.u64(what)?;
            c.take(len, what)?;
        }
        ARRAY => {
            let (element_type, count) = array_header(c, depth, key)?;
            match fixed_size(element_type) {
                // check_count proved count * size fits in the bytes left.
                Some(size) => {
                    c.take(count * size, what)?;
                }
                None => {
                    for _ in 0..count {
                        skip_value(c, element_type, depth + 1, key)?;
                    }
                }
            }
        }
        other => {
            let size = fixed_size(other).ok_or_else(|| {
                Error::gguf(format!("`{key}`: unknown metadata value type {other}"))
            })?;
            c.take(size, what)?;
        }
    }
    Ok(())
}

/// Reads an array's element type and length once they are shown to be possible: known
/// type, nesting within bounds, length fitting in the bytes left and in the value budget.
fn array_header(c: &mut Cursor<'_>, depth: usize, key: &str) -> Result<(u32, u64)> {
    if depth + 1 > MAX_ARRAY_DEPTH {
        return Err(Error::gguf(format!(
            "`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
        )));
    }
    let element_type = c.u32("array element type")?;
    let min = min_encoded_size(element_type).ok_or_else(|| {
        Error::gguf(format!(
            "`{key}`: unknown array element type {element_type}"
        ))
    })?;
    let count = c.u64("array length")?;
    c.check_count(count, min, || format!("array length of `{key}`"))?;
    c.spend_values(count, || format!("array `{key}`"))?;
    Ok((element_type, count))
}

/// Reads one value of type `ty`; `depth` is the number of arrays enclosing it.
fn read_value(c: &mut Cursor<'_>, ty: u32, depth: usize, key: &str) -> Result<MetadataValue> {
    use value_type::*;
    let what = || format!("value of `{key}`");
    Ok(match ty {
        U8 => MetadataValue::U8(c.take(1, what)?[0]),
        I8 => MetadataValue::I8(c.take(1, what)?[0] as i8),
        U16 => MetadataValue::U16(u16::from_le_bytes(c.array(what)?)),
        I16 => MetadataValue::I16(i16::from_le_bytes(c.array(what)?)),
        U32 => MetadataValue::U32(u32::from_le_bytes(c.array(what)?)),
        I32 => MetadataValue::I32(i32::from_le_bytes(c.array(what)?)),
        F32 => MetadataValue::F32(f32::from_bits(u32::from_le_bytes(c.array(what)?))),
        U64 => MetadataValue::U64(u64::from_le_bytes(c.array(what)?)),
        I64 => MetadataValue::I64(i64::from_le_bytes(c.array(what)?)),
        F64 => MetadataValue::F64(f64::from_bits(u64::from_le_bytes(c.array(what)?))),
        BOOL => match c.take(1, what)?[0] {
            0 => MetadataValue::Bool(false),
            1 => MetadataValue::Bool(true),
            b => {
                // Any other byte would not survive a byte-exact round trip.
                return Err(Error::gguf(format!("`{key}`: bool byte {b} is not 0 or 1")));
            }
        },
        STRING => MetadataValue::String(c.str(what)?.to_owned()),
        ARRAY => {
            let (element_type, count) = array_header(c, depth, key)?;
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(read_value(c, element_type, depth + 1, key)?);
            }
            MetadataValue::Array(MetadataArray {
                element_type,
                items,
            })
        }
        other => {
            return Err(Error::gguf(format!(
                "`{key}`: unknown metadata value type {other}"
            )))
        }
    })
}

fn read_tensor_infos(c: &mut Cursor<'_>, count: u64, alignment: u64) -> Result<Vec<TensorInfo>> {
    let mut tensors = Vec::with_capacity(count as usize);
    let mut names = HashSet::with_capacity(count as usize);
    for i in 0..count {
        let name = c.str(|| format!("name of tensor {i}"))?;
        if !names.insert(name) {
            return Err(Error::gguf(format!("duplicate tensor name `{name}`")));
        }
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::gguf(format!(
                "tensor `{name}`: {n_dims} dimensions (expected 1 to {MAX_DIMS})"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64("tensor dimension")?);
        }
        // ggml counts elements in i64; anything larger cannot be a real tensor.
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        if elements.is_none() {
            return Err(Error::gguf(format!(
                "tensor `{name}`: element count of shape {shape:?} overflows"
            )));
        }
        let type_id = c.u32("tensor type")?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::gguf(format!("tensor `{name}`: unknown ggml type id {type_id}"))
        })?;
        if !shape[0].is_multiple_of(ggml_type.block_size()) {
            return Err(Error::gguf(format!(
                "tensor `{name}`: row length {} is not a multiple of the {ggml_type} block size {}",
                shape[0],
                ggml_type.block_size()
            )));
        }
        let size = ggml_type.tensor_bytes(&shape).ok_or_else(|| {
            Error::gguf(format!(
                "tensor `{name}`: byte size of shape {shape:?} overflows"
            ))
        })?;
        let offset = c.u64("tensor offset")?;
        if !offset.is_multiple_of(alignment) {
            return Err(Error::gguf(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(TensorInfo {
            name: name.to_owned(),
            ggml_type,
            shape,
            offset,
            size,
        });
    }
    Ok(tensors)
}

/// Checks every tensor lies inside the file and no two overlap; returns whether all
/// bytes outside the header and the tensors are zero.
fn check_tensor_layout(
    bytes: &[u8],
    tensors: &[TensorInfo],
    data_offset: u64,
    tensor_info_end: u64,
) -> Result<bool> {
    let file_size = bytes.len() as u64;
    let data_len = file_size - data_offset; // parse checked data_offset <= file_size
    for t in tensors {
        let end = t.offset.checked_add(t.size);
        if end.is_none_or(|e| e > data_len) {
            return Err(Error::gguf(format!(
                "tensor `{}` ({} bytes at data offset {}) extends past the end of the file",
                t.name, t.size, t.offset
            )));
        }
    }

    // Walk the tensors in offset order; empty tensors occupy nothing and cannot overlap.
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    order.sort_by_key(|t| t.offset);
    let is_zero = |from: u64, to: u64| bytes[from as usize..to as usize].iter().all(|&b| b == 0);

    let mut zero = is_zero(tensor_info_end, data_offset);
    let mut pos = 0u64; // data-relative end of the previous tensor
    let mut prev: Option<&TensorInfo> = None;
    for t in order {
        if t.offset < pos {
            let p = prev.map_or("", |p| p.name.as_str());
            return Err(Error::gguf(format!(
                "tensor `{}` overlaps tensor `{p}`",
                t.name
            )));
        }
        zero = zero && is_zero(data_offset + pos, data_offset + t.offset);
        pos = t.offset + t.size;
        prev = Some(t);
    }
    Ok(zero && is_zero(data_offset + pos, file_size))
}

/// Names what is being read, for error messages; closures defer formatting to the error
/// path so the hot loops over large vocabularies do not allocate per read.
trait What {
    fn describe(&self) -> String;
}

impl What for &str {
    fn describe(&self) -> String {
        (*self).to_owned()
    }
}

impl What for String {
    fn describe(&self) -> String {
        self.clone()
    }
}

impl<F: Fn() -> String> What for F {
    fn describe(&self) -> String {
        self()
    }
}

/// A read position in the byte slice that checks the bytes left before every read.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Metadata values that may still be decoded (see [`MAX_METADATA_VALUES`]).
    values_left: u64,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor {
            bytes,
            pos: 0,
            values_left: MAX_METADATA_VALUES,
        }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl What) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::gguf(format!(
                "truncated at byte {}: {} needs {n} bytes, {} left",
                self.pos,
                what.describe(),
                self.remaining()
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: impl What) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: impl What) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl What) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string. `what` is built lazily (only for errors).
    fn str(&mut self, what: impl What) -> Result<&'a str> {
        let len = self.u64(|| what.describe())?;
        let start = self.pos;
        let raw = self.take(len, || what.describe())?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s),
            Err(e) => Err(Error::gguf(format!(
                "{} at byte {start}: invalid UTF-8 ({e})",
                what.describe()
            ))),
        }
    }

    /// Takes `count` values from the metadata value budget.
    fn spend_values(&mut self, count: u64, what: impl What) -> Result<()> {
        match self.values_left.checked_sub(count) {
            Some(left) => {
                self.values_left = left;
                Ok(())
            }
            None => Err(Error::gguf(format!(
                "{}: metadata holds more than {MAX_METADATA_VALUES} values",
                what.describe()
            ))),
        }
    }

    /// Errors unless `count` items of at least `min_size` bytes each fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: impl What) -> Result<()> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(Error::gguf(format!(
                "{} {count} cannot fit in the {} bytes left at byte {}",
                what.describe(),
                self.remaining(),
                self.pos
            ))),
        }
    }
}
