//! Odoo pull benchmark: the fake Odoo (`recsync fake-odoo`, a separate process) holds 200,000
//! `res.partner` records; recsync pulls them over JSON-2 with `limit = 1000`, by the
//! (`write_date`, `id`) keyset, with each partner's country by code and tags by name read once
//! per page, into a file-backed SQLite. Then an incremental run reads the overlap again
//! (nothing changed: nothing is written). Prints records/s, pages/s, the page latency
//! percentiles and the peak RSS of the recsync process.
//! Run with `cargo bench --bench odoo` (RECSYNC_BENCH_RECORDS changes the size).

mod support;

use support::*;

use recsync::engine::Trigger;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAPPING: &str = r#"
[models.country]
fields = { name = "char", code = { type = "char", required = true } }

[models.tag]
fields = { name = { type = "char", required = true } }

[models.partner]
[models.partner.fields]
name    = { type = "char", required = true }
email   = "char"
company = "boolean"
country = { type = "many2one", model = "country" }
tags    = { type = "many2many", model = "tag" }

[web_services.erp]
kind = "odoo"
url = "@ODOO@"
database = "fake"
login = "admin"
api_key = "fake-odoo-api-key-0123456789"
protocol = "json2"

[external_models.odoo_country]
kind = "odoo"
odoo_model = "res.country"
fields = { name = "char", code = "char" }

[external_models.odoo_tag]
kind = "odoo"
odoo_model = "res.partner.category"
fields = { name = "char" }

[external_models.odoo_partner]
kind = "odoo"
odoo_model = "res.partner"
fields = { name = "char", email = "char", is_company = "boolean", country_id = { type = "many2one", relation = "res.country" }, category_id = { type = "many2many", relation = "res.partner.category" } }

[syncs.COUNTRIES]
model = "country"
external_model = "odoo_country"
web_service = "erp"
direction = "to_local"
every = "24h"
fields = [{ local = "name", external = "name" }, { local = "code", external = "code" }]

[syncs.TAGS]
model = "tag"
external_model = "odoo_tag"
web_service = "erp"
direction = "to_local"
every = "24h"
fields = [{ local = "name", external = "name" }]

[syncs.PARTNERS]
model = "partner"
external_model = "odoo_partner"
web_service = "erp"
direction = "to_local"
every = "24h"
limit = 1000
fields = [
  { local = "name",    external = "name" },
  { local = "email",   external = "email" },
  { local = "company", external = "is_company" },
  { local = "country", external = "country_id.code", ref_field = "code" },
  { local = "tags",    external = "category_id.name", ref_field = "name" },
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

async fn run() {
    let records: usize = std::env::var("RECSYNC_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
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

    let mut mapping = MAPPING.replace("@ODOO@", &odoo_url);
    // RECSYNC_BENCH_PLAIN=1: without the related fields (country and tags), for comparison.
    if std::env::var("RECSYNC_BENCH_PLAIN").is_ok_and(|v| v == "1") {
        mapping = mapping
            .replace(
                "  { local = \"country\", external = \"country_id.code\", ref_field = \"code\" },\n",
                "",
            )
            .replace(
                "  { local = \"tags\",    external = \"category_id.name\", ref_field = \"name\" },\n",
                "",
            );
    }
    let plan = compile(&mapping);
    let engine = start_app(&dir.path().join("odoo.db"), plan).await;
    for code in ["COUNTRIES", "TAGS"] {
        let run = engine
            .start_run(code, Trigger::Manual, false)
            .await
            .unwrap();
        let (status, _) = run.task.await.unwrap();
        assert_eq!(status, "success", "{code}");
    }

    // The first pull, every partner; page times from the run's progress.
    let (status, counts, pull_time, pages) = timed_run(&engine, "PARTNERS").await;
    let rss = peak_rss_mib().unwrap_or(f64::NAN);
    println!(
        "odoo benchmark: {records} res.partner records from the fake Odoo (own process), JSON-2, limit 1000, country by code and tags by name, file-backed SQLite"
    );
    println!(
        "  run               {status}: pulled {}, created {}, failed {}",
        counts.pulled, counts.created, counts.failed
    );
    println!(
        "  pull              {:>10.0} records/s, {:.1} pages/s ({} pages in {pull_time:.2?})",
        counts.pulled as f64 / pull_time.as_secs_f64(),
        pages.len() as f64 / pull_time.as_secs_f64(),
        pages.len()
    );
    if !pages.is_empty() {
        println!(
            "  page latency      p50 {:.1?}, p95 {:.1?}, p99 {:.1?}, max {:.1?}",
            percentile(&pages, 0.50),
            percentile(&pages, 0.95),
            percentile(&pages, 0.99),
            pages[pages.len() - 1]
        );
    }
    println!("  peak RSS          {rss:.1} MiB after the pull (recsync only)");

    // An incremental run: the overlap window holds every record (all were just seeded), and
    // none changed.
    let started = Instant::now();
    let run = engine
        .start_run("PARTNERS", Trigger::Manual, false)
        .await
        .unwrap();
    let (status, counts) = run.task.await.unwrap();
    let again = started.elapsed();
    println!(
        "  overlap re-read   {status}: read {} again in {again:.2?} ({:.0} records/s), created {}, updated {}",
        counts.pulled,
        counts.pulled as f64 / again.as_secs_f64(),
        counts.created,
        counts.updated
    );
    println!(
        "  peak RSS          {:.1} MiB overall",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    let _ = odoo.kill();
    let _ = odoo.wait();
}
