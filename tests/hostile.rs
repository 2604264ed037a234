//! Hostile input on the inbound API, over real HTTP: deep nesting, huge numbers, invalid
//! UTF-8, duplicate keys, NUL characters, path traversal in external ids, and SQL
//! metacharacters in every field and filter. Each gets a clear 4xx (or is stored verbatim as
//! the opaque text it is), never a 5xx, and nothing is half-written.

mod common;

use common::harness::{ADMIN_KEY, CRM_KEY, Harness, READ_KEY};
use serde_json::{Value, json};

async fn post_raw(h: &Harness, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = h
        .client
        .post(h.url(path))
        .header("api_key", CRM_KEY)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn count(h: &Harness) -> usize {
    h.engine
        .store
        .records_after("contact", 0, 100_000)
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_bodies_get_clear_client_errors_and_write_nothing() {
    let h = Harness::start().await;
    let before = count(&h).await;
    let deep = format!(
        "{{\"unique_id\":\"N1\",\"name\":\"n\",\"address\":{}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let mut bad_utf8 = br#"{"unique_id":"U1","name":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    bad_utf8.extend_from_slice(br#""}"#);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("deep nesting", deep.into_bytes(), 400, "not valid JSON"),
        (
            "a number past f64",
            br#"{"unique_id":"H1","name":"h","visits":1e400}"#.to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "an integer past i64",
            br#"{"unique_id":"H2","name":"h","visits":123456789012345678901234567890}"#.to_vec(),
            422,
            "visits",
        ),
        ("invalid UTF-8", bad_utf8, 400, "UTF-8"),
        (
            "a NUL character",
            br#"{"unique_id":"Z1","name":"a\u0000b"}"#.to_vec(),
            400,
            "NUL",
        ),
        (
            "a NUL in a key",
            br#"{"unique_id":"Z2","na\u0000me":"x"}"#.to_vec(),
            400,
            "NUL",
        ),
    ];
    for (what, body, status, needle) in cases {
        let (got, answer) = post_raw(&h, "/sync/CON/create", body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let msg = answer["result"]["error_message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    assert_eq!(count(&h).await, before, "nothing was written");
    // Each refusal is in the change-control log, once, as failed.
    let refused = h
        .changes("CON")
        .await
        .into_iter()
        .filter(|c| c.status == "failed")
        .count();
    assert_eq!(refused, 6);

    // A NUL in the external id of the URL.
    let r = h
        .client
        .put(h.url("/sync/CON/a%00b"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A NUL in an API URL, path or query (PostgreSQL cannot compare it): 400, for every route.
    for path in [
        "/api/v1/runs?sync=a%00b",
        "/api/v1/changes?q=%00",
        "/api/v1/models/contact%00/records",
        "/api/v1/syncs?x=%00",
    ] {
        let r = h
            .client
            .get(h.url(path))
            .header("X-Api-Key", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{path}");
    }

    // Duplicate keys: the last one wins (serde_json's rule), stated in docs/security.md.
    let (got, _) = post_raw(
        &h,
        "/sync/CON/create",
        br#"{"unique_id":"DUP","name":"first","name":"second"}"#.to_vec(),
    )
    .await;
    assert_eq!(got, 200);
    let link = h
        .engine
        .store
        .link_by_external("CON", "DUP")
        .await
        .unwrap()
        .unwrap();
    let rec = h
        .engine
        .store
        .get_record("contact", link.local_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["name"], "second");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_sql_metacharacters_are_plain_text() {
    let h = Harness::start().await;
    let nasty = [
        "'; DROP TABLE records; --",
        "x' OR '1'='1",
        "\" OR \"\"=\"",
        "%' AND 1=1 --",
        "../../etc/passwd",
        "..\\..\\windows\\system32",
        "Robert'); DELETE FROM links;--",
    ];
    for (i, n) in nasty.iter().enumerate() {
        // As the external id (in the body) and as every text field.
        let (got, answer) = post_raw(
            &h,
            "/sync/CON/create",
            serde_json::to_vec(&json!({"unique_id": n, "name": n, "email": format!("{i}{n}")}))
                .unwrap(),
        )
        .await;
        assert_eq!(got, 200, "{n}: {answer}");
        // And in the URL, percent-encoded.
        let url = format!(
            "/sync/CON/{}",
            percent_encoding::utf8_percent_encode(n, percent_encoding::NON_ALPHANUMERIC)
        );
        let r = h
            .client
            .put(h.url(&url))
            .header("api_key", CRM_KEY)
            .json(&json!({"name": format!("{n} again")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{n}");
    }
    for n in nasty {
        let link = h
            .engine
            .store
            .link_by_external("CON", n)
            .await
            .unwrap()
            .unwrap();
        let rec = h
            .engine
            .store
            .get_record("contact", link.local_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rec.values["name"],
            json!(format!("{n} again")),
            "stored verbatim"
        );
        // Every filter takes it as text: exactly the rows of that record.
        for (param, expect_some) in [("external_id", true), ("q", true), ("sync", false)] {
            let r = h
                .client
                .get(h.url("/api/v1/changes"))
                .query(&[(param, n)])
                .header("X-Api-Key", READ_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{param}={n}");
            let body: Value = r.json().await.unwrap();
            let rows = body["changes"].as_array().cloned().unwrap_or_default();
            if expect_some {
                assert!(!rows.is_empty(), "{param}={n}");
            } else {
                assert!(rows.is_empty(), "{param}={n}: {rows:?}");
            }
            if param == "external_id" {
                assert!(
                    rows.iter().all(|c| c["external_id"] == json!(n)),
                    "{param}={n}"
                );
            }
        }
        // And the records API's domain.
        let domain = json!([["name", "=", format!("{n} again")]]).to_string();
        let r = h
            .client
            .get(h.url("/api/v1/models/contact/records"))
            .query(&[("domain", domain)])
            .header("X-Api-Key", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{n}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["records"].as_array().map(Vec::len),
            Some(1),
            "{n}: {body}"
        );
    }
    // The tables are all there.
    assert!(
        h.engine
            .store
            .records_after("contact", 0, 10)
            .await
            .unwrap()
            .len()
            >= 7
    );
    assert!(!h.changes("CON").await.is_empty());
    h.stop().await;
}
