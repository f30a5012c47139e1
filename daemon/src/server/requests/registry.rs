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
    /// What each open connection showed at accept.
    open: Mutex<BTreeMap<u64, ConnectionInfo>>,
}

/// A registered connection; removed from the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registered<'a> {
    /// The registry.
    registry: &'a Registry,
    /// This connection's number.
    id: u64,
}

impl Registry {
    /// Registers a connection that agreed on `protocol` in its hello.
    pub(crate) fn register(&self, peer: &Peer, protocol: u16) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let a = &peer.attested;
        let info = ConnectionInfo {
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid(),
            exe: a.exe.as_ref().map(|p| p.display().to_string()),
            exe_sha256: a.exe_sha256.clone(),
            systemd_unit: a.unit.clone(),
            cgroup: a.cgroup.clone(),
            connected_at_ms: now_ms(),
            protocol_version: protocol,
        };
        self.open.lock().recover().insert(id, info);
        Registered { registry: self, id }
    }

    /// Every open connection, oldest first.
    pub(crate) fn list(&self) -> Vec<ConnectionInfo> {
        self.open.lock().recover().values().cloned().collect()
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.open.lock().recover().remove(&self.id);
    }
}
