//! Latency samples and the Markdown table.

use std::time::Duration;

/// One measured case.
#[derive(Debug)]
pub struct Row {
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
    pub fn new(case: impl Into<String>, mut samples_ns: Vec<u64>, wall: Duration) -> Row {
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
    pub fn merge(&mut self, other: Row) {
        self.sorted_ns.extend(other.sorted_ns);
        self.sorted_ns.sort_unstable();
        self.seconds += other.seconds;
        self.ops_per_sec = self.sorted_ns.len() as f64 / self.seconds;
    }

    /// The `q` quantile (0..=1) in microseconds, nearest-rank.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.sorted_ns.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.sorted_ns.len() as f64).ceil() as usize).clamp(1, self.sorted_ns.len());
        self.sorted_ns[rank - 1] as f64 / 1000.0
    }
}

/// Prints the rows as a Markdown table with each row's p50 and throughput against `baseline`.
pub fn print_table(rows: &[Row], baseline: &Row, baseline_x4: Option<&Row>) {
    println!("| case | p50 µs | p99 µs | p99.9 µs | ops/s | p50 vs raw | ops/s vs raw |");
    println!("|------|-------:|-------:|---------:|------:|-----------:|-------------:|");
    for row in rows {
        let raw = if row.case.ends_with("x4") {
            baseline_x4.unwrap_or(baseline)
        } else {
            baseline
        };
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
}
