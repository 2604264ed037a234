//! Peer and network faults on the pull path: connection refused, a peer that stalls past the
//! service's `timeout`, a slow-loris answer, 5xx storms, 429 with Retry-After, malformed JSON,
//! JSON of the wrong shape, a 10 MB answer, duplicate records within a page, a page served for
//! ever, and a flood of Dropbox webhooks. recsync stays up, its memory stays bounded, each
//! failure is reported once (a run record, one change-control row, `/metrics`), nothing spins,
//! and it recovers when the fault goes.

mod common;

use common::eventually;
use common::harness::{Harness, Tweaks};
use recsync::peer::Faults;
use serde_json::json;
use std::time::{Duration, Instant};

const EXTRA: &str = r#"
[web_services.slowsrc]
url = "@PEER@/api/slow/fetch"
confirmation_url = "@PEER@/api/slow/confirm"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }
timeout = "1s"

[syncs.SLOW]
model = "contact"
external_model = "crm_contact"
web_service = "slowsrc"
direction = "to_local"
mode = "cron"
every = "1h"
limit = 5
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[web_services.deadsrc]
url = "http://127.0.0.1:9/api/dead/fetch"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }
timeout = "2s"

[syncs.DEAD]
model = "contact"
external_model = "crm_contact"
web_service = "deadsrc"
direction = "to_local"
mode = "cron"
every = "1h"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]
"#;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn failed_rows(h: &Harness, sync: &str, run_id: i64) -> Vec<recsync::store::Change> {
    h.changes(sync)
        .await
        .into_iter()
        .filter(|c| c.run_id == Some(run_id) && c.name == "Run failed")
        // An action of its own: `--action update` does not mix it in.
        .inspect(|c| assert_eq!(c.action, "run", "{c:?}"))
        .collect()
}

async fn seed(h: &Harness, n: usize, tag: &str) {
    for i in 0..n {
        h.peer
            .upsert(
                "slow",
                Some(format!("{tag}-{i}")),
                json!({"name": format!("{tag} {i}"), "email": format!("{tag}{i}@example.com")})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_pull_fault_fails_its_run_once_with_a_clear_message_and_recovery_follows() {
    let h = Harness::with(Tweaks {
        extra_mapping: EXTRA.into(),
        ..Default::default()
    })
    .await;
    seed(&h, 3, "F").await;
    let cases: Vec<(&str, &str, Faults, &str)> = vec![
        (
            "connection refused",
            "DEAD",
            Faults::default(),
            "could not be reached",
        ),
        (
            "a peer that stalls past the timeout",
            "SLOW",
            Faults {
                latency_ms: 3000,
                only: Some("fetch".into()),
                ..Default::default()
            },
            "timed out",
        ),
        (
            "a slow-loris answer",
            "SLOW",
            Faults {
                trickle_next: 1,
                ..Default::default()
            },
            "timed out",
        ),
        (
            "a 5xx storm",
            "SLOW",
            Faults {
                fail_next: 1000,
                only: Some("fetch".into()),
                ..Default::default()
            },
            "HTTP 503",
        ),
        (
            "429 with Retry-After",
            "SLOW",
            Faults {
                rate_limit_next: 1000,
                retry_after: 7,
                only: Some("fetch".into()),
                ..Default::default()
            },
            "HTTP 429 and asked to retry after 7 s",
        ),
        (
            "malformed JSON",
            "SLOW",
            Faults {
                malformed_next: 1,
                ..Default::default()
            },
            "not JSON",
        ),
        (
            "JSON without `content`",
            "SLOW",
            Faults {
                wrong_shape_next: 2,
                ..Default::default()
            },
            "no `content` list",
        ),
        (
            "JSON without `status`",
            "SLOW",
            Faults {
                no_status_next: 1,
                ..Default::default()
            },
            "the answer has no `status` field; expected {\"status\": \"success\"",
        ),
        (
            "`content` a string",
            "SLOW",
            Faults {
                wrong_shape_next: 1,
                ..Default::default()
            },
            "no `content` list",
        ),
        (
            "a 10 MB answer",
            "SLOW",
            Faults {
                huge_next: 1,
                ..Default::default()
            },
            "larger than 8 MiB",
        ),
    ];
    let rss_before = rss_kib();
    for (what, sync, faults, expect) in cases {
        h.peer.set_faults(faults);
        let started = Instant::now();
        let run = h.run(sync).await;
        h.peer.set_faults(Faults::default());
        assert_eq!(run.status, "failed", "{what}: {run:?}");
        let error = run.error.clone().unwrap_or_default();
        assert!(error.contains(expect), "{what}: {error}");
        // Reported once: one change-control row for the run, with the same message.
        let rows = failed_rows(&h, sync, run.id).await;
        assert_eq!(rows.len(), 1, "{what}: {rows:?}");
        assert_eq!(rows[0].status, "failed");
        assert!(rows[0].error_message.contains(expect), "{what}");
        // Bounded: a timeout is the service's `timeout`, not longer.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} took {:?}",
            started.elapsed()
        );
        // Still up.
        let ready = h.client.get(h.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200, "{what}");
    }
    // Memory: the 10 MB answer was refused while reading, not kept.
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // The failures are counted in /metrics.
    let metrics = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("recsync_runs_total{")
                && l.contains("sync=\"SLOW\"")
                && l.contains("status=\"failed\"")
        })
        .unwrap_or_else(|| panic!("no failed-run counter for SLOW"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 8.0, "{line}");
    // The fault gone, the next run takes everything, once.
    let run = h.run("SLOW").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(run.created, 3);
    for i in 0..3 {
        assert!(
            h.engine
                .store
                .link_by_external("SLOW", &format!("F-{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_records_in_a_page_apply_once_and_a_page_served_forever_stops_the_run() {
    let h = Harness::with(Tweaks {
        extra_mapping: EXTRA.into(),
        ..Default::default()
    })
    .await;
    seed(&h, 4, "D").await;
    h.peer.set_faults(Faults {
        duplicate_records: true,
        ..Default::default()
    });
    let run = h.run("SLOW").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(run.created, 4, "{run:?}");
    let creates = h
        .changes("SLOW")
        .await
        .into_iter()
        .filter(|c| c.action == "create")
        .count();
    assert_eq!(creates, 4, "each record created once");

    // Confirmations ignored: the same full page again and again.
    seed(&h, 5, "R").await;
    h.peer.set_faults(Faults {
        repeat_page: true,
        ..Default::default()
    });
    let fetches = h.peer.calls("slow", "fetch").len();
    let run = h.run("SLOW").await;
    h.peer.set_faults(Faults::default());
    assert_eq!(run.status, "failed", "{run:?}");
    assert!(
        run.error.as_deref().unwrap().contains("same page again"),
        "{run:?}"
    );
    assert_eq!(
        h.peer.calls("slow", "fetch").len() - fetches,
        2,
        "stopped at the first repeat"
    );
    assert_eq!(run.created, 5);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sync_that_keeps_failing_is_not_retried_in_a_hot_loop() {
    let h = Harness::with(Tweaks {
        extra_mapping: EXTRA.replace("every = \"1h\"\nlimit = 5", "every = \"1s\"\nlimit = 5"),
        ..Default::default()
    })
    .await;
    h.peer.set_faults(Faults {
        fail_next: 100_000,
        only: Some("fetch".into()),
        ..Default::default()
    });
    let fetches = h.peer.calls("slow", "fetch").len();
    let started = Instant::now();
    eventually(20, "three scheduled runs", || async {
        let runs = h.engine.store.runs(Some("SLOW"), None, 100).await.unwrap();
        (runs.iter().filter(|r| r.finished_at.is_some()).count() >= 3).then_some(())
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let runs = h.engine.store.runs(Some("SLOW"), None, 100).await.unwrap();
    // One run per second at most (the schedule), each failing once.
    assert!(
        runs.len() as f64 <= elapsed + 2.0,
        "{} runs in {elapsed} s",
        runs.len()
    );
    assert!(runs.iter().all(|r| r.status == "failed"));
    let fetch_calls = h.peer.calls("slow", "fetch").len() - fetches;
    assert!(
        fetch_calls <= runs.len(),
        "{fetch_calls} fetches for {} runs",
        runs.len()
    );
    // Failed fetches answered 503 are not recorded by the peer as calls; the runs are the
    // attempts, and each failed once.
    for r in &runs {
        assert_eq!(failed_rows(&h, "SLOW", r.id).await.len(), 1);
    }
    h.stop().await;
}
