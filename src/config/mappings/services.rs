//! Web services (`rest`, `dropbox`, `odoo` and `http`) and their authentication.

use super::*;

pub(super) fn compile_web_service(d: &Decl<'_>, diags: &mut Diagnostics) -> Option<WebService> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "web service", diags);
    let t = as_table(&name, d.item, diags)?;
    let kind = kind_of(t, diags)?;
    let active = bool_of(t, "active", diags).unwrap_or(true);
    let what = format!("web service `{name}`");
    let spec = match kind {
        ServiceKind::Rest => {
            check_keys(t, &REST_KEYS, diags);
            let url = str_of(t, "url", diags).and_then(|s| check_url("url", &s, diags));
            let confirmation_url = str_of(t, "confirmation_url", diags)
                .and_then(|s| check_url("confirmation_url", &s, diags));
            let shipping_url =
                str_of(t, "shipping_url", diags).and_then(|s| check_url("shipping_url", &s, diags));
            let list_url =
                str_of(t, "list_url", diags).and_then(|s| check_url("list_url", &s, diags));
            if let (Some((k, _)), None) = (entry(t, "confirmation_url"), entry(t, "url")) {
                diags.push(Diagnostic::error(
                    "`confirmation_url` is set but `url` is not",
                    k.span.clone(),
                    "confirmations follow pulls from `url`",
                ));
            }
            let auth = match table_of(t, "auth", diags) {
                None => Auth::None,
                Some((at, span)) => compile_auth(at, &span, false, diags)?,
            };
            let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
            let max_concurrency = max_concurrency_of(t, 8, diags);
            ServiceSpec::Rest(RestService {
                url,
                confirmation_url,
                shipping_url,
                list_url,
                auth,
                timeout,
                max_concurrency,
            })
        }
        ServiceKind::Dropbox => {
            check_keys(t, &DROPBOX_KEYS, diags);
            let app_key = required_str(t, "app_key", &d.key.span, &what, diags);
            let app_secret = required_str(t, "app_secret", &d.key.span, &what, diags);
            let refresh_token = str_of(t, "refresh_token", diags).map(|s| secret(&s));
            let access_token = str_of(t, "access_token", diags).map(|s| secret(&s));
            if entry(t, "refresh_token").is_none() && entry(t, "access_token").is_none() {
                diags.push(Diagnostic::error(
                    format!("{what} needs `refresh_token` (or `access_token`)"),
                    d.key.span.clone(),
                    "no credentials",
                ));
            }
            let api_url = str_of(t, "api_url", diags).and_then(|s| check_url("api_url", &s, diags));
            ServiceSpec::Dropbox(DropboxService {
                app_key: secret(&app_key?),
                app_secret: secret(&app_secret?),
                refresh_token,
                access_token,
                api_url,
            })
        }
        ServiceKind::Odoo => {
            check_keys(t, &ODOO_KEYS, diags);
            let url = required_str(t, "url", &d.key.span, &what, diags)
                .and_then(|s| check_url("url", &s, diags));
            let api_key = required_str(t, "api_key", &d.key.span, &what, diags).map(|s| secret(&s));
            let database = str_of(t, "database", diags).map(|s| s.value.to_string());
            let login = str_of(t, "login", diags).map(|s| s.value.to_string());
            let protocol = enum_of(
                t,
                "protocol",
                OdooProtocol::parse,
                &["auto", "json2", "jsonrpc"],
                diags,
            )
            .flatten()
            .unwrap_or(OdooProtocol::Auto);
            if protocol == OdooProtocol::JsonRpc {
                for key in ["database", "login"] {
                    if entry(t, key).is_none() {
                        diags.push(
                            Diagnostic::error(
                                format!("{what} speaks JSON-RPC and needs `{key}`"),
                                d.key.span.clone(),
                                format!("no `{key}`"),
                            )
                            .with_help("JSON-RPC logs in with the database, the login and the key"),
                        );
                    }
                }
            }
            let webhook_token = str_of(t, "webhook_token", diags).map(|s| secret(&s));
            let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
            let max_concurrency = max_concurrency_of(t, 4, diags);
            let overlap = duration_of(t, "overlap", diags).unwrap_or(Duration::from_secs(300));
            ServiceSpec::Odoo(OdooService {
                url: url?,
                database,
                login,
                api_key: api_key?,
                protocol,
                webhook_token,
                timeout,
                max_concurrency,
                overlap,
            })
        }
        ServiceKind::Http => {
            check_keys(t, &HTTP_KEYS, diags);
            let base_url = required_str(t, "base_url", &d.key.span, &what, diags)
                .and_then(|s| check_url("base_url", &s, diags));
            let auth = match table_of(t, "auth", diags) {
                None => Auth::None,
                Some((at, span)) => compile_auth(at, &span, true, diags)?,
            };
            let rate_limit = str_of(t, "rate_limit", diags).and_then(|s| {
                let parsed = RateLimit::parse(s.value);
                if parsed.is_none() {
                    diags.push(
                        Diagnostic::error(
                            format!("invalid `rate_limit` {}", s.shown()),
                            s.span.clone(),
                            "not a rate",
                        )
                        .with_help(
                            "write requests per unit, such as `10/s`, `600/min` or `5000/h`",
                        ),
                    );
                }
                parsed
            });
            let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
            let max_concurrency = max_concurrency_of(t, 8, diags);
            let retries = match int_of(t, "retries", diags) {
                None => 3,
                Some((n, _)) if (0..=20).contains(&n) => n as u32,
                Some((_, span)) => {
                    diags.push(Diagnostic::error(
                        "`retries` must be between 0 and 20",
                        span,
                        "out of range",
                    ));
                    3
                }
            };
            let mut headers = Vec::new();
            if let Some((ht, _)) = table_of(t, "headers", diags) {
                for (k, item) in ht {
                    if reqwest::header::HeaderName::from_bytes(k.name.as_bytes()).is_err() {
                        diags.push(Diagnostic::error(
                            format!("`{}` is not a valid HTTP header name", k.name),
                            k.span.clone(),
                            "invalid header name",
                        ));
                        continue;
                    }
                    if let Some(v) = as_str(&k.name, item, diags) {
                        headers.push((k.name.clone(), cfg_str(&v)));
                    }
                }
            }
            ServiceSpec::Http(HttpService {
                base_url: base_url?,
                auth,
                rate_limit,
                timeout,
                max_concurrency,
                retries,
                headers,
            })
        }
    };
    ok_name.then_some(WebService { name, spec, active })
}

/// Calls in flight to the service, all syncs together: 1 to 1024.
fn max_concurrency_of(t: &Table, default: usize, diags: &mut Diagnostics) -> usize {
    match int_of(t, "max_concurrency", diags) {
        None => default,
        Some((n, _)) if (1..=1024).contains(&n) => n as usize,
        Some((_, span)) => {
            diags.push(Diagnostic::error(
                "`max_concurrency` must be between 1 and 1024",
                span,
                "out of range",
            ));
            default
        }
    }
}

/// `auth = { mode = ... }`; `oauth2` only where `oauth2` is true (`http` web services).
pub(super) fn compile_auth(
    t: &Table,
    span: &Span,
    oauth2: bool,
    diags: &mut Diagnostics,
) -> Option<Auth> {
    let Some(mode) = required_str(t, "mode", span, "`auth`", diags) else {
        check_keys(t, &AUTH_KEYS, diags);
        return None;
    };
    let allowed: &[&str] = match mode.value {
        "none" => &["mode"],
        "api_key" => &["mode", "header", "key"],
        "basic" => &["mode", "user", "password"],
        "bearer" => &["mode", "token"],
        "oauth2" if oauth2 => &[
            "mode",
            "token_url",
            "client_id",
            "client_secret",
            "scopes",
            "client_auth",
        ],
        _ => &[],
    };
    let modes: &[&str] = if oauth2 {
        &["none", "api_key", "basic", "bearer", "oauth2"]
    } else {
        &["none", "api_key", "basic", "bearer"]
    };
    // A key no mode knows is suggested from the keys of the mode chosen.
    let choices: Vec<&str> = if allowed.is_empty() {
        AUTH_KEYS.to_vec()
    } else {
        allowed.iter().copied().chain(["description"]).collect()
    };
    for (k, _) in t {
        if !AUTH_KEYS.contains(&k.name.as_str()) {
            diags.push(unknown_name("field", &k.name, k.span.clone(), &choices));
        }
    }
    let need = |key: &str, diags: &mut Diagnostics| {
        required_str(
            t,
            key,
            span,
            &format!("`auth` with mode `{}`", mode.value),
            diags,
        )
        .map(|s| secret(&s))
    };
    let auth = match mode.value {
        "none" => Some(Auth::None),
        "api_key" => {
            let key = need("key", diags);
            let header = str_of(t, "header", diags)
                .map(|s| s.value.to_string())
                .unwrap_or_else(|| "api_key".into());
            key.map(|key| Auth::ApiKey { header, key })
        }
        "basic" => {
            let password = need("password", diags);
            let user = required_str(t, "user", span, "`auth` with mode `basic`", diags)
                .map(|s| s.value.to_string());
            Some(Auth::Basic {
                user: user?,
                password: password?,
            })
        }
        "bearer" => need("token", diags).map(|token| Auth::Bearer { token }),
        "oauth2" if oauth2 => {
            let what = "`auth` with mode `oauth2`";
            let token_url = required_str(t, "token_url", span, what, diags)
                .and_then(|s| check_url("token_url", &s, diags));
            let client_id = need("client_id", diags);
            let client_secret = need("client_secret", diags);
            let scopes = match entry(t, "scopes") {
                None => Vec::new(),
                Some((k, item)) => match &item.node {
                    Node::Array(items) => items
                        .iter()
                        .filter_map(|i| as_str(&k.name, i, diags).map(|s| s.value.to_string()))
                        .collect(),
                    _ => {
                        diags.push(wrong_type(&k.name, item, "a list of scope names"));
                        Vec::new()
                    }
                },
            };
            let in_body = enum_of(
                t,
                "client_auth",
                |s| match s {
                    "basic" => Some(false),
                    "body" => Some(true),
                    _ => None,
                },
                &["basic", "body"],
                diags,
            )
            .flatten()
            .unwrap_or(false);
            Some(Auth::OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scopes,
                in_body,
            })
        }
        other => {
            let mut d = unknown_name("auth mode", other, mode.span.clone(), modes);
            if other == "oauth2" {
                d = d.with_help("OAuth 2.0 is for web services of kind `http`");
            }
            diags.push(d);
            return None;
        }
    };
    for (k, _) in t {
        if AUTH_KEYS.contains(&k.name.as_str())
            && !allowed.contains(&k.name.as_str())
            && k.name != "description"
        {
            diags.push(Diagnostic::error(
                format!("`{}` does not apply to auth mode `{}`", k.name, mode.value),
                k.span.clone(),
                "not used by this mode",
            ));
        }
    }
    auth
}
