//! Clients trust only the daemon: a socket that another local user could have planted is
//! refused by every client before it is sent a byte (the C API and the Python package use the
//! same Rust client; their own suites check their error codes).

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use secretd_client::{Client, Error};
use support::impostor::Impostor;
use support::{TestEnv, can_run, cli, is_root, secretd_bin};

/// Accepts one connection and returns every byte the client sent before closing.
fn bytes_received(listener: &UnixListener) -> Vec<u8> {
    listener.set_nonblocking(false).expect("blocking");
    let (mut conn, _) = listener.accept().expect("accept");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    got
}

/// A listener at `dir/secretd.sock`, `dir` created with `mode`.
fn plant(dir: &Path, mode: u32) -> UnixListener {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
    UnixListener::bind(dir.join("secretd.sock")).expect("bind")
}

#[test]
fn a_socket_in_a_directory_others_can_write_is_refused_before_a_byte_is_sent() {
    let env = TestEnv::new();
    let dir = env.path("shared");
    let listener = plant(&dir, 0o777);
    let socket = dir.join("secretd.sock");
    let client = std::thread::spawn({
        let socket = socket.clone();
        move || Client::connect(&socket)
    });
    assert!(
        bytes_received(&listener).is_empty(),
        "the client sent bytes to an untrusted socket"
    );
    let err = client.join().expect("client").expect_err("untrusted");
    assert!(matches!(err, Error::UntrustedServer { .. }), "{err:?}");
    assert!(err.to_string().contains("writable by others"), "{err}");

    // The CLI too (it is a client like any other).
    let out = cli(
        &[
            "get",
            "trading_api_key",
            "--socket",
            socket.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to talk to the process at"),
        "{stderr}"
    );
}

#[test]
fn a_development_directory_created_by_another_user_is_refused() {
    if !can_run(
        is_root(),
        "a_development_directory_created_by_another_user",
        "root to give a directory to another uid",
    ) {
        return;
    }
    if !can_run(
        !Path::new(secretd_proto::paths::DEFAULT_SOCKET).exists(),
        "a_development_directory_created_by_another_user",
        "no production daemon at /run/secretd/secretd.sock (clients would not fall back)",
    ) {
        return;
    }
    // Another user got to the derived development directory first and serves from it.
    let env = TestEnv::new();
    let xdg = env.path("xdg");
    std::fs::create_dir(&xdg).expect("xdg");
    let dev = xdg.join("secretd-dev");
    let listener = plant(&dev, 0o755);
    std::os::unix::fs::chown(&dev, Some(65534), Some(65534)).expect("chown");
    let xdg_str = xdg.to_str().expect("utf8").to_owned();
    let client = std::thread::spawn(move || {
        cli(
            &["get", "webhook_shared_secret"],
            &[("XDG_RUNTIME_DIR", &xdg_str)],
        )
    });
    assert!(
        bytes_received(&listener).is_empty(),
        "the client sent bytes to an impostor"
    );
    let out = client.join().expect("cli");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
}

#[test]
fn a_socket_served_by_its_own_owner_is_refused_unless_that_owner_is_the_daemons_uid() {
    if !can_run(
        is_root(),
        "a_socket_served_by_its_own_owner",
        "root, to run the impostor as uid 65534",
    ) {
        return;
    }
    let env = TestEnv::new();
    let mut impostor = Impostor::start(&env);
    let path = impostor.socket.to_str().expect("utf8").to_owned();

    // The Rust client and the CLI refuse it, naming the path, the uid that answered and what
    // they expected (the C API's and the Python package's suites check theirs), and send it
    // nothing.
    let err = Client::connect(&impostor.socket).expect_err("an impostor");
    let text = err.to_string();
    assert!(matches!(err, Error::UntrustedServer { .. }), "{err:?}");
    assert!(
        text.contains(&path) && text.contains("served by uid 65534") && text.contains("expected"),
        "{text}"
    );
    assert_eq!(impostor.next_received(), 0);
    let out = cli(&["get", "trading_api_key", "--socket", &path], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("served by uid 65534"), "{stderr}");
    assert_eq!(impostor.next_received(), 0);
    // An installation whose daemon runs as uid 65534 says so, and then it is the daemon.
    let out = cli(
        &["get", "trading_api_key", "--socket", &path],
        &[("SECRETD_DAEMON_UID", "65534")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("refusing to talk"), "{stderr}");
    assert!(
        impostor.next_received() > 0,
        "the named daemon uid is trusted"
    );
}

/// Runs the CLI as uid 65534, with `vars` set and no `SECRETD_SOCKET`.
fn cli_as_nobody(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env.runnable_copy(&secretd_bin()))
        .args(args)
        .env_remove("SECRETD_SOCKET")
        .env_remove("SECRETD_DAEMON_UID");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run setpriv")
}

/// A directory owned by uid 65534, with `mode`.
fn nobodys_dir(path: &Path, mode: u32) {
    std::fs::create_dir(path).expect("dir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).expect("chown");
}

#[test]
fn a_client_that_is_not_root_trusts_root_and_itself_and_no_third_uid() {
    let test = "a_client_that_is_not_root_trusts_root_and_itself";
    if !can_run(
        is_root(),
        test,
        "root, to run clients and servers as other uids",
    ) {
        return;
    }
    if !can_run(
        !Path::new(secretd_proto::paths::DEFAULT_SOCKET).exists(),
        test,
        "no production daemon at /run/secretd/secretd.sock (clients would not fall back)",
    ) {
        return;
    }
    let env = TestEnv::new();
    let refused = |out: &Output| {
        String::from_utf8_lossy(&out.stderr).contains("refusing to talk to the process at")
    };

    // A daemon of its own uid, at a path it names: its own (the root daemon case is
    // foundation's other_uid_is_checked_by_kernel_credentials).
    let mut own = Impostor::start(&env);
    let path = own.socket.to_str().expect("utf8").to_owned();
    let out = cli_as_nobody(&env, &["get", "trading_api_key", "--socket", &path], &[]);
    assert!(!refused(&out), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(own.next_received() > 0, "its own uid's server is trusted");

    // Its derived development socket, in the directory it owns: served by root, trusted;
    // served by a third uid, refused before a byte is sent.
    let xdg = env.path("xdg-nobody");
    nobodys_dir(&xdg, 0o700);
    let dev = xdg.join("secretd-dev");
    nobodys_dir(&dev, 0o755);
    let socket = dev.join("secretd.sock");
    let xdg_var = [("XDG_RUNTIME_DIR", xdg.to_str().expect("utf8"))];
    for (uid, trusted) in [(0, true), (65533, false)] {
        let _ = std::fs::remove_file(&socket);
        let mut server = Impostor::serving_as(&env, socket.clone(), uid);
        let out = cli_as_nobody(&env, &["get", "webhook_shared_secret"], &xdg_var);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if trusted {
            assert!(!refused(&out), "served by uid {uid}: {stderr}");
            assert!(server.next_received() > 0, "served by uid {uid}: {stderr}");
        } else {
            assert!(refused(&out), "served by uid {uid}: {stderr}");
            assert!(
                stderr.contains("development socket is served by uid 65533"),
                "{stderr}"
            );
            assert_eq!(server.next_received(), 0, "bytes sent to uid {uid}");
        }
    }
}
