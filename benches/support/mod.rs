//! Helpers shared by the benchmark harnesses: percentiles, peak RSS, a fake in its own
//! process, and a timed run.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Starts `recsync <args>` (a fake) on a free port, given as `{port}` in the arguments, and
/// waits until `ready` (a path) answers. Answers the process and its base URL.
pub async fn spawn_fake(args: &[&str], ready: &str) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the fake");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while client.get(format!("{url}{ready}")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the fake did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, url)
}

/// One manual run of `code`: its status and counts, how long it took, and the time each page
/// took (from the run's progress), sorted.
pub async fn timed_run(
    engine: &std::sync::Arc<recsync::engine::Engine>,
    code: &str,
) -> (String, recsync::store::RunCounts, Duration, Vec<Duration>) {
    let started = Instant::now();
    let run = engine
        .start_run(code, recsync::engine::Trigger::Manual, false)
        .await
        .unwrap();
    let mut progress = run.progress.clone();
    let watcher = tokio::spawn(async move {
        let mut times = Vec::new();
        let mut last = Instant::now();
        while progress.changed().await.is_ok() {
            let now = Instant::now();
            times.push(now - last);
            last = now;
        }
        times
    });
    let (status, counts) = run.task.await.unwrap();
    let took = started.elapsed();
    let mut pages = watcher.await.unwrap();
    pages.sort();
    (status.to_string(), counts, took, pages)
}

/// The `p` quantile (0.0 to 1.0) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// This process's peak resident set size in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|kib| kib / 1024.0)
}

/// The configuration of a bench, from one mapping text.
pub fn compile(mapping: &str) -> recsync::domain::Plan {
    recsync::config::compile_texts(
        &[("bench.toml", mapping)],
        &std::collections::HashMap::<String, String>::new(),
        recsync::connectors::KINDS,
    )
    .unwrap()
}

/// The app on a file-backed SQLite at `db`, serving in the background; answers its engine.
pub async fn start_app(
    db: &std::path::Path,
    plan: recsync::domain::Plan,
) -> std::sync::Arc<recsync::engine::Engine> {
    start_app_with(db, plan, recsync::app::BuildOptions::default()).await
}

/// [`start_app`] with build options (no outbox workers: the bench drains it itself).
pub async fn start_app_with(
    db: &std::path::Path,
    plan: recsync::domain::Plan,
    opts: recsync::app::BuildOptions,
) -> std::sync::Arc<recsync::engine::Engine> {
    let settings = recsync::config::Settings {
        database_url: secrecy::SecretString::from(format!("sqlite://{}", db.display())),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let app = recsync::app::build(settings, plan, opts).await.unwrap();
    let engine = app.engine();
    tokio::spawn(app.run_until_stopped());
    engine
}
