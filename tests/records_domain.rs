//! Records-API domains follow dotted paths through many2one fields, as Odoo users write them.

mod common;

use common::harness::{ADMIN_KEY, Harness, READ_KEY};
use serde_json::{Value, json};

#[tokio::test]
async fn a_domain_follows_a_dotted_path_through_a_many2one() {
    let h = Harness::start().await;
    let create = |model: &'static str, body: Value| {
        let req = h
            .client
            .post(h.url(&format!("/api/v1/models/{model}/records")))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
        }
    };
    let es = create("company", json!({"name": "Acme Iberia", "vat": "ES1"})).await;
    let fr = create("company", json!({"name": "Acme France", "vat": "FR1"})).await;
    create("contact", json!({"name": "Ana", "company": es})).await;
    create("contact", json!({"name": "Bo", "company": fr})).await;
    create(
        "contact",
        json!({"name": "Cy", "company": es, "manager": null}),
    )
    .await;
    create("contact", json!({"name": "Di"})).await;
    let get = |domain: &'static str| {
        let req = h
            .client
            .get(h.url("/api/v1/models/contact/records"))
            .query(&[("domain", domain)])
            .header("X-Api-Key", READ_KEY);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, v) = get(r#"[["company.vat", "=", "ES1"]]"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(names(&v), vec!["Ana", "Cy"]);
    let (_, v) = get(r#"["|", ["company.name", "ilike", "france"], ["name", "=", "Di"]]"#).await;
    assert_eq!(names(&v), vec!["Bo", "Di"]);
    // A contact without a company has no value on the path.
    let (_, v) = get(r#"[["company.vat", "=", false]]"#).await;
    assert_eq!(names(&v), vec!["Di"]);
    // Two hops: the manager's company.
    let ana = h
        .engine
        .store
        .records_after("contact", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.values["name"] == "Ana")
        .unwrap()
        .id;
    create("contact", json!({"name": "Ed", "manager": ana})).await;
    let (_, v) = get(r#"[["manager.company.vat", "=", "ES1"]]"#).await;
    assert_eq!(names(&v), vec!["Ed"]);
    // Paths are type-checked like fields, naming the element.
    for bad in [
        r#"[["company.nope", "=", 1]]"#,
        r#"[["name.first", "=", "x"]]"#,
        r#"[["nope.vat", "=", "x"]]"#,
    ] {
        let (status, v) = get(bad).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("element 0")
                || v.to_string().contains("element 0"),
            "{bad}: {v}"
        );
    }
    h.stop().await;
}

/// A page size outside 1..=1000 is refused with 400 naming `limit` on every listing, as
/// `/api/v1/changes` does, instead of being quietly replaced (`limit=-1` used to answer one
/// record).
#[tokio::test]
async fn a_page_size_out_of_range_is_refused_on_every_listing() {
    let h = Harness::start().await;
    for name in ["Ana", "Bo"] {
        let r = h
            .client
            .post(h.url("/api/v1/models/contact/records"))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    for path in [
        "/api/v1/models/contact/records",
        "/api/v1/outbox",
        "/api/v1/runs",
    ] {
        for bad in ["-1", "0", "1001"] {
            let r = h
                .client
                .get(h.url(path))
                .query(&[("limit", bad)])
                .header("X-Api-Key", READ_KEY)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 400, "{path}?limit={bad}: {body}");
            assert!(
                body.to_string()
                    .contains("`limit` must be between 1 and 1000"),
                "{path}?limit={bad}: {body}"
            );
        }
        let r = h
            .client
            .get(h.url(path))
            .query(&[("limit", "1")])
            .header("X-Api-Key", READ_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}?limit=1");
    }
    let r = h
        .client
        .get(h.url("/api/v1/models/contact/records"))
        .query(&[("limit", "1")])
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 1, "{v}");
}
