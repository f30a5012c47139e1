//! Running the daemon as a process: the serve wiring that builds every layer and shuts them
//! down in order, process hygiene, systemd integration, dev mode and periodic housekeeping.

pub(crate) mod dev;
mod error;
mod housekeeping;
mod open_store;
pub(crate) mod process;
pub(crate) mod serve;
pub(crate) mod systemd;
