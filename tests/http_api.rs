//! `kind = "http"` against the project's fake HTTP API, over real HTTP: every pagination
//! style end to end, the incremental cursor (kept per sync, inclusive, duplicates dropped,
//! advanced only after a page is applied), pages that repeat or pass `max_pages`, bad
//! answers, sends, credentials and limits.

mod common;

use common::eventually;
use common::harness::{Harness, Tweaks};
use recsync::peer::http::{FakeAuth, FakeHttp, HttpOptions, HttpState};
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

/// The next_url items resource with its sync `S_NEXT_URL`, and `extra` for the service.
fn next_url_mapping(service_extra: &str, list_extra: &str, direction: &str) -> String {
    let block = style_block(
        "next_url",
        r#"{ style = "next_url", next = "$.next" }"#,
        "$.items[*]",
        r#"{ limit = "{limit}", updated_since = "{cursor}" }"#,
        direction,
        "",
    )
    .replace(
        "deleted = { field = \"status\", equals = \"deleted\" }",
        &format!("deleted = {{ field = \"status\", equals = \"deleted\" }}\n{list_extra}"),
    );
    format!("{MODEL}{}{block}", service(service_extra))
}

#[tokio::test]
async fn a_failed_page_stops_the_run_nothing_of_it_is_applied_and_the_next_run_goes_on_from_the_last_applied()
 {
    let (url, api) = fake(HttpOptions::default());
    api.seed("items", 20);
    let h = harness(&url, next_url_mapping("", "", "to_local")).await;
    // Page 2 is answered 400 (not retried): page 1's 7 records are applied and the cursor
    // saved; nothing of page 2.
    api.faults(|f| {
        f.fail_on = Some("page_token=".into());
        f.fail_on_status = Some(400);
    });
    let run = h.run("S_NEXT_URL").await;
    assert_eq!((run.status.as_str(), run.created), ("failed", 7), "{run:?}");
    let err = run.error.clone().unwrap();
    assert!(
        err.contains("web service `api`, resource `items_next_url`: page 2 (/v1/next_url/items)")
            && err.contains("HTTP 400"),
        "{err}"
    );
    assert_eq!(live(&h, "item").await.len(), 7);
    api.faults(|f| f.fail_on = None);
    api.clear_calls();
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 13),
        "{run:?}"
    );
    // It asked from page 1's last updated_at (records 7 to 9 share 00:00:02; 7 was taken).
    assert!(
        list_calls(&api)[0].contains("updated_since=2024-01-01T00%3A00%3A02Z"),
        "{:?}",
        list_calls(&api)
    );
    assert_eq!(live(&h, "item").await.len(), 20);
    h.stop().await;
}

#[tokio::test]
async fn a_page_named_again_or_past_max_pages_stops_the_run_naming_the_page() {
    let (url, api) = fake(HttpOptions::default());
    api.seed("items", 20);
    let h = harness(&url, next_url_mapping("", "max_pages = 2", "to_local")).await;
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("failed", 14),
        "{run:?}"
    );
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("page 3 passes `max_pages` = 2"),
        "{run:?}"
    );
    h.stop().await;

    let (url, api) = fake(HttpOptions::default());
    api.seed("items", 20);
    api.faults(|f| f.repeat_pages = true);
    let h = harness(&url, next_url_mapping("", "", "to_local")).await;
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(run.status, "failed", "{run:?}");
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("page 2 repeats page 1"),
        "{run:?}"
    );
    // The page before the repeat was applied; the loop was not followed.
    assert_eq!(run.created, 7, "{run:?}");
    assert!(list_calls(&api).len() <= 2, "{:?}", list_calls(&api));
    h.stop().await;
}

#[tokio::test]
async fn bad_answers_are_clear_errors_naming_the_service_and_resource_and_nothing_is_applied() {
    type Setup = fn(&HttpState);
    let cases: [(&str, &str, Setup, &str); 4] = [
        (
            "html",
            "",
            |a| a.faults(|f| f.html_next = 1),
            "answered an HTML page, not JSON",
        ),
        (
            "no id",
            "",
            |a| a.faults(|f| f.drop_ids = true),
            "record 1 of page 1 has no `id`",
        ),
        (
            "another host",
            "",
            |a| a.faults(|f| f.next_host = Some("http://127.0.0.2:9".into())),
            "the next page is at http://127.0.0.2:9, another host than the web service's",
        ),
        (
            "path matches nothing",
            "records",
            |_| {},
            "the JSONPath `$.records[*]` matches nothing in the page",
        ),
    ];
    for (what, records, setup, expected) in cases {
        let (url, api) = fake(HttpOptions::default());
        api.seed("items", 20);
        let mut mapping = next_url_mapping("", "", "to_local");
        if !records.is_empty() {
            mapping = mapping.replace("records = \"$.items[*]\"", "records = \"$.records[*]\"");
        }
        let h = harness(&url, mapping).await;
        setup(&api);
        let run = h.run("S_NEXT_URL").await;
        let err = run.error.clone().unwrap_or_default();
        assert_eq!(run.status, "failed", "{what}: {run:?}");
        assert!(
            err.contains("web service `api`, resource `items_next_url`"),
            "{what}: {err}"
        );
        assert!(err.contains(expected), "{what}: {err}");
        // Another host is refused after page 1 (applied); otherwise page 1 itself failed.
        let applied = if what == "another host" { 7 } else { 0 };
        assert_eq!(run.created, applied, "{what}: {run:?}");
        assert_eq!(live(&h, "item").await.len(), applied as usize, "{what}");
        assert!(
            api.calls().iter().all(|c| !c.path.contains("127.0.0.2")),
            "{what}: nothing was asked of the other host"
        );
        h.stop().await;
    }
}

#[tokio::test]
async fn sends_create_update_and_delete_through_the_resource_and_retry_what_can_be_retried() {
    let (url, api) = fake(HttpOptions::default());
    let h = harness(&url, next_url_mapping("", "", "bidirectional")).await;
    let r = h
        .client
        .post(h.url("/api/v1/models/item/records"))
        .header("X-Api-Key", common::harness::ADMIN_KEY)
        .json(&json!({"name": "Made here", "email": "here@example.com", "score": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let local = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    // The first POST meets two 503s: retried with backoff inside the call, one record made.
    api.faults(|f| {
        f.fail_next = 2;
        f.fail_status = Some(503);
        f.only_method = Some("POST".into());
    });
    let run = h.run("S_NEXT_URL").await;
    assert_eq!((run.status.as_str(), run.pushed), ("success", 1), "{run:?}");
    let posts: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .collect();
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert_eq!(posts[2].status, 201);
    assert_eq!(
        posts[2].body.as_ref().unwrap()["name"],
        "Made here",
        "a bare body"
    );
    let items = api.records("items");
    assert_eq!(items.len(), 1);
    let ext = items[0]["id"].to_string();
    assert_eq!(
        h.link("S_NEXT_URL", &ext).await.unwrap().local_id,
        local,
        "the id came from the answer"
    );

    // An update is a PUT to /v1/items/{id}; a 429 first is waited out as Retry-After says.
    // The sync also receives, so the update was read before it was sent: it is not repeated
    // inside the call (an edit made there meanwhile would be written over) but by the outbox,
    // after Retry-After and a new read; the run counts it as failed, the retry delivers it.
    api.clear_calls();
    api.faults(|f| {
        f.throttle_next = 1;
        f.only_method = Some("PUT".into());
    });
    h.patch_record("item", local, json!({"score": 5})).await;
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(
        (run.status.as_str(), run.pushed, run.failed),
        ("partial", 0, 1),
        "{run:?}"
    );
    common::eventually(15, "the update's retry", || async {
        (h.engine.store.outbox_depth("S_NEXT_URL").await.unwrap() == 0).then_some(())
    })
    .await;
    let puts: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!((puts[0].status, puts[1].status), (429, 200));
    assert_eq!(puts[1].path, format!("/v1/items/{ext}"));
    assert!(
        puts[1].at_ms - puts[0].at_ms >= 950.0,
        "Retry-After: 1 was honoured: {puts:?}"
    );
    assert_eq!(api.records("items")[0]["score"], 5);

    // A delete is a DELETE.
    let r = h
        .client
        .delete(h.url(&format!("/api/v1/models/item/records/{local}")))
        .header("X-Api-Key", common::harness::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(api.records("items")[0]["status"], "deleted");
    h.stop().await;
}

/// Fetches what an admin can read of the configuration, runs and changes, as text.
async fn everything_shown(h: &Harness) -> String {
    let mut out = String::new();
    for path in [
        "/api/v1/config",
        "/api/v1/syncs",
        "/api/v1/runs",
        "/api/v1/changes?limit=500",
        "/metrics",
    ] {
        let r = h
            .client
            .get(h.url(path))
            .header("X-Api-Key", common::harness::ADMIN_KEY)
            .send()
            .await
            .unwrap();
        out.push_str(&r.text().await.unwrap());
    }
    out
}

#[tokio::test]
async fn api_key_basic_and_bearer_credentials_are_sent_and_a_refusal_names_the_resource() {
    let cases = [
        (
            FakeAuth::ApiKey {
                header: "X-Desk-Key".into(),
                key: "k-0123456789".into(),
            },
            r#"auth = { mode = "api_key", header = "X-Desk-Key", key = "${SECRET}" }"#,
            "k-0123456789",
        ),
        (
            FakeAuth::Basic {
                user: "agent@example.com/token".into(),
                password: "p-0123456789".into(),
            },
            r#"auth = { mode = "basic", user = "agent@example.com/token", password = "${SECRET}" }"#,
            "p-0123456789",
        ),
        (
            FakeAuth::Bearer("t-0123456789".into()),
            r#"auth = { mode = "bearer", token = "${SECRET}" }"#,
            "t-0123456789",
        ),
    ];
    for (auth, line, secret) in cases {
        for right in [true, false] {
            let (url, api) = fake(HttpOptions {
                auth: auth.clone(),
                ..Default::default()
            });
            api.seed("items", 3);
            let h = Harness::with(Tweaks {
                mapping: Some(next_url_mapping(line, "", "to_local")),
                env: HashMap::from([
                    ("API_URL".to_string(), url.clone()),
                    (
                        "SECRET".to_string(),
                        if right {
                            secret.to_string()
                        } else {
                            "wrong-0123456789".into()
                        },
                    ),
                ]),
                ..Default::default()
            })
            .await;
            let run = h.run("S_NEXT_URL").await;
            if right {
                assert_eq!(
                    (run.status.as_str(), run.created),
                    ("success", 3),
                    "{line}: {run:?}"
                );
            } else {
                let err = run.error.clone().unwrap_or_default();
                assert_eq!(run.status, "failed", "{line}: {run:?}");
                assert!(
                    err.contains("web service `api`, resource `items_next_url`")
                        && err.contains("HTTP 401")
                        && err.contains("credentials were refused"),
                    "{line}: {err}"
                );
            }
            let shown = everything_shown(&h).await;
            assert!(
                !shown.contains(secret) && !shown.contains("wrong-0123456789"),
                "{line}: a secret was shown"
            );
            h.stop().await;
        }
    }
}

#[tokio::test]
async fn oauth2_tokens_are_fetched_once_kept_asked_again_once_on_401_and_never_shown() {
    let (url, api) = fake(HttpOptions {
        auth: FakeAuth::OAuth2 {
            client_id: "desk-client".into(),
            client_secret: "desk-secret-0123456789".into(),
            ttl: std::time::Duration::from_secs(3600),
        },
        ..Default::default()
    });
    api.seed("items", 20);
    let line = r#"auth = { mode = "oauth2", token_url = "${API_URL}/oauth/token", client_id = "${CLIENT_ID}", client_secret = "${CLIENT_SECRET}", scopes = ["items:read", "items:write"] }"#;
    let h = Harness::with(Tweaks {
        mapping: Some(next_url_mapping(line, "", "to_local")),
        env: HashMap::from([
            ("API_URL".to_string(), url.clone()),
            ("CLIENT_ID".to_string(), "desk-client".into()),
            ("CLIENT_SECRET".to_string(), "desk-secret-0123456789".into()),
        ]),
        ..Default::default()
    })
    .await;
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 20),
        "{run:?}"
    );
    assert_eq!(api.token_requests(), 1, "one token for three pages");
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        api.token_requests(),
        1,
        "the token is kept until it expires"
    );
    // The server forgets its tokens: the 401 makes recsync ask once more, and the run goes on.
    api.revoke_tokens();
    api.upsert("items", Some(4), json!({"name": "after the revocation"}));
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(
        (run.status.as_str(), run.updated),
        ("success", 1),
        "{run:?}"
    );
    assert_eq!(api.token_requests(), 2);
    // The token endpoint then refuses the client: a clear error, nothing applied, and a 401
    // is not asked about more than once per call.
    api.revoke_tokens();
    api.faults(|f| f.token_fail = true);
    api.upsert("items", Some(5), json!({"name": "never seen"}));
    let run = h.run("S_NEXT_URL").await;
    let err = run.error.clone().unwrap_or_default();
    assert_eq!((run.status.as_str(), run.updated), ("failed", 0), "{run:?}");
    assert!(
        err.contains("web service `api`, resource `items_next_url`")
            && err.contains(&format!("the token endpoint {url} refused the client credentials with HTTP 401 `invalid_client`")),
        "{err}"
    );
    assert!(
        api.token_requests() <= 6,
        "bounded: {}",
        api.token_requests()
    );
    let shown = everything_shown(&h).await;
    assert!(
        !shown.contains("desk-secret-0123456789") && !shown.contains("desk-client"),
        "secrets shown"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_replaced_before_it_is_used() {
    let (url, api) = fake(HttpOptions {
        auth: FakeAuth::OAuth2 {
            client_id: "c".into(),
            client_secret: "s-0123456789".into(),
            ttl: std::time::Duration::from_secs(1),
        },
        ..Default::default()
    });
    api.seed("items", 3);
    let line = r#"auth = { mode = "oauth2", token_url = "${API_URL}/oauth/token", client_id = "c", client_secret = "s-0123456789", client_auth = "body" }"#;
    let h = harness(&url, next_url_mapping(line, "", "to_local")).await;
    assert_eq!(h.run("S_NEXT_URL").await.status, "success");
    assert_eq!(api.token_requests(), 1);
    // Runs until the one-second token has lapsed: each asks with a token still valid (no 401).
    eventually(10, "a second token", || async {
        assert_eq!(h.run("S_NEXT_URL").await.status, "success");
        (api.token_requests() == 2).then_some(())
    })
    .await;
    assert!(
        api.calls().iter().all(|c| c.status != 401),
        "no call went out with a lapsed token"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_every_sync_of_a_web_service() {
    let (url, api) = fake(HttpOptions::default());
    api.seed("items", 60);
    let both = format!(
        "{MODEL}{}{}{}",
        service(r#"rate_limit = "20/s""#),
        styles()[0].1,
        styles()[1].1
    );
    let h = harness(&url, both).await;
    let (a, b) = tokio::join!(h.run("S_NEXT_URL"), h.run("S_CURSOR"));
    assert_eq!(
        (a.status.as_str(), b.status.as_str()),
        ("success", "success"),
        "{a:?} {b:?}"
    );
    let calls = api.calls();
    let mut at: Vec<f64> = calls.iter().map(|c| c.at_ms).collect();
    at.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let seen: Vec<String> = calls
        .iter()
        .map(|c| format!("{:.0} {}?{} {}", c.at_ms, c.path, c.query, c.status))
        .collect();
    assert_eq!(at.len(), 18, "9 pages each: {seen:#?}");
    // 20 a second, both syncs together: calls leave at least 50 ms apart (the unit test
    // `limits_space_the_calls_of_every_caller_by_the_rate` measures that where they are let
    // through). Here they are seen by the fake, after a trip whose length varies by tens of
    // milliseconds on a loaded machine: no two arrive together, as a burst would.
    let closest = at.windows(2).map(|w| w[1] - w[0]).fold(f64::MAX, f64::min);
    assert!(closest >= 20.0, "two calls {closest} ms apart: {seen:#?}");
    assert!(
        at[17] - at[0] >= 17.0 * 48.0,
        "{} ms for 18 calls",
        at[17] - at[0]
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_service_is_retried_then_named_and_nothing_is_written() {
    // A port nobody listens on: connection refused, retried twice with backoff, then a clear
    // error. Port 1 (tcpmux) rather than a free port let go of: another test running at the
    // same time may be given that one and answer on it.
    let h = harness("http://127.0.0.1:1", next_url_mapping("", "", "to_local")).await;
    let run = h.run("S_NEXT_URL").await;
    let err = run.error.clone().unwrap_or_default();
    assert_eq!((run.status.as_str(), run.created), ("failed", 0), "{run:?}");
    assert!(
        err.contains("web service `api`, resource `items_next_url`: page 1 (/v1/next_url/items)")
            && err.contains("the service could not be reached"),
        "{err}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_plan_of_an_http_sync_reads_pages_and_saves_no_cursor() {
    let (url, api) = fake(HttpOptions::default());
    api.seed("items", 20);
    let h = harness(&url, next_url_mapping("", "", "to_local")).await;
    let r = h
        .client
        .post(h.url("/api/v1/syncs/S_NEXT_URL/plan"))
        .header("X-Api-Key", common::harness::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plan: serde_json::Value = r.json().await.unwrap();
    assert_eq!(plan["local"]["counts"]["create"], 20, "{plan}");
    assert_eq!(list_calls(&api).len(), 3, "the plan read every page");
    assert!(live(&h, "item").await.is_empty(), "nothing written");
    // The cursor did not move: the run reads from the start and creates everything.
    api.clear_calls();
    let run = h.run("S_NEXT_URL").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 20),
        "{run:?}"
    );
    assert!(
        !list_calls(&api)[0].contains("updated_since"),
        "{:?}",
        list_calls(&api)
    );
    h.stop().await;
}
