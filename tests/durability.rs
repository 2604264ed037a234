//! An acknowledged change survives SIGKILL: the server is killed right after answering 200,
//! restarted, and the record and its outbox entry are there.

mod common;

use common::harness::{CRM_KEY, MAPPING};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};

fn start(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "serve",
            "--config",
            "recsync.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    common::eventually(30, "the server to answer", || {
        let c = client.clone();
        let url = format!("{base}/readyz");
        async move {
            c.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
}

#[tokio::test]
async fn an_acknowledged_change_survives_sigkill() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    // The peer is unreachable, so the outbox entry stays undelivered.
    std::fs::write(
        dir.path().join("mappings/test.toml"),
        MAPPING.replace("@PEER@", "http://127.0.0.1:9"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\noutbox_backoff = \"1h\"\n[[api_keys]]\nname = \"crm\"\nkey = \"{CRM_KEY}\"\nscopes = [\"sync:*\", \"read\"]\n",
            db.url
        ),
    )
    .unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;
    let resp = client
        .post(format!("{base}/sync/CON/create"))
        .header("api_key", CRM_KEY)
        .json(&json!({"name": "Survivor", "unique_id": "S-1", "is_customer": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    child.kill().unwrap(); // SIGKILL, right after the acknowledgement
    child.wait().unwrap();

    let mut child = start(dir.path(), port);
    wait_ready(&client, &base).await;
    let records: Value = client
        .get(format!("{base}/api/v1/models/contact/records"))
        .header("api_key", CRM_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        records["records"][0]["name"],
        json!("Survivor"),
        "{records}"
    );
    let local_id = records["records"][0]["id"].as_i64().unwrap();
    let outbox: Value = client
        .get(format!("{base}/api/v1/outbox?status=all"))
        .header("api_key", CRM_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = outbox["entries"].as_array().unwrap();
    let mine: Vec<&Value> = entries
        .iter()
        .filter(|e| e["local_id"] == json!(local_id))
        .collect();
    assert!(!mine.is_empty(), "the outbox entries survived: {outbox}");
    assert!(mine.iter().all(|e| e["status"] != "done"), "{outbox}");
    assert!(mine.iter().any(|e| e["sync"] == "ERP"), "{outbox}");
    child.kill().unwrap();
    child.wait().unwrap();
    let store = recsync::store::Store::connect(&db.url).await.unwrap();
    db.cleanup(store).await;
}
