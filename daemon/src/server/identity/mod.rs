//! Who is asking: the peer's credentials as the kernel reports them (`peer`), the program
//! behind the connection (`attest`), and what the configured policy grants it (`policy`).

pub(crate) mod attest;
mod peer;
pub(crate) mod policy;

pub(crate) use peer::Peer;
pub(crate) use policy::{Access, Policy};
