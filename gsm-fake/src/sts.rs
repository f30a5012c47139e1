//! A fake of Google's Security Token Service (`sts.googleapis.com/v1/token`), the exchange
//! behind workload identity federation (`external_account` credentials): it trades one
//! expected subject token for an access token the [`FakeGsm`] whose [`Handle`] it was started
//! with accepts, as RFC 8693 describes.
//!
//! [`FakeGsm`]: crate::FakeGsm

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::{Handle, Running};

/// The grant type of a token exchange.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// What the exchange checks and counts.
#[derive(Debug)]
struct Exchange {
    /// The subject token that is accepted.
    subject_token: String,
    /// The workload identity pool provider the config must name.
    audience: String,
    /// Exchanges granted.
    granted: AtomicUsize,
    /// Exchanges refused.
    refused: AtomicUsize,
}

/// A fake STS on a loopback port; stops on drop.
#[derive(Debug)]
pub struct FakeSts {
    /// Shared with the server.
    exchange: Arc<Exchange>,
    /// The server.
    running: Running,
}

impl FakeSts {
    /// Starts an STS that accepts `subject_token` for `audience` and issues tokens `gsm`
    /// accepts.
    pub fn start(gsm: &Handle, subject_token: &str, audience: &str) -> std::io::Result<FakeSts> {
        let exchange = Arc::new(Exchange {
            subject_token: subject_token.to_owned(),
            audience: audience.to_owned(),
            granted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let (served, gsm) = (exchange.clone(), gsm.clone());
        let running = Running::start("fake-sts", move |listener| serve(listener, served, gsm))?;
        Ok(FakeSts { exchange, running })
    }

    /// The `token_url` for the credentials file.
    pub fn token_url(&self) -> String {
        format!("http://{}/v1/token", self.running.addr)
    }

    /// Exchanges granted so far.
    pub fn granted(&self) -> usize {
        self.exchange.granted.load(Ordering::SeqCst)
    }

    /// Exchanges refused so far.
    pub fn refused(&self) -> usize {
        self.exchange.refused.load(Ordering::SeqCst)
    }
}

async fn serve(listener: tokio::net::TcpListener, exchange: Arc<Exchange>, gsm: Handle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (exchange, gsm) = (exchange.clone(), gsm.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (exchange, gsm) = (exchange.clone(), gsm.clone());
                async move { Ok::<_, Infallible>(route(&exchange, &gsm, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(exchange: &Exchange, gsm: &Handle, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/v1/token" {
        return reply(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    let body = match req.into_body().collect().await.map(|b| b.to_bytes()) {
        Ok(b) if b.len() <= MAX_BODY => b,
        _ => {
            return reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request"}),
            );
        }
    };
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let granted = field("grant_type") == TOKEN_EXCHANGE
        && field("subject_token") == exchange.subject_token
        && field("audience") == exchange.audience
        && !field("subject_token_type").is_empty();
    if !granted {
        exchange.refused.fetch_add(1, Ordering::SeqCst);
        return reply(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_grant", "error_description": "The subject token is invalid."}),
        );
    }
    let token = format!("ya29.sts-{:016x}", fastrand::u64(..));
    gsm.lock().tokens.insert(token.clone());
    exchange.granted.fetch_add(1, Ordering::SeqCst);
    reply(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 3600,
        }),
    )
}
