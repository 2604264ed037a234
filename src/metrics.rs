//! Prometheus metrics: one process-wide recorder (the `metrics` facade), rendered at
//! `/metrics`. Counters and histograms are recorded where things happen; the outbox gauges are
//! read from the store at scrape time, so every instance sharing a database reports the same
//! depth.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("Another metrics recorder is installed; /metrics will be empty");
        }
        metrics::describe_counter!(
            "recsync_changes_total",
            "Change-control rows by sync, direction and status"
        );
        metrics::describe_counter!(
            "recsync_runs_total",
            "Finished sync runs by sync and status"
        );
        metrics::describe_histogram!(
            "recsync_run_duration_seconds",
            metrics::Unit::Seconds,
            "How long sync runs took"
        );
        metrics::describe_counter!(
            "recsync_http_requests_total",
            "HTTP requests by method, route template and status"
        );
        metrics::describe_histogram!(
            "recsync_http_request_duration_seconds",
            metrics::Unit::Seconds,
            "HTTP request latency by method and route template"
        );
        metrics::describe_gauge!(
            "recsync_outbox_entries",
            "Outbox entries by sync and status (pending, inflight, dead)"
        );
        metrics::describe_gauge!(
            "recsync_outbox_oldest_age_seconds",
            metrics::Unit::Seconds,
            "Age of the oldest undelivered outbox entry, by sync"
        );
        metrics::describe_counter!(
            "recsync_refused_keys_total",
            "Requests refused for a missing or unknown key, by route group and reason"
        );
        metrics::describe_counter!(
            "recsync_dropbox_notifications_total",
            "Dropbox webhook notifications by web service and outcome"
        );
        metrics::describe_counter!(
            "recsync_dropbox_loops_total",
            "Dropbox listing loops (list_folder or continue until has_more is false) by sync"
        );
        metrics::describe_histogram!(
            "recsync_dropbox_cursor_lag_seconds",
            metrics::Unit::Seconds,
            "From a Dropbox notification to the end of the loop that took its changes in"
        );
        metrics::describe_gauge!(
            "recsync_dropbox_cursor_updated_timestamp_seconds",
            "When each Dropbox sync's cursor last caught up with Dropbox (Unix time)"
        );
        metrics::describe_counter!(
            "recsync_scheduler_restarts_total",
            "Times the scheduler's watchdog stepped in, by cause (stalled_ticker, hung_tick, panic)"
        );
        metrics::describe_counter!(
            "recsync_trace_export_failures_total",
            "Spans that could not be exported to the OTLP endpoint (dropped; syncs go on)"
        );
        metrics::describe_gauge!(
            "recsync_sync_overdue_seconds",
            metrics::Unit::Seconds,
            "How far past its due time each scheduled sync is (0 when on time)"
        );
        handle
    })
}

/// Counts a step of the scheduler's watchdog.
pub fn scheduler_restart(cause: &'static str) {
    metrics::counter!("recsync_scheduler_restarts_total", "cause" => cause).increment(1);
}

/// Sets each scheduled sync's overdue gauge: its seconds past due in `overdue`, else 0.
pub fn overdue(overdue: &[(String, f64)], scheduled: &[String]) {
    for sync in scheduled {
        let late = overdue
            .iter()
            .find(|(s, _)| s == sync)
            .map(|(_, l)| *l)
            .unwrap_or(0.0);
        metrics::gauge!("recsync_sync_overdue_seconds", "sync" => sync.clone()).set(late);
    }
}

/// Counts a change-control row.
pub fn change(sync: &str, direction: &str, status: &str) {
    metrics::counter!(
        "recsync_changes_total",
        "sync" => sync.to_string(),
        "direction" => direction.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
}

/// Counts a request refused for its key (`missing` or `unknown`). Such requests write no
/// change-control row, so anonymous traffic cannot grow the log.
pub fn refused_key(route: &'static str, reason: &'static str) {
    metrics::counter!("recsync_refused_keys_total", "route" => route, "reason" => reason)
        .increment(1);
}

/// Counts a `/sync` call refused for its Standard Webhooks signature.
pub fn refused_signature(sync: &str, reason: &'static str) {
    metrics::counter!("recsync_refused_signatures_total", "sync" => sync.to_string(), "reason" => reason)
        .increment(1);
}

/// Counts spans an OTLP export failed to deliver.
pub fn trace_export_failed(spans: u64) {
    metrics::counter!("recsync_trace_export_failures_total").increment(spans);
}

/// Records a finished run.
pub fn run_finished(sync: &str, status: &str, seconds: f64) {
    metrics::counter!("recsync_runs_total", "sync" => sync.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("recsync_run_duration_seconds", "sync" => sync.to_string(), "status" => status.to_string())
        .record(seconds);
}

/// Records an answered HTTP request (`route` is the template, such as `/sync/{code}/create`).
pub fn http_request(method: &str, route: &str, status: u16, seconds: f64) {
    metrics::counter!(
        "recsync_http_requests_total",
        "method" => method.to_string(),
        "route" => route.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "recsync_http_request_duration_seconds",
        "method" => method.to_string(),
        "route" => route.to_string()
    )
    .record(seconds);
}

/// Sets the outbox gauges from the store's figures: `(sync, status, count, oldest age)`.
pub fn outbox(rows: &[(String, String, i64, Option<f64>)], syncs: &[String]) {
    for sync in syncs {
        for status in ["pending", "inflight", "dead"] {
            let n = rows
                .iter()
                .find(|r| &r.0 == sync && r.1 == status)
                .map(|r| r.2)
                .unwrap_or(0);
            metrics::gauge!("recsync_outbox_entries", "sync" => sync.clone(), "status" => status)
                .set(n as f64);
        }
        let oldest = rows
            .iter()
            .filter(|r| &r.0 == sync && r.1 != "dead")
            .filter_map(|r| r.3)
            .fold(0.0, f64::max);
        metrics::gauge!("recsync_outbox_oldest_age_seconds", "sync" => sync.clone()).set(oldest);
    }
}

/// Counts a webhook notification by the web service's kind and what became of it
/// (`started`, `coalesced`, `bad_signature`, `bad_token`, `unknown_service`). Dropbox's are
/// also counted under their original name.
pub fn notification(kind: &str, web_service: &str, outcome: &'static str) {
    metrics::counter!(
        "recsync_webhook_notifications_total",
        "kind" => kind.to_string(),
        "web_service" => web_service.to_string(),
        "outcome" => outcome
    )
    .increment(1);
    if kind == "dropbox" {
        metrics::counter!(
            "recsync_dropbox_notifications_total",
            "web_service" => web_service.to_string(),
            "outcome" => outcome
        )
        .increment(1);
    }
}

/// Records a finished Dropbox listing loop: how many entries it read, and how far behind
/// Dropbox the mirror was (from the first notification it answers to the end of the loop).
pub fn dropbox_loop(sync: &str, entries: u64, lag_seconds: Option<f64>) {
    metrics::counter!("recsync_dropbox_loops_total", "sync" => sync.to_string()).increment(1);
    metrics::counter!("recsync_dropbox_entries_total", "sync" => sync.to_string())
        .increment(entries);
    if let Some(lag) = lag_seconds {
        metrics::histogram!("recsync_dropbox_cursor_lag_seconds", "sync" => sync.to_string())
            .record(lag);
    }
    metrics::gauge!("recsync_dropbox_cursor_updated_timestamp_seconds", "sync" => sync.to_string())
        .set(chrono::Utc::now().timestamp() as f64);
}
