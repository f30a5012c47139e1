//! The HTTP side of the fake.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::{Fault, Handle, Recorded, VersionState};

/// GSM's payload limit.
const MAX_PAYLOAD: usize = 64 * 1024;
/// How long a hanging answer hangs (tests time out long before).
const HANG: Duration = Duration::from_secs(3600);
/// The largest control request body accepted.
const MAX_CONTROL_BODY: usize = 1024 * 1024;

type Reply = Response<Full<Bytes>>;

/// Serves the fake on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, handle: Handle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(route(&handle, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
    handle.lock().requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
    });
    if let Some(control) = path.strip_prefix("/fake/") {
        let body = match req.into_body().collect().await.map(|b| b.to_bytes()) {
            Ok(b) if b.len() <= MAX_CONTROL_BODY => b,
            _ => return gsm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "bad body"),
        };
        return control_api(handle, &method, control, &body);
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
    if let Some(version_name) = resource.strip_suffix(":access") {
        return access(handle, version_name).await;
    }
    metadata(handle, resource)
}

/// Splits `projects/P/secrets/S[/versions[/V]]` into the secret and the rest.
fn split(resource: &str) -> Option<(String, Option<&str>)> {
    let parts: Vec<&str> = resource.split('/').collect();
    if parts.len() < 4 || parts[0] != "projects" || parts[2] != "secrets" {
        return None;
    }
    let secret = parts[..4].join("/");
    match parts.len() {
        4 => Some((secret, None)),
        5 if parts[4] == "versions" => Some((secret, Some(""))),
        6 if parts[4] == "versions" => Some((secret, Some(parts[5]))),
        _ => None,
    }
}

async fn access(handle: &Handle, version_name: &str) -> Reply {
    let fault = handle.lock().fault.clone();
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
        _ => {}
    }
    let Some((secret, Some(version))) = split(version_name).filter(|(_, v)| v != &Some("")) else {
        return gsm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "malformed version name",
        );
    };
    let (number, data) = {
        let state = handle.lock();
        let Some(versions) = state.secrets.get(&secret).filter(|v| !v.is_empty()) else {
            return gsm_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("Secret [{secret}] not found or has no versions."),
            );
        };
        let number = if version == "latest" {
            match versions
                .iter()
                .rposition(|v| v.state == Some(VersionState::Enabled))
            {
                Some(i) => i + 1,
                None => {
                    return gsm_error(
                        StatusCode::NOT_FOUND,
                        "NOT_FOUND",
                        &format!("Secret [{secret}] has no enabled versions."),
                    );
                }
            }
        } else {
            match version.parse::<usize>() {
                Ok(n) if n >= 1 && n <= versions.len() => n,
                _ => {
                    return gsm_error(
                        StatusCode::NOT_FOUND,
                        "NOT_FOUND",
                        &format!("Secret Version [{secret}/versions/{version}] not found."),
                    );
                }
            }
        };
        let v = &versions[number - 1];
        if v.state != Some(VersionState::Enabled) {
            return gsm_error(
                StatusCode::BAD_REQUEST,
                "FAILED_PRECONDITION",
                &format!("Secret Version [{secret}/versions/{number}] is in DISABLED state."),
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
        &json!({"name": format!("{secret}/versions/{number}"), "payload": payload}),
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
    let Some(versions) = state.secrets.get(&secret) else {
        return gsm_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Secret [{secret}] not found."),
        );
    };
    match version {
        None => json_reply(StatusCode::OK, &json!({"name": secret})),
        Some("") => {
            let list: Vec<Value> = versions
                .iter()
                .enumerate()
                .rev()
                .map(|(i, v)| version_json(&secret, i + 1, v.state))
                .collect();
            json_reply(
                StatusCode::OK,
                &json!({"versions": list, "totalSize": versions.len()}),
            )
        }
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 && n <= versions.len() => json_reply(
                StatusCode::OK,
                &version_json(&secret, n, versions[n - 1].state),
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
