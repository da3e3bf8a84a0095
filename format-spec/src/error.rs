//! The format crate's error: one line each, naming what is wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not an SMQ file (bad magic bytes)")]
    BadMagic,
    #[error("SMQ magic mangled by a text-mode transfer (line endings or high bit changed)")]
    MangledMagic,
    #[error("SMQ format version {major}.{minor} is not supported by this smq (reads major version {supported})")]
    UnsupportedMajor {
        major: u16,
        minor: u16,
        supported: u16,
    },
    #[error("file is truncated or was extended: header says {expected} bytes, file has {actual}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("file too short for an SMQ header ({0} bytes)")]
    TooShort(u64),
    #[error("{what} is corrupt: blake3 mismatch")]
    HashMismatch { what: String },
    #[error("tensor '{name}' is corrupt: blake3 mismatch")]
    TensorHashMismatch { name: String },
    #[error("invalid SMQ file: {0}")]
    Invalid(String),
    #[error("cannot write SMQ file: {0}")]
    Write(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}
