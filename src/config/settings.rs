//! Server settings from `recsync.toml`, overridden by `RECSYNC_*` variables and CLI flags,
//! including the API keys, which are kept only as SHA-256 hashes.

use super::diag::{Diagnostic, Diagnostics, Span};
use super::reader::*;
use super::source::{Env, Table};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const KEYS: [&str; 16] = [
    "database_url",
    "listen",
    "mappings",
    "log_format",
    "change_log",
    "change_log_retention",
    "body_limit",
    "outbox_max_attempts",
    "outbox_backoff",
    "rate_limit",
    "shutdown_timeout",
    "claim_timeout",
    "tls_cert",
    "tls_key",
    "otlp_endpoint",
    "api_keys",
];
pub const API_KEY_KEYS: [&str; 4] = ["name", "key", "key_sha256", "scopes"];

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Sync(String),
    AllSyncs,
    Read,
    Write,
    Operate,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "read" => Scope::Read,
            "write" => Scope::Write,
            "operate" => Scope::Operate,
            "admin" => Scope::Admin,
            "sync:*" => Scope::AllSyncs,
            _ => Scope::Sync(
                crate::domain::SyncCode::parse(s.strip_prefix("sync:")?)
                    .ok()?
                    .to_string(),
            ),
        })
    }
}

/// A configured API key: who holds it, its hash and its scopes.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a key, as stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The server's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretString,
    pub listen: SocketAddr,
    pub mappings: PathBuf,
    pub log_format: LogFormat,
    pub change_log: bool,
    /// `None` keeps entries forever.
    pub change_log_retention: Option<Duration>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Delivery attempts before an outbox entry is dead-lettered.
    pub outbox_max_attempts: u32,
    /// First retry delay of a failed delivery (doubled per attempt, with jitter).
    pub outbox_backoff: Duration,
    /// Requests per second each key may make on `/sync/*` (0: no limit).
    pub rate_limit: u32,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// How long work an instance claimed (an outbox entry, a run) stays its own without being
    /// renewed; after a crash, other instances (or the restarted one) take it over then.
    pub claim_timeout: Duration,
    /// PEM certificate chain and private key: with both, the server speaks HTTPS (rustls).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where spans are posted over OTLP/HTTP (the full traces URL, `.../v1/traces`); `None`
    /// exports nothing.
    pub otlp_endpoint: Option<String>,
    pub api_keys: Vec<ApiKey>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: SecretString::from("sqlite://recsync.db"),
            listen: "127.0.0.1:8071".parse().expect("valid"),
            mappings: PathBuf::from("mappings"),
            log_format: LogFormat::Pretty,
            change_log: true,
            change_log_retention: Some(Duration::from_secs(90 * 86_400)),
            body_limit: 1024 * 1024,
            outbox_max_attempts: 8,
            outbox_backoff: Duration::from_secs(1),
            rate_limit: 0,
            shutdown_timeout: Duration::from_secs(30),
            claim_timeout: Duration::from_secs(120),
            tls_cert: None,
            tls_key: None,
            otlp_endpoint: None,
            api_keys: Vec::new(),
        }
    }
}

impl Settings {
    /// The database URL with any password masked, for messages.
    pub fn database_display(&self) -> String {
        mask_url(self.database_url.expose_secret())
    }
}

/// Hides the password of a URL such as `postgres://user:pass@host/db`.
pub fn mask_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => u.to_string(),
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub mappings: Option<PathBuf>,
}

/// Builds settings from the parsed file (if any), the environment and the CLI.
pub fn compile(
    file: Option<(usize, &Table)>,
    env: &dyn Env,
    cli: &Overrides,
    diags: &mut Diagnostics,
) -> Settings {
    let mut s = Settings::default();
    let empty = Table::new();
    let t = file.map(|(_, t)| t).unwrap_or(&empty);
    check_keys(t, &KEYS, diags);

    // Precedence: CLI flag, then RECSYNC_<KEY>, then the file, then the default.
    let pick = |key: &str, diags: &mut Diagnostics| -> Option<(String, Option<Span>, bool)> {
        let cli_value = match key {
            "database_url" => cli.database_url.clone(),
            "listen" => cli.listen.clone(),
            "mappings" => cli.mappings.as_ref().map(|p| p.display().to_string()),
            _ => None,
        };
        if let Some(v) = cli_value {
            return Some((v, None, false));
        }
        if let Some(v) = env.var(&format!("RECSYNC_{}", key.to_ascii_uppercase())) {
            return Some((v, None, true));
        }
        str_of(t, key, diags).map(|v| (v.value.to_string(), Some(v.span), v.secret))
    };
    let bad = |diags: &mut Diagnostics, key: &str, span: Option<Span>, msg: String, help: &str| {
        match span {
            Some(span) => diags.push(Diagnostic::error(msg, span, "invalid value").with_help(help)),
            None => diags.push(env_error(key, msg, help)),
        }
    };

    if let Some((v, span, _)) = pick("database_url", diags) {
        if v.starts_with("sqlite:")
            || v.starts_with("postgres://")
            || v.starts_with("postgresql://")
        {
            s.database_url = SecretString::from(v);
        } else {
            bad(
                diags,
                "database_url",
                span,
                "`database_url` must start with `sqlite:` or `postgres://`".into(),
                "for example sqlite://recsync.db",
            );
        }
    }
    if let Some((v, span, _)) = pick("listen", diags) {
        match v.parse::<SocketAddr>() {
            Ok(a) => s.listen = a,
            Err(_) => bad(
                diags,
                "listen",
                span,
                format!("invalid `listen` address `{v}`"),
                "use host:port, such as 127.0.0.1:8071",
            ),
        }
    }
    if let Some((v, _, _)) = pick("mappings", diags) {
        s.mappings = PathBuf::from(v);
    }
    if let Some((v, span, _)) = pick("log_format", diags) {
        match v.as_str() {
            "pretty" => s.log_format = LogFormat::Pretty,
            "json" => s.log_format = LogFormat::Json,
            _ => bad(
                diags,
                "log_format",
                span,
                format!("invalid `log_format` value `{v}`"),
                "use \"pretty\" or \"json\"",
            ),
        }
    }
    // `otlp_endpoint` (or RECSYNC_OTLP_ENDPOINT) is a base URL, as the standard
    // OTEL_EXPORTER_OTLP_ENDPOINT, which is read when neither is given; spans go to its
    // `/v1/traces`. OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the traces URL itself.
    let otlp = pick("otlp_endpoint", diags)
        .map(|(v, span, _)| (v, span, "otlp_endpoint", true))
        .or_else(|| {
            env.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .map(|v| (v, None, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", false))
        })
        .or_else(|| {
            env.var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|v| (v, None, "OTEL_EXPORTER_OTLP_ENDPOINT", true))
        })
        .filter(|(v, ..)| !v.trim().is_empty());
    if let Some((v, span, key, base)) = otlp {
        match url::Url::parse(v.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                let v = v.trim();
                s.otlp_endpoint = Some(if base && !v.ends_with("/v1/traces") {
                    format!("{}/v1/traces", v.trim_end_matches('/'))
                } else {
                    v.to_string()
                });
            }
            _ => {
                let msg = format!(
                    "invalid `{key}` value `{}`: an http:// or https:// URL is needed",
                    mask_url(&v)
                );
                let help = "for example http://127.0.0.1:4318 (an OpenTelemetry collector's OTLP/HTTP port)";
                match (span, key) {
                    (Some(span), _) => {
                        diags.push(Diagnostic::error(msg, span, "invalid value").with_help(help))
                    }
                    (None, "otlp_endpoint") => diags.push(env_error(key, msg, help)),
                    (None, _) => diags.push(
                        Diagnostic::error(
                            format!("{msg} (from the environment)"),
                            Span::nowhere(),
                            "",
                        )
                        .with_help(help),
                    ),
                }
            }
        }
    }
    match env.var("RECSYNC_CHANGE_LOG") {
        Some(v) => match v.as_str() {
            "true" | "1" => s.change_log = true,
            "false" | "0" => s.change_log = false,
            _ => diags.push(env_error(
                "change_log",
                format!("invalid boolean `{v}`"),
                "use true or false",
            )),
        },
        None => {
            if let Some(b) = bool_of(t, "change_log", diags) {
                s.change_log = b;
            }
        }
    }
    if let Some((v, span, _)) = pick("change_log_retention", diags) {
        if v.trim() == "0" {
            s.change_log_retention = None;
        } else {
            match crate::domain::plan::parse_duration(&v) {
                Some(d) => s.change_log_retention = Some(d),
                None => bad(
                    diags,
                    "change_log_retention",
                    span,
                    format!("invalid duration `{v}` for `change_log_retention`"),
                    "use \"90d\", \"12h\", or \"0\" to keep forever",
                ),
            }
        }
    }
    match env.var("RECSYNC_BODY_LIMIT") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1024 => s.body_limit = n,
            _ => diags.push(env_error(
                "body_limit",
                format!("invalid byte count `{v}`"),
                "use a number of bytes, at least 1024",
            )),
        },
        None => match int_of(t, "body_limit", diags) {
            Some((n, _)) if n >= 1024 => s.body_limit = n as usize,
            Some((_, span)) => diags.push(Diagnostic::error(
                "`body_limit` must be at least 1024 bytes",
                span,
                "too small",
            )),
            None => {}
        },
    }
    match env.var("RECSYNC_OUTBOX_MAX_ATTEMPTS") {
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => s.outbox_max_attempts = n,
            _ => diags.push(env_error(
                "outbox_max_attempts",
                format!("invalid attempt count `{v}`"),
                "use a number from 1 to 100",
            )),
        },
        None => match int_of(t, "outbox_max_attempts", diags) {
            Some((n, _)) if (1..=100).contains(&n) => s.outbox_max_attempts = n as u32,
            Some((_, span)) => diags.push(Diagnostic::error(
                "`outbox_max_attempts` must be between 1 and 100",
                span,
                "out of range",
            )),
            None => {}
        },
    }
    if let Some((v, span, _)) = pick("outbox_backoff", diags) {
        match crate::domain::plan::parse_duration(&v) {
            Some(d) if !d.is_zero() => s.outbox_backoff = d,
            _ => bad(
                diags,
                "outbox_backoff",
                span,
                format!("invalid duration `{v}` for `outbox_backoff`"),
                "use a number and a unit, such as `500ms` or `1s`",
            ),
        }
    }
    for (key, slot) in [
        ("shutdown_timeout", &mut s.shutdown_timeout),
        ("claim_timeout", &mut s.claim_timeout),
    ] {
        if let Some((v, span, _)) = pick(key, diags) {
            match crate::domain::plan::parse_duration(&v) {
                Some(d) if !d.is_zero() => *slot = d,
                _ => bad(
                    diags,
                    key,
                    span,
                    format!("invalid duration `{v}` for `{key}`"),
                    "use a number and a unit, such as `30s` or `2m`",
                ),
            }
        }
    }
    if let Some((v, _, _)) = pick("tls_cert", diags) {
        s.tls_cert = Some(PathBuf::from(v));
    }
    if let Some((v, _, _)) = pick("tls_key", diags) {
        s.tls_key = Some(PathBuf::from(v));
    }
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        diags.push(
            Diagnostic::error(
                format!(
                    "`{}` is set without `{}`",
                    if s.tls_cert.is_some() {
                        "tls_cert"
                    } else {
                        "tls_key"
                    },
                    if s.tls_cert.is_some() {
                        "tls_key"
                    } else {
                        "tls_cert"
                    }
                ),
                Span::nowhere(),
                "",
            )
            .with_help("set both (PEM files) to serve HTTPS, or neither"),
        );
    }
    match env.var("RECSYNC_RATE_LIMIT") {
        Some(v) => match v.parse::<u32>() {
            Ok(n) => s.rate_limit = n,
            _ => diags.push(env_error(
                "rate_limit",
                format!("invalid rate `{v}`"),
                "use a number of requests per second, or 0 for no limit",
            )),
        },
        None => match int_of(t, "rate_limit", diags) {
            Some((n, _)) if (0..=1_000_000).contains(&n) => s.rate_limit = n as u32,
            Some((_, span)) => diags.push(Diagnostic::error(
                "`rate_limit` must be between 0 (no limit) and 1000000 requests per second",
                span,
                "out of range",
            )),
            None => {}
        },
    }
    if let Some((items, _)) = array_of(t, "api_keys", diags) {
        for it in items {
            let Some(kt) = as_table("api_keys", it, diags) else {
                continue;
            };
            if let Some(k) = compile_key(kt, &it.span, diags) {
                if let Some(prev) = s.api_keys.iter().find(|p| p.name == k.name) {
                    let span = entry(kt, "name")
                        .map(|(_, i)| i.span.clone())
                        .unwrap_or(it.span.clone());
                    diags.push(Diagnostic::error(
                        format!("duplicate API key name `{}`", prev.name),
                        span,
                        "names identify keys in the change-control log",
                    ));
                    continue;
                }
                s.api_keys.push(k);
            }
        }
    }
    s
}

fn env_error(key: &str, msg: String, help: &str) -> Diagnostic {
    // An environment variable has no file position.
    Diagnostic::error(
        format!("{msg} (from RECSYNC_{})", key.to_ascii_uppercase()),
        Span::nowhere(),
        "",
    )
    .with_help(help)
}

fn compile_key(t: &Table, span: &Span, diags: &mut Diagnostics) -> Option<ApiKey> {
    check_keys(t, &API_KEY_KEYS, diags);
    let name = required_str(t, "name", span, "`[[api_keys]]` entry", diags);
    let key = str_of(t, "key", diags);
    let hashed = str_of(t, "key_sha256", diags);
    let sha256 = match (&key, &hashed) {
        (Some(_), Some(h)) => {
            diags.push(Diagnostic::error(
                "`key` and `key_sha256` are mutually exclusive",
                h.span.clone(),
                "remove one of the two",
            ));
            None
        }
        (Some(k), None) if k.value.len() < 16 => {
            diags.push(
                Diagnostic::error(
                    "API key is too short: use at least 16 characters",
                    k.span.clone(),
                    "too short",
                )
                .with_help("`recsync keys new` makes a strong one"),
            );
            None
        }
        (Some(k), None) => Some(hash_key(k.value)),
        (None, Some(h)) => match hex::decode(h.value) {
            Ok(bytes) if bytes.len() == 32 => bytes.try_into().ok(),
            _ => {
                diags.push(Diagnostic::error(
                    "`key_sha256` must be 64 hexadecimal characters",
                    h.span.clone(),
                    "not a SHA-256 hash",
                ));
                None
            }
        },
        (None, None) => {
            diags.push(Diagnostic::error(
                "`[[api_keys]]` entry needs `key` or `key_sha256`",
                span.clone(),
                "no key",
            ));
            None
        }
    };
    let mut scopes = Vec::new();
    match array_of(t, "scopes", diags) {
        Some((items, _)) => {
            for it in items {
                let Some(s) = as_str("scopes", it, diags) else {
                    continue;
                };
                match Scope::parse(s.value) {
                    Some(sc) => scopes.push(sc),
                    None => diags.push(
                        Diagnostic::error(
                            format!("unknown scope `{}`", s.value),
                            s.span.clone(),
                            "unknown scope",
                        )
                        .with_help(
                            "use `read`, `write`, `operate`, `admin`, `sync:*` or `sync:<CODE>`",
                        ),
                    ),
                }
            }
        }
        None if entry(t, "scopes").is_none() => {
            diags.push(Diagnostic::error(
                "`[[api_keys]]` entry needs `scopes`",
                span.clone(),
                "no scopes",
            ));
        }
        None => {}
    }
    Some(ApiKey {
        name: name?.value.to_string(),
        sha256: sha256?,
        scopes,
    })
}
