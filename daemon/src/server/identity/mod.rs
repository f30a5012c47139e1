//! Who is asking: the process that wrote each request as the kernel reports it (`peer`), the
//! program it runs (`attest`, with `holder` checking it holds the connection close-on-exec),
//! and what the configured policy grants it (`policy`).

pub(crate) mod attest;
mod holder;
mod peer;
pub(crate) mod policy;

pub(crate) use attest::{Attestor, Unidentified};
pub(crate) use peer::{Accepted, Peer, Sender, peer_cred};
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
    let (groups, pidfd) = if sender == accepted.sender {
        (accepted.groups.clone(), accepted.pidfd.take())
    } else {
        match sender.pid {
            Some(pid) => match peer::status_creds(pid) {
                Some((uid, gid, groups)) if (uid, gid) == (sender.uid, sender.gid) => {
                    (groups, None)
                }
                _ => return Err(Unidentified::Gone { pid }),
            },
            // No pid to read groups from: the primary group only.
            None => (Vec::new(), None),
        }
    };
    let needs = policy.needs(sender.uid, sender.gid, &groups);
    let attested = match sender.pid {
        Some(pid) => attestor.attest(pid, pidfd, accepted.socket, needs).await?,
        None => Attested::default(),
    };
    Ok(Peer {
        uid: sender.uid,
        gid: sender.gid,
        groups,
        pid: sender.pid,
        attested,
    })
}
