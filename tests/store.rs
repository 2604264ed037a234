//! The store contract, run on SQLite by default and on PostgreSQL when
//! `RECSYNC_TEST_DATABASE_URL` is set.

mod common;

use chrono::{Duration as ChronoDuration, Utc};
use common::TestDb;
use recsync::store::*;
use serde_json::{Map, Value, json};
use std::time::Duration;

fn vals(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn records_insert_update_tombstone_and_page() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store.migrate().await.expect("migrations are idempotent");
    let mut tx = store.begin().await.unwrap();
    let a = tx
        .insert_record(
            "contact",
            &vals(json!({"name": "Ana", "big": 748600007347569543i64})),
        )
        .await
        .unwrap();
    let b = tx
        .insert_record("contact", &vals(json!({"name": "Bo"})))
        .await
        .unwrap();
    let c = tx
        .insert_record("company", &vals(json!({"name": "Acme"})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(a.version, 1);
    assert!(b.id > a.id && c.id > b.id);

    let got = store.get_record("contact", a.id).await.unwrap().unwrap();
    assert_eq!(got.values["big"].to_string(), "748600007347569543");
    assert!(
        store.get_record("company", a.id).await.unwrap().is_none(),
        "ids are looked up within their model"
    );

    let mut tx = store.begin().await.unwrap();
    let up = tx
        .update_record("contact", a.id, &vals(json!({"name": "Ana María"})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.version, 2);
    assert!(up.updated_at >= a.updated_at);
    let del = tx.delete_record("contact", b.id).await.unwrap().unwrap();
    assert!(del.deleted);
    assert_eq!(del.version, 2);
    assert!(
        tx.delete_record("contact", b.id).await.unwrap().is_none(),
        "a tombstone is not deleted twice"
    );
    assert!(
        tx.update_record("contact", b.id, &Map::new())
            .await
            .unwrap()
            .is_none(),
        "a tombstone is not updated"
    );
    tx.commit().await.unwrap();

    let live = store.list_records("contact", 0, 10).await.unwrap();
    assert_eq!(live.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a.id]);
    assert_eq!(store.count_records("contact").await.unwrap(), 1);
    assert!(
        store
            .get_record("contact", b.id)
            .await
            .unwrap()
            .unwrap()
            .deleted,
        "the tombstone stays readable"
    );

    // Keyset pagination.
    let mut tx = store.begin().await.unwrap();
    for i in 0..5 {
        tx.insert_record("tag", &vals(json!({"n": i})))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let first = store.list_records("tag", 0, 2).await.unwrap();
    let second = store.list_records("tag", first[1].id, 2).await.unwrap();
    let third = store.list_records("tag", second[1].id, 2).await.unwrap();
    let ns: Vec<i64> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|r| r.values["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    db.cleanup(store).await;
}

#[tokio::test]
async fn a_transaction_without_commit_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store().await;
    {
        let mut tx = store.begin().await.unwrap();
        let r = tx
            .insert_record("contact", &vals(json!({"name": "Ghost"})))
            .await
            .unwrap();
        tx.log_change(&change("CON", "Ghost", "success"))
            .await
            .unwrap();
        tx.enqueue(&NewOutbox {
            sync: "CON".into(),
            local_id: r.id,
            action: "create".into(),
            payload: json!({}),
        })
        .await
        .unwrap();
    }
    assert_eq!(store.count_records("contact").await.unwrap(), 0);
    assert!(
        store
            .changes(&ChangeFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_outbox(None, None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    db.cleanup(store).await;
}

/// Two processes on one database (`serve` and a CLI command beside it): a transaction that
/// reads before it writes is not refused because the other process wrote in between (SQLite
/// answered `database is locked` (517) at once to a deferred transaction).
#[tokio::test]
async fn a_transaction_that_reads_first_survives_another_process_writing() {
    let db = TestDb::new().await;
    let cli = db.store().await;
    let serve = db.store().await;
    let mut tx = cli.begin().await.unwrap();
    assert!(tx.get_record("contact", 1).await.unwrap().is_none());
    // The other process writes meanwhile: at once where that is safe, else once the
    // transaction ends (either way within 300 ms or later: no outcome depends on it).
    let mut other = tokio::spawn(async move {
        serve
            .log_change(&change("CON", "Beside", "success"))
            .await
            .map(|_| serve)
    });
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut other).await;
    tx.insert_record("contact", &vals(json!({"name": "Read, then written"})))
        .await
        .expect("the write after a read is not refused");
    tx.commit().await.unwrap();
    let serve = match early {
        Ok(done) => done,
        Err(_) => other.await,
    }
    .unwrap()
    .expect("the other process's write waits for the transaction and succeeds");
    assert_eq!(cli.count_records("contact").await.unwrap(), 1);
    let rows = cli
        .changes(&ChangeFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    serve.close().await;
    db.cleanup(cli).await;
}

#[tokio::test]
async fn links_are_unique_per_binding_and_external_id() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    let link = Link {
        binding: "contact|crm_contact|crm".into(),
        local_id: 1,
        external_id: Some("748600007347569543".into()),
        base: vals(json!({"name": "Ana"})),
        synced_version: 1,
        external_hash: Some("h1".into()),
        left: vec!["CON".into()],
    };
    tx.upsert_link(&link).await.unwrap();
    tx.upsert_link(&Link {
        binding: "contact|crm_contact|other".into(),
        ..link.clone()
    })
    .await
    .unwrap();
    tx.upsert_link(&Link {
        local_id: 2,
        external_id: None,
        ..link.clone()
    })
    .await
    .unwrap();
    tx.upsert_link(&Link {
        local_id: 3,
        external_id: None,
        ..link.clone()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        store
            .link_by_external("contact|crm_contact|crm", "748600007347569543")
            .await
            .unwrap()
            .unwrap()
            .local_id,
        1
    );
    // The syncs a record left travel with the link.
    assert_eq!(
        store
            .link_by_local("contact|crm_contact|crm", 1)
            .await
            .unwrap()
            .unwrap()
            .left,
        vec!["CON".to_string()]
    );
    assert_eq!(
        store
            .link_by_local("contact|crm_contact|other", 1)
            .await
            .unwrap()
            .unwrap()
            .external_id
            .as_deref(),
        Some("748600007347569543")
    );

    let mut tx = store.begin().await.unwrap();
    let err = tx
        .upsert_link(&Link {
            local_id: 9,
            ..link.clone()
        })
        .await
        .unwrap_err();
    assert!(err.is_unique_violation(), "{err}");
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    tx.upsert_link(&Link {
        base: vals(json!({"name": "Ana B"})),
        synced_version: 2,
        ..link.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        tx.link_by_local("contact|crm_contact|crm", 1)
            .await
            .unwrap()
            .unwrap()
            .synced_version,
        2
    );
    assert!(tx.delete_link("contact|crm_contact|crm", 1).await.unwrap());
    assert!(!tx.delete_link("contact|crm_contact|crm", 1).await.unwrap());
    tx.commit().await.unwrap();
    assert!(
        store
            .link_by_external("contact|crm_contact|crm", "748600007347569543")
            .await
            .unwrap()
            .is_none()
    );
    db.cleanup(store).await;
}

async fn enqueue(store: &Store, sync: &str, local_id: i64, action: &str) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let id = tx
        .enqueue(&NewOutbox {
            sync: sync.into(),
            local_id,
            action: action.into(),
            payload: json!({"n": local_id}),
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn outbox_claims_keep_per_record_order() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let a1 = enqueue(&store, "CON", 1, "create").await;
    let a2 = enqueue(&store, "CON", 1, "update").await;
    let b1 = enqueue(&store, "CON", 2, "create").await;
    let lease = Duration::from_secs(30);

    let now = Utc::now() + ChronoDuration::seconds(1);
    let claimed: Vec<i64> = store
        .claim_outbox("w1", now, lease, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        claimed,
        vec![a1, b1],
        "the second change to record 1 waits for the first"
    );
    assert!(
        store
            .claim_outbox("w2", now, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed entries are leased"
    );

    store.outbox_done(a1).await.unwrap();
    let next = store.claim_outbox("w1", now, lease, 10).await.unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a2]);
    assert_eq!(next[0].attempts, 1);

    // A failed attempt waits for its time; a dead letter blocks later changes to its record.
    store
        .outbox_retry_at(a2, now + ChronoDuration::seconds(60), "503 from peer")
        .await
        .unwrap();
    assert!(
        store
            .claim_outbox("w1", now, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let later = store
        .claim_outbox("w1", now + ChronoDuration::seconds(61), lease, 10)
        .await
        .unwrap();
    assert_eq!(later[0].id, a2);
    assert_eq!(later[0].attempts, 2);
    assert_eq!(later[0].last_error.as_deref(), Some("503 from peer"));
    store
        .outbox_dead(a2, "gave up after 2 attempts")
        .await
        .unwrap();
    let a3 = enqueue(&store, "CON", 1, "update").await;
    assert!(
        store
            .claim_outbox("w1", Utc::now() + ChronoDuration::seconds(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_outbox(Some(recsync::store::OutboxStatus::Dead), Some("CON"), 0, 10)
            .await
            .unwrap()[0]
            .id,
        a2
    );

    // The operator's retry puts the dead letter first in line again.
    assert!(store.outbox_requeue(a2).await.unwrap());
    assert!(
        !store.outbox_requeue(a2).await.unwrap(),
        "only dead or discarded entries are requeued"
    );
    let again = store
        .claim_outbox("w1", Utc::now() + ChronoDuration::seconds(1), lease, 10)
        .await
        .unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a2]);
    assert_eq!(again[0].attempts, 1);

    // An expired lease (a worker that died) makes the entry claimable again.
    let after_lease = Utc::now() + ChronoDuration::seconds(120);
    let reclaimed = store
        .claim_outbox("w2", after_lease, lease, 10)
        .await
        .unwrap();
    assert_eq!(
        reclaimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![a2, b1],
        "both leases ran out"
    );
    store.outbox_done(a2).await.unwrap();
    store.outbox_done(b1).await.unwrap();
    assert_eq!(
        store.outbox_depth("CON").await.unwrap(),
        1,
        "a3 is still pending"
    );
    assert!(store.outbox_discard(a3).await.unwrap());
    assert_eq!(store.outbox_depth("CON").await.unwrap(), 0);
    db.cleanup(store).await;
}

#[tokio::test]
async fn concurrent_claimers_never_share_an_entry() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    for i in 0..200 {
        tx.enqueue(&NewOutbox {
            sync: "CON".into(),
            local_id: i,
            action: "create".into(),
            payload: json!({}),
        })
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let now = Utc::now() + ChronoDuration::seconds(1);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_outbox(&format!("w{w}"), now, Duration::from_secs(60), 7)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                mine.extend(batch.into_iter().map(|e| e.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, 200, "every entry claimed once");
    assert_eq!(all.len(), 200, "no entry claimed twice");
    db.cleanup(store).await;
}

fn change(sync: &str, title: &str, status: &str) -> NewChange {
    NewChange {
        sync: sync.into(),
        direction: LogDirection::ExternalToLocal,
        action: LogAction::Create,
        external_id: Some("E1".into()),
        local_id: Some(1),
        name: "Create contact".into(),
        title: title.into(),
        origin_values: json!({"full_name": title}),
        destination_values: json!({"name": title}),
        before_values: Default::default(),
        modified_at: None,
        synced_at: None,
        status: LogStatus::parse(status).unwrap(),
        error_message: String::new(),
        run_id: None,
        actor: "crm".into(),
    }
}

#[tokio::test]
async fn change_log_filters_search_and_pages() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let t0 = Utc::now() - ChronoDuration::hours(2);
    let mut ids = Vec::new();
    let rows = vec![
        NewChange {
            synced_at: Some(t0),
            ..change("CON", "Ana Pérez", "success")
        },
        NewChange {
            direction: LogDirection::LocalToExternal,
            action: LogAction::Update,
            external_id: Some("748600007347569543".into()),
            local_id: Some(7),
            status: LogStatus::Failed,
            error_message: "email: not a valid address".into(),
            ..change("CON", "Bo", "failed")
        },
        NewChange {
            action: LogAction::Rename,
            run_id: Some(3),
            ..change("DOCS", "100% done_ok", "success")
        },
        NewChange {
            action: LogAction::Conflict,
            ..change("CON", "'; DROP TABLE change_log; --", "conflict_resolved")
        },
    ];
    for r in &rows {
        ids.push(store.log_change(r).await.unwrap());
    }
    let q = |f: ChangeFilter| {
        let store = store.clone();
        async move {
            store
                .changes(&ChangeFilter { limit: 50, ..f })
                .await
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        q(ChangeFilter::default()).await,
        vec![ids[3], ids[2], ids[1], ids[0]],
        "newest first"
    );
    assert_eq!(
        q(ChangeFilter {
            sync: Some("DOCS".into()),
            ..Default::default()
        })
        .await,
        vec![ids[2]]
    );
    assert_eq!(
        q(ChangeFilter {
            direction: Some("local_to_external".into()),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    assert_eq!(
        q(ChangeFilter {
            action: Some("rename".into()),
            ..Default::default()
        })
        .await,
        vec![ids[2]]
    );
    assert_eq!(
        q(ChangeFilter {
            status: Some("failed".into()),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    assert_eq!(
        q(ChangeFilter {
            external_id: Some("748600007347569543".into()),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    assert_eq!(
        q(ChangeFilter {
            local_id: Some(7),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    assert_eq!(
        q(ChangeFilter {
            run_id: Some(3),
            ..Default::default()
        })
        .await,
        vec![ids[2]]
    );
    assert_eq!(
        q(ChangeFilter {
            until: Some(t0 + ChronoDuration::seconds(1)),
            ..Default::default()
        })
        .await,
        vec![ids[0]]
    );
    assert_eq!(
        q(ChangeFilter {
            since: Some(t0 + ChronoDuration::seconds(1)),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    // Free text over title and error, case-insensitive, with LIKE metacharacters taken literally.
    assert_eq!(
        q(ChangeFilter {
            q: Some("ANA".into()),
            ..Default::default()
        })
        .await,
        vec![ids[0]]
    );
    assert_eq!(
        q(ChangeFilter {
            q: Some("valid address".into()),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    assert_eq!(
        q(ChangeFilter {
            q: Some("100%".into()),
            ..Default::default()
        })
        .await,
        vec![ids[2]]
    );
    assert_eq!(
        q(ChangeFilter {
            q: Some("e_o".into()),
            ..Default::default()
        })
        .await,
        vec![ids[2]]
    );
    assert!(
        q(ChangeFilter {
            q: Some("%".into()),
            sync: Some("CON".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        q(ChangeFilter {
            q: Some("drop table".into()),
            ..Default::default()
        })
        .await,
        vec![ids[3]]
    );
    // Keyset pagination.
    assert_eq!(
        q(ChangeFilter {
            before: Some(ids[2]),
            ..Default::default()
        })
        .await,
        vec![ids[1], ids[0]]
    );
    let page = store
        .changes(&ChangeFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0].origin_values,
        json!({"full_name": "'; DROP TABLE change_log; --"})
    );
    assert_eq!(page[0].status, "conflict_resolved");
    db.cleanup(store).await;
}

#[tokio::test]
async fn run_claims_are_exclusive_and_state_persists() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let now = Utc::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim_run("CON", &format!("inst{i}"), now, Duration::from_secs(3600))
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as usize;
    }
    assert_eq!(winners, 1, "exactly one instance gets the run");
    let holder = store
        .sync_state("CON")
        .await
        .unwrap()
        .unwrap()
        .running_by
        .unwrap();
    store.release_run("CON", "someone-else").await.unwrap();
    assert!(
        !store
            .claim_run("CON", "late", now, Duration::from_secs(3600))
            .await
            .unwrap(),
        "only the holder releases"
    );
    // A claim older than the stale limit may be taken over.
    assert!(
        store
            .claim_run(
                "CON",
                "rescuer",
                now + ChronoDuration::hours(2),
                Duration::from_secs(3600)
            )
            .await
            .unwrap()
    );
    store.release_run("CON", "rescuer").await.unwrap();
    assert!(
        store
            .claim_run("CON", &holder, now, Duration::from_secs(3600))
            .await
            .unwrap()
    );

    let run = store
        .start_run("CON", "manual", &holder, recsync::store::RunStatus::Running)
        .await
        .unwrap();
    store.set_running_run("CON", &holder, run).await.unwrap();
    assert_eq!(
        store.sync_state("CON").await.unwrap().unwrap().running_run,
        Some(run)
    );
    let counts = RunCounts {
        pulled: 10,
        created: 4,
        updated: 3,
        failed: 1,
        conflicts: 1,
        pushed: 2,
        ..Default::default()
    };
    store
        .finish_run(run, recsync::store::RunStatus::Success, &counts, None)
        .await
        .unwrap();
    store.release_run("CON", &holder).await.unwrap();
    let runs = store.runs(Some("CON"), None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (
            runs[0].pulled,
            runs[0].created,
            runs[0].failed,
            runs[0].pushed
        ),
        (10, 4, 1, 2)
    );
    assert_eq!(runs[0].trigger, "manual");
    assert!(runs[0].finished_at.is_some());

    let next = now + ChronoDuration::minutes(15);
    store
        .set_next_run("CON", Some(next), Some("every 15m"))
        .await
        .unwrap();
    store.set_cursor("CON", Some("AAE-cursor")).await.unwrap();
    let st = store.sync_state("CON").await.unwrap().unwrap();
    assert_eq!(st.cursor.as_deref(), Some("AAE-cursor"));
    assert_eq!(st.schedule.as_deref(), Some("every 15m"));
    assert_eq!(
        st.next_run_at.unwrap().timestamp_micros(),
        next.timestamp_micros()
    );
    assert!(st.running_by.is_none());
    db.cleanup(store).await;
}

#[tokio::test]
async fn idempotency_keys_replay_within_their_window() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut tx = store.begin().await.unwrap();
    tx.put_idempotent("crm", "req-1", "print-1", 200, r#"{"ok":true}"#)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.put_idempotent("crm", "req-1", "print-2", 500, "{}")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let day_ago = Utc::now() - ChronoDuration::hours(24);
    assert_eq!(
        store
            .idempotent_response("crm", "req-1", day_ago)
            .await
            .unwrap(),
        Some(recsync::store::Idempotent {
            status: 200,
            body: r#"{"ok":true}"#.to_string(),
            fingerprint: Some("print-1".into()),
        }),
        "the first response is the one replayed, with its request's fingerprint"
    );
    assert_eq!(
        store
            .idempotent_response("other", "req-1", day_ago)
            .await
            .unwrap(),
        None,
        "keys are per caller"
    );
    assert_eq!(
        store
            .idempotent_response("crm", "req-1", Utc::now() + ChronoDuration::seconds(5))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .prune_idempotency(Utc::now() + ChronoDuration::seconds(5))
            .await
            .unwrap(),
        1
    );
    db.cleanup(store).await;
}

/// Many tasks writing at once: SQLite serialises them on its one writer and never answers
/// `database is locked`; PostgreSQL takes them in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_see_database_is_locked() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let mut tx = store.begin().await?;
                let r = tx
                    .insert_record("contact", &vals(json!({"w": w, "i": i})))
                    .await?;
                tx.log_change(&change("CON", "x", "success")).await?;
                tx.enqueue(&NewOutbox {
                    sync: "CON".into(),
                    local_id: r.id,
                    action: "create".into(),
                    payload: json!({}),
                })
                .await?;
                tx.commit().await?;
                // Readers run alongside the writers.
                store
                    .get_record("contact", r.id)
                    .await?
                    .expect("visible after commit");
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("a writer failed: {e}");
        }
    }
    assert_eq!(store.count_records("contact").await.unwrap(), 320);
    assert_eq!(store.outbox_depth("CON").await.unwrap(), 320);
    db.cleanup(store).await;
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(
        Store::connect("mysql://x").await,
        Err(StoreError::UnsupportedUrl)
    ));
}

/// Shows which backend this run of the suite exercised (CI runs it on both).
#[tokio::test]
async fn suite_runs_on_the_requested_backend() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let expected = if db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(store.backend_name(), expected);
    store.ping().await.unwrap();
    println!("store backend under test: {expected}");
    db.cleanup(store).await;
}
