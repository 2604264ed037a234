//! The configuration of the `odoo` kind: an Odoo database reached through its external API,
//! and external models naming an Odoo model, its domain and its fields.

use super::spec::{Archived, OdooField, OdooModel, OdooProtocol, OdooService};
use crate::config::kit::*;
use crate::domain::plan::{ExternalModel, ServiceSettings, WebService};
use crate::domain::value::FieldType;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The keys of an Odoo external model's field.
pub const ODOO_FIELD_KEYS: [&str; 5] = ["type", "relation", "required", "readonly", "description"];
/// Odoo's field types, as `fields_get` names them.
pub const ODOO_TYPES: [&str; 16] = [
    "char",
    "text",
    "html",
    "integer",
    "float",
    "monetary",
    "boolean",
    "date",
    "datetime",
    "selection",
    "many2one",
    "one2many",
    "many2many",
    "binary",
    "json",
    "properties",
];
pub const ODOO_KEYS: [&str; 12] = [
    "kind",
    "description",
    "url",
    "database",
    "login",
    "api_key",
    "protocol",
    "webhook_token",
    "timeout",
    "max_concurrency",
    "overlap",
    "active",
];
/// The keys of an Odoo external model.
pub const ODOO_MODEL_KEYS: [&str; 3] = ["odoo_model", "domain", "archived"];

/// The `odoo` kind.
pub struct Odoo;

impl Kind for Odoo {
    fn name(&self) -> &'static str {
        "odoo"
    }

    fn label(&self) -> &'static str {
        "Odoo"
    }

    fn models_called(&self) -> &'static str {
        "Odoo external models"
    }

    fn service_keys(&self) -> &'static [&'static str] {
        &ODOO_KEYS
    }

    fn compile_service(
        &self,
        d: &Declared<'_>,
        diags: &mut Diagnostics,
    ) -> Option<Arc<dyn ServiceSettings>> {
        let t = d.table;
        let what = &d.what;
        let url = required_str(t, "url", &d.key.span, what, diags)
            .and_then(|s| check_url("url", &s, diags));
        let api_key = required_str(t, "api_key", &d.key.span, what, diags).map(|s| secret(&s));
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
        Some(Arc::new(OdooService {
            url: url?,
            database,
            login,
            api_key: api_key?,
            protocol,
            webhook_token,
            timeout,
            max_concurrency,
            overlap,
        }))
    }

    fn model_keys(&self) -> &'static [&'static str] {
        &ODOO_MODEL_KEYS
    }

    fn compile_model(&self, d: &Declared<'_>, diags: &mut Diagnostics) -> Option<CompiledModel> {
        let t = d.table;
        let name = d.name();
        let mut fields = BTreeMap::new();
        let mut odoo_fields = BTreeMap::new();
        if let Some((ft, _)) = table_of(t, "fields", diags) {
            for (k, item) in ft {
                if let Some(f) = compile_odoo_field(k, item, diags) {
                    fields.insert(k.name.clone(), recsync_type(&f.ttype));
                    odoo_fields.insert(k.name.clone(), f);
                }
            }
        }
        let model = required_str(t, "odoo_model", &d.key.span, &d.what, diags);
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
        let model = model?;
        Some(CompiledModel {
            fields,
            settings: Arc::new(OdooModel {
                model: model.value.to_string(),
                domain,
                archived,
                fields: odoo_fields,
            }),
        })
    }

    fn identity(&self, _: &ExternalModel) -> Identity {
        Identity::Fixed("id".into())
    }

    fn takes_endpoints(&self) -> bool {
        false
    }

    fn can_archive(&self, _: Option<&ExternalModel>) -> bool {
        true
    }

    fn cannot_reconcile(&self, _: &WebService, _: &ExternalModel) -> Option<(String, String)> {
        None
    }

    /// A related field, `country_id.code`: a relational field and one field of the model
    /// it points to.
    fn undeclared_name(
        &self,
        ext: &ExternalModel,
        name: &Str<'_>,
        diags: &mut Diagnostics,
    ) -> Option<bool> {
        let odoo = ext.settings::<OdooModel>()?;
        let (rel, sub) = OdooModel::related(name.value)?;
        match odoo.fields.get(rel) {
            Some(f) if f.relation.is_some() && !sub.is_empty() && !sub.contains('.') => Some(true),
            Some(_) => {
                diags.push(
                    Diagnostic::error(
                        format!(
                            "`{}` is not a relational field of `{}` with one related field after the dot",
                            rel, odoo.model
                        ),
                        name.span.clone(),
                        "not a related field",
                    )
                    .with_help("a related field names a many2one or many2many field and one field of the model it points to, such as `country_id.code`"),
                );
                Some(false)
            }
            None => {
                let names: Vec<&str> = odoo.fields.keys().map(String::as_str).collect();
                diags.push(with_choices(
                    Diagnostic::error(
                        format!("unknown field `{rel}` on external model `{}`", ext.name),
                        name.span.clone(),
                        "not an external field",
                    ),
                    rel,
                    &names,
                ));
                Some(false)
            }
        }
    }

    fn reads_any_member(&self) -> bool {
        false
    }

    fn check_sync(&self, _: &SyncCheck<'_>, _: &mut Diagnostics) {}
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
