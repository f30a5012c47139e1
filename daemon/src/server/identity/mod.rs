//! Who is asking: the process that wrote each request as the kernel reports it (`peer`), the
//! program it runs (`attest/`: the process, its executable, and `holder` checking it holds the
//! connection close-on-exec), and what the configured policy grants it (`policy`).

pub(crate) mod attest;
mod peer;
pub(crate) mod policy;

pub(crate) use attest::{Attestor, Unidentified};
#[cfg(feature = "bench-knobs")]
pub(crate) use peer::BENCH_KNOBS;
pub(crate) use peer::{Accepted, Peer, Sender, UNATTRIBUTED, peer_cred, unattributed};
pub(crate) use policy::{Access, Policy};

use attest::Attested;

/// The identity requests written by `sender` are answered for, on a connection accepted as
/// `accepted`. The process that connected keeps what accept read of it (its groups, its
/// pidfd); any other writer is read afresh, and its credentials in `/proc` must be the ones it
/// wrote with. Refusals are logged here, naming the writer and its program.
pub(crate) async fn identify(
    sender: Sender,
    accepted: &mut Accepted,
    policy: &Policy,
    attestor: &Attestor,
) -> Result<Peer, Unidentified> {
    let identified = identify_quietly(sender, accepted, policy, attestor).await;
    if let Err(e) = &identified {
        tracing::warn!(
            event = "identity.refused",
            uid = sender.uid,
            pid = sender.pid,
            connected_pid = accepted.sender.pid,
            error = %e,
            "refusing requests written by a process that cannot be answered for"
        );
    }
    identified
}

async fn identify_quietly(
    sender: Sender,
    accepted: &mut Accepted,
    policy: &Policy,
    attestor: &Attestor,
) -> Result<Peer, Unidentified> {
    // The connecting process is known by its pid; its decisions use the effective ids and
    // groups the socket reported at accept. Any other
    // writer is read afresh: its real ids in /proc must be the ones it wrote with.
    let connecting = (sender.pid.is_some() && sender.pid == accepted.sender.pid)
        || (unattributed() && sender == UNATTRIBUTED);
    let (uid, gid, groups, pidfd) = if connecting {
        // Taken, not copied: a connection keeps no descriptor beyond its socket. A later
        // identification of this process opens a pidfd afresh.
        let pidfd = accepted.pidfd.take();
        (
            accepted.sender.uid,
            accepted.sender.gid,
            accepted.groups.clone(),
            pidfd,
        )
    } else {
        match sender.pid {
            Some(pid) => match peer::status_creds(pid) {
                Some(c) if c.real == (sender.uid, sender.gid) => (c.uid, c.gid, c.groups, None),
                _ => return Err(Unidentified::Gone { pid }),
            },
            // No pid to read groups from: the ids it wrote with, the primary group only.
            None => (sender.uid, sender.gid, Vec::new(), None),
        }
    };
    let needs = policy.needs(uid, gid, &groups);
    let attested = match sender.pid {
        Some(pid) => {
            attestor
                .attest((pid, uid), pidfd, accepted.socket, needs)
                .await?
        }
        None => Attested::default(),
    };
    Ok(Peer {
        uid,
        gid,
        groups,
        attested,
        written_as: sender,
    })
}
