//! The shipped HTTP JSON API examples, run as they are against the project's fake over real
//! HTTP: `mappings/crm_http.toml` (a CRM paging with an `after` cursor, HubSpot's shapes) and
//! `mappings/helpdesk_http.toml` (a help desk's incremental export following `next_page`
//! URLs from a `start_time`, Zendesk's shapes, with OAuth 2.0 client credentials).

mod common;

use common::harness::{ADMIN_KEY, Harness, Tweaks};
use recsync::peer::http::{FakeAuth, FakeHttp, HttpOptions, HttpState};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/mappings/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn fake(auth: FakeAuth) -> (String, Arc<HttpState>) {
    let fake = FakeHttp::bind(HttpOptions {
        auth,
        ..Default::default()
    })
    .unwrap();
    let (url, state) = (fake.url(), fake.state.clone());
    tokio::spawn(fake.run());
    (url, state)
}

async fn live(h: &Harness, model: &str) -> Vec<recsync::store::Record> {
    h.engine
        .store
        .records_after(model, 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.deleted)
        .collect()
}

async fn create(h: &Harness, model: &str, values: Value) -> i64 {
    let r = h
        .client
        .post(h.url(&format!("/api/v1/models/{model}/records")))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&values)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

#[tokio::test]
async fn the_crm_example_matches_existing_contacts_pages_by_after_and_sends_edits_back() {
    let (url, crm) = fake(FakeAuth::Bearer("demo-crm-token".into()));
    crm.seed("contacts", 30);
    let h = Harness::with(Tweaks {
        mapping: Some(example("crm_http.toml")),
        env: HashMap::from([("CRM_URL".to_string(), url)]),
        ..Default::default()
    })
    .await;
    // Two customers exist here already: one the CRM has too (another letter case), one not.
    let known = create(
        &h,
        "customer",
        json!({"email": "Person5@Example.com", "first_name": "Known"}),
    )
    .await;
    let mine = create(
        &h,
        "customer",
        json!({"email": "only.here@example.com", "first_name": "Mine"}),
    )
    .await;
    let run = h.run("CRM_CONTACTS").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!((run.created, run.pushed), (29, 1), "{run:?}");
    assert_eq!(live(&h, "customer").await.len(), 31, "no duplicate here");
    assert_eq!(crm.records("contacts").len(), 31, "no duplicate in the CRM");
    assert!(
        h.link("CRM_CONTACTS", "5")
            .await
            .is_some_and(|l| l.local_id == known)
    );
    // The CRM's `after` cursor was followed, 100 a page (one page for 30).
    let gets: Vec<_> = crm
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET")
        .collect();
    assert!(gets[0].query.contains("limit=100"), "{gets:?}");
    let created = crm
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    assert_eq!(
        created.body.unwrap()["properties"]["email"],
        "only.here@example.com"
    );
    let mine_ext = crm
        .records("contacts")
        .into_iter()
        .find(|c| c["properties"]["email"] == "only.here@example.com")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        h.link("CRM_CONTACTS", &mine_ext).await.unwrap().local_id,
        mine
    );

    // An edit in the CRM comes in; a local edit goes out as a PATCH of `properties`.
    crm.upsert(
        "contacts",
        Some(7),
        json!({"firstname": "Edited in the CRM"}),
    );
    let seven = h.link("CRM_CONTACTS", "7").await.unwrap().local_id;
    h.patch_record("customer", known, json!({"phone": "+34 911 000 000"}))
        .await;
    crm.clear_calls();
    let run = h.run("CRM_CONTACTS").await;
    // Contact 7's edit, and the computed name of the contact the first run created there,
    // given by its first pull.
    assert_eq!(
        (run.status.as_str(), run.updated, run.pushed),
        ("success", 2, 1),
        "{run:?}"
    );
    let mine_now = h
        .engine
        .store
        .get_record("customer", mine)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mine_now.values["name"], "Mine");
    let rec = h
        .engine
        .store
        .get_record("customer", seven)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["first_name"], "Edited in the CRM");
    let patch = crm
        .calls()
        .into_iter()
        .find(|c| c.method == "PATCH")
        .unwrap();
    assert_eq!(patch.path, "/crm/v3/objects/contacts/5");
    assert_eq!(
        crm.records("contacts")[4]["properties"]["phone"],
        "+34 911 000 000"
    );

    // The CRM refuses a bad email: that record fails with the CRM's own words; others go.
    h.patch_record("customer", mine, json!({"email": "not-an-email"}))
        .await;
    h.patch_record("customer", known, json!({"last_name": "Still sent"}))
        .await;
    let run = h.run("CRM_CONTACTS").await;
    assert_eq!(run.pushed, 1, "{run:?}");
    let refused = h
        .changes("CRM_CONTACTS")
        .await
        .into_iter()
        .find(|c| c.status == "failed")
        .unwrap();
    assert!(
        refused.local_id == Some(mine)
            && refused.error_message.contains("will not be retried")
            && refused
                .error_message
                .contains("Email address not-an-email is invalid")
            && refused
                .error_message
                .contains("web service `crm_api`, resource `crm_contact`"),
        "{}",
        refused.error_message
    );
    assert_eq!(
        crm.records("contacts")[4]["properties"]["lastname"],
        "Still sent"
    );

    // A contact archived in the CRM leaves the list without a word: reconciliation finds it.
    crm.remove("contacts", 9);
    let run = h.run_with("CRM_CONTACTS", "?full=true").await;
    assert_eq!(
        (run.status.as_str(), run.missing),
        ("success", 1),
        "{run:?}"
    );
    assert_eq!(live(&h, "customer").await.len(), 30);
    h.stop().await;
}

#[tokio::test]
async fn the_help_desk_example_exports_incrementally_from_start_time_and_writes_tickets_back() {
    let (url, desk) = fake(FakeAuth::OAuth2 {
        client_id: "recsync".into(),
        client_secret: "demo-desk-secret".into(),
        ttl: std::time::Duration::from_secs(7200),
    });
    desk.seed("tickets", 2500);
    let h = Harness::with(Tweaks {
        mapping: Some(example("helpdesk_http.toml")),
        env: HashMap::from([
            ("DESK_URL".to_string(), url.clone()),
            ("DESK_TOKEN_URL".to_string(), format!("{url}/oauth/token")),
        ]),
        ..Default::default()
    })
    .await;
    let run = h.run("DESK_TICKETS").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 2500),
        "{run:?}"
    );
    // From start_time=0, 1000 a page, following next_page until end_of_stream.
    let gets: Vec<String> = desk
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET")
        .map(|c| c.query)
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[0], "per_page=1000&start_time=0");
    assert_eq!(desk.token_requests(), 1);

    // The next export starts at the last generated_timestamp taken; the tickets stamped then
    // come again and are dropped. Edits in the desk and a deleted ticket come in.
    desk.clear_calls();
    desk.upsert("tickets", Some(12), json!({"status": "solved"}));
    desk.remove("tickets", 40);
    let run = h.run("DESK_TICKETS").await;
    assert_eq!(
        (run.status.as_str(), run.created, run.updated, run.deleted),
        ("success", 0, 1, 1),
        "{run:?}"
    );
    let first = desk
        .calls()
        .into_iter()
        .find(|c| c.method == "GET")
        .unwrap();
    assert_eq!(
        first.query,
        format!("per_page=1000&start_time={}", 1_704_067_200 + 2499 / 3)
    );
    assert_eq!(live(&h, "ticket").await.len(), 2499);

    // A ticket made here goes out wrapped as {"ticket": ...}, its id read from $.ticket.id.
    let local = create(
        &h,
        "ticket",
        json!({"subject": "Printer on fire", "priority": "high", "status": "open"}),
    )
    .await;
    let run = h.run("DESK_TICKETS").await;
    assert_eq!((run.status.as_str(), run.pushed), ("success", 1), "{run:?}");
    let post = desk
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    assert_eq!(post.body.unwrap()["ticket"]["subject"], "Printer on fire");
    let id = desk.records("tickets").last().unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        h.link("DESK_TICKETS", &id.to_string())
            .await
            .unwrap()
            .local_id,
        local
    );
    // Its echo in the next export changes nothing.
    let run = h.run("DESK_TICKETS").await;
    assert_eq!(
        (run.status.as_str(), run.created, run.updated),
        ("success", 0, 0),
        "{run:?}"
    );
    h.stop().await;
}

/// The CRM example with its sync sending in real time (`edits`: more `(from, to)` edits).
async fn realtime_crm(edits: &[(&str, &str)]) -> (Harness, Arc<HttpState>) {
    let (url, crm) = fake(FakeAuth::Bearer("demo-crm-token".into()));
    crm.seed("contacts", 3);
    let mut mapping = example("crm_http.toml").replacen(
        "every = \"15m\"",
        "mode = \"realtime\"\nevery = \"15m\"",
        1,
    );
    for (from, to) in edits {
        assert!(mapping.contains(from), "{from}");
        mapping = mapping.replacen(from, to, 1);
    }
    // A block renamed `*_left_out` is left out.
    if let Some(at) = mapping.find("_left_out]") {
        let start = mapping[..at].rfind('[').unwrap();
        let end = mapping[at..]
            .find("\n[")
            .map(|e| at + e + 1)
            .unwrap_or(mapping.len());
        mapping.replace_range(start..end, "");
    }
    let h = Harness::with(Tweaks {
        mapping: Some(mapping),
        env: HashMap::from([("CRM_URL".to_string(), url)]),
        ..Default::default()
    })
    .await;
    let run = h.run("CRM_CONTACTS").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 3),
        "{run:?}"
    );
    (h, crm)
}

/// Waits until the sync's outbox is empty.
async fn drained(h: &Harness) {
    common::eventually(15, "the outbox to drain", || async {
        (h.engine.store.outbox_depth("CRM_CONTACTS").await.unwrap() == 0).then_some(())
    })
    .await;
}

/// A contact entered in the CRM after the last run and, before any run, here: linked, never
/// copied, whether the CRM is searched first (`search`) or refuses the copy (`exists`).
async fn a_contact_both_sides_entered_is_linked(edits: &[(&str, &str)], how: &str) {
    let (h, crm) = realtime_crm(edits).await;
    let late = crm.upsert(
        "contacts",
        None,
        json!({"email": "late@example.com", "firstname": "Late", "phone": "555"}),
    );
    let late_id = late["id"].as_str().unwrap().to_string();
    let here = create(
        &h,
        "customer",
        json!({"email": "late@example.com", "first_name": "Hub"}),
    )
    .await;
    let link = common::eventually(15, "the contact to be linked", || async {
        h.link("CRM_CONTACTS", &late_id).await
    })
    .await;
    assert_eq!(link.local_id, here, "{how}");
    drained(&h).await;
    assert_eq!(
        crm.records("contacts").len(),
        4,
        "{how}: no copy in the CRM"
    );
    let rec = h
        .engine
        .store
        .get_record("customer", here)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&rec.values["first_name"], &rec.values["phone"]),
        (&json!("Late"), &json!("555")),
        "{how}: the CRM's values win where they differ (priority external)"
    );
    let rows = h.changes("CRM_CONTACTS").await;
    assert!(
        rows.iter()
            .all(|c| c.status != "failed" && c.status != "dead"),
        "{how}: {rows:?}"
    );
    let linked = rows
        .iter()
        .find(|c| c.action == "link" && c.local_id == Some(here))
        .unwrap_or_else(|| panic!("{how}: a link row: {rows:?}"));
    assert!(
        linked.error_message.contains(how),
        "{}",
        linked.error_message
    );
    h.stop().await;
}

#[tokio::test]
async fn the_crm_example_searches_the_crm_by_email_before_creating_a_contact() {
    a_contact_both_sides_entered_is_linked(&[], "found in web service `crm_api` by email").await;
}

#[tokio::test]
async fn the_crm_example_links_the_contact_a_409_names_instead_of_dead_lettering() {
    a_contact_both_sides_entered_is_linked(
        &[(
            "[external_models.crm_contact.search]",
            "[external_models.crm_contact.search_left_out]",
        )],
        "already holds the record",
    )
    .await;
}

#[tokio::test]
async fn the_crm_example_reads_a_contact_before_updating_it() {
    reads_before_updating(&[]).await;
}

/// The read keeps only what the sync takes, as a pulled page does: a contact read with fields
/// the external model does not declare is merged, not refused.
#[tokio::test]
async fn a_contact_read_before_an_update_keeps_only_the_fields_the_sync_takes() {
    reads_before_updating(&[(
        "archived  = \"boolean\"\ncreatedAt = \"datetime\"\nupdatedAt = \"datetime\"\n",
        "",
    )])
    .await;
}

async fn reads_before_updating(edits: &[(&str, &str)]) {
    let (h, crm) = realtime_crm(edits).await;
    let local = h.link("CRM_CONTACTS", "2").await.unwrap().local_id;
    crm.upsert("contacts", Some(2), json!({"firstname": "CRM edit"}));
    h.patch_record(
        "customer",
        local,
        json!({"first_name": "Hub edit", "phone": "+34 600 000 000"}),
    )
    .await;
    drained(&h).await;
    crm_edit_kept(&h, &crm, local).await;
    h.stop().await;
}

/// Contact 2's first name was edited in the CRM ("CRM edit") and here, with the phone too: the
/// CRM's edit stays (priority external), the hub's other edit is merged, and one conflict row
/// says so.
async fn crm_edit_kept(h: &Harness, crm: &HttpState, local: i64) {
    let there = crm
        .records("contacts")
        .into_iter()
        .find(|c| c["id"] == "2")
        .unwrap();
    assert_eq!(
        (
            &there["properties"]["firstname"],
            &there["properties"]["phone"]
        ),
        (&json!("CRM edit"), &json!("+34 600 000 000")),
        "the CRM's edit stays (priority external); the hub's other edit is merged"
    );
    let rec = h
        .engine
        .store
        .get_record("customer", local)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.values["first_name"], "CRM edit");
    let conflicts: Vec<_> = h
        .changes("CRM_CONTACTS")
        .await
        .into_iter()
        .filter(|c| c.action == "conflict")
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].origin_values["field"], "first_name");
}

/// An update answered 500 is not repeated as it was: the CRM's contact is read again first, so
/// an edit made there meanwhile (here, at the very moment of the 500) is not written over.
#[tokio::test]
async fn an_update_answered_500_is_read_again_before_it_is_sent_again() {
    let (h, crm) = realtime_crm(&[]).await;
    let local = h.link("CRM_CONTACTS", "2").await.unwrap().local_id;
    crm.faults(|f| {
        f.fail_next = 1;
        f.only_method = Some("PATCH".into());
        f.edit_when_failing = Some(json!({"firstname": "CRM edit"}));
    });
    h.patch_record(
        "customer",
        local,
        json!({"first_name": "Hub edit", "phone": "+34 600 000 000"}),
    )
    .await;
    drained(&h).await;
    let patches: Vec<_> = crm
        .calls()
        .into_iter()
        .filter(|c| c.method == "PATCH")
        .map(|c| c.status)
        .collect();
    assert_eq!(
        patches,
        [500, 200],
        "one failed PATCH, then one after a new read"
    );
    crm_edit_kept(&h, &crm, local).await;
    h.stop().await;
}

/// A transform that fails on one record's value (a phone the expression cannot read as a
/// number) fails that record only, with a message naming the field, the expression and the
/// value; nothing is written for it, the rest of the page goes on, and once the value is
/// fixed there the next run takes the record.
#[tokio::test]
async fn a_transform_that_fails_on_a_value_fails_that_record_only() {
    let expr = "value | replace(' ', '') | int | string";
    let (h, crm) = realtime_crm(&[(
        r#"{ local = "phone",      external = "$.properties.phone" },"#,
        &format!(
            r#"{{ local = "phone", external = "$.properties.phone", direction = "to_local", to_local = "{expr}" }},"#
        ),
    )])
    .await;
    let two = h.link("CRM_CONTACTS", "2").await.unwrap().local_id;
    let phone = |id: i64| {
        let h = &h;
        async move {
            h.engine
                .store
                .get_record("customer", id)
                .await
                .unwrap()
                .unwrap()
                .values["phone"]
                .clone()
        }
    };
    assert_eq!(
        phone(two).await,
        "34600000002",
        "the seeded phone, transformed"
    );
    let bad = crm.upsert(
        "contacts",
        None,
        json!({"email": "na@example.com", "firstname": "No", "phone": "n/a"}),
    );
    let bad_id = bad["id"].as_str().unwrap().to_string();
    crm.upsert("contacts", Some(2), json!({"phone": "+34 611 222 333"}));
    let run = h.run("CRM_CONTACTS").await;
    assert_eq!((run.created, run.updated, run.failed), (0, 1, 1), "{run:?}");
    assert_eq!(
        phone(two).await,
        "34611222333",
        "the rest of the page goes on"
    );
    assert!(
        h.link("CRM_CONTACTS", &bad_id).await.is_none(),
        "nothing linked"
    );
    assert!(
        !live(&h, "customer")
            .await
            .iter()
            .any(|r| r.values["email"] == "na@example.com"),
        "nothing written for the record that failed"
    );
    let failed: Vec<_> = h
        .changes("CRM_CONTACTS")
        .await
        .into_iter()
        .filter(|c| c.status == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let msg = &failed[0].error_message;
    assert_eq!(failed[0].external_id.as_deref(), Some(bad_id.as_str()));
    for part in ["phone", "to_local", expr, "\"n/a\""] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    // Fixed in the CRM: the next run takes it.
    crm.upsert(
        "contacts",
        Some(bad_id.parse().unwrap()),
        json!({"phone": "555 01"}),
    );
    let run = h.run("CRM_CONTACTS").await;
    assert_eq!((run.created, run.failed), (1, 0), "{run:?}");
    let fixed = h.link("CRM_CONTACTS", &bad_id).await.unwrap().local_id;
    assert_eq!(phone(fixed).await, "55501");
    h.stop().await;
}

/// Field transforms end to end: the example's computed `name` (first and last name from the
/// CRM), and a variant whose hub keeps only `name`, sent to the CRM as computed `firstname` and
/// `lastname`; several runs write nothing more (no echo, no flip-flop).
#[tokio::test]
async fn computed_names_come_in_and_go_out_and_settle() {
    let (h, crm) = realtime_crm(&[]).await;
    let names: Vec<Value> = live(&h, "customer")
        .await
        .into_iter()
        .map(|r| r.values["name"].clone())
        .collect();
    assert_eq!(
        names,
        [
            json!("First1 Last1"),
            json!("First2 Last2"),
            json!("First3 Last3")
        ]
    );
    // A last name changed in the CRM changes the computed name; a missing one leaves it out.
    crm.upsert("contacts", Some(2), json!({"lastname": "Byron"}));
    crm.upsert("contacts", Some(3), json!({"lastname": null}));
    let run = h.run("CRM_CONTACTS").await;
    assert_eq!((run.updated, run.pushed), (2, 0), "{run:?}");
    let two = h.link("CRM_CONTACTS", "2").await.unwrap().local_id;
    let three = h.link("CRM_CONTACTS", "3").await.unwrap().local_id;
    let name = |id: i64| {
        let h = &h;
        async move {
            h.engine
                .store
                .get_record("customer", id)
                .await
                .unwrap()
                .unwrap()
                .values["name"]
                .clone()
        }
    };
    assert_eq!(name(two).await, "First2 Byron");
    assert_eq!(name(three).await, "First3");
    crm.clear_calls();
    for _ in 0..3 {
        let run = h.run("CRM_CONTACTS").await;
        assert_eq!((run.created, run.updated, run.pushed), (0, 0, 0), "{run:?}");
    }
    assert!(
        crm.calls().iter().all(|c| c.method == "GET"),
        "{:?}",
        crm.calls()
    );
    h.stop().await;

    // The hub keeps one `name`; the CRM gets it as first and last name, and gives it back.
    let (h, crm) = realtime_crm(&[
        (
            r#"  { local = "first_name", external = "$.properties.firstname" },
  { local = "last_name",  external = "$.properties.lastname" },
"#,
            r#"  { external = "$.properties.firstname", to_external = "local.name | split(' ', 1) | first" },
  { external = "$.properties.lastname", to_external = "local.name | split(' ', 1) | last if ' ' in local.name else ''" },
"#,
        ),
    ])
    .await;
    let id = create(
        &h,
        "customer",
        json!({"email": "ada@example.com", "name": "Ada King Lovelace"}),
    )
    .await;
    drained(&h).await;
    let sent = crm
        .records("contacts")
        .into_iter()
        .find(|c| c["properties"]["email"] == "ada@example.com")
        .unwrap();
    assert_eq!(sent["properties"]["firstname"], "Ada");
    assert_eq!(sent["properties"]["lastname"], "King Lovelace");
    // An edit of the name sends both computed fields.
    h.patch_record("customer", id, json!({"name": "Ada Byron"}))
        .await;
    drained(&h).await;
    let ext = sent["id"].as_str().unwrap().to_string();
    assert_eq!(h.link("CRM_CONTACTS", &ext).await.unwrap().local_id, id);
    let patch = crm
        .calls()
        .into_iter()
        .rfind(|c| c.method == "PATCH")
        .unwrap();
    assert_eq!(patch.path, format!("/crm/v3/objects/contacts/{ext}"));
    let body = patch.body.unwrap();
    assert_eq!(
        (
            &body["properties"]["firstname"],
            &body["properties"]["lastname"]
        ),
        (&json!("Ada"), &json!("Byron"))
    );
    // Pulled back, the computed name is what the hub holds: nothing changes, nothing goes out.
    crm.clear_calls();
    for _ in 0..3 {
        let run = h.run("CRM_CONTACTS").await;
        assert_eq!((run.created, run.updated, run.pushed), (0, 0, 0), "{run:?}");
    }
    assert!(
        crm.calls().iter().all(|c| c.method == "GET"),
        "{:?}",
        crm.calls()
    );
    assert_eq!(
        h.engine
            .store
            .get_record("customer", id)
            .await
            .unwrap()
            .unwrap()
            .values["name"],
        "Ada Byron"
    );
    h.stop().await;
}
