//! The run's own directory for `--file` and `--template` outputs: 0700, under the caller's
//! runtime directory, files 0400 written by rename, removed at exit; a killed run's directory
//! is removed by the next run that finds it unlocked.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::RunError;
use super::plan::RESERVED_PREFIX;

/// The lock a live run holds in its directory; a directory whose lock can be taken is stale.
const LOCK_FILE: &str = ".secretd-run.lock";
/// How old a run directory without a lock must be before another run removes it.
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// The folder under the base directory that holds the runs' directories.
const RUNS_FOLDER: &str = "secretd-run";

/// A live run's directory.
#[derive(Debug)]
pub(super) struct RunDir {
    /// `<base>/secretd-run/<pid>-<random>`.
    path: PathBuf,
    /// The flock that marks the directory live (closed on exec: the child does not hold it).
    _lock: File,
}

impl RunDir {
    /// Creates this run's directory after removing stale ones.
    pub(super) fn create() -> Result<RunDir, RunError> {
        let runs = runs_folder()?;
        remove_stale(&runs);
        // The pid for the reader, a random part because pids repeat across pid namespaces
        // (containers sharing a runtime directory).
        let path = runs.join(format!("{}-{:08x}", std::process::id(), fastrand::u32(..)));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| dir_error("cannot create the run directory", &path, e))?;
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .map_err(|e| dir_error("cannot create the run's lock", &path, e))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(dir_error("cannot lock the run directory", &path, e));
        }
        Ok(RunDir { path, _lock: lock })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `rel` (checked by the plan) with mode 0400, atomically: a reader sees
    /// the old file or the new one, never a part.
    pub(super) fn write(&self, rel: &Path, bytes: &[u8]) -> Result<(), RunError> {
        let dest = self.path.join(rel);
        if let Some(parent) = dest.parent() {
            DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(parent)
                .map_err(|e| dir_error("cannot create", parent, e))?;
        }
        let tmp = dest.with_file_name(format!("{RESERVED_PREFIX}-tmp-{:016x}", fastrand::u64(..)));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|()| fs::rename(&tmp, &dest));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(dir_error("cannot write", &dest, e));
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn dir_error(what: &'static str, path: &Path, source: io::Error) -> RunError {
    RunError::RunDir {
        what,
        path: path.to_owned(),
        source,
    }
}

/// `$XDG_RUNTIME_DIR/secretd-run`, or `$TMPDIR/secretd-run-<uid>` when there is no runtime
/// directory (a cron job, `su`); either must be a 0700 directory of the caller's own.
fn runs_folder() -> Result<PathBuf, RunError> {
    let uid = euid();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && owned_private_dir(p, uid).is_ok());
    let folder = match runtime {
        Some(dir) => dir.join(RUNS_FOLDER),
        None => std::env::temp_dir().join(format!("{RUNS_FOLDER}-{uid}")),
    };
    match DirBuilder::new().mode(0o700).create(&folder) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(dir_error("cannot create", &folder, e)),
    }
    owned_private_dir(&folder, uid).map_err(|why| RunError::RunDir {
        what: "refusing to write secrets under",
        path: folder.clone(),
        source: io::Error::other(why),
    })?;
    Ok(folder)
}

/// A directory (not a link to one) owned by `uid` that no one else may enter.
fn owned_private_dir(path: &Path, uid: u32) -> Result<(), &'static str> {
    let meta = fs::symlink_metadata(path).map_err(|_| "it cannot be inspected")?;
    if !meta.file_type().is_dir() {
        return Err("it is not a directory");
    }
    if meta.uid() != uid {
        return Err("another user owns it");
    }
    if meta.mode() & 0o077 != 0 {
        return Err("other users may enter it (it must be mode 0700)");
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Removes the directories of runs that are gone: their lock is free. One without a lock is a
/// run between its mkdir and its lock (a moment), or one killed there: removed once it is
/// [`UNLOCKED_GRACE`] old. Best effort: one that cannot be removed is left for the next run.
fn remove_stale(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let stale = match File::open(dir.join(LOCK_FILE)) {
            Ok(lock) => {
                // SAFETY: flock on an fd we own; it is released when `lock` closes.
                let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                rc == 0
            }
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNLOCKED_GRACE)),
        };
        if stale {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
