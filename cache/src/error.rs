//! The cache's error type: one line each, naming the path involved and what to do.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, CacheError>;

/// The error a failed build returns, boxed so the cache stays independent of the builder.
pub type BuildError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "cannot find a cache directory: neither SMQ_CACHE_DIR, XDG_CACHE_HOME nor HOME is set; \
         set SMQ_CACHE_DIR to a writable directory"
    )]
    NoCacheDir,

    #[error(
        "cache: cannot {action} {path}: {source} \
         (check permissions and free space, or point SMQ_CACHE_DIR elsewhere)"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("building the cache entry {path} failed: {source}")]
    Build {
        path: PathBuf,
        #[source]
        source: BuildError,
    },

    #[error(
        "building the cache entry reported success but wrote no file at {path}; \
         the builder must write the entry to the path it is given"
    )]
    BuildWroteNothing { path: PathBuf },

    #[error(
        "'{prefix}' is not a hash prefix: give hex digits (0-9, a-f) as shown by `smq cache list`"
    )]
    BadPrefix { prefix: String },

    #[error("no cache entry in {dir} matches '{prefix}'; `smq cache list` shows the entries")]
    NotFound { prefix: String, dir: PathBuf },

    #[error("'{prefix}' matches {count} cache entries; give more hex digits to pick one")]
    Ambiguous { prefix: String, count: usize },
}

impl CacheError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CacheError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
