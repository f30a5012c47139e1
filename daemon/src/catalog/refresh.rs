//! Keeps every cache slot filled: one task per secret, each refreshing its value before it
//! expires, backing off after failures, and waking early on demand.
//!
//! Reads never wait on this: they see whatever the cache holds.

use std::sync::Arc;
use std::time::Duration;

use secretd_proto::SourceKind;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Catalog;
use super::fingerprint::FingerprintKey;
use super::revocation::{Answer, Cause, Suspicion, Verdict};
use super::source::{FailureReason, Fetched, Source, SourceError};
use crate::audit::{Action, Actor, AuditEvent, AuditLog, Outcome};
use crate::metrics::Metrics;
use crate::util::time::millis;

/// The longest one fetch may take before it counts as a timeout.
pub(crate) const FETCH_DEADLINE: Duration = crate::config::FETCH_DEADLINE;
/// The first retry delay after a failure; it doubles per consecutive failure.
pub(crate) const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Consecutive failures after which each further failure logs `omni.alert.cache_failure`.
pub(crate) const ALERT_AFTER_FAILURES: u32 = 3;
/// Fetches in flight at once across all secrets, so a restart does not burst the source.
pub(crate) const REFRESH_CONCURRENCY: usize = 4;
/// The longest wait between retries of a secret that never loaded: a host that booted into an
/// outage serves as soon as the source is back, not a TTL later.
pub(crate) const NEVER_LOADED_RETRY_CAP: Duration = Duration::from_secs(15);
/// The first wait after a 429 (GSM's quota is per minute: retrying sooner only spends it).
pub(crate) const RATE_LIMITED_FIRST_WAIT: Duration = Duration::from_secs(30);
/// The longest wait after consecutive 429s.
pub(crate) const RATE_LIMITED_MAX_WAIT: Duration = Duration::from_secs(600);
/// How long an on-demand `refresh` waits for its fetch.
pub(crate) const REFRESH_WAIT: Duration = Duration::from_secs(FETCH_DEADLINE.as_secs() + 5);

/// Refreshes happen at this fraction of the TTL, jittered, so values never expire while the
/// source is healthy and a fleet restarted together spreads its requests.
const REFRESH_AT: (f64, f64) = (0.75, 0.9);

/// Starts one refresher per catalog slot. Each tries its first fetch at once; the returned
/// receiver yields one message per slot when that first attempt finished (either way).
pub(crate) fn spawn_all(
    catalog: Arc<Catalog>,
    sources: Vec<Arc<dyn Source>>,
    audit: AuditLog,
    key: Arc<FingerprintKey>,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> mpsc::Receiver<()> {
    let (first_done, first_rx) = mpsc::channel(sources.len().max(1));
    let limiter = Arc::new(Semaphore::new(REFRESH_CONCURRENCY));
    for (idx, source) in sources.into_iter().enumerate() {
        let refresher = Refresher {
            catalog: catalog.clone(),
            idx,
            source,
            limiter: limiter.clone(),
            audit: audit.clone(),
            key: key.clone(),
            metrics: metrics.clone(),
        };
        tracker.spawn(refresher.run(cancel.clone(), first_done.clone()));
    }
    first_rx
}

/// The refresh loop of one slot.
struct Refresher {
    /// The catalog holding the slot.
    catalog: Arc<Catalog>,
    /// Which slot.
    idx: usize,
    /// Where its value comes from.
    source: Arc<dyn Source>,
    /// Bounds concurrent fetches across all refreshers.
    limiter: Arc<Semaphore>,
    /// Where every fetch is recorded.
    audit: AuditLog,
    /// Keys the fingerprints of fetched values.
    key: Arc<FingerprintKey>,
    /// Fetch latency and failures.
    metrics: Arc<Metrics>,
}

impl Refresher {
    async fn run(self, cancel: CancellationToken, first_done: mpsc::Sender<()>) {
        let slot = self.catalog.slot(self.idx);
        let mut first_done = Some(first_done);
        // Since when, and how often, an alias a notification said moved was re-read.
        let mut following: Option<(tokio::time::Instant, u32)> = None;
        loop {
            let (outcome, check_in) = tokio::select! {
                _ = cancel.cancelled() => return,
                attempt = self.fetch_once() => attempt,
            };
            let failures = slot.health().consecutive_failures;
            // While notifications cannot reach this host, poll at the fallback interval.
            let period = match &self.catalog.channel {
                Some(channel) if channel.down().is_some() => {
                    slot.ttl.min(channel.fallback_interval)
                }
                _ => slot.ttl,
            };
            let delay = match outcome {
                Ok(()) => jittered(period, REFRESH_AT),
                // GSM asked us to slow down: its wait wins over every shorter cap.
                Err(e) if e.reason == FailureReason::RateLimited => rate_limited_wait(failures),
                // A missing secret or a refused credential will not fix itself in a second:
                // retry on the normal schedule instead of hammering the source.
                Err(e) if !e.reason.is_transient() => jittered(period, REFRESH_AT),
                Err(_) if slot.current().is_none() => {
                    backoff(failures, slot.ttl.min(NEVER_LOADED_RETRY_CAP))
                }
                Err(_) => backoff(failures, slot.ttl),
            };
            // A withdrawal in doubt is checked sooner, with its own backoff; so is an alias
            // that has not caught up with a notification.
            let delay = check_in.map_or(delay, |d| d.min(delay));
            let delay = self
                .follow_alias(&mut following)
                .map_or(delay, |d| d.min(delay));
            if let Some(tx) = first_done.take() {
                // The receiver may be gone once startup is over; that is fine.
                let _ = tx.try_send(());
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = slot.trigger.now.notified() => {}
            }
        }
    }

    /// After a read of an alias that a notification said points at another version: until
    /// the alias read agrees, the next read is due soon (1 s, doubling), for at most the
    /// secret's refresh period, after which the poll takes over. GSM's aliases converge
    /// eventually, so this cannot meet the 3 s a version read by number does.
    fn follow_alias(
        &self,
        following: &mut Option<(tokio::time::Instant, u32)>,
    ) -> Option<Duration> {
        let slot = self.catalog.slot(self.idx);
        let Some(target) = slot.trigger.alias_target() else {
            *following = None;
            return None;
        };
        let agrees = self.served_version() == Some(target);
        if agrees || self.source.alias().is_none() {
            slot.trigger.alias_settled();
            *following = None;
            return None;
        }
        let (since, reads) = following.get_or_insert((tokio::time::Instant::now(), 0));
        *reads += 1;
        if since.elapsed() >= slot.ttl.mul_f64(REFRESH_AT.0) {
            tracing::info!(
                secret = %slot.name,
                alias = self.source.alias().unwrap_or_default(),
                announced = target,
                reads = *reads,
                "the alias did not point where a notification said; the poll takes over"
            );
            slot.trigger.alias_settled();
            *following = None;
            return None;
        }
        Some(FIRST_RETRY.saturating_mul(1 << (*reads - 1).min(16)))
    }

    /// One attempt: the fetch, then the check of a withdrawal in doubt (and when the next
    /// check of it is due), audited as one refresh.
    async fn fetch_once(&self) -> (Result<(), SourceError>, Option<Duration>) {
        let slot = self.catalog.slot(self.idx);
        let Ok(_permit) = self.limiter.acquire().await else {
            let closing = SourceError::new(FailureReason::Unavailable, "daemon is shutting down");
            return (Err(closing), None);
        };
        let attempt = slot.trigger.begin_attempt();
        let started = std::time::Instant::now();
        let result = self.fetch_and_install().await;
        let check_in = self.check_doubt(&result).await;
        let mut event = AuditEvent::new(Action::Refresh, &slot.name, &Actor::daemon(), Outcome::Ok);
        event.duration_ms = millis(started.elapsed(), u32::MAX);
        self.metrics
            .refresh_took(&slot.name, started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                if let Some(entry) = slot.current() {
                    event.version = entry.version.clone();
                    event.fingerprint = entry.fingerprint.clone();
                }
            }
            Err(e) => {
                // Recorded before the attempt is marked done, so a waiting `refresh` sees it.
                self.failed(e.clone());
                self.metrics.failure(&slot.name, e.reason.as_str());
                event.outcome = Outcome::Failed;
                event.detail = format!("{}: {}", e.reason.as_str(), e.message);
            }
        }
        if !self.audit.record(event) {
            tracing::warn!(secret = %slot.name, "refresh could not be audited");
        }
        slot.trigger.end_attempt(attempt);
        (result, check_in)
    }

    /// Checks a withdrawal in doubt (see `revocation`) after a fetch that ended in `result`;
    /// returns when the next check is due, if sooner than the poll. A `NOT_FOUND` for a
    /// secret that was served opens a deletion doubt by itself.
    async fn check_doubt(&self, result: &Result<(), SourceError>) -> Option<Duration> {
        let slot = self.catalog.slot(self.idx);
        let now = tokio::time::Instant::now();
        if let Err(e) = result
            && e.reason == FailureReason::NotFound
            && self.source.kind() == SourceKind::Gsm
            && slot.current().is_some()
        {
            slot.doubt.begin(Suspicion::Deleted, now);
        }
        let answer = match slot.doubt.suspicion()? {
            Suspicion::Refused(version) => self.ask_by_number(&version).await,
            Suspicion::Deleted => match result {
                Ok(()) => Answer::Allowed,
                Err(e) if e.reason == FailureReason::NotFound => Answer::NotFound,
                Err(_) => Answer::Unknown,
            },
        };
        let window = self.catalog.revocation_window;
        match slot
            .doubt
            .judge(answer, window, tokio::time::Instant::now())
        {
            Verdict::Revoke(cause) => {
                if let Some(served) = slot.current() {
                    let why = match cause {
                        Cause::Refused => SourceError::new(
                            FailureReason::Disabled,
                            format!(
                                "GSM refuses version {} by number, as a notification announced",
                                served.version
                            ),
                        ),
                        Cause::Deleted => SourceError::new(
                            FailureReason::NotFound,
                            format!(
                                "GSM answered NOT_FOUND for the secret at least {} times in a \
                                 row over {}s: it was deleted",
                                super::revocation::DELETED_AFTER,
                                window.as_secs()
                            ),
                        ),
                    };
                    self.revoke(&served.version, &why, cause);
                }
                None
            }
            Verdict::CheckIn(d) => Some(d),
            Verdict::Unconfirmed => {
                tracing::error!(
                    event = "omni.alert.revocation_unconfirmed",
                    secret = %slot.name,
                    window_s = window.as_secs(),
                    "GSM announced the served version disabled or destroyed, but still \
                     allows it when asked by number: it stays served, checked at every refresh"
                );
                None
            }
            Verdict::Cleared | Verdict::AtThePoll => None,
        }
    }

    /// Asks GSM for `version` by number, if it is still the one served: allowed, it is
    /// installed again (fresh); refused, the caller revokes it.
    async fn ask_by_number(&self, version: &str) -> Answer {
        let served = self.catalog.slot(self.idx).current();
        if served.is_none_or(|e| e.version != version) {
            return Answer::Moved;
        }
        let Some(read) = self.source.fetch_version(version) else {
            return Answer::Moved;
        };
        match self.deadline(read).await {
            Ok(fetched) => {
                self.install(fetched);
                Answer::Allowed
            }
            Err(e) if e.reason == FailureReason::Disabled => Answer::Refused,
            Err(e) if e.reason == FailureReason::NotFound => Answer::NotFound,
            Err(_) => Answer::Unknown,
        }
    }

    async fn fetch_and_install(&self) -> Result<(), SourceError> {
        let announced = self.catalog.slot(self.idx).trigger.take_announced();
        if self.source.follows_latest()
            && let Some(version) = announced.filter(|n| self.is_newer(*n))
            && self.install_announced(version).await
        {
            return Ok(());
        }
        let fetched = match self.deadline(self.source.fetch()).await {
            Err(e) if e.reason == FailureReason::Disabled => return Err(self.refused(e).await),
            other => other?,
        };
        if self.source.follows_latest()
            && let Some(served) = self.served_version()
            && version_number(fetched.version.as_deref()).is_some_and(|got| got < served)
        {
            return self.keep_newer(served).await;
        }
        self.install(fetched);
        Ok(())
    }

    /// The version number served, if a numbered version is served.
    fn served_version(&self) -> Option<u64> {
        let served = self.catalog.slot(self.idx).current()?;
        version_number(Some(&served.version))
    }

    /// Whether version `n` is newer than the one served (or nothing is served).
    fn is_newer(&self, n: u64) -> bool {
        self.served_version().is_none_or(|served| n > served)
    }

    /// Reads an announced version by number, which GSM guarantees current where `latest` may
    /// lag for minutes; serves it if it is newer than the served one. False when it cannot be
    /// read (the ordinary read of `latest` follows).
    async fn install_announced(&self, version: u64) -> bool {
        let Some(read) = self.source.fetch_version(&version.to_string()) else {
            return false;
        };
        match self.deadline(read).await {
            Ok(fetched)
                if version_number(fetched.version.as_deref()).is_some_and(|n| self.is_newer(n)) =>
            {
                self.install(fetched);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::info!(
                    secret = %self.catalog.slot(self.idx).name,
                    version,
                    error = %e.message,
                    "the announced version cannot be read by number; reading latest"
                );
                false
            }
        }
    }

    /// `latest` answered an older version than the one served (read by number after a
    /// notification): `latest` has not caught up. GSM confirms the served version by number:
    /// still allowed, it stays (a forged or stale answer cannot roll the host back); refused,
    /// it was revoked.
    async fn keep_newer(&self, served: u64) -> Result<(), SourceError> {
        self.confirm_served(&served.to_string())
            .await
            .unwrap_or(Ok(()))
    }

    /// Asks GSM for the served `version` by number: allowed, it is installed again (fresh);
    /// refused (disabled or destroyed), it is revoked. `None` for sources without versions.
    async fn confirm_served(&self, version: &str) -> Option<Result<(), SourceError>> {
        let check = self.source.fetch_version(version)?;
        Some(match self.deadline(check).await {
            Ok(fetched) => {
                self.install(fetched);
                Ok(())
            }
            Err(e) => {
                if e.reason == FailureReason::Disabled {
                    self.revoke(version, &e, Cause::Refused);
                }
                Err(e)
            }
        })
    }

    /// Runs one fetch under [`FETCH_DEADLINE`].
    async fn deadline(
        &self,
        fetch: impl Future<Output = Result<Fetched, SourceError>>,
    ) -> Result<Fetched, SourceError> {
        tokio::time::timeout(FETCH_DEADLINE, fetch)
            .await
            .map_err(|_| {
                SourceError::new(
                    FailureReason::Timeout,
                    format!(
                        "{} did not answer within {}s",
                        self.source.describe(),
                        FETCH_DEADLINE.as_secs()
                    ),
                )
            })?
    }

    /// The source refused the configured version (disabled or destroyed). The version being
    /// served may be another one (`latest` or an alias moved to a disabled version), so it is
    /// checked by number, once: still allowed, it stays served (and fresh); refused too, it was
    /// revoked, and is withdrawn at once. Returns the error to record, reason `disabled`.
    async fn refused(&self, error: SourceError) -> SourceError {
        let Some(served) = self.catalog.slot(self.idx).current() else {
            return error;
        };
        match self.confirm_served(&served.version).await {
            Some(Ok(())) => SourceError::new(
                FailureReason::Disabled,
                format!(
                    "{}; still serving version {}, which GSM allows",
                    error.message, served.version
                ),
            ),
            // Revoked.
            Some(Err(e)) if e.reason == FailureReason::Disabled => e,
            // Cannot tell (an outage): keep serving, report the original refusal.
            Some(Err(_)) | None => error,
        }
    }

    /// Withdraws `version`: GSM refused it by number, so an operator disabled or destroyed it
    /// (how a leaked key is revoked), or deleted the secret (`cause`).
    fn revoke(&self, version: &str, why: &SourceError, cause: Cause) {
        let slot = self.catalog.slot(self.idx);
        if !slot.revoke(version, cause) {
            return;
        }
        // The sealed last-known-good copy must not bring it back after a restart.
        self.catalog.dirty.notify_one();
        self.metrics.revoked(&slot.name);
        let overridden = slot.active_override().is_some();
        tracing::error!(
            event = "omni.alert.version_revoked",
            secret = %slot.name,
            version,
            break_glass_active = overridden,
            cause = cause.as_str(),
            error = %why.message,
            "GSM withdrew the version being served: it is served no more"
        );
        let mut event = AuditEvent::new(Action::Revoke, &slot.name, &Actor::daemon(), Outcome::Ok);
        event.version = version.to_owned();
        event.detail = format!("{}: {}", why.reason.as_str(), why.message);
        if !self.audit.record(event) {
            tracing::warn!(secret = %slot.name, "revocation could not be audited");
        }
    }

    /// Serves a freshly fetched value.
    fn install(&self, fetched: Fetched) {
        let slot = self.catalog.slot(self.idx);
        if fetched.unverified {
            self.metrics.missing_crc(&slot.name);
        }
        let had = slot.current().map(|e| e.version.clone());
        let fingerprint = self.key.fingerprint(fetched.value.expose());
        let version = slot.install(fetched, self.source.kind(), fingerprint);
        if self.source.kind() == SourceKind::Gsm {
            self.catalog.dirty.notify_one();
        }
        if had.as_deref() != Some(version.as_str()) {
            tracing::info!(
                secret = %slot.name,
                source = %self.source.describe(),
                version = %version,
                "loaded secret"
            );
        }
    }

    fn failed(&self, error: SourceError) {
        let slot = self.catalog.slot(self.idx);
        let reason = error.reason.as_str();
        let message = error.message.clone();
        let failures = slot.record_failure(error);
        if failures >= ALERT_AFTER_FAILURES {
            // Only a secret that loaded once has a last good value to serve.
            let serving = if slot.current().is_some() {
                "secret refresh keeps failing; serving the last good value until max_stale"
            } else {
                "secret refresh keeps failing and it never loaded: reads answer Unavailable"
            };
            tracing::error!(
                event = "omni.alert.cache_failure",
                secret = %slot.name,
                reason,
                count = failures,
                error = %message,
                "{serving}"
            );
        } else {
            tracing::warn!(
                secret = %slot.name,
                reason,
                count = failures,
                error = %message,
                "secret refresh failed"
            );
        }
    }
}

/// A version string as a number (`None` for an alias-less source such as a file).
fn version_number(version: Option<&str>) -> Option<u64> {
    version?.parse().ok()
}

/// `base` scaled by a uniform factor in `range`.
fn jittered(base: Duration, range: (f64, f64)) -> Duration {
    base.mul_f64(range.0 + fastrand::f64() * (range.1 - range.0))
}

/// The wait after `failures` consecutive 429s: doubling from [`RATE_LIMITED_FIRST_WAIT`] up to
/// [`RATE_LIMITED_MAX_WAIT`], each drawn from [w/2, w] so a fleet told to slow down together
/// does not come back together.
fn rate_limited_wait(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    let w = RATE_LIMITED_FIRST_WAIT
        .saturating_mul(1 << exp)
        .min(RATE_LIMITED_MAX_WAIT);
    jittered(w, (0.5, 1.0))
}

/// The wait after `failures` consecutive failures: doubling from [`FIRST_RETRY`], jittered by
/// ±20%, never longer than the secret's refresh period.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = FIRST_RETRY.saturating_mul(1 << exp).min(cap);
    jittered(base, (0.8, 1.2)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(300);
        for _ in 0..100 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
            let fourth = backoff(4, cap);
            assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600));
            assert!(backoff(30, cap) <= cap);
            assert!(backoff(3, Duration::from_secs(2)) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn rate_limited_waits_double_from_30s_within_half_to_full() {
        for _ in 0..100 {
            let first = rate_limited_wait(1);
            assert!(first >= Duration::from_secs(15) && first <= Duration::from_secs(30));
            let third = rate_limited_wait(3);
            assert!(third >= Duration::from_secs(60) && third <= Duration::from_secs(120));
            let many = rate_limited_wait(40);
            assert!(many >= RATE_LIMITED_MAX_WAIT / 2 && many <= RATE_LIMITED_MAX_WAIT);
        }
    }

    #[test]
    fn refresh_point_is_before_expiry() {
        let ttl = Duration::from_secs(300);
        for _ in 0..100 {
            let d = jittered(ttl, REFRESH_AT);
            assert!(d >= Duration::from_secs(225) && d <= Duration::from_secs(270));
        }
    }
}
