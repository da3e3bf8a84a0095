//! The SMQ file format (normative description: `SPEC.md` beside this crate).
//!
//! An SMQ file is a fixed header, a page-aligned data section holding every tensor's
//! bytes (aligned for zero-copy use), a zstd-compressed bincode manifest (config,
//! tokenizer, tensor directory) and a zstd-compressed bincode metadata section (every
//! source GGUF key/value). Everything is covered by blake3 hashes.

pub mod atomic;
pub mod codec;
pub mod error;
pub mod ggml_type;
pub mod header;
pub mod manifest;
pub mod reader;
pub mod span_writer;
pub mod validate;
pub mod writer;

pub use atomic::AtomicFile;
pub use error::{Error, Result};
pub use ggml_type::{GgmlType, TypeInfo, TYPE_TABLE};
pub use header::{
    Header, Section, DATA_ALIGNMENT, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, MAGIC,
    TENSOR_ALIGNMENT,
};
pub use manifest::*;
pub use reader::{map_file, MappedModel, SmqFile};
pub use writer::{align_up, hash_bytes, write_smq, SmqDescription, TensorInput};
