//! The secretd wire protocol.
//!
//! Everything a client in any language needs to talk to the daemon lives here and in
//! `docs/protocol.md`: the frame codec ([`frame`]), the messages ([`message`]), the stable
//! error codes ([`error`]) and the secret value type that never prints ([`value`]).
//! It also holds [`LockedBuf`], the locked, no-dump memory both caches keep values in.
//! This crate has no runtime and no I/O beyond `std::io::Read`/`Write` helpers.

pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod legacy;
pub mod locked;
pub mod message;
mod name;
pub mod paths;
pub mod value;

pub use error::{ErrorCode, WireError};
pub use frame::{FrameError, MAX_FRAME, MAX_RESPONSE_FRAME};
pub use locked::LockedBuf;
pub use message::{
    AuditEntry, AuditVerification, ChangeEvent, ChannelState, ClientHello, ConnectionInfo,
    DaemonHealth, EntryState, HealthStatus, MAGIC, MAX_NAME_LEN, MAX_WATCH_NAMES,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RefreshOutcome, Request, Response, RotationRequest,
    RotationStep, SecretChange, SecretReply, SecretStatus, ServerHello, SourceKind, validate_name,
};
pub use value::SecretValue;
