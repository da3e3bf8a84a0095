//! The stat memo: remembers the blake3 of source files by their stat tuple, so a multi-GB
//! GGUF is hashed once rather than on every `smq run`.
//!
//! A record maps the canonical path to (size, mtime ns, ctime ns, inode, dev) and the hash.
//! The hash is reused only when the whole tuple is unchanged, so a file rewritten in place
//! (same size, new mtime) or replaced (new inode) is hashed again.
//!
//! Residual risk: a rewrite that keeps the size and lands within the filesystem's timestamp
//! granularity of the recorded mtime is invisible to stat. Two mitigations:
//! - a record is trusted only if the file's mtime and ctime were at least [`TRUST_AFTER`]
//!   older than the moment the file was statted for hashing, i.e. the file had been quiet
//!   for longer than any timestamp granularity (FAT's is 2 s); a younger file is re-hashed
//!   on every call until it has aged;
//! - on Unix the ctime is part of the tuple: it cannot be set from user space, so even a
//!   rewrite that restores the old mtime (`touch -r`, `rsync -t`) is noticed.
//!
//! The memo is a JSON file in the cache root, replaced atomically under a lock. It is an
//! optimisation only: an unreadable memo counts as empty, a failed memo write is ignored.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::key;
use crate::lock::FileLock;

pub const MEMO_FILE: &str = "source-hashes.json";
pub const MEMO_LOCK: &str = "source-hashes.lock";
const MEMO_TEMP: &str = "source-hashes.partial";

/// How long a file must have been unmodified, when it was hashed, for its record to count.
pub const TRUST_AFTER: Duration = Duration::from_secs(2);

/// Bound on the number of records, so the memo cannot grow without limit.
const MAX_RECORDS: usize = 4096;

/// The identity of a file's contents as far as stat can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatTuple {
    pub size: u64,
    pub mtime_ns: i64,
    /// 0 where the platform has no ctime.
    pub ctime_ns: i64,
    pub inode: u64,
    pub dev: u64,
}

impl StatTuple {
    pub fn of(meta: &fs::Metadata) -> io::Result<StatTuple> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Ok(StatTuple {
                size: meta.len(),
                mtime_ns: join_ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: join_ns(meta.ctime(), meta.ctime_nsec()),
                inode: meta.ino(),
                dev: meta.dev(),
            })
        }
        #[cfg(not(unix))]
        {
            Ok(StatTuple {
                size: meta.len(),
                mtime_ns: system_time_ns(meta.modified()?),
                ctime_ns: 0,
                inode: 0,
                dev: 0,
            })
        }
    }

    /// The latest of the change timestamps.
    fn newest_change_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

#[cfg(unix)]
fn join_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Nanoseconds since the Unix epoch, saturating (negative before 1970).
pub fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    stat: StatTuple,
    /// blake3 of the file, lower-case hex.
    blake3: String,
    /// When the file was statted just before hashing (ns since the epoch).
    recorded_ns: i64,
}

impl Record {
    fn trusted_for(&self, stat: &StatTuple) -> Option<[u8; 32]> {
        let aged = self.recorded_ns.saturating_sub(stat.newest_change_ns())
            >= TRUST_AFTER.as_nanos() as i64;
        if self.stat == *stat && aged {
            key::from_hex(&self.blake3)
        } else {
            None
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Memo {
    version: u32,
    records: BTreeMap<String, Record>,
}

const MEMO_VERSION: u32 = 1;

fn load(root: &Path) -> Memo {
    let parsed = fs::read(root.join(MEMO_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Memo>(&bytes).ok());
    match parsed {
        Some(m) if m.version == MEMO_VERSION => m,
        _ => Memo {
            version: MEMO_VERSION,
            records: BTreeMap::new(),
        },
    }
}

/// Returns the blake3 of `path`, from the memo when the file's stat tuple is unchanged and
/// trusted, else by calling `hash_fn` (and recording the result). `now` is the clock, a
/// parameter so tests can age records without sleeping.
pub fn source_hash(
    root: &Path,
    path: &Path,
    hash_fn: impl FnOnce(&Path) -> io::Result<[u8; 32]>,
    now: impl Fn() -> SystemTime,
) -> io::Result<[u8; 32]> {
    let canonical = fs::canonicalize(path)?;
    let memo_key = canonical.to_string_lossy().into_owned();
    let before = StatTuple::of(&fs::metadata(&canonical)?)?;

    if let Some(hash) = load(root)
        .records
        .get(&memo_key)
        .and_then(|r| r.trusted_for(&before))
    {
        return Ok(hash);
    }

    let recorded_ns = system_time_ns(now());
    let hash = hash_fn(&canonical)?;
    let after = StatTuple::of(&fs::metadata(&canonical)?)?;
    if after != before {
        return Err(io::Error::other(format!(
            "{} changed while it was being hashed; run again once nothing is writing to it",
            canonical.display()
        )));
    }

    // The memo is only an optimisation: failing to record must not fail the caller.
    let _ = record(
        root,
        memo_key,
        Record {
            stat: before,
            blake3: key::to_hex(&hash),
            recorded_ns,
        },
    );
    Ok(hash)
}

fn record(root: &Path, memo_key: String, rec: Record) -> io::Result<()> {
    fs::create_dir_all(root)?;
    // Read-modify-write under the lock, so two processes recording different files both land.
    let _lock = FileLock::acquire(&root.join(MEMO_LOCK))?;
    let mut memo = load(root);
    memo.records.insert(memo_key, rec);
    while memo.records.len() > MAX_RECORDS {
        let oldest = memo
            .records
            .iter()
            .min_by_key(|(_, r)| r.recorded_ns)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => memo.records.remove(&k),
            None => break,
        };
    }
    let bytes = serde_json::to_vec_pretty(&memo).map_err(io::Error::other)?;
    fsutil::write_small_atomic(&root.join(MEMO_FILE), &root.join(MEMO_TEMP), &bytes)
}

/// Deletes the memo (under its lock).
pub fn clear(root: &Path) -> io::Result<()> {
    if !root.join(MEMO_LOCK).exists() && !root.join(MEMO_FILE).exists() {
        return Ok(());
    }
    let _lock = FileLock::acquire(&root.join(MEMO_LOCK))?;
    fsutil::remove_if_exists(&root.join(MEMO_FILE))?;
    fsutil::remove_if_exists(&root.join(MEMO_TEMP))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Write;

    fn counting_hash(calls: &Cell<u32>) -> impl FnOnce(&Path) -> io::Result<[u8; 32]> + '_ {
        move |p: &Path| {
            calls.set(calls.get() + 1);
            Ok(*blake3::hash(&fs::read(p)?).as_bytes())
        }
    }

    /// A clock well past the file's timestamps, as if the file had been quiet for a minute.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(60)
    }

    fn write(path: &Path, bytes: &[u8]) {
        let mut f = fs::File::create(path).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    #[test]
    fn unchanged_file_is_not_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"first contents");
        let calls = Cell::new(0);
        let h1 = source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        let h2 = source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 1);
        assert_eq!(h1, h2);
        assert_eq!(h1, *blake3::hash(b"first contents").as_bytes());
        // A different spelling of the same path hits the same record.
        let dotted = dir.path().join(".").join("model.gguf");
        source_hash(dir.path(), &dotted, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn modified_in_place_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"AAAA");
        let calls = Cell::new(0);
        let h1 = source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        // Same size, new contents, and a new mtime.
        let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
        (&f).write_all(b"BBBB").unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        drop(f);
        let h2 = source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 2);
        assert_ne!(h1, h2);
        assert_eq!(h2, *blake3::hash(b"BBBB").as_bytes());
    }

    #[cfg(unix)]
    #[test]
    fn rewrite_restoring_mtime_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"AAAA");
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let calls = Cell::new(0);
        source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        // Let the ctime clock tick before rewriting.
        std::thread::sleep(Duration::from_millis(50));
        let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
        (&f).write_all(b"BBBB").unwrap();
        f.set_modified(old).unwrap();
        drop(f);
        let h = source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 2, "same size and mtime, but ctime moved");
        assert_eq!(h, *blake3::hash(b"BBBB").as_bytes());
    }

    #[test]
    fn recently_modified_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"fresh");
        let calls = Cell::new(0);
        source_hash(dir.path(), &src, counting_hash(&calls), SystemTime::now).unwrap();
        source_hash(dir.path(), &src, counting_hash(&calls), SystemTime::now).unwrap();
        assert_eq!(
            calls.get(),
            2,
            "a file younger than TRUST_AFTER is hashed every time"
        );
    }

    #[test]
    fn replaced_file_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"one");
        let calls = Cell::new(0);
        source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        let other = dir.path().join("other");
        write(&other, b"two");
        fs::rename(&other, &src).unwrap();
        let h = source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 2);
        assert_eq!(h, *blake3::hash(b"two").as_bytes());
    }

    #[test]
    fn corrupt_memo_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MEMO_FILE), b"{not json").unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"data");
        let calls = Cell::new(0);
        source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn hash_errors_propagate_and_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("model.gguf");
        write(&src, b"data");
        let err = source_hash(
            dir.path(),
            &src,
            |_| Err(io::Error::other("disk on fire")),
            later,
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        let calls = Cell::new(0);
        source_hash(dir.path(), &src, counting_hash(&calls), later).unwrap();
        assert_eq!(calls.get(), 1);
        assert!(source_hash(
            dir.path(),
            &dir.path().join("missing"),
            counting_hash(&calls),
            later
        )
        .is_err());
    }
}
