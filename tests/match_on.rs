//! First contact with `match_on`: both systems already hold the same contacts. The first run
//! links equal records (trimmed, without letter case) instead of copying them, reports the
//! ambiguous ones without linking or creating anything for them, and copies only what one side
//! lacks. Real HTTP against the reference peer, on SQLite and PostgreSQL.

mod common;

use common::harness::{Harness, Tweaks};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

const MT: &str = r#"
[web_services.mtsrc]
url = "@PEER@/api/mt/fetch"
confirmation_url = "@PEER@/api/mt/confirm"
shipping_url = "@PEER@/api/mt/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.MT]
model = "contact"
external_model = "crm_contact"
web_service = "mtsrc"
direction = "bidirectional"
mode = "cron"
every = "1h"
limit = 100
external_ref = "unique_id"
match_on = ["email"]
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn norm(v: &Value) -> String {
    v.as_str().unwrap_or_default().trim().to_lowercase()
}

#[tokio::test]
async fn the_first_run_links_equal_records_and_copies_only_what_is_missing() {
    let h = Harness::with(Tweaks {
        extra_mapping: MT.into(),
        ..Default::default()
    })
    .await;
    // The external side: 1,000 contacts.
    for i in 0..1000 {
        h.peer
            .upsert(
                "mt",
                Some(format!("X-{i}")),
                obj(json!({"name": format!("Ext {i}"), "email": format!("e{i}@example.com")})),
            )
            .await;
    }
    // The local side, before the sync existed: 890 of them (a third with other letter case and
    // spaces), 10 that two local records share, 50 only here.
    let mut rows: Vec<Map<String, Value>> = Vec::new();
    for i in 0..890 {
        let email = if i % 3 == 0 {
            format!("  E{i}@Example.COM ")
        } else {
            format!("e{i}@example.com")
        };
        rows.push(obj(json!({"name": format!("Local {i}"), "email": email})));
    }
    for i in 890..900 {
        for copy in 0..2 {
            rows.push(obj(
                json!({"name": format!("Twin {i}.{copy}"), "email": format!("e{i}@example.com")}),
            ));
        }
    }
    for j in 0..50 {
        rows.push(obj(
            json!({"name": format!("Only here {j}"), "email": format!("l{j}@example.org")}),
        ));
    }
    let mut tx = h.engine.store.begin().await.unwrap();
    tx.insert_records("contact", rows).await.unwrap();
    tx.commit().await.unwrap();

    let run = h.run("MT").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(run.ambiguous, 10, "{run:?}");
    assert_eq!(
        run.created, 100,
        "only the contacts missing here are created: {run:?}"
    );
    assert_eq!(
        run.pushed, 50,
        "only the contacts missing there are sent: {run:?}"
    );

    // No duplicate on either side.
    assert_eq!(
        h.engine.store.count_records("contact").await.unwrap(),
        890 + 20 + 100 + 50
    );
    let peer = h.peer.records("mt");
    assert_eq!(peer.len(), 1000 + 50, "nothing copied twice to the peer");
    let mut by_email: HashMap<String, usize> = HashMap::new();
    for r in peer.values() {
        *by_email.entry(norm(&r["email"])).or_default() += 1;
    }
    assert!(
        by_email.values().all(|n| *n == 1),
        "one peer record per email"
    );
    let mut local = Vec::new();
    let mut after = 0;
    loop {
        let page = h
            .engine
            .store
            .list_records("contact", after, 500)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        local.extend(page);
    }
    let mut local_by_email: HashMap<String, usize> = HashMap::new();
    for r in &local {
        *local_by_email.entry(norm(&r.values["email"])).or_default() += 1;
    }
    let doubles: Vec<&String> = local_by_email
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        doubles.len(),
        10,
        "only the twins that were already there: {doubles:?}"
    );

    // Every unambiguous pair is linked once, to the local record with that email.
    for i in [0, 1, 3, 444, 889] {
        let link = h.link("MT", &format!("X-{i}")).await.expect("linked");
        let rec = h
            .engine
            .store
            .get_record("contact", link.local_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(norm(&rec.values["email"]), format!("e{i}@example.com"));
        assert_eq!(
            rec.values["name"],
            format!("Ext {i}"),
            "priority external: its name wins"
        );
        assert!(rec.id <= 890, "an existing record, not a copy");
    }
    for i in 890..900 {
        assert!(
            h.link("MT", &format!("X-{i}")).await.is_none(),
            "ambiguous: not linked"
        );
    }
    let rows_of = |action: &str| {
        let f = recsync::store::ChangeFilter {
            sync: Some("MT".into()),
            action: Some(action.into()),
            limit: 5000,
            ..Default::default()
        };
        let store = h.engine.store.clone();
        async move { store.changes(&f).await.unwrap() }
    };
    let changes = rows_of("link").await;
    let links = changes.iter().filter(|c| c.status == "success").count();
    assert_eq!(links, 890, "one `link` row per match");
    let twins: Vec<_> = changes.iter().filter(|c| c.status == "skipped").collect();
    assert_eq!(twins.len(), 10);
    assert!(
        twins[0]
            .error_message
            .contains("several local records match on email"),
        "{}",
        twins[0].error_message
    );
    let conflicts = rows_of("conflict").await.len();
    assert!(
        conflicts >= 890,
        "differing names are conflicts, logged as usual: {conflicts}"
    );

    // A second run has nothing to do on either side.
    let run = h.run("MT").await;
    assert_eq!(
        (run.created, run.updated, run.pushed, run.ambiguous),
        (0, 0, 0, 0),
        "{run:?}"
    );
    assert_eq!(h.peer.records("mt").len(), 1050);
    h.stop().await;
}

#[test]
fn match_on_names_fields_the_sync_brings_in() {
    let base = include_str!("fixtures/base.toml");
    let env = HashMap::from([("CRM_KEY".to_string(), "s3cr3t-crm-key-value".to_string())]);
    let compile = |m: &str| {
        let text = format!(
            r#"{base}
[web_services.src]
url = "https://crm.example.com/fetch"

[external_models.acc]
fields = {{ uid = "char", name = "char", vat = "char" }}

[syncs.ACC]
model = "contact"
external_model = "acc"
web_service = "src"
direction = "to_local"
every = "1h"
external_ref = "uid"
fields = [{{ local = "name", external = "name" }}, {{ local = "email", external = "vat" }}]
match_on = {m}
"#
        );
        recsync::config::compile_texts(
            &[("mappings/a.toml", &text)],
            &env,
            recsync::connectors::KINDS,
        )
        .map_err(|e| e.render())
    };
    let plan = compile(r#"["email"]"#).unwrap();
    assert_eq!(
        plan.sync("ACC").unwrap().match_on,
        vec![vec!["email".to_string()]]
    );
    let plan = compile(r#"[["email", "name"], ["name"]]"#).unwrap();
    assert_eq!(plan.sync("ACC").unwrap().match_on.len(), 2);
    let err = compile(r#"["city"]"#).unwrap_err();
    assert!(err.contains("`match_on` names `city`"), "{err}");
    assert!(
        err.contains("match_on = [\"city\"]"),
        "the error shows the line: {err}"
    );
    assert!(compile("[]").unwrap_err().contains("`match_on` is empty"));
    assert!(
        compile(r#"[["email"], "name"]"#)
            .unwrap_err()
            .contains("a list of field names")
    );
}
