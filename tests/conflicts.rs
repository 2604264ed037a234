//! Conflicts: a field changed on both sides since the last sync is settled by the sync's
//! priority, logged with both values, and the result reaches both sides.

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, CRM_KEY, Harness, Tweaks};
use recsync::peer::Faults;
use serde_json::{Value, json};

async fn patch(h: &Harness, id: i64, v: Value) {
    h.patch_record("contact", id, v).await
}

#[tokio::test]
async fn external_priority_wins_and_the_conflict_is_logged() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Orig", "unique_id": "X-1", "email": "x@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = h
        .engine
        .store
        .link_by_external("CON", "X-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    // The local edit cannot be delivered yet...
    h.peer.set_faults(Faults {
        fail_next: 1000,
        ..Default::default()
    });
    patch(&h, id, json!({"name": "Local edit", "city": "Vigo"})).await;
    // ...when the external side changes the same field, and another one.
    let r = h
        .client
        .put(h.url("/sync/CON/X-1"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "External edit", "email": "x@new.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = h
        .engine
        .store
        .get_record("contact", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.values["name"],
        json!("External edit"),
        "priority external"
    );
    assert_eq!(
        rec.values["email"],
        json!("x@new.example"),
        "changed on one side only: merged"
    );
    assert_eq!(
        rec.values["city"],
        json!("Vigo"),
        "the local-only change is kept"
    );
    let rows = h.changes("CON").await;
    let conflict = rows
        .iter()
        .find(|c| c.action == "conflict")
        .expect("a conflict row");
    assert_eq!(conflict.status, "conflict_resolved");
    assert_eq!(
        conflict.origin_values,
        json!({"field": "name", "base": "Orig", "local": "Local edit", "external": "External edit"})
    );
    assert_eq!(
        conflict.destination_values,
        json!({"name": "External edit"})
    );
    assert!(
        conflict
            .error_message
            .contains("external wins by priority `external`"),
        "{}",
        conflict.error_message
    );
    h.stop().await;
}

#[tokio::test]
async fn local_priority_wins_and_the_result_goes_back_out() {
    // A retry budget long enough that the held-back delivery is still waiting when the peer
    // recovers (about six seconds of backoff).
    let h = Harness::with(Tweaks {
        max_attempts: 8,
        ..Default::default()
    })
    .await;
    let obj = |v: Value| v.as_object().unwrap().clone();
    // The peer's side of the record, as it was at the last sync.
    h.peer
        .upsert(
            "loc",
            Some("L-1".into()),
            obj(json!({"name": "Orig", "email": "conflict@example.com"})),
        )
        .await;
    let r = h
        .client
        .post(h.url("/sync/LOC/create"))
        .header("api_key", ADMIN_KEY)
        .json(&json!({"name": "Orig", "unique_id": "L-1", "email": "conflict@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = h
        .engine
        .store
        .link_by_external("LOC", "L-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    h.peer.set_faults(Faults {
        fail_next: 1000,
        ..Default::default()
    });
    patch(&h, id, json!({"name": "Mine"})).await;
    let r = h
        .client
        .put(h.url("/sync/LOC/L-1"))
        .header("api_key", ADMIN_KEY)
        .json(&json!({"name": "Theirs"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = h
        .engine
        .store
        .get_record("contact", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["name"], json!("Mine"), "priority local");
    let conflict = h
        .changes("LOC")
        .await
        .into_iter()
        .find(|c| c.action == "conflict")
        .expect("a conflict row");
    assert_eq!(conflict.destination_values, json!({"name": "Mine"}));
    // Once the peer answers again, the winning value reaches it.
    h.peer.set_faults(Faults::default());
    eventually(30, "the local value at the peer", || async {
        h.peer
            .record("loc", "L-1")
            .filter(|r| r["name"] == json!("Mine"))
    })
    .await;
    h.stop().await;
}
