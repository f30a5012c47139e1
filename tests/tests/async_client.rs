//! The tokio client against the real daemon: many tasks on one client, random cancellations at
//! every await point that never put a connection out of step nor cost a reconnect each, and a
//! daemon restart under a live client; the watch stream, through a restart and when dropped.

mod support;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use secretd_client::{AsyncClient, AsyncWatch, ChangeEvent, MAX_ASYNC_CONNECTIONS, SourceKind};
use support::TestEnv;
use support::config::ConfigBuilder;

const A: &[u8] = b"Omni-Key-Async-AAAA-0000!";
const B: &[u8] = b"Omni-Secret-Async-BBBB-1111!";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One of the two secrets by parity: `trading_a` for even `i`, `trading_b` for odd.
fn secret_for(i: u32) -> (&'static str, &'static [u8]) {
    if i.is_multiple_of(2) {
        ("trading_a", A)
    } else {
        ("trading_b", B)
    }
}

fn two_secrets(env: &TestEnv) -> String {
    two_secrets_conf(env).build()
}

/// The builder behind [`two_secrets`], for a test that sets daemon options on top.
fn two_secrets_conf(env: &TestEnv) -> ConfigBuilder<'_> {
    env.conf()
        .file_secret("trading_a", A)
        .file_secret("trading_b", B)
        .readable_by_me()
}

/// Polls `fut` up to `polls` times (yielding to the runtime between polls, so the request
/// makes progress), then drops it: a cancellation at whatever await point it had reached.
/// Returns whether it finished first.
async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> bool {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let done = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_ready())).await;
        if done {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

/// Yields to the scheduler `n` times.
async fn yield_times(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// The daemon's metrics text.
fn metrics(daemon: &support::Daemon) -> String {
    secretd_client::Client::connect(&daemon.socket)
        .expect("admin")
        .metrics()
        .expect("metrics")
}

/// Open connections, from the daemon's own gauge.
fn open_connections(daemon: &support::Daemon) -> f64 {
    metrics(daemon)
        .lines()
        .find(|l| l.starts_with("omni_secretd_connections "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("gauge")
}

#[test]
fn a_hundred_tasks_share_one_client() {
    let env = TestEnv::new();
    let daemon = env.start(&two_secrets(&env));
    runtime().block_on(async {
        let client = AsyncClient::connect(&daemon.socket).await.expect("connect");
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let (name, value) = secret_for(i);
                        let s = client.get(name).await.expect("get");
                        assert_eq!(s.expose(), value);
                        assert_eq!(s.source(), SourceKind::File);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(client.status().await.expect("status").len(), 2);
    });
}

#[test]
fn cancelled_calls_never_leave_a_connection_out_of_step_nor_reconnect_each_time() {
    let env = TestEnv::new();
    let daemon = env.start(&two_secrets(&env));
    runtime().block_on(async {
        let client = AsyncClient::connect(&daemon.socket).await.expect("connect");
        let mut cancelled = 0;
        for i in 0..3000u32 {
            // A get of one secret, dropped at a random point (often before its answer)...
            let (first, _) = secret_for(i);
            // At least one poll: a future never polled sent nothing, so dropping it cancels nothing.
            if !poll_then_drop(client.get(first), fastrand::usize(1..6)).await {
                cancelled += 1;
            }
            // ...and the next call, of the other secret, gets its own answer.
            let (second, value) = secret_for(i + 1);
            assert_eq!(
                client.get(second).await.expect("get").expose(),
                value,
                "call {i}"
            );
        }
        assert!(
            cancelled > 100,
            "only {cancelled} cancellations: the test tested little"
        );
        // Connections stay pooled: the daemon sees at most the pool, not one per cancellation.
        let open = open_connections(&daemon);
        assert!(
            open <= (MAX_ASYNC_CONNECTIONS + 1) as f64,
            "{open} connections after {cancelled} cancellations"
        );
    });
}

#[test]
fn a_live_async_client_survives_a_daemon_restart() {
    let env = TestEnv::new();
    let config = two_secrets(&env);
    let mut daemon = env.start(&config);
    let rt = runtime();
    let client = rt
        .block_on(AsyncClient::connect(&daemon.socket))
        .expect("connect");
    rt.block_on(async {
        assert_eq!(client.get("trading_a").await.expect("get").expose(), A);
    });
    assert!(daemon.stop().success());
    let _daemon = env.start(&config);
    rt.block_on(async {
        assert_eq!(
            client
                .get("trading_a")
                .await
                .expect("after restart")
                .expose(),
            A
        );
    });
}

/// The next item of `watch`, within a generous deadline.
async fn next_item(watch: &mut AsyncWatch) -> secretd_client::Result<ChangeEvent> {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("an item within 20 s")
        .expect("the stream goes on")
}

/// Rewrites file secret `name` and has the daemon pick it up now.
async fn change_file(env: &TestEnv, admin: &AsyncClient, name: &str, value: &[u8]) {
    env.write_value(name, value);
    let outcomes = admin.refresh(Some(name)).await.expect("refresh");
    assert!(outcomes[0].error.is_none(), "{outcomes:?}");
}

#[test]
fn the_watch_stream_follows_changes_and_resubscribes_after_a_restart() {
    let env = TestEnv::new();
    let config = two_secrets(&env);
    let mut daemon = env.start(&config);
    let rt = runtime();
    let client = rt
        .block_on(AsyncClient::connect(&daemon.socket))
        .expect("connect");
    let mut watch = rt.block_on(client.watch(["trading_a"])).expect("watch");
    assert_eq!(watch.names(), ["trading_a"]);
    rt.block_on(async {
        change_file(&env, &client, "trading_b", b"unwatched").await;
        change_file(&env, &client, "trading_a", b"Omni-Key-Async-AAAA-0002!").await;
        match next_item(&mut watch).await.expect("event") {
            ChangeEvent::Changed(c) => {
                assert_eq!(c.name, "trading_a", "only the watched name");
                assert_eq!(c.version, "2");
            }
            other => panic!("unexpected {other:?}"),
        }
    });

    assert!(daemon.stop().success());
    let _daemon = env.start(&config);
    rt.block_on(async {
        // The break shows as an error, the resubscription as Lagged...
        let mut saw_error = false;
        loop {
            match next_item(&mut watch).await {
                Err(_) => saw_error = true,
                Ok(ChangeEvent::Lagged) => break,
                Ok(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_error, "the break is reported before Lagged");
        // ...and changes flow again.
        change_file(&env, &client, "trading_a", b"Omni-Key-Async-AAAA-0003!").await;
        match next_item(&mut watch).await.expect("event") {
            ChangeEvent::Changed(c) => assert_eq!(c.name, "trading_a"),
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn a_watch_of_an_unknown_name_is_refused_and_a_dropped_stream_closes_its_connection() {
    let env = TestEnv::new();
    let daemon = env.start(&two_secrets(&env));
    let rt = runtime();
    rt.block_on(async {
        let client = AsyncClient::connect(&daemon.socket).await.expect("connect");
        // Counted once the connections of start-up (the readiness probe) have closed, one
        // closing while the watch opens would hide it: then only the client's pooled
        // connection and the one asking for the count are open.
        let before = 2.0;
        support::wait_until(
            "only the client's and the counting connection open",
            Duration::from_secs(20),
            || (open_connections(&daemon) == before).then_some(()),
        );
        let watch = client.watch(Vec::<String>::new()).await.expect("watch all");
        assert_eq!(watch.names().len(), 2, "every readable name");
        support::wait_until(
            "the watch connection is counted",
            Duration::from_secs(20),
            || (open_connections(&daemon) > before).then_some(()),
        );
        drop(watch);
        support::wait_until(
            "the dropped watch's connection is closed",
            Duration::from_secs(20),
            || (open_connections(&daemon) <= before).then_some(()),
        );

        // Refusals come back from `watch` itself (after the counting above, so the refused
        // connections' closing cannot race with it).
        let refused = client.watch(["no_such_secret"]).await;
        assert!(refused.is_err(), "an unknown name is refused up front");
        assert!(client.watch(["bad name!"]).await.is_err());
    });
}

#[test]
fn many_tasks_cancelled_at_random_only_ever_see_their_own_answers() {
    let env = TestEnv::new();
    // Thousands of cancelled calls close thousands of connections, and the daemon counts each
    // against the uid's share until its task has seen the close. Beside a busy build that
    // trails by hundreds (one run was refused `Busy` past the default 256), so this test, about
    // the answers a cancelled call leaves behind, gives the uid every seat.
    let daemon = env.start(
        &two_secrets_conf(&env)
            .daemon("max_connections", 4096)
            .daemon("max_connections_per_uid", 4096)
            .build(),
    );
    runtime().block_on(async {
        let client = AsyncClient::connect(&daemon.socket).await.expect("connect");
        // Rounds until both outcomes were seen often: how many calls a random cut-off
        // answers depends on the machine's load.
        let (mut answered, mut timed_out) = (0, 0);
        for _round in 0..20 {
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let (mut answered, mut timed_out) = (0u32, 0u32);
                        for i in 0..500u32 {
                            let (name, value) = secret_for(i + t);
                            // Given up after a random number of turns of the scheduler (tokio's
                            // timer ticks in milliseconds, far longer than a get), and every 50th
                            // call under a real 1 ms `timeout`: from "gone before the first byte"
                            // to "usually answered".
                            let answer = if i % 50 == 0 {
                                tokio::time::timeout(Duration::from_millis(1), client.get(name))
                                    .await
                                    .ok()
                            } else {
                                let turns = fastrand::usize(0..8);
                                tokio::select! {
                                    biased;
                                    got = client.get(name) => Some(got),
                                    () = yield_times(turns) => None,
                                }
                            };
                            match answer {
                                Some(got) => {
                                    assert_eq!(
                                        got.expect("get").expose(),
                                        value,
                                        "task {t} call {i}"
                                    );
                                    answered += 1;
                                }
                                None => timed_out += 1,
                            }
                        }
                        (answered, timed_out)
                    })
                })
                .collect();
            for task in tasks {
                let (a, c) = task.await.expect("task");
                answered += a;
                timed_out += c;
            }
            if answered > 100 && timed_out > 100 {
                break;
            }
        }
        assert!(
            answered > 100 && timed_out > 100,
            "{answered} answered, {timed_out} cancelled: the mix tested little"
        );
        // After all that, every pooled connection is still in step.
        for _ in 0..50 {
            assert_eq!(client.get("trading_a").await.expect("get").expose(), A);
            assert_eq!(client.get("trading_b").await.expect("get").expose(), B);
        }
        // Connections the pool let go (it keeps at most MAX_ASYNC_CONNECTIONS) are counted
        // until the daemon reads their end, which on a loaded machine trails the client's
        // close: what must hold is that the count comes down to the pool and the connection
        // asking for it, not that it already has.
        support::wait_until(
            || format!("the pool alone open after {timed_out} cancellations"),
            Duration::from_secs(20),
            || (open_connections(&daemon) <= (MAX_ASYNC_CONNECTIONS + 1) as f64).then_some(()),
        );
    });
}

/// `omni_secretd_requests_total{op="get",result="ok"}`: reads the daemon served.
fn gets_served(daemon: &support::Daemon) -> f64 {
    metrics(daemon)
        .lines()
        .find(|l| l.starts_with("omni_secretd_requests_total{op=\"get\",result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_cached_async_client_serves_locally_and_follows_changes() {
    let env = TestEnv::new();
    let daemon = env.start(&two_secrets(&env));
    runtime().block_on(async {
        let plain = AsyncClient::connect(&daemon.socket).await.expect("connect");
        let client = plain.clone().with_cache().await.expect("cache");
        assert!(client.is_cached() && !plain.is_cached());
        assert_eq!(client.get("trading_a").await.expect("get").expose(), A);
        assert_eq!(client.cached_len(), 1);
        let served = gets_served(&daemon);
        for _ in 0..1000 {
            assert_eq!(client.get("trading_a").await.expect("get").expose(), A);
        }
        assert_eq!(
            gets_served(&daemon),
            served,
            "repeat reads never reach the daemon"
        );

        // A change empties the entry: the next read fetches the new value.
        change_file(&env, &plain, "trading_a", b"Omni-Key-Async-AAAA-0002!").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = client.get("trading_a").await.expect("get");
            if got.expose() == b"Omni-Key-Async-AAAA-0002!" {
                break;
            }
            assert_eq!(got.expose(), A, "only the old or the new value");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the change never reached the cache"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn a_cached_async_client_stops_serving_from_cache_when_the_daemon_goes() {
    let env = TestEnv::new();
    let config = two_secrets(&env);
    let mut daemon = env.start(&config);
    let rt = runtime();
    let client = rt
        .block_on(async {
            let c = AsyncClient::connect(&daemon.socket)
                .await?
                .with_cache()
                .await?;
            c.get("trading_b").await?;
            Ok::<_, secretd_client::Error>(c)
        })
        .expect("cached client");
    assert!(daemon.stop().success());
    // With the daemon gone the watch breaks, and the cache empties and stops serving: a read
    // fails rather than serve a value nobody can vouch for any more.
    support::wait_until("the cache empties", Duration::from_secs(20), || {
        (client.cached_len() == 0).then_some(())
    });
    assert!(rt.block_on(client.get("trading_b")).is_err());
    // Back up, it reads (and caches) again.
    let _daemon = env.start(&config);
    rt.block_on(async {
        assert_eq!(
            client
                .get("trading_b")
                .await
                .expect("after restart")
                .expose(),
            B
        );
    });
}

/// The client crate's `tokio_reader` example, which `cargo test --workspace` builds beside this
/// test's own binary.
fn tokio_reader_example() -> Option<std::path::PathBuf> {
    let deps = std::env::current_exe().ok()?.parent()?.to_owned();
    let example = deps.parent()?.join("examples").join("tokio_reader");
    example.exists().then_some(example)
}

#[test]
fn the_readme_tokio_example_reads_and_follows_a_rotation() {
    let Some(example) = tokio_reader_example() else {
        support::can_run(
            false,
            "the tokio example",
            "client/examples/tokio_reader built (cargo test --workspace builds it)",
        );
        return;
    };
    let env = TestEnv::new();
    let daemon = env.start(&two_secrets(&env));
    let mut child = std::process::Command::new(example)
        .arg("trading_a")
        .env("SECRETD_SOCKET", &daemon.socket)
        .env("CHANGES", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the example");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let _ = tx.send(line.expect("read"));
        }
    });
    let mut next_line = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("the example printed no {what} within 20 s")
            })
    };
    let first = next_line("first line");
    assert_eq!(first, "trading_a: version 1 from file");
    runtime().block_on(async {
        let admin = AsyncClient::connect(&daemon.socket).await.expect("connect");
        change_file(&env, &admin, "trading_a", b"Omni-Key-Async-AAAA-0002!").await;
    });
    let second = next_line("line after the change");
    assert_eq!(second, "trading_a: version 2 from file");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let printed = format!("{first}\n{second}");
    assert!(
        !printed.contains("Omni-Key"),
        "the example never prints a value"
    );
}

#[test]
fn a_cached_clients_own_watch_never_leaves_a_get_behind_its_event() {
    let env = TestEnv::new();
    let daemon = env.start(&two_secrets(&env));
    runtime().block_on(async {
        let admin = AsyncClient::connect(&daemon.socket).await.expect("admin");
        let client = AsyncClient::connect(&daemon.socket)
            .await
            .expect("connect")
            .with_cache()
            .await
            .expect("cache");
        let mut watch = client.watch(["trading_a"]).await.expect("watch");
        client.get("trading_a").await.expect("cached");
        // The cache's own watch and this one hear each change in either order; a get right
        // after this one's event must read the new version every time.
        for round in 2..22u32 {
            let value = format!("Omni-Key-Async-AAAA-{round:04}!");
            change_file(&env, &admin, "trading_a", value.as_bytes()).await;
            let version = match next_item(&mut watch).await.expect("event") {
                ChangeEvent::Changed(c) => c.version,
                other => panic!("unexpected {other:?}"),
            };
            let read = client.get("trading_a").await.expect("get");
            assert_eq!(read.version(), version, "round {round}");
            assert_eq!(read.expose(), value.as_bytes(), "round {round}");
            // ...and it is cached again for the next reads.
            client.get("trading_a").await.expect("get");
        }
    });
}

#[test]
fn a_daemon_that_stops_answering_times_out_each_call() {
    // Answers the hello, then reads requests and never answers. The hello and the call after
    // it run under the connection's one request timer, re-armed for the call; a timed-out
    // connection is dropped, so the second call greets a new one.
    let env = TestEnv::new();
    let path = env.path("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut header = [0u8; 4];
                let mut body = vec![0u8; 4096];
                let mut frame = Vec::new();
                let hello = secretd_proto::Response::Hello(secretd_proto::ServerHello {
                    protocol_version: secretd_proto::PROTOCOL_VERSION,
                    daemon_version: "silent".into(),
                });
                secretd_proto::frame::encode_frame(&hello, &mut frame).expect("encode");
                let mut greeted = false;
                while stream.read_exact(&mut header).is_ok() {
                    let len = u32::from_le_bytes(header) as usize;
                    if stream.read_exact(&mut body[..len.min(4096)]).is_err() {
                        return;
                    }
                    if !greeted {
                        greeted = true;
                        let _ = stream.write_all(&frame);
                    }
                }
            });
        }
    });
    runtime().block_on(async {
        let client = AsyncClient::connect(&path).await.expect("greeted");
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let err = client.get("trading_a").await.expect_err("never answered");
            assert!(
                matches!(err, secretd_client::Error::Timeout { .. }),
                "{err:?}"
            );
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_secs(5) && waited < Duration::from_secs(15),
                "{waited:?}"
            );
        }
    });
}
