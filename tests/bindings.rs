//! One identity per external system: a cron bidirectional sync and a real-time `to_local` code
//! for the same CRM and model share their links, so nothing is copied on either side and a
//! change that came in through one is never sent back through the other.

mod common;

use common::harness::{ADMIN_KEY, Harness, Tweaks};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// A CRM reached both ways: the cron protocol (pull, confirm, ship) and real-time calls in.
const PARTNER: &str = r#"
[web_services.partner]
url = "@PEER@/api/partner/fetch"
confirmation_url = "@PEER@/api/partner/confirm"
shipping_url = "@PEER@/api/partner/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.PCRON]
model = "contact"
external_model = "crm_contact"
web_service = "partner"
direction = "bidirectional"
mode = "cron"
every = "1h"
priority = "external"
propagate_deletes = true
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[syncs.PRT]
model = "contact"
external_model = "crm_contact"
web_service = "partner"
direction = "to_local"
mode = "realtime"
priority = "external"
propagate_deletes = true
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// The CRM changes a record: in its own data (queued for the next pull) and through its
/// real-time call to recsync, as the seed's module does.
async fn crm_upsert(h: &Harness, id: &str, values: Value, create: bool) {
    h.peer
        .upsert("partner", Some(id.into()), obj(values.clone()))
        .await;
    let mut body = obj(values);
    let r = if create {
        body.insert("unique_id".into(), json!(id));
        h.client.post(h.url("/sync/PRT/create"))
    } else {
        h.client.put(h.url(&format!("/sync/PRT/{id}")))
    }
    .header("api_key", ADMIN_KEY)
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Local contacts by name, with their emails (tombstones left out).
async fn local(h: &Harness) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut names = Vec::new();
    for r in h
        .engine
        .store
        .records_after("contact", 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.deleted)
    {
        let name = r.values["name"].as_str().unwrap().to_string();
        names.push(name.clone());
        out.insert(name, r.values.get("email").cloned().unwrap_or(Value::Null));
    }
    assert_eq!(names.len(), out.len(), "a local copy was made: {names:?}");
    out
}

/// The CRM's records by name, with their emails.
fn remote(h: &Harness) -> BTreeMap<String, Value> {
    let recs = h.peer.records("partner");
    let out: BTreeMap<String, Value> = recs
        .values()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r.get("email").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(out.len(), recs.len(), "a CRM copy was made: {recs:?}");
    out
}

/// Deliveries the CRM received, as (action, id).
fn shipped(h: &Harness) -> Vec<(String, Option<String>)> {
    h.peer
        .received("partner")
        .into_iter()
        .map(|r| (r.action, r.id))
        .collect()
}

#[tokio::test]
async fn a_cron_sync_and_a_realtime_code_of_one_binding_copy_nothing() {
    let h = Harness::with(Tweaks {
        extra_mapping: PARTNER.into(),
        ..Default::default()
    })
    .await;

    // Creates arrive in real time, then the cron run pulls the same records.
    crm_upsert(&h, "A", json!({"name": "Ana", "email": "ana@crm"}), true).await;
    crm_upsert(&h, "B", json!({"name": "Bo", "email": "bo@crm"}), true).await;
    let run = h.run("PCRON").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!((run.pulled, run.created), (2, 0), "{run:?}");
    assert_eq!(run.pushed, 0, "nothing goes back to the CRM: {run:?}");
    assert!(shipped(&h).is_empty(), "{:?}", shipped(&h));
    assert_eq!(local(&h).await, remote(&h));
    assert_eq!(local(&h).await.len(), 2);
    let a = h
        .link("PCRON", "A")
        .await
        .expect("the cron sync sees the realtime code's link");
    assert_eq!(
        h.link("PRT", "A").await.map(|l| l.local_id),
        Some(a.local_id),
        "one link, whichever sync asks"
    );

    // A local create goes out once, through the cron push, and its echo is not a copy.
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Cy", "email": "cy@local"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cy = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let run = h.run("PCRON").await;
    assert_eq!(run.pushed, 1, "{run:?}");
    assert_eq!(shipped(&h).len(), 1, "{:?}", shipped(&h));
    assert_eq!(shipped(&h)[0].0, "create");
    let cy_ext = shipped(&h)[0].1.clone().unwrap();
    // The push's rows carry the run's id.
    let sent: Vec<_> = h
        .changes("PCRON")
        .await
        .into_iter()
        .filter(|c| c.direction == "local_to_external")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].run_id, Some(run.id), "{sent:?}");
    // The CRM tells recsync about the record it just made, in real time and in its feed.
    crm_upsert(
        &h,
        &cy_ext,
        json!({"name": "Cy", "email": "cy@local"}),
        true,
    )
    .await;
    let run = h.run("PCRON").await;
    assert_eq!((run.created, run.pushed), (0, 0), "{run:?}");
    assert_eq!(local(&h).await, remote(&h));
    assert_eq!(local(&h).await.len(), 3);

    // An update in real time is applied once and not shipped back.
    crm_upsert(&h, "A", json!({"email": "ana@new"}), false).await;
    let run = h.run("PCRON").await;
    assert_eq!((run.created, run.updated, run.pushed), (0, 0, 0), "{run:?}");
    assert_eq!(local(&h).await["Ana"], json!("ana@new"));
    assert_eq!(shipped(&h).len(), 1, "{:?}", shipped(&h));

    // A conflict: both sides change Bo's email; the external side wins by priority and
    // already holds the result, so nothing is shipped back.
    h.patch_record(
        "contact",
        h.link("PRT", "B").await.unwrap().local_id,
        json!({"email": "bo@local"}),
    )
    .await;
    crm_upsert(&h, "B", json!({"email": "bo@remote"}), false).await;
    let conflicts: Vec<_> = h
        .changes("PRT")
        .await
        .into_iter()
        .filter(|c| c.action == "conflict")
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let run = h.run("PCRON").await;
    assert_eq!((run.created, run.pushed), (0, 0), "{run:?}");
    assert_eq!(local(&h).await["Bo"], json!("bo@remote"));
    assert_eq!(local(&h).await, remote(&h));
    assert_eq!(shipped(&h).len(), 1, "{:?}", shipped(&h));

    // Deletes: one made in the CRM arrives in real time; one made locally goes out by cron.
    h.peer.remove("partner", "A").await;
    let r = h
        .client
        .delete(h.url("/sync/PRT/A"))
        .header("api_key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let del = h
        .client
        .delete(h.url(&format!("/api/v1/models/contact/records/{cy}")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let run = h.run("PCRON").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!((run.created, run.pushed), (0, 1), "{run:?}");
    assert_eq!(
        shipped(&h).last().cloned(),
        Some(("delete".to_string(), Some(cy_ext.clone())))
    );
    assert_eq!(local(&h).await, remote(&h));
    assert_eq!(
        local(&h).await.keys().cloned().collect::<Vec<_>>(),
        vec!["Bo".to_string()]
    );
    // A second run finds nothing to do at all.
    let run = h.run("PCRON").await;
    assert_eq!(
        (
            run.pulled,
            run.created,
            run.updated,
            run.deleted,
            run.pushed
        ),
        (0, 0, 0, 0, 0),
        "{run:?}"
    );
    h.stop().await;
}

/// A database written by the previous release (migrations 0001 to 0003, links kept per sync)
/// is migrated, and its links merged into their bindings.
#[tokio::test]
async fn links_kept_per_sync_by_the_previous_release_merge_into_their_binding() {
    let db = common::TestDb::new().await;
    let folder = if db.is_postgres() {
        "migrations/postgres"
    } else {
        "migrations/sqlite"
    };
    let mut old = sqlx::migrate::Migrator::new(std::path::Path::new(folder))
        .await
        .unwrap();
    old.migrations = old
        .migrations
        .iter()
        .filter(|m| m.version <= 3)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    // Per-sync links as that release wrote them. CON and VAT share a binding (contact, CRM
    // contacts, crm); PULL has one of its own; GONE is no longer configured.
    let rows: &[(&str, i64, &str)] = &[
        ("CON", 1, "X1"),
        ("VAT", 1, "X1"), // the same pair seen by both syncs
        ("VAT", 2, "X2"), // only VAT knew this one
        ("CON", 3, "X3"),
        ("VAT", 4, "X3"), // the copy per-sync links made: same external id, another record
        ("PULL", 5, "P5"),
        ("GONE", 6, "G6"),
    ];
    // One statement of literal test values, run by either backend's pool.
    let insert = format!(
        "INSERT INTO links (sync, local_id, external_id, base, synced_version, updated_at) VALUES {}",
        rows.iter()
            .map(|(sync, id, ext)| format!(
                "('{sync}', {id}, '{ext}', '{{}}', 1, '2026-01-01T00:00:00Z')"
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if db.is_postgres() {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        old.run(&pool).await.unwrap();
        sqlx::raw_sql(&insert).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url)
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        old.run(&pool).await.unwrap();
        sqlx::raw_sql(&insert).execute(&pool).await.unwrap();
        pool.close().await;
    }

    let store = db.store().await;
    let mapping = common::harness::MAPPING.replace("@PEER@", "http://127.0.0.1:9");
    let plan = recsync::config::compile_texts(
        &[("mappings/test.toml", &mapping)],
        &std::collections::HashMap::<String, String>::new(),
        recsync::connectors::KINDS,
    )
    .unwrap();
    let con_binding = plan.sync("CON").unwrap().binding();
    let dropped = store
        .register_bindings(
            &plan
                .syncs
                .values()
                .map(|s| (s.code.to_string(), s.binding()))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(
        dropped,
        vec![("VAT".to_string(), 4)],
        "the copy is reported"
    );

    let local_of = |scope: &'static str, ext: &'static str| {
        let store = store.clone();
        async move {
            store
                .link_by_external(scope, ext)
                .await
                .unwrap()
                .map(|l| (l.binding, l.local_id))
        }
    };
    for scope in ["CON", "VAT"] {
        assert_eq!(local_of(scope, "X1").await, Some((con_binding.clone(), 1)));
        assert_eq!(local_of(scope, "X2").await, Some((con_binding.clone(), 2)));
        assert_eq!(local_of(scope, "X3").await, Some((con_binding.clone(), 3)));
    }
    assert!(store.link_by_local("VAT", 4).await.unwrap().is_none());
    assert_eq!(
        local_of("PULL", "P5").await,
        Some((plan.sync("PULL").unwrap().binding(), 5))
    );
    assert_eq!(local_of("GONE", "G6").await, Some(("GONE".to_string(), 6)));
    let mut ids = store.linked_external_ids(&con_binding).await.unwrap();
    ids.sort();
    assert_eq!(ids, vec!["X1", "X2", "X3"]);
    // Registering again (a restart) changes nothing.
    let again = store
        .register_bindings(&[("CON".into(), con_binding.clone())])
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(local_of("CON", "X3").await, Some((con_binding.clone(), 3)));
    db.cleanup(store).await;
}
