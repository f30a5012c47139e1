//! Result codes, messages, and the panic boundary.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use secretd_client::{Error, ErrorCode};

/// The outcome of a secretd call. The numbers are stable: never renumbered or reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum secretd_result {
    /// Success.
    Ok = 0,
    /// The name is not in the daemon's catalog.
    NotFound = 1,
    /// The daemon's policy does not let this process's uid/groups read the secret.
    PermissionDenied = 2,
    /// The secret has no servable value right now (never loaded, or stale past max_stale).
    Unavailable = 3,
    /// No daemon answered at the socket path.
    ConnectFailed = 4,
    /// The daemon's bytes did not follow the protocol.
    Protocol = 5,
    /// An argument no daemon would accept (a malformed name, non-UTF-8 text).
    InvalidArgument = 6,
    /// A required pointer argument was NULL.
    NullParameter = 7,
    /// A bug inside the library panicked; the call had no effect.
    Panic = 8,
    /// A bug or unexpected failure inside the daemon.
    Internal = 9,
    /// The daemon is at its connection limit; retry shortly.
    Busy = 10,
    /// The connection failed mid-request (after one transparent reconnect) or timed out.
    Io = 11,
    /// The daemon speaks another protocol version.
    UnsupportedVersion = 12,
    /// The daemon did not answer within the request timeout (5 s by default); the next call
    /// reconnects.
    Timeout = 13,
    /// The process behind the socket cannot be the real daemon; nothing was sent to it.
    UntrustedServer = 14,
}

impl secretd_result {
    fn message(self) -> &'static str {
        match self {
            secretd_result::Ok => "success",
            secretd_result::NotFound => "secret not found in the daemon's catalog",
            secretd_result::PermissionDenied => "permission denied by the daemon's policy",
            secretd_result::Unavailable => {
                "secret unavailable (not loaded, or stale past max_stale)"
            }
            secretd_result::ConnectFailed => "cannot connect to the secretd socket",
            secretd_result::Protocol => "protocol error talking to secretd",
            secretd_result::InvalidArgument => "invalid argument",
            secretd_result::NullParameter => "a required pointer argument was NULL",
            secretd_result::Panic => "internal panic in libsecretd (a bug; please report it)",
            secretd_result::Internal => "internal error in the secretd daemon",
            secretd_result::Busy => "secretd is at its connection limit; retry shortly",
            secretd_result::Io => "connection to secretd failed or timed out",
            secretd_result::UnsupportedVersion => "secretd speaks another protocol version",
            secretd_result::Timeout => "timed out waiting for secretd",
            secretd_result::UntrustedServer => {
                "the process behind the socket cannot be secretd; nothing was sent to it"
            }
        }
    }

    /// The code for a client error.
    pub(crate) fn from_error(e: &Error) -> secretd_result {
        match e {
            Error::Connect { .. } => secretd_result::ConnectFailed,
            Error::Protocol(_) => secretd_result::Protocol,
            Error::Io(_) => secretd_result::Io,
            Error::Timeout { .. } => secretd_result::Timeout,
            Error::UntrustedServer { .. } => secretd_result::UntrustedServer,
            Error::InvalidArgument(_) => secretd_result::InvalidArgument,
            Error::Daemon(w) => match w.code {
                ErrorCode::NotFound => secretd_result::NotFound,
                ErrorCode::PermissionDenied => secretd_result::PermissionDenied,
                ErrorCode::Unavailable => secretd_result::Unavailable,
                ErrorCode::InvalidRequest => secretd_result::InvalidArgument,
                ErrorCode::UnsupportedVersion => secretd_result::UnsupportedVersion,
                ErrorCode::ProtocolViolation => secretd_result::Protocol,
                ErrorCode::Busy => secretd_result::Busy,
                ErrorCode::Internal | ErrorCode::Unknown => secretd_result::Internal,
            },
        }
    }
}

thread_local! {
    /// The detailed message of the last failed call on this thread (never a secret value).
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `detail` as this thread's last error and returns `code`.
pub(crate) fn fail(code: secretd_result, detail: impl Into<String>) -> secretd_result {
    let detail = detail.into();
    LAST_ERROR.with(|l| *l.borrow_mut() = detail);
    code
}

/// Records a client error and returns its code.
pub(crate) fn fail_with(e: &Error) -> secretd_result {
    fail(secretd_result::from_error(e), e.to_string())
}

/// Runs `f` so that a panic becomes `SECRETD_RESULT_PANIC` instead of unwinding into C.
pub(crate) fn guard(f: impl FnOnce() -> secretd_result) -> secretd_result {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| fail(secretd_result::Panic, secretd_result::Panic.message()))
}

/// Runs `f` for functions that return a value rather than a result; a panic yields `default`.
pub(crate) fn guard_value<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// Copies `text` into `buf` like snprintf: at most `len - 1` bytes and a NUL. Returns the full
/// length of `text`, so a caller can tell truncation (`>= len`) and size a new buffer.
fn copy_out(text: &str, buf: *mut c_char, len: usize) -> usize {
    if !buf.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: the caller promises `buf` holds `len` bytes; we write n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buf, n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// Writes a NUL-terminated description of `result` into `buf` (at most `len` bytes including
/// the NUL; `buf` may be NULL when `len` is 0) and returns the description's full length.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_error_message(
    result: secretd_result,
    buf: *mut c_char,
    len: usize,
) -> usize {
    guard_value(0, || copy_out(result.message(), buf, len))
}

/// Writes the detailed message of the last failed call made on this thread (for example which
/// socket path could not be reached) like `secretd_error_message`. Empty before any failure.
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_last_error_message(buf: *mut c_char, len: usize) -> usize {
    guard_value(0, || LAST_ERROR.with(|l| copy_out(&l.borrow(), buf, len)))
}
