//! Bounded fuzzing, driven by proptest: random JSON and random bytes against the tolerant body
//! reader, value coercion for every field type, and the domain compiler and evaluator. Nothing
//! may panic; what is accepted must be stable (coercing a coerced value changes nothing).
//! Each target runs for a wall-clock budget (`RECSYNC_FUZZ_SECONDS`, default 8) and prints how
//! many cases it tried.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use recsync::domain::filter::domain_from_json;
use recsync::domain::value::{FieldType, coerce};
use recsync::http::body::parse_values;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("RECSYNC_FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8),
    )
}

/// Any JSON, nested a few levels, with awkward strings and numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2024-02-30".to_string()),
            Just("1e400".to_string()),
            Just("  42 ".to_string()),
            Just("true".to_string()),
            Just("'; DROP TABLE records; --".to_string()),
            Just("../../etc/passwd".to_string()),
            Just("\u{0}".to_string()),
            Just("aGVsbG8=".to_string()),
            Just("2024-01-01T00:00:00+14:00".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_types() -> Vec<FieldType> {
    vec![
        FieldType::Char,
        FieldType::Text,
        FieldType::Integer,
        FieldType::Float,
        FieldType::Boolean,
        FieldType::Date,
        FieldType::Datetime,
        FieldType::Selection(vec!["a".into(), "b".into()]),
        FieldType::Many2one("m".into()),
        FieldType::One2many("m".into()),
        FieldType::Many2many("m".into()),
        FieldType::Binary,
        FieldType::Json,
    ]
}

/// Runs `test` on values from `strategy`, with a fresh random seed each round, until the
/// budget is spent; prints the cases tried and the seed of a failure.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{RngAlgorithm, TestRng};
    let deadline = Instant::now() + budget();
    let cases = std::sync::atomic::AtomicU64::new(0);
    while Instant::now() < deadline {
        let seed: [u8; 32] = rand::random();
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 256,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        runner
            .run(&strategy, |v| {
                cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                test(v)
            })
            .unwrap_or_else(|e| panic!("{name} (seed {}): {e}", hex::encode(seed)));
    }
    println!(
        "fuzz {name}: {} cases in {:?}",
        cases.into_inner(),
        budget()
    );
}

#[test]
fn coercion_never_panics_and_is_stable() {
    let types = field_types();
    fuzz("coerce", json_value(), |v| {
        for ty in &types {
            if let Ok(once) = coerce(ty, &v) {
                prop_assert_eq!(coerce(ty, &once), Ok(once.clone()), "{:?} {}", ty, v);
            }
        }
        Ok(())
    });
}

#[test]
fn the_body_reader_never_panics_on_any_bytes() {
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| json!({"jsonrpc": "2.0", "params": v})
            .to_string()
            .into_bytes()),
        prop::collection::vec(("[a-z&=%]{0,6}", ".{0,8}"), 0..6).prop_map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
                .into_bytes()
        }),
    ];
    fuzz("parse_values", bodies, |bytes| {
        if let Ok(values) = parse_values(&bytes) {
            // What is accepted is an object of values without NUL characters.
            prop_assert!(!recsync::http::body::contains_nul(&Value::Object(values)));
        }
        Ok(())
    });
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for depth in [100, 1_000, 100_000] {
        let body = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let r = parse_values(body.as_bytes());
        if depth > 127 {
            assert!(r.is_err(), "depth {depth}");
        }
    }
}

#[test]
fn the_domain_compiler_and_evaluator_never_panic() {
    let ty = |f: &str| -> Option<FieldType> {
        Some(match f {
            "n" => FieldType::Integer,
            "s" => FieldType::Char,
            "b" => FieldType::Boolean,
            "d" => FieldType::Datetime,
            "x" => FieldType::Float,
            "sel" => FieldType::Selection(vec!["a".into(), "b".into()]),
            "m" => FieldType::Many2one("m".into()),
            _ => return None,
        })
    };
    let op = prop_oneof![
        Just("="),
        Just("!="),
        Just("<"),
        Just(">"),
        Just("<="),
        Just(">="),
        Just("in"),
        Just("not in"),
        Just("like"),
        Just("ilike"),
        Just("=like"),
        Just("=ilike"),
        Just("bogus")
    ];
    let field = prop_oneof![
        Just("n"),
        Just("s"),
        Just("b"),
        Just("d"),
        Just("x"),
        Just("sel"),
        Just("m"),
        Just("zz")
    ];
    let leaf = (field, op, json_value()).prop_map(|(f, o, v)| json!([f, o, v]));
    let item = prop_oneof![
        leaf,
        Just(json!("&")),
        Just(json!("|")),
        Just(json!("!")),
        json_value()
    ];
    let domain = prop_oneof![
        prop::collection::vec(item, 0..6).prop_map(Value::Array),
        json_value(),
    ];
    let record = prop::collection::btree_map(
        prop_oneof![
            Just("n"),
            Just("s"),
            Just("b"),
            Just("d"),
            Just("x"),
            Just("sel"),
            Just("m")
        ],
        json_value(),
        0..7,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<String, Value>>()
    });
    fuzz("domain", (domain, record), |(d, r)| {
        if let Ok(compiled) = domain_from_json(&d, ty) {
            let _ = compiled.matches(&r);
        }
        Ok(())
    });
}
