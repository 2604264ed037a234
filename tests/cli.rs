//! The `recsync` binary as a user runs it: exit codes, messages and secrecy.

mod common;

use sha2::Digest;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const SECRET: &str = "zz-very-secret-token-4711";

fn recsync(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args(args)
        .current_dir(dir)
        .env_remove("RECSYNC_DATABASE_URL")
        .env("CRM_TOKEN", SECRET)
        .env("RUST_LOG", "trace")
        .output()
        .expect("run recsync")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shipped_examples_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = recsync(root, &["validate", "--config", "recsync.toml.example"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("Configuration is valid"), "{out}");
    assert!(out.contains("CON") && out.contains("STUDENT_DOCS"), "{out}");
    // A real-time sync's `every` runs are incremental; `reconcile` is what compares in full
    // (the demo's CON: `every = "1m"`, `reconcile = "1d"`).
    let con = out
        .lines()
        .find(|l| l.trim_start().starts_with("CON "))
        .unwrap_or_else(|| panic!("no line for CON: {out}"));
    assert!(
        con.contains("realtime, incremental runs every 1m, reconciles in full every 1d"),
        "{con}"
    );
    assert!(!out.contains("reconciles every"), "{out}");
}

const GOOD: &str = r#"
[models.contact]
fields = { name = "char", customer = "boolean", company = { type = "many2one", model = "company" }, stage = { type = "selection", values = ["lead", "lost"] } }

[models.company]
fields = { name = "char" }

[web_services.crm]
url = "https://crm.example.com/fetch"
shipping_url = "https://crm.example.com/ship"
auth = { mode = "bearer", token = "${CRM_TOKEN}" }

[external_models.crm_contact]
fields = { unique_id = "char", full_name = "char", status = "char", company_id = "char" }

[syncs.COMP]
model = "company"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#;

/// The eight mistakes of the acceptance list, over two files, reported in one run.
const BROKEN: &str = r#"[syncs.CON]
model = "contakt"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
schedul = "0 */15 * * * *"

[syncs.CON2]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
schedule = "0 */15 * *"
external_ref = "unique_id"
domain = [["customer", "like", "${CRM_TOKEN}"]]
fields = [
  { local = "name", external = "$.a[" },
  { local = "stage", external = "status", map = { lead = "L", lost = "L" } },
  { local = "company", external = "company_id", ref_sync = "NOPE" },
]

[syncs.COMP]
model = "company"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
timezone = "${CRM_TOKEN}"
"#;

#[test]
fn broken_files_exit_78_with_every_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/a.toml"), GOOD).unwrap();
    std::fs::write(dir.path().join("mappings/b.toml"), BROKEN).unwrap();
    let o = recsync(dir.path(), &["validate"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(78), "{out}");
    for (what, at) in [
        ("unknown model `contakt`", "mappings/b.toml:2:9"),
        ("unknown field `schedul`", "mappings/b.toml:6:1"),
        ("invalid cron expression", "mappings/b.toml:13:12"),
        (
            "operator `like` cannot be used on a boolean field",
            "mappings/b.toml:15:24",
        ),
        ("invalid JSONPath `$.a[`", "mappings/b.toml:17:32"),
        ("`map` is not one-to-one", "mappings/b.toml:18:70"),
        ("unknown sync `NOPE`", "mappings/b.toml:19:60"),
        ("duplicate sync `COMP`", "mappings/b.toml:22:8"),
        ("unknown time zone", "mappings/b.toml:29:12"),
    ] {
        let pos = out
            .find(what)
            .unwrap_or_else(|| panic!("missing {what:?} in:\n{out}"));
        let after = &out[pos..];
        assert!(
            after.contains(&format!("--> {at}")),
            "{what} should point at {at}:\n{out}"
        );
    }
    assert!(out.contains("error: configuration has 11 errors"), "{out}");
    assert!(!out.contains(SECRET), "a secret leaked:\n{out}");
    assert!(
        out.contains("${CRM_TOKEN}"),
        "the source text is quoted as written:\n{out}"
    );
}

#[test]
fn keys_new_prints_the_key_once_and_only_its_hash_for_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let o = recsync(
        dir.path(),
        &["keys", "new", "--name", "crm", "--scopes", "sync:CON,read"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("rsk_"))
        .expect("a key");
    let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    assert!(out.contains(&format!("key_sha256 = \"{hash}\"")), "{out}");
    assert!(out.contains("scopes = [\"sync:CON\", \"read\"]"), "{out}");
    assert_eq!(out.matches(key).count(), 1, "the key is printed once");

    let bad = recsync(
        dir.path(),
        &["keys", "new", "--name", "crm", "--scopes", "root"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("unknown scope `root`"));
}

/// A server that answers every request with `status`, for as many connections as come.
fn answering(status: u16) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    url
}

#[test]
fn validate_online_checks_that_each_web_service_answers() {
    let up = answering(405); // a protocol URL refusing GET still answers
    let locked = answering(401);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }; // the listener is gone: nothing answers there
    let mapping = format!(
        r#"
[models.contact]
fields = {{ name = "char" }}

[external_models.ext]
fields = {{ unique_id = "char", name = "char" }}

[web_services.up]
url = "{up}/fetch"
shipping_url = "{up}/ship"
auth = {{ mode = "bearer", token = "${{CRM_TOKEN}}" }}

[web_services.locked]
shipping_url = "{locked}/ship"

[web_services.down]
shipping_url = "{closed}/ship"
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/m.toml"), mapping).unwrap();
    let o = recsync(dir.path(), &["validate", "--online"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
            .to_string()
    };
    assert!(line("up").trim_start().starts_with("ok"), "{out}");
    assert!(line("up").contains("HTTP 405"), "{out}");
    assert!(line("locked").trim_start().starts_with("FAIL"), "{out}");
    assert!(
        line("locked").contains("refused the credentials (HTTP 401)"),
        "{out}"
    );
    assert!(line("down").trim_start().starts_with("FAIL"), "{out}");
    assert!(line("down").contains("could not be reached"), "{out}");
    assert!(!out.contains(SECRET), "{out}");

    // With every service answering, the exit code is 0.
    std::fs::write(
        dir.path().join("mappings/m.toml"),
        format!("[web_services.up]\nshipping_url = \"{up}/ship\"\n"),
    )
    .unwrap();
    let o = recsync(dir.path(), &["validate", "--online"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("panicked"));
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let o = recsync(
        dir.path(),
        &["migrate", "--database-url", "sqlite://store.db"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(dir.path().join("store.db").exists());
    let again = recsync(
        dir.path(),
        &["migrate", "--database-url", "sqlite://store.db"],
    );
    assert_eq!(
        again.status.code(),
        Some(0),
        "migrations are idempotent: {}",
        text(&again)
    );
}

#[test]
fn bad_settings_are_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        "listen = \"nowhere\"\nlog_fromat = \"json\"\n[[api_keys]]\nname = \"crm\"\nkey_sha256 = \"abc\"\nscopes = [\"sync:CON\", \"god\"]\n",
    )
    .unwrap();
    let o = recsync(dir.path(), &["validate"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(78), "{out}");
    for (what, at) in [
        ("invalid `listen` address `nowhere`", "recsync.toml:1:10"),
        ("unknown field `log_fromat`", "recsync.toml:2:1"),
        (
            "`key_sha256` must be 64 hexadecimal characters",
            "recsync.toml:5:14",
        ),
        ("unknown scope `god`", "recsync.toml:6:23"),
    ] {
        let pos = out
            .find(what)
            .unwrap_or_else(|| panic!("missing {what:?} in:\n{out}"));
        assert!(
            out[pos..].contains(&format!("--> {at}")),
            "{what} should point at {at}:\n{out}"
        );
    }
}

/// `serve` logs at trace level while an invalid edit is hot-reloaded; the secret never shows.
#[tokio::test]
async fn serve_keeps_secrets_out_of_logs_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/a.toml"), GOOD).unwrap();
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "serve",
            "--listen",
            &listen,
            "--database-url",
            "sqlite://serve.db",
        ])
        .current_dir(dir.path())
        .env("CRM_TOKEN", SECRET)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{listen}");
    common::eventually(30, "serve to answer /healthz", || {
        let c = client.clone();
        let url = format!("{base}/healthz");
        async move {
            c.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    std::fs::write(
        dir.path().join("mappings/b.toml"),
        "[syncs.X]\ntimezone = \"${CRM_TOKEN}\"\n",
    )
    .unwrap();
    common::eventually(30, "the invalid edit to be seen", || {
        let c = client.clone();
        let url = format!("{base}/readyz");
        async move {
            let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
            (v["config"]["valid"] == false).then_some(())
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("Invalid mapping edit"), "{logs}");
    assert!(
        !logs.contains(SECRET),
        "a secret leaked into the logs:\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "a log written to a file carries no ANSI colour codes:\n{logs}"
    );
}

/// Starts `recsync demo` (every address on a free port) in `dir`, and collects what it prints
/// up to the end of its curl examples.
fn start_demo(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("demo prints its addresses");
        lines.push(line);
    }
    (child, lines)
}

/// `demo --odoo` also runs a fake Odoo: its partners arrive with their countries, and the
/// printed Odoo edit and webhook commands work as printed.
#[tokio::test]
async fn demo_with_odoo_brings_the_fake_odoos_partners() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_demo(dir.path(), &["--odoo", "--odoo-listen", "127.0.0.1:0"]);
    let api = lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("recsync API:")
                .map(|r| r.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let key = api
        .split("key: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    let base = api.split_whitespace().next().unwrap().to_string();
    let client = reqwest::Client::new();
    let partners = || {
        let (c, url, key) = (
            client.clone(),
            format!("{base}/models/partner/records?expand=country&limit=100"),
            key.clone(),
        );
        async move {
            let v: serde_json::Value = c
                .get(url)
                .header("X-Api-Key", key)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["records"].as_array().cloned()
        }
    };
    let records = partners().await.expect("partners");
    assert_eq!(records.len(), 21, "the fake's 20 partners and its admin");
    assert!(
        records.iter().any(|r| r["country"]["code"].is_string()),
        "countries by code"
    );
    let run = |needle: &str| {
        let cmd = lines
            .iter()
            .find(|l| l.contains(needle) && l.contains("curl"))
            .unwrap_or_else(|| panic!("no {needle} command in {lines:#?}"))
            .trim()
            .to_string();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run("_fake/records/res.partner");
    let answer = run("webhooks/odoo/erp");
    assert!(answer.contains("accepted"), "{answer}");
    common::eventually(
        20,
        "the Odoo edit to arrive through the webhook",
        || async {
            partners()
                .await?
                .iter()
                .any(|r| r["email"] == "changed@example.com")
                .then_some(())
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `demo` starts on the embedded default from any folder and prints addresses that work.
#[tokio::test]
async fn demo_starts_and_prints_working_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_demo(dir.path(), &[]);
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
            .unwrap_or_else(|| panic!("no {prefix} line in {lines:#?}"))
    };
    let readyz = find("Readiness:");
    let api = find("recsync API:");
    let key = api
        .split("key: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    let base = api.split_whitespace().next().unwrap().to_string();
    let body: serde_json::Value = reqwest::get(readyz).await.unwrap().json().await.unwrap();
    // The peer's sample contacts arrived through its call backs, with their companies.
    let client = reqwest::Client::new();
    let contacts: serde_json::Value = client
        .get(format!("{base}/models/contact/records"))
        .query(&[("expand", "company")])
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let records = contacts["records"].as_array().unwrap();
    assert_eq!(records.len(), 4, "{contacts}");
    assert_eq!(records[0]["company"]["name"], "Acme Tools");
    // The printed PATCH example works as printed, and the edit reaches the peer.
    let patch = lines
        .iter()
        .find(|l| l.contains("-X PATCH"))
        .unwrap()
        .trim()
        .to_string();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&patch)
        .output()
        .unwrap();
    assert!(out.status.success(), "{patch}");
    let edited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(edited["phone"], "+34 600 111 222");
    let peer_records = find("Peer records:");
    common::eventually(20, "the edit to reach the peer", || {
        let c = client.clone();
        let url = peer_records.clone();
        async move {
            let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
            v["records"]
                .as_array()?
                .iter()
                .any(|r| r["phone"] == "+34 600 111 222")
                .then_some(())
        }
    })
    .await;
    // The printed `plan` command works as printed, from the demo's folder.
    let plan = lines
        .iter()
        .find(|l| l.contains(" plan CON --full"))
        .unwrap()
        .trim()
        .to_string();
    let plan = plan.split("   #").next().unwrap().to_string();
    assert!(!plan.contains("cargo"), "{plan}");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&plan)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{plan}\n{printed}");
    assert!(printed.contains("CON"), "{printed}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["config"]["syncs"], 2, "{body}");
    assert!(dir.path().join("recsync-demo.db").exists());
}

/// `discover` prints an Odoo model's `external_models` block from `fields_get`, ready to paste
/// (it compiles), never the key; an unknown model or web service is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_prints_an_odoo_model_block_ready_to_paste() {
    let fake = recsync::peer::odoo::FakeOdoo::bind(Default::default()).unwrap();
    let url = fake.url();
    tokio::spawn(fake.run());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let service = format!(
        "[web_services.erp]\nkind = \"odoo\"\nurl = \"{url}\"\ndatabase = \"fake\"\napi_key = \"${{CRM_TOKEN}}\"\n"
    );
    std::fs::write(dir.path().join("mappings/erp.toml"), &service).unwrap();
    let path = dir.path().to_path_buf();
    let run = move |args: Vec<&'static str>| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || recsync(&path, &args))
    };
    // The fake accepts its own key only; the configured one is refused, and not shown.
    let o = run(vec!["discover", "erp", "res.partner"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    assert!(
        out.contains("web service `erp`") && out.contains("refused"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    let o = run(vec!["validate", "--online"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    assert!(out.contains("FAIL  erp:") && !out.contains(SECRET), "{out}");

    let service = service.replace("${CRM_TOKEN}", "fake-odoo-api-key-0123456789");
    std::fs::write(dir.path().join("mappings/erp.toml"), &service).unwrap();
    let o = run(vec!["discover", "erp", "res.partner"]).await.unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        out.contains(
            "[external_models.res_partner]\nkind = \"odoo\"\nodoo_model = \"res.partner\""
        ),
        "{out}"
    );
    assert!(
        out.contains("country_id = { type = \"many2one\", relation = \"res.country\" }"),
        "{out}"
    );
    assert!(
        out.contains("name = { type = \"char\", required = true }"),
        "{out}"
    );
    assert!(!out.contains("fake-odoo-api-key"), "{out}");
    // Pasted next to the web service, the block compiles.
    std::fs::write(dir.path().join("mappings/partner.toml"), &out).unwrap();
    let o = run(vec!["validate"]).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    std::fs::remove_file(dir.path().join("mappings/partner.toml")).unwrap();

    // `validate --online` logs in for real.
    let o = run(vec!["validate", "--online"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("ok    erp:") && out.contains("json2, logged in"),
        "{out}"
    );

    let o = run(vec!["discover", "erp", "res.nothing"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    assert!(
        out.contains("`erp`") && out.contains("res.nothing"),
        "{out}"
    );
    let o = run(vec!["discover", "nope"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(64), "{out}");
    assert!(
        out.contains("no web service `nope`; configured: erp"),
        "{out}"
    );
}

/// `discover` reads a sample page of an HTTP JSON API and prints an `external_models` block
/// with the fields, their types, where the records are and how pages follow; pasted, it
/// compiles. `validate --online` asks the service with the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_prints_an_http_resource_block_from_a_sample_page() {
    use recsync::peer::http::{FakeAuth, FakeHttp, HttpOptions};
    let fake = FakeHttp::bind(HttpOptions {
        auth: FakeAuth::Bearer("crm-token-0123456789".into()),
        ..Default::default()
    })
    .unwrap();
    fake.state.seed("contacts", 12);
    fake.state.seed("items", 5);
    let url = fake.url();
    tokio::spawn(fake.run());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let service = format!(
        "[web_services.crm_api]\nkind = \"http\"\nbase_url = \"{url}\"\nauth = {{ mode = \"bearer\", token = \"${{CRM_TOKEN}}\" }}\n"
    );
    std::fs::write(dir.path().join("mappings/crm.toml"), &service).unwrap();
    let path = dir.path().to_path_buf();
    let run = move |args: Vec<&'static str>| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || recsync(&path, &args))
    };
    // The configured token (CRM_TOKEN is the test's secret) is refused, and not shown.
    let o = run(vec!["discover", "crm_api", "/crm/v3/objects/contacts"])
        .await
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    assert!(
        out.contains("web service `crm_api`") && out.contains("HTTP 401"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    let o = run(vec!["validate", "--online"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    assert!(
        out.contains("FAIL  crm_api:") && !out.contains(SECRET),
        "{out}"
    );

    let service = service.replace("${CRM_TOKEN}", "crm-token-0123456789");
    std::fs::write(dir.path().join("mappings/crm.toml"), &service).unwrap();
    let o = run(vec!["validate", "--online"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ok    crm_api:"), "{out}");
    let o = run(vec!["discover", "crm_api", "/crm/v3/objects/contacts"])
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for expected in [
        "[external_models.contacts]\nkind = \"http\"\n[external_models.contacts.list]\npath = \"/crm/v3/objects/contacts\"\nrecords = \"$.results[*]\"",
        "paginate = { style = \"cursor\", param = \"after\", next = \"$.paging.next.after\" }",
        "archived  = \"boolean\"",
        "createdAt = \"datetime\"",
        "id        = \"char\"",
        "#   external = \"$.properties.email\"   (char)",
    ] {
        assert!(out.contains(expected), "{expected:?} in\n{out}");
    }
    assert!(!out.contains("crm-token-0123456789"), "{out}");
    let o = run(vec!["discover", "crm_api", "/v1/link_header/items"])
        .await
        .unwrap();
    let items = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        items.contains("records = \"$[*]\"") && items.contains("score      = \"integer\""),
        "{items}"
    );
    // Pasted next to the web service, both blocks compile.
    std::fs::write(dir.path().join("mappings/contacts.toml"), &out).unwrap();
    std::fs::write(dir.path().join("mappings/items.toml"), &items).unwrap();
    let o = run(vec!["validate"]).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(vec!["discover", "crm_api", "contacts"]).await.unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "a configured resource is read through its list: {}",
        text(&o)
    );
    let o = run(vec!["discover", "crm_api", "nothing"]).await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    assert!(out.contains("neither a path"), "{out}");
}

/// `validate --online` tries a Dropbox account's credentials for real (a token refresh and a
/// listing): a wrong secret fails naming the service's URL and what to check, never a secret;
/// the right ones answer ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_tries_dropbox_credentials() {
    let fake = recsync::peer::dropbox::FakeDropbox::bind(Default::default()).unwrap();
    let url = fake.url();
    tokio::spawn(fake.run());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let service = |secret: &str| {
        format!(
            "[web_services.box]\nkind = \"dropbox\"\napp_key = \"fake-app-key\"\napp_secret = \"{secret}\"\nrefresh_token = \"fake-refresh-token\"\napi_url = \"{url}\"\n"
        )
    };
    std::fs::write(dir.path().join("mappings/box.toml"), service(SECRET)).unwrap();
    let path = dir.path().to_path_buf();
    let run = move || {
        let path = path.clone();
        tokio::task::spawn_blocking(move || recsync(&path, &["validate", "--online"]))
    };
    let o = run().await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(" box: "))
        .unwrap_or_else(|| panic!("no line for box: {out}"));
    assert!(line.trim_start().starts_with("FAIL"), "{out}");
    assert!(line.contains(&url), "the line names the URL: {out}");
    assert!(
        line.contains("app_secret"),
        "the line says what to check: {out}"
    );
    assert!(
        line.contains("web service `box`")
            && line.contains("refused the credentials (invalid_grant)")
            && !line.contains("malformed"),
        "the refusal is named for what it is: {out}"
    );
    assert!(!out.contains(SECRET), "{out}");

    // An address where nothing answers: named, with the URL and what to check.
    std::fs::write(
        dir.path().join("mappings/box.toml"),
        service("fake-app-secret").replace(&url, "http://127.0.0.1:1"),
    )
    .unwrap();
    let o = run().await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(69), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(" box: "))
        .unwrap_or_else(|| panic!("no line for box: {out}"));
    assert!(
        line.contains("web service `box` (http://127.0.0.1:1)")
            && line.contains("could not be reached")
            && line.contains("api_url"),
        "{out}"
    );

    std::fs::write(
        dir.path().join("mappings/box.toml"),
        service("fake-app-secret"),
    )
    .unwrap();
    let o = run().await.unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ok    box:"), "{out}");
}

/// The fake Dropbox takes the app's credentials at `/oauth2/token` as HTTP Basic, as Dropbox
/// does, as well as form fields; wrong ones are `invalid_grant` either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_dropbox_takes_basic_client_credentials() {
    let fake = recsync::peer::dropbox::FakeDropbox::bind(Default::default()).unwrap();
    let url = fake.url();
    tokio::spawn(fake.run());
    let client = reqwest::Client::new();
    let token = |user: &'static str, secret: &'static str| {
        client
            .post(format!("{url}/oauth2/token"))
            .basic_auth(user, Some(secret))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=refresh_token&refresh_token=fake-refresh-token")
            .send()
    };
    let r = token("fake-app-key", "fake-app-secret").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["access_token"].is_string(), "{body}");
    let r = token("fake-app-key", "wrong").await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

/// Each fake names its test hooks in `--help` and at `/`: every `/_fake/` route its page in
/// `docs/fakes/` shows with curl is on both.
#[tokio::test]
async fn the_fakes_name_their_test_hooks_in_help_and_at_their_address() {
    let odoo = recsync::peer::odoo::FakeOdoo::bind(Default::default()).unwrap();
    let http = recsync::peer::http::FakeHttp::bind(Default::default()).unwrap();
    let dbx = recsync::peer::dropbox::FakeDropbox::bind(Default::default()).unwrap();
    let urls = [
        ("fake-odoo", "odoo", odoo.url()),
        ("fake-http", "http", http.url()),
        ("fake-dropbox", "dropbox", dbx.url()),
    ];
    tokio::spawn(odoo.run());
    tokio::spawn(http.run());
    tokio::spawn(dbx.run());
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (command, page, url) in urls {
        let doc = std::fs::read_to_string(root.join(format!("docs/fakes/{page}.md"))).unwrap();
        // The hooks the page's examples call: `/_fake/<name>`.
        let mut hooks: Vec<String> = doc
            .match_indices("/_fake/")
            .map(|(i, _)| {
                let rest = &doc[i + "/_fake/".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                format!("/_fake/{}", &rest[..end])
            })
            .filter(|h| h.len() > "/_fake/".len())
            .collect();
        hooks.sort();
        hooks.dedup();
        assert!(hooks.len() >= 3, "{page}.md shows its hooks: {hooks:?}");
        let help = text(&recsync(dir.path(), &[command, "--help"]));
        let r = reqwest::get(format!("{url}/")).await.unwrap();
        assert_eq!(r.status(), 200, "{command} answers /");
        let index = r.text().await.unwrap();
        for hook in &hooks {
            assert!(
                help.contains(hook.as_str()),
                "{command} --help names {hook}:\n{help}"
            );
            assert!(
                index.contains(hook.as_str()),
                "{command}'s / names {hook}:\n{index}"
            );
        }
        let doc_path = format!("docs/fakes/{page}.md");
        assert!(
            help.contains(&doc_path),
            "{command} --help points at {doc_path}"
        );
        assert!(
            index.contains(&doc_path),
            "{command}'s / points at {doc_path}"
        );
    }
}

/// `discover` needs only its web service: a mistake elsewhere (an API key scoped to a sync not
/// written yet, a sync naming a model not declared) is mentioned, not in the way; a mistake in
/// the web service itself stops it with that mistake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_needs_only_its_web_service_to_be_sound() {
    use recsync::peer::http::{FakeAuth, FakeHttp, HttpOptions};
    let fake = FakeHttp::bind(HttpOptions {
        auth: FakeAuth::Bearer("crm-token-0123456789".into()),
        ..Default::default()
    })
    .unwrap();
    fake.state.seed("contacts", 3);
    let url = fake.url();
    tokio::spawn(fake.run());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        "[[api_keys]]\nname = \"crm\"\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nscopes = [\"sync:CONTACTS\"]\n",
    )
    .unwrap();
    let service = format!(
        "[web_services.crm_api]\nkind = \"http\"\nbase_url = \"{url}\"\nauth = {{ mode = \"bearer\", token = \"crm-token-0123456789\" }}\n"
    );
    std::fs::write(dir.path().join("mappings/crm.toml"), &service).unwrap();
    std::fs::write(
        dir.path().join("mappings/draft.toml"),
        "[syncs.LEADS]\nmodel = \"lead\"\nexternal_model = \"contacts\"\nweb_service = \"crm_api\"\n",
    )
    .unwrap();
    let path = dir.path().to_path_buf();
    let run = move |args: Vec<&'static str>| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || recsync(&path, &args))
    };
    // validate names the mistakes; discover goes on, saying they are there.
    let o = run(vec!["validate"]).await.unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    let o = run(vec!["discover", "crm_api", "/crm/v3/objects/contacts"])
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out.contains("[external_models.contacts]"), "{out}");
    assert!(
        err.contains("mistakes elsewhere") && err.contains("recsync validate"),
        "{err}"
    );
    // A mistake in the web service itself stops it, named.
    std::fs::write(
        dir.path().join("mappings/crm.toml"),
        format!("{service}max_concurrency = 0\n"),
    )
    .unwrap();
    let o = run(vec!["discover", "crm_api", "/crm/v3/objects/contacts"])
        .await
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(78), "{out}");
    assert!(
        out.contains("`max_concurrency` must be between 1 and 1024"),
        "{out}"
    );
}
