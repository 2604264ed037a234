//! Database faults: a read-only SQLite file, a full one, and (run by `.ci/run` on its own,
//! because it restarts the shared server) PostgreSQL restarted in the middle of a load. In every
//! case the refused requests get 503, nothing answered 200 is lost, and service resumes without
//! a manual step.

mod common;
use common::Killed;

use common::harness::{CRM_KEY, Harness, MAPPING};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve(dir: &std::path::Path, url: &str, port: u16, env: &[(&str, String)]) -> Killed {
    std::fs::write(
        dir.join("recsync.toml"),
        format!(
            "database_url = \"{url}\"\n[[api_keys]]\nname = \"crm\"\nkey = \"{CRM_KEY}\"\nscopes = [\"sync:*\", \"read\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsync"));
    cmd.args([
        "serve",
        "--config",
        "recsync.toml",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .current_dir(dir)
    .env("RUST_LOG", "warn,sqlx=error")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("serve-{port}.log"))).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Killed(cmd.spawn().unwrap())
}

async fn ready(client: &reqwest::Client, base: &str) {
    common::eventually(30, "the server to answer", || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
}

fn port() -> u16 {
    common::free_port()
}

async fn create(client: &reqwest::Client, base: &str, id: &str, name: &str) -> u16 {
    client
        .post(format!("{base}/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"unique_id": id, "name": name}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/test.toml"),
        MAPPING.replace("@PEER@", "http://127.0.0.1:9"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_or_full_sqlite_file_refuses_with_503_and_acknowledges_nothing() {
    let db = common::TestDb::new().await;
    if db.is_postgres() {
        eprintln!("SQLite only");
        return;
    }
    let store = db.store().await; // migrated
    let dir = setup();
    let client = reqwest::Client::new();
    let sep = if db.url.contains('?') { '&' } else { '?' };

    // Read-only: every write is refused with 503.
    let p = port();
    let base = format!("http://127.0.0.1:{p}");
    {
        let _s = serve(dir.path(), &format!("{}{sep}mode=ro", db.url), p, &[]);
        ready(&client, &base).await;
        for i in 0..5 {
            assert_eq!(
                create(&client, &base, &format!("RO-{i}"), "read only").await,
                503
            );
        }
    }
    for i in 0..5 {
        assert!(
            store
                .link_by_external("CON", &format!("RO-{i}"))
                .await
                .unwrap()
                .is_none()
        );
    }
    let log = std::fs::read_to_string(dir.path().join(format!("serve-{p}.log"))).unwrap();
    assert!(log.contains("readonly database"), "{log}");

    // Full: a size cap a little above what is there; writes until they are refused.
    let pages: i64 = {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut c)
            .await
            .unwrap()
    };
    let p = port();
    let base = format!("http://127.0.0.1:{p}");
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    {
        let _s = serve(
            dir.path(),
            &db.url,
            p,
            &[("RECSYNC_SQLITE_MAX_PAGE_COUNT", (pages + 40).to_string())],
        );
        ready(&client, &base).await;
        let big = "x".repeat(3000);
        let started = Instant::now();
        let mut i = 0;
        while refused.len() < 5 && started.elapsed() < Duration::from_secs(60) {
            i += 1;
            let id = format!("FULL-{i}");
            match create(&client, &base, &id, &big).await {
                200 => acked.push(id),
                503 => refused.push(id),
                other => panic!("{id}: unexpected {other}"),
            }
        }
        // Still answering, still refusing cleanly.
        assert_eq!(
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert!(
        !acked.is_empty() && refused.len() >= 5,
        "{} acked, {} refused",
        acked.len(),
        refused.len()
    );
    let log = std::fs::read_to_string(dir.path().join(format!("serve-{p}.log"))).unwrap();
    assert!(log.contains("full"), "{log}");
    // Without the cap: everything acknowledged is there, nothing refused is, and writes work.
    let p = port();
    let base = format!("http://127.0.0.1:{p}");
    let _s = serve(dir.path(), &db.url, p, &[]);
    ready(&client, &base).await;
    for id in &acked {
        assert!(
            store.link_by_external("CON", id).await.unwrap().is_some(),
            "{id} lost"
        );
    }
    for id in &refused {
        assert!(
            store.link_by_external("CON", id).await.unwrap().is_none(),
            "{id} half-written"
        );
    }
    assert_eq!(create(&client, &base, "AFTER", "after").await, 200);
}

/// Restarts PostgreSQL under load. Run by `.ci/run` on its own (`--ignored`), since it breaks
/// every other connection to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "restarts the PostgreSQL server; .ci/run runs it alone"]
async fn postgres_restarted_under_load_loses_nothing_and_service_resumes() {
    let h = Harness::start().await;
    assert!(
        h.db.is_postgres(),
        "set RECSYNC_TEST_DATABASE_URL to a PostgreSQL server"
    );
    let base = h.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // Acknowledgements so far, and since PostgreSQL came back.
    let acks = std::sync::Arc::new(AtomicUsize::new(0));
    let restarted = std::sync::Arc::new(AtomicBool::new(false));
    let acks_after = std::sync::Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        let (acks, restarted, acks_after) = (acks.clone(), restarted.clone(), acks_after.clone());
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let id = format!("PG-{c}-{i}");
                let status = create(&client, &base, &id, "under restart").await;
                if status == 200 {
                    acks.fetch_add(1, Ordering::SeqCst);
                    if restarted.load(Ordering::SeqCst) {
                        acks_after.fetch_add(1, Ordering::SeqCst);
                    }
                }
                results.push((id, status));
            }
            results
        }));
    }
    // Under way: a few hundred changes acknowledged before the restart.
    common::eventually(30, "the load to get going", || async {
        (acks.load(Ordering::SeqCst) >= 300).then_some(())
    })
    .await;
    let out = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            "15",
            "main",
            "restart",
            "-m",
            "fast",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Back by itself: every client acknowledged again, a few hundred times in all.
    restarted.store(true, Ordering::SeqCst);
    common::eventually(60, "service to resume", || async {
        (acks_after.load(Ordering::SeqCst) >= 300).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let acked: Vec<_> = results.iter().filter(|(_, s)| *s == 200).collect();
    let refused: Vec<_> = results.iter().filter(|(_, s)| *s == 503).collect();
    let other: Vec<_> = results
        .iter()
        .filter(|(_, s)| *s != 200 && *s != 503)
        .collect();
    println!(
        "{} acknowledged, {} refused with 503, {} other",
        acked.len(),
        refused.len(),
        other.len()
    );
    assert!(other.is_empty(), "only 200 or 503: {other:?}");
    // Service resumed by itself: the last requests were acknowledged.
    assert_eq!(
        results
            .iter()
            .rev()
            .take(4)
            .filter(|(_, s)| *s == 200)
            .count(),
        4
    );
    assert_eq!(create(&client, &base, "PG-after", "after").await, 200);
    for (id, _) in acked {
        assert!(
            h.engine
                .store
                .link_by_external("CON", id)
                .await
                .unwrap()
                .is_some(),
            "{id} lost"
        );
    }
    for (id, _) in refused {
        assert!(
            h.engine
                .store
                .link_by_external("CON", id)
                .await
                .unwrap()
                .is_none(),
            "{id} half-written"
        );
    }
    h.stop().await;
}
