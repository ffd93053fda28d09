//! The state-dir lock: at most one gateway per state dir.
//!
//! [`StateLock::acquire`] takes an exclusive, non-blocking OS lock (`flock(2)` on Unix,
//! `LockFileEx` on Windows) on `<state>/pincer.lock` and writes the holder's pid into it. The
//! OS releases the lock when the file is closed, including when the process dies, so a crash
//! never leaves a stale lock behind; the pid in the file is only informative. The lock file is
//! never deleted (deleting it would let two processes lock two different inodes).

use crate::error::{Result, StoreError};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock on a state dir, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    state_dir: PathBuf,
    path: PathBuf,
}

impl StateLock {
    /// File name of the lock inside the state dir.
    pub const FILE_NAME: &'static str = "pincer.lock";

    /// Lock `state_dir` (creating it if needed) without blocking.
    ///
    /// Errors: [`StoreError::Locked`] if another process, or another `StateLock` in this
    /// process, holds it (with the holder's pid when it could be read); [`StoreError::Io`] if
    /// the dir or lock file cannot be created or locked.
    pub fn acquire(state_dir: &Path) -> Result<StateLock> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StoreError::Io { path: state_dir.to_path_buf(), source })?;
        let path = state_dir.join(Self::FILE_NAME);
        let io = |source| StoreError::Io { path: path.clone(), source };
        // No truncate here: the file may belong to a running holder whose pid we must read.
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        if !file.try_lock_exclusive().map_err(io)? {
            let mut content = String::new();
            let holder_pid = match file.read_to_string(&mut content) {
                Ok(_) => content.trim().parse::<u32>().ok(),
                Err(_) => None,
            };
            return Err(StoreError::Locked { path: state_dir.to_path_buf(), holder_pid });
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(StateLock { file, state_dir: state_dir.to_path_buf(), path })
    }

    /// The locked state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The lock file (`<state>/pincer.lock`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateLock {
    /// Unlock explicitly; closing the file would release the lock anyway.
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}
