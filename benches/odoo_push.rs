//! Odoo push benchmark: the outbox delivering updates to the fake Odoo (`recsync fake-odoo`, a
//! separate process), with the read before sending (conflicts on send: one `search_read` by
//! ids per batch) and, for comparison, without it (a sync that only sends, which does not
//! read). The fake holds 20,000 partners, pulled and linked first by a `to_local` sync; each
//! partner is then renamed here, and the outbox delivers the renames, a batch of up to 256 at a
//! time (`write` per record). Prints updates/s, the batch latency percentiles, the Odoo calls
//! made, and the peak RSS. Run with `cargo bench --bench odoo_push`
//! (RECSYNC_BENCH_RECORDS changes the size).

mod support;

use support::*;

use recsync::engine::{LocalOp, Outcome, Trigger};
use serde_json::json;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"
[models.partner]
[models.partner.fields]
name  = { type = "char", required = true }
email = "char"

[web_services.erp]
kind = "odoo"
url = "@ODOO@"
database = "fake"
login = "admin"
api_key = "fake-odoo-api-key-0123456789"
protocol = "json2"

[external_models.odoo_partner]
kind = "odoo"
odoo_model = "res.partner"
fields = { name = "char", email = "char" }

[syncs.PULL]
model = "partner"
external_model = "odoo_partner"
web_service = "erp"
direction = "to_local"
every = "24h"
limit = 1000
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[syncs.PUSH]
model = "partner"
external_model = "odoo_partner"
web_service = "erp"
direction = "@DIRECTION@"
mode = "realtime"
priority = "external"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let records: usize = std::env::var("RECSYNC_BENCH_RECORDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        println!(
            "odoo push benchmark: {records} res.partner updates delivered by the outbox to the fake Odoo (own process), JSON-2, file-backed SQLite"
        );
        for (label, direction) in [
            ("with the read before sending", "bidirectional"),
            ("without it (to_external)", "to_external"),
        ] {
            run(records, label, direction).await;
        }
        println!(
            "  peak RSS          {:.1} MiB overall (recsync only)",
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    });
}

async fn run(records: usize, label: &str, direction: &str) {
    let dir = tempfile::tempdir().unwrap();
    let partners = records.to_string();
    let (mut odoo, odoo_url) = spawn_fake(
        &[
            "fake-odoo",
            "--listen",
            "127.0.0.1:{port}",
            "--partners",
            &partners,
        ],
        "/web/version",
    )
    .await;
    let mapping = MAPPING
        .replace("@ODOO@", &odoo_url)
        .replace("@DIRECTION@", direction);
    let engine = start_app_with(
        &dir.path().join("push.db"),
        compile(&mapping),
        recsync::app::BuildOptions {
            no_workers: true,
            no_scheduler: true,
            ..Default::default()
        },
    )
    .await;
    let run = engine
        .start_run("PULL", Trigger::Manual, false)
        .await
        .unwrap();
    let (status, counts) = run.task.await.unwrap();
    assert_eq!(status, "success");
    let ids: Vec<i64> = engine
        .store
        .records_after("partner", 0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), counts.created as usize);
    // Every partner renamed here: one outbox entry each.
    let edit_started = Instant::now();
    for chunk in ids.chunks(64) {
        let edits = chunk.iter().map(|id| {
            let mut v = serde_json::Map::new();
            v.insert("name".into(), json!(format!("Renamed {id}")));
            engine.apply_local("partner", LocalOp::Update(*id, v))
        });
        for r in futures_util::future::join_all(edits).await {
            r.unwrap();
        }
    }
    let edit_time = edit_started.elapsed();
    let queued = engine.store.outbox_depth("PUSH").await.unwrap();
    let calls_before = odoo_calls(&odoo_url).await;
    // Delivery, a batch at a time, as the worker does.
    let mut batches: Vec<Duration> = Vec::new();
    let started = Instant::now();
    loop {
        let t = Instant::now();
        match engine.try_execute().await.unwrap() {
            Outcome::Done(_) => batches.push(t.elapsed()),
            Outcome::Empty => break,
        }
    }
    let took = started.elapsed();
    batches.sort();
    let left = engine.store.outbox_depth("PUSH").await.unwrap();
    let calls = odoo_calls(&odoo_url).await - calls_before;
    println!("  {label}:");
    println!(
        "    queued          {queued} updates in {edit_time:.2?} (records API edits, in process)"
    );
    println!(
        "    delivered       {:>8.0} updates/s ({} in {took:.2?}, {left} left, {calls} Odoo calls)",
        queued as f64 / took.as_secs_f64(),
        queued - left
    );
    if !batches.is_empty() {
        println!(
            "    batch latency   p50 {:.1?}, p95 {:.1?}, p99 {:.1?}, max {:.1?} ({} batches)",
            percentile(&batches, 0.50),
            percentile(&batches, 0.95),
            percentile(&batches, 0.99),
            batches[batches.len() - 1],
            batches.len()
        );
    }
    let _ = odoo.kill();
    let _ = odoo.wait();
}

/// How many calls the fake Odoo has answered.
async fn odoo_calls(url: &str) -> usize {
    let answer = reqwest::get(format!("{url}/_fake/calls")).await.unwrap();
    let calls: serde_json::Value = answer.json().await.unwrap();
    calls.as_array().map(Vec::len).unwrap_or(0)
}
