//! The tracing subscriber, set up once: pretty or JSON lines, quiet sqlx by default; and, with
//! an OTLP endpoint, the same spans exported as OpenTelemetry traces, with W3C `traceparent`
//! continued from inbound calls and sent on outbound ones.

use crate::config::LogFormat;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// The tracer provider, when traces are exported: flushed by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How long an export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs the global subscriber. `RUST_LOG` overrides the default filter of the log lines;
/// with `otlp` (the URL spans are posted to), recsync's spans at INFO and above are exported
/// whatever the log filter.
pub fn init(format: LogFormat, otlp: Option<&str>) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,actix_server=warn,actix_web=warn,notify=warn")
    });
    // The Dropbox SDK logs every error answer at ERROR (a folder already there, which recsync
    // adopts; a 500 that the outbox retries): each is returned to recsync, which reports
    // what it means. Its own lines stay off unless RUST_LOG names it.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("dropbox_sdk")) {
        filter = filter.add_directive("dropbox_sdk=off".parse().expect("a valid directive"));
    }
    // Colour only for a person at a terminal: a log file or a collector gets plain text.
    use std::io::IsTerminal;
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Pretty => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
    .with_filter(filter);
    let mut refused = None;
    let traces = otlp.map(|url| {
        let provider = PROVIDER.get_or_init(|| {
            let (p, e) = provider(url);
            refused = e;
            p
        });
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("recsync"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(EnvFilter::new("recsync=info"))
    });
    let _ = tracing_subscriber::registry()
        .with(lines)
        .with(traces)
        .try_init();
    if let Some(url) = otlp {
        let endpoint = crate::config::settings::mask_url(url);
        match refused {
            None => tracing::info!(%endpoint, "Exporting traces over OTLP"),
            Some(e) => {
                tracing::warn!(%endpoint, error = %e, "Traces cannot be exported; syncs go on without them")
            }
        }
    }
}

/// Sends the spans still waiting, within a few seconds (blocking: run it outside the async
/// runtime, or with `spawn_blocking`).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// Whether spans are exported (and `traceparent` carried in and out).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The provider exporting to `url`, and why it exports nothing if its exporter could not be
/// made.
fn provider(url: &str) -> (SdkTracerProvider, Option<String>) {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build();
    let mut builder = SdkTracerProvider::builder();
    let mut refused = None;
    match exporter {
        Ok(exporter) => {
            builder = builder.with_batch_exporter(Counted {
                inner: exporter,
                shown: crate::config::settings::mask_url(url),
                failures: Bounded::new(60),
            });
        }
        Err(e) => refused = Some(e.to_string()),
    }
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "recsync".into());
    let provider = builder
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build();
    (provider, refused)
}

/// The OTLP exporter, with its failures counted and logged at most once a minute: an
/// unreachable collector never blocks or fails a sync (spans wait in a bounded queue on the
/// exporter's own thread, and are dropped when it is full).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    shown: String,
    failures: Bounded,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            crate::metrics::trace_export_failed(spans);
            if let Some(n) = self.failures.due() {
                tracing::warn!(endpoint = %self.shown, error = %e, failed_exports = n, "Traces could not be exported (counted in recsync_trace_export_failures_total; syncs go on; logged at most once a minute)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Continues the trace of a W3C `traceparent` (and `tracestate`) in `span`, which must not
/// have been entered yet. A malformed value is ignored: the span starts a trace of its own.
pub fn continue_from(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    if !enabled() {
        return;
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(s) = tracestate {
        carrier.insert("tracestate".to_string(), s.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    } else {
        tracing::debug!("A malformed traceparent was ignored");
    }
}

/// The W3C `traceparent` of the current span, when spans are exported.
pub fn traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// An outbound request with the current span's `traceparent`, when spans are exported.
pub fn carry(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match traceparent() {
        Some(tp) => req.header("traceparent", tp),
        None => req,
    }
}

/// Counts occurrences and says when to report them: at most once per interval, with how
/// many there were since the last report.
#[derive(Debug)]
pub struct Bounded {
    every: i64,
    since: std::sync::atomic::AtomicU64,
    last: std::sync::atomic::AtomicI64,
}

impl Bounded {
    /// At most one report every `every_secs` seconds.
    pub const fn new(every_secs: i64) -> Self {
        Bounded {
            every: every_secs,
            since: std::sync::atomic::AtomicU64::new(0),
            last: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Counts one; answers how many to report now, if it is time.
    pub fn due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let n = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = chrono::Utc::now().timestamp();
        let last = self.last.load(Ordering::Relaxed);
        (now - last >= self.every
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok())
        .then(|| {
            self.since.fetch_sub(n, Ordering::Relaxed);
            n
        })
    }
}
