//! Web services, compiled by their kind, and the authentication modes kinds share.

use super::*;

pub(super) fn compile_web_service(
    d: &Decl<'_>,
    kinds: &Kinds,
    diags: &mut Diagnostics,
) -> Option<WebService> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "web service", diags);
    let t = as_table(&name, d.item, diags)?;
    let kind = kind_of(t, kinds, diags)?;
    check_keys(t, kind.service_keys(), diags);
    let active = bool_of(t, "active", diags).unwrap_or(true);
    let declared = Declared {
        key: d.key,
        table: t,
        what: format!("web service `{name}`"),
    };
    let settings = kind.compile_service(&declared, diags)?;
    ok_name.then_some(WebService {
        name,
        kind: kind.name(),
        settings,
        active,
    })
}

/// Calls in flight to the service, all syncs together: 1 to 1024.
pub fn max_concurrency_of(t: &Table, default: usize, diags: &mut Diagnostics) -> usize {
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
pub fn compile_auth(t: &Table, span: &Span, oauth2: bool, diags: &mut Diagnostics) -> Option<Auth> {
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
