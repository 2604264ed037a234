//! Real-time benchmark: the app on a file-backed SQLite plus the reference peer, driven through
//! `/sync/<CODE>/...` with 64 keep-alive connections. Prints acknowledged requests/s, latency
//! percentiles, outbox deliveries/s to the peer, and peak RSS.
//! Run with `cargo bench --bench realtime` (set RECSYNC_BENCH_REQUESTS to change the count).
//! `RECSYNC_BENCH_DATABASE_URL=postgres://...` runs on a fresh PostgreSQL database made on that
//! server (and dropped after), and `RECSYNC_BENCH_INSTANCES=2` starts that many instances
//! sharing it, with the connections spread across them as a load balancer would.
//! With `RUST_LOG` set (for instance `RUST_LOG=info`, the production default), the log
//! subscriber is installed as `serve` installs it, so the cost of the spans is measured too;
//! without it no subscriber runs. `RECSYNC_BENCH_SIGNED=1` signs every delivery per Standard
//! Webhooks (`signing_secret` on the `dst` web service) and the peer verifies each one, as a
//! receiver would: the cost of signing, measured against a run without it.
//! `RECSYNC_BENCH_OTLP=1` exports the spans over OTLP (as `otlp_endpoint` does) to a receiver in
//! the process that decodes each export and counts its spans: the cost of tracing, measured
//! against a run without it (both with `RUST_LOG=info`).

mod support;

use support::*;

use recsync::app::{self, BuildOptions};
use recsync::config::{self, ApiKey, Scope, settings::hash_key};
use recsync::peer::{Peer, PeerOptions};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// The same allocator as the `recsync` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "bench-key-0123456789abcdef";
const SIGNING_SECRET: &str = "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtMDEyMzQ1Njc4OQ==";
const CONNECTIONS: usize = 64;

const MAPPING: &str = r#"
[models.contact]
display = "name"
fields = { name = { type = "char", required = true }, email = "char", visits = "integer" }

[web_services.src]

[web_services.dst]
shipping_url = "@PEER@/api/dst/ship"
max_concurrency = 64

[external_models.ext_contact]
fields = { uid = "char", name = "char", email = "char", visits = "integer" }

[syncs.IN]
model = "contact"
external_model = "ext_contact"
web_service = "src"
direction = "to_local"
mode = "realtime"
external_ref = "uid"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }, { local = "visits", external = "visits" }]

[syncs.OUT]
model = "contact"
external_model = "ext_contact"
web_service = "dst"
direction = "to_external"
mode = "realtime"
external_ref = "uid"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }, { local = "visits", external = "visits" }]
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
    let total: usize = std::env::var("RECSYNC_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let creates = total * 2 / 3;
    let dir = tempfile::tempdir().unwrap();
    let peer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_url = format!("http://{}", peer_listener.local_addr().unwrap());
    let signed = std::env::var_os("RECSYNC_BENCH_SIGNED").is_some();
    let mut mapping = MAPPING.replace("@PEER@", &peer_url);
    if signed {
        mapping = mapping.replace(
            "max_concurrency = 64\n",
            &format!("max_concurrency = 64\nsigning_secret = \"{SIGNING_SECRET}\"\n"),
        );
    }
    let plan = config::compile_texts(
        &[("bench.toml", &mapping)],
        &std::collections::HashMap::<String, String>::new(),
        recsync::connectors::KINDS,
    )
    .unwrap();
    let instances: usize = std::env::var("RECSYNC_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let pg_admin = std::env::var("RECSYNC_BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let (database_url, pg_db) = match &pg_admin {
        Some(admin) => {
            let name = format!("recsync_bench_{}", std::process::id());
            let pool = sqlx::PgPool::connect(admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let mut url = url::Url::parse(admin).unwrap();
            url.set_path(&format!("/{name}"));
            (url.to_string(), Some(name))
        }
        None => (
            format!("sqlite://{}", dir.path().join("bench.db").display()),
            None,
        ),
    };
    if instances > 1 && pg_db.is_none() {
        panic!("several instances share a PostgreSQL database: set RECSYNC_BENCH_DATABASE_URL");
    }
    let settings = config::Settings {
        database_url: secrecy::SecretString::from(database_url),
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![ApiKey {
            name: "bench".into(),
            sha256: hash_key(KEY),
            scopes: vec![Scope::AllSyncs],
        }],
        ..Default::default()
    };
    // Default: ingest first with the outbox workers held back (entries pile up, durably), then
    // deliveries alone. RECSYNC_BENCH_MIXED=1 runs both at once instead.
    let mixed = std::env::var_os("RECSYNC_BENCH_MIXED").is_some();
    let traced = std::env::var_os("RECSYNC_BENCH_OTLP").is_some();
    let spans = Arc::new(AtomicUsize::new(0));
    let otlp = traced.then(|| otlp_receiver(spans.clone()));
    if std::env::var_os("RUST_LOG").is_some() || traced {
        recsync::telemetry::init(config::LogFormat::Pretty, otlp.as_deref());
    }
    let no_workers = !mixed;
    let mut bases = Vec::new();
    let mut engines = Vec::new();
    for _ in 0..instances {
        let app = app::build(
            settings.clone(),
            plan.clone(),
            BuildOptions {
                no_workers,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        bases.push(format!("http://127.0.0.1:{}", app.port()));
        engines.push(app.engine());
        tokio::spawn(app.run_until_stopped());
    }
    let engine = engines[0].clone();
    let peer = Peer::from_listener(
        peer_listener,
        PeerOptions {
            id_field: "uid".into(),
            signing_secret: signed.then(|| SIGNING_SECRET.to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    let peer_state = peer.state.clone();
    tokio::spawn(peer.run());

    // The requests are built before the clock starts: a real client runs elsewhere.
    let requests: Arc<Vec<(reqwest::Method, String, bytes::Bytes)>> = Arc::new(
        (0..total)
            .map(|i| {
                let base = &bases[i % instances];
                if i < creates {
                    let body = json!({"uid": format!("u{i}"), "name": format!("Contact {i}"), "email": format!("c{i}@example.com"), "visits": i});
                    (reqwest::Method::POST, format!("{base}/sync/IN/create"), bytes::Bytes::from(body.to_string()))
                } else {
                    let body = json!({"visits": i, "email": format!("changed{i}@example.com")});
                    (reqwest::Method::PUT, format!("{base}/sync/IN/u{}", i % creates), bytes::Bytes::from(body.to_string()))
                }
            })
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = client.clone();
        let next = next.clone();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let (method, url, body) = &requests[i];
                let resp = client
                    .request(method.clone(), url.as_str())
                    .header("api_key", KEY)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failed += f;
    }
    let load_time = started.elapsed();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let delivery_start = if mixed {
        started
    } else {
        for e in &engines {
            e.spawn_worker(stop_rx.clone());
        }
        Instant::now()
    };
    // Deliveries: wait until the outbox has no undelivered entry left.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let depth = engine.store.outbox_depth("OUT").await.unwrap();
        if depth == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery_time = delivery_start.elapsed();
    // The spans still queued leave now.
    tokio::task::spawn_blocking(recsync::telemetry::shutdown)
        .await
        .unwrap();
    let delivered = peer_state
        .received("dst")
        .iter()
        .filter(|r| r.status == 200)
        .count();
    lat.sort();
    println!(
        "realtime benchmark: {total} requests ({creates} creates, {} updates), {CONNECTIONS} keep-alive connections, {}, {}",
        total - creates,
        match instances {
            1 if pg_db.is_some() => "PostgreSQL, one instance".to_string(),
            1 => "file-backed SQLite".to_string(),
            n => format!("PostgreSQL, {n} instances sharing it (requests spread round-robin)"),
        },
        if mixed {
            "ingest and delivery at once"
        } else {
            "ingest, then delivery"
        }
    );
    if signed {
        println!("  deliveries signed per Standard Webhooks, each verified by the peer");
    }
    if traced {
        println!(
            "  spans exported over OTLP to a receiver that decodes them: {} received",
            spans.load(Ordering::Relaxed)
        );
    }
    println!("  acknowledged       {:>8} ok, {failed} failed", lat.len());
    println!(
        "  throughput         {:>10.0} requests/s",
        lat.len() as f64 / load_time.as_secs_f64()
    );
    println!(
        "  latency            p50 {:.2?}  p95 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat.last().unwrap()
    );
    println!(
        "  outbox deliveries  {:>8} in {:.2?} = {:.0} deliveries/s ({})",
        delivered,
        delivery_time,
        delivered as f64 / delivery_time.as_secs_f64(),
        if mixed {
            "from the first request to an empty outbox"
        } else {
            "workers started after the load, until the outbox is empty"
        }
    );
    println!(
        "  peak RSS           {:.1} MiB (recsync, the peer and the load generator in one process)",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    if let (Some(admin), Some(name)) = (&pg_admin, &pg_db) {
        for e in &engines {
            e.store.close().await;
        }
        if let Ok(pool) = sqlx::PgPool::connect(admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&pool)
                .await;
        }
    }
}

/// An OTLP/HTTP receiver on its own thread and runtime, as a collector would be: decodes each
/// export and counts its spans. Answers the URL spans go to.
fn otlp_receiver(spans: Arc<AtomicUsize>) -> String {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let spans = spans.clone();
                App::new()
                    .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                    .route(
                        "/v1/traces",
                        web::post().to(move |body: web::Bytes| {
                            let spans = spans.clone();
                            async move {
                                let req = ExportTraceServiceRequest::decode(body).unwrap();
                                let n: usize = req
                                    .resource_spans
                                    .iter()
                                    .flat_map(|r| &r.scope_spans)
                                    .map(|s| s.spans.len())
                                    .sum();
                                spans.fetch_add(n, Ordering::Relaxed);
                                HttpResponse::Ok()
                                    .content_type("application/x-protobuf")
                                    .finish()
                            }
                        }),
                    )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap();
        });
    });
    url
}
