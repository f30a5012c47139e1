//! Plain HTTP/1.1 against the daemon's `metrics_listen`, for the operations tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A free port on loopback (bound and released; the daemon binds it next).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A plain `GET`; returns (status code, body). An error when the connection is refused or
/// closed before an answer (the daemon's HTTP connection cap does that).
pub(crate) fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// [`try_http_get`], failing the test on a connection error.
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).expect("http get")
}
