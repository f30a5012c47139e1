//! Small pieces every layer shares: wall-clock conversions and lock-poison recovery.
//! Nothing here knows about secrets, the store or the protocol.

pub(crate) mod lock;
pub(crate) mod time;
