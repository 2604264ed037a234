//! The `recsync` binary: parse the command line and hand over to the library.

use clap::Parser;

/// mimalloc: the apply path and HTTP handling allocate many small values; glibc's allocator
/// was a tenth of the real-time benchmark's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let code = recsync::cli::run(recsync::cli::Cli::parse()).await;
    // Spans still waiting go to the OTLP endpoint (within a few seconds).
    let _ = tokio::task::spawn_blocking(recsync::telemetry::shutdown).await;
    code
}
