//! The flood tables and the goals, as the run prints them.

use super::{Floods, SCRAPES};

/// Prints the flood tables.
pub(crate) fn print(f: &Floods) {
    println!(
        "Floods: a good client of another uid, quiet and flooded (each a process of its own)\n"
    );
    println!(
        "| flood | victim | p50 quiet | p50 flooded | p99 quiet | p99 flooded | reads/s quiet | reads/s flooded | victim errors | victim share | status answered | log lines / 20 s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &f.rows {
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} | {:.0} | {} | {} | {}/{} | {:.0} |",
            r.flood,
            r.victim,
            r.quiet.p50_us,
            r.flooded.p50_us,
            r.quiet.p99_us,
            r.flooded.p99_us,
            r.quiet.per_sec,
            r.flooded.per_sec,
            r.flooded.errors,
            r.share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            r.status.0,
            r.status.1,
            r.log_lines_per_20s,
        );
    }
    let c = &f.churned;
    println!(
        "\nreconnect-per-read bot: {} reads in {:.0} s; per 20 s: {:.0} audit records, database +{:.2} MB, {:.0} log lines",
        c.reads,
        c.seconds,
        c.records_per_20s,
        c.db_bytes_per_20s / 1e6,
        c.log_lines_per_20s
    );
    println!(
        "metrics port: {}/{SCRAPES} scrapes answered quiet, {}/{SCRAPES} under a slow-client flood\n",
        f.scrapes.quiet, f.scrapes.flooded
    );
    let mark = |met: bool| if met { "met" } else { "MISSED" };
    let row = |flood: &str| f.rows.iter().find(|r| r.flood.starts_with(flood));
    let share = row("2 uids hammering").and_then(|r| r.share);
    let connect = row("2 uids connect/close").map(|r| r.flooded.p50_us);
    println!("Flood goals (issue 30):");
    println!(
        "- victim share with three active uids >= 25%: {} ({})",
        share.map_or("?".into(), |s| format!("{:.0}%", s * 100.0)),
        mark(share.is_some_and(|s| s >= 0.25))
    );
    println!(
        "- victim connect+get p50 under a connect/close flood < 5 ms: {} ({})",
        connect.map_or("?".into(), |us| format!("{:.2} ms", us / 1000.0)),
        mark(connect.is_some_and(|us| us < 5000.0))
    );
    let status = f.rows.iter().all(|r| r.status.0 == r.status.1);
    println!(
        "- the operator's status answers under every flood: {}",
        mark(status)
    );
    println!(
        "- a 20 s reconnect-per-read loop grows the database < 2 MB: {:.2} MB ({})",
        c.db_bytes_per_20s / 1e6,
        mark(c.db_bytes_per_20s < 2e6)
    );
    let lines = f
        .rows
        .iter()
        .map(|r| r.log_lines_per_20s)
        .fold(c.log_lines_per_20s, f64::max);
    println!(
        "- a 20 s flood of any kind adds < 300 log lines: at most {lines:.0} ({})",
        mark(lines < 300.0)
    );
    println!(
        "- 19 of 20 scrapes under a slow-client flood: {}/{SCRAPES} ({})\n",
        f.scrapes.flooded,
        mark(f.scrapes.flooded >= 19)
    );
}
