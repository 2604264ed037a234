//! Plans (`POST /api/v1/syncs/<CODE>/plan`, `recsync plan`): what a run would do on each side,
//! computed without writing anything. The plan is checked against what the run then does, and
//! both sides (the reference peer's records, queue and calls; every table of the store) are
//! compared before and after it. Real HTTP, on SQLite and PostgreSQL.

mod common;

use common::harness::{Harness, OPERATE_KEY, PEER_KEY, READ_KEY, Tweaks};
use serde_json::{Map, Value, json};

const MAPPING: &str = r#"
[models.contact]
display = "name"
fields = { name = { type = "char", required = true }, email = "char", stage = "char" }

[external_models.crm_contact]
fields = { unique_id = "char", name = "char", email = "char", stage = "char" }

[web_services.plsrc]
url = "@PEER@/api/pl/fetch"
confirmation_url = "@PEER@/api/pl/confirm"
shipping_url = "@PEER@/api/pl/ship"
list_url = "@PEER@/api/pl/list"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[web_services.once]
url = "@PEER@/api/once/fetch"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.PL]
model = "contact"
external_model = "crm_contact"
web_service = "plsrc"
direction = "bidirectional"
mode = "cron"
every = "1h"
limit = 100
propagate_deletes = true
delete_guard = { max = 2 }
match_on = ["email"]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[syncs.ONCE]
model = "contact"
external_model = "crm_contact"
web_service = "once"
direction = "to_local"
mode = "cron"
every = "1h"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }]
"#;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn start(mapping: &str) -> Harness {
    Harness::with(Tweaks {
        mapping: Some(mapping.into()),
        ..Default::default()
    })
    .await
}

/// Twenty contacts on the peer, pulled in and linked.
async fn seeded() -> Harness {
    let h = start(MAPPING).await;
    for i in 0..20 {
        h.peer
            .upsert(
                "pl",
                Some(format!("P-{i}")),
                obj(json!({"name": format!("Account {i}"), "email": format!("a{i}@example.com")})),
            )
            .await;
    }
    let run = h.run("PL").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", 20),
        "{run:?}"
    );
    h
}

/// The peer as recsync could change it: its records, its queue of changes and the protocol
/// calls it received.
fn peer_state(h: &Harness) -> Value {
    json!({
        "records": h.peer.records("pl"),
        "pending": h.peer.pending("pl"),
        "confirms": h.peer.calls("pl", "confirm"),
        "received": h.peer.received("pl").len(),
    })
}

async fn plan(h: &Harness, code: &str, key: &str) -> (u16, Value) {
    let r = h
        .client
        .post(h.url(&format!("/api/v1/syncs/{code}/plan")))
        .header("X-Api-Key", key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn count(side: &Value, kind: &str) -> u64 {
    side["counts"][kind].as_u64().unwrap_or(0)
}

fn samples<'a>(side: &'a Value, kind: &str) -> &'a Vec<Value> {
    side["samples"][kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} samples in {side}"))
}

async fn local_id(h: &Harness, ext: &str) -> i64 {
    h.link("PL", ext).await.expect("linked").local_id
}

#[tokio::test]
async fn a_plan_shows_what_the_run_then_does_and_writes_nothing_on_either_side() {
    let h = seeded().await;
    // External changes: an edit, three new records (one matching a local record, one matching
    // two, one new to both), three deletes (more than the guard's max of 2).
    h.peer
        .upsert(
            "pl",
            Some("P-1".into()),
            obj(json!({"name": "Renamed there"})),
        )
        .await;
    h.peer
        .upsert(
            "pl",
            Some("P-100".into()),
            obj(json!({"name": "Matched", "email": "match@example.com"})),
        )
        .await;
    h.peer
        .upsert(
            "pl",
            Some("P-101".into()),
            obj(json!({"name": "Twin", "email": "twin@example.com"})),
        )
        .await;
    h.peer
        .upsert(
            "pl",
            Some("P-102".into()),
            obj(json!({"name": "Brand new", "email": "new@example.com"})),
        )
        .await;
    for i in [10, 11, 12] {
        assert!(h.peer.remove("pl", &format!("P-{i}")).await);
    }
    // Local changes: an edit of a linked record, unlinked records (one matching, two twins,
    // one only here).
    let p5 = local_id(&h, "P-5").await;
    h.patch_record("contact", p5, json!({"name": "Edited here"}))
        .await;
    let mut tx = h.engine.store.begin().await.unwrap();
    let locals = tx
        .insert_records(
            "contact",
            vec![
                obj(json!({"name": "Matched here", "email": " MATCH@example.com"})),
                obj(json!({"name": "Twin one", "email": "twin@example.com"})),
                obj(json!({"name": "Twin two", "email": "Twin@Example.com"})),
                obj(json!({"name": "Only here", "email": "only@example.com"})),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = locals.iter().map(|r| r.id).collect();

    let store_before = common::dump(&h.db.url).await;
    let peer_before = peer_state(&h);
    let (status, p) = plan(&h, "PL", READ_KEY).await;
    assert_eq!(status, 200, "{p}");
    // Twice: a plan changes nothing that a second plan would see.
    let (_, again) = plan(&h, "PL", READ_KEY).await;
    assert_eq!(p, again);
    assert_eq!(
        common::dump(&h.db.url).await,
        store_before,
        "the store changed"
    );
    assert_eq!(peer_state(&h), peer_before, "the peer changed");

    assert_eq!(p["sync"], "PL");
    assert_eq!(p["configuration"], "current");
    assert_eq!(p["full"], false);
    let local = &p["local"];
    assert_eq!(
        [
            count(local, "create"),
            count(local, "update"),
            count(local, "link"),
            count(local, "conflict"),
            count(local, "ambiguous"),
            count(local, "held"),
            count(local, "delete"),
        ],
        // The matched pair is merged as `priority` says: two fields differ, the external
        // side wins both.
        [1, 2, 1, 2, 1, 3, 0],
        "{local}"
    );
    assert_eq!(samples(local, "create")[0]["external_id"], "P-102");
    assert_eq!(
        samples(local, "create")[0]["values"],
        json!({"name": "Brand new", "email": "new@example.com"})
    );
    let upd = &samples(local, "update")[0];
    assert_eq!(upd["external_id"], "P-1");
    assert_eq!(
        upd["changes"],
        json!({"name": {"from": "Account 1", "to": "Renamed there"}})
    );
    let merged = &samples(local, "update")[1];
    assert_eq!(merged["external_id"], "P-100");
    assert_eq!(
        merged["changes"]["email"],
        json!({"from": " MATCH@example.com", "to": "match@example.com"})
    );
    let conflicts: Vec<(&Value, &Value)> = samples(local, "conflict")
        .iter()
        .map(|c| (&c["field"], &c["winner"]))
        .collect();
    assert_eq!(
        conflicts,
        [
            (&json!("email"), &json!("external")),
            (&json!("name"), &json!("external"))
        ]
    );
    let link = &samples(local, "link")[0];
    assert_eq!(
        (&link["external_id"], &link["local_id"], &link["match_on"]),
        (&json!("P-100"), &json!(ids[0]), &json!(["email"]))
    );
    let amb = &samples(local, "ambiguous")[0];
    assert_eq!(amb["external_id"], "P-101");
    assert_eq!(amb["candidates"], json!([ids[1], ids[2]]));
    let held: Vec<&Value> = samples(local, "held")
        .iter()
        .map(|s| &s["external_id"])
        .collect();
    assert_eq!(held, [&json!("P-10"), &json!("P-11"), &json!("P-12")]);
    assert_eq!(p["holds"][0]["side"], "local");
    assert_eq!(p["holds"][0]["deletes"], 3);
    assert!(
        p["holds"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("delete_guard.max = 2"),
        "{p}"
    );
    let external = &p["external"];
    assert_eq!(
        [count(external, "create"), count(external, "update")],
        [1, 1],
        "{external}"
    );
    assert_eq!(samples(external, "create")[0]["local_id"], ids[3]);
    assert_eq!(
        samples(external, "create")[0]["values"],
        json!({"name": "Only here", "email": "only@example.com"})
    );
    let upd = &samples(external, "update")[0];
    assert_eq!(
        (&upd["local_id"], &upd["external_id"]),
        (&json!(p5), &json!("P-5"))
    );
    assert_eq!(
        upd["changes"],
        json!({"name": {"from": "Account 5", "to": "Edited here"}})
    );

    // The run does what the plan said.
    let run = h.run("PL").await;
    assert_eq!(
        (
            run.created,
            run.updated,
            run.conflicts,
            run.ambiguous,
            run.held,
            run.deleted,
            run.pushed
        ),
        (1, 2, 2, 1, 3, 0, 2),
        "{run:?}"
    );
    assert_eq!(h.link("PL", "P-100").await.unwrap().local_id, ids[0]);
    h.stop().await;
}

#[tokio::test]
async fn a_full_plan_shows_what_reconciliation_would_find() {
    let h = seeded().await;
    // Changes the service never reports: only a listing finds them.
    h.peer
        .set_quietly("pl", "P-3", Some(obj(json!({"name": "Quietly renamed"}))));
    h.peer.set_quietly("pl", "P-4", None);
    let before = common::dump(&h.db.url).await;
    let r = h
        .client
        .post(h.url("/api/v1/syncs/PL/plan?full=true"))
        .header("X-Api-Key", READ_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(common::dump(&h.db.url).await, before, "the store changed");
    assert_eq!(p["full"], true);
    assert_eq!(
        p["reconcile"],
        json!({"missing": 1, "extra": 0, "different": 1}),
        "{p}"
    );
    assert_eq!(count(&p["local"], "delete"), 1, "{p}");
    assert_eq!(samples(&p["local"], "delete")[0]["external_id"], "P-4");
    // The full run then finds the same.
    let run = h.run_with("PL", "?full=true").await;
    assert_eq!(
        (run.missing, run.different, run.deleted),
        (1, 1, 1),
        "{run:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_plan_is_refused_where_reading_would_take_the_changes() {
    let h = start(MAPPING).await;
    h.peer
        .upsert("once", Some("O-1".into()), obj(json!({"name": "Once"})))
        .await;
    let (status, body) = plan(&h, "ONCE", READ_KEY).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "invalid");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("confirmation_url") && msg.contains("`once`"),
        "{msg}"
    );
    // Nothing was fetched: the change is still there.
    assert_eq!(h.peer.pending("once"), 1);
    assert!(h.peer.calls("once", "fetch").is_empty());
    let (status, body) = plan(&h, "NOPE", READ_KEY).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = plan(&h, "PL", "wrong-key").await;
    assert_eq!(status, 401);
    // Read keys and up may plan.
    assert_eq!(plan(&h, "PL", OPERATE_KEY).await.0, 200);
    h.stop().await;
}

/// `recsync plan <CODE> --mappings <folder>`: an edited configuration, planned against the
/// current data before it is saved.
#[tokio::test]
async fn the_cli_plans_an_edited_configuration_against_the_current_data() {
    let h = seeded().await;
    let edited = tempfile::tempdir().unwrap();
    // The edit: the name now comes from the external email, and a domain keeps only `.org`
    // addresses.
    let text = MAPPING
        .replace(
            "fields = [{ local = \"name\", external = \"name\" }, { local = \"email\", external = \"email\" }]\n\n[syncs.ONCE]",
            "domain = [[\"email\", \"=like\", \"%.org\"]]\nfields = [{ local = \"name\", external = \"email\", direction = \"to_local\" }, { local = \"email\", external = \"email\" }]\n\n[syncs.ONCE]",
        )
        .replace("@PEER@", &h.peer_url);
    assert_ne!(
        text,
        MAPPING.replace("@PEER@", &h.peer_url),
        "the edit applies"
    );
    std::fs::write(edited.path().join("edited.toml"), &text).unwrap();
    let before = common::dump(&h.db.url).await;
    let peer_before = peer_state(&h);
    let mut cli = std::process::Command::new(common::recsync_bin());
    cli.args(["plan", "PL", "--json", "--full", "--mappings"])
        .arg(edited.path())
        .args(["--database-url", &h.db.url])
        .env("RECSYNC_LOG", "warn")
        .env("PEER_API_KEY", PEER_KEY)
        .current_dir(edited.path());
    let out = common::output(cli).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(common::dump(&h.db.url).await, before, "the store changed");
    assert_eq!(peer_state(&h), peer_before, "the peer changed");
    assert_eq!(
        p["configuration"],
        edited.path().display().to_string(),
        "{p}"
    );
    // Every name would become the email, and every record would leave the new domain.
    let local = &p["local"];
    assert_eq!(count(local, "update"), 20, "{local}");
    assert_eq!(count(local, "unlink"), 20, "{local}");
    let upd = &samples(local, "update")[0];
    let n = upd["external_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("P-");
    assert_eq!(
        upd["changes"],
        json!({"name": {"from": format!("Account {n}"), "to": format!("a{n}@example.com")}}),
        "{local}"
    );
    // The text form says the same, in words.
    let mut cli = std::process::Command::new(common::recsync_bin());
    cli.args(["plan", "PL", "--mappings"])
        .arg(edited.path())
        .args(["--database-url", &h.db.url])
        .env("PEER_API_KEY", PEER_KEY)
        .current_dir(edited.path());
    let out = common::output(cli).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Nothing was written"), "{text}");
    // A database that is not there is not created.
    let missing = edited.path().join("none.db");
    let mut cli = std::process::Command::new(common::recsync_bin());
    cli.args(["plan", "PL", "--mappings"])
        .arg(edited.path())
        .args(["--database-url", &format!("sqlite://{}", missing.display())])
        .current_dir(edited.path());
    let out = common::output(cli).await;
    assert_eq!(out.status.code(), Some(69));
    assert!(!missing.exists());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no database"), "{said}");
    // What to do, from the very folder of recsync.toml: the command that creates it.
    assert!(said.contains("`recsync migrate` creates it"), "{said}");
    h.stop().await;
}

/// Two-way pairs with expressions, one of them lossy on purpose (`score`: its two expressions
/// do not use one scale).
const TRANSFORMED: &str = r#"
[models.contact]
display = "name"
fields = { name = { type = "char", required = true }, amount = "float", phone = "char", score = "float", secret_pin = { type = "char", secret = true } }

[external_models.crm_contact]
fields = { unique_id = "char", name = "char", amount_cents = "integer", phone = "char", score = "integer", pin = "char" }

[web_services.plsrc]
url = "@PEER@/api/pl/fetch"
confirmation_url = "@PEER@/api/pl/confirm"
shipping_url = "@PEER@/api/pl/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.PL]
model = "contact"
external_model = "crm_contact"
web_service = "plsrc"
direction = "bidirectional"
mode = "cron"
every = "1h"
external_ref = "unique_id"
fields = [
  { local = "name", external = "name" },
  { local = "amount", external = "amount_cents", to_local = "value / 100", to_external = "(value * 100) | round | int" },
  { local = "phone", external = "phone", to_local = "value | regex_replace('[^0-9+]', '')", to_external = "value" },
  { local = "score", external = "score", to_local = "value / 10", to_external = "(value * 100) | round | int" },
  { local = "secret_pin", external = "pin", to_local = "value | trim", to_external = "value" },
]
"#;

/// `plan` (API and CLI) and `validate --online` report, field by field with samples, the
/// values a two-way transformed pair does not give back, from the local records and from what
/// the external side reports; a secret field's samples are masked; nothing is written.
#[tokio::test]
async fn a_plan_reports_the_values_a_two_way_transform_does_not_give_back() {
    let h = start(TRANSFORMED).await;
    let mut ids = Vec::new();
    for values in [
        json!({"name": "Fine", "amount": 12.34, "phone": "+32475"}),
        json!({"name": "Fractions", "amount": 12.345, "phone": "+32 475 12", "secret_pin": " 4711 "}),
    ] {
        let r = h
            .client
            .post(h.url("/api/v1/models/contact/records"))
            .header("X-Api-Key", common::harness::ADMIN_KEY)
            .json(&values)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    // The external side reports a score: 30 arrives as 3.0, goes back as 300.
    h.peer
        .upsert(
            "pl",
            Some("S-1".into()),
            obj(json!({"name": "Scored", "amount_cents": 1050, "phone": "+3210", "score": 30})),
        )
        .await;
    let before = common::dump(&h.db.url).await;
    let (status, p) = plan(&h, "PL", READ_KEY).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        common::dump(&h.db.url).await,
        before,
        "the plan wrote nothing"
    );
    let trips = p["round_trip"].as_array().expect("round_trip");
    let field = |f: &str| {
        trips
            .iter()
            .find(|t| t["field"] == f)
            .unwrap_or_else(|| panic!("no {f} in {trips:?}"))
    };
    // Two local records and one pulled record hold an amount; one does not come back.
    let amount = field("amount");
    assert_eq!(
        (amount["checked"].as_u64(), amount["lossy"].as_u64()),
        (Some(3), Some(1)),
        "{amount}"
    );
    assert_eq!(
        amount["samples"],
        json!([{"local_id": ids[1], "value": 12.345, "sent": 1234, "back": 12.34}]),
        "{amount}"
    );
    assert_eq!(amount["to_external"], "(value * 100) | round | int");
    let phone = field("phone");
    assert_eq!(phone["lossy"], 1, "{phone}");
    assert_eq!(
        phone["samples"][0],
        json!({"local_id": ids[1], "value": "+32 475 12", "sent": "+32 475 12", "back": "+3247512"})
    );
    // The pulled record's score, as it would arrive: 3.0 goes out as 300, comes back 30.0.
    let score = field("score");
    assert_eq!(
        score["samples"],
        json!([{"external_id": "S-1", "value": 3.0, "sent": 300, "back": 30.0}]),
        "{score}"
    );
    // A secret field: counted, never shown.
    let pin = field("secret_pin");
    assert_eq!(pin["lossy"], 1, "{pin}");
    assert_eq!(
        pin["samples"][0],
        json!({"local_id": ids[1], "value": "***", "sent": "***", "back": "***"})
    );
    assert!(!p.to_string().contains("4711"), "{p}");
    // The CLI says it in words.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        TRANSFORMED.replace("@PEER@", &h.peer_url),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(common::recsync_bin());
        c.args(args)
            .arg("--mappings")
            .arg(dir.path())
            .args(["--database-url", &h.db.url])
            .env("RECSYNC_LOG", "warn")
            .env("PEER_API_KEY", PEER_KEY)
            .current_dir(dir.path());
        common::output(c)
    };
    let out = cli(&["plan", "PL"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "Round trip of amount <-> amount_cents: 1 of 3 value(s) do not come back equal"
        ) && text.contains(&format!("#{}  12.345 -> sent 1234 -> back 12.34", ids[1]))
            && !text.contains("Round trip of name")
            && !text.contains("4711"),
        "{text}"
    );
    // `validate --online` checks the local records (the pulled one is not read there).
    let out = cli(&["validate", "--online"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Round trips of two-way transformed fields, on the local records:")
            && text.contains("PL: Round trip of amount <-> amount_cents: 1 of 2 value(s)")
            && text.contains("PL: Round trip of score <-> score: no value to check"),
        "{text}"
    );
    assert_eq!(common::dump(&h.db.url).await, before, "nothing was written");
    h.stop().await;
}

/// A plan tells dead letters apart from deliveries on their way: a dead letter is not
/// delivered by a run or otherwise until a person retries it, and the plan says how.
#[tokio::test]
async fn a_plan_says_dead_letters_wait_for_a_person() {
    let h = seeded().await;
    // Every delivery the peer is sent is refused for good: whether or not an outbox worker
    // takes the entry before it is dead-lettered here, it ends dead.
    h.peer.set_faults(recsync::peer::Faults {
        fail_next: 1000,
        fail_status: Some(400),
        only: Some("ship".into()),
        ..Default::default()
    });
    let p3 = local_id(&h, "P-3").await;
    let mut tx = h.engine.store.begin().await.unwrap();
    let id = tx
        .enqueue(&recsync::store::NewOutbox {
            sync: "PL".into(),
            local_id: p3,
            action: "update".into(),
            payload: json!({}),
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    h.engine
        .store
        .outbox_dead(id, "Delivery failed and will not be retried: HTTP 400")
        .await
        .unwrap();
    let (status, v) = plan(&h, "PL", READ_KEY).await;
    assert_eq!(status, 200, "{v}");
    let notes: Vec<String> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let dead = notes
        .iter()
        .find(|n| n.contains("dead letter"))
        .unwrap_or_else(|| panic!("no note on dead letters: {notes:?}"));
    assert!(dead.starts_with("1 record(s)"), "{dead}");
    assert!(dead.contains("not tried again"), "{dead}");
    assert!(dead.contains("recsync outbox retry-all PL"), "{dead}");
    // Nothing else is on its way, so nothing is said to be delivered "whether or not a run
    // happens".
    assert!(
        !notes.iter().any(|n| n.contains("waiting in the outbox")),
        "{notes:?}"
    );
}
