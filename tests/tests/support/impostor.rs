//! A daemon impostor any local user can run: a socket in their own directory, served by them
//! (uid 65534 here). It answers nothing and reports how many bytes each connection sent.

use std::io::{BufRead, BufReader, Lines};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};

use super::TestEnv;

const LISTENER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
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
    /// The listener, running as uid 65534.
    child: Child,
    /// Its reports, a line per connection.
    said: Lines<BufReader<ChildStdout>>,
    /// Its socket, in a directory uid 65534 owns (mode 0755).
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
        let script = env.path("impostor.py");
        std::fs::write(&script, LISTENER).expect("script");
        let mut child = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
            ])
            .arg(&script)
            .arg(&socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("impostor");
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
