//! Result codes, messages, and the panic boundary.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use secretd_client::{Error, ErrorCode};

/// The outcome of a secretd call: `SECRETD_RESULT_OK` (0) or one of the `SECRETD_RESULT_*`
/// codes. A plain integer rather than a C enum, as rustls-ffi does: a code this header does not
/// name (from a newer library, or garbage) is never undefined behaviour, and
/// `secretd_error_message` answers any integer. The numbers are stable: never renumbered or
/// reused.
#[allow(non_camel_case_types)]
pub type secretd_result = u32;

/// Success.
pub const SECRETD_RESULT_OK: secretd_result = 0;
/// The name is not in the daemon's catalog.
pub const SECRETD_RESULT_NOT_FOUND: secretd_result = 1;
/// The daemon's policy does not let this process's uid/groups read the secret.
pub const SECRETD_RESULT_PERMISSION_DENIED: secretd_result = 2;
/// The secret has no servable value right now (never loaded, or stale past max_stale).
pub const SECRETD_RESULT_UNAVAILABLE: secretd_result = 3;
/// No daemon answered at the socket path.
pub const SECRETD_RESULT_CONNECT_FAILED: secretd_result = 4;
/// The daemon's bytes did not follow the protocol.
pub const SECRETD_RESULT_PROTOCOL: secretd_result = 5;
/// An argument no daemon would accept (a malformed name, non-UTF-8 text).
pub const SECRETD_RESULT_INVALID_ARGUMENT: secretd_result = 6;
/// A required pointer argument was NULL.
pub const SECRETD_RESULT_NULL_PARAMETER: secretd_result = 7;
/// A bug inside the library panicked; the call had no effect.
pub const SECRETD_RESULT_PANIC: secretd_result = 8;
/// The daemon reported an internal error.
pub const SECRETD_RESULT_INTERNAL: secretd_result = 9;
/// The daemon is at a connection limit; retry shortly.
pub const SECRETD_RESULT_BUSY: secretd_result = 10;
/// The connection failed.
pub const SECRETD_RESULT_IO: secretd_result = 11;
/// The daemon speaks another protocol version.
pub const SECRETD_RESULT_UNSUPPORTED_VERSION: secretd_result = 12;
/// The daemon did not answer within the request timeout; the next call reconnects.
pub const SECRETD_RESULT_TIMEOUT: secretd_result = 13;
/// The process behind the socket cannot be the real daemon; nothing was sent to it.
pub const SECRETD_RESULT_UNTRUSTED_SERVER: secretd_result = 14;
/// The served version was withdrawn in GSM (disabled, destroyed, or the secret deleted): an
/// operator's act, not an outage. Nothing is served until a version is allowed again.
pub const SECRETD_RESULT_REVOKED: secretd_result = 15;

/// Every code with its message, in number order: the constants above are the one list of
/// codes (cbindgen writes them into the header), and this table gives each its words.
const MESSAGES: [(secretd_result, &str); 16] = [
    (SECRETD_RESULT_OK, "success"),
    (
        SECRETD_RESULT_NOT_FOUND,
        "secret not found in the daemon's catalog",
    ),
    (
        SECRETD_RESULT_PERMISSION_DENIED,
        "permission denied by the daemon's policy",
    ),
    (
        SECRETD_RESULT_UNAVAILABLE,
        "secret unavailable (not loaded, or stale past max_stale)",
    ),
    (
        SECRETD_RESULT_CONNECT_FAILED,
        "cannot connect to the secretd socket",
    ),
    (SECRETD_RESULT_PROTOCOL, "protocol error talking to secretd"),
    (SECRETD_RESULT_INVALID_ARGUMENT, "invalid argument"),
    (
        SECRETD_RESULT_NULL_PARAMETER,
        "a required pointer argument was NULL",
    ),
    (
        SECRETD_RESULT_PANIC,
        "internal panic in libsecretd (a bug; please report it)",
    ),
    (
        SECRETD_RESULT_INTERNAL,
        "internal error in the secretd daemon",
    ),
    (
        SECRETD_RESULT_BUSY,
        "secretd is at its connection limit; retry shortly",
    ),
    (
        SECRETD_RESULT_IO,
        "connection to secretd failed or timed out",
    ),
    (
        SECRETD_RESULT_UNSUPPORTED_VERSION,
        "secretd speaks another protocol version",
    ),
    (SECRETD_RESULT_TIMEOUT, "timed out waiting for secretd"),
    (
        SECRETD_RESULT_UNTRUSTED_SERVER,
        "the process behind the socket cannot be secretd; nothing was sent to it",
    ),
    (
        SECRETD_RESULT_REVOKED,
        "secret revoked in GSM (version disabled or destroyed, or secret deleted)",
    ),
];

/// The words for `code`, if it is one of ours.
fn message(code: secretd_result) -> Option<&'static str> {
    MESSAGES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, text)| *text)
}

/// The code for a client error.
pub(crate) fn code_of(e: &Error) -> secretd_result {
    match e {
        Error::Connect { .. } => SECRETD_RESULT_CONNECT_FAILED,
        Error::Protocol(_) => SECRETD_RESULT_PROTOCOL,
        Error::Io(_) => SECRETD_RESULT_IO,
        Error::Timeout { .. } => SECRETD_RESULT_TIMEOUT,
        Error::UntrustedServer { .. } => SECRETD_RESULT_UNTRUSTED_SERVER,
        Error::InvalidArgument(_) => SECRETD_RESULT_INVALID_ARGUMENT,
        Error::Daemon(w) => match w.code {
            ErrorCode::NotFound => SECRETD_RESULT_NOT_FOUND,
            ErrorCode::PermissionDenied => SECRETD_RESULT_PERMISSION_DENIED,
            ErrorCode::Unavailable => SECRETD_RESULT_UNAVAILABLE,
            ErrorCode::Revoked => SECRETD_RESULT_REVOKED,
            ErrorCode::InvalidRequest => SECRETD_RESULT_INVALID_ARGUMENT,
            ErrorCode::UnsupportedVersion => SECRETD_RESULT_UNSUPPORTED_VERSION,
            ErrorCode::ProtocolViolation => SECRETD_RESULT_PROTOCOL,
            ErrorCode::Busy => SECRETD_RESULT_BUSY,
            ErrorCode::Internal | ErrorCode::Unknown => SECRETD_RESULT_INTERNAL,
        },
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
    fail(code_of(e), e.to_string())
}

/// Runs `f` so that a panic becomes `SECRETD_RESULT_PANIC` instead of unwinding into C.
pub(crate) fn guard(f: impl FnOnce() -> secretd_result) -> secretd_result {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        let text = message(SECRETD_RESULT_PANIC).unwrap_or_default();
        fail(SECRETD_RESULT_PANIC, text)
    })
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
    guard_value(0, || {
        let text = message(result).unwrap_or("unknown secretd result code");
        copy_out(text, buf, len)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_message_in_number_order() {
        for (i, (code, text)) in MESSAGES.iter().enumerate() {
            assert_eq!(*code as usize, i, "MESSAGES out of number order at {i}");
            assert!(!text.is_empty());
        }
        assert_eq!(message(SECRETD_RESULT_REVOKED + 1), None);
    }
}
