//! Small pieces every layer shares: wall-clock conversions, lock-poison recovery, the host's
//! machine id.
//! Nothing here knows about secrets, the store or the protocol.

pub(crate) mod host;
pub(crate) mod key_file;
pub(crate) mod lock;
pub(crate) mod shares;
pub(crate) mod time;
