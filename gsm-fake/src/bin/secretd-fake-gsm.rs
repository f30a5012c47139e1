//! Runs the GSM fake for manual demos:
//! `secretd-fake-gsm [--listen 127.0.0.1:8085] [--secret projects/p/secrets/s=VALUE]...`
//! then point `[gsm] endpoint` at it with `anonymous = true`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:8085".to_owned();
    let handle = secretd_gsm_fake::Handle::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            ("--secret", Some(spec)) => match spec.split_once('=') {
                Some((name, value)) => {
                    handle.add_version(name, value.as_bytes());
                }
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("secretd-fake-gsm: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match tokio::net::TcpListener::bind(&listen).await {
            Ok(listener) => {
                eprintln!("secretd-fake-gsm: serving GSM's REST API on http://{listen}");
                secretd_gsm_fake::serve(listener, handle).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("secretd-fake-gsm: cannot listen on {listen}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn usage() -> ExitCode {
    eprintln!("usage: secretd-fake-gsm [--listen ADDR] [--secret projects/P/secrets/S=VALUE]...");
    ExitCode::from(2)
}
