//! Change-control benchmark, on a file-backed SQLite holding 2,000,000 change-control rows:
//! 1. first-page latency of filtered `GET /api/v1/changes` queries (each filter, and some
//!    combinations), over real HTTP;
//! 2. retention pruning of the 1,000,000 oldest rows while an inbound load runs through
//!    `/sync/IN/create`: the load's latency percentiles before and during the pruning.
//!
//! Prints percentiles, pruning rows/s and peak RSS. Run with `cargo bench --bench audit`
//! (RECSYNC_BENCH_ROWS changes the table size).

mod support;

use support::*;

use chrono::{Duration as ChronoDuration, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use recsync::app::{self, BuildOptions};
use recsync::config::{self, ApiKey, Scope, settings::hash_key};
use recsync::store::{LogAction, LogDirection, LogStatus, NewChange};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "bench-key-0123456789abcdef";

const MAPPING: &str = r#"
[models.contact]
display = "name"
fields = { name = { type = "char", required = true }, email = "char" }

[web_services.src]

[external_models.ext_contact]
fields = { uid = "char", name = "char", email = "char" }

[syncs.IN]
model = "contact"
external_model = "ext_contact"
web_service = "src"
direction = "to_local"
mode = "realtime"
external_ref = "uid"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

const SYNCS: [&str; 5] = ["CONTACTS", "COMPANIES", "TICKETS", "ORDERS", "FILES"];
const WORDS: [&str; 8] = [
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell",
];

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn pick<T: Copy>(rng: &mut StdRng, weighted: &[(T, u32)]) -> T {
    let total: u32 = weighted.iter().map(|w| w.1).sum();
    let mut n = rng.random_range(0..total);
    for (v, w) in weighted {
        if n < *w {
            return *v;
        }
        n -= w;
    }
    weighted[0].0
}

/// Row `n` of `total`: the older half is 100 to 180 days old, the newer half within 90 days.
fn row(rng: &mut StdRng, n: usize, total: usize) -> NewChange {
    let now = Utc::now();
    let half = total / 2;
    let age_secs = if n < half {
        180.0 - 80.0 * (n as f64 / half as f64)
    } else {
        90.0 - 90.0 * ((n - half) as f64 / half as f64)
    } * 86_400.0;
    let status = pick(
        rng,
        &[
            (LogStatus::Success, 950),
            (LogStatus::Failed, 30),
            (LogStatus::ConflictResolved, 10),
            (LogStatus::Skipped, 10),
        ],
    );
    let action = pick(
        rng,
        &[
            (LogAction::Create, 300),
            (LogAction::Update, 550),
            (LogAction::Delete, 50),
            (LogAction::Unlink, 50),
            (LogAction::Rename, 20),
            (LogAction::Move, 20),
            (LogAction::Conflict, 10),
        ],
    );
    let word = WORDS[rng.random_range(0..WORDS.len())];
    NewChange {
        sync: SYNCS[rng.random_range(0..SYNCS.len())].into(),
        direction: if rng.random_bool(0.5) {
            LogDirection::ExternalToLocal
        } else {
            LogDirection::LocalToExternal
        },
        action,
        external_id: Some(format!("E{}", rng.random_range(0..200_000))),
        local_id: Some(rng.random_range(1..200_000)),
        name: "Update contact".into(),
        title: format!("{word} contact {n}"),
        origin_values: json!({"name": format!("{word} contact {n}"), "email": format!("c{n}@example.com")}),
        destination_values: json!({"name": format!("{word} contact {n}")}),
        before_values: Default::default(),
        modified_at: None,
        synced_at: Some(now - ChronoDuration::milliseconds((age_secs * 1000.0) as i64)),
        status,
        error_message: if status == LogStatus::Failed {
            format!("email: not a valid address for {word}")
        } else {
            String::new()
        },
        run_id: None,
        actor: "bench".into(),
    }
}

async fn run() {
    let total: usize = std::env::var("RECSYNC_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let plan = config::compile_texts(
        &[("bench.toml", MAPPING)],
        &std::collections::HashMap::<String, String>::new(),
        recsync::connectors::KINDS,
    )
    .unwrap();
    let settings = config::Settings {
        database_url: secrecy::SecretString::from(format!(
            "sqlite://{}",
            dir.path().join("audit.db").display()
        )),
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![ApiKey {
            name: "bench".into(),
            sha256: hash_key(KEY),
            scopes: vec![Scope::Admin],
        }],
        // Pruning is started by hand below.
        change_log_retention: None,
        ..Default::default()
    };
    let app = app::build(settings, plan, BuildOptions::default())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let engine = app.engine();
    tokio::spawn(app.run_until_stopped());

    // Seed (not timed as part of the figures).
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(42);
    let mut n = 0;
    while n < total {
        let rows: Vec<NewChange> = (n..(n + 10_000).min(total))
            .map(|i| row(&mut rng, i, total))
            .collect();
        n += rows.len();
        let mut tx = engine.store.begin().await.unwrap();
        tx.log_changes(&rows).await.unwrap();
        tx.commit().await.unwrap();
    }
    println!(
        "change-control benchmark: {total} rows in a file-backed SQLite (seeded in {:.1?})",
        started.elapsed()
    );

    // 1. First pages of filtered queries.
    let client = reqwest::Client::new();
    let now = Utc::now();
    let day = move |d: i64| (now - ChronoDuration::days(d)).to_rfc3339();
    type MakeQuery = Box<dyn Fn(&mut StdRng) -> String>;
    let kinds: Vec<(&str, MakeQuery)> = vec![
        ("no filter", Box::new(|_| String::new())),
        (
            "sync",
            Box::new(|r| format!("sync={}", SYNCS[r.random_range(0..SYNCS.len())])),
        ),
        ("status=failed", Box::new(|_| "status=failed".into())),
        (
            "status=conflict_resolved",
            Box::new(|_| "status=conflict_resolved".into()),
        ),
        ("action=delete", Box::new(|_| "action=delete".into())),
        ("action=conflict", Box::new(|_| "action=conflict".into())),
        (
            "direction",
            Box::new(|_| "direction=local_to_external".into()),
        ),
        (
            "external_id",
            Box::new(|r| format!("external_id=E{}", r.random_range(0..200_000))),
        ),
        (
            "local_id",
            Box::new(|r| format!("local_id={}", r.random_range(1..200_000))),
        ),
        (
            "since (last 7 days)",
            Box::new(move |_| format!("since={}", urlencode(&day(7)))),
        ),
        (
            "since+until (a day, 30 days ago)",
            Box::new(move |_| {
                format!(
                    "since={}&until={}",
                    urlencode(&day(31)),
                    urlencode(&day(30))
                )
            }),
        ),
        (
            "until (older than 150 days)",
            Box::new(move |_| format!("until={}", urlencode(&day(150)))),
        ),
        (
            "q (common word)",
            Box::new(|r| format!("q={}", WORDS[r.random_range(0..WORDS.len())])),
        ),
        (
            "sync+status=failed",
            Box::new(|r| {
                format!(
                    "sync={}&status=failed",
                    SYNCS[r.random_range(0..SYNCS.len())]
                )
            }),
        ),
        (
            "sync+action+direction",
            Box::new(|r| {
                format!(
                    "sync={}&action=update&direction=external_to_local",
                    SYNCS[r.random_range(0..SYNCS.len())]
                )
            }),
        ),
        (
            "status=failed+q",
            Box::new(|r| format!("status=failed&q={}", WORDS[r.random_range(0..WORDS.len())])),
        ),
    ];
    println!("  first page (limit 50) of GET /api/v1/changes, 40 queries per filter, over HTTP:");
    let mut all = Vec::new();
    for (name, make) in &kinds {
        let mut lat = Vec::new();
        for _ in 0..40 {
            let q = make(&mut rng);
            let t = Instant::now();
            let r = client
                .get(format!("{base}/api/v1/changes?limit=50&{q}"))
                .header("X-Api-Key", KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{q}");
            let body: serde_json::Value = r.json().await.unwrap();
            lat.push(t.elapsed());
            assert!(body["changes"].is_array());
        }
        lat.sort();
        println!(
            "    {name:<34} p50 {:>7.2?}  p95 {:>7.2?}  max {:>7.2?}",
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            lat.last().unwrap()
        );
        all.extend(lat);
    }
    all.sort();
    println!(
        "    {:<34} p50 {:>7.2?}  p95 {:>7.2?}  max {:>7.2?}",
        "all filters",
        percentile(&all, 0.5),
        percentile(&all, 0.95),
        all.last().unwrap()
    );

    // 2. Pruning under an inbound load.
    let stop = Arc::new(AtomicBool::new(false));
    let pruning = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, base, stop, pruning, counter) = (
            client.clone(),
            base.clone(),
            stop.clone(),
            pruning.clone(),
            counter.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut before, mut during) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/sync/IN/create"))
                    .header("api_key", KEY)
                    .json(&json!({"uid": format!("w{w}-{i}"), "name": format!("Load {i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                let d = t.elapsed();
                if pruning.load(Ordering::Relaxed) {
                    during.push(d);
                } else {
                    before.push(d);
                }
                // About 100 requests/s per worker: a steady load, not a saturating one.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (before, during)
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    pruning.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let pruned = recsync::audit::prune(&engine.store, Duration::from_secs(90 * 86_400))
        .await
        .unwrap();
    let prune_time = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for w in workers {
        let (b, d) = w.await.unwrap();
        before.extend(b);
        during.extend(d);
    }
    before.sort();
    during.sort();
    println!(
        "  retention pruning: {pruned} rows in {prune_time:.2?} ({:.0} rows/s), batches of {}",
        pruned as f64 / prune_time.as_secs_f64(),
        recsync::audit::PRUNE_BATCH
    );
    for (name, lat) in [
        ("inbound before pruning", &before),
        ("inbound during pruning", &during),
    ] {
        println!(
            "    {name:<24} {:>6} requests  p50 {:>7.2?}  p99 {:>7.2?}  max {:>7.2?}",
            lat.len(),
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            lat.last().unwrap()
        );
    }
    println!(
        "  peak RSS          {:.1} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
