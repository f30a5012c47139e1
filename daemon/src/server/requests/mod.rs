//! What a request does: the connection's `session` hands each request to its handler
//! (`read`, `admin`, `rotation`, `break_glass`, `watch`), which returns a `reply`. Refusals go through the
//! daemon-wide `denials` ledger, and counted reads through the `read_ledger`; open connections are listed in the `registry`; `status` (with the
//! host's health) is shared with the HTTP endpoints.

pub(crate) mod admin;
mod break_glass;
pub(crate) mod denials;
mod read;
mod read_ledger;
mod registry;
mod reply;
mod rotation;
mod session;
pub(crate) mod status;
mod subscription;
mod watch;

pub(crate) use denials::Denials;
pub(crate) use read_ledger::ReadLedger;
pub(crate) use registry::Registry;
pub(crate) use reply::{Reply, encode_reply};
pub(crate) use session::Session;
pub(crate) use subscription::Subscription;
