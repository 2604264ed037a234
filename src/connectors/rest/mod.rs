//! The TELEMATEL-style protocol (`kind = "rest"`): pulls are `POST url {"limit": n}` pages,
//! confirmed record by record at `confirmation_url`; sends are one call per local change, either
//! to the sync's configured endpoints (method, URL template, `response_id`) or to the web
//! service's `shipping_url`.

pub mod config;
pub mod spec;

use super::transport::{self, Limits};
use super::{
    Confirmation, Connector, Failure, Memory, Page, PullAction, PullError, PullStart, Pulled,
    Puller, SendAction, Sent, Target,
};
use crate::domain::Plan;
use crate::domain::plan::{Auth, EndpointAction, Sync, WebService};
use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use spec::RestService;
use std::sync::Arc;
use std::time::Duration;

/// Characters left as they are in an external id placed in a URL path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An external id as one URL path segment: percent-encoded (so `/`, `?`, `#`, spaces and line
/// breaks cannot change the URL or inject a header), and `.` and `..` refused, because URL
/// parsing resolves them (and their encoded forms) as dot segments.
pub fn path_segment(external_id: &str) -> Result<String, Failure> {
    let encoded = utf8_percent_encode(external_id, PATH_SEGMENT).to_string();
    if encoded == "." || encoded == ".." {
        return Err(Failure::Permanent {
            message: format!("the external id `{external_id}` cannot be put in a URL path"),
        });
    }
    Ok(encoded)
}

fn with_auth(req: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
    match auth {
        Auth::None => req,
        Auth::ApiKey { header, key } => req.header(header.as_str(), key.expose_secret()),
        Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose_secret())),
        Auth::Bearer { token } => req.bearer_auth(token.expose_secret()),
        // Refused by the configuration: OAuth 2.0 is for `http` web services.
        Auth::OAuth2 { .. } => req,
    }
}

/// What a reachability probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The service answered (any HTTP status but a refusal of the credentials).
    Answered(u16),
    /// It answered 401 or 403: reachable, but the credentials are refused.
    Refused(u16),
    /// No answer: connection refused, a timeout, a TLS or DNS failure.
    Unreachable(String),
}

/// Asks `url` whether it answers: a `GET` with the service's credentials and timeout. Any
/// HTTP answer counts, since protocol URLs take `POST` and may well refuse a `GET`; nothing
/// is sent that the service could apply.
pub async fn probe(client: &reqwest::Client, auth: &Auth, timeout: Duration, url: &str) -> Probe {
    match with_auth(client.get(url), auth)
        .timeout(timeout)
        .send()
        .await
    {
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => Probe::Refused(r.status().as_u16()),
        Ok(r) => Probe::Answered(r.status().as_u16()),
        Err(e) => Probe::Unreachable(transport::describe(&e).to_string()),
    }
}

pub use super::transport::origin;

/// Classifies a non-2xx status.
fn status_error(resp: &reqwest::Response) -> Failure {
    let status = resp.status().as_u16();
    let mut message = format!("the service answered HTTP {status}");
    match status {
        401 | 403 => Failure::Unauthorized { message },
        404 | 410 => Failure::NotFound { message },
        409 => Failure::Conflict {
            existing_id: None,
            message,
        },
        400 | 422 => Failure::Invalid {
            field: None,
            message,
        },
        408 | 429 | 500..=599 => {
            let retry_after = transport::retry_after(resp.headers());
            if let Some(a) = retry_after {
                message.push_str(&format!(" and asked to retry after {} s", a.as_secs()));
            }
            if status == 429 {
                Failure::RateLimited {
                    retry_after,
                    message,
                }
            } else {
                Failure::Transient {
                    message,
                    retry_after,
                }
            }
        }
        _ => Failure::Permanent { message },
    }
}

/// Sends one change.
pub async fn send(
    client: &reqwest::Client,
    service: &RestService,
    sync: &Sync,
    action: SendAction,
    target: Target<'_>,
    values: &Map<String, Value>,
) -> Result<Sent, Failure> {
    let Target {
        external_id,
        local_id,
        idempotency_key,
        changed: _,
        base: _,
        repeat: _,
    } = target;
    let endpoint_action = match action {
        SendAction::Create => EndpointAction::Create,
        SendAction::Update => EndpointAction::Write,
        SendAction::Delete => EndpointAction::Unlink,
    };
    if let Some(ep) = sync.endpoint(endpoint_action) {
        if ep.url.expose().contains("{external_id}") && external_id.is_none() {
            return Err(Failure::Permanent {
                message: "the endpoint URL needs an external id, and the record has none yet"
                    .into(),
            });
        }
        let ext = match external_id {
            Some(e) => path_segment(e)?,
            None => String::new(),
        };
        let url = ep.url.expose().replace("{external_id}", &ext);
        let method =
            reqwest::Method::from_bytes(ep.method.as_bytes()).map_err(|_| Failure::Permanent {
                message: "bad method".into(),
            })?;
        let body = Value::Object(values.clone());
        let mut req = with_auth(client.request(method, &url), &service.auth)
            .timeout(service.timeout)
            .header("Idempotency-Key", idempotency_key);
        if action != SendAction::Delete {
            req = req.json(&body);
        }
        let resp = transport::send(req, service.signing.as_ref(), Some(idempotency_key))
            .await
            .map_err(transport::unanswered)?;
        if !resp.status().is_success() {
            return Err(status_error(&resp));
        }
        let text = read_capped(resp).await?;
        let reply: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        let external_id = match &ep.response_id {
            Some(path) if action == SendAction::Create => {
                let found = path
                    .select(&reply)
                    .first()
                    .and_then(|v| crate::domain::mapping::id_text(v));
                match found {
                    Some(id) => Some(id),
                    None => {
                        return Err(Failure::Transient {
                            message: format!(
                                "the answer has no external id at `{}`",
                                path.as_str()
                            ),
                            retry_after: None,
                        });
                    }
                }
            }
            _ => None,
        };
        return Ok(Sent {
            external_id,
            request: body,
            label: None,
        });
    }
    let Some(url) = &service.shipping_url else {
        return Err(Failure::Permanent {
            message:
                "the web service has no `shipping_url` and the sync no endpoint for this action"
                    .into(),
        });
    };
    let ext = match (action, external_id) {
        (SendAction::Create, _) => local_id.to_string(),
        (_, Some(e)) => e.to_string(),
        (_, None) => {
            return Err(Failure::Permanent {
                message: "the record has no external id yet".into(),
            });
        }
    };
    let body = if action == SendAction::Delete {
        json!({"action": action.as_str(), "external_id": ext})
    } else {
        json!({"action": action.as_str(), "values": values, "external_id": ext})
    };
    let req = with_auth(client.post(url.expose()), &service.auth)
        .timeout(service.timeout)
        .header("Idempotency-Key", idempotency_key)
        .json(&body);
    let resp = transport::send(req, service.signing.as_ref(), Some(idempotency_key))
        .await
        .map_err(transport::unanswered)?;
    if !resp.status().is_success() {
        return Err(status_error(&resp));
    }
    let text = read_capped(resp).await?;
    let reply: Value = serde_json::from_str(&text).map_err(|_| Failure::Transient {
        message: "the service's answer is not JSON".into(),
        retry_after: None,
    })?;
    match reply.get("status").and_then(Value::as_str) {
        Some("success") => Ok(Sent {
            external_id: reply
                .get("external_id")
                .and_then(crate::domain::mapping::id_text),
            request: body,
            label: None,
        }),
        Some("failed") => {
            let msg = reply
                .get("error_message")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            Err(Failure::Transient {
                message: format!("the service answered failed: {msg}"),
                retry_after: None,
            })
        }
        _ => Err(Failure::Transient {
            message: "the service's answer has no `status`".into(),
            retry_after: None,
        }),
    }
}

/// The largest answer read from a web service; a page bigger than this is refused (lower the
/// sync's `limit`), so a broken or hostile service cannot make recsync's memory grow.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Reads an answer's text, up to [`MAX_RESPONSE`].
async fn read_capped(resp: reqwest::Response) -> Result<String, Failure> {
    let too_big = || Failure::Permanent {
        message: format!(
            "the service's answer is larger than {} MiB; lower the sync's `limit`",
            MAX_RESPONSE / (1024 * 1024)
        ),
    };
    let body = transport::read_capped(resp, MAX_RESPONSE)
        .await
        .map_err(|e| match e {
            Failure::Permanent { .. } => too_big(),
            e => e,
        })?;
    String::from_utf8(body).map_err(|_| Failure::Transient {
        message: "the service's answer is not UTF-8 text".into(),
        retry_after: None,
    })
}

async fn post_json(
    client: &reqwest::Client,
    service: &RestService,
    url: &str,
    body: &Value,
) -> Result<Value, Failure> {
    let req = with_auth(client.post(url), &service.auth)
        .timeout(service.timeout)
        .json(body);
    let resp = transport::send(req, service.signing.as_ref(), None)
        .await
        .map_err(transport::unanswered)?;
    if !resp.status().is_success() {
        return Err(status_error(&resp));
    }
    let text = read_capped(resp).await?;
    serde_json::from_str(&text).map_err(|_| Failure::Transient {
        message: "the service's answer is not JSON".into(),
        retry_after: None,
    })
}

/// What a pull answer looks like, for messages about one that does not.
const PULL_SHAPE: &str = r#"{"status": "success", "error_message": "", "content": [{"action": "insert", "values": {...}}, ...]}"#;

/// Pulls one page: `POST url {"limit": n}`.
pub async fn pull(
    client: &reqwest::Client,
    service: &RestService,
    limit: usize,
) -> Result<Vec<Pulled>, Failure> {
    let Some(url) = &service.url else {
        return Err(Failure::Permanent {
            message: "the web service has no `url` to pull from".into(),
        });
    };
    let reply = post_json(client, service, url.expose(), &json!({"limit": limit})).await?;
    match reply.get("status") {
        None => {
            return Err(Failure::Permanent {
                message: format!("the answer has no `status` field; expected {PULL_SHAPE}"),
            });
        }
        Some(Value::String(s)) if s == "success" => {}
        Some(Value::String(s)) => {
            let msg = match reply.get("error_message") {
                Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
                _ => "no reason given".into(),
            };
            return Err(Failure::Permanent {
                message: format!("the service answered `{s}`: {msg}"),
            });
        }
        Some(other) => {
            return Err(Failure::Permanent {
                message: format!(
                    "the answer's `status` is {other}, not a string; expected {PULL_SHAPE}"
                ),
            });
        }
    }
    let mut reply = reply;
    let Some(Value::Array(content)) = reply.get_mut("content").map(Value::take) else {
        return Err(Failure::Permanent {
            message: format!("the answer has no `content` list; expected {PULL_SHAPE}"),
        });
    };
    content
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let action = item.get("action").and_then(Value::as_str).unwrap_or("");
            if !matches!(action, "insert" | "update" | "delete") {
                return Err(Failure::Permanent {
 message: format!(
                    "record {i} of the page has no valid `action` (insert, update or delete)"
                ),
 });
            }
            let action = match action {
                "insert" => PullAction::Insert,
                "update" => PullAction::Update,
                _ => PullAction::Delete,
            };
            let values = match item.get_mut("values").map(Value::take) {
                Some(Value::Object(m)) => m,
                None if action == PullAction::Delete => Map::new(),
                _ => {
                    return Err(Failure::Permanent {
 message: format!(
                        "record {i} of the page has no `values` object"
                    ),
 });
                }
            };
            Ok(Pulled {
                action,
                label: None,
                values,
                external_id: item
                    .get("external_id")
                    .and_then(crate::domain::mapping::id_text),
                modified_at: match item.get("modified_at") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.with_timezone(&chrono::Utc))
                            .ok_or_else(|| {
                                Failure::Permanent {
 message: format!(
                                    "record {i} of the page has a `modified_at` that is not an RFC 3339 time: {v}"
                                ),
 }
                            })?,
                    ),
                },
            })
        })
        .collect()
}

/// Confirms a page record by record.
pub async fn confirm(
    client: &reqwest::Client,
    service: &RestService,
    items: &[Confirmation],
) -> Result<(), Failure> {
    let Some(url) = &service.confirmation_url else {
        return Ok(());
    };
    let content: Vec<Value> = items
        .iter()
        .map(|c| match &c.error {
            None => {
                json!({"status": "success", "error_message": false, "external_id": c.external_id})
            }
            Some(e) => {
                json!({"status": "failed", "error_message": e, "external_id": c.external_id})
            }
        })
        .collect();
    let reply = post_json(
        client,
        service,
        url.expose(),
        &json!({"status": "success", "error_message": "", "content": content}),
    )
    .await?;
    match reply.get("status").and_then(Value::as_str) {
        Some("success") => Ok(()),
        _ => Err(Failure::Transient {
            message: format!(
                "the confirmation was refused: {}",
                reply
                    .get("error_message")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ),
            retry_after: None,
        }),
    }
}

/// The connector of a `rest` web service.
pub struct Rest {
    name: String,
    service: RestService,
    http: reqwest::Client,
    /// `max_concurrency`: sends in flight to this service, all syncs together.
    limits: Arc<Limits>,
}

impl Rest {
    pub fn new(name: &str, service: RestService, http: reqwest::Client) -> Rest {
        let limits = Arc::new(Limits::new(service.max_concurrency, None));
        Rest {
            name: name.to_string(),
            service,
            http,
            limits,
        }
    }
}

impl super::ConnectorKind for config::Rest {
    fn connector(&self, service: &WebService, http: &reqwest::Client) -> Arc<dyn Connector> {
        let settings = service
            .settings::<RestService>()
            .expect("a rest web service has REST settings");
        Arc::new(Rest::new(&service.name, settings.clone(), http.clone()))
    }
}

/// A pull of a `rest` service: with a confirmation URL, pages until one comes back short;
/// without one, a single page.
struct RestPull {
    service: RestService,
    http: reqwest::Client,
    limit: usize,
    external_ref: String,
    /// The last page, to stop on a service that serves the same page again after it was
    /// confirmed (applying it again changes nothing; looping on it would never end).
    previous: Option<Vec<Pulled>>,
    /// A plan: one page only, since the next comes only once this one is confirmed.
    preview: bool,
}

#[async_trait]
impl Puller for RestPull {
    async fn next_page(&mut self, memory: &dyn Memory) -> Result<Page, PullError> {
        if self.service.url.is_none() {
            return Ok(Page::default());
        }
        let mut records = pull(&self.http, &self.service, self.limit)
            .await
            .map_err(|e| PullError::Service(format!("pulling failed: {e}")))?;
        let confirms = self.service.confirmation_url.is_some();
        if confirms && !records.is_empty() && self.previous.as_ref() == Some(&records) {
            return Err(PullError::Service(
                "the service served the same page again after it was confirmed; the run stops (does the service remove confirmed records from its queue?)"
                    .into(),
            ));
        }
        self.previous = Some(records.clone());
        let read = records.len();
        let mut more = confirms && read >= self.limit && read > 0;
        if self.preview && more {
            more = false;
            memory
                .note(
                    "Plan",
                    "",
                    &format!(
                        "the service serves its next page only once this one is confirmed, so the plan shows its first {read} changes"
                    ),
                )
                .await
                .map_err(|e| PullError::Memory(e.to_string()))?;
        }
        // The record's id: the configured field, else the top-level `external_id`.
        for r in &mut records {
            if let Some(id) = r
                .values
                .get(&self.external_ref)
                .and_then(crate::domain::mapping::id_text)
            {
                r.external_id = Some(id);
            }
        }
        Ok(Page {
            records,
            read,
            skipped: 0,
            more,
        })
    }

    async fn confirm(
        &mut self,
        _memory: &dyn Memory,
        outcomes: &[Confirmation],
    ) -> Result<(), PullError> {
        // A plan confirms nothing: the service keeps serving what it served.
        if self.service.confirmation_url.is_none() || self.preview {
            return Ok(());
        }
        crate::crash::point("pull.before_confirm");
        confirm(&self.http, &self.service, outcomes)
            .await
            .map_err(|e| PullError::Service(format!("confirming failed: {e}")))
    }
}

#[async_trait]
impl Connector for Rest {
    /// Each URL's host is asked, with the credentials: an answer is enough, a 401 or 403
    /// is a refusal of the credentials.
    async fn check(&self, plan: &Plan) -> Result<String, String> {
        let r = &self.service;
        let mut urls: Vec<String> = [&r.url, &r.confirmation_url, &r.shipping_url, &r.list_url]
            .into_iter()
            .flatten()
            .map(|u| u.expose().to_string())
            .collect();
        // A service reached only through configured endpoints: probe their hosts.
        if urls.is_empty() {
            urls = plan
                .syncs
                .values()
                .filter(|s| s.web_service == self.name)
                .flat_map(|s| s.endpoints.iter())
                .map(|e| origin(e.url.expose()))
                .collect();
        }
        urls.dedup();
        if urls.is_empty() {
            return Ok("nothing to reach (no URL is configured)".into());
        }
        let mut problems = Vec::new();
        let started = std::time::Instant::now();
        let mut answered = Vec::new();
        for u in &urls {
            match probe(&self.http, &r.auth, r.timeout, u).await {
                Probe::Answered(code) => answered.push(format!("{} (HTTP {code})", origin(u))),
                Probe::Refused(code) => problems.push(format!(
                    "{} refused the credentials (HTTP {code})",
                    origin(u)
                )),
                Probe::Unreachable(why) => problems.push(format!("{}: {why}", origin(u))),
            }
        }
        if problems.is_empty() {
            answered.dedup();
            Ok(format!(
                "{} answered in {} ms",
                answered.join(", "),
                started.elapsed().as_millis()
            ))
        } else {
            problems.dedup();
            Err(problems.join("; "))
        }
    }

    fn kind(&self) -> &'static str {
        "rest"
    }

    async fn open_pull(
        &self,
        sync: &Sync,
        _plan: &Plan,
        start: PullStart,
        _memory: &dyn Memory,
    ) -> Result<Box<dyn Puller>, PullError> {
        if start.preview
            && let Some(why) = self.preview_refusal(sync)
        {
            return Err(PullError::Service(why));
        }
        Ok(Box::new(RestPull {
            service: self.service.clone(),
            http: self.http.clone(),
            limit: sync.limit,
            external_ref: sync.external_ref.clone(),
            previous: None,
            preview: start.preview,
        }))
    }

    fn preview_refusal(&self, sync: &Sync) -> Option<String> {
        (sync.direction.to_local()
            && self.service.url.is_some()
            && self.service.confirmation_url.is_none())
        .then(|| {
            format!(
                "sync `{}` cannot be planned: its web service `{}` has no `confirmation_url`, so every fetch of `url` takes the changes it serves off the service's queue, and a plan would lose them",
                sync.code, sync.web_service
            )
        })
    }

    async fn send(
        &self,
        sync: &Sync,
        _plan: &Plan,
        _memory: &dyn Memory,
        action: SendAction,
        target: Target<'_>,
        values: &Map<String, Value>,
    ) -> Result<Sent, Failure> {
        let _admitted = self.limits.admit().await;
        send(&self.http, &self.service, sync, action, target, values).await
    }

    /// `POST list_url {"limit": n, "after": token}`, answered with a page of records and the
    /// `next` token (`protocol.md` §2, List).
    fn can_list(&self, _sync: &Sync) -> bool {
        self.service.list_url.is_some()
    }

    async fn list_ids(
        &self,
        sync: &Sync,
        plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PullError> {
        let (listed, next) = self.list_records(sync, plan, after).await?;
        Ok((listed.into_iter().map(|l| l.external_id).collect(), next))
    }

    async fn list_records(
        &self,
        sync: &Sync,
        _plan: &Plan,
        after: Option<String>,
    ) -> Result<(Vec<super::Listed>, Option<String>), PullError> {
        let Some(url) = &self.service.list_url else {
            return Err(super::unsupported("listing ids", "rest"));
        };
        let failed = |e: Failure| PullError::Service(format!("listing failed: {e}"));
        let reply = post_json(
            &self.http,
            &self.service,
            url.expose(),
            &json!({"limit": sync.limit, "after": after}),
        )
        .await
        .map_err(failed)?;
        if reply.get("status").and_then(Value::as_str) != Some("success") {
            let msg = reply
                .get("error_message")
                .and_then(Value::as_str)
                .filter(|m| !m.trim().is_empty())
                .unwrap_or("no reason given");
            return Err(PullError::Service(format!(
                "listing failed: the service answered: {msg}"
            )));
        }
        let Some(content) = reply.get("content").and_then(Value::as_array) else {
            return Err(PullError::Service(
                "listing failed: the answer has no `content` list".into(),
            ));
        };
        let mut ids = Vec::with_capacity(content.len());
        for (i, item) in content.iter().enumerate() {
            let id = item
                .get("external_id")
                .and_then(crate::domain::mapping::id_text)
                .or_else(|| {
                    item.get("values")
                        .and_then(|v| v.get(&sync.external_ref))
                        .and_then(crate::domain::mapping::id_text)
                })
                .ok_or_else(|| {
                    PullError::Service(format!(
                        "listing failed: record {i} of the page has no `external_id` (nor `{}` in its values)",
                        sync.external_ref
                    ))
                })?;
            let values = match item.get("values") {
                Some(Value::Object(v)) => Some(v.clone()),
                None | Some(Value::Null) => None,
                Some(_) => {
                    return Err(PullError::Service(format!(
                        "listing failed: the `values` of record {i} of the page are not an object"
                    )));
                }
            };
            ids.push(super::Listed {
                external_id: id,
                values,
            });
        }
        let next = match reply.get("next") {
            None | Some(Value::Null) => None,
            Some(v) => match crate::domain::mapping::id_text(v) {
                Some(t) if after.as_deref() == Some(t.as_str()) => {
                    return Err(PullError::Service(
                        "listing failed: the service answered the same `next` again".into(),
                    ));
                }
                Some(t) => Some(t),
                None => {
                    return Err(PullError::Service(
                        "listing failed: `next` is neither null nor a token".into(),
                    ));
                }
            },
        };
        Ok((ids, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_stay_one_harmless_path_segment() {
        let e = path_segment("a\r\nX-Injected: 1").unwrap();
        assert!(
            !e.contains('\r') && !e.contains('\n') && !e.contains(' '),
            "{e}"
        );
        assert_eq!(
            path_segment("../../etc/passwd").unwrap(),
            "..%2F..%2Fetc%2Fpasswd"
        );
        assert_eq!(path_segment("a?b#c%d").unwrap(), "a%3Fb%23c%25d");
        assert!(path_segment("..").is_err());
        assert!(path_segment(".").is_err());
        let url = url::Url::parse(&format!(
            "http://127.0.0.1/api/shop/{}",
            path_segment("../../admin").unwrap()
        ))
        .unwrap();
        assert_eq!(url.path(), "/api/shop/..%2F..%2Fadmin");
    }
}
