//! A fake HTTP JSON API for tests, examples and benchmarks (`recsync fake-http`). It serves
//! three resources in the shapes of the APIs they are modelled on (from those APIs' public
//! documentation), and a generic one in every pagination style:
//!
//! - **CRM contacts**, as HubSpot's CRM v3 objects API: `GET /crm/v3/objects/contacts?limit=
//!   &after=` answers `{"results": [...], "paging": {"next": {"after", "link"}}}` (no `paging`
//!   on the last page, `limit` at most 100), each contact `{"id": "<string>", "properties":
//!   {...}, "createdAt", "updatedAt", "archived"}`; `POST` with `{"properties": {...}}` answers
//!   201 and the contact, `PATCH /{id}` updates, `DELETE /{id}` archives (204). Errors are
//!   `{"status": "error", "message", "correlationId", "category"}`: 400 `VALIDATION_ERROR` for
//!   an email without `@`, 409 `CONFLICT` for an email another contact has, 404
//!   `OBJECT_NOT_FOUND`.
//! - **Help desk tickets**, as Zendesk's Support API: the time-based incremental export `GET
//!   /api/v2/incremental/tickets.json?start_time=<unix>&per_page=` answers `{"tickets", "count",
//!   "end_time", "next_page", "end_of_stream"}` in `generated_timestamp` order, inclusive of
//!   `start_time` (so the next page repeats the records stamped `end_time`), deleted tickets
//!   with `status = "deleted"`; `GET /api/v2/tickets.json?page=&per_page=` answers
//!   `{"tickets", "next_page", "previous_page", "count"}`; `POST /api/v2/tickets.json` and `PUT
//!   /api/v2/tickets/{id}.json` take and answer `{"ticket": {...}}` (422 `RecordInvalid` without
//!   a subject), `DELETE` answers 204. `.json` is optional, as with Zendesk.
//! - **Items** at `/v1/{style}/items` in each style recsync follows: `next_url` (`{"items",
//!   "next"}`), `cursor` (`{"data", "meta": {"next_cursor"}}`), `offset` (`{"items", "total"}`),
//!   `page` (`{"items", "page"}`) and `link_header` (a bare list and `Link: <...>; rel="next"`,
//!   as GitHub sends). `updated_since` (RFC 3339, inclusive) orders by `updated_at`. Writes go
//!   to `/v1/items` (`POST`, `PUT /{id}`, `DELETE /{id}`, which marks `status = "deleted"`).
//!
//! Credentials, as configured: none, an API key header, HTTP Basic, a static bearer token, or
//! OAuth 2.0 client credentials at `POST /oauth/token` (RFC 6749 §4.4: HTTP Basic or form
//! credentials, `{"access_token", "token_type": "Bearer", "expires_in"}`, §5.2 errors), whose
//! tokens expire and can be revoked. A `rate_limit` answers 429 with `Retry-After` past that
//! many calls per second.
//!
//! Tests in the same process use [`HttpState`]; from another process `PUT /_fake/faults`,
//! `GET /_fake/calls`, `POST /_fake/seed`, `POST /_fake/revoke` and `/_fake/records/<resource>`
//! do the same.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod resources;
use resources::*;
mod admin;
use admin::*;

/// The credentials the fake asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum FakeAuth {
    #[default]
    None,
    ApiKey {
        header: String,
        key: String,
    },
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    OAuth2 {
        client_id: String,
        client_secret: String,
        /// How long a token lasts.
        ttl: Duration,
    },
}

impl FakeAuth {
    /// `none`, `bearer:TOKEN`, `basic:USER:PASSWORD`, `api_key:HEADER:KEY` or
    /// `oauth2:CLIENT_ID:CLIENT_SECRET[:TOKEN_SECONDS]`.
    pub fn parse(text: &str) -> Result<FakeAuth, String> {
        let parts: Vec<&str> = text.splitn(4, ':').collect();
        Ok(match parts.as_slice() {
            ["none"] => FakeAuth::None,
            ["bearer", t] => FakeAuth::Bearer(t.to_string()),
            ["basic", u, p] => FakeAuth::Basic {
                user: u.to_string(),
                password: p.to_string(),
            },
            ["api_key", h, k] => FakeAuth::ApiKey {
                header: h.to_string(),
                key: k.to_string(),
            },
            ["oauth2", id, secret] => FakeAuth::OAuth2 {
                client_id: id.to_string(),
                client_secret: secret.to_string(),
                ttl: Duration::from_secs(3600),
            },
            ["oauth2", id, secret, secs] => FakeAuth::OAuth2 {
                client_id: id.to_string(),
                client_secret: secret.to_string(),
                ttl: Duration::from_secs(
                    secs.parse()
                        .map_err(|_| format!("`{secs}` is not a number of seconds"))?,
                ),
            },
            _ => {
                return Err(format!(
                    "`{text}` is not none, bearer:TOKEN, basic:USER:PASSWORD, api_key:HEADER:KEY or oauth2:ID:SECRET[:SECONDS]"
                ));
            }
        })
    }
}

/// How the fake is set up.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: String,
    pub auth: FakeAuth,
    /// Calls per second answered before 429s.
    pub rate_limit: Option<u32>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            listen: "127.0.0.1:0".into(),
            auth: FakeAuth::None,
            rate_limit: None,
        }
    }
}

/// Fault switches. Counters apply to that many of the next API calls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Answer this status (500 unless `fail_status`) to the next N calls.
    pub fail_next: u32,
    pub fail_status: Option<u16>,
    /// Answer 429 with `Retry-After: 1` to the next N calls.
    pub throttle_next: u32,
    /// Answer an HTML page (200, `text/html`) to the next N calls.
    pub html_next: u32,
    /// Every call whose path and query contain this text is answered `fail_on_status`.
    pub fail_on: Option<String>,
    pub fail_on_status: Option<u16>,
    /// Next-page links point at this origin instead (`https://elsewhere.example`).
    pub next_host: Option<String>,
    /// Next-page links name the page just served.
    pub repeat_pages: bool,
    /// Records are served without their id.
    pub drop_ids: bool,
    /// The token endpoint refuses every client.
    pub token_fail: bool,
    /// Every call waits this long first.
    pub delay_ms: u64,
    /// `fail_next`, `throttle_next` and `html_next` count only calls of this method.
    pub only_method: Option<String>,
    /// When `fail_next` answers a call on one record (`.../<resource>/<id>`), that record
    /// first takes these values, as a person editing it at that moment would.
    pub edit_when_failing: Option<Value>,
}

/// One call, as the fake saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Milliseconds since the fake started.
    pub at_ms: f64,
    pub status: u16,
    pub body: Option<Value>,
}

/// A generic item or ticket: values, and the stamp the incremental reads follow.
#[derive(Debug, Clone)]
struct Stamped {
    values: Map<String, Value>,
    stamp: i64,
}

/// One resource's records by id, with an index by (stamp, id).
#[derive(Debug, Default)]
struct Collection {
    records: BTreeMap<u64, Stamped>,
    by_stamp: BTreeSet<(i64, u64)>,
    next_id: u64,
}

impl Collection {
    fn put(&mut self, id: u64, values: Map<String, Value>, stamp: i64) {
        if let Some(old) = self.records.get(&id) {
            self.by_stamp.remove(&(old.stamp, id));
        }
        self.by_stamp.insert((stamp, id));
        self.records.insert(id, Stamped { values, stamp });
        self.next_id = self.next_id.max(id + 1);
    }

    fn new_id(&mut self) -> u64 {
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[derive(Debug, Default)]
struct Inner {
    contacts: Collection,
    tickets: Collection,
    items: Collection,
    /// The fake's clock, in Unix seconds: each write advances it by one.
    clock: i64,
    faults: Faults,
    calls: Vec<Call>,
    /// Issued tokens and when they expire.
    tokens: HashMap<String, Instant>,
    token_requests: u64,
    /// When recent calls arrived, for the rate limit.
    recent: VecDeque<Instant>,
}

/// The fake's state, shared by its handlers and by tests in the same process.
pub struct HttpState {
    opts: HttpOptions,
    started: Instant,
    inner: Mutex<Inner>,
}

/// The largest number of calls remembered.
const CALLS_KEPT: usize = 200_000;
/// Where the fake's clock starts: 2024-01-01T00:00:00Z.
const EPOCH: i64 = 1_704_067_200;

fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn rfc3339_ms(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl HttpState {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake http lock"))
    }

    /// Sets the fault switches.
    pub fn set_faults(&self, faults: Faults) {
        self.with(|i| i.faults = faults);
    }

    /// Changes some fault switches.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        self.with(|i| f(&mut i.faults));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.with(|i| i.calls.clone())
    }

    pub fn clear_calls(&self) {
        self.with(|i| i.calls.clear());
    }

    /// How many times the token endpoint was asked.
    pub fn token_requests(&self) -> u64 {
        self.with(|i| i.token_requests)
    }

    /// Makes every issued token invalid (a revocation, or the server forgetting them).
    pub fn revoke_tokens(&self) {
        self.with(|i| i.tokens.clear());
    }

    /// Every record of a resource (`contacts`, `tickets`, `items`), in the API's own shape,
    /// archived and deleted ones too.
    pub fn records(&self, resource: &str) -> Vec<Value> {
        self.with(|i| {
            let c = match resource {
                "contacts" => &i.contacts,
                "tickets" => &i.tickets,
                _ => &i.items,
            };
            c.records
                .values()
                .map(|r| Value::Object(r.values.clone()))
                .collect()
        })
    }

    /// Adds `n` records to a resource, three to each second of the fake's clock (so that
    /// incremental reads meet records sharing one stamp).
    pub fn seed(&self, resource: &str, n: usize) {
        self.with(|i| {
            let start = i.clock.max(EPOCH);
            for k in 0..n {
                let stamp = start + (k / 3) as i64;
                match resource {
                    "contacts" => {
                        let id = i.contacts.new_id();
                        let v = contact_values(
                            id,
                            &json!({
                                "email": format!("person{id}@example.com"),
                                "firstname": format!("First{id}"),
                                "lastname": format!("Last{id}"),
                                "phone": format!("+34 600 {id:06}"),
                                "company": format!("Company {}", id % 50),
                            }),
                            stamp,
                            None,
                        );
                        i.contacts.put(id, v, stamp);
                    }
                    "tickets" => {
                        let id = i.tickets.new_id();
                        let v = ticket_values(
                            id,
                            &json!({
                                "subject": format!("Ticket {id}"),
                                "description": format!("Something about {id}"),
                                "status": "open",
                                "priority": "normal",
                                "requester_email": format!("person{}@example.com", id % 100 + 1),
                            }),
                            stamp,
                            None,
                        );
                        i.tickets.put(id, v, stamp);
                    }
                    _ => {
                        let id = i.items.new_id();
                        let v = item_values(
                            id,
                            &json!({
                                "name": format!("Item {id}"),
                                "email": format!("item{id}@example.com"),
                                "status": "active",
                                "score": (id % 10) as i64,
                            }),
                            stamp,
                            None,
                        );
                        i.items.put(id, v, stamp);
                    }
                }
            }
            i.clock = start + (n / 3) as i64 + 1;
        });
    }

    /// Writes a record as a person editing in the system would: `values` merged into the
    /// record `id` (created when absent), stamped now. Answers the record.
    pub fn upsert(&self, resource: &str, id: Option<u64>, values: Value) -> Value {
        self.with(|i| Value::Object(i.upsert(resource, id, &values)))
    }

    /// Deletes a record as the API's `DELETE` does: archived (contacts), `status = "deleted"`
    /// (tickets, items).
    pub fn remove(&self, resource: &str, id: u64) -> bool {
        self.with(|i| i.delete(resource, id))
    }

    /// Removes a record for good, leaving no trace (a delete the API never reports).
    pub fn purge(&self, resource: &str, id: u64) -> bool {
        self.with(|i| {
            let c = i.collection(resource);
            match c.records.remove(&id) {
                Some(r) => {
                    c.by_stamp.remove(&(r.stamp, id));
                    true
                }
                None => false,
            }
        })
    }
}

impl Inner {
    /// [`HttpState::upsert`].
    fn upsert(&mut self, resource: &str, id: Option<u64>, values: &Value) -> Map<String, Value> {
        let stamp = self.tick();
        let c = self.collection(resource);
        let id = id.unwrap_or_else(|| c.new_id());
        let old = c.records.get(&id).map(|r| r.values.clone());
        let v = match resource {
            "contacts" => contact_values(id, values, stamp, old.as_ref()),
            "tickets" => ticket_values(id, values, stamp, old.as_ref()),
            _ => item_values(id, values, stamp, old.as_ref()),
        };
        c.put(id, v.clone(), stamp);
        v
    }

    fn tick(&mut self) -> i64 {
        self.clock = self.clock.max(EPOCH) + 1;
        self.clock
    }

    fn collection(&mut self, resource: &str) -> &mut Collection {
        match resource {
            "contacts" => &mut self.contacts,
            "tickets" => &mut self.tickets,
            _ => &mut self.items,
        }
    }

    fn delete(&mut self, resource: &str, id: u64) -> bool {
        let stamp = self.tick();
        let c = self.collection(resource);
        let Some(r) = c.records.get(&id) else {
            return false;
        };
        let mut v = r.values.clone();
        match resource {
            "contacts" => {
                v.insert("archived".into(), json!(true));
                v.insert("archivedAt".into(), json!(rfc3339_ms(stamp)));
                v.insert("updatedAt".into(), json!(rfc3339_ms(stamp)));
            }
            "tickets" => {
                v.insert("status".into(), json!("deleted"));
                v.insert("updated_at".into(), json!(rfc3339(stamp)));
                v.insert("generated_timestamp".into(), json!(stamp));
            }
            _ => {
                v.insert("status".into(), json!("deleted"));
                v.insert("updated_at".into(), json!(rfc3339(stamp)));
            }
        }
        c.put(id, v, stamp);
        true
    }
}

/// A HubSpot contact: `properties` (strings, as HubSpot keeps them) with `hs_object_id`,
/// `createdate` and `lastmodifieddate`.
fn contact_values(
    id: u64,
    properties: &Value,
    stamp: i64,
    old: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut props: Map<String, Value> = old
        .and_then(|o| o.get("properties"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(p) = properties.as_object() {
        for (k, v) in p {
            let text = match v {
                Value::Null => Value::Null,
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            };
            props.insert(k.clone(), text);
        }
    }
    let created = old
        .and_then(|o| o.get("createdAt").cloned())
        .unwrap_or_else(|| json!(rfc3339_ms(stamp)));
    props.insert("hs_object_id".into(), json!(id.to_string()));
    props.insert(
        "createdate".into(),
        props.get("createdate").cloned().unwrap_or(created.clone()),
    );
    props.insert("lastmodifieddate".into(), json!(rfc3339_ms(stamp)));
    let mut v = Map::new();
    v.insert("id".into(), json!(id.to_string()));
    v.insert("properties".into(), Value::Object(props));
    v.insert("createdAt".into(), created);
    v.insert("updatedAt".into(), json!(rfc3339_ms(stamp)));
    v.insert(
        "archived".into(),
        old.and_then(|o| o.get("archived").cloned())
            .unwrap_or(json!(false)),
    );
    v
}

/// A Zendesk ticket.
fn ticket_values(
    id: u64,
    fields: &Value,
    stamp: i64,
    old: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut v: Map<String, Value> = old.cloned().unwrap_or_else(|| {
        let mut m = Map::new();
        for k in ["subject", "description", "requester_email", "type"] {
            m.insert(k.into(), Value::Null);
        }
        m.insert("status".into(), json!("new"));
        m.insert("priority".into(), Value::Null);
        m.insert("tags".into(), json!([]));
        m.insert("created_at".into(), json!(rfc3339(stamp)));
        m
    });
    if let Some(f) = fields.as_object() {
        for (k, val) in f {
            if !matches!(
                k.as_str(),
                "id" | "url" | "created_at" | "updated_at" | "generated_timestamp"
            ) {
                v.insert(k.clone(), val.clone());
            }
        }
    }
    v.insert("id".into(), json!(id));
    v.insert(
        "url".into(),
        json!(format!("https://fake.zendesk.com/api/v2/tickets/{id}.json")),
    );
    v.insert("updated_at".into(), json!(rfc3339(stamp)));
    v.insert("generated_timestamp".into(), json!(stamp));
    v
}

/// A generic item.
fn item_values(
    id: u64,
    fields: &Value,
    stamp: i64,
    old: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut v = old.cloned().unwrap_or_default();
    if let Some(f) = fields.as_object() {
        for (k, val) in f {
            if !matches!(k.as_str(), "id" | "updated_at") {
                v.insert(k.clone(), val.clone());
            }
        }
    }
    v.entry("status").or_insert(json!("active"));
    v.insert("id".into(), json!(id));
    v.insert("updated_at".into(), json!(rfc3339(stamp)));
    v
}

/// The running fake.
pub struct FakeHttp {
    pub port: u16,
    pub state: Arc<HttpState>,
    server: actix_web::dev::Server,
}

impl FakeHttp {
    pub fn bind(opts: HttpOptions) -> std::io::Result<FakeHttp> {
        let listener = TcpListener::bind(&opts.listen)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(HttpState {
            opts,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                clock: EPOCH,
                ..Default::default()
            }),
        });
        let data = web::Data::from(state.clone());
        // The page at `/` is for a person with a browser: a request that carries credentials
        // (a client checking them, as `validate --online` does) gets the API's own answer.
        let key_header = match &state.opts.auth {
            FakeAuth::ApiKey { header, .. } => Some(header.clone()),
            _ => None,
        };
        let server = HttpServer::new(move || {
            let key_header = key_header.clone();
            let anonymous = actix_web::guard::fn_guard(move |ctx| {
                let h = ctx.head().headers();
                !h.contains_key("authorization")
                    && key_header.as_deref().is_none_or(|k| !h.contains_key(k))
            });
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/", web::get().guard(anonymous).to(index))
                .route("/oauth/token", web::post().to(token))
                .route("/_fake/faults", web::put().to(put_faults))
                .route("/_fake/calls", web::get().to(get_calls))
                .route("/_fake/seed", web::post().to(post_seed))
                .route("/_fake/revoke", web::post().to(post_revoke))
                .route("/_fake/records/{resource}", web::get().to(get_records))
                .route("/_fake/records/{resource}", web::post().to(post_record))
                .route(
                    "/_fake/records/{resource}/{id}",
                    web::patch().to(patch_record),
                )
                .route(
                    "/_fake/records/{resource}/{id}",
                    web::delete().to(delete_record),
                )
                .default_service(web::to(api))
        })
        .listen(listener)?
        .disable_signals()
        .workers(2)
        .run();
        Ok(FakeHttp {
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

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The client's id and secret: HTTP Basic (form-decoded, RFC 6749 §2.3.1) or form fields.
fn client_of(req: &HttpRequest, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(b) = header(req, "authorization").and_then(|a| a.strip_prefix("Basic ")) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (id, secret) = text.split_once(':')?;
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Some((dec(id), dec(secret)));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

/// `POST /oauth/token`: the client credentials grant.
async fn token(state: web::Data<HttpState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let oauth_error = |status: u16, code: &str, desc: &str| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"))
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({"error": code, "error_description": desc}))
    };
    let (fail, ttl, expected) = state.with(|i| {
        i.token_requests += 1;
        let expected = match &state.opts.auth {
            FakeAuth::OAuth2 {
                client_id,
                client_secret,
                ttl,
            } => Some((client_id.clone(), client_secret.clone(), *ttl)),
            _ => None,
        };
        (
            i.faults.token_fail,
            expected.as_ref().map(|e| e.2),
            expected,
        )
    });
    let Some((id, secret, _)) = expected else {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "this server issues no tokens",
        );
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    match client_of(&req, &form) {
        Some((i, s)) if !fail && i == id && s == secret => {}
        _ => return oauth_error(401, "invalid_client", "Client authentication failed"),
    }
    let ttl = ttl.unwrap_or(Duration::from_secs(3600));
    let value = format!("tok-{}", rand::random::<u64>());
    state.with(|i| i.tokens.insert(value.clone(), Instant::now() + ttl));
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "scope": form.get("scope").cloned().unwrap_or_default(),
        }))
}

/// Whether a call carries the configured credentials.
fn authorized(state: &HttpState, req: &HttpRequest) -> bool {
    match &state.opts.auth {
        FakeAuth::None => true,
        FakeAuth::ApiKey { header: h, key } => header(req, h) == Some(key.as_str()),
        FakeAuth::Basic { user, password } => {
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            header(req, "authorization") == Some(format!("Basic {expected}").as_str())
        }
        FakeAuth::Bearer(t) => header(req, "authorization") == Some(format!("Bearer {t}").as_str()),
        FakeAuth::OAuth2 { .. } => {
            let Some(t) = header(req, "authorization").and_then(|a| a.strip_prefix("Bearer "))
            else {
                return false;
            };
            state.with(|i| i.tokens.get(t).is_some_and(|until| Instant::now() < *until))
        }
    }
}

fn status(code: u16) -> actix_web::HttpResponseBuilder {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).expect("status"))
}

fn hubspot_error(code: u16, category: &str, message: &str) -> HttpResponse {
    status(code).json(json!({
        "status": "error",
        "message": message,
        "correlationId": format!("{:08x}-0000-4000-8000-000000000000", rand::random::<u32>()),
        "category": category,
    }))
}

fn query_of(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

/// Every API call: credentials, the rate limit and faults first, then the resource.
async fn api(state: web::Data<HttpState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let delay = state.with(|i| i.faults.delay_ms);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return status(400)
                    .json(json!({"status": "error", "message": format!("Invalid JSON: {e}")}));
            }
        }
    };
    let resp = answer(&state, &req, parsed.as_ref());
    let at_ms = state.started.elapsed().as_secs_f64() * 1000.0;
    state.with(|i| {
        if i.calls.len() < CALLS_KEPT {
            i.calls.push(Call {
                method: req.method().to_string(),
                path: req.path().to_string(),
                query: req.query_string().to_string(),
                at_ms,
                status: resp.status().as_u16(),
                body: parsed,
            });
        }
    });
    resp
}

fn answer(state: &HttpState, req: &HttpRequest, body: Option<&Value>) -> HttpResponse {
    if !authorized(state, req) {
        return status(401)
            .insert_header(("WWW-Authenticate", "Bearer error=\"invalid_token\""))
            .json(json!({"status": "error", "message": "Authentication credentials not found or invalid", "category": "INVALID_AUTHENTICATION"}));
    }
    // The rate limit: calls in the last second.
    if let Some(limit) = state.opts.rate_limit {
        let now = Instant::now();
        let over = state.with(|i| {
            while i
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                i.recent.pop_front();
            }
            if i.recent.len() >= limit as usize {
                true
            } else {
                i.recent.push_back(now);
                false
            }
        });
        if over {
            return status(429)
                .insert_header(("Retry-After", "1"))
                .json(json!({"status": "error", "message": "You have reached your secondly limit.", "category": "RATE_LIMITS"}));
        }
    }
    let target = format!("{}?{}", req.path(), req.query_string());
    let method_matches = |f: &Faults| {
        f.only_method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(req.method().as_str()))
    };
    let fault = state.with(|i| {
        let f = &mut i.faults;
        if !method_matches(f) {
            return None;
        }
        if f.throttle_next > 0 {
            f.throttle_next -= 1;
            return Some(status(429).insert_header(("Retry-After", "1")).json(json!({"message": "Too many requests"})));
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            let answer = status(f.fail_status.unwrap_or(500)).json(json!({"message": "Internal server error"}));
            let mut segments = req.path().trim_end_matches(".json").rsplit('/');
            let id = segments.next().and_then(|s| s.parse::<u64>().ok());
            if let (Some(edit), Some(id), Some(resource)) = (f.edit_when_failing.clone(), id, segments.next()) {
                i.upsert(resource, Some(id), &edit);
            }
            return Some(answer);
        }
        if f.html_next > 0 {
            f.html_next -= 1;
            return Some(
                HttpResponse::Ok()
                    .content_type("text/html; charset=utf-8")
                    .body("<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>"),
            );
        }
        if let Some(t) = &f.fail_on
            && target.contains(t.as_str())
        {
            return Some(status(f.fail_on_status.unwrap_or(500)).json(json!({"message": "failing on purpose"})));
        }
        None
    });
    if let Some(r) = fault {
        return r;
    }
    let path = req.path().trim_end_matches(".json");
    let method = req.method().as_str();
    // Each segment percent-decoded, as a server routes (`contacts/a%40b.com` names `a@b.com`).
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let host = format!(
        "{}://{}",
        req.connection_info().scheme(),
        req.connection_info().host()
    );
    let q = query_of(req);
    match (method, segments.as_slice()) {
        ("GET", ["crm", "v3", "objects", "contacts"]) => list_contacts(state, &host, &q),
        ("POST", ["crm", "v3", "objects", "contacts"]) => write_contact(state, None, body),
        ("GET", ["crm", "v3", "objects", "contacts", id]) => {
            // Archived contacts are only read with `archived=true`, as HubSpot does.
            let archived = q
                .get("archived")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            // `idProperty=email`: the path names the contact by its unique email.
            let by_email = match q.get("idProperty").map(String::as_str) {
                None | Some("hs_object_id") => None,
                Some("email") => Some(state.with(|i| {
                    i.contacts.records.iter().find_map(|(n, r)| {
                        r.values["properties"]
                            .get("email")
                            .and_then(Value::as_str)
                            .is_some_and(|e| e.eq_ignore_ascii_case(id))
                            .then_some(n.to_string())
                    })
                })),
                Some(other) => {
                    return hubspot_error(
                        400,
                        "VALIDATION_ERROR",
                        &format!(
                            "Unable to find property {other} or it is not a unique identifier"
                        ),
                    );
                }
            };
            let id = match &by_email {
                None => *id,
                Some(Some(n)) => n.as_str(),
                Some(None) => return hubspot_error(404, "OBJECT_NOT_FOUND", "resource not found"),
            };
            let found = id.parse::<u64>().ok().and_then(|n| {
                state.with(|i| {
                    i.contacts
                        .records
                        .get(&n)
                        .map(|r| r.values.get("archived") == Some(&json!(true)))
                })
            });
            match found {
                Some(a) if a == archived => read_one(state, "contacts", id),
                _ => hubspot_error(404, "OBJECT_NOT_FOUND", "resource not found"),
            }
        }
        ("PATCH", ["crm", "v3", "objects", "contacts", id]) => match id.parse() {
            Ok(n) => write_contact(state, Some(n), body),
            Err(_) => hubspot_error(404, "OBJECT_NOT_FOUND", "resource not found"),
        },
        ("DELETE", ["crm", "v3", "objects", "contacts", id]) => delete_one(state, "contacts", id),
        ("GET", ["api", "v2", "incremental", "tickets"]) => export_tickets(state, &host, &q),
        ("GET", ["api", "v2", "tickets"]) => list_tickets(state, &host, &q),
        ("POST", ["api", "v2", "tickets"]) => write_ticket(state, None, body),
        ("GET", ["api", "v2", "tickets", id]) => read_one(state, "tickets", id),
        ("PUT", ["api", "v2", "tickets", id]) => match id.parse() {
            Ok(n) => write_ticket(state, Some(n), body),
            Err(_) => {
                status(404).json(json!({"error": "RecordNotFound", "description": "Not found"}))
            }
        },
        ("DELETE", ["api", "v2", "tickets", id]) => delete_one(state, "tickets", id),
        ("GET", ["v1", style, "items"]) => list_items(state, &host, style, &q),
        ("POST", ["v1", "items"]) => write_item(state, None, body),
        ("GET", ["v1", "items", id]) => read_one(state, "items", id),
        ("PUT" | "PATCH", ["v1", "items", id]) => match id.parse() {
            Ok(n) => write_item(state, Some(n), body),
            Err(_) => status(404).json(json!({"message": "no such item"})),
        },
        ("DELETE", ["v1", "items", id]) => delete_one(state, "items", id),
        _ => status(404).json(json!({"message": format!("no route for {method} {}", req.path())})),
    }
}

/// `/`: what this is and its test hooks.
async fn index() -> HttpResponse {
    crate::index_page(
        "A fake HTTP JSON API (HubSpot's contacts and companies, at /crm/v3/objects/...).",
        "docs/fakes/http.md",
        &[
            ("POST   /_fake/seed", "records to start with"),
            (
                "GET    /_fake/records/<resource>",
                "every record, as the API serves them",
            ),
            ("POST   /_fake/records/<resource>", "create a record"),
            (
                "PATCH  /_fake/records/<resource>/<id>",
                "edit a record, as a user would",
            ),
            ("DELETE /_fake/records/<resource>/<id>", "delete a record"),
            ("POST   /_fake/revoke", "every OAuth token stops working"),
            ("PUT    /_fake/faults", "failures to inject (429, 500, ...)"),
            ("GET    /_fake/calls", "the calls received, in order"),
        ],
    )
}
