//! Starting the child and learning how it ended. The run reaps with `waitpid(-1)`, so as PID 1
//! (in a container) it also reaps the orphans the child leaves.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::values::{Seen, Values};
use super::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, RunError, mask};
use crate::cli::run::plan::Plan;

/// The variable that tells the child where its files are.
pub(super) const RUN_DIR_VAR: &str = "SECRETD_RUN_DIR";

/// A started child.
#[derive(Debug)]
pub(super) struct Child {
    /// Its pid, for signals and for recognising it among reaped processes.
    pub(super) pid: libc::pid_t,
    /// The threads copying its masked output; joined after it exits.
    pumps: Vec<JoinHandle<()>>,
}

/// Why the child did not start.
#[derive(Debug)]
pub(super) struct SpawnFailed {
    /// 126 or 127, as a shell and env(1) use them.
    pub(super) code: u8,
    /// The error, naming the program.
    pub(super) error: RunError,
}

/// Starts the plan's command with `values` in its environment as the plan maps them.
pub(super) fn start(
    plan: &Plan,
    values: &Values,
    run_dir: Option<&Path>,
    seen: Option<&Arc<Seen>>,
) -> Result<Child, SpawnFailed> {
    let program = &plan.command[0];
    let mut cmd = Command::new(program);
    cmd.args(&plan.command[1..]);
    for var in &plan.env {
        // Checked for NUL bytes at fetch time; an absent one cannot happen (all or nothing).
        let value = values
            .get(&var.secret)
            .map(|v| v.as_slice())
            .unwrap_or_default();
        cmd.env(&var.var, OsStr::from_bytes(value));
    }
    if let Some(dir) = run_dir {
        cmd.env(RUN_DIR_VAR, dir);
    }
    if seen.is_some() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|source| SpawnFailed {
        code: match source.kind() {
            io::ErrorKind::NotFound => EXIT_NOT_FOUND,
            _ => EXIT_CANNOT_EXECUTE,
        },
        error: RunError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        },
    })?;
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    let mut pumps = Vec::new();
    if let Some(seen) = seen {
        let streams = [
            child
                .stdout
                .take()
                .map(|s| (Box::new(s) as Box<dyn io::Read + Send>, 1)),
            child
                .stderr
                .take()
                .map(|s| (Box::new(s) as Box<dyn io::Read + Send>, 2)),
        ];
        for (from, to) in streams.into_iter().flatten() {
            match mask::spawn_pump(from, to, seen.clone()) {
                Ok(handle) => pumps.push(handle),
                // Without its pump the pipe fills and the child blocks: stop it rather than
                // let its output through unmasked.
                Err(source) => {
                    // SAFETY: our own child, not yet reaped.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return Err(SpawnFailed {
                        code: EXIT_CANNOT_EXECUTE,
                        error: RunError::Setup(source),
                    });
                }
            }
        }
    }
    // std's handle is dropped without waiting: the run reaps with waitpid(-1).
    drop(child);
    Ok(Child { pid, pumps })
}

impl Child {
    /// Sends `signal`; a child that is already gone is not an error.
    pub(super) fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is ours until we reap it.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Waits, at most `wait`, for the masked output to drain after the child exited; a pipe a
    /// grandchild still holds is left to drain (or not) on its own.
    pub(super) fn finish_output(self, wait: std::time::Duration) {
        let deadline = std::time::Instant::now() + wait;
        while self.pumps.iter().any(|p| !p.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for pump in self.pumps.into_iter().filter(|p| p.is_finished()) {
            let _ = pump.join();
        }
    }
}

/// Reaps every exited child without blocking; returns the exit code of `pid` if it was among
/// them: its status, or 128+N for a signal, as a shell reports it.
pub(super) fn reap(pid: libc::pid_t) -> Option<u8> {
    let mut ours = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return ours;
        }
        if reaped == pid {
            ours = Some(exit_code(status));
        }
    }
}

fn exit_code(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(u8::MAX)
    } else if libc::WIFSIGNALED(status) {
        u8::try_from(128 + libc::WTERMSIG(status)).unwrap_or(u8::MAX)
    } else {
        u8::MAX
    }
}
