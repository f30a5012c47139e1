//! Fleet propagation: [`FLEET`] daemons on this machine stand for a fleet of hosts, each with a
//! pull subscription of its own on one topic (as GSM's notification setup has it), all reading
//! one secret from one fake GSM. A new version is added to GSM and announced once on the topic,
//! as GSM announces it; the row is the time until the first host, and then every host, serves
//! it. Against it, the same fleet finding the change by polling alone, at a short refresh
//! interval so a run takes seconds; the schedule is proportional to the interval, so the
//! figures scale to the production 5 minutes.
//!
//! Needs Google's Pub/Sub emulator (the tests' `google-cloud-cli-pubsub-emulator`); without it
//! the notification rows are skipped with a note and polling is still measured.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use secretd_client::{ChannelState, Client};
use secretd_gsm_fake::pubsub_emulator::{Emulator, PROJECT, emulator_script, gsm_event};
use secretd_gsm_fake::{FakeGsm, project_number};

use crate::error::BenchError;
use crate::notes::Notes;

/// How many daemons make the fleet.
pub(crate) const FLEET: usize = 20;
/// The secret every host reads.
const NAME: &str = "fleet_api_key";
/// Its resource in GSM.
const RESOURCE: &str = "projects/apex-bench/secrets/fleet-api-key";
/// The polling fleet's refresh interval (short, so a sample takes seconds; needs
/// `allow_short_ttl`).
const POLL_INTERVAL: Duration = Duration::from_secs(4);
/// How long `latest` lags in the notification rows (longer than any of them runs).
const LATEST_LAG: Duration = Duration::from_secs(3600);
/// The refresh interval a production host runs with, which the polling figures scale to.
const PRODUCTION_INTERVAL: Duration = Duration::from_secs(300);
/// How long a fleet may take to start, load the secret and (with notifications) subscribe.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long one change may take to reach every host before the sample counts as failed.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);
/// How often the hosts are asked whether they serve the new version yet.
const SWEEP: Duration = Duration::from_millis(2);

/// How a fleet learns of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// `[gsm.notifications]` with this `notification_jitter`; polling every 5 minutes.
    Notification(Duration),
    /// Polling alone, every [`POLL_INTERVAL`].
    Polling,
}

impl Channel {
    fn label(self) -> String {
        match self {
            Channel::Notification(j) => {
                format!(
                    "one notification, notification_jitter {}ms, `latest` lagging 1 h",
                    j.as_millis()
                )
            }
            Channel::Polling => format!("polling, refresh_interval {}s", POLL_INTERVAL.as_secs()),
        }
    }
}

/// One row of the propagation table.
#[derive(Debug)]
pub(crate) struct PropagationRow {
    /// How the fleet learned of the changes.
    pub channel: Channel,
    /// Per change: until the first host served it.
    pub first: Vec<Duration>,
    /// Per change: until every host served it.
    pub all: Vec<Duration>,
}

/// The daemons of one fleet; stopped when dropped.
struct Fleet {
    /// One process a host.
    children: Vec<Child>,
    /// A client of each host.
    clients: Vec<Client>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: kill with a valid pid and signal number.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// Starts [`FLEET`] daemons in `root`, reading from `fake`; with `notifications`
/// `(emulator, topic, jitter)`, each holds a subscription of its own on `topic`.
fn start_fleet(
    secretd: &Path,
    root: &Path,
    fake: &FakeGsm,
    notifications: Option<(&Emulator, &str, Duration)>,
) -> Result<Fleet, BenchError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut fleet = Fleet {
        children: Vec::with_capacity(FLEET),
        clients: Vec::with_capacity(FLEET),
    };
    let mut sockets = Vec::with_capacity(FLEET);
    for host in 0..FLEET {
        let dir = root.join(format!("host-{host}"));
        std::fs::create_dir_all(dir.join("run")).map_err(BenchError::io("host dir"))?;
        let socket = dir.join("run/secretd.sock");
        let (interval, listen) = match notifications {
            Some((emulator, topic, jitter)) => {
                let subscription =
                    emulator.subscription(&topic_name(topic), &format!("{topic}-host-{host}"))?;
                let listen = format!(
                    "[gsm.notifications]\nsubscription = \"{subscription}\"\n\
                     endpoint = \"{}\"\nnotification_jitter = \"{}ms\"\n\n",
                    emulator.endpoint(),
                    jitter.as_millis()
                );
                (PRODUCTION_INTERVAL, listen)
            }
            None => (POLL_INTERVAL, String::new()),
        };
        let config = format!(
            "[daemon]\nsocket = \"{}\"\ndb = \"{}\"\nadmin_uids = [{uid}]\n\
             refresh_interval = \"{}s\"\nallow_short_ttl = true\n\n\
             [gsm]\nendpoint = \"{}\"\nanonymous = true\nproject = \"apex-bench\"\n\
             project_number = \"{}\"\n\n{listen}\
             [[secret]]\nname = \"{NAME}\"\nsource = \"gsm\"\ngcp_secret = \"{RESOURCE}\"\n\n\
             [[policy]]\nuids = [{uid}]\nallow = [\"*\"]\n",
            socket.display(),
            dir.join("secretd.redb").display(),
            interval.as_secs(),
            fake.endpoint(),
            project_number("apex-bench"),
        );
        let config_path = dir.join("secretd.toml");
        std::fs::write(&config_path, config).map_err(BenchError::io("config"))?;
        let child = crate::fixture::spawn(secretd, &config_path, &dir.join("secretd.log"))?;
        fleet.children.push(child);
        sockets.push(socket);
        if notifications.is_none() {
            // A real fleet's hosts poll at unrelated moments: spread the starts over one
            // interval, or every host would refresh at once and look like one.
            std::thread::sleep(POLL_INTERVAL / FLEET as u32);
        }
    }
    let deadline = Instant::now() + START_DEADLINE;
    for socket in &sockets {
        let client = loop {
            let ready = Client::connect(socket).and_then(|c| {
                c.get(NAME)?;
                Ok(c)
            });
            let subscribed = |c: &Client| {
                notifications.is_none()
                    || c.health()
                        .is_ok_and(|h| h.notifications == ChannelState::Up)
            };
            match ready {
                Ok(c) if subscribed(&c) => break c,
                _ if Instant::now() > deadline => {
                    return Err(BenchError::from(format!(
                        "a fleet host at {} was not serving (and subscribed) within {}s",
                        socket.display(),
                        START_DEADLINE.as_secs()
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        fleet.clients.push(client);
    }
    Ok(fleet)
}

/// The full name of topic `topic` on the emulator.
fn topic_name(topic: &str) -> String {
    format!("projects/{PROJECT}/topics/{topic}")
}

/// Adds version `version` to GSM, announces it when `announce` is given, and times until the
/// first host and every host serve it.
fn one_change(
    fleet: &Fleet,
    fake: &FakeGsm,
    version: u64,
    announce: Option<(&Emulator, &str)>,
) -> Result<(Duration, Duration), BenchError> {
    let value = format!("Omni-Fleet-Key-v{version}-0123456789abcdef!");
    fake.add_version(RESOURCE, value.as_bytes());
    let start = Instant::now();
    if let Some((emulator, topic)) = announce {
        let secret_id = RESOURCE.replace("apex-bench", &project_number("apex-bench"));
        emulator.publish(
            topic,
            &[gsm_event("SECRET_VERSION_ADD", &secret_id, Some(version))],
        )?;
    }
    let want = version.to_string();
    let mut waiting: Vec<&Client> = fleet.clients.iter().collect();
    let mut first = None;
    while !waiting.is_empty() {
        waiting.retain(|c| c.get(NAME).map_or(true, |s| s.version() != want));
        if waiting.len() < fleet.clients.len() && first.is_none() {
            first = Some(start.elapsed());
        }
        if start.elapsed() > CHANGE_DEADLINE {
            return Err(BenchError::from(format!(
                "version {version} reached {} of {FLEET} hosts within {}s",
                FLEET - waiting.len(),
                CHANGE_DEADLINE.as_secs()
            )));
        }
        std::thread::sleep(SWEEP);
    }
    let all = start.elapsed();
    Ok((first.unwrap_or(all), all))
}

/// Measures `samples` changes for each channel; the fleets run one after another.
pub(crate) fn measure(
    secretd: &Path,
    root: &Path,
    samples: usize,
    notes: &mut Notes,
) -> Vec<PropagationRow> {
    let emulator = match emulator_script() {
        Some(script) => match Emulator::start(&script) {
            Ok(e) => Some(e),
            Err(e) => {
                notes.fail(format!(
                    "propagation: notification rows: the emulator did not start: {e}"
                ));
                None
            }
        },
        None => {
            notes.skip(
                "propagation: notification rows: no Pub/Sub emulator (the \
                 google-cloud-cli-pubsub-emulator package and java)",
            );
            None
        }
    };
    let mut channels = Vec::new();
    if emulator.is_some() {
        channels.push(Channel::Notification(Duration::ZERO));
        channels.push(Channel::Notification(Duration::from_secs(1)));
    }
    channels.push(Channel::Polling);
    let mut rows = Vec::new();
    for (n, channel) in channels.into_iter().enumerate() {
        let dir = root.join(format!("fleet-{n}"));
        match measure_one(secretd, &dir, emulator.as_ref(), channel, samples) {
            Ok(row) => rows.push(row),
            Err(e) => notes.fail(format!("propagation ({}): {e}", channel.label())),
        }
    }
    rows
}

fn measure_one(
    secretd: &Path,
    dir: &Path,
    emulator: Option<&Emulator>,
    channel: Channel,
    samples: usize,
) -> Result<PropagationRow, BenchError> {
    let fake = FakeGsm::start().map_err(BenchError::io("fake gsm"))?;
    fake.add_version(RESOURCE, b"Omni-Fleet-Key-v1-0123456789abcdef!");
    let topic = dir
        .file_name()
        .map_or_else(|| "fleet".into(), |n| n.to_string_lossy().into_owned());
    let listen = match (channel, emulator) {
        (Channel::Notification(jitter), Some(emulator)) => {
            emulator.topic(&topic)?;
            Some((emulator, topic.as_str(), jitter))
        }
        _ => None,
    };
    let fleet = start_fleet(secretd, dir, &fake, listen)?;
    let samples = if listen.is_some() {
        // GSM as it is: `latest` shows a new version minutes later; the hosts must read the
        // announced version by number to meet the 3 s promise. Twice the samples: the
        // promise's max is the figure that matters.
        fake.set_read_lag(LATEST_LAG);
        samples * 2
    } else {
        samples
    };
    let mut row = PropagationRow {
        channel,
        first: Vec::with_capacity(samples),
        all: Vec::with_capacity(samples),
    };
    for version in 2..2 + samples as u64 {
        let announce = listen.map(|(e, t, _)| (e, t));
        let (first, all) = one_change(&fleet, &fake, version, announce)?;
        row.first.push(first);
        row.all.push(all);
        if channel == Channel::Polling {
            // The next change lands at another point of the hosts' schedules.
            std::thread::sleep(POLL_INTERVAL.mul_f64(fastrand::f64()));
        } else {
            // Past the jitter, so this change's refreshes are done before the next one.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    row.first.sort();
    row.all.sort();
    Ok(row)
}

fn median(sorted: &[Duration]) -> Duration {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Prints the propagation table, with the polling figures scaled to a 5-minute interval.
pub(crate) fn print_table(rows: &[PropagationRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "fleet propagation: {FLEET} daemons, one new GSM version, until the first host and all \
         hosts serve it (s)\n"
    );
    println!(
        "| how the fleet learns of it | changes | first host p50 | all hosts p50 | all hosts max |"
    );
    println!("|---|---:|---:|---:|---:|");
    let secs = |d: Duration| d.as_secs_f64();
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            r.channel.label(),
            r.all.len(),
            secs(median(&r.first)),
            secs(median(&r.all)),
            secs(r.all.last().copied().unwrap_or_default()),
        );
        if r.channel == Channel::Polling {
            let scale = PRODUCTION_INTERVAL.as_secs_f64() / POLL_INTERVAL.as_secs_f64();
            println!(
                "| polling, refresh_interval {}s (the row above × {scale:.0}) | - | {:.0} | {:.0} | {:.0} |",
                PRODUCTION_INTERVAL.as_secs(),
                secs(median(&r.first)) * scale,
                secs(median(&r.all)) * scale,
                secs(r.all.last().copied().unwrap_or_default()) * scale,
            );
        }
    }
    println!();
    for r in rows {
        if let Channel::Notification(jitter) = r.channel {
            let p50 = secs(median(&r.all));
            println!(
                "- all {FLEET} hosts p50, notification_jitter {}ms = {p50:.2} s (≤ 3: {})",
                jitter.as_millis(),
                if p50 <= 3.0 { "ok" } else { "MISSED" }
            );
        }
    }
    println!();
}
