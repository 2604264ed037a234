//! `/metrics`: Prometheus text with changes, HTTP requests by route template, runs and the
//! outbox, open on loopback.

mod common;

use common::harness::{CRM_KEY, Harness};
use serde_json::json;

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_changes_requests_runs_and_the_outbox() {
    let h = Harness::start().await;
    // The peer refuses deliveries, so entries wait in the outbox.
    h.peer.set_faults(recsync::peer::Faults {
        fail_next: 1000,
        only: Some("ship".into()),
        ..Default::default()
    });
    for i in 0..3 {
        let r = h
            .client
            .post(h.url("/sync/CON/create"))
            .header("api_key", CRM_KEY)
            .json(&json!({"unique_id": format!("M-{i}"), "name": "Metric", "is_customer": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = h
        .client
        .post(h.url("/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let run = h.run("PULL").await;
    assert_eq!(run.status, "success");

    let r = h.client.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "open on loopback without a key");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let created = sample(
        &text,
        r#"recsync_changes_total{sync="CON",direction="external_to_local",status="success"}"#,
    )
    .unwrap_or_else(|| panic!("changes counted:\n{text}"));
    assert!(created >= 3.0, "{created}");
    assert!(
        sample(
            &text,
            r#"recsync_changes_total{sync="CON",direction="external_to_local",status="failed"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "the refused request is counted as failed:\n{text}"
    );
    assert!(
        sample(
            &text,
            r#"recsync_http_requests_total{method="POST",route="/sync/{code}/create",status="200"}"#
        )
        .is_some_and(|n| n >= 3.0),
        "requests by route template, not by URL:\n{text}"
    );
    assert!(
        text.contains(r#"recsync_http_request_duration_seconds_bucket{method="POST",route="/sync/{code}/create",le="0.005"}"#),
        "{text}"
    );
    assert!(
        sample(&text, r#"recsync_runs_total{sync="PULL",status="success"}"#)
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(text.contains(r#"recsync_run_duration_seconds_count{sync="PULL",status="success"}"#));
    // The customers fan out to ERP, whose deliveries are failing: three entries wait.
    let erp_waiting = ["pending", "inflight"]
        .iter()
        .filter_map(|s| {
            sample(
                &text,
                &format!(r#"recsync_outbox_entries{{sync="ERP",status="{s}"}}"#),
            )
        })
        .sum::<f64>();
    assert_eq!(erp_waiting, 3.0, "{text}");
    assert!(
        sample(&text, r#"recsync_outbox_oldest_age_seconds{sync="ERP"}"#).is_some_and(|a| a >= 0.0),
        "{text}"
    );
    assert!(text.contains("# HELP recsync_changes_total"));
    h.stop().await;
}
