//! Field types and the coercion of incoming JSON (or form-encoded strings) to stored values.
//!
//! Stored values are plain JSON with one canonical form per type: integers are JSON integers
//! (never routed through `f64`), dates are `YYYY-MM-DD`, datetimes are RFC 3339 in UTC with a
//! `Z`, binaries are standard base64, relations are record ids.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::Value;
use std::fmt;

/// The 13 field types of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    Char,
    Text,
    Integer,
    Float,
    Boolean,
    Date,
    Datetime,
    Selection(Vec<String>),
    Many2one(String),
    One2many(String),
    Many2many(String),
    Binary,
    Json,
}

/// The type names as written in mapping files.
pub const FIELD_TYPE_NAMES: [&str; 13] = [
    "char",
    "text",
    "integer",
    "float",
    "boolean",
    "date",
    "datetime",
    "selection",
    "many2one",
    "one2many",
    "many2many",
    "binary",
    "json",
];

impl FieldType {
    /// The name used in mapping files.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Char => "char",
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Selection(_) => "selection",
            FieldType::Many2one(_) => "many2one",
            FieldType::One2many(_) => "one2many",
            FieldType::Many2many(_) => "many2many",
            FieldType::Binary => "binary",
            FieldType::Json => "json",
        }
    }

    /// The related model of a relational field.
    pub fn related_model(&self) -> Option<&str> {
        match self {
            FieldType::Many2one(m) | FieldType::One2many(m) | FieldType::Many2many(m) => Some(m),
            _ => None,
        }
    }

    pub fn is_relational(&self) -> bool {
        self.related_model().is_some()
    }

    pub fn is_x2many(&self) -> bool {
        matches!(self, FieldType::One2many(_) | FieldType::Many2many(_))
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a value does not fit its field. The message never repeats the value itself, since it
/// may be a secret; the caller adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoerceError {
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("integer out of range for a 64-bit field")]
    OutOfRange,
    #[error("not a valid {0}")]
    Invalid(&'static str),
    #[error("not one of the allowed values ({0})")]
    NotAllowed(String),
}

/// The JSON kind of a value, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong(expected: &'static str, v: &Value) -> CoerceError {
    CoerceError::WrongType {
        expected,
        found: kind_of(v),
    }
}

/// Coerces one incoming value to the canonical stored form of `ty`.
///
/// Strings are accepted for every scalar type, so form-encoded bodies work: `"1231"` becomes
/// `1231` for an integer and `"true"` becomes `true` for a boolean. An empty string is null for
/// every type but `char` and `text`. Null stays null; whether it is allowed is the record's
/// business (`required`).
pub fn coerce(ty: &FieldType, v: &Value) -> Result<Value, CoerceError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    if let Value::String(s) = v
        && s.is_empty()
        && !matches!(ty, FieldType::Char | FieldType::Text | FieldType::Json)
    {
        return Ok(Value::Null);
    }
    match ty {
        FieldType::Char | FieldType::Text => match v {
            Value::String(s) => Ok(Value::String(s.clone())),
            // Numbers keep every digit: serde_json holds i64/u64 exactly.
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => Err(wrong("a string", v)),
        },
        FieldType::Integer => coerce_integer(v).map(Value::from),
        FieldType::Float => match v {
            Value::Number(n) => n
                .as_f64()
                .map(Value::from)
                .ok_or(CoerceError::Invalid("number")),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from)
                .ok_or(CoerceError::Invalid("number")),
            _ => Err(wrong("a number", v)),
        },
        FieldType::Boolean => coerce_bool(v).map(Value::Bool),
        FieldType::Date => match v {
            Value::String(s) => {
                parse_date(s).map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            }
            _ => Err(wrong("a date string (YYYY-MM-DD)", v)),
        },
        FieldType::Datetime => match v {
            Value::String(s) => parse_datetime(s).map(|d| Value::String(format_datetime(&d))),
            _ => Err(wrong("an RFC 3339 datetime string", v)),
        },
        FieldType::Selection(values) => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(wrong("a string", v)),
            };
            if values.contains(&s) {
                Ok(Value::String(s))
            } else {
                Err(CoerceError::NotAllowed(
                    values
                        .iter()
                        .map(|x| format!("`{x}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        }
        FieldType::Many2one(_) => match v {
            Value::Bool(false) => Ok(Value::Null),
            _ => coerce_integer(v).map(Value::from),
        },
        FieldType::One2many(_) | FieldType::Many2many(_) => match v {
            Value::Array(items) => items
                .iter()
                .map(|i| coerce_integer(i).map(Value::from))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::String(s) => s
                .split(',')
                .map(|p| coerce_integer(&Value::String(p.trim().to_string())).map(Value::from))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            _ => Err(wrong("a list of record ids", v)),
        },
        FieldType::Binary => match v {
            Value::String(s) => {
                let bytes = decode_base64(s)?;
                // No bytes at all (only whitespace was given) is an empty value: null, as
                // an empty string is.
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                Ok(Value::String(
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                ))
            }
            _ => Err(wrong("a base64 string", v)),
        },
        FieldType::Json => match v {
            // A form field can only carry text: accept JSON text, else keep the string.
            Value::String(s) => Ok(serde_json::from_str(s).unwrap_or_else(|_| v.clone())),
            _ => Ok(v.clone()),
        },
    }
}

fn coerce_integer(v: &Value) -> Result<i64, CoerceError> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(CoerceError::OutOfRange)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                // 2^53: beyond it an f64 no longer holds every integer.
                if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                    Ok(f as i64)
                } else if f.fract() == 0.0 {
                    Err(CoerceError::OutOfRange)
                } else {
                    Err(CoerceError::Invalid("integer"))
                }
            }
        }
        Value::String(s) => {
            let t = s.trim();
            match t.parse::<i64>() {
                Ok(i) => Ok(i),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
                    ) =>
                {
                    Err(CoerceError::OutOfRange)
                }
                Err(_) => Err(CoerceError::Invalid("integer")),
            }
        }
        Value::Bool(_) | Value::Array(_) | Value::Object(_) | Value::Null => {
            Err(wrong("an integer", v))
        }
    }
}

fn coerce_bool(v: &Value) -> Result<bool, CoerceError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(CoerceError::Invalid("boolean")),
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" => Ok(true),
            "false" | "0" | "no" | "off" | "f" => Ok(false),
            _ => Err(CoerceError::Invalid("boolean")),
        },
        _ => Err(wrong("a boolean", v)),
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, CoerceError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| CoerceError::Invalid("date (YYYY-MM-DD)"))
}

/// Parses RFC 3339 (any offset), or a naive `YYYY-MM-DD HH:MM:SS` taken as UTC.
pub fn parse_datetime(s: &str) -> Result<DateTime<Utc>, CoerceError> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(n.and_utc());
        }
    }
    Err(CoerceError::Invalid("RFC 3339 datetime"))
}

/// The canonical stored text of a datetime: UTC with `Z`, fractional seconds only when present.
pub fn format_datetime(d: &DateTime<Utc>) -> String {
    d.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn decode_base64(s: &str) -> Result<Vec<u8>, CoerceError> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let t: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD
        .decode(&t)
        .or_else(|_| URL_SAFE.decode(&t))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&t))
        .map_err(|_| CoerceError::Invalid("base64 string"))
}

/// Decodes a stored binary value.
pub fn binary_bytes(v: &Value) -> Option<Vec<u8>> {
    v.as_str().and_then(|s| decode_base64(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn form_strings_become_typed() {
        assert_eq!(coerce(&FieldType::Integer, &json!("1231")), Ok(json!(1231)));
        assert_eq!(coerce(&FieldType::Boolean, &json!("true")), Ok(json!(true)));
        assert_eq!(coerce(&FieldType::Boolean, &json!("0")), Ok(json!(false)));
        assert_eq!(coerce(&FieldType::Float, &json!("2.5")), Ok(json!(2.5)));
        assert_eq!(coerce(&FieldType::Integer, &json!("")), Ok(Value::Null));
        assert_eq!(coerce(&FieldType::Char, &json!("")), Ok(json!("")));
        assert_eq!(
            coerce(&FieldType::Many2many("t".into()), &json!("1, 2,3")),
            Ok(json!([1, 2, 3]))
        );
    }

    #[test]
    fn big_integers_keep_every_digit() {
        let v: Value = serde_json::from_str("748600007347569543").unwrap();
        assert_eq!(
            coerce(&FieldType::Integer, &v).unwrap().to_string(),
            "748600007347569543"
        );
        assert_eq!(
            coerce(&FieldType::Char, &v),
            Ok(json!("748600007347569543"))
        );
        assert_eq!(
            coerce(&FieldType::Integer, &json!("748600007347569543"))
                .unwrap()
                .as_i64(),
            Some(748600007347569543)
        );
        assert_eq!(
            coerce(&FieldType::Integer, &json!("9223372036854775808")),
            Err(CoerceError::OutOfRange)
        );
        let huge: Value = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(
            coerce(&FieldType::Integer, &huge),
            Err(CoerceError::OutOfRange)
        );
        assert_eq!(
            coerce(&FieldType::Char, &huge),
            Ok(json!("18446744073709551615"))
        );
        assert_eq!(
            coerce(&FieldType::Integer, &json!(2.5)),
            Err(CoerceError::Invalid("integer"))
        );
        assert_eq!(coerce(&FieldType::Integer, &json!(3.0)), Ok(json!(3)));
    }

    #[test]
    fn dates_and_datetimes() {
        assert_eq!(
            coerce(&FieldType::Date, &json!("2024-02-29")),
            Ok(json!("2024-02-29"))
        );
        assert!(coerce(&FieldType::Date, &json!("2023-02-29")).is_err());
        assert_eq!(
            coerce(&FieldType::Datetime, &json!("2024-03-01T10:00:00+02:00")),
            Ok(json!("2024-03-01T08:00:00Z"))
        );
        assert_eq!(
            coerce(
                &FieldType::Datetime,
                &json!("2024-03-01T10:00:00.250-01:00")
            ),
            Ok(json!("2024-03-01T11:00:00.250Z"))
        );
        assert_eq!(
            coerce(&FieldType::Datetime, &json!("2024-03-01 10:00:00")),
            Ok(json!("2024-03-01T10:00:00Z"))
        );
        assert_eq!(
            coerce(&FieldType::Datetime, &json!(12)),
            Err(CoerceError::WrongType {
                expected: "an RFC 3339 datetime string",
                found: "an integer"
            })
        );
    }

    #[test]
    fn selection_and_binary() {
        let sel = FieldType::Selection(vec!["lead".into(), "customer".into()]);
        assert_eq!(coerce(&sel, &json!("lead")), Ok(json!("lead")));
        assert_eq!(
            coerce(&sel, &json!("x")),
            Err(CoerceError::NotAllowed("`lead`, `customer`".into()))
        );
        assert_eq!(
            coerce(&FieldType::Binary, &json!("aGVsbG8=")),
            Ok(json!("aGVsbG8="))
        );
        assert_eq!(
            coerce(&FieldType::Binary, &json!("aGVsbG8")),
            Ok(json!("aGVsbG8="))
        );
        assert!(coerce(&FieldType::Binary, &json!("%%%")).is_err());
        assert_eq!(binary_bytes(&json!("aGVsbG8=")), Some(b"hello".to_vec()));
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(
            coerce(&FieldType::Boolean, &json!([1])),
            Err(CoerceError::WrongType {
                expected: "a boolean",
                found: "a list"
            })
        );
        assert_eq!(
            coerce(&FieldType::Integer, &json!("12a")),
            Err(CoerceError::Invalid("integer"))
        );
    }

    #[test]
    fn whitespace_only_base64_is_null_like_an_empty_string() {
        // Found by tests/fuzz.rs: "\f" decoded to no bytes, encoded as "", which coerced to
        // null the second time.
        assert_eq!(coerce(&FieldType::Binary, &json!("\u{c}")), Ok(Value::Null));
        assert_eq!(coerce(&FieldType::Binary, &json!(" ")), Ok(Value::Null));
    }

    proptest! {
        #[test]
        fn integers_round_trip_through_strings(i in any::<i64>()) {
            prop_assert_eq!(coerce(&FieldType::Integer, &json!(i.to_string())), Ok(json!(i)));
            prop_assert_eq!(coerce(&FieldType::Integer, &json!(i)), Ok(json!(i)));
            prop_assert_eq!(coerce(&FieldType::Char, &json!(i)), Ok(json!(i.to_string())));
        }

        #[test]
        fn coercion_is_idempotent(i in any::<i64>(), f in -1e12f64..1e12, b in any::<bool>(), bytes in proptest::collection::vec(any::<u8>(), 0..64), secs in 0i64..4_000_000_000, nanos in 0u32..1_000_000_000) {
            let dt = DateTime::from_timestamp(secs, nanos).unwrap();
            let cases = [
                (FieldType::Integer, json!(i)),
                (FieldType::Float, json!(f)),
                (FieldType::Boolean, json!(b)),
                (FieldType::Binary, json!(base64::engine::general_purpose::STANDARD.encode(&bytes))),
                (FieldType::Datetime, json!(dt.to_rfc3339())),
                (FieldType::Date, json!(dt.date_naive().to_string())),
            ];
            for (ty, v) in cases {
                let once = coerce(&ty, &v).unwrap();
                prop_assert_eq!(coerce(&ty, &once).unwrap(), once.clone());
                if ty == FieldType::Datetime {
                    prop_assert_eq!(parse_datetime(once.as_str().unwrap()).unwrap(), dt);
                }
            }
        }
    }
}
