//! One run per shard of a store at a time, by an advisory lock on a file in
//! the store. The OS releases it when its holder exits, however it exits, so
//! a run that finds a shard unlocked knows that every temporary of that shard
//! left behind belongs to a dead run (pids are reused; locks are not).

use std::fs::File;
use std::path::{Path, PathBuf};

use mmprobe_store::layout::PROGRESS;

use crate::error::{ExtractError, Result};

/// Held for the life of a run; dropping it (or dying) releases the shard.
#[derive(Debug)]
pub struct ShardLock {
    _file: File,
}

impl ShardLock {
    pub fn path(root: &Path, shard: usize, shards: usize) -> PathBuf {
        root.join(PROGRESS).join(format!("shard-{shard}-of-{shards}.lock"))
    }

    /// Takes shard `shard`/`shards` of the store at `root`, or says that another run holds it.
    pub fn acquire(root: &Path, shard: usize, shards: usize) -> Result<ShardLock> {
        let path = Self::path(root, shard, shards);
        let io = |source| ExtractError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ExtractError::Io { path: dir.to_path_buf(), source })?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        match try_lock(&file) {
            Ok(true) => Ok(ShardLock { _file: file }),
            Ok(false) => Err(ExtractError::Input(format!(
                "another run is filling shard {shard}/{shards} of {} (it holds {}); wait for it, or run another shard",
                root.display(),
                path.display()
            ))),
            Err(source) => Err(io(source)),
        }
    }
}

/// Held while a run writes what belongs to the whole store (errors.parquet,
/// the merged logit lens, the manifest's completed shards): runs of several
/// shards that finish at once take turns, so the last one sees every shard's
/// saved progress and no earlier view overwrites it.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Waits for the store's lock.
    pub fn wait(root: &Path) -> Result<StoreLock> {
        let path = root.join(PROGRESS).join("store.lock");
        let io = |source| ExtractError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ExtractError::Io { path: dir.to_path_buf(), source })?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        lock_blocking(&file).map_err(io)?;
        Ok(StoreLock { _file: file })
    }
}

#[cfg(unix)]
fn lock_blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor this File owns for as long as the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

#[cfg(not(unix))]
fn lock_blocking(_: &File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this File owns for as long as the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Without flock, runs are not kept apart (the store's files stay atomic).
#[cfg(not(unix))]
fn try_lock(_: &File) -> std::io::Result<bool> {
    Ok(true)
}
