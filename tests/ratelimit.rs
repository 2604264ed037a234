//! `rate_limit`: each key has its own request budget on `/sync/*`; a request over it gets 429
//! with Retry-After and the envelope, writes nothing, and the key is served again after waiting.

mod common;

use common::harness::{ADMIN_KEY, CRM_KEY, Harness, Tweaks};
use serde_json::{Value, json};

async fn create(h: &Harness, key: &str, id: String) -> reqwest::Response {
    h.client
        .post(h.url("/sync/CON/create"))
        .header("api_key", key)
        .json(&json!({"unique_id": id, "name": "Limited"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn each_key_has_its_own_budget_and_is_told_when_to_come_back() {
    let h = Harness::with(Tweaks {
        rate_limit: 5,
        ..Default::default()
    })
    .await;
    // Twenty requests at once: the budget's burst gets through, the rest are told to wait.
    let answers =
        futures_util::future::join_all((0..20).map(|i| create(&h, CRM_KEY, format!("RL-{i}"))))
            .await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    assert!((5..=7).contains(&ok), "the burst is the budget: {ok}");
    let limited: Vec<_> = answers.into_iter().filter(|r| r.status() == 429).collect();
    assert_eq!(ok + limited.len(), 20, "only 200 or 429");
    let r = limited
        .into_iter()
        .next()
        .expect("requests over the budget are refused");
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after), "{after}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"]["status"], "failed");
    assert!(
        body["result"]["error_message"]
            .as_str()
            .unwrap()
            .contains("over its limit of 5 requests per second"),
        "{body}"
    );
    // The refused requests wrote nothing: one record and one change-control row per 200.
    let linked = futures_util::future::join_all((0..20).map(|i| {
        let store = h.engine.store.clone();
        async move {
            store
                .link_by_external("CON", &format!("RL-{i}"))
                .await
                .unwrap()
                .is_some()
        }
    }))
    .await;
    assert_eq!(linked.iter().filter(|l| **l).count(), ok);
    assert_eq!(h.changes("CON").await.len(), ok);
    // Another key is not affected.
    assert_eq!(create(&h, ADMIN_KEY, "RL-admin".into()).await.status(), 200);
    // Within the wait it was told (and a second of slack), the key is served again.
    let mut n = 0;
    common::eventually(after + 1, "the key served again", || {
        n += 1;
        let id = format!("RL-later-{n}");
        let h = &h;
        async move { (create(h, CRM_KEY, id).await.status() == 200).then_some(()) }
    })
    .await;
    h.stop().await;
}
