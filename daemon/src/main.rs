fn main() -> std::process::ExitCode {
    secretd::cli::main()
}
