//! The delete guard beyond pulled pages: an hour of real-time deletes (`DELETE /sync`, and
//! local deletes of a real-time sync) and the deletes a cron push would send are held once
//! over the guard, and an approval applies or sends exactly the held ones. Real HTTP, against
//! the reference peer, on SQLite and PostgreSQL.

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, Harness, OPERATE_KEY, Tweaks};
use serde_json::{Value, json};

const SYNCS: &str = r#"
[web_services.rto]
shipping_url = "@PEER@/api/rto/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[web_services.rti]
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[web_services.cpush]
shipping_url = "@PEER@/api/cpush/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.RTI]
model = "contact"
external_model = "crm_contact"
web_service = "rti"
direction = "to_local"
mode = "realtime"
propagate_deletes = true
delete_guard = { max = 3 }
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]

[syncs.RTO]
model = "contact"
external_model = "crm_contact"
web_service = "rto"
direction = "to_external"
mode = "realtime"
propagate_deletes = true
delete_guard = { max = 3 }
domain = [["stage", "=", "customer"]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]

[web_services.cbi]
url = "@PEER@/api/cbi/fetch"
confirmation_url = "@PEER@/api/cbi/confirm"
shipping_url = "@PEER@/api/cbi/ship"
list_url = "@PEER@/api/cbi/list"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.CBI]
model = "contact"
external_model = "crm_contact"
web_service = "cbi"
direction = "bidirectional"
mode = "cron"
every = "1h"
propagate_deletes = true
delete_guard = { max = 2 }
domain = [["stage", "=", "lost"]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "stage", external = "status" }]

[syncs.CPUSH]
model = "contact"
external_model = "crm_contact"
web_service = "cpush"
direction = "to_external"
mode = "cron"
every = "1h"
propagate_deletes = true
delete_guard = { max = 5 }
domain = [["stage", "=", "lead"]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]
"#;

async fn start() -> Harness {
    Harness::with(Tweaks {
        extra_mapping: SYNCS.into(),
        ..Default::default()
    })
    .await
}

async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = h
        .client
        .request(method, h.url(path))
        .header("X-Api-Key", key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Deletes a local record through the records API.
async fn delete_local(h: &Harness, id: i64) {
    let (status, body) = call(
        h,
        reqwest::Method::DELETE,
        &format!("/api/v1/models/contact/records/{id}"),
        ADMIN_KEY,
        None,
    )
    .await;
    assert!(status < 300, "{status} {body}");
}

async fn live(h: &Harness, id: i64) -> bool {
    h.engine
        .store
        .get_record("contact", id)
        .await
        .unwrap()
        .is_some_and(|r| !r.deleted)
}

async fn holds(h: &Harness, sync: &str) -> Vec<Value> {
    let (_, body) = call(
        h,
        reqwest::Method::GET,
        &format!("/api/v1/holds?sync={sync}"),
        OPERATE_KEY,
        None,
    )
    .await;
    body["holds"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_hour_of_real_time_deletes_over_the_guard_is_held() {
    let h = start().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (status, body) = call(
            &h,
            reqwest::Method::POST,
            "/sync/RTI/create",
            ADMIN_KEY,
            Some(json!({"unique_id": format!("R-{i}"), "name": format!("Realtime {i}")})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        ids.push(h.link("RTI", &format!("R-{i}")).await.unwrap().local_id);
    }
    // Three deletes pass (the guard's max); the fourth and fifth are held.
    let mut answers = Vec::new();
    for i in 0..5 {
        let (status, body) = call(
            &h,
            reqwest::Method::DELETE,
            &format!("/sync/RTI/R-{i}"),
            ADMIN_KEY,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        answers.push(
            body["result"]["error_message"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(answers[..3].iter().all(String::is_empty), "{answers:?}");
    assert!(
        answers[3..]
            .iter()
            .all(|a| a.contains("held by the delete guard")),
        "{answers:?}"
    );
    for (i, id) in ids.iter().enumerate().take(5) {
        assert_eq!(live(&h, *id).await, i >= 3, "record {i}");
    }
    let held = holds(&h, "RTI").await;
    assert_eq!(held.len(), 1, "{held:?}");
    let hold = &held[0];
    assert_eq!(
        (&hold["status"], &hold["items"], &hold["direction"]),
        (&json!("held"), &json!(2), &json!("external_to_local"))
    );
    assert!(
        hold["reason"]
            .as_str()
            .unwrap()
            .contains("4 deletes within an hour, more than delete_guard.max = 3"),
        "{hold}"
    );
    // Each held delete has its `skipped` row.
    let rows: Vec<_> = h
        .changes("RTI")
        .await
        .into_iter()
        .filter(|c| c.action == "delete" && c.status == "skipped")
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // Approving applies exactly those two.
    let hid = hold["id"].as_i64().unwrap();
    let (status, done) = call(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hid}/approve"),
        OPERATE_KEY,
        None,
    )
    .await;
    assert_eq!((status, &done["deleted"]), (200, &json!(2)), "{done}");
    assert!(!live(&h, ids[3]).await && !live(&h, ids[4]).await);
    assert!(live(&h, ids[5]).await);
    // Still within the hour: the next delete is held again, in a new hold.
    let (_, body) = call(
        &h,
        reqwest::Method::DELETE,
        "/sync/RTI/R-5",
        ADMIN_KEY,
        None,
    )
    .await;
    assert!(
        body["result"]["error_message"]
            .as_str()
            .unwrap()
            .contains("held"),
        "{body}"
    );
    assert!(live(&h, ids[5]).await);
    h.stop().await;
}

#[tokio::test]
async fn local_deletes_of_a_real_time_sync_over_the_guard_are_held_and_sent_on_approval() {
    let h = start().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let (status, body) = call(
            &h,
            reqwest::Method::POST,
            "/api/v1/models/contact/records",
            ADMIN_KEY,
            Some(json!({"name": format!("Out {i}"), "stage": "customer"})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_i64().unwrap());
    }
    eventually(20, "8 records on the peer", || async {
        (h.peer.records("rto").len() == 8).then_some(())
    })
    .await;
    // The creates' deliveries recorded (the records linked): a delete of a record whose
    // create is still on its way follows the create instead of meeting the guard.
    eventually(20, "the creates recorded", || async {
        (h.engine.store.outbox_depth("RTO").await.unwrap() == 0).then_some(())
    })
    .await;
    for id in &ids[..5] {
        delete_local(&h, *id).await;
    }
    // Three deletes go out; two wait in a hold.
    eventually(20, "three deletes delivered", || async {
        (h.peer.records("rto").len() == 5).then_some(())
    })
    .await;
    let held = holds(&h, "RTO").await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (&held[0]["items"], &held[0]["direction"]),
        (&json!(2), &json!("local_to_external"))
    );
    // Every delivery of RTO settled: the held two were never queued.
    eventually(20, "RTO's outbox to settle", || async {
        (h.engine.store.outbox_depth("RTO").await.unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(h.peer.records("rto").len(), 5, "nothing more was sent");
    let hid = held[0]["id"].as_i64().unwrap();
    let (status, done) = call(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hid}/approve"),
        OPERATE_KEY,
        None,
    )
    .await;
    assert_eq!((status, &done["deleted"]), (200, &json!(2)), "{done}");
    eventually(20, "the approved deletes delivered", || async {
        (h.peer.records("rto").len() == 3).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_cron_push_holds_mass_local_deletes_and_a_discard_keeps_the_external_records() {
    let h = start().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, body) = call(
            &h,
            reqwest::Method::POST,
            "/api/v1/models/contact/records",
            ADMIN_KEY,
            Some(json!({"name": format!("Lead {i}"), "stage": "lead"})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_i64().unwrap());
    }
    let run = h.run("CPUSH").await;
    assert_eq!(run.pushed, 20, "{run:?}");
    assert_eq!(h.peer.records("cpush").len(), 20);
    for id in &ids[..6] {
        delete_local(&h, *id).await;
    }
    // Six deletes in one push: more than the guard's 5, so none is sent.
    let run = h.run("CPUSH").await;
    assert_eq!((run.held, run.pushed), (6, 0), "{run:?}");
    assert_eq!(h.peer.records("cpush").len(), 20);
    // The next run neither sends nor holds them again.
    let run = h.run("CPUSH").await;
    assert_eq!((run.held, run.pushed), (0, 0), "{run:?}");
    let held = holds(&h, "CPUSH").await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (&held[0]["items"], &held[0]["direction"]),
        (&json!(6), &json!("local_to_external"))
    );
    // Discarded: the external records stay, their links are kept detached, and no later push
    // sends them.
    let hid = held[0]["id"].as_i64().unwrap();
    let (status, done) = call(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hid}/discard"),
        OPERATE_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    for id in &ids[..6] {
        assert!(
            h.engine
                .store
                .link_by_local("CPUSH", *id)
                .await
                .unwrap()
                .is_some_and(|l| l.external_id.is_some()),
            "the link of {id} is kept"
        );
        assert_eq!(
            h.engine.store.detached_hold("CPUSH", *id).await.unwrap(),
            Some(hid),
            "{id} is detached by the discarded hold"
        );
    }
    let run = h.run("CPUSH").await;
    assert_eq!((run.held, run.pushed), (0, 0), "{run:?}");
    assert_eq!(h.peer.records("cpush").len(), 20);
    // The plan of such a push shows the hold before it happens.
    for id in &ids[6..12] {
        delete_local(&h, *id).await;
    }
    let (status, plan) = call(
        &h,
        reqwest::Method::POST,
        "/api/v1/syncs/CPUSH/plan",
        OPERATE_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["external"]["counts"]["held"], 6, "{plan}");
    assert_eq!(plan["holds"][0]["side"], "external");
    let run = h.run("CPUSH").await;
    assert_eq!(run.held, 6, "{run:?}");
    h.stop().await;
}

/// Discarding a hold of local deletes leaves the external records where they are, detached:
/// a full run of a two-way sync neither imports them again nor holds their deletes again;
/// `resync` brings one back as a new local record.
#[tokio::test]
async fn a_discarded_hold_of_local_deletes_resurrects_nothing() {
    let h = start().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, body) = call(
            &h,
            reqwest::Method::POST,
            "/api/v1/models/contact/records",
            ADMIN_KEY,
            Some(json!({"name": format!("Lost {i}"), "stage": "lost"})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_i64().unwrap());
    }
    let run = h.run("CBI").await;
    assert_eq!(run.pushed, 6, "{run:?}");
    assert_eq!(h.peer.records("cbi").len(), 6);
    for id in &ids[..3] {
        delete_local(&h, *id).await;
    }
    let run = h.run("CBI").await;
    assert_eq!((run.held, run.pushed), (3, 0), "{run:?}");
    let held = holds(&h, "CBI").await;
    let hid = held[0]["id"].as_i64().unwrap();
    let (status, done) = call(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hid}/discard"),
        OPERATE_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let live = |h: &Harness| {
        let store = h.engine.store.clone();
        async move { store.count_records("contact").await.unwrap() }
    };
    assert_eq!(live(&h).await, 3);
    // A full run lists the three external records: detached, they are neither imported nor
    // deleted, and no second hold is opened.
    for _ in 0..2 {
        let run = h.run_with("CBI", "?full=true").await;
        assert_eq!(run.status, "success", "{run:?}");
        assert_eq!((run.created, run.held), (0, 0), "{run:?}");
        assert_eq!(live(&h).await, 3, "nothing imported again");
        assert_eq!(h.peer.records("cbi").len(), 6, "nothing deleted there");
        assert_eq!(holds(&h, "CBI").await.len(), 0, "no new hold");
    }
    // The history says detached.
    let rows = h.changes("CBI").await;
    let detached: Vec<_> = rows.iter().filter(|c| c.action == "detach").collect();
    assert_eq!(detached.len(), 3, "{rows:#?}");
    assert!(detached[0].error_message.contains("detached"));
    // An operator's resync brings one back, as a new local record.
    let (status, body) = call(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/syncs/CBI/records/{}/resync", ids[0]),
        OPERATE_KEY,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no longer detached"),
        "{body}"
    );
    eventually(20, "the record imported again", || async {
        (live(&h).await == 4).then_some(())
    })
    .await;
    h.stop().await;
}
