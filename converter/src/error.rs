//! The converter's error type. Every message is one line and names what was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from the SMQ format layer (mapping, writing, validating SMQ files).
    #[error(transparent)]
    Format(#[from] smq_format::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing to a caller-supplied sink failed.
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),

    /// The GGUF bytes break the format; the message says where and how.
    #[error("invalid GGUF: {0}")]
    Gguf(String),

    /// A metadata key has a value the converter cannot use (wrong type, out of range, ...).
    #[error("metadata key `{key}`: {reason}")]
    Metadata { key: String, reason: String },

    /// Anything else that makes the request impossible (e.g. an inconsistent SMQ source record).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn gguf(msg: impl Into<String>) -> Error {
        Error::Gguf(msg.into())
    }

    pub(crate) fn metadata(key: &str, reason: impl Into<String>) -> Error {
        Error::Metadata {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
