//! The CSV export of 200,000 change-control rows streams in constant memory: the `recsync
//! serve` process's peak RSS barely moves while the whole export (about 90 MB of CSV) goes out.

mod common;

use chrono::Utc;
use recsync::store::{LogAction, LogDirection, LogStatus, NewChange};
use serde_json::json;
use std::process::{Command, Stdio};

const ROWS: usize = 200_000;
const KEY: &str = "export-reader-key-0123456789";

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sets the process's peak (`VmHWM`) back to its RSS now (Linux 4.0 and later), so the next
/// reading is the peak of what came after.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_export_of_200k_rows_streams_in_constant_memory() {
    let db = common::TestDb::new().await;
    let store = db.store().await;
    let payload = "x".repeat(160);
    let now = Utc::now();
    for chunk in 0..(ROWS / 5000) {
        let rows: Vec<NewChange> = (0..5000)
            .map(|i| {
                let n = chunk * 5000 + i;
                NewChange {
                    sync: "CON".into(),
                    direction: LogDirection::ExternalToLocal,
                    action: LogAction::Update,
                    external_id: Some(format!("E{n}")),
                    local_id: Some(n as i64),
                    name: "Update contact".into(),
                    title: format!("Contact {n}"),
                    origin_values: json!({"name": format!("Contact {n}"), "note": payload}),
                    destination_values: json!({"name": format!("Contact {n}"), "note": payload}),
                    before_values: Default::default(),
                    modified_at: None,
                    synced_at: Some(now),
                    status: LogStatus::Success,
                    error_message: String::new(),
                    run_id: None,
                    actor: "test".into(),
                }
            })
            .collect();
        let mut tx = store.begin().await.unwrap();
        tx.log_changes(&rows).await.unwrap();
        tx.commit().await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\n[[api_keys]]\nname = \"reader\"\nkey = \"{KEY}\"\nscopes = [\"read\"]\n",
            db.url
        ),
    )
    .unwrap();
    let port = common::free_port();
    let mut child = Command::new(common::recsync_bin())
        .args([
            "serve",
            "--config",
            "recsync.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    common::eventually(30, "the server to answer", || {
        let c = client.clone();
        let url = format!("{base}/readyz");
        async move {
            c.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    // A small export first, so the server's steady state (connections, caches) is set up.
    let small = client
        .get(format!("{base}/api/v1/changes?format=csv&until=2000-01-01"))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    small.bytes().await.unwrap();
    let (before, _) = rss_mib(child.id());
    let export = |query: &'static str| {
        let client = client.clone();
        let url = format!("{base}/api/v1/changes?format=csv{query}");
        async move {
            let mut resp = client
                .get(url)
                .header("X-Api-Key", KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let (mut bytes, mut lines) = (0usize, 0usize);
            while let Some(chunk) = resp.chunk().await.unwrap() {
                bytes += chunk.len();
                lines += chunk.iter().filter(|b| **b == b'\n').count();
            }
            (bytes, lines)
        }
    };
    // The first whole export warms what the server keeps for later (its pooled connections'
    // buffers, the allocator's pages: 10-14 MiB more on PostgreSQL, measured; a second and a
    // third whole export add nothing). It may hold at most a few pages at a time.
    let (bytes, lines) = export("").await;
    assert_eq!(lines, ROWS + 1, "a header and every row");
    assert!(bytes > 60 * 1024 * 1024, "the export is large: {bytes}");
    let (_, cold) = rss_mib(child.id());
    assert!(
        cold - before < 48.0,
        "the export held at most a few pages: RSS {before:.1} MiB before, peak {cold:.1} MiB"
    );
    // Then, from that steady state, a tenth of the rows and all of them, each from a peak
    // reset: the peak must not grow with the size.
    reset_peak(child.id());
    let (_, tenth) = export("&after=20001").await;
    assert_eq!(tenth, 20_001);
    let (_, peak_tenth) = rss_mib(child.id());
    reset_peak(child.id());
    let (bytes, lines) = export("").await;
    let (after, peak) = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "export: {lines} lines, {:.1} MiB of CSV; server RSS {before:.1} MiB before, peak {cold:.1} MiB in the first whole export; then peak {peak_tenth:.1} MiB for 20,000 rows, peak {peak:.1} MiB for 200,000 rows, {after:.1} MiB at the end",
        bytes as f64 / 1048576.0
    );
    assert_eq!(lines, ROWS + 1, "a header and every row");
    // 180,000 more rows are about 90 MB more CSV; what may grow is bounded by caches (SQLite
    // keeps up to 2 MiB of pages per connection).
    assert!(
        peak - peak_tenth < 16.0,
        "ten times the rows, about the same peak: {peak_tenth:.1} MiB, then {peak:.1} MiB"
    );
    assert!(
        peak - before < 48.0,
        "the export held at most a few pages: RSS {before:.1} MiB before, peak {peak:.1} MiB"
    );
    db.cleanup(store).await;
}
