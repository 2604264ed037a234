//! Cron syncs in both directions: a full cycle of creates, updates and deletes on each side, and
//! the conflict table (one side changed, both sides changed different fields, both sides changed
//! the same field) under each priority, checking the final values on both sides.

mod common;

use common::harness::{ADMIN_KEY, Harness, Tweaks};
use serde_json::{Map, Value, json};

const PRIORITIES: [&str; 3] = ["local", "external", "newest"];

fn code(priority: &str) -> String {
    format!("CY{}", priority[..1].to_uppercase())
}

/// One local model, one peer collection and one cron sync per priority.
fn mapping() -> String {
    let mut m = String::from(
        "[external_models.ticket]\nfields = { unique_id = \"char\", name = \"char\", note = \"char\" }\n",
    );
    for p in PRIORITIES {
        m.push_str(&format!(
            r#"
[models.t_{p}]
display = "name"
fields = {{ name = {{ type = "char", required = true }}, note = "char" }}

[web_services.cyc_{p}]
url = "@PEER@/api/cyc_{p}/fetch"
confirmation_url = "@PEER@/api/cyc_{p}/confirm"
shipping_url = "@PEER@/api/cyc_{p}/ship"
auth = {{ mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }}

[syncs.{code}]
model = "t_{p}"
external_model = "ticket"
web_service = "cyc_{p}"
direction = "bidirectional"
mode = "cron"
every = "1h"
limit = 10
priority = "{p}"
propagate_deletes = true
external_ref = "unique_id"
fields = [{{ local = "name", external = "name" }}, {{ local = "note", external = "note" }}]
"#,
            code = code(p)
        ));
    }
    m
}

async fn harness() -> Harness {
    Harness::with(Tweaks {
        extra_mapping: mapping(),
        ..Default::default()
    })
    .await
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn local_id(h: &Harness, code: &str, ext: &str) -> i64 {
    h.engine
        .store
        .link_by_external(code, ext)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{code}: no link for {ext}"))
        .local_id
}

async fn local_values(h: &Harness, model: &str, id: i64) -> Option<Map<String, Value>> {
    h.engine
        .store
        .get_record(model, id)
        .await
        .unwrap()
        .map(|r| r.values)
}

async fn edit(h: &Harness, model: &str, id: i64, v: Value) {
    h.patch_record(model, id, v).await
}

#[tokio::test]
async fn a_full_cycle_carries_creates_updates_and_deletes_both_ways() {
    let h = harness().await;
    let (code, model, coll) = ("CYE", "t_external", "cyc_external");
    for (id, name) in [("E-1", "One"), ("E-2", "Two"), ("E-3", "Three")] {
        h.peer
            .upsert(
                coll,
                Some(id.into()),
                obj(json!({"name": name, "note": "n"})),
            )
            .await;
    }
    let r = h
        .client
        .post(h.url(&format!("/api/v1/models/{model}/records")))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Made here", "note": "local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mine = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    let run = h.run(code).await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        (run.pulled, run.created, run.pushed),
        (3, 3, 1),
        "three pulled, one pushed: {run:?}"
    );
    // The confirmation body is the protocol's, record by record.
    let confirms = h.peer.calls(coll, "confirm");
    assert_eq!(
        confirms,
        vec![
            json!({"status": "success", "error_message": "", "content": [
                {"status": "success", "error_message": false, "external_id": "E-1"},
                {"status": "success", "error_message": false, "external_id": "E-2"},
                {"status": "success", "error_message": false, "external_id": "E-3"},
            ]})
        ]
    );
    let e1 = local_id(&h, code, "E-1").await;
    let e2 = local_id(&h, code, "E-2").await;
    let e3 = local_id(&h, code, "E-3").await;
    assert_eq!(
        local_values(&h, model, e1).await.unwrap()["name"],
        json!("One")
    );
    // The local record reached the peer, which gave it its own id.
    let link = h
        .engine
        .store
        .link_by_local(code, mine)
        .await
        .unwrap()
        .expect("linked");
    let theirs = link.external_id.expect("the peer's id");
    assert_eq!(
        h.peer.record(coll, &theirs).unwrap()["name"],
        json!("Made here")
    );

    // Second round: an update and a delete on each side.
    h.peer
        .upsert(coll, Some("E-1".into()), obj(json!({"name": "One v2"})))
        .await;
    assert!(h.peer.remove(coll, "E-2").await);
    edit(&h, model, mine, json!({"name": "Made here v2"})).await;
    let r = h
        .client
        .delete(h.url(&format!("/api/v1/models/{model}/records/{e3}")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let run = h.run(code).await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        (run.pulled, run.updated, run.deleted, run.pushed),
        (2, 1, 1, 2),
        "{run:?}"
    );
    assert_eq!(
        local_values(&h, model, e1).await.unwrap()["name"],
        json!("One v2")
    );
    assert!(
        h.engine
            .store
            .get_record(model, e2)
            .await
            .unwrap()
            .is_none_or(|r| r.deleted),
        "deleted at the peer, so deleted here (propagate_deletes)"
    );
    assert_eq!(
        h.peer.record(coll, &theirs).unwrap()["name"],
        json!("Made here v2")
    );
    assert!(
        h.peer.record(coll, "E-3").is_none(),
        "deleted here, so deleted at the peer"
    );
    assert_eq!(
        h.peer.record(coll, "E-1").unwrap()["name"],
        json!("One v2"),
        "the pulled change is not sent back"
    );

    // A third run finds nothing to do on either side.
    let run = h.run(code).await;
    assert_eq!(
        (
            run.pulled,
            run.created,
            run.updated,
            run.deleted,
            run.pushed
        ),
        (0, 0, 0, 0, 0),
        "{run:?}"
    );

    // A full run sends every linked record again (E-1 and the local one), whatever its version.
    let before = h.peer.received(coll).len();
    let run = h.run_with(code, "?full=true").await;
    assert_eq!((run.status.as_str(), run.pushed), ("success", 2), "{run:?}");
    let received = h.peer.received(coll);
    let mut resent: Vec<_> = received[before..]
        .iter()
        .map(|r| (r.action.as_str(), r.id.clone().unwrap_or_default()))
        .collect();
    resent.sort();
    let mut expected = vec![("update", "E-1".to_string()), ("update", theirs)];
    expected.sort();
    assert_eq!(resent, expected);
    // A query parameter of the wrong type is named, and nothing runs.
    let r = h
        .client
        .post(h.url(&format!("/api/v1/syncs/{code}/run?full=maybe")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(body["message"].as_str().unwrap().contains("full"), "{body}");
    h.stop().await;
}

/// The conflict table. Each row is a record set up on both sides, then edited on one or both
/// sides before a run; the expectations give the final `(name, note)` on both sides.
#[tokio::test]
async fn the_conflict_table_under_each_priority() {
    let h = harness().await;
    for p in PRIORITIES {
        let code = code(p);
        let model = format!("t_{p}");
        let coll = format!("cyc_{p}");
        for id in ["A", "B", "C", "D", "F"] {
            h.peer
                .upsert(
                    &coll,
                    Some(id.into()),
                    obj(json!({"name": id, "note": "n"})),
                )
                .await;
        }
        let run = h.run(&code).await;
        assert_eq!(run.created, 5, "{p}: {run:?}");
        let id = |ext: &'static str| {
            let (h, code) = (&h, code.clone());
            async move { local_id(h, &code, ext).await }
        };

        // A: one side changed (local).
        edit(&h, &model, id("A").await, json!({"name": "A-local"})).await;
        // F: one side changed (external).
        h.peer
            .upsert(&coll, Some("F".into()), obj(json!({"note": "F-ext"})))
            .await;
        // B: both sides changed, different fields.
        edit(&h, &model, id("B").await, json!({"name": "B-local"})).await;
        h.peer
            .upsert(&coll, Some("B".into()), obj(json!({"note": "B-ext"})))
            .await;
        // C: both sides changed the same field, the external side last.
        // Each edit is committed before the next starts, so their times are in this order.
        edit(&h, &model, id("C").await, json!({"name": "C-local"})).await;
        h.peer
            .upsert(&coll, Some("C".into()), obj(json!({"name": "C-ext"})))
            .await;
        // D: both sides changed the same field, the local side last.
        h.peer
            .upsert(&coll, Some("D".into()), obj(json!({"name": "D-ext"})))
            .await;
        edit(&h, &model, id("D").await, json!({"name": "D-local"})).await;

        let run = h.run(&code).await;
        assert_eq!(run.status, "success", "{p}: {run:?}");
        assert_eq!(run.conflicts, 2, "{p}: C and D conflict: {run:?}");

        let winner_c = if p == "local" { "C-local" } else { "C-ext" };
        let winner_d = if p == "external" { "D-ext" } else { "D-local" };
        let expected = [
            ("A", "A-local", "n"),
            ("F", "F", "F-ext"),
            ("B", "B-local", "B-ext"),
            ("C", winner_c, "n"),
            ("D", winner_d, "n"),
        ];
        for (ext, name, note) in expected {
            let local = local_values(&h, &model, id(ext).await).await.unwrap();
            let remote = h.peer.record(&coll, ext).unwrap();
            for (side, values) in [("local", &local), ("peer", &remote)] {
                assert_eq!(
                    (&values["name"], &values["note"]),
                    (&json!(name), &json!(note)),
                    "priority {p}, record {ext}, {side} side"
                );
            }
        }
        // Conflict rows: one per conflicting record, with both values and the winner.
        let rows = h.changes(&code).await;
        let conflicts: Vec<_> = rows.iter().filter(|c| c.action == "conflict").collect();
        assert_eq!(conflicts.len(), 2, "{p}: {conflicts:?}");
        for (ext, winner) in [("C", winner_c), ("D", winner_d)] {
            let row = conflicts
                .iter()
                .find(|c| c.external_id.as_deref() == Some(ext))
                .unwrap_or_else(|| panic!("{p}: a conflict row for {ext}"));
            assert_eq!(row.status, "conflict_resolved");
            assert_eq!(
                row.origin_values,
                json!({"field": "name", "base": ext, "local": format!("{ext}-local"),
                       "external": format!("{ext}-ext")}),
                "{p} {ext}"
            );
            assert_eq!(
                row.destination_values,
                json!({ "name": winner }),
                "{p} {ext}"
            );
            assert!(
                row.error_message.contains(&format!("by priority `{p}`")),
                "{p} {ext}: {}",
                row.error_message
            );
        }
        // Nothing is left to do: a further run changes nothing and logs no new conflict.
        let run = h.run(&code).await;
        assert_eq!(
            (run.updated, run.pushed, run.conflicts),
            (0, 0, 0),
            "{p}: {run:?}"
        );
    }
    h.stop().await;
}
