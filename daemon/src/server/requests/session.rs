//! A connection's view of the daemon: who the peer is, what it may do, and its read counts
//! for the audit trail. [`Session::respond`] hands each request to the handler that answers
//! it (`read`, `admin`, `break_glass`, `watch`) and returns the [`Reply`].

use std::sync::Arc;
use std::time::Instant;

use secretd_proto::{ErrorCode, Request, WireError};

use super::read_ledger::Read;
use super::reply::Reply;
use crate::audit::{Action, Actor, ActorType, AuditEvent, Outcome};
use crate::server::Shared;
use crate::server::identity::{self, Accepted, Access, Peer, Sender, Unidentified};

/// Reads (or denials) of one secret on this connection, counted without a lock. The first
/// read of a version goes to the daemon-wide [`super::read_ledger`] (recorded at once if no
/// connection of the same uid and program read it this window); the rest are counted and
/// handed to the ledger by [`Session::flush`], so a bot reading 100k times a second, over one
/// connection or a new one per read, costs the audit trail a record or two a window.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Whether the ledger has seen this version's first read (reads only).
    pub(super) noted: bool,
    /// Events since the last record.
    pub(super) pending: u64,
    /// The version last read.
    pub(super) version: String,
    /// Its fingerprint.
    pub(super) fingerprint: String,
}

/// A connection's tallies, one per secret it touched, kept sorted by slot. A connection reads
/// a few secrets of a catalog of up to 1,024: a tally for every slot would cost each connection
/// 64 KiB (a thousand watchers, 128 MiB), and the lookup here is a binary search of a handful.
#[derive(Debug, Default)]
pub(super) struct Tallies(Vec<(usize, Tally)>);

impl Tallies {
    /// Slot `idx`'s tally, made on first use.
    pub(super) fn of(&mut self, idx: usize) -> &mut Tally {
        let at = match self.0.binary_search_by_key(&idx, |(i, _)| *i) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (idx, Tally::default()));
                at
            }
        };
        &mut self.0[at].1
    }

    /// Every tally, by slot.
    fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Tally)> {
        self.0.iter_mut().map(|(i, t)| (*i, t))
    }
}

/// A connection's view of the daemon: its peer and what that peer may do. It owns what it
/// needs, so the connection can move between the runtime and a thread of its own.
#[derive(Debug)]
pub(crate) struct Session {
    /// Catalog, policy, store, audit.
    pub(crate) shared: Arc<Shared>,
    /// Who is asking: the process that wrote the requests being answered.
    pub(crate) peer: Peer,
    /// What accept learned of the process that connected, to identify a later writer.
    accepted: Accepted,
    /// Rights computed once per writer.
    pub(super) access: Access,
    /// Successful reads per slot.
    pub(super) reads: Tallies,
    /// Denied reads per slot (a denial is logged once per connection and name, too).
    pub(super) denials: Tallies,
    /// The protocol version agreed in the hello: replies carry only what it knows.
    pub(crate) protocol: u16,
    /// Set when the peer's uid went past its refusal limit: the connection closes after this
    /// reply.
    pub(crate) closing: bool,
    /// The attested program, as audit records and logs name it.
    pub(super) program: std::sync::Arc<str>,
    /// When the read counts are next written, whichever thread serves the connection.
    pub(crate) next_flush: Instant,
    /// This connection's number in the registry `status --connections` lists.
    listing: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.connections.remove(self.listing);
    }
}

impl Session {
    /// The session of `peer`, who wrote the hello that agreed on `protocol` on a connection
    /// accepted as `accepted`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: Peer,
        accepted: Accepted,
        protocol: u16,
    ) -> Session {
        let access = shared.policy.access_for(&peer, &shared.catalog);
        let program = peer.attested.describe().into();
        let next_flush = Instant::now() + shared.audit_read_window;
        let listing = shared.connections.register(&peer, protocol);
        Session {
            shared,
            peer,
            accepted,
            access,
            reads: Tallies::default(),
            denials: Tallies::default(),
            protocol,
            closing: false,
            program,
            next_flush,
            listing,
        }
    }

    /// Requests now come from `sender`, another process than the one answered so far: it is
    /// identified and its rights computed; read counts so far are written under the previous
    /// writer's name first.
    pub(crate) async fn reidentify(&mut self, sender: Sender) -> Result<(), Unidentified> {
        let shared = self.shared.clone();
        let peer = identity::identify(sender, &mut self.accepted, &shared.policy, &shared.attestor)
            .await?;
        self.flush();
        self.reads = Tallies::default();
        self.denials = Tallies::default();
        self.access = shared.policy.access_for(&peer, &shared.catalog);
        self.program = peer.attested.describe().into();
        shared.connections.update(self.listing, &peer);
        self.peer = peer;
        Ok(())
    }

    /// The reply to `request`.
    pub(crate) async fn respond(&mut self, request: Request) -> Reply {
        let answer = match request {
            Request::Get { name } => self.get(&name).await,
            Request::Status => Ok(self.status()),
            Request::Refresh { name } => self.refresh(name.as_deref()).await,
            Request::Rotation { name, step } => self.rotation(&name, &step).await,
            Request::AuditTail { limit, secret } => self.audit_tail(limit, secret.as_deref()),
            Request::AuditVerify => self.audit_verify(),
            Request::BreakGlassApply { envelope } => self.break_glass_apply(envelope).await,
            Request::BreakGlassClear { name } => self.break_glass_clear(&name).await,
            Request::Metrics => self.metrics(),
            Request::Watch { names } => self.subscribe(&names),
            Request::Connections => self.connections(),
            Request::Health => Ok(self.health()),
            // The connection answers the hello before any request reaches a session.
            Request::Hello(_) => Err(WireError::new(ErrorCode::Internal, "unexpected hello")),
        };
        answer.unwrap_or_else(Reply::from)
    }

    /// The peer as an audit actor, with the program the kernel attested.
    pub(super) fn actor(&self, kind: ActorType) -> Actor {
        Actor {
            kind,
            uid: self.peer.uid,
            gid: self.peer.gid,
            pid: self.peer.pid(),
            program: Some(self.program.clone()),
        }
    }

    /// Notes a refusal in the daemon-wide ledger and does what it says: logs `why` (within the
    /// minute's budget), records `event` at once if it is the first of its kind this minute,
    /// and marks the connection for closing when the uid is past its limit. Returns whether
    /// the refusal still has to be counted (by the caller, when it counts per connection).
    pub(super) fn refuse(
        &mut self,
        action: Action,
        key: &str,
        counted_by_connection: bool,
        why: &str,
        event: AuditEvent,
    ) -> bool {
        let verdict = self
            .shared
            .denials
            .note(&self.peer, action, key, counted_by_connection);
        if verdict.log {
            tracing::warn!(
                event = "access.denied",
                secret = key,
                op = action.as_str(),
                uid = self.peer.uid,
                gid = self.peer.gid,
                pid = self.peer.pid(),
                program = %self.program,
                "{why}"
            );
        }
        if verdict.record {
            self.shared.audit.record(event);
        }
        if verdict.close {
            self.closing = true;
        }
        !verdict.record && !verdict.close
    }

    /// The audit record of a request refused by policy or the admin list.
    pub(super) fn denied_event(&self, action: Action, name: &str) -> AuditEvent {
        let mut event = AuditEvent::new(
            action,
            name,
            &self.actor(ActorType::Client),
            Outcome::Denied,
        );
        event.error_code = Some(ErrorCode::PermissionDenied.as_u16());
        event
    }

    /// Hands the reads counted since the last flush to the daemon-wide ledger, and writes the
    /// denials counted as aggregated records.
    pub(crate) fn flush(&mut self) {
        self.next_flush = Instant::now() + self.shared.audit_read_window;
        let actor = self.actor(ActorType::Client);
        for (idx, tally) in self.reads.iter_mut() {
            let read = Read {
                actor: &actor,
                slot: idx,
                name: &self.shared.catalog.slot(idx).name,
                version: &tally.version,
                fingerprint: &tally.fingerprint,
            };
            self.shared
                .reads
                .add(read, std::mem::take(&mut tally.pending));
        }
        for (idx, tally) in self.denials.iter_mut() {
            if tally.pending == 0 {
                continue;
            }
            let name = &self.shared.catalog.slot(idx).name;
            let mut event = AuditEvent::new(Action::Read, name, &actor, Outcome::Denied);
            event.count = std::mem::take(&mut tally.pending);
            event.detail = "aggregated".into();
            event.error_code = Some(ErrorCode::PermissionDenied.as_u16());
            if !self.shared.audit.record(event) {
                tracing::error!(secret = %name, "aggregated denials could not be audited");
            }
        }
    }
}
