//! Runs several requests on ONE client connection and prints one line per result, so tests
//! can check what another uid sees and that a denial does not end the connection.
//!
//! Usage: `secretd-probe SOCKET [delay MS] [timeout SECONDS] (get NAME | refresh NAME | status)...`
//! Output lines: `ok get NAME VERSION SOURCE LEN`, `err get NAME CODE`, `ok status N NAME,...`.
//!
//! `secretd-probe SOCKET hold N` opens N connections (as many as the daemon admits), prints
//! `held ADMITTED REFUSED`, and keeps them open until its stdin closes.
//!
//! `secretd-probe SOCKET flood SECONDS` reads a new unknown name in a tight loop for SECONDS,
//! reconnecting whenever the daemon closes the connection, and prints
//! `flood REQUESTS REFUSED CLOSED` (what a hostile local user can do with no policy at all).
//!
//! `secretd-probe SOCKET churn SECONDS THREADS` connects and closes at once, as fast as
//! THREADS threads can, for SECONDS, and prints `churn CONNECTS FAILED`.
//!
//! `secretd-probe SOCKET reconnect SECONDS NAME` reads NAME on a new connection each time for
//! SECONDS, and prints `reconnect OK FAILED` and each distinct failure on its own line.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, ops)) = args.split_first() else {
        eprintln!("usage: secretd-probe SOCKET (get NAME | status)...");
        return ExitCode::from(2);
    };
    if let [op, seconds] = ops
        && op == "flood"
    {
        return flood(socket, seconds.parse().unwrap_or(1.0));
    }
    if let [op, seconds, threads] = ops
        && op == "churn"
    {
        return churn(
            socket,
            seconds.parse().unwrap_or(1.0),
            threads.parse().unwrap_or(1),
        );
    }
    if let [op, seconds, name] = ops
        && op == "reconnect"
    {
        return reconnect(socket, seconds.parse().unwrap_or(1.0), name);
    }
    if let [op, n] = ops
        && op == "hold"
    {
        return hold(socket, n.parse().unwrap_or(1));
    }
    // `delay MS` first: wait before connecting (so a test can change the binary meanwhile).
    let ops = match ops {
        [op, ms, rest @ ..] if op == "delay" => {
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
            rest
        }
        other => other,
    };
    // `timeout SECONDS` next: how long each call may wait (the client's default otherwise).
    let (timeout, ops) = match ops {
        [op, secs, rest @ ..] if op == "timeout" => (
            secs.parse().ok().map(std::time::Duration::from_secs_f64),
            rest,
        ),
        other => (None, other),
    };
    let connected = match timeout {
        Some(t) => secretd_client::Client::connect_with_timeout(socket, t),
        None => secretd_client::Client::connect(socket),
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            println!("connect-failed {e}");
            return ExitCode::from(1);
        }
    };
    let mut ops = ops.iter();
    while let Some(op) = ops.next() {
        match op.as_str() {
            "get" => {
                let name = ops.next().map(String::as_str).unwrap_or("");
                match client.get(name) {
                    Ok(s) => println!("ok get {name} {} {} {}", s.version(), s.source(), s.len()),
                    Err(e) => println!(
                        "err get {name} {}",
                        e.code().map_or_else(|| e.to_string(), |c| c.to_string())
                    ),
                }
            }
            "refresh" => {
                let name = ops.next().map(String::as_str).unwrap_or("");
                match client.refresh(Some(name)) {
                    Ok(list) => println!("ok refresh {}", list.len()),
                    Err(e) => println!(
                        "err refresh {name} {}",
                        e.code().map_or_else(|| e.to_string(), |c| c.to_string())
                    ),
                }
            }
            "status" => match client.status() {
                Ok(list) => {
                    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
                    println!("ok status {} {}", list.len(), names.join(","));
                }
                Err(e) => println!("err status {e}"),
            },
            other => {
                eprintln!("unknown op {other}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Requests unknown names as fast as possible for `seconds`.
fn flood(socket: &str, seconds: f64) -> ExitCode {
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let (mut requests, mut refused, mut closed) = (0u64, 0u64, 0u64);
    let mut client = None;
    while std::time::Instant::now() < until {
        if client.is_none() {
            client = secretd_client::Client::connect(socket).ok();
            if client.is_none() {
                closed += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        }
        let Some(c) = client.as_ref() else { continue };
        requests += 1;
        match c.get(&format!("flood_{requests}")) {
            Err(e) if e.code().is_some() => refused += 1,
            Err(_) => {
                closed += 1;
                client = None;
            }
            Ok(_) => {}
        }
    }
    println!("flood {requests} {refused} {closed}");
    ExitCode::SUCCESS
}

/// Connects and closes at once from `threads` threads for `seconds`.
fn churn(socket: &str, seconds: f64, threads: usize) -> ExitCode {
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let (mut connects, mut failed) = (0u64, 0u64);
                while std::time::Instant::now() < until {
                    match std::os::unix::net::UnixStream::connect(&socket) {
                        Ok(_) => connects += 1,
                        Err(_) => failed += 1,
                    }
                }
                (connects, failed)
            })
        })
        .collect();
    let (connects, failed) = workers
        .into_iter()
        .map(|w| w.join().unwrap_or((0, 0)))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    println!("churn {connects} {failed}");
    ExitCode::SUCCESS
}

/// Reads `name` on a new connection each time for `seconds`.
fn reconnect(socket: &str, seconds: f64, name: &str) -> ExitCode {
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let (mut ok, mut failures) = (0u64, std::collections::BTreeMap::<String, u64>::new());
    while std::time::Instant::now() < until {
        match secretd_client::Client::connect(socket).and_then(|c| c.get(name)) {
            Ok(_) => ok += 1,
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    println!("reconnect {ok} {}", failures.values().sum::<u64>());
    for (why, n) in failures {
        println!("failed {n} {why}");
    }
    ExitCode::SUCCESS
}

/// Opens `n` connections, says how many were admitted, and holds them until stdin closes.
fn hold(socket: &str, n: usize) -> ExitCode {
    let (mut held, mut refused) = (Vec::new(), 0usize);
    for _ in 0..n {
        match secretd_client::Client::connect(socket) {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    println!("held {} {refused}", held.len());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(held);
    ExitCode::SUCCESS
}
