//! Field transforms (`mapping.md`, "Field transforms"): a pair's value computed by a Jinja
//! expression, compiled once when the configuration loads and evaluated by minijinja's
//! expression API. Values keep their types on the way in and out (numbers, text, booleans,
//! null, lists, maps). recsync adds the filters a sync needs to the language's own:
//! `regex_replace`, `regex_match`, `date`, `parse_date` and `sha256` (`split` is built in).

use minijinja::machinery::{Token, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value as Jinja};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

/// The environment every transform is compiled in: the language's filters and recsync's.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.add_filter("regex_replace", regex_replace);
    env.add_filter("regex_match", regex_match);
    env.add_filter("date", date);
    env.add_filter("parse_date", parse_date);
    env.add_filter("sha256", sha256);
    env
});

/// recsync's own filters, beside the language's.
pub const RECSYNC_FILTERS: [&str; 5] = [
    "regex_replace",
    "regex_match",
    "date",
    "parse_date",
    "sha256",
];

/// Names an expression may read.
pub const VARIABLES: [&str; 3] = ["value", "external", "local"];

/// Filters of the language a user may reach for; those this build of minijinja has are the
/// known ones (checked once, by asking it).
const CANDIDATE_FILTERS: [&str; 46] = [
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "zip",
];

/// Every filter name an expression may use, sorted.
pub fn filter_names() -> &'static [&'static str] {
    static NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let mut all: Vec<&str> = CANDIDATE_FILTERS
            .iter()
            .chain(RECSYNC_FILTERS.iter())
            .copied()
            .filter(|name| {
                // Applying an unknown filter is the only way to fail with `UnknownFilter`.
                ENV.compile_expression_owned(format!("none | {name}"))
                    .and_then(|e| e.eval(()))
                    .map_or_else(|e| e.kind() != ErrorKind::UnknownFilter, |_| true)
            })
            .collect();
        all.sort_unstable();
        all
    });
    &NAMES
}

/// A compiled expression and the names it reads.
pub struct Transform {
    source: String,
    expr: minijinja::Expression<'static, 'static>,
    /// `external.<name>` (or `external['name']`) read by the expression.
    pub external: BTreeSet<String>,
    /// `local.<name>` read by the expression.
    pub local: BTreeSet<String>,
    /// Whether it reads `value`.
    pub value: bool,
    /// Whether it reads `external` or `local` as a whole (not one field of it).
    pub whole_record: bool,
}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transform({:?})", self.source)
    }
}

impl PartialEq for Transform {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// A name or token of an expression that is wrong, with its byte range in the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub message: String,
    pub range: Option<std::ops::Range<usize>>,
    /// What the name should be instead, when it is a name.
    pub name: Option<String>,
    pub kind: ExprErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprErrorKind {
    Syntax,
    Filter,
    Variable,
    External,
    Local,
}

/// A name read through `external.` or `local.`, with its place in the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct NameUse {
    pub record: &'static str,
    pub name: String,
    pub range: std::ops::Range<usize>,
}

/// What compiling an expression found: the names it reads, with their places, so the
/// configuration compiler can check them against the models.
pub struct Compiled {
    pub transform: Arc<Transform>,
    pub names: Vec<NameUse>,
    /// Where `value` is read (the first place).
    pub value_at: Option<std::ops::Range<usize>>,
    /// Unknown filters and names: the expression cannot be used, but its other names are
    /// still checked, so every mistake is reported at once.
    pub errors: Vec<ExprError>,
}

impl Transform {
    /// Compiles an expression: a syntax error is the answer's error; unknown filters and
    /// variables come back in [`Compiled::errors`], with the names read, each with its place
    /// in `source`.
    pub fn compile(source: &str) -> Result<Compiled, Vec<ExprError>> {
        let expr = match ENV.compile_expression_owned(source.to_string()) {
            Ok(e) => e,
            Err(e) => {
                return Err(vec![ExprError {
                    message: syntax_message(&e),
                    range: e.range(),
                    name: None,
                    kind: ExprErrorKind::Syntax,
                }]);
            }
        };
        let tokens: Vec<(Token<'_>, std::ops::Range<usize>)> =
            match tokenize(source, true, SyntaxConfig::default())
                .map(|t| {
                    t.map(|(tok, span)| (tok, span.start_offset as usize..span.end_offset as usize))
                })
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(t) => t,
                Err(e) => {
                    return Err(vec![ExprError {
                        message: syntax_message(&e),
                        range: e.range(),
                        name: None,
                        kind: ExprErrorKind::Syntax,
                    }]);
                }
            };
        let filters = filter_names();
        let mut errors = Vec::new();
        let mut names = Vec::new();
        let mut value_at = None;
        let mut whole_record = false;
        for (i, (tok, range)) in tokens.iter().enumerate() {
            let Token::Ident(name) = tok else { continue };
            let before = i.checked_sub(1).map(|j| &tokens[j].0);
            let after = tokens.get(i + 1).map(|t| &t.0);
            match before {
                // A filter's name.
                Some(Token::Pipe) => {
                    if !filters.contains(name) {
                        errors.push(ExprError {
                            message: format!("unknown filter `{name}`"),
                            range: Some(range.clone()),
                            name: Some(name.to_string()),
                            kind: ExprErrorKind::Filter,
                        });
                    }
                    continue;
                }
                // An attribute (`x.name`).
                Some(Token::Dot) => continue,
                _ => {}
            }
            // A test (`x is defined`, `x is not none`).
            let is = |j: Option<usize>| matches!(j.map(|j| &tokens[j].0), Some(Token::Ident("is")));
            if is(i.checked_sub(1))
                || (matches!(before, Some(Token::Ident("not"))) && is(i.checked_sub(2)))
            {
                continue;
            }
            match *name {
                "true" | "false" | "none" | "True" | "False" | "None" | "and" | "or" | "not"
                | "in" | "is" | "if" | "else" => {}
                "value" => {
                    value_at.get_or_insert(range.clone());
                }
                "external" | "local" => {
                    let record: &'static str = if *name == "external" {
                        "external"
                    } else {
                        "local"
                    };
                    match (after, tokens.get(i + 2)) {
                        (Some(Token::Dot), Some((Token::Ident(field), r))) => names.push(NameUse {
                            record,
                            name: field.to_string(),
                            range: r.clone(),
                        }),
                        (Some(Token::BracketOpen), Some((Token::Str(field), r)))
                            if matches!(
                                tokens.get(i + 3).map(|t| &t.0),
                                Some(Token::BracketClose)
                            ) =>
                        {
                            names.push(NameUse {
                                record,
                                name: field.to_string(),
                                range: r.clone(),
                            })
                        }
                        _ => whole_record = true,
                    }
                }
                // A function of the language (`range(3)`, `dict(a=1)`).
                _ if matches!(after, Some(Token::ParenOpen))
                    && ENV.globals().any(|(g, _)| g == *name) => {}
                other => errors.push(ExprError {
                    message: format!("unknown name `{other}`"),
                    range: Some(range.clone()),
                    name: Some(other.to_string()),
                    kind: ExprErrorKind::Variable,
                }),
            }
        }
        let transform = Arc::new(Transform {
            source: source.to_string(),
            expr,
            external: names
                .iter()
                .filter(|n| n.record == "external")
                .map(|n| n.name.clone())
                .collect(),
            local: names
                .iter()
                .filter(|n| n.record == "local")
                .map(|n| n.name.clone())
                .collect(),
            value: value_at.is_some(),
            whole_record,
        });
        Ok(Compiled {
            transform,
            names,
            value_at,
            errors,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression. `value` is the pair's source value, `external` the whole
    /// external record, `local` the whole local record; a name the expression does not read
    /// is not converted. The error says what failed, for a message that names the sync, the
    /// field and the input.
    pub fn eval(
        &self,
        value: Option<&Value>,
        external: Option<&Value>,
        local: Option<&Map<String, Value>>,
    ) -> Result<Value, String> {
        #[derive(serde::Serialize)]
        struct Ctx<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            value: Option<&'a Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            external: Option<&'a Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            local: Option<&'a Map<String, Value>>,
        }
        let reads_records = self.whole_record;
        let ctx = Ctx {
            value: self.value.then_some(value.unwrap_or(&Value::Null)),
            external: external.filter(|_| reads_records || !self.external.is_empty()),
            local: local.filter(|_| reads_records || !self.local.is_empty()),
        };
        let out = self
            .expr
            .eval(Jinja::from(Serde(&ctx)))
            .map_err(|e| run_message(&e))?;
        to_json(&out)
    }
}

fn to_json(v: &Jinja) -> Result<Value, String> {
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    let out = serde_json::to_value(v).map_err(|e| format!("the result cannot be stored: {e}"))?;
    // A float that is a whole number stays a float in Jinja; keep what the expression made.
    Ok(out)
}

/// The first line of a syntax error, without minijinja's template name and line.
fn syntax_message(e: &Error) -> String {
    match e.detail() {
        Some(d) => format!("syntax error: {d}"),
        None => format!("syntax error: {}", e.kind()),
    }
}

/// A run-time failure, in a sentence.
fn run_message(e: &Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Compiled patterns, by source: a filter's pattern is a literal of the configuration, so
/// each is compiled once.
static PATTERNS: LazyLock<Mutex<HashMap<String, Arc<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn pattern(p: &str) -> Result<Arc<regex::Regex>, Error> {
    let mut cache = PATTERNS.lock().expect("pattern cache");
    if let Some(r) = cache.get(p) {
        return Ok(r.clone());
    }
    let r =
        Arc::new(regex::Regex::new(p).map_err(|e| invalid(format!("invalid pattern {p:?}: {e}")))?);
    if cache.len() < 1024 {
        cache.insert(p.to_string(), r.clone());
    }
    Ok(r)
}

/// `text | regex_replace(pattern, with)`: every match replaced (`$1` names a group).
fn regex_replace(text: &str, pat: &str, with: &str) -> Result<String, Error> {
    Ok(pattern(pat)?.replace_all(text, with).into_owned())
}

/// `text | regex_match(pattern)`: whether the pattern matches somewhere in the text (anchor
/// it with `^…$` to match the whole text).
fn regex_match(text: &str, pat: &str) -> Result<bool, Error> {
    Ok(pattern(pat)?.is_match(text))
}

fn zone(tz: Option<&str>) -> Result<chrono_tz::Tz, Error> {
    match tz {
        None => Ok(chrono_tz::UTC),
        Some(t) => t
            .parse()
            .map_err(|_| invalid(format!("unknown time zone {t:?}"))),
    }
}

/// `value | date(format[, tz])`: a date or datetime written in `format` (strftime), a
/// datetime shown in time zone `tz` (default UTC).
fn date(v: &str, format: &str, tz: Option<&str>) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(invalid(format!("invalid date format {format:?}")));
    }
    if let Ok(d) = crate::domain::value::parse_datetime(v) {
        return Ok(d.with_timezone(&zone(tz)?).format(format).to_string());
    }
    match crate::domain::value::parse_date(v) {
        Ok(d) => Ok(d.format(format).to_string()),
        Err(_) => Err(invalid(format!("{v:?} is not a date or datetime"))),
    }
}

/// `text | parse_date(format[, tz])`: text in `format` read as a datetime in time zone `tz`
/// (default UTC), stored as recsync stores datetimes (RFC 3339 in UTC); a format without a
/// time gives a date (`YYYY-MM-DD`).
fn parse_date(v: &str, format: &str, tz: Option<&str>) -> Result<String, Error> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let t = v.trim();
    if let Ok(n) = NaiveDateTime::parse_from_str(t, format) {
        let z = zone(tz)?;
        let local = z
            .from_local_datetime(&n)
            .earliest()
            .ok_or_else(|| invalid(format!("{t:?} does not exist in time zone {z}")))?;
        return Ok(crate::domain::value::format_datetime(
            &local.with_timezone(&chrono::Utc),
        ));
    }
    if let Ok(d) = chrono::DateTime::parse_from_str(t, format) {
        return Ok(crate::domain::value::format_datetime(
            &d.with_timezone(&chrono::Utc),
        ));
    }
    match NaiveDate::parse_from_str(t, format) {
        Ok(d) => Ok(d.format("%Y-%m-%d").to_string()),
        Err(e) => Err(invalid(format!("{t:?} does not match {format:?}: {e}"))),
    }
}

/// `value | sha256`: the lowercase hex SHA-256 of the text (of its JSON for other values).
fn sha256(v: Jinja) -> Result<String, Error> {
    use sha2::Digest;
    let text = match v.as_str() {
        Some(s) => s.to_string(),
        None if v.is_none() || v.is_undefined() => {
            return Err(invalid("sha256 of none"));
        }
        None => serde_json::to_string(&v).map_err(|e| invalid(e.to_string()))?,
    };
    Ok(hex::encode(sha2::Sha256::digest(text.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, value: Value) -> Result<Value, String> {
        let c = Transform::compile(src).map_err(|e| format!("{e:?}"))?;
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        c.transform.eval(Some(&value), None, None)
    }

    #[test]
    fn values_keep_their_types() {
        assert_eq!(run("value / 100", json!(1234)).unwrap(), json!(12.34));
        assert_eq!(
            run("(value * 100) | round | int", json!(12.34)).unwrap(),
            json!(1234)
        );
        assert_eq!(
            run(
                "value | regex_replace('[^0-9+]', '')",
                json!("+41 (0) 44-123")
            )
            .unwrap(),
            json!("+41044123")
        );
        assert_eq!(
            run("value | split(' ', 1) | last", json!("Ada King Lovelace")).unwrap(),
            json!("King Lovelace")
        );
        assert_eq!(
            run("value | split(' ', 1) | first", json!("Ada King Lovelace")).unwrap(),
            json!("Ada")
        );
    }

    #[test]
    fn every_recsync_filter() {
        assert_eq!(
            run(
                "value | regex_replace('(\\w+)@(\\w+)', '$2 at $1')",
                json!("ada@example")
            )
            .unwrap(),
            json!("example at ada")
        );
        assert_eq!(
            run("value | regex_match('^[A-Z]{2}$')", json!("CH")).unwrap(),
            json!(true)
        );
        assert_eq!(
            run("value | regex_match('^[A-Z]{2}$')", json!("CHE")).unwrap(),
            json!(false)
        );
        assert_eq!(
            run(
                "value | date('%d.%m.%Y %H:%M', 'Europe/Zurich')",
                json!("2024-03-01T10:00:00Z")
            )
            .unwrap(),
            json!("01.03.2024 11:00")
        );
        assert_eq!(
            run("value | date('%d.%m.%Y')", json!("2024-03-01")).unwrap(),
            json!("01.03.2024")
        );
        assert_eq!(
            run("value | parse_date('%d.%m.%Y')", json!("01.03.2024")).unwrap(),
            json!("2024-03-01")
        );
        assert_eq!(
            run(
                "value | parse_date('%d.%m.%Y %H:%M', 'Europe/Zurich')",
                json!("01.03.2024 11:00")
            )
            .unwrap(),
            json!("2024-03-01T10:00:00Z")
        );
        assert_eq!(
            run("value | sha256", json!("abc")).unwrap(),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    #[test]
    fn failures_say_what_failed() {
        let e = run("value | parse_date('%d.%m.%Y')", json!("2024-03-01")).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = run(
            "value | date('%d.%m.%Y', 'Mars/Olympus')",
            json!("2024-03-01T10:00:00Z"),
        )
        .unwrap_err();
        assert!(e.contains("unknown time zone"), "{e}");
        let e = run("value | regex_replace('(', '')", json!("x")).unwrap_err();
        assert!(e.contains("invalid pattern"), "{e}");
        let e = run("value | sha256", Value::Null).unwrap_err();
        assert!(e.contains("none"), "{e}");
        let e = run("value / 0", json!(3)).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn names_read_are_known_with_their_places() {
        let c =
            Transform::compile("[external.firstname, external['last name']] | select | join(' ')")
                .unwrap();
        assert!(c.errors.is_empty());
        let t = &c.transform;
        assert_eq!(
            t.external.iter().collect::<Vec<_>>(),
            ["firstname", "last name"]
        );
        assert_eq!(
            &"[external.firstname"[c.names[0].range.clone()],
            "firstname"
        );
        let c = Transform::compile("value is not none and value is defined and x | nope").unwrap();
        let names: Vec<_> = c.errors.iter().map(|e| e.message.clone()).collect();
        assert_eq!(names, ["unknown name `x`", "unknown filter `nope`"]);
        assert!(Transform::compile("value |").is_err());
    }

    proptest::proptest! {
        /// The contract's invertible pairs round trip: cents and phones.
        #[test]
        fn invertible_pairs_round_trip(cents in -10_000_000i64..10_000_000, digits in "[+]?[0-9]{4,14}") {
            let to_local = Transform::compile("value / 100").unwrap().transform;
            let to_external = Transform::compile("(value * 100) | round | int").unwrap().transform;
            let local = to_local.eval(Some(&json!(cents)), None, None).unwrap();
            let back = to_external.eval(Some(&local), None, None).unwrap();
            proptest::prop_assert_eq!(back, json!(cents));
            let clean = Transform::compile("value | regex_replace('[^0-9+]', '')").unwrap().transform;
            let once = clean.eval(Some(&json!(digits)), None, None).unwrap();
            let twice = clean.eval(Some(&once), None, None).unwrap();
            proptest::prop_assert_eq!(once, twice);
        }
    }
}
