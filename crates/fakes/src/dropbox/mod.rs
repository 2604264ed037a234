//! A fake Dropbox for tests, the demo and conformance runs: stateful files and folders, real
//! cursors over a change log with paging, OAuth token refresh, uploads and downloads with
//! revisions and content hashes, signed webhook notifications, and fault switches (expired
//! tokens, cursor reset, 429 as JSON or text, 5xx). Its answers follow Dropbox's documented
//! shapes closely enough that the official Python SDK decodes them with its strict validators
//! (`tests/dropbox_fidelity.py`).

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod endpoints;
use endpoints::*;

#[cfg(test)]
mod tests;

/// How the fake is set up.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub listen: String,
    pub app_key: String,
    pub app_secret: String,
    pub refresh_token: String,
    /// Where change notifications are sent (signed with the app secret), if anywhere.
    pub webhook_url: Option<String>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            listen: "127.0.0.1:0".into(),
            app_key: "fake-app-key".into(),
            app_secret: "fake-app-secret".into(),
            refresh_token: "fake-refresh-token".into(),
            webhook_url: None,
        }
    }
}

/// Fault switches. Counters apply to that many of the next API calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DbxFaults {
    /// Answer 429 with a JSON body (and `Retry-After`).
    pub rate_limit_json: u32,
    /// Answer 429 with a plain-text body (and `Retry-After`).
    pub rate_limit_text: u32,
    /// Answer 500.
    pub server_errors: u32,
    /// The `Retry-After` value given with 429s, in seconds.
    pub retry_after: u32,
    /// Every token issued so far is expired now (one-shot).
    pub expire_tokens: bool,
    /// Every cursor issued so far is reset now (one-shot).
    pub reset_cursors: bool,
    /// A move lists the new entry before the deleted one.
    pub moves_new_first: bool,
    /// A person moves `.0` to `.1` just before the next `move_v2` is carried out (one-shot):
    /// the race between a client's read and its write.
    pub move_before_next_move: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct Node {
    id: String,
    folder: bool,
    path_display: String,
    rev: String,
    content: Vec<u8>,
    server_modified: String,
}

impl Node {
    fn name(&self) -> &str {
        self.path_display.rsplit('/').next().unwrap_or("")
    }

    /// The metadata; `tagged` for the polymorphic `Metadata` type.
    fn metadata(&self, tagged: bool) -> Value {
        let mut v = if self.folder {
            json!({
                "name": self.name(), "id": self.id,
                "path_lower": self.path_display.to_lowercase(), "path_display": self.path_display,
            })
        } else {
            json!({
                "name": self.name(), "id": self.id,
                "client_modified": self.server_modified, "server_modified": self.server_modified,
                "rev": self.rev, "size": self.content.len(),
                "path_lower": self.path_display.to_lowercase(), "path_display": self.path_display,
                "is_downloadable": true,
                "content_hash": content_hash(&self.content),
            })
        };
        if tagged {
            v[".tag"] = json!(if self.folder { "folder" } else { "file" });
        }
        v
    }
}

/// One change, as `continue` reports it.
#[derive(Debug, Clone)]
struct LogItem {
    seq: u64,
    path_lower: String,
    /// The entry's metadata then, or a deleted entry.
    entry: Value,
}

/// A listing in progress: the rest of its snapshot.
#[derive(Debug, Clone)]
struct Listing {
    epoch: u64,
    seq: u64,
    path: String,
    recursive: bool,
    limit: usize,
    rest: Vec<Value>,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Node>,
    log: Vec<LogItem>,
    seq: u64,
    epoch: u64,
    listings: HashMap<String, Listing>,
    tokens: HashSet<String>,
    expired: HashSet<String>,
    faults: DbxFaults,
    next_id: u64,
    next_rev: u64,
    /// API calls received: (route, argument).
    calls: Vec<(String, Value)>,
    /// Calls, changes and listed pages in the order they happened, for a failing test.
    journal: Vec<String>,
}

/// The fake's state, shared by its handlers and the tests.
pub struct FakeState {
    opts: Mutex<FakeOptions>,
    inner: Mutex<Inner>,
    http: reqwest::Client,
}

/// A running fake Dropbox.
pub struct FakeDropbox {
    pub port: u16,
    pub state: Arc<FakeState>,
    server: actix_web::dev::Server,
}

impl FakeDropbox {
    pub fn bind(opts: FakeOptions) -> std::io::Result<FakeDropbox> {
        let listener = TcpListener::bind(&opts.listen)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(FakeState {
            opts: Mutex::new(opts),
            inner: Mutex::new(Inner {
                next_id: 1,
                next_rev: 0x1_0000_0000,
                ..Default::default()
            }),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .configure(routes)
        })
        .listen(listener)?
        .disable_signals()
        .workers(2)
        .run();
        Ok(FakeDropbox {
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
    cfg.route("/", web::get().to(index))
        .route("/oauth2/token", web::post().to(token))
        .route("/2/{ns}/{route:.*}", web::post().to(api))
        .route("/_fake/faults", web::put().to(put_faults))
        .route("/_fake/calls", web::get().to(get_calls))
        .route("/_fake/entries", web::get().to(get_entries))
        .route("/_fake/webhook", web::put().to(put_webhook))
        .route("/_fake/notify", web::post().to(post_notify));
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn json_ok(v: &Value) -> HttpResponse {
    // Exactly `application/json`: the Python SDK refuses a charset parameter.
    HttpResponse::Ok()
        .insert_header(("Content-Type", "application/json"))
        .body(v.to_string())
}

fn route_error(summary: &str, error: Value) -> HttpResponse {
    HttpResponse::Conflict()
        .insert_header(("Content-Type", "application/json"))
        .body(json!({"error_summary": summary, "error": error}).to_string())
}

fn bad_request(msg: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest()
        .insert_header(("Content-Type", "text/plain; charset=utf-8"))
        .body(msg.into())
}

fn auth_error(tag: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header(("Content-Type", "application/json"))
        .body(json!({"error_summary": format!("{tag}/"), "error": {".tag": tag}}).to_string())
}

fn not_found(tag: &str) -> HttpResponse {
    route_error(
        &format!("{tag}/not_found/"),
        json!({".tag": tag, tag: {".tag": "not_found"}}),
    )
}

/// `Dropbox-API-Arg`/`Dropbox-API-Result` must be ASCII: everything from U+007F up is escaped.
fn ascii_json(v: &Value) -> String {
    let mut out = String::new();
    for c in v.to_string().chars() {
        if (c as u32) < 0x7f {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

impl FakeState {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("fake lock"))
    }

    pub fn options(&self) -> FakeOptions {
        self.opts.lock().expect("opts lock").clone()
    }

    pub fn set_webhook(&self, url: Option<String>) {
        self.opts.lock().expect("opts lock").webhook_url = url;
    }

    pub fn set_faults(&self, f: DbxFaults) {
        self.with(|i| {
            if f.expire_tokens {
                let all: Vec<String> = i.tokens.drain().collect();
                i.expired.extend(all);
            }
            if f.reset_cursors {
                i.epoch += 1;
                i.listings.clear();
            }
            i.faults = DbxFaults {
                expire_tokens: false,
                reset_cursors: false,
                ..f
            };
        })
    }

    /// How many calls a route got (`files/list_folder/continue`, `oauth2/token`, ...).
    pub fn calls(&self, route: &str) -> usize {
        self.with(|i| i.calls.iter().filter(|(r, _)| r == route).count())
    }

    /// Every call so far, with its argument.
    pub fn all_calls(&self) -> Vec<(String, Value)> {
        self.with(|i| i.calls.clone())
    }

    /// Calls, changes and listed pages in the order they happened.
    pub fn journal(&self) -> Vec<String> {
        self.with(|i| i.journal.clone())
    }

    /// Every entry (path_display → (id, tag, rev)), for comparing trees.
    pub fn entries(&self) -> BTreeMap<String, (String, String, Option<String>)> {
        self.with(|i| {
            i.nodes
                .values()
                .map(|n| {
                    (
                        n.path_display.clone(),
                        (
                            n.id.clone(),
                            if n.folder { "folder" } else { "file" }.to_string(),
                            (!n.folder).then(|| n.rev.clone()),
                        ),
                    )
                })
                .collect()
        })
    }

    /// The id at a path, if anything is there.
    pub fn id_of(&self, path: &str) -> Option<String> {
        self.with(|i| i.nodes.get(&path.to_lowercase()).map(|n| n.id.clone()))
    }

    /// The bytes of a file.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        self.with(|i| i.nodes.get(&path.to_lowercase()).map(|n| n.content.clone()))
    }

    /// Creates a folder (and its parents), as a user would. Returns its id.
    pub fn mkdir(&self, path: &str) -> Result<String, String> {
        self.with(|i| i.create_folder(path))
            .map(|m| m["id"].as_str().unwrap_or_default().to_string())
    }

    /// Writes a file (overwriting), as a user would. Returns its id.
    pub fn put(&self, path: &str, bytes: &[u8]) -> Result<String, String> {
        self.with(|i| i.upload(path, bytes.to_vec(), &json!("overwrite")))
            .map(|m| m["id"].as_str().unwrap_or_default().to_string())
    }

    /// Moves or renames, as a user would.
    pub fn mv(&self, from: &str, to: &str) -> Result<(), String> {
        self.with(|i| i.relocate(from, to)).map(|_| ())
    }

    /// Deletes a path and everything below, as a user would.
    pub fn rm(&self, path: &str) -> Result<(), String> {
        self.with(|i| i.delete(path)).map(|_| ())
    }

    /// Sends one signed change notification to the webhook URL, if one is set.
    pub async fn notify(&self) -> Option<u16> {
        let opts = self.options();
        let url = opts.webhook_url?;
        let body = json!({"list_folder": {"accounts": ["dbid:AAfakeaccount"]}, "delta": {"users": [12345]}})
            .to_string();
        let sig = sign(opts.app_secret.as_bytes(), body.as_bytes());
        let r = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Dropbox-Signature", sig)
            .body(body)
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }
}

/// The lowercase hex HMAC-SHA256 of `body`, as Dropbox signs notifications.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl Inner {
    fn resolve(&self, path: &str) -> Option<String> {
        if let Some(id) = path.strip_prefix("id:") {
            let id = format!("id:{id}");
            return self
                .nodes
                .iter()
                .find(|(_, n)| n.id == id)
                .map(|(k, _)| k.clone());
        }
        let k = path.to_lowercase();
        self.nodes.contains_key(&k).then_some(k)
    }

    fn push(&mut self, path_lower: String, entry: Value) {
        self.seq += 1;
        self.journal.push(format!(
            "change {} {} {} {}",
            self.seq,
            entry[".tag"].as_str().unwrap_or(""),
            entry["path_display"].as_str().unwrap_or(&path_lower),
            entry["id"].as_str().unwrap_or("")
        ));
        self.log.push(LogItem {
            seq: self.seq,
            path_lower,
            entry,
        });
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("id:fakeAAAAAAAAAAAA{:06}", self.next_id)
    }

    fn new_rev(&mut self) -> String {
        self.next_rev += 1;
        format!("{:012x}", self.next_rev)
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), String> {
        let mut cur = String::new();
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        for seg in &segs[..segs.len().saturating_sub(1)] {
            cur.push('/');
            cur.push_str(seg);
            match self.nodes.get(&cur.to_lowercase()) {
                Some(n) if n.folder => {}
                Some(_) => return Err(format!("{cur} is a file")),
                None => {
                    let node = Node {
                        id: self.new_id(),
                        folder: true,
                        path_display: cur.clone(),
                        rev: String::new(),
                        content: vec![],
                        server_modified: now(),
                    };
                    let meta = node.metadata(true);
                    self.nodes.insert(cur.to_lowercase(), node);
                    self.push(cur.to_lowercase(), meta);
                }
            }
        }
        Ok(())
    }

    fn create_folder(&mut self, path: &str) -> Result<Value, String> {
        if self.nodes.contains_key(&path.to_lowercase()) {
            return Err("conflict".into());
        }
        self.ensure_parents(path)?;
        let node = Node {
            id: self.new_id(),
            folder: true,
            path_display: path.to_string(),
            rev: String::new(),
            content: vec![],
            server_modified: now(),
        };
        let meta = node.metadata(true);
        self.nodes.insert(path.to_lowercase(), node.clone());
        self.push(path.to_lowercase(), meta);
        Ok(node.metadata(false))
    }

    /// Uploads; `Err("conflict")` when the mode forbids it.
    fn upload(&mut self, path: &str, content: Vec<u8>, mode: &Value) -> Result<Value, String> {
        let key = path.to_lowercase();
        let (tag, rev) = match mode {
            Value::String(s) => (s.as_str(), None),
            Value::Object(o) => (
                o.get(".tag").and_then(Value::as_str).unwrap_or(""),
                o.get("update").and_then(Value::as_str),
            ),
            _ => ("", None),
        };
        let existing = self.nodes.get(&key).cloned();
        let id = match (&existing, tag) {
            (Some(n), _) if n.folder => return Err("conflict".into()),
            (Some(n), "add") if n.content == content => return Ok(n.metadata(false)),
            (Some(_), "add") => return Err("conflict".into()),
            (Some(n), "overwrite") => n.id.clone(),
            (Some(n), "update") if Some(n.rev.as_str()) == rev => n.id.clone(),
            (Some(_), "update") => return Err("conflict".into()),
            (None, "add" | "overwrite" | "update") => self.new_id(),
            _ => return Err("bad mode".into()),
        };
        if let Some(n) = &existing
            && n.content == content
        {
            return Ok(n.metadata(false));
        }
        self.ensure_parents(path)?;
        let node = Node {
            id,
            folder: false,
            path_display: existing
                .as_ref()
                .map(|n| n.path_display.clone())
                .unwrap_or_else(|| path.to_string()),
            rev: self.new_rev(),
            content,
            server_modified: now(),
        };
        let meta = node.metadata(true);
        self.nodes.insert(key.clone(), node.clone());
        self.push(key, meta);
        Ok(node.metadata(false))
    }

    fn subtree(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}/");
        self.nodes
            .keys()
            .filter(|k| *k == key || k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    fn relocate(&mut self, from: &str, to: &str) -> Result<Value, String> {
        let from_key = self.resolve(from).ok_or("from_not_found")?;
        let to_key = to.to_lowercase();
        if to_key != from_key && self.nodes.contains_key(&to_key) {
            return Err("to_conflict".into());
        }
        if to_key.starts_with(&format!("{from_key}/")) {
            return Err("cant_move_folder_into_itself".into());
        }
        self.ensure_parents(to)?;
        let moved = self.subtree(&from_key);
        let from_display = self.nodes[&from_key].path_display.clone();
        let mut news = Vec::new();
        for k in &moved {
            let mut n = self.nodes.remove(k).expect("listed");
            let tail = &n.path_display[from_display.len()..];
            n.path_display = format!("{to}{tail}");
            news.push(n);
        }
        let deleted = json!({".tag": "deleted", "name": from_display.rsplit('/').next().unwrap_or(""),
            "path_lower": from_key, "path_display": from_display});
        let new_first = self.faults.moves_new_first;
        if !new_first {
            self.push(from_key.clone(), deleted.clone());
        }
        let mut top = Value::Null;
        for n in news {
            let key = n.path_display.to_lowercase();
            let meta = n.metadata(true);
            if key == to_key {
                top = meta.clone();
            }
            self.nodes.insert(key.clone(), n);
            self.push(key, meta);
        }
        if new_first {
            self.push(from_key, deleted);
        }
        Ok(top)
    }

    fn delete(&mut self, path: &str) -> Result<Value, String> {
        let key = self.resolve(path).ok_or("not_found")?;
        let top = self.nodes[&key].clone();
        for k in self.subtree(&key) {
            self.nodes.remove(&k);
        }
        self.push(
            key.clone(),
            json!({".tag": "deleted", "name": top.name(), "path_lower": key, "path_display": top.path_display}),
        );
        Ok(top.metadata(true))
    }

    fn in_scope(path: &str, recursive: bool, key: &str) -> bool {
        if path.is_empty() {
            return recursive || key.matches('/').count() == 1;
        }
        if key == path {
            return recursive;
        }
        match key.strip_prefix(&format!("{path}/")) {
            Some(rest) => recursive || !rest.contains('/'),
            None => false,
        }
    }

    fn delta_cursor(&self, path: &str, recursive: bool, limit: usize, seq: u64) -> String {
        let raw =
            json!({"e": self.epoch, "s": seq, "p": path, "r": recursive, "l": limit}).to_string();
        format!(
            "AAD{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        )
    }

    fn list_page(&mut self, mut l: Listing) -> Value {
        let take = l.limit.min(l.rest.len());
        let entries: Vec<Value> = l.rest.drain(..take).collect();
        let has_more = !l.rest.is_empty();
        let cursor = if has_more {
            self.next_id += 1;
            let c = format!(
                "AAL{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(format!("{}:{}", self.seq, self.next_id))
            );
            self.listings.insert(c.clone(), l);
            c
        } else {
            self.delta_cursor(&l.path, l.recursive, l.limit, l.seq)
        };
        json!({"entries": entries, "cursor": cursor, "has_more": has_more})
    }
}

async fn put_faults(state: web::Data<FakeState>, body: web::Json<DbxFaults>) -> HttpResponse {
    state.set_faults(body.into_inner());
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn get_calls(state: web::Data<FakeState>) -> HttpResponse {
    let calls: Vec<Value> = state
        .all_calls()
        .into_iter()
        .map(|(r, a)| json!({"route": r, "arg": a}))
        .collect();
    HttpResponse::Ok().json(calls)
}

async fn get_entries(state: web::Data<FakeState>) -> HttpResponse {
    HttpResponse::Ok().json(state.entries())
}

#[derive(Deserialize)]
struct Webhook {
    url: Option<String>,
}

async fn put_webhook(state: web::Data<FakeState>, body: web::Json<Webhook>) -> HttpResponse {
    state.set_webhook(body.into_inner().url);
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn post_notify(state: web::Data<FakeState>) -> HttpResponse {
    let status = state.notify().await;
    HttpResponse::Ok().json(json!({"delivered": status}))
}

/// Dropbox's content hash, as its documentation defines it: the SHA-256 of the
/// concatenated SHA-256 digests of each 4 MiB block.
fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut outer = Sha256::new();
    for block in bytes.chunks(4 * 1024 * 1024) {
        outer.update(Sha256::digest(block));
    }
    hex::encode(outer.finalize())
}

/// `/`: what this is and its test hooks.
async fn index() -> HttpResponse {
    crate::index_page(
        "A fake Dropbox: the API at /2/files/..., tokens at /oauth2/token.",
        "docs/fakes/dropbox.md",
        &[
            (
                "GET    /_fake/entries",
                "every path: id, folder or file, rev",
            ),
            ("GET    /_fake/calls", "the calls received, in order"),
            ("PUT    /_fake/webhook", "where notifications go"),
            ("POST   /_fake/notify", "send a signed notification now"),
            ("PUT    /_fake/faults", "failures to inject (429, 500, ...)"),
        ],
    )
}
