//! One inbound change can be followed through `log_format = "json"` output: from its HTTP
//! request (route template, status, request id) through its commit (sync code, external id,
//! local id) to its delivery through another sync (the same request id and local id).

mod common;

use common::harness::MAPPING;
use serde_json::{Value, json};
use std::process::{Command, Stdio};

const KEY: &str = "follow-test-admin-key-0123456789";

/// An inbound-only sync on another binding than CON, so its changes fan out through CON.
const INBOUND: &str = r#"
[syncs.IN]
model = "contact"
external_model = "crm_contact"
web_service = "shop"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

/// The span named `name` among a log line's spans.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_inbound_change_is_followed_from_its_request_to_its_commit_and_delivery() {
    let db = common::TestDb::new().await;
    let (peer_url, peer_state) = common::spawn_peer();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/test.toml"),
        format!("{MAPPING}\n{INBOUND}").replace("@PEER@", &peer_url),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\nlog_format = \"json\"\n[[api_keys]]\nname = \"ops\"\nkey = \"{KEY}\"\nscopes = [\"admin\"]\n",
            db.url
        ),
    )
    .unwrap();
    let port = common::free_port();
    let log_path = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "serve",
            "--config",
            "recsync.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "info,recsync=debug,sqlx=warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    common::wait_ready(&client, &base, &mut child).await;

    let r = client
        .post(format!("{base}/sync/IN/create"))
        .header("api_key", KEY)
        .json(&json!({"unique_id": "F-1", "name": "Followed", "email": "f@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r
        .headers()
        .get("x-request-id")
        .expect("the answer names its request")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(request_id.len(), 16, "{request_id}");

    // The change reaches the peer through CON, and its delivery is logged.
    let lines = common::eventually(30, "the delivery to be logged", || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        lines
            .iter()
            .any(|l| {
                l["message"] == "Delivered"
                    && span(l, "delivery").is_some_and(|s| s["request_id"] == request_id.as_str())
            })
            .then_some(lines)
    })
    .await;
    assert!(
        peer_state
            .records("crm")
            .values()
            .any(|r| r["name"] == "Followed"),
        "the peer has the record"
    );

    // The request: its route template and status, under its id.
    let answered = lines
        .iter()
        .find(|l| {
            l["message"] == "Answered"
                && span(l, "request").is_some_and(|s| s["request_id"] == request_id.as_str())
        })
        .expect("the request's answer is logged");
    let req = span(answered, "request").unwrap();
    assert_eq!(req["route"], "/sync/{code}/create");
    assert_eq!(req["status"], 200);
    assert_eq!(req["method"], "POST");

    // The commit, inside the request and its inbound span: sync, external id, local id.
    let committed = lines
        .iter()
        .find(|l| {
            l["message"] == "Committed"
                && span(l, "request").is_some_and(|s| s["request_id"] == request_id.as_str())
        })
        .unwrap_or_else(|| {
            panic!(
                "the commit is logged inside the request: {:#?}",
                lines
                    .iter()
                    .filter(|l| l["message"] == "Committed")
                    .collect::<Vec<_>>()
            )
        });
    let inbound = span(committed, "inbound").expect("the inbound span");
    assert_eq!(inbound["route"], "/sync/{code}/create");
    assert_eq!(inbound["sync"], "IN");
    assert_eq!(committed["sync"], "IN");
    assert_eq!(committed["external_id"], "F-1");
    let local_id = committed["local_id"].as_i64().expect("the local id");

    // The delivery through CON: the same request, the same record.
    let delivered = lines
        .iter()
        .find(|l| {
            l["message"] == "Delivered"
                && span(l, "delivery").is_some_and(|s| s["request_id"] == request_id.as_str())
        })
        .unwrap();
    let delivery = span(delivered, "delivery").unwrap();
    assert_eq!(delivery["sync"], "CON");
    assert_eq!(delivery["local_id"], local_id);
    assert_eq!(delivery["action"], "create");
    assert!(
        delivered["external_id"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "the delivery names the peer's id: {delivered}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let store = db.store().await;
    db.cleanup(store).await;
}
