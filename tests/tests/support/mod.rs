#![allow(dead_code)] // each test file uses a different part of the support
//! Test support: a temp directory with secret files, a config ([`config::ConfigBuilder`]),
//! the real daemon binary running on a socket inside it, and [`wait_until`] for every wait.

pub(crate) mod config;
pub(crate) mod container;
pub(crate) mod google;
pub(crate) mod http;
pub(crate) mod impostor;
pub(crate) mod notify;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use secretd_proto::frame::{encode_frame, read_frame};
use secretd_proto::{ClientHello, Request, Response};

/// How long a daemon may take to start answering.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The daemon binary under test.
pub(crate) fn secretd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secretd-under-test"))
}

/// The probe client binary.
pub(crate) fn probe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secretd-probe"))
}

/// The uid the tests run as.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether tests that switch uid can run (they need root).
pub(crate) fn is_root() -> bool {
    euid() == 0
}

/// Whether a test that needs `capability` (root, namespaces, ...) can run. Outside CI it may
/// skip, saying why; CI runs as root on a machine that has what the tests need, so there a
/// test that cannot run fails loudly instead of passing without testing anything.
pub(crate) fn can_run(available: bool, test: &str, capability: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {capability}; CI must provide it"
    );
    skipped(test, &format!("needs {capability}"));
    false
}

/// Says that `test` skipped and why, on stderr and in `$SECRETD_SKIP_LOG` (scripts/test lists
/// that file's lines at the end of a run).
pub(crate) fn skipped(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("SECRETD_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// What a test waits for, named in the failure: a fixed text, or a closure called only on
/// failure (to show what was last seen, such as the daemon's log).
pub(crate) trait Waiting {
    /// The description.
    fn describe(&self) -> String;
}

impl Waiting for &str {
    fn describe(&self) -> String {
        (*self).to_owned()
    }
}

impl<F: Fn() -> String> Waiting for F {
    fn describe(&self) -> String {
        self()
    }
}

/// Where a test can make a cgroup a unit would have: the `name=systemd` v1 hierarchy on hybrid
/// hosts, else the unified v2 root.
pub(crate) fn cgroup_root() -> Option<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/systemd");
    if v1.join("cgroup.procs").exists() {
        return Some(v1.to_owned());
    }
    let v2 = Path::new("/sys/fs/cgroup");
    v2.join("cgroup.controllers")
        .exists()
        .then(|| v2.to_owned())
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `timeout`, and returns
/// what it found; panics naming `what` if the time runs out. Tests never sleep a fixed time
/// and hope: they wait for the state, with a generous deadline.
pub(crate) fn wait_until<T>(
    what: impl Waiting,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {}",
            what.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temp directory holding secret files, configs and sockets.
#[derive(Debug)]
pub(crate) struct TestEnv {
    /// The directory (world-traversable, so uid 65534 can reach a socket shared with its group).
    pub dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh directory.
    pub(crate) fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("secretd-test-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        std::fs::create_dir(dir.path().join("values")).expect("values dir");
        TestEnv { dir }
    }

    /// A path inside the directory.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The socket path configs use (in a `run/` directory the daemon creates).
    pub(crate) fn socket(&self) -> PathBuf {
        self.path("run/secretd.sock")
    }

    /// Writes a secret file (mode 0600) and returns its path.
    pub(crate) fn write_value(&self, name: &str, value: &[u8]) -> PathBuf {
        let path = self.path(&format!("values/{name}"));
        std::fs::write(&path, value).expect("write value");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Writes `config` and starts the daemon on it, waiting until it answers.
    pub(crate) fn start(&self, config: &str) -> Daemon {
        let daemon = self.spawn(config, "secretd.toml");
        daemon.wait_ready();
        daemon
    }

    /// Writes `config` and starts the daemon with extra environment variables.
    pub(crate) fn start_with_env(&self, config: &str, vars: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn_with_env(config, "secretd.toml", vars);
        daemon.wait_ready();
        daemon
    }

    /// Writes `config` under `file` and spawns the daemon without waiting.
    pub(crate) fn spawn(&self, config: &str, file: &str) -> Daemon {
        self.spawn_with_env(config, file, &[])
    }

    /// [`TestEnv::spawn`] with extra environment variables.
    pub(crate) fn spawn_with_env(&self, config: &str, file: &str, vars: &[(&str, &str)]) -> Daemon {
        self.spawn_wrapped(config, file, vars, &[])
    }

    /// Spawns `wrapper... secretd serve --config FILE`: the wrapper must end by exec'ing its
    /// arguments, so the child's pid is the daemon's.
    pub(crate) fn spawn_wrapped(
        &self,
        config: &str,
        file: &str,
        vars: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Daemon {
        let config_path = self.path(file);
        std::fs::write(&config_path, config).expect("write config");
        let log_path = self.path(&format!("{file}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut argv: Vec<std::ffi::OsString> = wrapper.iter().map(Into::into).collect();
        argv.push(secretd_bin().into());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("SECRETD_LOG", "debug")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn secretd");
        Daemon {
            child: Some(child),
            socket: self.socket(),
            log_path,
        }
    }

    /// Copies a binary into the env (mode 0755) so another uid can run it wherever the
    /// build tree lives.
    pub(crate) fn runnable_copy(&self, bin: &Path) -> PathBuf {
        let name = bin.file_name().expect("bin name");
        let dest = self.dir.path().join(name);
        if !dest.exists() {
            std::fs::copy(bin, &dest).expect("copy binary");
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                .expect("chmod binary");
        }
        dest
    }

    /// Runs a binary as uid/gid 65534 (nobody) with no supplementary groups.
    pub(crate) fn run_as_nobody(&self, bin: &Path, args: &[&str]) -> Output {
        let bin = self.runnable_copy(bin);
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .args(args)
            .env_remove("SECRETD_SOCKET")
            .output()
            .expect("run setpriv")
    }
}

/// A running daemon process; killed on drop if still running.
pub(crate) struct Daemon {
    /// The process, until stopped.
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Where its stderr goes.
    pub log_path: PathBuf,
}

impl Daemon {
    /// Waits until the socket accepts a client and answers a hello.
    pub(crate) fn wait_ready(&self) {
        let started = || format!("the daemon to start; log:\n{}", self.log());
        wait_until(started, START_TIMEOUT, || {
            secretd_client::Client::connect(&self.socket).ok()
        });
    }

    /// Connects a client that holds one of the daemon's connection slots.
    ///
    /// A slot freed by a client that just closed (such as [`Daemon::wait_ready`]'s probe) is
    /// given back only once the daemon notices the close, so `Busy` is retried for a while.
    pub(crate) fn connect_admitted(&self) -> secretd_client::Client {
        wait_until("a connection slot", Duration::from_secs(5), || {
            match secretd_client::Client::connect(&self.socket) {
                Ok(c) => Some(c),
                Err(e) if e.code() == Some(secretd_client::ErrorCode::Busy) => None,
                Err(e) => panic!("connect failed: {e}"),
            }
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the daemon logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log contains `needle` and returns the log.
    ///
    /// A log line can trail the change a client observes (an alert is written after its audit
    /// record is durable), so a test that saw the change must wait for the line, not read once.
    pub(crate) fn wait_for_log(&self, needle: &str) -> String {
        let what = || format!("the daemon to log {needle:?}; log:\n{}", self.log());
        wait_until(what, Duration::from_secs(10), || {
            Some(self.log()).filter(|log| log.contains(needle))
        })
    }

    /// Sends SIGTERM and waits for exit.
    pub(crate) fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        wait_timeout(&mut child, Duration::from_secs(15)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("daemon did not stop on SIGTERM");
        })
    }

    /// Waits for the process to exit by itself (a daemon that should refuse to start).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("daemon already stopped");
        let status = wait_timeout(child, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child's exit status, if it exits within `timeout` (`None` is an answer here, not a
/// failure: a caller may then kill it).
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the `secretd` CLI with `args`, with no `SECRETD_SOCKET` unless `env` sets one.
pub(crate) fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(secretd_bin());
    cmd.args(args).env_remove("SECRETD_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run secretd")
}

/// [`cli`], asserting it succeeded (its stderr is the failure message).
pub(crate) fn cli_ok(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = cli(args, env);
    assert!(
        out.status.success(),
        "secretd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A raw connection speaking frames by hand, for sending what a real client never would.
pub(crate) struct RawConn {
    /// The socket.
    pub stream: UnixStream,
    /// The protocol version the daemon answered the hello with (how it lays out status rows).
    pub protocol: u16,
}

impl RawConn {
    /// Connects without a hello.
    pub(crate) fn connect(socket: &Path) -> RawConn {
        RawConn::try_connect(socket).expect("connect")
    }

    /// Connects without a hello; `None` if the socket does not take the connection.
    pub(crate) fn try_connect(socket: &Path) -> Option<RawConn> {
        let stream = UnixStream::connect(socket).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Some(RawConn {
            stream,
            protocol: secretd_proto::PROTOCOL_VERSION,
        })
    }

    /// Connects and completes a good hello.
    pub(crate) fn greeted(socket: &Path) -> RawConn {
        RawConn::try_greeted(socket).unwrap_or_else(|other| panic!("hello failed: {other:?}"))
    }

    /// Connects and says hello: the greeted connection, or what the daemon answered instead
    /// (`Busy`, say).
    pub(crate) fn try_greeted(socket: &Path) -> Result<RawConn, Box<Option<Response<'static>>>> {
        let mut conn = RawConn::connect(socket);
        let mut hello = Vec::new();
        encode_frame(&Request::Hello(ClientHello::new("raw-test")), &mut hello).expect("encode");
        // A daemon that refused the connection at accept may have closed it before the hello
        // arrives: the write fails, and what the daemon answered is still there to read.
        let _ = conn.stream.write_all(&hello);
        match conn.recv() {
            Some(Response::Hello(_)) => Ok(conn),
            other => Err(Box::new(other)),
        }
    }

    /// Sends a well-formed request.
    pub(crate) fn send(&mut self, req: &Request) {
        let mut buf = Vec::new();
        encode_frame(req, &mut buf).expect("encode");
        self.send_bytes(&buf);
    }

    /// Sends arbitrary bytes.
    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a frame with `body` behind a correct length prefix.
    pub(crate) fn send_body(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame);
    }

    /// Reads one response; `None` when the daemon closed the connection.
    pub(crate) fn recv(&mut self) -> Option<Response<'static>> {
        let mut buf = Vec::new();
        match read_frame(&mut self.stream, &mut buf) {
            Ok(()) => {
                let response = secretd_proto::legacy::decode_response(&buf, self.protocol)
                    .expect("daemon sent a malformed response");
                if let Response::Hello(h) = &response {
                    self.protocol = h.protocol_version;
                }
                Some(response)
            }
            Err(_) => None,
        }
    }

    /// Whether the daemon has closed the connection (reads EOF or reset).
    pub(crate) fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// Runs `secretd keygen` into `bg.pem` / `bg.pub.pem` in the env and checks the private key's
/// mode.
pub(crate) fn keygen(env: &TestEnv) {
    let out = cli(
        &[
            "keygen",
            "--out-private",
            env.path("bg.pem").to_str().expect("utf8"),
            "--out-public",
            env.path("bg.pub.pem").to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(env.path("bg.pem"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// `secretd break-glass apply NAME --value-file - --ttl TTL --public-key PUB [extra]` with
/// the value on stdin.
pub(crate) fn break_glass_apply(
    socket: &str,
    name: &str,
    value: &[u8],
    ttl: &str,
    public: &str,
    extra: &[&str],
) -> (i32, String) {
    let mut child = Command::new(secretd_bin())
        .args([
            "break-glass",
            "apply",
            name,
            "--value-file",
            "-",
            "--ttl",
            ttl,
            "--public-key",
            public,
            "--socket",
            socket,
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
