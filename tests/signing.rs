//! Standard Webhooks: recsync signs its calls to a web service with `signing_secret` (the same
//! `webhook-id` across a delivery's retries) and a sync with `inbound_signing_secret` takes
//! only `/sync` calls signed with it, within five minutes. Both are checked with the
//! specification's Python library (`standardwebhooks`, in `target/webhooks-venv`, made by
//! `.ci/run`), and with recsync's own check.

mod common;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::harness::{ADMIN_KEY, CRM_KEY, Harness, Tweaks};
use recsync::domain::auth::Signing;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

const OUT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const IN_SECRET: &str = "whsec_c2lnbmluZy1zZWNyZXQtb2YtdGhlLWNybS0wMQ==";

const MAPPING: &str = r#"
[models.contact]
fields = { name = "char", email = "char" }

[web_services.crm]
shipping_url = "@RECEIVER@/ship"
signing_secret = "${CRM_SIGNING_SECRET}"

[external_models.crm_contact]
fields = { unique_id = "char", name = "char", email = "char" }

[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
mode = "realtime"
external_ref = "unique_id"
inbound_signing_secret = "${CON_INBOUND_SECRET}"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]
"#;

/// A call the receiver got: its headers (lower-case names) and body.
#[derive(Clone, Debug)]
struct Call {
    headers: BTreeMap<String, String>,
    body: String,
}

/// A web service speaking the seed protocol's shipping call, which records every call and
/// refuses the first one (503) so that the delivery is retried.
async fn receiver() -> (String, Arc<Mutex<Vec<Call>>>) {
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let seen = calls.clone();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().route(
            "/ship",
            web::post().to(move |req: HttpRequest, body: web::Bytes| {
                let seen = seen.clone();
                async move {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    let body = String::from_utf8(body.to_vec()).unwrap();
                    let n = {
                        let mut calls = seen.lock().unwrap();
                        calls.push(Call {
                            headers,
                            body: body.clone(),
                        });
                        calls.len()
                    };
                    if n == 1 {
                        return HttpResponse::ServiceUnavailable().finish();
                    }
                    let v: Value = serde_json::from_str(&body).unwrap();
                    HttpResponse::Ok().json(json!({
                        "status": "success",
                        "external_id": format!("crm-{}", v["external_id"].as_str().unwrap_or("")),
                    }))
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_unsigned_calls_are_refused() {
    let Some(python) = common::fidelity::python(
        "RECSYNC_WEBHOOKS_PYTHON",
        "webhooks-venv",
        "import standardwebhooks",
        "the standardwebhooks package",
    ) else {
        return;
    };
    let (receiver_url, calls) = receiver().await;
    let h = Harness::with(Tweaks {
        mapping: Some(MAPPING.replace("@RECEIVER@", &receiver_url)),
        env: HashMap::from([
            ("CRM_SIGNING_SECRET".to_string(), OUT_SECRET.to_string()),
            ("CON_INBOUND_SECRET".to_string(), IN_SECRET.to_string()),
        ]),
        ..Default::default()
    })
    .await;

    // Outbound: a record made here goes to the CRM, refused once, then delivered.
    let r = h
        .client
        .post(h.url("/api/v1/models/contact/records"))
        .header("X-Api-Key", ADMIN_KEY)
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let calls = common::eventually(30, "the delivery and its retry", || {
        let calls = calls.clone();
        async move {
            let c = calls.lock().unwrap().clone();
            (c.len() >= 2).then_some(c)
        }
    })
    .await;
    let ids: Vec<&str> = calls
        .iter()
        .map(|c| c.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(ids[0], ids[1], "one webhook-id across a delivery's retries");
    let signing = Signing::parse(OUT_SECRET).unwrap();
    let now = chrono::Utc::now().timestamp();
    for c in &calls {
        let h = |n: &str| c.headers.get(n).map(String::as_str);
        assert_eq!(
            signing.verify(
                h("webhook-id"),
                h("webhook-timestamp"),
                h("webhook-signature"),
                c.body.as_bytes(),
                now
            ),
            Ok(()),
            "{c:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("calls.json");
    std::fs::write(
        &recorded,
        serde_json::to_string(
            &calls
                .iter()
                .map(|c| json!({"headers": c.headers, "body": c.body}))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    )
    .unwrap();
    let checks = common::fidelity::run_checks(
        python.clone(),
        "webhooks_fidelity.py",
        vec![
            "verify".into(),
            OUT_SECRET.into(),
            recorded.display().to_string(),
        ],
    )
    .await;
    assert_eq!(checks, 3 * calls.len());

    // Inbound: calls signed by the library are taken; a repeated delivery (same webhook-id)
    // is answered as the first was, and writes nothing more.
    let bodies: Vec<String> = (0..3)
        .map(|i| json!({"unique_id": format!("E{i}"), "name": format!("Signed {i}")}).to_string())
        .collect();
    let to_sign = dir.path().join("to_sign.json");
    let signed = dir.path().join("signed.json");
    std::fs::write(
        &to_sign,
        serde_json::to_string(
            &bodies
                .iter()
                .enumerate()
                .map(|(i, b)| json!({"id": format!("msg_in_{i}"), "body": b}))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    )
    .unwrap();
    let n = common::fidelity::run_checks(
        python,
        "webhooks_fidelity.py",
        vec![
            "sign".into(),
            IN_SECRET.into(),
            to_sign.display().to_string(),
            signed.display().to_string(),
        ],
    )
    .await;
    assert_eq!(n, 3);
    let headers: Vec<BTreeMap<String, String>> =
        serde_json::from_str(&std::fs::read_to_string(&signed).unwrap()).unwrap();
    let send = |body: String, headers: Vec<(String, String)>| {
        let mut req = h
            .client
            .post(h.url("/sync/CON/create"))
            .header("api_key", CRM_KEY)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    for (body, hs) in bodies.iter().zip(&headers) {
        let r = send(body.clone(), hs.clone().into_iter().collect())
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
    }
    let again = send(bodies[0].clone(), headers[0].clone().into_iter().collect())
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replay")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    for i in 0..3 {
        assert!(h.link("CON", &format!("E{i}")).await.is_some(), "E{i}");
    }
    let creates = h
        .changes("CON")
        .await
        .into_iter()
        .filter(|c| c.action == "create" && c.external_id.as_deref() == Some("E0"))
        .count();
    assert_eq!(creates, 1, "a repeated delivery writes nothing more");

    // Refused, 401, and nothing written: no signature, a changed body, a stale timestamp, a
    // timestamp that is not one, another secret.
    let body = json!({"unique_id": "X1", "name": "Forged"}).to_string();
    let own = Signing::parse(IN_SECRET).unwrap();
    let other = Signing::parse("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").unwrap();
    let now = chrono::Utc::now().timestamp();
    let signed_as = |s: &Signing, id: &str, ts: i64, b: &str| {
        vec![
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            (
                "webhook-signature".to_string(),
                s.sign(id, ts, b.as_bytes()),
            ),
        ]
    };
    let mut bad_ts = signed_as(&own, "msg_x4", now, &body);
    bad_ts[1].1 = "yesterday".into();
    type Headers = Vec<(String, String)>;
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("unsigned", vec![], "the `webhook-id` header is missing"),
        (
            "changed body",
            signed_as(&own, "msg_x2", now, "{\"unique_id\": \"X1\"}"),
            "no signature in `webhook-signature` matches",
        ),
        (
            "stale",
            signed_as(&own, "msg_x3", now - 400, &body),
            "outside the 300 s allowed",
        ),
        ("bad timestamp", bad_ts, "not a number of seconds"),
        (
            "another secret",
            signed_as(&other, "msg_x5", now, &body),
            "no signature in `webhook-signature` matches",
        ),
    ];
    for (what, hs, says) in cases {
        let r = send(body.clone(), hs).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let v: Value = r.json().await.unwrap();
        let message = v.to_string();
        assert!(message.contains(says), "{what}: {message}");
        assert!(!message.contains(IN_SECRET), "{what}: {message}");
    }
    assert!(h.link("CON", "X1").await.is_none(), "nothing written");

    // The secrets are not shown by the configuration API.
    let config = h
        .client
        .get(h.url("/api/v1/config"))
        .header("X-Api-Key", ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !config.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "{config}"
    );
    assert!(!config.contains(IN_SECRET), "{config}");
    h.stop().await;
}
