//! `secretd run` end to end against the real daemon: values in the environment, in files and
//! in templates; nothing started when a secret is denied, unknown or unreachable; the
//! command's exit status; signals forwarded; restart, signal and exit on a rotation; `--mask`;
//! stale run directories; reaping as PID 1; and no value in argv or logs.

mod support;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use secretd_client::Client;
use support::{TestEnv, can_run, is_root, secretd_bin, wait_until};

/// The values the catalog starts with; none may leak.
const API_KEY_1: &str = "key-1-a9f3c2e7";
const API_KEY_2: &str = "key-2-b8e4d1f6";
const PASSWORD: &str = "pw-7d2c9e1a40";
/// How long a test waits for a state a run reaches in well under a second.
const SETTLE: Duration = Duration::from_secs(15);

/// A daemon serving `api_key` and `password` to this uid, and only `public_feed` to 65534.
struct Fixture {
    env: TestEnv,
    daemon: support::Daemon,
    /// A private runtime directory (mode 0700) for the runs' files.
    xdg: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let env = TestEnv::new();
        let conf = env
            .conf()
            .shared_with_nobody()
            .file_secret("api_key", API_KEY_1.as_bytes())
            .file_secret("password", PASSWORD.as_bytes())
            .file_secret("public_feed", b"feed-value")
            .readable_by_me()
            .policy(&[65534], &["public_feed"], &[]);
        let daemon = env.start(&conf.build());
        let xdg = env.path("xdg");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&xdg)
            .expect("xdg dir");
        Fixture { env, daemon, xdg }
    }

    /// `secretd --socket S run ARGS` with this fixture's runtime directory.
    fn run(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(secretd_bin());
        cmd.arg("--socket")
            .arg(&self.daemon.socket)
            .arg("run")
            .args(args)
            .env_remove("SECRETD_SOCKET")
            .env("XDG_RUNTIME_DIR", &self.xdg)
            .current_dir(self.env.dir.path());
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.run(args).output().expect("run secretd run")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.run(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn secretd run")
    }

    /// Changes `api_key` and has the daemon serve it now.
    fn rotate_api_key(&self) {
        self.env.write_value("api_key", API_KEY_2.as_bytes());
        let admin = Client::connect(&self.daemon.socket).expect("connect");
        let outcomes = admin.refresh(Some("api_key")).expect("refresh");
        assert!(outcomes[0].error.is_none(), "{outcomes:?}");
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.env.path(name)).unwrap_or_default()
    }

    fn runs_folder(&self) -> PathBuf {
        self.xdg.join("secretd-run")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_no_value(what: &str, text: &str) {
    for value in [API_KEY_1, API_KEY_2, PASSWORD] {
        assert!(!text.contains(value), "{what} shows a value: {text}");
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill");
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    wait_until("secretd run to exit", SETTLE, || {
        child.try_wait().expect("wait")
    })
}

/// Waits until the file `name` in the env holds `needle`.
fn wait_for_file(f: &Fixture, name: &str, needle: &str) -> String {
    let what = || format!("{name} to contain {needle:?}; it holds {:?}", f.file(name));
    wait_until(what, SETTLE, || {
        let now = f.file(name);
        now.contains(needle).then_some(now)
    })
}

#[test]
fn values_reach_the_environment_files_and_templates() {
    let f = Fixture::new();
    let template = f.env.path("session.tmpl");
    std::fs::write(
        &template,
        "[session]\nkey = {{ secret(\"api_key\") }}\npassword = \"{{ secret('password') }}\"\n",
    )
    .expect("template");
    let tmpl_arg = format!("{}:conf/session.cfg", template.display());
    let out = f.output(&[
        "--env",
        "API_KEY=api_key",
        "--file",
        "password=creds/password",
        "--template",
        &tmpl_arg,
        "--",
        "sh",
        "-c",
        r#"d=$SECRETD_RUN_DIR; printf '%s\n' "$API_KEY"; cat "$d/creds/password"; echo;
           cat "$d/conf/session.cfg"; stat -c '%a' "$d/creds/password" "$d/conf/session.cfg";
           stat -c '%a' "$d"; echo "$d""#,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], API_KEY_1);
    assert_eq!(lines[1], PASSWORD);
    // Auto-escaping is off: the quotes are the template's, the value goes in byte for byte.
    assert_eq!(
        lines[2..5],
        [
            "[session]",
            &format!("key = {API_KEY_1}"),
            &format!("password = \"{PASSWORD}\"")
        ]
    );
    assert_eq!(lines[5..7], ["400", "400"], "outputs are mode 0400");
    assert_eq!(lines[7], "700", "the run directory is private");
    let dir = Path::new(lines[8]);
    assert!(dir.starts_with(f.runs_folder()), "{}", dir.display());
    assert!(!dir.exists(), "the run directory is removed at exit");
    assert_no_value("secretd run's stderr", &text(&out.stderr));
}

#[test]
fn the_commands_exit_status_is_the_runs() {
    let f = Fixture::new();
    let code = |script: &str| {
        let out = f.output(&["--env", "K=api_key", "--", "sh", "-c", script]);
        out.status.code().expect("exited")
    };
    assert_eq!(code("exit 0"), 0);
    assert_eq!(code("exit 7"), 7);
    assert_eq!(code("kill -TERM $$"), 128 + libc::SIGTERM);
    assert_eq!(code("kill -KILL $$"), 128 + libc::SIGKILL);
    let missing = f.output(&["--env", "K=api_key", "--", "/nonexistent/program"]);
    assert_eq!(
        missing.status.code(),
        Some(127),
        "{}",
        text(&missing.stderr)
    );
    let not_exec = f.output(&["--env", "K=api_key", "--", "/etc/hostname"]);
    assert_eq!(
        not_exec.status.code(),
        Some(126),
        "{}",
        text(&not_exec.stderr)
    );
}

#[test]
fn a_denied_unknown_or_unreachable_secret_starts_nothing() {
    let f = Fixture::new();
    let marker = f.env.path("started");
    let touch = format!("touch {}", marker.display());
    let refused = |out: Output, reason: &str| {
        assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
        assert!(stderr.contains(reason), "{reason:?} not in: {stderr}");
        assert!(!marker.exists(), "the command started");
    };
    let cmd = ["--", "sh", "-c", touch.as_str()];
    fn with<'a>(args: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
        [args, cmd].concat()
    }
    refused(
        f.output(&with(&["--env", "K=api_key", "--env", "X=no_such"], &cmd)),
        "secret no_such",
    );
    refused(
        f.output(&with(&["--file", "no_such=x"], &cmd)),
        "secret no_such",
    );
    // A template naming an unknown secret or an undefined variable fails the start too.
    let bad = f.env.path("bad.tmpl");
    std::fs::write(&bad, "{{ secret(\"no_such\") }}").expect("template");
    let arg = format!("{}:out", bad.display());
    refused(
        f.output(&with(&["--template", &arg], &cmd)),
        "secret no_such",
    );
    std::fs::write(&bad, "{{ api_key }}").expect("template");
    refused(f.output(&with(&["--template", &arg], &cmd)), "undefined");
    // Unreachable: no daemon at the socket.
    let mut gone = Command::new(secretd_bin());
    gone.args([
        "--socket",
        "/nonexistent/secretd.sock",
        "run",
        "--env",
        "K=api_key",
    ])
    .args(cmd)
    .env("XDG_RUNTIME_DIR", &f.xdg);
    refused(gone.output().expect("run"), "/nonexistent/secretd.sock");
    // Usage errors are secretd run's too: 125, not clap's 2.
    let usage = f.output(&with(&["--env", "NOT VALID=api_key"], &cmd));
    assert_eq!(usage.status.code(), Some(125), "{}", text(&usage.stderr));
    let usage = f.output(&with(&["--bogus-flag"], &cmd));
    assert_eq!(usage.status.code(), Some(125), "{}", text(&usage.stderr));
    assert!(!marker.exists());
}

#[test]
fn a_secret_the_policy_denies_starts_nothing_for_another_uid() {
    if !can_run(
        is_root(),
        "a_secret_the_policy_denies_starts_nothing_for_another_uid",
        "root (setpriv)",
    ) {
        return;
    }
    let f = Fixture::new();
    let bin = f.env.runnable_copy(&secretd_bin());
    let nobody = |secret: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--socket")
            .arg(&f.daemon.socket)
            .args(["run", "--env", &format!("V={secret}"), "--", "sh", "-c"])
            .arg("echo \"$V\"; echo started")
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", f.env.dir.path())
            .output()
            .expect("setpriv")
    };
    let denied = nobody("api_key");
    assert_eq!(denied.status.code(), Some(125), "{}", text(&denied.stderr));
    assert!(
        text(&denied.stderr).contains("secret api_key"),
        "{}",
        text(&denied.stderr)
    );
    assert_eq!(text(&denied.stdout), "", "a denied run started its command");
    let allowed = nobody("public_feed");
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert_eq!(text(&allowed.stdout), "feed-value\nstarted\n");
}

#[test]
fn a_rotation_restarts_the_command_with_the_new_value() {
    let f = Fixture::new();
    let log = f.env.path("starts");
    let script = format!("echo \"$API_KEY\" >> {}; exec sleep 1000", log.display());
    let mut run = f.spawn(&[
        "--env",
        "API_KEY=api_key",
        "--stagger",
        "0s",
        "--grace",
        "5s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_for_file(&f, "starts", API_KEY_1);
    // Neither the run's argv nor anything it logs holds a value.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.id())).expect("cmdline");
    assert_no_value("secretd run's argv", &text(&cmdline));
    f.rotate_api_key();
    let starts = wait_for_file(&f, "starts", API_KEY_2);
    assert_eq!(starts.lines().collect::<Vec<_>>(), [API_KEY_1, API_KEY_2]);
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run);
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "the command's own status"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().expect("stderr"), &mut stderr).expect("read");
    assert!(stderr.contains("api_key changed"), "{stderr}");
    assert_no_value("secretd run's stderr", &stderr);
    assert_no_value("the daemon's log", &f.daemon.log());
}

#[test]
fn a_rotation_rewrites_files_and_signals_the_command() {
    let f = Fixture::new();
    let log = f.env.path("seen");
    let script = format!(
        "trap 'cat \"$SECRETD_RUN_DIR/key\" >> {0}; echo >> {0}' HUP; echo start >> {0}; \
         while :; do sleep 0.05; done",
        log.display()
    );
    let mut run = f.spawn(&[
        "--file",
        "api_key=key",
        "--on-change",
        "signal:HUP",
        "--stagger",
        "0s",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_for_file(&f, "seen", "start");
    f.rotate_api_key();
    let seen = wait_for_file(&f, "seen", API_KEY_2);
    assert_eq!(
        seen.matches("start").count(),
        1,
        "signalled, not restarted: {seen}"
    );
    signal(&run, libc::SIGTERM);
    assert_eq!(wait_exit(&mut run).code(), Some(128 + libc::SIGTERM));
}

#[test]
fn on_change_exit_stops_the_command_and_exits_75() {
    let f = Fixture::new();
    let mut run = f.spawn(&[
        "--env",
        "K=api_key",
        "--on-change",
        "exit",
        "--stagger",
        "0s",
        "--",
        "sleep",
        "1000",
    ]);
    // The run subscribes after the command starts; a change before that is caught by the
    // check that follows the subscription, so no wait is needed here beyond the start.
    wait_until("the command to start", SETTLE, || {
        std::fs::read_dir(format!("/proc/{}/task", run.id())).ok()?;
        children_of(run.id()).into_iter().next()
    });
    f.rotate_api_key();
    assert_eq!(wait_exit(&mut run).code(), Some(75));
}

#[test]
fn signals_reach_the_command() {
    let f = Fixture::new();
    let log = f.env.path("signals");
    let script = format!(
        "trap 'echo hup >> {0}' HUP; trap 'echo int >> {0}' INT; trap 'echo usr1 >> {0}' USR1; \
         trap 'echo term >> {0}; exit 3' TERM; \
         echo ready >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut run = f.spawn(&["--env", "K=api_key", "--", "sh", "-c", &script]);
    wait_for_file(&f, "signals", "ready");
    signal(&run, libc::SIGHUP);
    wait_for_file(&f, "signals", "hup");
    signal(&run, libc::SIGINT);
    wait_for_file(&f, "signals", "int");
    signal(&run, libc::SIGUSR1);
    wait_for_file(&f, "signals", "usr1");
    signal(&run, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut run).code(),
        Some(3),
        "the command's status after TERM"
    );
    assert_eq!(
        f.file("signals").lines().collect::<Vec<_>>(),
        ["ready", "hup", "int", "usr1", "term"]
    );
}

#[test]
fn mask_replaces_values_even_when_written_in_pieces() {
    let f = Fixture::new();
    let (head, tail) = API_KEY_1.split_at(5);
    let script = format!(
        "echo \"key=$API_KEY\"; printf '%s' '{head}'; sleep 0.3; printf '%s done\\n' '{tail}'; \
         echo \"pw=$PW\" >&2"
    );
    let out = f.output(&[
        "--mask",
        "--env",
        "API_KEY=api_key",
        "--env",
        "PW=password",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "key=<redacted:api_key>\n<redacted:api_key> done\n"
    );
    assert!(
        text(&out.stderr).contains("pw=<redacted:password>"),
        "{}",
        text(&out.stderr)
    );
    assert_no_value("masked output", &(text(&out.stdout) + &text(&out.stderr)));
}

#[test]
fn a_masked_command_whose_orphan_keeps_the_pipe_open_still_ends_the_run() {
    let f = Fixture::new();
    // The orphan holds the command's stdout for a minute; the run ends with the command.
    let mut run = f.spawn(&[
        "--mask",
        "--env",
        "K=api_key",
        "--",
        "sh",
        "-c",
        "(sleep 60 &); echo done; exit 4",
    ]);
    assert_eq!(wait_exit(&mut run).code(), Some(4));
}

#[test]
fn a_killed_runs_directory_is_removed_by_the_next_run() {
    let f = Fixture::new();
    let mut run = f.spawn(&["--file", "api_key=key", "--", "sleep", "1000"]);
    let prefix = format!("{}-", run.id());
    let dir = wait_until("the run directory", SETTLE, || {
        let entries = std::fs::read_dir(f.runs_folder()).ok()?;
        entries
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .filter(|d| d.join("key").exists())
    });

    let mode = std::fs::metadata(f.runs_folder())
        .expect("folder")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    signal(&run, libc::SIGKILL);
    wait_exit(&mut run);
    for pid in children_of(run.id()) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(dir.exists(), "SIGKILL leaves the directory behind");
    let out = f.output(&["--file", "api_key=key", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dir.exists(), "the next run removes a dead run's directory");
}

#[test]
fn as_pid_1_it_reaps_orphans() {
    if !can_run(
        is_root(),
        "as_pid_1_it_reaps_orphans",
        "root (a PID namespace)",
    ) {
        return;
    }
    let f = Fixture::new();
    // The orphan exits while the command still runs; unreaped, ps would list it as Z.
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(secretd_bin())
        .arg("--socket")
        .arg(&f.daemon.socket)
        .args(["run", "--env", "K=api_key", "--", "sh", "-c"])
        .arg("(sleep 0.2 &); sleep 1; ps -eo pid,stat,comm --no-headers")
        .env("XDG_RUNTIME_DIR", &f.xdg);
    let out = cmd.output().expect("unshare");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps = text(&out.stdout);
    assert!(
        ps.lines().any(|l| l.trim().starts_with("1 ")),
        "secretd run is PID 1: {ps}"
    );
    assert!(
        !ps.lines().any(|l| l
            .split_whitespace()
            .nth(1)
            .is_some_and(|s| s.starts_with('Z'))),
        "a zombie: {ps}"
    );
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<libc::pid_t> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
