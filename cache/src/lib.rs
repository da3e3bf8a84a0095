//! The conversion cache: SMQ files keyed by the blake3 of their source GGUF.
