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

/// The codes, by name (the constants below are what C sees).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// Success.
    Ok = SECRETD_RESULT_OK,
    /// The name is not in the daemon's catalog.
    NotFound = SECRETD_RESULT_NOT_FOUND,
    /// The daemon's policy does not let this process's uid/groups read the secret.
    PermissionDenied = SECRETD_RESULT_PERMISSION_DENIED,
    /// The secret has no servable value right now (never loaded, or stale past max_stale).
    Unavailable = SECRETD_RESULT_UNAVAILABLE,
    /// No daemon answered at the socket path.
    ConnectFailed = SECRETD_RESULT_CONNECT_FAILED,
    /// The daemon's bytes did not follow the protocol.
    Protocol = SECRETD_RESULT_PROTOCOL,
    /// An argument no daemon would accept (a malformed name, non-UTF-8 text).
    InvalidArgument = SECRETD_RESULT_INVALID_ARGUMENT,
    /// A required pointer argument was NULL.
    NullParameter = SECRETD_RESULT_NULL_PARAMETER,
    /// A bug inside the library panicked; the call had no effect.
    Panic = SECRETD_RESULT_PANIC,
    /// A bug or unexpected failure inside the daemon.
    Internal = SECRETD_RESULT_INTERNAL,
    /// The daemon is at its connection limit; retry shortly.
    Busy = SECRETD_RESULT_BUSY,
    /// The connection failed mid-request (after one transparent reconnect) or timed out.
    Io = SECRETD_RESULT_IO,
    /// The daemon speaks another protocol version.
    UnsupportedVersion = SECRETD_RESULT_UNSUPPORTED_VERSION,
    /// The daemon did not answer within the request timeout (5 s by default); the next call
    /// reconnects.
    Timeout = SECRETD_RESULT_TIMEOUT,
    /// The process behind the socket cannot be the real daemon; nothing was sent to it.
    UntrustedServer = SECRETD_RESULT_UNTRUSTED_SERVER,
}

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

impl Code {
    /// Every code, in number order.
    const ALL: [Code; 15] = [
        Code::Ok,
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unavailable,
        Code::ConnectFailed,
        Code::Protocol,
        Code::InvalidArgument,
        Code::NullParameter,
        Code::Panic,
        Code::Internal,
        Code::Busy,
        Code::Io,
        Code::UnsupportedVersion,
        Code::Timeout,
        Code::UntrustedServer,
    ];

    /// The code numbered `n`, if there is one.
    fn from_u32(n: u32) -> Option<Code> {
        Code::ALL.into_iter().find(|c| *c as u32 == n)
    }

    fn message(self) -> &'static str {
        match self {
            Code::Ok => "success",
            Code::NotFound => "secret not found in the daemon's catalog",
            Code::PermissionDenied => "permission denied by the daemon's policy",
            Code::Unavailable => "secret unavailable (not loaded, or stale past max_stale)",
            Code::ConnectFailed => "cannot connect to the secretd socket",
            Code::Protocol => "protocol error talking to secretd",
            Code::InvalidArgument => "invalid argument",
            Code::NullParameter => "a required pointer argument was NULL",
            Code::Panic => "internal panic in libsecretd (a bug; please report it)",
            Code::Internal => "internal error in the secretd daemon",
            Code::Busy => "secretd is at its connection limit; retry shortly",
            Code::Io => "connection to secretd failed or timed out",
            Code::UnsupportedVersion => "secretd speaks another protocol version",
            Code::Timeout => "timed out waiting for secretd",
            Code::UntrustedServer => {
                "the process behind the socket cannot be secretd; nothing was sent to it"
            }
        }
    }

    /// The code for a client error.
    pub(crate) fn from_error(e: &Error) -> Code {
        match e {
            Error::Connect { .. } => Code::ConnectFailed,
            Error::Protocol(_) => Code::Protocol,
            Error::Io(_) => Code::Io,
            Error::Timeout { .. } => Code::Timeout,
            Error::UntrustedServer { .. } => Code::UntrustedServer,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Daemon(w) => match w.code {
                ErrorCode::NotFound => Code::NotFound,
                ErrorCode::PermissionDenied => Code::PermissionDenied,
                ErrorCode::Unavailable => Code::Unavailable,
                ErrorCode::InvalidRequest => Code::InvalidArgument,
                ErrorCode::UnsupportedVersion => Code::UnsupportedVersion,
                ErrorCode::ProtocolViolation => Code::Protocol,
                ErrorCode::Busy => Code::Busy,
                ErrorCode::Internal | ErrorCode::Unknown => Code::Internal,
            },
        }
    }
}

thread_local! {
    /// The detailed message of the last failed call on this thread (never a secret value).
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `detail` as this thread's last error and returns `code`.
pub(crate) fn fail(code: Code, detail: impl Into<String>) -> secretd_result {
    let detail = detail.into();
    LAST_ERROR.with(|l| *l.borrow_mut() = detail);
    code as secretd_result
}

/// Records a client error and returns its code.
pub(crate) fn fail_with(e: &Error) -> secretd_result {
    fail(Code::from_error(e), e.to_string())
}

/// Runs `f` so that a panic becomes `SECRETD_RESULT_PANIC` instead of unwinding into C.
pub(crate) fn guard(f: impl FnOnce() -> secretd_result) -> secretd_result {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| fail(Code::Panic, Code::Panic.message()))
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
        let text = Code::from_u32(result).map_or("unknown secretd result code", Code::message);
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
