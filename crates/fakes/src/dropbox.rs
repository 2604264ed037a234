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
    cfg.route("/oauth2/token", web::post().to(token))
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

fn lookup_path_ok(path: &str) -> bool {
    path.is_empty() || path.starts_with("id:") || (path.starts_with('/') && !path.ends_with('/'))
}

async fn token(state: web::Data<FakeState>, body: web::Bytes) -> HttpResponse {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    state.with(|i| i.calls.push(("oauth2/token".into(), json!({}))));
    let opts = state.options();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return HttpResponse::BadRequest()
            .insert_header(("Content-Type", "application/json"))
            .body(json!({"error": "unsupported_grant_type"}).to_string());
    }
    let good = form.get("refresh_token") == Some(&opts.refresh_token)
        && form.get("client_id") == Some(&opts.app_key)
        && form
            .get("client_secret")
            .is_none_or(|s| *s == opts.app_secret);
    if !good {
        return HttpResponse::BadRequest()
            .insert_header(("Content-Type", "application/json"))
            .body(json!({"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}).to_string());
    }
    let tok = state.with(|i| {
        i.next_id += 1;
        let t = format!("sl.fake-{:08}", i.next_id);
        i.tokens.insert(t.clone());
        t
    });
    json_ok(&json!({"access_token": tok, "token_type": "bearer", "expires_in": 14400}))
}

async fn api(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<FakeState>,
    body: web::Bytes,
) -> HttpResponse {
    let (ns, route) = path.into_inner();
    let route = format!("{ns}/{route}");
    // Faults first, as a loaded Dropbox would answer.
    let fault = state.with(|i| {
        let f = &mut i.faults;
        let after = f.retry_after.max(1);
        if f.server_errors > 0 {
            f.server_errors -= 1;
            Some(HttpResponse::InternalServerError()
                .insert_header(("Content-Type", "text/plain; charset=utf-8"))
                .body("Internal Server Error"))
        } else if f.rate_limit_json > 0 {
            f.rate_limit_json -= 1;
            Some(HttpResponse::TooManyRequests()
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Retry-After", after.to_string()))
                .body(json!({"error_summary": "too_many_requests/..", "error": {"reason": {".tag": "too_many_requests"}, "retry_after": after}}).to_string()))
        } else if f.rate_limit_text > 0 {
            f.rate_limit_text -= 1;
            Some(HttpResponse::TooManyRequests()
                .insert_header(("Content-Type", "text/plain; charset=utf-8"))
                .insert_header(("Retry-After", after.to_string()))
                .body("Too many requests"))
        } else {
            None
        }
    });
    if let Some(r) = fault {
        state.with(|i| i.calls.push((route.clone(), json!({"fault": true}))));
        return r;
    }
    let token = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let auth = state.with(|i| {
        if i.tokens.contains(&token) {
            None
        } else if i.expired.contains(&token) {
            Some("expired_access_token")
        } else {
            Some("invalid_access_token")
        }
    });
    if let Some(tag) = auth {
        state.with(|i| i.calls.push((route.clone(), json!({"auth": tag}))));
        return auth_error(tag);
    }
    let content_style = matches!(route.as_str(), "files/upload" | "files/download");
    let arg: Value = if content_style {
        let raw = req
            .headers()
            .get("Dropbox-API-Arg")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": HTTP header \"Dropbox-API-Arg\": could not decode input as JSON: {e}"
                ));
            }
        }
    } else {
        let ct = req
            .headers()
            .get("Content-Type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") {
            return bad_request(format!(
                "Error in call to API function \"{route}\": Bad HTTP \"Content-Type\" header: \"{ct}\". Expecting one of \"application/json\", \"application/json; charset=utf-8\", \"text/plain; charset=dropbox-cors-hack\"."
            ));
        }
        if body.is_empty() {
            json!(null)
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return bad_request(format!(
                        "Error in call to API function \"{route}\": request body: could not decode input as JSON: {e}"
                    ));
                }
            }
        }
    };
    state.with(|i| {
        i.journal.push(format!("call {route} {arg}"));
        i.calls.push((route.clone(), arg.clone()))
    });
    let s = |k: &str| arg.get(k).and_then(Value::as_str).map(str::to_string);
    let b = |k: &str| arg.get(k).and_then(Value::as_bool).unwrap_or(false);
    let changed = matches!(
        route.as_str(),
        "files/create_folder_v2" | "files/upload" | "files/move_v2" | "files/delete_v2"
    );
    let resp = match route.as_str() {
        "files/list_folder" | "files/list_folder/get_latest_cursor" => {
            let Some(path) = s("path") else {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: missing required field 'path'"
                ));
            };
            if !lookup_path_ok(&path) || path == "/" {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: path: '{path}' did not match pattern '(/(.|[\\r\\n])*)?|id:.*|(ns:[0-9]+(/.*)?)'"
                ));
            }
            let limit = arg.get("limit").and_then(Value::as_u64).unwrap_or(2000);
            if !(1..=2000).contains(&limit) {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: limit: {limit} is not within bounds"
                ));
            }
            let recursive = b("recursive");
            state.with(|i| {
                let key = if path.is_empty() {
                    String::new()
                } else {
                    match i.resolve(&path) {
                        Some(k) if i.nodes[&k].folder => k,
                        Some(_) => {
                            return route_error(
                                "path/not_folder/",
                                json!({".tag": "path", "path": {".tag": "not_folder"}}),
                            );
                        }
                        None => return not_found("path"),
                    }
                };
                if route == "files/list_folder/get_latest_cursor" {
                    return json_ok(
                        &json!({"cursor": i.delta_cursor(&key, recursive, limit as usize, i.seq)}),
                    );
                }
                let rest: Vec<Value> = i
                    .nodes
                    .iter()
                    .filter(|(k, _)| Inner::in_scope(&key, recursive, k))
                    .map(|(_, n)| n.metadata(true))
                    .collect();
                let l = Listing {
                    epoch: i.epoch,
                    seq: i.seq,
                    path: key,
                    recursive,
                    limit: limit as usize,
                    rest,
                };
                json_ok(&i.list_page(l))
            })
        }
        "files/list_folder/continue" => {
            let cursor = s("cursor").unwrap_or_default();
            state.with(|i| {
                // Cursors can be used again (a retried call gets the same page).
                if let Some(l) = i.listings.get(&cursor).cloned() {
                    if l.epoch != i.epoch {
                        return route_error("reset/..", json!({".tag": "reset"}));
                    }
                    return json_ok(&i.list_page(l));
                }
                let decoded = cursor.strip_prefix("AAD")
                    .and_then(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).ok())
                    .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
                let Some(c) = decoded else {
                    return bad_request(format!("Error in call to API function \"{route}\": Invalid \"cursor\" parameter: {cursor:?}"));
                };
                if c["e"].as_u64() != Some(i.epoch) {
                    return route_error("reset/..", json!({".tag": "reset"}));
                }
                let seq = c["s"].as_u64().unwrap_or(0);
                let path = c["p"].as_str().unwrap_or("").to_string();
                let recursive = c["r"].as_bool().unwrap_or(false);
                let limit = c["l"].as_u64().unwrap_or(2000) as usize;
                // As Dropbox does, each path changed since the cursor once, as it is now (a
                // folder renamed since shows as deleted at its old path and present at its
                // new one, never as it was in between), in the order of those last changes.
                let mut latest: std::collections::HashMap<&str, &LogItem> = std::collections::HashMap::new();
                for it in i.log.iter()
                    .filter(|it| it.seq > seq && Inner::in_scope(&path, recursive, &it.path_lower))
                {
                    latest.insert(it.path_lower.as_str(), it);
                }
                let mut items: Vec<&LogItem> = latest.into_values().collect();
                items.sort_by_key(|it| it.seq);
                let take: Vec<&LogItem> = items.iter().take(limit).copied().collect();
                let has_more = items.len() > take.len();
                let next = if has_more { take.last().map(|it| it.seq).unwrap_or(seq) } else { i.seq };
                let entries: Vec<Value> = take.iter().map(|it| it.entry.clone()).collect();
                i.journal.push(format!(
                    "listed after {seq}: {} up to {next}",
                    take.iter().map(|it| it.seq.to_string()).collect::<Vec<_>>().join(",")
                ));
                json_ok(&json!({"entries": entries, "cursor": i.delta_cursor(&path, recursive, limit, next), "has_more": has_more}))
            })
        }
        "files/get_metadata" => {
            let path = s("path").unwrap_or_default();
            if path.is_empty() || !lookup_path_ok(&path) {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: path: the root folder is unsupported, or '{path}' is not a path"
                ));
            }
            state.with(|i| match i.resolve(&path) {
                Some(k) => json_ok(&i.nodes[&k].metadata(true)),
                None => not_found("path"),
            })
        }
        "files/create_folder_v2" => {
            let path = s("path").unwrap_or_default();
            if !path.starts_with('/') || path.ends_with('/') {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: path: '{path}' is not a valid path"
                ));
            }
            state.with(|i| match i.create_folder(&path) {
                Ok(m) => json_ok(&json!({"metadata": m})),
                Err(_) => {
                    let what = if i.nodes.get(&path.to_lowercase()).is_some_and(|n| n.folder) { "folder" } else { "file" };
                    route_error(&format!("path/conflict/{what}/"), json!({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": what}}}))
                }
            })
        }
        "files/delete_v2" => {
            let path = s("path").unwrap_or_default();
            state.with(|i| match i.delete(&path) {
                Ok(m) => json_ok(&json!({"metadata": m})),
                Err(_) => route_error(
                    "path_lookup/not_found/",
                    json!({".tag": "path_lookup", "path_lookup": {".tag": "not_found"}}),
                ),
            })
        }
        "files/move_v2" => {
            let (Some(from), Some(to)) = (s("from_path"), s("to_path")) else {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: missing required field 'from_path' or 'to_path'"
                ));
            };
            if !to.starts_with('/') || to.ends_with('/') {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": request body: to_path: '{to}' is not a valid path"
                ));
            }
            state.with(|i| {
                if let Some((a, b)) = i.faults.move_before_next_move.take() {
                    let _ = i.relocate(&a, &b);
                }
            });
            state.with(|i| match i.relocate(&from, &to) {
                Ok(m) => json_ok(&json!({"metadata": m})),
                Err(e) if e == "from_not_found" => route_error(
                    "from_lookup/not_found/",
                    json!({".tag": "from_lookup", "from_lookup": {".tag": "not_found"}}),
                ),
                Err(e) if e == "cant_move_folder_into_itself" => route_error(
                    "cant_move_folder_into_itself/",
                    json!({".tag": "cant_move_folder_into_itself"}),
                ),
                Err(_) => route_error(
                    "to/conflict/file/",
                    json!({".tag": "to", "to": {".tag": "conflict", "conflict": {".tag": "file"}}}),
                ),
            })
        }
        "files/upload" => {
            let path = s("path").unwrap_or_default();
            if !path.starts_with('/') || path.ends_with('/') {
                return bad_request(format!(
                    "Error in call to API function \"{route}\": HTTP header \"Dropbox-API-Arg\": path: '{path}' is not a valid path"
                ));
            }
            let mode = arg.get("mode").cloned().unwrap_or(json!("add"));
            state.with(|i| match i.upload(&path, body.to_vec(), &mode) {
                Ok(m) => json_ok(&m),
                Err(e) if e == "bad mode" => bad_request(format!("Error in call to API function \"{route}\": HTTP header \"Dropbox-API-Arg\": mode: unknown tag")),
                Err(_) => route_error("path/conflict/file/..", json!({".tag": "path", "reason": {".tag": "conflict", "conflict": {".tag": "file"}}, "upload_session_id": "pid_upload_session:fake"})),
            })
        }
        "files/download" => {
            let path = s("path").unwrap_or_default();
            state.with(|i| match i.resolve(&path) {
                Some(k) if !i.nodes[&k].folder => {
                    let n = &i.nodes[&k];
                    HttpResponse::Ok()
                        .insert_header(("Content-Type", "application/octet-stream"))
                        .insert_header(("Dropbox-API-Result", ascii_json(&n.metadata(false))))
                        .body(n.content.clone())
                }
                Some(_) => route_error(
                    "path/not_file/",
                    json!({".tag": "path", "path": {".tag": "not_file"}}),
                ),
                None => not_found("path"),
            })
        }
        other => bad_request(format!("Unknown API function: \"{other}\"")),
    };
    if changed && resp.status().is_success() {
        let st = state.clone();
        tokio::spawn(async move {
            st.notify().await;
        });
    }
    resp
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_documented_vector() {
        assert_eq!(
            sign(b"the_secret", br#"{"delta": {"users": [12345]}}"#),
            "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529"
        );
    }

    #[test]
    fn api_arg_headers_are_ascii() {
        assert_eq!(ascii_json(&json!("é😀")), "\"\\u00e9\\ud83d\\ude00\"");
    }

    #[test]
    fn scope_rules_follow_recursive_and_direct_listing() {
        assert!(Inner::in_scope("/a", true, "/a/b/c"));
        assert!(!Inner::in_scope("/a", false, "/a/b/c"));
        assert!(Inner::in_scope("/a", false, "/a/b"));
        assert!(!Inner::in_scope("/a", true, "/ab"));
        assert!(Inner::in_scope("", false, "/a"));
        assert!(!Inner::in_scope("", false, "/a/b"));
    }
}
