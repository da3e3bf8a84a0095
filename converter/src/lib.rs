//! GGUF reading and writing, GGUF metadata to SMQ manifest, import and export.
