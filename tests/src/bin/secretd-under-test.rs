//! The `secretd` binary, built inside this package so its tests can find it by
//! `CARGO_BIN_EXE_secretd-under-test` instead of guessing paths under target/.

fn main() -> std::process::ExitCode {
    secretd_daemon::cli::main()
}
