//! Pull benchmark: the reference peer (a separate process, serving generated records) holds
//! 1,000,000 records; recsync pulls them with `limit = 1000` and confirmations into a
//! file-backed SQLite, then pushes 100,000 locally changed records back. Prints records/s,
//! pages/s, pushes/s and peak RSS of the recsync process.
//! Run with `cargo bench --bench pull` (RECSYNC_BENCH_RECORDS and RECSYNC_BENCH_PUSHES change
//! the sizes).

mod support;

use support::*;

use recsync::engine::Trigger;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"
[models.item]
fields = { name = "char", email = "char", changed = "boolean" }

[web_services.src]
url = "@PEER@/api/bulk/fetch"
confirmation_url = "@PEER@/api/bulk/confirm"

[web_services.dst]
shipping_url = "@PEER@/api/sink/ship"
max_concurrency = 64

[external_models.ext]
fields = { unique_id = "char", name = "char", email = "char" }

[syncs.BULK]
model = "item"
external_model = "ext"
web_service = "src"
direction = "to_local"
every = "24h"
limit = 1000
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[syncs.BACK]
model = "item"
external_model = "ext"
web_service = "dst"
direction = "to_external"
every = "24h"
limit = 1000
domain = [["changed", "=", true]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let records: u64 = std::env::var("RECSYNC_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let pushes: usize = std::env::var("RECSYNC_BENCH_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer_url = format!("http://127.0.0.1:{port}");
    let mut peer = std::process::Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "peer",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--synthetic",
            &format!("bulk={records}"),
            "--synthetic",
            "sink=0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the peer");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{peer_url}/peer/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the peer did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mapping = MAPPING.replace("@PEER@", &peer_url);
    let plan = compile(&mapping);
    let engine = start_app(&dir.path().join("pull.db"), plan).await;

    // Pull.
    let started = Instant::now();
    let run = engine
        .start_run("BULK", Trigger::Manual, false)
        .await
        .unwrap();
    let (status, counts) = run.task.await.unwrap();
    let pull_time = started.elapsed();
    let pages = records.div_ceil(1000) + 1;
    let rss_after_pull = peak_rss_mib().unwrap_or(f64::NAN);
    println!(
        "pull benchmark: {records} records from the peer, limit 1000, confirmations, file-backed SQLite"
    );
    println!(
        "  run               {status}: pulled {}, created {}, failed {}",
        counts.pulled, counts.created, counts.failed
    );
    println!(
        "  pull              {:>10.0} records/s, {:.1} pages/s ({pages} pages in {pull_time:.2?})",
        counts.pulled as f64 / pull_time.as_secs_f64(),
        pages as f64 / pull_time.as_secs_f64()
    );
    println!(
        "  peak RSS          {rss_after_pull:.1} MiB after the pull (recsync only; the peer runs in its own process)"
    );

    // Change records locally (set-up, not timed), then push them.
    let mut changed = 0usize;
    let mut after = 0;
    while changed < pushes {
        let page = engine
            .store
            .list_records("item", after, 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        let rows: Vec<(i64, serde_json::Map<String, Value>)> = page
            .iter()
            .take(pushes - changed)
            .map(|r| {
                let mut v = r.values.clone();
                v.insert("changed".into(), json!(true));
                (r.id, v)
            })
            .collect();
        let mut tx = engine.store.begin().await.unwrap();
        tx.update_records("item", &rows).await.unwrap();
        tx.commit().await.unwrap();
        changed += rows.len();
    }
    let started = Instant::now();
    let run = engine
        .start_run("BACK", Trigger::Manual, false)
        .await
        .unwrap();
    let (status, counts) = run.task.await.unwrap();
    let push_time = started.elapsed();
    let stats: Value = client
        .get(format!("{peer_url}/peer/sink/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "  push run          {status}: pushed {} of {changed} changed records (the peer received {})",
        counts.pushed, stats["shipped"]
    );
    println!(
        "  push              {:>10.0} pushes/s ({push_time:.2?})",
        counts.pushed as f64 / push_time.as_secs_f64()
    );
    println!(
        "  peak RSS          {:.1} MiB overall",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    let _ = peer.kill();
    let _ = peer.wait();
}
