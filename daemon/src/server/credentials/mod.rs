//! The systemd credential provider: a unit that says
//! `LoadCredential=trading_api_key:/run/secretd/credentials.sock` gets the secret's value in
//! `$CREDENTIALS_DIRECTORY/trading_api_key`, if a `[[credential]]` grants that unit that
//! secret. `[[policy]]` never applies here.
//!
//! systemd connects as root from the unit's cgroup, sends nothing, and reads to EOF
//! (`request` checks who it is). The answer is the value, then close. A refusal must fail the
//! unit's start, and systemd 252 starts a unit with whatever it read before EOF, even nothing:
//! so a refusal is [`REFUSAL_BYTES`] bytes, one more than systemd accepts for a credential,
//! which fails the start with `243/CREDENTIALS`. systemd logs only "Protocol error" then, so
//! every refusal is logged here with the unit and the reason, and audited.
//!
//! After a rotation, `restarts` restarts the units that loaded the old value.

mod request;
mod restarts;
mod systemd_bus;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Action, Actor, ActorType, AuditEvent, Outcome};
use crate::config::CredentialGrant;
use crate::server::Shared;
use request::Request;
pub(crate) use restarts::Restarts;

/// systemd's `CREDENTIAL_SIZE_MAX` (1 MiB) plus one: a reply this long fails the unit's start
/// (`E2BIG`, exit status 243/CREDENTIALS) whatever else happens, where an empty reply or a
/// close would start it with an empty credential.
pub(crate) const REFUSAL_BYTES: usize = 1024 * 1024 + 1;
/// Credential connections answered at once; the next waits to be accepted (systemd waits with
/// it: a unit start is never refused for load).
pub(crate) const MAX_CREDENTIAL_CONNECTIONS: usize = 64;
/// How long one answer may take, a first fetch included (systemd itself never gives up; the
/// unit's start timeout would).
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves credential requests until `cancel`.
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    grants: Arc<[CredentialGrant]>,
    restarts: Arc<Restarts>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let seats = Arc::new(Semaphore::new(MAX_CREDENTIAL_CONNECTIONS));
    loop {
        let seat = tokio::select! {
            () = cancel.cancelled() => return,
            seat = seats.clone().acquire_owned() => seat,
        };
        let Ok(seat) = seat else { return };
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "credentials socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (shared, grants, restarts) = (shared.clone(), grants.clone(), restarts.clone());
        let cancel = cancel.clone();
        tracker.spawn(async move {
            answer_or_refuse(stream, &shared, &grants, &restarts, &cancel).await;
            drop(seat);
        });
    }
}

/// Answers one connection, and refuses it if the answer cannot finish: timed out, the daemon
/// stopping, or a bug's panic. Dropping the connection instead would hand systemd an EOF,
/// and with it the unit an empty (or cut) credential.
async fn answer_or_refuse(
    mut stream: UnixStream,
    shared: &Shared,
    grants: &[CredentialGrant],
    restarts: &Restarts,
    cancel: &CancellationToken,
) {
    use futures::FutureExt as _;
    let answering =
        std::panic::AssertUnwindSafe(answer(&mut stream, shared, grants, restarts)).catch_unwind();
    let why = tokio::select! {
        answered = tokio::time::timeout(ANSWER_TIMEOUT, answering) => match answered {
            Ok(Ok(())) => return,
            Ok(Err(_)) => "the answer failed (a bug: see the panic above)",
            Err(_) => "the answer timed out",
        },
        () = cancel.cancelled() => "secretd is stopping",
    };
    refuse(&mut stream, shared, None, why, None).await;
}

/// Answers one connection: the value, or a refusal that fails the unit's start.
async fn answer(
    stream: &mut UnixStream,
    shared: &Shared,
    grants: &[CredentialGrant],
    restarts: &Restarts,
) {
    use std::os::fd::AsFd;
    let request = match request::identify(stream.as_fd()) {
        Ok(request) => request,
        Err(e) => {
            refuse(stream, shared, None, &e.to_string(), e.unit()).await;
            return;
        }
    };
    match serve_value(stream, shared, grants, &request).await {
        Ok(taken) => restarts.took(&request.unit, taken),
        Err(why) => refuse(stream, shared, Some(&request), &why.to_string(), None).await,
    }
}

/// What a unit took: the slot, the fingerprint of its value, and the grant that allowed it.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// The catalog slot.
    pub(crate) slot: usize,
    /// The value's fingerprint when the unit loaded it.
    pub(crate) fingerprint: String,
    /// The grant's index in `[[credential]]`.
    pub(crate) grant: usize,
}

/// Why a unit was not given the value it asked for (logged, audited, and systemd fails the
/// unit's start).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// No `[[credential]]` names this unit and secret.
    #[error("no [[credential]] grants this unit this secret")]
    NotGranted,
    /// The secret is not configured.
    #[error("the secret is not in the catalog")]
    NotInCatalog,
    /// The catalog has no value to serve (the reason as a client would be told it).
    #[error("{0}")]
    Unavailable(String),
    /// The value is empty: a unit must never start with an empty credential.
    #[error("the value is empty, and a unit must never start with an empty one")]
    Empty,
    /// The read could not be audited, so it is not made.
    #[error("the audit trail cannot record the read")]
    AuditDown,
    /// systemd closed the connection before the value was written.
    #[error("systemd went away: {0}")]
    Gone(#[source] std::io::Error),
}

/// Writes the value if the unit is granted it; the reason otherwise.
async fn serve_value(
    stream: &mut UnixStream,
    shared: &Shared,
    grants: &[CredentialGrant],
    request: &Request,
) -> Result<Taken, Refusal> {
    let grant = grants
        .iter()
        .position(|g| g.grants(&request.unit, &request.id))
        .ok_or(Refusal::NotGranted)?;
    let idx = shared
        .catalog
        .index_of(&request.id)
        .ok_or(Refusal::NotInCatalog)?;
    let entry = shared
        .catalog
        .read_or_wait(idx)
        .await
        .map_err(|u| Refusal::Unavailable(u.to_wire(&request.id).message))?;
    if entry.value.is_empty() {
        return Err(Refusal::Empty);
    }
    let mut event = AuditEvent::new(Action::Read, &request.id, &actor(request), Outcome::Ok);
    event.version.clone_from(&entry.version);
    event.fingerprint.clone_from(&entry.fingerprint);
    event.program = program(&request.unit);
    event.detail = "systemd credential".into();
    if !shared.audit.record(event) {
        return Err(Refusal::AuditDown);
    }
    stream
        .write_all(entry.value.expose())
        .await
        .and(stream.shutdown().await)
        .map_err(Refusal::Gone)?;
    shared.metrics.read(idx, entry.source);
    tracing::info!(
        event = "credential.served",
        unit = %request.unit,
        secret = %request.id,
        version = %entry.version,
        "served a credential"
    );
    Ok(Taken {
        slot: idx,
        fingerprint: entry.fingerprint.clone(),
        grant,
    })
}

/// Logs and audits the refusal, then makes systemd fail the unit's start.
async fn refuse(
    stream: &mut UnixStream,
    shared: &Shared,
    request: Option<&Request>,
    why: &str,
    unit_hint: Option<&str>,
) {
    let unit = request.map(|r| r.unit.as_str()).or(unit_hint).unwrap_or("");
    let secret = request.map(|r| r.id.as_str()).unwrap_or("");
    tracing::warn!(
        event = "credential.refused",
        unit,
        secret,
        reason = why,
        "refused a credential; the unit's start fails (243/CREDENTIALS)"
    );
    let actor = request.map(actor).unwrap_or_else(|| Actor {
        kind: ActorType::Client,
        uid: 0,
        gid: 0,
        pid: None,
        program: None,
    });
    let mut event = AuditEvent::new(Action::Read, secret, &actor, Outcome::Denied);
    event.program = program(unit);
    event.detail = format!("systemd credential refused: {why}");
    shared.audit.record(event);
    // Zeros, one byte more than systemd takes. It stops reading then and closes, so the rest
    // of the write fails: expected.
    let zeros = vec![0u8; REFUSAL_BYTES];
    let _ = stream.write_all(&zeros).await;
}

fn actor(request: &Request) -> Actor {
    Actor {
        kind: ActorType::Client,
        uid: 0,
        gid: 0,
        pid: Some(request.pid),
        program: Some(program(&request.unit).into()),
    }
}

fn program(unit: &str) -> String {
    if unit.is_empty() {
        "credentials socket".into()
    } else {
        format!("unit={unit} (credential)")
    }
}
