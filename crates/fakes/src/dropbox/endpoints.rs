//! The fake Dropbox over HTTP: the OAuth 2.0 token endpoint and the API routes (files, listing with
//! cursors, uploads and downloads), each checked as Dropbox checks it.

use super::*;

/// `Authorization: Basic base64(client_id:client_secret)`, when given.
fn basic_credentials(req: &actix_web::HttpRequest) -> Option<(String, String)> {
    use base64::Engine;
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

pub(super) fn lookup_path_ok(path: &str) -> bool {
    path.is_empty() || path.starts_with("id:") || (path.starts_with('/') && !path.ends_with('/'))
}

pub(super) async fn token(
    req: actix_web::HttpRequest,
    state: web::Data<FakeState>,
    body: web::Bytes,
) -> HttpResponse {
    let mut form: HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    // Like Dropbox, the app's key and secret may come as HTTP Basic credentials instead of
    // form fields (RFC 6749 section 2.3.1).
    if let Some((id, secret)) = basic_credentials(&req) {
        form.entry("client_id".into()).or_insert(id);
        form.entry("client_secret".into()).or_insert(secret);
    }
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

pub(super) async fn api(
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
