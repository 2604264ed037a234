//! The Odoo client against the fake Odoo, over real HTTP: `auto` picks JSON-2 from Odoo 19 on
//! and JSON-RPC before; both protocols read, create, write and delete alike; a refused key is
//! an authentication error naming the web service and never the key; transient failures (429,
//! serialization failures) are retried; Odoo's own errors come back as record errors with its
//! message; an HTML page from a proxy is a transient error that says so.

use recsync::connectors::odoo::{OdooClient, OdooEndpoint, OdooError, Protocol, Repeat, from_odoo};
use recsync::peer::odoo::{FakeOdoo, OdooFaults, OdooOptions};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

async fn fake(version: &str) -> (String, Arc<recsync::peer::odoo::OdooState>, OdooOptions) {
    let opts = OdooOptions {
        version: version.into(),
        ..Default::default()
    };
    let fake = FakeOdoo::bind(opts.clone()).unwrap();
    let url = fake.url();
    let state = fake.state.clone();
    tokio::spawn(fake.run());
    (url, state, opts)
}

fn client(url: &str, opts: &OdooOptions, protocol: Protocol, key: &str) -> OdooClient {
    OdooClient::new(
        OdooEndpoint {
            name: "erp".into(),
            url: url.into(),
            database: Some(opts.database.clone()),
            login: Some(opts.login.clone()),
            api_key: key.to_string().into(),
            protocol,
            timeout: Duration::from_secs(10),
        },
        reqwest::Client::new(),
    )
}

/// Creates, reads, writes and deletes a partner; answers what the fake saw by protocol.
async fn round_trip(c: &OdooClient) {
    let be = c
        .call(
            "res.country",
            "search",
            None,
            kw(json!({"domain": [["code", "=", "BE"]]})),
        )
        .await
        .unwrap();
    let be = be[0].as_i64().unwrap();
    let id = c
        .call(
            "res.partner",
            "create",
            None,
            kw(json!({"vals_list": [{"name": "Client SA", "country_id": be, "category_id": [[6, 0, [1, 2]]]}]})),
        )
        .await
        .unwrap();
    let id = id
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_i64)
        .or_else(|| id.as_i64())
        .expect("an id");
    let rows = c
        .call(
            "res.partner",
            "search_read",
            None,
            kw(json!({"domain": [["id", "=", id]], "fields": ["name", "country_id", "category_id", "email", "write_date"]})),
        )
        .await
        .unwrap();
    let r = &rows[0];
    assert_eq!(r["name"], "Client SA");
    assert_eq!(from_odoo("many2one", &r["country_id"]), json!(be));
    assert_eq!(r["category_id"], json!([1, 2]));
    assert_eq!(from_odoo("char", &r["email"]), Value::Null);
    assert!(
        from_odoo("datetime", &r["write_date"])
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    c.call(
        "res.partner",
        "write",
        Some(&[id]),
        kw(json!({"vals": {"email": "client@example.com"}})),
    )
    .await
    .unwrap();
    let rows = c
        .call(
            "res.partner",
            "read",
            Some(&[id]),
            kw(json!({"fields": ["email"]})),
        )
        .await
        .unwrap();
    assert_eq!(rows[0]["email"], "client@example.com");
    c.call("res.partner", "unlink", Some(&[id]), Map::new())
        .await
        .unwrap();
    let e = c
        .call(
            "res.partner",
            "read",
            Some(&[id]),
            kw(json!({"fields": ["name"]})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OdooError::Record(m) if m.contains("does not exist")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_json2_from_odoo_19_and_json_rpc_before_and_both_round_trip() {
    for (version, expected, wire) in [
        ("19.0", Protocol::Json2, "json2"),
        ("17.0", Protocol::JsonRpc, "jsonrpc"),
    ] {
        let (url, state, opts) = fake(version).await;
        let c = client(&url, &opts, Protocol::Auto, &opts.api_key);
        assert_eq!(c.protocol().await.unwrap(), expected, "Odoo {version}");
        round_trip(&c).await;
        let calls = state.calls();
        assert!(!calls.is_empty());
        assert!(
            calls.iter().all(|(p, _, _)| p == wire),
            "{version}: {calls:?}"
        );
    }
    // JSON-RPC also works against a JSON-2 server when asked for.
    let (url, state, opts) = fake("19.0").await;
    let c = client(&url, &opts, Protocol::JsonRpc, &opts.password);
    round_trip(&c).await;
    assert!(state.calls().iter().all(|(p, _, _)| p == "jsonrpc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_names_the_web_service_and_never_the_key() {
    for protocol in [Protocol::Json2, Protocol::JsonRpc] {
        let (url, _, opts) = fake("19.0").await;
        let secret = "not-the-key-0123456789";
        let c = client(&url, &opts, protocol, secret);
        let e = c
            .call("res.partner", "search", None, kw(json!({"domain": []})))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, OdooError::Auth(_)), "{protocol:?}: {e:?}");
        assert!(text.contains("web service `erp`"), "{text}");
        assert!(!text.contains(secret), "{text}");
    }
    // A database that does not exist is named.
    let (url, _, opts) = fake("17.0").await;
    let mut c_opts = opts.clone();
    c_opts.database = "nope".into();
    let c = client(&url, &c_opts, Protocol::JsonRpc, &opts.api_key);
    let e = c
        .call("res.partner", "search", None, Map::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OdooError::Auth(m) if m.contains("`nope` does not exist")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_odoo_errors_carry_odoos_message() {
    for protocol in [Protocol::Json2, Protocol::JsonRpc] {
        let (url, state, opts) = fake("19.0").await;
        let c = client(&url, &opts, protocol, &opts.api_key);
        // A 429 and a serialization failure, then success: one call for the caller.
        state.set_faults(OdooFaults {
            rate_limit: 1,
            serialization_failures: 1,
            ..Default::default()
        });
        let before = state.calls().len();
        let n = c
            .call(
                "res.partner",
                "search_count",
                None,
                kw(json!({"domain": []})),
            )
            .await
            .unwrap();
        assert_eq!(n, json!(1), "{protocol:?}");
        assert_eq!(state.calls().len() - before, 3, "{protocol:?}: two retries");
        // Odoo's validation error is the record's failure, with Odoo's message.
        let e = c
            .call(
                "res.partner",
                "create",
                None,
                kw(json!({"vals_list": [{"email": "x@example.com"}]})),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OdooError::Record(m) if m.contains("mandatory field")),
            "{protocol:?}: {e:?}"
        );
        // A proxy's HTML page, every time: transient, and it says what it saw.
        state.set_faults(OdooFaults {
            html_errors: 10,
            ..Default::default()
        });
        let e = c
            .call("res.partner", "search", None, kw(json!({"domain": []})))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OdooError::Transient { reason, .. } if reason.contains("HTML")),
            "{protocol:?}: {e:?}"
        );
        assert!(e.to_string().contains("web service `erp`"), "{e}");
        state.set_faults(OdooFaults::default());
        // An unknown model is a clear error.
        let e = c
            .call("res.nothing", "search", None, kw(json!({"domain": []})))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OdooError::Record(m) if m.contains("res.nothing")),
            "{protocol:?}: {e:?}"
        );
    }
}

/// A write of values read just before (`Repeat::Never`) is not repeated by the client: a 429
/// (surely not applied, and repeated even for a `create`) comes back as a transient error after
/// one call, for the outbox to repeat after a new read.
/// The same write with `Repeat::Always` is repeated and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_read_just_before_is_left_to_the_caller_to_repeat() {
    for protocol in [Protocol::Json2, Protocol::JsonRpc] {
        let (url, state, opts) = fake("19.0").await;
        let c = client(&url, &opts, protocol, &opts.api_key);
        let write = |repeat| {
            c.call_as(
                "res.partner",
                "write",
                Some(&[1]),
                kw(json!({"vals": {"phone": "+32 2 000 00 00"}})),
                repeat,
            )
        };
        write(Repeat::Always).await.unwrap();
        state.set_faults(OdooFaults {
            rate_limit: 1,
            ..Default::default()
        });
        let before = state.calls().len();
        let e = write(Repeat::Never).await.unwrap_err();
        assert!(
            matches!(&e, OdooError::Transient { .. }),
            "{protocol:?}: {e:?}"
        );
        assert_eq!(
            state.calls().len() - before,
            1,
            "{protocol:?}: not repeated"
        );
        state.set_faults(OdooFaults {
            rate_limit: 1,
            ..Default::default()
        });
        let before = state.calls().len();
        write(Repeat::Always).await.unwrap();
        assert_eq!(
            state.calls().len() - before,
            2,
            "{protocol:?}: repeated once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_runs_in_its_own_process_seeded_and_driven_over_http() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args(["fake-odoo", "--listen", "127.0.0.1:0", "--partners", "25"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the fake prints its URL")
        .to_string();
    let http = reqwest::Client::new();
    let partners: Vec<Value> = http
        .get(format!("{url}/_fake/records/res.partner"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(partners.len(), 26, "25 seeded and the admin's partner");

    // A person edits in Odoo: create, write, archive, delete.
    let r = http
        .post(format!("{url}/_fake/records/res.partner"))
        .json(&json!({"name": "Typed In Odoo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let r = http
        .patch(format!("{url}/_fake/records/res.partner/{id}"))
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let opts = OdooOptions::default();
    let c = client(&url, &opts, Protocol::Auto, &opts.api_key);
    let visible = c
        .call(
            "res.partner",
            "search",
            None,
            kw(json!({"domain": [["id", "=", id]]})),
        )
        .await
        .unwrap();
    assert_eq!(visible, json!([]), "archived");
    let all = c
        .call(
            "res.partner",
            "search",
            None,
            kw(json!({"domain": [["id", "=", id]], "context": {"active_test": false}})),
        )
        .await
        .unwrap();
    assert_eq!(all, json!([id]));
    let r = http
        .delete(format!("{url}/_fake/records/res.partner/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .post(format!("{url}/_fake/records/res.partner"))
        .json(&json!({"email": "no-name@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a required field is still required");

    // Faults are switched over HTTP too.
    let r = http
        .put(format!("{url}/_fake/faults"))
        .json(&json!({"key_expired": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = c
        .call(
            "res.partner",
            "search_count",
            None,
            kw(json!({"domain": []})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OdooError::Auth(_)), "{e:?}");
    let calls: Vec<Value> = http
        .get(format!("{url}/_fake/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        calls
            .iter()
            .any(|c| c["protocol"] == "json2" && c["method"] == "search")
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
