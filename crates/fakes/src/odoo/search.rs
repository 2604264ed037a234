//! Odoo domains as the fake evaluates them: prefix expressions, operators, related paths,
//! `active_test`; `search` and `read`.

use super::*;

/// The length of the domain expression starting at `at` (prefix notation), if well formed.
pub(super) fn expression_len(d: &[Value], at: usize) -> Option<usize> {
    match d.get(at)?.as_str() {
        Some("&") | Some("|") => {
            let a = expression_len(d, at + 1)?;
            let b = expression_len(d, at + 1 + a)?;
            Some(1 + a + b)
        }
        Some("!") => Some(1 + expression_len(d, at + 1)?),
        _ => Some(1),
    }
}

/// The smallest (`write_date`, `id`) a record can have to match `domain`, when its conjunction
/// says so: a term `write_date >= v` or `> v`, or the keyset
/// `| (write_date > v) & (write_date = v) (id > n)`.
pub(super) fn write_date_floor(domain: &[Value]) -> Option<(String, i64)> {
    let term = |v: &Value, field: &str, op: &str| -> Option<Value> {
        let t = v.as_array()?;
        (t.len() == 3 && t[0] == field && t[1] == op).then(|| t[2].clone())
    };
    let text = |v: Value| v.as_str().map(String::from);
    let mut floor: Option<(String, i64)> = None;
    let mut at = 0;
    while at < domain.len() {
        let len = expression_len(domain, at)?;
        let e = &domain[at..at + len];
        let found = match e {
            [one] => term(one, "write_date", ">=")
                .and_then(text)
                .map(|v| (v, i64::MIN))
                .or_else(|| {
                    term(one, "write_date", ">")
                        .and_then(text)
                        .map(|v| (v, i64::MAX))
                }),
            [or, a, and, b, c] if or == "|" && and == "&" => {
                let v = term(a, "write_date", ">").and_then(text);
                let same = term(b, "write_date", "=").and_then(text);
                let after = term(c, "id", ">").and_then(|n| n.as_i64());
                match (v, same, after) {
                    (Some(v), Some(same), Some(n)) if v == same => Some((v, n.saturating_add(1))),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(v) = found
            && floor.as_ref().is_none_or(|f| v > *f)
        {
            floor = Some(v);
        }
        at += len;
    }
    floor
}

/// A record's display name: its `name` (Odoo's default `_rec_name`).
pub(super) fn display_name(i: &Inner, model: &str, id: i64) -> Value {
    i.records
        .get(model)
        .and_then(|r| r.get(&id))
        .and_then(|r| r.get("name").cloned())
        .unwrap_or(Value::Bool(false))
}

/// A record as `read` answers it, with `fields` (all when empty). With `classic`
/// (`load = "_classic_write"`), a many2one is its id alone.
pub(super) fn read_one(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    fields: &[String],
    classic: bool,
) -> Value {
    let defs = model_fields(model).unwrap_or(&[]);
    let mut out = Map::new();
    out.insert("id".into(), rec["id"].clone());
    for (name, d) in defs {
        if *name == "id" || (!fields.is_empty() && !fields.iter().any(|f| f == name)) {
            continue;
        }
        let v = rec.get(*name).cloned().unwrap_or(Value::Null);
        let shown = match (d.ttype, &v) {
            ("many2one", Value::Number(_)) if classic => v,
            ("many2one", Value::Number(n)) => {
                let id = n.as_i64().unwrap_or(0);
                json!([id, display_name(i, d.relation.expect("relational"), id)])
            }
            ("many2one", _) => Value::Bool(false),
            ("many2many" | "one2many", Value::Array(_)) => v,
            ("one2many", _) if *name == "child_ids" => children(i, model, rec),
            ("many2many" | "one2many", _) => json!([]),
            ("boolean", Value::Null) => Value::Bool(false),
            (_, Value::Null) => Value::Bool(false),
            (_, Value::String(s)) if s.is_empty() && d.ttype != "char" => Value::Bool(false),
            _ => v,
        };
        let shown = if *name == "display_name" {
            display_name(i, model, rec["id"].as_i64().unwrap_or(0))
        } else {
            shown
        };
        out.insert(name.to_string(), shown);
    }
    Value::Object(out)
}

/// The records whose `parent_id` is `rec` (the `child_ids` one2many), by id.
pub(super) fn children(i: &Inner, model: &str, rec: &Map<String, Value>) -> Value {
    let id = rec["id"].as_i64();
    Value::Array(
        i.records
            .get(model)
            .into_iter()
            .flat_map(|r| r.values())
            .filter(|c| c.get("parent_id").and_then(Value::as_i64) == id)
            .map(|c| c["id"].clone())
            .collect(),
    )
}

/// A field's value for comparisons, following dotted paths through many2one fields.
pub(super) fn value_at(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    path: &str,
) -> Result<Value, OdooError> {
    let defs = defs(model)?;
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let d = def_of(defs, model, head)?;
    let v = match head {
        "display_name" => rec.get("name").cloned().unwrap_or(Value::Bool(false)),
        "child_ids" => children(i, model, rec),
        _ => rec.get(head).cloned().unwrap_or(Value::Bool(false)),
    };
    match rest {
        None => Ok(v),
        Some(rest) => {
            let rel = d.relation.ok_or_else(|| {
                OdooError::validation(format!("Invalid field path '{path}' on model '{model}'"))
            })?;
            match v.as_i64().and_then(|id| i.records.get(rel)?.get(&id)) {
                Some(r) => value_at(i, rel, r, rest),
                None => Ok(Value::Bool(false)),
            }
        }
    }
}

/// `like` patterns: `%` and `_` wildcards (`like` and `ilike` wrap the value in `%`).
pub(super) fn like(text: &str, pattern: &str, insensitive: bool) -> bool {
    let (t, p) = if insensitive {
        (text.to_lowercase(), pattern.to_lowercase())
    } else {
        (text.to_string(), pattern.to_string())
    };
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|k| go(&t[k..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    go(
        &t.chars().collect::<Vec<_>>(),
        &p.chars().collect::<Vec<_>>(),
    )
}

pub(super) fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

pub(super) fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(false) | Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One leaf `[path, op, value]` against a record.
pub(super) fn leaf(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    path: &str,
    op: &str,
    value: &Value,
) -> Result<bool, OdooError> {
    if op == "=?" && (value.is_null() || *value == json!(false)) {
        return Ok(true);
    }
    let v = value_at(i, model, rec, path)?;
    let is_set = |v: &Value| !matches!(v, Value::Bool(false) | Value::Null);
    let list: Vec<Value> = match value {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    // x2many fields compare by membership of any of their ids.
    let any = |f: &dyn Fn(&Value) -> bool| match &v {
        Value::Array(ids) => ids.iter().any(f),
        one => f(one),
    };
    let eq = |x: &Value, y: &Value| match (x, y) {
        (Value::Bool(false) | Value::Null, Value::Bool(false) | Value::Null) => true,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => x == y,
    };
    Ok(match op {
        "=" | "=?" => match (&v, value) {
            (Value::Array(ids), Value::Bool(false)) => ids.is_empty(),
            _ => any(&|x| eq(x, value)),
        },
        "!=" => match (&v, value) {
            (Value::Array(ids), Value::Bool(false)) => !ids.is_empty(),
            _ => !any(&|x| eq(x, value)),
        },
        "<" | "<=" | ">" | ">=" => {
            if !is_set(&v) {
                false
            } else {
                let o = compare(&v, value);
                match op {
                    "<" => o == Some(std::cmp::Ordering::Less),
                    "<=" => matches!(
                        o,
                        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                    ),
                    ">" => o == Some(std::cmp::Ordering::Greater),
                    _ => matches!(
                        o,
                        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                    ),
                }
            }
        }
        "in" => {
            any(&|x| list.iter().any(|y| eq(x, y)))
                || (!is_set(&v) && list.contains(&Value::Bool(false)))
        }
        "not in" => !any(&|x| list.iter().any(|y| eq(x, y))),
        "like" | "ilike" | "not like" | "not ilike" => {
            let pattern = format!("%{}%", as_text(value));
            let insensitive = op.contains("ilike");
            let m = is_set(&v) && like(&as_text(&v), &pattern, insensitive);
            if op.starts_with("not") { !m } else { m }
        }
        "=like" | "=ilike" => is_set(&v) && like(&as_text(&v), &as_text(value), op == "=ilike"),
        "child_of" => {
            // The record is one of the given ids or below one of them through `parent_id`.
            let mut current = rec.clone();
            let mut hops = 0;
            loop {
                let id = current.get("id").cloned().unwrap_or(Value::Null);
                if list.iter().any(|y| eq(&id, y)) {
                    break true;
                }
                match current
                    .get("parent_id")
                    .and_then(Value::as_i64)
                    .and_then(|p| i.records.get(model)?.get(&p))
                {
                    Some(parent) if hops < 64 => {
                        current = parent.clone();
                        hops += 1;
                    }
                    _ => break false,
                }
            }
        }
        other => {
            return Err(OdooError::validation(format!(
                "Invalid leaf operator '{other}'"
            )));
        }
    })
}

/// Evaluates a domain (prefix notation; leaves side by side are and-ed).
pub(super) fn matches(
    i: &Inner,
    model: &str,
    rec: &Map<String, Value>,
    domain: &[Value],
) -> Result<bool, OdooError> {
    fn term(
        i: &Inner,
        model: &str,
        rec: &Map<String, Value>,
        items: &[Value],
        pos: &mut usize,
    ) -> Result<bool, OdooError> {
        let Some(item) = items.get(*pos) else {
            return Err(OdooError::validation(
                "Invalid domain: an operator lacks its operands",
            ));
        };
        *pos += 1;
        match item {
            Value::String(op) if op == "&" || op == "|" => {
                let a = term(i, model, rec, items, pos)?;
                let b = term(i, model, rec, items, pos)?;
                Ok(if op == "&" { a && b } else { a || b })
            }
            Value::String(op) if op == "!" => Ok(!term(i, model, rec, items, pos)?),
            Value::Array(l) if l.len() == 3 => {
                let path = l[0]
                    .as_str()
                    .ok_or_else(|| OdooError::validation(format!("Invalid leaf {item}")))?;
                let op = l[1]
                    .as_str()
                    .ok_or_else(|| OdooError::validation(format!("Invalid leaf {item}")))?;
                leaf(i, model, rec, path, op, &l[2])
            }
            other => Err(OdooError::validation(format!(
                "Invalid domain term {other}"
            ))),
        }
    }
    let mut pos = 0;
    let mut all = true;
    while pos < domain.len() {
        all &= term(i, model, rec, domain, &mut pos)?;
    }
    Ok(all)
}

/// Does the domain name the `active` field anywhere?
pub(super) fn mentions_active(domain: &[Value]) -> bool {
    domain.iter().any(|t| {
        t.as_array()
            .and_then(|l| l.first())
            .and_then(Value::as_str)
            .is_some_and(|f| f == "active")
    })
}

/// `search`: ids of the matching records in `order` (default `id`), with offset and limit.
pub(super) fn search(
    i: &Inner,
    model: &str,
    domain: &[Value],
    offset: usize,
    limit: Option<usize>,
    order: Option<&str>,
    context: &Value,
) -> Result<Vec<i64>, OdooError> {
    let defs = defs(model)?;
    let active_test = context.get("active_test") != Some(&json!(false));
    let hides_archived =
        active_test && defs.iter().any(|(n, _)| *n == "active") && !mentions_active(domain);
    // Ordered by (write_date, id) with a limit: walk the index from the domain's floor and
    // stop at the limit, as a database would.
    let by_write = order.map(|o| {
        o.split(',')
            .map(|p| p.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    });
    let indexed = matches!(by_write.as_deref(), Some([a, b])
        if matches!(a.as_slice(), ["write_date"] | ["write_date", "asc"])
            && matches!(b.as_slice(), ["id"] | ["id", "asc"]));
    if let (true, Some(limit), Some(index), Some(table)) =
        (indexed, limit, i.by_write.get(model), i.records.get(model))
    {
        let floor = write_date_floor(domain).unwrap_or((String::new(), i64::MIN));
        let mut out = Vec::new();
        for (_, id) in index.range(floor..) {
            let rec = &table[id];
            if hides_archived && rec.get("active") == Some(&json!(false)) {
                continue;
            }
            if matches(i, model, rec, domain)? {
                out.push(*id);
                if out.len() >= offset + limit {
                    break;
                }
            }
        }
        return Ok(out.into_iter().skip(offset).collect());
    }
    let mut found = Vec::new();
    // `id in [...]` among conditions joined by AND: only those rows are looked at, through
    // the primary key, as a database would.
    let by_id: Option<Vec<i64>> = if domain.iter().any(|c| c.is_string()) {
        None
    } else {
        domain
            .iter()
            .find_map(|c| match c.as_array().map(Vec::as_slice) {
                Some([f, op, Value::Array(ids)]) if f == "id" && op == "in" => {
                    Some(ids.iter().filter_map(Value::as_i64).collect())
                }
                _ => None,
            })
    };
    let table = i.records.get(model);
    let rows: Box<dyn Iterator<Item = &Map<String, Value>>> = match (&by_id, table) {
        (Some(ids), Some(t)) => Box::new(
            ids.iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|id| t.get(id)),
        ),
        (None, Some(t)) => Box::new(t.values()),
        (_, None) => Box::new(std::iter::empty()),
    };
    for rec in rows {
        if hides_archived && rec.get("active") == Some(&json!(false)) {
            continue;
        }
        if matches(i, model, rec, domain)? {
            found.push(rec);
        }
    }
    let keys: Vec<(String, bool)> = order
        .unwrap_or("id")
        .split(',')
        .filter_map(|part| {
            let mut w = part.split_whitespace();
            let f = w.next()?.to_string();
            let desc = w.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
            Some((f, desc))
        })
        .collect();
    for (f, _) in &keys {
        def_of(defs, model, f)?;
    }
    found.sort_by(|a, b| {
        for (f, desc) in &keys {
            let (x, y) = (
                a.get(f).unwrap_or(&Value::Null),
                b.get(f).unwrap_or(&Value::Null),
            );
            let o = compare(x, y).unwrap_or(std::cmp::Ordering::Equal);
            let o = if *desc { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    Ok(found
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .filter_map(|r| r.get("id").and_then(Value::as_i64))
        .collect())
}

pub(super) fn ids_of(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        _ => Vec::new(),
    }
}

pub(super) fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn read(
    i: &Inner,
    model: &str,
    ids: &[i64],
    fields: &[String],
    classic: bool,
) -> Result<Value, OdooError> {
    defs(model)?;
    let table = i.records.get(model);
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !table.is_some_and(|t| t.contains_key(id)))
        .collect();
    if !missing.is_empty() {
        return Err(OdooError::missing(model, &missing));
    }
    Ok(Value::Array(
        ids.iter()
            .map(|id| read_one(i, model, &table.expect("checked")[id], fields, classic))
            .collect(),
    ))
}
