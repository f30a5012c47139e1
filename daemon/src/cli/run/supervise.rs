//! The run's loop: one channel of events (signals, changes, the watch's end) and two timers
//! (the staggered action on a change, the SIGKILL after a grace period).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::low_level::siginfo::Cause;

use super::child::{self, Child};
use super::plan::{OnChange, Plan};
use super::rundir::RunDir;
use super::template::Template;
use super::values::{Fetcher, Values};
use super::{EXIT_RUN_FAILED, EXIT_SECRET_CHANGED, RunError, say};

/// The signals forwarded to the child (handled, so none of them kills the run and leaves the
/// child and its files behind).
pub(super) const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];
/// The forwarded signals that ask to stop: one arriving during a restart ends the run with
/// the child's status instead of starting it again, and one arriving before the child started
/// starts nothing.
pub(super) const TERMINATING: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT];
/// How long the run waits, after the child exited, for the rest of its masked output (a
/// grandchild may hold the pipe open for ever).
const MASK_DRAIN: Duration = Duration::from_secs(2);

/// What wakes the loop.
#[derive(Debug)]
pub(super) enum Event {
    /// A signal to the run. `from_terminal`: the kernel sent it to the whole foreground
    /// process group (Ctrl-C), so the child has it already.
    Signal { signal: i32, from_terminal: bool },
    /// A watched secret changed (its name), or the watch may have missed changes (`None`).
    Changed(Option<String>),
    /// The daemon refused to resubscribe the watch (the policy changed); the reason.
    WatchEnded(String),
}

/// Starts the thread that turns signals into events. Call before starting a child, so no
/// SIGCHLD is missed.
pub(super) fn listen_for_signals(events: Sender<Event>) -> Result<(), RunError> {
    let mut wanted = FORWARDED.to_vec();
    wanted.push(libc::SIGCHLD);
    let mut signals = SignalsInfo::<WithOrigin>::new(&wanted).map_err(RunError::Setup)?;
    std::thread::Builder::new()
        .name("secretd-run-signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                let event = Event::Signal {
                    signal: origin.signal,
                    from_terminal: matches!(origin.cause, Cause::Kernel),
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        })
        .map_err(RunError::Setup)?;
    Ok(())
}

/// What happens once a child that was asked to stop has exited.
#[derive(Debug, Clone, Copy)]
enum AfterStop {
    /// Start it again with the new values.
    Restart,
    /// Exit with this code.
    Exit(u8),
    /// Exit with the child's own status (the run itself was told to stop meanwhile).
    ChildStatus,
}

/// A child asked to stop.
#[derive(Debug)]
struct Stopping {
    /// When it gets SIGKILL (`None` once sent).
    kill_at: Option<Instant>,
    /// What then.
    then: AfterStop,
}

/// A running `secretd run`.
#[derive(Debug)]
pub(super) struct Supervisor {
    /// The command line.
    pub(super) plan: Plan,
    /// The daemon.
    pub(super) fetcher: Arc<Fetcher>,
    /// The templates, read at start.
    pub(super) templates: Vec<Template>,
    /// The run's directory, when it writes files.
    pub(super) run_dir: Option<RunDir>,
    /// The values the child was given (and, for files, has now).
    pub(super) values: Values,
    /// The child; `None` only between a restart's exit and its new start.
    pub(super) child: Option<Child>,
    /// When to act on a change that arrived.
    pub(super) change_due: Option<Instant>,
    /// A stop in progress.
    stopping: Option<Stopping>,
    /// A change came due during a stop: check again once the child runs again.
    recheck_after_stop: bool,
}

impl Supervisor {
    pub(super) fn new(
        plan: Plan,
        fetcher: Arc<Fetcher>,
        templates: Vec<Template>,
        run_dir: Option<RunDir>,
        values: Values,
    ) -> Supervisor {
        Supervisor {
            plan,
            fetcher,
            templates,
            run_dir,
            values,
            child: None,
            change_due: None,
            stopping: None,
            recheck_after_stop: false,
        }
    }

    /// Writes every `--file` and `--template` output from `self.values`.
    pub(super) fn write_outputs(&mut self) -> Result<(), RunError> {
        let Some(dir) = &self.run_dir else {
            return Ok(());
        };
        for file in &self.plan.files {
            let value = self.values.get(&file.secret).map(|v| v.as_slice());
            dir.write(&file.dest, value.unwrap_or_default())?;
        }
        for template in &self.templates {
            let text = template.render(&self.fetcher, &mut self.values)?;
            dir.write(&template.dest, text.as_bytes())?;
        }
        Ok(())
    }

    /// Starts the child with the current values; the exit code if it cannot start.
    pub(super) fn start_child(&mut self) -> Result<(), u8> {
        let dir = self.run_dir.as_ref().map(|d| d.path());
        let seen = self.fetcher.seen();
        match child::start(&self.plan, &self.values, dir, seen.as_ref()) {
            Ok(child) => {
                self.child = Some(child);
                Ok(())
            }
            Err(failed) => {
                say(&failed.error.to_string());
                Err(failed.code)
            }
        }
    }

    /// Runs until the child is gone for good; the run's exit code.
    pub(super) fn run(&mut self, events: &Receiver<Event>) -> u8 {
        loop {
            let now = Instant::now();
            let next = [
                self.change_due,
                self.stopping.as_ref().and_then(|s| s.kill_at),
            ]
            .into_iter()
            .flatten()
            .min();
            let event = match next {
                Some(at) => events.recv_timeout(at.saturating_duration_since(now)),
                None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let outcome = match event {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {
                    self.on_timers();
                    None
                }
                Err(RecvTimeoutError::Disconnected) => Some(EXIT_RUN_FAILED),
            };
            if let Some(code) = outcome {
                return code;
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<u8> {
        match event {
            Event::Signal {
                signal: libc::SIGCHLD,
                ..
            } => self.on_child_exit(),
            Event::Signal {
                signal,
                from_terminal,
            } => {
                if let Some(stop) = &mut self.stopping
                    && TERMINATING.contains(&signal)
                {
                    stop.then = AfterStop::ChildStatus;
                }
                match &self.child {
                    // The terminal sent it to the child too; twice could mean "force quit".
                    Some(child) if !from_terminal => child.signal(signal),
                    Some(_) => {}
                    None => return Some(128u8.saturating_add(signal as u8)),
                }
                None
            }
            Event::Changed(name) => {
                if self.change_due.is_none() {
                    let delay = stagger_delay(self.plan.stagger);
                    if let Some(name) = name {
                        say(&format!(
                            "{name} changed; acting ({}) in {:.1} s",
                            action_name(self.plan.on_change),
                            delay.as_secs_f64()
                        ));
                    }
                    self.change_due = Some(Instant::now() + delay);
                }
                None
            }
            Event::WatchEnded(why) => {
                say(&format!(
                    "no longer told of changes ({why}); the command keeps the values it has"
                ));
                None
            }
        }
    }

    /// A SIGCHLD: reaps, and decides what the child's exit means.
    fn on_child_exit(&mut self) -> Option<u8> {
        let pid = self.child.as_ref()?.pid;
        let status = child::reap(pid)?;
        let child = self.child.take()?;
        match self.stopping.take().map(|s| s.then) {
            Some(AfterStop::Restart) => {
                // The old child's output drains beside the new one's.
                drop(child);
                if self.recheck_after_stop {
                    self.recheck_after_stop = false;
                    self.change_due = Some(Instant::now());
                }
                self.start_child().err()
            }
            Some(AfterStop::Exit(code)) => {
                child.finish_output(MASK_DRAIN);
                Some(code)
            }
            Some(AfterStop::ChildStatus) | None => {
                child.finish_output(MASK_DRAIN);
                Some(status)
            }
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if let Some(stop) = &mut self.stopping
            && stop.kill_at.is_some_and(|at| at <= now)
        {
            stop.kill_at = None;
            if let Some(child) = &self.child {
                say("the command outlived its grace period; sending SIGKILL");
                child.signal(libc::SIGKILL);
            }
        }
        if self.change_due.is_some_and(|at| at <= now) {
            self.change_due = None;
            self.act_on_change();
        }
    }

    /// Re-reads every value; if any differs, does what `--on-change` says.
    fn act_on_change(&mut self) {
        if self.stopping.is_some() {
            self.recheck_after_stop = true;
            return;
        }
        let names: Vec<String> = self.values.names().map(str::to_owned).collect();
        let fresh = match self.fetcher.fetch_all(names.iter().map(String::as_str)) {
            Ok(fresh) => fresh,
            Err(e) => {
                say(&format!(
                    "a secret changed but cannot be read again ({e}); the command keeps the \
                     values it has"
                ));
                return;
            }
        };
        if !fresh.differs_from(&self.values) {
            return;
        }
        if let Err(e) = super::check_env_values(&self.plan, &fresh) {
            say(&format!("{e}; the command keeps the values it has"));
            return;
        }
        if self.plan.on_change == OnChange::Exit {
            self.stop(AfterStop::Exit(EXIT_SECRET_CHANGED));
            return;
        }
        let old = std::mem::replace(&mut self.values, fresh);
        if let Err(e) = self.write_outputs() {
            say(&format!("{e}; the command keeps the values it has"));
            self.values = old;
            let _ = self.write_outputs();
            return;
        }
        match (self.plan.on_change, &self.child) {
            (OnChange::Restart, _) => self.stop(AfterStop::Restart),
            (OnChange::Signal(sig), Some(child)) => child.signal(sig),
            _ => {}
        }
    }

    /// Asks the child to stop: SIGTERM now, SIGKILL after the grace period.
    fn stop(&mut self, then: AfterStop) {
        if let Some(child) = &self.child {
            child.signal(libc::SIGTERM);
        }
        self.stopping = Some(Stopping {
            kill_at: Some(Instant::now() + self.plan.grace),
            then,
        });
    }
}

/// A random delay up to `stagger`, so hosts and units that heard of a change together do not
/// act together.
fn stagger_delay(stagger: Duration) -> Duration {
    let max = u64::try_from(stagger.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=max))
}

fn action_name(on_change: OnChange) -> &'static str {
    match on_change {
        OnChange::Restart => "restart",
        OnChange::Signal(_) => "signal",
        OnChange::Exit => "exit",
        OnChange::None => "rewrite files",
    }
}
