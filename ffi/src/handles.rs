//! The opaque handles and the functions on them.

use std::ffi::{CStr, CString, OsStr, c_char};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use ::secretd_client as rust_client;
use rust_client::{Client, Secret, SourceKind};

use crate::error::{
    SECRETD_RESULT_INVALID_ARGUMENT, SECRETD_RESULT_NULL_PARAMETER, SECRETD_RESULT_OK,
    SECRETD_RESULT_PROTOCOL, fail, fail_with, guard, guard_value, secretd_result,
};

/// A connection to the daemon. Opaque. Thread-safe: one client may be shared by many threads
/// (their requests take turns on its one connection). Reconnects after a daemon restart.
#[derive(Debug)]
pub struct secretd_client {
    /// The Rust client.
    pub(crate) client: Client,
}

/// A secret value with its version and source. Opaque. Its memory is wiped by
/// `secretd_secret_free`.
#[derive(Debug)]
pub struct secretd_secret {
    /// The value and metadata.
    secret: Secret,
    /// The version as a C string, kept so `secretd_secret_version` can lend it out.
    version: CString,
    /// The source as a C string.
    source: &'static CStr,
}

/// A source's stable name as a static C string.
pub(crate) fn source_name(source: SourceKind) -> &'static CStr {
    source.as_c_str()
}

/// The library's version, e.g. "0.1.0". Static; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn secretd_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Connects to the daemon. `socket_path_or_null` NULL means the default: `$SECRETD_SOCKET`,
/// else `/run/secretd/secretd.sock`, else this user's `secretd serve --dev` socket.
/// On success writes a new client to `*out` (free it with `secretd_client_free`).
///
/// # Safety
/// `socket_path_or_null` must be NULL or a NUL-terminated string; `out` must be NULL or
/// valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_client_connect(
    socket_path_or_null: *const c_char,
    out: *mut *mut secretd_client,
) -> secretd_result {
    // SAFETY: the contract is passed on unchanged.
    unsafe { connect(socket_path_or_null, out, false) }
}

/// Like `secretd_client_connect`, with the client-side cache on: values this client reads are
/// kept in its own locked, no-dump memory and served without asking the daemon (well under a
/// microsecond) until a change event, a lag, a disconnect or the value's expiry drops them. A
/// library thread keeps a watch subscription to the daemon for this.
///
/// # Safety
/// As for `secretd_client_connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_client_connect_cached(
    socket_path_or_null: *const c_char,
    out: *mut *mut secretd_client,
) -> secretd_result {
    // SAFETY: the contract is passed on unchanged.
    unsafe { connect(socket_path_or_null, out, true) }
}

/// # Safety
/// As for `secretd_client_connect`.
unsafe fn connect(
    socket_path_or_null: *const c_char,
    out: *mut *mut secretd_client,
    cached: bool,
) -> secretd_result {
    guard(|| {
        if out.is_null() {
            return fail(SECRETD_RESULT_NULL_PARAMETER, "out is NULL");
        }
        let path = if socket_path_or_null.is_null() {
            rust_client::default_socket_path()
        } else {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            let bytes = unsafe { CStr::from_ptr(socket_path_or_null) }.to_bytes();
            PathBuf::from(OsStr::from_bytes(bytes))
        };
        let connected =
            Client::connect(&path).and_then(|c| if cached { c.with_cache() } else { Ok(c) });
        match connected {
            Ok(client) => {
                let handle = Box::into_raw(Box::new(secretd_client { client }));
                // SAFETY: `out` is non-NULL and valid per the contract.
                unsafe { *out = handle };
                SECRETD_RESULT_OK
            }
            Err(e) => fail_with(&e),
        }
    })
}

/// Frees a client and closes its connection. NULL is a no-op.
///
/// # Safety
/// `client` must be NULL or a pointer from `secretd_client_connect` not yet freed, and no
/// other thread may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_client_free(client: *mut secretd_client) {
    guard_value((), || {
        if !client.is_null() {
            // SAFETY: from Box::into_raw in secretd_client_connect, freed once.
            drop(unsafe { Box::from_raw(client) });
        }
    })
}

/// Reads a secret. On success writes a new secret to `*out` (free it with
/// `secretd_secret_free`, which wipes it).
///
/// # Safety
/// `client` must be NULL or a live client; `name` NULL or NUL-terminated; `out` NULL or valid
/// for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_get(
    client: *const secretd_client,
    name: *const c_char,
    out: *mut *mut secretd_secret,
) -> secretd_result {
    guard(|| {
        if client.is_null() || name.is_null() || out.is_null() {
            return fail(
                SECRETD_RESULT_NULL_PARAMETER,
                "client, name and out must not be NULL",
            );
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
            return fail(SECRETD_RESULT_INVALID_ARGUMENT, "name is not UTF-8");
        };
        // SAFETY: non-NULL and live per the contract.
        let client = unsafe { &(*client).client };
        let secret = match client.get(name) {
            Ok(s) => s,
            Err(e) => return fail_with(&e),
        };
        let Ok(version) = CString::new(secret.version()) else {
            return fail(
                SECRETD_RESULT_PROTOCOL,
                "daemon sent a version containing NUL",
            );
        };
        let source = source_name(secret.source());
        let handle = Box::into_raw(Box::new(secretd_secret {
            secret,
            version,
            source,
        }));
        // SAFETY: `out` is non-NULL and valid per the contract.
        unsafe { *out = handle };
        SECRETD_RESULT_OK
    })
}

/// The value's bytes (not NUL-terminated; may contain NUL). Valid until the secret is freed.
/// NULL for a NULL secret.
///
/// # Safety
/// `secret` must be NULL or a live secret.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_secret_data(secret: *const secretd_secret) -> *const u8 {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or live per the contract.
        unsafe { secret.as_ref() }.map_or(std::ptr::null(), |s| s.secret.expose().as_ptr())
    })
}

/// The value's length in bytes; 0 for a NULL secret.
///
/// # Safety
/// `secret` must be NULL or a live secret.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_secret_len(secret: *const secretd_secret) -> usize {
    // SAFETY: NULL or live per the contract.
    guard_value(0, || {
        unsafe { secret.as_ref() }.map_or(0, |s| s.secret.len())
    })
}

/// The value's version (GSM version number, or a local counter), NUL-terminated. Valid until
/// the secret is freed. NULL for a NULL secret.
///
/// # Safety
/// `secret` must be NULL or a live secret.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_secret_version(secret: *const secretd_secret) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or live per the contract.
        unsafe { secret.as_ref() }.map_or(std::ptr::null(), |s| s.version.as_ptr())
    })
}

/// Where the value came from: "gsm", "break_glass", "env" or "file". Static. NULL for a NULL
/// secret.
///
/// # Safety
/// `secret` must be NULL or a live secret.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_secret_source(secret: *const secretd_secret) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: NULL or live per the contract.
        unsafe { secret.as_ref() }.map_or(std::ptr::null(), |s| s.source.as_ptr())
    })
}

/// Wipes and frees a secret. NULL is a no-op.
///
/// # Safety
/// `secret` must be NULL or a pointer from `secretd_get` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_secret_free(secret: *mut secretd_secret) {
    guard_value((), || {
        if !secret.is_null() {
            // SAFETY: from Box::into_raw in secretd_get, freed once. Dropping the Secret
            // wipes the value's memory.
            drop(unsafe { Box::from_raw(secret) });
        }
    })
}
