//! The HTTP side of the fake.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::{Fault, Handle, Recorded, State, VersionState, auth, project_number};

/// GSM's payload limit.
const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a hanging answer hangs (tests time out long before).
const HANG: Duration = Duration::from_secs(3600);
/// The largest control request body accepted.
const MAX_CONTROL_BODY: usize = 1024 * 1024;

type Reply = Response<Full<Bytes>>;

/// Serves the fake on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, handle: Handle) {
    crate::serve_http(listener, move |req| {
        let handle = handle.clone();
        async move { route(&handle, req).await }
    })
    .await;
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    r
}

/// An error in GSM's JSON shape; the client takes the code from `status`.
fn gsm_error(http: StatusCode, status: &str, message: &str) -> Reply {
    json_reply(
        http,
        &json!({"error": {"code": http.as_u16(), "message": message, "status": status}}),
    )
}

async fn route(handle: &Handle, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    handle.lock().requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        user_project: req
            .headers()
            .get("x-goog-user-project")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if let Some(control) = path.strip_prefix("/fake/") {
        let body = match req.into_body().collect().await.map(|b| b.to_bytes()) {
            Ok(b) if b.len() <= MAX_CONTROL_BODY => b,
            _ => return gsm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "bad body"),
        };
        return control_api(handle, &method, control, &body);
    }
    {
        let mut state = handle.lock();
        if state.require_auth {
            if let Some(why) = auth::refuse(&state, authorization.as_deref()) {
                state.unauthenticated += 1;
                return gsm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", why);
            }
            let kind = auth::kind(authorization.as_deref().unwrap_or_default());
            *state.accepted.entry(kind).or_default() += 1;
        }
    }
    if method != Method::GET {
        return gsm_error(
            StatusCode::NOT_IMPLEMENTED,
            "UNIMPLEMENTED",
            "only GET is faked",
        );
    }
    let Some(resource) = path.strip_prefix("/v1/") else {
        return gsm_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown path");
    };
    if let Some(refused) = wrong_endpoint(handle.lock().location.as_deref(), resource) {
        return refused;
    }
    if let Some(version_name) = resource.strip_suffix(":access") {
        return access(handle, version_name).await;
    }
    metadata(handle, resource)
}

/// Google's endpoints serve their own resources only: the global endpoint refuses regional
/// secrets, and a regional endpoint (`secretmanager.L.rep.googleapis.com`) "only allows
/// requests to proceed if the affected resource exists in the location specified by the
/// endpoint". `location` is this fake's (`None`: global).
fn wrong_endpoint(location: Option<&str>, resource: &str) -> Option<Reply> {
    let parts: Vec<&str> = resource.split('/').collect();
    let resource_location = match parts.as_slice() {
        ["projects", _, "locations", l, ..] => Some(*l),
        _ => None,
    };
    let message = match (location, resource_location) {
        (None, None) => return None,
        (Some(ours), Some(theirs)) if ours == theirs => return None,
        (None, Some(theirs)) => format!(
            "regional secrets in {theirs} are served by the regional endpoint \
             secretmanager.{theirs}.rep.googleapis.com, not the global one"
        ),
        (Some(ours), _) => {
            format!("this regional endpoint serves resources in {ours} only: {resource} is not one")
        }
    };
    Some(gsm_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        &message,
    ))
}

/// Splits `projects/P[/locations/L]/secrets/S[/versions[/V]]` into the secret and the rest.
fn split(resource: &str) -> Option<(String, Option<&str>)> {
    let parts: Vec<&str> = resource.split('/').collect();
    let at = match parts.as_slice() {
        ["projects", _, "secrets", _, ..] => 4,
        ["projects", _, "locations", _, "secrets", _, ..] => 6,
        _ => return None,
    };
    if parts[..at].iter().any(|p| p.is_empty()) {
        return None;
    }
    let secret = parts[..at].join("/");
    match &parts[at..] {
        [] => Some((secret, None)),
        ["versions"] => Some((secret, Some(""))),
        ["versions", v] => Some((secret, Some(v))),
        _ => None,
    }
}

/// A secret's name as GSM returns it: the project id replaced by its number.
pub(crate) fn canonical(secret: &str) -> String {
    let mut parts: Vec<String> = secret.split('/').map(str::to_owned).collect();
    if parts.len() > 1 && parts[0] == "projects" {
        parts[1] = project_number(&parts[1]);
    }
    parts.join("/")
}

/// The stored key of `secret` (named by project id or number).
fn stored_key(state: &State, secret: &str) -> Option<String> {
    if state.secrets.contains_key(secret) {
        return Some(secret.to_owned());
    }
    let wanted = canonical(secret);
    state
        .secrets
        .keys()
        .find(|k| canonical(k) == wanted)
        .cloned()
}

/// `latest` as an eventually consistent read sees it: the newest version older than the lag
/// (the first version when every one is newer).
fn lagged_latest(versions: &[crate::Version], lag: std::time::Duration) -> usize {
    versions
        .iter()
        .rposition(|v| v.added.elapsed() >= lag)
        .map_or(1, |i| i + 1)
}

/// Where alias `alias` of secret `key` points, as an eventually consistent read sees it: its
/// previous target while it moved less than the lag ago.
fn lagged_alias(state: &State, key: &str, alias: &str) -> Option<usize> {
    let current = state.aliases.get(key).and_then(|a| a.get(alias)).copied();
    match state.alias_moves.get(key).and_then(|m| m.get(alias)) {
        Some(moved) if moved.at.elapsed() < state.read_lag => moved.previous,
        _ => current,
    }
}

/// The fault for this access call: the secret's own (used up one call at a time), else the
/// global one.
fn take_fault(state: &mut State, secret: &str) -> Option<Fault> {
    let key = stored_key(state, secret).unwrap_or_else(|| secret.to_owned());
    if let Some(f) = state.secret_faults.get_mut(&key) {
        let fault = f.fault.clone();
        match &mut f.remaining {
            Some(0) => {
                state.secret_faults.remove(&key);
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    state.secret_faults.remove(&key);
                }
                return Some(fault);
            }
            None => return Some(fault),
        }
    }
    state.fault.clone()
}

/// GSM's answer to a quota overrun: 429 RESOURCE_EXHAUSTED with an ErrorInfo detail.
/// What Google answers when the API is not enabled in the project.
fn service_disabled() -> Reply {
    json_reply(
        StatusCode::FORBIDDEN,
        &json!({"error": {
            "code": 403,
            "message": "Secret Manager API has not been used in project 123456789012 before or \
                        it is disabled. Enable it by visiting https://console.developers.google.\
                        com/apis/api/secretmanager.googleapis.com/overview?project=123456789012 \
                        then retry (injected).",
            "status": "PERMISSION_DENIED",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {
                    "service": "secretmanager.googleapis.com",
                    "consumer": "projects/123456789012",
                },
            }],
        }}),
    )
}

fn rate_limited() -> Reply {
    json_reply(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"error": {
            "code": 429,
            "message": "Quota exceeded for quota metric 'Access requests' and limit 'Access \
                        requests per minute per project' of service \
                        'secretmanager.googleapis.com' (injected).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "RATE_LIMIT_EXCEEDED",
                "domain": "googleapis.com",
                "metadata": {
                    "service": "secretmanager.googleapis.com",
                    "quota_metric": "secretmanager.googleapis.com/access_requests",
                },
            }],
        }}),
    )
}

async fn access(handle: &Handle, version_name: &str) -> Reply {
    let Some((secret, Some(version))) = split(version_name).filter(|(_, v)| v != &Some("")) else {
        return gsm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "malformed version name",
        );
    };
    let fault = take_fault(&mut handle.lock(), &secret);
    match &fault {
        Some(Fault::Hang) => {
            tokio::time::sleep(HANG).await;
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Http500Html) => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<html><body><h1>500 Internal Server Error</h1></body></html>",
            )));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut()
                .insert("content-type", "text/html".parse().expect("static header"));
            return r;
        }
        Some(Fault::Unavailable) => {
            return gsm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            );
        }
        Some(Fault::DeadlineExceeded) => {
            return gsm_error(
                StatusCode::GATEWAY_TIMEOUT,
                "DEADLINE_EXCEEDED",
                "The request timed out (injected).",
            );
        }
        Some(Fault::ServiceDisabled) => return service_disabled(),
        Some(Fault::NotFound) => {
            return gsm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "Secret not found (injected).",
            );
        }
        Some(Fault::PermissionDenied) => {
            return gsm_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "Permission 'secretmanager.versions.access' denied (injected).",
            );
        }
        Some(Fault::Unauthenticated) => {
            return gsm_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials (injected).",
            );
        }
        Some(Fault::RateLimited) => return rate_limited(),
        _ => {}
    }
    let named = canonical(&secret);
    let (number, data) = {
        let state = handle.lock();
        let versions = stored_key(&state, &secret)
            .filter(|k| {
                state
                    .deleted
                    .get(k)
                    .is_none_or(|at| at.elapsed() < state.state_lag)
            })
            .and_then(|k| state.secrets.get(&k).map(|v| (k, v)))
            .filter(|(_, v)| !v.is_empty());
        let Some((key, versions)) = versions else {
            return gsm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("Secret [{named}] not found or has no versions."),
            );
        };
        let alias = lagged_alias(&state, &key, version);
        // `latest` is the newest version created, whatever its state (Google's documented
        // behaviour: a disabled newest version makes `latest` fail), once the read lag shows it.
        let number = match (version, alias, version.parse::<usize>()) {
            ("latest", _, _) => lagged_latest(versions, state.read_lag),
            (_, Some(n), _) => n,
            (_, None, Ok(n)) if n >= 1 && n <= versions.len() => n,
            _ => {
                return gsm_error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    &format!("Secret Version [{named}/versions/{version}] not found."),
                );
            }
        };
        let Some(v) = versions.get(number.wrapping_sub(1)) else {
            return gsm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("Secret Version [{named}/versions/{version}] not found."),
            );
        };
        let refused = match v.seen_state(state.state_lag) {
            Some(VersionState::Enabled) => None,
            Some(VersionState::Disabled) => Some("DISABLED"),
            Some(VersionState::Destroyed) | None => Some("DESTROYED"),
        };
        if let Some(state) = refused {
            return gsm_error(
                StatusCode::BAD_REQUEST,
                "FAILED_PRECONDITION",
                &format!("Secret Version [{named}/versions/{number}] is in {state} state."),
            );
        }
        (number, v.data.clone())
    };
    let data = if fault == Some(Fault::Oversize) {
        vec![b'x'; MAX_PAYLOAD + 1]
    } else {
        data
    };
    let crc = crc32c::crc32c(&data);
    let mut payload = json!({"data": B64.encode(&data)});
    match fault {
        Some(Fault::BadBase64) => payload["data"] = json!("!!! this is not base64 !!!"),
        Some(Fault::CrcMismatch) => payload["dataCrc32c"] = json!(crc.wrapping_add(1).to_string()),
        Some(Fault::NoCrc) => {}
        _ => payload["dataCrc32c"] = json!(crc.to_string()),
    }
    json_reply(
        StatusCode::OK,
        &json!({"name": format!("{named}/versions/{number}"), "payload": payload}),
    )
}

fn version_json(secret: &str, number: usize, state: Option<VersionState>) -> Value {
    // enum-encoding=int: ENABLED = 1, DISABLED = 2, DESTROYED = 3.
    let state = match state {
        Some(VersionState::Enabled) => 1,
        Some(VersionState::Disabled) => 2,
        Some(VersionState::Destroyed) => 3,
        None => 0,
    };
    json!({"name": format!("{secret}/versions/{number}"), "state": state})
}

fn metadata(handle: &Handle, resource: &str) -> Reply {
    let Some((secret, version)) = split(resource) else {
        return gsm_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown path");
    };
    let state = handle.lock();
    let Some(versions) = stored_key(&state, &secret).and_then(|k| state.secrets.get(&k)) else {
        return gsm_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Secret [{secret}] not found."),
        );
    };
    match version {
        None => {
            let mut answer = json!({"name": canonical(&secret)});
            let next = stored_key(&state, &secret)
                .and_then(|k| state.rotations.get(&k))
                .and_then(|r| r.next);
            if let Some(next) = next {
                let at = humantime::format_rfc3339_nanos(next).to_string();
                answer["rotation"] = json!({"nextRotationTime": at});
            }
            json_reply(StatusCode::OK, &answer)
        }
        Some("") => {
            let list: Vec<Value> = versions
                .iter()
                .enumerate()
                .rev()
                .map(|(i, v)| version_json(&canonical(&secret), i + 1, v.state))
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({"versions": list, "totalSize": versions.len()}),
            )
        }
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 && n <= versions.len() => json_reply(
                StatusCode::OK,
                &version_json(&canonical(&secret), n, versions[n - 1].state),
            ),
            _ => gsm_error(StatusCode::NOT_FOUND, "NOT_FOUND", "version not found"),
        },
    }
}

fn control_api(handle: &Handle, method: &Method, path: &str, body: &[u8]) -> Reply {
    let bad = |m: &str| gsm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m);
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return bad("body is not JSON"),
        }
    };
    match (method, path) {
        (&Method::POST, "versions") => {
            let (Some(secret), Some(data)) = (parsed["secret"].as_str(), parsed["data"].as_str())
            else {
                return bad("need {\"secret\": \"projects/p/secrets/s\", \"data\": \"...\"}");
            };
            if split(secret).is_none_or(|(_, v)| v.is_some()) {
                return bad("secret must be projects/P/secrets/S");
            }
            let n = handle.add_version(secret, data.as_bytes());
            json_reply(StatusCode::OK, &json!({"version": n}))
        }
        (&Method::PUT, "state") => {
            let state = match parsed["state"].as_str() {
                Some("enabled") => VersionState::Enabled,
                Some("disabled") => VersionState::Disabled,
                Some("destroyed") => VersionState::Destroyed,
                _ => return bad("state must be enabled, disabled or destroyed"),
            };
            let (Some(secret), Some(version)) =
                (parsed["secret"].as_str(), parsed["version"].as_u64())
            else {
                return bad(
                    "need {\"secret\": \"projects/p/secrets/s\", \"version\": N, \"state\": ...}",
                );
            };
            handle.set_version_state(secret, version, state);
            json_reply(StatusCode::OK, &json!({}))
        }
        (&Method::PUT, "rotation") => {
            let (Some(secret), Some(next)) =
                (parsed["secret"].as_str(), parsed["next_unix_s"].as_u64())
            else {
                return bad(
                    "need {\"secret\": \"projects/p/secrets/s\", \"next_unix_s\": N, \"period_s\": N}",
                );
            };
            let next = std::time::UNIX_EPOCH + Duration::from_secs(next);
            let period = parsed["period_s"].as_u64().map(Duration::from_secs);
            handle.set_rotation(secret, next, period);
            json_reply(StatusCode::OK, &json!({}))
        }
        (&Method::POST, "rotation/fire") => {
            let Some(secret) = parsed["secret"].as_str() else {
                return bad("need {\"secret\": \"projects/p/secrets/s\"}");
            };
            handle.fire_rotation(secret);
            json_reply(StatusCode::OK, &json!({}))
        }
        (&Method::PUT, "fault") => {
            let fault = match parsed["fault"].as_str() {
                None => None,
                Some(name) => match Fault::parse(name, parsed["delay_ms"].as_u64()) {
                    Some(f) => Some(f),
                    None => return bad("unknown fault"),
                },
            };
            handle.set_fault(fault);
            json_reply(StatusCode::OK, &json!({}))
        }
        (&Method::GET, "requests") => {
            let list: Vec<Value> = handle
                .requests()
                .into_iter()
                .map(|r| json!({"method": r.method, "path": r.path, "query": r.query}))
                .collect();
            json_reply(StatusCode::OK, &Value::Array(list))
        }
        _ => gsm_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown control path"),
    }
}
