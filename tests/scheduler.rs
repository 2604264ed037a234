//! The scheduler is watched: a scheduled sync past its due time shows in `/readyz` (503,
//! `overdue`), in `recsync_sync_overdue_seconds{sync}` and in `/api/v1/syncs`; with the
//! scheduler running, every scheduled sync's due time stays ahead of now.

mod common;

use common::harness::{Harness, READ_KEY, Tweaks};
use serde_json::Value;

fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn an_overdue_sync_shows_in_readyz_the_metric_and_the_syncs_api() {
    // No scheduler: it stands for one that stopped.
    let h = Harness::with(Tweaks {
        no_scheduler: true,
        ..Default::default()
    })
    .await;
    let r = h.client.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "nothing is due yet");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["overdue"], serde_json::json!([]));

    let due = chrono::Utc::now() - chrono::Duration::seconds(300);
    h.engine
        .store
        .set_next_run("PULL", Some(due), Some("every 1h @ UTC"))
        .await
        .unwrap();
    let r = h.client.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "overdue", "{body}");
    assert_eq!(body["store"], "ok", "{body}");
    let overdue = body["overdue"].as_array().unwrap();
    assert_eq!(overdue.len(), 1, "{body}");
    assert_eq!(overdue[0]["sync"], "PULL");
    let secs = overdue[0]["seconds"].as_f64().unwrap();
    assert!((299.0..400.0).contains(&secs), "{body}");

    let text = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let late = sample(&text, r#"recsync_sync_overdue_seconds{sync="PULL"}"#)
        .unwrap_or_else(|| panic!("no overdue gauge for PULL:\n{text}"));
    assert!((299.0..400.0).contains(&late), "{late}");
    assert_eq!(
        sample(&text, r#"recsync_sync_overdue_seconds{sync="PUSH"}"#),
        Some(0.0),
        "a sync on time reads 0"
    );

    let syncs: Value = h
        .client
        .get(h.url("/api/v1/syncs"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pull = syncs["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"] == "PULL")
        .unwrap();
    assert!(pull["overdue_seconds"].as_i64().unwrap() >= 299, "{pull}");
    let push = syncs["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"] == "PUSH")
        .unwrap();
    assert!(push["overdue_seconds"].is_null(), "{push}");
    h.stop().await;
}

#[tokio::test]
async fn a_running_scheduler_takes_an_overdue_sync_and_readyz_recovers() {
    let h = Harness::start().await;
    // A due time far in the past, as a stalled scheduler would leave it.
    let due = chrono::Utc::now() - chrono::Duration::seconds(300);
    h.engine
        .store
        .set_next_run("PULL", Some(due), Some("every 1h @ UTC"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = h.client.get(h.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not ready: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let state = h.engine.store.sync_state("PULL").await.unwrap().unwrap();
    assert!(
        state.next_run_at.unwrap() > chrono::Utc::now(),
        "the scheduler took the due time and set the next: {:?}",
        state.next_run_at
    );
    h.stop().await;
}
