//! Trust across several systems at once: changes from different syncs that the writer takes
//! together are decided in order, each against what the one before it wrote, when they touch
//! the same local record or carry the same `match_on` key; a sync that matches on `match_on`
//! copies nothing before its first run; a run says when its pushes failed; an edit of a field a
//! sync does not map sends nothing.

mod common;

use common::eventually;
use common::harness::{Harness, Tweaks};
use recsync::engine::{Applied, Ctx};
use serde_json::json;

/// Two more systems holding contacts, both two-way, both matching on email.
const TWO_SYSTEMS: &str = r#"
[web_services.sys_a]
shipping_url = "@PEER@/api/wa/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[web_services.sys_b]
shipping_url = "@PEER@/api/wb/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.SA]
model = "contact"
external_model = "crm_contact"
web_service = "sys_a"
direction = "bidirectional"
mode = "realtime"
external_ref = "unique_id"
match_on = ["email"]
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[web_services.golive]
url = "@PEER@/api/golive/fetch"
confirmation_url = "@PEER@/api/golive/confirm"
shipping_url = "@PEER@/api/golive/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.GOLIVE]
model = "contact"
external_model = "crm_contact"
web_service = "golive"
direction = "bidirectional"
mode = "realtime"
every = "1h"
external_ref = "unique_id"
match_on = ["email"]
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[web_services.sys_c]
shipping_url = "@PEER@/api/wc/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

# Sends only the email, built under `properties` as HubSpot-like APIs want it.
[syncs.SC]
model = "contact"
external_model = "crm_contact"
web_service = "sys_c"
direction = "to_external"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "email", external = "$.properties.email" }]

[syncs.SB]
model = "contact"
external_model = "crm_contact"
web_service = "sys_b"
direction = "bidirectional"
mode = "realtime"
propagate_deletes = true
external_ref = "unique_id"
match_on = ["email"]
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

async fn start() -> Harness {
    Harness::with(Tweaks {
        extra_mapping: TWO_SYSTEMS.into(),
        ..Default::default()
    })
    .await
}

/// A record as the system holds it, without telling recsync.
fn seed(h: &Harness, coll: &str, id: &str, name: &str, email: &str) {
    let values = json!({"unique_id": id, "name": name, "email": email});
    h.peer.set_quietly(coll, id, values.as_object().cloned());
}

async fn settled(h: &Harness) {
    eventually(15, "the outbox to settle", || async {
        let mut depth = 0;
        for s in ["SA", "SB", "SC", "CON", "ERP", "SHOP", "LOC"] {
            depth += h.engine.store.outbox_depth(s).await.unwrap();
        }
        (depth == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn one_person_entered_in_two_systems_at_once_is_one_hub_record() {
    let h = start().await;
    // Each system holds the person it reports.
    seed(&h, "wa", "a1", "Race Person", "race@example.com");
    seed(&h, "wb", "b1", "Race Person", " Race@Example.com");
    let results = h
        .engine
        .apply_inbound_bundle(
            vec![
                (
                    "SA".into(),
                    json!({"unique_id": "a1", "name": "Race Person", "email": "race@example.com"}),
                ),
                (
                    "SB".into(),
                    json!({"unique_id": "b1", "name": "Race Person", "email": " Race@Example.com"}),
                ),
            ],
            &Ctx::actor("test"),
        )
        .await;
    assert!(matches!(results[0], Ok(Applied::Created(_))), "{results:?}");
    assert!(
        matches!(results[1], Ok(Applied::Updated(..) | Applied::NoOp(_))),
        "the second is matched to the first, not created: {results:?}"
    );
    assert_eq!(h.engine.store.count_records("contact").await.unwrap(), 1);
    let a = h.link("SA", "a1").await.unwrap();
    let b = h.link("SB", "b1").await.unwrap();
    assert_eq!(
        a.local_id, b.local_id,
        "both systems link the one hub record"
    );
    settled(&h).await;
    // Neither system was sent a copy of the person.
    assert_eq!(
        (h.peer.records("wa").len(), h.peer.records("wb").len()),
        (1, 1),
        "wa: {:?}, wb: {:?}",
        h.peer.records("wa"),
        h.peer.records("wb")
    );
    h.stop().await;
}

#[tokio::test]
async fn two_systems_renaming_one_record_at_once_is_a_conflict_and_both_end_equal() {
    let h = start().await;
    // The person is in A, and reaches B through recsync (B's id is whatever B gave it).
    seed(&h, "wa", "a1", "Orig", "same@example.com");
    let r = h
        .engine
        .apply_inbound_bundle(
            vec![(
                "SA".into(),
                json!({"unique_id": "a1", "name": "Orig", "email": "same@example.com"}),
            )],
            &Ctx::actor("test"),
        )
        .await;
    assert!(r[0].is_ok(), "{r:?}");
    settled(&h).await;
    let local = h.link("SA", "a1").await.unwrap().local_id;
    let b1 = h
        .engine
        .store
        .link_by_local("SB", local)
        .await
        .unwrap()
        .and_then(|l| l.external_id)
        .expect("B was sent the person");
    let b1 = b1.as_str();

    // Each system renames the person; both changes reach the writer together.
    seed(&h, "wa", "a1", "From A", "same@example.com");
    seed(&h, "wb", b1, "From B", "same@example.com");
    let results = h
        .engine
        .apply_inbound_bundle(
            vec![
                (
                    "SA".into(),
                    json!({"unique_id": "a1", "name": "From A", "email": "same@example.com"}),
                ),
                (
                    "SB".into(),
                    json!({"unique_id": b1, "name": "From B", "email": "same@example.com"}),
                ),
            ],
            &Ctx::actor("test"),
        )
        .await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    // priority = "external" (the default): the later change wins, as a conflict.
    let record = h
        .engine
        .store
        .get_record("contact", local)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.values["name"], "From B");
    let conflicts: Vec<_> = h
        .changes("SB")
        .await
        .into_iter()
        .filter(|c| c.action == "conflict")
        .collect();
    assert_eq!(
        conflicts.len(),
        1,
        "the second rename is a conflict, logged"
    );
    settled(&h).await;
    // Both systems end with the winning value.
    let name_in =
        |coll: &str, id: &str| h.peer.record(coll, id).and_then(|r| r.get("name").cloned());
    assert_eq!(
        name_in("wa", "a1"),
        Some(json!("From B")),
        "A lost and was sent the result"
    );
    assert_eq!(
        name_in("wb", b1),
        Some(json!("From B")),
        "B won and keeps its value"
    );
    h.stop().await;
}

/// A run whose pushes fail says so: `failed` counts the records whose send failed (waiting for
/// their retry in the outbox, or dead letters), instead of reporting `failed 0`.
#[tokio::test]
async fn a_run_whose_pushes_fail_counts_them_as_failed() {
    let h = start().await;
    for i in 0..3 {
        let r = h
            .client
            .post(h.url("/api/v1/models/contact/records"))
            .header("X-Api-Key", common::harness::ADMIN_KEY)
            .json(&json!({"name": format!("Lost {i}"), "stage": "lost"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // The service refuses every send (a permanent refusal: the entries are dead letters).
    h.peer.set_faults(recsync::peer::Faults {
        fail_next: 1000,
        fail_status: Some(400),
        only: Some("ship".into()),
        ..Default::default()
    });
    let run = h.run("PUSH").await;
    assert_eq!((run.pushed, run.failed), (0, 3), "{run:?}");
    h.stop().await;
}

/// A local edit of a field a sync does not map sends nothing through that sync and writes no
/// row for it; an edit of a mapped field sends only that field's change.
#[tokio::test]
async fn an_edit_of_an_unmapped_field_sends_nothing() {
    let h = start().await;
    for (id, name) in [("U1", "Una"), ("U2", "Boss")] {
        let r = h
            .client
            .post(h.url("/sync/CON/create"))
            .header("api_key", common::harness::CRM_KEY)
            .json(&json!({"unique_id": id, "name": name, "email": format!("{id}@example.com")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let una = h.link("CON", "U1").await.unwrap().local_id;
    let boss = h.link("CON", "U2").await.unwrap().local_id;
    settled(&h).await;
    let shipped = h.peer.received("crm").len();
    let rows = h.changes("CON").await.len();
    // `manager` is not one of CON's fields.
    h.patch_record("contact", una, json!({"manager": boss}))
        .await;
    settled(&h).await;
    assert_eq!(
        h.peer.received("crm").len(),
        shipped,
        "nothing sent to the CRM"
    );
    let after = h.changes("CON").await;
    assert_eq!(
        after.len(),
        rows,
        "no row for CON: {:#?}",
        &after[..after.len() - rows]
    );
    let link = h.link("CON", "U1").await.unwrap();
    let record = h
        .engine
        .store
        .get_record("contact", una)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(link.synced_version, record.version, "the link caught up");
    h.stop().await;
}

/// Go-live: a real-time sync with `match_on` whose first run has not happened yet sends no
/// create. A contact that reaches the hub first (here through another system's real-time call)
/// waits in the outbox, and the first run matches it to the record the system already holds,
/// instead of copying it there and importing the original as a second hub contact.
#[tokio::test]
async fn a_sync_matching_on_email_copies_nothing_before_its_first_run() {
    let h = start().await;
    let values = json!({"name": "Race Person", "email": "race@example.com"});
    let held = h
        .peer
        .upsert(
            "golive",
            Some("G-1".into()),
            values.as_object().cloned().unwrap(),
        )
        .await;
    assert_eq!(held, "G-1");
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", common::harness::CRM_KEY)
        .json(&json!({"unique_id": "C-1", "name": "Race Person", "email": "race@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let local = h.link("CON", "C-1").await.unwrap().local_id;
    // The create for GOLIVE is queued and waits: nothing reaches the system.
    eventually(10, "the create to be tried and deferred", || async {
        let entries = h
            .engine
            .store
            .list_outbox(None, Some("GOLIVE"), 0, 10)
            .await
            .unwrap();
        (entries.len() == 1
            && entries[0].status == "pending"
            && entries[0].next_attempt_at > chrono::Utc::now())
        .then_some(())
    })
    .await;
    let entry = &h
        .engine
        .store
        .list_outbox(None, Some("GOLIVE"), 0, 10)
        .await
        .unwrap()[0];
    assert_eq!(entry.attempts, 0, "waiting spends no attempt");
    assert_eq!(
        h.peer.records("golive").len(),
        1,
        "no copy sent before the first run"
    );
    let run = h.run("GOLIVE").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        run.created, 0,
        "the person is matched, not imported again: {run:?}"
    );
    let link = h.link("GOLIVE", "G-1").await.expect("matched");
    assert_eq!(link.local_id, local);
    settled(&h).await;
    eventually(15, "GOLIVE's outbox to settle", || async {
        (h.engine.store.outbox_depth("GOLIVE").await.unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(h.peer.records("golive").len(), 1, "still one person there");
    assert_eq!(h.engine.store.count_records("contact").await.unwrap(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_create_with_every_sent_field_empty_is_not_sent_as_an_empty_object() {
    let h = start().await;
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", common::harness::ADMIN_KEY)
        .json(&json!({"name": "No Email Yet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let local = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    settled(&h).await;
    assert!(h.peer.received("wc").is_empty(), "nothing sent to sys_c");
    let rows = h.changes("SC").await;
    assert!(
        rows.iter().any(|c| c.local_id == Some(local)
            && c.status == "skipped"
            && c.error_message
                .contains("every field this sync sends is empty")),
        "{rows:#?}"
    );
    // Once it has an email, it goes out.
    h.patch_record("contact", local, json!({"email": "later@example.com"}))
        .await;
    let sent = eventually(15, "the create to reach sys_c", || async {
        h.peer.received("wc").into_iter().next()
    })
    .await;
    assert_eq!(
        sent.values["properties"]["email"], "later@example.com",
        "{sent:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_from_the_system_a_delivery_is_on_its_way_to_goes_back_out_after_it() {
    let h = Harness::start().await;
    h.peer
        .upsert(
            "crm",
            Some("c1".into()),
            json!({"name": "Ann", "email": "ann@example.com"})
                .as_object()
                .cloned()
                .unwrap(),
        )
        .await;
    let id = eventually(10, "the CRM contact on the hub", || async {
        h.link("CON", "c1").await.map(|l| l.local_id)
    })
    .await;
    // The CRM answers slowly: the hub's edit is on its way for 1.5 s.
    h.peer.set_faults(recsync::peer::Faults {
        latency_ms: 1500,
        only: Some("ship".into()),
        ..Default::default()
    });
    h.patch_record("contact", id, json!({"name": "Ann from the hub"}))
        .await;
    eventually(10, "the delivery to be in flight", || async {
        h.engine
            .store
            .list_outbox(
                Some(recsync::store::OutboxStatus::Inflight),
                Some("CON"),
                0,
                10,
            )
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    // Meanwhile a person renames the contact in the CRM, which calls recsync at once: a
    // conflict, which the CRM wins by priority. Nothing is queued for the CRM by it (it came
    // from there), and the slow delivery then lands over it with the hub's older name.
    h.peer
        .upsert(
            "crm",
            Some("c1".into()),
            json!({"name": "Ann from the CRM"})
                .as_object()
                .cloned()
                .unwrap(),
        )
        .await;
    h.peer.set_faults(Default::default());
    // The newer version goes out after it: both end with the name the hub holds.
    eventually(20, "the CRM and the hub to agree", || async {
        let hub = h
            .engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .unwrap()
            .values["name"]
            .clone();
        let crm = h.peer.records("crm")["c1"]["name"].clone();
        (hub == crm && h.engine.store.outbox_depth("CON").await.unwrap() == 0).then_some((hub, crm))
    })
    .await;
    let r = h
        .engine
        .store
        .get_record("contact", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.values["name"], "Ann from the CRM");
    h.stop().await;
}

/// A delivery slower than the claim's lease is made once: the batch renews its claims while
/// it works, so the lease never hands its entries to a second delivery (the convergence
/// suite, seeds 2255 and 2261: a create made twice, then two hub records for one person).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_slower_than_the_claim_lease_is_made_once() {
    let h = Harness::with(Tweaks {
        extra_mapping: TWO_SYSTEMS.into(),
        claim_timeout: Some(std::time::Duration::from_millis(1_500)),
        ..Default::default()
    })
    .await;
    h.peer.set_faults(recsync::peer::Faults {
        latency_ms: 4_000,
        ..Default::default()
    });
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", common::harness::ADMIN_KEY)
        .json(&json!({"name": "Slow", "email": "slow@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The worker has claimed the creates and waits for the slow system...
    eventually(10, "the creates to be in flight", || async {
        let all = h
            .engine
            .store
            .list_outbox(Some(recsync::store::OutboxStatus::Inflight), None, 0, 100)
            .await
            .unwrap();
        (!all.is_empty()).then_some(())
    })
    .await;
    // ... past its lease, when a run's push (another executor) looks for due entries. Time
    // passing is what is tested here (the 1.5 s lease runs out while the 4 s delivery is
    // under way); no condition is waited for, so there is nothing to poll.
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    h.engine.drain().await.unwrap();
    settled(&h).await;
    // Each delivery was made once (a system without idempotency keys, Odoo, would otherwise
    // hold two copies; the reference peer forgives a replay, so the attempts tell).
    let done = h
        .engine
        .store
        .list_outbox(Some(recsync::store::OutboxStatus::Done), None, 0, 100)
        .await
        .unwrap();
    assert!(done.len() >= 3, "{done:#?}");
    assert!(done.iter().all(|e| e.attempts == 1), "{done:#?}");
    for coll in ["wa", "wb", "crm"] {
        let creates: Vec<_> = h
            .peer
            .received(coll)
            .into_iter()
            .filter(|r| r.action == "create" && r.values["email"] == "slow@example.com")
            .collect();
        assert_eq!(creates.len(), 1, "{coll}: {creates:#?}");
    }
    h.stop().await;
}

/// An update dead-lettered on its way to a system whose record is then deleted there is given
/// up when the delete comes in, with the reason: there is nothing left to write it to, an
/// operator has nothing to retry, and it does not block the record's later changes (the
/// convergence suite's seed 3046).
#[tokio::test]
async fn a_dead_letter_for_a_record_deleted_there_is_given_up_with_the_reason() {
    let h = start().await;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", common::harness::CRM_KEY)
        .json(&json!({"unique_id": "G1", "name": "Gone", "email": "gone@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = h.link("CON", "G1").await.unwrap().local_id;
    settled(&h).await;
    // The CRM refuses every send: the edit's delivery is a dead letter.
    h.peer.set_faults(recsync::peer::Faults {
        fail_next: 1000,
        fail_status: Some(400),
        only: Some("ship".into()),
        ..Default::default()
    });
    h.patch_record("contact", id, json!({"name": "Gone Renamed"}))
        .await;
    let dead = eventually(15, "the update to be dead-lettered", || async {
        let dead = h
            .engine
            .store
            .list_outbox(Some(recsync::store::OutboxStatus::Dead), Some("CON"), 0, 10)
            .await
            .unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!((dead.len(), dead[0].local_id), (1, id), "{dead:?}");
    // The other systems' updates are dead letters too.
    eventually(15, "every update to be dead-lettered", || async {
        let dead = h
            .engine
            .store
            .list_outbox(Some(recsync::store::OutboxStatus::Dead), None, 0, 10)
            .await
            .unwrap();
        (dead.len() == 3).then_some(())
    })
    .await;
    h.peer.set_faults(recsync::peer::Faults::default());
    // The person deletes the contact in the CRM.
    let r = h
        .client
        .delete(h.url("/sync/CON/G1"))
        .header("api_key", common::harness::CRM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // SB deletes what is deleted here: its update gives way to the delete, which goes out.
    // SA keeps its records (it does not propagate deletes), so the last edit made before the
    // delete still has somewhere to go: its dead letter stays for an operator.
    eventually(15, "the delete to reach SB", || async {
        h.peer.records("wb").is_empty().then_some(())
    })
    .await;
    let left = h
        .engine
        .store
        .list_outbox(Some(recsync::store::OutboxStatus::Dead), None, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        left.iter()
            .map(|e| (e.sync.as_str(), e.action.as_str()))
            .collect::<Vec<_>>(),
        [("SA", "update")],
        "{left:?}"
    );
    let given_up = h
        .engine
        .store
        .list_outbox(
            Some(recsync::store::OutboxStatus::Discarded),
            Some("CON"),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(given_up.len(), 1, "{given_up:?}");
    assert_eq!(given_up[0].id, dead[0].id);
    let others = h
        .engine
        .store
        .list_outbox(
            Some(recsync::store::OutboxStatus::Discarded),
            Some("SB"),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        others.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["update"],
        "{others:?}"
    );
    assert!(
        others[0]
            .last_error
            .as_deref()
            .is_some_and(|w| w.contains("deleted before this update")),
        "{others:?}"
    );
    let why = given_up[0].last_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("deleted in CON") && why.contains("G1"),
        "the reason says why: {why}"
    );
    assert!(
        h.engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .is_none_or(|r| r.deleted),
        "the record is deleted here too"
    );
    h.stop().await;
}
