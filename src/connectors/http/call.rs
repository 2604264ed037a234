//! One call to an HTTP JSON API, as every `http` sync of a web service shares it: the
//! credentials (an OAuth 2.0 token fetched once and kept until it expires, asked again once on
//! a 401), the web service's `rate_limit` and `max_concurrency`, and retries with backoff for
//! 429 (after `Retry-After`), 5xx and network errors. Other 4xx answers fail at once with the
//! service's own message.

use super::spec::HttpService;
use crate::connectors::Failure;
use crate::connectors::transport::{self, Limits, Retries};
use crate::domain::plan::Auth;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::Instrument;
use url::Url;

/// The largest answer read (a page or a reply); more is refused.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// The longest `Retry-After` waited for inside one call; a longer one fails the call, asking
/// to retry that much later.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub link: Option<String>,
    pub text: String,
    pub json: bool,
}

/// An OAuth 2.0 token, and when it stops working.
struct Token {
    value: SecretString,
    until: Option<Instant>,
}

/// What all the syncs of one `http` web service share.
pub struct Caller {
    pub name: String,
    pub service: HttpService,
    client: reqwest::Client,
    limits: Limits,
    token: Mutex<Option<Token>>,
}

impl Caller {
    pub fn new(name: &str, service: HttpService, client: reqwest::Client) -> Arc<Caller> {
        Arc::new(Caller {
            name: name.to_string(),
            limits: Limits::new(
                service.max_concurrency,
                service.rate_limit.map(|r| (r.requests, r.per)),
            ),
            service,
            client,
            token: Mutex::new(None),
        })
    }

    /// Calls `url` and reads the answer, retrying what can be retried (unless `repeat` is
    /// false: then only a refused cached token is asked again, and every other failure is the
    /// caller's to repeat). An answer with a status in `accept` is returned as it is, for the
    /// caller to read (a 404 that means "none").
    pub async fn call(
        &self,
        method: &reqwest::Method,
        url: &Url,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        accept: &[u16],
        repeat: bool,
    ) -> Result<Answer, Failure> {
        let retries = Retries {
            attempts: self.service.retries as usize + 1,
            first: Duration::from_millis(250),
            max_wait: MAX_WAIT,
        };
        let refreshed = std::sync::atomic::AtomicBool::new(false);
        let span = tracing::info_span!(
            "connector.call",
            web_service = %self.name,
            method = %method,
            path = %url.path(),
        );
        retries
            .run(
                &self.name,
                || async {
                    match self.once(method, url, body, idempotency_key, accept).await {
                        // The token may have been revoked or expired early: ask for a new one,
                        // once, and call again at once.
                        Err(Failure::Unauthorized { message })
                            if self.is_oauth2()
                                && message.starts_with("HTTP 401")
                                && !refreshed.swap(true, std::sync::atomic::Ordering::SeqCst) =>
                        {
                            *self.token.lock().await = None;
                            tracing::info!(web_service = %self.name, "401 with a cached token; asking the token endpoint again");
                            self.once(method, url, body, idempotency_key, accept).await
                        }
                        other => other,
                    }
                },
                |e| transport::verdict(e, repeat),
            )
            .instrument(span)
            .await
    }

    /// `validate --online`: a token where the service uses OAuth 2.0, then one `GET` of
    /// `base_url` (any answer but 401 or 403 counts, since the base URL itself may well be a
    /// 404).
    pub async fn check(&self) -> Result<String, String> {
        let started = Instant::now();
        let mut said = Vec::new();
        if self.is_oauth2() {
            self.token().await.map_err(|e| e.to_string())?;
            said.push("a token was issued".to_string());
        }
        let url = Url::parse(self.service.base_url.expose()).map_err(|e| e.to_string())?;
        let shown = crate::connectors::rest::origin(url.as_str());
        match self
            .once(&reqwest::Method::GET, &url, None, None, &[])
            .await
        {
            Ok(a) => said.push(format!("{shown} answered HTTP {}", a.status)),
            Err(Failure::Unauthorized { message }) if message.starts_with("HTTP 403") => {
                return Err(format!("{shown} refused the credentials ({message})"));
            }
            Err(Failure::Unauthorized { message }) => return Err(format!("{shown}: {message}")),
            Err(e) if !e.retryable() => said.push(format!(
                "{shown} answered {}",
                e.message().split(':').next().unwrap_or(e.message())
            )),
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        Ok(format!(
            "{} in {} ms",
            said.join(", "),
            started.elapsed().as_millis()
        ))
    }

    fn is_oauth2(&self) -> bool {
        matches!(self.service.auth, Auth::OAuth2 { .. })
    }

    async fn once(
        &self,
        method: &reqwest::Method,
        url: &Url,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        accept: &[u16],
    ) -> Result<Answer, Failure> {
        let _admitted = self.limits.admit().await;
        let mut req = self
            .client
            .request(method.clone(), url.clone())
            .timeout(self.service.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        for (k, v) in &self.service.headers {
            req = req.header(k.as_str(), v.expose());
        }
        req = match &self.service.auth {
            Auth::None => req,
            Auth::ApiKey { header, key } => req.header(header.as_str(), key.expose_secret()),
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose_secret())),
            Auth::Bearer { token } => req.bearer_auth(token.expose_secret()),
            Auth::OAuth2 { .. } => {
                let token = self.token().await?;
                req.bearer_auth(token.expose_secret())
            }
        };
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = transport::send(req, self.service.signing.as_ref(), idempotency_key)
            .await
            .map_err(transport::unanswered)?;
        let status = resp.status().as_u16();
        let link = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let after = transport::retry_after(resp.headers());
        let json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("json"));
        let text = String::from_utf8(transport::read_capped(resp, MAX_ANSWER).await?)
            .map_err(|_| Failure::permanent("the answer is not UTF-8 text"))?;
        if (200..300).contains(&status) || accept.contains(&status) {
            return Ok(Answer {
                status,
                link,
                text,
                json,
            });
        }
        let message = service_message(&text);
        let mut reason = format!("HTTP {status}");
        if !message.is_empty() {
            reason.push_str(&format!(": {message}"));
        }
        Err(match status {
            401 => Failure::Unauthorized {
                message: format!("{reason} (the credentials were refused)"),
            },
            403 => Failure::Unauthorized { message: reason },
            404 | 410 => Failure::NotFound { message: reason },
            409 | 412 => Failure::Conflict {
                existing_id: None,
                message: reason,
            },
            400 | 422 => Failure::Invalid {
                field: invalid_field(&text),
                message: reason,
            },
            408 | 429 | 500..=599 => {
                if let Some(a) = after {
                    reason.push_str(&format!(" (asked to retry after {} s)", a.as_secs()));
                }
                if status == 429 {
                    Failure::RateLimited {
                        retry_after: after,
                        message: reason,
                    }
                } else {
                    Failure::Transient {
                        message: reason,
                        retry_after: after,
                    }
                }
            }
            _ => Failure::Permanent { message: reason },
        })
    }

    /// The OAuth 2.0 access token: the cached one while it lasts, else a new one from the token
    /// endpoint (client credentials grant, RFC 6749 §4.4).
    async fn token(&self) -> Result<SecretString, Failure> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && t.until.is_none_or(|u| Instant::now() < u)
        {
            return Ok(t.value.clone());
        }
        let Auth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scopes,
            in_body,
        } = &self.service.auth
        else {
            unreachable!("only asked for oauth2");
        };
        let shown = crate::connectors::rest::origin(token_url.expose());
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if !scopes.is_empty() {
                form.append_pair("scope", &scopes.join(" "));
            }
            if *in_body {
                form.append_pair("client_id", client_id.expose_secret());
                form.append_pair("client_secret", client_secret.expose_secret());
            }
            form.finish()
        };
        let mut req = self
            .client
            .post(token_url.expose())
            .timeout(self.service.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if !*in_body {
            // RFC 6749 §2.3.1: the client's id and secret, form-encoded, as HTTP Basic.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(
                enc(client_id.expose_secret()),
                Some(enc(client_secret.expose_secret())),
            );
        }
        let failed = |why: String| Failure::Transient {
            message: format!("the token endpoint {shown} {why}"),
            retry_after: None,
        };
        let resp = crate::telemetry::carry(req.body(form))
            .send()
            .await
            .map_err(|e| {
                failed(format!(
                    "could not be reached ({})",
                    transport::describe(&e)
                ))
            })?;
        let status = resp.status().as_u16();
        let text = String::from_utf8(transport::read_capped(resp, MAX_ANSWER).await?)
            .map_err(|_| Failure::permanent("the answer is not UTF-8 text"))?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            // RFC 6749 §5.2: `error` and `error_description`. A refusal (4xx) is not asked
            // again within the call; a failing endpoint (5xx) is.
            let code = body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let desc = body
                .as_ref()
                .and_then(|b| b.get("error_description"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let what = match (code, desc) {
                ("", "") => String::new(),
                (c, "") => format!(" `{c}`"),
                ("", d) => format!(": {d}"),
                (c, d) => format!(" `{c}`: {d}"),
            };
            let why = format!("refused the client credentials with HTTP {status}{what}");
            return Err(if status >= 500 {
                failed(why)
            } else {
                Failure::Permanent {
                    message: format!("the token endpoint {shown} {why}"),
                }
            });
        }
        let Some(access) = body
            .as_ref()
            .and_then(|b| b.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        else {
            return Err(failed(
                "answered without an `access_token` (is `token_url` the OAuth 2.0 token endpoint?)"
                    .into(),
            ));
        };
        // Asked again a little before it expires, so no call carries a token about to lapse.
        let until = body
            .as_ref()
            .and_then(|b| b.get("expires_in"))
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map(|secs| {
                let secs = Duration::from_secs(secs);
                Instant::now() + secs.saturating_sub(secs.min(Duration::from_secs(30)) / 2)
            });
        let value = SecretString::from(access.to_string());
        *slot = Some(Token {
            value: value.clone(),
            until,
        });
        Ok(value)
    }
}

/// The service's own words about a failure: the usual JSON fields, else the start of the text
/// (an HTML page is said to be one).
pub fn service_message(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return String::new();
    }
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        for key in [
            "message",
            "error_description",
            "description",
            "detail",
            "error",
            "errors",
            "title",
        ] {
            match v.get(key) {
                Some(Value::String(s)) if !s.is_empty() => return clip(s),
                Some(Value::Null) | None => continue,
                Some(Value::Object(o)) => {
                    if let Some(Value::String(s)) = o.get("message").or_else(|| o.get("title")) {
                        return clip(s);
                    }
                    return clip(&Value::Object(o.clone()).to_string());
                }
                Some(other) => return clip(&other.to_string()),
            }
        }
        return clip(trimmed);
    }
    if looks_like_html(trimmed) {
        return "an HTML page, not JSON".into();
    }
    clip(trimmed)
}

/// The field a refused value belongs to, where the answer names one in a usual shape:
/// `{"field": …}`, `{"errors": [{"field": …}]}` (also `"name"`, `"propertyName"`, `"path"`)
/// or `{"errors": {"<field>": […]}}`.
fn invalid_field(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let named = |o: &Value| -> Option<String> {
        ["field", "propertyName", "name", "path", "param"]
            .iter()
            .find_map(|k| match o.get(*k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Array(a)) => a.iter().find_map(|x| x.as_str().map(str::to_string)),
                _ => None,
            })
    };
    if let Some(f) = v.get("field").and_then(Value::as_str) {
        return Some(f.to_string());
    }
    match v.get("errors").or_else(|| v.get("details")) {
        Some(Value::Array(items)) => items
            .iter()
            .find_map(|i| named(i).or_else(|| i.get("context").and_then(named))),
        Some(Value::Object(o)) => o.keys().next().cloned(),
        _ => None,
    }
}

pub fn looks_like_html(text: &str) -> bool {
    let start: String = text
        .trim_start()
        .chars()
        .take(15)
        .collect::<String>()
        .to_ascii_lowercase();
    start.starts_with("<!doctype") || start.starts_with("<html") || start.starts_with('<')
}

fn clip(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        format!("{}…", one_line.chars().take(300).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_own_message_is_kept_and_html_is_named() {
        assert_eq!(
            service_message(
                r#"{"message": "Property values were not valid", "category": "VALIDATION_ERROR"}"#
            ),
            "Property values were not valid"
        );
        assert_eq!(
            service_message(
                r#"{"error": {"title": "RecordInvalid", "message": "Subject is too long"}}"#
            ),
            "Subject is too long"
        );
        assert_eq!(service_message(r#"{"errors": ["a", "b"]}"#), r#"["a","b"]"#);
        assert_eq!(
            service_message("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"),
            "an HTML page, not JSON"
        );
        assert_eq!(service_message(""), "");
    }
}
