//! Runs: a manual run pulls pages from the peer through the apply path, confirms them, retries
//! references to records that arrived later in the same run, and is recorded with its counts.

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, Harness, READ_KEY};
use serde_json::{Value, json};

async fn wait_for_run(h: &Harness, run_id: i64) -> Value {
    eventually(20, "the run to finish", || async {
        let runs: Value = h
            .client
            .get(h.url("/api/v1/runs?sync=PULL"))
            .header("X-Api-Key", READ_KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        runs["runs"]
            .as_array()?
            .iter()
            .find(|r| r["id"] == json!(run_id) && r["finished_at"] != Value::Null)
            .cloned()
    })
    .await
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn a_manual_run_pulls_confirms_and_counts() {
    let h = Harness::start().await;
    // Five changes on the peer's side; the first refers to a record that comes later.
    h.peer
        .upsert(
            "pull",
            Some("P-A".into()),
            obj(json!({"name": "Ann", "manager_id": "P-B"})),
        )
        .await;
    h.peer
        .upsert("pull", Some("P-B".into()), obj(json!({"name": "Boss"})))
        .await;
    h.peer
        .upsert(
            "pull",
            Some("P-C".into()),
            obj(json!({"name": "Cy", "email": "cy@example.com"})),
        )
        .await;
    h.peer
        .upsert(
            "pull",
            Some("P-C".into()),
            obj(json!({"email": "cy@new.example"})),
        )
        .await;
    h.peer
        .upsert("pull", Some("P-D".into()), obj(json!({"name": "Dee"})))
        .await;

    let r = h
        .client
        .post(h.url("/api/v1/syncs/PULL/run"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["run_id"].as_i64().unwrap();
    let run = wait_for_run(&h, run_id).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["pulled"], 5, "pages of 2 until a short page: {run}");
    assert_eq!(run["created"], 4, "{run}");
    assert_eq!(
        run["skipped"], 1,
        "the peer sends P-C as it is now both times, so the second is a no-op: {run}"
    );
    assert_eq!(
        run["failed"], 0,
        "the forward reference was retried at the end: {run}"
    );

    let id_of = |ext: &'static str| {
        let store = h.engine.store.clone();
        async move {
            store
                .link_by_external("PULL", ext)
                .await
                .unwrap()
                .unwrap()
                .local_id
        }
    };
    let ann = h
        .engine
        .store
        .get_record("contact", id_of("P-A").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ann.values["manager"], json!(id_of("P-B").await));
    let cy = h
        .engine
        .store
        .get_record("contact", id_of("P-C").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cy.values["email"], json!("cy@new.example"));
    // Every change was confirmed, so the peer has nothing left to give.
    let left: Value = h
        .client
        .post(format!("{}/api/pull/fetch", h.peer_url))
        .header("api_key", common::harness::PEER_KEY)
        .json(&json!({"limit": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(left["content"], json!([]), "{left}");
    // The change-control rows carry the run id and the `manual` actor.
    let rows = h
        .engine
        .store
        .changes(&recsync::store::ChangeFilter {
            run_id: Some(run_id),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rows.iter().filter(|c| c.status == "success").count(),
        4,
        "{rows:?}"
    );
    let first_try: Vec<_> = rows.iter().filter(|c| c.status == "failed").collect();
    assert_eq!(
        first_try.len(),
        1,
        "P-A's first attempt is logged before its retry succeeds"
    );
    assert_eq!(
        first_try[0].error_message,
        "manager: no `contact` record linked to external id `P-B` in sync `PULL`"
    );
    assert!(rows.iter().all(|c| c.actor == "manual"));

    // The sync list shows the last run.
    let syncs: Value = h
        .client
        .get(h.url("/api/v1/syncs"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pull = syncs["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"] == "PULL")
        .unwrap()
        .clone();
    assert_eq!(pull["last_run"]["id"], json!(run_id));
    assert_eq!(pull["schedule"], "every 1h");

    // A second run finds nothing new; the CLI runs it against the same database.
    let mut cli = std::process::Command::new(common::recsync_bin());
    cli.args(["run", "PULL", "--database-url", &h.db.url, "--mappings"])
        .arg(h.dir.path().join("mappings"));
    let out = common::output(cli).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(": success. pulled 0, created 0"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn a_failing_record_is_confirmed_as_failed_and_does_not_stop_the_page() {
    let h = Harness::start().await;
    h.peer
        .upsert("pull", Some("Q-1".into()), obj(json!({"name": "Good"})))
        .await;
    h.peer
        .upsert(
            "pull",
            Some("Q-2".into()),
            obj(json!({"email": "no-name@example.com"})),
        )
        .await;
    h.peer
        .upsert(
            "pull",
            Some("Q-3".into()),
            obj(json!({"name": "Also good"})),
        )
        .await;
    let r = h
        .client
        .post(h.url("/api/v1/syncs/PULL/run"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let run_id = r.json::<Value>().await.unwrap()["run_id"].as_i64().unwrap();
    let run = wait_for_run(&h, run_id).await;
    assert_eq!(run["status"], "partial", "{run}");
    assert_eq!(
        (run["created"].as_i64(), run["failed"].as_i64()),
        (Some(2), Some(1)),
        "{run}"
    );
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("1 record(s) failed")
    );
    let failed = h
        .engine
        .store
        .changes(&recsync::store::ChangeFilter {
            run_id: Some(run_id),
            status: Some("failed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].error_message.contains("name: is required"),
        "{failed:?}"
    );
    let unknown = h
        .client
        .post(h.url("/api/v1/syncs/NOPE/run"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let denied = h
        .client
        .post(h.url("/api/v1/syncs/PULL/run"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    h.stop().await;
}

async fn pull_runs(h: &Harness) -> Vec<recsync::store::Run> {
    h.engine.store.runs(Some("PULL"), None, 100).await.unwrap()
}

#[tokio::test]
async fn a_due_time_starts_one_run_and_moves_on() {
    let h = Harness::start().await;
    // The start-up tick gave PULL its first due time, an hour from now.
    let state = h
        .engine
        .store
        .sync_state("PULL")
        .await
        .unwrap()
        .expect("scheduled at start-up");
    let due = state.next_run_at.unwrap();
    assert!(due > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert_eq!(state.schedule.as_deref(), Some("every 1h @ UTC"));
    assert!(pull_runs(&h).await.is_empty());
    // Two hours later: one tick runs it, a second tick at the same moment does not.
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    h.engine.tick(later, false).await;
    h.engine.tick(later, false).await;
    eventually(20, "the run to finish", || async {
        pull_runs(&h)
            .await
            .into_iter()
            .find(|r| r.finished_at.is_some())
    })
    .await;
    let runs = pull_runs(&h).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].trigger, "cron");
    let next = h
        .engine
        .store
        .sync_state("PULL")
        .await
        .unwrap()
        .unwrap()
        .next_run_at
        .unwrap();
    assert_eq!(
        next.timestamp_micros(),
        (later + chrono::Duration::hours(1)).timestamp_micros(),
        "counted from the tick, not from the missed time"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_schedule_missed_while_down_runs_once_at_start_up() {
    let h = Harness::start().await;
    let sig = h
        .engine
        .store
        .sync_state("PULL")
        .await
        .unwrap()
        .unwrap()
        .schedule;
    // As if recsync had been down for a day: 24 due times missed.
    let day_ago = chrono::Utc::now() - chrono::Duration::hours(24);
    h.engine
        .store
        .set_next_run("PULL", Some(day_ago), sig.as_deref())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    h.engine.tick(now, true).await;
    h.engine.tick(now, false).await;
    eventually(20, "the run to finish", || async {
        pull_runs(&h)
            .await
            .into_iter()
            .find(|r| r.finished_at.is_some())
    })
    .await;
    let runs = pull_runs(&h).await;
    assert_eq!(runs.len(), 1, "once, not 24 times: {runs:?}");
    assert_eq!(runs[0].trigger, "startup");
    // A changed schedule (hot reload) is taken at once, without a run.
    h.engine
        .store
        .set_next_run("PULL", Some(day_ago), Some("every 5m @ UTC"))
        .await
        .unwrap();
    h.engine.tick(chrono::Utc::now(), false).await;
    let st = h.engine.store.sync_state("PULL").await.unwrap().unwrap();
    assert_eq!(st.schedule.as_deref(), Some("every 1h @ UTC"));
    assert!(st.next_run_at.unwrap() > chrono::Utc::now());
    assert_eq!(pull_runs(&h).await.len(), 1);
    h.stop().await;
}

async fn run_push(h: &Harness) -> recsync::store::Run {
    let r = h
        .client
        .post(h.url("/api/v1/syncs/PUSH/run"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["run_id"].as_i64().unwrap();
    eventually(20, "the push run to finish", || async {
        h.engine
            .store
            .runs(Some("PUSH"), None, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id == run_id && r.finished_at.is_some())
    })
    .await
}

async fn create(h: &Harness, v: Value) -> i64 {
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&v)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

#[tokio::test]
async fn a_cron_run_pushes_what_changed_since_the_last_sync() {
    let h = Harness::start().await;
    let a = create(&h, json!({"name": "Lost A", "stage": "lost"})).await;
    let b = create(&h, json!({"name": "Lost B", "stage": "lost"})).await;
    create(&h, json!({"name": "Lead C", "stage": "lead"})).await;
    // Cron syncs get nothing between runs.
    assert!(
        h.engine
            .store
            .list_outbox(None, Some("PUSH"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let run = run_push(&h).await;
    assert_eq!((run.status.as_str(), run.pushed), ("success", 2), "{run:?}");
    assert_eq!(h.peer.records("push").len(), 2);
    // Nothing changed: nothing is sent.
    let run = run_push(&h).await;
    assert_eq!(run.pushed, 0, "{run:?}");
    // An edit, a deletion and a record leaving the domain.
    let patch = |id: i64, v: Value| {
        h.client
            .patch(h.url(&format!("/api/v1/models/contact/records/{id}")))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&v)
            .send()
    };
    assert_eq!(
        patch(a, json!({"email": "a@example.com"}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        patch(b, json!({"stage": "customer"}))
            .await
            .unwrap()
            .status(),
        200
    );
    let run = run_push(&h).await;
    assert_eq!((run.pushed, run.unlinked), (1, 1), "{run:?}");
    // B left the domain: PUSH no longer carries it, while the binding keeps its identity (so
    // coming back is an update of the same external record, never a copy).
    let link = h
        .engine
        .store
        .link_by_local("PUSH", b)
        .await
        .unwrap()
        .expect("the binding keeps B's identity");
    assert!(!link.carried_by("PUSH"), "B left the domain: unlinked");
    assert_eq!(h.peer.records("push").len(), 2, "the external side keeps B");
    let del = h
        .client
        .delete(h.url(&format!("/api/v1/models/contact/records/{a}")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let run = run_push(&h).await;
    assert_eq!(run.pushed, 1, "{run:?}");
    assert_eq!(
        h.peer.records("push").len(),
        1,
        "A's deletion was carried across"
    );
    let actions: Vec<String> = h
        .peer
        .received("push")
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, vec!["create", "create", "update", "delete"]);
    h.stop().await;
}

#[tokio::test]
async fn two_instances_ticking_at_once_run_a_due_time_once() {
    let h = Harness::start().await;
    let other = std::sync::Arc::new(recsync::engine::Engine::new(
        h.engine.store.clone(),
        (*h.engine.plan()).clone(),
        recsync::engine::EngineOptions {
            instance: "second-instance".into(),
            ..Default::default()
        },
    ));
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    tokio::join!(h.engine.tick(later, false), other.tick(later, false));
    eventually(20, "the run to finish", || async {
        pull_runs(&h)
            .await
            .into_iter()
            .find(|r| r.finished_at.is_some())
    })
    .await;
    let runs = pull_runs(&h).await;
    assert_eq!(runs.len(), 1, "one instance takes the due time: {runs:?}");
    h.stop().await;
}

async fn run_pull(h: &Harness) -> recsync::store::Run {
    let r = h
        .client
        .post(h.url("/api/v1/syncs/PULL/run"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["run_id"].as_i64().unwrap();
    wait_for_run(h, run_id).await;
    h.engine
        .store
        .runs(Some("PULL"), None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == run_id)
        .unwrap()
}

#[tokio::test]
async fn a_pull_of_two_and_a_half_pages_takes_three_with_protocol_confirmations() {
    let h = Harness::start().await;
    for i in 1..=5 {
        h.peer
            .upsert(
                "pull",
                Some(format!("K-{i}")),
                obj(json!({"name": format!("K{i}")})),
            )
            .await;
    }
    let run = run_pull(&h).await;
    assert_eq!(
        (run.status.as_str(), run.pulled, run.created),
        ("success", 5, 5),
        "{run:?}"
    );
    let fetches = h.peer.calls("pull", "fetch");
    assert_eq!(
        fetches,
        vec![json!({"limit": 2}); 3],
        "limit 2, five records: three pages"
    );
    let confirms = h.peer.calls("pull", "confirm");
    assert_eq!(confirms.len(), 3);
    assert_eq!(
        confirms[0],
        json!({"status": "success", "error_message": "", "content": [
            {"status": "success", "error_message": false, "external_id": "K-1"},
            {"status": "success", "error_message": false, "external_id": "K-2"},
        ]}),
        "the confirmation body of protocol.md"
    );
    assert_eq!(confirms[2]["content"].as_array().unwrap().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn pulled_deletes_only_unlink_when_deletes_do_not_propagate() {
    let h = Harness::start().await;
    h.peer
        .upsert("pull", Some("U-1".into()), obj(json!({"name": "Kept"})))
        .await;
    assert_eq!(run_pull(&h).await.created, 1);
    let id = h
        .engine
        .store
        .link_by_external("PULL", "U-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    assert!(h.peer.remove("pull", "U-1").await);
    let run = run_pull(&h).await;
    assert_eq!((run.unlinked, run.deleted), (1, 0), "{run:?}");
    assert!(
        h.engine
            .store
            .link_by_external("PULL", "U-1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !h.engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .unwrap()
            .deleted,
        "the record is kept"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_peer_failing_mid_pull_fails_the_run_and_the_next_run_duplicates_nothing() {
    let h = Harness::start().await;
    for i in 1..=3 {
        h.peer
            .upsert(
                "pull",
                Some(format!("F-{i}")),
                obj(json!({"name": format!("F{i}")})),
            )
            .await;
    }
    // The first confirmation fails: the page was applied but not confirmed.
    h.peer.set_faults(recsync::peer::Faults {
        fail_next: 1,
        only: Some("confirm".into()),
        ..Default::default()
    });
    let first = run_pull(&h).await;
    assert_eq!(first.status, "failed", "{first:?}");
    assert!(
        first
            .error
            .as_deref()
            .unwrap_or("")
            .contains("confirming failed"),
        "{first:?}"
    );
    let second = run_pull(&h).await;
    assert_eq!(second.status, "success", "{second:?}");
    assert_eq!(
        h.engine.store.count_records("contact").await.unwrap(),
        3,
        "nothing duplicated"
    );
    assert_eq!(
        second.skipped, 2,
        "the unconfirmed page came again and changed nothing: {second:?}"
    );
    assert_eq!(second.created, 1, "{second:?}");
    let left: Value = h
        .client
        .post(format!("{}/api/pull/fetch", h.peer_url))
        .header("api_key", common::harness::PEER_KEY)
        .json(&json!({"limit": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(left["content"], json!([]));
    h.stop().await;
}

/// A pulled record outside the sync's domain is skipped with a row giving the reason, as on the
/// real-time path, and confirmed (it is not an error of the service's).
#[tokio::test]
async fn a_pulled_record_outside_the_domain_is_skipped_with_a_row() {
    let h = Harness::with(common::harness::Tweaks {
        extra_mapping: r#"
[web_services.dpullsrc]
url = "@PEER@/api/dpull/fetch"
confirmation_url = "@PEER@/api/dpull/confirm"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.DPULL]
model = "contact"
external_model = "crm_contact"
web_service = "dpullsrc"
direction = "to_local"
mode = "cron"
every = "1h"
domain = [["email", "ilike", "@keep."]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#
        .into(),
        ..Default::default()
    })
    .await;
    h.peer
        .upsert(
            "dpull",
            Some("D-1".into()),
            obj(json!({"name": "Kept", "email": "k@keep.example"})),
        )
        .await;
    h.peer
        .upsert(
            "dpull",
            Some("D-2".into()),
            obj(json!({"name": "Other", "email": "o@other.example"})),
        )
        .await;
    let run = h.run("DPULL").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!((run.created, run.skipped, run.failed), (1, 1, 0), "{run:?}");
    assert!(h.link("DPULL", "D-2").await.is_none(), "nothing written");
    let rows = h.changes("DPULL").await;
    let skipped: Vec<_> = rows.iter().filter(|c| c.status == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{rows:?}");
    assert_eq!(skipped[0].external_id.as_deref(), Some("D-2"));
    assert_eq!(skipped[0].run_id, Some(run.id));
    assert!(
        skipped[0]
            .error_message
            .contains("does not match the domain of sync `DPULL`"),
        "{:?}",
        skipped[0]
    );
    // Both were confirmed as received, so the service offers nothing more.
    let confirmed: Vec<Value> = h
        .peer
        .calls("dpull", "confirm")
        .iter()
        .flat_map(|c| c["content"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(confirmed.len(), 2, "{confirmed:?}");
    assert!(
        confirmed.iter().all(|c| c["status"] == "success"),
        "{confirmed:?}"
    );
    h.stop().await;
}
