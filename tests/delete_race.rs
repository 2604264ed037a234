//! A local delete that races the delivery of its record's create: the create is in flight (or
//! reached the service just before a crash) when the delete commits, so no link has an
//! external id yet. The delete still goes out, after the create, and the record is gone from
//! the service too.

mod common;

use common::harness::{ADMIN_KEY, Harness};
use recsync::peer::Faults;
use serde_json::{Value, json};

fn at_peer(h: &Harness, name: &str) -> usize {
    h.peer
        .records("crm")
        .values()
        .filter(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_the_delivery_of_its_create_reaches_the_service() {
    let h = Harness::start().await;
    h.peer.set_faults(Faults {
        latency_ms: 1500,
        only: Some("ship".into()),
        ..Default::default()
    });
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Racer", "email": "racer@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    // The create goes out, slowly (the harness runs the outbox workers): it has reached the
    // peer, which takes its time to answer. (An entry merely claimed may not have read the
    // record yet; a delete committed then means no create is sent at all.)
    let store = h.engine.store.clone();
    common::eventually(10, "the create to be in flight", || async {
        h.peer
            .calls("crm", "ship")
            .iter()
            .any(|c| c["action"] == "create")
            .then_some(())
    })
    .await;
    // The person deletes the record meanwhile.
    let r = h
        .client
        .delete(h.url(&format!("/api/v1/models/contact/records/{id}")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    h.peer.set_faults(Faults::default());
    common::eventually(30, "the outbox to settle", || async {
        let waiting = store.outbox_depth("CON").await.unwrap();
        (waiting == 0).then_some(())
    })
    .await;
    let rows = h.changes("CON").await;
    let done = |action: &str| {
        rows.iter().any(|c| {
            c.local_id == Some(id)
                && c.action == action
                && c.direction == "local_to_external"
                && c.status == "success"
        })
    };
    assert!(done("create"), "the create reached the peer: {rows:?}");
    assert!(done("delete"), "the delete followed it: {rows:?}");
    assert_eq!(at_peer(&h, "Racer"), 0, "the record is gone from the peer");
    h.stop().await;
}
