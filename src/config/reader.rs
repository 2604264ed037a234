//! Typed reads from the spanned tree. Each read that fails adds a diagnostic and returns
//! `None`, so compilation goes on and reports every mistake in one pass.

use super::diag::{Diagnostic, Diagnostics, Span};
use super::source::{Item, Key, Node, Table};
use serde_json::Value;

/// A string value with its span and whether it came from the environment.
#[derive(Debug, Clone)]
pub struct Str<'a> {
    pub value: &'a str,
    pub secret: bool,
    pub span: Span,
}

impl Str<'_> {
    /// Quotes the value for a message, unless it is a secret.
    pub fn shown(&self) -> String {
        if self.secret {
            "(value from the environment)".to_string()
        } else {
            format!("`{}`", self.value)
        }
    }
}

pub fn entry<'t>(table: &'t Table, key: &str) -> Option<&'t (Key, Item)> {
    table.iter().find(|(k, _)| k.name == key)
}

/// Reports every key of `table` not in `allowed`, suggesting the closest one.
pub fn check_keys(table: &Table, allowed: &[&str], diags: &mut Diagnostics) {
    for (k, _) in table {
        if !allowed.contains(&k.name.as_str()) {
            diags.push(unknown_name("field", &k.name, k.span.clone(), allowed));
        }
    }
}

/// `unknown <what> `x``, with a "did you mean" or the list of choices.
pub fn unknown_name(what: &str, name: &str, span: Span, choices: &[&str]) -> Diagnostic {
    let d = Diagnostic::error(
        format!("unknown {what} `{name}`"),
        span,
        format!("unknown {what}"),
    );
    with_choices(d, name, choices)
}

pub fn with_choices(d: Diagnostic, name: &str, choices: &[&str]) -> Diagnostic {
    let best = choices
        .iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), *c))
        .filter(|(dist, c)| *dist <= 1.max(c.len() / 3) && *dist < name.chars().count())
        .min();
    match best {
        Some((_, c)) => d.with_help(format!("did you mean `{c}`?")),
        None if choices.is_empty() => d,
        None if choices.len() <= 16 => {
            let list = choices
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ");
            d.with_help(format!("expected one of {list}"))
        }
        None => d,
    }
}

pub fn wrong_type(key: &str, item: &Item, expected: &str) -> Diagnostic {
    Diagnostic::error(
        format!(
            "wrong type for `{key}`: expected {expected}, found {}",
            item.node.type_name()
        ),
        item.span.clone(),
        format!("expected {expected}"),
    )
}

pub fn as_str<'t>(key: &str, item: &'t Item, diags: &mut Diagnostics) -> Option<Str<'t>> {
    match &item.node {
        Node::Str { value, secret } => Some(Str {
            value,
            secret: *secret,
            span: item.span.clone(),
        }),
        _ => {
            diags.push(wrong_type(key, item, "a string"));
            None
        }
    }
}

pub fn str_of<'t>(table: &'t Table, key: &str, diags: &mut Diagnostics) -> Option<Str<'t>> {
    let (_, item) = entry(table, key)?;
    as_str(key, item, diags)
}

pub fn bool_of(table: &Table, key: &str, diags: &mut Diagnostics) -> Option<bool> {
    let (_, item) = entry(table, key)?;
    match &item.node {
        Node::Bool(b) => Some(*b),
        _ => {
            diags.push(wrong_type(key, item, "a boolean"));
            None
        }
    }
}

pub fn int_of(table: &Table, key: &str, diags: &mut Diagnostics) -> Option<(i64, Span)> {
    let (_, item) = entry(table, key)?;
    match &item.node {
        Node::Int(i) => Some((*i, item.span.clone())),
        _ => {
            diags.push(wrong_type(key, item, "an integer"));
            None
        }
    }
}

pub fn table_of<'t>(
    table: &'t Table,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<(&'t Table, Span)> {
    let (_, item) = entry(table, key)?;
    as_table(key, item, diags).map(|t| (t, item.span.clone()))
}

pub fn as_table<'t>(key: &str, item: &'t Item, diags: &mut Diagnostics) -> Option<&'t Table> {
    match &item.node {
        Node::Table(t) => Some(t),
        _ => {
            diags.push(wrong_type(key, item, "a table"));
            None
        }
    }
}

pub fn array_of<'t>(
    table: &'t Table,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<(&'t [Item], Span)> {
    let (_, item) = entry(table, key)?;
    match &item.node {
        Node::Array(a) => Some((a.as_slice(), item.span.clone())),
        _ => {
            diags.push(wrong_type(key, item, "an array"));
            None
        }
    }
}

/// A required string: reports `missing field` at `owner` (the table's key) when absent.
pub fn required_str<'t>(
    table: &'t Table,
    key: &str,
    owner: &Span,
    what: &str,
    diags: &mut Diagnostics,
) -> Option<Str<'t>> {
    if entry(table, key).is_none() {
        diags.push(Diagnostic::error(
            format!("missing field `{key}` in {what}"),
            owner.clone(),
            format!("`{key}` is required"),
        ));
        return None;
    }
    str_of(table, key, diags)
}

/// Converts a TOML value to JSON (datetimes become strings).
pub fn to_json(item: &Item) -> Value {
    match &item.node {
        Node::Str { value, .. } => Value::String(value.clone()),
        Node::Int(i) => Value::from(*i),
        Node::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Node::Bool(b) => Value::Bool(*b),
        Node::Datetime(d) => Value::String(d.clone()),
        Node::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Node::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// Does the item hold any value that came from the environment?
pub fn has_secret(item: &Item) -> bool {
    match &item.node {
        Node::Str { secret, .. } => *secret,
        Node::Array(a) => a.iter().any(has_secret),
        Node::Table(t) => t.iter().any(|(_, v)| has_secret(v)),
        _ => false,
    }
}
