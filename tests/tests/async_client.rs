//! The tokio client against the real daemon: many tasks on one client, random cancellations at
//! every await point that never put a connection out of step nor cost a reconnect each, and a
//! daemon restart under a live client.

mod support;

use std::future::Future;
use std::task::Poll;

use secretd_client::{AsyncClient, MAX_ASYNC_CONNECTIONS, SourceKind};
use support::TestEnv;

const A: &[u8] = b"Omni-Key-Async-AAAA-0000!";
const B: &[u8] = b"Omni-Secret-Async-BBBB-1111!";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn two_secrets(env: &TestEnv) -> String {
    env.conf()
        .file_secret("trading_a", A)
        .file_secret("trading_b", B)
        .readable_by_me()
        .build()
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

/// Open connections, from the daemon's own gauge.
fn open_connections(daemon: &support::Daemon) -> f64 {
    let text = secretd_client::Client::connect(&daemon.socket)
        .expect("admin")
        .metrics()
        .expect("metrics");
    text.lines()
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
                        let (name, value) = if i % 2 == 0 {
                            ("trading_a", A)
                        } else {
                            ("trading_b", B)
                        };
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
            let (first, _) = if i % 2 == 0 {
                ("trading_a", A)
            } else {
                ("trading_b", B)
            };
            if !poll_then_drop(client.get(first), fastrand::usize(0..6)).await {
                cancelled += 1;
            }
            // ...and the next call, of the other secret, gets its own answer.
            let (second, value) = if i % 2 == 0 {
                ("trading_b", B)
            } else {
                ("trading_a", A)
            };
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
