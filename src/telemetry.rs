//! The tracing subscriber, set up once: pretty or JSON lines, quiet sqlx by default.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
