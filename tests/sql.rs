//! Database tables as external systems (`kind = "sql"`), against real databases: a SQLite file
//! always, and PostgreSQL in the suite's PostgreSQL pass (the server `RECSYNC_TEST_DATABASE_URL`
//! names; each test makes a database of its own). The real app, over real HTTP: first contact
//! with `match_on`, incremental pulls by watermark with the overlap, soft deletes, pushes that
//! touch only the changed columns, exact values, hostile values stored as data.

mod common;

use common::harness::{ADMIN_KEY, Harness, Tweaks};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The external database of a test.
enum Legacy {
    Lite(sqlx::SqlitePool, String),
    Pg(sqlx::PgPool, String, String, String),
    My(sqlx::MySqlPool, String, String, String),
}

impl Legacy {
    /// A SQLite file in `dir`.
    async fn sqlite(dir: &std::path::Path) -> Legacy {
        let path = dir.join("legacy.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        Legacy::Lite(pool, format!("sqlite://{}", path.display()))
    }

    /// A database of its own on the PostgreSQL server of the suite's PostgreSQL pass.
    async fn postgres() -> Option<Legacy> {
        let admin = std::env::var("RECSYNC_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let name = format!("legacy_{}", hex::encode(rand::random::<[u8; 6]>()));
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        let pool = sqlx::PgPool::connect(url.as_str()).await.unwrap();
        Some(Legacy::Pg(pool, url.to_string(), admin, name))
    }

    /// A database of its own on the MariaDB (or MySQL) server `RECSYNC_TEST_MYSQL_URL`
    /// names, which `.ci/run` starts; under `CI=true` its absence is a failure.
    async fn mysql() -> Option<Legacy> {
        let Some(admin) = std::env::var("RECSYNC_TEST_MYSQL_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "RECSYNC_TEST_MYSQL_URL is not set: .ci/run starts MariaDB and sets it"
            );
            eprintln!("RECSYNC_TEST_MYSQL_URL is not set: the MySQL dialect is not tested");
            return None;
        };
        let name = format!("legacy_{}", hex::encode(rand::random::<[u8; 6]>()));
        let pool = sqlx::MySqlPool::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        let pool = sqlx::MySqlPool::connect(url.as_str()).await.unwrap();
        Some(Legacy::My(pool, url.to_string(), admin, name))
    }

    fn url(&self) -> String {
        match self {
            Legacy::Lite(_, u) => u.clone(),
            Legacy::Pg(_, u, _, _) | Legacy::My(_, u, _, _) => u.clone(),
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            Legacy::Lite(p, _) => {
                sqlx::query(sql).execute(p).await.unwrap();
            }
            Legacy::Pg(p, ..) => {
                sqlx::query(sql).execute(p).await.unwrap();
            }
            Legacy::My(p, ..) => {
                sqlx::query(sql).execute(p).await.unwrap();
            }
        }
    }

    /// One text column of every row, by key, in key order.
    async fn texts(&self, sql: &str) -> Vec<(String, Option<String>)> {
        use sqlx::Row;
        match self {
            Legacy::Lite(p, _) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
                .collect(),
            Legacy::Pg(p, ..) => sqlx::query(sql)
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
                .collect(),
            Legacy::My(p, ..) => sqlx::query(&sql.replace("AS TEXT", "AS CHAR"))
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
                .collect(),
        }
    }

    async fn drop(self) {
        if let Legacy::My(p, _, admin, name) = self {
            p.close().await;
            let pool = sqlx::MySqlPool::connect(&admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&pool)
                .await;
            pool.close().await;
            return;
        }
        if let Legacy::Pg(p, _, admin, name) = self {
            p.close().await;
            let pool = sqlx::PgPool::connect(&admin).await.unwrap();
            // A database with a replication slot cannot be dropped, and a slot left behind
            // holds WAL for ever.
            sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1",
            )
            .bind(&name)
            .execute(&pool)
            .await
            .unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&pool)
                .await;
            pool.close().await;
        }
    }
}

/// The mapping: customers here and in the legacy table, matched by e-mail on first contact.
fn mapping(table: &str, key_type: &str) -> String {
    format!(
        r#"
[models.customer]
display = "name"
fields = {{ name = "char", email = "char", balance = "char", vip = "boolean", notes = "json", legacy_id = "integer" }}

[web_services.legacy]
kind = "sql"
url = "${{LEGACY_URL}}"
max_concurrency = 2
timeout = "3s"

[external_models.legacy_customer]
kind = "sql"
table = "{table}"
key = "cust_id"
cursor = "updated_at"
overlap = "1m"
deleted = {{ column = "deleted_at" }}
[external_models.legacy_customer.fields]
cust_id = "{key_type}"
name = "char"
email = "char"
balance = "char"
vip = "boolean"
notes = "json"
updated_at = "datetime"
deleted_at = "datetime"

[syncs.LEGACY]
model = "customer"
external_model = "legacy_customer"
web_service = "legacy"
direction = "bidirectional"
every = "1h"
propagate_deletes = true
match_on = ["email"]
fields = [
  {{ local = "name", external = "name" }},
  {{ local = "email", external = "email" }},
  {{ local = "balance", external = "balance" }},
  {{ local = "vip", external = "vip" }},
  {{ local = "notes", external = "notes" }},
]
"#
    )
}

async fn records(h: &Harness) -> Vec<recsync::store::Record> {
    h.engine
        .store
        .records_after("customer", 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.deleted)
        .collect()
}

fn by_email<'a>(rs: &'a [recsync::store::Record], email: &str) -> &'a recsync::store::Record {
    rs.iter()
        .find(|r| r.values["email"] == email)
        .unwrap_or_else(|| panic!("no record {email}: {rs:?}"))
}

async fn api(h: &Harness, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = h
        .client
        .request(method, h.url(path))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

/// The scenario, on either database: `now` is the database's expression for the current
/// time, `created` the DDL of the table.
async fn scenario(db: Legacy, table: &str, key_type: &str, created: &[&str], now: &str) {
    for sql in created {
        db.exec(sql).await;
    }
    db.exec(&format!(
        "INSERT INTO {table} (cust_id, name, email, balance, vip, notes, updated_at) VALUES \
         (1, 'Ada', 'ada@example.com', '12.30', true, '{{\"tier\": 1}}', {now}), \
         (2, 'Bob', 'bob@example.com', '0.10', false, NULL, {now}), \
         (3, 'Cy', 'cy@example.com', '99999999999.99', false, NULL, {now})"
    ))
    .await;
    // PostgreSQL's sequence moves past the seeded keys.
    if let Legacy::Pg(..) = &db {
        db.exec(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'cust_id'), 3)"
        ))
        .await;
    }
    let h = Harness::with(Tweaks {
        mapping: Some(mapping(table, key_type)),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    // Bob is here already: matched, not copied.
    api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/customer/records",
        json!({"name": "Bob", "email": "bob@example.com", "balance": "0.10"}),
    )
    .await;

    // First contact: three rows in, Bob linked.
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "success", "{run:?}");
    let rs = records(&h).await;
    assert_eq!(rs.len(), 3, "{rs:?}");
    let ada = by_email(&rs, "ada@example.com");
    assert_eq!(ada.values["balance"], "12.30", "numerics exactly");
    assert_eq!(ada.values["vip"], true);
    assert_eq!(ada.values["notes"], json!({"tier": 1}));
    assert_eq!(
        by_email(&rs, "cy@example.com").values["balance"],
        "99999999999.99"
    );
    assert!(h.link("LEGACY", "2").await.is_some(), "Bob is linked");

    // An edit there, and a row deleted there (softly): both arrive.
    db.exec(&format!(
        "UPDATE {table} SET name = 'Ada L.', updated_at = {now} WHERE cust_id = 1"
    ))
    .await;
    db.exec(&format!(
        "UPDATE {table} SET deleted_at = {now}, updated_at = {now} WHERE cust_id = 3"
    ))
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "success", "{run:?}");
    let rs = records(&h).await;
    assert_eq!(by_email(&rs, "ada@example.com").values["name"], "Ada L.");
    assert!(
        rs.iter().all(|r| r.values["email"] != "cy@example.com"),
        "the soft delete arrived: {rs:?}"
    );

    // A record made here is inserted there; a hostile value is stored as data.
    let hostile = "Robert'); DROP TABLE customers; --";
    api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/customer/records",
        json!({"name": hostile, "email": "drop@example.com", "balance": "1.00"}),
    )
    .await;
    // An edit here of one field goes out as that column only: the balance changed there
    // meanwhile stays.
    let ada_id = by_email(&rs, "ada@example.com").id;
    api(
        &h,
        reqwest::Method::PATCH,
        &format!("/api/v1/models/customer/records/{ada_id}"),
        json!({"name": "Ada Lovelace"}),
    )
    .await;
    db.exec(&format!(
        "UPDATE {table} SET balance = '50.00' WHERE cust_id = 1"
    ))
    .await;
    let run = h.run("LEGACY").await;
    assert!(run.status == "success", "{run:?}");
    common::eventually(30, "the pushes to reach the table", || async {
        let names = db
            .texts(&format!(
                "SELECT CAST(cust_id AS TEXT), name FROM {table} ORDER BY cust_id"
            ))
            .await;
        (names.iter().any(|(_, n)| n.as_deref() == Some(hostile))
            && names
                .iter()
                .any(|(k, n)| k == "1" && n.as_deref() == Some("Ada Lovelace")))
        .then_some(())
    })
    .await;
    let balances = db
        .texts(&format!(
            "SELECT CAST(cust_id AS TEXT), CAST(balance AS TEXT) FROM {table} WHERE cust_id = 1"
        ))
        .await;
    assert_eq!(balances[0].1.as_deref(), Some("50.00"), "balance untouched");
    let count = db
        .texts(&format!("SELECT CAST(COUNT(*) AS TEXT), NULL FROM {table}"))
        .await;
    assert_eq!(count[0].0, "4", "the table is whole and has the new row");
    // The new row is linked by the key the database gave it.
    let rs = records(&h).await;
    let dropper = by_email(&rs, "drop@example.com");
    let link = h.link("LEGACY", "4").await.expect("the new row is linked");
    assert_eq!(link.local_id, dropper.id);
    h.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_table_is_matched_pulled_and_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    scenario(
        db,
        "customers",
        "integer",
        &[
            "CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, name TEXT, email TEXT, \
         balance TEXT, vip BOOLEAN, notes TEXT, updated_at TEXT, deleted_at TEXT)",
        ],
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_is_matched_pulled_and_written_back() {
    let Some(db) = Legacy::postgres().await else {
        eprintln!("the PostgreSQL dialect runs in the suite's PostgreSQL pass");
        return;
    };
    scenario(
        db,
        "crm.customers",
        "integer",
        &[
            "CREATE SCHEMA crm",
            "CREATE TABLE crm.customers (cust_id bigserial PRIMARY KEY, name text, email text, \
         balance numeric(14,2), vip boolean, notes jsonb, updated_at timestamptz, \
         deleted_at timestamp)",
        ],
        "clock_timestamp()",
    )
    .await;
}

/// A table or column name that is not a plain identifier is refused by `validate`, naming it;
/// so is a database URL of another kind and a cursor of a type that cannot be a watermark.
#[test]
fn hostile_names_and_wrong_settings_are_refused_by_validate() {
    let errors = |table: &str, extra_field: &str, cursor: &str, url: &str| {
        let text = mapping(table, "integer")
            .replace("${LEGACY_URL}", url)
            .replace("cursor = \"updated_at\"", &format!("cursor = \"{cursor}\""))
            .replace(
                "deleted_at = \"datetime\"\n",
                &format!("deleted_at = \"datetime\"\n{extra_field}\n"),
            );
        match recsync::config::compile_texts(
            &[("mappings/legacy.toml", &text)],
            &HashMap::<String, String>::new(),
            recsync::connectors::KINDS,
        ) {
            Ok(_) => String::new(),
            Err(e) => e.render(),
        }
    };
    assert_eq!(
        errors("customers", "", "updated_at", "sqlite://legacy.db"),
        "",
        "the mapping itself is valid"
    );
    let e = errors("customers; DROP TABLE x", "", "updated_at", "sqlite://x.db");
    assert!(
        e.contains("`customers; DROP TABLE x` is not a plain table name"),
        "{e}"
    );
    let e = errors("crm.cust\\\"omers", "", "updated_at", "sqlite://x.db");
    assert!(e.contains("is not a plain table name"), "{e}");
    let e = errors(
        "customers",
        "\"na me\" = \"char\"",
        "updated_at",
        "sqlite://x.db",
    );
    assert!(e.contains("`na me` is not a plain column name"), "{e}");
    let e = errors("customers", "", "name", "sqlite://x.db");
    assert!(
        e.contains("the cursor `name` is a char field; a cursor is a datetime or an integer"),
        "{e}"
    );
    let e = errors("customers", "", "updated_at", "oracle://h/db");
    assert!(
        e.contains("is not a postgres://, mysql:// or sqlite:// URL"),
        "{e}"
    );
    let e = errors("customers", "", "nope", "sqlite://x.db");
    assert!(
        e.contains("`cursor` names `nope`, which is not one of the fields"),
        "{e}"
    );
}

/// The shipped example, `mappings/legacy_sql.toml`, as it is, on a SQLite file made with the
/// README's statement: first contact by e-mail, an edit there, a late commit caught by the
/// overlap, a record made here inserted there, a delete here archived there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_example_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    db.exec(
        "CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, name TEXT, email TEXT, \
         phone TEXT, balance TEXT, updated_at TEXT, deleted_at TEXT)",
    )
    .await;
    db.exec(
        "INSERT INTO customers (name, email, phone, balance, updated_at) VALUES \
         ('Ada', 'ada@example.com', '+34 600', '10.00', '2026-12-01T10:00:00Z'), \
         ('Bob', 'bob@example.com', NULL, '0.00', '2026-12-01T10:05:00Z')",
    )
    .await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mappings/legacy_sql.toml"
    ))
    .unwrap();
    let h = Harness::with(Tweaks {
        mapping: Some(example),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    let clients = || async {
        h.engine
            .store
            .records_after("client", 0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| !r.deleted)
            .collect::<Vec<_>>()
    };
    api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/client/records",
        json!({"name": "Bob B.", "email": "bob@example.com"}),
    )
    .await;
    let run = h.run("LEGACY_CUSTOMERS").await;
    assert_eq!(run.status, "success", "{run:?}");
    let rs = clients().await;
    assert_eq!(rs.len(), 2, "Bob matched, not copied: {rs:?}");

    // A row that commits late, stamped before the watermark (within the overlap), arrives.
    db.exec(
        "INSERT INTO customers (name, email, updated_at) VALUES \
         ('Late', 'late@example.com', '2026-12-01T10:02:00Z')",
    )
    .await;
    let run = h.run("LEGACY_CUSTOMERS").await;
    assert_eq!(run.status, "success", "{run:?}");
    let rs = clients().await;
    assert!(
        rs.iter().any(|r| r.values["email"] == "late@example.com"),
        "the late row was read again within the overlap: {rs:?}"
    );

    // Made here: inserted there. Deleted here: archived there (delete_mode = "archive").
    let made = api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/client/records",
        json!({"name": "Cleo", "email": "cleo@example.com"}),
    )
    .await;
    let ada = rs
        .iter()
        .find(|r| r.values["email"] == "ada@example.com")
        .unwrap()
        .id;
    api(
        &h,
        reqwest::Method::DELETE,
        &format!("/api/v1/models/client/records/{ada}"),
        Value::Null,
    )
    .await;
    h.run("LEGACY_CUSTOMERS").await;
    common::eventually(30, "Cleo inserted and Ada archived there", || async {
        let rows = db
            .texts("SELECT name, deleted_at FROM customers ORDER BY cust_id")
            .await;
        let ada_archived = rows.iter().any(|(n, d)| n == "Ada" && d.is_some());
        let cleo = rows.iter().any(|(n, _)| n == "Cleo");
        (ada_archived && cleo).then_some(())
    })
    .await;
    assert!(made["id"].is_i64());
    let rows = db.texts("SELECT name, NULL FROM customers").await;
    assert_eq!(rows.len(), 4, "archived, not deleted: {rows:?}");
    h.stop().await;
}

/// What goes wrong is named: an unreachable database, a missing table, a missing column and a
/// row the table refuses each give an error naming the web service and the table, and nothing
/// else is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_service_the_table_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    // No table yet: the run fails naming it.
    let h = Harness::with(Tweaks {
        mapping: Some(mapping("customers", "integer")),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "failed", "{run:?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("web service `legacy`, table `customers`: the table does not exist"),
        "{error}"
    );
    h.stop().await;

    // A table without a declared column.
    db.exec(
        "CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, \
         balance TEXT, vip BOOLEAN, updated_at TEXT, deleted_at TEXT)",
    )
    .await;
    let h = Harness::with(Tweaks {
        mapping: Some(mapping("customers", "integer")),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    db.exec("INSERT INTO customers (name, email, updated_at) VALUES ('A', 'a@x', '2026-01-01')")
        .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "failed", "{run:?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("table `customers`") && error.contains("notes"),
        "the missing column is named: {error}"
    );
    h.stop().await;

    // A row the table refuses (NOT NULL): the delivery fails naming the table and the
    // reason; the record stays here. The rows sent in the same batch (their inserts share a
    // transaction) are each written once.
    db.exec("ALTER TABLE customers ADD COLUMN notes TEXT").await;
    let h = Harness::with(Tweaks {
        mapping: Some(mapping("customers", "integer")),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/customer/records",
        json!({"email": "noname@example.com"}),
    )
    .await;
    for i in 0..8 {
        api(
            &h,
            reqwest::Method::POST,
            "/api/v1/models/customer/records",
            json!({"name": format!("Batch {i}"), "email": format!("batch{i}@example.com")}),
        )
        .await;
    }
    h.run("LEGACY").await;
    let change = common::eventually(30, "the refused insert to be logged", || async {
        h.changes("LEGACY")
            .await
            .into_iter()
            .find(|c| c.status != "success" && c.direction == "local_to_external")
    })
    .await;
    let message = change.error_message.clone();
    assert!(
        message.contains("table `customers`") && message.contains("NOT NULL"),
        "{message}"
    );
    assert_eq!(records(&h).await.len(), 10, "nothing lost here");
    // They go out alongside the refused one (the run does not wait for creates queued
    // before it): wait for the eighth, then check that none came twice.
    let written = common::eventually(30, "the batch's rows", || async {
        let names: Vec<String> = db
            .texts("SELECT name, email FROM customers WHERE name LIKE 'Batch %' ORDER BY name")
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        (names.len() >= 8).then_some(names)
    })
    .await;
    let expected: Vec<String> = (0..8).map(|i| format!("Batch {i}")).collect();
    assert_eq!(written, expected, "each row of the batch once");
    h.stop().await;

    // An unreachable database.
    let h = Harness::with(Tweaks {
        mapping: Some(mapping("customers", "integer")),
        env: HashMap::from([(
            "LEGACY_URL".to_string(),
            "postgres://nobody:secret-pw@127.0.0.1:1/none".to_string(),
        )]),
        ..Default::default()
    })
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "failed", "{run:?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("web service `legacy`"), "{error}");
    assert!(!error.contains("secret-pw"), "{error}");
    h.stop().await;
}

/// Runs the recsync binary in `dir` with `LEGACY_URL`.
fn recsync(dir: &std::path::Path, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(common::recsync_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("RECSYNC_DATABASE_URL")
        .env("LEGACY_URL", url)
        .output()
        .unwrap();
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// `discover` prints a table's block from the catalog, ready to paste (it compiles), and
/// `validate --online` checks the table, its columns and their types.
async fn discover_and_validate(db: Legacy, table: &str, created: &[&str]) {
    for sql in created {
        db.exec(sql).await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/legacy.toml"),
        "[web_services.legacy]\nkind = \"sql\"\nurl = \"${LEGACY_URL}\"\n",
    )
    .unwrap();
    let url = db.url();
    let (code, out) = recsync(dir.path(), &url, &["discover", "legacy", table]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("kind = \"sql\""), "{out}");
    assert!(out.contains("key = \"cust_id\""), "{out}");
    assert!(out.contains("cursor = \"updated_at\""), "{out}");
    assert!(out.contains("cust_id = \"integer\""), "{out}");
    assert!(out.contains("updated_at = \"datetime\""), "{out}");
    assert!(!out.contains("secret-pw"), "{out}");
    // Pasted, with a model and a sync, it compiles and the database agrees with it.
    let block: String = out
        .lines()
        .filter(|l| !l.starts_with("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let model = table.replace('.', "_");
    std::fs::write(
        dir.path().join("mappings/table.toml"),
        format!(
            "{block}\n\n[models.customer]\nfields = {{ name = \"char\" }}\n\n\
             [syncs.LEGACY]\nmodel = \"customer\"\nexternal_model = \"{model}\"\n\
             web_service = \"legacy\"\ndirection = \"bidirectional\"\nevery = \"1h\"\n\
             fields = [{{ local = \"name\", external = \"name\" }}]\n"
        ),
    )
    .unwrap();
    let (code, out) = recsync(dir.path(), &url, &["validate", "--online"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok    legacy:"), "{out}");
    // A declared type the column cannot hold, and a column the table lacks.
    let text = std::fs::read_to_string(dir.path().join("mappings/table.toml")).unwrap();
    std::fs::write(
        dir.path().join("mappings/table.toml"),
        text.replace(
            &format!("[external_models.{model}.fields]\n"),
            &format!("[external_models.{model}.fields]\nghost = \"char\"\n"),
        )
        .replace("updated_at = \"datetime\"", "updated_at = \"integer\""),
    )
    .unwrap();
    let (code, out) = recsync(dir.path(), &url, &["validate", "--online"]);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("has no column `ghost`"), "{out}");
    if let Legacy::Pg(..) = db {
        assert!(
            out.contains("column `updated_at`") && out.contains("declare it \"datetime\""),
            "{out}"
        );
    }
    let (code, out) = recsync(dir.path(), &url, &["discover", "legacy", "no_such"]);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("the table does not exist"), "{out}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_and_validate_online_read_a_sqlite_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    discover_and_validate(
        db,
        "customers",
        &[
            "CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, name TEXT, balance NUMERIC, \
           updated_at DATETIME)",
        ],
    )
    .await;
}

/// SQLite has no time type: an application's `updated_at TEXT` holding ISO 8601 times is
/// offered as a datetime, and as the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_offers_a_sqlite_text_time_as_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    discover_and_validate(
        db,
        "customers",
        &["CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT)"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_and_validate_online_read_a_postgres_catalog() {
    let Some(db) = Legacy::postgres().await else {
        eprintln!("the PostgreSQL dialect runs in the suite's PostgreSQL pass");
        return;
    };
    discover_and_validate(
        db,
        "crm.customers",
        &[
            "CREATE SCHEMA crm",
            "CREATE TABLE crm.customers (cust_id bigint PRIMARY KEY, name text, \
             balance numeric(14,2), updated_at timestamptz)",
        ],
    )
    .await;
}

/// `validate --online` names the privileges a sync needs that the database's user lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_names_missing_privileges() {
    let Some(db) = Legacy::postgres().await else {
        eprintln!("the PostgreSQL dialect runs in the suite's PostgreSQL pass");
        return;
    };
    let role = format!("reader_{}", hex::encode(rand::random::<[u8; 4]>()));
    let setup = [
        "CREATE TABLE customers (cust_id bigint PRIMARY KEY, name text, updated_at timestamptz)"
            .to_string(),
        format!("CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'"),
        format!("GRANT SELECT ON customers TO {role}"),
    ];
    missing_privileges_are_named(&db, &role, &setup, "password authentication failed").await;
    let admin = match &db {
        Legacy::Pg(_, _, admin, _) => admin.clone(),
        _ => unreachable!(),
    };
    db.drop().await;
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_names_missing_privileges_on_mysql() {
    let Some(db) = Legacy::mysql().await else {
        return;
    };
    let role = format!("reader_{}", hex::encode(rand::random::<[u8; 4]>()));
    let name = match &db {
        Legacy::My(_, _, _, name) => name.clone(),
        _ => unreachable!(),
    };
    let setup = [
        "CREATE TABLE customers (cust_id bigint PRIMARY KEY, name varchar(200), updated_at datetime(6))"
            .to_string(),
        // Both hosts: MariaDB's anonymous `''@'localhost'` would otherwise take the login.
        format!("CREATE USER '{role}'@'%' IDENTIFIED BY 'reader-pw'"),
        format!("CREATE USER '{role}'@'localhost' IDENTIFIED BY 'reader-pw'"),
        format!("GRANT SELECT ON {name}.customers TO '{role}'@'%'"),
        format!("GRANT SELECT ON {name}.customers TO '{role}'@'localhost'"),
    ];
    missing_privileges_are_named(&db, &role, &setup, "Access denied").await;
    db.exec(&format!(
        "DROP USER IF EXISTS '{role}'@'%', '{role}'@'localhost'"
    ))
    .await;
    db.drop().await;
}

/// `validate --online` as a user who may only read the table: the sync's missing privileges
/// are named, and so is a wrong password, without showing either password.
async fn missing_privileges_are_named(db: &Legacy, role: &str, setup: &[String], refused: &str) {
    for sql in setup {
        db.exec(sql).await;
    }
    let mut url = url::Url::parse(&db.url()).unwrap();
    url.set_username(role).unwrap();
    url.set_password(Some("reader-pw")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/legacy.toml"),
        mapping("customers", "integer")
            .replace("deleted = {{ column = \"deleted_at\" }}\n", "")
            .replace("deleted = { column = \"deleted_at\" }\n", "")
            .replace(
                "balance = \"char\"\nvip = \"boolean\"\nnotes = \"json\"\n",
                "",
            )
            .replace("updated_at = \"datetime\"\ndeleted_at = \"datetime\"\n", "updated_at = \"datetime\"\n")
            .replace("email = \"char\"\n", "")
            .replace(
                "fields = [\n  { local = \"name\", external = \"name\" },\n  { local = \"email\", external = \"email\" },\n  { local = \"balance\", external = \"balance\" },\n  { local = \"vip\", external = \"vip\" },\n  { local = \"notes\", external = \"notes\" },\n]",
                "fields = [{ local = \"name\", external = \"name\" }]",
            )
            .replace("match_on = [\"email\"]\n", ""),
    )
    .unwrap();
    let (code, out) = recsync(dir.path(), url.as_str(), &["validate", "--online"]);
    assert_eq!(code, Some(69), "{out}");
    assert!(
        out.contains("sync `LEGACY` needs INSERT, UPDATE, DELETE on `customers`"),
        "{out}"
    );
    assert!(!out.contains("reader-pw"), "{out}");
    // A wrong password: the server's refusal, named, and no password shown.
    url.set_password(Some("wrong-pw")).unwrap();
    let (code, out) = recsync(dir.path(), url.as_str(), &["validate", "--online"]);
    assert_eq!(code, Some(69), "{out}");
    assert!(
        out.contains("FAIL  legacy:") && out.contains(refused),
        "{out}"
    );
    assert!(!out.contains("wrong-pw"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_table_is_matched_pulled_and_written_back() {
    let Some(db) = Legacy::mysql().await else {
        return;
    };
    scenario(
        db,
        "customers",
        "integer",
        &[
            "CREATE TABLE customers (cust_id bigint AUTO_INCREMENT PRIMARY KEY, name varchar(200), \
           email varchar(200), balance decimal(14,2), vip tinyint(1), notes json, \
           updated_at datetime(6), deleted_at timestamp(6) NULL)",
        ],
        "UTC_TIMESTAMP(6)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_and_validate_online_read_a_mysql_catalog() {
    let Some(db) = Legacy::mysql().await else {
        return;
    };
    discover_and_validate(
        db,
        "customers",
        &[
            "CREATE TABLE customers (cust_id bigint PRIMARY KEY, name varchar(100), \
           balance decimal(14,2), updated_at datetime(6))",
        ],
    )
    .await;
}

/// The logical capture's mapping: no cursor, the slot says what changed.
fn logical_mapping() -> String {
    r#"
[models.customer]
fields = { name = "char", email = "char" }

[web_services.legacy]
kind = "sql"
url = "${LEGACY_URL}"
timeout = "5s"

[external_models.legacy_customer]
kind = "sql"
table = "customers"
key = "cust_id"
capture = "logical"
fields = { cust_id = "integer", name = "char", email = "char", updated_at = "datetime" }

[syncs.LEGACY]
model = "customer"
external_model = "legacy_customer"
web_service = "legacy"
direction = "bidirectional"
every = "1h"
propagate_deletes = true
delete_guard = { max_ratio = 1.0 }
fields = [
  { local = "name", external = "name" },
  { local = "email", external = "email" },
]
"#
    .to_string()
}

/// `capture = "logical"`: the table is read whole once, then the slot brings updates, hard
/// deletes and a row that commits with an old timestamp, in commit order; recsync's own
/// inserts come back through the slot and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_capture_sees_hard_deletes_and_late_commits() {
    let Some(db) = Legacy::postgres().await else {
        eprintln!("the PostgreSQL dialect runs in the suite's PostgreSQL pass");
        return;
    };
    db.exec(
        "CREATE TABLE customers (cust_id bigserial PRIMARY KEY, name text, email text, \
         updated_at timestamptz DEFAULT now())",
    )
    .await;
    db.exec(
        "INSERT INTO customers (name, email) VALUES ('Ada', 'ada@x'), ('Bob', 'bob@x'), ('Cy', 'cy@x')",
    )
    .await;
    let h = Harness::with(Tweaks {
        mapping: Some(logical_mapping()),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(records(&h).await.len(), 3);
    let slots = db
        .texts("SELECT slot_name::text, plugin::text FROM pg_replication_slots WHERE database = current_database()")
        .await;
    assert_eq!(slots.len(), 1, "the slot is made: {slots:?}");

    db.exec("UPDATE customers SET name = 'Ada L.' WHERE cust_id = 1")
        .await;
    db.exec("DELETE FROM customers WHERE cust_id = 2").await;
    db.exec(
        "INSERT INTO customers (name, email, updated_at) VALUES ('Late', 'late@x', '2000-01-01T00:00:00Z')",
    )
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "success", "{run:?}");
    let rs = records(&h).await;
    let names: Vec<&str> = rs
        .iter()
        .filter_map(|r| r.values["name"].as_str())
        .collect();
    assert!(names.contains(&"Ada L."), "{names:?}");
    assert!(
        names.contains(&"Late"),
        "the late commit arrived: {names:?}"
    );
    assert!(
        !names.contains(&"Bob"),
        "the hard delete arrived: {names:?}"
    );
    assert_eq!(rs.len(), 3, "{names:?}");

    // Made here: inserted there; its echo through the slot changes nothing.
    api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/customer/records",
        json!({"name": "Dee", "email": "dee@x"}),
    )
    .await;
    h.run("LEGACY").await;
    common::eventually(30, "Dee inserted there", || async {
        let rows = db.texts("SELECT name, email FROM customers").await;
        rows.iter().any(|(n, _)| n == "Dee").then_some(())
    })
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        (run.created, run.updated, run.deleted),
        (0, 0, 0),
        "{run:?}"
    );
    assert_eq!(records(&h).await.len(), 4);
    h.stop().await;
    db.exec(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE database = current_database()",
    )
    .await;
    db.drop().await;
}

/// `kill -9` after a page of the slot was applied and before the slot moved past it: the next
/// run reads the same changes again and they change nothing; nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_before_the_slot_advances_loses_and_duplicates_nothing() {
    let Some(db) = Legacy::postgres().await else {
        eprintln!("the PostgreSQL dialect runs in the suite's PostgreSQL pass");
        return;
    };
    db.exec(
        "CREATE TABLE customers (cust_id bigserial PRIMARY KEY, name text, email text, \
         updated_at timestamptz DEFAULT now())",
    )
    .await;
    db.exec("INSERT INTO customers (name, email) VALUES ('Ada', 'ada@x'), ('Bob', 'bob@x')")
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/legacy.toml"), logical_mapping()).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        "database_url = \"sqlite://hub.db?mode=rwc\"\nclaim_timeout = \"1s\"\n",
    )
    .unwrap();
    let url = db.url();
    let run = |crash: Option<&str>| {
        let mut c = std::process::Command::new(common::recsync_bin());
        c.args(["run", "LEGACY"])
            .current_dir(dir.path())
            .env_remove("RECSYNC_DATABASE_URL")
            .env("LEGACY_URL", &url);
        if let Some(point) = crash {
            c.env("RECSYNC_CRASH_POINT", point);
        }
        let o = c.output().unwrap();
        (
            o.status,
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (status, out) = run(None);
    assert!(status.success(), "{out}");
    db.exec("UPDATE customers SET name = 'Ada L.' WHERE cust_id = 1")
        .await;
    db.exec("INSERT INTO customers (name, email) VALUES ('Cy', 'cy@x')")
        .await;
    db.exec("DELETE FROM customers WHERE cust_id = 2").await;
    let (status, out) = run(Some("sql.before_advance:1"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed at the crash point: {out}");
    // The killed run's claim expires (`claim_timeout`), then the next run takes over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, out) = run(None);
        if status.success() {
            break;
        }
        assert!(
            out.contains("in progress") && std::time::Instant::now() < deadline,
            "{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let hub =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("hub.db").display()))
            .await
            .unwrap();
    let live: Vec<String> = sqlx::query_scalar(
        "SELECT json_extract(vals, '$.name') FROM records WHERE model = 'customer' \
         AND deleted_at IS NULL ORDER BY 1",
    )
    .fetch_all(&hub)
    .await
    .unwrap();
    assert_eq!(live, ["Ada L.", "Cy"], "nothing lost, nothing twice");
    // The run after the kill read the page again: what it had applied changed nothing the
    // second time (one update row for Ada, one create for Cy, one delete for Bob in all).
    let last: (i64, i64) = sqlx::query_as(
        "SELECT created, updated FROM runs WHERE sync = 'LEGACY' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&hub)
    .await
    .unwrap();
    assert_eq!(last, (0, 0), "the changes read again changed nothing");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, external_id FROM change_log WHERE sync = 'LEGACY' AND status = 'success' \
         AND direction = 'external_to_local' AND (action <> 'create' OR external_id = '3') \
         ORDER BY action, external_id",
    )
    .fetch_all(&hub)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("create".to_string(), "3".to_string()),
            ("delete".to_string(), "2".to_string()),
            ("update".to_string(), "1".to_string()),
        ],
        "each change applied once"
    );
    hub.close().await;
    db.exec(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE database = current_database()",
    )
    .await;
    db.drop().await;
}

/// Values of every kind come in exactly and go out exactly: a row read from PostgreSQL and a
/// record made here from its values are the same row, column by column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_round_trip_exactly() {
    let Some(db) = Legacy::postgres().await else {
        eprintln!("the PostgreSQL dialect runs in the suite's PostgreSQL pass");
        return;
    };
    db.exec(
        "CREATE TABLE things (id bigserial PRIMARY KEY, amount numeric(30,2), \
         ts timestamptz, naive timestamp, flag boolean, doc jsonb, raw bytea, day date)",
    )
    .await;
    db.exec(
        "INSERT INTO things VALUES (9007199254740993, 12345678901234567890.12, \
         '2026-05-01 10:20:30.123456+02', '2026-05-01 10:20:30.654321', true, \
         '{\"a\": [1, 2.5, \"x\"]}', '\\x00ff10', '2026-02-28')",
    )
    .await;
    let mapping = r#"
[models.thing]
fields = { amount = "char", ts = "datetime", naive = "datetime", flag = "boolean", doc = "json", raw = "binary", day = "date" }

[web_services.legacy]
kind = "sql"
url = "${LEGACY_URL}"

[external_models.things]
kind = "sql"
table = "things"
key = "id"
fields = { id = "integer", amount = "char", ts = "datetime", naive = "datetime", flag = "boolean", doc = "json", raw = "binary", day = "date" }

[syncs.THINGS]
model = "thing"
external_model = "things"
web_service = "legacy"
direction = "bidirectional"
every = "1h"
fields = [
  { local = "amount", external = "amount" },
  { local = "ts", external = "ts" },
  { local = "naive", external = "naive" },
  { local = "flag", external = "flag" },
  { local = "doc", external = "doc" },
  { local = "raw", external = "raw" },
  { local = "day", external = "day" },
]
"#;
    let h = Harness::with(Tweaks {
        mapping: Some(mapping.to_string()),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    let run = h.run("THINGS").await;
    assert_eq!(run.status, "success", "{run:?}");
    let rs = h.engine.store.records_after("thing", 0, 10).await.unwrap();
    assert_eq!(rs.len(), 1);
    let v = &rs[0].values;
    assert_eq!(v["amount"], "12345678901234567890.12");
    assert_eq!(v["ts"], "2026-05-01T08:20:30.123456Z");
    assert_eq!(v["naive"], "2026-05-01T10:20:30.654321Z");
    assert_eq!(v["flag"], true);
    assert_eq!(v["doc"], json!({"a": [1, 2.5, "x"]}));
    assert_eq!(v["raw"], "AP8Q");
    assert_eq!(v["day"], "2026-02-28");
    assert!(
        h.link("THINGS", "9007199254740993").await.is_some(),
        "the big key exactly"
    );
    // The same values, made here, go out as the same row.
    let mut copy = v.clone();
    copy.remove("id");
    api(
        &h,
        reqwest::Method::POST,
        "/api/v1/models/thing/records",
        Value::Object(copy),
    )
    .await;
    h.run("THINGS").await;
    let row = |id: &str| {
        format!(
            "SELECT concat_ws('|', amount::text, ts::text, naive::text, flag::text, doc::text, \
             encode(raw, 'hex'), day::text), NULL FROM things WHERE id {id}"
        )
    };
    common::eventually(30, "the copy to be inserted", || async {
        (db.texts(&row("<> 9007199254740993")).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        db.texts(&row("<> 9007199254740993")).await[0].0,
        db.texts(&row("= 9007199254740993")).await[0].0,
        "column by column"
    );
    h.stop().await;
    db.drop().await;
}

/// A conflict on send: the same field edited here and there before the next run is settled
/// by `priority` (external here): the edit made there wins on both sides, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_send_is_settled_by_priority() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    db.exec(
        "CREATE TABLE customers (cust_id INTEGER PRIMARY KEY, name TEXT, email TEXT, \
         balance TEXT, vip BOOLEAN, notes TEXT, updated_at TEXT, deleted_at TEXT)",
    )
    .await;
    db.exec(
        "INSERT INTO customers (name, email, updated_at) VALUES ('Ada', 'ada@x', '2026-12-01T10:00:00Z')",
    )
    .await;
    let h = Harness::with(Tweaks {
        mapping: Some(mapping("customers", "integer")),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    let run = h.run("LEGACY").await;
    assert_eq!(run.status, "success", "{run:?}");
    let id = records(&h).await[0].id;
    api(
        &h,
        reqwest::Method::PATCH,
        &format!("/api/v1/models/customer/records/{id}"),
        json!({"name": "Here"}),
    )
    .await;
    db.exec("UPDATE customers SET name = 'There', updated_at = '2026-12-02T10:00:00Z'")
        .await;
    h.run("LEGACY").await;
    common::eventually(30, "the conflict settled", || async {
        let here = records(&h).await[0].values["name"].clone();
        let there = db.texts("SELECT name, NULL FROM customers").await[0]
            .0
            .clone();
        (here == "There" && there == "There").then_some(())
    })
    .await;
    let changes = h.changes("LEGACY").await;
    assert!(
        changes
            .iter()
            .any(|c| c.status == "conflict_resolved" || c.action == "conflict"),
        "{changes:?}"
    );
    h.stop().await;
}

/// A poll over several pages, which overlap in the engine (a page goes to the writer while
/// the one before it commits): a record that fails in the first page keeps the watermark
/// before it, though the pages after it were applied; mended there, its timestamp
/// unchanged, it comes in with the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_holds_the_watermark_while_later_pages_apply() {
    let dir = tempfile::tempdir().unwrap();
    let db = Legacy::sqlite(dir.path()).await;
    db.exec(
        "CREATE TABLE tickets (id INTEGER PRIMARY KEY, title TEXT NOT NULL, \
         state TEXT NOT NULL, updated_at TEXT NOT NULL)",
    )
    .await;
    for i in 1..=9 {
        // The second row's state has no entry in the sync's map.
        let state = if i == 2 { "?" } else { "O" };
        db.exec(&format!(
            "INSERT INTO tickets VALUES ({i}, 'T{i}', '{state}', '2026-01-01T00:00:0{i}Z')"
        ))
        .await;
    }
    let mapping = r#"
[models.ticket]
display = "title"
fields = { title = "char", state = "char" }

[web_services.desk]
kind = "sql"
url = "${LEGACY_URL}"

[external_models.tickets]
kind = "sql"
table = "tickets"
key = "id"
cursor = "updated_at"
overlap = "1s"
fields = { id = "integer", title = "char", state = "char", updated_at = "datetime" }

[syncs.TICKETS]
model = "ticket"
external_model = "tickets"
web_service = "desk"
direction = "to_local"
every = "1h"
limit = 2
fields = [
  { local = "title", external = "title" },
  { local = "state", external = "state", map = { open = "O", closed = "C" } },
]
"#;
    let h = Harness::with(Tweaks {
        mapping: Some(mapping.to_string()),
        env: HashMap::from([("LEGACY_URL".to_string(), db.url())]),
        ..Default::default()
    })
    .await;
    let titles = |rs: Vec<recsync::store::Record>| {
        let mut t: Vec<String> = rs
            .iter()
            .map(|r| r.values["title"].as_str().unwrap_or_default().to_string())
            .collect();
        t.sort();
        t
    };
    let run = h.run("TICKETS").await;
    assert_eq!((run.pulled, run.created, run.failed), (9, 8, 1), "{run:?}");
    let rs = h.engine.store.list_records("ticket", 0, 100).await.unwrap();
    assert_eq!(
        titles(rs),
        ["T1", "T3", "T4", "T5", "T6", "T7", "T8", "T9"],
        "every page after the failed record's was applied"
    );
    // Mended there without a new timestamp (rows are 1 s apart, the overlap 1 s): only a
    // watermark kept before it finds it.
    db.exec("UPDATE tickets SET state = 'C' WHERE id = 2").await;
    let run = h.run("TICKETS").await;
    assert_eq!((run.created, run.failed), (1, 0), "{run:?}");
    let rs = h.engine.store.list_records("ticket", 0, 100).await.unwrap();
    let t2 = rs
        .iter()
        .find(|r| r.values["title"] == "T2")
        .expect("T2 came in");
    assert_eq!(t2.values["state"], "closed");
    assert_eq!(titles(rs).len(), 9);
    // Now the watermark is the last row: only the overlap's second is read again.
    let run = h.run("TICKETS").await;
    assert_eq!((run.pulled, run.created, run.failed), (2, 0, 0), "{run:?}");
    h.stop().await;
}
