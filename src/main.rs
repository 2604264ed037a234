//! The `recsync` binary: parse the command line and hand over to the library.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    recsync::cli::run(recsync::cli::Cli::parse()).await
}
