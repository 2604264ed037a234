//! `/openapi.json`: an OpenAPI 3 document generated from the route registrations. It is checked
//! for structure (every operation answers something, every `$ref` resolves, every path template
//! parameter is declared), every documented operation is served, and every route of the
//! protocol is documented.

mod common;

use common::harness::{ADMIN_KEY, Harness};
use serde_json::Value;

/// The routes of `protocol.md` (§1 and §4), as the document must name them.
const EXPECTED: [(&str, &str); 25] = [
    ("post", "/sync/{code}/create"),
    ("put", "/sync/{code}/{external_id}"),
    ("delete", "/sync/{code}/{external_id}"),
    ("get", "/api/v1/models/{model}/records"),
    ("post", "/api/v1/models/{model}/records"),
    ("get", "/api/v1/models/{model}/records/{id}"),
    ("patch", "/api/v1/models/{model}/records/{id}"),
    ("delete", "/api/v1/models/{model}/records/{id}"),
    ("get", "/api/v1/syncs"),
    ("post", "/api/v1/syncs/{code}/run"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/changes"),
    ("get", "/api/v1/outbox"),
    ("post", "/api/v1/outbox/{id}/retry"),
    ("post", "/api/v1/outbox/{id}/discard"),
    ("get", "/api/v1/holds"),
    ("get", "/api/v1/holds/{id}"),
    ("post", "/api/v1/holds/{id}/approve"),
    ("post", "/api/v1/holds/{id}/discard"),
    ("post", "/api/v1/syncs/{code}/records/{local_id}/{op}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/api/v1/changes"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "$ref" {
                    if let Some(r) = child.as_str() {
                        out.push(r);
                    }
                } else {
                    refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_valid_and_matches_the_served_routes() {
    let h = Harness::start().await;
    let r = h.client.get(h.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200, "served without a key");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "recsync");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().expect("paths");

    // Structure: operations with responses, declared path parameters, resolvable references.
    let mut operations = Vec::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        let params_in_path: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path} has responses");
            for code in responses.keys() {
                assert!(
                    code == "default" || (code.len() == 3 && code.parse::<u16>().is_ok()),
                    "{method} {path}: response code {code}"
                );
            }
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            for p in &params_in_path {
                assert!(
                    declared.contains(p),
                    "{method} {path} declares its path parameter {p}"
                );
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(
                    ["path", "query", "header", "cookie"].contains(&p["in"].as_str().unwrap()),
                    "{p}"
                );
                if p["in"] == "path" {
                    assert_eq!(p["required"], true, "{method} {path}: {p}");
                }
            }
            operations.push((method.clone(), path.clone()));
        }
    }
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let pointer = r.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "{r} resolves");
    }
    assert!(
        doc["components"]["securitySchemes"]["api_key"].is_object(),
        "the key scheme is described"
    );

    // Every route of the protocol is documented.
    for (method, path) in EXPECTED {
        assert!(
            operations.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is documented"
        );
    }

    // Every documented operation is served: the router knows it (an unknown route gets
    // actix's empty 404; ours answer with a body).
    for (method, path) in &operations {
        let url = path
            .replace("{code}", "CON")
            .replace("{external_id}", "nobody")
            .replace("{model}", "contact")
            .replace("{id}", "999999");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = h
            .client
            .request(m, h.url(&url))
            .header("X-Api-Key", ADMIN_KEY)
            .header("api_key", common::harness::CRM_KEY)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        assert!(
            status != 404 || !body.is_empty(),
            "{method} {path} is served (got an empty {status})"
        );
        assert!(
            status != 405,
            "{method} {path}: the method is served ({status})"
        );
    }
    // And the check itself can fail: an undocumented route gets the empty 404.
    let r = h
        .client
        .get(h.url("/api/v1/nothing-here"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.bytes().await.unwrap().is_empty());
    h.stop().await;
}
