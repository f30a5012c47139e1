//! Memory for secret values that outlive a request: page-aligned, locked into RAM, left out of
//! core dumps, wiped in a forked child, and zeroed before it is returned to the kernel.
//!
//! Both the daemon's cache and the client-side cache keep values in a [`LockedBuf`]. Short-lived
//! copies (a frame on its way out, a `Secret` handed to a caller) use ordinary zeroizing heap
//! memory instead: locking a mapping costs syscalls on every read, which the hot path cannot pay.
//!
//! Each buffer is its own anonymous mapping, so `munlock` on drop can never unlock a page that
//! another value still uses. The catalog is small (tens of values), so a page per value is cheap.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroize;

/// Buffers that could not be locked into RAM (`RLIMIT_MEMLOCK` exhausted), since start. They
/// still work, are still excluded from dumps and still wiped; they could reach swap.
static UNLOCKED: AtomicU64 = AtomicU64::new(0);

/// How many buffers could not be locked into RAM since the process started.
pub fn unlocked_buffers() -> u64 {
    UNLOCKED.load(Ordering::Relaxed)
}

/// A fixed-size byte buffer in its own locked, no-dump, wipe-on-fork mapping.
pub struct LockedBuf {
    /// Start of the mapping (or of the heap fallback).
    ptr: NonNull<u8>,
    /// Bytes in use.
    len: usize,
    /// Bytes mapped (whole pages); 0 when the buffer fell back to the heap.
    mapped: usize,
    /// Whether `mlock` succeeded.
    locked: bool,
}

// SAFETY: the buffer is plain bytes owned by this value; shared access is read-only.
unsafe impl Send for LockedBuf {}
// SAFETY: as above: `&LockedBuf` only hands out `&[u8]`.
unsafe impl Sync for LockedBuf {}

impl LockedBuf {
    /// A copy of `bytes`. The caller wipes its own copy.
    pub fn copy_from(bytes: &[u8]) -> LockedBuf {
        let mut buf = LockedBuf::zeroed(bytes.len());
        buf.as_mut_slice().copy_from_slice(bytes);
        buf
    }

    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> LockedBuf {
        let page = page_size();
        let mapped = len.max(1).div_ceil(page) * page;
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            // Out of address space or map count: keep working with wiped heap memory.
            UNLOCKED.fetch_add(1, Ordering::Relaxed);
            let heap: Box<[u8]> = vec![0u8; len].into_boxed_slice();
            let ptr = NonNull::new(Box::into_raw(heap).cast::<u8>()).unwrap_or(NonNull::dangling());
            return LockedBuf {
                ptr,
                len,
                mapped: 0,
                locked: false,
            };
        }
        // SAFETY: `addr` is a fresh mapping of `mapped` bytes that we own. Failures of these
        // advisory calls leave a working buffer, so they are counted, not fatal.
        let locked = unsafe {
            libc::madvise(addr, mapped, libc::MADV_DONTDUMP);
            libc::madvise(addr, mapped, libc::MADV_WIPEONFORK);
            libc::mlock(addr, mapped) == 0
        };
        if !locked {
            UNLOCKED.fetch_add(1, Ordering::Relaxed);
        }
        LockedBuf {
            // mmap never returns null on success.
            ptr: NonNull::new(addr.cast::<u8>()).unwrap_or(NonNull::dangling()),
            len,
            mapped,
            locked,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to at least `len` initialized bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer is locked into RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The address of the first byte, for tests that inspect `/proc/self/smaps`.
    pub fn address(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
}

impl Drop for LockedBuf {
    fn drop(&mut self) {
        self.as_mut_slice().zeroize();
        if self.mapped == 0 {
            // SAFETY: a heap fallback came from `Box<[u8]>` of exactly `len` bytes.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
            return;
        }
        // SAFETY: the mapping is ours and nothing borrows it any more.
        unsafe {
            let addr = self.ptr.as_ptr().cast::<libc::c_void>();
            if self.locked {
                libc::munlock(addr, self.mapped);
            }
            libc::munmap(addr, self.mapped);
        }
    }
}

impl std::fmt::Debug for LockedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LockedBuf([REDACTED; {} bytes])", self.len)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smaps block of the mapping that contains `addr`.
    fn smaps_of(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut current = String::new();
        let mut inside = false;
        for line in smaps.lines() {
            let is_header = line.split_whitespace().next().is_some_and(|r| {
                r.contains('-') && r.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            });
            if is_header {
                if inside {
                    return current;
                }
                let range = line.split_whitespace().next().unwrap_or("");
                let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
                let lo = usize::from_str_radix(lo, 16).unwrap_or(0);
                let hi = usize::from_str_radix(hi, 16).unwrap_or(0);
                inside = (lo..hi).contains(&addr);
                current.clear();
            }
            if inside {
                current.push_str(line);
                current.push('\n');
            }
        }
        current
    }

    #[test]
    fn holds_bytes_and_is_locked_and_excluded_from_dumps() {
        let b = LockedBuf::copy_from(b"hunter2");
        assert_eq!(b.as_slice(), b"hunter2");
        assert_eq!(format!("{b:?}"), "LockedBuf([REDACTED; 7 bytes])");
        let block = smaps_of(b.address());
        let flags = block
            .lines()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("VmFlags line");
        assert!(flags.contains(" dd"), "not excluded from dumps: {flags}");
        // CI runs as root with room to lock; elsewhere RLIMIT_MEMLOCK may refuse (the buffer
        // then still works, unlocked, and says so).
        assert!(
            b.is_locked() || std::env::var_os("CI").is_none(),
            "mlock failed in CI"
        );
        if b.is_locked() {
            assert!(flags.contains(" lo"), "not locked: {flags}");
        }
        let empty = LockedBuf::copy_from(b"");
        assert!(empty.is_empty());
    }
}
