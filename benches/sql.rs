//! Database tables benchmark (`kind = "sql"`, PostgreSQL). A database of its own on the server
//! `RECSYNC_BENCH_PG_URL` (or `RECSYNC_TEST_DATABASE_URL`, or the local
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`) holds a `customers` table of
//! 1,000,000 rows (RECSYNC_BENCH_ROWS). Three measures, each with rows/s, page or batch latency
//! percentiles and the peak RSS of the recsync process:
//!
//! - **pull**: a `to_local` sync by the `updated_at` watermark, 1,000 rows a page, into a
//!   file-backed SQLite hub; side by side in the same run, dlt's `sql_database` source
//!   (`sql_table`, its default backend) loading the same table into DuckDB, from a virtualenv
//!   this bench makes under `target/dlt-venv` (not a test dependency);
//! - **logical capture**: 100,000 changes (RECSYNC_BENCH_CHANGES: inserts and updates) read
//!   from the sync's replication slot (`wal_level = logical` is needed);
//! - **push**: 20,000 records made here (RECSYNC_BENCH_PUSH) inserted into a table by the
//!   outbox.
//!
//! Run with `cargo bench --bench sql`.

mod support;

use recsync::engine::{LocalOp, Outcome};
use serde_json::json;
use sqlx::Row;
use std::time::{Duration, Instant};
use support::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"
[models.customer]
fields = { name = "char", email = "char", balance = "char" }

[models.lead]
fields = { name = "char", email = "char" }

[models.prospect]
fields = { name = "char", email = "char" }

[web_services.legacy]
kind = "sql"
url = "@URL@"
max_concurrency = 4

[external_models.customers]
kind = "sql"
table = "customers"
key = "cust_id"
cursor = "updated_at"
fields = { cust_id = "integer", name = "char", email = "char", balance = "char", updated_at = "datetime" }

[external_models.events]
kind = "sql"
table = "events"
key = "id"
capture = "logical"
fields = { id = "integer", name = "char", email = "char" }

[external_models.leads]
kind = "sql"
table = "leads"
key = "id"
fields = { id = "integer", name = "char", email = "char" }

[syncs.PULL]
model = "customer"
external_model = "customers"
web_service = "legacy"
direction = "to_local"
every = "24h"
limit = 1000
fields = [
  { local = "name", external = "name" },
  { local = "email", external = "email" },
  { local = "balance", external = "balance" },
]

[syncs.CAPTURE]
model = "lead"
external_model = "events"
web_service = "legacy"
direction = "to_local"
every = "24h"
limit = 5000
fields = [
  { local = "name", external = "name" },
  { local = "email", external = "email" },
]

[syncs.PUSH]
model = "prospect"
external_model = "leads"
web_service = "legacy"
direction = "to_external"
mode = "realtime"
fields = [
  { local = "name", external = "name" },
  { local = "email", external = "email" },
]
"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let rows = env_usize("RECSYNC_BENCH_ROWS", 1_000_000);
    let changes = env_usize("RECSYNC_BENCH_CHANGES", 100_000);
    let pushes = env_usize("RECSYNC_BENCH_PUSH", 20_000);
    let admin = std::env::var("RECSYNC_BENCH_PG_URL")
        .or_else(|_| std::env::var("RECSYNC_TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let name = format!("bench_sql_{}", std::process::id());
    let pool = sqlx::PgPool::connect(&admin).await.expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "CREATE TABLE customers (cust_id bigserial PRIMARY KEY, name text, email text, \
         balance numeric(14,2), updated_at timestamptz NOT NULL)",
        "CREATE INDEX customers_watermark ON customers (updated_at, cust_id)",
        "CREATE TABLE events (id bigserial PRIMARY KEY, name text, email text)",
        "CREATE TABLE leads (id bigserial PRIMARY KEY, name text, email text)",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let seeded = Instant::now();
    sqlx::query(
        "INSERT INTO customers (name, email, balance, updated_at) \
         SELECT 'Customer ' || g, 'c' || g || '@example.com', (g % 100000) / 100.0, \
         timestamptz '2026-01-01' + g * interval '1 millisecond' FROM generate_series(1, $1) g",
    )
    .bind(rows as i64)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("ANALYZE customers").execute(&db).await.unwrap();
    println!(
        "sql benchmark: PostgreSQL table of {rows} rows (seeded in {:.1?}), hub on file-backed SQLite",
        seeded.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let engine = start_app_with(
        &dir.path().join("hub.db"),
        compile(&MAPPING.replace("@URL@", &url)),
        recsync::app::BuildOptions {
            no_workers: true,
            no_scheduler: true,
            ..Default::default()
        },
    )
    .await;

    // The pull.
    let (status, counts, took, pages) = timed_run(&engine, "PULL").await;
    let rss = peak_rss_mib().unwrap_or(f64::NAN);
    let recsync_rate = counts.pulled as f64 / took.as_secs_f64();
    println!("  pull (recsync, watermark, 1,000 a page):");
    println!(
        "    run             {status}: pulled {}, created {}, failed {}",
        counts.pulled, counts.created, counts.failed
    );
    println!(
        "    rate            {recsync_rate:>10.0} rows/s ({} pages in {took:.2?})",
        pages.len()
    );
    if !pages.is_empty() {
        println!(
            "    page latency    p50 {:.1?}, p95 {:.1?}, p99 {:.1?}, max {:.1?}",
            percentile(&pages, 0.50),
            percentile(&pages, 0.95),
            percentile(&pages, 0.99),
            pages[pages.len() - 1]
        );
    }
    println!("    peak RSS        {rss:.1} MiB (recsync, after the pull)");

    // The same table with dlt's sql_database source, into DuckDB.
    match dlt(&url, dir.path()) {
        Ok((loaded, secs, rss)) => {
            let rate = loaded as f64 / secs;
            println!("  pull (dlt sql_database -> DuckDB, default backend, same table):");
            println!(
                "    rate            {rate:>10.0} rows/s ({loaded} rows in {secs:.2} s), peak RSS {rss:.1} MiB"
            );
            println!(
                "    ratio           recsync / dlt = {:.2}",
                recsync_rate / rate
            );
        }
        Err(e) => println!("  pull (dlt): not measured: {e}"),
    }

    // Logical capture: the slot is made by a first run (an empty table), then `changes`
    // changes are made and read.
    let (status, ..) = timed_run(&engine, "CAPTURE").await;
    assert_eq!(
        status, "success",
        "the slot could be made (wal_level = logical?)"
    );
    let inserts = changes * 4 / 5;
    sqlx::query(
        "INSERT INTO events (name, email) SELECT 'Event ' || g, 'e' || g || '@example.com' \
         FROM generate_series(1, $1) g",
    )
    .bind(inserts as i64)
    .execute(&db)
    .await
    .unwrap();
    for chunk in 0..(changes - inserts).div_ceil(1000) {
        sqlx::query("UPDATE events SET name = name || ' (changed)' WHERE id > $1 AND id <= $2")
            .bind((chunk * 1000) as i64)
            .bind(((chunk + 1) * 1000).min(changes - inserts) as i64)
            .execute(&db)
            .await
            .unwrap();
    }
    let (status, counts, took, pages) = timed_run(&engine, "CAPTURE").await;
    println!("  logical capture (test_decoding slot, 5,000 changes a page):");
    println!(
        "    run             {status}: {changes} changes ({inserts} inserts, {} updates), pulled {}, created {}",
        changes - inserts,
        counts.pulled,
        counts.created
    );
    println!(
        "    rate            {:>10.0} changes/s ({} pages in {took:.2?})",
        changes as f64 / took.as_secs_f64(),
        pages.len()
    );
    if !pages.is_empty() {
        println!(
            "    page latency    p50 {:.1?}, p95 {:.1?}, max {:.1?}",
            percentile(&pages, 0.50),
            percentile(&pages, 0.95),
            pages[pages.len() - 1]
        );
    }

    // The push: records made here, inserted by the outbox.
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leads")
        .fetch_one(&db)
        .await
        .unwrap();
    let made = Instant::now();
    for chunk in (0..pushes).collect::<Vec<_>>().chunks(64) {
        let creates = chunk.iter().map(|i| {
            let mut v = serde_json::Map::new();
            v.insert("name".into(), json!(format!("Lead {i}")));
            v.insert("email".into(), json!(format!("lead{i}@example.com")));
            engine.apply_local("prospect", LocalOp::Create(v))
        });
        for r in futures_util::future::join_all(creates).await {
            r.unwrap();
        }
    }
    let made = made.elapsed();
    let queued = engine.store.outbox_depth("PUSH").await.unwrap();
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
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leads")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("  push (outbox inserts):");
    println!("    queued          {queued} creates in {made:.2?} (records API, in process)");
    println!(
        "    rate            {:>10.0} rows/s ({} rows in {took:.2?})",
        (after - before) as f64 / took.as_secs_f64(),
        after - before
    );
    if !batches.is_empty() {
        println!(
            "    batch latency   p50 {:.1?}, p95 {:.1?}, max {:.1?} ({} batches)",
            percentile(&batches, 0.50),
            percentile(&batches, 0.95),
            batches[batches.len() - 1],
            batches.len()
        );
    }
    println!(
        "  peak RSS          {:.1} MiB (recsync, the whole bench)",
        peak_rss_mib().unwrap_or(f64::NAN)
    );

    let slots = sqlx::query("SELECT slot_name::text FROM pg_replication_slots WHERE database = $1")
        .bind(&name)
        .fetch_all(&db)
        .await
        .unwrap();
    for s in slots {
        let slot: String = s.get(0);
        let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(slot)
            .execute(&db)
            .await;
    }
    db.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await;
}

/// Loads the table with dlt (`sql_table`, default backend) into DuckDB in a virtualenv of its
/// own: the rows loaded, the seconds it took and the peak RSS of the Python process.
fn dlt(url: &str, dir: &std::path::Path) -> Result<(u64, f64, f64), String> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dlt-venv");
    let python = venv.join("bin/python");
    let ready = std::process::Command::new(&python)
        .args(["-c", "import dlt, duckdb, sqlalchemy, psycopg2"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|e| e.to_string())?;
        if !made.success() {
            return Err("python3 -m venv failed".into());
        }
        let pip = std::process::Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "dlt[duckdb]>=1,<2",
                "sqlalchemy>=2,<3",
                "psycopg2-binary",
            ])
            .status()
            .map_err(|e| e.to_string())?;
        if !pip.success() {
            return Err("pip install dlt failed".into());
        }
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sql_dlt.py");
    let url = url.replacen("postgres://", "postgresql+psycopg2://", 1);
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(url)
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("dlt "))
        .ok_or_else(|| format!("{text}{}", String::from_utf8_lossy(&out.stderr)))?;
    // "dlt <rows> <seconds> <peak rss MiB>"
    let parts: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<f64>().ok());
    match (num(1), num(2), num(3)) {
        (Some(r), Some(s), Some(m)) => Ok((r as u64, s, m)),
        _ => Err(line.to_string()),
    }
}
