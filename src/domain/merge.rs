//! The three-way merge: from the base (values at the last successful sync) and both sides'
//! current values, take one-sided changes silently and settle two-sided ones by priority.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Who wins a field changed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Local,
    External,
    /// The side modified last; a tie goes to external.
    Newest,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "local" => Some(Priority::Local),
            "external" => Some(Priority::External),
            "newest" => Some(Priority::Newest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Local => "local",
            Priority::External => "external",
            Priority::Newest => "newest",
        }
    }
}

/// Which side a conflicting field was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Local,
    External,
}

/// A field changed on both sides to different values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conflict {
    pub field: String,
    pub base: Value,
    pub local: Value,
    pub external: Value,
    pub winner: Side,
}

/// The merged values and the conflicts that were settled on the way.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merge {
    pub merged: Map<String, Value>,
    pub conflicts: Vec<Conflict>,
}

impl Merge {
    /// Did anything differ from `local`? (What the local record needs written.)
    pub fn changes_for<'a>(
        &'a self,
        side: &'a Map<String, Value>,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        self.merged
            .iter()
            .filter(move |(k, v)| side.get(*k).unwrap_or(&Value::Null) != *v)
    }
}

/// When each side last changed, for `newest`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Modified {
    pub local: Option<DateTime<Utc>>,
    pub external: Option<DateTime<Utc>>,
}

/// Merges `fields` of the three versions. A field missing from a map counts as null.
pub fn merge(
    fields: &[&str],
    base: &Map<String, Value>,
    local: &Map<String, Value>,
    external: &Map<String, Value>,
    priority: Priority,
    modified: Modified,
) -> Merge {
    let null = Value::Null;
    let mut out = Merge::default();
    for &f in fields {
        let b = base.get(f).unwrap_or(&null);
        let l = local.get(f).unwrap_or(&null);
        let e = external.get(f).unwrap_or(&null);
        let value = if l == e || e == b {
            l.clone()
        } else if l == b {
            e.clone()
        } else {
            let winner = match priority {
                Priority::Local => Side::Local,
                Priority::External => Side::External,
                Priority::Newest => match (modified.local, modified.external) {
                    (Some(lt), Some(et)) if lt > et => Side::Local,
                    (Some(_), None) => Side::Local,
                    _ => Side::External,
                },
            };
            out.conflicts.push(Conflict {
                field: f.to_string(),
                base: b.clone(),
                local: l.clone(),
                external: e.clone(),
                winner,
            });
            match winner {
                Side::Local => l.clone(),
                Side::External => e.clone(),
            }
        };
        out.merged.insert(f.to_string(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn one_sided_changes_merge_and_conflicts_follow_priority() {
        let base = m(json!({"a": 1, "b": 1, "c": 1}));
        let local = m(json!({"a": 2, "b": 1, "c": 5}));
        let ext = m(json!({"a": 1, "b": 3, "c": 6}));
        let r = merge(
            &["a", "b", "c"],
            &base,
            &local,
            &ext,
            Priority::Local,
            Modified::default(),
        );
        assert_eq!(
            Value::Object(r.merged.clone()),
            json!({"a": 2, "b": 3, "c": 5})
        );
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].field, "c");
        assert_eq!(r.conflicts[0].winner, Side::Local);
        let r = merge(
            &["a", "b", "c"],
            &base,
            &local,
            &ext,
            Priority::External,
            Modified::default(),
        );
        assert_eq!(r.merged["c"], json!(6));
    }

    #[test]
    fn newest_uses_times_and_ties_go_external() {
        let base = m(json!({"a": 1}));
        let local = m(json!({"a": 2}));
        let ext = m(json!({"a": 3}));
        let t1 = DateTime::from_timestamp(100, 0).unwrap();
        let t2 = DateTime::from_timestamp(200, 0).unwrap();
        let run = |l, e| {
            merge(
                &["a"],
                &base,
                &local,
                &ext,
                Priority::Newest,
                Modified {
                    local: l,
                    external: e,
                },
            )
            .merged["a"]
                .clone()
        };
        assert_eq!(run(Some(t2), Some(t1)), json!(2));
        assert_eq!(run(Some(t1), Some(t2)), json!(3));
        assert_eq!(run(Some(t1), Some(t1)), json!(3));
        assert_eq!(run(None, None), json!(3));
    }

    #[test]
    fn same_change_on_both_sides_is_no_conflict() {
        let r = merge(
            &["a"],
            &m(json!({"a": 1})),
            &m(json!({"a": 2})),
            &m(json!({"a": 2})),
            Priority::Local,
            Modified::default(),
        );
        assert!(r.conflicts.is_empty());
        assert_eq!(r.merged["a"], json!(2));
    }

    fn values() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            (0i64..3).prop_map(Value::from),
            "[xy]".prop_map(Value::from)
        ]
    }

    fn record(n: usize) -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec(values(), n).prop_map(|vs| {
            vs.into_iter()
                .enumerate()
                .map(|(i, v)| (format!("f{i}"), v))
                .collect()
        })
    }

    fn priority() -> impl Strategy<Value = Priority> {
        prop::sample::select(vec![Priority::Local, Priority::External, Priority::Newest])
    }

    const FIELDS: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];

    proptest! {
        #[test]
        fn only_local_changed_takes_local(base in record(5), local in record(5), p in priority()) {
            let r = merge(&FIELDS, &base, &local, &base, p, Modified::default());
            prop_assert!(r.conflicts.is_empty());
            prop_assert_eq!(r.merged, local);
        }

        #[test]
        fn only_external_changed_takes_external(base in record(5), ext in record(5), p in priority()) {
            let r = merge(&FIELDS, &base, &base, &ext, p, Modified::default());
            prop_assert!(r.conflicts.is_empty());
            prop_assert_eq!(r.merged, ext);
        }

        #[test]
        fn nothing_changed_is_a_no_op(base in record(5), p in priority()) {
            let r = merge(&FIELDS, &base, &base, &base, p, Modified::default());
            prop_assert!(r.conflicts.is_empty());
            prop_assert_eq!(r.changes_for(&base).count(), 0);
            prop_assert_eq!(r.merged, base);
        }

        #[test]
        fn field_order_does_not_matter(base in record(5), local in record(5), ext in record(5), p in priority(), order in Just(FIELDS.to_vec()).prop_shuffle()) {
            let a = merge(&FIELDS, &base, &local, &ext, p, Modified::default());
            let b = merge(&order, &base, &local, &ext, p, Modified::default());
            prop_assert_eq!(&a.merged, &b.merged);
            let mut ca = a.conflicts.clone();
            let mut cb = b.conflicts.clone();
            ca.sort_by(|x, y| x.field.cmp(&y.field));
            cb.sort_by(|x, y| x.field.cmp(&y.field));
            prop_assert_eq!(ca, cb);
        }

        #[test]
        fn conflicts_are_exactly_the_fields_changed_differently_on_both_sides(base in record(5), local in record(5), ext in record(5), p in priority()) {
            let r = merge(&FIELDS, &base, &local, &ext, p, Modified::default());
            for f in FIELDS {
                let both = local[f] != base[f] && ext[f] != base[f] && local[f] != ext[f];
                prop_assert_eq!(r.conflicts.iter().any(|c| c.field == f), both);
            }
        }
    }
}
