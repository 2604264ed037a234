//! Several `recsync serve` processes on one database, as behind a load balancer: the same create
//! sent to two instances at the same moment never fails; edits of one record made through
//! different instances reach the external system in order; and the deliveries a killed instance
//! had in flight are taken over within seconds, not after the claim timeout.

mod common;
use common::Killed;

use common::harness::PEER_KEY;
use recsync::peer::{Faults, Peer, PeerOptions, PeerState};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const MAPPING: &str = r#"
[models.item]
display = "name"
fields = { name = { type = "char", required = true } }

[external_models.ext_item]
fields = { unique_id = "char", name = "char" }

[web_services.crm]
shipping_url = "@PEER@/api/crm/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[web_services.out]
shipping_url = "@PEER@/api/out/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.IN]
model = "item"
external_model = "ext_item"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]

[syncs.OUT]
model = "item"
external_model = "ext_item"
web_service = "out"
direction = "to_external"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]
"#;

const KEY: &str = "ops-key-0123456789";

/// A serve process, killed (SIGKILL) when dropped.
struct Setup {
    dir: tempfile::TempDir,
    db: common::TestDb,
    peer: Arc<PeerState>,
    peer_handle: actix_web::dev::ServerHandle,
    client: reqwest::Client,
}

async fn setup() -> Setup {
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
    let peer_handle = peer.handle();
    tokio::spawn(peer.run());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/m.toml"),
        MAPPING.replace("@PEER@", &peer_url),
    )
    .unwrap();
    // A claim timeout far beyond the test's patience: only the heartbeat (or, on SQLite, the
    // restart) can explain a takeover.
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\nclaim_timeout = \"10m\"\noutbox_backoff = \"100ms\"\n[[api_keys]]\nname = \"ops\"\nkey = \"{KEY}\"\nscopes = [\"admin\"]\n",
            db.url
        ),
    )
    .unwrap();
    Setup {
        dir,
        db,
        peer: state,
        peer_handle,
        client: reqwest::Client::new(),
    }
}

fn port() -> u16 {
    common::free_port()
}

/// Starts `recsync serve` on a free port and waits until it answers; returns it and its URL.
async fn serve(s: &Setup, log: &str) -> (Killed, String) {
    serve_with(s, log, None).await
}

/// [`serve`], killing itself at a crash point (`RECSYNC_CRASH_POINT`, `src/crash.rs`).
async fn serve_with(s: &Setup, log: &str, crash: Option<&str>) -> (Killed, String) {
    let port = port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsync"));
    if let Some(c) = crash {
        cmd.env("RECSYNC_CRASH_POINT", c);
    }
    let child = cmd
        .args([
            "serve",
            "--config",
            "recsync.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "info,sqlx=warn")
        .current_dir(s.dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(s.dir.path().join(log)).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    common::eventually(30, "the server to answer", || async {
        s.client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    (Killed(child), base)
}

async fn call(s: &Setup, method: &str, url: String, body: Value) -> u16 {
    s.client
        .request(method.parse().unwrap(), url)
        .header("api_key", KEY)
        .json(&body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The external side's records by name (the names carry their local identity).
fn delivered(s: &Setup) -> Vec<String> {
    let mut names: Vec<String> = s
        .peer
        .records("out")
        .values()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_fail_a_raced_create_and_keep_each_records_edits_in_order() {
    let s = setup().await;
    if !s.db.is_postgres() {
        eprintln!("PostgreSQL only: several instances share a PostgreSQL database");
        return;
    }
    let store = s.db.store().await;
    let (a, base_a) = serve(&s, "a.log").await;
    let (b, base_b) = serve(&s, "b.log").await;
    s.peer.set_faults(Faults {
        jitter_ms: 30,
        only: Some("ship".into()),
        ..Default::default()
    });

    // The same create, to both instances at the same moment, 300 times (16 pairs at once).
    let n = 300;
    let mut statuses = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let calls = chunk.iter().flat_map(|i| {
            let body = json!({"unique_id": format!("R-{i:03}"), "name": format!("R-{i:03} v0")});
            [
                call(&s, "POST", format!("{base_a}/sync/IN/create"), body.clone()),
                call(&s, "POST", format!("{base_b}/sync/IN/create"), body),
            ]
        });
        statuses.extend(futures_util::future::join_all(calls).await);
    }
    let failed: Vec<_> = statuses.iter().filter(|c| **c != 200).collect();
    let logs = || {
        ["a.log", "b.log"]
            .map(|f| std::fs::read_to_string(s.dir.path().join(f)).unwrap_or_default())
            .join("\n---\n")
    };
    assert!(
        failed.is_empty(),
        "{} of {} raced creates failed: {failed:?}\n{}",
        failed.len(),
        statuses.len(),
        logs()
    );
    assert_eq!(store.count_records("item").await.unwrap(), n as i64);
    for i in 0..n {
        assert!(
            store
                .link_by_external("IN", &format!("R-{i:03}"))
                .await
                .unwrap()
                .is_some()
        );
    }

    // Eight edits of each of 20 records, alternating between the instances, each acknowledged
    // before the next; the records are edited side by side.
    let edits = 8;
    let per_record = (0..20).map(|j| {
        let s = &s;
        let (base_a, base_b) = (base_a.clone(), base_b.clone());
        async move {
            for k in 1..=edits {
                let base = if k % 2 == 0 { &base_a } else { &base_b };
                let status = call(
                    s,
                    "PUT",
                    format!("{base}/sync/IN/R-{j:03}"),
                    json!({"name": format!("R-{j:03} v{k}")}),
                )
                .await;
                assert_eq!(status, 200, "edit {k} of R-{j:03}");
            }
        }
    });
    futures_util::future::join_all(per_record).await;

    // The external system ends with the last value of each record, and holds each record once.
    let expected: Vec<String> = (0..n)
        .map(|i| {
            if i < 20 {
                format!("R-{i:03} v{edits}")
            } else {
                format!("R-{i:03} v0")
            }
        })
        .collect();
    common::eventually(90, "every delivery to settle", || async {
        (delivered(&s) == expected).then_some(())
    })
    .await;
    assert_eq!(s.peer.records("out").len(), n, "one external record each");
    drop(a);
    drop(b);
    s.peer_handle.stop(false).await;
    s.db.cleanup(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_deliveries_are_taken_over_within_seconds() {
    let s = setup().await;
    let store = s.db.store().await;
    // Slow answers, so deliveries are in flight when the instance dies.
    s.peer.set_faults(Faults {
        latency_ms: 1500,
        only: Some("ship".into()),
        ..Default::default()
    });
    let (a, base_a) = serve(&s, "a.log").await;
    let n = 20;
    for i in 0..n {
        let status = call(
            &s,
            "POST",
            format!("{base_a}/sync/IN/create"),
            json!({"unique_id": format!("K-{i:02}"), "name": format!("K-{i:02}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    common::eventually(30, "deliveries in flight", || async {
        let inflight = store
            .list_outbox(Some(recsync::store::OutboxStatus::Inflight), None, 0, 100)
            .await
            .unwrap();
        (!inflight.is_empty()).then_some(())
    })
    .await;
    drop(a); // SIGKILL, with deliveries in flight
    s.peer.set_faults(Faults::default());

    // Another instance (on SQLite, the restarted server) takes the dead one's claims over.
    let restarted = Instant::now();
    let (b, _) = serve(&s, "b.log").await;
    let expected: Vec<String> = (0..n).map(|i| format!("K-{i:02}")).collect();
    // Done means every entry recorded as delivered, the dead instance's in-flight ones too
    // (the external side may already hold those: the dead process's request got there).
    common::eventually(60, "every delivery after the takeover", || async {
        let open = store.list_outbox(None, None, 0, 100).await.unwrap();
        (open.iter().all(|e| e.status == "done") && delivered(&s) == expected).then_some(())
    })
    .await;
    // (The claim timeout is ten minutes: the minute allowed above is the takeover's.)
    eprintln!(
        "delivered everything {:?} after the new instance started",
        restarted.elapsed()
    );
    assert_eq!(
        s.peer.records("out").len(),
        n,
        "each record delivered once (the Idempotency-Key of a redelivery is replayed)"
    );
    drop(b);
    s.peer_handle.stop(false).await;
    s.db.cleanup(store).await;
}

/// A create that reached the external system just before its instance died is sent again
/// with the record's newer values under the same `Idempotency-Key`, and answered from its first
/// attempt (the older values). The link must not take the values sent for the values there:
/// the update that follows sends the newer values (convergence seeds 8001 and 9254).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answered_from_its_first_attempt_is_followed_by_the_values_of_now() {
    let s = setup().await;
    let store = s.db.store().await;
    // A long backoff: the edit below lands while the create waits for its third attempt.
    let config = std::fs::read_to_string(s.dir.path().join("recsync.toml")).unwrap();
    std::fs::write(
        s.dir.path().join("recsync.toml"),
        config.replace("outbox_backoff = \"100ms\"", "outbox_backoff = \"2s\""),
    )
    .unwrap();
    // The first instance delivers the create and dies before recording it.
    let (mut a, base_a) = serve_with(&s, "a.log", Some("outbox.before_record:1")).await;
    let status = call(
        &s,
        "POST",
        format!("{base_a}/sync/IN/create"),
        json!({"unique_id": "R-1", "name": "First"}),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while a.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the first instance died at the crash point"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(delivered(&s), ["First"], "the create reached the peer");
    // The next attempt fails before the peer reads it; the record changes before the one
    // after.
    s.peer.set_faults(Faults {
        fail_next: 1,
        only: Some("ship".into()),
        ..Default::default()
    });
    let (b, base_b) = serve(&s, "b.log").await;
    common::eventually(60, "the create's second attempt", || async {
        (s.peer.calls("out", "ship").len() >= 2).then_some(())
    })
    .await;
    let status = call(
        &s,
        "PUT",
        format!("{base_b}/sync/IN/R-1"),
        json!({"unique_id": "R-1", "name": "Second"}),
    )
    .await;
    assert_eq!(status, 200);
    common::eventually(60, "every delivery recorded", || async {
        let open = store.list_outbox(None, None, 0, 100).await.unwrap();
        (!open.is_empty() && open.iter().all(|e| e.status == "done")).then_some(())
    })
    .await;
    assert_eq!(
        delivered(&s),
        ["Second"],
        "one record there, with the values of now"
    );
    drop(b);
    s.peer_handle.stop(false).await;
    s.db.cleanup(store).await;
}

/// A create that reached the external system just before its instance died, whose record an
/// operator paused before the retry: the retry still completes it (same `Idempotency-Key`,
/// answered from the first attempt), so the link learns the external id and the resume sends
/// no second create (convergence seed 111 on PostgreSQL: a CRM record twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_delivered_before_a_crash_is_completed_even_when_its_record_is_paused() {
    let s = setup().await;
    let store = s.db.store().await;
    let (mut a, base_a) = serve_with(&s, "a.log", Some("outbox.before_record:1")).await;
    let status = call(
        &s,
        "POST",
        format!("{base_a}/sync/IN/create"),
        json!({"unique_id": "R-1", "name": "First"}),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while a.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the first instance died at the crash point"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(delivered(&s), ["First"], "the create reached the peer");
    // The operator pauses the record for OUT before any instance retries the create.
    let local_id = store
        .link_by_external("IN", "R-1")
        .await
        .unwrap()
        .expect("R-1 is linked")
        .local_id;
    assert!(store.pause_record("OUT", local_id, "ops").await.unwrap());
    let (b, base_b) = serve(&s, "b.log").await;
    common::eventually(60, "the retried create recorded", || async {
        let open = store.list_outbox(None, Some("OUT"), 0, 100).await.unwrap();
        (!open.is_empty() && open.iter().all(|e| e.status == "done")).then_some(())
    })
    .await;
    let linked = store.link_by_local("OUT", local_id).await.unwrap();
    assert!(
        linked.as_ref().is_some_and(|l| l.external_id.is_some()),
        "the link learned the external id: {linked:?}"
    );
    let r = s
        .client
        .post(format!(
            "{base_b}/api/v1/syncs/OUT/records/{local_id}/resume"
        ))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    common::eventually(60, "every delivery recorded", || async {
        let open = store.list_outbox(None, None, 0, 100).await.unwrap();
        open.iter().all(|e| e.status == "done").then_some(())
    })
    .await;
    assert_eq!(delivered(&s), ["First"], "one record there, not two");
    drop(b);
    s.peer_handle.stop(false).await;
    s.db.cleanup(store).await;
}
