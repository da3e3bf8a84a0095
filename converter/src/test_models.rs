//! Where the real models used by tests and benchmarks live: where
//! `scripts/fetch-models.sh` puts them.

use std::path::PathBuf;

/// SmolLM2-135M-Instruct, Q4_1, llama architecture.
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Gemma 3 270M, Q4_K_M, gemma3 architecture.
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// `$SMQ_MODELS_DIR`, else `$XDG_CACHE_HOME/smq-models`, else `~/.cache/smq-models`.
pub fn models_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var("SMQ_MODELS_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("smq-models");
    }
    PathBuf::from(var("HOME").unwrap_or_default()).join(".cache/smq-models")
}

/// The path of a real model, or `None` (after printing why) when it is not installed.
/// With `SMQ_REQUIRE_MODELS=1` (as CI sets) a missing model panics instead, so a test
/// can never pass by skipping there.
pub fn find(file: &str) -> Option<PathBuf> {
    let path = models_dir().join(file);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("SMQ_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!(
            "{} is missing and SMQ_REQUIRE_MODELS=1: run scripts/fetch-models.sh",
            path.display()
        );
    }
    println!(
        "skipping: {} not found (run scripts/fetch-models.sh)",
        path.display()
    );
    None
}
