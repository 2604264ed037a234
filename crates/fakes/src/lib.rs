//! `recsync peer`: the reference external system. It serves the cron and send protocol
//! (`/api/<collection>/fetch`, `/confirm`, `/ship`), the real-time endpoint style
//! (`POST /api/<collection>`, `PUT`/`DELETE /api/<collection>/<id>`), an admin API to edit its
//! own records (`/peer/<collection>/records`), failure injection (`/peer/faults`), and can
//! call recsync's `/sync/...` back when its records change. Records live in memory.

pub mod dropbox;
pub mod http;
pub mod odoo;

/// An id as the peer takes it from a body: a non-blank text (trimmed) or an integer.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if !n.is_f64() => Some(n.to_string()),
        _ => None,
    }
}

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod protocol;
mod signing;
use protocol::*;

/// The page a fake answers at `/`: what it stands in for and its test hooks, for a person who
/// opens its address in a browser or with curl.
pub(crate) fn index_page(what: &str, doc: &str, hooks: &[(&str, &str)]) -> HttpResponse {
    let mut text = format!(
        "{what}\n\nA fake for rehearsals and tests: records live in memory and are lost when it \
         stops.\nIts test hooks (no credentials):\n\n"
    );
    for (route, does) in hooks {
        text.push_str(&format!("  {route:<40} {does}\n"));
    }
    text.push_str(&format!("\nEach hook, with curl examples: {doc}\n"));
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text)
}

/// Where and how the peer calls recsync back.
#[derive(Debug, Clone)]
pub struct Callback {
    /// recsync's base URL, e.g. `http://127.0.0.1:8071`.
    pub url: String,
    /// The key sent in the `api_key` header.
    pub key: String,
    /// collection -> sync code.
    pub syncs: HashMap<String, String>,
}

/// How to run the peer.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    pub listen: String,
    /// When set, protocol calls must carry this key (`api_key`, `X-Api-Key` or Bearer).
    pub api_key: Option<String>,
    /// The field holding a record's id in payloads (the syncs' `external_ref`).
    pub id_field: String,
    pub callback: Option<Callback>,
    /// Synthetic collections: `count` generated records served to pulls without being stored,
    /// and deliveries counted without being kept (for benchmarks of any size).
    pub synthetic: HashMap<String, u64>,
    /// A Standard Webhooks secret (`whsec_...`): deliveries to `ship` must be signed with it
    /// (401 otherwise), and calls back to recsync are signed with it.
    pub signing_secret: Option<String>,
}

/// Failure injection for the protocol endpoints (not the admin API).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Fraction of calls answered with 503, 0.0 to 1.0.
    pub error_rate: f64,
    /// The next N calls fail with `fail_status`.
    pub fail_next: u32,
    /// Status of `fail_next` failures (default 503).
    pub fail_status: Option<u16>,
    /// Added to every call.
    pub latency_ms: u64,
    /// A random extra delay of up to this many milliseconds, per call.
    pub jitter_ms: u64,
    /// The next N calls get 429 with `Retry-After: retry_after`.
    pub rate_limit_next: u32,
    pub retry_after: u64,
    /// The next N calls get a 200 whose body is not JSON.
    pub malformed_next: u32,
    /// The next N calls get JSON of the wrong shape (no `content`, then `content` a string).
    pub wrong_shape_next: u32,
    /// The next N calls get a 200 of about 10 MB.
    pub huge_next: u32,
    /// The next N calls get JSON without `status` (only `content`).
    pub no_status_next: u32,
    /// The next N calls answer one byte every 100 ms (slow loris).
    pub trickle_next: u32,
    /// Pulled pages carry each record twice.
    pub duplicate_records: bool,
    /// The listing (`list_url`) answers only this share of the records, every n-th one, as a
    /// service answering a partial list on a bad day would (1.0 or unset: all of them).
    pub list_share: Option<f64>,
    /// Confirmations are ignored: the same page is served for ever.
    pub repeat_page: bool,
    /// Limit the faults to one kind of call: `fetch`, `confirm`, `ship` or `endpoint`.
    pub only: Option<String>,
}

/// A delivery the peer received.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub via: &'static str,
    pub action: String,
    pub id: Option<String>,
    pub values: Value,
    pub status: u16,
}

#[derive(Debug, Clone, Serialize)]
struct Pending {
    action: &'static str,
    id: String,
    /// When the change was made on the peer's side (sent as `modified_at`).
    at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct Collection {
    /// For a synthetic collection: how many generated records were confirmed so far.
    confirmed: u64,
    /// For a synthetic collection: deliveries received.
    shipped: u64,
    records: BTreeMap<String, Map<String, Value>>,
    /// Changes made on the peer's side, waiting to be pulled and confirmed.
    changes: VecDeque<Pending>,
    received: Vec<Received>,
}

/// The peer's shared state.
pub struct PeerState {
    opts: PeerOptions,
    inner: Mutex<Inner>,
    http: reqwest::Client,
}

#[derive(Default)]
struct Inner {
    collections: HashMap<String, Collection>,
    faults: Faults,
    next_id: u64,
    /// Protocol calls received: (kind, collection, request body).
    calls: Vec<(String, String, Value)>,
    /// Answers already given, by `Idempotency-Key`: a repeated key gets the same answer and
    /// changes nothing (as a careful external system does).
    idempotent: HashMap<String, (u16, Value)>,
}

/// A running peer.
pub struct Peer {
    pub port: u16,
    pub state: Arc<PeerState>,
    server: actix_web::dev::Server,
}

impl Peer {
    /// Binds and prepares the peer; serve it with [`Peer::run`] (or spawn that).
    pub fn bind(opts: PeerOptions) -> std::io::Result<Peer> {
        let listener = TcpListener::bind(&opts.listen)?;
        Peer::from_listener(listener, opts)
    }

    /// Serves on a listener bound beforehand (so its port can be known first).
    pub fn from_listener(listener: TcpListener, opts: PeerOptions) -> std::io::Result<Peer> {
        let port = listener.local_addr()?.port();
        let state = Arc::new(PeerState {
            opts,
            inner: Mutex::new(Inner {
                next_id: 1000,
                ..Default::default()
            }),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
            .listen(listener)?
            .disable_signals()
            .workers(2)
            .run();
        Ok(Peer {
            port,
            state,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/peer/healthz",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"status": "ok"})) }),
    )
    .route("/peer/faults", web::get().to(get_faults))
    .route("/peer/faults", web::put().to(put_faults))
    .route("/peer/{coll}/records", web::get().to(admin_list))
    .route("/peer/{coll}/records", web::post().to(admin_create))
    .route("/peer/{coll}/records/{id}", web::get().to(admin_get))
    .route("/peer/{coll}/records/{id}", web::put().to(admin_update))
    .route("/peer/{coll}/records/{id}", web::delete().to(admin_delete))
    .route("/peer/{coll}/received", web::get().to(admin_received))
    .route("/peer/{coll}/stats", web::get().to(admin_stats))
    .route("/api/{coll}/fetch", web::post().to(fetch))
    .route("/api/{coll}/confirm", web::post().to(confirm))
    .route("/api/{coll}/ship", web::post().to(ship))
    .route("/api/{coll}/list", web::post().to(list))
    .route("/api/{coll}", web::post().to(rt_create))
    .route("/api/{coll}/{id}", web::put().to(rt_update))
    .route("/api/{coll}/{id}", web::delete().to(rt_delete));
}

impl PeerState {
    fn idempotency_key(req: &HttpRequest, coll: &str) -> Option<String> {
        req.headers()
            .get("Idempotency-Key")
            .and_then(|v| v.to_str().ok())
            .map(|k| format!("{coll}\u{0}{k}"))
    }

    /// The answer already given to this `Idempotency-Key`, if any.
    fn replay(&self, req: &HttpRequest, coll: &str) -> Option<HttpResponse> {
        let key = Self::idempotency_key(req, coll)?;
        let (status, body) = self.with(|i| i.idempotent.get(&key).cloned())?;
        self.with(|i| {
            i.calls
                .push(("replayed".into(), coll.to_string(), body.clone()))
        });
        Some(HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK)).json(body))
    }

    fn remember(&self, req: &HttpRequest, coll: &str, status: u16, body: &Value) {
        if let Some(key) = Self::idempotency_key(req, coll) {
            self.with(|i| i.idempotent.insert(key, (status, body.clone())));
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("peer lock"))
    }

    /// Adds or replaces a record on the peer's side (as a user of the external system would),
    /// queues it for pulls and calls recsync back. Returns its id.
    pub async fn upsert(
        &self,
        coll: &str,
        id: Option<String>,
        values: Map<String, Value>,
    ) -> String {
        let (id, created, values) = self.with(|inner| {
            let id = id.unwrap_or_else(|| {
                inner.next_id += 1;
                inner.next_id.to_string()
            });
            let c = inner.collections.entry(coll.to_string()).or_default();
            let created = !c.records.contains_key(&id);
            let rec = c.records.entry(id.clone()).or_default();
            rec.extend(values);
            rec.insert(self.opts.id_field.clone(), Value::String(id.clone()));
            let snapshot = rec.clone();
            c.changes.push_back(Pending {
                action: if created { "insert" } else { "update" },
                id: id.clone(),
                at: chrono::Utc::now(),
            });
            (id, created, snapshot)
        });
        self.call_back(
            coll,
            if created { "create" } else { "update" },
            &id,
            Some(values),
        )
        .await;
        id
    }

    /// Deletes a record on the peer's side; false if it did not exist.
    pub async fn remove(&self, coll: &str, id: &str) -> bool {
        let existed = self.with(|inner| {
            let c = inner.collections.entry(coll.to_string()).or_default();
            let existed = c.records.remove(id).is_some();
            if existed {
                c.changes.push_back(Pending {
                    action: "delete",
                    id: id.to_string(),
                    at: chrono::Utc::now(),
                });
            }
            existed
        });
        if existed {
            self.call_back(coll, "delete", id, None).await;
        }
        existed
    }

    /// Changes, adds (`Some`) or removes (`None`) a record without queuing the change for
    /// pulls or calling back: an event the service failed to report, which only a listing
    /// (reconciliation) finds.
    pub fn set_quietly(&self, coll: &str, id: &str, values: Option<Map<String, Value>>) {
        self.with(|inner| {
            let c = inner.collections.entry(coll.to_string()).or_default();
            match values {
                Some(v) => {
                    let rec = c.records.entry(id.to_string()).or_default();
                    rec.extend(v);
                    rec.insert(self.opts.id_field.clone(), Value::String(id.to_string()));
                }
                None => {
                    c.records.remove(id);
                }
            }
        });
    }

    /// A record's values.
    pub fn record(&self, coll: &str, id: &str) -> Option<Map<String, Value>> {
        self.with(|inner| {
            inner
                .collections
                .get(coll)
                .and_then(|c| c.records.get(id).cloned())
        })
    }

    /// Every record of a collection, by id.
    pub fn records(&self, coll: &str) -> BTreeMap<String, Map<String, Value>> {
        self.with(|inner| {
            inner
                .collections
                .get(coll)
                .map(|c| c.records.clone())
                .unwrap_or_default()
        })
    }

    /// For a synthetic collection: (records confirmed, deliveries received).
    pub fn synthetic_counts(&self, coll: &str) -> (u64, u64) {
        self.with(|inner| {
            inner
                .collections
                .get(coll)
                .map(|c| (c.confirmed, c.shipped))
                .unwrap_or((0, 0))
        })
    }

    /// Deliveries received on a collection, in order.
    pub fn received(&self, coll: &str) -> Vec<Received> {
        self.with(|inner| {
            inner
                .collections
                .get(coll)
                .map(|c| c.received.clone())
                .unwrap_or_default()
        })
    }

    pub fn set_faults(&self, f: Faults) {
        self.with(|inner| inner.faults = f);
    }

    async fn call_back(
        &self,
        coll: &str,
        action: &str,
        id: &str,
        values: Option<Map<String, Value>>,
    ) {
        let Some(cb) = &self.opts.callback else {
            return;
        };
        let Some(code) = cb.syncs.get(coll) else {
            return;
        };
        let base = cb.url.trim_end_matches('/');
        let body = match action {
            "create" | "update" => {
                serde_json::to_vec(&values.unwrap_or_default()).expect("JSON values")
            }
            _ => Vec::new(),
        };
        let mut req = match action {
            "create" => self.http.post(format!("{base}/sync/{code}/create")),
            "update" => self.http.put(format!("{base}/sync/{code}/{id}")),
            _ => self.http.delete(format!("{base}/sync/{code}/{id}")),
        };
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(secret) = &self.opts.signing_secret {
            for (name, value) in signing::headers(secret, &body) {
                req = req.header(name, value);
            }
        }
        // As a system traced with OpenTelemetry would: each call back is a span of its own
        // trace, which recsync continues.
        req = req.header(
            "traceparent",
            format!(
                "00-{}-{}-01",
                hex::encode(rand::random::<[u8; 16]>()),
                hex::encode(rand::random::<[u8; 8]>())
            ),
        );
        match req.header("api_key", &cb.key).body(body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(collection = coll, id, %status, body, "recsync refused the peer's call back");
            }
            Err(e) => {
                tracing::warn!(collection = coll, id, error = %e, "The peer could not call recsync back")
            }
        }
    }

    fn authorised(&self, req: &HttpRequest) -> bool {
        let Some(expected) = &self.opts.api_key else {
            return true;
        };
        let h = req.headers();
        let given = h
            .get("api_key")
            .or_else(|| h.get("x-api-key"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                h.get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string)
            });
        given.as_deref() == Some(expected.as_str())
    }

    /// Applies the fault switches; `Some` is the answer to give instead of the real one.
    /// Changes on the peer's side still waiting to be pulled and confirmed.
    pub fn pending(&self, coll: &str) -> usize {
        self.with(|i| i.collections.get(coll).map_or(0, |c| c.changes.len()))
    }

    /// Request bodies of the protocol calls of one kind (`fetch`, `confirm`; `ship` notes the
    /// action and external id on arrival) on a collection.
    pub fn calls(&self, coll: &str, kind: &str) -> Vec<Value> {
        self.with(|inner| {
            inner
                .calls
                .iter()
                .filter(|(k, c, _)| k == kind && c == coll)
                .map(|(_, _, b)| b.clone())
                .collect()
        })
    }

    fn note_call(&self, kind: &str, coll: &str, body: Value) {
        self.with(|inner| inner.calls.push((kind.to_string(), coll.to_string(), body)));
    }

    async fn fault(&self, req: &HttpRequest, kind: &str) -> Option<HttpResponse> {
        if !self.authorised(req) {
            return Some(
                HttpResponse::Unauthorized()
                    .json(json!({"status": "failed", "error_message": "bad api key"})),
            );
        }
        let (latency, answer) = self.with(|inner| {
            let f = &mut inner.faults;
            if f.only.as_deref().is_some_and(|o| o != kind) {
                return (0, None);
            }
            let latency = f.latency_ms
                + if f.jitter_ms > 0 {
                    rand::random::<u64>() % f.jitter_ms
                } else {
                    0
                };
            let answer = if f.rate_limit_next > 0 {
                f.rate_limit_next -= 1;
                Some(
                    HttpResponse::TooManyRequests()
                        .insert_header(("Retry-After", f.retry_after.to_string()))
                        .content_type("text/plain")
                        .body("Too Many Requests"),
                )
            } else if f.fail_next > 0 {
                f.fail_next -= 1;
                let status = StatusCode::from_u16(f.fail_status.unwrap_or(503))
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                Some(
                    HttpResponse::build(status)
                        .json(json!({"status": "failed", "error_message": "injected failure"})),
                )
            } else if f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate {
                Some(
                    HttpResponse::ServiceUnavailable()
                        .json(json!({"status": "failed", "error_message": "injected failure"})),
                )
            } else if f.malformed_next > 0 {
                f.malformed_next -= 1;
                Some(
                    HttpResponse::Ok()
                        .content_type("text/html")
                        .body("<html>not json"),
                )
            } else if f.wrong_shape_next > 0 {
                f.wrong_shape_next -= 1;
                Some(HttpResponse::Ok().json(if f.wrong_shape_next % 2 == 1 {
                    json!({"status": "success", "error_message": ""})
                } else {
                    json!({"status": "success", "error_message": "", "content": "not a list"})
                }))
            } else if f.no_status_next > 0 {
                f.no_status_next -= 1;
                Some(HttpResponse::Ok().json(json!({"content": []})))
            } else if f.huge_next > 0 {
                f.huge_next -= 1;
                let pad = "x".repeat(10 * 1024 * 1024);
                Some(HttpResponse::Ok().json(
                    json!({"status": "success", "error_message": "", "content": [], "pad": pad}),
                ))
            } else if f.trickle_next > 0 {
                f.trickle_next -= 1;
                let body = json!({"status": "success", "error_message": "", "content": []})
                    .to_string()
                    .into_bytes();
                let stream = futures_util::stream::unfold(0usize, move |i| {
                    let body = body.clone();
                    async move {
                        if i >= body.len() {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((
                            Ok::<_, std::io::Error>(web::Bytes::copy_from_slice(&body[i..i + 1])),
                            i + 1,
                        ))
                    }
                });
                Some(
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .streaming(stream),
                )
            } else {
                None
            };
            (latency, answer)
        });
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        answer
    }

    fn receive(&self, coll: &str, r: Received) {
        self.with(|inner| {
            inner
                .collections
                .entry(coll.to_string())
                .or_default()
                .received
                .push(r)
        });
    }

    /// Stores values sent by recsync (no call back: that would be an echo).
    fn store_sent(
        &self,
        coll: &str,
        id: Option<&str>,
        values: &Map<String, Value>,
        create: bool,
    ) -> Option<String> {
        self.with(|inner| {
            let id = match (id, create) {
                (_, true) => {
                    inner.next_id += 1;
                    inner.next_id.to_string()
                }
                (Some(id), false) => id.to_string(),
                (None, false) => return None,
            };
            let c = inner.collections.entry(coll.to_string()).or_default();
            if !create && !c.records.contains_key(&id) {
                return None;
            }
            let rec = c.records.entry(id.clone()).or_default();
            rec.extend(values.clone());
            rec.insert(self.opts.id_field.clone(), Value::String(id.clone()));
            Some(id)
        })
    }
}

async fn get_faults(state: web::Data<PeerState>) -> HttpResponse {
    HttpResponse::Ok().json(state.with(|i| i.faults.clone()))
}

async fn put_faults(state: web::Data<PeerState>, body: web::Json<Faults>) -> HttpResponse {
    state.set_faults(body.into_inner());
    HttpResponse::Ok().json(state.with(|i| i.faults.clone()))
}

fn with_id(id: &str, values: Map<String, Value>) -> Value {
    let mut v = values;
    v.insert("id".into(), Value::String(id.to_string()));
    Value::Object(v)
}

async fn admin_list(state: web::Data<PeerState>, path: web::Path<String>) -> HttpResponse {
    let recs: Vec<Value> = state
        .records(&path)
        .into_iter()
        .map(|(id, v)| with_id(&id, v))
        .collect();
    HttpResponse::Ok().json(json!({"records": recs}))
}

async fn admin_get(state: web::Data<PeerState>, path: web::Path<(String, String)>) -> HttpResponse {
    let (coll, id) = path.into_inner();
    match state.record(&coll, &id) {
        Some(v) => HttpResponse::Ok().json(with_id(&id, v)),
        None => HttpResponse::NotFound().json(json!({"error": "not_found"})),
    }
}

async fn admin_create(
    state: web::Data<PeerState>,
    path: web::Path<String>,
    body: web::Json<Map<String, Value>>,
) -> HttpResponse {
    let mut values = body.into_inner();
    let id = values.remove("id").and_then(|v| id_text(&v));
    let id = state.upsert(&path, id, values).await;
    HttpResponse::Created().json(json!({"id": id}))
}

async fn admin_update(
    state: web::Data<PeerState>,
    path: web::Path<(String, String)>,
    body: web::Json<Map<String, Value>>,
) -> HttpResponse {
    let (coll, id) = path.into_inner();
    if state.record(&coll, &id).is_none() {
        return HttpResponse::NotFound().json(json!({"error": "not_found"}));
    }
    state
        .upsert(&coll, Some(id.clone()), body.into_inner())
        .await;
    HttpResponse::Ok().json(json!({"id": id}))
}

async fn admin_delete(
    state: web::Data<PeerState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (coll, id) = path.into_inner();
    if state.remove(&coll, &id).await {
        HttpResponse::Ok().json(json!({"id": id, "deleted": true}))
    } else {
        HttpResponse::NotFound().json(json!({"error": "not_found"}))
    }
}

async fn admin_stats(state: web::Data<PeerState>, path: web::Path<String>) -> HttpResponse {
    let (confirmed, shipped) = state.synthetic_counts(&path);
    HttpResponse::Ok().json(json!({"confirmed": confirmed, "shipped": shipped}))
}

async fn admin_received(state: web::Data<PeerState>, path: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"received": state.received(&path)}))
}

/// Sample companies and contacts for the demo, in the demo mapping's external field names.
pub fn demo_seed() -> Vec<(&'static str, Map<String, Value>)> {
    let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
    let mut out = vec![
        (
            "companies",
            obj(json!({"id": "501", "name": "Acme Tools", "vat": "ESB12345678", "country": "ES"})),
        ),
        (
            "companies",
            obj(json!({"id": "502", "name": "Globex", "vat": "FR40303265045", "country": "FR"})),
        ),
    ];
    for (i, (name, company, status)) in [
        ("Ana Pérez", "501", "C"),
        ("Bruno Díaz", "501", "L"),
        ("Chloé Martin", "502", "C"),
        ("Dmitri Volkov", "502", "C"),
    ]
    .into_iter()
    .enumerate()
    {
        let city = ["Madrid", "Sevilla", "Lyon", "Paris"][i];
        out.push((
            "contacts",
            obj(json!({
                "id": (748600007347569543u64 + i as u64).to_string(),
                "full_name": name,
                "email": format!("{}@example.com", name.split(' ').next().unwrap_or("x").to_lowercase()),
                "is_customer": true,
                "company_id": company,
                "status": status,
                "address": {"city": city},
                "visits": (i as i64 + 1) * 3,
            })),
        ));
    }
    out
}
