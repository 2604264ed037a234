//! The compiled shape of an HTTP JSON API (`kind = "http"`, `connectors.md` §3): the web
//! service (where and how to call) and the resource of an external model (its operations).

use crate::connectors::transport::location;
use crate::domain::mapping::JsonPath;
use crate::domain::plan::{Auth, ConfigStr, ModelSettings, ServiceSettings};
use serde_json::Value;
use serde_json::{Map, json};
use std::time::Duration;

/// A web service of kind `http`.
#[derive(Debug, Clone)]
pub struct HttpService {
    /// Every path of its resources is joined to this URL; pages may only come from its host.
    pub base_url: ConfigStr,
    pub auth: Auth,
    /// Requests to the service, all of its syncs together.
    pub rate_limit: Option<RateLimit>,
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// How often a call answered 429, 5xx or not at all is tried again before it fails.
    pub retries: u32,
    /// Sent with every request (an API version, an `Accept`).
    pub headers: Vec<(String, ConfigStr)>,
    /// `signing_secret`: every call to the API is signed per Standard Webhooks.
    pub signing: Option<crate::domain::auth::Signing>,
}

/// `rate_limit = "10/s"`: at most `requests` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl RateLimit {
    /// `N/s`, `N/min` or `N/h`.
    pub fn parse(text: &str) -> Option<RateLimit> {
        let (n, unit) = text.trim().split_once('/')?;
        let requests: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "m" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(RateLimit { requests, per })
    }

    /// The spacing between two calls.
    pub fn interval(&self) -> Duration {
        self.per / self.requests
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.requests)
    }
}

/// The resource of an external model of kind `http`: what it can be asked.
#[derive(Debug, Clone, Default)]
pub struct HttpResource {
    pub list: Option<HttpList>,
    pub create: Option<HttpOp>,
    pub update: Option<HttpOp>,
    pub delete: Option<HttpOp>,
    /// One record by id (conflicts on send).
    pub read: Option<HttpRead>,
    /// Records by field values (`match_on` before a create).
    pub search: Option<HttpSearch>,
}

/// `read`: `GET base_url + path` with `{id}` filled in; the record is at `record`.
#[derive(Debug, Clone)]
pub struct HttpRead {
    pub path: String,
    /// Query parameters, as written.
    pub query: Vec<(String, String)>,
    pub record: JsonPath,
}

/// `search`: `GET base_url + path ? query`, `{field}` filled in with the external value of
/// that field (path and query); the records are at `records`. A 404 finds nothing.
#[derive(Debug, Clone)]
pub struct HttpSearch {
    pub path: String,
    pub query: Vec<(String, String)>,
    pub records: JsonPath,
}

/// `create.exists`: the answer of a create the service refused because the record is
/// already there, and where that answer names it.
#[derive(Debug, Clone)]
pub struct Exists {
    pub status: u16,
    /// The value holding the existing id.
    pub id: JsonPath,
    /// A regular expression whose first group is the id within that value (a message such
    /// as `Contact already exists. Existing ID: 14`).
    pub pattern: Option<regex::Regex>,
}

impl Exists {
    /// The existing record's id, from the refusal's body.
    pub fn id_in(&self, body: &Value) -> Option<String> {
        let v = self.id.select(body).first().copied()?.clone();
        match &self.pattern {
            None => crate::domain::mapping::id_text(&v),
            Some(re) => {
                let text = v.as_str()?;
                re.captures(text)?
                    .get(1)
                    .map(|m| m.as_str().to_string())
                    .filter(|s| !s.trim().is_empty())
            }
        }
    }
}

/// How a resource is listed, a page at a time.
#[derive(Debug, Clone)]
pub struct HttpList {
    /// Joined to the web service's `base_url`.
    pub path: String,
    /// Where the records of one page are.
    pub records: JsonPath,
    /// Query parameters of the first request; `{limit}` and `{cursor}` are filled in.
    pub query: Vec<(String, String)>,
    /// The record field the incremental cursor follows.
    pub cursor_field: Option<String>,
    /// The cursor of the very first run; without it, parameters naming `{cursor}` are left
    /// out until there is one.
    pub cursor_start: Option<String>,
    pub paginate: Paginate,
    /// How a page marks a deleted record.
    pub deleted: Option<Deleted>,
    /// A run stops with an error past this many pages.
    pub max_pages: usize,
}

/// `deleted = { field, equals }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub field: JsonPath,
    pub equals: Value,
}

/// How one page leads to the next.
#[derive(Debug, Clone)]
pub enum Paginate {
    /// One page is the whole list.
    None,
    /// The page says the next page's URL.
    NextUrl {
        next: JsonPath,
        done: Option<JsonPath>,
    },
    /// The page says a token, sent back as the query parameter `param`.
    Cursor {
        param: String,
        next: JsonPath,
        done: Option<JsonPath>,
    },
    /// `param` counts records skipped, from `start`.
    Offset { param: String, start: u64 },
    /// `param` counts pages, from `start`.
    Page { param: String, start: u64 },
    /// The `Link` header's `rel="next"` (RFC 8288).
    LinkHeader,
}

impl Paginate {
    pub fn style(&self) -> &'static str {
        match self {
            Paginate::None => "none",
            Paginate::NextUrl { .. } => "next_url",
            Paginate::Cursor { .. } => "cursor",
            Paginate::Offset { .. } => "offset",
            Paginate::Page { .. } => "page",
            Paginate::LinkHeader => "link_header",
        }
    }
}

/// One sending operation: `create`, `update` or `delete`.
#[derive(Debug, Clone)]
pub struct HttpOp {
    pub method: String,
    /// Joined to `base_url`; `{id}` is the record's external id, percent-encoded.
    pub path: String,
    /// The values are sent as `{"<body>": {...}}`; bare when `None`.
    pub body: Option<String>,
    /// Where the answer to a create holds the new record's id.
    pub response_id: Option<JsonPath>,
    /// How the service refuses a create of a record it already holds (create only).
    pub exists: Option<Exists>,
}

/// The `{name}` placeholders of a template.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        if !name.is_empty() {
            out.push(name.to_string());
        }
        rest = &rest[start + len + 1..];
    }
    out
}

impl ModelSettings for HttpResource {}

impl ServiceSettings for HttpService {
    fn secrets(&self) -> Vec<String> {
        let mut values = self.auth.secrets();
        values.extend(self.signing.as_ref().map(|s| s.secret_text()));
        let mut strs = vec![&self.base_url];
        strs.extend(self.headers.iter().map(|(_, v)| v));
        if let Auth::OAuth2 { token_url, .. } = &self.auth {
            strs.push(token_url);
        }
        for u in strs.into_iter().filter(|u| u.is_secret()) {
            values.push(u.expose().to_string());
        }
        values
    }

    fn shown(&self) -> Map<String, Value> {
        let shown = json!({
            "url": location(&self.base_url),
            "auth": self.auth.mode(),
            "rate_limit": self.rate_limit.map(|r| r.to_string()),
            "timeout_ms": self.timeout.as_millis() as u64,
            "signed": self.signing.is_some(),
        });
        shown.as_object().cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_read_per_second_minute_and_hour() {
        let r = RateLimit::parse("500/s").unwrap();
        assert_eq!(r.interval(), Duration::from_millis(2));
        assert_eq!(
            RateLimit::parse("100/min").unwrap().per,
            Duration::from_secs(60)
        );
        assert_eq!(
            RateLimit::parse(" 3600 / h ").unwrap().interval().as_secs(),
            1
        );
        for bad in ["0/s", "ten/s", "10", "10/fortnight", "-1/s"] {
            assert!(RateLimit::parse(bad).is_none(), "{bad}");
        }
    }
}
