//! Scopes on every route: the routes come from `/openapi.json` (so a new route is walked too),
//! each is classified by the scope it needs (an unclassified route fails the test), and each is
//! called with no key, a wrong key and a key of every scope.

mod common;

use common::harness::{ADMIN_KEY, CRM_KEY, Harness, OPERATE_KEY, READ_KEY, WRITE_KEY};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    Nothing,
    Read,
    Write,
    Operate,
    /// `sync:<CODE>` for the sync in the path (the CRM key has `sync:CON`).
    Sync,
}

fn need(method: &str, path: &str) -> Need {
    match (method, path) {
        (_, p) if p.starts_with("/sync/") => Need::Sync,
        (
            "get",
            "/healthz" | "/readyz" | "/openapi.json" | "/" | "/ui/{file}" | "/favicon.ico"
            | "/metrics",
        ) => Need::Nothing,
        // The external systems call these without a key: Dropbox's POST carries a signature
        // (tests/dropbox.rs), Odoo's automation rules the web service's token (tests/odoo.rs);
        // this harness has no such service (404 for any key).
        ("get" | "post", "/webhooks/{kind}/{web_service}") => Need::Nothing,
        ("get", p) if p.starts_with("/api/v1/") => Need::Read,
        // A plan reads only.
        ("post", "/api/v1/syncs/{code}/plan") => Need::Read,
        ("post" | "patch" | "delete", p) if p.starts_with("/api/v1/models/") => Need::Write,
        ("post", "/api/v1/syncs/{code}/run")
        | ("post", "/api/v1/outbox/{id}/retry")
        | ("post", "/api/v1/outbox/{id}/discard")
        | ("post", "/api/v1/holds/{id}/approve")
        | ("post", "/api/v1/holds/{id}/discard")
        | ("post", "/api/v1/syncs/{code}/records/{local_id}/{op}") => Need::Operate,
        _ => panic!("classify the scope {method} {path} needs in tests/scopes.rs"),
    }
}

fn allowed(need: Need, key: &str) -> bool {
    match need {
        Need::Nothing => true,
        Need::Read => [READ_KEY, WRITE_KEY, OPERATE_KEY, ADMIN_KEY].contains(&key),
        Need::Write => [WRITE_KEY, ADMIN_KEY].contains(&key),
        Need::Operate => [OPERATE_KEY, ADMIN_KEY].contains(&key),
        Need::Sync => [CRM_KEY, ADMIN_KEY].contains(&key),
    }
}

#[tokio::test]
async fn every_route_enforces_its_scope_for_every_key() {
    let h = Harness::start().await;
    let doc: Value = h
        .client
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let n = need(method, path);
            let url = path
                .replace("{code}", "CON")
                .replace("{external_id}", "scope-test")
                .replace("{model}", "contact")
                .replace("{id}", "999999")
                .replace("{file}", "app.js")
                .replace("{web_service}", "crm")
                .replace("{kind}", "dropbox");
            for key in [
                "",
                "not-a-key-at-all-000000",
                READ_KEY,
                WRITE_KEY,
                OPERATE_KEY,
                CRM_KEY,
                ADMIN_KEY,
            ] {
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut req = h
                    .client
                    .request(m, h.url(&url))
                    .header("Content-Type", "application/json")
                    .body("{}");
                if !key.is_empty() {
                    // Both spellings, as the two APIs read them.
                    req = req.header("X-Api-Key", key).header("api_key", key);
                }
                let status = req.send().await.unwrap().status().as_u16();
                let ok = if key.is_empty() || key.starts_with("not-a-key") {
                    n == Need::Nothing
                } else {
                    allowed(n, key)
                };
                if ok {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path} with {key:?} is allowed ({n:?}) but got {status}"
                    );
                } else if key.is_empty() || key.starts_with("not-a-key") {
                    assert_eq!(status, 401, "{method} {path} without a valid key");
                } else {
                    assert_eq!(status, 403, "{method} {path} with {key:?} lacks {n:?}");
                }
                walked += 1;
            }
        }
    }
    assert!(walked >= 7 * 25, "every route with every key: {walked}");
    h.stop().await;
}

/// A call without a key is told which headers carry one, and that a proxy may have dropped the
/// seed's `api_key` (nginx and gunicorn drop headers with underscores by default). A header
/// spelled `api-key`, as such a proxy never passes on either, is no key.
#[tokio::test]
async fn a_missing_key_says_where_a_key_goes_and_that_proxies_drop_api_key() {
    let h = Harness::start().await;
    for req in [
        h.client.post(h.url("/sync/CON/create")).body("{}"),
        h.client
            .post(h.url("/sync/CON/create"))
            .header("api-key", CRM_KEY)
            .body("{}"),
        h.client.get(h.url("/api/v1/syncs")),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        let msg = body.to_string();
        assert!(msg.contains("X-Api-Key"), "{msg}");
        assert!(
            msg.contains("proxies such as nginx drop `api_key`"),
            "{msg}"
        );
    }
    h.stop().await;
}
