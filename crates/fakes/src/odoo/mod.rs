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

mod search;
use search::*;

mod wire;
use wire::*;
mod orm;
use orm::*;

#[cfg(test)]
mod tests;

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
                .route("/", web::get().to(index))
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

/// `/`: what this is and its test hooks.
async fn index() -> HttpResponse {
    crate::index_page(
        "A fake Odoo: JSON-RPC at /jsonrpc, JSON-2 at /json/2/<model>/<method>.",
        "docs/fakes/odoo.md",
        &[
            ("GET    /_fake/records/<model>", "every record of a model"),
            (
                "POST   /_fake/records/<model>",
                "create a record (a JSON object)",
            ),
            (
                "PATCH  /_fake/records/<model>/<id>",
                "edit a record, as a user would",
            ),
            ("DELETE /_fake/records/<model>/<id>", "delete a record"),
            (
                "PUT    /_fake/faults",
                "failures to inject (429, 500, lost answers, ...)",
            ),
            ("GET    /_fake/calls", "the calls received, in order"),
        ],
    )
}
