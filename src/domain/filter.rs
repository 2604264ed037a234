//! Odoo-style domains: `[field, operator, value]` conditions combined with prefix `|`, `&`
//! and `!`, type-checked against a model once and then evaluated against stored records.

use super::value::{FieldType, coerce, parse_datetime};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Like,
    Ilike,
    EqLike,
    EqIlike,
}

/// Every operator as written in a domain.
pub const OPERATORS: [&str; 12] = [
    "=", "!=", "<", "<=", ">", ">=", "in", "not in", "like", "ilike", "=like", "=ilike",
];

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "=" | "==" => Op::Eq,
            "!=" | "<>" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "in" => Op::In,
            "not in" => Op::NotIn,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "=like" => Op::EqLike,
            "=ilike" => Op::EqIlike,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
            Op::NotIn => "not in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::EqLike => "=like",
            Op::EqIlike => "=ilike",
        }
    }

    fn is_like(self) -> bool {
        matches!(self, Op::Like | Op::Ilike | Op::EqLike | Op::EqIlike)
    }

    fn is_order(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }
}

/// Which operators a field type supports.
pub fn operator_fits(ty: &FieldType, op: Op) -> bool {
    match ty {
        FieldType::Char | FieldType::Text | FieldType::Selection(_) => true,
        FieldType::Integer | FieldType::Float | FieldType::Date | FieldType::Datetime => {
            !op.is_like()
        }
        FieldType::Boolean
        | FieldType::Many2one(_)
        | FieldType::One2many(_)
        | FieldType::Many2many(_) => matches!(op, Op::Eq | Op::Ne | Op::In | Op::NotIn),
        FieldType::Binary | FieldType::Json => matches!(op, Op::Eq | Op::Ne),
    }
}

/// "a" or "an", as the word after it is said.
fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Why a condition does not fit its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("operator `{op}` cannot be used on {} {ty} field", article(ty))]
    OperatorType { op: &'static str, ty: &'static str },
    #[error("operator `{0}` needs a list of values")]
    ListRequired(&'static str),
    #[error("operator `{0}` needs a string pattern")]
    PatternRequired(&'static str),
    #[error("value does not fit the {ty} field: {reason}")]
    Value { ty: &'static str, reason: String },
}

/// A type-checked condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub ty: FieldType,
    pub op: Op,
    /// The coerced operand (a list for `in` / `not in`).
    pub value: Value,
}

impl Condition {
    /// Type-checks `[field, op, value]` against the field's type.
    pub fn new(field: &str, ty: &FieldType, op: Op, value: &Value) -> Result<Self, ConditionError> {
        if !operator_fits(ty, op) {
            return Err(ConditionError::OperatorType {
                op: op.as_str(),
                ty: ty.name(),
            });
        }
        let scalar = match ty {
            FieldType::One2many(m) | FieldType::Many2many(m) => FieldType::Many2one(m.clone()),
            other => other.clone(),
        };
        let coerce_one = |v: &Value| -> Result<Value, ConditionError> {
            if matches!(v, Value::Null | Value::Bool(false)) && !matches!(ty, FieldType::Boolean) {
                return Ok(Value::Null);
            }
            coerce(&scalar, v).map_err(|e| ConditionError::Value {
                ty: ty.name(),
                reason: e.to_string(),
            })
        };
        let value = match op {
            Op::In | Op::NotIn => match value {
                Value::Array(items) => {
                    Value::Array(items.iter().map(coerce_one).collect::<Result<_, _>>()?)
                }
                _ => return Err(ConditionError::ListRequired(op.as_str())),
            },
            _ if op.is_like() => match value {
                Value::String(s) => Value::String(s.clone()),
                _ => return Err(ConditionError::PatternRequired(op.as_str())),
            },
            _ => coerce_one(value)?,
        };
        Ok(Condition {
            field: field.to_string(),
            ty: ty.clone(),
            op,
            value,
        })
    }

    /// Does the record's value satisfy this condition?
    pub fn matches(&self, values: &Map<String, Value>) -> bool {
        let null = Value::Null;
        let v = values.get(&self.field).unwrap_or(&null);
        if self.ty.is_x2many() {
            let ids: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            let hit = |x: &Value| {
                if x.is_null() {
                    ids.is_empty()
                } else {
                    ids.contains(&x)
                }
            };
            return match self.op {
                Op::Eq => hit(&self.value),
                Op::Ne => !hit(&self.value),
                Op::In => self.value.as_array().is_some_and(|l| l.iter().any(hit)),
                Op::NotIn => !self.value.as_array().is_some_and(|l| l.iter().any(hit)),
                _ => false,
            };
        }
        let v = normalise(&self.ty, v);
        match self.op {
            Op::Eq => same(&self.ty, &v, &self.value),
            Op::Ne => !same(&self.ty, &v, &self.value),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|l| l.iter().any(|x| same(&self.ty, &v, x))),
            Op::NotIn => !self
                .value
                .as_array()
                .is_some_and(|l| l.iter().any(|x| same(&self.ty, &v, x))),
            op if op.is_order() => match compare(&self.ty, &v, &self.value) {
                Some(o) => match op {
                    Op::Lt => o == Ordering::Less,
                    Op::Le => o != Ordering::Greater,
                    Op::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                },
                None => false,
            },
            op => {
                let (Some(text), Some(pat)) = (v.as_str(), self.value.as_str()) else {
                    return false;
                };
                let wrapped;
                let pat = if matches!(op, Op::Like | Op::Ilike) {
                    wrapped = format!("%{pat}%");
                    wrapped.as_str()
                } else {
                    pat
                };
                if matches!(op, Op::Ilike | Op::EqIlike) {
                    like_match(&text.to_lowercase(), &pat.to_lowercase())
                } else {
                    like_match(text, pat)
                }
            }
        }
    }
}

/// Booleans treat a missing value as false, as Odoo does.
fn normalise(ty: &FieldType, v: &Value) -> Value {
    match (ty, v) {
        (FieldType::Boolean, Value::Null) => Value::Bool(false),
        _ => v.clone(),
    }
}

fn same(ty: &FieldType, a: &Value, b: &Value) -> bool {
    if a.is_null() || b.is_null() {
        return a.is_null() && b.is_null();
    }
    compare(ty, a, b) == Some(Ordering::Equal)
}

fn compare(ty: &FieldType, a: &Value, b: &Value) -> Option<Ordering> {
    if a.is_null() || b.is_null() {
        return None;
    }
    match ty {
        FieldType::Integer | FieldType::Many2one(_) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
        },
        FieldType::Float => a.as_f64()?.partial_cmp(&b.as_f64()?),
        FieldType::Boolean => Some(a.as_bool()?.cmp(&b.as_bool()?)),
        FieldType::Datetime => Some(
            parse_datetime(a.as_str()?)
                .ok()?
                .cmp(&parse_datetime(b.as_str()?).ok()?),
        ),
        FieldType::Char | FieldType::Text | FieldType::Selection(_) | FieldType::Date => {
            Some(a.as_str()?.cmp(b.as_str()?))
        }
        _ => (a == b).then_some(Ordering::Equal),
    }
}

/// SQL LIKE matching: `%` is any run of characters, `_` exactly one; `\` escapes the next one.
pub fn like_match(text: &str, pattern: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Lit(char),
    }
    let mut pat = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        pat.push(match c {
            '%' => P::Any,
            '_' => P::One,
            '\\' => P::Lit(it.next().unwrap_or('\\')),
            c => P::Lit(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // dp[j]: pattern prefix of length j matches the text prefix seen so far.
    let mut dp = vec![false; pat.len() + 1];
    dp[0] = true;
    for j in 1..=pat.len() {
        dp[j] = dp[j - 1] && pat[j - 1] == P::Any;
    }
    for &c in &text {
        let mut next = vec![false; pat.len() + 1];
        for j in 1..=pat.len() {
            next[j] = match pat[j - 1] {
                P::Any => next[j - 1] || dp[j],
                P::One => dp[j - 1],
                P::Lit(l) => dp[j - 1] && l == c,
            };
        }
        dp = next;
    }
    dp[pat.len()]
}

/// One element of a domain in prefix notation.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    And,
    Or,
    Not,
    Cond(Condition),
}

/// A compiled domain.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Domain {
    /// The empty domain: every record matches.
    #[default]
    All,
    Cond(Condition),
    Not(Box<Domain>),
    And(Box<Domain>, Box<Domain>),
    Or(Box<Domain>, Box<Domain>),
}

/// A prefix operator at `index` lacks operands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operator `{op}` needs {needed} operand(s) after it")]
pub struct ArityError {
    pub index: usize,
    pub op: &'static str,
    pub needed: usize,
}

impl Domain {
    /// Builds a domain from prefix tokens; top-level terms left over are joined by AND.
    pub fn from_tokens(tokens: Vec<Token>) -> Result<Domain, ArityError> {
        let mut stack: Vec<Domain> = Vec::new();
        for (index, tok) in tokens.into_iter().enumerate().rev() {
            let node = match tok {
                Token::Cond(c) => Domain::Cond(c),
                Token::Not => {
                    let a = stack.pop().ok_or(ArityError {
                        index,
                        op: "!",
                        needed: 1,
                    })?;
                    Domain::Not(Box::new(a))
                }
                Token::And | Token::Or => {
                    let op = if tok == Token::And { "&" } else { "|" };
                    if stack.len() < 2 {
                        return Err(ArityError {
                            index,
                            op,
                            needed: 2,
                        });
                    }
                    let a = stack.pop().expect("checked");
                    let b = stack.pop().expect("checked");
                    if op == "&" {
                        Domain::And(Box::new(a), Box::new(b))
                    } else {
                        Domain::Or(Box::new(a), Box::new(b))
                    }
                }
            };
            stack.push(node);
        }
        // The stack holds the top-level terms last-first.
        let mut out: Option<Domain> = None;
        while let Some(term) = stack.pop() {
            out = Some(match out {
                None => term,
                Some(acc) => Domain::And(Box::new(acc), Box::new(term)),
            });
        }
        Ok(out.unwrap_or(Domain::All))
    }

    pub fn matches(&self, values: &Map<String, Value>) -> bool {
        match self {
            Domain::All => true,
            Domain::Cond(c) => c.matches(values),
            Domain::Not(d) => !d.matches(values),
            Domain::And(a, b) => a.matches(values) && b.matches(values),
            Domain::Or(a, b) => a.matches(values) || b.matches(values),
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Domain::All)
    }
}

/// Compiles a domain given as JSON (the records API's `domain` parameter), checking fields
/// and operators with `field_type`. The error names the offending element.
pub fn domain_from_json(
    v: &Value,
    field_type: impl Fn(&str) -> Option<FieldType>,
) -> Result<Domain, String> {
    let Value::Array(items) = v else {
        return Err("a domain is a JSON array".into());
    };
    let mut tokens = Vec::new();
    for (i, it) in items.iter().enumerate() {
        tokens.push(match it {
            Value::String(s) if s == "&" => Token::And,
            Value::String(s) if s == "|" => Token::Or,
            Value::String(s) if s == "!" => Token::Not,
            Value::Array(parts) if parts.len() == 3 => {
                let (Some(field), Some(op)) = (parts[0].as_str(), parts[1].as_str()) else {
                    return Err(format!("element {i}: field and operator must be strings"));
                };
                let ty = field_type(field)
                    .ok_or_else(|| format!("element {i}: unknown field `{field}`"))?;
                let op =
                    Op::parse(op).ok_or_else(|| format!("element {i}: unknown operator `{op}`"))?;
                Token::Cond(
                    Condition::new(field, &ty, op, &parts[2])
                        .map_err(|e| format!("element {i}: {e}"))?,
                )
            }
            _ => {
                return Err(format!(
                    "element {i}: expected `&`, `|`, `!` or [field, operator, value]"
                ));
            }
        });
    }
    Domain::from_tokens(tokens).map_err(|e| format!("element {}: {e}", e.index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn an_operator_refused_names_its_field_type_in_good_english() {
        let e = |ty| ConditionError::OperatorType { op: "like", ty }.to_string();
        assert_eq!(
            e("integer"),
            "operator `like` cannot be used on an integer field"
        );
        assert_eq!(
            e("boolean"),
            "operator `like` cannot be used on a boolean field"
        );
    }

    fn cond(f: &str, ty: FieldType, op: &str, v: Value) -> Condition {
        Condition::new(f, &ty, Op::parse(op).unwrap(), &v).unwrap()
    }

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn operators_fit_types() {
        assert_eq!(
            Condition::new("customer", &FieldType::Boolean, Op::Like, &json!("x")),
            Err(ConditionError::OperatorType {
                op: "like",
                ty: "boolean"
            })
        );
        assert_eq!(
            Condition::new("n", &FieldType::Integer, Op::In, &json!(3)),
            Err(ConditionError::ListRequired("in"))
        );
        assert!(matches!(
            Condition::new("n", &FieldType::Integer, Op::Gt, &json!("abc")),
            Err(ConditionError::Value { .. })
        ));
        for op in OPERATORS {
            assert!(Op::parse(op).is_some(), "{op}");
            assert_eq!(Op::parse(op).unwrap().as_str(), op);
        }
    }

    #[test]
    fn every_operator() {
        let r =
            rec(json!({"name": "Ana Pérez", "n": 5, "when": "2024-01-01T10:00:00Z", "ok": true}));
        let c = |f, ty, op, v| cond(f, ty, op, v).matches(&r);
        assert!(c("n", FieldType::Integer, "=", json!(5)));
        assert!(c("n", FieldType::Integer, "!=", json!(4)));
        assert!(c("n", FieldType::Integer, "<", json!(6)));
        assert!(c("n", FieldType::Integer, "<=", json!(5)));
        assert!(c("n", FieldType::Integer, ">", json!(4)));
        assert!(c("n", FieldType::Integer, ">=", json!("5")));
        assert!(c("n", FieldType::Integer, "in", json!([1, 5])));
        assert!(c("n", FieldType::Integer, "not in", json!([1, 2])));
        assert!(c("name", FieldType::Char, "like", json!("Pé")));
        assert!(!c("name", FieldType::Char, "like", json!("pé")));
        assert!(c("name", FieldType::Char, "ilike", json!("PÉ")));
        assert!(c("name", FieldType::Char, "=like", json!("Ana%")));
        assert!(!c("name", FieldType::Char, "=like", json!("ana%")));
        assert!(c("name", FieldType::Char, "=ilike", json!("ana _érez")));
        assert!(c(
            "when",
            FieldType::Datetime,
            ">",
            json!("2024-01-01T11:00:00+02:00")
        ));
        assert!(c("ok", FieldType::Boolean, "=", json!(true)));
        assert!(c("missing", FieldType::Boolean, "=", json!(false)));
        assert!(c("missing", FieldType::Char, "=", json!(false)));
        assert!(!c("missing", FieldType::Integer, "<", json!(3)));
    }

    #[test]
    fn prefix_operators_and_implicit_and() {
        let a = Token::Cond(cond("n", FieldType::Integer, "=", json!(1)));
        let b = Token::Cond(cond("n", FieldType::Integer, "=", json!(2)));
        let d = Domain::from_tokens(vec![Token::Or, a.clone(), b.clone()]).unwrap();
        assert!(d.matches(&rec(json!({"n": 2}))));
        assert!(!d.matches(&rec(json!({"n": 3}))));
        let d = Domain::from_tokens(vec![a.clone(), b.clone()]).unwrap();
        assert!(!d.matches(&rec(json!({"n": 1}))));
        let d = Domain::from_tokens(vec![Token::Not, a.clone()]).unwrap();
        assert!(d.matches(&rec(json!({"n": 2}))));
        assert_eq!(
            Domain::from_tokens(vec![Token::Or, a.clone()]),
            Err(ArityError {
                index: 0,
                op: "|",
                needed: 2
            })
        );
        assert_eq!(Domain::from_tokens(vec![]), Ok(Domain::All));
    }

    #[test]
    fn x2many_membership() {
        let r = rec(json!({"tags": [3, 4]}));
        let ty = FieldType::Many2many("tag".into());
        assert!(cond("tags", ty.clone(), "=", json!(3)).matches(&r));
        assert!(cond("tags", ty.clone(), "in", json!([9, 4])).matches(&r));
        assert!(cond("tags", ty.clone(), "not in", json!([9])).matches(&r));
        assert!(!cond("tags", ty, "!=", json!(4)).matches(&r));
    }

    // ---- property test against a brute-force reference ----

    #[derive(Debug, Clone)]
    enum Tree {
        Leaf(&'static str, &'static str, Value),
        Not(Box<Tree>),
        And(Box<Tree>, Box<Tree>),
        Or(Box<Tree>, Box<Tree>),
    }

    fn ty_of(f: &str) -> FieldType {
        match f {
            "a" => FieldType::Integer,
            "b" => FieldType::Char,
            _ => FieldType::Boolean,
        }
    }

    fn leaf() -> impl Strategy<Value = Tree> {
        prop_oneof![
            (
                prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="]),
                -3i64..4
            )
                .prop_map(|(op, v)| Tree::Leaf("a", op, json!(v))),
            prop::collection::vec(-3i64..4, 0..3).prop_map(|l| Tree::Leaf("a", "in", json!(l))),
            prop::collection::vec(-3i64..4, 0..3).prop_map(|l| Tree::Leaf("a", "not in", json!(l))),
            (
                prop::sample::select(vec![
                    "=", "!=", "<", ">=", "like", "ilike", "=like", "=ilike"
                ]),
                "[aAb%_]{0,3}"
            )
                .prop_map(|(op, v)| Tree::Leaf("b", op, json!(v))),
            (prop::sample::select(vec!["=", "!="]), any::<bool>()).prop_map(|(op, v)| Tree::Leaf(
                "c",
                op,
                json!(v)
            )),
        ]
    }

    fn tree() -> impl Strategy<Value = Tree> {
        leaf().prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|t| Tree::Not(Box::new(t))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Tree::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Tree::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    fn to_tokens(t: &Tree, out: &mut Vec<Token>) {
        match t {
            Tree::Leaf(f, op, v) => out.push(Token::Cond(cond(f, ty_of(f), op, v.clone()))),
            Tree::Not(a) => {
                out.push(Token::Not);
                to_tokens(a, out);
            }
            Tree::And(a, b) => {
                out.push(Token::And);
                to_tokens(a, out);
                to_tokens(b, out);
            }
            Tree::Or(a, b) => {
                out.push(Token::Or);
                to_tokens(a, out);
                to_tokens(b, out);
            }
        }
    }

    /// Backtracking LIKE, written independently of the DP in `like_match`.
    fn naive_like(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| naive_like(&t[i..], rest)),
            Some(('_', rest)) => !t.is_empty() && naive_like(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && naive_like(&t[1..], rest),
        }
    }

    fn reference(t: &Tree, a: Option<i64>, b: Option<&str>, c: Option<bool>) -> bool {
        match t {
            Tree::Not(x) => !reference(x, a, b, c),
            Tree::And(x, y) => reference(x, a, b, c) && reference(y, a, b, c),
            Tree::Or(x, y) => reference(x, a, b, c) || reference(y, a, b, c),
            Tree::Leaf("a", op, v) => {
                if *op == "in" || *op == "not in" {
                    let found = a.is_some_and(|a| {
                        v.as_array().unwrap().iter().any(|x| x.as_i64() == Some(a))
                    });
                    return if *op == "in" { found } else { !found };
                }
                let x = v.as_i64().unwrap();
                match (*op, a) {
                    ("=", Some(a)) => a == x,
                    ("!=", Some(a)) => a != x,
                    ("!=", None) => true,
                    ("<", Some(a)) => a < x,
                    ("<=", Some(a)) => a <= x,
                    (">", Some(a)) => a > x,
                    (">=", Some(a)) => a >= x,
                    _ => false,
                }
            }
            Tree::Leaf("b", op, v) => {
                let x = v.as_str().unwrap();
                let Some(b) = b else { return *op == "!=" };
                let chars = |s: &str| s.chars().collect::<Vec<_>>();
                match *op {
                    "=" => b == x,
                    "!=" => b != x,
                    "<" => b < x,
                    ">=" => b >= x,
                    "like" => naive_like(&chars(b), &chars(&format!("%{x}%"))),
                    "ilike" => naive_like(
                        &chars(&b.to_lowercase()),
                        &chars(&format!("%{}%", x.to_lowercase())),
                    ),
                    "=like" => naive_like(&chars(b), &chars(x)),
                    _ => naive_like(&chars(&b.to_lowercase()), &chars(&x.to_lowercase())),
                }
            }
            Tree::Leaf(_, op, v) => {
                let x = v.as_bool().unwrap();
                let c = c.unwrap_or(false);
                if *op == "=" { c == x } else { c != x }
            }
        }
    }

    proptest! {
        #[test]
        fn evaluator_agrees_with_brute_force(
            trees in prop::collection::vec(tree(), 0..3),
            records in prop::collection::vec((prop::option::of(-3i64..4), prop::option::of("[aAb]{0,3}"), prop::option::of(any::<bool>())), 1..8),
        ) {
            let mut tokens = Vec::new();
            for t in &trees {
                to_tokens(t, &mut tokens);
            }
            let domain = Domain::from_tokens(tokens).unwrap();
            for (a, b, c) in records {
                let mut r = Map::new();
                if let Some(a) = a { r.insert("a".into(), json!(a)); }
                if let Some(b) = &b { r.insert("b".into(), json!(b)); }
                if let Some(c) = c { r.insert("c".into(), json!(c)); }
                let expected = trees.iter().all(|t| reference(t, a, b.as_deref(), c));
                prop_assert_eq!(domain.matches(&r), expected, "record {:?}", r);
            }
        }
    }
}
