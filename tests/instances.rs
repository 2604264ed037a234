//! Two `recsync serve` processes on one database, with a sync due every second for 20 seconds
//! while the peer keeps producing records: runs of the sync never overlap, and every peer record
//! arrives exactly once. (On PostgreSQL in CI; on a shared SQLite file otherwise.)

mod common;
use common::Killed;

use common::harness::PEER_KEY;
use recsync::peer::{Faults, Peer, PeerOptions};
use recsync::store::ChangeFilter;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAPPING: &str = r#"
[models.item]
display = "name"
fields = { name = { type = "char", required = true }, email = "char" }

[external_models.multi_item]
fields = { unique_id = "char", name = "char", email = "char" }

[web_services.multi]
url = "@PEER@/api/multi/fetch"
confirmation_url = "@PEER@/api/multi/confirm"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.MULTI]
model = "item"
external_model = "multi_item"
web_service = "multi"
direction = "to_local"
mode = "cron"
every = "1s"
limit = 20
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

fn serve(dir: &std::path::Path, log: &str) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_recsync"))
            .args([
                "serve",
                "--config",
                "recsync.toml",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info,sqlx=warn")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_never_run_a_sync_at_once_and_pull_each_record_once() {
    let db = common::TestDb::new().await;
    let peer = Peer::from_listener(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        PeerOptions {
            listen: String::new(),
            api_key: Some(PEER_KEY.into()),
            id_field: "unique_id".into(),
            synthetic: Default::default(),
            signing_secret: None,
            callback: None,
        },
    )
    .unwrap();
    let peer_url = peer.url();
    let state = peer.state.clone();
    let handle = peer.handle();
    tokio::spawn(peer.run());
    // Slow pages, so a run with a backlog outlasts the one-second interval.
    state.set_faults(Faults {
        latency_ms: 400,
        only: Some("fetch".into()),
        ..Default::default()
    });
    let mut total = 0usize;
    for _ in 0..200 {
        total += 1;
        state
            .upsert(
                "multi",
                Some(format!("M{total}")),
                obj(json!({"name": format!("Item {total}")})),
            )
            .await;
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/multi.toml"),
        MAPPING.replace("@PEER@", &peer_url),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\n[[api_keys]]\nname = \"ops\"\nkey = \"ops-key-0123456789\"\nscopes = [\"admin\"]\n",
            db.url
        ),
    )
    .unwrap();
    // Migrate first, so the two processes do not race to create the schema.
    let store = db.store().await;
    let a = serve(dir.path(), "a.log");
    let b = serve(dir.path(), "b.log");

    // Twenty seconds of the sync being due every second, with records arriving all along
    // (an update to an existing record now and then, too); on a loaded machine, where runs
    // take longer, the load goes on until five runs have done work (at most 90 s).
    let started = Instant::now();
    let mut updated = 0;
    let worked_so_far = || async {
        store
            .runs(Some("MULTI"), None, 10_000)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.status != "skipped" && r.status != "running")
            .count()
    };
    while started.elapsed() < Duration::from_secs(20)
        || (started.elapsed() < Duration::from_secs(90) && worked_so_far().await < 5)
    {
        for _ in 0..4 {
            total += 1;
            state
                .upsert(
                    "multi",
                    Some(format!("M{total}")),
                    obj(json!({"name": format!("Item {total}")})),
                )
                .await;
        }
        if total.is_multiple_of(20) {
            updated += 1;
            state
                .upsert(
                    "multi",
                    Some(format!("M{}", total / 2)),
                    obj(json!({"email": format!("u{total}@example.com")})),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the last runs take what is left.
    common::eventually(60, "the peer's queue to drain", || async {
        let left = state
            .calls("multi", "confirm")
            .iter()
            .flat_map(|c| c["content"].as_array().cloned().unwrap_or_default())
            .count();
        (left >= total + updated).then_some(())
    })
    .await;
    // The run that confirmed the last page writes its counts just after: it ends before the
    // processes do.
    common::eventually(60, "the last run to end", || async {
        let runs = store.runs(Some("MULTI"), None, 10_000).await.unwrap();
        runs.iter().all(|r| r.status != "running").then_some(())
    })
    .await;
    drop(a);
    drop(b);

    // No two runs that did work overlap in time.
    let runs = store.runs(Some("MULTI"), None, 10_000).await.unwrap();
    let mut worked: Vec<_> = runs.iter().filter(|r| r.status != "skipped").collect();
    worked.sort_by_key(|r| r.started_at);
    for pair in worked.windows(2) {
        let end = pair[0].finished_at.unwrap_or_else(chrono::Utc::now);
        assert!(
            end <= pair[1].started_at,
            "run {} ({:?}, {}) overlaps run {} ({:?}, {})",
            pair[0].id,
            pair[0].instance,
            pair[0].started_at,
            pair[1].id,
            pair[1].instance,
            pair[1].started_at
        );
    }
    let by_instance = runs.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry((r.instance.clone().unwrap_or_default(), r.status))
            .or_insert(0) += 1;
        m
    });
    let instances: std::collections::HashSet<_> =
        runs.iter().filter_map(|r| r.instance.clone()).collect();
    let logs = || {
        ["a.log", "b.log"]
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .join("\n---\n")
    };
    assert_eq!(
        instances.len(),
        2,
        "both processes took part: {by_instance:?}\n{}",
        logs()
    );
    assert!(
        worked.len() >= 5,
        "runs happened all along: {by_instance:?}"
    );
    assert!(
        runs.iter().any(|r| r.status == "skipped"),
        "a due time met a run in progress at least once: {by_instance:?}"
    );
    eprintln!(
        "{} runs that worked, {} skipped; by instance and status: {by_instance:?}",
        worked.len(),
        runs.len() - worked.len()
    );

    // Every peer record arrived exactly once.
    assert_eq!(store.count_records("item").await.unwrap(), total as i64);
    let creates = store
        .changes(&ChangeFilter {
            sync: Some("MULTI".into()),
            action: Some("create".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for c in &creates {
        *per_id.entry(c.external_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per_id.len(), total, "one create row per peer record");
    assert!(per_id.values().all(|n| *n == 1), "no record created twice");
    for n in 1..=total {
        let id = format!("M{n}");
        let link = store
            .link_by_external("MULTI", &id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} is linked"));
        let rec = store
            .get_record("item", link.local_id)
            .await
            .unwrap()
            .unwrap();
        let peer_rec = state.record("multi", &id).unwrap();
        assert_eq!(rec.values["name"], peer_rec["name"], "{id}");
        assert_eq!(
            rec.values.get("email").unwrap_or(&Value::Null),
            peer_rec.get("email").unwrap_or(&Value::Null),
            "{id}"
        );
    }
    // Each change pulled once, but for what a failed run pulled and did not confirm: the peer
    // serves that page again, by design (two processes on one SQLite file under a loaded
    // machine have failed a run now and then).
    let pulled: i64 = runs.iter().map(|r| r.pulled).sum();
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| (r.id, r.pulled, r.error.clone()))
        .collect();
    let again: i64 = failed.iter().map(|f| f.1).sum();
    assert!(
        pulled as usize >= total + updated && pulled - again <= (total + updated) as i64,
        "each change pulled once: {pulled} pulled for {} changes; failed runs: {failed:?}\n{}",
        total + updated,
        logs()
    );
    handle.stop(false).await;
    db.cleanup(store).await;
}
