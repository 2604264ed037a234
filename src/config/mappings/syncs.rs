//! Syncs: what they pair, when they run, who wins, and whether their web service can do what they ask.

use super::*;

pub(super) fn compile_sync(
    d: &Decl<'_>,
    plan: &Plan,
    names: &Names<'_>,
    kinds: &Kinds,
    diags: &mut Diagnostics,
) -> Option<Sync> {
    let before = diags.len();
    let code = match SyncCode::parse(&d.key.name) {
        Ok(c) => Some(c),
        Err(e) => {
            diags.push(Diagnostic::error(
                format!("invalid sync code `{}`: {e}", d.key.name),
                d.key.span.clone(),
                "invalid code",
            ));
            None
        }
    };
    let t = as_table(&d.key.name, d.item, diags)?;
    check_keys(t, &SYNC_KEYS, diags);
    let what = format!("sync `{}`", d.key.name);
    let owner = &d.key.span;

    let (model, ext, ws) = references(t, plan, names, owner, &what, diags);
    // The kind of the external model (or, while it is unknown, of the web service).
    let kind = ext
        .map(|e| e.kind)
        .or(ws.map(|w| w.kind))
        .and_then(|k| kinds::find(kinds, k));
    let direction_item = entry(t, "direction");
    let direction = match enum_of(
        t,
        "direction",
        Direction::parse,
        &["to_external", "to_local", "bidirectional"],
        diags,
    ) {
        Some(Some(d)) => Some(d),
        Some(None) => {
            diags.push(
                Diagnostic::error(
                    format!("missing field `direction` in {what}"),
                    owner.clone(),
                    "`direction` is required",
                )
                .with_help("use \"to_external\", \"to_local\" or \"bidirectional\""),
            );
            None
        }
        None => None,
    };
    let mode = enum_of(t, "mode", Mode::parse, &["cron", "realtime"], diags)
        .map(|m| m.unwrap_or(Mode::Cron));
    let priority = enum_of(
        t,
        "priority",
        Priority::parse,
        &["local", "external", "newest"],
        diags,
    )
    .map(|p| p.unwrap_or(Priority::External));
    let (schedule, timezone) = schedule_of(t, mode, owner, &what, diags);
    let propagate_deletes = bool_of(t, "propagate_deletes", diags).unwrap_or(false);
    let active = bool_of(t, "active", diags).unwrap_or(true);
    let limit = limit_of(t, diags);
    let name = str_of(t, "name", diags)
        .map(|s| s.value.to_string())
        .unwrap_or_else(|| d.key.name.clone());

    let external_ref = external_ref_of(
        t,
        ext.and_then(|e| kind.map(|k| (e, (k.label(), k.identity(e))))),
        owner,
        &what,
        diags,
    );

    let domain = match (entry(t, "domain"), model) {
        (Some((_, item)), Some(m)) => compile_domain(item, m, diags),
        _ => Domain::All,
    };

    let fields = match (model, ext, direction) {
        (Some(m), Some(e), Some(dir)) => {
            let kind = kinds::find(kinds, e.kind).expect("a compiled model's kind is registered");
            pairs_of(t, m, (e, kind), dir, plan, names, diags)
        }
        (Some(m), Some(e), None) => {
            // The direction is wrong or missing (already reported). The pairs are compiled
            // for each direction, and the mistakes they have whatever the direction are
            // reported now, so one run shows every mistake.
            let kind = kinds::find(kinds, e.kind).expect("a compiled model's kind is registered");
            let mut common: Option<Vec<Diagnostic>> = None;
            for dir in [
                Direction::ToExternal,
                Direction::ToLocal,
                Direction::Bidirectional,
            ] {
                let mut scratch = diags.clone();
                let before = scratch.len();
                pairs_of(t, m, (e, kind), dir, plan, names, &mut scratch);
                let found = scratch.items.split_off(before);
                common = Some(match common {
                    None => found,
                    Some(kept) => kept
                        .into_iter()
                        .filter(|d| {
                            found
                                .iter()
                                .any(|f| f.message == d.message && f.span == d.span)
                        })
                        .collect(),
                });
            }
            for d in common.unwrap_or_default() {
                diags.push(d);
            }
            Vec::new()
        }
        _ => {
            // The pairs cannot be compiled without their model, external model and direction;
            // their keys are still checked.
            if let Some((items, _)) = array_of(t, "fields", diags) {
                for it in items {
                    if let Node::Table(pt) = &it.node {
                        check_keys(pt, &PAIR_KEYS, diags);
                    } else {
                        diags.push(wrong_type("fields", it, "a table"));
                    }
                }
            }
            Vec::new()
        }
    };
    let endpoints = match array_of(t, "endpoints", diags) {
        None => Vec::new(),
        Some((items, span)) => {
            if let Some(k) = kind.filter(|k| !k.takes_endpoints()) {
                let takers: Vec<&str> = kinds
                    .iter()
                    .filter(|k| k.takes_endpoints())
                    .map(|k| k.label())
                    .collect();
                diags.push(Diagnostic::error(
                    format!(
                        "`endpoints` only apply to {} web services",
                        takers.join(" and ")
                    ),
                    span,
                    format!("{} syncs write through their own API", k.name()),
                ));
                Vec::new()
            } else {
                compile_endpoints(items, diags)
            }
        }
    };

    let delete_mode = delete_mode_of(t, ext.zip(kind), kinds, diags);
    let reconcile = reconcile_of(t, ws.zip(ext).zip(kind), diags);
    let delete_guard = delete_guard_of(t, propagate_deletes, diags);
    let match_on = match_on_of(t, &fields, diags);
    let inbound_signing = signing_of(t, "inbound_signing_secret", diags);

    if let (Some(dir), Some(mode), Some(w)) = (direction, mode, ws) {
        let dir_span = direction_item
            .map(|(_, i)| i.span.clone())
            .unwrap_or_else(|| owner.clone());
        if let Some(k) = kinds::find(kinds, w.kind) {
            let check = SyncCheck {
                what: &what,
                direction: dir,
                mode,
                propagate_deletes,
                web_service: w,
                external: ext,
                endpoints: &endpoints,
                span: dir_span,
            };
            k.check_sync(&check, diags);
        }
    }

    if diags.len() != before {
        return None;
    }
    Some(Sync {
        code: code?,
        name,
        model: model?.name.clone(),
        external_model: ext?.name.clone(),
        web_service: ws?.name.clone(),
        direction: direction?,
        mode: mode?,
        schedule,
        timezone,
        priority: priority?,
        propagate_deletes,
        domain,
        limit,
        external_ref: external_ref?,
        active,
        fields,
        endpoints,
        delete_mode,
        reconcile,
        delete_guard,
        match_on,
        inbound_signing,
    })
}

/// `match_on`: local fields that identify a record on both sides, as one list (`["email"]`) or
/// a list of lists tried in order (`[["vat"], ["email"]]`). Each must be a field the sync
/// brings in from the external side.
fn match_on_of(t: &Table, pairs: &[FieldPair], diags: &mut Diagnostics) -> Vec<Vec<String>> {
    let Some((items, span)) = array_of(t, "match_on", diags) else {
        return Vec::new();
    };
    let field = |it: &Item, diags: &mut Diagnostics| -> Option<String> {
        let s = as_str("match_on", it, diags)?;
        if pairs
            .iter()
            .any(|p| p.local == s.value && p.direction.to_local())
        {
            Some(s.value.to_string())
        } else {
            let known: Vec<&str> = pairs
                .iter()
                .filter(|p| p.direction.to_local())
                .map(|p| p.local.as_str())
                .collect();
            diags.push(with_choices(
                Diagnostic::error(
                    format!(
                        "`match_on` names `{}`, which this sync does not bring in",
                        s.value
                    ),
                    s.span,
                    "not a local field of the sync's `fields` read from the external side",
                ),
                s.value,
                &known,
            ));
            None
        }
    };
    let mut groups = Vec::new();
    let nested = items.iter().any(|i| matches!(i.node, Node::Array(_)));
    if nested {
        for it in items {
            let Node::Array(inner) = &it.node else {
                diags.push(wrong_type("match_on", it, "a list of field names"));
                continue;
            };
            let group: Vec<String> = inner.iter().filter_map(|f| field(f, diags)).collect();
            if group.len() == inner.len() && !group.is_empty() {
                groups.push(group);
            }
        }
    } else {
        let group: Vec<String> = items.iter().filter_map(|f| field(f, diags)).collect();
        if group.len() == items.len() && !group.is_empty() {
            groups.push(group);
        }
    }
    if items.is_empty() {
        diags.push(Diagnostic::error(
            "`match_on` is empty",
            span,
            "name at least one field",
        ));
    }
    groups
}

/// `reconcile`: how often to compare both sides in full. Only a web service that can list
/// every id can (the kind says).
fn reconcile_of(
    t: &Table,
    sides: Option<((&WebService, &ExternalModel), &dyn Kind)>,
    diags: &mut Diagnostics,
) -> Option<Duration> {
    let every = duration_of(t, "reconcile", diags)?;
    if let Some(((w, e), kind)) = sides
        && let Some((message, help)) = kind.cannot_reconcile(w, e)
    {
        let (_, item) = entry(t, "reconcile").expect("read above");
        diags
            .push(Diagnostic::error(message, item.span.clone(), "needs a listing").with_help(help));
        return None;
    }
    Some(every)
}

/// `delete_guard`: `{ max = N, max_ratio = R, min = M }`. Where deletes propagate and no guard
/// is given, `{ max_ratio = 0.2 }` applies.
fn delete_guard_of(
    t: &Table,
    propagate_deletes: bool,
    diags: &mut Diagnostics,
) -> Option<DeleteGuard> {
    let Some((g, _)) = table_of(t, "delete_guard", diags) else {
        return propagate_deletes.then(DeleteGuard::default);
    };
    check_keys(g, &DELETE_GUARD_KEYS, diags);
    let mut guard = DeleteGuard {
        max: None,
        max_ratio: None,
        min: DeleteGuard::default().min,
    };
    let count = |key: &str, diags: &mut Diagnostics| match int_of(g, key, diags) {
        Some((n, _)) if n >= 0 => Some(n as u64),
        Some((_, span)) => {
            diags.push(Diagnostic::error(
                format!("`delete_guard.{key}` must be zero or more"),
                span,
                "negative",
            ));
            None
        }
        None => None,
    };
    guard.max = count("max", diags);
    if let Some(m) = count("min", diags) {
        guard.min = m;
    }
    if let Some((_, item)) = entry(g, "max_ratio") {
        let ratio = match &item.node {
            Node::Float(f) => Some(*f),
            Node::Int(i) => Some(*i as f64),
            _ => {
                diags.push(wrong_type("max_ratio", item, "a number between 0 and 1"));
                None
            }
        };
        match ratio {
            Some(r) if (0.0..=1.0).contains(&r) => guard.max_ratio = Some(r),
            Some(r) => diags.push(Diagnostic::error(
                format!("`delete_guard.max_ratio` must be between 0 and 1, not {r}"),
                item.span.clone(),
                "out of range",
            )),
            None => {}
        }
    }
    if guard.max.is_none() && guard.max_ratio.is_none() {
        let (_, item) = entry(t, "delete_guard").expect("read above");
        diags.push(
            Diagnostic::error(
                "`delete_guard` needs `max`, `max_ratio` or both",
                item.span.clone(),
                "no limit",
            )
            .with_help("for example `delete_guard = { max = 50, max_ratio = 0.05 }`"),
        );
        return None;
    }
    Some(guard)
}

/// `delete_mode`: `delete` (the default) or `archive`, which only some kinds can do.
fn delete_mode_of(
    t: &Table,
    model: Option<(&ExternalModel, &dyn Kind)>,
    kinds: &Kinds,
    diags: &mut Diagnostics,
) -> DeleteMode {
    let parse = |s: &str| match s {
        "delete" => Some(DeleteMode::Delete),
        "archive" => Some(DeleteMode::Archive),
        _ => None,
    };
    let mode = enum_of(t, "delete_mode", parse, &["delete", "archive"], diags)
        .flatten()
        .unwrap_or(DeleteMode::Delete);
    if let (DeleteMode::Archive, Some((e, k))) = (mode, model)
        && !k.can_archive(Some(e))
    {
        let (_, item) = entry(t, "delete_mode").expect("read above");
        let archivers: Vec<&str> = kinds
            .iter()
            .filter(|k| k.can_archive(None))
            .map(|k| k.label())
            .collect();
        diags.push(Diagnostic::error(
            format!("{} external models cannot archive records", k.name()),
            item.span.clone(),
            format!(
                "only {} syncs can use delete_mode = \"archive\"",
                archivers.join(" and ")
            ),
        ));
    }
    mode
}

/// The model, external model and web service a sync names, each checked to exist, and the
/// external model's kind against the web service's.
fn references<'p>(
    t: &Table,
    plan: &'p Plan,
    names: &Names<'_>,
    owner: &Span,
    what: &str,
    diags: &mut Diagnostics,
) -> (
    Option<&'p Model>,
    Option<&'p ExternalModel>,
    Option<&'p WebService>,
) {
    let model_s = required_str(t, "model", owner, what, diags);
    let ext_s = required_str(t, "external_model", owner, what, diags);
    let ws_s = required_str(t, "web_service", owner, what, diags);
    let model = model_s.as_ref().and_then(|s| {
        let m = plan.models.get(s.value);
        if m.is_none() && !names.models.contains(&s.value) {
            diags.push(unknown_name("model", s.value, s.span.clone(), names.models));
        }
        m
    });
    let ext = ext_s.as_ref().and_then(|s| {
        let m = plan.external_models.get(s.value);
        if m.is_none() && !names.ext_models.contains(&s.value) {
            diags.push(unknown_name(
                "external model",
                s.value,
                s.span.clone(),
                &names.ext_models,
            ));
        }
        m
    });
    let ws = ws_s.as_ref().and_then(|s| {
        let w = plan.web_services.get(s.value);
        if w.is_none() && !names.services.contains(&s.value) {
            diags.push(unknown_name(
                "web service",
                s.value,
                s.span.clone(),
                &names.services,
            ));
        }
        w
    });
    if let (Some(e), Some(w), Some(s)) = (ext, ws, &ws_s)
        && e.kind != w.kind
    {
        diags.push(Diagnostic::error(
            format!(
                "web service `{}` is {} but external model `{}` is {}",
                w.name, w.kind, e.name, e.kind
            ),
            s.span.clone(),
            "kinds differ",
        ));
    }

    (model, ext, ws)
}

/// When a cron sync runs: `schedule` (cron, six fields) or `every`, never both, in `timezone`
/// (UTC by default). A cron sync needs one of the two.
fn schedule_of(
    t: &Table,
    mode: Option<Mode>,
    owner: &Span,
    what: &str,
    diags: &mut Diagnostics,
) -> (Option<Schedule>, chrono_tz::Tz) {
    let timezone = match str_of(t, "timezone", diags) {
        None => chrono_tz::UTC,
        Some(s) => s.value.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            diags.push(
                Diagnostic::error(
                    format!("unknown time zone `{}`", s.value),
                    s.span.clone(),
                    "not an IANA time zone",
                )
                .with_help("use a name such as `UTC` or `Europe/Madrid`"),
            );
            chrono_tz::UTC
        }),
    };
    let cron = str_of(t, "schedule", diags).and_then(|s| match CronSpec::parse(s.value) {
        Ok(c) => Some(c),
        Err(e) => {
            diags.push(
                Diagnostic::error(
                    format!("invalid cron expression {}: {e}", s.shown()),
                    s.span.clone(),
                    "bad schedule",
                )
                .with_help("use six fields with seconds, such as \"0 */15 * * * *\""),
            );
            None
        }
    });
    let every = duration_of(t, "every", diags);
    let schedule = match (cron, every) {
        (Some(c), None) => Some(Schedule::Cron(Box::new(c))),
        (None, Some(e)) => Some(Schedule::Every(e)),
        (Some(_), Some(_)) => {
            let (k, _) = entry(t, "every").expect("read above");
            diags.push(Diagnostic::error(
                "`schedule` and `every` are mutually exclusive",
                k.span.clone(),
                "remove one of the two",
            ));
            None
        }
        (None, None) => None,
    };
    if mode == Some(Mode::Cron) && entry(t, "schedule").is_none() && entry(t, "every").is_none() {
        let span = entry(t, "mode")
            .map(|(_, i)| i.span.clone())
            .unwrap_or_else(|| owner.clone());
        diags.push(
            Diagnostic::error(
                format!("cron {what} needs `schedule` or `every`"),
                span,
                "no schedule",
            )
            .with_help(
                "add schedule = \"0 */15 * * * *\" or every = \"15m\", or use mode = \"realtime\"",
            ),
        );
    }
    (schedule, timezone)
}

/// Records per page, 1 to `MAX_LIMIT` (100 by default).
fn limit_of(t: &Table, diags: &mut Diagnostics) -> usize {
    match int_of(t, "limit", diags) {
        None => 100,
        Some((n, _)) if (1..=MAX_LIMIT).contains(&n) => n as usize,
        Some((_, span)) => {
            diags.push(Diagnostic::error(
                format!("`limit` must be between 1 and {MAX_LIMIT}"),
                span,
                "out of range",
            ));
            100
        }
    }
}

/// The external field holding the record's id: a field of the external model, named by the
/// sync or given by the kind ([`Identity`]).
fn external_ref_of(
    t: &Table,
    ext: Option<(&ExternalModel, (&str, Identity))>,
    owner: &Span,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<String> {
    match (str_of(t, "external_ref", diags), ext) {
        (Some(s), Some((_, (label, Identity::Fixed(id))))) if s.value != id.as_str() => {
            diags.push(Diagnostic::error(
                format!(
                    "{label} records are identified by `{id}`, not `{}`",
                    s.value
                ),
                s.span.clone(),
                format!("use external_ref = \"{id}\" (the default)"),
            ));
            None
        }
        (Some(s), Some((e, _))) => {
            if !e.fields.contains_key(s.value) {
                let names: Vec<&str> = e.fields.keys().map(String::as_str).collect();
                diags.push(with_choices(
                    Diagnostic::error(
                        format!("unknown field `{}` on external model `{}`", s.value, e.name),
                        s.span.clone(),
                        "not an external field",
                    ),
                    s.value,
                    &names,
                ));
            }
            Some(s.value.to_string())
        }
        (None, Some((_, (_, Identity::Fixed(id) | Identity::Default(id))))) => Some(id),
        (None, Some((e, (_, Identity::DefaultIfDeclared(id))))) if e.fields.contains_key(&id) => {
            Some(id)
        }
        (None, _) if entry(t, "external_ref").is_none() => {
            diags.push(
                Diagnostic::error(
                    format!("missing field `external_ref` in {what}"),
                    owner.clone(),
                    "`external_ref` is required",
                )
                .with_help("name the external field that holds the record's id"),
            );
            None
        }
        (s, _) => s.map(|s| s.value.to_string()),
    }
}

/// The sync's field pairs.
fn pairs_of(
    t: &Table,
    model: &Model,
    (ext, kind): (&ExternalModel, &dyn Kind),
    direction: Direction,
    plan: &Plan,
    names: &Names<'_>,
    diags: &mut Diagnostics,
) -> Vec<FieldPair> {
    let mut fields = Vec::new();
    if let Some((items, _)) = array_of(t, "fields", diags) {
        for it in items {
            if let Some(p) = compile_pair(it, model, (ext, kind), direction, plan, names, diags) {
                fields.push(p);
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sync's table from TOML text, and the diagnostics so far.
    fn table(text: &str) -> (Table, Diagnostics) {
        let mut diags = Diagnostics::default();
        let env: std::collections::HashMap<String, String> = Default::default();
        let t = crate::config::source::parse_file(0, text, &env, &mut diags).expect("valid TOML");
        assert!(diags.is_empty());
        (t, diags)
    }

    fn messages(diags: &Diagnostics) -> Vec<String> {
        diags.items.iter().map(|d| d.message.clone()).collect()
    }

    #[derive(Debug)]
    struct Settings;
    impl ModelSettings for Settings {}

    fn external(kind: &'static str) -> ExternalModel {
        ExternalModel {
            name: "ext".into(),
            label: None,
            kind,
            fields: [("uid".to_string(), FieldType::Char)].into_iter().collect(),
            settings: std::sync::Arc::new(Settings),
        }
    }

    #[test]
    fn a_schedule_is_every_or_cron_never_both_and_a_cron_sync_needs_one() {
        let (t, mut diags) = table("every = \"15m\"\ntimezone = \"Europe/Madrid\"");
        let (schedule, tz) = schedule_of(
            &t,
            Some(Mode::Cron),
            &Span::nowhere(),
            "sync `A`",
            &mut diags,
        );
        assert!(matches!(schedule, Some(Schedule::Every(d)) if d == Duration::from_secs(900)));
        assert_eq!(tz, chrono_tz::Europe::Madrid);
        assert!(diags.is_empty());

        let (t, mut diags) = table("every = \"15m\"\nschedule = \"0 * * * * *\"");
        let (schedule, _) = schedule_of(
            &t,
            Some(Mode::Cron),
            &Span::nowhere(),
            "sync `A`",
            &mut diags,
        );
        assert!(schedule.is_none());
        assert_eq!(
            messages(&diags),
            ["`schedule` and `every` are mutually exclusive"]
        );

        let (t, mut diags) = table("");
        let (_, tz) = schedule_of(
            &t,
            Some(Mode::Cron),
            &Span::nowhere(),
            "sync `A`",
            &mut diags,
        );
        assert_eq!(tz, chrono_tz::UTC);
        assert_eq!(
            messages(&diags),
            ["cron sync `A` needs `schedule` or `every`"]
        );
        let (t, mut diags) = table("");
        schedule_of(
            &t,
            Some(Mode::Realtime),
            &Span::nowhere(),
            "sync `A`",
            &mut diags,
        );
        assert!(diags.is_empty(), "a real-time sync needs no schedule");

        let (t, mut diags) = table("every = \"1m\"\ntimezone = \"Mars/Olympus\"");
        schedule_of(
            &t,
            Some(Mode::Cron),
            &Span::nowhere(),
            "sync `A`",
            &mut diags,
        );
        assert_eq!(messages(&diags), ["unknown time zone `Mars/Olympus`"]);
    }

    #[test]
    fn the_limit_is_between_one_and_the_maximum_and_defaults_to_100() {
        let (t, mut diags) = table("");
        assert_eq!(limit_of(&t, &mut diags), 100);
        let (t, mut diags) = table("limit = 50");
        assert_eq!(limit_of(&t, &mut diags), 50);
        assert!(diags.is_empty());
        for bad in ["limit = 0", "limit = 10001"] {
            let (t, mut diags) = table(bad);
            limit_of(&t, &mut diags);
            assert_eq!(
                messages(&diags),
                [format!("`limit` must be between 1 and {MAX_LIMIT}")],
                "{bad}"
            );
        }
    }

    #[test]
    fn the_external_ref_names_an_external_field_and_dropbox_defaults_to_id() {
        let plain = external("plain");
        let rest = Some((&plain, ("Plain", Identity::Required)));
        let (t, mut diags) = table("external_ref = \"uid\"");
        let r = external_ref_of(&t, rest.clone(), &Span::nowhere(), "sync `A`", &mut diags);
        assert_eq!(r.as_deref(), Some("uid"));
        assert!(diags.is_empty());

        let (t, mut diags) = table("external_ref = \"uuid\"");
        external_ref_of(&t, rest.clone(), &Span::nowhere(), "sync `A`", &mut diags);
        assert_eq!(
            messages(&diags),
            ["unknown field `uuid` on external model `ext`"]
        );

        let (t, mut diags) = table("");
        assert_eq!(
            external_ref_of(&t, rest.clone(), &Span::nowhere(), "sync `A`", &mut diags),
            None
        );
        assert_eq!(
            messages(&diags),
            ["missing field `external_ref` in sync `A`"]
        );

        let folders = external("folders");
        let dbx = Some((&folders, ("Folder", Identity::Default("id".into()))));
        let (t, mut diags) = table("");
        let r = external_ref_of(&t, dbx, &Span::nowhere(), "sync `A`", &mut diags);
        assert_eq!(r.as_deref(), Some("id"));
        assert!(diags.is_empty());
    }
}
