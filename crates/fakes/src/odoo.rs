//! A fake Odoo for tests, the demo and conformance runs (`recsync fake-odoo`): one database with
//! `res.partner`, `res.country`, `res.partner.category` and `res.users`, reached through both of
//! Odoo's external protocols:
//!
//! - JSON-RPC (`POST /jsonrpc`: `common.version`, `common.login`, `common.authenticate`,
//!   `object.execute`, `object.execute_kw`, `db.list`), and `/web/webclient/version_info`, which
//!   `odoorpc` asks first;
//! - JSON-2 (`POST /json/2/<model>/<method>` with `Authorization: bearer <key>` and
//!   `X-Odoo-Database`, named arguments), with `/doc-bearer/<model>.json` for clients that map
//!   positional arguments, and `GET /web/version`.
//!
//! The ORM methods: `fields_get`, `search`, `search_read`, `read`, `search_count`, `create`,
//! `write`, `unlink`, `context_get`. Domains are evaluated as Odoo does (prefix `&`, `|`, `!`,
//! comparisons, `in`, `not in`, `like`, `ilike`, `=like`, `=ilike`, `=?`, `child_of`, dotted
//! paths through many2one fields), `active_test` hides archived records unless the domain or the
//! context says otherwise, and values are answered in Odoo's shapes (`false` for empty,
//! many2one as `[id, display name]`, x2many as id lists, `YYYY-MM-DD HH:MM:SS` in UTC).
//! `write_date` is stamped by the fake's clock; `backdate_next` stamps the next write earlier,
//! as a long Odoo transaction that commits late does. Faults: 429 with `Retry-After`, 5xx, an
//! HTML error page (a proxy in front of Odoo), serialization failures, an expired key.
//!
//! Tests in the same process use [`OdooState`]; from another process, `/_fake/faults` (PUT the
//! switches), `/_fake/calls`, and `/_fake/records/<model>` (GET every record, POST one, PATCH and
//! DELETE `/<id>`) do the same, as a person editing in Odoo would. `seed_partners` fills the
//! database for benchmarks.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// How the fake is set up.
#[derive(Debug, Clone)]
pub struct OdooOptions {
    pub listen: String,
    pub database: String,
    pub login: String,
    pub password: String,
    /// An API key of the same user (accepted wherever the password is, and as the bearer).
    pub api_key: String,
    /// The server version answered (`19.0` and later speak JSON-2).
    pub version: String,
}

impl Default for OdooOptions {
    fn default() -> Self {
        OdooOptions {
            listen: "127.0.0.1:0".into(),
            database: "fake".into(),
            login: "admin".into(),
            password: "admin".into(),
            api_key: "fake-odoo-api-key-0123456789".into(),
            version: "19.0".into(),
        }
    }
}

/// Fault switches. Counters apply to that many of the next model calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OdooFaults {
    /// Answer 429 with `Retry-After: 1`.
    pub rate_limit: u32,
    /// Answer 500 with Odoo's JSON error.
    pub server_errors: u32,
    /// Answer 502 with an HTML page, as a proxy in front of Odoo does.
    pub html_errors: u32,
    /// Fail with PostgreSQL's serialization failure.
    pub serialization_failures: u32,
    /// The API key and the password stop working (until cleared).
    pub key_expired: bool,
    /// The next write (create or write) is stamped this many seconds in the past.
    pub backdate_next: u32,
    /// The next creates are made, and their answers lost: a proxy answers 502 after Odoo
    /// committed (a timeout between the commit and the answer).
    pub lose_create_answers: u32,
}

/// The user recsync logs in as.
const UID: i64 = 2;

struct FieldDef {
    ttype: &'static str,
    string: &'static str,
    relation: Option<&'static str>,
    required: bool,
    readonly: bool,
}

const fn field(ttype: &'static str, string: &'static str) -> FieldDef {
    FieldDef {
        ttype,
        string,
        relation: None,
        required: false,
        readonly: false,
    }
}

const fn relational(ttype: &'static str, string: &'static str, relation: &'static str) -> FieldDef {
    FieldDef {
        ttype,
        string,
        relation: Some(relation),
        required: false,
        readonly: false,
    }
}

/// The fields every model has.
fn common_fields() -> Vec<(&'static str, FieldDef)> {
    vec![
        (
            "id",
            FieldDef {
                readonly: true,
                ..field("integer", "ID")
            },
        ),
        (
            "display_name",
            FieldDef {
                readonly: true,
                ..field("char", "Display Name")
            },
        ),
        (
            "create_date",
            FieldDef {
                readonly: true,
                ..field("datetime", "Created on")
            },
        ),
        (
            "write_date",
            FieldDef {
                readonly: true,
                ..field("datetime", "Last Updated on")
            },
        ),
    ]
}

/// A model's fields, built once per model.
fn model_fields(model: &str) -> Option<&'static [(&'static str, FieldDef)]> {
    static TABLES: std::sync::OnceLock<HashMap<&'static str, Vec<(&'static str, FieldDef)>>> =
        std::sync::OnceLock::new();
    TABLES
        .get_or_init(|| {
            [
                "res.partner",
                "res.country",
                "res.partner.category",
                "res.users",
            ]
            .into_iter()
            .filter_map(|m| Some((m, build_fields(m)?)))
            .collect()
        })
        .get(model)
        .map(Vec::as_slice)
}

fn build_fields(model: &str) -> Option<Vec<(&'static str, FieldDef)>> {
    let mut f = common_fields();
    match model {
        "res.partner" => f.extend([
            (
                "name",
                FieldDef {
                    required: true,
                    ..field("char", "Name")
                },
            ),
            ("email", field("char", "Email")),
            ("phone", field("char", "Phone")),
            ("is_company", field("boolean", "Is a Company")),
            ("active", field("boolean", "Active")),
            ("type", field("selection", "Address Type")),
            ("comment", field("html", "Notes")),
            ("credit_limit", field("float", "Credit Limit")),
            ("date", field("date", "Date")),
            (
                "country_id",
                relational("many2one", "Country", "res.country"),
            ),
            (
                "parent_id",
                relational("many2one", "Related Company", "res.partner"),
            ),
            (
                "child_ids",
                relational("one2many", "Contact", "res.partner"),
            ),
            (
                "category_id",
                relational("many2many", "Tags", "res.partner.category"),
            ),
        ]),
        "res.country" => f.extend([
            (
                "name",
                FieldDef {
                    required: true,
                    ..field("char", "Country Name")
                },
            ),
            ("code", field("char", "Country Code")),
        ]),
        "res.partner.category" => f.extend([
            (
                "name",
                FieldDef {
                    required: true,
                    ..field("char", "Tag Name")
                },
            ),
            ("active", field("boolean", "Active")),
            (
                "parent_id",
                relational("many2one", "Parent Category", "res.partner.category"),
            ),
        ]),
        "res.users" => f.extend([
            (
                "name",
                FieldDef {
                    required: true,
                    ..field("char", "Name")
                },
            ),
            (
                "login",
                FieldDef {
                    required: true,
                    ..field("char", "Login")
                },
            ),
            ("active", field("boolean", "Active")),
            (
                "partner_id",
                relational("many2one", "Related Partner", "res.partner"),
            ),
        ]),
        _ => return None,
    }
    Some(f)
}

/// An error as Odoo raises it: the exception's dotted name and its message.
#[derive(Debug, Clone)]
struct OdooError {
    name: &'static str,
    message: String,
}

impl OdooError {
    fn new(name: &'static str, message: impl Into<String>) -> OdooError {
        OdooError {
            name,
            message: message.into(),
        }
    }

    fn user(message: impl Into<String>) -> OdooError {
        OdooError::new("odoo.exceptions.UserError", message)
    }

    fn validation(message: impl Into<String>) -> OdooError {
        OdooError::new("odoo.exceptions.ValidationError", message)
    }

    fn missing(model: &str, ids: &[i64]) -> OdooError {
        OdooError::new(
            "odoo.exceptions.MissingError",
            format!(
                "Record does not exist or has been deleted.\n(Record: {model}({}), User: {UID})",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    fn access_denied() -> OdooError {
        OdooError::new("odoo.exceptions.AccessDenied", "Access Denied")
    }

    /// The `data` object of a JSON-RPC error, and the body of a JSON-2 error.
    fn data(&self) -> Value {
        json!({
            "name": self.name,
            "message": self.message,
            "arguments": [self.message],
            "context": {},
            "debug": format!("Traceback (most recent call last):\n{}: {}", self.name, self.message),
        })
    }

    /// The HTTP status JSON-2 answers it with.
    fn status(&self) -> u16 {
        match self.name {
            "odoo.exceptions.AccessDenied" => 401,
            "odoo.exceptions.AccessError" => 403,
            "odoo.exceptions.MissingError" | "werkzeug.exceptions.NotFound" => 404,
            "odoo.exceptions.UserError" | "odoo.exceptions.ValidationError" => 422,
            _ => 500,
        }
    }
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, BTreeMap<i64, Map<String, Value>>>,
    /// Every record by (`write_date`, `id`), per model: the index PostgreSQL would use for
    /// searches ordered that way, so keyset pages do not scan the whole table.
    by_write: HashMap<String, std::collections::BTreeSet<(String, i64)>>,
    next_id: HashMap<String, i64>,
    faults: OdooFaults,
    /// Model calls: (protocol, model, method).
    calls: Vec<(String, String, String)>,
    /// Seconds added to the real clock (tests move time forward).
    clock_offset: i64,
}

/// The fake's state, shared with tests.
pub struct OdooState {
    opts: OdooOptions,
    inner: Mutex<Inner>,
}

/// A running fake Odoo.
pub struct FakeOdoo {
    pub port: u16,
    pub state: Arc<OdooState>,
    server: actix_web::dev::Server,
}

impl FakeOdoo {
    pub fn bind(opts: OdooOptions) -> std::io::Result<FakeOdoo> {
        let listener = TcpListener::bind(&opts.listen)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(OdooState {
            opts,
            inner: Mutex::new(Inner::default()),
        });
        state.seed();
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/web/version", web::get().to(web_version))
                .route("/web/webclient/version_info", web::post().to(version_info))
                .route("/jsonrpc", web::post().to(jsonrpc))
                .route("/json/2/{model}/{method}", web::post().to(json2))
                .route("/doc-bearer/{model}.json", web::get().to(doc_bearer))
                .route("/_fake/faults", web::put().to(put_faults))
                .route("/_fake/calls", web::get().to(get_calls))
                .route("/_fake/records/{model}", web::get().to(get_records))
                .route("/_fake/records/{model}", web::post().to(post_record))
                .route("/_fake/records/{model}/{id}", web::patch().to(patch_record))
                .route(
                    "/_fake/records/{model}/{id}",
                    web::delete().to(delete_record),
                )
        })
        .listen(listener)?
        .disable_signals()
        .workers(2)
        .run();
        Ok(FakeOdoo {
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

/// Odoo's datetime format, in UTC.
const DATETIME: &str = "%Y-%m-%d %H:%M:%S";

impl OdooState {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake odoo lock"))
    }

    pub fn options(&self) -> &OdooOptions {
        &self.opts
    }

    /// The countries, tags and user every database starts with.
    fn seed(&self) {
        for (name, code) in [
            ("Belgium", "BE"),
            ("France", "FR"),
            ("Spain", "ES"),
            ("United States", "US"),
        ] {
            self.create("res.country", json!({"name": name, "code": code}))
                .expect("seed");
        }
        for tag in ["Customer", "Supplier", "VIP"] {
            self.create("res.partner.category", json!({"name": tag}))
                .expect("seed");
        }
        let admin = self
            .create(
                "res.partner",
                json!({"name": "Mitchell Admin", "email": "admin@example.com"}),
            )
            .expect("seed");
        self.with(|i| {
            let now = now(i);
            let user: Map<String, Value> = serde_json::from_value(json!({
                "id": UID, "name": "Mitchell Admin", "login": self.opts.login, "active": true,
                "partner_id": admin, "create_date": now, "write_date": now,
            }))
            .expect("a map");
            i.records
                .entry("res.users".into())
                .or_default()
                .insert(UID, user);
            reindex(i, "res.users", UID, None, Some(&now));
            i.next_id.insert("res.users".into(), UID + 1);
        });
    }

    /// Adds `n` partners (`Partner 1` …), spread over the seeded countries and tags.
    pub fn seed_partners(&self, n: usize) {
        self.with(|i| {
            let countries: Vec<i64> = i.records.get("res.country").map(|r| r.keys().copied().collect()).unwrap_or_default();
            let tags: Vec<i64> = i.records.get("res.partner.category").map(|r| r.keys().copied().collect()).unwrap_or_default();
            for k in 1..=n {
                let vals = json!({
                    "name": format!("Partner {k}"),
                    "email": format!("partner{k}@example.com"),
                    "is_company": k % 5 == 0,
                    "country_id": countries.get(k % countries.len().max(1)).copied().map(Value::from).unwrap_or(Value::Bool(false)),
                    "category_id": [[6, 0, tags.get(k % tags.len().max(1)).map(|t| vec![*t]).unwrap_or_default()]],
                });
                create(i, "res.partner", &vals).expect("a valid partner");
            }
        });
    }

    pub fn set_faults(&self, f: OdooFaults) {
        self.with(|i| i.faults = f);
    }

    /// Moves the fake's clock forward.
    pub fn advance_clock(&self, secs: i64) {
        self.with(|i| i.clock_offset += secs);
    }

    /// Model calls so far: (protocol, model, method).
    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.with(|i| i.calls.clone())
    }

    /// Every record of a model, archived ones included, as stored (many2one as an id).
    pub fn records(&self, model: &str) -> BTreeMap<i64, Map<String, Value>> {
        self.with(|i| i.records.get(model).cloned().unwrap_or_default())
    }

    /// Creates a record as a person in Odoo would; answers its id.
    pub fn create(&self, model: &str, vals: Value) -> Result<i64, String> {
        self.with(|i| create(i, model, &vals))
            .map_err(|e| e.message)
    }

    /// Edits a record as a person in Odoo would.
    pub fn write(&self, model: &str, id: i64, vals: Value) -> Result<(), String> {
        self.with(|i| write(i, model, &[id], &vals))
            .map_err(|e| e.message)
    }

    /// Archives (or restores) a record.
    pub fn set_active(&self, model: &str, id: i64, active: bool) -> Result<(), String> {
        self.write(model, id, json!({ "active": active }))
    }

    /// Deletes a record for good (Odoo reports no such thing; only listing ids finds it).
    pub fn unlink(&self, model: &str, id: i64) -> Result<(), String> {
        self.with(|i| unlink(i, model, &[id]))
            .map_err(|e| e.message)
    }
}

fn now(i: &Inner) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(i.clock_offset))
        .format(DATETIME)
        .to_string()
}

/// The write date of a write now: the clock, or earlier once when `backdate_next` is set.
fn stamp(i: &mut Inner) -> String {
    let back = std::mem::take(&mut i.faults.backdate_next) as i64;
    (chrono::Utc::now() + chrono::Duration::seconds(i.clock_offset - back))
        .format(DATETIME)
        .to_string()
}

fn defs(model: &str) -> Result<&'static [(&'static str, FieldDef)], OdooError> {
    model_fields(model)
        .ok_or_else(|| OdooError::new("builtins.KeyError", format!("Object {model} doesn't exist")))
}

fn def_of<'a>(
    defs: &'a [(&'static str, FieldDef)],
    model: &str,
    name: &str,
) -> Result<&'a FieldDef, OdooError> {
    defs.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d)
        .ok_or_else(|| OdooError::validation(format!("Invalid field '{name}' on model '{model}'")))
}

/// Stores values given by a client: many2one as an id (or false), x2many from commands or id
/// lists, everything else as given.
fn store_vals(
    i: &Inner,
    model: &str,
    vals: &Value,
    current: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, OdooError> {
    let defs = defs(model)?;
    let Value::Object(vals) = vals else {
        return Err(OdooError::user("the values must be a dictionary"));
    };
    let mut out = Map::new();
    for (k, v) in vals {
        let d = def_of(defs, model, k)?;
        if d.readonly && k != "id" {
            continue;
        }
        let stored = match d.ttype {
            "many2one" => match v {
                Value::Bool(false) | Value::Null => Value::Bool(false),
                Value::Number(n) => {
                    let id = n.as_i64().unwrap_or(0);
                    let rel = d.relation.expect("relational");
                    if !i.records.get(rel).is_some_and(|r| r.contains_key(&id)) {
                        return Err(OdooError::missing(rel, &[id]));
                    }
                    json!(id)
                }
                other => {
                    return Err(OdooError::validation(format!(
                        "Wrong value for {model}.{k}: {other}"
                    )));
                }
            },
            "many2many" | "one2many" => {
                let mut ids: Vec<i64> = current
                    .and_then(|c| c.get(k.as_str()))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
                let Value::Array(items) = v else {
                    return Err(OdooError::validation(format!(
                        "Wrong value for {model}.{k}: {v}"
                    )));
                };
                for item in items {
                    match item {
                        Value::Number(n) => {
                            let id = n.as_i64().unwrap_or(0);
                            if !ids.contains(&id) {
                                ids.push(id);
                            }
                        }
                        Value::Array(cmd) => {
                            let code = cmd.first().and_then(Value::as_i64).unwrap_or(-1);
                            let id = cmd.get(1).and_then(Value::as_i64).unwrap_or(0);
                            match code {
                                // (6, 0, ids): replace
                                6 => {
                                    ids = cmd
                                        .get(2)
                                        .and_then(Value::as_array)
                                        .map(|a| a.iter().filter_map(Value::as_i64).collect())
                                        .unwrap_or_default();
                                }
                                // (4, id): link; (3, id): unlink; (5,): clear
                                4 if !ids.contains(&id) => ids.push(id),
                                4 => {}
                                3 | 2 => ids.retain(|x| *x != id),
                                5 => ids.clear(),
                                _ => {
                                    return Err(OdooError::validation(format!(
                                        "Unsupported command {item} for {model}.{k}"
                                    )));
                                }
                            }
                        }
                        other => {
                            return Err(OdooError::validation(format!(
                                "Wrong value for {model}.{k}: {other}"
                            )));
                        }
                    }
                }
                let rel = d.relation.expect("relational");
                if let Some(bad) = ids
                    .iter()
                    .find(|id| !i.records.get(rel).is_some_and(|r| r.contains_key(id)))
                {
                    return Err(OdooError::missing(rel, &[*bad]));
                }
                json!(ids)
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), stored);
    }
    Ok(out)
}

fn create(i: &mut Inner, model: &str, vals: &Value) -> Result<i64, OdooError> {
    let defs = defs(model)?;
    let mut rec = store_vals(i, model, vals, None)?;
    for (name, d) in defs {
        if d.required
            && rec
                .get(*name)
                .is_none_or(|v| v.is_null() || *v == json!(false))
        {
            return Err(OdooError::validation(format!(
                "The operation cannot be completed: a mandatory field is not set.\n- Model: {model}\n- Field: {} ({name})",
                d.string
            )));
        }
        if *name == "active" && !rec.contains_key("active") {
            rec.insert("active".into(), json!(true));
        }
    }
    let next = i.next_id.entry(model.to_string()).or_insert(1);
    let id = *next;
    *next += 1;
    let at = stamp(i);
    rec.insert("id".into(), json!(id));
    rec.insert("create_date".into(), json!(at));
    rec.insert("write_date".into(), json!(at));
    i.records
        .entry(model.to_string())
        .or_default()
        .insert(id, rec);
    reindex(i, model, id, None, Some(&at));
    Ok(id)
}

fn write(i: &mut Inner, model: &str, ids: &[i64], vals: &Value) -> Result<(), OdooError> {
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !i.records.get(model).is_some_and(|r| r.contains_key(id)))
        .collect();
    if !missing.is_empty() {
        return Err(OdooError::missing(model, &missing));
    }
    let mut updates = Vec::new();
    for id in ids {
        let current = i.records[model][id].clone();
        updates.push((*id, store_vals(i, model, vals, Some(&current))?));
    }
    let at = stamp(i);
    for (id, vals) in updates {
        let rec = i
            .records
            .get_mut(model)
            .and_then(|r| r.get_mut(&id))
            .expect("checked");
        let old = rec
            .get("write_date")
            .and_then(Value::as_str)
            .map(String::from);
        rec.extend(vals);
        rec.insert("write_date".into(), json!(at));
        reindex(i, model, id, old.as_deref(), Some(&at));
    }
    Ok(())
}

fn unlink(i: &mut Inner, model: &str, ids: &[i64]) -> Result<(), OdooError> {
    defs(model)?;
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !i.records.get(model).is_some_and(|r| r.contains_key(id)))
        .collect();
    if !missing.is_empty() {
        return Err(OdooError::missing(model, &missing));
    }
    for id in ids {
        let old = i
            .records
            .get_mut(model)
            .and_then(|r| r.remove(id))
            .and_then(|r| {
                r.get("write_date")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        reindex(i, model, *id, old.as_deref(), None);
    }
    Ok(())
}

/// Moves a record in the (`write_date`, `id`) index.
fn reindex(i: &mut Inner, model: &str, id: i64, old: Option<&str>, new: Option<&str>) {
    let index = i.by_write.entry(model.to_string()).or_default();
    if let Some(o) = old {
        index.remove(&(o.to_string(), id));
    }
    if let Some(n) = new {
        index.insert((n.to_string(), id));
    }
}

/// The length of the domain expression starting at `at` (prefix notation), if well formed.
fn expression_len(d: &[Value], at: usize) -> Option<usize> {
    match d.get(at)?.as_str() {
        Some("&") | Some("|") => {
            let a = expression_len(d, at + 1)?;
            let b = expression_len(d, at + 1 + a)?;
            Some(1 + a + b)
        }
        Some("!") => Some(1 + expression_len(d, at + 1)?),
        _ => Some(1),
    }
}

/// The smallest (`write_date`, `id`) a record can have to match `domain`, when its conjunction
/// says so: a term `write_date >= v` or `> v`, or the keyset
/// `| (write_date > v) & (write_date = v) (id > n)`.
fn write_date_floor(domain: &[Value]) -> Option<(String, i64)> {
    let term = |v: &Value, field: &str, op: &str| -> Option<Value> {
        let t = v.as_array()?;
        (t.len() == 3 && t[0] == field && t[1] == op).then(|| t[2].clone())
    };
    let text = |v: Value| v.as_str().map(String::from);
    let mut floor: Option<(String, i64)> = None;
    let mut at = 0;
    while at < domain.len() {
        let len = expression_len(domain, at)?;
        let e = &domain[at..at + len];
        let found = match e {
            [one] => term(one, "write_date", ">=")
                .and_then(text)
                .map(|v| (v, i64::MIN))
                .or_else(|| {
                    term(one, "write_date", ">")
                        .and_then(text)
                        .map(|v| (v, i64::MAX))
                }),
            [or, a, and, b, c] if or == "|" && and == "&" => {
                let v = term(a, "write_date", ">").and_then(text);
                let same = term(b, "write_date", "=").and_then(text);
                let after = term(c, "id", ">").and_then(|n| n.as_i64());
                match (v, same, after) {
                    (Some(v), Some(same), Some(n)) if v == same => Some((v, n.saturating_add(1))),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(v) = found
            && floor.as_ref().is_none_or(|f| v > *f)
        {
            floor = Some(v);
        }
        at += len;
    }
    floor
}

/// A record's display name: its `name` (Odoo's default `_rec_name`).
fn display_name(i: &Inner, model: &str, id: i64) -> Value {
    i.records
        .get(model)
        .and_then(|r| r.get(&id))
        .and_then(|r| r.get("name").cloned())
        .unwrap_or(Value::Bool(false))
}

/// A record as `read` answers it, with `fields` (all when empty). With `classic`
/// (`load = "_classic_write"`), a many2one is its id alone.
fn read_one(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    fields: &[String],
    classic: bool,
) -> Value {
    let defs = model_fields(model).unwrap_or(&[]);
    let mut out = Map::new();
    out.insert("id".into(), rec["id"].clone());
    for (name, d) in defs {
        if *name == "id" || (!fields.is_empty() && !fields.iter().any(|f| f == name)) {
            continue;
        }
        let v = rec.get(*name).cloned().unwrap_or(Value::Null);
        let shown = match (d.ttype, &v) {
            ("many2one", Value::Number(_)) if classic => v,
            ("many2one", Value::Number(n)) => {
                let id = n.as_i64().unwrap_or(0);
                json!([id, display_name(i, d.relation.expect("relational"), id)])
            }
            ("many2one", _) => Value::Bool(false),
            ("many2many" | "one2many", Value::Array(_)) => v,
            ("one2many", _) if *name == "child_ids" => children(i, model, rec),
            ("many2many" | "one2many", _) => json!([]),
            ("boolean", Value::Null) => Value::Bool(false),
            (_, Value::Null) => Value::Bool(false),
            (_, Value::String(s)) if s.is_empty() && d.ttype != "char" => Value::Bool(false),
            _ => v,
        };
        let shown = if *name == "display_name" {
            display_name(i, model, rec["id"].as_i64().unwrap_or(0))
        } else {
            shown
        };
        out.insert(name.to_string(), shown);
    }
    Value::Object(out)
}

/// The records whose `parent_id` is `rec` (the `child_ids` one2many), by id.
fn children(i: &Inner, model: &str, rec: &Map<String, Value>) -> Value {
    let id = rec["id"].as_i64();
    Value::Array(
        i.records
            .get(model)
            .into_iter()
            .flat_map(|r| r.values())
            .filter(|c| c.get("parent_id").and_then(Value::as_i64) == id)
            .map(|c| c["id"].clone())
            .collect(),
    )
}

/// A field's value for comparisons, following dotted paths through many2one fields.
fn value_at(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    path: &str,
) -> Result<Value, OdooError> {
    let defs = defs(model)?;
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let d = def_of(defs, model, head)?;
    let v = match head {
        "display_name" => rec.get("name").cloned().unwrap_or(Value::Bool(false)),
        "child_ids" => children(i, model, rec),
        _ => rec.get(head).cloned().unwrap_or(Value::Bool(false)),
    };
    match rest {
        None => Ok(v),
        Some(rest) => {
            let rel = d.relation.ok_or_else(|| {
                OdooError::validation(format!("Invalid field path '{path}' on model '{model}'"))
            })?;
            match v.as_i64().and_then(|id| i.records.get(rel)?.get(&id)) {
                Some(r) => value_at(i, rel, r, rest),
                None => Ok(Value::Bool(false)),
            }
        }
    }
}

/// `like` patterns: `%` and `_` wildcards (`like` and `ilike` wrap the value in `%`).
fn like(text: &str, pattern: &str, insensitive: bool) -> bool {
    let (t, p) = if insensitive {
        (text.to_lowercase(), pattern.to_lowercase())
    } else {
        (text.to_string(), pattern.to_string())
    };
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|k| go(&t[k..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    go(
        &t.chars().collect::<Vec<_>>(),
        &p.chars().collect::<Vec<_>>(),
    )
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(false) | Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One leaf `[path, op, value]` against a record.
fn leaf(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    path: &str,
    op: &str,
    value: &Value,
) -> Result<bool, OdooError> {
    if op == "=?" && (value.is_null() || *value == json!(false)) {
        return Ok(true);
    }
    let v = value_at(i, model, rec, path)?;
    let is_set = |v: &Value| !matches!(v, Value::Bool(false) | Value::Null);
    let list: Vec<Value> = match value {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    // x2many fields compare by membership of any of their ids.
    let any = |f: &dyn Fn(&Value) -> bool| match &v {
        Value::Array(ids) => ids.iter().any(f),
        one => f(one),
    };
    let eq = |x: &Value, y: &Value| match (x, y) {
        (Value::Bool(false) | Value::Null, Value::Bool(false) | Value::Null) => true,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => x == y,
    };
    Ok(match op {
        "=" | "=?" => match (&v, value) {
            (Value::Array(ids), Value::Bool(false)) => ids.is_empty(),
            _ => any(&|x| eq(x, value)),
        },
        "!=" => match (&v, value) {
            (Value::Array(ids), Value::Bool(false)) => !ids.is_empty(),
            _ => !any(&|x| eq(x, value)),
        },
        "<" | "<=" | ">" | ">=" => {
            if !is_set(&v) {
                false
            } else {
                let o = compare(&v, value);
                match op {
                    "<" => o == Some(std::cmp::Ordering::Less),
                    "<=" => matches!(
                        o,
                        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                    ),
                    ">" => o == Some(std::cmp::Ordering::Greater),
                    _ => matches!(
                        o,
                        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                    ),
                }
            }
        }
        "in" => {
            any(&|x| list.iter().any(|y| eq(x, y)))
                || (!is_set(&v) && list.contains(&Value::Bool(false)))
        }
        "not in" => !any(&|x| list.iter().any(|y| eq(x, y))),
        "like" | "ilike" | "not like" | "not ilike" => {
            let pattern = format!("%{}%", as_text(value));
            let insensitive = op.contains("ilike");
            let m = is_set(&v) && like(&as_text(&v), &pattern, insensitive);
            if op.starts_with("not") { !m } else { m }
        }
        "=like" | "=ilike" => is_set(&v) && like(&as_text(&v), &as_text(value), op == "=ilike"),
        "child_of" => {
            // The record is one of the given ids or below one of them through `parent_id`.
            let mut current = rec.clone();
            let mut hops = 0;
            loop {
                let id = current.get("id").cloned().unwrap_or(Value::Null);
                if list.iter().any(|y| eq(&id, y)) {
                    break true;
                }
                match current
                    .get("parent_id")
                    .and_then(Value::as_i64)
                    .and_then(|p| i.records.get(model)?.get(&p))
                {
                    Some(parent) if hops < 64 => {
                        current = parent.clone();
                        hops += 1;
                    }
                    _ => break false,
                }
            }
        }
        other => {
            return Err(OdooError::validation(format!(
                "Invalid leaf operator '{other}'"
            )));
        }
    })
}

/// Evaluates a domain (prefix notation; leaves side by side are and-ed).
fn matches(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    domain: &[Value],
) -> Result<bool, OdooError> {
    fn term(
        i: &Inner,
        model: &str,
        rec: &Map<String, Value>,
        items: &[Value],
        pos: &mut usize,
    ) -> Result<bool, OdooError> {
        let Some(item) = items.get(*pos) else {
            return Err(OdooError::validation(
                "Invalid domain: an operator lacks its operands",
            ));
        };
        *pos += 1;
        match item {
            Value::String(op) if op == "&" || op == "|" => {
                let a = term(i, model, rec, items, pos)?;
                let b = term(i, model, rec, items, pos)?;
                Ok(if op == "&" { a && b } else { a || b })
            }
            Value::String(op) if op == "!" => Ok(!term(i, model, rec, items, pos)?),
            Value::Array(l) if l.len() == 3 => {
                let path = l[0]
                    .as_str()
                    .ok_or_else(|| OdooError::validation(format!("Invalid leaf {item}")))?;
                let op = l[1]
                    .as_str()
                    .ok_or_else(|| OdooError::validation(format!("Invalid leaf {item}")))?;
                leaf(i, model, rec, path, op, &l[2])
            }
            other => Err(OdooError::validation(format!(
                "Invalid domain term {other}"
            ))),
        }
    }
    let mut pos = 0;
    let mut all = true;
    while pos < domain.len() {
        all &= term(i, model, rec, domain, &mut pos)?;
    }
    Ok(all)
}

/// Does the domain name the `active` field anywhere?
fn mentions_active(domain: &[Value]) -> bool {
    domain.iter().any(|t| {
        t.as_array()
            .and_then(|l| l.first())
            .and_then(Value::as_str)
            .is_some_and(|f| f == "active")
    })
}

/// `search`: ids of the matching records in `order` (default `id`), with offset and limit.
fn search(
    i: &Inner,
    model: &str,
    domain: &[Value],
    offset: usize,
    limit: Option<usize>,
    order: Option<&str>,
    context: &Value,
) -> Result<Vec<i64>, OdooError> {
    let defs = defs(model)?;
    let active_test = context.get("active_test") != Some(&json!(false));
    let hides_archived =
        active_test && defs.iter().any(|(n, _)| *n == "active") && !mentions_active(domain);
    // Ordered by (write_date, id) with a limit: walk the index from the domain's floor and
    // stop at the limit, as a database would.
    let by_write = order.map(|o| {
        o.split(',')
            .map(|p| p.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    });
    let indexed = matches!(by_write.as_deref(), Some([a, b])
        if matches!(a.as_slice(), ["write_date"] | ["write_date", "asc"])
            && matches!(b.as_slice(), ["id"] | ["id", "asc"]));
    if let (true, Some(limit), Some(index), Some(table)) =
        (indexed, limit, i.by_write.get(model), i.records.get(model))
    {
        let floor = write_date_floor(domain).unwrap_or((String::new(), i64::MIN));
        let mut out = Vec::new();
        for (_, id) in index.range(floor..) {
            let rec = &table[id];
            if hides_archived && rec.get("active") == Some(&json!(false)) {
                continue;
            }
            if matches(i, model, rec, domain)? {
                out.push(*id);
                if out.len() >= offset + limit {
                    break;
                }
            }
        }
        return Ok(out.into_iter().skip(offset).collect());
    }
    let mut found = Vec::new();
    // `id in [...]` among conditions joined by AND: only those rows are looked at, through
    // the primary key, as a database would.
    let by_id: Option<Vec<i64>> = if domain.iter().any(|c| c.is_string()) {
        None
    } else {
        domain
            .iter()
            .find_map(|c| match c.as_array().map(Vec::as_slice) {
                Some([f, op, Value::Array(ids)]) if f == "id" && op == "in" => {
                    Some(ids.iter().filter_map(Value::as_i64).collect())
                }
                _ => None,
            })
    };
    let table = i.records.get(model);
    let rows: Box<dyn Iterator<Item = &Map<String, Value>>> = match (&by_id, table) {
        (Some(ids), Some(t)) => Box::new(
            ids.iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|id| t.get(id)),
        ),
        (None, Some(t)) => Box::new(t.values()),
        (_, None) => Box::new(std::iter::empty()),
    };
    for rec in rows {
        if hides_archived && rec.get("active") == Some(&json!(false)) {
            continue;
        }
        if matches(i, model, rec, domain)? {
            found.push(rec);
        }
    }
    let keys: Vec<(String, bool)> = order
        .unwrap_or("id")
        .split(',')
        .filter_map(|part| {
            let mut w = part.split_whitespace();
            let f = w.next()?.to_string();
            let desc = w.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
            Some((f, desc))
        })
        .collect();
    for (f, _) in &keys {
        def_of(defs, model, f)?;
    }
    found.sort_by(|a, b| {
        for (f, desc) in &keys {
            let (x, y) = (
                a.get(f).unwrap_or(&Value::Null),
                b.get(f).unwrap_or(&Value::Null),
            );
            let o = compare(x, y).unwrap_or(std::cmp::Ordering::Equal);
            let o = if *desc { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    Ok(found
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .filter_map(|r| r.get("id").and_then(Value::as_i64))
        .collect())
}

fn ids_of(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        _ => Vec::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn read(
    i: &Inner,
    model: &str,
    ids: &[i64],
    fields: &[String],
    classic: bool,
) -> Result<Value, OdooError> {
    defs(model)?;
    let table = i.records.get(model);
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !table.is_some_and(|t| t.contains_key(id)))
        .collect();
    if !missing.is_empty() {
        return Err(OdooError::missing(model, &missing));
    }
    Ok(Value::Array(
        ids.iter()
            .map(|id| read_one(i, model, &table.expect("checked")[id], fields, classic))
            .collect(),
    ))
}

/// One ORM call with its arguments by name (JSON-2), or positional ones mapped to names
/// (JSON-RPC `execute_kw`, whose `kwargs` are named already).
fn call(
    i: &mut Inner,
    model: &str,
    method: &str,
    kw: &Map<String, Value>,
) -> Result<Value, OdooError> {
    let context = kw.get("context").cloned().unwrap_or(json!({}));
    let domain: Vec<Value> = kw
        .get("domain")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let offset = kw.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let limit = kw
        .get("limit")
        .and_then(Value::as_u64)
        .map(|l| l as usize)
        .filter(|l| *l > 0);
    let order = kw.get("order").and_then(Value::as_str);
    let fields = strings(kw.get("fields"));
    let classic = kw.get("load").and_then(Value::as_str) == Some("_classic_write");
    match method {
        "fields_get" => {
            let defs = defs(model)?;
            let wanted = strings(kw.get("allfields"));
            let attrs = strings(kw.get("attributes"));
            let mut out = Map::new();
            for (name, d) in defs {
                if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
                    continue;
                }
                let mut f = Map::new();
                f.insert("type".into(), json!(d.ttype));
                f.insert("string".into(), json!(d.string));
                f.insert("required".into(), json!(d.required));
                f.insert("readonly".into(), json!(d.readonly));
                f.insert("store".into(), json!(*name != "display_name"));
                if let Some(r) = d.relation {
                    f.insert("relation".into(), json!(r));
                }
                if d.ttype == "selection" {
                    f.insert(
                        "selection".into(),
                        json!([
                            ["contact", "Contact"],
                            ["invoice", "Invoice Address"],
                            ["delivery", "Delivery Address"],
                            ["other", "Other Address"]
                        ]),
                    );
                }
                if !attrs.is_empty() {
                    f.retain(|k, _| attrs.iter().any(|a| a == k));
                }
                out.insert(name.to_string(), Value::Object(f));
            }
            Ok(Value::Object(out))
        }
        "search" => Ok(json!(search(
            i, model, &domain, offset, limit, order, &context
        )?)),
        "search_count" => Ok(json!(
            search(i, model, &domain, 0, limit, None, &context)?.len()
        )),
        "search_read" => {
            let ids = search(i, model, &domain, offset, limit, order, &context)?;
            read(i, model, &ids, &fields, classic)
        }
        "read" => read(i, model, &ids_of(kw.get("ids")), &fields, classic),
        "create" => match kw.get("vals_list").or_else(|| kw.get("vals")) {
            Some(Value::Array(list)) => {
                let mut ids = Vec::new();
                for v in list {
                    ids.push(create(i, model, v)?);
                }
                Ok(json!(ids))
            }
            Some(v) => Ok(json!(create(i, model, v)?)),
            None => Err(OdooError::user("create: no values given")),
        },
        "write" => {
            write(
                i,
                model,
                &ids_of(kw.get("ids")),
                kw.get("vals").unwrap_or(&json!({})),
            )?;
            Ok(json!(true))
        }
        "unlink" => {
            unlink(i, model, &ids_of(kw.get("ids")))?;
            Ok(json!(true))
        }
        "context_get" => Ok(json!({"lang": "en_US", "tz": "Europe/Brussels", "uid": UID})),
        "default_get" => {
            let defs = defs(model)?;
            let wanted = strings(kw.get("fields_list"));
            let mut out = Map::new();
            if defs.iter().any(|(n, _)| *n == "active")
                && (wanted.is_empty() || wanted.iter().any(|w| w == "active"))
            {
                out.insert("active".into(), json!(true));
            }
            Ok(Value::Object(out))
        }
        other => Err(OdooError::new(
            "builtins.AttributeError",
            format!("The method '{other}' does not exist on the model '{model}'"),
        )),
    }
}

/// The parameter names of each method, in order, for positional arguments.
fn parameters(method: &str) -> &'static [&'static str] {
    match method {
        "fields_get" => &["allfields", "attributes"],
        "search" => &["domain", "offset", "limit", "order"],
        "search_count" => &["domain", "limit"],
        "search_read" => &["domain", "fields", "offset", "limit", "order"],
        "read" => &["ids", "fields"],
        "create" => &["vals_list"],
        "write" => &["ids", "vals"],
        "unlink" => &["ids"],
        "default_get" => &["fields_list"],
        _ => &[],
    }
}

/// Positional arguments and keyword arguments, as `execute_kw` receives them, by name.
fn named(method: &str, args: &[Value], kwargs: Option<&Map<String, Value>>) -> Map<String, Value> {
    let mut kw = kwargs.cloned().unwrap_or_default();
    for (name, v) in parameters(method).iter().zip(args) {
        kw.entry(name.to_string()).or_insert_with(|| v.clone());
    }
    kw
}

/// The fault due now, if any, as (HTTP status, body, content type).
fn fault(i: &mut Inner) -> Option<Result<(), OdooError>> {
    let f = &mut i.faults;
    if f.rate_limit > 0 {
        f.rate_limit -= 1;
        return Some(Err(OdooError::new("fake.RateLimited", "429")));
    }
    if f.html_errors > 0 {
        f.html_errors -= 1;
        return Some(Err(OdooError::new("fake.Html", "502")));
    }
    if f.server_errors > 0 {
        f.server_errors -= 1;
        return Some(Err(OdooError::new(
            "builtins.RuntimeError",
            "The server is busy; try again",
        )));
    }
    if f.serialization_failures > 0 {
        f.serialization_failures -= 1;
        return Some(Err(OdooError::new(
            "psycopg2.errors.SerializationFailure",
            "could not serialize access due to concurrent update",
        )));
    }
    None
}

/// A create made whose answer is lost, when `lose_create_answers` says so.
fn answer_lost(
    i: &mut Inner,
    method: &str,
    r: Result<Value, OdooError>,
) -> Result<Value, OdooError> {
    if r.is_ok() && method == "create" && i.faults.lose_create_answers > 0 {
        i.faults.lose_create_answers -= 1;
        return Err(OdooError::new("fake.Html", "502"));
    }
    r
}

/// Answers a transport-level fault (429, an HTML page), or `None` for an Odoo error.
fn transport_fault(e: &OdooError) -> Option<HttpResponse> {
    match e.name {
        "fake.RateLimited" => Some(
            HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", "1"))
                .content_type("text/html")
                .body("<html><body><h1>429 Too Many Requests</h1></body></html>"),
        ),
        "fake.Html" => Some(
            HttpResponse::BadGateway()
                .content_type("text/html")
                .body("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"),
        ),
        _ => None,
    }
}

fn version_value(opts: &OdooOptions) -> Value {
    let major: i64 = opts
        .version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(19);
    json!({
        "server_version": opts.version,
        "server_version_info": [major, 0, 0, "final", 0, ""],
        "server_serie": opts.version,
        "protocol_version": 1,
    })
}

async fn web_version(state: web::Data<OdooState>) -> HttpResponse {
    let v = version_value(&state.opts);
    HttpResponse::Ok().json(json!({
        "version": v["server_version"],
        "version_info": v["server_version_info"],
    }))
}

fn rpc_result(id: &Value, result: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn rpc_error(id: &Value, e: &OdooError) -> HttpResponse {
    if let Some(r) = transport_fault(e) {
        return r;
    }
    HttpResponse::Ok().json(json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": 200, "message": "Odoo Server Error", "data": e.data()},
    }))
}

async fn version_info(state: web::Data<OdooState>, body: web::Bytes) -> HttpResponse {
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    rpc_result(&id, version_value(&state.opts))
}

/// Checks a password or API key for the user.
fn credentials_ok(state: &OdooState, i: &Inner, secret: &str) -> bool {
    !i.faults.key_expired && (secret == state.opts.password || secret == state.opts.api_key)
}

fn check_db(state: &OdooState, db: &str) -> Result<(), OdooError> {
    if db == state.opts.database {
        Ok(())
    } else {
        Err(OdooError::new(
            "psycopg2.OperationalError",
            format!("connection to server failed: FATAL:  database \"{db}\" does not exist"),
        ))
    }
}

async fn jsonrpc(state: web::Data<OdooState>, body: web::Bytes) -> HttpResponse {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest()
            .content_type("text/html")
            .body("<html><body>Bad Request: the body is not JSON</body></html>");
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let params = req.get("params").cloned().unwrap_or(json!({}));
    let service = params.get("service").and_then(Value::as_str).unwrap_or("");
    let method = params.get("method").and_then(Value::as_str).unwrap_or("");
    let args: Vec<Value> = params
        .get("args")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let arg_str = |n: usize| {
        args.get(n)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let result: Result<Value, OdooError> = match (service, method) {
        ("common", "version") => Ok(version_value(&state.opts)),
        ("common", "login" | "authenticate") => {
            let (db, login, secret) = (arg_str(0), arg_str(1), arg_str(2));
            check_db(&state, &db).map(|()| {
                let ok = state.with(|i| credentials_ok(&state, i, &secret));
                if ok && login == state.opts.login {
                    json!(UID)
                } else {
                    json!(false)
                }
            })
        }
        ("db", "list") => Ok(json!([state.opts.database])),
        ("db", "server_version") => Ok(version_value(&state.opts)["server_version"].clone()),
        ("object", "execute" | "execute_kw") => {
            let (db, secret) = (arg_str(0), arg_str(2));
            let uid = args.get(1).and_then(Value::as_i64).unwrap_or(0);
            let model = arg_str(3);
            let m = arg_str(4);
            let kw = if method == "execute_kw" {
                let positional = args
                    .get(5)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                named(&m, &positional, args.get(6).and_then(Value::as_object))
            } else {
                named(&m, args.get(5..).unwrap_or(&[]), None)
            };
            check_db(&state, &db).and_then(|()| {
                state.with(|i| {
                    if uid != UID || !credentials_ok(&state, i, &secret) {
                        return Err(OdooError::access_denied());
                    }
                    i.calls.push(("jsonrpc".into(), model.clone(), m.clone()));
                    if let Some(Err(e)) = fault(i) {
                        return Err(e);
                    }
                    let r = call(i, &model, &m, &kw);
                    answer_lost(i, &m, r)
                })
            })
        }
        (s, m) => Err(OdooError::new(
            "builtins.KeyError",
            format!("No such method {m} in service {s}"),
        )),
    };
    match result {
        Ok(v) => rpc_result(&id, v),
        Err(e) => rpc_error(&id, &e),
    }
}

fn json2_error(e: &OdooError) -> HttpResponse {
    if let Some(r) = transport_fault(e) {
        return r;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(e.status()).expect("a valid status"))
        .json(e.data())
}

/// The bearer key of a JSON-2 call, checked, and the database it names.
fn json2_auth(state: &OdooState, req: &HttpRequest) -> Result<(), OdooError> {
    let key = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| key.trim().to_string())
        })
        .unwrap_or_default();
    if !state.with(|i| !i.faults.key_expired && key == state.opts.api_key) {
        return Err(OdooError::access_denied());
    }
    if let Some(db) = req
        .headers()
        .get("X-Odoo-Database")
        .and_then(|v| v.to_str().ok())
    {
        check_db(state, db).map_err(|_| {
            OdooError::new(
                "werkzeug.exceptions.NotFound",
                format!("database {db:?} not found"),
            )
        })?;
    }
    Ok(())
}

async fn json2(
    state: web::Data<OdooState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let (model, method) = path.into_inner();
    if let Err(e) = json2_auth(&state, &req) {
        return json2_error(&e);
    }
    let kw = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        Ok(_) | Err(_) if body.is_empty() => Map::new(),
        _ => {
            return json2_error(&OdooError::user("the body must be a JSON object"));
        }
    };
    if model_fields(&model).is_none() {
        return json2_error(&OdooError::new(
            "werkzeug.exceptions.NotFound",
            format!("the model {model:?} does not exist"),
        ));
    }
    let result = state.with(|i| {
        i.calls
            .push(("json2".into(), model.clone(), method.clone()));
        if let Some(Err(e)) = fault(i) {
            return Err(e);
        }
        let r = call(i, &model, &method, &kw);
        answer_lost(i, &method, r)
    });
    match result {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => json2_error(&e),
    }
}

async fn put_faults(state: web::Data<OdooState>, body: web::Json<OdooFaults>) -> HttpResponse {
    state.set_faults(body.into_inner());
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn get_calls(state: web::Data<OdooState>) -> HttpResponse {
    let calls: Vec<Value> = state
        .calls()
        .into_iter()
        .map(|(p, m, f)| json!({"protocol": p, "model": m, "method": f}))
        .collect();
    HttpResponse::Ok().json(calls)
}

fn admin_error(e: String) -> HttpResponse {
    HttpResponse::UnprocessableEntity().json(json!({"error": e}))
}

async fn get_records(state: web::Data<OdooState>, path: web::Path<String>) -> HttpResponse {
    let model = path.into_inner();
    if model_fields(&model).is_none() {
        return HttpResponse::NotFound().json(json!({"error": format!("no model {model}")}));
    }
    let records: Vec<Value> = state
        .records(&model)
        .into_values()
        .map(Value::Object)
        .collect();
    HttpResponse::Ok().json(records)
}

async fn post_record(
    state: web::Data<OdooState>,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    match state.create(&path.into_inner(), body.into_inner()) {
        Ok(id) => HttpResponse::Created().json(json!({"id": id})),
        Err(e) => admin_error(e),
    }
}

async fn patch_record(
    state: web::Data<OdooState>,
    path: web::Path<(String, i64)>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (model, id) = path.into_inner();
    match state.write(&model, id, body.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(json!({"id": id})),
        Err(e) => admin_error(e),
    }
}

async fn delete_record(
    state: web::Data<OdooState>,
    path: web::Path<(String, i64)>,
) -> HttpResponse {
    let (model, id) = path.into_inner();
    match state.unlink(&model, id) {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => admin_error(e),
    }
}

/// The method signatures of a model, as `/doc-bearer/<model>.json` lists them.
async fn doc_bearer(
    state: web::Data<OdooState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = json2_auth(&state, &req) {
        return json2_error(&e);
    }
    let model = path.into_inner();
    if model_fields(&model).is_none() {
        return HttpResponse::NotFound().finish();
    }
    let mut methods = Map::new();
    for m in [
        "fields_get",
        "search",
        "search_count",
        "search_read",
        "read",
        "create",
        "write",
        "unlink",
        "context_get",
        "default_get",
    ] {
        let params: Map<String, Value> = parameters(m)
            .iter()
            .filter(|p| **p != "ids")
            .map(|p| (p.to_string(), json!({})))
            .collect();
        let on_records = matches!(m, "read" | "write" | "unlink");
        methods.insert(
            m.into(),
            json!({
                "parameters": params,
                "api": if on_records { json!([]) } else { json!(["model"]) },
            }),
        );
    }
    HttpResponse::Ok().json(json!({"model": model, "methods": methods}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> OdooState {
        let s = OdooState {
            opts: OdooOptions::default(),
            inner: Mutex::new(Inner::default()),
        };
        s.seed();
        s
    }

    fn search_names(s: &OdooState, domain: Value, context: Value) -> Vec<String> {
        s.with(|i| {
            let ids = search(
                i,
                "res.partner",
                domain.as_array().unwrap(),
                0,
                None,
                Some("name"),
                &context,
            )
            .unwrap();
            ids.iter()
                .map(|id| {
                    i.records["res.partner"][id]["name"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
    }

    #[test]
    fn domains_are_evaluated_as_odoo_does() {
        let s = state();
        let be = s.with(|i| {
            search(
                i,
                "res.country",
                &[json!(["code", "=", "BE"])],
                0,
                None,
                None,
                &json!({}),
            )
            .unwrap()[0]
        });
        let acme = s.create("res.partner", json!({"name": "Acme", "is_company": true, "country_id": be, "email": "info@ACME.example"})).unwrap();
        s.create(
            "res.partner",
            json!({"name": "Ann", "parent_id": acme, "email": "ann@acme.example"}),
        )
        .unwrap();
        let bob = s
            .create("res.partner", json!({"name": "Bob", "email": false}))
            .unwrap();
        s.set_active("res.partner", bob, false).unwrap();

        assert_eq!(
            search_names(&s, json!([["country_id.code", "=", "BE"]]), json!({})),
            ["Acme"]
        );
        assert_eq!(
            search_names(
                &s,
                json!(["|", ["name", "=", "Ann"], ["is_company", "=", true]]),
                json!({})
            ),
            ["Acme", "Ann"]
        );
        assert_eq!(
            search_names(&s, json!(["!", ["name", "ilike", "a"]]), json!({})),
            Vec::<String>::new()
        );
        assert_eq!(
            search_names(&s, json!([["email", "ilike", "acme"]]), json!({})),
            ["Acme", "Ann"]
        );
        assert_eq!(
            search_names(&s, json!([["email", "=like", "ann@%"]]), json!({})),
            ["Ann"]
        );
        assert_eq!(
            search_names(&s, json!([["id", "child_of", [acme]]]), json!({})),
            ["Acme", "Ann"]
        );
        assert_eq!(
            search_names(&s, json!([["name", "in", ["Ann", "Bob"]]]), json!({})),
            ["Ann"]
        );
        // Archived records only when asked for.
        assert_eq!(
            search_names(
                &s,
                json!([["name", "in", ["Ann", "Bob"]]]),
                json!({"active_test": false})
            ),
            ["Ann", "Bob"]
        );
        assert_eq!(
            search_names(&s, json!([["active", "=", false]]), json!({})),
            ["Bob"]
        );
        assert_eq!(
            search_names(
                &s,
                json!([["parent_id", "=?", false], ["name", "=", "Ann"]]),
                json!({})
            ),
            ["Ann"]
        );
    }

    #[test]
    fn values_are_answered_in_odoo_shapes() {
        let s = state();
        let tags: Vec<i64> = s.records("res.partner.category").keys().copied().collect();
        let id = s.create("res.partner", json!({"name": "Acme", "country_id": 1, "category_id": [[6, 0, [tags[0], tags[2]]]]})).unwrap();
        let r = s.with(|i| read(i, "res.partner", &[id], &[], false).unwrap())[0].clone();
        let classic = s.with(|i| read(i, "res.partner", &[id], &[], true).unwrap())[0].clone();
        assert_eq!(classic["country_id"], json!(1));
        assert_eq!(r["country_id"], json!([1, "Belgium"]));
        assert_eq!(r["category_id"], json!([tags[0], tags[2]]));
        assert_eq!(r["email"], json!(false));
        assert_eq!(r["parent_id"], json!(false));
        assert_eq!(r["active"], json!(true));
        assert!(
            chrono::NaiveDateTime::parse_from_str(r["write_date"].as_str().unwrap(), DATETIME)
                .is_ok()
        );
        s.write("res.partner", id, json!({"category_id": [[3, tags[0]]]}))
            .unwrap();
        assert_eq!(
            s.records("res.partner")[&id]["category_id"],
            json!([tags[2]])
        );
        let e = s
            .with(|i| {
                call(
                    i,
                    "res.partner",
                    "write",
                    &named("write", &[json!([9999]), json!({"name": "x"})], None),
                )
            })
            .unwrap_err();
        assert_eq!(e.name, "odoo.exceptions.MissingError");
        let e = s
            .with(|i| {
                call(
                    i,
                    "res.partner",
                    "create",
                    &named("create", &[json!({"email": "x@example.com"})], None),
                )
            })
            .unwrap_err();
        assert_eq!(e.name, "odoo.exceptions.ValidationError");
    }

    #[test]
    fn a_backdated_write_is_stamped_in_the_past() {
        let s = state();
        s.set_faults(OdooFaults {
            backdate_next: 600,
            ..Default::default()
        });
        let id = s.create("res.partner", json!({"name": "Late"})).unwrap();
        let at = s.records("res.partner")[&id]["write_date"]
            .as_str()
            .unwrap()
            .to_string();
        let at = chrono::NaiveDateTime::parse_from_str(&at, DATETIME)
            .unwrap()
            .and_utc();
        assert!(chrono::Utc::now() - at > chrono::Duration::seconds(590));
        let id2 = s.create("res.partner", json!({"name": "On time"})).unwrap();
        let at2 = s.records("res.partner")[&id2]["write_date"]
            .as_str()
            .unwrap()
            .to_string();
        let at2 = chrono::NaiveDateTime::parse_from_str(&at2, DATETIME)
            .unwrap()
            .and_utc();
        assert!(chrono::Utc::now() - at2 < chrono::Duration::seconds(60));
    }

    #[test]
    fn keyset_pages_through_the_index_match_a_full_sort() {
        let s = state();
        s.seed_partners(300);
        // Many records share a write date; some move later, some are deleted or archived.
        s.advance_clock(5);
        for id in [10, 20, 30] {
            s.write("res.partner", id, json!({"email": "later@example.com"}))
                .unwrap();
        }
        s.unlink("res.partner", 40).unwrap();
        s.set_active("res.partner", 50, false).unwrap();
        let page = |domain: Value, order: &str, active: bool| {
            s.with(|i| {
                search(
                    i,
                    "res.partner",
                    domain.as_array().unwrap(),
                    0,
                    Some(7),
                    Some(order),
                    &json!({ "active_test": active }),
                )
                .unwrap()
            })
        };
        for active in [true, false] {
            let mut after: Option<(String, i64)> = None;
            let mut seen = Vec::new();
            loop {
                let mut domain = vec![json!(["is_company", "=", false])];
                if let Some((wd, id)) = &after {
                    domain.extend([
                        json!("|"),
                        json!(["write_date", ">", wd]),
                        json!("&"),
                        json!(["write_date", "=", wd]),
                        json!(["id", ">", id]),
                    ]);
                }
                let fast = page(json!(domain), "write_date asc, id asc", active);
                // Three sort keys: the scan-and-sort path, as a reference.
                let slow = page(json!(domain), "write_date asc, id asc, name", active);
                assert_eq!(fast, slow, "after {after:?}");
                let Some(last) = fast.last() else { break };
                let wd = s.records("res.partner")[last]["write_date"]
                    .as_str()
                    .unwrap()
                    .to_string();
                after = Some((wd, *last));
                seen.extend(fast);
            }
            let mut unique = seen.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), seen.len(), "no record read twice");
            assert!(!seen.contains(&40), "deleted");
            assert_eq!(
                seen.contains(&50),
                !active,
                "archived only without active_test"
            );
            assert_eq!(
                seen.len(),
                s.records("res.partner")
                    .values()
                    .filter(|r| r.get("is_company") != Some(&json!(true)))
                    .filter(|r| !active || r.get("active") != Some(&json!(false)))
                    .count()
            );
        }
    }
}
