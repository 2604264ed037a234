//! HTTP JSON API benchmark (`kind = "http"`). The fake HTTP API (`recsync fake-http`, its own
//! process) holds 200,000 items; recsync pulls them 100 a page with the `cursor` style and an
//! `updated_since` incremental cursor into a file-backed SQLite, and prints records/s, the page
//! latency percentiles and the peak RSS of the recsync process. Then 20,000 local edits are
//! pushed as `PUT /v1/items/{id}` with `rate_limit = "500/s"`: the rate the fake saw (overall
//! and in its busiest second) and whether every update arrived.
//! Run with `cargo bench --bench http` (RECSYNC_BENCH_RECORDS and RECSYNC_BENCH_UPDATES change
//! the sizes).

mod support;

use support::*;

use serde_json::{Value, json};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"
[models.item]
fields = { name = "char", email = "char", status = "char", score = "integer" }

[web_services.api]
kind = "http"
base_url = "@API@"
rate_limit = "500/s"
max_concurrency = 16

[external_models.items]
kind = "http"
fields = { id = "integer", name = "char", email = "char", status = "char", score = "integer", updated_at = "datetime" }
[external_models.items.list]
path = "/v1/cursor/items"
records = "$.data[*]"
query = { limit = "{limit}", updated_since = "{cursor}" }
cursor_field = "updated_at"
paginate = { style = "cursor", param = "cursor", next = "$.meta.next_cursor" }
[external_models.items.create]
path = "/v1/items"
[external_models.items.update]
method = "PUT"
path = "/v1/items/{id}"

[syncs.ITEMS]
model = "item"
external_model = "items"
web_service = "api"
direction = "@DIRECTION@"
every = "24h"
limit = 100
fields = [
  { local = "name",   external = "name" },
  { local = "email",  external = "email" },
  { local = "status", external = "status" },
  { local = "score",  external = "score" },
]
"#;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() {
    let records = env_usize("RECSYNC_BENCH_RECORDS", 200_000);
    let updates = env_usize("RECSYNC_BENCH_UPDATES", 20_000).min(records);
    let dir = tempfile::tempdir().unwrap();
    let seed = format!("items={records}");
    let (mut fake, api_url) = spawn_fake(
        &["fake-http", "--listen", "127.0.0.1:{port}", "--seed", &seed],
        "/_fake/calls",
    )
    .await;
    let client = reqwest::Client::new();

    // The pull runs a receiving sync; the push the same sync (same links) sending too.
    let plan_for = |direction: &str| {
        compile(
            &MAPPING
                .replace("@API@", &api_url)
                .replace("@DIRECTION@", direction),
        )
    };
    let plan = plan_for("to_local");
    let engine = start_app(&dir.path().join("http.db"), plan).await;

    // The pull: every item, page times from the run's progress.
    let (status, counts, pull_time, pages) = timed_run(&engine, "ITEMS").await;
    println!(
        "http benchmark: {records} items from the fake HTTP API (own process), cursor pagination, 100 a page, updated_since cursor, file-backed SQLite"
    );
    println!(
        "  run               {status}: pulled {}, created {}, failed {}",
        counts.pulled, counts.created, counts.failed
    );
    println!(
        "  pull              {:>10.0} records/s ({} pages in {pull_time:.2?})",
        counts.pulled as f64 / pull_time.as_secs_f64(),
        pages.len()
    );
    if !pages.is_empty() {
        println!(
            "  page latency      p50 {:.2?}, p95 {:.2?}, p99 {:.2?}, max {:.2?}",
            percentile(&pages, 0.50),
            percentile(&pages, 0.95),
            percentile(&pages, 0.99),
            pages[pages.len() - 1]
        );
    }
    println!(
        "  peak RSS          {:.1} MiB after the pull (recsync only)",
        peak_rss_mib().unwrap_or(f64::NAN)
    );

    // The push: `updates` local edits, then one run of the sync, now bidirectional, sends them.
    engine.set_plan(plan_for("bidirectional"));
    let ids: Vec<i64> = engine
        .store
        .records_after("item", 0, updates as i64)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let edit_started = Instant::now();
    for chunk in ids.chunks(1000) {
        let mut tx = engine.store.begin().await.unwrap();
        for id in chunk {
            let mut rec = tx.get_record("item", *id).await.unwrap().unwrap();
            rec.values.insert("score".into(), json!(1000 + id));
            tx.update_record("item", *id, &rec.values).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let edit_time = edit_started.elapsed();
    let (status, counts, push_time, _) = timed_run(&engine, "ITEMS").await;
    let push_rss = peak_rss_mib().unwrap_or(f64::NAN);
    let calls: Value = client
        .get(format!("{api_url}/_fake/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let puts: Vec<&Value> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["method"] == "PUT")
        .collect();
    let mut at: Vec<f64> = puts.iter().map(|c| c["at_ms"].as_f64().unwrap()).collect();
    at.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ok = puts.iter().filter(|c| c["status"] == 200).count();
    let span_s = (at.last().unwrap_or(&0.0) - at.first().unwrap_or(&0.0)) / 1000.0;
    let overall = if span_s > 0.0 {
        (at.len() as f64 - 1.0) / span_s
    } else {
        f64::NAN
    };
    // The busiest second: the most calls in any one-second window.
    let mut busiest = 0;
    let mut j = 0;
    for i in 0..at.len() {
        while at[i] - at[j] >= 1000.0 {
            j += 1;
        }
        busiest = busiest.max(i - j + 1);
    }
    let records_now: Value = client
        .get(format!("{api_url}/_fake/records/items"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let arrived = records_now
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["score"].as_i64().is_some_and(|s| s >= 1000))
        .count();
    println!(
        "  local edits       {} in {edit_time:.2?} (straight into the store)",
        ids.len()
    );
    println!(
        "  push              {status}: pushed {}, failed {}, in {push_time:.2?}",
        counts.pushed, counts.failed
    );
    println!(
        "  rate              {overall:.1} PUT/s overall, {busiest} in the busiest second (rate_limit 500/s: {:+.1}% / {:+.1}%)",
        (overall / 500.0 - 1.0) * 100.0,
        (busiest as f64 / 500.0 - 1.0) * 100.0
    );
    println!(
        "  delivered         {ok} answered 200 of {} PUTs; {arrived} of {} edits are in the API ({})",
        puts.len(),
        ids.len(),
        if arrived == ids.len() {
            "nothing lost"
        } else {
            "LOST SOME"
        }
    );
    println!("  peak RSS          {push_rss:.1} MiB after the push (recsync only)");
    let _ = fake.kill();
    let _ = fake.wait();
}
