fn main() -> std::process::ExitCode {
    secretd_daemon::cli::main()
}
