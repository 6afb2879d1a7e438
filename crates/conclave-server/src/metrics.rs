//! Prometheus metrics: request and event counters kept in memory, state gauges read from the
//! store at scrape time.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use conclave_core::model::{AgentStatus, TaskStatus};

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    requests_2xx: AtomicU64,
    requests_4xx: AtomicU64,
    requests_5xx: AtomicU64,
    request_micros: AtomicU64,
    events: AtomicU64,
    sse_clients: AtomicU64,
    mcp_direct_calls: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, status: u16, micros: u64) {
        let counter = match status {
            500.. => &self.inner.requests_5xx,
            400.. => &self.inner.requests_4xx,
            _ => &self.inner.requests_2xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .request_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count_event(&self) {
        self.inner.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an MCP tool call answered directly (`mcp/direct.rs`), not through the SDK's
    /// per-request service.
    pub fn count_mcp_direct_call(&self) {
        self.inner.mcp_direct_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an open event stream until the guard drops.
    pub fn sse_client(&self) -> SseGuard {
        self.inner.sse_clients.fetch_add(1, Ordering::Relaxed);
        SseGuard {
            metrics: self.clone(),
        }
    }

    pub fn render(&self, state: &StateGauges) -> String {
        let c = &self.inner;
        let mut out = String::new();
        let requests = [
            ("2xx", c.requests_2xx.load(Ordering::Relaxed)),
            ("4xx", c.requests_4xx.load(Ordering::Relaxed)),
            ("5xx", c.requests_5xx.load(Ordering::Relaxed)),
        ];
        out.push_str(
            "# HELP conclave_http_requests_total HTTP requests answered, by status class.\n",
        );
        out.push_str("# TYPE conclave_http_requests_total counter\n");
        for (class, n) in requests {
            let _ = writeln!(
                out,
                "conclave_http_requests_total{{status=\"{class}\"}} {n}"
            );
        }
        let seconds = c.request_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str("# HELP conclave_http_request_seconds_total Time spent answering requests.\n");
        out.push_str("# TYPE conclave_http_request_seconds_total counter\n");
        let _ = writeln!(out, "conclave_http_request_seconds_total {seconds}");
        out.push_str("# HELP conclave_events_total Events appended to the log since start.\n");
        out.push_str("# TYPE conclave_events_total counter\n");
        let _ = writeln!(
            out,
            "conclave_events_total {}",
            c.events.load(Ordering::Relaxed)
        );
        out.push_str("# HELP conclave_event_streams Open SSE event streams.\n");
        out.push_str("# TYPE conclave_event_streams gauge\n");
        let _ = writeln!(
            out,
            "conclave_event_streams {}",
            c.sse_clients.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP conclave_mcp_direct_tool_calls_total MCP tool calls answered without the SDK's per-request service.\n",
        );
        out.push_str("# TYPE conclave_mcp_direct_tool_calls_total counter\n");
        let _ = writeln!(
            out,
            "conclave_mcp_direct_tool_calls_total {}",
            c.mcp_direct_calls.load(Ordering::Relaxed)
        );
        out.push_str("# HELP conclave_tasks Tasks by status.\n# TYPE conclave_tasks gauge\n");
        for (status, n) in &state.tasks {
            let _ = writeln!(out, "conclave_tasks{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP conclave_agents Agents by status.\n# TYPE conclave_agents gauge\n");
        for (status, n) in &state.agents {
            let _ = writeln!(out, "conclave_agents{{status=\"{status}\"}} {n}");
        }
        out.push_str(
            "# HELP conclave_leases File leases in force.\n# TYPE conclave_leases gauge\n",
        );
        let _ = writeln!(out, "conclave_leases {}", state.leases);
        out.push_str("# HELP conclave_last_event_seq Sequence number of the newest event.\n");
        out.push_str("# TYPE conclave_last_event_seq gauge\n");
        let _ = writeln!(out, "conclave_last_event_seq {}", state.last_seq);
        out
    }
}

pub struct SseGuard {
    metrics: Metrics,
}

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .sse_clients
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts read from the store for one scrape.
#[derive(Debug, Default)]
pub struct StateGauges {
    pub tasks: Vec<(TaskStatus, usize)>,
    pub agents: Vec<(AgentStatus, usize)>,
    pub leases: usize,
    pub last_seq: i64,
}
