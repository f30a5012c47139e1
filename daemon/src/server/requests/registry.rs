//! The open connections and what was attested of each (admins: `status --connections`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use secretd_proto::ConnectionInfo;

use crate::server::identity::Peer;
use crate::util::lock::Recover;
use crate::util::time::now_ms;

/// Every open connection, by a number of its own.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// The next connection's number.
    next: AtomicU64,
    /// Who each open connection's requests come from (the last writer identified on it).
    open: Mutex<BTreeMap<u64, ConnectionInfo>>,
}

impl Registry {
    /// Registers a connection whose requests come from `peer`, which agreed on `protocol` in
    /// its hello; returns the connection's number.
    pub(crate) fn register(&self, peer: &Peer, protocol: u16) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let info = ConnectionInfo {
            connected_at_ms: now_ms(),
            protocol_version: protocol,
            ..describe(peer)
        };
        self.open.lock().recover().insert(id, info);
        id
    }

    /// Connection `id`'s requests now come from `peer` (another process wrote on it): the
    /// listing shows who is asking now, not who connected.
    pub(crate) fn update(&self, id: u64, peer: &Peer) {
        if let Some(info) = self.open.lock().recover().get_mut(&id) {
            *info = ConnectionInfo {
                connected_at_ms: info.connected_at_ms,
                protocol_version: info.protocol_version,
                ..describe(peer)
            };
        }
    }

    /// Connection `id` is closed.
    pub(crate) fn remove(&self, id: u64) {
        self.open.lock().recover().remove(&id);
    }

    /// Every open connection, oldest first.
    pub(crate) fn list(&self) -> Vec<ConnectionInfo> {
        self.open.lock().recover().values().cloned().collect()
    }
}

/// What the listing says of `peer` (times and protocol to be filled in).
fn describe(peer: &Peer) -> ConnectionInfo {
    let a = &peer.attested;
    ConnectionInfo {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid(),
        exe: a.exe.as_ref().map(|p| p.display().to_string()),
        exe_sha256: a.exe_sha256.clone(),
        systemd_unit: a.unit.clone(),
        cgroup: a.cgroup.clone(),
        connected_at_ms: 0,
        protocol_version: 0,
    }
}
