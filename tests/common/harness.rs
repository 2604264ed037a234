//! A running recsync (in-process, real HTTP) wired to an in-process reference peer.
#![allow(dead_code)]

use super::TestDb;
use recsync::app::{self, BuildOptions};
use recsync::config::{self, ApiKey, Scope, settings::hash_key};
use recsync::engine::Engine;
use recsync::peer::{Callback, Peer, PeerOptions, PeerState};
use std::sync::Arc;

pub const CRM_KEY: &str = "MGNN4Q4JI6Z3I8J1ROT2F3QK7CESDP16";
pub const READ_KEY: &str = "reader-key-0123456789";
pub const ADMIN_KEY: &str = "admin-key-0123456789";
pub const PEER_KEY: &str = "peer-protocol-key-0123";
pub const WRITE_KEY: &str = "writer-key-0123456789";
pub const OPERATE_KEY: &str = "operator-key-0123456789";

/// The test mapping. `@PEER@` is replaced by the peer's URL.
pub const MAPPING: &str = r#"
[models.company]
display = "name"
fields = { name = { type = "char", required = true }, vat = "char" }

[models.contact]
display = "name"
[models.contact.fields]
name     = { type = "char", required = true }
email    = "char"
customer = "boolean"
company  = { type = "many2one", model = "company" }
stage    = { type = "selection", values = ["lead", "customer", "lost"] }
visits   = "integer"
city     = "char"
manager  = { type = "many2one", model = "contact" }
partners = { type = "many2many", model = "company" }
pin      = { type = "char", secret = true }

[web_services.crm]
shipping_url = "@PEER@/api/crm/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[web_services.erp]
shipping_url = "@PEER@/api/erp/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }
timeout = "5s"

[web_services.shop]
auth = { mode = "bearer", token = "peer-protocol-key-0123" }

[external_models.crm_contact]
[external_models.crm_contact.fields]
unique_id  = "char"
name       = "char"
email      = "char"
is_customer = "boolean"
company_id = "char"
status     = "char"
visits     = "integer"
address    = "json"
manager_id = "char"
partner_ids = "json"
pin        = "char"

[external_models.crm_company]
fields = { unique_id = "char", name = "char", vat = "char" }

[syncs.COMP]
model = "company"
external_model = "crm_company"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "vat", external = "vat" }]

[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
mode = "realtime"
propagate_deletes = true
external_ref = "unique_id"
fields = [
  { local = "name",     external = "name" },
  { local = "email",    external = "email" },
  { local = "customer", external = "is_customer" },
  { local = "company",  external = "company_id", ref_sync = "COMP" },
  { local = "stage",    external = "status", map = { lead = "L", customer = "C", lost = "X" } },
  { local = "visits",   external = "visits" },
  { local = "city",     external = "$.address.city" },
  { local = "pin",      external = "pin" },
]

[web_services.pullsrc]
url = "@PEER@/api/pull/fetch"
confirmation_url = "@PEER@/api/pull/confirm"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.PULL]
model = "contact"
external_model = "crm_contact"
web_service = "pullsrc"
direction = "to_local"
mode = "cron"
every = "1h"
limit = 2
external_ref = "unique_id"
fields = [
  { local = "name", external = "name" },
  { local = "email", external = "email" },
  { local = "manager", external = "manager_id", ref_sync = "PULL" },
]

[web_services.pushdst]
shipping_url = "@PEER@/api/push/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.PUSH]
model = "contact"
external_model = "crm_contact"
web_service = "pushdst"
direction = "to_external"
mode = "cron"
every = "1h"
propagate_deletes = true
domain = [["stage", "=", "lost"]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[web_services.locsvc]
shipping_url = "@PEER@/api/loc/ship"
auth = { mode = "api_key", header = "api_key", key = "peer-protocol-key-0123" }

[syncs.LOC]
model = "contact"
external_model = "crm_contact"
web_service = "locsvc"
direction = "bidirectional"
mode = "realtime"
priority = "local"
domain = [["email", "=", "conflict@example.com"]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[syncs.VAT]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
fields = [
  { local = "name", external = "name" },
  { local = "company", external = "company_id", ref_field = "vat" },
  { local = "partners", external = "partner_ids", ref_sync = "COMP" },
]

[syncs.ERP]
model = "contact"
external_model = "crm_contact"
web_service = "erp"
direction = "to_external"
mode = "realtime"
propagate_deletes = true
domain = [["customer", "=", true]]
external_ref = "unique_id"
fields = [
  { local = "name",     external = "name" },
  { local = "email",    external = "email" },
  { local = "customer", external = "is_customer" },
]

[syncs.SHOP]
model = "contact"
external_model = "crm_contact"
web_service = "shop"
direction = "to_external"
mode = "realtime"
propagate_deletes = true
domain = [["stage", "=", "customer"]]
external_ref = "unique_id"
fields = [{ local = "name", external = "name" }, { local = "email", external = "email" }]

[[syncs.SHOP.endpoints]]
action = "create"
method = "POST"
url = "@PEER@/api/shop"
response_id = "$.id"

[[syncs.SHOP.endpoints]]
action = "write"
method = "PUT"
url = "@PEER@/api/shop/{external_id}"

[[syncs.SHOP.endpoints]]
action = "unlink"
method = "DELETE"
url = "@PEER@/api/shop/{external_id}"
"#;

pub struct Harness {
    pub base: String,
    pub peer_url: String,
    pub engine: Arc<Engine>,
    pub peer: Arc<PeerState>,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    peer_handle: actix_web::dev::ServerHandle,
}

pub struct Tweaks {
    pub body_limit: usize,
    pub max_attempts: u32,
    /// More mapping text appended to [`MAPPING`] (`@PEER@` is replaced there too).
    pub extra_mapping: String,
    /// The `change_log` setting (false: success rows are not written).
    pub change_log: bool,
    /// The `rate_limit` setting (0: none).
    pub rate_limit: u32,
    /// A mapping used instead of [`MAPPING`] (`extra_mapping` is still appended).
    pub mapping: Option<String>,
    /// Environment variables the mapping's `${VAR}` references see.
    pub env: std::collections::HashMap<String, String>,
    /// Start without the scheduler (a scheduler that stopped).
    pub no_scheduler: bool,
    /// The `claim_timeout` setting (`None`: the default).
    pub claim_timeout: Option<std::time::Duration>,
}

impl Default for Tweaks {
    fn default() -> Self {
        Tweaks {
            body_limit: 64 * 1024,
            max_attempts: 4,
            extra_mapping: String::new(),
            change_log: true,
            rate_limit: 0,
            mapping: None,
            env: Default::default(),
            no_scheduler: false,
            claim_timeout: None,
        }
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Tweaks::default()).await
    }

    pub async fn with(t: Tweaks) -> Harness {
        let peer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer_url = format!("http://{}", peer_listener.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mappings")).unwrap();
        let base = t.mapping.as_deref().unwrap_or(MAPPING);
        let mapping = format!("{base}\n{}", t.extra_mapping).replace("@PEER@", &peer_url);
        let mut env = t.env.clone();
        env.insert("RECSYNC_PEER_URL".into(), peer_url.clone());
        env.entry("PEER_API_KEY".into())
            .or_insert_with(|| PEER_KEY.into());
        std::fs::write(dir.path().join("mappings/test.toml"), &mapping).unwrap();
        let plan = config::compile_texts(
            &[("mappings/test.toml", &mapping)],
            &env,
            recsync::connectors::KINDS,
        )
        .unwrap_or_else(|e| panic!("{}", e.render()));
        let db = TestDb::new().await;
        let mut settings = config::Settings {
            database_url: secrecy::SecretString::from(db.url.clone()),
            listen: "127.0.0.1:0".parse().unwrap(),
            mappings: dir.path().join("mappings"),
            body_limit: t.body_limit,
            outbox_max_attempts: t.max_attempts,
            outbox_backoff: std::time::Duration::from_millis(50),
            change_log: t.change_log,
            rate_limit: t.rate_limit,
            ..Default::default()
        };
        if let Some(c) = t.claim_timeout {
            settings.claim_timeout = c;
        }
        settings.api_keys = vec![
            ApiKey {
                name: "crm".into(),
                sha256: hash_key(CRM_KEY),
                scopes: vec![Scope::Sync("CON".into()), Scope::Sync("COMP".into())],
            },
            ApiKey {
                name: "reader".into(),
                sha256: hash_key(READ_KEY),
                scopes: vec![Scope::Read],
            },
            ApiKey {
                name: "admin".into(),
                sha256: hash_key(ADMIN_KEY),
                scopes: vec![Scope::Admin],
            },
            ApiKey {
                name: "writer".into(),
                sha256: hash_key(WRITE_KEY),
                scopes: vec![Scope::Write],
            },
            ApiKey {
                name: "operator".into(),
                sha256: hash_key(OPERATE_KEY),
                scopes: vec![Scope::Operate],
            },
        ];
        let opts = BuildOptions {
            no_scheduler: t.no_scheduler,
            ..BuildOptions::default()
        };
        let app = app::build(settings, plan, opts).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let engine = app.engine();
        let server = tokio::spawn(app.run_until_stopped());
        let peer = Peer::from_listener(
            peer_listener,
            PeerOptions {
                listen: String::new(),
                api_key: Some(PEER_KEY.into()),
                id_field: "unique_id".into(),
                synthetic: Default::default(),
                signing_secret: None,
                callback: Some(Callback {
                    url: base.clone(),
                    key: CRM_KEY.into(),
                    syncs: [("crm".to_string(), "CON".to_string())].into(),
                }),
            },
        )
        .unwrap();
        let peer_state = peer.state.clone();
        let peer_handle = peer.handle();
        tokio::spawn(peer.run());
        Harness {
            base,
            peer_url,
            engine,
            peer: peer_state,
            // No idle connection is kept between requests: one the server closes as the next
            // request goes out fails it (`IncompleteMessage`), 1 run in 40.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
            db,
            dir,
            server,
            peer_handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a local record through the records API (as an admin), expects 201, and
    /// returns its id.
    pub async fn create_record(&self, model: &str, values: serde_json::Value) -> i64 {
        let r = self
            .client
            .post(self.url(&format!("/api/v1/models/{model}/records")))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&values)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "POST {model}");
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    /// Changes a local record through the records API (as an admin) and expects 200.
    pub async fn patch_record(&self, model: &str, id: i64, values: serde_json::Value) {
        let r = self
            .client
            .patch(self.url(&format!("/api/v1/models/{model}/records/{id}")))
            .header("X-Api-Key", ADMIN_KEY)
            .json(&values)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "PATCH {model} {id}");
    }

    /// The link of an external id, looked up by a sync's code (which names its binding).
    pub async fn link(&self, sync: &str, external_id: &str) -> Option<recsync::store::Link> {
        self.engine
            .store
            .link_by_external(sync, external_id)
            .await
            .unwrap()
    }

    /// Starts a run of `code` through the API and waits for it to finish.
    pub async fn run(&self, code: &str) -> recsync::store::Run {
        self.run_with(code, "").await
    }

    /// [`Harness::run`] with a query string (`?full=true`).
    pub async fn run_with(&self, code: &str, query: &str) -> recsync::store::Run {
        let r = self
            .client
            .post(self.url(&format!("/api/v1/syncs/{code}/run{query}")))
            .header("X-Api-Key", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{code}");
        let run_id = r.json::<serde_json::Value>().await.unwrap()["run_id"]
            .as_i64()
            .unwrap();
        super::eventually(30, "the run to finish", || async {
            self.engine
                .store
                .runs(Some(code), None, 100)
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.id == run_id && r.finished_at.is_some())
        })
        .await
    }

    /// Rows of the change-control log, newest first.
    pub async fn changes(&self, sync: &str) -> Vec<recsync::store::Change> {
        self.engine
            .store
            .changes(&recsync::store::ChangeFilter {
                sync: Some(sync.into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn all_changes(&self) -> Vec<recsync::store::Change> {
        self.engine
            .store
            .changes(&recsync::store::ChangeFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.server.abort();
        let _ = self.server.await;
        self.peer_handle.stop(false).await;
        let store = self.engine.store.clone();
        self.db.cleanup(store).await;
    }
}
