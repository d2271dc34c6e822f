//! Crash-safe file replacement, shared by everything edgeclr writes.
//!
//! A power cut or SIGKILL mid-save (common on edge devices) must leave either
//! the old file or the new one, never a torn mix: write `NAME.tmp`, fsync it,
//! rename it over `NAME`, then fsync the directory so the rename is durable.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Replaces `path` atomically with what `write` puts in the file. On failure
/// the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent_dir(path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Makes the rename itself durable; directories cannot be fsynced on Windows.
#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}
