//! `kind = "http"` against the project's fake HTTP API, over real HTTP: every pagination
//! style end to end, the incremental cursor (kept per sync, inclusive, duplicates dropped,
//! advanced only after a page is applied), pages that repeat or pass `max_pages`, bad
//! answers, sends, credentials and limits.

mod common;

use common::harness::{Harness, Tweaks};
use recsync::peer::http::{FakeHttp, HttpOptions, HttpState};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

fn fake(opts: HttpOptions) -> (String, Arc<HttpState>) {
    let fake = FakeHttp::bind(opts).unwrap();
    let (url, state) = (fake.url(), fake.state.clone());
    tokio::spawn(fake.run());
    (url, state)
}

const MODEL: &str = r#"
[models.item]
display = "name"
fields = { name = "char", email = "char", status = "char", score = "integer" }
"#;

/// The items resource in one pagination style, as external model `items_<style>` and sync
/// `S_<STYLE>` (to_local unless `direction` says otherwise).
fn style_block(
    style: &str,
    paginate: &str,
    records: &str,
    query: &str,
    direction: &str,
    extra_sync: &str,
) -> String {
    let code = format!("S_{}", style.to_uppercase());
    format!(
        r#"
[external_models.items_{style}]
kind = "http"
fields = {{ id = "integer", name = "char", email = "char", status = "char", score = "integer", updated_at = "datetime" }}
[external_models.items_{style}.list]
path = "/v1/{style}/items"
records = "{records}"
query = {query}
cursor_field = "updated_at"
paginate = {paginate}
deleted = {{ field = "status", equals = "deleted" }}
[external_models.items_{style}.create]
method = "POST"
path = "/v1/items"
[external_models.items_{style}.update]
method = "PUT"
path = "/v1/items/{{id}}"
[external_models.items_{style}.delete]
path = "/v1/items/{{id}}"

[syncs.{code}]
model = "item"
external_model = "items_{style}"
web_service = "api"
direction = "{direction}"
every = "1h"
limit = 7
propagate_deletes = true
{extra_sync}
fields = [
  {{ local = "name", external = "name" }},
  {{ local = "email", external = "email" }},
  {{ local = "status", external = "status" }},
  {{ local = "score", external = "score" }},
]
"#
    )
}

fn service(extra: &str) -> String {
    format!(
        r#"
[web_services.api]
kind = "http"
base_url = "${{API_URL}}"
timeout = "5s"
retries = 2
{extra}
"#
    )
}

fn styles() -> Vec<(&'static str, String)> {
    let q = r#"{ limit = "{limit}", updated_since = "{cursor}" }"#;
    let pq = r#"{ per_page = "{limit}", updated_since = "{cursor}" }"#;
    vec![
        (
            "next_url",
            style_block(
                "next_url",
                r#"{ style = "next_url", next = "$.next" }"#,
                "$.items[*]",
                q,
                "to_local",
                "",
            ),
        ),
        (
            "cursor",
            style_block(
                "cursor",
                r#"{ style = "cursor", param = "cursor", next = "$.meta.next_cursor" }"#,
                "$.data[*]",
                q,
                "to_local",
                "",
            ),
        ),
        (
            "offset",
            style_block(
                "offset",
                r#"{ style = "offset", param = "offset" }"#,
                "$.items[*]",
                q,
                "to_local",
                "",
            ),
        ),
        (
            "page",
            style_block(
                "page",
                r#"{ style = "page", param = "page", start = 1 }"#,
                "$.items[*]",
                pq,
                "to_local",
                "",
            ),
        ),
        (
            "link_header",
            style_block(
                "link_header",
                r#"{ style = "link_header" }"#,
                "$[*]",
                pq,
                "to_local",
                "",
            ),
        ),
    ]
}

async fn harness(url: &str, mapping: String) -> Harness {
    Harness::with(Tweaks {
        mapping: Some(mapping),
        env: HashMap::from([("API_URL".to_string(), url.to_string())]),
        ..Default::default()
    })
    .await
}

async fn live(h: &Harness, model: &str) -> Vec<recsync::store::Record> {
    h.engine
        .store
        .records_after(model, 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.deleted)
        .collect()
}

/// GETs of the items listing the fake saw.
fn list_calls(api: &HttpState) -> Vec<String> {
    api.calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/items"))
        .map(|c| format!("{}?{}", c.path, c.query))
        .collect()
}

#[tokio::test]
async fn every_pagination_style_reads_every_record_once_and_then_only_what_changed() {
    for (style, block) in styles() {
        let (url, api) = fake(HttpOptions::default());
        api.seed("items", 20);
        let h = harness(&url, format!("{MODEL}{}{block}", service(""))).await;
        let code = format!("S_{}", style.to_uppercase());
        let run = h.run(&code).await;
        assert_eq!(
            (run.status.as_str(), run.created),
            ("success", 20),
            "{style}: {run:?}"
        );
        let names: std::collections::BTreeSet<String> = live(&h, "item")
            .await
            .iter()
            .map(|r| r.values["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 20, "{style}");
        // 20 records, 7 a page: three pages (link_header and cursor stop when no next page
        // is named; offset and page on the short third page).
        let pages = list_calls(&api);
        assert_eq!(pages.len(), 3, "{style}: {pages:#?}");
        // Two records change; the next run asks from the cursor and takes exactly them (and
        // drops the records it already took at the cursor's own second).
        api.clear_calls();
        api.upsert("items", Some(3), json!({"name": "Item three, renamed"}));
        api.upsert("items", Some(11), json!({"score": 99}));
        let run = h.run(&code).await;
        assert_eq!(
            (run.status.as_str(), run.created, run.updated),
            ("success", 0, 2),
            "{style}: {run:?}"
        );
        let asked = list_calls(&api);
        assert!(
            asked[0].contains("updated_since=2024-01-01T00%3A00%3A06Z"),
            "{style}: the first page asks from the last applied record's updated_at: {asked:?}"
        );
        assert!(
            live(&h, "item")
                .await
                .iter()
                .any(|r| r.values["name"] == "Item three, renamed"),
            "{style}"
        );
        // Nothing changed: a run asks once and applies nothing.
        let run = h.run(&code).await;
        assert_eq!(
            (run.status.as_str(), run.created, run.updated, run.deleted),
            ("success", 0, 0, 0),
            "{style}: {run:?}"
        );
        // A delete marked in the page is a delete here.
        api.remove("items", 5);
        let run = h.run(&code).await;
        assert_eq!(
            (run.status.as_str(), run.deleted),
            ("success", 1),
            "{style}: {run:?}"
        );
        assert_eq!(live(&h, "item").await.len(), 19, "{style}");
        h.stop().await;
    }
}
