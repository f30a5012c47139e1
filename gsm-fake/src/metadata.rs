//! A fake of the GCE metadata server, the last step of Application Default Credentials: point
//! `GCE_METADATA_HOST` at it. Like the real one, it answers only requests carrying
//! `Metadata-Flavor: Google`. The tokens it issues are accepted by the [`FakeGsm`] whose
//! [`Handle`] it was started with.
//!
//! [`FakeGsm`]: crate::FakeGsm

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use crate::{Handle, Running};

/// The default service account the fake reports.
pub const METADATA_ACCOUNT: &str = "secretd-host@apex-test.iam.gserviceaccount.com";

/// What the fake counts and what a test can break.
#[derive(Debug, Default)]
struct Counters {
    /// Token requests answered with a token.
    tokens: AtomicUsize,
    /// Requests refused for lacking `Metadata-Flavor: Google`.
    flavorless: AtomicUsize,
    /// When not 0, token requests answer this HTTP status.
    token_status: AtomicU16,
}

/// A metadata server on a loopback port; stops on drop.
#[derive(Debug)]
pub struct FakeMetadata {
    /// Shared with the server.
    counters: Arc<Counters>,
    /// The server.
    running: Running,
}

impl FakeMetadata {
    /// Starts a metadata server whose tokens `gsm` accepts.
    pub fn start(gsm: &Handle) -> std::io::Result<FakeMetadata> {
        let counters = Arc::new(Counters::default());
        let (served, gsm) = (counters.clone(), gsm.clone());
        let running = Running::start("fake-metadata", move |listener| {
            serve(listener, served, gsm)
        })?;
        Ok(FakeMetadata { counters, running })
    }

    /// The value for `GCE_METADATA_HOST` (`host:port`, as on GCE).
    pub fn host(&self) -> String {
        self.running.addr.to_string()
    }

    /// How many tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.counters.tokens.load(Ordering::SeqCst)
    }

    /// How many requests lacked `Metadata-Flavor: Google`.
    pub fn flavorless_requests(&self) -> usize {
        self.counters.flavorless.load(Ordering::SeqCst)
    }

    /// Makes token requests fail with this HTTP status (`None` heals).
    pub fn fail_tokens(&self, status: Option<u16>) {
        self.counters
            .token_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }
}

async fn serve(listener: tokio::net::TcpListener, counters: Arc<Counters>, gsm: Handle) {
    crate::serve_http(listener, move |req| {
        let reply = route(&counters, &gsm, &req);
        async move { reply }
    })
    .await;
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r.headers_mut().insert(
        "metadata-flavor",
        hyper::header::HeaderValue::from_static("Google"),
    );
    r
}

fn route(counters: &Counters, gsm: &Handle, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let flavored = req
        .headers()
        .get("metadata-flavor")
        .is_some_and(|v| v.as_bytes() == b"Google");
    if !flavored {
        counters.flavorless.fetch_add(1, Ordering::SeqCst);
        return reply(
            StatusCode::FORBIDDEN,
            "text/html",
            "Missing required header: Metadata-Flavor".into(),
        );
    }
    const ACCOUNT: &str = "/computeMetadata/v1/instance/service-accounts/default";
    match req.uri().path() {
        p if p == format!("{ACCOUNT}/token") => {
            let failing = counters.token_status.load(Ordering::SeqCst);
            if failing != 0 {
                let status = StatusCode::from_u16(failing).unwrap_or(StatusCode::BAD_GATEWAY);
                return reply(
                    status,
                    "text/plain",
                    "metadata server failure (injected)".into(),
                );
            }
            let token = format!("ya29.fake-{:016x}", fastrand::u64(..));
            gsm.lock().tokens.insert(token.clone());
            counters.tokens.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({
                "access_token": token, "expires_in": 3599, "token_type": "Bearer"
            });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        p if p == format!("{ACCOUNT}/email") => {
            reply(StatusCode::OK, "application/text", METADATA_ACCOUNT.into())
        }
        "/computeMetadata/v1/universe/universe-domain" => {
            reply(StatusCode::OK, "application/text", "googleapis.com".into())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/html", "Not Found".into()),
    }
}
