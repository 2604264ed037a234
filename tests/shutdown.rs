//! Graceful shutdown under load, and HTTPS through rustls.
//!
//! A `recsync serve` process takes a stream of inbound changes from several clients while a
//! pull run goes page by page; SIGTERM arrives in the middle. The process exits within its
//! `shutdown_timeout`, every acknowledged change is in the store exactly once, the run ended
//! after a whole page (every confirmed record is applied), and no outbox entry is left claimed.

mod common;

use common::harness::{MAPPING, PEER_KEY};
use recsync::peer::{Faults, Peer, PeerOptions};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "shutdown-admin-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_work_and_loses_nothing() {
    let db = common::TestDb::new().await;
    let peer = Peer::from_listener(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        PeerOptions {
            listen: String::new(),
            api_key: Some(PEER_KEY.into()),
            id_field: "unique_id".into(),
            synthetic: Default::default(),
            signing_secret: None,
            callback: None,
        },
    )
    .unwrap();
    let peer_url = peer.url();
    let pstate = peer.state.clone();
    let phandle = peer.handle();
    tokio::spawn(peer.run());
    for i in 0..80 {
        pstate
            .upsert(
                "pull",
                Some(format!("P{i}")),
                json!({"name": format!("Pulled {i}"), "email": format!("p{i}@example.com")})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .await;
    }
    // Slow pages of 2 (the PULL sync's limit): the run is mid-way when SIGTERM comes.
    pstate.set_faults(Faults {
        latency_ms: 150,
        only: Some("fetch".into()),
        ..Default::default()
    });

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("mappings/test.toml"),
        MAPPING.replace("@PEER@", &peer_url),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\nshutdown_timeout = \"15s\"\n[[api_keys]]\nname = \"ops\"\nkey = \"{KEY}\"\nscopes = [\"admin\"]\n",
            db.url
        ),
    )
    .unwrap();
    let store = db.store().await; // migrated before the server starts
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(common::recsync_bin())
        .args([
            "serve",
            "--config",
            "recsync.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "info,sqlx=warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
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

    let r = client
        .post(format!("{base}/api/v1/syncs/PULL/run"))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run_id = r.json::<Value>().await.unwrap()["run_id"].as_i64().unwrap();

    // Six clients send changes until the server stops answering.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..6 {
        let client = client.clone();
        let base = base.clone();
        let acked = acked.clone();
        let refused = refused.clone();
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("L{c}-{i}");
                let r = client
                    .post(format!("{base}/sync/CON/create"))
                    .header("api_key", KEY)
                    .json(&json!({"unique_id": id, "name": format!("Load {id}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(id),
                    // Refused while stopping: not acknowledged, so not promised either.
                    Ok(r) if r.status() == 503 => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    Ok(r) => {
                        let status = r.status();
                        panic!(
                            "{id}: unexpected {status}: {}",
                            r.text().await.unwrap_or_default()
                        )
                    }
                    // Connection refused or reset: the listener is closed.
                    Err(_) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                }
            }
        }));
    }
    common::eventually(30, "some load and some pages", || async {
        let pages = pstate.calls("pull", "confirm").len();
        (acked.lock().unwrap().len() > 50 && pages >= 3).then_some(())
    })
    .await;

    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    for c in clients {
        if c.await.is_err() {
            panic!("a client failed; the server's log:\n{log}");
        }
    }
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(log.contains("Stopped cleanly"), "{log}");

    // Every acknowledged change is there, once.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50);
    for id in &acked {
        let link = store
            .link_by_external("CON", id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {id} is missing"));
        let rec = store
            .get_record("contact", link.local_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rec.values["name"], json!(format!("Load {id}")));
    }
    let creates = store
        .changes(&recsync::store::ChangeFilter {
            sync: Some("CON".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = HashSet::new();
    for c in creates.iter().filter(|c| c.action == "create") {
        let id = c.external_id.clone().unwrap();
        assert!(seen.insert(id.clone()), "{id} created twice");
    }

    // The run stopped after a whole page: it is not left running, and every record the peer
    // saw confirmed was applied.
    let run = store
        .runs(Some("PULL"), None, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == run_id)
        .unwrap();
    assert!(
        run.finished_at.is_some(),
        "{run:?}\nthe server's log:\n{log}"
    );
    assert!(
        run.status == "partial" || run.status == "success",
        "{run:?}"
    );
    if run.status == "partial" {
        assert!(
            run.error.as_deref().unwrap_or("").contains("shutting down"),
            "{run:?}"
        );
    }
    let state = store.sync_state("PULL").await.unwrap().unwrap();
    assert!(state.running_by.is_none(), "the run slot is released");
    let mut confirmed = 0;
    for body in pstate.calls("pull", "confirm") {
        for item in body["content"].as_array().unwrap() {
            let id = item["external_id"].as_str().unwrap();
            assert!(
                store.link_by_external("PULL", id).await.unwrap().is_some(),
                "{id} was confirmed but not applied"
            );
            confirmed += 1;
        }
    }
    assert!(
        confirmed >= 6 && (confirmed as i64) == run.created,
        "{confirmed} vs {run:?}"
    );

    // Nothing is left claimed in the outbox.
    let stats = store.outbox_stats().await.unwrap();
    assert!(
        !stats
            .iter()
            .any(|(_, status, n, _)| status == "inflight" && *n > 0),
        "{stats:?}\nthe server's log:\n{log}"
    );
    phandle.stop(false).await;
    db.cleanup(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_through_rustls() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let db = common::TestDb::new().await;
    let settings = recsync::config::Settings {
        database_url: secrecy::SecretString::from(db.url.clone()),
        listen: "127.0.0.1:0".parse().unwrap(),
        mappings: dir.path().to_path_buf(),
        tls_cert: Some(cert_path),
        tls_key: Some(key_path),
        ..Default::default()
    };
    let plan = recsync::config::compile_texts(
        &[],
        &std::collections::HashMap::<String, String>::new(),
        recsync::connectors::KINDS,
    )
    .unwrap();
    let app = recsync::app::build(settings, plan, Default::default())
        .await
        .unwrap();
    let port = app.port();
    let engine = app.engine();
    let server = tokio::spawn(app.run_until_stopped());

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that does not trust the certificate refuses it.
    let untrusting = reqwest::Client::new()
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err());

    server.abort();
    let _ = server.await;
    db.cleanup(engine.store.clone()).await;
}

#[test]
fn tls_cert_without_key_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        "tls_cert = \"/etc/recsync/cert.pem\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args(["validate", "--config", "recsync.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("`tls_cert` is set without `tls_key`"),
        "{text}"
    );
}
