//! The change-control API: every filter and combinations of them, checked against a brute-force
//! filter over the same rows; keyset pages; CSV export; masking of secret fields; bad
//! parameters named; retention pruning.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::harness::{ADMIN_KEY, CRM_KEY, Harness, READ_KEY, Tweaks};
use rand::{Rng, SeedableRng, rngs::StdRng};
use recsync::store::{Change, ChangeFilter, LogAction, LogDirection, LogStatus, NewChange};
use serde_json::{Value, json};

const SYNCS: [&str; 3] = ["CON", "COMP", "PULL"];
const WORDS: [&str; 6] = ["Acme", "Globex", "Núñez", "50%_off", "Initech", "o'Brien"];

/// Writes `n` varied rows spread over the last `n` minutes; returns every row as stored.
async fn seed(h: &Harness, n: usize, rng: &mut StdRng) -> Vec<Change> {
    let now = Utc::now();
    let rows: Vec<NewChange> = (0..n)
        .map(|i| {
            let status = LogStatus::ALL[rng.random_range(0..LogStatus::ALL.len())];
            NewChange {
                sync: SYNCS[rng.random_range(0..3)].into(),
                direction: LogDirection::parse(
                    LogDirection::ALL[rng.random_range(0..LogDirection::ALL.len())],
                )
                .unwrap(),
                action: LogAction::parse(LogAction::ALL[rng.random_range(0..LogAction::ALL.len())])
                    .unwrap(),
                external_id: rng
                    .random_bool(0.8)
                    .then(|| format!("E{}", rng.random_range(0..15))),
                local_id: rng.random_bool(0.8).then(|| rng.random_range(1..20)),
                name: "Seeded".into(),
                title: format!("{} {i}", WORDS[rng.random_range(0..WORDS.len())]),
                origin_values: json!({"i": i}),
                destination_values: json!({}),
                before_values: Default::default(),
                modified_at: None,
                synced_at: Some(now - Duration::minutes((n - i) as i64)),
                status: LogStatus::parse(status).unwrap(),
                error_message: if status == "failed" {
                    format!("{} refused", WORDS[rng.random_range(0..WORDS.len())])
                } else {
                    String::new()
                },
                run_id: rng.random_bool(0.3).then(|| rng.random_range(1..4)),
                actor: "test".into(),
            }
        })
        .collect();
    let mut tx = h.engine.store.begin().await.unwrap();
    tx.log_changes(&rows).await.unwrap();
    tx.commit().await.unwrap();
    h.engine
        .store
        .changes(&ChangeFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

type Pred = Box<dyn Fn(&Change) -> bool>;

/// One filter: its query parameters and the brute-force predicate.
struct Case {
    params: Vec<(&'static str, String)>,
    keep: Pred,
}

fn random_case(rng: &mut StdRng, rows: &[Change]) -> Case {
    let mut params = Vec::new();
    let mut preds: Vec<Pred> = Vec::new();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.synced_at).collect();
    let mut kinds: Vec<u32> = Vec::new();
    let wanted = rng.random_range(1..4);
    while kinds.len() < wanted {
        let k = rng.random_range(0..10);
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    for kind in kinds {
        match kind {
            0 => {
                let v = SYNCS[rng.random_range(0..3)].to_string();
                params.push(("sync", v.clone()));
                preds.push(Box::new(move |c: &Change| c.sync == v));
            }
            1 => {
                let v = LogDirection::ALL[rng.random_range(0..2)].to_string();
                params.push(("direction", v.clone()));
                preds.push(Box::new(move |c: &Change| c.direction.as_str() == v));
            }
            2 => {
                let v = LogAction::ALL[rng.random_range(0..LogAction::ALL.len())].to_string();
                params.push(("action", v.clone()));
                preds.push(Box::new(move |c: &Change| c.action.as_str() == v));
            }
            3 => {
                let v = LogStatus::ALL[rng.random_range(0..LogStatus::ALL.len())].to_string();
                params.push(("status", v.clone()));
                preds.push(Box::new(move |c: &Change| c.status.as_str() == v));
            }
            4 => {
                let v = format!("E{}", rng.random_range(0..15));
                params.push(("external_id", v.clone()));
                preds.push(Box::new(move |c: &Change| {
                    c.external_id.as_deref() == Some(v.as_str())
                }));
            }
            5 => {
                let v: i64 = rng.random_range(1..20);
                params.push(("local_id", v.to_string()));
                preds.push(Box::new(move |c: &Change| c.local_id == Some(v)));
            }
            6 => {
                let t = times[rng.random_range(0..times.len())];
                params.push(("since", t.to_rfc3339()));
                preds.push(Box::new(move |c: &Change| c.synced_at >= t));
            }
            7 => {
                let t = times[rng.random_range(0..times.len())];
                params.push(("until", t.to_rfc3339()));
                preds.push(Box::new(move |c: &Change| c.synced_at < t));
            }
            8 => {
                let word = WORDS[rng.random_range(0..WORDS.len())];
                // Part of a word, in another case: the search ignores case.
                let v: String = word
                    .chars()
                    .skip(1)
                    .take(4)
                    .collect::<String>()
                    .to_uppercase();
                params.push(("q", v.clone()));
                let lower = v.to_lowercase();
                preds.push(Box::new(move |c: &Change| {
                    c.title.to_lowercase().contains(&lower)
                        || c.error_message.to_lowercase().contains(&lower)
                }));
            }
            _ => {
                let v: i64 = rng.random_range(1..4);
                params.push(("run_id", v.to_string()));
                preds.push(Box::new(move |c: &Change| c.run_id == Some(v)));
            }
        }
    }
    Case {
        params,
        keep: Box::new(move |c| preds.iter().all(|p| p(c))),
    }
}

/// Every id the API returns for `params`, following `next` page by page.
async fn api_ids(h: &Harness, params: &[(&str, String)], limit: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let mut q: Vec<(&str, String)> = params.to_vec();
        q.push(("limit", limit.to_string()));
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        let r = h
            .client
            .get(h.url("/api/v1/changes"))
            .query(&q)
            .header("X-Api-Key", READ_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{q:?}");
        let body: Value = r.json().await.unwrap();
        let page = body["changes"].as_array().unwrap();
        assert!(page.len() <= limit);
        ids.extend(page.iter().map(|c| c["id"].as_i64().unwrap()));
        match body["next"].as_i64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    ids
}

#[tokio::test]
async fn every_filter_and_combination_matches_a_brute_force_filter() {
    let h = Harness::start().await;
    let mut rng = StdRng::seed_from_u64(7);
    let rows = seed(&h, 400, &mut rng).await;
    assert_eq!(rows.len(), 400);
    // Each filter on its own, then random combinations.
    let mut cases = Vec::new();
    for _ in 0..120 {
        cases.push(random_case(&mut rng, &rows));
    }
    let mut nonempty = 0;
    for case in &cases {
        let time = |name: &str| {
            case.params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| DateTime::parse_from_rfc3339(v).unwrap())
        };
        if let (Some(since), Some(until)) = (time("since"), time("until"))
            && since >= until
        {
            // An empty range is refused, naming both ends.
            let r = h
                .client
                .get(h.url("/api/v1/changes"))
                .query(&case.params)
                .header("X-Api-Key", READ_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            continue;
        }
        let expected: Vec<i64> = rows
            .iter()
            .filter(|c| (case.keep)(c))
            .map(|c| c.id)
            .collect();
        if !expected.is_empty() {
            nonempty += 1;
        }
        let got = api_ids(&h, &case.params, 7).await;
        assert_eq!(got, expected, "filter {:?}", case.params);
    }
    assert!(nonempty > 60, "most cases select something: {nonempty}");
    // No filter: everything, newest first, in pages.
    let all = api_ids(&h, &[], 50).await;
    assert_eq!(all, rows.iter().map(|c| c.id).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test]
async fn csv_export_has_every_matching_row_and_the_json_values() {
    let h = Harness::start().await;
    let mut rng = StdRng::seed_from_u64(11);
    let rows = seed(&h, 3500, &mut rng).await;
    let r = h
        .client
        .get(h.url("/api/v1/changes?format=csv&sync=CON"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        recsync::audit::CSV_COLUMNS.to_vec()
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let expected: Vec<&Change> = rows.iter().filter(|c| c.sync == "CON").collect();
    assert!(expected.len() > 1000, "more than one page");
    assert_eq!(records.len(), expected.len());
    for (rec, c) in records.iter().zip(expected) {
        assert_eq!(rec[0].parse::<i64>().unwrap(), c.id);
        assert_eq!(&rec[7], c.title.as_str());
        assert_eq!(
            serde_json::from_str::<Value>(&rec[8]).unwrap(),
            c.origin_values
        );
        assert_eq!(&rec[12], c.status.as_str());
        assert_eq!(&rec[13], c.error_message.as_str());
    }
    h.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_named_and_keys_are_required() {
    let h = Harness::start().await;
    for (query, names) in [
        ("direction=sideways", "direction"),
        ("action=explode", "action"),
        ("status=ok", "status"),
        ("local_id=abc", "local_id"),
        ("run_id=1.5", "run_id"),
        ("since=yesterday", "since"),
        ("until=2026-13-40", "until"),
        ("since=2026-11-24&until=2026-11-23", "since"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("after=x", "after"),
        ("format=xml", "format"),
        ("colour=red", "colour"),
    ] {
        let r = h
            .client
            .get(h.url(&format!("/api/v1/changes?{query}")))
            .header("X-Api-Key", READ_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
    let r = h.client.get(h.url("/api/v1/changes")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .client
        .get(h.url("/api/v1/changes"))
        .header("X-Api-Key", "wrong-key-0000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    h.stop().await;
}

#[tokio::test]
async fn secret_fields_never_reach_the_log_or_the_api() {
    let h = Harness::start().await;
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"unique_id": "S-1", "name": "Sec", "pin": "4921-7731"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Stored masked: the value never reached the log.
    let rows = h.changes("CON").await;
    let row = rows.iter().find(|c| c.action == "create").unwrap();
    assert_eq!(row.origin_values["pin"], json!("***"), "{row:?}");
    assert_eq!(row.destination_values["pin"], json!("***"), "{row:?}");
    // The record itself keeps the value.
    let rec = h
        .engine
        .store
        .get_record("contact", row.local_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["pin"], json!("4921-7731"));
    // An update's row keeps what the field held before: masked as well.
    let r = h
        .client
        .put(h.url("/sync/CON/S-1"))
        .header("api_key", CRM_KEY)
        .json(&json!({"pin": "1111-2222"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = h.changes("CON").await;
    let row = rows.iter().find(|c| c.action == "update").unwrap();
    assert_eq!(row.before_values, json!({"pin": "***"}), "{row:?}");
    assert_eq!(row.destination_values, json!({"pin": "***"}), "{row:?}");
    // Neither the API nor the CSV export shows it.
    for format in ["json", "csv"] {
        let text = h
            .client
            .get(h.url(&format!("/api/v1/changes?format={format}")))
            .header("X-Api-Key", ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("Sec"), "{text}");
        assert!(!text.contains("4921-7731"), "{format}: {text}");
        assert!(!text.contains("1111-2222"), "{format}: {text}");
    }
    h.stop().await;
}

/// An update's row says, for each field it changed, what the local record held before: an
/// inbound update the values it replaced, a delivery the values last synced out. The change
/// view shows them beside the values after.
#[tokio::test]
async fn an_update_keeps_each_changed_field_as_it_was_before() {
    let h = Harness::start().await;
    let send = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        h.client
            .request(method, h.url(path))
            .header("api_key", CRM_KEY)
            .json(&body)
            .send()
    };
    // The CRM's record, which the CRM then sends.
    let values = json!({"name": "Ann", "email": "ann@example.com"});
    h.peer
        .upsert(
            "crm",
            Some("B-1".into()),
            values.as_object().unwrap().clone(),
        )
        .await;
    let r = send(
        reqwest::Method::POST,
        "/sync/CON/create",
        json!({"unique_id": "B-1", "name": "Ann", "email": "ann@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = send(
        reqwest::Method::PUT,
        "/sync/CON/B-1",
        json!({"name": "Anna", "email": "ann@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let inbound = h
        .changes("CON")
        .await
        .into_iter()
        .find(|c| c.action == "update" && c.direction == "external_to_local")
        .unwrap();
    assert_eq!(inbound.destination_values, json!({"name": "Anna"}));
    assert_eq!(
        inbound.before_values,
        json!({"name": "Ann"}),
        "only what changed, as it was"
    );
    // Edited here: the delivery's row has the values last synced out.
    let local_id = inbound.local_id.unwrap();
    let r = h
        .client
        .patch(h.url(&format!("/api/v1/models/contact/records/{local_id}")))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"email": "anna@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = common::eventually(20, "the delivery's row", || async {
        h.changes("CON").await.into_iter().find(|c| {
            c.action == "update" && c.direction == "local_to_external" && c.status == "success"
        })
    })
    .await;
    assert_eq!(
        sent.before_values,
        json!({"email": "ann@example.com"}),
        "{sent:?}"
    );
    // The API answers them with the row; rows of other kinds have none.
    let one: serde_json::Value = h
        .client
        .get(h.url(&format!("/api/v1/changes/{}", sent.id)))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        one["before_values"],
        json!({"email": "ann@example.com"}),
        "{one}"
    );
    let create = h
        .changes("CON")
        .await
        .into_iter()
        .find(|c| c.action == "create")
        .unwrap();
    assert_eq!(create.before_values, json!({}));
    h.stop().await;
}

#[tokio::test]
async fn pruning_deletes_only_rows_past_retention() {
    let h = Harness::start().await;
    let now = Utc::now();
    let row = |age_days: i64, i: usize| NewChange {
        sync: "CON".into(),
        direction: LogDirection::ExternalToLocal,
        action: LogAction::Update,
        external_id: Some(format!("P{i}")),
        local_id: None,
        name: "Update contact".into(),
        title: String::new(),
        origin_values: json!({}),
        destination_values: json!({}),
        before_values: Default::default(),
        modified_at: None,
        synced_at: Some(now - Duration::days(age_days)),
        status: LogStatus::Success,
        error_message: String::new(),
        run_id: None,
        actor: "test".into(),
    };
    // 2,500 old rows (more than two prune batches) and 30 recent ones, interleaved.
    let rows: Vec<NewChange> = (0..2530)
        .map(|i| if i % 85 == 0 { row(1, i) } else { row(100, i) })
        .collect();
    let recent = rows
        .iter()
        .filter(|r| r.synced_at.unwrap() > now - Duration::days(2))
        .count();
    let mut tx = h.engine.store.begin().await.unwrap();
    tx.log_changes(&rows).await.unwrap();
    tx.commit().await.unwrap();
    let gone = recsync::audit::prune(&h.engine.store, std::time::Duration::from_secs(90 * 86_400))
        .await
        .unwrap();
    assert_eq!(gone as usize, rows.len() - recent);
    let left = h.changes("CON").await;
    assert_eq!(left.len(), recent);
    assert!(left.iter().all(|c| c.synced_at > now - Duration::days(2)));
    h.stop().await;
}

#[tokio::test]
async fn with_the_log_off_only_success_rows_are_left_out() {
    let h = Harness::with(Tweaks {
        change_log: false,
        ..Default::default()
    })
    .await;
    let ok = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"unique_id": "Q-1", "name": "Quiet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let bad = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"unique_id": "Q-2", "name": "Loud", "visits": "many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    // The record was written; only its success row was not.
    assert!(
        h.engine
            .store
            .link_by_external("CON", "Q-1")
            .await
            .unwrap()
            .is_some()
    );
    let rows = h.changes("CON").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "failed");
    assert_eq!(rows[0].external_id.as_deref(), Some("Q-2"));
    h.stop().await;
}
