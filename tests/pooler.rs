//! PostgreSQL through PgBouncer in transaction pooling mode (`?pgbouncer=true` in
//! `database_url`). `.ci/run` starts Debian's pgbouncer 1.18 and sets `RECSYNC_TEST_POOLER_URL`;
//! the suites of real-time ingest, runs, the outbox and two instances run through it there too
//! (`tests/common` then connects every test database through the pooler). Without that
//! variable these tests say so and stop (`.ci/run` checks that they ran).

mod common;

use recsync::store::{NewOutbox, Store};
use serde_json::json;
use sqlx::Row;

/// The pooler's URL, or `None` (and a word) when no pooler is set up.
fn pooler() -> Option<String> {
    let url = std::env::var("RECSYNC_TEST_POOLER_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("SKIPPED: RECSYNC_TEST_POOLER_URL is not set (.ci/run starts PgBouncer)");
    }
    url
}

/// The pooler's admin console (database `pgbouncer`, simple queries only, `stats_users`): the
/// transactions it has passed to database `db` (`SHOW STATS`).
async fn transactions_through_pgbouncer(pooler: &str, db: &str) -> i64 {
    let mut admin = url::Url::parse(pooler).unwrap();
    admin.set_path("/pgbouncer");
    admin.set_query(None);
    let opts: sqlx::postgres::PgConnectOptions = admin.as_str().parse().unwrap();
    let mut c =
        sqlx::ConnectOptions::connect(&opts.extra_float_digits(None).statement_cache_capacity(0))
            .await
            .expect("the admin console of PgBouncer");
    let rows = sqlx::raw_sql("SHOW STATS").fetch_all(&mut c).await.unwrap();
    rows.iter()
        .find(|r| r.get::<String, _>("database") == db)
        // The console answers in text; the count is a NUMERIC.
        .map(|r| {
            r.try_get_unchecked::<String, _>("total_xact_count")
                .unwrap()
                .parse()
                .unwrap()
        })
        .unwrap_or(0)
}

/// Two instances migrate a fresh database at once through the pooler; then sixteen tasks read
/// and write at once (records, transactions, outbox claims), which reach the server over
/// whichever server connection PgBouncer gives each transaction. Nothing fails, and the
/// database was reached through the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_statement_works_through_pgbouncer_in_transaction_mode() {
    let Some(pooler) = pooler() else { return };
    let db = common::TestDb::new().await;
    assert!(db.url.contains("pgbouncer=true"), "{}", db.url);
    let name = url::Url::parse(&db.url).unwrap().path()[1..].to_string();
    let (a, b) = tokio::join!(Store::connect(&db.url), Store::connect(&db.url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (ma, mb) = tokio::join!(a.migrate(), b.migrate());
    ma.unwrap();
    mb.unwrap();
    // Migrated again, as every start does: nothing to apply, nothing refused.
    a.migrate().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let mut tx = s.begin().await.unwrap();
                let rec = tx
                    .insert_record(
                        "contact",
                        json!({"name": format!("t{t}-{i}")}).as_object().unwrap(),
                    )
                    .await
                    .unwrap();
                tx.enqueue(&NewOutbox {
                    sync: "CON".into(),
                    local_id: rec.id,
                    action: "create".into(),
                    payload: json!({"version": 1}),
                })
                .await
                .unwrap();
                tx.commit().await.unwrap();
                let back = s.get_record("contact", rec.id).await.unwrap().unwrap();
                assert_eq!(back.values["name"], format!("t{t}-{i}"));
                let claimed = s
                    .claim_outbox(
                        &format!("worker-{t}"),
                        chrono::Utc::now(),
                        std::time::Duration::from_secs(60),
                        4,
                    )
                    .await
                    .unwrap();
                s.heartbeat(&format!("worker-{t}"), chrono::Utc::now())
                    .await
                    .unwrap();
                drop(claimed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let open = a.list_outbox(None, None, 0, 1000).await.unwrap();
    assert_eq!(open.len(), 400, "every entry queued once");
    assert!(
        transactions_through_pgbouncer(&pooler, &name).await > 400,
        "the statements went through PgBouncer"
    );
    // The database is still the one sqlx's own migrator knows, connected directly.
    let direct = std::env::var("RECSYNC_TEST_DATABASE_URL").unwrap();
    let mut direct = url::Url::parse(&direct).unwrap();
    direct.set_path(&format!("/{name}"));
    let d = Store::connect(direct.as_str()).await.unwrap();
    d.migrate().await.unwrap();
    d.close().await;
    b.close().await;
    db.cleanup(a).await;
}

/// Without `?pgbouncer=true`, the pooler refuses the connection; the error says what to add.
#[tokio::test]
async fn without_the_parameter_the_error_says_to_add_it() {
    let Some(_) = pooler() else { return };
    let db = common::TestDb::new().await;
    let plain = db.url.replace("pgbouncer=true", "pgbouncer=false");
    let e = Store::connect(&plain).await.unwrap_err().to_string();
    assert!(e.contains("extra_float_digits"), "{e}");
    assert!(e.contains("?pgbouncer=true"), "{e}");
    println!("pooler under test: PgBouncer");
    let store = Store::connect(&db.url).await.unwrap();
    db.cleanup(store).await;
}
