//! GGUF: a hardened reader and a writer (for export and for building test files).

pub mod reader;
pub mod writer;

pub use reader::{
    align_up, GgufFile, TensorInfo, TensorTable, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH,
    MAX_METADATA_VALUES,
};
pub use writer::{layout_offsets, write_gguf, write_header, GgufBuilder, GgufLayout, TensorWrite};

#[cfg(test)]
mod tests;
