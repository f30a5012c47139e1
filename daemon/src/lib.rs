//! secretd: the daemon and its command-line interface.
//!
//! Layers, each using only those above it:
//! `config` → `source` → `cache` → `refresh` → `policy`/`peer` → `server` → `serve` → `cli`.

pub mod audit_log;
pub mod break_glass;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dev;
pub mod fingerprint;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod peer;
pub mod policy;
pub mod process;
pub mod refresh;
pub mod secret_bytes;
pub mod serve;
pub mod server;
pub mod socket;
pub mod source;
pub mod status_json;
pub mod store;
pub mod systemd;
pub mod time;
