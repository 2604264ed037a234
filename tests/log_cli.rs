//! `recsync log` as an operator runs it: filters, the three formats, an 80-column table, bad
//! filters named, and `--follow` printing rows as they are written.

mod common;

use chrono::{Duration, Utc};
use recsync::store::{LogAction, LogDirection, LogStatus, NewChange, Store};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn row(i: usize, status: LogStatus, age_min: i64) -> NewChange {
    NewChange {
        sync: if i.is_multiple_of(2) {
            "CONTACTS"
        } else {
            "COMP"
        }
        .into(),
        direction: if i.is_multiple_of(3) {
            LogDirection::LocalToExternal
        } else {
            LogDirection::ExternalToLocal
        },
        action: LogAction::Update,
        external_id: Some(format!("EXT-{i}-with-a-long-identifier")),
        local_id: Some(i as i64),
        name: "Update contact".into(),
        title: format!("Ñandú Müller-Lüdenscheidt the {i}th, of a very long company name"),
        origin_values: json!({"i": i}),
        destination_values: json!({"i": i}),
        before_values: Default::default(),
        modified_at: None,
        synced_at: Some(Utc::now() - Duration::minutes(age_min)),
        status,
        error_message: if status == LogStatus::Failed {
            format!("email: not a valid address (row {i})\nsecond line")
        } else {
            String::new()
        },
        run_id: None,
        actor: "test".into(),
    }
}

async fn write(store: &Store, rows: &[NewChange]) {
    let mut tx = store.begin().await.unwrap();
    tx.log_changes(rows).await.unwrap();
    tx.commit().await.unwrap();
}

fn log(dir: &std::path::Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recsync"))
        .arg("log")
        .args(args)
        .args(["--database-url", url])
        .current_dir(dir)
        .output()
        .expect("run recsync log")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn filters_formats_and_an_80_column_table() {
    let db = common::TestDb::new().await;
    let store = db.store().await;
    let rows: Vec<NewChange> = (0..30usize)
        .map(|i| {
            let status = if i.is_multiple_of(5) {
                LogStatus::Failed
            } else if i % 7 == 3 {
                LogStatus::ConflictResolved
            } else {
                LogStatus::Success
            };
            row(i, status, 60 - i as i64)
        })
        .collect();
    write(&store, &rows).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let url = db.url.clone();

    // The table: a header, the newest 50 rows oldest first, nothing wider than 80 columns.
    let o = log(dir.path(), &url, &[]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 31, "{text}");
    assert!(lines[0].contains("ID") && lines[0].contains("STATUS"));
    for l in &lines {
        assert!(
            l.chars().count() <= 80,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    let ids: Vec<i64> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "oldest first");
    assert!(
        lines[1].contains("failed") && lines[1].contains("email: not a val"),
        "a failure shows its error: {}",
        lines[1]
    );

    // A settled conflict reads `resolved` in the table, and `--status resolved` finds it.
    let resolved: Vec<&&str> = lines[1..]
        .iter()
        .filter(|l| l.split_whitespace().nth(6) == Some("resolved"))
        .collect();
    let conflicts = rows
        .iter()
        .filter(|r| r.status == LogStatus::ConflictResolved)
        .count();
    assert!(conflicts > 0);
    assert_eq!(resolved.len(), conflicts, "{text}");
    let o = log(
        dir.path(),
        &url,
        &["--status", "resolved", "--format", "json"],
    );
    assert!(o.status.success(), "{o:?}");
    let got: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), conflicts);
    assert!(got.iter().all(|c| c["status"] == "conflict_resolved"));

    // JSON lines, filtered.
    let o = log(
        dir.path(),
        &url,
        &[
            "--status", "failed", "--sync", "CONTACTS", "--format", "json",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let got: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = rows
        .iter()
        .filter(|r| r.status == LogStatus::Failed && r.sync == "CONTACTS")
        .count();
    assert_eq!(got.len(), expected);
    assert!(
        got.iter()
            .all(|c| c["status"] == "failed" && c["sync"] == "CONTACTS")
    );

    // CSV of every row, and a time range, a text search, ids and direction.
    let o = log(dir.path(), &url, &["--format", "csv", "--limit", "0"]);
    let csv_text = stdout(&o);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(reader.records().count(), 30);
    let since = (Utc::now() - Duration::minutes(40)).to_rfc3339();
    let o = log(dir.path(), &url, &["--since", &since, "--format", "json"]);
    assert_eq!(
        stdout(&o).lines().count(),
        9,
        "rows 21 to 29: {}",
        stdout(&o)
    );
    let o = log(dir.path(), &url, &["-q", "8TH, OF", "--format", "json"]);
    let found: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 3, "8th, 18th and 28th: {found:?}");
    let o = log(
        dir.path(),
        &url,
        &[
            "--local-id",
            "7",
            "--external-id",
            "EXT-7-with-a-long-identifier",
            "--format",
            "json",
        ],
    );
    assert_eq!(stdout(&o).lines().count(), 1);
    let o = log(
        dir.path(),
        &url,
        &["--direction", "local_to_external", "--format", "json"],
    );
    assert_eq!(stdout(&o).lines().count(), 10);
    let o = log(dir.path(), &url, &["--since", "2999-01-01"]);
    assert_eq!(stdout(&o).lines().count(), 1, "only the header");

    // A bad filter is named, and nothing is printed.
    let o = log(dir.path(), &url, &["--status", "nope"]);
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`status` must be one of"), "{err}");
    assert!(o.stdout.is_empty());
    let o = log(dir.path(), &url, &["--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(64));
    db.cleanup(store).await;
}

#[tokio::test]
async fn follow_prints_rows_as_they_are_written() {
    let db = common::TestDb::new().await;
    let store = db.store().await;
    write(&store, &[row(1, LogStatus::Success, 5)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "log",
            "--follow",
            "--format",
            "json",
            "--database-url",
            &db.url,
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .expect("the existing row")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap()["local_id"],
        1
    );
    // Rows written now appear, in order, including a burst larger than one page.
    let burst: Vec<NewChange> = (2..1503).map(|i| row(i, LogStatus::Success, 0)).collect();
    write(&store, &burst).await;
    let mut seen = Vec::new();
    while seen.len() < burst.len() {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
            .await
            .expect("followed rows")
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        seen.push(v["local_id"].as_i64().unwrap());
    }
    assert_eq!(seen, (2..1503).collect::<Vec<i64>>());
    let _ = child.kill();
    let _ = child.wait();
    db.cleanup(store).await;
}

/// The audit trail stays readable when the configuration does not load: only the database's
/// URL is needed, and an unset `${VAR}` or a broken mapping elsewhere does not matter.
#[tokio::test]
async fn readers_need_only_the_database_url() {
    let db = common::TestDb::new().await;
    let store = db.store().await;
    write(&store, &[row(0, LogStatus::Failed, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/broken.toml"),
        "[syncs.X]\nmodel = \"nope\"\nschedul = 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\n[[api_keys]]\nname = \"crm\"\nkey = \"${{UNSET_KEY_HASH}}\"\nscopes = [\"read\"]\n",
            db.url
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_recsync"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("RECSYNC_DATABASE_URL")
            .env_remove("UNSET_KEY_HASH")
            .output()
            .expect("run recsync")
    };
    let o = run(&["log", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the configuration does not load"), "{err}");
    assert!(stdout(&o).contains("EXT-0-with-a-long-identifier"), "{o:?}");
    let o = run(&["outbox", "list", "--status", "all"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains("No outbox entries match."), "{o:?}");
    // A status that does not exist is refused, naming those that do (it used to list nothing).
    for args in [
        &["outbox", "list", "--status", "deadd"][..],
        &["holds", "list", "--status", "hold"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("invalid value") && err.contains("possible values") && err.contains("all"),
            "{args:?}: {err}"
        );
    }
    // `retry-all` takes the sync's code as `run`, `plan` and `record` do (the flag still works).
    for args in [
        &["outbox", "retry-all", "CONTACTS"][..],
        &["outbox", "retry-all", "--sync", "CONTACTS"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        assert!(
            stdout(&o).contains("0 dead-lettered entries of sync CONTACTS queued again."),
            "{args:?}: {o:?}"
        );
    }
    let o = run(&["outbox", "retry-all"]);
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    // A mistake in `database_url` itself still stops them, naming it.
    std::fs::write(
        dir.path().join("recsync.toml"),
        "database_url = \"${UNSET_DB_URL}\"\n",
    )
    .unwrap();
    let o = run(&["log"]);
    assert_eq!(o.status.code(), Some(78), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("UNSET_DB_URL"),
        "{o:?}"
    );
    db.cleanup(store).await;
}

/// Run from the demo's folder with nothing configured, `recsync log` reads the demo's data.
#[tokio::test]
async fn log_in_the_demo_folder_reads_the_demo_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("recsync-demo.db").display());
    let store = {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        sqlx::SqlitePool::connect_with(opts)
            .await
            .unwrap()
            .close()
            .await;
        let s = Store::connect(&url).await.unwrap();
        s.migrate().await.unwrap();
        s
    };
    write(&store, &[row(4, LogStatus::Success, 1)]).await;
    store.close().await;
    let o = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args(["log", "--format", "json"])
        .current_dir(dir.path())
        .env_remove("RECSYNC_DATABASE_URL")
        .output()
        .expect("run recsync log");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains("EXT-4-with-a-long-identifier"), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("demo's database"),
        "{o:?}"
    );
    assert!(
        !dir.path().join("recsync.db").exists(),
        "nothing else created"
    );
}

/// `--sync` naming a sync that is neither configured nor in the log is a mistake worth a word,
/// not an empty table; a sync only the log knows (since removed from the configuration) is
/// still read.
#[tokio::test]
async fn an_unknown_sync_is_said_to_be_unknown() {
    let db = common::TestDb::new().await;
    let store = db.store().await;
    write(&store, &[row(0, LogStatus::Success, 5)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let o = log(dir.path(), &db.url, &["--sync", "NOPE"]);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown sync `NOPE`"), "{err}");
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let o = log(dir.path(), &db.url, &["--sync", "CONTACTS"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
}
