//! External models: fields, the Dropbox folder of a Dropbox model, and the Odoo model, domain
//! and fields of an Odoo one.

use super::*;
use serde_json::Value;

pub(super) fn compile_external_model(
    d: &Decl<'_>,
    diags: &mut Diagnostics,
) -> Option<ExternalModel> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "external model", diags);
    let t = as_table(&name, d.item, diags)?;
    check_keys(t, &EXT_MODEL_KEYS, diags);
    let kind = kind_of(t, diags)?;
    let label = str_of(t, "name", diags).map(|s| s.value.to_string());
    let mut fields = BTreeMap::new();
    let mut odoo_fields = BTreeMap::new();
    if kind == ServiceKind::Odoo {
        if let Some((ft, _)) = table_of(t, "fields", diags) {
            for (k, item) in ft {
                if let Some(f) = compile_odoo_field(k, item, diags) {
                    fields.insert(k.name.clone(), recsync_type(&f.ttype));
                    odoo_fields.insert(k.name.clone(), f);
                }
            }
        }
    } else if let Some((ft, _)) = table_of(t, "fields", diags) {
        for (k, item) in ft {
            let Some(f) = compile_field(k, item, &[], diags) else {
                continue;
            };
            if f.ty.is_relational() {
                diags.push(Diagnostic::error(
                    format!("external field `{}` cannot be relational", f.name),
                    item.span.clone(),
                    "relations are declared on the local side",
                ));
                continue;
            }
            fields.insert(f.name, f.ty);
        }
    }
    let mut dropbox = None;
    let mut odoo = None;
    if kind != ServiceKind::Odoo {
        for key in ["odoo_model", "domain", "archived"] {
            if let Some((k, _)) = entry(t, key) {
                diags.push(Diagnostic::error(
                    format!("`{key}` only applies to Odoo external models"),
                    k.span.clone(),
                    format!("this external model is {}", kind.as_str()),
                ));
            }
        }
    }
    if kind != ServiceKind::Dropbox {
        for key in ["root", "recursive", "pattern"] {
            if let Some((k, _)) = entry(t, key) {
                diags.push(Diagnostic::error(
                    format!("`{key}` only applies to Dropbox external models"),
                    k.span.clone(),
                    format!("this external model is {}", kind.as_str()),
                ));
            }
        }
    }
    match kind {
        ServiceKind::Odoo => {
            let what = format!("external model `{name}`");
            let model = required_str(t, "odoo_model", &d.key.span, &what, diags);
            if entry(t, "fields").is_none() {
                diags.push(
                    Diagnostic::error(
                        format!("external model `{name}` has no `fields`"),
                        d.key.span.clone(),
                        "declare the Odoo fields the sync reads",
                    )
                    .with_help("`recsync discover <web_service> <odoo model>` prints them"),
                );
            }
            let domain = match entry(t, "domain") {
                None => Vec::new(),
                Some((_, item)) => odoo_domain(item, diags),
            };
            let archived = enum_of(
                t,
                "archived",
                Archived::parse,
                &["unlink", "delete", "keep"],
                diags,
            )
            .flatten()
            .unwrap_or(Archived::Unlink);
            // Records are identified by `id`, and pulls follow `write_date`.
            for (f, ty) in [("id", "integer"), ("write_date", "datetime")] {
                fields
                    .entry(f.to_string())
                    .or_insert_with(|| recsync_type(ty));
                odoo_fields.entry(f.to_string()).or_insert(OdooField {
                    ttype: ty.into(),
                    relation: None,
                });
            }
            odoo = model.map(|m| OdooModel {
                model: m.value.to_string(),
                domain,
                archived,
                fields: odoo_fields,
            });
        }
        ServiceKind::Rest => {
            if entry(t, "fields").is_none() {
                diags.push(Diagnostic::error(
                    format!("external model `{name}` has no `fields`"),
                    d.key.span.clone(),
                    "declare the external system's fields",
                ));
            }
        }
        ServiceKind::Dropbox => {
            let root = match str_of(t, "root", diags) {
                None => String::new(),
                Some(s)
                    if s.value.is_empty()
                        || (s.value.starts_with('/') && !s.value.ends_with('/')) =>
                {
                    s.value.to_string()
                }
                Some(s) => {
                    diags.push(
                        Diagnostic::error(format!("invalid Dropbox root {}", s.shown()), s.span, "not a folder path")
                            .with_help("use `\"\"` for the whole account, or a path like `/DMS/Students` (no trailing `/`)"),
                    );
                    String::new()
                }
            };
            let recursive = bool_of(t, "recursive", diags).unwrap_or(false);
            let pattern =
                str_of(t, "pattern", diags).and_then(|s| match PathPattern::parse(s.value) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        diags.push(Diagnostic::error(
                            format!("invalid path pattern: {e}"),
                            s.span,
                            "bad pattern",
                        ));
                        None
                    }
                });
            if let Some(p) = &pattern {
                if p.segments.len() > 1 && !recursive {
                    let (k, _) = entry(t, "pattern").expect("read above");
                    diags.push(
                        Diagnostic::error(
                            "a pattern with several segments needs `recursive = true`",
                            k.span.clone(),
                            "nested pattern",
                        )
                        .with_help("without it only the root's direct entries are listed"),
                    );
                }
                for c in p.captures() {
                    fields.entry(c.to_string()).or_insert(FieldType::Char);
                }
            }
            for (f, ty) in DROPBOX_ENTRY_FIELDS.iter() {
                fields.insert(f.to_string(), ty.clone());
            }
            fields.insert("content".into(), FieldType::Binary);
            dropbox = Some(DropboxFolder {
                root,
                recursive,
                pattern,
            });
        }
    }
    ok_name.then_some(ExternalModel {
        name,
        label,
        kind,
        fields,
        dropbox,
        odoo,
    })
}

/// An Odoo field: its Odoo type (`char`, `many2one` ...), with `relation` for relational ones.
fn compile_odoo_field(k: &Key, item: &Item, diags: &mut Diagnostics) -> Option<OdooField> {
    let empty = Table::new();
    let (ty, t) = match &item.node {
        Node::Str { .. } => (as_str(&k.name, item, diags)?, &empty),
        Node::Table(t) => {
            check_keys(t, &ODOO_FIELD_KEYS, diags);
            (
                required_str(t, "type", &k.span, &format!("field `{}`", k.name), diags)?,
                t,
            )
        }
        _ => {
            diags.push(wrong_type(&k.name, item, "an Odoo type name or a table"));
            return None;
        }
    };
    if !ODOO_TYPES.contains(&ty.value) {
        diags.push(unknown_name(
            "Odoo field type",
            ty.value,
            ty.span.clone(),
            &ODOO_TYPES,
        ));
        return None;
    }
    let relational = matches!(ty.value, "many2one" | "one2many" | "many2many");
    let relation = str_of(t, "relation", diags);
    match (&relation, relational) {
        (None, true) => {
            diags.push(
                Diagnostic::error(
                    format!("{} field `{}` needs `relation`", ty.value, k.name),
                    ty.span.clone(),
                    "relational type",
                )
                .with_help(
                    "name the Odoo model it points to, such as `relation = \"res.country\"`",
                ),
            );
            return None;
        }
        (Some(r), false) => {
            diags.push(Diagnostic::error(
                format!(
                    "`relation` only applies to relational fields, but `{}` is {}",
                    k.name, ty.value
                ),
                r.span.clone(),
                "not a relational field",
            ));
            return None;
        }
        _ => {}
    }
    bool_of(t, "required", diags);
    bool_of(t, "readonly", diags);
    Some(OdooField {
        ttype: ty.value.to_string(),
        relation: relation.map(|r| r.value.to_string()),
    })
}

/// How recsync holds an Odoo type's values: a many2one is its id, x2many fields are id lists.
fn recsync_type(ttype: &str) -> FieldType {
    match ttype {
        "text" | "html" => FieldType::Text,
        "integer" | "many2one" => FieldType::Integer,
        "float" | "monetary" => FieldType::Float,
        "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" => FieldType::Datetime,
        "binary" => FieldType::Binary,
        "one2many" | "many2many" | "json" | "properties" => FieldType::Json,
        _ => FieldType::Char,
    }
}

/// Odoo's domain operators.
const ODOO_OPERATORS: [&str; 18] = [
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not in",
    "like",
    "not like",
    "ilike",
    "not ilike",
    "=like",
    "=ilike",
    "=?",
    "child_of",
    "parent_of",
];

/// An Odoo domain in prefix notation, checked for shape (terms are `[field, operator, value]`,
/// `&` and `|` take two operands and `!` one) and kept as JSON.
fn odoo_domain(item: &Item, diags: &mut Diagnostics) -> Vec<Value> {
    let Node::Array(items) = &item.node else {
        diags.push(wrong_type("domain", item, "a list of conditions"));
        return Vec::new();
    };
    let mut out = Vec::new();
    // Operands available, read from the end as Odoo's normalisation does.
    let mut operands = 0usize;
    let mut ok = true;
    for it in items.iter().rev() {
        match &it.node {
            Node::Str { value, .. } => {
                let need = match value.as_str() {
                    "!" => 1,
                    "&" | "|" => 2,
                    other => {
                        diags.push(unknown_name(
                            "domain operator",
                            other,
                            it.span.clone(),
                            &["&", "|", "!"],
                        ));
                        ok = false;
                        continue;
                    }
                };
                if operands < need {
                    diags.push(Diagnostic::error(
                        format!("`{value}` needs {need} condition(s) after it"),
                        it.span.clone(),
                        "too few operands",
                    ));
                    ok = false;
                }
                operands = operands.saturating_sub(need) + 1;
            }
            Node::Array(term) => {
                let op = term.get(1).map(|o| &o.node);
                let field_ok = matches!(term.first().map(|f| &f.node), Some(Node::Str { .. }));
                match (term.len(), op) {
                    (3, Some(Node::Str { value, .. }))
                        if field_ok && ODOO_OPERATORS.contains(&value.as_str()) => {}
                    (3, Some(Node::Str { value, .. })) if field_ok => {
                        diags.push(unknown_name(
                            "Odoo operator",
                            value,
                            term[1].span.clone(),
                            &ODOO_OPERATORS,
                        ));
                        ok = false;
                    }
                    _ => {
                        diags.push(
                            Diagnostic::error(
                                "an Odoo domain condition is `[field, operator, value]`",
                                it.span.clone(),
                                "not a condition",
                            )
                            .with_help("for example [\"type\", \"=\", \"contact\"]"),
                        );
                        ok = false;
                    }
                }
                operands += 1;
            }
            _ => {
                diags.push(wrong_type(
                    "domain",
                    it,
                    "a condition or \"&\", \"|\", \"!\"",
                ));
                ok = false;
            }
        }
    }
    if ok {
        out.extend(items.iter().map(to_json));
    }
    out
}
