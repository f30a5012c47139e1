//! The C API from C and C++: programs in ffi/tests and ffi/examples are compiled with gcc/g++
//! (warnings as errors, ASan + UBSan) against include/secretd.h and libsecretd.so, and run
//! against a real daemon.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{TestEnv, can_run, is_root};

const KEY: &str = "Omni-Key-1234567890-abcdef!";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// target/<profile>, where cargo put libsecretd.so next to this test's deps/ directory.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    assert!(
        dir.join("libsecretd.so").exists(),
        "libsecretd.so not found in {}; run `cargo build -p secretd-ffi` first (scripts/test does)",
        dir.display()
    );
    dir
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Compiles `sources` into `out` inside the env, linking a copy of libsecretd.so placed in
/// the env (so another uid can load it too).
fn compile(
    env: &TestEnv,
    compiler: &str,
    flags: &[&str],
    sources: &[PathBuf],
    out: &str,
) -> PathBuf {
    let lib = env.path("lib");
    if !lib.exists() {
        // Installed as a system would: the file under its SONAME, the link name beside it.
        std::fs::create_dir(&lib).expect("lib dir");
        std::fs::copy(lib_dir().join("libsecretd.so"), lib.join("libsecretd.so.0"))
            .expect("copy lib");
        std::os::unix::fs::symlink("libsecretd.so.0", lib.join("libsecretd.so")).expect("symlink");
    }
    let exe = env.path(out);
    let ws = workspace();
    let status = Command::new(compiler)
        .args(flags)
        .arg(format!("-I{}", ws.join("include").display()))
        .arg(format!("-I{}", ws.join("ffi/tests").display()))
        .arg(format!("-I{}", ws.join("ffi/examples").display()))
        .args(sources)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg("-lsecretd")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpthread")
        .status()
        .expect("run compiler");
    assert!(status.success(), "{compiler} failed for {sources:?}");
    exe
}

const C_FLAGS: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
];

fn c_test(env: &TestEnv, name: &str) -> PathBuf {
    compile(
        env,
        "gcc",
        C_FLAGS,
        &[workspace().join(format!("ffi/tests/{name}.c"))],
        name,
    )
}

fn run(exe: &Path, args: &[&str]) -> String {
    let out = Command::new(exe)
        .args(args)
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .output()
        .expect("run C test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed: {stdout}{}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn gcc_or_skip(test: &str) -> bool {
    if have("gcc") {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "gcc is required in CI");
    support::skipped(test, "gcc not installed");
    false
}

/// Two sockets test_basic needs besides the daemon's: one that accepts connections (the
/// kernel's backlog) and never answers, and one in a directory every user can write.
fn odd_sockets(env: &TestEnv) -> (String, String, [std::os::unix::net::UnixListener; 2]) {
    use std::os::unix::fs::PermissionsExt;
    let stuck = env.path("stuck.sock");
    let stuck_listener = std::os::unix::net::UnixListener::bind(&stuck).expect("bind stuck");
    let shared = env.path("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let impostor = shared.join("secretd.sock");
    let impostor_listener = std::os::unix::net::UnixListener::bind(&impostor).expect("bind");
    (
        stuck.to_str().expect("utf8").to_owned(),
        impostor.to_str().expect("utf8").to_owned(),
        [stuck_listener, impostor_listener],
    )
}

fn daemon_env() -> (TestEnv, String) {
    let env = TestEnv::new();
    let config = env
        .conf()
        .shared_with_nobody()
        .file_secret("trading_api_key", KEY.as_bytes())
        .policy(&[0], &["*"], &[])
        .build();
    (env, config)
}

#[test]
fn c_api_basics_and_many_threads_on_one_client() {
    if !gcc_or_skip("c_api_basics") {
        return;
    }
    let (env, config) = daemon_env();
    let daemon = env.start(&config);
    let socket = daemon.socket.to_str().expect("utf8");
    let (stuck, impostor, _listeners) = odd_sockets(&env);
    let out = run(
        &c_test(&env, "test_basic"),
        &[socket, "trading_api_key", KEY, &stuck, &impostor],
    );
    assert!(out.contains("checks passed"), "{out}");
    let out = run(
        &c_test(&env, "test_threads"),
        &[socket, "trading_api_key", KEY],
    );
    assert!(out.contains("8 threads x 500 reads"), "{out}");
}

#[test]
fn c_api_permission_denied_for_another_uid() {
    if !gcc_or_skip("c_api_permission_denied") {
        return;
    }
    if !can_run(
        is_root(),
        "c_api_permission_denied",
        "root to run as uid 65534",
    ) {
        return;
    }
    let (env, config) = daemon_env();
    let daemon = env.start(&config);
    let exe = c_test(&env, "test_denied");
    let out = env.run_as_nobody(
        &exe,
        &[daemon.socket.to_str().expect("utf8"), "trading_api_key"],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn c_api_refuses_a_socket_served_by_its_own_owner() {
    if !gcc_or_skip("c_api_refuses_a_socket_served_by_its_own_owner") {
        return;
    }
    if !can_run(
        is_root(),
        "c_api_refuses_a_socket_served_by_its_own_owner",
        "root to run the impostor as uid 65534",
    ) {
        return;
    }
    let env = TestEnv::new();
    let mut impostor = support::impostor::Impostor::start(&env);
    let out = run(
        &c_test(&env, "test_impostor"),
        &[impostor.socket.to_str().expect("utf8")],
    );
    assert!(out.starts_with("ok"), "{out}");
    assert_eq!(impostor.next_received(), 0, "not a byte to the impostor");
}

/// Starts a C test that talks over stdin/stdout (`SOCKET trading_api_key KEY NEW_VALUE`).
fn spawn_interactive(
    exe: &Path,
    socket: &Path,
    new_value: &str,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(exe)
        .args([
            socket.to_str().expect("utf8"),
            "trading_api_key",
            KEY,
            new_value,
        ])
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

#[test]
fn c_client_survives_a_daemon_restart() {
    if !gcc_or_skip("c_client_survives_a_daemon_restart") {
        return;
    }
    let (env, config) = daemon_env();
    let mut daemon = env.start(&config);
    let exe = c_test(&env, "test_restart");
    let rotated = "Omni-Key-after-restart-0000!";
    let (mut child, mut lines) = spawn_interactive(&exe, &daemon.socket, rotated);
    assert_eq!(lines.next().expect("line").expect("read"), "READY");
    assert!(daemon.stop().success());
    env.write_value("trading_api_key", rotated.as_bytes());
    let _daemon = env.start(&config);
    writeln!(child.stdin.take().expect("stdin"), "go").expect("write");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn cpp_raii_wrapper_compiles_and_runs() {
    if !have("g++") {
        assert!(std::env::var_os("CI").is_none(), "g++ is required in CI");
        support::skipped("cpp_raii_wrapper", "g++ not installed");
        return;
    }
    let (env, config) = daemon_env();
    let daemon = env.start(&config);
    let exe = compile(
        &env,
        "g++",
        &[
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsanitize=address,undefined",
        ],
        &[workspace().join("ffi/examples/example.cpp")],
        "example",
    );
    let out = run(
        &exe,
        &[daemon.socket.to_str().expect("utf8"), "trading_api_key"],
    );
    assert!(
        out.contains(&format!(
            "trading_api_key: {} bytes, version 1, source file",
            KEY.len()
        )),
        "{out}"
    );
    assert!(out.contains("missing name:"), "{out}");
    assert!(out.contains("watching trading_api_key"), "{out}");
    assert!(!out.contains(KEY), "the example must not print the value");
}

#[test]
fn c_api_has_no_leaks_under_valgrind() {
    if !gcc_or_skip("c_api_valgrind") {
        return;
    }
    if !have("valgrind") {
        assert!(
            std::env::var_os("CI").is_none(),
            "valgrind is required in CI"
        );
        support::skipped("c_api_valgrind", "valgrind not installed");
        return;
    }
    let (env, config) = daemon_env();
    let daemon = env.start(&config);
    let (stuck, impostor, _listeners) = odd_sockets(&env);
    let exe = compile(
        &env,
        "gcc",
        &[
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
        ],
        &[workspace().join("ffi/tests/test_basic.c")],
        "test_basic_plain",
    );
    let out = Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
            "-q",
        ])
        .arg(&exe)
        .args([
            daemon.socket.to_str().expect("utf8"),
            "trading_api_key",
            KEY,
            &stuck,
            &impostor,
        ])
        .output()
        .expect("valgrind");
    assert!(
        out.status.success(),
        "valgrind found errors:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn c_watch_callback_and_cached_client() {
    if !gcc_or_skip("c_watch_callback_and_cached_client") {
        return;
    }
    let (env, config) = daemon_env();
    let daemon = env.start(&config);
    let exe = c_test(&env, "test_watch");
    let rotated = "Omni-Key-rotated-by-watch-test!";
    let (mut child, mut lines) = spawn_interactive(&exe, &daemon.socket, rotated);
    assert_eq!(lines.next().expect("line").expect("read"), "ready");
    env.write_value("trading_api_key", rotated.as_bytes());
    let admin = secretd_client::Client::connect(&daemon.socket).expect("connect");
    admin.refresh(Some("trading_api_key")).expect("refresh");
    writeln!(child.stdin.take().expect("stdin"), "go").expect("write");
    assert_eq!(lines.next().expect("line").expect("read"), "changed 2");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn c_api_tells_a_revoked_secret_from_an_unavailable_one() {
    if !gcc_or_skip("c_api_revoked") {
        return;
    }
    let fake = secretd_gsm_fake::FakeGsm::start().expect("fake gsm");
    let gcp = "projects/apex-test/secrets/omni-trading-api-key";
    fake.add_version(gcp, KEY.as_bytes());
    let env = TestEnv::new();
    let config = env
        .conf()
        .daemon("refresh_interval", "1s")
        .gsm_authenticated(&fake)
        .gsm_secret("trading_api_key", gcp)
        .with("version", "1")
        .readable_by_me()
        .build();
    let daemon = env.start(&config);
    let client = secretd_client::Client::connect(&daemon.socket).expect("connect");
    assert_eq!(client.get("trading_api_key").expect("get").version(), "1");
    fake.set_version_state(gcp, 1, secretd_gsm_fake::VersionState::Disabled);
    support::wait_until("the revocation", std::time::Duration::from_secs(30), || {
        client.get("trading_api_key").err()
    });
    let socket = daemon.socket.to_str().expect("utf8");
    let out = run(&c_test(&env, "test_revoked"), &[socket, "trading_api_key"]);
    assert!(out.contains("ok "), "{out}");
}

#[test]
fn c_watcher_hears_a_rotation_gsms_schedule_asks_for() {
    if !gcc_or_skip("c_rotation_requested") {
        return;
    }
    let Some(emulator) = support::notify::emulator_or_skip("c: rotation requested") else {
        return;
    };
    let hour = std::time::Duration::from_secs(3600);
    let host = support::notify::listening_with(
        emulator,
        "gsm-rotate-c",
        "host-rotate-c",
        KEY.as_bytes(),
        |fake| {
            fake.set_rotation(
                support::notify::API_KEY,
                std::time::SystemTime::now() + hour,
                Some(hour),
            )
        },
    );
    // The daemon's first look at the schedule, which a SECRET_ROTATE is judged against.
    support::wait_until("the first look", std::time::Duration::from_secs(30), || {
        let reads = host.fake.requests();
        reads
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(support::notify::API_KEY))
            .then_some(())
    });
    let exe = c_test(&host.env, "test_rotation_requested");
    let mut child = Command::new(&exe)
        .args([
            host.daemon.socket.to_str().expect("utf8"),
            "trading_api_key",
        ])
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("line").expect("read"), "ready");
    // GSM fires the schedule: it advances, and publishes SECRET_ROTATE.
    host.fake.fire_rotation(support::notify::API_KEY);
    emulator
        .publish(
            "gsm-rotate-c",
            &[secretd_gsm_fake::pubsub_emulator::gsm_event(
                "SECRET_ROTATE",
                &support::notify::secret_id(),
                None,
            )],
        )
        .expect("publish");
    assert_eq!(
        lines.next().expect("line").expect("read"),
        "rotation_requested trading_api_key"
    );
    assert!(child.wait().expect("wait").success());
}
