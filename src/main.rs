//! The `recsync` binary: parse the command line and hand over to the library.

use clap::Parser;

/// mimalloc: the apply path and HTTP handling allocate many small values; glibc's allocator
/// was a tenth of the real-time benchmark's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    recsync::cli::run(recsync::cli::Cli::parse()).await
}
