//! Listing ids through the connector interface (`Connector::list_ids`): a Dropbox sync lists
//! every entry it takes, page by page, against the fake Dropbox; a `rest` service with a
//! `list_url` lists its records page by page against the reference peer; a connector that
//! cannot list says so, naming its kind.

mod common;

use recsync::peer::dropbox::{FakeDropbox, FakeOptions};
use std::collections::{BTreeSet, HashMap};

const MAPPING: &str = r#"
[models.doc]
display = "name"
fields = { name = "char", path = "char" }

[web_services.box]
kind = "dropbox"
app_key = "fake-app-key"
app_secret = "fake-app-secret"
refresh_token = "fake-refresh-token"
api_url = "@DBX@"

[web_services.peer]
url = "http://127.0.0.1:9/api/pull/fetch"

[external_models.box_files]
kind = "dropbox"
root = "/Root"
recursive = true

[external_models.remote_doc]
fields = { uid = "char", name = "char" }

[syncs.BOX]
model = "doc"
external_model = "box_files"
web_service = "box"
direction = "to_local"
mode = "realtime"
limit = 2
fields = [{ local = "name", external = "name" }, { local = "path", external = "path" }]

[syncs.PULL]
model = "doc"
external_model = "remote_doc"
web_service = "peer"
direction = "to_local"
mode = "cron"
every = "1h"
external_ref = "uid"
fields = [{ local = "name", external = "name" }]
"#;

async fn all_ids(
    c: &dyn recsync::connectors::Connector,
    sync: &recsync::domain::plan::Sync,
    plan: &recsync::domain::Plan,
) -> (BTreeSet<String>, usize) {
    let mut ids = BTreeSet::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (page, next) = c.list_ids(sync, plan, after).await.unwrap();
        pages += 1;
        ids.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => return (ids, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropbox_sync_lists_every_entry_it_takes_page_by_page() {
    let fake = FakeDropbox::bind(FakeOptions::default()).unwrap();
    let url = fake.url();
    let state = fake.state.clone();
    tokio::spawn(fake.run());
    state.mkdir("/Root").unwrap();
    state.mkdir("/Root/A").unwrap();
    state.put("/Root/A/x.txt", b"x").unwrap();
    state.put("/Root/b.txt", b"b").unwrap();
    state.put("/Root/c.txt", b"c").unwrap();
    state.mkdir("/Other").unwrap();
    state.put("/Other/d.txt", b"d").unwrap();

    let plan = recsync::config::compile_texts(
        &[("m.toml", &MAPPING.replace("@DBX@", &url))],
        &HashMap::<String, String>::new(),
        recsync::connectors::KINDS,
    )
    .unwrap();
    let http = reqwest::Client::new();
    let connector = recsync::connectors::build(&plan.web_services["box"], &http);
    let sync = plan.sync("BOX").unwrap();

    let expected: BTreeSet<String> = ["/Root/A", "/Root/A/x.txt", "/Root/b.txt", "/Root/c.txt"]
        .iter()
        .map(|p| state.id_of(p).unwrap())
        .collect();
    let (ids, pages) = all_ids(connector.as_ref(), sync, &plan).await;
    assert_eq!(
        ids, expected,
        "the folder's entries, nothing outside the root"
    );
    assert!(pages >= 2, "limit = 2 lists in several pages ({pages})");

    let b = state.id_of("/Root/b.txt").unwrap();
    state.rm("/Root/b.txt").unwrap();
    let (ids, _) = all_ids(connector.as_ref(), sync, &plan).await;
    let mut left = expected.clone();
    left.remove(&b);
    assert_eq!(ids, left, "a deleted entry is not listed");

    // A rest web service cannot list ids; it says so.
    let rest = recsync::connectors::build(&plan.web_services["peer"], &http);
    let e = rest
        .list_ids(plan.sync("PULL").unwrap(), &plan, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rest web services do not support listing ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_service_with_a_list_url_lists_every_record_page_by_page() {
    let (peer_url, peer) = common::spawn_peer();
    let mut expected = BTreeSet::new();
    for n in 0..25 {
        let id = format!("C-{n:03}");
        let values = serde_json::json!({"name": format!("Contact {n}")});
        peer.upsert(
            "contacts",
            Some(id.clone()),
            values.as_object().unwrap().clone(),
        )
        .await;
        expected.insert(id);
    }
    let mapping = format!(
        r#"
[models.doc]
fields = {{ name = "char" }}

[web_services.crm]
url = "{peer_url}/api/contacts/fetch"
list_url = "{peer_url}/api/contacts/list"
auth = {{ mode = "api_key", header = "api_key", key = "{key}" }}

[web_services.wrong_key]
url = "{peer_url}/api/contacts/fetch"
list_url = "{peer_url}/api/contacts/list"
auth = {{ mode = "api_key", header = "api_key", key = "not-the-key" }}

[external_models.contact]
fields = {{ unique_id = "char", name = "char" }}

[syncs.CON]
model = "doc"
external_model = "contact"
web_service = "crm"
direction = "to_local"
every = "1h"
limit = 10
external_ref = "unique_id"
fields = [{{ local = "name", external = "name" }}]

[syncs.BAD]
model = "doc"
external_model = "contact"
web_service = "wrong_key"
direction = "to_local"
every = "1h"
external_ref = "unique_id"
fields = [{{ local = "name", external = "name" }}]
"#,
        key = common::harness::PEER_KEY
    );
    let plan = recsync::config::compile_texts(
        &[("m.toml", &mapping)],
        &HashMap::new(),
        recsync::connectors::KINDS,
    )
    .unwrap_or_else(|e| panic!("{}", e.render()));
    let http = reqwest::Client::new();
    let connector = recsync::connectors::build(&plan.web_services["crm"], &http);
    let (ids, pages) = all_ids(connector.as_ref(), plan.sync("CON").unwrap(), &plan).await;
    assert_eq!(ids, expected);
    assert_eq!(pages, 3, "25 records, 10 a page");
    peer.remove("contacts", "C-007").await;
    let (ids, _) = all_ids(connector.as_ref(), plan.sync("CON").unwrap(), &plan).await;
    assert_eq!(ids.len(), 24, "a deleted record is not listed");
    assert!(!ids.contains("C-007"));
    // A refused key is an error of the listing, not an empty list.
    let bad = recsync::connectors::build(&plan.web_services["wrong_key"], &http);
    let e = bad
        .list_ids(plan.sync("BAD").unwrap(), &plan, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("listing failed"), "{e}");
}
