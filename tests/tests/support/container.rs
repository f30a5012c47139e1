//! Real systemd in a throw-away container (`scripts/container`): a cached Debian bookworm root
//! booted with systemd-nspawn on a tmpfs overlay, with this build's Debian packages and wheel
//! (made by `scripts/package`) bound in read-only. Each test boots its own and powers it off
//! when dropped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{can_run, is_root};

/// A booted container; powered off and its cgroups removed on drop.
pub(crate) struct Container {
    /// Its name among this machine's test containers (also its hostname's suffix).
    name: String,
    /// The directory holding the `.deb` files bound into it.
    pub debs: PathBuf,
    /// The directory holding the wheel bound into it.
    pub wheels: PathBuf,
}

/// The repository's root (scripts/container and scripts/package live there).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_owned()
}

/// Cargo's target directory: the test binary is `TARGET/PROFILE/deps/NAME`.
pub(crate) fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in TARGET/PROFILE/deps")
        .to_owned()
}

fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `dir` holds a file ending in `ext`.
fn holds(dir: &Path, ext: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(ext))
    })
}

impl Container {
    /// Boots a fresh container for `test`, or says why it cannot (outside CI only: in CI a
    /// missing part fails the test).
    pub(crate) fn boot(test: &str) -> Option<Container> {
        Container::boot_binding(test, &[])
    }

    /// [`Container::boot`], with host files or directories `binds` mounted read-only at the
    /// same paths inside.
    pub(crate) fn boot_binding(test: &str, binds: &[&Path]) -> Option<Container> {
        if !can_run(is_root(), test, "root (systemd-nspawn)")
            || !can_run(
                has_tool("systemd-nspawn"),
                test,
                "systemd-nspawn (apt-get install systemd-container)",
            )
            || !can_run(
                has_tool("mmdebstrap"),
                test,
                "mmdebstrap (apt-get install mmdebstrap)",
            )
        {
            return None;
        }
        let target = target_dir();
        let (debs, wheels) = (target.join("debian"), target.join("wheels"));
        if !can_run(
            holds(&debs, ".deb") && holds(&wheels, ".whl"),
            test,
            &format!(
                "the packages in {} and {} (scripts/package; scripts/test builds them first)",
                debs.display(),
                wheels.display()
            ),
        ) {
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let binds = [debs.as_path(), wheels.as_path()]
            .iter()
            .chain(binds)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new(repo().join("scripts/container"))
            .args(["boot", &name, &binds])
            .output()
            .expect("run scripts/container");
        assert!(
            out.status.success(),
            "{test}: booting a container failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Container { name, debs, wheels })
    }

    /// Runs `script` with `sh -e` inside, feeding it `stdin`; returns what it did.
    pub(crate) fn run_with_input(&self, script: &str, stdin: &[u8]) -> Output {
        let mut child = Command::new(repo().join("scripts/container"))
            .args(["exec", &self.name, "sh", "-ec", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/container exec");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("wait for the script")
    }

    /// Runs `script` with `sh -e` inside.
    pub(crate) fn run(&self, script: &str) -> Output {
        self.run_with_input(script, b"")
    }

    /// Runs `script` inside, which must succeed; returns its stdout, trimmed.
    pub(crate) fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the container, `{script}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until `unit`'s ActiveState is `state`, for at most `timeout`.
    pub(crate) fn wait_for_state(&self, unit: &str, state: &str, timeout: std::time::Duration) {
        let last = std::cell::RefCell::new(String::new());
        super::wait_until(
            || format!("{unit} to be {state} (last: {})", last.borrow()),
            timeout,
            || {
                let now = self.sh(&format!("systemctl show -p ActiveState --value {unit}"));
                let reached = now == state;
                *last.borrow_mut() = now;
                reached.then_some(())
            },
        );
    }

    /// Installs this build's three packages with apt-get, as a user would.
    pub(crate) fn install_packages(&self) {
        self.install_packages_from(&self.debs);
    }

    /// Installs (or upgrades to) the three packages in `dir`, which must be bound in. As an
    /// unattended upgrade does: a config the admin changed is kept without a prompt when the
    /// package's default changed too (`--force-confold`).
    pub(crate) fn install_packages_from(&self, dir: &Path) {
        self.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {}/*.deb",
            dir.display()
        ));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/container"))
            .args(["stop", &self.name])
            .status();
    }
}
