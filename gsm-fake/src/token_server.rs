//! A fake of Google's token endpoints, for the credential types that get their access tokens
//! from one: the Security Token Service (`sts.googleapis.com/v1/token`, workload identity
//! federation: `external_account`), the OAuth 2 token endpoint (`oauth2.googleapis.com/token`,
//! a user's refresh token: `authorized_user`) and IAM Credentials' `generateAccessToken`
//! (`impersonated_service_account`). Tokens it issues for GSM are accepted by the [`FakeGsm`]
//! whose [`Handle`] it was started with; each kind carries its own prefix (`ya29.sts-`,
//! `ya29.user-`, `ya29.iam-`) so a test can tell which one reached GSM.
//!
//! [`FakeGsm`]: crate::FakeGsm

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::{Handle, Running};

/// The grant type of a token exchange (RFC 8693).
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// What the endpoints accept.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// STS: the subject token accepted, and the workload identity provider it must name.
    pub subject_token: Option<(String, String)>,
    /// OAuth: the refresh token accepted.
    pub refresh_token: Option<String>,
    /// IAM: the service account that may be impersonated (by any token this server issued).
    pub impersonate: Option<String>,
    /// Whether user tokens (OAuth) are accepted by GSM themselves; `false` when they only
    /// serve to impersonate.
    pub user_tokens_reach_gsm: bool,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Tokens this server issued (IAM accepts them as the caller's credentials).
    issued: HashSet<String>,
    /// Grants by endpoint (`sts`, `user`, `iam`), and refusals (`refused`).
    counts: HashMap<&'static str, usize>,
}

/// A fake of Google's token endpoints on a loopback port; stops on drop.
#[derive(Debug)]
pub struct FakeTokenServer {
    /// Shared with the server.
    ledger: Arc<Mutex<Ledger>>,
    /// The server.
    running: Running,
}

impl FakeTokenServer {
    /// Starts the endpoints, accepting `grants`, issuing tokens `gsm` accepts.
    pub fn start(gsm: &Handle, grants: Grants) -> std::io::Result<FakeTokenServer> {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (served, gsm) = (ledger.clone(), gsm.clone());
        let grants = Arc::new(grants);
        let running = Running::start("fake-token-server", move |listener| {
            serve(listener, served, gsm, grants)
        })?;
        Ok(FakeTokenServer { ledger, running })
    }

    /// The STS `token_url` of an `external_account` file.
    pub fn sts_url(&self) -> String {
        format!("http://{}/v1/token", self.running.addr)
    }

    /// The OAuth `token_uri` of an `authorized_user` file.
    pub fn oauth_url(&self) -> String {
        format!("http://{}/token", self.running.addr)
    }

    /// The `service_account_impersonation_url` for `email`.
    pub fn impersonation_url(&self, email: &str) -> String {
        format!(
            "http://{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
            self.running.addr
        )
    }

    /// How many tokens `endpoint` (`sts`, `user`, `iam`) granted, or how many requests were
    /// refused (`refused`).
    pub fn count(&self, endpoint: &str) -> usize {
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.counts.get(endpoint).copied().unwrap_or(0)
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    ledger: Arc<Mutex<Ledger>>,
    gsm: Handle,
    grants: Arc<Grants>,
) {
    crate::serve_http(listener, move |req| {
        let (ledger, gsm, grants) = (ledger.clone(), gsm.clone(), grants.clone());
        async move { route(&ledger, &gsm, &grants, req).await }
    })
    .await;
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn refused(ledger: &Mutex<Ledger>, status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    *ledger.counts.entry("refused").or_default() += 1;
    reply(
        status,
        &json!({"error": error, "error_description": "refused by the fake token server"}),
    )
}

/// Issues a token of `kind`, accepted by GSM when `for_gsm`.
fn issue(ledger: &Mutex<Ledger>, gsm: &Handle, kind: &'static str, for_gsm: bool) -> String {
    let token = format!("ya29.{kind}-{:016x}", fastrand::u64(..));
    if for_gsm {
        gsm.lock().tokens.insert(token.clone());
    }
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    ledger.issued.insert(token.clone());
    *ledger.counts.entry(kind).or_default() += 1;
    token
}

async fn route(
    ledger: &Mutex<Ledger>,
    gsm: &Handle,
    grants: &Grants,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if req.method() != Method::POST {
        return refused(ledger, StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
    }
    let body = match req.into_body().collect().await.map(|b| b.to_bytes()) {
        Ok(b) if b.len() <= MAX_BODY => b,
        _ => return refused(ledger, StatusCode::BAD_REQUEST, "invalid_request"),
    };
    match path.as_str() {
        "/v1/token" => {
            let form: HashMap<String, String> =
                form_urlencoded::parse(&body).into_owned().collect();
            let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
            let granted = grants
                .subject_token
                .as_ref()
                .is_some_and(|(token, audience)| {
                    field("grant_type") == TOKEN_EXCHANGE
                        && field("subject_token") == token
                        && field("audience") == audience
                        && !field("subject_token_type").is_empty()
                });
            if !granted {
                return refused(ledger, StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let token = issue(ledger, gsm, "sts", true);
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
        "/token" => {
            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
            let granted = request["grant_type"] == "refresh_token"
                && grants
                    .refresh_token
                    .as_deref()
                    .is_some_and(|t| request["refresh_token"] == t);
            if !granted {
                return refused(ledger, StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let token = issue(ledger, gsm, "user", grants.user_tokens_reach_gsm);
            reply(
                StatusCode::OK,
                &json!({"access_token": token, "token_type": "Bearer", "expires_in": 3599}),
            )
        }
        p => {
            let target = p
                .strip_prefix("/v1/projects/-/serviceAccounts/")
                .and_then(|rest| rest.strip_suffix(":generateAccessToken"));
            let caller_known = bearer.is_some_and(|b| {
                let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                ledger.issued.contains(&b)
            });
            let granted =
                caller_known && target.is_some() && target == grants.impersonate.as_deref();
            if !granted {
                return refused(ledger, StatusCode::FORBIDDEN, "PERMISSION_DENIED");
            }
            let token = issue(ledger, gsm, "iam", true);
            let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            reply(
                StatusCode::OK,
                &json!({
                    "accessToken": token,
                    "expireTime": humantime::format_rfc3339_seconds(expires).to_string(),
                }),
            )
        }
    }
}
