//! `secretd` built with the bench's knobs (feature `bench-knobs`): `SECRETD_BENCH_ATTRIBUTION=off`
//! reads without the writers' credentials, so `secretd-bench --only attribution` can measure
//! what attribution costs in the same build and the same run. Never installed.

fn main() -> std::process::ExitCode {
    secretd_daemon::enable_bench_knobs();
    secretd_daemon::cli::main()
}
