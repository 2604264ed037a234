//! Local models and their fields.

use super::*;

pub(super) fn compile_model(
    d: &Decl<'_>,
    models: &[&str],
    diags: &mut Diagnostics,
) -> Option<Model> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "model", diags);
    let t = as_table(&name, d.item, diags)?;
    check_keys(t, &MODEL_KEYS, diags);
    let mut fields = BTreeMap::new();
    match table_of(t, "fields", diags) {
        Some((ft, _)) => {
            for (k, item) in ft {
                match compile_field(k, item, models, diags) {
                    Some(f) => {
                        fields.insert(f.name.clone(), f);
                    }
                    None => diags.mark_broken(&name, &k.name),
                }
            }
        }
        None if entry(t, "fields").is_none() => diags.push(Diagnostic::error(
            format!("model `{name}` has no `fields`"),
            d.key.span.clone(),
            "declare at least one field",
        )),
        None => {}
    }
    let display = str_of(t, "display", diags).and_then(|s| {
        if fields.contains_key(s.value) || s.value == "id" {
            Some(s.value.to_string())
        } else if diags.is_broken(&name, s.value) {
            None
        } else {
            let names: Vec<&str> = fields.keys().map(String::as_str).collect();
            diags.push(with_choices(
                Diagnostic::error(
                    format!("unknown field `{}` on model `{name}`", s.value),
                    s.span,
                    "not a field of this model",
                ),
                s.value,
                &names,
            ));
            None
        }
    });
    ok_name.then_some(Model {
        name,
        display,
        fields,
    })
}

pub(super) fn compile_field(
    k: &Key,
    item: &Item,
    models: &[&str],
    diags: &mut Diagnostics,
) -> Option<Field> {
    if !check_ident(k, "field", diags) {
        return None;
    }
    // A local model's records carry these already; an external system's fields (an
    // external model has no model names to relate to) may be called anything.
    if !models.is_empty() && RECORD_META_FIELDS.contains(&k.name.as_str()) {
        diags.push(Diagnostic::error(
            format!("field name `{}` is reserved", k.name),
            k.span.clone(),
            "every record has this field already",
        ));
        return None;
    }
    let empty = Table::new();
    let (ty_str, t) = match &item.node {
        Node::Str { .. } => (as_str(&k.name, item, diags)?, &empty),
        Node::Table(t) => {
            check_keys(t, &FIELD_KEYS, diags);
            (
                required_str(t, "type", &k.span, &format!("field `{}`", k.name), diags)?,
                t,
            )
        }
        _ => {
            diags.push(wrong_type(&k.name, item, "a type name or a table"));
            return None;
        }
    };
    let required = bool_of(t, "required", diags).unwrap_or(false);
    let secret = bool_of(t, "secret", diags).unwrap_or(false);
    let related = str_of(t, "model", diags);
    let values = array_of(t, "values", diags);
    let needs_model = matches!(ty_str.value, "many2one" | "one2many" | "many2many");
    if let Some(m) = &related
        && !needs_model
    {
        diags.push(Diagnostic::error(
            format!(
                "`model` only applies to relational fields, but `{}` is {}",
                k.name, ty_str.value
            ),
            m.span.clone(),
            "not a relational field",
        ));
    }
    if let Some((_, span)) = &values
        && ty_str.value != "selection"
    {
        diags.push(Diagnostic::error(
            format!(
                "`values` only applies to selection fields, but `{}` is {}",
                k.name, ty_str.value
            ),
            span.clone(),
            "not a selection field",
        ));
    }
    let mut related_model = || -> Option<String> {
        match &related {
            None => {
                diags.push(Diagnostic::error(
                    format!("{} field `{}` needs `model`", ty_str.value, k.name),
                    ty_str.span.clone(),
                    "relational type",
                ));
                None
            }
            Some(m) if !models.contains(&m.value) => {
                diags.push(unknown_name("model", m.value, m.span.clone(), models));
                None
            }
            Some(m) => Some(m.value.to_string()),
        }
    };
    let ty = match ty_str.value {
        "char" => FieldType::Char,
        "text" => FieldType::Text,
        "integer" => FieldType::Integer,
        "float" => FieldType::Float,
        "boolean" => FieldType::Boolean,
        "date" => FieldType::Date,
        "datetime" => FieldType::Datetime,
        "binary" => FieldType::Binary,
        "json" => FieldType::Json,
        "many2one" => FieldType::Many2one(related_model()?),
        "one2many" => FieldType::One2many(related_model()?),
        "many2many" => FieldType::Many2many(related_model()?),
        "selection" => {
            let Some((items, span)) = values else {
                if entry(t, "values").is_none() {
                    diags.push(Diagnostic::error(
                        format!("selection field `{}` needs `values`", k.name),
                        ty_str.span.clone(),
                        "selection type",
                    ));
                }
                return None;
            };
            let mut vs = Vec::new();
            for it in items {
                let s = as_str("values", it, diags)?;
                if vs.iter().any(|v: &String| v == s.value) {
                    diags.push(Diagnostic::error(
                        format!("selection value `{}` is listed twice", s.value),
                        s.span,
                        "repeated",
                    ));
                    return None;
                }
                vs.push(s.value.to_string());
            }
            if vs.is_empty() {
                diags.push(Diagnostic::error(
                    format!("selection field `{}` has no values", k.name),
                    span,
                    "empty list",
                ));
                return None;
            }
            FieldType::Selection(vs)
        }
        other => {
            diags.push(unknown_name(
                "field type",
                other,
                ty_str.span.clone(),
                &FIELD_TYPE_NAMES,
            ));
            return None;
        }
    };
    Some(Field {
        name: k.name.clone(),
        ty,
        required,
        secret,
    })
}
