//! Small filesystem operations the cache needs to be crash-safe.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Flushes a directory's entries (a rename is durable only once its directory is synced).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Windows cannot open a directory as a file; NTFS journals the rename itself.
        let _ = dir;
        Ok(())
    }
}

/// Makes a file read-only for everyone (0444 on Unix): an entry is never modified in place,
/// because readers map it and a change underneath a map is undefined behaviour.
pub fn make_read_only(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o444))
    }
    #[cfg(not(unix))]
    {
        let mut perms = fs::metadata(path)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(path, perms)
    }
}

/// Removes a file; a missing file is not an error. Returns whether a file was removed.
pub fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        #[cfg(not(unix))]
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Windows refuses to delete read-only files; Unix only looks at the directory.
            let mut perms = fs::metadata(path)?.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            fs::set_permissions(path, perms)?;
            fs::remove_file(path).map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// Writes a small file atomically: `temp` is written and synced, then renamed over `target`,
/// then the directory is synced. Callers serialise writers of the same `temp` with a lock.
pub fn write_small_atomic(target: &Path, temp: &Path, bytes: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(temp, target)?;
        sync_dir(target.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(temp);
    }
    result
}
