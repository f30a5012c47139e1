//! A daemon impostor any local user can run: a socket in their own directory, served by them
//! (uid 65534 here). It answers nothing and reports how many bytes each connection sent.
//! [`Impostor::serving_as`] puts one at a path of the test's choosing, served by any uid.

use std::io::{BufRead, BufReader, Lines};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use super::TestEnv;

const LISTENER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
if len(sys.argv) > 2:
    # Started as root: anyone may connect, and the kernel reports the uid that listens
    # (SO_PEERCRED is taken at listen), so drop to it first.
    os.chmod(sys.argv[1], 0o666)
    uid = int(sys.argv[2])
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        got = c.recv(64)
    except OSError:
        got = b""
    print("got %d" % len(got), flush=True)
    c.close()
"#;

/// The impostor's process and what it reports; killed on drop.
pub(crate) struct Impostor {
    /// The listener, running as uid 65534 (or the uid it was started as).
    child: Child,
    /// Its reports, a line per connection.
    said: Lines<BufReader<ChildStdout>>,
    /// Its socket: from `start`, in a directory uid 65534 owns (mode 0755).
    pub(crate) socket: PathBuf,
}

impl Impostor {
    /// Starts one under `env` (needs root, to become uid 65534).
    pub(crate) fn start(env: &TestEnv) -> Impostor {
        let dir = env.path("nobody");
        std::fs::create_dir(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
        let socket = dir.join("secretd.sock");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
        ])
        .arg(Self::script(env))
        .arg(&socket);
        Self::spawn(cmd, socket)
    }

    /// One listening at `socket` (made by root, mode 0666) as `uid` (needs root).
    pub(crate) fn serving_as(env: &TestEnv, socket: PathBuf, uid: u32) -> Impostor {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(Self::script(env)).arg(&socket).arg(uid.to_string());
        Self::spawn(cmd, socket)
    }

    /// The listener's script, written under `env`.
    fn script(env: &TestEnv) -> PathBuf {
        let script = env.path("impostor.py");
        std::fs::write(&script, LISTENER).expect("script");
        script
    }

    /// Starts `cmd` and waits until it listens.
    fn spawn(mut cmd: Command, socket: PathBuf) -> Impostor {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("impostor");
        let mut said = BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert_eq!(said.next().expect("a line").expect("utf8"), "ready");
        Impostor {
            child,
            said,
            socket,
        }
    }

    /// The bytes the next connection sent before it closed.
    pub(crate) fn next_received(&mut self) -> usize {
        let line = self.said.next().expect("a line").expect("utf8");
        line.strip_prefix("got ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("impostor said {line:?}"))
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
