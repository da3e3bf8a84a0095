//! smq's CPU runtime: tensors over a read-only mmap, fused quantized kernels,
//! architectures, tokenizers, sampling and generation.

pub mod aligned;
pub mod arch;
mod attention;
pub mod chat;
mod exp;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod par;
pub mod profile;
pub mod quant;
pub mod sampling;
pub mod team;
pub mod tokenizer;
