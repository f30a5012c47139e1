//! A recording gRPC proxy: forwards every HTTP/2 call to an upstream server (Google's Pub/Sub
//! emulator) and notes which method each one called. The emulator enforces no IAM, so a test
//! that must show the daemon makes no call a least-privilege role would refuse (say
//! `GetSubscription`) looks at what went through here instead.

use std::sync::{Arc, Mutex};

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Running;

/// A proxy on a loopback port in a background thread; stops on drop.
#[derive(Debug)]
pub struct GrpcRecorder {
    /// The gRPC methods called so far (`/google.pubsub.v1.Subscriber/StreamingPull`).
    calls: Arc<Mutex<Vec<String>>>,
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
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Accepts connections until the future is dropped; each gets an upstream connection of its
/// own, and every request on it is forwarded there as it streams (bodies and trailers both
/// ways, so streaming pulls work).
async fn forward_all(
    listener: tokio::net::TcpListener,
    upstream_port: u16,
    calls: Arc<Mutex<Vec<String>>>,
) {
    while let Ok((downstream, _)) = listener.accept().await {
        let calls = calls.clone();
        tokio::spawn(async move {
            let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
            else {
                return;
            };
            let Ok((sender, connection)) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream))
                    .await
            else {
                return;
            };
            tokio::spawn(connection);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(req.uri().path().to_owned());
                let mut sender = sender.clone();
                async move {
                    sender.ready().await?;
                    sender.send_request(req).await
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(downstream), service)
                .await;
        });
    }
}
