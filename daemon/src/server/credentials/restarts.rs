//! Restarting units after a rotation: systemd reads credentials only when a unit starts, so a
//! unit that loaded a value that has since changed is restarted (`TryRestartUnit` over D-Bus,
//! which leaves a stopped unit stopped), each after a random delay within its grant's
//! `stagger`, so units and hosts that heard of the change together do not restart together.
//!
//! What each unit loaded is known for the loads this daemon answered. A running unit it has
//! not seen loaded before the daemon started: systemd is asked, at each change, which running
//! units load the changed secret from this socket, and each one found is taken to hold what the
//! secret served before that change. Its first value after a start (from the source, or from
//! the last-known-good copy) is not a change: units that loaded before a restart of secretd
//! are restarted by the next real change, never by the restart itself.
//!
//! The daemon may do exactly this: the packaged polkit rule (`secretd polkit-rule`) lets its
//! user try-restart the units `[[credential]]` names, and nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Taken;
use super::systemd_bus::Bus;
use crate::catalog::Catalog;
use crate::catalog::announce::NoticeKind;
use crate::config::CredentialGrant;
use crate::util::lock::Recover;

/// How long one D-Bus call to systemd may take.
const DBUS_TIMEOUT: Duration = Duration::from_secs(30);

/// What each unit loaded, and which restarts are waiting.
#[derive(Debug)]
pub(crate) struct Restarts {
    /// `[[credential]]`, by index (a take names its grant).
    grants: Arc<[CredentialGrant]>,
    /// Unit → what it loaded at its last start.
    taken: Mutex<HashMap<String, Vec<Taken>>>,
    /// Units with a restart scheduled: one at a time per unit, however many secrets changed.
    pending: Mutex<HashSet<String>>,
    /// systemd.
    bus: Bus,
    /// The credentials socket's path, as units name it in `LoadCredential=`.
    socket: String,
}

impl Restarts {
    pub(crate) fn new(grants: Arc<[CredentialGrant]>, socket: &std::path::Path) -> Arc<Restarts> {
        Arc::new(Restarts {
            grants,
            taken: Mutex::default(),
            pending: Mutex::default(),
            bus: Bus::default(),
            socket: socket.to_string_lossy().into_owned(),
        })
    }

    /// Records that `unit` loaded a value (replacing what it loaded of that secret before).
    pub(super) fn took(&self, unit: &str, taken: Taken) {
        let mut all = self.taken.lock().recover();
        let list = all.entry(unit.to_owned()).or_default();
        list.retain(|t| t.slot != taken.slot);
        list.push(taken);
    }

    /// Follows the catalog's changes until `cancel`, scheduling restarts.
    pub(crate) async fn run(
        self: Arc<Self>,
        catalog: Arc<Catalog>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let mut notices = catalog.subscribe();
        // Read after subscribing, so a value that arrives in between is both here and noticed.
        let mut heard = Heard::now(&catalog);
        loop {
            let slot = tokio::select! {
                () = cancel.cancelled() => return,
                notice = notices.recv() => match notice {
                    Ok(n) if n.kind == NoticeKind::Changed => Some(n.slot),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                },
            };
            let slots: Vec<usize> = match slot {
                Some(s) => vec![s],
                None => (0..catalog.slots().len()).collect(),
            };
            for slot in slots {
                if let Some(before) = heard.update(&catalog, slot) {
                    self.adopt_unseen(&catalog, slot, &before).await;
                }
            }
            for (unit, stagger) in self.stale_units(&catalog, slot) {
                if !self.pending.lock().recover().insert(unit.clone()) {
                    continue;
                }
                let delay = Duration::from_millis(fastrand::u64(
                    0..=u64::try_from(stagger.as_millis()).unwrap_or(u64::MAX),
                ));
                tracing::info!(
                    event = "credential.restart_scheduled",
                    unit = %unit,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "a credential the unit loaded changed; restarting it"
                );
                let (this, catalog, cancel) = (self.clone(), catalog.clone(), cancel.clone());
                tracker.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    // Restarted meanwhile (by an operator, or a crash) with the new value: done.
                    if this.is_stale(&catalog, &unit) {
                        // The restarted unit loads what is served now; until its load is seen,
                        // another notice must not schedule a second restart.
                        this.expect_current(&catalog, &unit);
                        this.pending.lock().recover().remove(&unit);
                        this.restart(&unit).await;
                    } else {
                        this.pending.lock().recover().remove(&unit);
                    }
                });
            }
        }
    }

    /// Records the running units that load slot `slot` from this socket but were not seen
    /// loading it (they loaded before this daemon started) as holding `before`, the value's
    /// fingerprint before the change being handled.
    async fn adopt_unseen(&self, catalog: &Catalog, slot: usize, before: &str) {
        let name = &catalog.slot(slot).name;
        for (grant, g) in self.grants.iter().enumerate() {
            if !g.restart_on_change || !g.allow.is_match(&**name) {
                continue;
            }
            let patterns: Vec<&str> = g.units_text.iter().map(String::as_str).collect();
            let found = tokio::time::timeout(
                DBUS_TIMEOUT,
                self.bus.units_loading(&patterns, name, &self.socket),
            )
            .await;
            let units = match found {
                Ok(Ok(units)) => units,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot ask systemd which units load a credential");
                    continue;
                }
                Err(_) => continue,
            };
            let mut all = self.taken.lock().recover();
            for unit in units {
                let list = all.entry(unit).or_default();
                if !list.iter().any(|t| t.slot == slot) {
                    list.push(Taken {
                        slot,
                        fingerprint: before.to_owned(),
                        grant,
                    });
                }
            }
        }
    }

    /// Units restarted on change that loaded another value than slot `slot` serves now (every
    /// slot when `None`), each with its largest stagger.
    fn stale_units(&self, catalog: &Catalog, slot: Option<usize>) -> Vec<(String, Duration)> {
        let all = self.taken.lock().recover();
        all.iter()
            .filter_map(|(unit, list)| {
                let stagger = list
                    .iter()
                    .filter(|t| slot.is_none_or(|s| s == t.slot) && self.restarts(t))
                    .filter(|t| is_old(catalog, t))
                    .map(|t| self.grants[t.grant].stagger)
                    .max()?;
                Some((unit.clone(), stagger))
            })
            .collect()
    }

    /// Records that `unit` is about to load the values served now (its restart is asked for).
    fn expect_current(&self, catalog: &Catalog, unit: &str) {
        let mut all = self.taken.lock().recover();
        for taken in all.get_mut(unit).into_iter().flatten() {
            if let Ok(entry) = catalog.read(taken.slot) {
                taken.fingerprint.clone_from(&entry.fingerprint);
            }
        }
    }

    fn is_stale(&self, catalog: &Catalog, unit: &str) -> bool {
        let all = self.taken.lock().recover();
        all.get(unit)
            .is_some_and(|list| list.iter().any(|t| self.restarts(t) && is_old(catalog, t)))
    }

    fn restarts(&self, taken: &Taken) -> bool {
        self.grants
            .get(taken.grant)
            .is_some_and(|g| g.restart_on_change)
    }

    /// `TryRestartUnit(unit, "replace")`; logged either way.
    async fn restart(&self, unit: &str) {
        match tokio::time::timeout(DBUS_TIMEOUT, self.bus.try_restart(unit)).await {
            Ok(Ok(())) => tracing::info!(
                event = "credential.restarted",
                unit,
                "restarted the unit for its changed credentials"
            ),
            Ok(Err(e)) => tracing::error!(
                event = "credential.restart_failed",
                unit,
                error = %e,
                "cannot restart the unit; it keeps the old value until it restarts (is the \
                 polkit rule from `secretd polkit-rule` installed?)"
            ),
            Err(_) => tracing::error!(
                event = "credential.restart_failed",
                unit,
                "systemd did not answer the restart within 30 s"
            ),
        }
    }
}

/// Whether the value a unit loaded is no longer the one served.
fn is_old(catalog: &Catalog, taken: &Taken) -> bool {
    catalog
        .read(taken.slot)
        .is_ok_and(|entry| entry.fingerprint != taken.fingerprint)
}

/// The fingerprint each slot served when the restarter last heard of it: what a unit found
/// loading the slot at a change, unseen by this daemon, is taken to hold.
struct Heard(Vec<Option<String>>);

impl Heard {
    /// What the catalog serves now (`None` for a slot with no value yet).
    fn now(catalog: &Catalog) -> Heard {
        Heard(
            (0..catalog.slots().len())
                .map(|slot| served(catalog, slot))
                .collect(),
        )
    }

    /// Takes in a change of `slot`, returning what it served before the change: the value
    /// served now when it had none (the first value of this daemon's life is no change to
    /// the units that loaded before it), `None` when there is still nothing served.
    fn update(&mut self, catalog: &Catalog, slot: usize) -> Option<String> {
        let now = served(catalog, slot);
        let before = self.0[slot].clone().or_else(|| now.clone());
        // A withdrawal serves nothing; what a unit holds is still the last value served.
        if now.is_some() {
            self.0[slot] = now;
        }
        before
    }
}

/// The fingerprint slot `slot` serves, if it serves a value.
fn served(catalog: &Catalog, slot: usize) -> Option<String> {
    catalog
        .read(slot)
        .ok()
        .map(|entry| entry.fingerprint.clone())
        .filter(|f| !f.is_empty())
}
