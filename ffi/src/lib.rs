//! The C API of secretd. See `include/secretd.h` (generated from this crate by cbindgen) for
//! the contract; the rules below are enforced here:
//!
//! - Every function returns a [`secretd_result`] (or a value documented as safe on NULL).
//! - Out-parameters are written only on success.
//! - `_free(NULL)` is a no-op.
//! - No panic crosses the boundary: every entry point runs under `catch_unwind` and turns a
//!   panic into `SECRETD_RESULT_PANIC`.
//! - NULL pointers give `SECRETD_RESULT_NULL_PARAMETER`; names that are not UTF-8 give
//!   `SECRETD_RESULT_INVALID_ARGUMENT`.
//! - A `secretd_client` may be used from many threads at once; requests on it are serialized.

#![allow(non_camel_case_types)]

mod error;
mod handles;
mod watch;

pub use error::{
    SECRETD_RESULT_BUSY, SECRETD_RESULT_CONNECT_FAILED, SECRETD_RESULT_INTERNAL,
    SECRETD_RESULT_INVALID_ARGUMENT, SECRETD_RESULT_IO, SECRETD_RESULT_NOT_FOUND,
    SECRETD_RESULT_NULL_PARAMETER, SECRETD_RESULT_OK, SECRETD_RESULT_PANIC,
    SECRETD_RESULT_PERMISSION_DENIED, SECRETD_RESULT_PROTOCOL, SECRETD_RESULT_REVOKED,
    SECRETD_RESULT_TIMEOUT, SECRETD_RESULT_UNAVAILABLE, SECRETD_RESULT_UNSUPPORTED_VERSION,
    SECRETD_RESULT_UNTRUSTED_SERVER, secretd_error_message, secretd_last_error_message,
    secretd_result,
};
pub use handles::{
    secretd_client, secretd_client_connect, secretd_client_connect_cached, secretd_client_free,
    secretd_get, secretd_secret, secretd_secret_data, secretd_secret_free, secretd_secret_len,
    secretd_secret_source, secretd_secret_version, secretd_version,
};
pub use watch::{
    secretd_change_event, secretd_event_kind, secretd_watch, secretd_watch_callback,
    secretd_watch_handle, secretd_watch_stop,
};
