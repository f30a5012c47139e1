//! secretd: the daemon and its command-line interface.
//!
//! The crate is grouped by the path data takes; docs/design.md draws it. Layers, each using
//! only those before it:
//!
//! 1. `util` (time, lock recovery) and `config` (the validated TOML);
//! 2. `store`: the redb file, metadata rows, persisted break-glass envelopes;
//! 3. `audit`: records, the hash chain over them, the group-committing writer, retention;
//! 4. `metrics`: the Prometheus series every layer above counts into;
//! 5. `catalog`: values in locked memory, sources, refreshers, break-glass precedence;
//! 6. `server`: the socket, peer credentials, policy, connections, handlers, watch, HTTP;
//! 7. `runtime`: serve wiring, process hygiene, systemd, dev mode, housekeeping;
//! 8. `cli`: the `secretd` command, the only thing outside the crate uses.

mod audit;
mod catalog;
pub mod cli;
mod config;
mod metrics;
mod runtime;
mod server;
mod store;
mod util;

/// Turns the bench's knobs on (`secretd-bench-daemon`, feature `bench-knobs`, only): without
/// this call a binary built with the feature behaves exactly as `secretd`.
#[cfg(feature = "bench-knobs")]
pub fn enable_bench_knobs() {
    server::identity::BENCH_KNOBS.store(true, std::sync::atomic::Ordering::Relaxed);
}
