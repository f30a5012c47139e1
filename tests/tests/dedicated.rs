//! Busy connections on threads of their own (`server::dedicated`), end to end against the real
//! daemon: a connection that keeps asking moves off the runtime and back, and every rule of the
//! runtime's loop (order, violations, slow frames, watches, shutdown, the thread cap) holds on
//! its thread too.

use std::time::Duration;

use secretd_client::Client;
use secretd_proto::{Request, Response};
mod support;

use support::{RawConn, TestEnv, wait_until};

const KEY: &[u8] = b"Omni-Key-Dedicated-0123456789!";
const OTHER: &[u8] = b"Omni-Other-Dedicated-9876543210?";
/// More requests in a row than the daemon's `PROMOTE_AFTER` (8).
const BUSY: usize = 20;
/// The daemon's `MAX_DEDICATED`.
const MAX_DEDICATED: usize = 32;

fn daemon(env: &TestEnv, max_connections: i64) -> support::Daemon {
    let config = env
        .conf()
        .daemon("max_connections", max_connections)
        .daemon("max_connections_per_uid", max_connections)
        .file_secret("trading_api_key", KEY)
        .file_secret("trading_other", OTHER)
        .readable_by_me()
        .build();
    env.start(&config)
}

/// Connections the daemon serves on threads of their own, from its gauge (asked on a
/// connection of its own, which never gets busy enough to move).
fn dedicated(daemon: &support::Daemon) -> usize {
    Client::connect(&daemon.socket)
        .expect("connect")
        .metrics()
        .expect("metrics")
        .lines()
        .find_map(|l| {
            l.strip_prefix("omni_secretd_dedicated_connections ")?
                .parse::<f64>()
                .ok()
        })
        .expect("the dedicated gauge") as usize
}

fn wait_dedicated(daemon: &support::Daemon, want: usize) {
    wait_until(
        || format!("{want} dedicated connections"),
        Duration::from_secs(20),
        || (dedicated(daemon) == want).then_some(()),
    );
}

fn get(name: &str) -> Request {
    Request::Get { name: name.into() }
}

/// The value in a `Secret` response.
fn value(response: Option<Response<'static>>) -> Vec<u8> {
    match response {
        Some(Response::Secret(s)) => s.value.expose().to_vec(),
        other => panic!("expected a secret, got {other:?}"),
    }
}

/// A greeted raw connection that has asked enough to be moved to a thread.
fn busy_raw(daemon: &support::Daemon) -> RawConn {
    let mut conn = RawConn::greeted(&daemon.socket);
    for _ in 0..BUSY {
        conn.send(&get("trading_api_key"));
        assert_eq!(value(conn.recv()), KEY);
    }
    conn
}

#[test]
fn a_busy_connection_moves_to_a_thread_and_back_when_quiet() {
    let env = TestEnv::new();
    let daemon = daemon(&env, 64);
    let client = Client::connect(&daemon.socket).expect("connect");
    for _ in 0..BUSY {
        assert_eq!(client.get("trading_api_key").expect("get").expose(), KEY);
    }
    wait_dedicated(&daemon, 1);
    // Reads on the thread answer as on the runtime.
    for i in 0..200 {
        let (name, want) = if i % 2 == 0 {
            ("trading_api_key", KEY)
        } else {
            ("trading_other", OTHER)
        };
        assert_eq!(client.get(name).expect("get").expose(), want);
    }
    // Quiet for a while: back on the runtime, and the connection still serves.
    wait_dedicated(&daemon, 0);
    assert_eq!(client.get("trading_other").expect("get").expose(), OTHER);
    // Busy again: a thread again.
    for _ in 0..BUSY {
        client.get("trading_api_key").expect("get");
    }
    wait_dedicated(&daemon, 1);
    drop(client);
    wait_dedicated(&daemon, 0);
}

#[test]
fn requests_pipelined_across_the_move_and_on_the_thread_are_answered_in_order() {
    let env = TestEnv::new();
    let daemon = daemon(&env, 64);
    let mut conn = RawConn::greeted(&daemon.socket);
    // The move happens after the eighth read, with the rest of this batch already read ahead
    // into the runtime's buffer: those requests must reach the thread, in order.
    pipelined_batch(&mut conn);
    wait_dedicated(&daemon, 1);
    // And a batch sent to the thread itself.
    pipelined_batch(&mut conn);
}

/// Thirty requests in one write, names alternating, a status among them; checks each answer.
fn pipelined_batch(conn: &mut RawConn) {
    let mut batch = Vec::new();
    for i in 0..30 {
        let request = match i {
            15 => Request::Status,
            i if i % 2 == 0 => get("trading_api_key"),
            _ => get("trading_other"),
        };
        let mut frame = Vec::new();
        secretd_proto::frame::encode_frame(&request, &mut frame).expect("encode");
        batch.extend_from_slice(&frame);
    }
    conn.send_bytes(&batch);
    for i in 0..30 {
        match (i, conn.recv()) {
            (15, Some(Response::Status(rows))) => assert_eq!(rows.len(), 2),
            (i, response) if i % 2 == 0 => assert_eq!(value(response), KEY, "answer {i}"),
            (i, response) => assert_eq!(value(response), OTHER, "answer {i}"),
        }
    }
}

#[test]
fn a_thread_answers_bad_frames_and_a_second_hello_with_a_violation_then_closes() {
    let env = TestEnv::new();
    let daemon = daemon(&env, 64);
    for (what, bytes) in [
        ("garbage body", {
            let mut f = 5u32.to_le_bytes().to_vec();
            f.extend_from_slice(&[0xff; 5]);
            f
        }),
        (
            "oversize length",
            (64 * 1024 * 1024u32).to_le_bytes().to_vec(),
        ),
        ("empty frame", 0u32.to_le_bytes().to_vec()),
        ("second hello", {
            let mut f = Vec::new();
            let hello = Request::Hello(secretd_proto::ClientHello::new("again"));
            secretd_proto::frame::encode_frame(&hello, &mut f).expect("encode");
            f
        }),
    ] {
        let mut conn = busy_raw(&daemon);
        wait_dedicated(&daemon, 1);
        conn.send_bytes(&bytes);
        match conn.recv() {
            Some(Response::Error(e)) => {
                assert_eq!(
                    e.code,
                    secretd_proto::ErrorCode::ProtocolViolation,
                    "{what}"
                )
            }
            other => panic!("{what}: expected a violation, got {other:?}"),
        }
        assert!(conn.recv().is_none(), "{what}: the connection closes");
        wait_dedicated(&daemon, 0);
    }
}

#[test]
fn a_thread_cuts_off_a_frame_that_never_finishes() {
    let env = TestEnv::new();
    let daemon = daemon(&env, 64);
    let mut conn = busy_raw(&daemon);
    wait_dedicated(&daemon, 1);
    // Half a length prefix, then nothing: closed once FRAME_READ_TIMEOUT (5 s) passes, well
    // inside the raw connection's 10 s read timeout.
    conn.send_bytes(&[3, 0]);
    assert!(
        conn.recv().is_none(),
        "the daemon closes a frame left unfinished"
    );
    wait_dedicated(&daemon, 0);
}

#[test]
fn a_watch_asked_on_a_thread_streams_from_the_runtime() {
    let env = TestEnv::new();
    let daemon = daemon(&env, 64);
    let admin = Client::connect(&daemon.socket).expect("admin");
    let mut conn = busy_raw(&daemon);
    wait_dedicated(&daemon, 1);
    conn.send(&Request::Watch {
        names: vec!["trading_api_key".into()],
    });
    assert!(matches!(conn.recv(), Some(Response::Watching(_))));
    // The watch gave the thread back.
    wait_dedicated(&daemon, 0);
    env.write_value("trading_api_key", b"Omni-Key-Dedicated-rotated!");
    admin.refresh(Some("trading_api_key")).expect("refresh");
    match conn.recv() {
        Some(Response::Event(event)) => assert!(format!("{event:?}").contains("trading_api_key")),
        other => panic!("expected a change event, got {other:?}"),
    }
}

#[test]
fn one_uid_takes_at_most_a_quarter_of_the_threads_and_another_uid_still_gets_one() {
    if !support::can_run(
        support::is_root(),
        "one_uid_takes_at_most_a_quarter_of_the_threads_and_another_uid_still_gets_one",
        "root (a second caller runs as uid 65534)",
    ) {
        return;
    }
    let env = TestEnv::new();
    let config = env
        .conf()
        .shared_with_nobody()
        .daemon("max_connections", 128)
        .daemon("max_connections_per_uid", 128)
        .file_secret("trading_api_key", KEY)
        .file_secret("trading_other", OTHER)
        .file_secret("public_feed", b"public-feed-value")
        .policy(&[0], &["*"], &[])
        .policy(&[65534], &["public_*"], &[])
        .build();
    let daemon = env.start(&config);
    // More busy connections of root than there are threads at all: with no share per uid,
    // root would hold every one of them.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..MAX_DEDICATED + 8)
        .map(|i| {
            let (socket, busy) = (daemon.socket.clone(), busy.clone());
            std::thread::spawn(move || {
                let client = Client::connect(&socket).expect("connect");
                let (name, want) = if i % 2 == 0 {
                    ("trading_api_key", KEY)
                } else {
                    ("trading_other", OTHER)
                };
                let mut reads = 0u64;
                while busy.load(std::sync::atomic::Ordering::Relaxed) || reads < 100 {
                    assert_eq!(client.get(name).expect("get").expose(), want);
                    reads += 1;
                }
                client
            })
        })
        .collect();
    wait_dedicated(&daemon, MAX_DEDICATED / 4);
    // Meanwhile nobody's bot reads in a loop on one connection: it still gets a thread.
    let socket = daemon.socket.to_str().expect("utf8");
    let mut args = vec![socket];
    args.extend(std::iter::repeat_n(["get", "public_feed"], 50).flatten());
    let out = env.run_as_nobody(&support::probe_bin(), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("ok get public_feed").count(), 50, "{stdout}");
    // Root's share never grew past a quarter, whatever the timing.
    let most = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            dedicated(&daemon)
        })
        .max()
        .unwrap_or(0);
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let clients: Vec<Client> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    assert!(most <= MAX_DEDICATED / 4, "{most} dedicated for one uid");
    assert!(
        daemon
            .log()
            .contains("connection moved to a thread of its own uid=65534"),
        "uid 65534's busy connection got no thread"
    );
    drop(clients);
    wait_dedicated(&daemon, 0);
}

#[test]
fn shutdown_ends_a_connection_on_its_thread() {
    let env = TestEnv::new();
    let mut daemon = daemon(&env, 64);
    let mut conn = busy_raw(&daemon);
    wait_dedicated(&daemon, 1);
    let stopped = daemon.stop();
    assert!(stopped.success(), "{stopped:?}");
    assert!(conn.recv().is_none(), "the connection was closed");
    assert!(!daemon.log().contains("Omni-Key"), "value in log");
}
