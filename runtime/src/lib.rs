//! smq's CPU runtime: tensors over a read-only mmap, fused quantized kernels,
//! architectures, tokenizers, sampling and generation.

pub mod quant;
