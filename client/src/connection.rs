//! One connected, greeted socket to the daemon.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use secretd_proto::frame::{decode_body, encode_frame, read_frame};
use secretd_proto::{ClientHello, ErrorCode, PROTOCOL_VERSION, Request, Response};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// The label this library sends in its hello.
const CLIENT_LABEL: &str = concat!("secretd-client/", env!("CARGO_PKG_VERSION"));

/// A socket that has completed the hello exchange.
pub(crate) struct Connection {
    /// The stream, with read and write timeouts set.
    stream: UnixStream,
    /// Frame scratch, reused between requests and wiped after each one, since responses
    /// carry secret values.
    buf: Vec<u8>,
}

impl Connection {
    pub(crate) fn open(path: &Path, timeout: Duration) -> Result<Connection> {
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout)).map_err(Error::Io)?;
        stream.set_write_timeout(Some(timeout)).map_err(Error::Io)?;
        let mut conn = Connection {
            stream,
            buf: Vec::new(),
        };
        match conn.call(&Request::Hello(ClientHello::new(CLIENT_LABEL)))? {
            Response::Hello(h) if h.protocol_version == PROTOCOL_VERSION => Ok(conn),
            Response::Hello(h) => Err(Error::Protocol(format!(
                "daemon answered hello with protocol version {}, expected {PROTOCOL_VERSION}",
                h.protocol_version
            ))),
            Response::Error(e) if e.code == ErrorCode::Busy => Err(Error::Daemon(e)),
            Response::Error(e) => Err(Error::Daemon(e)),
            other => Err(Error::Protocol(format!(
                "daemon answered hello with a {} message",
                other.kind()
            ))),
        }
    }

    /// Sends one request and reads its response.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Response<'static>> {
        let result = self.exchange(req);
        self.buf.zeroize();
        result
    }

    /// Like [`Connection::call`], waiting up to `timeout` for the response instead of the
    /// connection's usual timeout (for operations that do slow work, like a refresh).
    pub(crate) fn call_slow(
        &mut self,
        req: &Request,
        timeout: Duration,
        usual: Duration,
    ) -> Result<Response<'static>> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(Error::Io)?;
        let result = self.call(req);
        self.stream
            .set_read_timeout(Some(usual))
            .map_err(Error::Io)?;
        result
    }

    fn exchange(&mut self, req: &Request) -> Result<Response<'static>> {
        encode_frame(req, &mut self.buf)?;
        self.stream.write_all(&self.buf).map_err(Error::Io)?;
        read_frame(&mut self.stream, &mut self.buf)?;
        Ok(decode_body::<Response<'static>>(&self.buf)?)
    }
}
