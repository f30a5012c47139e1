//! Memory hygiene of the real daemon: a canary value generated at run time is served, rotated
//! away and dropped; afterwards the daemon's memory (read through /proc/PID/mem, which needs
//! root since the daemon makes itself non-dumpable) holds no copy of it, neither its database
//! nor its log ever held one, and the value it serves now sits in a locked, no-dump mapping.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use secretd_client::Client;
use support::{TestEnv, can_run, is_root, wait_until};

/// A readable mapping of the daemon: start, end, and its smaps flags.
struct Region {
    start: u64,
    end: u64,
    name: String,
}

fn readable_regions(pid: u32) -> Vec<Region> {
    let maps = std::fs::File::open(format!("/proc/{pid}/maps")).expect("maps");
    BufReader::new(maps)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let name = fields.nth(3).unwrap_or("").to_owned();
            let (lo, hi) = range.split_once('-')?;
            let readable = perms.starts_with('r') && name != "[vvar]" && name != "[vvar_vclock]";
            if !readable {
                return None;
            }
            Some(Region {
                start: u64::from_str_radix(lo, 16).ok()?,
                end: u64::from_str_radix(hi, 16).ok()?,
                name,
            })
        })
        .collect()
}

/// Every address in the daemon's readable memory where `needle` occurs.
fn find_in_memory(pid: u32, needle: &[u8]) -> Vec<(u64, String)> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut hits = Vec::new();
    const CHUNK: u64 = 1 << 20;
    for region in readable_regions(pid) {
        let mut at = region.start;
        while at < region.end {
            // Overlap chunks so a needle across a chunk boundary is still found.
            let len = (region.end - at).min(CHUNK + needle.len() as u64);
            let mut buf = vec![0u8; len as usize];
            if let Ok(n) = mem.read_at(&mut buf, at) {
                buf.truncate(n);
                for i in buf
                    .windows(needle.len())
                    .enumerate()
                    .filter(|(_, w)| *w == needle)
                {
                    hits.push((at + i.0 as u64, region.name.clone()));
                }
            }
            at += CHUNK;
        }
    }
    hits.sort();
    hits.dedup();
    hits
}

/// The `VmFlags` of the smaps entry containing `addr`.
fn vm_flags(pid: u32, addr: u64) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&addr);
        }
        if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return flags.trim().to_owned();
        }
    }
    String::new()
}

/// A value no build could contain: random per run.
fn canary(label: &str) -> Vec<u8> {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("Canary-{label}-{hex}!").into_bytes()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("urandom");
}

fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn a_rotated_away_value_leaves_no_copy_in_memory_disk_or_logs() {
    if !can_run(
        is_root(),
        "a_rotated_away_value_leaves_no_copy",
        "root to read another process's memory (the daemon is non-dumpable)",
    ) {
        return;
    }
    let old = canary("old");
    let new = canary("new");
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", &old)
        .readable_by_me()
        .build();
    let mut daemon = env.start(&config);
    let pid = daemon.pid();

    // Served through every path that touches the value: plain reads, a cached client, a
    // watcher, status (fingerprints) and the audit trail.
    let client = Client::connect(&daemon.socket).expect("connect");
    for _ in 0..100 {
        assert_eq!(
            client.get("trading_api_key").expect("get").expose(),
            &old[..]
        );
    }
    let cached = Client::connect(&daemon.socket)
        .expect("connect")
        .with_cache()
        .expect("cache");
    assert_eq!(
        cached.get("trading_api_key").expect("get").expose(),
        &old[..]
    );
    let mut watch = client.watch(["trading_api_key"]).expect("watch");
    client.status().expect("status");

    // Rotate it away.
    env.write_value("trading_api_key", &new);
    client.refresh(Some("trading_api_key")).expect("refresh");
    assert!(matches!(watch.next(), Some(Ok(_))));
    for _ in 0..100 {
        assert_eq!(
            client.get("trading_api_key").expect("get").expose(),
            &new[..]
        );
    }
    wait_until(
        "the cached client to see the new value",
        Duration::from_secs(5),
        || (cached.get("trading_api_key").expect("get").expose() == &new[..]).then_some(()),
    );
    drop((client, cached, watch));
    // The connections' buffers are wiped when the daemon's tasks see them close, which on a
    // loaded machine can take a while: wait for that state, naming where copies remain.
    let old_hits = std::cell::RefCell::new(Vec::new());
    wait_until(
        || {
            format!(
                "the rotated-away value to leave daemon memory (still at {:x?})",
                old_hits.borrow()
            )
        },
        Duration::from_secs(30),
        || {
            *old_hits.borrow_mut() = find_in_memory(pid, &old);
            old_hits.borrow().is_empty().then_some(())
        },
    );
    let new_hits = find_in_memory(pid, &new);
    eprintln!("live value copies: {new_hits:x?}");
    assert!(
        !new_hits.is_empty(),
        "the scan cannot find even the live value: it proves nothing"
    );
    for (addr, _) in &new_hits {
        let flags = vm_flags(pid, *addr);
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "a copy of the live value at {addr:#x} is not excluded from core dumps ({flags}); copies: {new_hits:x?}"
        );
        assert!(
            flags.split_whitespace().any(|f| f == "lo"),
            "a copy of the live value at {addr:#x} is not locked ({flags})"
        );
    }

    // A graceful stop writes every aggregated audit record: the files hold all they will.
    assert!(daemon.stop().success(), "secretd stops cleanly on SIGTERM");
    for value in [&old, &new] {
        for file in ["secretd.redb", "secretd.toml.log"] {
            assert!(
                !file_contains(&env.path(file), value),
                "{file} holds a secret value"
            );
        }
    }
}

#[test]
fn a_refused_memory_lock_is_logged_once() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_api_key", b"Omni-Key-Unlocked-0000!")
        .file_secret("webhook_shared_secret", b"Webhook-Unlocked-1111!")
        .readable_by_me()
        .build();
    // No lockable memory at all (and, for root, no CAP_IPC_LOCK to ignore the limit): every
    // value buffer stays unlocked.
    let daemon = env.spawn_wrapped(
        &config,
        "secretd.toml",
        &[],
        &[
            "setpriv",
            "--bounding-set",
            "-ipc_lock",
            "prlimit",
            "--memlock=0:0",
        ],
    );
    daemon.wait_ready();
    let client = Client::connect(&daemon.socket).expect("connect");
    for name in ["trading_api_key", "webhook_shared_secret"] {
        client.get(name).expect("served unlocked all the same");
    }
    let log = daemon.wait_for_log("memory.unlocked");
    assert_eq!(log.matches("memory.unlocked").count(), 1, "{log}");
}
