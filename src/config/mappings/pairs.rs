//! Field pairs (with value maps and references) and configured endpoints.

use super::transforms::{Way, compile_expression};
use super::*;

pub(super) fn compile_pair(
    item: &Item,
    model: &Model,
    (ext, kind): (&ExternalModel, &dyn Kind),
    sync_dir: Direction,
    plan: &Plan,
    names: &Names<'_>,
    diags: &mut Diagnostics,
) -> Option<FieldPair> {
    let t = as_table("fields", item, diags)?;
    let before = diags.len();
    check_keys(t, &PAIR_KEYS, diags);
    let to_local_s = str_of(t, "to_local", diags);
    let to_external_s = str_of(t, "to_external", diags);
    let transformed = to_local_s.is_some() || to_external_s.is_some();
    // With an expression, one of the two fields may be left out (a computed field).
    let (local_s, ext_s) = if transformed {
        let (l, e) = (str_of(t, "local", diags), str_of(t, "external", diags));
        if l.is_none()
            && e.is_none()
            && entry(t, "local").is_none()
            && entry(t, "external").is_none()
        {
            diags.push(Diagnostic::error(
                "a field pair needs `local`, `external` or both",
                item.span.clone(),
                "neither is given",
            ));
        }
        (l, e)
    } else {
        (
            required_str(t, "local", &item.span, "field pair", diags),
            required_str(t, "external", &item.span, "field pair", diags),
        )
    };
    let local_names: Vec<&str> = model.fields.keys().map(String::as_str).collect();
    let local = local_s.as_ref().and_then(|s| {
        let f = model.fields.get(s.value);
        if f.is_none() && !diags.is_broken(&model.name, s.value) {
            diags.push(with_choices(
                Diagnostic::error(
                    format!("unknown field `{}` on model `{}`", s.value, model.name),
                    s.span.clone(),
                    "not a field of this model",
                ),
                s.value,
                &local_names,
            ));
        }
        f
    });
    let direction = match enum_of(
        t,
        "direction",
        Direction::parse,
        &["to_external", "to_local", "bidirectional"],
        diags,
    ) {
        Some(Some(d)) => {
            if !d.within(sync_dir) {
                let (_, i) = entry(t, "direction").expect("read above");
                diags.push(Diagnostic::error(
                    format!(
                        "field direction `{}` is wider than the sync's direction `{}`",
                        d.as_str(),
                        sync_dir.as_str()
                    ),
                    i.span.clone(),
                    "a field pair may narrow the direction, never widen it",
                ));
            }
            d
        }
        _ => sync_dir,
    };
    let computed_local = transformed && local_s.is_some() && ext_s.is_none();
    let computed_external = transformed && ext_s.is_some() && local_s.is_none();
    let direction = if computed_local || computed_external {
        computed_direction(
            t,
            item,
            computed_local,
            &to_local_s,
            &to_external_s,
            sync_dir,
            diags,
        )
    } else {
        if let (true, Some(l), Some(e)) = (transformed, &local_s, &ext_s) {
            check_two_way(l, e, direction, &to_local_s, &to_external_s, diags);
        }
        direction
    };
    let (external, external_type) = match &ext_s {
        None => (None, None),
        Some(s) if s.value.starts_with('$') => match JsonPath::parse(s.value) {
            Ok(p) => {
                if direction.to_external() && !p.is_buildable() {
                    diags.push(
                        Diagnostic::error(
                            format!("JSONPath `{}` cannot be built when sending", s.value),
                            s.span.clone(),
                            "not a plain member path",
                        )
                        .with_help("only paths like `$.address.city` can be sent; add direction = \"to_local\" to this pair"),
                    );
                }
                (Some(ExternalField::Path(p)), None)
            }
            Err(e) => {
                let _ = e;
                diags.push(Diagnostic::error(
                    format!("invalid JSONPath `{}`", s.value),
                    s.span.clone(),
                    "not a valid RFC 9535 JSONPath",
                ));
                (None, None)
            }
        },
        Some(s) => match kind.undeclared_name(ext, s, diags) {
            Some(true) => (Some(ExternalField::Name(s.value.to_string())), None),
            Some(false) => (None, None),
            None => match ext.fields.get(s.value) {
                Some(ty) => (
                    Some(ExternalField::Name(s.value.to_string())),
                    Some(ty.clone()),
                ),
                None => {
                    let names: Vec<&str> = ext.fields.keys().map(String::as_str).collect();
                    diags.push(with_choices(
                        Diagnostic::error(
                            format!(
                                "unknown field `{}` on external model `{}`",
                                s.value, ext.name
                            ),
                            s.span.clone(),
                            "not an external field",
                        ),
                        s.value,
                        &names,
                    ));
                    (None, None)
                }
            },
        },
    };

    let ref_field = str_of(t, "ref_field", diags);
    let ref_sync = str_of(t, "ref_sync", diags);
    let mut reference = Reference::None;
    if let (Some(_), Some(rs)) = (&ref_field, &ref_sync) {
        diags.push(Diagnostic::error(
            "`ref_field` and `ref_sync` are mutually exclusive",
            rs.span.clone(),
            "remove one of the two",
        ));
    } else if let Some(lf) = local {
        let related = lf.ty.related_model();
        for r in ref_field.iter().chain(ref_sync.iter()) {
            if related.is_none() {
                let key = if ref_field.is_some() {
                    "ref_field"
                } else {
                    "ref_sync"
                };
                diags.push(Diagnostic::error(
                    format!(
                        "`{key}` needs a relational field, but `{}` is {}",
                        lf.name,
                        lf.ty.name()
                    ),
                    r.span.clone(),
                    "not a relational field",
                ));
            }
        }
        if let Some(related) = related {
            if let Some(rf) = &ref_field {
                match plan.models.get(related) {
                    Some(rm) if rm.field_type(rf.value).is_some() => {
                        reference = Reference::Field(rf.value.to_string())
                    }
                    Some(rm) => {
                        let names: Vec<&str> = rm.fields.keys().map(String::as_str).collect();
                        diags.push(with_choices(
                            Diagnostic::error(
                                format!("unknown field `{}` on model `{related}`", rf.value),
                                rf.span.clone(),
                                "not a field of the related model",
                            ),
                            rf.value,
                            &names,
                        ));
                    }
                    None => {}
                }
            }
            if let Some(rs) = &ref_sync {
                match names.syncs.get(rs.value) {
                    None => {
                        let codes: Vec<&str> = names.syncs.keys().copied().collect();
                        diags.push(unknown_name("sync", rs.value, rs.span.clone(), &codes));
                    }
                    Some(Some(m)) if *m != related => diags.push(Diagnostic::error(
                        format!(
                            "sync `{}` syncs model `{m}`, but `{}` relates to model `{related}`",
                            rs.value, lf.name
                        ),
                        rs.span.clone(),
                        "wrong model",
                    )),
                    Some(_) => {
                        if let Ok(code) = SyncCode::parse(rs.value) {
                            reference = Reference::Sync(code);
                        }
                    }
                }
            }
        }
    }

    let map = match (table_of(t, "map", diags), local) {
        (Some((mt, span)), Some(lf)) => {
            if transformed {
                diags.push(
                    Diagnostic::error(
                        "a field pair takes `map` or an expression, not both",
                        span.clone(),
                        "a value table",
                    )
                    .with_help(
                        "write the table in the expression, or drop `to_local`/`to_external`",
                    ),
                );
            }
            compile_map(mt, lf, diags)
        }
        _ => None,
    };
    if let Some(lf) = local
        && transformed
        && lf.ty.is_relational()
    {
        let s = to_local_s
            .as_ref()
            .or(to_external_s.as_ref())
            .expect("transformed");
        diags.push(Diagnostic::error(
            format!(
                "`{}` is {}: a relational field cannot be computed by an expression",
                lf.name,
                lf.ty.name()
            ),
            s.span.clone(),
            "an expression on a relational field",
        ));
    }
    let has_value = local_s.is_some() && ext_s.is_some();
    let to_local = to_local_s
        .as_ref()
        .filter(|_| direction.to_local())
        .and_then(|s| compile_expression(s, Way::ToLocal, has_value, model, ext, kind, diags));
    let to_external = to_external_s
        .as_ref()
        .filter(|_| direction.to_external())
        .and_then(|s| compile_expression(s, Way::ToExternal, has_value, model, ext, kind, diags));
    if diags.len() != before {
        return None;
    }
    let (local_name, local_type) = match local {
        Some(lf) => (lf.name.clone(), lf.ty.clone()),
        None if computed_external => (String::new(), FieldType::Char),
        None => return None,
    };
    let external = if computed_local {
        ExternalField::Computed
    } else {
        external?
    };
    Some(FieldPair {
        local: local_name,
        local_type,
        external,
        external_type,
        direction,
        reference,
        map,
        to_local,
        to_external,
    })
}

/// The direction of a computed field: a computed local field only receives (`to_local`), a
/// computed external field only sends (`to_external`), and the sync must go that way.
fn computed_direction(
    t: &Table,
    item: &Item,
    computed_local: bool,
    to_local_s: &Option<Str<'_>>,
    to_external_s: &Option<Str<'_>>,
    sync_dir: Direction,
    diags: &mut Diagnostics,
) -> Direction {
    let (want, what, needs, has_not) = if computed_local {
        (
            Direction::ToLocal,
            "a computed local field (no `external`)",
            to_local_s,
            to_external_s,
        )
    } else {
        (
            Direction::ToExternal,
            "a computed external field (no `local`)",
            to_external_s,
            to_local_s,
        )
    };
    let key = want.as_str();
    if needs.is_none() {
        diags.push(Diagnostic::error(
            format!("{what} needs `{key}`"),
            item.span.clone(),
            format!("no `{key}` expression"),
        ));
    }
    if let Some(other) = has_not {
        let other_key = if computed_local {
            "to_external"
        } else {
            "to_local"
        };
        diags.push(
            Diagnostic::error(
                format!("{what} only goes {key}, so `{other_key}` has nothing to write"),
                other.span.clone(),
                "never used",
            )
            .with_help("pair both fields (`local` and `external`) to write it the other way too"),
        );
    }
    if let Some((_, i)) = entry(t, "direction")
        && !matches!(&i.node, Node::Str { value, .. } if Direction::parse(value) == Some(want))
    {
        diags.push(Diagnostic::error(
            format!("{what} goes `{key}`"),
            i.span.clone(),
            "another direction",
        ));
    } else if !want.within(sync_dir) {
        diags.push(Diagnostic::error(
            format!(
                "{what} goes `{key}`, but the sync's direction is `{}`",
                sync_dir.as_str()
            ),
            needs.as_ref().map_or(item.span.clone(), |s| s.span.clone()),
            "the sync does not go this way",
        ));
    }
    want
}

/// A pair of two fields with expressions: two-way only with both (or neither), and an
/// expression for a direction the pair does not go is a mistake.
fn check_two_way(
    l: &Str<'_>,
    e: &Str<'_>,
    direction: Direction,
    to_local_s: &Option<Str<'_>>,
    to_external_s: &Option<Str<'_>>,
    diags: &mut Diagnostics,
) {
    match (direction, to_local_s, to_external_s) {
        (Direction::Bidirectional, Some(one), None)
        | (Direction::Bidirectional, None, Some(one)) => {
            let (has, lacks, narrow) = if to_local_s.is_some() {
                ("to_local", "to_external", "to_local")
            } else {
                ("to_external", "to_local", "to_external")
            };
            diags.push(
                Diagnostic::error(
                    format!(
                        "two-way pair `{}` <-> `{}` has `{has}` but no `{lacks}`",
                        l.value, e.value
                    ),
                    one.span.clone(),
                    "one direction only",
                )
                .with_help(format!(
                    "add `{lacks}` with the inverse expression, or set direction = \"{narrow}\""
                )),
            );
        }
        (Direction::ToLocal, _, Some(x)) | (Direction::ToExternal, Some(x), _) => {
            let key = if direction == Direction::ToLocal {
                "to_external"
            } else {
                "to_local"
            };
            diags.push(
                Diagnostic::error(
                    format!(
                        "`{key}` is never used: the pair goes `{}` only",
                        direction.as_str()
                    ),
                    x.span.clone(),
                    "never used",
                )
                .with_help("remove it, or widen the pair's `direction`"),
            );
        }
        _ => {}
    }
}

pub(super) fn compile_map(t: &Table, field: &Field, diags: &mut Diagnostics) -> Option<ValueMap> {
    let mut pairs = Vec::new();
    let mut spans = Vec::new();
    for (k, v) in t {
        let local = match coerce(&field.ty, &serde_json::Value::String(k.name.clone())) {
            Ok(l) => l,
            Err(e) => {
                diags.push(Diagnostic::error(
                    format!(
                        "map key `{}` is not a valid value of `{}`: {e}",
                        k.name, field.name
                    ),
                    k.span.clone(),
                    "invalid local value",
                ));
                continue;
            }
        };
        pairs.push((local, to_json(v)));
        spans.push((k.name.clone(), v.span.clone()));
    }
    match ValueMap::new(pairs.clone()) {
        Ok(m) => Some(m),
        Err(i) => {
            let first = pairs[..i]
                .iter()
                .position(|(_, e)| *e == pairs[i].1)
                .expect("a repeat");
            diags.push(
                Diagnostic::error(
                    format!(
                        "`map` is not one-to-one: `{}` and `{}` both map to {}",
                        spans[first].0, spans[i].0, pairs[i].1
                    ),
                    spans[i].1.clone(),
                    "repeated external value",
                )
                .with_related(spans[first].1.clone(), "first used here"),
            );
            None
        }
    }
}

pub(super) fn compile_endpoints(items: &[Item], diags: &mut Diagnostics) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for it in items {
        let Some(t) = as_table("endpoints", it, diags) else {
            continue;
        };
        check_keys(t, &ENDPOINT_KEYS, diags);
        let action = required_str(t, "action", &it.span, "endpoint", diags).and_then(|s| {
            EndpointAction::parse(s.value)
                .map(|a| (a, s.span.clone()))
                .or_else(|| {
                    diags.push(unknown_name(
                        "endpoint action",
                        s.value,
                        s.span.clone(),
                        &["create", "write", "unlink"],
                    ));
                    None
                })
        });
        let method = required_str(t, "method", &it.span, "endpoint", diags).and_then(|s| {
            let m = s.value.to_ascii_uppercase();
            if METHODS.contains(&m.as_str()) {
                Some(m)
            } else {
                diags.push(unknown_name(
                    "HTTP method",
                    s.value,
                    s.span.clone(),
                    &METHODS,
                ));
                None
            }
        });
        let url = required_str(t, "url", &it.span, "endpoint", diags).and_then(|s| {
            let filled = s.value.replace("{external_id}", "x");
            if let Some(pos) = filled.find('{') {
                let end = filled[pos..]
                    .find('}')
                    .map(|e| pos + e + 1)
                    .unwrap_or(filled.len());
                diags.push(
                    Diagnostic::error(
                        format!(
                            "unknown placeholder `{}` in endpoint URL",
                            &filled[pos..end]
                        ),
                        s.span.clone(),
                        "unknown placeholder",
                    )
                    .with_help("only `{external_id}` is filled in"),
                );
                return None;
            }
            check_url(
                "url",
                &Str {
                    value: &filled,
                    secret: s.secret,
                    span: s.span.clone(),
                },
                diags,
            )
            .map(|_| cfg_str(&s))
        });
        let response_id = jsonpath_of(t, "response_id", diags);
        let active = bool_of(t, "active", diags).unwrap_or(true);
        let (Some((action, span)), Some(method), Some(url)) = (action, method, url) else {
            continue;
        };
        if active && out.iter().any(|e| e.active && e.action == action) {
            diags.push(Diagnostic::error(
                format!(
                    "two active endpoints for action `{}`",
                    format!("{action:?}").to_lowercase()
                ),
                span,
                "repeated action",
            ));
            continue;
        }
        out.push(Endpoint {
            action,
            method,
            url,
            response_id,
            active,
        });
    }
    out
}
