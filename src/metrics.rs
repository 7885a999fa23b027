//! The bridge's counters and histograms, and their Prometheus text exposition.
//!
//! Everything is a process-wide atomic: recording is a handful of relaxed atomic adds on
//! the per-turn path, with no lock and no allocation. Histograms use fixed buckets on a
//! 1-2-5 series from 10 µs to 1000 s (a reader interpolates percentiles within a bucket).
//! The exposition format is simple enough to write by hand (no client library).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram buckets, in microseconds (the last bucket is +Inf).
pub const BUCKET_BOUNDS_US: [u64; 25] = [
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
];

pub struct Histogram {
    buckets: [AtomicU64; BUCKET_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKET_BOUNDS_US.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: Duration) {
        let us = value.as_micros().min(u128::from(u64::MAX)) as u64;
        let index = BUCKET_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKET_BOUNDS_US.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn expose(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BUCKET_BOUNDS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.buckets[BUCKET_BOUNDS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a turn failed, as a metric label.
pub const FAILURE_REASONS: [&str; 7] = [
    "agent_unavailable",
    "agent_died",
    "timeout",
    "shutting_down",
    "client_gone",
    "bad_answer",
    "permission_blocked",
];

pub struct Metrics {
    pub turns_completed: Counter,
    pub turns_failed: [Counter; FAILURE_REASONS.len()],
    pub turns_rejected_queue_full: Counter,
    pub turns_rejected_at_capacity: Counter,
    pub turn_duration: Histogram,
    /// Request parsed → turn frame written, for turns served by a ready process.
    pub bridge_inbound: Histogram,
    /// Final reply frame read → last SSE byte written (or the JSON response sent).
    pub bridge_outbound: Histogram,
    pub spawns: Counter,
    pub respawns: Counter,
    pub evictions: Counter,
    pub idle_kills: Counter,
    pub worker_panics: Counter,
    pub heartbeats: Counter,
    pub channel_refused: Counter,
    pub retries_attached: Counter,
    pub standbys_adopted: Counter,
    pub standbys_resumed: Counter,
    pub standby_resume_failures: Counter,
    pub deliveries_confirmed: Counter,
    pub delivery_retries: Counter,
    pub delivery_failures: Counter,
    /// Tool-permission questions relayed to a client (`permission_relay = chat`).
    pub permission_questions: Counter,
    /// Permission verdicts sent to claude: allowed, denied (by a person, by policy, or because
    /// another message came first), and the questions that timed out (also denied).
    pub permission_allowed: Counter,
    pub permission_denied: Counter,
    pub permission_timed_out: Counter,
    /// Client tool calls returned to clients as `tool_calls`, results sent back to claude,
    /// and suspended turns whose tool results never came (docs/CLIENT_TOOLS.md).
    pub client_tool_calls: Counter,
    pub client_tool_results: Counter,
    pub client_tool_timeouts: Counter,
}

pub static METRICS: Metrics = Metrics {
    turns_completed: Counter::new(),
    turns_failed: [const { Counter::new() }; FAILURE_REASONS.len()],
    turns_rejected_queue_full: Counter::new(),
    turns_rejected_at_capacity: Counter::new(),
    turn_duration: Histogram::new(),
    bridge_inbound: Histogram::new(),
    bridge_outbound: Histogram::new(),
    spawns: Counter::new(),
    respawns: Counter::new(),
    evictions: Counter::new(),
    idle_kills: Counter::new(),
    worker_panics: Counter::new(),
    heartbeats: Counter::new(),
    channel_refused: Counter::new(),
    retries_attached: Counter::new(),
    standbys_adopted: Counter::new(),
    standbys_resumed: Counter::new(),
    standby_resume_failures: Counter::new(),
    deliveries_confirmed: Counter::new(),
    delivery_retries: Counter::new(),
    delivery_failures: Counter::new(),
    permission_questions: Counter::new(),
    permission_allowed: Counter::new(),
    permission_denied: Counter::new(),
    permission_timed_out: Counter::new(),
    client_tool_calls: Counter::new(),
    client_tool_results: Counter::new(),
    client_tool_timeouts: Counter::new(),
};

pub fn failed(reason: &str) {
    if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == reason) {
        METRICS.turns_failed[i].inc();
    }
}

/// Gauges the registry reports at scrape time.
pub struct Gauges {
    pub sessions_by_state: Vec<(&'static str, usize)>,
    pub queued_turns: usize,
    pub processes: usize,
    /// Standby workers (started ahead, not yet taken by a conversation), by phase or not.
    pub standby: usize,
}

/// The Prometheus text exposition (format 0.0.4).
pub fn expose(gauges: &Gauges) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(8 * 1024);
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        &mut out,
        "synthesis_turns_completed_total",
        "Turns that ended with a reply.",
        m.turns_completed.get(),
    );
    let _ = writeln!(
        out,
        "# HELP synthesis_turns_failed_total Turns that ended in an error, by reason."
    );
    let _ = writeln!(out, "# TYPE synthesis_turns_failed_total counter");
    for (reason, c) in FAILURE_REASONS.iter().zip(&m.turns_failed) {
        let _ = writeln!(
            out,
            "synthesis_turns_failed_total{{reason=\"{reason}\"}} {}",
            c.get()
        );
    }
    let _ = writeln!(
        out,
        "# HELP synthesis_turns_rejected_total Requests refused before queueing, by reason."
    );
    let _ = writeln!(out, "# TYPE synthesis_turns_rejected_total counter");
    let _ = writeln!(
        out,
        "synthesis_turns_rejected_total{{reason=\"queue_full\"}} {}",
        m.turns_rejected_queue_full.get()
    );
    let _ = writeln!(
        out,
        "synthesis_turns_rejected_total{{reason=\"at_capacity\"}} {}",
        m.turns_rejected_at_capacity.get()
    );
    counter(
        &mut out,
        "synthesis_spawns_total",
        "claude processes started.",
        m.spawns.get(),
    );
    counter(
        &mut out,
        "synthesis_respawns_total",
        "Starts of a session that had a process before.",
        m.respawns.get(),
    );
    counter(
        &mut out,
        "synthesis_evictions_total",
        "Idle sessions stopped to make room at max_processes.",
        m.evictions.get(),
    );
    counter(
        &mut out,
        "synthesis_idle_kills_total",
        "Processes stopped after idle_kill.",
        m.idle_kills.get(),
    );
    counter(
        &mut out,
        "synthesis_worker_panics_total",
        "Session workers that panicked (their turns failed; the session started again).",
        m.worker_panics.get(),
    );
    counter(
        &mut out,
        "synthesis_heartbeats_total",
        "Empty-content heartbeat chunks sent.",
        m.heartbeats.get(),
    );
    counter(
        &mut out,
        "synthesis_channel_refused_total",
        "Channel connections refused (token, spawn id, frame).",
        m.channel_refused.get(),
    );
    counter(
        &mut out,
        "synthesis_retries_attached_total",
        "Resent turns attached to the running or just-finished turn instead of being sent again.",
        m.retries_attached.get(),
    );
    counter(
        &mut out,
        "synthesis_deliveries_confirmed_total",
        "Turns seen in claude's transcript before any reply.",
        m.deliveries_confirmed.get(),
    );
    counter(
        &mut out,
        "synthesis_delivery_retries_total",
        "Turns pushed a second time.",
        m.delivery_retries.get(),
    );
    counter(
        &mut out,
        "synthesis_delivery_failures_total",
        "Turns claude never took in after two pushes.",
        m.delivery_failures.get(),
    );
    counter(
        &mut out,
        "synthesis_permission_questions_total",
        "Tool-permission questions relayed to a client (permission_relay = chat).",
        m.permission_questions.get(),
    );
    let _ = writeln!(
        out,
        "# HELP synthesis_permission_verdicts_total Permission verdicts sent to claude, by outcome (timed_out ones were denied)."
    );
    let _ = writeln!(out, "# TYPE synthesis_permission_verdicts_total counter");
    for (outcome, c) in [
        ("allowed", &m.permission_allowed),
        ("denied", &m.permission_denied),
        ("timed_out", &m.permission_timed_out),
    ] {
        let _ = writeln!(
            out,
            "synthesis_permission_verdicts_total{{outcome=\"{outcome}\"}} {}",
            c.get()
        );
    }
    counter(
        &mut out,
        "synthesis_client_tool_calls_total",
        "Client tool calls Claude made, returned to clients as tool_calls.",
        m.client_tool_calls.get(),
    );
    counter(
        &mut out,
        "synthesis_client_tool_results_total",
        "Client tool results sent back to claude.",
        m.client_tool_results.get(),
    );
    counter(
        &mut out,
        "synthesis_client_tool_timeouts_total",
        "Suspended turns whose client tool results did not come within tool_result_timeout.",
        m.client_tool_timeouts.get(),
    );
    let histograms: [(&str, &str, &Histogram); 3] = [
        (
            "synthesis_turn_duration_seconds",
            "Request parsed to turn end.",
            &m.turn_duration,
        ),
        (
            "synthesis_bridge_inbound_seconds",
            "Bridge's own time: request parsed to turn frame written (warm turns).",
            &m.bridge_inbound,
        ),
        (
            "synthesis_bridge_outbound_seconds",
            "Bridge's own time: final reply frame read to last response byte.",
            &m.bridge_outbound,
        ),
    ];
    for (name, help, h) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        h.expose(&mut out, name, "");
    }
    let _ = writeln!(
        out,
        "# HELP synthesis_sessions Sessions by state.\n# TYPE synthesis_sessions gauge"
    );
    for (state, n) in &gauges.sessions_by_state {
        let _ = writeln!(out, "synthesis_sessions{{state=\"{state}\"}} {n}");
    }
    let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        &mut out,
        "synthesis_queued_turns",
        "Turns accepted and not finished, across sessions.",
        gauges.queued_turns,
    );
    gauge(
        &mut out,
        "synthesis_processes",
        "Live claude processes.",
        gauges.processes,
    );
    gauge(
        &mut out,
        "synthesis_standby_sessions",
        "Standby sessions: claude started ahead for new conversations (counted in synthesis_processes once started).",
        gauges.standby,
    );
    counter(
        &mut out,
        "synthesis_standbys_adopted_total",
        "Conversations whose turn went to a standby process (new ones, and returning ones that resumed there).",
        m.standbys_adopted.get(),
    );
    counter(
        &mut out,
        "synthesis_standbys_resumed_total",
        "Returning conversations resumed in a standby process with /resume (standby_resume).",
        m.standbys_resumed.get(),
    );
    counter(
        &mut out,
        "synthesis_standby_resume_failures_total",
        "Standbys that did not switch to a returning conversation; claude was started with --resume instead.",
        m.standby_resume_failures.get(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_cumulative_and_well_formed() {
        let h = Histogram::new();
        h.record(Duration::from_micros(5));
        h.record(Duration::from_secs(5000));
        let mut out = String::new();
        h.expose(&mut out, "x_seconds", "");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00001\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("x_seconds_count 2\n"));
    }
}
