//! Field pairs: how a local record becomes an external payload and back, through plain
//! names, JSONPaths (simple paths build nested objects) and one-to-one `map` tables.
//! Relations are resolved through a [`RefResolver`] the engine fills from the store.

use super::names::SyncCode;
use super::transform::Transform;
use super::value::{CoerceError, FieldType, coerce};
use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// Which way data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToExternal,
    ToLocal,
    Bidirectional,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "to_external" => Some(Direction::ToExternal),
            "to_local" => Some(Direction::ToLocal),
            "bidirectional" => Some(Direction::Bidirectional),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToExternal => "to_external",
            Direction::ToLocal => "to_local",
            Direction::Bidirectional => "bidirectional",
        }
    }

    /// The arrow from the local side to the external side: `→`, `←` or `↔`.
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::ToExternal => "→",
            Direction::ToLocal => "←",
            Direction::Bidirectional => "↔",
        }
    }

    pub fn to_local(self) -> bool {
        matches!(self, Direction::ToLocal | Direction::Bidirectional)
    }

    pub fn to_external(self) -> bool {
        matches!(self, Direction::ToExternal | Direction::Bidirectional)
    }

    /// Is `self` the same as or narrower than `outer`?
    pub fn within(self, outer: Direction) -> bool {
        outer == Direction::Bidirectional || self == outer
    }
}

/// A JSONPath compiled once at load time.
#[derive(Debug, Clone)]
pub struct JsonPath {
    text: String,
    query: JpQuery,
    /// For `$.a.b.c`: the member names, which lets a send build the nested objects.
    simple: Option<Vec<String>>,
}

impl PartialEq for JsonPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl JsonPath {
    /// Compiles an RFC 9535 path. The error text comes from the parser.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let query = jsonpath_rust::parser::parse_json_path(text).map_err(|e| e.to_string())?;
        let simple = query
            .segments
            .iter()
            .map(|s| match s {
                Segment::Selector(Selector::Name(n)) => Some(n.clone()),
                Segment::Selectors(v) if v.len() == 1 => match &v[0] {
                    Selector::Name(n) => Some(n.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .filter(|v| !v.is_empty());
        Ok(JsonPath {
            text: text.to_string(),
            query,
            simple,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Can a send build this path (a chain of member names)?
    pub fn is_buildable(&self) -> bool {
        self.simple.is_some()
    }

    /// Is the path `$` or a chain of member names (`$.a.b`)?
    pub fn is_member_chain(&self) -> bool {
        self.simple.is_some() || self.text.trim() == "$"
    }

    /// The value a member chain names in `doc`, to change or take; `None` for a path that is
    /// not one or a value that is not there.
    pub fn select_mut<'a>(&self, doc: &'a mut Value) -> Option<&'a mut Value> {
        if self.text.trim() == "$" {
            return Some(doc);
        }
        let mut cur = doc;
        for n in self.simple.as_ref()? {
            cur = cur.get_mut(n)?;
        }
        Some(cur)
    }

    /// The values the path selects in `doc`.
    pub fn select<'a>(&self, doc: &'a Value) -> Vec<&'a Value> {
        if let Some(names) = &self.simple {
            let mut cur = doc;
            for n in names {
                match cur.get(n) {
                    Some(v) => cur = v,
                    None => return vec![],
                }
            }
            return vec![cur];
        }
        jsonpath_rust::query::js_path_process(&self.query, doc)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }

    /// Writes `v` at this path, creating nested objects. Only for buildable paths.
    pub fn build(&self, doc: &mut Map<String, Value>, v: Value) -> bool {
        let Some(names) = &self.simple else {
            return false;
        };
        let (last, parents) = names.split_last().expect("non-empty");
        let mut cur = doc;
        for n in parents {
            let slot = cur
                .entry(n.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            cur = slot.as_object_mut().expect("object");
        }
        cur.insert(last.clone(), v);
        true
    }
}

/// Where a field lives in the external record.
#[derive(Debug, Clone, PartialEq)]
pub enum ExternalField {
    Name(String),
    Path(JsonPath),
    /// No one external field: a local field computed from the external record (`to_local`).
    Computed,
}

impl ExternalField {
    /// Writes `v` where this field lives in an outgoing payload.
    pub fn put(&self, out: &mut Map<String, Value>, v: Value) {
        match self {
            ExternalField::Name(n) => {
                out.insert(n.clone(), v);
            }
            ExternalField::Path(path) => {
                path.build(out, v);
            }
            ExternalField::Computed => {}
        }
    }
}

impl fmt::Display for ExternalField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExternalField::Name(n) => f.write_str(n),
            ExternalField::Path(p) => f.write_str(p.as_str()),
            ExternalField::Computed => f.write_str("(computed)"),
        }
    }
}

/// How a relational field finds its related record.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    /// Not relational (or relational ids passed through as they are).
    None,
    /// Match the external value against this field of the related model.
    Field(String),
    /// The external value is an external id in that sync's links.
    Sync(SyncCode),
}

/// A one-to-one value table, local value to external value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValueMap {
    pairs: Vec<(Value, Value)>,
}

impl ValueMap {
    /// Builds the table; returns the index of the first pair whose external value repeats.
    pub fn new(pairs: Vec<(Value, Value)>) -> Result<ValueMap, usize> {
        for (i, (_, ext)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(_, e)| e == ext) {
                return Err(i);
            }
        }
        Ok(ValueMap { pairs })
    }

    pub fn to_external(&self, local: &Value) -> Option<&Value> {
        self.pairs.iter().find(|(l, _)| l == local).map(|(_, e)| e)
    }

    /// The table's pairs, local value then external value.
    pub fn pairs(&self) -> &[(Value, Value)] {
        &self.pairs
    }

    pub fn to_local(&self, external: &Value) -> Option<&Value> {
        // Compare loosely so that a form-encoded "1" finds the external value 1.
        self.pairs
            .iter()
            .find(|(_, e)| loose_eq(e, external))
            .map(|(l, _)| l)
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    a == b
        || match (a, b) {
            (Value::String(s), other) | (other, Value::String(s)) if !other.is_string() => {
                serde_json::from_str::<Value>(s).is_ok_and(|parsed| parsed == *other)
            }
            _ => false,
        }
}

/// One `fields` entry of a sync, resolved against both models.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPair {
    pub local: String,
    pub local_type: FieldType,
    pub external: ExternalField,
    /// The external model's declared type, when `external` is a plain name.
    pub external_type: Option<FieldType>,
    pub direction: Direction,
    pub reference: Reference,
    pub map: Option<ValueMap>,
    /// Computes the local value from `value` (the external field's) and `external`.
    pub to_local: Option<Arc<Transform>>,
    /// Computes the external value from `value` (the local field's) and `local`. A pair with
    /// this and an empty `local` computes an external field.
    pub to_external: Option<Arc<Transform>>,
}

impl FieldPair {
    /// Whether the pair computes an external field from the local record (no local field).
    pub fn computes_external(&self) -> bool {
        self.local.is_empty()
    }

    /// The local fields whose values the pair sends from: its own field, and those its
    /// `to_external` expression reads.
    pub fn sends_from(&self) -> impl Iterator<Item = &str> {
        (!self.local.is_empty())
            .then_some(self.local.as_str())
            .into_iter()
            .chain(
                self.to_external
                    .iter()
                    .flat_map(|t| t.local.iter().map(String::as_str)),
            )
    }

    /// The external fields the pair reads when receiving (a JSONPath's first member).
    pub fn receives_from(&self) -> Vec<&str> {
        let mut out: Vec<&str> = match &self.external {
            ExternalField::Path(path) => path
                .as_str()
                .strip_prefix("$.")
                .and_then(|r| r.split(['.', '[']).next())
                .into_iter()
                .collect(),
            ExternalField::Name(n) => vec![n.as_str()],
            ExternalField::Computed => vec![],
        };
        if let Some(t) = &self.to_local {
            out.extend(t.external.iter().map(String::as_str));
        }
        out
    }
}

/// Looks up related records; the engine answers from the store.
pub trait RefResolver {
    /// The external reference for a related local id (for a send).
    fn local_to_external(&self, pair: &FieldPair, local_id: i64) -> Option<Value>;
}

/// A resolver for syncs with no relational pairs, or tests.
pub struct NoRefs;

impl RefResolver for NoRefs {
    fn local_to_external(&self, _: &FieldPair, _: i64) -> Option<Value> {
        None
    }
}

/// A relational value from the external side, still to be resolved to local ids.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRef {
    pub field: String,
    pub reference: Reference,
    pub related_model: String,
    pub many: bool,
    /// The external values, as strings.
    pub keys: Vec<String>,
}

/// A per-field mapping error; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    fn coerce(field: &str, e: CoerceError) -> Self {
        FieldError::new(field, e.to_string())
    }
}

/// Inbound values mapped onto local fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inbound {
    pub values: Map<String, Value>,
    pub refs: Vec<PendingRef>,
}

/// Builds the external payload for a local record (pairs whose direction sends).
pub fn to_external(
    pairs: &[FieldPair],
    local: &Map<String, Value>,
    refs: &dyn RefResolver,
) -> Result<Map<String, Value>, Vec<FieldError>> {
    let mut out = Map::new();
    let mut errors = Vec::new();
    for p in pairs.iter().filter(|p| p.direction.to_external()) {
        if let Some(t) = &p.to_external {
            // Computed from the record: only when it carries every field the expression reads.
            if !t.local.iter().all(|f| local.contains_key(f)) {
                continue;
            }
            let v = if p.computes_external() {
                t.eval(None, None, Some(local))
                    .map_err(|e| transform_error(p, "to_external", t, None, e))
            } else {
                match local.get(&p.local) {
                    None => continue,
                    // Nothing stays nothing: the expression is not asked.
                    Some(Value::Null) => Ok(Value::Null),
                    Some(v) => t
                        .eval(Some(v), None, Some(local))
                        .map_err(|e| transform_error(p, "to_external", t, Some(v), e)),
                }
            };
            match v {
                Ok(v) => p.external.put(&mut out, v),
                Err(e) => errors.push(e),
            }
            continue;
        }
        let Some(v) = local.get(&p.local) else {
            continue;
        };
        let v = match outbound_value(p, v, refs) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        p.external.put(&mut out, v);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn outbound_value(p: &FieldPair, v: &Value, refs: &dyn RefResolver) -> Result<Value, FieldError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    if p.local_type.is_relational() && p.reference != Reference::None {
        let one = |id: &Value| -> Result<Value, FieldError> {
            let id = id
                .as_i64()
                .ok_or_else(|| FieldError::new(&p.local, "related id is not an integer"))?;
            refs.local_to_external(p, id).ok_or_else(|| {
                FieldError::new(
                    &p.local,
                    format!("related record {id} has no external reference yet"),
                )
            })
        };
        return match v {
            Value::Array(ids) => ids
                .iter()
                .map(one)
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            id => one(id),
        };
    }
    match &p.map {
        Some(m) => m.to_external(v).cloned().ok_or_else(|| {
            FieldError::new(
                &p.local,
                format!("value {v} has no entry in the field's map"),
            )
        }),
        None => Ok(v.clone()),
    }
}

/// Maps an external record onto local fields (pairs whose direction receives). Fields absent
/// from the payload are left out, so partial updates touch only what they carry.
pub fn to_local(pairs: &[FieldPair], external: &Value) -> Result<Inbound, Vec<FieldError>> {
    let mut out = Inbound::default();
    let mut errors = Vec::new();
    for p in pairs.iter().filter(|p| p.direction.to_local()) {
        let raw = match &p.external {
            ExternalField::Name(n) => match external.get(n) {
                Some(v) => v.clone(),
                None => continue,
            },
            ExternalField::Path(path) => match path.select(external).as_slice() {
                [] => continue,
                [one] => (*one).clone(),
                many => Value::Array(many.iter().map(|v| (*v).clone()).collect()),
            },
            ExternalField::Computed => Value::Null,
        };
        if let Some(t) = &p.to_local {
            match transformed_in(p, t, raw, external) {
                Ok(Some(v)) => {
                    out.values.insert(p.local.clone(), v);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
            continue;
        }
        match inbound_value(p, &raw) {
            Ok(Incoming::Value(v)) => {
                out.values.insert(p.local.clone(), v);
            }
            Ok(Incoming::Ref(r)) => out.refs.push(r),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A received value computed by the pair's `to_local`, then read as the local field's type.
/// `None`: the payload lacks a field the expression reads (a partial update), so the field is
/// left as it is.
fn transformed_in(
    p: &FieldPair,
    t: &Transform,
    raw: Value,
    external: &Value,
) -> Result<Option<Value>, FieldError> {
    if !t.external.iter().all(|f| external.get(f).is_some()) {
        return Ok(None);
    }
    let computed = matches!(p.external, ExternalField::Computed);
    let v = if !computed && raw.is_null() {
        // Nothing stays nothing: the expression is not asked.
        Value::Null
    } else {
        // The value as the system sent it (a date in its own format is what the expression
        // is there to read).
        let input = (!computed).then_some(raw);
        t.eval(input.as_ref(), Some(external), None)
            .map_err(|e| transform_error(p, "to_local", t, input.as_ref(), e))?
    };
    if v.is_null() {
        return Ok(Some(Value::Null));
    }
    coerce(&p.local_type, &v)
        .map(Some)
        .map_err(|e| FieldError::new(&p.local, format!("`{}` gave {v}, which {e}", t.source())))
}

fn transform_error(
    p: &FieldPair,
    direction: &str,
    t: &Transform,
    input: Option<&Value>,
    e: String,
) -> FieldError {
    let field = if p.computes_external() {
        p.external.to_string()
    } else {
        p.local.clone()
    };
    let on = match input {
        Some(v) => format!(" on {v}"),
        None => String::new(),
    };
    FieldError::new(
        &field,
        format!("{direction} `{}` failed{on}: {e}", t.source()),
    )
}

/// A value a two-way transformed pair does not give back: the local `value` went out as
/// `sent`, and reading `sent` back gives `back` (or fails with `error`). Such a pair would
/// change the value behind the user's back, or flip-flop between the systems.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lossy {
    /// The local field.
    pub field: String,
    pub value: Value,
    pub sent: Value,
    pub back: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pairs whose round trip is worth checking: both ways, one field on each side, with an
/// expression (a plain pair, a value table and a reference round trip by construction or by
/// their own checks).
pub fn round_trip_pairs(pairs: &[FieldPair]) -> impl Iterator<Item = &FieldPair> {
    pairs.iter().filter(|p| {
        p.direction.to_local()
            && p.direction.to_external()
            && !p.computes_external()
            && !matches!(p.external, ExternalField::Computed)
            && (p.to_local.is_some() || p.to_external.is_some())
    })
}

/// Sends each two-way transformed pair's value of a local record out and reads it back, as
/// the next pull would (`to_local(to_external(v))`): the values that do not come back equal.
/// A value the record lacks, an empty one, an expression that fails going out (a failure a
/// run reports anyway) and one that reads fields the round trip cannot supply are not judged.
pub fn round_trip(pairs: &[FieldPair], local: &Map<String, Value>) -> Vec<Lossy> {
    let mut out = Vec::new();
    for p in round_trip_pairs(pairs) {
        let Some(v) = local.get(&p.local).filter(|v| !v.is_null()) else {
            continue;
        };
        let sent = match &p.to_external {
            Some(t) if t.local.iter().all(|f| local.contains_key(f)) => {
                match t.eval(Some(v), None, Some(local)) {
                    Ok(sent) => sent,
                    Err(_) => continue,
                }
            }
            Some(_) => continue,
            None => v.clone(),
        };
        let mut there = Map::new();
        p.external.put(&mut there, sent.clone());
        let there = Value::Object(there);
        let back = match &p.to_local {
            Some(t) => transformed_in(p, t, sent.clone(), &there),
            None => match inbound_value(p, &sent) {
                Ok(Incoming::Value(v)) => Ok(Some(v)),
                Ok(Incoming::Ref(_)) => Ok(None),
                Err(e) => Err(e),
            },
        };
        let (back, error) = match back {
            Ok(Some(b)) => (b, None),
            Ok(None) => continue,
            Err(e) => (Value::Null, Some(e.to_string())),
        };
        if error.is_some() || back != *v {
            out.push(Lossy {
                field: p.local.clone(),
                value: v.clone(),
                sent,
                back,
                error,
            });
        }
    }
    out
}

enum Incoming {
    Value(Value),
    Ref(PendingRef),
}

fn inbound_value(p: &FieldPair, raw: &Value) -> Result<Incoming, FieldError> {
    let raw = match &p.external_type {
        Some(t) if !p.local_type.is_relational() => {
            coerce(t, raw).map_err(|e| FieldError::coerce(&p.local, e))?
        }
        _ => raw.clone(),
    };
    if p.local_type.is_relational() && p.reference != Reference::None {
        let many = p.local_type.is_x2many();
        let keys: Vec<String> = match &raw {
            Value::Null | Value::Bool(false) => vec![],
            Value::Array(items) => items.iter().map(key_text).collect(),
            Value::String(s) if many => s
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect(),
            other => vec![key_text(other)],
        };
        return Ok(Incoming::Ref(PendingRef {
            field: p.local.clone(),
            reference: p.reference.clone(),
            related_model: p.local_type.related_model().unwrap_or_default().to_string(),
            many,
            keys,
        }));
    }
    let mapped = match &p.map {
        Some(m) if !raw.is_null() => m
            .to_local(&raw)
            .cloned()
            .ok_or_else(|| FieldError::new(&p.local, "value has no entry in the field's map"))?,
        _ => raw,
    };
    coerce(&p.local_type, &mapped)
        .map(Incoming::Value)
        .map_err(|e| FieldError::coerce(&p.local, e))
}

/// The text of an external id: a non-empty string as it is, an integer digit for digit. A
/// number with a fraction or an exponent (`7004.0`, `1e3`) is no id: its text is ambiguous.
pub fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) if !n.is_f64() => Some(n.to_string()),
        _ => None,
    }
}

/// The longest external id taken.
pub const MAX_ID_LEN: usize = 255;

/// Why a text cannot be an external id (too long, control characters), or None.
pub fn id_problem(id: &str) -> Option<String> {
    if id.chars().count() > MAX_ID_LEN {
        Some(format!(
            "the external id is {} characters long; at most {MAX_ID_LEN} are taken",
            id.chars().count()
        ))
    } else if id.chars().any(char::is_control) {
        Some("the external id holds a control character".to_string())
    } else {
        None
    }
}

fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pair(local: &str, ty: FieldType, ext: &str) -> FieldPair {
        let external = if ext.starts_with('$') {
            ExternalField::Path(JsonPath::parse(ext).unwrap())
        } else {
            ExternalField::Name(ext.to_string())
        };
        FieldPair {
            local: local.into(),
            local_type: ty,
            external,
            external_type: None,
            direction: Direction::Bidirectional,
            reference: Reference::None,
            map: None,
            to_local: None,
            to_external: None,
        }
    }

    fn two_way(
        local: &str,
        ty: FieldType,
        ext: &str,
        to_local: &str,
        to_external: &str,
    ) -> FieldPair {
        let t = |src: &str| Some(Transform::compile(src).unwrap().transform);
        FieldPair {
            to_local: t(to_local),
            to_external: t(to_external),
            ..pair(local, ty, ext)
        }
    }

    fn contract_pairs() -> Vec<FieldPair> {
        vec![
            two_way(
                "amount",
                FieldType::Float,
                "amount_cents",
                "value / 100",
                "(value * 100) | round | int",
            ),
            two_way(
                "phone",
                FieldType::Char,
                "phone",
                "value | regex_replace('[^0-9+]', '')",
                "value",
            ),
            pair("email", FieldType::Char, "email"),
        ]
    }

    #[test]
    fn round_trip_reports_the_values_a_two_way_pair_does_not_give_back() {
        let pairs = contract_pairs();
        let fine = json!({"amount": 12.34, "phone": "+32475", "email": "A@x"});
        assert_eq!(round_trip(&pairs, fine.as_object().unwrap()), []);
        let lossy = json!({"amount": 12.345, "phone": "+32 475", "email": "A@x"});
        let found = round_trip(&pairs, lossy.as_object().unwrap());
        assert_eq!(
            found,
            [
                Lossy {
                    field: "amount".into(),
                    value: json!(12.345),
                    sent: json!(1234),
                    back: json!(12.34),
                    error: None,
                },
                Lossy {
                    field: "phone".into(),
                    value: json!("+32 475"),
                    sent: json!("+32 475"),
                    back: json!("+32475"),
                    error: None,
                },
            ]
        );
        // Nothing, or an empty value, is not judged.
        assert_eq!(
            round_trip(&pairs, json!({"phone": null}).as_object().unwrap()),
            []
        );
        // Going back fails: reported with the reason.
        let p = two_way(
            "visits",
            FieldType::Integer,
            "visits",
            "value | int",
            "value ~ ' visits'",
        );
        let found = round_trip(
            std::slice::from_ref(&p),
            json!({"visits": 3}).as_object().unwrap(),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].sent, json!("3 visits"));
        assert_eq!(found[0].back, Value::Null);
        let why = found[0].error.as_deref().unwrap_or_default();
        assert!(
            why.contains("visits") && why.contains("value | int"),
            "{why}"
        );
    }

    #[test]
    fn paths_build_nested_objects_and_read_back() {
        let pairs = vec![
            pair("name", FieldType::Char, "full_name"),
            pair("city", FieldType::Char, "$.address.city"),
            pair("zip", FieldType::Char, "$['address']['zip']"),
        ];
        let local = json!({"name": "Ana", "city": "Madrid", "zip": "28001"});
        let ext = to_external(&pairs, local.as_object().unwrap(), &NoRefs).unwrap();
        assert_eq!(
            Value::Object(ext.clone()),
            json!({"full_name": "Ana", "address": {"city": "Madrid", "zip": "28001"}})
        );
        let back = to_local(&pairs, &Value::Object(ext)).unwrap();
        assert_eq!(Value::Object(back.values), local);
    }

    #[test]
    fn filters_and_wildcards_are_not_buildable_but_readable() {
        let p = JsonPath::parse("$.phones[?(@.kind == 'work')].number").unwrap();
        assert!(!p.is_buildable());
        let doc =
            json!({"phones": [{"kind": "home", "number": "1"}, {"kind": "work", "number": "2"}]});
        assert_eq!(p.select(&doc), vec![&json!("2")]);
        assert!(JsonPath::parse("$.a.b").unwrap().is_buildable());
        assert!(!JsonPath::parse("$.a[*]").unwrap().is_buildable());
        assert!(JsonPath::parse("$.a[").is_err());
    }

    #[test]
    fn maps_translate_both_ways_and_must_be_one_to_one() {
        let m = ValueMap::new(vec![
            (json!("lead"), json!("L")),
            (json!("customer"), json!("C")),
        ])
        .unwrap();
        let mut p = pair(
            "stage",
            FieldType::Selection(vec!["lead".into(), "customer".into()]),
            "status",
        );
        p.map = Some(m);
        let ext = to_external(
            std::slice::from_ref(&p),
            json!({"stage": "customer"}).as_object().unwrap(),
            &NoRefs,
        )
        .unwrap();
        assert_eq!(ext["status"], json!("C"));
        let back = to_local(std::slice::from_ref(&p), &json!({"status": "L"})).unwrap();
        assert_eq!(back.values["stage"], json!("lead"));
        assert_eq!(
            to_local(std::slice::from_ref(&p), &json!({"status": "Q"})).unwrap_err(),
            vec![FieldError::new(
                "stage",
                "value has no entry in the field's map"
            )]
        );
        assert_eq!(
            ValueMap::new(vec![(json!("a"), json!("X")), (json!("b"), json!("X"))]),
            Err(1)
        );
    }

    #[test]
    fn relations_become_pending_refs_and_ids_resolve_outbound() {
        let mut p = pair(
            "company",
            FieldType::Many2one("company".into()),
            "company_id",
        );
        p.reference = Reference::Sync(SyncCode::parse("COMP").unwrap());
        let mut tags = pair("tags", FieldType::Many2many("tag".into()), "tags");
        tags.reference = Reference::Field("code".into());
        let inbound = to_local(
            &[p.clone(), tags.clone()],
            &json!({"company_id": 748600007347569543u64, "tags": ["a", "b"]}),
        )
        .unwrap();
        assert_eq!(inbound.refs[0].keys, vec!["748600007347569543".to_string()]);
        assert_eq!(inbound.refs[1].keys, vec!["a".to_string(), "b".to_string()]);
        assert!(inbound.refs[1].many);

        struct Ids;
        impl RefResolver for Ids {
            fn local_to_external(&self, _: &FieldPair, id: i64) -> Option<Value> {
                (id == 7).then(|| json!("ext-7"))
            }
        }
        let out = to_external(
            std::slice::from_ref(&p),
            json!({"company": 7}).as_object().unwrap(),
            &Ids,
        )
        .unwrap();
        assert_eq!(out["company_id"], json!("ext-7"));
        let err = to_external(&[p], json!({"company": 8}).as_object().unwrap(), &Ids).unwrap_err();
        assert_eq!(err[0].field, "company");
    }

    #[test]
    fn one_way_pairs_are_respected() {
        let mut p = pair("city", FieldType::Char, "city");
        p.direction = Direction::ToLocal;
        assert!(
            to_external(
                std::slice::from_ref(&p),
                json!({"city": "x"}).as_object().unwrap(),
                &NoRefs
            )
            .unwrap()
            .is_empty()
        );
        p.direction = Direction::ToExternal;
        assert!(
            to_local(&[p], &json!({"city": "x"}))
                .unwrap()
                .values
                .is_empty()
        );
    }

    #[test]
    fn bad_inbound_values_name_the_field() {
        let p = pair("visits", FieldType::Integer, "visits");
        assert_eq!(
            to_local(&[p], &json!({"visits": "many"})).unwrap_err(),
            vec![FieldError::new("visits", "not a valid integer")]
        );
    }

    proptest! {
        /// The contract's invertible pairs survive the round trip on generated values, and
        /// amounts with more than two decimals are reported.
        #[test]
        fn invertible_pairs_survive_and_lossy_ones_are_reported(cents in -10_000_000i64..10_000_000, digits in "[+]?[0-9]{4,14}", extra in 1i64..10) {
            let pairs = contract_pairs();
            let amount = cents as f64 / 100.0;
            let rec = json!({"amount": amount, "phone": digits});
            prop_assert_eq!(round_trip(&pairs, rec.as_object().unwrap()), []);
            let finer = (cents * 10 + extra) as f64 / 1000.0;
            let rec = json!({"amount": finer});
            let found = round_trip(&pairs, rec.as_object().unwrap());
            prop_assert_eq!(found.len(), 1);
            prop_assert_eq!(&found[0].field, "amount");
        }

        #[test]
        fn local_to_external_and_back_is_identity(
            name in "[a-zA-Z ]{0,12}",
            visits in any::<i64>(),
            ok in any::<bool>(),
            stage in 0usize..3,
            depth in 1usize..4,
        ) {
            let stages = ["lead", "customer", "lost"];
            let path = format!("$.{}", (0..depth).map(|i| format!("n{i}")).collect::<Vec<_>>().join("."));
            let mut stage_pair = pair("stage", FieldType::Selection(stages.iter().map(|s| s.to_string()).collect()), "st");
            stage_pair.map = Some(ValueMap::new(vec![(json!("lead"), json!(1)), (json!("customer"), json!(2)), (json!("lost"), json!(3))]).unwrap());
            let pairs = vec![
                pair("name", FieldType::Char, &path),
                pair("visits", FieldType::Integer, "$.stats.visits"),
                pair("ok", FieldType::Boolean, "ok"),
                stage_pair,
            ];
            let local = json!({"name": name, "visits": visits, "ok": ok, "stage": stages[stage]});
            let ext = to_external(&pairs, local.as_object().unwrap(), &NoRefs).unwrap();
            let back = to_local(&pairs, &Value::Object(ext)).unwrap();
            prop_assert_eq!(Value::Object(back.values), local);
        }
    }
}
