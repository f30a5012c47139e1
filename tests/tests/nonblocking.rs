//! `secretd_client::nonblocking::NonBlockingConnection` against the real daemon, driven the way a
//! foreign event loop drives it (here `poll(2)`): greeting, reads, and reads whose caller gave up
//! part-way, whose answers are still read and discarded so the next read gets its own answer on
//! the same connection.

mod support;

use std::os::fd::RawFd;
use std::time::Duration;

use secretd_client::nonblocking::{NonBlockingConnection, Progress};
use secretd_client::{Error, ErrorCode};
use support::TestEnv;

const A: &[u8] = b"Omni-Key-NonBlocking-AAAA-0000!";
const B: &[u8] = b"Omni-Secret-NonBlocking-BBBB-1111!";

/// Waits until `fd` is readable (or 5 s pass, which fails the test).
fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5_000) };
    assert_eq!(n, 1, "the socket never became readable");
}

/// Advances until something other than `Pending` comes.
fn settle(conn: &mut NonBlockingConnection) -> Progress {
    loop {
        match conn.advance().expect("advance") {
            Progress::Pending => wait_readable(conn.fd()),
            other => return other,
        }
    }
}

#[test]
fn a_connection_driven_by_poll_reads_in_step_and_survives_abandoned_reads() {
    let env = TestEnv::new();
    let config = env
        .conf()
        .file_secret("trading_a", A)
        .file_secret("trading_b", B)
        .readable_by_me()
        .build();
    let daemon = env.start(&config);

    let mut conn = NonBlockingConnection::connect(&daemon.socket).expect("connect");
    assert!(!conn.is_idle(), "not greeted yet");
    assert!(matches!(
        conn.start_get("trading_a"),
        Err(Error::Protocol(_))
    ));
    assert!(matches!(settle(&mut conn), Progress::Greeted));
    assert!(conn.is_idle());

    for i in 0..2_000u32 {
        let (name, value) = if i % 2 == 0 {
            ("trading_a", A)
        } else {
            ("trading_b", B)
        };
        conn.start_get(name).expect("start");
        if i % 4 == 3 {
            // One read in four is given up by its caller the moment it is sent, as an event
            // loop cancels a task: its answer is still owed (the next read cannot start until
            // the loop has read it), and the loop drains it without looking.
            assert!(!conn.is_idle(), "read {i}: an abandoned read is still owed");
            assert!(
                matches!(conn.start_get(name), Err(Error::Protocol(_))),
                "read {i}: a second read started over an owed answer"
            );
            assert!(matches!(settle(&mut conn), Progress::Secret(_)));
            assert!(conn.is_idle());
            continue;
        }
        let progress = settle(&mut conn);
        let Progress::Secret(Ok(secret)) = progress else {
            panic!("read {i}: {progress:?}");
        };
        assert_eq!(secret.expose(), value, "read {i} got another read's answer");
        assert!(conn.is_idle());
    }

    // Refusals come back as the read's answer, and the connection stays usable.
    conn.start_get("trading_nope").expect("start");
    match settle(&mut conn) {
        Progress::Secret(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::NotFound)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        conn.start_get("bad name!"),
        Err(Error::InvalidArgument(_))
    ));
    conn.start_get("trading_a").expect("start");
    assert!(
        matches!(conn.start_get("trading_b"), Err(Error::Protocol(_))),
        "one request at a time"
    );
    assert!(matches!(settle(&mut conn), Progress::Secret(Ok(_))));

    // The daemon goes away: the connection reports it, never a hang or a stale answer.
    drop(daemon);
    std::thread::sleep(Duration::from_millis(50));
    let broken = conn.start_get("trading_a").and_then(|()| {
        loop {
            match conn.advance()? {
                Progress::Pending => wait_readable(conn.fd()),
                other => break Ok(other),
            }
        }
    });
    assert!(broken.is_err(), "{broken:?}");
}

#[test]
fn connecting_where_no_daemon_listens_is_a_connect_error() {
    let env = TestEnv::new();
    let err = NonBlockingConnection::connect(&env.path("absent.sock")).expect_err("no daemon");
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}
