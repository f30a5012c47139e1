//! What `/proc/PID` says of a process in a few small reads: its executable's path, its cgroup
//! and the systemd unit that cgroup names; and whether it is still the same process (a pidfd,
//! or the start time where the kernel has no pidfds).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::Attested;

/// A pidfd of `pid` (`pidfd_open`, Linux 5.3+).
pub(super) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel installed this fd for us.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the pidfd's process is still alive (signal 0 delivers nothing). Only `ESRCH` means
/// gone: a daemon without `CAP_KILL` gets `EPERM` for another uid's live process.
pub(super) fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks; the fd is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A process's start time (field 22 of /proc/PID/stat), to notice a reused pid.
pub(super) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process attested: its pidfd's process is alive, or, without a
/// pidfd (kernels before 5.3), `pid` still has the start time read before (`None`: unknown,
/// so not the same).
pub(super) fn still_same(pidfd: Option<&OwnedFd>, pid: i32, started: Option<u64>) -> bool {
    match pidfd {
        Some(fd) => alive(fd),
        None => started.is_some() && started == start_time(pid),
    }
}

/// Reads the attributes of `pid` that cost a few small reads: the executable's path, the
/// cgroup, the unit.
pub(super) fn read(pid: i32) -> Attested {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| cgroup_path(&text));
    let unit = cgroup.as_deref().and_then(unit_of);
    Attested {
        exe,
        exe_sha256: None,
        cgroup,
        unit,
    }
}

/// The cgroup path from /proc/PID/cgroup: the `name=systemd` v1 hierarchy's when it places
/// the process somewhere (hybrid hosts), else the v2 one (`0::PATH`). Only paths in the system
/// manager's tree count: inside a `user@UID.service` the user's own manager (or the user, by
/// hand) names the cgroups, so any user could make one named like a unit.
pub(super) fn cgroup_path(text: &str) -> Option<String> {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers == "name=systemd" && path != "/" {
            v1 = Some(path.to_owned());
        }
        if controllers.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    v1.or(v2).filter(|p| p != "/").filter(|p| in_system_tree(p))
}

/// Whether a cgroup path lies outside every user manager's delegated subtree.
fn in_system_tree(path: &str) -> bool {
    !path
        .split('/')
        .any(|c| c.starts_with("user@") && c.ends_with(".service"))
}

/// The system manager's unit whose cgroup holds `cgroup`: the first component below PID 1's
/// slices. A unit with `Delegate=yes` may make cgroups below its own; they are its subtree and
/// name it, never a unit of their own.
pub(super) fn unit_of(cgroup: &str) -> Option<String> {
    let first = cgroup
        .split('/')
        .filter(|c| !c.is_empty())
        .find(|c| !c.ends_with(".slice"))?;
    (first.ends_with(".service") || first.ends_with(".scope")).then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_process_is_told_apart_from_a_gone_one_with_or_without_a_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let pidfd = pidfd_open(pid).expect("pidfd");
        let started = start_time(pid);
        // Field 22, in ticks since boot: PID 1 started before this child.
        assert!(started.is_some() && start_time(1) < started, "{started:?}");
        assert!(still_same(Some(&pidfd), pid, started));
        assert!(still_same(None, pid, started));
        // Another start time is another process that got the pid.
        assert!(!still_same(None, pid, started.map(|t| t + 1)));
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!still_same(Some(&pidfd), pid, started));
        assert!(!still_same(None, pid, started));
        // A start time never read proves nothing, even of a pid that is gone now.
        assert!(!still_same(None, pid, None));
    }

    #[test]
    fn cgroups_and_units_on_hybrid_and_unified_hosts() {
        let hybrid = "9:name=systemd:/system.slice/mm-bot.service\n4:memory:/x\n0::/\n";
        assert_eq!(
            cgroup_path(hybrid).as_deref(),
            Some("/system.slice/mm-bot.service")
        );
        let unit = |text: &str| cgroup_path(text).and_then(|c| unit_of(&c));
        assert_eq!(
            unit("0::/system.slice/mm-bot.service\n").as_deref(),
            Some("mm-bot.service")
        );
        assert_eq!(
            unit("0::/trading.slice/mm.slice/mm-bot.service\n").as_deref(),
            Some("mm-bot.service")
        );
        assert_eq!(
            unit("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(cgroup_path("9:name=systemd:/\n0::/\n"), None);
        assert_eq!(unit_of("/system.slice"), None);
    }

    #[test]
    fn a_users_own_manager_names_no_unit_and_no_cgroup() {
        // Anyone can make these under their own delegated manager.
        for path in [
            "/user.slice/user-1000.slice/user@1000.service/app.slice/mm-bot.service",
            "/user.slice/user-1000.slice/user@1000.service/mm-bot.service",
            "/system.slice/user@1000.service/x",
        ] {
            assert_eq!(cgroup_path(&format!("0::{path}\n")), None, "{path}");
        }
        // A delegated unit's subtree names the unit, never a unit of its own.
        assert_eq!(
            unit_of("/system.slice/runner.service/payload/mm-bot.service").as_deref(),
            Some("runner.service")
        );
        assert_eq!(unit_of("/mm-bot.service.d/x"), None);
    }
}
