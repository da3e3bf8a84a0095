//! The conversion cache: SMQ files keyed by the blake3 of their source GGUF, so that
//! `smq run model.gguf` converts once and later runs map the cached file.
//!
//! Layout under the cache root (see [`Cache::default_dir`]):
//!
//! ```text
//! <root>/CACHEDIR.TAG                 tells backup tools to skip the directory
//! <root>/source-hashes.json           stat memo: source path + stat tuple -> blake3
//! <root>/v{major}.{layout}/<hex>.smq  a complete entry, read-only
//! <root>/v{major}.{layout}/<hex>.json sidecar: the source's file name
//! <root>/v{major}.{layout}/<hex>.lock per-key lock serialising builders
//! ```
//!
//! The key is the source's blake3 within a directory named after the SMQ format major and
//! [`LAYOUT_VERSION`], so a new importer never serves an old layout. Entries appear only
//! through an atomic rename of a fully written, synced file and are never modified in
//! place: readers memory-map them.

mod error;
mod fsutil;
mod key;
mod lock;
mod memo;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use error::{BuildError, CacheError, Result};
pub use key::{from_hex, to_hex};
pub use memo::TRUST_AFTER;

use key::FileKind;
use lock::FileLock;

/// Version of the converter's output layout. Bump it whenever the importer writes different
/// bytes for the same source, so entries written by the old importer stop being served.
pub const LAYOUT_VERSION: u32 = 1;

const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_TAG_BODY: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file marks the smq conversion cache (https://bford.info/cachedir/).\n\
# Everything here can be rebuilt from the source models.\n";

/// One complete cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub hash: [u8; 32],
    pub hash_hex: String,
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
    /// File name of the source GGUF: from the sidecar written by
    /// [`Cache::get_or_insert_named`], else from the entry's SMQ manifest.
    pub source_name: Option<String>,
}

/// What [`Cache::clear`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearSummary {
    /// Complete entries removed (of every format/layout version).
    pub entries: usize,
    /// Bytes those entries occupied.
    pub bytes: u64,
    /// Keys skipped because another process was building them at the time.
    pub busy: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar {
    source_name: String,
}

/// A conversion cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `dir` (created lazily on the first insert).
    pub fn at(dir: impl Into<PathBuf>) -> Cache {
        Cache { root: dir.into() }
    }

    /// The cache at [`Cache::default_dir`].
    pub fn open_default() -> Result<Cache> {
        Ok(Cache::at(Cache::default_dir()?))
    }

    /// `$SMQ_CACHE_DIR`, else `$XDG_CACHE_HOME/smq`, else `~/.cache/smq`.
    pub fn default_dir() -> Result<PathBuf> {
        default_dir_from(|name| std::env::var_os(name))
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding entries of the current format major and layout version.
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join(key::version_dir_name(
            smq_format::FORMAT_MAJOR,
            LAYOUT_VERSION,
        ))
    }

    /// Where the entry for `hash` lives (whether or not it exists yet).
    pub fn entry_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.entries_dir().join(key::entry_name(&to_hex(hash)))
    }

    /// The path of the complete entry for `hash`, if there is one.
    pub fn lookup(&self, hash: &[u8; 32]) -> Option<PathBuf> {
        let path = self.entry_path(hash);
        // Only the final rename creates this name, so its presence means "complete".
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Some(path),
            _ => None,
        }
    }

    /// Returns the entry for `hash`, building it first if it is missing.
    ///
    /// Builders of the same key are serialised by a per-key lock; after taking it, the entry
    /// is looked up again, since another process may have finished it meanwhile (then
    /// `build` is not called and the result says hit). Otherwise `build` gets a path inside
    /// the cache directory, must write the complete file there (synced), and the cache
    /// marks it read-only, renames it into place and syncs the directory.
    ///
    /// Returns the entry's path and whether it was a hit.
    pub fn get_or_insert_with<E>(
        &self,
        hash: &[u8; 32],
        build: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> Result<(PathBuf, bool)>
    where
        E: Into<BuildError>,
    {
        self.insert_inner(hash, None, build)
    }

    /// [`Cache::get_or_insert_with`], also recording the source's file name for
    /// [`Cache::list`].
    pub fn get_or_insert_named<E>(
        &self,
        hash: &[u8; 32],
        source_name: &str,
        build: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> Result<(PathBuf, bool)>
    where
        E: Into<BuildError>,
    {
        self.insert_inner(hash, Some(source_name), build)
    }

    fn insert_inner<E>(
        &self,
        hash: &[u8; 32],
        source_name: Option<&str>,
        build: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> Result<(PathBuf, bool)>
    where
        E: Into<BuildError>,
    {
        if let Some(path) = self.lookup(hash) {
            return Ok((path, true));
        }
        let dir = self.entries_dir();
        self.prepare_root()?;
        fs::create_dir_all(&dir).map_err(|e| CacheError::io("create directory", &dir, e))?;

        let hex = to_hex(hash);
        let lock_path = dir.join(key::lock_name(&hex));
        let lock =
            FileLock::acquire(&lock_path).map_err(|e| CacheError::io("lock", &lock_path, e))?;

        if let Some(path) = self.lookup(hash) {
            return Ok((path, true));
        }
        // Holding the lock, any partial file of this key is the remains of a build that
        // was interrupted (crash, kill, power loss): it can only be discarded.
        remove_partials(&dir, &hex)?;

        let partial = dir.join(key::partial_name(&hex));
        let guard = RemoveOnDrop(&partial);
        build(&partial).map_err(|e| CacheError::Build {
            path: self.entry_path(hash),
            source: e.into(),
        })?;
        match fs::metadata(&partial) {
            Ok(meta) if meta.is_file() => {}
            _ => {
                return Err(CacheError::BuildWroteNothing {
                    path: partial.clone(),
                })
            }
        }
        // The builder is asked to sync, but the entry must be durable before it is visible
        // whatever the builder did; syncing an already synced file is cheap.
        fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| CacheError::io("sync", &partial, e))?;
        fsutil::make_read_only(&partial)
            .map_err(|e| CacheError::io("make read-only", &partial, e))?;

        if let Some(name) = source_name {
            self.write_sidecar(&dir, &hex, name)?;
        }
        let entry = self.entry_path(hash);
        fs::rename(&partial, &entry).map_err(|e| CacheError::io("rename into", &entry, e))?;
        std::mem::forget(guard);
        fsutil::sync_dir(&dir).map_err(|e| CacheError::io("sync directory", &dir, e))?;
        drop(lock);
        Ok((entry, false))
    }

    /// Every complete entry of the current format/layout version, newest first.
    pub fn list(&self) -> Result<Vec<CacheEntry>> {
        let dir = self.entries_dir();
        let mut entries = Vec::new();
        for name in read_dir_names(&dir)? {
            let Some(FileKind::Entry(hex)) = key::classify(&name) else {
                continue;
            };
            let Some(hash) = from_hex(&hex) else { continue };
            let path = dir.join(&name);
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                // Removed between the listing and the stat: not an entry any more.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::io("read metadata of", &path, e)),
            };
            let modified = meta
                .modified()
                .map_err(|e| CacheError::io("read modification time of", &path, e))?;
            entries.push(CacheEntry {
                hash,
                source_name: read_sidecar(&dir, &hex).or_else(|| manifest_source_name(&path)),
                hash_hex: hex,
                path,
                size: meta.len(),
                modified,
            });
        }
        entries.sort_by(|a, b| {
            b.modified
                .cmp(&a.modified)
                .then_with(|| a.hash_hex.cmp(&b.hash_hex))
        });
        Ok(entries)
    }

    /// Removes the entry whose hash is `hash_hex` or starts with it (a unique prefix, as
    /// with git), and returns what it removed.
    pub fn remove(&self, hash_hex_or_prefix: &str) -> Result<CacheEntry> {
        let prefix = hash_hex_or_prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || prefix.len() > key::HEX_LEN || !key::is_lower_hex(&prefix) {
            return Err(CacheError::BadPrefix {
                prefix: hash_hex_or_prefix.to_string(),
            });
        }
        let mut matches: Vec<CacheEntry> = self
            .list()?
            .into_iter()
            .filter(|e| e.hash_hex.starts_with(&prefix))
            .collect();
        let entry = match matches.len() {
            0 => {
                return Err(CacheError::NotFound {
                    prefix,
                    dir: self.entries_dir(),
                })
            }
            1 => matches.remove(0),
            count => return Err(CacheError::Ambiguous { prefix, count }),
        };
        let dir = self.entries_dir();
        let lock_path = dir.join(key::lock_name(&entry.hash_hex));
        // Waits for a holder; for a complete entry that is at most a short re-check.
        let lock =
            FileLock::acquire(&lock_path).map_err(|e| CacheError::io("lock", &lock_path, e))?;
        remove_key_files(&dir, &entry.hash_hex, &lock)?;
        Ok(entry)
    }

    /// Removes every entry (of every format/layout version), leftover partial builds and
    /// the stat memo. Keys being built by another process right now are left alone and
    /// counted in [`ClearSummary::busy`].
    pub fn clear(&self) -> Result<ClearSummary> {
        let mut summary = ClearSummary::default();
        let current = self.entries_dir();
        for name in read_dir_names(&self.root)? {
            let dir = self.root.join(&name);
            if !key::is_version_dir_name(&name) || !dir.is_dir() {
                continue;
            }
            clear_version_dir(&dir, &mut summary)?;
            // Old version directories go once empty; the current one stays, so concurrent
            // inserters never find their directory vanishing under them.
            if dir != current {
                let _ = fs::remove_dir(&dir);
            }
        }
        memo::clear(&self.root)
            .map_err(|e| CacheError::io("clear the stat memo in", &self.root, e))?;
        Ok(summary)
    }

    /// Removes partial files left by interrupted builds, for keys nobody is building now.
    /// Returns how many files were removed. (Inserting a key also cleans its own partials.)
    pub fn remove_stale_partials(&self) -> Result<usize> {
        let dir = self.entries_dir();
        let mut keys: Vec<String> = read_dir_names(&dir)?
            .iter()
            .filter_map(|n| match key::classify(n) {
                Some(FileKind::Partial(hex)) => Some(hex),
                _ => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        let mut removed = 0;
        for hex in keys {
            let lock_path = dir.join(key::lock_name(&hex));
            let Some(_lock) = FileLock::try_acquire(&lock_path)
                .map_err(|e| CacheError::io("lock", &lock_path, e))?
            else {
                continue;
            };
            removed += remove_partials(&dir, &hex)?;
        }
        Ok(removed)
    }

    /// The blake3 of the source file at `path`, remembered by its stat tuple in the cache
    /// root: `hash_fn` is called only when the file is new or changed (or so recently
    /// modified that its timestamps cannot be trusted, see [`TRUST_AFTER`]). Failing to
    /// write the memo is not an error; the hash is still returned.
    pub fn source_hash(
        &self,
        path: &Path,
        hash_fn: impl FnOnce(&Path) -> io::Result<[u8; 32]>,
    ) -> io::Result<[u8; 32]> {
        memo::source_hash(&self.root, path, hash_fn, SystemTime::now)
    }

    /// Creates the root with its CACHEDIR.TAG.
    fn prepare_root(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .map_err(|e| CacheError::io("create directory", &self.root, e))?;
        let tag = self.root.join(CACHEDIR_TAG);
        if !tag.exists() {
            // Several threads and processes may race here; each uses its own temp file and
            // they all rename the same bytes into place.
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let tmp = self.root.join(format!(
                "{CACHEDIR_TAG}.partial-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fsutil::write_small_atomic(&tag, &tmp, CACHEDIR_TAG_BODY.as_bytes())
                .map_err(|e| CacheError::io("write", &tag, e))?;
        }
        Ok(())
    }

    fn write_sidecar(&self, dir: &Path, hex: &str, source_name: &str) -> Result<()> {
        let target = dir.join(key::sidecar_name(hex));
        let temp = dir.join(format!("{}.json", key::partial_name(hex)));
        let body = serde_json::to_vec(&Sidecar {
            source_name: source_name.to_string(),
        })
        .map_err(|e| CacheError::io("encode", &target, io::Error::other(e)))?;
        fsutil::write_small_atomic(&target, &temp, &body)
            .map_err(|e| CacheError::io("write", &target, e))
    }
}

/// Computes the blake3 of a file (memory-mapped, hashed on all cores): the usual `hash_fn`
/// for [`Cache::source_hash`].
pub fn blake3_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(*hasher.finalize().as_bytes())
}

fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("SMQ_CACHE_DIR") {
        return Ok(dir);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Ok(xdg.join("smq"));
    }
    let home = set("HOME").or_else(|| {
        if cfg!(windows) {
            set("USERPROFILE")
        } else {
            None
        }
    });
    home.map(|h| h.join(".cache").join("smq"))
        .ok_or(CacheError::NoCacheDir)
}

/// Names in `dir`; a missing directory has none.
fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let iter = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io("read directory", dir, e)),
    };
    let mut names = Vec::new();
    for item in iter {
        let item = item.map_err(|e| CacheError::io("read directory", dir, e))?;
        // Names the cache writes are ASCII; anything else is not ours.
        if let Ok(name) = item.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

fn read_sidecar(dir: &Path, hex: &str) -> Option<String> {
    let bytes = fs::read(dir.join(key::sidecar_name(hex))).ok()?;
    serde_json::from_slice::<Sidecar>(&bytes)
        .ok()
        .map(|s| s.source_name)
}

/// The source name recorded in the entry's own manifest (for entries inserted without a
/// name). Opening validates the header and manifest, so this costs a manifest decode.
fn manifest_source_name(path: &Path) -> Option<String> {
    let file = smq_format::SmqFile::open(path).ok()?;
    let name = &file.manifest().source.file_name;
    (!name.is_empty()).then(|| name.clone())
}

/// Removes every partial file of `hex` in `dir`. The caller holds the key's lock.
fn remove_partials(dir: &Path, hex: &str) -> Result<usize> {
    let mut removed = 0;
    for name in read_dir_names(dir)? {
        if key::classify(&name) == Some(FileKind::Partial(hex.to_string())) {
            let path = dir.join(&name);
            if fsutil::remove_if_exists(&path).map_err(|e| CacheError::io("remove", &path, e))? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Removes the entry, sidecar, partials and lock file of `hex`, holding its lock.
fn remove_key_files(dir: &Path, hex: &str, lock: &FileLock) -> Result<(bool, u64)> {
    let entry = dir.join(key::entry_name(hex));
    let size = fs::metadata(&entry).map(|m| m.len()).unwrap_or(0);
    // Entry first: once it is gone the key is a miss, whatever else is left.
    let had_entry =
        fsutil::remove_if_exists(&entry).map_err(|e| CacheError::io("remove", &entry, e))?;
    let sidecar = dir.join(key::sidecar_name(hex));
    fsutil::remove_if_exists(&sidecar).map_err(|e| CacheError::io("remove", &sidecar, e))?;
    remove_partials(dir, hex)?;
    let lock_path = dir.join(key::lock_name(hex));
    lock.remove_file()
        .map_err(|e| CacheError::io("remove", &lock_path, e))?;
    fsutil::sync_dir(dir).map_err(|e| CacheError::io("sync directory", dir, e))?;
    Ok((had_entry, if had_entry { size } else { 0 }))
}

fn clear_version_dir(dir: &Path, summary: &mut ClearSummary) -> Result<()> {
    let mut keys: Vec<String> = read_dir_names(dir)?
        .iter()
        .filter_map(|n| match key::classify(n)? {
            FileKind::Entry(h)
            | FileKind::Sidecar(h)
            | FileKind::Lock(h)
            | FileKind::Partial(h) => Some(h),
        })
        .collect();
    keys.sort();
    keys.dedup();
    for hex in keys {
        let lock_path = dir.join(key::lock_name(&hex));
        match FileLock::try_acquire(&lock_path)
            .map_err(|e| CacheError::io("lock", &lock_path, e))?
        {
            Some(lock) => {
                let (had_entry, bytes) = remove_key_files(dir, &hex, &lock)?;
                if had_entry {
                    summary.entries += 1;
                    summary.bytes += bytes;
                }
            }
            None => summary.busy += 1,
        }
    }
    Ok(())
}

/// Removes a partial build if the builder fails or panics.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fsutil::remove_if_exists(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn default_dir_precedence() {
        let all = [
            ("SMQ_CACHE_DIR", "/a/smq-cache"),
            ("XDG_CACHE_HOME", "/b/cache"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_dir_from(env(&all)).unwrap(),
            PathBuf::from("/a/smq-cache")
        );
        assert_eq!(
            default_dir_from(env(&all[1..])).unwrap(),
            PathBuf::from("/b/cache/smq")
        );
        assert_eq!(
            default_dir_from(env(&all[2..])).unwrap(),
            PathBuf::from("/home/u/.cache/smq")
        );
        // Empty and relative values do not count.
        let odd = [
            ("SMQ_CACHE_DIR", ""),
            ("XDG_CACHE_HOME", "rel"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            default_dir_from(env(&odd)).unwrap(),
            PathBuf::from("/h/.cache/smq")
        );
        assert!(matches!(
            default_dir_from(env(&[])),
            Err(CacheError::NoCacheDir)
        ));
    }
}
