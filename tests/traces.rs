//! OpenTelemetry traces: `recsync serve` with `otlp_endpoint` exports its spans over OTLP/HTTP
//! to a receiver decoding them with the official `opentelemetry-proto` Python package
//! (`tests/otlp_receiver.py`, in `target/otel-venv`, made by `.ci/run`). A caller's W3C
//! `traceparent` is continued on `/sync/...` and the records API, the change's delivery to
//! another system continues that trace, and the outbound call carries it. A malformed
//! `traceparent` starts a trace of its own; an unreachable endpoint blocks and fails nothing.

mod common;
use common::Killed;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::harness::{ADMIN_KEY, CRM_KEY};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

const MAPPING: &str = r#"
[models.contact]
fields = { name = "char", email = "char" }

[web_services.crm]
shipping_url = "@RECEIVER@/crm"

[web_services.desk]
shipping_url = "@RECEIVER@/desk"

[external_models.crm_contact]
fields = { unique_id = "char", name = "char", email = "char" }

[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[syncs.DESK]
model = "contact"
external_model = "crm_contact"
web_service = "desk"
direction = "to_external"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

/// Kills the child (and waits for it) when dropped.
/// The headers of each shipping call the systems got, by path.
type Calls = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

/// The CRM and the desk: seed-protocol shipping endpoints recording every call's headers.
async fn systems() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let seen = seen.clone();
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").into()))
                    .collect();
                seen.lock().unwrap().push((req.path().to_string(), headers));
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                HttpResponse::Ok().json(json!({
                    "status": "success",
                    "external_id": format!("x-{}", v["external_id"].as_str().unwrap_or("")),
                }))
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    (url, calls)
}

/// The OTLP receiver: its URL and the file it writes spans to.
fn receiver(python: &Path, dir: &Path) -> (Killed, String, PathBuf) {
    let out = dir.join("spans.jsonl");
    let mut child = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/otlp_receiver.py"
        ))
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("the receiver said {line:?}"));
    (Killed(child), format!("http://127.0.0.1:{port}"), out)
}

/// `recsync serve` on a free port with `otlp_endpoint`, on the test database (SQLite, or
/// PostgreSQL with `RECSYNC_TEST_DATABASE_URL`); answers its base URL once ready.
async fn serve(dir: &Path, db: &str, systems: &str, otlp: &str) -> (Killed, String) {
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/m.toml"),
        MAPPING.replace("@RECEIVER@", systems),
    )
    .unwrap();
    std::fs::write(
        dir.join("recsync.toml"),
        format!(
            "database_url = \"{db}\"\nlisten = \"127.0.0.1:0\"\notlp_endpoint = \"{otlp}\"\n\
             [[api_keys]]\nname = \"crm\"\nkey = \"{CRM_KEY}\"\nscopes = [\"sync:*\", \"read\"]\n\
             [[api_keys]]\nname = \"admin\"\nkey = \"{ADMIN_KEY}\"\nscopes = [\"admin\"]\n",
        ),
    )
    .unwrap();
    let log = dir.join("serve.log");
    let child = Command::new(common::recsync_bin())
        .args(["serve", "--config", "recsync.toml"])
        .current_dir(dir)
        .env_remove("RECSYNC_DATABASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        // Batches of spans leave every 200 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let port = common::eventually(30, "recsync to listen", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let at = text.find("port=")? + 5;
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse::<u16>()
            .ok()
    })
    .await;
    (child, format!("http://127.0.0.1:{port}"))
}

/// The spans written so far.
fn spans(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn named<'a>(spans: &'a [Value], name: &str, trace: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"] == name && s["trace_id"] == trace)
        .collect()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_traced_from_the_caller_through_recsync_to_the_other_system() {
    let Some(python) = common::fidelity::python(
        "RECSYNC_OTEL_PYTHON",
        "otel-venv",
        "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "the opentelemetry-proto package",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_receiver, otlp, out) = receiver(&python, dir.path());
    let (systems_url, calls) = systems().await;
    let db = common::TestDb::new().await;
    let (serve, base) = serve(dir.path(), &db.url, &systems_url, &otlp).await;
    let client = reqwest::Client::new();

    // The CRM sends a new contact within a trace of its own.
    let trace = random_hex(16);
    let caller_span = random_hex(8);
    let r = client
        .post(format!("{base}/sync/CON/create"))
        .header("X-Api-Key", CRM_KEY)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"unique_id": "C-1", "name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // The desk gets it, with the same trace.
    let sent = common::eventually(30, "the delivery to the desk", || async {
        calls
            .lock()
            .unwrap()
            .iter()
            .find(|(path, _)| path == "/desk")
            .map(|(_, h)| h.clone())
    })
    .await;
    let carried = sent
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent: {sent:?}"));
    let parts: Vec<&str> = carried.split('-').collect();
    assert_eq!(parts.len(), 4, "{carried}");
    assert_eq!(parts[1], trace, "the delivery carries the caller's trace");

    // The exported spans link up: the caller's span, the request, the inbound change, the
    // delivery, the connector's send and the HTTP call the desk got.
    let got = common::eventually(30, "the spans of the trace", || async {
        let all = spans(&out);
        (named(&all, "http.request", &trace)
            .iter()
            .any(|s| s["span_id"] == parts[2]))
        .then_some(all)
    })
    .await;
    let one = |name: &str| -> Value {
        let found = named(&got, name, &trace);
        assert_eq!(found.len(), 1, "{name}: {found:#?}\nall: {got:#?}");
        found[0].clone()
    };
    let request = one("request");
    assert_eq!(request["parent_span_id"], caller_span.as_str());
    assert_eq!(request["service"], "recsync");
    assert_eq!(request["attributes"]["route"], "/sync/{code}/create");
    let inbound = one("inbound");
    assert_eq!(inbound["parent_span_id"], request["span_id"]);
    assert_eq!(inbound["attributes"]["sync"], "CON");
    assert_eq!(inbound["attributes"]["external_id"], "C-1");
    let record = one("record");
    assert_eq!(record["parent_span_id"], inbound["span_id"]);
    assert_eq!(record["attributes"]["sync"], "CON");
    let delivery = one("delivery");
    assert_eq!(delivery["attributes"]["sync"], "DESK");
    assert_eq!(
        delivery["parent_span_id"], inbound["span_id"],
        "the delivery continues the inbound change"
    );
    let send = one("connector.send");
    assert_eq!(send["parent_span_id"], delivery["span_id"]);
    let call = one("http.request");
    assert_eq!(call["parent_span_id"], send["span_id"]);
    assert_eq!(call["attributes"]["path"], "/desk");
    assert_eq!(
        call["span_id"], parts[2],
        "the desk's parent is the call's span"
    );

    // The records API continues a trace too.
    let trace2 = random_hex(16);
    let caller2 = random_hex(8);
    let r = client
        .post(format!("{base}/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .header("traceparent", format!("00-{trace2}-{caller2}-01"))
        .json(&json!({"name": "Bo"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let got = common::eventually(30, "the records API's spans", || async {
        let all = spans(&out);
        let deliveries = named(&all, "delivery", &trace2).len();
        (deliveries == 2).then_some(all)
    })
    .await;
    let request = named(&got, "request", &trace2);
    assert_eq!(request.len(), 1, "{got:#?}");
    assert_eq!(request[0]["parent_span_id"], caller2.as_str());

    // A malformed traceparent is no error: the request starts a trace of its own.
    let r = client
        .post(format!("{base}/sync/CON/create"))
        .header("X-Api-Key", CRM_KEY)
        .header("traceparent", "00-not-a-trace-01")
        .json(&json!({"unique_id": "C-2", "name": "Cy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let own = common::eventually(30, "the span of the request", || async {
        spans(&out)
            .into_iter()
            .find(|s| s["name"] == "request" && s["attributes"]["request_id"] == id.as_str())
    })
    .await;
    assert_eq!(own["parent_span_id"], "", "{own}");
    assert_eq!(own["trace_id"].as_str().unwrap().len(), 32);
    assert_ne!(own["trace_id"], trace);
    drop(serve);
    let store = db.store().await;
    db.cleanup(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_otlp_endpoint_fails_nothing_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (systems_url, calls) = systems().await;
    // Port 1: nobody listens there.
    let db = common::TestDb::new().await;
    let (serve, base) = serve(dir.path(), &db.url, &systems_url, "http://127.0.0.1:1").await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = client
            .post(format!("{base}/sync/CON/create"))
            .header("X-Api-Key", CRM_KEY)
            .header(
                "traceparent",
                format!("00-{}-{}-01", random_hex(16), random_hex(8)),
            )
            .json(&json!({"unique_id": format!("C-{i}"), "name": "Ada"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    common::eventually(30, "the deliveries to the desk", || async {
        (calls.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    // Failed exports are counted, and logged once (at most once a minute) however many fail.
    let failed = || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let line = text
            .lines()
            .find(|l| l.starts_with("recsync_trace_export_failures_total"))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    let first = common::eventually(30, "failed exports counted", || async {
        failed().await.filter(|n| *n > 0.0)
    })
    .await;
    // More requests, more spans, more failed exports (a batch every 200 ms).
    common::eventually(30, "more failed exports", || async {
        let _ = client.get(format!("{base}/healthz")).send().await;
        failed().await.filter(|n| *n > first)
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert_eq!(
        log.matches("Traces could not be exported").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    drop(serve);
    let store = db.store().await;
    db.cleanup(store).await;
}
