//! The SMQ file format (normative description: `SPEC.md` beside this crate).
//!
//! An SMQ file is a fixed header, a page-aligned data section holding every tensor's
//! bytes (aligned for zero-copy use), a zstd-compressed bincode manifest (config,
//! tokenizer, tensor directory) and a zstd-compressed bincode metadata section (every
//! source GGUF key/value). Everything is covered by blake3 hashes.

pub mod ggml_type;
pub mod manifest;

pub use ggml_type::{GgmlType, TypeInfo, TYPE_TABLE};
pub use manifest::*;
