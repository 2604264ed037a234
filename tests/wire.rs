//! The real-time wire contract as written (protocol §1): the envelope's key order and the echoed
//! JSON-RPC id, 405 and 404 in the envelope, Idempotency-Key reuse, refused keys that write
//! nothing, and records leaving or outside a sync's domain.

mod common;

use common::harness::{ADMIN_KEY, CRM_KEY, Harness};
use serde_json::{Value, json};

#[tokio::test]
async fn the_envelope_keeps_its_key_order_and_echoes_the_json_rpc_id() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"unique_id": "W-1", "name": "Wa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"jsonrpc":"2.0","id":null,"result":{"status":"success","error_message":""}}"#
    );
    let r = h
        .client
        .put(h.url("/sync/CON/W-1"))
        .header("api_key", CRM_KEY)
        .json(&json!({"jsonrpc": "2.0", "id": "req-7", "params": {"name": "Wb"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"jsonrpc":"2.0","id":"req-7","result":{"status":"success","error_message":""}}"#
    );
    let r = h
        .client
        .put(h.url("/sync/CON/W-1"))
        .header("api_key", CRM_KEY)
        .json(&json!({"jsonrpc": "2.0", "id": 42, "params": {"visits": "many"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with(
            r#"{"jsonrpc":"2.0","id":42,"result":{"status":"failed","error_message":"visits: "#
        ),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths_under_sync_answer_in_the_envelope() {
    let h = Harness::start().await;
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("GET", "/sync/CON/create", 405, Some("POST, PUT, DELETE")),
        ("PATCH", "/sync/CON/X-1", 405, Some("PUT, DELETE")),
        ("POST", "/sync/CON/X-1", 405, Some("PUT, DELETE")),
        ("GET", "/sync/CON", 404, None),
        ("GET", "/sync/CON/a/b", 404, None),
        ("POST", "/sync", 404, None),
    ];
    for (method, path, status, allow) in cases {
        let r = h
            .client
            .request(method.parse().unwrap(), h.url(path))
            .header("api_key", CRM_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), *status, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").map(|v| v.to_str().unwrap()),
            *allow,
            "{method} {path}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0", "{method} {path}");
        assert_eq!(body["result"]["status"], "failed", "{method} {path}");
        assert!(
            !body["result"]["error_message"].as_str().unwrap().is_empty(),
            "{method} {path}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    let h = Harness::start().await;
    let send = |body: Value| {
        h.client
            .post(h.url("/sync/CON/create"))
            .header("api_key", CRM_KEY)
            .header("Idempotency-Key", "key-1")
            .json(&body)
            .send()
    };
    let first = send(json!({"unique_id": "I-1", "name": "One"}))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let replay = send(json!({"unique_id": "I-1", "name": "One"}))
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(
        replay.headers().get("idempotent-replay").unwrap(),
        "true",
        "the same request is replayed"
    );
    let other = send(json!({"unique_id": "I-2", "name": "Two"}))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    let body: Value = other.json().await.unwrap();
    let msg = body["result"]["error_message"].as_str().unwrap();
    assert!(msg.contains("`key-1`"), "{msg}");
    assert!(
        h.link("CON", "I-2").await.is_none(),
        "nothing was written for the second request"
    );
    // Another path with the same key is refused too.
    let r = h
        .client
        .put(h.url("/sync/CON/I-1"))
        .header("api_key", CRM_KEY)
        .header("Idempotency-Key", "key-1")
        .json(&json!({"unique_id": "I-1", "name": "One"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    h.stop().await;
}

#[tokio::test]
async fn refused_keys_write_no_rows_and_are_counted() {
    let h = Harness::start().await;
    let metric = || async {
        let text = h
            .client
            .get(h.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("recsync_refused_keys_total"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    let before = metric().await;
    for i in 0..20 {
        let mut req = h
            .client
            .post(h.url("/sync/CON/create"))
            .json(&json!({"unique_id": format!("A-{i}"), "name": "Anon"}));
        if i % 2 == 0 {
            req = req.header("api_key", "not-a-key");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["result"]["status"], "failed");
    }
    assert!(
        h.changes("CON").await.is_empty(),
        "refused keys write no change-control row"
    );
    assert_eq!(metric().await - before, 20.0);
    h.stop().await;
}

#[tokio::test]
async fn leaving_the_domain_unlinks_and_outside_it_is_skipped() {
    let h = Harness::start().await;
    let call = |method: &str, path: &str, body: Value| {
        h.client
            .request(method.parse().unwrap(), h.url(path))
            .header("api_key", ADMIN_KEY)
            .json(&body)
            .send()
    };
    // LOC carries contacts whose email is conflict@example.com.
    let r = call(
        "POST",
        "/sync/LOC/create",
        json!({"unique_id": "L-9", "name": "Lu", "email": "conflict@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let id = h.link("LOC", "L-9").await.unwrap().local_id;
    // The external system says "no longer one of yours": applied, and LOC lets it go.
    let r = call("PUT", "/sync/LOC/L-9", json!({"email": "lu@elsewhere"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let rec = h
        .engine
        .store
        .get_record("contact", id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["email"], json!("lu@elsewhere"));
    let link = h
        .link("LOC", "L-9")
        .await
        .expect("the binding keeps the identity");
    assert!(!link.carried_by("LOC"));
    let rows = h.changes("LOC").await;
    assert!(
        rows.iter()
            .any(|c| c.action == "unlink" && c.local_id == Some(id) && c.status == "success"),
        "{rows:?}"
    );
    // A further change while outside is not LOC's to make: skipped, with the reason.
    let r = call("PUT", "/sync/LOC/L-9", json!({"name": "Lucia"}))
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
    assert_eq!(rec.values["name"], json!("Lu"));
    // A create outside the domain writes nothing but its skipped row.
    let r = call(
        "POST",
        "/sync/LOC/create",
        json!({"unique_id": "L-10", "name": "Out", "email": "out@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.link("LOC", "L-10").await.is_none());
    let rows = h.changes("LOC").await;
    let skipped: Vec<_> = rows.iter().filter(|c| c.status == "skipped").collect();
    assert_eq!(skipped.len(), 2, "{rows:?}");
    for row in &skipped {
        assert!(
            row.error_message
                .contains("does not match the domain of sync `LOC`"),
            "{row:?}"
        );
    }
    assert_eq!(skipped[0].external_id.as_deref(), Some("L-10"));
    assert_eq!(skipped[1].external_id.as_deref(), Some("L-9"));
    // Coming back into the domain makes LOC carry the same record again: no copy.
    let r = call(
        "PUT",
        "/sync/LOC/L-9",
        json!({"email": "conflict@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let link = h.link("LOC", "L-9").await.unwrap();
    assert_eq!(link.local_id, id);
    assert!(link.carried_by("LOC"));
    h.stop().await;
}
