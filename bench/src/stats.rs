//! Latency samples and the Markdown table.

use std::time::Duration;

/// One measured case.
#[derive(Debug)]
pub(crate) struct Row {
    /// The case's name, as in BENCHMARKS.md.
    pub case: String,
    /// Per-operation latencies in nanoseconds, sorted.
    pub sorted_ns: Vec<u64>,
    /// Operations completed per second (all threads together).
    pub ops_per_sec: f64,
    /// The time the operations took (wall time, or busy time for external harnesses).
    pub seconds: f64,
}

impl Row {
    /// A row from raw samples and the wall time they took.
    pub(crate) fn new(case: impl Into<String>, mut samples_ns: Vec<u64>, wall: Duration) -> Row {
        samples_ns.sort_unstable();
        let seconds = wall.as_secs_f64().max(1e-9);
        Row {
            case: case.into(),
            ops_per_sec: samples_ns.len() as f64 / seconds,
            sorted_ns: samples_ns,
            seconds,
        }
    }

    /// Pools another round of the same case into this one.
    pub(crate) fn merge(&mut self, other: Row) {
        self.sorted_ns.extend(other.sorted_ns);
        self.sorted_ns.sort_unstable();
        self.seconds += other.seconds;
        self.ops_per_sec = self.sorted_ns.len() as f64 / self.seconds;
    }

    /// The `q` quantile (0..=1) in microseconds, nearest-rank.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.sorted_ns.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.sorted_ns.len() as f64).ceil() as usize).clamp(1, self.sorted_ns.len());
        self.sorted_ns[rank - 1] as f64 / 1000.0
    }
}

/// The raw case a row is compared with: the ping-pong with as many clients (`... x16` against
/// `raw-uds-pingpong x16`), a connect-per-read row against `raw-connect+pingpong`, anything
/// else against the single-client ping-pong.
pub(crate) fn baseline_name(case: &str) -> String {
    if case.contains("connect+") {
        return "raw-connect+pingpong".into();
    }
    match case.rsplit_once(" x") {
        Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            format!("raw-uds-pingpong x{n}")
        }
        _ => "raw-uds-pingpong".into(),
    }
}

/// Prints the rows as a Markdown table with each row's p50 and throughput against its raw
/// baseline ([`baseline_name`]; the single-client ping-pong when that one did not run).
pub(crate) fn print_table(rows: &[Row], baseline: &Row) {
    println!("| case | p50 µs | p99 µs | p99.9 µs | ops/s | p50 vs raw | ops/s vs raw |");
    println!("|------|-------:|-------:|---------:|------:|-----------:|-------------:|");
    for row in rows {
        let name = baseline_name(&row.case);
        let raw = rows.iter().find(|r| r.case == name).unwrap_or(baseline);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2}× | {:.2}× |",
            row.case,
            row.quantile_us(0.50),
            row.quantile_us(0.99),
            row.quantile_us(0.999),
            row.ops_per_sec,
            row.quantile_us(0.50) / raw.quantile_us(0.50),
            row.ops_per_sec / raw.ops_per_sec,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let row = Row::new(
            "x",
            (1..=1000).map(|n| n * 1000).collect(),
            Duration::from_secs(1),
        );
        assert_eq!(row.quantile_us(0.5), 500.0);
        assert_eq!(row.quantile_us(0.99), 990.0);
        assert_eq!(row.quantile_us(0.999), 999.0);
        assert_eq!(row.ops_per_sec, 1000.0);
    }

    #[test]
    fn rows_are_compared_with_the_raw_case_of_their_shape() {
        assert_eq!(baseline_name("rust-client-get x16"), "raw-uds-pingpong x16");
        assert_eq!(baseline_name("raw-uds-pingpong x4"), "raw-uds-pingpong x4");
        assert_eq!(baseline_name("rust-client-get"), "raw-uds-pingpong");
        assert_eq!(
            baseline_name("rust-connect+get (new connection each read)"),
            "raw-connect+pingpong"
        );
        assert_eq!(
            baseline_name("python-async-get (executor, before)"),
            "raw-uds-pingpong"
        );
    }
}
