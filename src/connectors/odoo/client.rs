//! Odoo's external API, as the Odoo connector uses it: one client over JSON-2
//! (`POST /json/2/<model>/<method>`, bearer key, `X-Odoo-Database`, named arguments; Odoo 19 and
//! later) and JSON-RPC (`POST /jsonrpc`, `common.authenticate` then `object.execute_kw`; Odoo 14
//! to 18), chosen by `GET /web/version` when the protocol is `auto`. Transient failures (network,
//! 429 after its `Retry-After`, 5xx, an HTML page from a proxy, PostgreSQL serialization
//! failures) are retried with backoff; Odoo's access, validation, user and missing-record errors
//! come back as record errors carrying Odoo's message; a refused key is an authentication error
//! naming the web service, never the key. Values convert between Odoo's shapes and recsync's.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::time::Duration;
use tracing::Instrument;

use crate::connectors::transport::{self, Retries, Verdict};

/// Attempts of one call before a transient failure is given up.
const ATTEMPTS: usize = 5;
/// The first wait between attempts; it doubles each time.
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

pub use super::spec::OdooProtocol as Protocol;

/// Where and how to reach one Odoo database.
#[derive(Debug, Clone)]
pub struct OdooEndpoint {
    /// The web service's name, for messages.
    pub name: String,
    /// The server's base URL (`https://erp.example.com`).
    pub url: String,
    /// Required when the server hosts several databases.
    pub database: Option<String>,
    /// The login, for JSON-RPC (JSON-2 needs only the key).
    pub login: Option<String>,
    /// An API key (a password also works on JSON-RPC).
    pub api_key: SecretString,
    pub protocol: Protocol,
    pub timeout: Duration,
}

/// Why an Odoo call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OdooError {
    /// The key or login was refused, or the database does not exist: nothing will work until
    /// the configuration changes.
    #[error("{0}")]
    Auth(String),
    /// Odoo refused this record (access, validation, user or missing-record error): its
    /// message.
    #[error("{0}")]
    Record(String),
    /// Still failing after the retries; worth trying again later.
    #[error("{reason}")]
    Transient {
        reason: String,
        after: Option<Duration>,
    },
    /// The answer is not what Odoo answers (not JSON, no result).
    #[error("{0}")]
    Protocol(String),
}

/// The protocol in use once known, and the JSON-RPC user id.
#[derive(Debug, Clone)]
struct Session {
    protocol: Protocol,
    uid: Option<i64>,
}

/// A client of one Odoo database.
pub struct OdooClient {
    http: reqwest::Client,
    endpoint: OdooEndpoint,
    session: tokio::sync::Mutex<Option<Session>>,
}

/// An attempt's failure, before retries are decided.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    /// Retry after this long (or the backoff).
    #[error("{0}")]
    Retry(String, Option<Duration>),
    /// The call may have been applied (a timeout, a proxy's page instead of Odoo's answer):
    /// retried only when repeating it is harmless, never for a `create`.
    #[error("{0}")]
    Unsure(String, Option<Duration>),
    /// Do not retry.
    #[error("{0}")]
    Final(OdooError),
}

/// Which failed attempts of a call the client repeats itself, after a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Every one worth repeating (reads, and writes whose repetition changes nothing).
    Always,
    /// Those that surely did not apply (a `create`: repeated, it would make a second record).
    UnlessUnsure,
    /// None: the caller repeats it (a write of values compared with the record just before,
    /// which the outbox repeats after reading it again).
    Never,
}

impl OdooClient {
    pub fn new(endpoint: OdooEndpoint, http: reqwest::Client) -> OdooClient {
        OdooClient {
            http,
            endpoint,
            session: tokio::sync::Mutex::new(None),
        }
    }

    pub fn endpoint(&self) -> &OdooEndpoint {
        &self.endpoint
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.url.trim_end_matches('/'))
    }

    /// The protocol this client speaks (asking the server once when `auto`).
    pub async fn protocol(&self) -> Result<Protocol, OdooError> {
        Ok(self.session().await?.protocol)
    }

    async fn session(&self) -> Result<Session, OdooError> {
        let mut s = self.session.lock().await;
        if let Some(s) = s.as_ref() {
            return Ok(s.clone());
        }
        let protocol = match self.endpoint.protocol {
            Protocol::Auto => self.detect().await?,
            p => p,
        };
        let uid = match protocol {
            Protocol::JsonRpc => Some(self.authenticate().await?),
            _ => None,
        };
        let session = Session { protocol, uid };
        *s = Some(session.clone());
        Ok(session)
    }

    /// Logs in and makes one harmless call (`res.users.context_get`), to prove the
    /// configuration works; answers the protocol spoken.
    pub async fn check(&self) -> Result<Protocol, OdooError> {
        let protocol = self.protocol().await?;
        self.call("res.users", "context_get", None, Map::new())
            .await?;
        Ok(protocol)
    }

    /// The server's major version, from `GET /web/version` (JSON-RPC `common.version` when
    /// that route is missing, as on older servers).
    pub async fn major_version(&self) -> Result<u32, OdooError> {
        let url = self.url("/web/version");
        let via_get = self
            .retrying(Repeat::Always, || async {
                let resp = crate::telemetry::carry(self.http.get(&url))
                    .timeout(self.endpoint.timeout)
                    .send()
                    .await
                    .map_err(|e| Attempt::Retry(transport::describe(&e).to_string(), None))?;
                if resp.status() == 404 {
                    return Ok(None);
                }
                let v = self.body(resp).await?;
                Ok(Some(v))
            })
            .await?;
        let info = match via_get {
            Some(v) => v.get("version_info").cloned(),
            None => self
                .rpc("common", "version", json!([]))
                .await?
                .get("server_version_info")
                .cloned(),
        };
        info.as_ref()
            .and_then(|i| i.get(0))
            .and_then(Value::as_u64)
            .map(|m| m as u32)
            .ok_or_else(|| {
                OdooError::Protocol(format!(
                    "web service `{}`: the server did not say its version",
                    self.endpoint.name
                ))
            })
    }

    async fn detect(&self) -> Result<Protocol, OdooError> {
        Ok(if self.major_version().await? >= 19 {
            Protocol::Json2
        } else {
            Protocol::JsonRpc
        })
    }

    fn database(&self) -> Result<&str, OdooError> {
        self.endpoint.database.as_deref().ok_or_else(|| {
            OdooError::Auth(format!(
                "web service `{}`: JSON-RPC needs `database`",
                self.endpoint.name
            ))
        })
    }

    async fn authenticate(&self) -> Result<i64, OdooError> {
        let db = self.database()?.to_string();
        let login = self.endpoint.login.clone().ok_or_else(|| {
            OdooError::Auth(format!(
                "web service `{}`: JSON-RPC needs `login`",
                self.endpoint.name
            ))
        })?;
        let uid = self
            .rpc(
                "common",
                "authenticate",
                json!([db, login, self.endpoint.api_key.expose_secret(), {}]),
            )
            .await?;
        uid.as_i64().ok_or_else(|| {
            OdooError::Auth(format!(
                "web service `{}`: Odoo refused the login `{login}` with the configured key",
                self.endpoint.name
            ))
        })
    }

    /// Calls `method` of `model` with named arguments (and the record ids, for methods on
    /// records), over whichever protocol the server speaks.
    pub async fn call(
        &self,
        model: &str,
        method: &str,
        ids: Option<&[i64]>,
        kwargs: Map<String, Value>,
    ) -> Result<Value, OdooError> {
        let repeat = if method == "create" {
            Repeat::UnlessUnsure
        } else {
            Repeat::Always
        };
        self.call_as(model, method, ids, kwargs, repeat).await
    }

    /// [`Client::call`], repeating failed attempts as `repeat` allows.
    pub async fn call_as(
        &self,
        model: &str,
        method: &str,
        ids: Option<&[i64]>,
        kwargs: Map<String, Value>,
        repeat: Repeat,
    ) -> Result<Value, OdooError> {
        let session = self.session().await?;
        match session.protocol {
            Protocol::Json2 => self.json2(model, method, ids, kwargs, repeat).await,
            _ => {
                let db = self.database()?;
                let args = match ids {
                    Some(ids) => json!([ids]),
                    None => json!([]),
                };
                self.rpc_as(
                    repeat,
                    "object",
                    "execute_kw",
                    json!([
                        db,
                        session.uid,
                        self.endpoint.api_key.expose_secret(),
                        model,
                        method,
                        args,
                        kwargs
                    ]),
                )
                .await
            }
        }
    }

    async fn json2(
        &self,
        model: &str,
        method: &str,
        ids: Option<&[i64]>,
        mut kwargs: Map<String, Value>,
        repeat: Repeat,
    ) -> Result<Value, OdooError> {
        if let Some(ids) = ids {
            kwargs.insert("ids".into(), json!(ids));
        }
        let body = Value::Object(kwargs);
        let url = self.url(&format!("/json/2/{model}/{method}"));
        self.retrying(repeat, || async {
            let mut req = crate::telemetry::carry(self.http.post(&url))
                .timeout(self.endpoint.timeout)
                .bearer_auth(self.endpoint.api_key.expose_secret())
                .json(&body);
            if let Some(db) = &self.endpoint.database {
                req = req.header("X-Odoo-Database", db);
            }
            let resp = req.send().await.map_err(|e| sent_or_not(&e))?;
            let status = resp.status().as_u16();
            if status == 200 {
                return self.body(resp).await;
            }
            let after = transport::retry_after(resp.headers());
            let html = is_html(&resp);
            let text = read_text(resp).await.unwrap_or_default();
            let error: Option<Value> = serde_json::from_str(&text).ok();
            let name = error
                .as_ref()
                .and_then(|e| e.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let message = error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            Err(match status {
                401 => Attempt::Final(OdooError::Auth(format!(
                    "web service `{}`: Odoo refused the API key",
                    self.endpoint.name
                ))),
                429 => Attempt::Retry(format!("{model}.{method}: rate limited (429)"), after),
                _ if html => Attempt::Unsure(
                    format!("{model}.{method}: the server answered an HTML page (HTTP {status}), not Odoo's JSON; is a proxy in front of it failing?"),
                    after,
                ),
                _ if serialization(name, &message) => {
                    Attempt::Retry(format!("{model}.{method}: {message}"), None)
                }
                // Odoo's own error: its transaction was rolled back.
                500..=599 if error.is_some() => Attempt::Retry(
                    format!(
                        "{model}.{method}: HTTP {status}{}",
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    ),
                    after,
                ),
                500..=599 => Attempt::Unsure(format!("{model}.{method}: HTTP {status}"), after),
                404 if name == "werkzeug.exceptions.NotFound" || message.is_empty() => {
                    Attempt::Final(OdooError::Record(format!(
                        "{model}.{method}: not found in web service `{}`{}",
                        self.endpoint.name,
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(" ({message})")
                        }
                    )))
                }
                _ => Attempt::Final(OdooError::Record(if message.is_empty() {
                    format!("{model}.{method}: HTTP {status}")
                } else {
                    message
                })),
            })
        })
        .await
    }

    /// One JSON-RPC call to a service.
    async fn rpc(&self, service: &str, method: &str, args: Value) -> Result<Value, OdooError> {
        self.rpc_as(Repeat::Always, service, method, args).await
    }

    /// [`Client::rpc`], repeating failed attempts as `repeat` allows.
    async fn rpc_as(
        &self,
        repeat: Repeat,
        service: &str,
        method: &str,
        args: Value,
    ) -> Result<Value, OdooError> {
        let url = self.url("/jsonrpc");
        let body = json!({
            "jsonrpc": "2.0",
            "method": "call",
            "params": {"service": service, "method": method, "args": args},
            "id": rand::random::<u32>(),
        });
        self.retrying(repeat, || async {
            let resp = crate::telemetry::carry(self.http.post(&url))
                .timeout(self.endpoint.timeout)
                .json(&body)
                .send()
                .await
                .map_err(|e| sent_or_not(&e))?;
            let status = resp.status().as_u16();
            if status != 200 {
                let after = transport::retry_after(resp.headers());
                let html = is_html(&resp);
                // JSON-RPC answers Odoo's errors with 200: anything else came from before
                // the answer (a proxy, a crash), after the call may have been applied.
                return Err(if status == 429 {
                    Attempt::Retry(format!("{service}.{method}: rate limited (429)"), after)
                } else if status >= 500 {
                    Attempt::Unsure(
                        format!(
                            "{service}.{method}: HTTP {status}{}",
                            if html { " (an HTML page)" } else { "" }
                        ),
                        after,
                    )
                } else {
                    Attempt::Final(OdooError::Protocol(format!(
                        "web service `{}`: HTTP {status} from /jsonrpc",
                        self.endpoint.name
                    )))
                });
            }
            let v = self.body(resp).await?;
            if let Some(err) = v.get("error") {
                let data = err.get("data").cloned().unwrap_or(Value::Null);
                let name = data.get("name").and_then(Value::as_str).unwrap_or("");
                let message = data
                    .get("message")
                    .and_then(Value::as_str)
                    .or_else(|| err.get("message").and_then(Value::as_str))
                    .unwrap_or("Odoo Server Error")
                    .to_string();
                return Err(if serialization(name, &message) {
                    Attempt::Retry(message, None)
                } else if name == "odoo.exceptions.AccessDenied" {
                    Attempt::Final(OdooError::Auth(format!(
                        "web service `{}`: Odoo refused the configured key",
                        self.endpoint.name
                    )))
                } else if name.starts_with("psycopg2.OperationalError")
                    && message.contains("does not exist")
                {
                    Attempt::Final(OdooError::Auth(format!(
                        "web service `{}`: the database `{}` does not exist on the server",
                        self.endpoint.name,
                        self.endpoint.database.as_deref().unwrap_or("")
                    )))
                } else {
                    Attempt::Final(OdooError::Record(message))
                });
            }
            v.get("result").cloned().ok_or_else(|| {
                Attempt::Final(OdooError::Protocol(format!(
                    "web service `{}`: a JSON-RPC answer with neither `result` nor `error`",
                    self.endpoint.name
                )))
            })
        })
        .await
    }

    /// Reads a 200 answer as JSON.
    async fn body(&self, resp: reqwest::Response) -> Result<Value, Attempt> {
        let html = is_html(&resp);
        let text = read_text(resp)
            .await
            .map_err(|e| Attempt::Unsure(e, None))?;
        serde_json::from_str(&text).map_err(|_| {
            if html {
                Attempt::Unsure(
                    "the server answered an HTML page, not Odoo's JSON; is a proxy in front of it failing?".into(),
                    None,
                )
            } else {
                Attempt::Final(OdooError::Protocol(format!(
                    "web service `{}`: the answer is not JSON",
                    self.endpoint.name
                )))
            }
        })
    }

    /// Runs an attempt until it succeeds, fails for good, or the attempts are spent. A call
    /// that is not `repeatable` (a `create`) is not tried again when it may have been applied:
    /// its caller decides (the outbox looks for the record on `match_on` before creating it
    /// again).
    async fn retrying<T, F, Fut>(&self, repeat: Repeat, attempt: F) -> Result<T, OdooError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let retries = Retries {
            attempts: ATTEMPTS,
            first: FIRST_WAIT,
            max_wait: MAX_WAIT,
        };
        let span = tracing::info_span!("connector.call", web_service = %self.endpoint.name);
        let out = retries
            .run(&self.endpoint.name, attempt, |f| match (f, repeat) {
                (Attempt::Final(_), _) | (_, Repeat::Never) => Verdict::Stop,
                (Attempt::Unsure(..), Repeat::UnlessUnsure) => Verdict::Stop,
                (Attempt::Retry(_, after) | Attempt::Unsure(_, after), _) => Verdict::Again(*after),
            })
            .instrument(span)
            .await;
        out.map_err(|f| match f {
            Attempt::Final(e) => e,
            Attempt::Unsure(reason, after) if repeat != Repeat::Always => OdooError::Transient {
                reason: format!(
                    "web service `{}`: {reason}; the call may have been applied, so it is not repeated at once",
                    self.endpoint.name
                ),
                after,
            },
            Attempt::Retry(reason, after) | Attempt::Unsure(reason, after) => {
                OdooError::Transient {
                    reason: format!("web service `{}`: {reason}", self.endpoint.name),
                    after,
                }
            }
        })
    }
}

/// A transport failure: retried when the request never reached the server (no connection),
/// unsure otherwise (it may have been applied before the answer was lost).
fn sent_or_not(e: &reqwest::Error) -> Attempt {
    if e.is_connect() {
        Attempt::Retry(transport::describe(e).to_string(), None)
    } else {
        Attempt::Unsure(transport::describe(e).to_string(), None)
    }
}

fn is_html(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"))
}

async fn read_text(resp: reqwest::Response) -> Result<String, String> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|_| "the answer was cut off".to_string())?;
    if bytes.len() > MAX_ANSWER {
        return Err(format!(
            "the answer is larger than {} MiB",
            MAX_ANSWER / 1024 / 1024
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// PostgreSQL's serialization failure, which Odoo retries itself and so do we.
fn serialization(name: &str, message: &str) -> bool {
    name.contains("SerializationFailure")
        || name.contains("TransactionRollbackError")
        || message.contains("could not serialize access")
}

/// An Odoo value as recsync holds it: `false` for an empty non-boolean field is null, a
/// many2one `[id, name]` is its id, x2many values stay id lists, and a datetime
/// (`YYYY-MM-DD HH:MM:SS`, UTC) becomes RFC 3339.
pub fn from_odoo(ttype: &str, v: &Value) -> Value {
    match (ttype, v) {
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        (_, Value::Bool(false)) | (_, Value::Null) => Value::Null,
        ("many2one", Value::Array(pair)) => pair.first().cloned().unwrap_or(Value::Null),
        ("datetime", Value::String(s)) => {
            match chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
                Ok(t) => Value::String(
                    t.and_utc()
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
                Err(_) => v.clone(),
            }
        }
        _ => v.clone(),
    }
}

/// A recsync value as Odoo takes it: null is `false`, a many2many is a replace command
/// (`[[6, 0, ids]]`), an RFC 3339 datetime becomes `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn to_odoo(ttype: &str, v: &Value) -> Value {
    match (ttype, v) {
        (_, Value::Null) if ttype == "many2many" => json!([[6, 0, []]]),
        (_, Value::Null) => Value::Bool(false),
        ("many2many", Value::Array(ids)) => json!([[6, 0, ids]]),
        ("datetime", Value::String(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Value::String(
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
            ),
            Err(_) => v.clone(),
        },
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_between_odoo_shapes_and_recsync_shapes() {
        assert_eq!(from_odoo("char", &json!(false)), Value::Null);
        assert_eq!(from_odoo("boolean", &json!(false)), json!(false));
        assert_eq!(from_odoo("many2one", &json!([7, "Belgium"])), json!(7));
        assert_eq!(from_odoo("many2one", &json!(false)), Value::Null);
        assert_eq!(from_odoo("many2many", &json!([1, 3])), json!([1, 3]));
        assert_eq!(
            from_odoo("datetime", &json!("2026-12-01 10:15:00")),
            json!("2026-12-01T10:15:00Z")
        );
        assert_eq!(from_odoo("date", &json!("2026-12-01")), json!("2026-12-01"));
        assert_eq!(to_odoo("char", &Value::Null), json!(false));
        assert_eq!(
            to_odoo("many2many", &json!([1, 3])),
            json!([[6, 0, [1, 3]]])
        );
        assert_eq!(to_odoo("many2many", &Value::Null), json!([[6, 0, []]]));
        assert_eq!(
            to_odoo("datetime", &json!("2026-12-01T11:15:00+01:00")),
            json!("2026-12-01 10:15:00")
        );
        assert_eq!(to_odoo("integer", &json!(4)), json!(4));
    }
}
