//! The optional HTTP listener (`daemon.metrics_listen`): `/metrics` (Prometheus text),
//! `/healthz` (200 or 503 with a JSON reason) and `/status` (the status JSON, never values).
//! It is read-only and binds to loopback unless configured otherwise.

pub(crate) mod status_json;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use secretd_proto::{ChannelState, HealthStatus};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::requests::status;
use crate::util::lock::Recover;
use status_json::status_json;

/// Requests on one HTTP connection are short; a slow scraper gets cut off after this.
pub(crate) const HTTP_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a connection may take to send a request's headers (idle connections included):
/// a connection that says nothing gives its slot back after this. A scraper sends its request
/// at once.
pub(crate) const HTTP_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a new connection waits for the slot of one it evicted to be given back.
const EVICTION_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// Binds `addr` (failing startup if it cannot) and serves until `cancel` fires.
/// At most `max_connections` are served at once, so idle or slow connections cannot take the
/// daemon's file descriptors. When all are taken, the oldest connection that has not yet sent
/// a request is closed for the new one (a slow-client flood cannot lock scrapers out); if every
/// connection has sent one, the new connection is closed unread (an HTTP client retries).
pub(crate) async fn start(
    addr: SocketAddr,
    max_connections: usize,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "metrics and health endpoints listening");
    let conns = tracker.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let open = Arc::new(Open::default());
    tracker.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(crate::server::transport::ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) if open.evict_oldest_silent() => {
                    match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                        Ok(Ok(slot)) => slot,
                        _ => continue,
                    }
                }
                // Full of connections that each sent a request: closed unread.
                Err(_) => continue,
            };
            let shared = shared.clone();
            let (id, evicted, asked) = open.add();
            let open = open.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    asked.store(true, Ordering::Relaxed);
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&shared, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HTTP_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = tokio::time::timeout(HTTP_CONNECTION_TIMEOUT, conn) => {}
                    () = evicted.cancelled() => {}
                }
                open.remove(id);
                drop(slot);
            });
        }
    });
    Ok(bound)
}

/// The open HTTP connections, oldest first, and whether each has sent a request yet.
#[derive(Default)]
struct Open {
    /// (id, its eviction, whether it asked); a few dozen entries at most.
    conns: Mutex<Vec<(u64, CancellationToken, Arc<AtomicBool>)>>,
    /// The next id.
    next: AtomicU64,
}

impl Open {
    /// Registers a connection: its id, the token that evicts it, and its "asked" flag.
    fn add(&self) -> (u64, CancellationToken, Arc<AtomicBool>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (evict, asked) = (CancellationToken::new(), Arc::new(AtomicBool::new(false)));
        self.conns
            .lock()
            .recover()
            .push((id, evict.clone(), asked.clone()));
        (id, evict, asked)
    }

    fn remove(&self, id: u64) {
        self.conns.lock().recover().retain(|(i, _, _)| *i != id);
    }

    /// Evicts the oldest connection that has not sent a request; false when there is none.
    fn evict_oldest_silent(&self) -> bool {
        let conns = self.conns.lock().recover();
        let silent = conns
            .iter()
            .find(|(_, evict, asked)| !asked.load(Ordering::Relaxed) && !evict.is_cancelled());
        match silent {
            Some((_, evict, _)) => {
                evict.cancel();
                true
            }
            None => false,
        }
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", shared.scrape()),
        "/healthz" => healthz(shared),
        "/status" => {
            let rows: Vec<_> = (0..shared.catalog.slots().len())
                .map(|i| {
                    let mut row = shared.catalog.status(i);
                    if let Ok(Some(meta)) = shared.store.meta(&row.name) {
                        status::merge_meta(&mut row, &meta);
                    }
                    status_json(&row)
                })
                .collect();
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::Value::Array(rows).to_string(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// 200 while every secret is servable (fresh, or stale within max_stale) and the audit trail
/// is writable (`"degraded"` while only the notification channel is down), else 503.
fn healthz(shared: &Shared) -> Reply {
    let health = status::assess(shared, |_| true);
    let (code, body) = match health.status {
        HealthStatus::Ok => (StatusCode::OK, json!({"status": "ok"})),
        HealthStatus::Degraded => {
            let why = match health.notifications {
                ChannelState::Down(why) => why,
                ChannelState::Off | ChannelState::Up => String::new(),
            };
            let reasons = [format!("notifications: {why}")];
            (
                StatusCode::OK,
                json!({"status": "degraded", "reasons": reasons}),
            )
        }
        HealthStatus::Unhealthy => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unhealthy", "reasons": health.reasons}),
        ),
    };
    reply(code, "application/json", body.to_string())
}
