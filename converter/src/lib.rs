//! GGUF reading and writing, GGUF metadata to SMQ manifest, import and export.

pub mod direct;
pub mod error;
pub mod export;
pub mod gguf;
pub mod import;
pub mod manifest_from_gguf;
pub mod test_models;

pub use direct::open_gguf_direct;
pub use error::{Error, Result};
pub use export::{export, ExportReport};
pub use gguf::{GgufBuilder, GgufFile, TensorInfo, TensorTable};
pub use import::{hash_file, import, ImportReport};
pub use manifest_from_gguf::{describe_gguf, model_config, tokenizer_spec, GgufDescription};

#[cfg(test)]
mod tests;
