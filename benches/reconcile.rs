//! Reconciliation benchmark: the reference peer (a separate process) serves 1,000,000 generated
//! records; recsync first pulls them (set-up: they are all linked), then reconciles: it lists
//! every record through `list_url`, compares each with its link, and repairs what the listing
//! shows the fetches never reported: 1 % edited, 0.5 % gone, 0.5 % new. Prints records
//! compared per second, what was found, and the peak RSS of the recsync process.
//! Run with `cargo bench --bench reconcile` (RECSYNC_BENCH_RECORDS changes the size).

mod support;

use support::*;

use recsync::engine::Trigger;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"
[models.item]
fields = { name = "char", email = "char" }

[web_services.src]
url = "@PEER@/api/bulk/fetch"
confirmation_url = "@PEER@/api/bulk/confirm"
list_url = "@PEER@/api/bulk/list"

[external_models.ext]
fields = { unique_id = "char", name = "char", email = "char" }

[syncs.BULK]
model = "item"
external_model = "ext"
web_service = "src"
direction = "to_local"
every = "24h"
reconcile = "1d"
limit = 1000
propagate_deletes = true
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
    let engine = start_app(&dir.path().join("reconcile.db"), plan).await;

    // Set-up, not timed: every record pulled and linked.
    let started = Instant::now();
    let run = engine
        .start_run("BULK", Trigger::Manual, false)
        .await
        .unwrap();
    let (status, counts) = run.task.await.unwrap();
    println!(
        "reconcile benchmark: {records} linked records against the peer (own process), listing pages of 1000, file-backed SQLite"
    );
    println!(
        "  set-up pull       {status}: created {} in {:.2?}",
        counts.created,
        started.elapsed()
    );
    let rss_before = peak_rss_mib().unwrap_or(f64::NAN);

    let started = Instant::now();
    let run = engine
        .start_run("BULK", Trigger::Reconcile, true)
        .await
        .unwrap();
    let (status, counts) = run.task.await.unwrap();
    let took = started.elapsed();
    let listed = records as i64 - counts.missing + counts.extra;
    println!(
        "  reconcile run     {status}: missing {}, extra {}, different {} (deleted {}, created {}, updated {}, held {})",
        counts.missing,
        counts.extra,
        counts.different,
        counts.deleted,
        counts.created,
        counts.updated,
        counts.held
    );
    println!(
        "  compared          {:>10.0} records/s ({listed} listed and {records} links checked in {took:.2?})",
        records as f64 / took.as_secs_f64()
    );
    println!(
        "  peak RSS          {rss_before:.1} MiB after the set-up pull, {:.1} MiB overall (recsync only)",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    let _ = peer.kill();
    let _ = peer.wait();
}
