//! Watching secrets for changes from C: a callback on a library thread.

use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ::secretd_client as rust_client;
use rust_client::{ChangeEvent, WatchHandle};

use crate::error::{
    SECRETD_RESULT_INVALID_ARGUMENT, SECRETD_RESULT_NULL_PARAMETER, SECRETD_RESULT_OK, code_of,
    fail, fail_with, guard, guard_value, secretd_result,
};
use crate::handles::{secretd_client, source_name};

/// What a watch event reports. The numbers are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum secretd_event_kind {
    /// A watched secret now serves a different value: read it again with `secretd_get`.
    Changed = 0,
    /// Events may have been missed (the subscriber fell behind, or the watch reconnected
    /// after a daemon restart): read every watched secret again.
    Lagged = 1,
    /// The watch connection broke; it resubscribes by itself and then reports `LAGGED`. If
    /// `error` is a daemon refusal (such as `SECRETD_RESULT_PERMISSION_DENIED`), the daemon
    /// refused the resubscription and no further events follow.
    Error = 2,
    /// GSM's rotation schedule asks for a new version of `name` (nothing served changed):
    /// automation can add one. Only `name` and `at_ms` are set.
    RotationRequested = 3,
}

/// One event, lent to the callback: every pointer is valid only during the call. Never holds
/// a value. For `LAGGED` and `ERROR` the strings are empty.
#[repr(C)]
#[derive(Debug)]
pub struct secretd_change_event {
    /// What happened.
    pub kind: secretd_event_kind,
    /// The secret's catalog name.
    pub name: *const c_char,
    /// The version now served.
    pub version: *const c_char,
    /// Where the value now served came from: "gsm", "break_glass", "env" or "file".
    pub source: *const c_char,
    /// Keyed fingerprint (HMAC-SHA256, hex) of the value now served.
    pub fingerprint: *const c_char,
    /// When the daemon started serving it, Unix milliseconds.
    pub at_ms: i64,
    /// For `ERROR`: why.
    pub error: secretd_result,
}

/// Called on the library's watch thread for every event. Must not block for long (events for
/// this watch wait meanwhile). May call `secretd_get` on any client, and may call
/// `secretd_watch_stop` on its own watch (which then returns without waiting).
pub type secretd_watch_callback =
    Option<unsafe extern "C" fn(event: *const secretd_change_event, user_data: *mut c_void)>;

/// A running watch. Opaque. Stop and free it with `secretd_watch_stop`.
#[derive(Debug)]
pub struct secretd_watch_handle {
    /// Stops the watch thread on drop.
    handle: WatchHandle,
}

/// The callback and its argument, moved to the watch thread.
struct Target {
    /// The C function.
    callback: unsafe extern "C" fn(*const secretd_change_event, *mut c_void),
    /// Its argument, opaque to us.
    user_data: *mut c_void,
}

// SAFETY: the caller of `secretd_watch` promises `user_data` may be used from the watch thread.
unsafe impl Send for Target {}

impl Target {
    fn deliver(&self, item: rust_client::Result<ChangeEvent>) {
        let empty = c"";
        let (kind, strings, at_ms, error) = match item {
            Ok(ChangeEvent::Changed(c)) => {
                let text = |s: &str| CString::new(s).unwrap_or_default();
                let strings = [
                    text(&c.name),
                    text(&c.version),
                    CString::from(source_name(c.source)),
                    text(&c.fingerprint),
                ];
                (
                    secretd_event_kind::Changed,
                    Some(strings),
                    c.at_ms,
                    SECRETD_RESULT_OK,
                )
            }
            Ok(ChangeEvent::Lagged) => (secretd_event_kind::Lagged, None, 0, SECRETD_RESULT_OK),
            Ok(ChangeEvent::RotationRequested(r)) => {
                let strings = [
                    CString::new(r.name).unwrap_or_default(),
                    CString::default(),
                    CString::default(),
                    CString::default(),
                ];
                (
                    secretd_event_kind::RotationRequested,
                    Some(strings),
                    r.at_ms,
                    SECRETD_RESULT_OK,
                )
            }
            Err(e) => {
                let code = code_of(&e);
                (secretd_event_kind::Error, None, 0, code as secretd_result)
            }
        };
        let ptr = |i: usize| {
            strings
                .as_ref()
                .map_or(empty.as_ptr(), |s: &[CString; 4]| s[i].as_ptr())
        };
        let event = secretd_change_event {
            kind,
            name: ptr(0),
            version: ptr(1),
            source: ptr(2),
            fingerprint: ptr(3),
            at_ms,
            error,
        };
        // SAFETY: the caller of `secretd_watch` provided a valid callback; `event` and its
        // strings outlive the call.
        unsafe { (self.callback)(&event, self.user_data) };
    }
}

/// Watches secrets for changes. `names` holds `count` catalog names; `count` 0 (with `names`
/// NULL or not) watches every secret the caller may read. The subscription is made before this
/// returns, so a refusal (`SECRETD_RESULT_PERMISSION_DENIED`, `SECRETD_RESULT_NOT_FOUND`) comes
/// back here; then `callback(event, user_data)` runs on a library thread for every event until
/// `secretd_watch_stop`. On success writes the watch to `*out`.
///
/// # Safety
/// `client` must be NULL or live; `names` must hold `count` NUL-terminated strings (or be NULL
/// when `count` is 0); `user_data` must be usable from another thread until the watch is
/// stopped; `out` must be NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_watch(
    client: *const secretd_client,
    names: *const *const c_char,
    count: usize,
    callback: secretd_watch_callback,
    user_data: *mut c_void,
    out: *mut *mut secretd_watch_handle,
) -> secretd_result {
    guard(|| {
        let Some(callback) = callback else {
            return fail(SECRETD_RESULT_NULL_PARAMETER, "callback is NULL");
        };
        if client.is_null() || out.is_null() || (names.is_null() && count > 0) {
            return fail(
                SECRETD_RESULT_NULL_PARAMETER,
                "client, out and (when count > 0) names must not be NULL",
            );
        }
        let mut list = Vec::with_capacity(count.min(rust_client::MAX_WATCH_NAMES + 1));
        for i in 0..count {
            // SAFETY: `names` holds `count` pointers per the contract.
            let p = unsafe { *names.add(i) };
            if p.is_null() {
                return fail(SECRETD_RESULT_NULL_PARAMETER, "a name is NULL");
            }
            // SAFETY: NUL-terminated per the contract.
            let Ok(name) = unsafe { CStr::from_ptr(p) }.to_str() else {
                return fail(SECRETD_RESULT_INVALID_ARGUMENT, "a name is not UTF-8");
            };
            list.push(name);
        }
        // SAFETY: non-NULL and live per the contract.
        let client = unsafe { &(*client).client };
        let target = Target {
            callback,
            user_data,
        };
        let handle = client.watch_with(list, move |item| {
            // A panic here must not unwind through the C callback's caller frames.
            let _ = catch_unwind(AssertUnwindSafe(|| target.deliver(item)));
        });
        match handle {
            Ok(handle) => {
                let watch = Box::into_raw(Box::new(secretd_watch_handle { handle }));
                // SAFETY: `out` is non-NULL and valid per the contract.
                unsafe { *out = watch };
                SECRETD_RESULT_OK
            }
            Err(e) => fail_with(&e),
        }
    })
}

/// Stops a watch, waits until its callback is no longer running (unless called from that
/// callback), and frees it. NULL is a no-op.
///
/// # Safety
/// `watch` must be NULL or a pointer from `secretd_watch` not yet stopped.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn secretd_watch_stop(watch: *mut secretd_watch_handle) {
    guard_value((), || {
        if !watch.is_null() {
            // SAFETY: from Box::into_raw in secretd_watch, freed once.
            let watch = unsafe { Box::from_raw(watch) };
            watch.handle.stop();
        }
    })
}
