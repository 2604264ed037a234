//! One record at a time: an operator pauses a record of a sync (nothing is sent, nothing
//! incoming is applied, each logged `skipped`), resumes it (what changed meanwhile goes out),
//! unlinks and relinks it, and asks for a re-read, which a `rest` service cannot do. Real HTTP
//! against the reference peer, on SQLite and PostgreSQL.

mod common;

use common::eventually;
use common::harness::{CRM_KEY, Harness, OPERATE_KEY};
use serde_json::{Value, json};

async fn op(h: &Harness, local: i64, op: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = h
        .client
        .post(h.url(&format!("/api/v1/syncs/CON/records/{local}/{op}")))
        .header("X-Api-Key", OPERATE_KEY);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET /api/v1/syncs/CON/records/<id>`: the record's state in the sync (a read key).
async fn state(h: &Harness, local: i64) -> Value {
    h.client
        .get(h.url(&format!("/api/v1/syncs/CON/records/{local}")))
        .header("X-Api-Key", common::harness::READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn crm(h: &Harness, method: reqwest::Method, path: &str, body: Value) -> u16 {
    h.client
        .request(method, h.url(path))
        .header("api_key", CRM_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn name_of(h: &Harness, local: i64) -> Value {
    h.engine
        .store
        .get_record("contact", local)
        .await
        .unwrap()
        .unwrap()
        .values["name"]
        .clone()
}

async fn settled(h: &Harness) {
    eventually(15, "the outbox to settle", || async {
        (h.engine.store.outbox_depth("CON").await.unwrap() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paused_record_is_neither_sent_nor_overwritten_until_resumed() {
    let h = Harness::start().await;
    let create = json!({"unique_id": "P-1", "name": "Pat", "email": "pat@example.com"});
    assert_eq!(
        crm(&h, reqwest::Method::POST, "/sync/CON/create", create).await,
        200
    );
    let local = h.link("CON", "P-1").await.unwrap().local_id;

    let (status, body) = op(&h, local, "pause", None).await;
    assert_eq!(
        (status, body["op"].as_str()),
        (200, Some("pause")),
        "{body}"
    );
    assert_eq!(body["external_id"], "P-1");
    let now = state(&h, local).await;
    assert_eq!(
        (&now["state"], &now["external_id"], &now["paused"]),
        (&json!("linked"), &json!("P-1"), &json!(true)),
        "{now}"
    );

    // Incoming: an update and a delete, each answered and logged, neither applied.
    let upd = json!({"name": "Changed outside"});
    assert_eq!(
        crm(&h, reqwest::Method::PUT, "/sync/CON/P-1", upd).await,
        200
    );
    assert_eq!(name_of(&h, local).await, "Pat");
    assert_eq!(
        crm(&h, reqwest::Method::DELETE, "/sync/CON/P-1", json!({})).await,
        200
    );
    assert!(h.link("CON", "P-1").await.is_some(), "still linked");
    assert!(
        !h.engine
            .store
            .get_record("contact", local)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );

    // Outgoing: a local edit is not sent.
    let sent_before = h.peer.received("crm").len();
    h.patch_record("contact", local, json!({"name": "Changed here"}))
        .await;
    settled(&h).await;
    assert_eq!(
        h.peer.received("crm").len(),
        sent_before,
        "nothing sent while paused"
    );
    let skipped: Vec<_> = h
        .changes("CON")
        .await
        .into_iter()
        .filter(|c| c.status == "skipped" && c.error_message.contains("paused"))
        .collect();
    assert_eq!(
        skipped.len(),
        3,
        "the update, the delete and the send: {skipped:#?}"
    );

    // Resumed: what arrived meanwhile was kept, and applied now. The CRM's delete came last,
    // and wins: the record is deleted here, and the edit made here is not sent to a record
    // the CRM no longer has.
    let (status, body) = op(&h, local, "resume", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the delete that arrived from `P-1` meanwhile was applied")),
        "{body}"
    );
    assert!(
        h.engine
            .store
            .get_record("contact", local)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    assert!(h.link("CON", "P-1").await.is_none(), "the pair is gone");
    settled(&h).await;
    assert!(
        !h.peer
            .received("crm")
            .iter()
            .any(|r| r.values["name"] == "Changed here"),
        "nothing sent to the deleted record"
    );
    let ops: Vec<String> = h
        .changes("CON")
        .await
        .into_iter()
        .filter(|c| c.name.starts_with("Operator:"))
        .map(|c| format!("{} by {}", c.name, c.actor))
        .collect();
    assert_eq!(
        ops,
        [
            "Operator: resume contact by operator",
            "Operator: pause contact by operator"
        ]
    );
    h.stop().await;
}

/// Both sides edit a paused record, in different fields: on resume, the CRM's edit (kept while
/// paused) is applied here, and the edit made here goes out; later calls apply as usual.
#[tokio::test]
async fn a_resume_catches_up_both_ways() {
    let h = Harness::start().await;
    let create = json!({"unique_id": "P-2", "name": "Pam", "email": "pam@example.com"});
    assert_eq!(
        crm(&h, reqwest::Method::POST, "/sync/CON/create", create).await,
        200
    );
    let local = h.link("CON", "P-2").await.unwrap().local_id;
    assert_eq!(op(&h, local, "pause", None).await.0, 200);
    assert_eq!(
        crm(
            &h,
            reqwest::Method::PUT,
            "/sync/CON/P-2",
            json!({"name": "Renamed outside"})
        )
        .await,
        200
    );
    assert_eq!(
        crm(
            &h,
            reqwest::Method::PUT,
            "/sync/CON/P-2",
            json!({"visits": 7})
        )
        .await,
        200
    );
    assert_eq!(name_of(&h, local).await, "Pam", "not applied while paused");
    h.patch_record("contact", local, json!({"email": "pam@new.example.com"}))
        .await;
    settled(&h).await;

    let (status, body) = op(&h, local, "resume", None).await;
    assert_eq!(status, 200, "{body}");
    let rec = h
        .engine
        .store
        .get_record("contact", local)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            &rec.values["name"],
            &rec.values["visits"],
            &rec.values["email"]
        ),
        (
            &json!("Renamed outside"),
            &json!(7),
            &json!("pam@new.example.com")
        ),
        "both calls kept while paused are applied, merged with the edit made here"
    );
    eventually(15, "the local change to reach the peer", || async {
        h.peer
            .received("crm")
            .iter()
            .any(|r| {
                r.values["email"] == "pam@new.example.com"
                    && r.action == "update"
                    && r.id.as_deref() == Some("P-2")
            })
            .then_some(())
    })
    .await;
    let upd = json!({"name": "Changed outside again"});
    assert_eq!(
        crm(&h, reqwest::Method::PUT, "/sync/CON/P-2", upd).await,
        200
    );
    assert_eq!(name_of(&h, local).await, "Changed outside again");
    h.stop().await;
}

#[tokio::test]
async fn unlink_relink_and_resync_one_record() {
    let h = Harness::start().await;
    for (id, name) in [("R-1", "Rita"), ("R-2", "Rob")] {
        let body = json!({"unique_id": id, "name": name});
        assert_eq!(
            crm(&h, reqwest::Method::POST, "/sync/CON/create", body).await,
            200
        );
    }
    let rita = h.link("CON", "R-1").await.unwrap().local_id;

    assert_eq!(state(&h, rita).await["state"], "linked");
    let (status, body) = op(&h, rita, "unlink", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(h.link("CON", "R-1").await.is_none());
    let now = state(&h, rita).await;
    assert_eq!(
        (&now["state"], &now["paused"]),
        (&json!("not_linked"), &json!(false)),
        "{now}"
    );
    assert_eq!(name_of(&h, rita).await, "Rita", "the record stays");
    let (status, body) = op(&h, rita, "unlink", None).await;
    assert_eq!(status, 404, "not linked any more: {body}");

    let (status, body) = op(&h, rita, "relink", Some(json!({"external_id": "R-9"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.link("CON", "R-9").await.unwrap().local_id, rita);
    // An update of R-9 now reaches Rita.
    let upd = json!({"name": "Rita B."});
    assert_eq!(
        crm(&h, reqwest::Method::PUT, "/sync/CON/R-9", upd).await,
        200
    );
    assert_eq!(name_of(&h, rita).await, "Rita B.");

    let (status, body) = op(&h, rita, "relink", Some(json!({"external_id": "R-2"}))).await;
    assert_eq!(status, 409, "R-2 is Rob's: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("linked to record"),
        "{body}"
    );
    let (status, _) = op(&h, rita, "relink", Some(json!({}))).await;
    assert_eq!(status, 400);

    let (status, body) = op(&h, rita, "resync", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot re-read one record"),
        "{body}"
    );
    let (status, _) = op(&h, rita, "explode", None).await;
    assert_eq!(status, 404);
    let (status, _) = op(&h, 999_999, "pause", None).await;
    assert_eq!(status, 404);
    h.stop().await;
}

/// Deleted on both sides while paused (by the CRM, then here): the resume sends no delete
/// to a record the CRM no longer has; the pair ends, and nothing is dead-lettered.
#[tokio::test]
async fn a_record_deleted_on_both_sides_while_paused_resumes_without_a_send() {
    let h = Harness::start().await;
    let create = json!({"unique_id": "P-3", "name": "Pia", "email": "pia@example.com"});
    assert_eq!(
        crm(&h, reqwest::Method::POST, "/sync/CON/create", create).await,
        200
    );
    let local = h.link("CON", "P-3").await.unwrap().local_id;
    assert_eq!(op(&h, local, "pause", None).await.0, 200);
    h.peer.remove("crm", "P-3").await;
    assert_eq!(
        crm(&h, reqwest::Method::DELETE, "/sync/CON/P-3", json!({})).await,
        200
    );
    let r = h
        .client
        .delete(h.url(&format!("/api/v1/models/contact/records/{local}")))
        .header("X-Api-Key", common::harness::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let sent_before = h.peer.received("crm").len();
    let (status, body) = op(&h, local, "resume", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("deleted here and there")),
        "{body}"
    );
    settled(&h).await;
    assert_eq!(h.peer.received("crm").len(), sent_before, "no delete sent");
    assert!(h.link("CON", "P-3").await.is_none(), "the pair ended");
    let dead = h
        .engine
        .store
        .list_outbox(Some(recsync::store::OutboxStatus::Dead), None, 0, 10)
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    h.stop().await;
}

/// `GET /api/v1/changes/stats` (the dashboard's counts): a delivery that failed and then went
/// through on its retry is a failed attempt but not a failure to look at (`unresolved`); a
/// refused inbound change is both.
#[tokio::test]
async fn stats_tell_failures_made_good_from_those_left() {
    let h = Harness::start().await;
    // A contact made in the CRM (the peer calls recsync back).
    h.peer
        .upsert(
            "crm",
            Some("S-1".into()),
            json!({"name": "Sam", "email": "sam@example.com"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .await;
    let local = eventually(15, "the CRM's contact linked", || async {
        h.link("CON", "S-1").await.map(|l| l.local_id)
    })
    .await;
    // The next delivery to the CRM fails once, then its retry goes through.
    h.peer.set_faults(recsync::peer::Faults {
        fail_next: 1,
        only: Some("ship".into()),
        ..Default::default()
    });
    h.patch_record("contact", local, json!({"name": "Sam B."}))
        .await;
    eventually(15, "the retried delivery", || async {
        let rows = h.changes("CON").await;
        let failed = rows
            .iter()
            .any(|c| c.status == "failed" && c.direction == "local_to_external");
        let later = rows.iter().any(|c| {
            c.status == "success" && c.direction == "local_to_external" && c.local_id == Some(local)
        });
        (failed && later).then_some(())
    })
    .await;
    // A refused inbound change stays a failure.
    let bad = json!({"unique_id": "S-2", "name": "Sue", "customer": "maybe"});
    crm(&h, reqwest::Method::POST, "/sync/CON/create", bad).await;
    let stats: Value = h
        .client
        .get(h.url("/api/v1/changes/stats?hours=1"))
        .header("X-Api-Key", common::harness::READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let con: Vec<&Value> = stats["hours"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["sync"] == "CON")
        .collect();
    let sum = |k: &str| con.iter().map(|x| x[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("failed"), sum("unresolved")), (2, 1), "{stats}");
}
