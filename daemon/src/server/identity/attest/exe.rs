//! The executable a process runs: opened once through `/proc/PID/exe` (the file itself,
//! whatever is at its path now), identified by device, inode, size, mtime and ctime, and
//! hashed only while it stays that file.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};

/// How much of an executable one read takes while hashing.
const HASH_CHUNK: usize = 64 * 1024;

/// An executable file's identity: device, inode, size, and modification and change times to
/// the nanosecond. `touch -r` can put a patched file's mtime back; nobody can set its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ExeKey {
    /// `st_dev`.
    pub(super) dev: u64,
    /// `st_ino`.
    pub(super) ino: u64,
    /// `st_size`.
    pub(super) size: u64,
    /// `st_mtime`, seconds and nanoseconds.
    mtime: (i64, i64),
    /// `st_ctime`, seconds and nanoseconds.
    ctime: (i64, i64),
}

impl ExeKey {
    pub(super) fn of(meta: &std::fs::Metadata) -> ExeKey {
        ExeKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Hashes `file` (at most `max` bytes), believing the result only if the file is still what
/// `key` describes afterwards.
pub(super) fn hash_file(mut file: std::fs::File, key: ExeKey, max: u64) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut total: u64 = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if total > max {
                    return None;
                }
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let after = ExeKey::of(&file.metadata().ok()?);
    (after == key && total == key.size).then(|| hex::encode(hasher.finalize()))
}

/// Opens the executable `pid` runs (the file itself, whatever is at its path now) and stats it.
pub(super) fn open_exe(pid: i32) -> Option<(std::fs::File, ExeKey)> {
    let file = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
    let key = ExeKey::of(&file.metadata().ok()?);
    Some((file, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_patched_with_its_mtime_put_back_is_hashed_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bot");
        std::fs::write(&path, b"original program").expect("write");
        let before = ExeKey::of(&std::fs::metadata(&path).expect("stat"));
        let mtime = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.write_all(b"patched program!").expect("patch");
        f.set_modified(mtime).expect("touch -r");
        drop(f);
        let after = ExeKey::of(&std::fs::metadata(&path).expect("stat"));
        assert_eq!((before.size, before.mtime), (after.size, after.mtime));
        assert_ne!(before, after, "the ctime tells them apart");
        // A file that changes while it is hashed is not believed.
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(hash_file(file, before, u64::MAX), None);
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(hash_file(file, after, u64::MAX).map(|h| h.len()), Some(64));
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(
            hash_file(file, after, 4),
            None,
            "over the limit while reading"
        );
    }

    #[test]
    fn a_file_whose_reads_fail_has_no_hash_and_is_not_read_forever() {
        // Reading a directory fails, every time (EISDIR): only EINTR is worth a retry.
        let dir = tempfile::tempdir().expect("tmp");
        let file = std::fs::File::open(dir.path()).expect("open");
        let key = ExeKey::of(&file.metadata().expect("stat"));
        assert_eq!(hash_file(file, key, u64::MAX), None);
    }
}
