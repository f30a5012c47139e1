//! Loads a credential from secretd's credentials socket as systemd 252 does for
//! `LoadCredential=ID:SOCKET` (`secretd_gsm_fake::systemd_credentials`).
//!
//! Usage: `secretd-credential-load SOCKET UNIT ID [CGROUP_PROCS]`. With CGROUP_PROCS (a
//! `cgroup.procs` file) it first moves itself there, as systemd runs its helper in the unit's
//! cgroup. Prints `ok LEN TEXT` (the value, which tests choose), `too-large LEN` (systemd would
//! fail the start: 243/CREDENTIALS), `empty`, or `error WHY`.

use std::path::Path;
use std::process::ExitCode;

use secretd_gsm_fake::systemd_credentials::{CREDENTIAL_SIZE_MAX, load_credential};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, unit, id, rest @ ..] = args.as_slice() else {
        eprintln!("usage: secretd-credential-load SOCKET UNIT ID [CGROUP_PROCS]");
        return ExitCode::from(2);
    };
    if let Some(procs) = rest.first()
        && let Err(e) = std::fs::write(procs, std::process::id().to_string())
    {
        println!("error cannot join {procs}: {e}");
        return ExitCode::from(1);
    }
    match load_credential(Path::new(socket), unit, id) {
        Ok(data) if data.len() > CREDENTIAL_SIZE_MAX => println!("too-large {}", data.len()),
        Ok(data) if data.is_empty() => println!("empty"),
        Ok(data) => println!("ok {} {}", data.len(), String::from_utf8_lossy(&data)),
        Err(e) => {
            println!("error {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
