//! Runs several requests on ONE client connection and prints one line per result, so tests
//! can check what another uid sees and that a denial does not end the connection.
//!
//! Usage: `secretd-probe SOCKET (get NAME | refresh NAME | status)...`
//! Output lines: `ok get NAME VERSION SOURCE LEN`, `err get NAME CODE`, `ok status N NAME,...`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, ops)) = args.split_first() else {
        eprintln!("usage: secretd-probe SOCKET (get NAME | status)...");
        return ExitCode::from(2);
    };
    let client = match secretd_client::Client::connect(socket) {
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
