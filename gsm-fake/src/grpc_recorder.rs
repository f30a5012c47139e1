//! A recording gRPC proxy: forwards every HTTP/2 call to an upstream server (Google's Pub/Sub
//! emulator) and notes which method each one called, with the request of the small unary
//! calls that acknowledge and nack. The emulator enforces no IAM, so a test that must show the
//! daemon makes no call a least-privilege role would refuse (say `GetSubscription`) looks at
//! what went through here instead; and one that must show a message was given back at
//! shutdown reads the `ModifyAckDeadline` requests.

use std::sync::{Arc, Mutex};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Running;

/// Each call's method, with the request body of the small unary ones.
type Calls = Arc<Mutex<Vec<(String, Option<Bytes>)>>>;

/// A proxy on a loopback port in a background thread; stops on drop.
#[derive(Debug)]
pub struct GrpcRecorder {
    /// The gRPC methods called so far (`/google.pubsub.v1.Subscriber/StreamingPull`), with
    /// the request body of `Acknowledge` and `ModifyAckDeadline` calls (a gRPC frame).
    calls: Calls,
    /// The proxy.
    running: Running,
}

impl GrpcRecorder {
    /// Starts a proxy in front of `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> std::io::Result<GrpcRecorder> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let noted = calls.clone();
        let running = Running::start("grpc-recorder", move |listener| {
            forward_all(listener, upstream_port, noted)
        })?;
        Ok(GrpcRecorder { calls, running })
    }

    /// The endpoint clients should use instead of the upstream's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// Every method called so far, in order.
    pub fn calls(&self) -> Vec<String> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.iter().map(|(path, _)| path.clone()).collect()
    }

    /// The request bodies (gRPC frames) of the calls to methods ending in `method`
    /// (`ModifyAckDeadline`, `Acknowledge`), in order.
    pub fn requests(&self, method: &str) -> Vec<Bytes> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls
            .iter()
            .filter(|(path, _)| path.ends_with(method))
            .filter_map(|(_, body)| body.clone())
            .collect()
    }
}

/// Accepts connections until the future is dropped; each gets an upstream connection of its
/// own, and every request on it is forwarded there as it streams (bodies and trailers both
/// ways, so streaming pulls work).
async fn forward_all(listener: tokio::net::TcpListener, upstream_port: u16, calls: Calls) {
    while let Ok((downstream, _)) = listener.accept().await {
        let calls = calls.clone();
        tokio::spawn(async move {
            let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
            else {
                return;
            };
            let Ok((sender, connection)) =
                hyper::client::conn::http2::handshake::<_, _, BoxBody<Bytes, hyper::Error>>(
                    TokioExecutor::new(),
                    TokioIo::new(upstream),
                )
                .await
            else {
                return;
            };
            let upstream_connection = tokio::spawn(connection);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let calls = calls.clone();
                let mut sender = sender.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let path = parts.uri.path().to_owned();
                    let small =
                        path.ends_with("/Acknowledge") || path.ends_with("/ModifyAckDeadline");
                    let (body, kept) = if small {
                        // Unary and small: read whole, kept, and sent on as it came.
                        let bytes = body.collect().await?.to_bytes();
                        let full = Full::new(bytes.clone()).map_err(|never| match never {});
                        (full.boxed(), Some(bytes))
                    } else {
                        (body.boxed(), None)
                    };
                    calls
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((path, kept));
                    sender.ready().await?;
                    sender.send_request(Request::from_parts(parts, body)).await
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(downstream), service)
                .await;
            // The client went away: so does its upstream connection, or the server would go
            // on delivering to streams nobody reads.
            upstream_connection.abort();
        });
    }
}
