//! What one benchmark run measured, and how it is printed.

use std::time::Duration;

/// Counts and latencies of one run of one driver (HTTP or pgbench).
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Booking decisions made (confirmed or sold out).
    pub attempts: u64,
    /// Reservations created (counted in the database).
    pub reservations: u64,
    /// Answers other than 201 and 409 (should be zero).
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of each attempt in microseconds, unsorted.
    pub latencies_us: Vec<u32>,
}

impl RunStats {
    /// Adds the counts and latencies of one client's run (the elapsed time is the caller's).
    pub fn add(&mut self, client: RunStats) {
        self.attempts += client.attempts;
        self.reservations += client.reservations;
        self.errors += client.errors;
        self.latencies_us.extend(client.latencies_us);
    }

    pub fn attempts_per_second(&self) -> f64 {
        self.attempts as f64 / self.elapsed.as_secs_f64()
    }

    pub fn reservations_per_second(&self) -> f64 {
        self.reservations as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0 to 1) of the latencies, in milliseconds.
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }
}

/// The header of the results table.
pub fn header() -> String {
    format!(
        "{:<9} {:<11} {:>7} {:>7} {:>11} {:>14} {:>8} {:>8} {:>6}",
        "workload", "driver", "clients", "seconds", "attempts/s", "reservations/s", "p50 ms", "p99 ms", "errors"
    )
}

/// One row of the results table.
pub fn row(workload: &str, driver: &str, clients: usize, stats: &mut RunStats) -> String {
    format!(
        "{:<9} {:<11} {:>7} {:>7.1} {:>11.0} {:>14.0} {:>8.2} {:>8.2} {:>6}",
        workload,
        driver,
        clients,
        stats.elapsed.as_secs_f64(),
        stats.attempts_per_second(),
        stats.reservations_per_second(),
        stats.latency_ms(0.5),
        stats.latency_ms(0.99),
        stats.errors
    )
}
