//! Atomic output files: nothing appears at the target path until the whole file is
//! written and on disk, so an interrupted write never leaves a partial file behind.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A temp file beside the target; `commit` fsyncs it, renames it over the target and
/// fsyncs the directory. Dropped without `commit`, it removes the temp file.
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<AtomicFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .ok_or_else(|| Error::Write(format!("{} is not a file path", target.display())))?
            .to_string_lossy();
        let temp = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| Error::io(&temp, e))?;
        Ok(AtomicFile {
            file,
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temp file's path (for error messages).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Asks the kernel to start writing `len` bytes at `offset` to the device now (see
    /// [`start_writeback`]).
    pub fn start_writeback(&self, offset: u64, len: u64) {
        start_writeback(&self.file, offset, len);
    }

    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.temp, e))?;
        std::fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.committed = true;
        sync_dir(&parent_dir(&self.target)).map_err(|e| Error::io(parent_dir(&self.target), e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Asks the kernel to start writing `len` bytes of `file` at `offset` to the device now,
/// without waiting, so that a later fsync finds most of the file already written. Only a
/// hint: failures are ignored, since that fsync reports any I/O error. It may block while
/// the device queue is full, which is why a writer can call it from a thread of its own
/// (on a clone of the file handle).
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a plain system call on an open fd; no memory is passed.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename durable: on Linux a directory is fsynced through an fd opened on it.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
