//! Exclusive per-key locks on lock files, with std's `File::lock` (flock on Unix,
//! LockFileEx on Windows). The lock is released when the file is closed, so a crashed
//! holder never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// A held exclusive lock; dropping it releases the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock at `path` is held (creating the lock file if needed).
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        loop {
            let file = open_lock_file(path)?;
            file.lock()?;
            if still_current(&file, path)? {
                return Ok(FileLock {
                    file,
                    path: path.to_path_buf(),
                });
            }
        }
    }

    /// Takes the lock if nobody holds it; `Ok(None)` when another holder has it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        loop {
            let file = open_lock_file(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(e),
            }
            if still_current(&file, path)? {
                return Ok(Some(FileLock {
                    file,
                    path: path.to_path_buf(),
                }));
            }
        }
    }

    /// Deletes the lock file while the lock is held. Safe because every acquirer checks,
    /// after locking, that the file it locked is still the one at the path (and retries
    /// otherwise). On platforms without that check the file is left in place.
    pub fn remove_file(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            crate::fsutil::remove_if_exists(&self.path).map(|_| ())
        }
        #[cfg(not(unix))]
        {
            Ok(())
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes the order explicit.
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// True when `file` is still the file at `path`: a remover may have deleted the lock file
/// between our open and our lock, in which case we hold a lock nobody else will see.
fn still_current(file: &File, path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        // Lock files are never deleted on these platforms (see `remove_file`).
        let _ = (file, path);
        Ok(true)
    }
}
