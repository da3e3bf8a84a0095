//! The manifest: everything in an SMQ file except the tensor bytes. Its exact bincode
//! encoding is written down in SPEC.md; change a field here only with a format version bump.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::GgmlType;

/// The decoded manifest section of an SMQ file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub source: SourceInfo,
    pub config: ModelConfig,
    /// Absent for GGUF files that carry no tokenizer (e.g. adapters, test files).
    pub tokenizer: Option<TokenizerSpec>,
    /// The tensor directory, in the order of the source GGUF's tensor infos.
    pub tensors: Vec<TensorEntry>,
}

/// Where the SMQ came from; enough to rebuild the GGUF byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// File name of the source (no directory).
    pub file_name: String,
    pub file_size: u64,
    /// blake3 of the whole source file.
    pub blake3: [u8; 32],
    /// GGUF version (2 or 3).
    pub gguf_version: u32,
    /// Tensor data alignment of the source (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the source's tensor data section.
    pub data_offset: u64,
    /// True when every padding byte of the source was zero, i.e. export is expected to
    /// reproduce the file byte for byte.
    pub zero_padding: bool,
}

/// Model hyperparameters read from the `{architecture}.*` keys. Every field the source
/// does not state is `None`; the runtime decides what it needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `general.architecture` (e.g. `llama`, `gemma3`); empty if the source has none.
    pub architecture: String,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.file_type` (llama.cpp's ftype enum).
    pub file_type: Option<u32>,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub block_count: Option<u64>,
    pub feed_forward_length: Option<u64>,
    pub head_count: Option<u64>,
    pub head_count_kv: Option<u64>,
    pub key_length: Option<u64>,
    pub value_length: Option<u64>,
    pub rms_norm_epsilon: Option<f32>,
    pub layer_norm_epsilon: Option<f32>,
    pub rope_dimension_count: Option<u64>,
    pub rope_freq_base: Option<f32>,
    pub rope_scaling_type: Option<String>,
    pub rope_scaling_factor: Option<f32>,
    pub rope_scaling_original_context_length: Option<u64>,
    pub sliding_window: Option<u64>,
    pub attn_logit_softcapping: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
    pub vocab_size: Option<u64>,
    pub expert_count: Option<u64>,
    pub expert_used_count: Option<u64>,
}

/// The tokenizer, stored compactly: token texts are one byte blob plus offsets so that a
/// 262k-token vocabulary decodes without a quarter million small allocations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model` (`gpt2`, `llama`, ...).
    pub model: String,
    /// `tokenizer.ggml.pre` (`smollm`, `llama-bpe`, ...).
    pub pre: Option<String>,
    /// Token texts, concatenated, exactly as in the GGUF. (`serde_bytes` encodes the same
    /// bytes as a plain `Vec<u8>` and lets a reader take them in one piece.)
    #[serde(with = "serde_bytes")]
    pub token_bytes: Vec<u8>,
    /// `n_tokens + 1` offsets into `token_bytes`; token `i` is `[off[i], off[i+1])`.
    pub token_offsets: Vec<u32>,
    /// `tokenizer.ggml.scores`, empty if absent.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type`, empty if absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges` (`"a b"` strings), concatenated like the tokens.
    #[serde(with = "serde_bytes")]
    pub merge_bytes: Vec<u8>,
    /// `n_merges + 1` offsets into `merge_bytes`.
    pub merge_offsets: Vec<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub unknown_id: Option<u32>,
    pub padding_id: Option<u32>,
    pub separator_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl TokenizerSpec {
    /// Drops spare capacity left by decoding (vectors grow by doubling while they are
    /// read), so a loaded model holds only the bytes it needs.
    pub fn shrink_to_fit(&mut self) {
        self.token_bytes.shrink_to_fit();
        self.token_offsets.shrink_to_fit();
        self.scores.shrink_to_fit();
        self.token_types.shrink_to_fit();
        self.merge_bytes.shrink_to_fit();
        self.merge_offsets.shrink_to_fit();
    }

    pub fn n_tokens(&self) -> usize {
        self.token_offsets.len().saturating_sub(1)
    }

    /// Bytes of token `id`, `None` if out of range.
    pub fn token(&self, id: usize) -> Option<&[u8]> {
        blob_item(&self.token_bytes, &self.token_offsets, id)
    }

    pub fn n_merges(&self) -> usize {
        self.merge_offsets.len().saturating_sub(1)
    }

    pub fn merge(&self, i: usize) -> Option<&[u8]> {
        blob_item(&self.merge_bytes, &self.merge_offsets, i)
    }
}

fn blob_item<'a>(blob: &'a [u8], offsets: &[u32], i: usize) -> Option<&'a [u8]> {
    let start = *offsets.get(i)? as usize;
    let end = *offsets.get(i + 1)? as usize;
    blob.get(start..end)
}

/// How a tensor's bytes are arranged in the data section. Stored as a u32 id so that a
/// reader meets a layout added by a newer minor version as `Unknown` (and refuses to use
/// that tensor) instead of failing to read the whole manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorLayout {
    /// Id 0: exactly the GGUF bytes.
    Ggml,
    /// A layout this reader does not know.
    Unknown(u32),
}

impl TensorLayout {
    pub fn id(self) -> u32 {
        match self {
            TensorLayout::Ggml => 0,
            TensorLayout::Unknown(id) => id,
        }
    }

    pub fn from_id(id: u32) -> TensorLayout {
        match id {
            0 => TensorLayout::Ggml,
            other => TensorLayout::Unknown(other),
        }
    }
}

impl Serialize for TensorLayout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.id())
    }
}

impl<'de> Deserialize<'de> for TensorLayout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u32::deserialize(deserializer).map(TensorLayout::from_id)
    }
}

/// One tensor of the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub ggml_type: GgmlType,
    /// Dimensions in ggml order: `shape[0]` is the row length (contiguous).
    pub shape: Vec<u64>,
    pub layout: TensorLayout,
    /// Offset from the start of the SMQ data section; a multiple of [`crate::TENSOR_ALIGNMENT`].
    pub offset: u64,
    /// Byte length, always `ggml_type.tensor_bytes(shape)`.
    pub size: u64,
    /// Offset of the tensor in the source GGUF's data section.
    pub source_offset: u64,
    /// blake3 of the tensor's bytes as stored.
    pub blake3: [u8; 32],
}

/// The metadata section: every key/value of the source GGUF, in order, with its type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub entries: Vec<MetadataEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetadataEntry {
    pub key: String,
    pub value: MetadataValue,
}

/// A GGUF metadata value. Variants are ordered by GGUF value type id, so the bincode
/// variant index equals the GGUF type id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetadataArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A GGUF array: the declared element type id and the elements. Every element's own
/// variant matches `element_type`; decoding checks this and bounds the nesting depth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetadataArray {
    pub element_type: u32,
    pub items: Vec<MetadataValue>,
}

/// Deepest array nesting a reader accepts (GGUF files in the wild nest at most 2 deep).
/// Without a bound, a few bytes per level could exhaust the stack while decoding.
pub const MAX_ARRAY_DEPTH: usize = 16;

thread_local! {
    static ARRAY_DEPTH: Cell<usize> = const { Cell::new(0) };
}

impl<'de> Deserialize<'de> for MetadataArray {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            element_type: u32,
            items: Vec<MetadataValue>,
        }
        let depth = ARRAY_DEPTH.with(|d| d.get());
        if depth >= MAX_ARRAY_DEPTH {
            return Err(serde::de::Error::custom(format!(
                "metadata arrays nested deeper than {MAX_ARRAY_DEPTH}"
            )));
        }
        ARRAY_DEPTH.with(|d| d.set(depth + 1));
        let raw = Raw::deserialize(deserializer);
        ARRAY_DEPTH.with(|d| d.set(depth));
        let raw = raw?;
        if raw.element_type > 12 {
            return Err(serde::de::Error::custom(format!(
                "unknown metadata array element type {}",
                raw.element_type
            )));
        }
        if let Some(bad) = raw.items.iter().find(|v| v.type_id() != raw.element_type) {
            return Err(serde::de::Error::custom(format!(
                "metadata array of type {} holds a value of type {}",
                raw.element_type,
                bad.type_id()
            )));
        }
        Ok(MetadataArray {
            element_type: raw.element_type,
            items: raw.items,
        })
    }
}

impl MetadataValue {
    /// The GGUF value type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            MetadataValue::U8(_) => 0,
            MetadataValue::I8(_) => 1,
            MetadataValue::U16(_) => 2,
            MetadataValue::I16(_) => 3,
            MetadataValue::U32(_) => 4,
            MetadataValue::I32(_) => 5,
            MetadataValue::F32(_) => 6,
            MetadataValue::Bool(_) => 7,
            MetadataValue::String(_) => 8,
            MetadataValue::Array(_) => 9,
            MetadataValue::U64(_) => 10,
            MetadataValue::I64(_) => 11,
            MetadataValue::F64(_) => 12,
        }
    }

    /// Any unsigned or non-negative signed integer as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetadataValue::F32(v) => Some(v),
            MetadataValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }
}
