//! Real-time sync over real HTTP: the seed's requests, fan-out, echo suppression, retries and
//! dead letters, bad input, idempotency, the records API and durability.

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, CRM_KEY, Harness, READ_KEY, Tweaks};
use recsync::peer::Faults;
use serde_json::{Value, json};

const ENVELOPE_OK: &str =
    r#"{"id":null,"jsonrpc":"2.0","result":{"error_message":"","status":"success"}}"#;

/// Sends a body form-encoded under a JSON Content-Type, as `requests` does with `data=dict`.
async fn seed_call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req = h
        .client
        .request(method, h.url(path))
        .header("api_key", CRM_KEY);
    if !form.is_empty() {
        req = req.header("Content-Type", "application/json").body(body);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn canonical(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap().to_string()
}

#[tokio::test]
async fn seed_requests_work_as_the_document_sends_them() {
    let h = Harness::start().await;
    // 1. create
    let (status, body) = seed_call(
        &h,
        reqwest::Method::POST,
        "/sync/CON/create",
        &[("name", "Name"), ("unique_id", "1231")],
    )
    .await;
    assert_eq!(
        (status, canonical(&body)),
        (200, ENVELOPE_OK.to_string()),
        "{body}"
    );
    let link = h
        .engine
        .store
        .link_by_external("CON", "1231")
        .await
        .unwrap()
        .expect("linked");
    let rec = h
        .engine
        .store
        .get_record("contact", link.local_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["name"], json!("Name"));
    // 2. modify
    let (status, body) = seed_call(
        &h,
        reqwest::Method::PUT,
        "/sync/CON/1231",
        &[("name", "Name of record modified")],
    )
    .await;
    assert_eq!(
        (status, canonical(&body)),
        (200, ENVELOPE_OK.to_string()),
        "{body}"
    );
    let rec = h
        .engine
        .store
        .get_record("contact", link.local_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["name"], json!("Name of record modified"));
    assert_eq!(rec.version, 2);
    // 3. remove (the document removes record 1354, which exists in its example system)
    let (status, _) = seed_call(
        &h,
        reqwest::Method::POST,
        "/sync/CON/create",
        &[("name", "Other"), ("unique_id", "1354")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = seed_call(&h, reqwest::Method::DELETE, "/sync/CON/1354", &[]).await;
    assert_eq!(
        (status, canonical(&body)),
        (200, ENVELOPE_OK.to_string()),
        "{body}"
    );
    assert!(
        h.engine
            .store
            .link_by_external("CON", "1354")
            .await
            .unwrap()
            .is_none()
    );
    let rows = h.changes("CON").await;
    let actions: Vec<(&str, &str)> = rows
        .iter()
        .rev()
        .map(|c| (c.action.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("create", "success"),
            ("update", "success"),
            ("create", "success"),
            ("delete", "success")
        ]
    );
    assert!(
        rows.iter()
            .all(|c| c.actor == "crm" && c.direction == "external_to_local")
    );
    assert_eq!(
        rows[3].origin_values,
        json!({"name": "Name", "unique_id": "1231"})
    );
    h.stop().await;
}

#[tokio::test]
async fn json_and_json_rpc_bodies_and_other_key_headers() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("X-Api-Key", CRM_KEY)
        .json(&json!({"name": "Big", "unique_id": 748600007347569543u64, "visits": "12", "is_customer": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link = h
        .engine
        .store
        .link_by_external("CON", "748600007347569543")
        .await
        .unwrap()
        .expect("every digit kept");
    let rec = h
        .engine
        .store
        .get_record("contact", link.local_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["visits"], json!(12));
    assert_eq!(rec.values["customer"], json!(true));
    let r = h
        .client
        .put(h.url("/sync/CON/748600007347569543"))
        .header("Authorization", format!("Bearer {CRM_KEY}"))
        .json(&json!({"jsonrpc": "2.0", "params": {"email": "big@example.com"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = h
        .engine
        .store
        .get_record("contact", link.local_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["email"], json!("big@example.com"));
    h.stop().await;
}

#[tokio::test]
async fn fan_out_reaches_other_syncs_and_never_goes_back() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Ana", "unique_id": "A-1", "email": "ana@example.com", "is_customer": true, "status": "C"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ERP (shipping_url) and SHOP (endpoints) get it; CON, where it came from, does not.
    let erp = eventually(15, "ERP delivery", || async {
        h.peer.received("erp").into_iter().next()
    })
    .await;
    assert_eq!(erp.action, "create");
    assert_eq!(
        erp.values,
        json!({"name": "Ana", "email": "ana@example.com", "is_customer": true})
    );
    let shop = eventually(15, "SHOP delivery", || async {
        h.peer.received("shop").into_iter().next()
    })
    .await;
    assert_eq!(shop.via, "endpoint");
    let local_id = h
        .engine
        .store
        .link_by_external("CON", "A-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    let shop_link = eventually(15, "SHOP link", || async {
        h.engine
            .store
            .link_by_local("SHOP", local_id)
            .await
            .unwrap()
            .filter(|l| l.external_id.is_some())
    })
    .await;
    assert_eq!(
        shop_link.external_id, shop.id,
        "the id from response_id is stored on the link"
    );
    h.engine.drain().await.unwrap();
    assert!(
        h.peer.received("crm").is_empty(),
        "never sent back to the sync it came from"
    );
    let erp_rows = h.changes("ERP").await;
    assert_eq!(erp_rows[0].direction, "local_to_external");
    assert_eq!(erp_rows[0].status, "success");

    // An update reaches SHOP through the write endpoint with the stored id.
    let r = h
        .client
        .put(h.url("/sync/CON/A-1"))
        .header("api_key", CRM_KEY)
        .json(&json!({"email": "ana@new.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let shop_update = eventually(15, "SHOP update", || async {
        h.peer
            .received("shop")
            .into_iter()
            .find(|r| r.action == "write")
    })
    .await;
    assert_eq!(shop_update.values["email"], json!("ana@new.example"));
    // Deletion propagates to both.
    let r = h
        .client
        .delete(h.url("/sync/CON/A-1"))
        .header("api_key", CRM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(15, "deletes", || async {
        let erp = h.peer.received("erp").iter().any(|r| r.action == "delete");
        let shop = h.peer.received("shop").iter().any(|r| r.action == "unlink");
        (erp && shop).then_some(())
    })
    .await;
    assert!(h.peer.records("erp").is_empty());
    h.stop().await;
}

#[tokio::test]
async fn an_echo_of_sent_values_writes_nothing() {
    let h = Harness::start().await;
    // A local edit goes out to CON's peer collection...
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Echo", "email": "echo@example.com", "stage": "lead", "city": "Bilbao"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let local: Value = r.json().await.unwrap();
    let local_id = local["id"].as_i64().unwrap();
    let sent = eventually(15, "CON delivery", || async {
        h.peer.received("crm").into_iter().next()
    })
    .await;
    assert_eq!(
        sent.values,
        json!({"name": "Echo", "email": "echo@example.com", "status": "L", "address": {"city": "Bilbao"}})
    );
    let ext_id = sent.id.clone().unwrap();
    let link = eventually(15, "CON link", || async {
        h.engine
            .store
            .link_by_local("CON", local_id)
            .await
            .unwrap()
            .filter(|l| l.external_id.is_some())
    })
    .await;
    assert_eq!(link.external_id.as_deref(), Some(ext_id.as_str()));
    let rows_before = h.all_changes().await.len();
    let version_before = h
        .engine
        .store
        .get_record("contact", local_id)
        .await
        .unwrap()
        .unwrap()
        .version;
    // ...and the peer reports the same values back.
    let mut echo = h.peer.record("crm", &ext_id).unwrap();
    echo.remove("unique_id");
    let r = h
        .client
        .put(h.url(&format!("/sync/CON/{ext_id}")))
        .header("api_key", CRM_KEY)
        .json(&echo)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.all_changes().await.len(),
        rows_before,
        "no change-control row for an echo"
    );
    assert_eq!(
        h.engine
            .store
            .get_record("contact", local_id)
            .await
            .unwrap()
            .unwrap()
            .version,
        version_before,
        "no write"
    );
    // A real change from the peer is applied.
    let r = h
        .client
        .put(h.url(&format!("/sync/CON/{ext_id}")))
        .header("api_key", CRM_KEY)
        .json(&json!({"status": "C"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rec = h
        .engine
        .store
        .get_record("contact", local_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["stage"], json!("customer"));
    assert_eq!(rec.version, version_before + 1);
    h.stop().await;
}

#[tokio::test]
async fn a_peer_failing_three_times_gets_the_change_exactly_once() {
    let h = Harness::start().await;
    h.peer.set_faults(Faults {
        fail_next: 3,
        ..Default::default()
    });
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Retry", "customer": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let local_id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    for coll in ["erp", "crm"] {
        eventually(20, "both deliveries", || async {
            h.peer.received(coll).into_iter().find(|r| r.status == 200)
        })
        .await;
    }
    eventually(20, "an empty outbox", || async {
        (h.engine.store.outbox_depth("CON").await.unwrap()
            + h.engine.store.outbox_depth("ERP").await.unwrap()
            == 0)
            .then_some(())
    })
    .await;
    for coll in ["erp", "crm"] {
        let creates: Vec<_> = h
            .peer
            .received(coll)
            .into_iter()
            .filter(|r| r.action == "create")
            .collect();
        assert_eq!(
            creates.len(),
            1,
            "{coll} got the create exactly once: {creates:?}"
        );
    }
    let failed = h
        .all_changes()
        .await
        .iter()
        .filter(|c| c.status == "failed" && c.local_id == Some(local_id))
        .count();
    assert_eq!(failed, 3, "every failed attempt has its row");
    assert!(
        h.all_changes()
            .await
            .iter()
            .filter(|c| c.status == "failed")
            .all(|c| c.error_message.contains("HTTP 503"))
    );
    h.stop().await;
}

#[tokio::test]
async fn dead_letters_wait_for_a_person_and_retry_delivers_them() {
    let h = Harness::with(Tweaks {
        max_attempts: 2,
        ..Default::default()
    })
    .await;
    h.peer.set_faults(Faults {
        fail_next: 1000,
        ..Default::default()
    });
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Dead", "customer": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let dead = eventually(20, "a dead letter", || async {
        h.engine
            .store
            .list_outbox(Some(recsync::store::OutboxStatus::Dead), Some("CON"), 0, 10)
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(dead.attempts, 2);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or("")
            .contains("after 2 attempts"),
        "{dead:?}"
    );
    h.peer.set_faults(Faults::default());
    // The operator's retry, through the CLI on the same database.
    let mut cli = std::process::Command::new(common::recsync_bin());
    cli.args([
        "outbox",
        "retry",
        &dead.id.to_string(),
        "--database-url",
        &h.db.url,
        "--mappings",
    ])
    .arg(h.dir.path().join("mappings"));
    let out = common::output(cli).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(20, "the retried delivery", || async {
        h.peer.received("crm").into_iter().find(|r| r.status == 200)
    })
    .await;
    let done = eventually(20, "the entry to be done", || async {
        h.engine
            .store
            .outbox_entry(dead.id)
            .await
            .unwrap()
            .filter(|e| e.status == "done")
    })
    .await;
    // Delivered: the failures of the attempts before are history (the change-control log
    // keeps them), not the entry's last error.
    assert_eq!(done.last_error, None, "{done:?}");
    let rows = h.changes("CON").await;
    assert_eq!(rows[0].status, "success");
    assert!(rows.iter().filter(|c| c.status == "failed").count() >= 2);
    // The API lists dead letters too.
    let listed: Value = h
        .client
        .get(h.url("/api/v1/outbox?status=dead"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != json!(dead.id))
    );
    let bad = h
        .client
        .get(h.url("/api/v1/outbox?status=deadd"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.unwrap();
    assert!(
        text.contains("unknown status `deadd`: use pending"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_only_its_log_row() {
    let h = Harness::with(Tweaks {
        body_limit: 4096,
        ..Default::default()
    })
    .await;
    let ok = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Kept", "unique_id": "K1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let records_before = h.engine.store.count_records("contact").await.unwrap();
    let outbox_before = h
        .engine
        .store
        .list_outbox(None, None, 0, 1000)
        .await
        .unwrap()
        .len();
    let big = "x".repeat(10_000);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "bad key",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", "wrong-key-000000000")
                .json(&json!({"name": "X", "unique_id": "1"})),
            401,
            "not valid",
        ),
        (
            "no key",
            h.client
                .post(h.url("/sync/CON/create"))
                .json(&json!({"name": "X", "unique_id": "1"})),
            401,
            "API key is required",
        ),
        (
            "wrong scope",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", READ_KEY)
                .json(&json!({"name": "X", "unique_id": "1"})),
            403,
            "scope `sync:CON`",
        ),
        (
            "unknown code",
            h.client
                .post(h.url("/sync/NOPE/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X"})),
            404,
            "unknown sync `NOPE`",
        ),
        (
            "unknown id",
            h.client
                .put(h.url("/sync/CON/404404"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X"})),
            404,
            "external id `404404`",
        ),
        (
            "a fraction as the id",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .body(r#"{"name": "X", "unique_id": 7004.0}"#),
            422,
            "unique_id: the external id must be a non-empty string or an integer, not `7004.0`",
        ),
        (
            "an exponent as the id",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .body(r#"{"name": "X", "unique_id": 1e3}"#),
            422,
            "not `1000.0`",
        ),
        (
            "an id too long",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X", "unique_id": "i".repeat(256)})),
            422,
            "256 characters long; at most 255",
        ),
        (
            "a control character in the path's id",
            h.client
                .put(h.url("/sync/CON/K%071"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X"})),
            422,
            "control character",
        ),
        (
            "a PUT whose body names another id",
            h.client
                .put(h.url("/sync/CON/K1"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X", "unique_id": "K2"})),
            422,
            "unique_id: the body names external id `K2` but the path names `K1`",
        ),
        (
            "not JSON or form",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .body("{\"name\": "),
            400,
            "not valid JSON",
        ),
        (
            "plain words",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .body("hello there"),
            400,
            "neither JSON nor form",
        ),
        (
            "wrong type",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X", "unique_id": "2", "visits": "many"})),
            422,
            "visits: not a valid integer",
        ),
        (
            "bad selection",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X", "unique_id": "3", "status": "Q"})),
            422,
            "stage: value has no entry",
        ),
        (
            "oversized",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": big, "unique_id": "4"})),
            413,
            "larger than the limit",
        ),
        (
            "missing external_ref",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X"})),
            422,
            "unique_id: missing",
        ),
        (
            "unknown field",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X", "unique_id": "5", "colour": "red"})),
            422,
            "colour: unknown field",
        ),
        (
            "missing required",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"unique_id": "6", "email": "a@b"})),
            422,
            "name: is required",
        ),
        (
            "unresolved ref",
            h.client
                .post(h.url("/sync/CON/create"))
                .header("api_key", CRM_KEY)
                .json(&json!({"name": "X", "unique_id": "7", "company_id": "C-404"})),
            422,
            "company: no `company` record linked to external id `C-404` in sync `COMP`",
        ),
        (
            "outbound-only sync",
            h.client
                .post(h.url("/sync/ERP/create"))
                .header("api_key", ADMIN_KEY)
                .json(&json!({"name": "X", "unique_id": "8"})),
            403,
            "does not accept inbound",
        ),
    ];
    for (name, req, status, needle) in cases {
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|_| panic!("{name}: the answer is the JSON envelope"));
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["jsonrpc"], "2.0", "{name}");
        assert_eq!(body["result"]["status"], "failed", "{name}");
        let msg = body["result"]["error_message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{name}: {msg:?} should mention {needle:?}"
        );
    }
    assert_eq!(
        h.engine.store.count_records("contact").await.unwrap(),
        records_before,
        "nothing written"
    );
    assert_eq!(
        h.engine
            .store
            .list_outbox(None, None, 0, 1000)
            .await
            .unwrap()
            .len(),
        outbox_before,
        "nothing queued"
    );
    let failed = h
        .all_changes()
        .await
        .into_iter()
        .filter(|c| c.status == "failed")
        .count();
    // The bad and the missing key write no row (they are counted in /metrics instead, so
    // anonymous traffic cannot grow the log); the other seventeen did.
    assert_eq!(
        failed, 17,
        "every request with a valid key that reached a known sync left one failed row (the unknown code did not)"
    );
    h.stop().await;
}

/// A DELETE of an external id this binding does not link (never created, or already deleted)
/// is a success with a `skipped` row, so that a caller retrying after a lost answer is never
/// told it failed (protocol.md §1).
#[tokio::test]
async fn a_delete_of_nothing_linked_succeeds_and_says_so() {
    let h = Harness::start().await;
    let created = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Gone Soon", "unique_id": "D1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    for attempt in ["first", "retried"] {
        let r = h
            .client
            .delete(h.url("/sync/CON/D1"))
            .header("api_key", CRM_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{attempt}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["result"]["status"], "success", "{attempt}: {body}");
    }
    let never = h
        .client
        .delete(h.url("/sync/CON/404404"))
        .header("api_key", CRM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(never.status(), 200);
    let body: Value = never.json().await.unwrap();
    assert_eq!(body["result"]["status"], "success", "{body}");
    let rows = h.changes("CON").await;
    let deleted: Vec<_> = rows
        .iter()
        .filter(|c| c.action == "delete" && c.status == "success")
        .collect();
    assert_eq!(deleted.len(), 1, "one delete applied: {rows:#?}");
    let skipped: Vec<_> = rows
        .iter()
        .filter(|c| c.action == "delete" && c.status == "skipped")
        .collect();
    assert_eq!(
        skipped.len(),
        2,
        "the retry and the never-created: {rows:#?}"
    );
    assert!(
        skipped
            .iter()
            .all(|c| c.error_message.contains("nothing to delete")),
        "{skipped:#?}"
    );
    assert!(
        skipped
            .iter()
            .any(|c| c.external_id.as_deref() == Some("404404")),
        "{skipped:#?}"
    );
    assert_eq!(h.engine.store.count_records("contact").await.unwrap(), 0);
    h.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer() {
    let h = Harness::start().await;
    let send = || {
        h.client
            .post(h.url("/sync/CON/create"))
            .header("api_key", CRM_KEY)
            .header("Idempotency-Key", "req-42")
            .json(&json!({"name": "Once", "unique_id": "I-1"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.text().await.unwrap();
    // Between the two, the record changes; the replay does not re-apply the old values.
    let r = h
        .client
        .put(h.url("/sync/CON/I-1"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Changed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let second = send().await.unwrap();
    assert_eq!(
        second
            .headers()
            .get("Idempotent-Replay")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(second.text().await.unwrap(), first_body);
    let id = h
        .engine
        .store
        .link_by_external("CON", "I-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    assert_eq!(
        h.engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .unwrap()
            .values["name"],
        json!("Changed")
    );
    // A create on an existing id is an upsert.
    let again = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Upserted", "unique_id": "I-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(h.engine.store.count_records("contact").await.unwrap(), 1);
    h.stop().await;
}

#[tokio::test]
async fn relations_resolve_through_ref_sync() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/sync/COMP/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Acme", "unique_id": "C-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let company = h
        .engine
        .store
        .link_by_external("COMP", "C-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Worker", "unique_id": "W-1", "company_id": "C-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = h
        .engine
        .store
        .link_by_external("CON", "W-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    let rec = h
        .engine
        .store
        .get_record("contact", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["company"], json!(company));
    // expand inlines the related record.
    let listed: Value = h
        .client
        .get(h.url("/api/v1/models/contact/records"))
        .query(&[
            ("expand", "company"),
            ("domain", r#"[["name", "=", "Worker"]]"#),
        ])
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["records"][0]["company"]["name"], json!("Acme"));
    h.stop().await;
}

#[tokio::test]
async fn records_api_filters_pages_and_checks_scopes() {
    let h = Harness::start().await;
    for i in 0..5 {
        let r = h
            .client
            .post(h.url("/api/v1/models/contact/records"))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&json!({"name": format!("P{i}"), "visits": i, "stage": if i % 2 == 0 { "lead" } else { "lost" }}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let get = |q: Vec<(&'static str, String)>| {
        let req = h
            .client
            .get(h.url("/api/v1/models/contact/records"))
            .query(&q)
            .header("X-Api-Key", READ_KEY);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let page1 = get(vec![("limit", "2".into())]).await;
    assert_eq!(page1["records"].as_array().unwrap().len(), 2);
    let after = page1["next_after"].as_i64().unwrap();
    let page2 = get(vec![("limit", "10".into()), ("after", after.to_string())]).await;
    assert_eq!(page2["records"].as_array().unwrap().len(), 3);
    assert_eq!(page2["next_after"], Value::Null);
    let filtered = get(vec![(
        "domain",
        r#"["|", ["visits", ">=", 4], ["stage", "=", "lost"]]"#.into(),
    )])
    .await;
    let names: Vec<&str> = filtered["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["P1", "P3", "P4"]);
    let bad = h
        .client
        .get(h.url("/api/v1/models/contact/records"))
        .query(&[("domain", r#"[["visits", "like", 1]]"#)])
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let denied = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", READ_KEY)
        .json(&json!({"name": "No"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.json::<Value>().await.unwrap()["error"], "forbidden");
    let invalid = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"visits": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);
    let msg = invalid.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("visits: not a valid integer") && msg.contains("name: is required"),
        "{msg}"
    );
    let missing = h
        .client
        .patch(h.url("/api/v1/models/contact/records/999999"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "No"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let unknown_model = h
        .client
        .get(h.url("/api/v1/models/nope/records"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_model.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn relations_resolve_through_ref_field() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/api/v1/models/company/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Vatco", "vat": "ESB999"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let company = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let r = h
        .client
        .post(h.url("/sync/VAT/create"))
        .header("api_key", ADMIN_KEY)
        .json(&json!({"name": "By VAT", "unique_id": "V-1", "company_id": "ESB999"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = h
        .engine
        .store
        .link_by_external("VAT", "V-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    assert_eq!(
        h.engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .unwrap()
            .values["company"],
        json!(company)
    );
    let r = h
        .client
        .post(h.url("/sync/VAT/create"))
        .header("api_key", ADMIN_KEY)
        .json(&json!({"name": "Nobody", "unique_id": "V-2", "company_id": "XX000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["result"]["error_message"],
        "company: no `company` record with vat = `XX000`"
    );
    h.stop().await;
}

#[tokio::test]
async fn rate_limits_and_malformed_answers_are_retried() {
    let h = Harness::start().await;
    // The first call gets 429 with Retry-After: 1, the next a 200 that is not JSON.
    h.peer.set_faults(Faults {
        rate_limit_next: 1,
        retry_after: 1,
        malformed_next: 1,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Patient", "stage": "lead"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let local_id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    eventually(20, "the delivery", || async {
        h.peer.received("crm").into_iter().find(|r| r.status == 200)
    })
    .await;
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let rows = h.changes("CON").await;
    let failures: Vec<&str> = rows
        .iter()
        .filter(|c| c.local_id == Some(local_id) && c.status == "failed")
        .map(|c| c.error_message.as_str())
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures.iter().any(|m| m.contains("HTTP 429")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|m| m.contains("not JSON")),
        "{failures:?}"
    );
    let creates = h
        .peer
        .received("crm")
        .into_iter()
        .filter(|r| r.action == "create" && r.status == 200)
        .count();
    assert_eq!(
        creates, 1,
        "the peer answered the 429 and the malformed call without storing anything"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_create_after_a_local_delete_makes_a_new_record() {
    let h = Harness::start().await;
    let create = || {
        h.client
            .post(h.url("/sync/CON/create"))
            .header("api_key", CRM_KEY)
            .json(&json!({"name": "Phoenix", "unique_id": "R-1"}))
            .send()
    };
    assert_eq!(create().await.unwrap().status(), 200);
    let first = h
        .engine
        .store
        .link_by_external("CON", "R-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    let r = h
        .client
        .delete(h.url(&format!("/api/v1/models/contact/records/{first}")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again = create().await.unwrap();
    assert_eq!(again.status(), 200, "{}", again.text().await.unwrap());
    let second = h
        .engine
        .store
        .link_by_external("CON", "R-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    assert_ne!(first, second);
    assert_eq!(h.engine.store.count_records("contact").await.unwrap(), 1);
    assert!(
        h.engine
            .store
            .get_record("contact", first)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    h.stop().await;
}

#[tokio::test]
async fn many2many_values_resolve_every_reference_or_name_the_missing_one() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for ext in ["C-1", "C-2"] {
        let r = h
            .client
            .post(h.url("/sync/COMP/create"))
            .header("api_key", CRM_KEY)
            .json(&json!({"name": ext, "unique_id": ext}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(
            h.engine
                .store
                .link_by_external("COMP", ext)
                .await
                .unwrap()
                .unwrap()
                .local_id,
        );
    }
    let r = h
        .client
        .post(h.url("/sync/VAT/create"))
        .header("api_key", ADMIN_KEY)
        .json(&json!({"name": "Partnered", "unique_id": "M-1", "partner_ids": ["C-1", "C-2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = h
        .engine
        .store
        .link_by_external("VAT", "M-1")
        .await
        .unwrap()
        .unwrap()
        .local_id;
    assert_eq!(
        h.engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .unwrap()
            .values["partners"],
        json!(ids)
    );
    let r = h
        .client
        .put(h.url("/sync/VAT/M-1"))
        .header("api_key", ADMIN_KEY)
        .json(&json!({"partner_ids": ["C-2", "C-9"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["result"]["error_message"],
        "partners: no `company` record linked to external id `C-9` in sync `COMP`"
    );
    assert_eq!(
        h.engine
            .store
            .get_record("contact", id)
            .await
            .unwrap()
            .unwrap()
            .values["partners"],
        json!(ids),
        "nothing written"
    );
    h.stop().await;
}
