//! Latency samples turned into the figures a run reports: percentiles, rate, and ratios to the
//! HTTP floor (`/healthz`) of the same run.

use std::time::Duration;

use serde::Serialize;

/// One operation's figures in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct OperationStats {
    /// What was asked (`claim`, `send`, `healthz`, `mcp send`, …).
    pub operation: String,
    /// Requests that were answered (every request of a phase must succeed, or the run fails).
    pub requests: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Answers per second over the phase's wall-clock time (the phase runs this operation
    /// alone unless it is a mixed run, where it is this operation's share).
    pub per_sec: f64,
    /// The `/healthz` p50 measured right after this operation's phase, when it was measured
    /// (the one-client phases): the floor its `p50_to_floor` is taken against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_p50_ms: Option<f64>,
    /// p50 divided by the `/healthz` p50 at the same concurrency: the floor measured next to
    /// this phase when there is one (`floor_p50_ms`), else the run's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_to_floor: Option<f64>,
    /// Rate divided by the `/healthz` rate of the same run at the same concurrency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_to_floor: Option<f64>,
    /// The server process's CPU time (user + system) per request, in milliseconds, when the
    /// phase ran this operation alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ms: Option<f64>,
}

impl OperationStats {
    /// The figures of `latencies` (in any order) answered within `elapsed`.
    pub fn from_latencies(
        operation: &str,
        mut latencies: Vec<Duration>,
        elapsed: Duration,
    ) -> OperationStats {
        latencies.sort();
        let ms = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            latencies[index].as_secs_f64() * 1000.0
        };
        OperationStats {
            operation: operation.to_string(),
            requests: latencies.len(),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
            per_sec: latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            floor_p50_ms: None,
            p50_to_floor: None,
            rate_to_floor: None,
            server_cpu_ms: None,
        }
    }

    /// Fills in the ratios to `floor`, measured at the same concurrency.
    pub fn against(mut self, floor: &OperationStats) -> OperationStats {
        let floor_p50 = self.floor_p50_ms.unwrap_or(floor.p50_ms);
        if floor_p50 > 0.0 {
            self.p50_to_floor = Some(self.p50_ms / floor_p50);
        }
        if floor.per_sec > 0.0 {
            self.rate_to_floor = Some(self.per_sec / floor.per_sec);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let stats = OperationStats::from_latencies("x", samples, Duration::from_secs(2));
        assert_eq!(stats.requests, 100);
        assert_eq!(stats.p50_ms.round(), 51.0);
        assert_eq!(stats.p90_ms.round(), 90.0);
        assert_eq!(stats.p99_ms.round(), 99.0);
        assert_eq!(stats.max_ms.round(), 100.0);
        assert_eq!(stats.per_sec, 50.0);
    }

    #[test]
    fn ratios_are_against_the_floor() {
        let floor = OperationStats::from_latencies("healthz", vec![ms(1); 10], ms(10));
        let send = OperationStats::from_latencies("send", vec![ms(3); 10], ms(40)).against(&floor);
        assert_eq!(send.p50_to_floor, Some(3.0));
        assert_eq!(send.rate_to_floor, Some(0.25));
    }

    #[test]
    fn no_samples_give_zeros_not_a_panic() {
        let stats = OperationStats::from_latencies("x", Vec::new(), ms(1));
        assert_eq!(stats.requests, 0);
        assert_eq!(stats.max_ms, 0.0);
    }
}
