//! The optional HTTP listener (`daemon.metrics_listen`): `/metrics` (Prometheus text),
//! `/healthz` (200 or 503 with a JSON reason) and `/status` (the status JSON, never values).
//! It is read-only and binds to loopback unless configured otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use secretd_proto::EntryState;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::scrape;
use super::status_json::status_json;

/// Requests on one HTTP connection are short; a slow scraper gets cut off after this.
pub(crate) const HTTP_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a connection may take to send a request's headers (idle connections included):
/// a connection that says nothing gives its slot back after this.
pub(crate) const HTTP_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
/// At most `max_connections` are served at once; one more is closed at once (an HTTP client
/// retries), so idle or slow connections cannot take the daemon's file descriptors.
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
    tracker.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(crate::server::ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Over the cap: closed unread.
                drop(stream);
                continue;
            };
            let shared = shared.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&shared, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HTTP_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(HTTP_CONNECTION_TIMEOUT, conn).await;
                drop(slot);
            });
        }
    });
    Ok(bound)
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
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            scrape::render(shared),
        ),
        "/healthz" => healthz(shared),
        "/status" => {
            let rows: Vec<_> = (0..shared.catalog.slots().len())
                .map(|i| {
                    let mut row = shared.catalog.status(i);
                    if let Ok(Some(meta)) = shared.store.meta(&row.name) {
                        super::read::merge_meta(&mut row, &meta);
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

/// Healthy when every secret is servable (fresh, or stale within max_stale) and the audit
/// trail is writable.
fn healthz(shared: &Shared) -> Reply {
    let mut reasons = Vec::new();
    for i in 0..shared.catalog.slots().len() {
        let row = shared.catalog.status(i);
        match row.state {
            EntryState::Fresh | EntryState::Stale => {}
            EntryState::Expired => reasons.push(format!("{}: stale past max_stale", row.name)),
            EntryState::Missing => reasons.push(format!("{}: never loaded", row.name)),
        }
    }
    if !shared.audit.healthy() {
        reasons.push("audit trail not writable".into());
    }
    // A notification channel that is down degrades the host, it does not fail it: the poll
    // still serves fresh values.
    let degraded = shared.catalog.channel.as_ref().and_then(|c| c.down());
    if reasons.is_empty() {
        let body = match degraded {
            Some(why) => {
                json!({"status": "degraded", "reasons": [format!("notifications: {why}")]})
            }
            None => json!({"status": "ok"}),
        };
        reply(StatusCode::OK, "application/json", body.to_string())
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            json!({"status": "unhealthy", "reasons": reasons}).to_string(),
        )
    }
}
