//! The shipped Odoo examples, run as they are against fake Odoos over real HTTP:
//! `mappings/odoo.toml` (partners with countries and tags from Odoo, edits both ways, deletes
//! archived in Odoo, fan-out to the reference peer) and `mappings/odoo2odoo.toml` (partners
//! kept in step between two databases of different Odoo versions, by configuration alone).

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, Harness, Tweaks};
use recsync::peer::odoo::{FakeOdoo, OdooOptions, OdooState};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/mappings/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn fake(version: &str, partners: usize) -> (String, Arc<OdooState>) {
    let fake = FakeOdoo::bind(OdooOptions {
        version: version.into(),
        ..Default::default()
    })
    .unwrap();
    fake.state.seed_partners(partners);
    let (url, state) = (fake.url(), fake.state.clone());
    tokio::spawn(fake.run());
    (url, state)
}

async fn live_records(h: &Harness, model: &str) -> Vec<recsync::store::Record> {
    h.engine
        .store
        .records_after(model, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.deleted)
        .collect()
}

/// The names of a fake's contacts (companies left out), sorted.
fn contact_names(odoo: &OdooState) -> Vec<String> {
    let mut n: Vec<String> = odoo
        .records("res.partner")
        .values()
        .filter(|r| r.get("is_company") != Some(&json!(true)))
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn the_odoo_example_brings_partners_countries_and_tags_and_sends_edits_back() {
    let (url, odoo) = fake("19.0", 12);
    let h = Harness::with(Tweaks {
        mapping: Some(example("odoo.toml")),
        env: HashMap::from([("ODOO_URL".to_string(), url)]),
        ..Default::default()
    })
    .await;
    for code in ["ODOO_COUNTRIES", "ODOO_TAGS"] {
        let run = h.run(code).await;
        assert_eq!(run.status, "success", "{code}: {run:?}");
    }
    assert_eq!(live_records(&h, "country").await.len(), 4);
    assert_eq!(live_records(&h, "partner_tag").await.len(), 3);
    let run = h.run("ODOO_PARTNERS").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 13),
        "{run:?}"
    );
    let partners = live_records(&h, "partner").await;
    assert!(
        partners
            .iter()
            .filter(|p| p.values["name"] != "Mitchell Admin")
            .all(|p| p.values["country"].is_i64()
                && !p.values["tags"].as_array().unwrap().is_empty()),
        "every seeded partner has its country and tag: {partners:?}"
    );
    // The hub sends them on to the CRM.
    eventually(10, "the partners to reach the CRM", || async {
        (h.peer.records("partners").len() == 13).then_some(())
    })
    .await;
    // A local edit reaches Odoo at once (real time).
    let p = partners
        .iter()
        .find(|p| p.values["name"] == "Partner 3")
        .unwrap();
    h.patch_record("partner", p.id, json!({"phone": "+34 600 000 003"}))
        .await;
    let oid = *odoo
        .records("res.partner")
        .iter()
        .find(|(_, r)| r["name"] == "Partner 3")
        .unwrap()
        .0;
    eventually(10, "the phone to reach Odoo", || async {
        (odoo.records("res.partner")[&oid].get("phone") == Some(&json!("+34 600 000 003")))
            .then_some(())
    })
    .await;
    // Deleted here: archived in Odoo.
    let r = h
        .client
        .delete(h.url(&format!("/api/v1/models/partner/records/{}", p.id)))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    eventually(10, "the partner to be archived in Odoo", || async {
        (odoo.records("res.partner")[&oid].get("active") == Some(&json!(false))).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn the_odoo_to_odoo_example_keeps_two_databases_in_step() {
    let (url_a, a) = fake("19.0", 5);
    let (url_b, b) = fake("17.0", 0);
    let h = Harness::with(Tweaks {
        mapping: Some(example("odoo2odoo.toml")),
        env: HashMap::from([
            ("ODOO_A_URL".to_string(), url_a),
            ("ODOO_B_URL".to_string(), url_b),
        ]),
        ..Default::default()
    })
    .await;
    // The contacts of A (the seeded companies are outside the domain), and B's own admin.
    let contacts = a
        .records("res.partner")
        .values()
        .filter(|r| r.get("is_company") != Some(&json!(true)))
        .count();
    let run = h.run("PARTNERS_A").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", contacts as i64),
        "{run:?}"
    );
    // What came from A goes to B at once.
    eventually(15, "A's partners to reach B", || async {
        (b.records("res.partner").len() == contacts + 1).then_some(())
    })
    .await;
    let total_a = a.records("res.partner").len();
    let run = h.run("PARTNERS_B").await;
    assert_eq!(run.created, 1, "only B's own admin is new: {run:?}");
    eventually(15, "B's admin to reach A", || async {
        (a.records("res.partner").len() == total_a + 1).then_some(())
    })
    .await;
    assert_eq!(
        contact_names(&a),
        contact_names(&b),
        "the same contacts on both sides"
    );

    // An edit in B reaches A through the hub, and nothing echoes back.
    let (bid, _) = b
        .records("res.partner")
        .into_iter()
        .find(|(_, r)| r["name"] == "Partner 2")
        .unwrap();
    b.write(
        "res.partner",
        bid,
        json!({"email": "partner2@b.example.com"}),
    )
    .unwrap();
    let run = h.run("PARTNERS_B").await;
    assert_eq!(run.updated, 1, "{run:?}");
    eventually(15, "the edit to reach A", || async {
        a.records("res.partner")
            .values()
            .any(|r| r["email"] == "partner2@b.example.com")
            .then_some(())
    })
    .await;
    // The delivery's row is written once Odoo has answered: wait for the outbox to settle.
    eventually(15, "the outbox to settle", || async {
        let mut waiting = 0;
        for code in ["PARTNERS_A", "PARTNERS_B"] {
            waiting += h.engine.store.outbox_depth(code).await.unwrap();
        }
        (waiting == 0).then_some(())
    })
    .await;
    let rows = h.all_changes().await.len();
    for code in ["PARTNERS_A", "PARTNERS_B"] {
        let run = h.run(code).await;
        assert_eq!(
            (run.created, run.updated, run.failed),
            (0, 0, 0),
            "{code}: echoes are not changes: {run:?}"
        );
    }
    let after = h.all_changes().await;
    assert_eq!(
        after.len(),
        rows,
        "no row for echoes: {:?}",
        &after[..after.len().saturating_sub(rows)]
    );
    h.stop().await;
}
