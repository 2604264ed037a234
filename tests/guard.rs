//! First contact and data safety through the connector interface: reconciliation
//! (`reconcile`, `recsync run --full`) lists every record of a `rest` service with a
//! `list_url` and repairs what events missed; the delete guard holds mass deletes, from pulled
//! pages and from reconciliation alike, until an operator approves (exactly those deletes are
//! applied) or discards them (nothing is deleted). Real HTTP, against the reference peer, on
//! SQLite and PostgreSQL.

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, Harness, OPERATE_KEY, READ_KEY, Tweaks};
use serde_json::{Map, Value, json};

const ACC: &str = r#"
[web_services.listsrc]
url = "@PEER@/api/acc/fetch"
confirmation_url = "@PEER@/api/acc/confirm"
list_url = "@PEER@/api/acc/list"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.ACC]
model = "contact"
external_model = "crm_contact"
web_service = "listsrc"
direction = "to_local"
mode = "cron"
every = "1h"
reconcile = "1d"
limit = 100
propagate_deletes = true
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn id(n: usize) -> String {
    format!("A-{n:04}")
}

async fn start() -> Harness {
    Harness::with(Tweaks {
        extra_mapping: ACC.into(),
        ..Default::default()
    })
    .await
}

/// `n` accounts on the peer, pulled in: they are all linked.
async fn seeded(n: usize) -> Harness {
    let h = start().await;
    for i in 0..n {
        h.peer
            .upsert(
                "acc",
                Some(id(i)),
                obj(json!({"name": format!("Account {i}"), "email": format!("a{i}@example.com")})),
            )
            .await;
    }
    let run = h.run("ACC").await;
    assert_eq!(
        (run.status.as_str(), run.created),
        ("success", n as i64),
        "{run:?}"
    );
    h
}

async fn local_of(h: &Harness, ext: &str) -> Option<recsync::store::Record> {
    let link = h.link("ACC", ext).await?;
    h.engine
        .store
        .get_record("contact", link.local_id)
        .await
        .unwrap()
        .filter(|r| !r.deleted)
}

async fn live_contacts(h: &Harness) -> i64 {
    h.engine.store.count_records("contact").await.unwrap()
}

async fn api(h: &Harness, method: reqwest::Method, path: &str, key: &str) -> (u16, Value) {
    let r = h
        .client
        .request(method, h.url(path))
        .header("X-Api-Key", key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn reconciliation_repairs_what_events_missed() {
    let h = seeded(40).await;
    // Changes the service never reported: an edit, a new record, two deletes.
    h.peer
        .set_quietly("acc", &id(3), Some(obj(json!({"name": "Renamed quietly"}))));
    h.peer.set_quietly(
        "acc",
        "A-9000",
        Some(obj(
            json!({"name": "Added quietly", "email": "new@example.com"}),
        )),
    );
    h.peer.set_quietly("acc", &id(5), None);
    h.peer.set_quietly("acc", &id(6), None);
    // An incremental run sees none of it.
    let run = h.run("ACC").await;
    assert_eq!(
        (run.created, run.updated, run.deleted),
        (0, 0, 0),
        "{run:?}"
    );
    assert!(local_of(&h, &id(5)).await.is_some());

    let rows = h.changes("ACC").await.len();
    let run = h.run_with("ACC", "?full=true").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        (run.missing, run.extra, run.different),
        (2, 1, 1),
        "what reconciliation found: {run:?}"
    );
    assert_eq!(
        (run.created, run.updated, run.deleted, run.held),
        (1, 1, 2, 0),
        "{run:?}"
    );
    assert_eq!(
        local_of(&h, &id(3)).await.unwrap().values["name"],
        "Renamed quietly"
    );
    assert_eq!(
        local_of(&h, "A-9000").await.unwrap().values["email"],
        "new@example.com"
    );
    assert!(local_of(&h, &id(5)).await.is_none());
    assert!(local_of(&h, &id(6)).await.is_none());
    // One row per repair and one saying what was found.
    let changes = h.changes("ACC").await;
    let new: Vec<_> = changes[..changes.len() - rows].to_vec();
    assert_eq!(new.len(), 5, "{new:#?}");
    let summary = new
        .iter()
        .find(|c| c.name == "Reconciliation")
        .expect("a row with what reconciliation found");
    // An action of its own: `--action update` does not mix it in.
    assert_eq!(summary.action, "reconcile");
    assert_eq!(
        summary.origin_values,
        json!({"missing": 2, "extra": 1, "different": 1})
    );
    assert_eq!(summary.run_id, Some(run.id));

    // Nothing differs any more: a second reconciliation finds nothing and writes only its row.
    let rows = h.changes("ACC").await.len();
    let run = h.run_with("ACC", "?full=true").await;
    assert_eq!(
        (
            run.missing,
            run.extra,
            run.different,
            run.created,
            run.updated,
            run.deleted
        ),
        (0, 0, 0, 0, 0, 0),
        "{run:?}"
    );
    assert_eq!(h.changes("ACC").await.len(), rows + 1);
    h.stop().await;
}

#[tokio::test]
async fn a_partial_listing_deletes_nothing_until_a_person_approves() {
    let h = seeded(200).await;
    // The service answers 5% of its records.
    h.peer.set_faults(recsync::peer::Faults {
        list_share: Some(0.05),
        ..Default::default()
    });
    let run = h.run_with("ACC", "?full=true").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(
        (run.missing, run.held, run.deleted),
        (190, 190, 0),
        "{run:?}"
    );
    assert_eq!(live_contacts(&h).await, 200, "nothing deleted");
    let binding = h.engine.plan().sync("ACC").unwrap().binding();
    assert_eq!(h.engine.store.count_links(&binding).await.unwrap(), 200);

    // The hold, with its records, for readers; deciding needs an operate key.
    let (status, body) = api(&h, reqwest::Method::GET, "/api/v1/holds", READ_KEY).await;
    assert_eq!(status, 200, "{body}");
    let holds = body["holds"].as_array().unwrap();
    assert_eq!(holds.len(), 1, "{body}");
    assert_eq!(holds[0]["sync"], "ACC");
    assert_eq!(holds[0]["items"], 190);
    assert_eq!(holds[0]["status"], "held");
    assert!(
        holds[0]["reason"].as_str().unwrap().contains("max_ratio"),
        "{body}"
    );
    for (query, count) in [("?status=all", 1), ("?status=approved", 0)] {
        let (status, body) = api(
            &h,
            reqwest::Method::GET,
            &format!("/api/v1/holds{query}"),
            READ_KEY,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["holds"].as_array().unwrap().len(),
            count,
            "{query}: {body}"
        );
    }
    let (status, body) = api(
        &h,
        reqwest::Method::GET,
        "/api/v1/holds?status=hold",
        READ_KEY,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("unknown status `hold`: use collecting, held, approved"),
        "{body}"
    );
    let hold = holds[0]["id"].as_i64().unwrap();
    let (status, body) = api(
        &h,
        reqwest::Method::GET,
        &format!("/api/v1/holds/{hold}?limit=1000"),
        READ_KEY,
    )
    .await;
    assert_eq!(status, 200);
    let listed: Vec<String> = body["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["external_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 190);
    assert!(
        !listed.contains(&id(0)) && listed.contains(&id(1)),
        "every 20th is listed"
    );
    assert!(
        body["deletes"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("Account")
    );
    let (status, _) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hold}/approve"),
        READ_KEY,
    )
    .await;
    assert_eq!(status, 403, "a read key cannot approve");
    // A later reconciliation of the same partial list deletes nothing and opens no second
    // hold for the deletes already held.
    let run = h.run_with("ACC", "?full=true").await;
    assert_eq!((run.held, run.deleted), (0, 0), "{run:?}");
    let open = h
        .engine
        .store
        .holds(Some(recsync::store::HoldStatus::Held), Some("ACC"), 10)
        .await
        .unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id, hold);
    assert_eq!(open[0].items, 190);

    // Discarding keeps every record, and every link as it was.
    let (status, body) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hold}/discard"),
        OPERATE_KEY,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("discarded")),
        "{body}"
    );
    assert_eq!(live_contacts(&h).await, 200);
    assert_eq!(h.engine.store.count_links(&binding).await.unwrap(), 200);
    let (status, _) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hold}/approve"),
        OPERATE_KEY,
    )
    .await;
    assert_eq!(status, 409, "a discarded hold cannot be approved");
    // Once discarded, the same partial list holds its deletes again, in a new hold.
    let run = h.run_with("ACC", "?full=true").await;
    assert_eq!((run.held, run.deleted), (190, 0), "{run:?}");
    let hold = h
        .engine
        .store
        .holds(Some(recsync::store::HoldStatus::Held), Some("ACC"), 10)
        .await
        .unwrap()[0]
        .id;

    // Really gone after the hold was made, but not in it: approving does not delete it.
    h.peer.set_quietly("acc", &id(0), None);
    let (status, body) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hold}/approve"),
        OPERATE_KEY,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["deleted"].as_i64(), body["skipped"].as_i64()),
        (Some(190), Some(0))
    );
    assert_eq!(live_contacts(&h).await, 10, "exactly the held deletes");
    assert!(local_of(&h, &id(0)).await.is_some(), "not a later delete");
    assert!(local_of(&h, &id(20)).await.is_some());
    assert!(local_of(&h, &id(1)).await.is_none());
    let approved = h.engine.store.hold(hold).await.unwrap().unwrap();
    assert_eq!(
        (approved.status.as_str(), approved.decided_by.as_deref()),
        ("approved", Some("operator"))
    );
    let deletes = h
        .changes("ACC")
        .await
        .into_iter()
        .filter(|c| c.action == "delete" && c.status == "success")
        .count();
    assert_eq!(deletes, 190);
    let (status, _) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/holds/{hold}/approve"),
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 409, "approved once");
    let (status, _) = api(
        &h,
        reqwest::Method::POST,
        "/api/v1/holds/999999/approve",
        ADMIN_KEY,
    )
    .await;
    assert_eq!(status, 404);
    h.stop().await;
}

#[tokio::test]
async fn a_run_whose_pages_delete_most_records_holds_them() {
    let h = seeded(100).await;
    for i in 0..60 {
        assert!(h.peer.remove("acc", &id(i)).await);
    }
    // A record deleted and created again in the same run is not deleted.
    h.peer
        .upsert("acc", Some(id(7)), obj(json!({"name": "Back again"})))
        .await;
    let run = h.run("ACC").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!((run.held, run.deleted), (59, 0), "{run:?}");
    assert_eq!(live_contacts(&h).await, 100);
    assert_eq!(
        local_of(&h, &id(7)).await.unwrap().values["name"],
        "Back again"
    );
    let warn = h
        .changes("ACC")
        .await
        .into_iter()
        .find(|c| c.name.contains("deletes held"))
        .expect("a row for the hold");
    assert_eq!(warn.status, "skipped");
    assert!(
        warn.error_message.contains("59 deletes"),
        "{}",
        warn.error_message
    );
    let hold = h
        .engine
        .store
        .holds(Some(recsync::store::HoldStatus::Held), Some("ACC"), 10)
        .await
        .unwrap();
    assert_eq!(hold.len(), 1);
    assert_eq!(hold[0].items, 59);
    // From the command line: the list needs only the database; approving runs the engine.
    // The server's deliveries of the contacts to the real-time syncs are over first: a second
    // process's writes to one SQLite file wait for the server's.
    let codes: Vec<String> = h
        .engine
        .plan()
        .syncs
        .keys()
        .map(|c| c.to_string())
        .collect();
    eventually(30, "the outbox to settle", || async {
        for c in &codes {
            if h.engine.store.outbox_depth(c).await.unwrap() > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(common::recsync_bin());
        c.args(args)
            .args(["--database-url", &h.db.url])
            .arg("--mappings")
            .arg(h.dir.path().join("mappings"))
            .current_dir(h.dir.path())
            .env_remove("RECSYNC_DATABASE_URL");
        let args = format!("{args:?}");
        async move {
            let o = common::output(c).await;
            assert!(o.status.success(), "{args}: {o:?}");
            String::from_utf8_lossy(&o.stdout).to_string()
        }
    };
    let listed = cli(&["holds"]).await;
    let id_text = hold[0].id.to_string();
    assert!(
        listed.contains(&format!("Hold {id_text} of ACC: 59 deletes, held")),
        "{listed}"
    );
    assert!(listed.contains("external A-0000 -> local"), "{listed}");
    assert!(listed.contains("... and 49 more"), "{listed}");
    assert!(
        listed.contains(&format!("recsync holds approve {id_text}")),
        "{listed}"
    );
    let approved = cli(&["holds", "approve", &id_text]).await;
    assert!(
        approved.contains(&format!("Hold {id_text} approved: 59 deleted")),
        "{approved}"
    );
    assert_eq!(live_contacts(&h).await, 41);
    // (The applied deletes go on to the real-time syncs of the contacts, where CON's own
    // guard may hold what would reach the CRM: a decision of its own.)
    assert!(
        cli(&["holds", "list", "--sync", "ACC"])
            .await
            .contains("No holds match.")
    );

    // Few deletes are applied at once: under the guard's limits nothing is held.
    for i in 60..63 {
        assert!(h.peer.remove("acc", &id(i)).await);
    }
    let run = h.run("ACC").await;
    assert_eq!((run.held, run.deleted), (0, 3), "{run:?}");
    assert_eq!(live_contacts(&h).await, 38);
    assert!(
        eventually(5, "no new hold", || async {
            let n = h
                .engine
                .store
                .holds(Some(recsync::store::HoldStatus::Held), Some("ACC"), 10)
                .await
                .unwrap()
                .len();
            Some(n)
        })
        .await
            == 0
    );
    h.stop().await;
}

#[test]
fn reconcile_needs_a_listing_and_a_guard_needs_a_limit() {
    let base = include_str!("fixtures/base.toml");
    let env = std::collections::HashMap::from([(
        "CRM_KEY".to_string(),
        "s3cr3t-crm-key-value".to_string(),
    )]);
    let compile = |extra: &str| {
        recsync::config::compile_texts(
            &[("mappings/a.toml", &format!("{base}\n{extra}"))],
            &env,
            recsync::connectors::KINDS,
        )
        .map_err(|e| e.render())
    };
    let sync = |ws_extra: &str, sync_extra: &str| {
        format!(
            r#"
[web_services.src]
url = "https://crm.example.com/fetch"
{ws_extra}

[external_models.acc]
fields = {{ uid = "char", name = "char" }}

[syncs.ACC]
model = "contact"
external_model = "acc"
web_service = "src"
direction = "to_local"
every = "1h"
propagate_deletes = true
external_ref = "uid"
fields = [{{ local = "name", external = "name" }}]
{sync_extra}
"#
        )
    };
    let err = compile(&sync("", "reconcile = \"1d\"")).unwrap_err();
    assert!(err.contains("cannot list every id"), "{err}");
    assert!(err.contains("list_url"), "{err}");
    assert!(
        err.contains("reconcile = \"1d\""),
        "the error shows the line: {err}"
    );
    let plan = compile(&sync(
        "list_url = \"https://crm.example.com/list\"",
        "reconcile = \"1d\"",
    ))
    .unwrap();
    let acc = plan.sync("ACC").unwrap();
    assert_eq!(acc.reconcile, Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(
        acc.delete_guard,
        Some(recsync::domain::plan::DeleteGuard::default()),
        "deletes propagate: the default guard"
    );
    let plan = compile(&sync("", "delete_guard = { max = 50, max_ratio = 0.05 }")).unwrap();
    let g = plan.sync("ACC").unwrap().delete_guard.unwrap();
    assert_eq!((g.max, g.max_ratio), (Some(50), Some(0.05)));
    assert!(g.holds(51, 10_000).is_some() && g.holds(50, 10_000).is_none());
    assert!(g.holds(11, 100).is_some(), "more than 5% of 100");
    for (bad, says) in [
        ("delete_guard = { max_ratio = 1.5 }", "between 0 and 1"),
        ("delete_guard = { max = -1 }", "zero or more"),
        ("delete_guard = {}", "needs `max`, `max_ratio` or both"),
        ("delete_guard = { maximum = 3 }", "maximum"),
        ("delete_guard = 3", "a table"),
    ] {
        let err = compile(&sync("", bad)).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[tokio::test]
async fn the_reconcile_interval_runs_reconciliation_on_its_own() {
    let h = Harness::with(Tweaks {
        extra_mapping: ACC.replace("reconcile = \"1d\"", "reconcile = \"1s\""),
        ..Default::default()
    })
    .await;
    for i in 0..20 {
        h.peer
            .upsert(
                "acc",
                Some(id(i)),
                obj(json!({"name": format!("Account {i}")})),
            )
            .await;
    }
    assert_eq!(h.run("ACC").await.created, 20);
    h.peer.set_quietly("acc", &id(4), None);
    let run = eventually(30, "a reconciliation to find the quiet delete", || async {
        h.engine
            .store
            .runs(Some("ACC"), None, 100)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.trigger == "reconcile" && r.finished_at.is_some() && r.missing == 1)
    })
    .await;
    assert_eq!(
        (run.status.as_str(), run.deleted),
        ("success", 1),
        "{run:?}"
    );
    assert!(local_of(&h, &id(4)).await.is_none());
    let row = h
        .changes("ACC")
        .await
        .into_iter()
        .find(|c| c.action == "delete" && c.external_id.as_deref() == Some(id(4).as_str()))
        .expect("the delete's row");
    assert_eq!(row.actor, "reconcile");
    h.stop().await;
}

#[tokio::test]
async fn deletes_collected_by_an_interrupted_run_are_decided_by_the_next() {
    let h = seeded(40).await;
    // A run that stopped before its end (a crash) had collected three deletes whose
    // confirmations the service already took.
    let hold = h
        .engine
        .store
        .open_hold("ACC", Some(999_999))
        .await
        .unwrap();
    let mut items = Vec::new();
    for i in 0..3 {
        h.peer.set_quietly("acc", &id(i), None);
        items.push(recsync::store::HoldItem {
            external_id: id(i),
            local_id: h.link("ACC", &id(i)).await.map(|l| l.local_id),
            name: String::new(),
        });
    }
    h.engine.store.add_hold_items(hold, &items).await.unwrap();
    // The next run decides them with its own: three of forty are under the guard.
    let run = h.run("ACC").await;
    assert_eq!((run.deleted, run.held), (3, 0), "{run:?}");
    for i in 0..3 {
        assert!(local_of(&h, &id(i)).await.is_none());
    }
    let adopted = h.engine.store.hold(hold).await.unwrap().unwrap();
    assert_eq!(
        (adopted.status.as_str(), adopted.run_id),
        ("applied", Some(run.id))
    );
    h.stop().await;
}

/// `resync` on a `rest` service with a `list_url`: the record is found in the listing and its
/// values win where they differ, even a change the service never reported.
#[tokio::test]
async fn resync_reads_one_record_from_the_listing() {
    let h = seeded(30).await;
    h.peer.set_quietly(
        "acc",
        &id(7),
        Some(obj(
            json!({"name": "Quietly renamed", "email": "a7@example.com"}),
        )),
    );
    let local = local_of(&h, &id(7)).await.unwrap().id;
    let (status, body) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/syncs/ACC/records/{local}/resync"),
        OPERATE_KEY,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("listing"),
        "{body}"
    );
    let rec = local_of(&h, &id(7)).await.unwrap();
    assert_eq!(rec.values["name"], "Quietly renamed");
    // One gone from the service: said so, nothing changes.
    h.peer.set_quietly("acc", &id(8), None);
    let other = local_of(&h, &id(8)).await.unwrap().id;
    let (status, body) = api(
        &h,
        reqwest::Method::POST,
        &format!("/api/v1/syncs/ACC/records/{other}/resync"),
        OPERATE_KEY,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no longer lists"),
        "{body}"
    );
    assert!(local_of(&h, &id(8)).await.is_some());
    h.stop().await;
}
