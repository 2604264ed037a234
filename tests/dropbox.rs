//! Dropbox folders as an external model, against the project's fake Dropbox over real HTTP:
//! the initial mirror, every change kind with its change-control action, moves split across
//! pages, webhook signatures and coalescing, path captures, writes back with their echoes, and
//! recovery from expired tokens, 429s, 5xx and cursor resets.

mod common;

use common::eventually;
use common::harness::{ADMIN_KEY, Harness, READ_KEY, Tweaks};
use recsync::peer::dropbox::{DbxFaults, FakeDropbox, FakeOptions, FakeState};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

const DOC_MODEL: &str = r#"
[models.doc]
display = "name"
[models.doc.fields]
name      = "char"
kind      = "char"
path      = "char"
dbx_id    = "char"
parent    = "char"
size      = "integer"
rev       = "char"
project   = "char"
po_number = "char"
vendor    = "char"
doc       = "char"

[models.client]
display = "name"
fields = { name = { type = "char", required = true }, path = "char" }

[web_services.box]
kind = "dropbox"
app_key = "fake-app-key"
app_secret = "fake-app-secret"
refresh_token = "fake-refresh-token"
api_url = "@DBX@"
"#;

/// A to_local mirror of `/Mirror` with the given page size.
fn mirror_sync(limit: usize) -> String {
    format!(
        r#"
[external_models.box_files]
kind = "dropbox"
root = "/Mirror"
recursive = true

[syncs.BOX]
model = "doc"
external_model = "box_files"
web_service = "box"
direction = "to_local"
mode = "cron"
every = "1h"
limit = {limit}
propagate_deletes = true
fields = [
  {{ local = "name",   external = "name" }},
  {{ local = "kind",   external = "tag" }},
  {{ local = "path",   external = "path" }},
  {{ local = "dbx_id", external = "id" }},
  {{ local = "parent", external = "parent" }},
  {{ local = "size",   external = "size" }},
  {{ local = "rev",    external = "rev" }},
]
"#
    )
}

struct Setup {
    h: Harness,
    fake: Arc<FakeState>,
    handle: actix_web::dev::ServerHandle,
}

impl Setup {
    async fn new(syncs: &str) -> Setup {
        Setup::prepared(syncs, |_| {}).await
    }

    /// Starts the fake, lets `prepare` fill it, then starts recsync, whose Dropbox sync takes
    /// its initial mirror at start-up; returns once that first loop has finished.
    async fn prepared(syncs: &str, prepare: impl FnOnce(&FakeState)) -> Setup {
        let fake = FakeDropbox::bind(FakeOptions::default()).unwrap();
        let url = fake.url();
        let state = fake.state.clone();
        prepare(&state);
        let handle = fake.handle();
        tokio::spawn(fake.run());
        let h = Harness::with(Tweaks {
            extra_mapping: format!("{DOC_MODEL}\n{syncs}").replace("@DBX@", &url),
            ..Default::default()
        })
        .await;
        state.set_webhook(Some(h.url("/webhooks/dropbox/box")));
        eventually(30, "the initial mirror at start-up", || async {
            let runs = h.engine.store.runs(None, None, 10).await.unwrap();
            runs.iter()
                .any(|r| r.trigger == "startup" && r.finished_at.is_some())
                .then_some(())
        })
        .await;
        Setup {
            h,
            fake: state,
            handle,
        }
    }

    async fn stop(self) {
        self.handle.stop(false).await;
        self.h.stop().await;
    }

    /// Local `doc` records by path: (dbx_id, kind, rev, and every value).
    async fn docs(&self) -> BTreeMap<String, serde_json::Map<String, Value>> {
        let mut out = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = self
                .h
                .engine
                .store
                .records_after("doc", after, 500)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            for r in page.into_iter().filter(|r| !r.deleted) {
                let path = r.values["path"].as_str().unwrap_or_default().to_string();
                assert!(
                    out.insert(path.clone(), r.values).is_none(),
                    "two live records for {path}"
                );
            }
        }
        out
    }

    /// The fake's entries under `/Mirror` (not the root itself): path → (id, tag, rev).
    fn fake_tree(&self) -> BTreeMap<String, (String, String, Option<String>)> {
        self.fake_tree_under("/mirror/")
    }

    /// The fake's entries below a lowercase folder path.
    fn fake_tree_under(&self, prefix: &str) -> BTreeMap<String, (String, String, Option<String>)> {
        self.fake
            .entries()
            .into_iter()
            .filter(|(p, _)| p.to_lowercase().starts_with(prefix))
            .collect()
    }

    async fn tree(&self, code: &str) -> Value {
        let r = self
            .h
            .client
            .get(self.h.url(&format!("/api/v1/syncs/{code}/tree")))
            .header("X-Api-Key", READ_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Waits for the webhook-triggered runs of `code` to reach `n` finished.
    async fn webhook_runs(&self, code: &str, n: usize) -> Vec<recsync::store::Run> {
        eventually(30, "the webhook runs to finish", || async {
            let runs: Vec<_> = self
                .h
                .engine
                .store
                .runs(Some(code), None, 1000)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.trigger == "webhook")
                .collect();
            (runs.len() >= n && runs.iter().all(|r| r.finished_at.is_some())).then_some(runs)
        })
        .await
    }
}

/// Flattens the tree endpoint's answer: path → (id, tag, rev).
fn flatten(node: &Value, out: &mut BTreeMap<String, (String, String, Option<String>)>) {
    for c in node["children"].as_array().into_iter().flatten() {
        out.insert(
            c["path"].as_str().unwrap().to_string(),
            (
                c["id"].as_str().unwrap().to_string(),
                c["tag"].as_str().unwrap().to_string(),
                c["rev"].as_str().map(str::to_string),
            ),
        );
        flatten(c, out);
    }
}

fn actions(changes: &[recsync::store::Change], external_id: &str) -> Vec<String> {
    let mut v: Vec<String> = changes
        .iter()
        .filter(|c| c.external_id.as_deref() == Some(external_id))
        .map(|c| c.action.to_string())
        .collect();
    v.reverse();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_initial_mirror_of_a_large_tree_matches_the_fake_exactly() {
    let s = Setup::prepared(&mirror_sync(100), |fake| {
        fake.mkdir("/Mirror").unwrap();
        fake.put("/Outside/ignored.txt", b"not mirrored").unwrap();
        for f in 0..20 {
            fake.mkdir(&format!("/Mirror/Folder {f:02}")).unwrap();
            for i in 0..25 {
                fake.put(
                    &format!("/Mirror/Folder {f:02}/File {i:02}.txt"),
                    format!("content {f} {i}").as_bytes(),
                )
                .unwrap();
            }
        }
    })
    .await;
    // The initial mirror was taken at start-up, without a notification or a schedule.
    let runs = s.h.engine.store.runs(Some("BOX"), None, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    let run = runs.into_iter().next().unwrap();
    assert_eq!(run.trigger, "startup");
    assert_eq!(run.status, "success", "{run:?}");
    let expected = s.fake_tree();
    assert_eq!(expected.len(), 520);
    assert_eq!(run.created, 520, "{run:?}");
    // Several pages: one list_folder, then continues.
    assert_eq!(s.fake.calls("files/list_folder"), 1);
    assert!(s.fake.calls("files/list_folder/continue") >= 5);

    let mut got = BTreeMap::new();
    flatten(&s.tree("BOX").await, &mut got);
    assert_eq!(got, expected, "the tree endpoint matches the fake");

    let docs = s.docs().await;
    let local: BTreeMap<String, (String, String, Option<String>)> = docs
        .iter()
        .map(|(p, v)| {
            (
                p.clone(),
                (
                    v["dbx_id"].as_str().unwrap().to_string(),
                    v["kind"].as_str().unwrap().to_string(),
                    v.get("rev").and_then(Value::as_str).map(str::to_string),
                ),
            )
        })
        .collect();
    assert_eq!(local, expected, "the local records match the fake");
    let f = &docs["/Mirror/Folder 03/File 07.txt"];
    assert_eq!(f["parent"], "/Mirror/Folder 03");
    assert_eq!(f["size"], json!("content 3 7".len()));

    // A second run has nothing to do.
    let again = s.h.run("BOX").await;
    assert_eq!(
        (again.created, again.updated, again.deleted),
        (0, 0, 0),
        "{again:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_kind_arrives_by_webhook_with_its_action() {
    let s = Setup::new(&mirror_sync(100)).await;
    s.fake.mkdir("/Mirror/A").unwrap();
    s.fake.mkdir("/Mirror/B").unwrap();
    let keep = s.fake.put("/Mirror/A/keep.txt", b"v1").unwrap();
    let doomed = s.fake.mkdir("/Mirror/Doomed").unwrap();
    let c1 = s.fake.put("/Mirror/Doomed/one.txt", b"1").unwrap();
    let c2 = s.fake.put("/Mirror/Doomed/sub/two.txt", b"2").unwrap();
    let sub = s.fake.id_of("/Mirror/Doomed/sub").unwrap();
    s.h.run("BOX").await;

    let mut n = 0;
    let mut step = async |what: &str, f: &dyn Fn()| {
        f();
        assert_eq!(s.fake.notify().await, Some(200), "{what}");
        n += 1;
        s.webhook_runs("BOX", n).await;
    };
    step("add", &|| {
        s.fake.put("/Mirror/A/new.txt", b"hello").unwrap();
    })
    .await;
    let new = s.fake.id_of("/Mirror/A/new.txt").unwrap();
    step("edit", &|| {
        s.fake.put("/Mirror/A/keep.txt", b"v2").unwrap();
    })
    .await;
    step("rename", &|| {
        s.fake
            .mv("/Mirror/A/new.txt", "/Mirror/A/renamed.txt")
            .unwrap()
    })
    .await;
    step("move", &|| {
        s.fake
            .mv("/Mirror/A/keep.txt", "/Mirror/B/keep.txt")
            .unwrap()
    })
    .await;
    step("delete file", &|| s.fake.rm("/Mirror/B/keep.txt").unwrap()).await;
    step("delete folder", &|| s.fake.rm("/Mirror/Doomed").unwrap()).await;

    let log = s.h.changes("BOX").await;
    assert_eq!(actions(&log, &new), ["create", "rename"]);
    assert_eq!(actions(&log, &keep), ["create", "update", "move", "delete"]);
    for id in [&doomed, &c1, &c2, &sub] {
        assert_eq!(actions(&log, id), ["create", "delete"], "{id}");
    }
    let docs = s.docs().await;
    assert_eq!(
        docs.keys().cloned().collect::<Vec<_>>(),
        ["/Mirror/A", "/Mirror/A/renamed.txt", "/Mirror/B"]
    );
    assert_eq!(docs["/Mirror/A/renamed.txt"]["name"], "renamed.txt");
    let mut got = BTreeMap::new();
    flatten(&s.tree("BOX").await, &mut got);
    assert_eq!(got, s.fake_tree());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_split_across_pages_is_still_a_move_in_either_order() {
    // One entry per page: the deleted entry and the new one always fall in different pages.
    let s = Setup::new(&mirror_sync(1)).await;
    s.fake.mkdir("/Mirror/In").unwrap();
    s.fake.mkdir("/Mirror/Out").unwrap();
    let a = s.fake.put("/Mirror/In/a.txt", b"a").unwrap();
    let b = s.fake.put("/Mirror/In/b.txt", b"b").unwrap();
    s.h.run("BOX").await;

    s.fake.mv("/Mirror/In/a.txt", "/Mirror/Out/a.txt").unwrap();
    let run = s.h.run("BOX").await;
    assert_eq!(run.pulled, 2, "deleted entry and new entry, one page each");
    s.fake.set_faults(DbxFaults {
        moves_new_first: true,
        ..Default::default()
    });
    s.fake.mv("/Mirror/In/b.txt", "/Mirror/Out/b.txt").unwrap();
    s.h.run("BOX").await;

    let log = s.h.changes("BOX").await;
    assert_eq!(actions(&log, &a), ["create", "move"]);
    assert_eq!(actions(&log, &b), ["create", "move"]);
    let docs = s.docs().await;
    assert_eq!(docs["/Mirror/Out/a.txt"]["dbx_id"], json!(a));
    assert_eq!(docs["/Mirror/Out/b.txt"]["dbx_id"], json!(b));
    assert!(!docs.contains_key("/Mirror/In/a.txt"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_webhook_verifies_signatures_and_coalesces_a_burst_into_one_loop() {
    let s = Setup::new(&mirror_sync(100)).await;
    s.fake.mkdir("/Mirror/X").unwrap();
    s.h.run("BOX").await;
    let c = &s.h.client;
    let url = s.h.url("/webhooks/dropbox/box");

    // The challenge is echoed as plain text.
    let r = c
        .get(format!("{url}?challenge=abc123"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.unwrap(), "abc123");
    let r = c
        .get(s.h.url("/webhooks/dropbox/nosuch?challenge=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A bad or missing signature: 403 and nothing runs.
    let body = r#"{"list_folder":{"accounts":["dbid:AAfakeaccount"]},"delta":{"users":[12345]}}"#;
    for sig in [Some("00".repeat(32)), Some("zz".into()), None] {
        let mut req = c.post(&url).body(body);
        if let Some(sig) = sig {
            req = req.header("X-Dropbox-Signature", sig);
        }
        assert_eq!(req.send().await.unwrap().status(), 403);
    }
    let wrong_key = recsync::peer::dropbox::sign(b"another-secret", body.as_bytes());
    let r = c
        .post(&url)
        .header("X-Dropbox-Signature", wrong_key)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let continues = s.fake.calls("files/list_folder/continue");
    s.settled().await;
    assert!(
        s.webhook_runs_now().await.is_empty(),
        "a refused notification ran nothing"
    );
    assert_eq!(s.fake.calls("files/list_folder/continue"), continues);

    // A burst of 50 valid notifications: one loop.
    s.fake.put("/Mirror/X/burst.txt", b"1").unwrap();
    let sig = recsync::peer::dropbox::sign(b"fake-app-secret", body.as_bytes());
    let sends = (0..50).map(|_| {
        c.post(&url)
            .header("X-Dropbox-Signature", &sig)
            .body(body)
            .send()
    });
    for r in futures_util::future::join_all(sends).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let runs = s.webhook_runs("BOX", 1).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].created, 1);
    // Nothing else was scheduled by the burst.
    s.settled().await;
    assert_eq!(s.webhook_runs_now().await.len(), 1);
    assert_eq!(s.fake.calls("files/list_folder/continue"), continues + 1);
    let metrics = c
        .get(s.h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "recsync_dropbox_notifications_total{web_service=\"box\",outcome=\"coalesced\"}",
        "recsync_dropbox_notifications_total{web_service=\"box\",outcome=\"bad_signature\"}",
        "recsync_dropbox_cursor_lag_seconds_count{sync=\"BOX\"}",
        "recsync_dropbox_loops_total{sync=\"BOX\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} in /metrics");
    }
    s.stop().await;
}

impl Setup {
    /// Waits until every notification received is taken in: no round debouncing, waiting
    /// for a run or running.
    async fn settled(&self) {
        eventually(30, "the notifications to be taken in", || async {
            self.h.engine.notifications_settled().then_some(())
        })
        .await;
    }

    async fn webhook_runs_now(&self) -> Vec<recsync::store::Run> {
        self.h
            .engine
            .store
            .runs(Some("BOX"), None, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.trigger == "webhook")
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pattern_captures_become_fields_including_literals_inside_a_segment() {
    let s = Setup::new(
        r#"
[external_models.po_files]
kind = "dropbox"
root = "/Projects"
recursive = true
pattern = "/{project}/{po_number}_{vendor}/{doc}"

[syncs.PO]
model = "doc"
external_model = "po_files"
web_service = "box"
direction = "to_local"
mode = "cron"
every = "1h"
fields = [
  { local = "project",   external = "project" },
  { local = "po_number", external = "po_number" },
  { local = "vendor",    external = "vendor" },
  { local = "doc",       external = "doc" },
  { local = "path",      external = "path" },
  { local = "name",      external = "name" },
]
"#,
    )
    .await;
    s.fake
        .put("/Projects/Apollo/PO-1234_ACME Corp/invoice.pdf", b"%PDF")
        .unwrap();
    s.fake
        .put("/Projects/Apollo/PO-77_Globex/delivery note.pdf", b"%PDF")
        .unwrap();
    s.fake.put("/Projects/readme.txt", b"no match").unwrap();
    s.fake
        .put("/Projects/Apollo/nounderscore/x.pdf", b"no match")
        .unwrap();
    let run = s.h.run("PO").await;
    assert_eq!(run.created, 2, "{run:?}");
    // The folders on the way and the two entries that do not fit are counted as skipped.
    assert!(run.skipped >= 2, "{run:?}");
    let docs = s.docs().await;
    let a = &docs["/Projects/Apollo/PO-1234_ACME Corp/invoice.pdf"];
    assert_eq!(
        (&a["project"], &a["po_number"], &a["vendor"], &a["doc"]),
        (
            &json!("Apollo"),
            &json!("PO-1234"),
            &json!("ACME Corp"),
            &json!("invoice.pdf")
        )
    );
    let b = &docs["/Projects/Apollo/PO-77_Globex/delivery note.pdf"];
    assert_eq!(
        (&b["po_number"], &b["vendor"]),
        (&json!("PO-77"), &json!("Globex"))
    );
    assert_eq!(docs.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_records_create_rename_and_delete_folders_and_echoes_cause_nothing() {
    let s = Setup::new(
        r#"
[external_models.client_folders]
kind = "dropbox"
root = "/Clients"
recursive = false
pattern = "/{client}"

[syncs.CLIENTS]
model = "client"
external_model = "client_folders"
web_service = "box"
direction = "bidirectional"
mode = "realtime"
schedule = "0 0 3 * * *"
propagate_deletes = true
fields = [
  { local = "name", external = "client" },
  { local = "path", external = "path", direction = "to_local" },
]
"#,
    )
    .await;
    s.fake.mkdir("/Clients").unwrap();
    // The first loop takes the (empty) initial mirror.
    s.h.run("CLIENTS").await;
    let c = &s.h.client;
    let writes = |fake: &FakeState| {
        [
            "files/create_folder_v2",
            "files/move_v2",
            "files/delete_v2",
            "files/upload",
        ]
        .iter()
        .map(|r| fake.calls(r))
        .sum::<usize>()
    };

    let r = c
        .post(s.h.url("/api/v1/models/client/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let folder = eventually(20, "the folder to be created", || async {
        s.fake.id_of("/Clients/Acme")
    })
    .await;
    // The fake notified recsync of its own write: the echo is taken in and ignored.
    s.webhook_runs("CLIENTS", 1).await;

    s.h.patch_record("client", id, json!({"name": "Acme Ltd"}))
        .await;
    eventually(20, "the folder to be renamed", || async {
        (s.fake.id_of("/Clients/Acme Ltd").as_deref() == Some(folder.as_str())
            && s.fake.id_of("/Clients/Acme").is_none())
        .then_some(())
    })
    .await;
    s.webhook_runs("CLIENTS", 2).await;

    let r = c
        .delete(s.h.url(&format!("/api/v1/models/client/records/{id}")))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    eventually(20, "the folder to be deleted", || async {
        s.fake.id_of("/Clients/Acme Ltd").is_none().then_some(())
    })
    .await;
    s.webhook_runs("CLIENTS", 3).await;
    s.h.engine.drain().await.unwrap();

    // One write each, and no more: no echo caused another.
    assert_eq!(s.fake.calls("files/create_folder_v2"), 1);
    assert_eq!(s.fake.calls("files/move_v2"), 1);
    assert_eq!(s.fake.calls("files/delete_v2"), 1);
    assert_eq!(writes(&s.fake), 3);
    let log = s.h.changes("CLIENTS").await;
    let summary: Vec<(String, String)> = log
        .iter()
        .rev()
        .filter(|c| c.status != "skipped")
        .map(|c| (c.direction.to_string(), c.action.to_string()))
        .collect();
    assert_eq!(
        summary,
        [
            ("local_to_external".to_string(), "create".to_string()),
            ("local_to_external".to_string(), "rename".to_string()),
            ("local_to_external".to_string(), "delete".to_string()),
        ],
        "{log:#?}"
    );
    for run in s.webhook_runs("CLIENTS", 3).await {
        assert_eq!(
            (run.created, run.updated, run.deleted, run.failed),
            (0, 0, 0, 0),
            "echo runs change nothing: {run:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_tokens_rate_limits_server_errors_and_cursor_resets_lose_and_duplicate_nothing() {
    let s = Setup::new(&mirror_sync(3)).await;
    for i in 0..8 {
        s.fake
            .put(&format!("/Mirror/f{i}.txt"), format!("{i}").as_bytes())
            .unwrap();
    }
    s.h.run("BOX").await;
    let tokens = s.fake.calls("oauth2/token");
    assert_eq!(tokens, 1, "one token for the first run");

    // Expired token, both kinds of 429 and a 500, all on the next calls.
    s.fake.set_faults(DbxFaults {
        expire_tokens: true,
        rate_limit_json: 1,
        rate_limit_text: 1,
        server_errors: 1,
        retry_after: 1,
        ..Default::default()
    });
    s.fake.put("/Mirror/added.txt", b"new").unwrap();
    let run = s.h.run("BOX").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(run.created, 1);
    assert_eq!(s.fake.calls("oauth2/token"), tokens + 1, "one refresh");

    // Cursor reset, with changes made meanwhile: listed again and reconciled.
    s.fake.set_faults(DbxFaults {
        reset_cursors: true,
        ..Default::default()
    });
    s.fake.put("/Mirror/after-reset.txt", b"r").unwrap();
    s.fake.rm("/Mirror/f0.txt").unwrap();
    s.fake.mv("/Mirror/f1.txt", "/Mirror/Sub/f1.txt").unwrap();
    s.fake.put("/Mirror/f2.txt", b"edited").unwrap();
    let lists = s.fake.calls("files/list_folder");
    let run = s.h.run("BOX").await;
    assert_eq!(run.status, "success", "{run:?}");
    assert_eq!(s.fake.calls("files/list_folder"), lists + 1, "listed again");

    let docs = s.docs().await;
    let local: BTreeMap<String, String> = docs
        .iter()
        .map(|(p, v)| (p.clone(), v["dbx_id"].as_str().unwrap().to_string()))
        .collect();
    let fake: BTreeMap<String, String> = s
        .fake_tree()
        .into_iter()
        .map(|(p, (id, _, _))| (p, id))
        .collect();
    assert_eq!(local, fake, "nothing lost, nothing extra");
    let log = s.h.changes("BOX").await;
    let f1 = s.fake.id_of("/Mirror/Sub/f1.txt").unwrap();
    assert_eq!(actions(&log, &f1), ["create", "move"]);
    for (path, id) in &fake {
        let creates = log
            .iter()
            .filter(|c| c.external_id.as_deref() == Some(id) && c.action == "create")
            .count();
        assert_eq!(creates, 1, "{path} created exactly once");
    }
    assert_eq!(docs["/Mirror/f2.txt"]["size"], json!(6));
    assert!(
        log.iter().any(|c| c.name == "Dropbox cursor reset"),
        "the reset is in the log"
    );
    let mut got = BTreeMap::new();
    flatten(&s.tree("BOX").await, &mut got);
    assert_eq!(got, s.fake_tree());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_upload_their_bytes_and_never_overwrite_a_change_recsync_has_not_seen() {
    let s = Setup::new(
        r#"
[models.letter]
display = "name"
fields = { name = { type = "char", required = true }, body = "binary" }

[external_models.letters]
kind = "dropbox"
root = "/Letters"
pattern = "/{file}.txt"

[syncs.LETTERS]
model = "letter"
external_model = "letters"
web_service = "box"
direction = "to_external"
mode = "realtime"
propagate_deletes = true
fields = [
  { local = "name", external = "file" },
  { local = "body", external = "content" },
]
"#,
    )
    .await;
    s.fake.set_webhook(None);
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let c = &s.h.client;
    let r = c
        .post(s.h.url("/api/v1/models/letter/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "welcome", "body": b64(b"Dear customer")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    eventually(20, "the file to be uploaded", || async {
        (s.fake.content("/Letters/welcome.txt").as_deref() == Some(b"Dear customer".as_slice()))
            .then_some(())
    })
    .await;
    let uploads = |s: &Setup| -> Vec<Value> {
        s.fake
            .all_calls()
            .into_iter()
            .filter(|(r, a)| r == "files/upload" && a.get("fault").is_none())
            .map(|(_, a)| a)
            .collect()
    };
    // `add` (the default, which the Rust SDK leaves out): never over an existing file.
    let first = &uploads(&s)[0];
    assert!(first.get("mode").is_none_or(|m| m == "add"), "{first}");

    // New bytes go over the revision recsync knows.
    let rev = s.fake.entries()["/Letters/welcome.txt"].2.clone().unwrap();
    s.h.patch_record("letter", id, json!({"body": b64(b"Dear customer, v2")}))
        .await;
    eventually(20, "the new bytes", || async {
        (s.fake.content("/Letters/welcome.txt").as_deref() == Some(b"Dear customer, v2".as_slice()))
            .then_some(())
    })
    .await;
    assert_eq!(
        uploads(&s)[1]["mode"],
        json!({".tag": "update", "update": rev})
    );

    // Someone edits the file in Dropbox; recsync has not seen it (no webhook here), so its
    // next upload is refused rather than overwriting that edit.
    s.fake
        .put("/Letters/welcome.txt", b"edited by a person")
        .unwrap();
    s.h.patch_record("letter", id, json!({"body": b64(b"Dear customer, v3")}))
        .await;
    let failed = eventually(20, "the refused upload to be logged", || async {
        s.h.changes("LETTERS")
            .await
            .into_iter()
            .find(|c| c.status == "failed")
    })
    .await;
    assert!(
        failed.error_message.contains("changed in Dropbox"),
        "{failed:?}"
    );
    assert_eq!(
        s.fake.content("/Letters/welcome.txt").as_deref(),
        Some(b"edited by a person".as_slice())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_flood_is_absorbed_without_piling_up_work() {
    let s = Setup::new(&mirror_sync(100)).await;
    s.fake.mkdir("/Mirror/F").unwrap();
    s.h.run("BOX").await;
    let body = r#"{"list_folder":{"accounts":["dbid:AAfakeaccount"]},"delta":{"users":[12345]}}"#;
    let sig = recsync::peer::dropbox::sign(b"fake-app-secret", body.as_bytes());
    let url = s.h.url("/webhooks/dropbox/box");
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let started = std::time::Instant::now();
    // 2,000 notifications in 20 rounds, with a change arriving before each.
    for round in 0..20 {
        s.fake
            .put(&format!("/Mirror/F/{round}.txt"), b"flood")
            .unwrap();
        let sends = (0..100).map(|_| {
            s.h.client
                .post(&url)
                .header("X-Dropbox-Signature", &sig)
                .body(body)
                .send()
        });
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    let flood = started.elapsed();
    // Everything arrives...
    eventually(30, "the flood's changes to arrive", || async {
        let docs = s.docs().await;
        (0..20)
            .all(|r| docs.contains_key(&format!("/Mirror/F/{r}.txt")))
            .then_some(())
    })
    .await;
    // ...through a handful of loops (one per debounce window at most), not thousands.
    s.settled().await;
    let runs = s.webhook_runs_now().await;
    let windows =
        (flood.as_secs_f64() / recsync::engine::WEBHOOK_DEBOUNCE.as_secs_f64()).ceil() as usize + 2;
    assert!(
        !runs.is_empty() && runs.len() <= windows,
        "{} loops for {flood:?}",
        runs.len()
    );
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    let ready = s.h.client.get(s.h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    s.stop().await;
}

/// A folder sync that receives and sends, with the given priority, and the webhook off: what
/// happens in Dropbox is not pulled until recsync reads it itself.
async fn two_way_clients(priority: &str) -> (Setup, i64, String) {
    let s = Setup::new(&format!(
        r#"
[external_models.client_folders]
kind = "dropbox"
root = "/Clients"
recursive = false
pattern = "/{{client}}"

[syncs.CLIENTS]
model = "client"
external_model = "client_folders"
web_service = "box"
direction = "bidirectional"
mode = "realtime"
schedule = "0 0 3 * * *"
priority = "{priority}"
propagate_deletes = true
fields = [
  {{ local = "name", external = "client" }},
  {{ local = "path", external = "path", direction = "to_local" }},
]
"#
    ))
    .await;
    s.fake.mkdir("/Clients").unwrap();
    let folder = s.fake.mkdir("/Clients/Acme").unwrap();
    s.h.run("CLIENTS").await;
    let id =
        s.h.link("CLIENTS", &folder)
            .await
            .expect("Acme is linked")
            .local_id;
    s.fake.set_webhook(None);
    (s, id, folder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rename_never_overwrites_a_dropbox_rename_it_has_not_pulled() {
    let (s, id, folder) = two_way_clients("external").await;
    // Renamed in Dropbox, unseen; then renamed on the hub.
    s.fake.mv("/Clients/Acme", "/Clients/Acme Corp").unwrap();
    s.h.patch_record("client", id, json!({"name": "Acme Ltd"}))
        .await;
    let conflict = eventually(20, "the conflict row", || async {
        s.h.changes("CLIENTS")
            .await
            .into_iter()
            .find(|c| c.action == "conflict")
    })
    .await;
    s.h.engine.drain().await.unwrap();
    // Dropbox wins: its folder keeps its name, and the hub takes it.
    assert_eq!(
        s.fake.id_of("/Clients/Acme Corp").as_deref(),
        Some(folder.as_str())
    );
    assert!(s.fake.id_of("/Clients/Acme Ltd").is_none());
    assert_eq!(s.fake.calls("files/move_v2"), 0, "recsync moved nothing");
    let r =
        s.h.engine
            .store
            .get_record("client", id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(r.values["name"], "Acme Corp", "{conflict:?}");
    assert_eq!(r.values["path"], "/Clients/Acme Corp");
    // The next pull finds nothing left to do.
    s.fake.set_webhook(Some(s.h.url("/webhooks/dropbox/box")));
    let run = s.h.run("CLIENTS").await;
    assert_eq!(
        (run.created, run.updated, run.deleted),
        (0, 0, 0),
        "{run:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rename_made_between_the_read_and_the_move_is_not_written_over() {
    let (s, id, folder) = two_way_clients("external").await;
    // The read before sending sees Acme as it was; a person renames it just before
    // recsync's move reaches Dropbox.
    s.fake.set_faults(DbxFaults {
        move_before_next_move: Some(("/Clients/Acme".into(), "/Clients/Acme Corp".into())),
        ..Default::default()
    });
    s.h.patch_record("client", id, json!({"name": "Acme Ltd"}))
        .await;
    let conflict = eventually(30, "the conflict row", || async {
        s.h.changes("CLIENTS")
            .await
            .into_iter()
            .find(|c| c.action == "conflict")
    })
    .await;
    s.h.engine.drain().await.unwrap();
    // The move named the path recsync last saw, so it failed instead of renaming the
    // person's folder; Dropbox wins by priority, and the hub takes its name.
    assert_eq!(
        s.fake.id_of("/Clients/Acme Corp").as_deref(),
        Some(folder.as_str()),
        "{:?}",
        s.fake.entries()
    );
    assert!(s.fake.id_of("/Clients/Acme Ltd").is_none());
    let r =
        s.h.engine
            .store
            .get_record("client", id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(r.values["name"], "Acme Corp", "{conflict:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_local_priority_the_hub_rename_goes_out_after_reading_dropbox() {
    let (s, id, folder) = two_way_clients("local").await;
    s.fake.mv("/Clients/Acme", "/Clients/Acme Corp").unwrap();
    s.h.patch_record("client", id, json!({"name": "Acme Ltd"}))
        .await;
    eventually(20, "the hub's name in Dropbox", || async {
        (s.fake.id_of("/Clients/Acme Ltd").as_deref() == Some(folder.as_str())).then_some(())
    })
    .await;
    s.h.engine.drain().await.unwrap();
    assert!(s.fake.id_of("/Clients/Acme Corp").is_none());
    let log = s.h.changes("CLIENTS").await;
    assert!(
        log.iter().any(|c| c.action == "conflict"),
        "the overwritten rename is on record: {log:#?}"
    );
    let r =
        s.h.engine
            .store
            .get_record("client", id)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(r.values["name"], "Acme Ltd");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_finds_its_folder_by_match_on_instead_of_making_a_second() {
    let s = Setup::new(
        r#"
[models.account]
display = "name"
fields = { name = { type = "char", required = true }, code = "char" }

[external_models.account_folders]
kind = "dropbox"
root = "/Accounts"
recursive = false
pattern = "/{code} - {client}"

[syncs.ACCOUNTS]
model = "account"
external_model = "account_folders"
web_service = "box"
direction = "bidirectional"
mode = "realtime"
schedule = "0 0 3 * * *"
priority = "local"
match_on = ["code"]
fields = [
  { local = "name", external = "client" },
  { local = "code", external = "code" },
]
"#,
    )
    .await;
    s.fake.mkdir("/Accounts").unwrap();
    s.h.run("ACCOUNTS").await;
    s.fake.set_webhook(None);
    // Made in Dropbox after the first run, not pulled yet.
    let folder = s.fake.mkdir("/Accounts/C42 - Acme").unwrap();
    let r =
        s.h.client
            .post(s.h.url("/api/v1/models/account/records"))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&json!({"name": "Acme Ltd", "code": "c42"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let link = eventually(20, "the record linked to the folder", || async {
        s.h.link("ACCOUNTS", &folder).await
    })
    .await;
    assert_eq!(link.local_id, id);
    s.h.engine.drain().await.unwrap();
    assert_eq!(
        s.fake.calls("files/create_folder_v2"),
        0,
        "no second folder"
    );
    // Linked and merged: the hub's name (priority local) goes out over the same folder.
    eventually(20, "the folder renamed to the hub's name", || async {
        (s.fake.id_of("/Accounts/C42 - Acme Ltd").as_deref() == Some(folder.as_str())
            || s.fake.id_of("/Accounts/c42 - Acme Ltd").as_deref() == Some(folder.as_str()))
        .then_some(())
    })
    .await;
    let under: Vec<String> = s.fake_tree_under("/accounts/").into_keys().collect();
    assert_eq!(under.len(), 1, "{under:?}");
    let log = s.h.changes("ACCOUNTS").await;
    assert!(log.iter().any(|c| c.action == "link"), "{log:#?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_dropbox_refuses_go_out_as_lookalikes_and_come_back_as_they_were() {
    // The folders exist before recsync starts (its initial mirror takes them), and Dropbox's
    // notifications are off: every run here is one the test starts, none is already running.
    let s = Setup::prepared(
        r#"
[external_models.client_folders]
kind = "dropbox"
root = "/Clients"
recursive = false
pattern = "/{client}"
names = "lookalike"

[external_models.plain_folders]
kind = "dropbox"
root = "/Plain"
recursive = false
pattern = "/{client}"

[syncs.CLIENTS]
model = "client"
external_model = "client_folders"
web_service = "box"
direction = "bidirectional"
mode = "realtime"
schedule = "0 0 3 * * *"
propagate_deletes = true
fields = [
  { local = "name", external = "client" },
  { local = "path", external = "path", direction = "to_local" },
]

[syncs.PLAIN]
model = "client"
external_model = "plain_folders"
web_service = "box"
direction = "to_external"
mode = "realtime"
fields = [{ local = "name", external = "client" }]
"#,
        |fake| {
            fake.mkdir("/Clients").unwrap();
            fake.mkdir("/Plain").unwrap();
        },
    )
    .await;
    s.fake.set_webhook(None);
    let create = |name: &'static str| s.h.create_record("client", json!({ "name": name }));
    let acme = create("ACME / Sons").await;
    let dots = create("..").await;
    let odd = create("back\\slash and space ").await;
    for path in [
        "/Clients/ACME ／ Sons",
        "/Clients/．．",
        "/Clients/back＼slash and space␠",
    ] {
        eventually(20, "the folder to be created", || async {
            s.fake.id_of(path)
        })
        .await;
    }
    // Without `names`, a value with a `/` or a `..` is refused with the way out named (the
    // plain name goes; so does the third, as before: the default is unchanged).
    let plain = create("Plain Name").await;
    eventually(20, "the plain folder", || async {
        s.fake.id_of("/Plain/Plain Name")
    })
    .await;
    let dead = eventually(20, "the refused deliveries to be dead letters", || async {
        let dead =
            s.h.engine
                .store
                .list_outbox(
                    Some(recsync::store::OutboxStatus::Dead),
                    Some("PLAIN"),
                    0,
                    10,
                )
                .await
                .unwrap();
        (dead.len() == 2).then_some(dead)
    })
    .await;
    for e in &dead {
        assert!([acme, dots].contains(&e.local_id), "{e:?}");
        let err = e.last_error.as_deref().unwrap_or_default();
        assert!(
            err.contains("cannot be a name in Dropbox") && err.contains("names = \"lookalike\""),
            "{err}"
        );
    }
    assert!(s.fake.id_of("/Plain/ACME ").is_none());
    let _ = plain;
    s.h.engine.drain().await.unwrap();

    // Read back, the folders are the records as they are: nothing to update, here or there.
    let moves = s.fake.calls("files/move_v2");
    let run = s.h.run_with("CLIENTS", "?full=true").await;
    assert_eq!(
        (
            run.created,
            run.updated,
            run.deleted,
            run.failed,
            run.different
        ),
        (0, 0, 0, 0, 0),
        "{run:?}"
    );
    for (id, name) in [
        (acme, "ACME / Sons"),
        (dots, ".."),
        (odd, "back\\slash and space "),
    ] {
        let r =
            s.h.engine
                .store
                .get_record("client", id)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(r.values["name"], name, "{:?}", r.values);
    }
    assert_eq!(s.fake.calls("files/move_v2"), moves, "nothing renamed back");

    // A folder renamed by hand with a look-alike in its name: the record takes the `/`.
    s.fake
        .mv(
            "/Clients/ACME ／ Sons",
            "/Clients/ACME ／ Sons ／ Daughters",
        )
        .unwrap();
    let run = s.h.run("CLIENTS").await;
    assert_eq!((run.updated, run.failed), (1, 0), "{run:?}");
    let r =
        s.h.engine
            .store
            .get_record("client", acme)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(r.values["name"], "ACME / Sons / Daughters");
    assert_eq!(r.values["path"], "/Clients/ACME ／ Sons ／ Daughters");
    // And a rename on the hub goes out in look-alikes.
    s.h.patch_record("client", acme, json!({"name": "ACME/Co"}))
        .await;
    eventually(20, "the folder to be renamed", || async {
        s.fake.id_of("/Clients/ACME／Co")
    })
    .await;
    s.h.engine.drain().await.unwrap();
    let run = s.h.run("CLIENTS").await;
    assert_eq!(
        (run.created, run.updated, run.deleted),
        (0, 0, 0),
        "{run:?}"
    );
    let r =
        s.h.engine
            .store
            .get_record("client", acme)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(r.values["name"], "ACME/Co");
    s.stop().await;
}
