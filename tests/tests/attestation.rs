//! Workload attestation: policies bound to the program (path, content hash) and to the systemd
//! unit or cgroup, enforced by the real daemon on copies of one client binary run by one uid.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use secretd_client::Client;
use std::time::Duration;

use support::{TestEnv, can_run, cgroup_root, euid, is_root, probe_bin, wait_until};

const KEY: &[u8] = b"Omni-Key-Attested-0123456789!";

/// A copy of the probe client at `rel` inside the env (mode 0755).
fn probe_copy(env: &TestEnv, rel: &str) -> PathBuf {
    let path = env.path(rel);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
    std::fs::copy(probe_bin(), &path).expect("copy probe");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Runs `probe SOCKET args...` and returns its first output line.
fn probe(bin: &Path, socket: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg(socket)
        .args(args)
        .output()
        .expect("run probe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_owned()
}

/// A config serving `trading_api_key` to this uid under `selectors` (TOML `key = [values]`).
fn config_with(env: &TestEnv, selector: &str, values: &[&str]) -> String {
    let conf = env.conf().file_secret("trading_api_key", KEY).build();
    let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!(
        "{conf}\n[[policy]]\nuids = [{}]\nallow = [\"trading_*\"]\n{selector} = [{}]\n",
        euid(),
        list.join(", ")
    )
}

#[test]
fn a_policy_bound_to_a_program_path_lets_it_read_and_refuses_another_copy() {
    let env = TestEnv::new();
    let mm = probe_copy(&env, "bots/mm/secretd-probe");
    let report = probe_copy(&env, "bots/report/secretd-probe");
    let daemon = env.start(&config_with(&env, "exe", &[mm.to_str().expect("utf8")]));
    assert!(probe(&mm, &daemon.socket, &["get", "trading_api_key"]).starts_with("ok get"));
    assert_eq!(
        probe(&report, &daemon.socket, &["get", "trading_api_key"]),
        "err get trading_api_key permission_denied"
    );
    // Every record names the attested program.
    let log = daemon.wait_for_log("access.denied");
    assert!(log.contains(&format!("exe={}", report.display())), "{log}");
    let admin = Client::connect(&daemon.socket).expect("admin");
    let program = format!("exe={}", mm.display());
    wait_until(
        "the read record naming the program",
        Duration::from_secs(10),
        || {
            let tail = admin.audit_tail(50, Some("trading_api_key")).expect("tail");
            tail.iter()
                .any(|r| r.action == "read" && r.result == "ok" && r.detail.contains(&program))
                .then_some(())
        },
    );
}

#[test]
fn exe_sha256_refuses_a_binary_replaced_on_disk_after_it_started() {
    let env = TestEnv::new();
    let bot = probe_copy(&env, "bots/mm/secretd-probe");
    let hash = sha256_of(&bot);
    let daemon = env.start(&config_with(&env, "exe_sha256", &[&hash]));
    assert!(probe(&bot, &daemon.socket, &["get", "trading_api_key"]).starts_with("ok get"));
    // Start the bot, then replace its binary on disk before it connects: the running process
    // no longer matches what is at its path, so it matches no selector that names its program.
    let child = Command::new(&bot)
        .arg(&daemon.socket)
        .args(["delay", "1500", "get", "trading_api_key"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bot");
    // Once the bot runs its binary (it connects 1.5 s later), the file is replaced under it.
    let exe = format!("/proc/{}/exe", child.id());
    let running = bot.canonicalize().expect("the bot's path");
    wait_until("the bot to run its binary", Duration::from_secs(10), || {
        (std::fs::read_link(&exe).ok()? == running).then_some(())
    });
    let replacement = env.path("bots/mm/.new");
    std::fs::copy(support::secretd_bin(), &replacement).expect("copy");
    std::fs::rename(&replacement, &bot).expect("replace the binary");
    let out = child.wait_with_output().expect("bot");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "err get trading_api_key permission_denied"
    );
}

/// A Python bot speaking the wire protocol by hand (docs/protocol.md): hello, then `Get`;
/// prints `secret` or `error CODE`.
const PYTHON_BOT: &str = r#"
import socket, struct, sys
def frame(body): return struct.pack("<I", len(body)) + body
def text(t): return struct.pack("<Q", len(t)) + t.encode()
def recv(s):
    n = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))[0]
    return s.recv(n, socket.MSG_WAITALL)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(frame(struct.pack("<I", 0) + b"SCRD" + struct.pack("<H", 3) + text("python-bot")))
recv(s)
s.sendall(frame(struct.pack("<I", 1) + text("trading_api_key")))
body = recv(s)
tag = struct.unpack("<I", body[:4])[0]
print("secret" if tag == 1 else "error %d" % struct.unpack("<H", body[4:6])[0])
"#;

#[test]
fn a_unit_and_cgroup_binding_selects_an_interpreted_bot_whatever_its_interpreter() {
    let root = cgroup_root();
    if !can_run(
        is_root() && root.is_some(),
        "a_unit_and_cgroup_binding",
        "root and a writable cgroup hierarchy",
    ) {
        return;
    }
    let root = root.expect("checked");
    let unit = format!("mm-bot-{}.service", std::process::id());
    let dir = root.join("system.slice").join(&unit);
    std::fs::create_dir_all(&dir).expect("make the unit's cgroup");
    let env = TestEnv::new();
    let base = config_with(&env, "systemd_unit", &["mm-bot-*.service"]);
    let config = format!("{base}cgroup = [\"/system.slice/mm-bot-*.service\"]\n");
    let daemon = env.start(&config);
    // An interpreted bot: python3 speaking the protocol by hand (its executable is the
    // interpreter, which every Python program shares), inside the unit's cgroup as systemd
    // would place it, and the same script outside it.
    let procs = dir.join("cgroup.procs");
    let script = env.path("bot.py");
    std::fs::write(&script, PYTHON_BOT).expect("script");
    let inside = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec python3 \"$1\" \"$2\"")
        .arg(&procs)
        .arg(&script)
        .arg(&daemon.socket)
        .output()
        .expect("run inside the unit");
    let outside = Command::new("python3")
        .arg(&script)
        .arg(&daemon.socket)
        .output()
        .expect("run outside");
    let _ = std::fs::remove_dir(&dir);
    let said = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert_eq!(said(&inside).trim(), "secret", "{}", said(&inside));
    assert_eq!(said(&outside).trim(), "error 2", "{}", said(&outside));
    let log = daemon.log();
    assert!(log.contains(&format!("unit={unit}")), "{log}");
}

#[test]
fn check_hints_at_a_policy_that_trusts_a_whole_uid_running_several_programs() {
    let env = TestEnv::new();
    let by_uid = env
        .conf()
        .file_secret("trading_api_key", KEY)
        .readable_by_me()
        .build();
    let daemon = env.start(&by_uid);
    std::fs::write(env.path("by-uid.toml"), &by_uid).expect("config");
    let socket = daemon.socket.to_str().expect("utf8");
    // This uid runs the test, the daemon, cargo...: several programs.
    let out = support::cli(
        &[
            "check",
            "--config",
            env.path("by-uid.toml").to_str().expect("utf8"),
            "--socket",
            socket,
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "hint: policy #1 grants trading_* secrets to uid {} alone",
            euid()
        )),
        "{stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a hint is not a failure: {stdout}"
    );

    let bound = config_with(&env, "exe", &["/opt/bots/mm"]);
    std::fs::write(env.path("bound.toml"), bound).expect("config");
    let out = support::cli(
        &[
            "check",
            "--config",
            env.path("bound.toml").to_str().expect("utf8"),
            "--socket",
            socket,
        ],
        &[],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hint:"));
}

#[test]
fn status_connections_shows_admins_what_was_attested_of_each_peer() {
    let env = TestEnv::new();
    let daemon = env.start(&config_with(&env, "exe", &["/opt/bots/mm"]));
    let held = Client::connect(&daemon.socket).expect("a connection to show");
    let socket = daemon.socket.to_str().expect("utf8");
    let out = support::cli_ok(
        &["status", "--connections", "--json", "--socket", socket],
        &[],
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let me = std::env::current_exe().expect("exe");
    let mine = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["pid"] == serde_json::json!(std::process::id()))
        .unwrap_or_else(|| panic!("this process is not listed: {rows}"));
    assert_eq!(mine["exe"], me.display().to_string());
    assert_eq!(mine["uid"], euid());
    assert_eq!(mine["protocolVersion"], secretd_proto::PROTOCOL_VERSION);
    drop(held);
}

#[test]
fn a_cgroup_a_user_made_under_their_own_manager_names_no_unit() {
    let root = cgroup_root();
    if !can_run(
        is_root() && root.is_some(),
        "a_cgroup_a_user_made",
        "root and a writable cgroup hierarchy",
    ) {
        return;
    }
    let root = root.expect("checked");
    // What any user can make under the manager systemd delegates to them.
    let unit = format!("mm-bot-{}.service", std::process::id());
    let manager = root.join("user.slice/user-4242.slice/user@4242.service");
    let dir = manager.join("app.slice").join(&unit);
    std::fs::create_dir_all(&dir).expect("make the user's cgroup");
    let env = TestEnv::new();
    let daemon = env.start(&config_with(&env, "systemd_unit", &["mm-bot-*.service"]));
    let script = env.path("bot.py");
    std::fs::write(&script, PYTHON_BOT).expect("script");
    let inside = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec python3 \"$1\" \"$2\"")
        .arg(dir.join("cgroup.procs"))
        .arg(&script)
        .arg(&daemon.socket)
        .output()
        .expect("run inside the user's cgroup");
    for d in [
        dir.clone(),
        manager.join("app.slice"),
        manager.clone(),
        root.join("user.slice/user-4242.slice"),
    ] {
        let _ = std::fs::remove_dir(d);
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&inside.stdout),
        String::from_utf8_lossy(&inside.stderr)
    );
    assert_eq!(said.trim(), "error 2", "{said}");
}

#[test]
fn exe_sha256_refuses_a_binary_patched_while_stopped_with_its_mtime_put_back() {
    let env = TestEnv::new();
    let bot = probe_copy(&env, "bots/mm/secretd-probe");
    let hash = sha256_of(&bot);
    let daemon = env.start(&config_with(&env, "exe_sha256", &[&hash]));
    assert!(probe(&bot, &daemon.socket, &["get", "trading_api_key"]).starts_with("ok get"));
    // Patch one byte of its usage text (the program still runs), then put the mtime back as
    // `touch -r` would: size, inode and mtime are what they were; the content is not.
    let mtime = std::fs::metadata(&bot)
        .expect("stat")
        .modified()
        .expect("mtime");
    let mut bytes = std::fs::read(&bot).expect("read");
    let at = bytes
        .windows(5)
        .position(|w| w == b"usage")
        .expect("the probe's usage text");
    bytes[at] = b'U';
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&bot)
        .expect("open");
    std::io::Write::write_all(&mut file, &bytes).expect("patch in place");
    file.set_modified(mtime).expect("touch -r");
    drop(file);
    assert_ne!(sha256_of(&bot), hash);
    assert_eq!(
        probe(&bot, &daemon.socket, &["get", "trading_api_key"]),
        "err get trading_api_key permission_denied"
    );
}
