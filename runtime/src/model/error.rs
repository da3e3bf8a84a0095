//! Errors of loading and running a model.

/// Why a model could not be loaded or a request could not run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unsupported architecture '{name}' (supported: {supported})")]
    UnsupportedArchitecture { name: String, supported: String },
    #[error("model config is missing '{0}'")]
    MissingKey(&'static str),
    #[error("model config has an invalid value: {0}")]
    InvalidConfig(String),
    #[error("model is missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name} is not used by the {arch} architecture")]
    UnexpectedTensor { name: String, arch: &'static str },
    #[error("tensor {name} has shape {got:?}, expected {expected:?}")]
    BadShape {
        name: String,
        got: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name} has type {ty}, expected {expected}")]
    BadType {
        name: String,
        ty: &'static str,
        expected: &'static str,
    },
    #[error("tensor {name}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("token id {id} is out of range (vocabulary has {n_vocab} tokens)")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("context full: {needed} positions needed, the context holds {n_ctx}")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}
