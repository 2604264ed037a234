//! Benchmarks of the pure hot paths: compiling the shipped mappings, mapping inbound external
//! records onto local fields (coercion, JSONPath, map tables, and with two pairs transformed by
//! expressions), and evaluating a sync's domain.
//! Run with `cargo bench --bench domain`. Prints throughput, latency percentiles and peak RSS.

mod support;

use support::*;

use recsync::config::compile_texts;
use recsync::domain::mapping::to_local;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const DEMO: &str = include_str!("../mappings/demo.toml");
const DROPBOX: &str = include_str!("../mappings/dropbox.toml");

fn report(name: &str, items: usize, total: Duration, mut lat: Vec<Duration>, unit: &str) {
    lat.sort();
    println!(
        "{name:<28} {:>12.0} {unit}/s   p50 {:>9.1?}  p95 {:>9.1?}  p99 {:>9.1?}  (per batch of {})",
        items as f64 / total.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        items / lat.len(),
    );
}

fn main() {
    let env: HashMap<String, String> = HashMap::new();
    let files = [
        ("mappings/demo.toml", DEMO),
        ("mappings/dropbox.toml", DROPBOX),
    ];

    // 1. Compiling the configuration (what `validate` and every hot reload do).
    let rounds = 300;
    let mut lat = Vec::with_capacity(rounds);
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let plan = compile_texts(&files, &env, recsync::connectors::KINDS)
            .expect("shipped mappings are valid");
        std::hint::black_box(plan);
        lat.push(t.elapsed());
    }
    report("config compile", rounds, start.elapsed(), lat, "plans");

    let plan = compile_texts(&files, &env, recsync::connectors::KINDS).unwrap();
    let con = plan.sync("CON").unwrap();

    // 2. Inbound mapping: external payload -> coerced local values, in batches of 100.
    let payloads: Vec<Value> = (0..100_000u64)
        .map(|i| {
            let status = ["L", "C", "X"][(i % 3) as usize];
            json!({
                "unique_id": (748600007347569543u64 + i).to_string(),
                "full_name": format!("Contact {i}"),
                "email": format!("c{i}@example.com"),
                "phone": "+34 600 000 000",
                "is_customer": if i % 3 == 0 { "false" } else { "true" },
                "company_id": (i % 50).to_string(),
                "status": status,
                "address": {"city": "Madrid", "zip": "28001"},
                "visits": i.to_string(),
            })
        })
        .collect();
    let batch = 100;
    let mut lat = Vec::new();
    let start = Instant::now();
    for chunk in payloads.chunks(batch) {
        let t = Instant::now();
        for p in chunk {
            std::hint::black_box(to_local(&con.fields, p).expect("valid payload"));
        }
        lat.push(t.elapsed());
    }
    report(
        "inbound mapping",
        payloads.len(),
        start.elapsed(),
        lat,
        "records",
    );

    // 2b. The same, with two of the eight pairs transformed (a phone cleaned by a regular
    // expression, a name trimmed and title-cased), both ways as a user would write them.
    let transformed_demo = DEMO
        .replacen(
            r#"{ local = "name",     external = "full_name" }"#,
            r#"{ local = "name",     external = "full_name", to_local = "value | trim | title", to_external = "value" }"#,
            1,
        )
        .replacen(
            r#"{ local = "phone",    external = "phone" }"#,
            r#"{ local = "phone",    external = "phone", to_local = "value | regex_replace('[^0-9+]', '')", to_external = "value" }"#,
            1,
        );
    assert_ne!(
        transformed_demo, DEMO,
        "the bench edits the shipped mapping"
    );
    let transformed = compile_texts(
        &[
            ("mappings/demo.toml", transformed_demo.as_str()),
            ("mappings/dropbox.toml", DROPBOX),
        ],
        &env,
        recsync::connectors::KINDS,
    )
    .expect("the transformed mapping is valid");
    let tcon = transformed.sync("CON").unwrap();
    assert_eq!(
        tcon.fields.iter().filter(|p| p.to_local.is_some()).count(),
        2
    );
    let mut lat = Vec::new();
    let start = Instant::now();
    for chunk in payloads.chunks(batch) {
        let t = Instant::now();
        for p in chunk {
            let mapped = to_local(&tcon.fields, p).expect("valid payload");
            debug_assert_eq!(mapped.values["phone"], json!("+34600000000"));
            std::hint::black_box(mapped);
        }
        lat.push(t.elapsed());
    }
    report(
        "inbound, 2 of 8 transformed",
        payloads.len(),
        start.elapsed(),
        lat,
        "records",
    );
    let sample = to_local(&tcon.fields, &payloads[7]).unwrap().values;
    assert_eq!(
        (sample["phone"].clone(), sample["name"].clone()),
        (json!("+34600000000"), json!("Contact 7"))
    );

    // 3. Domain evaluation on mapped local values.
    let locals: Vec<_> = payloads
        .iter()
        .map(|p| to_local(&con.fields, p).unwrap().values)
        .collect();
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut matched = 0usize;
    for _ in 0..5 {
        for chunk in locals.chunks(1000) {
            let t = Instant::now();
            matched += chunk.iter().filter(|v| con.domain.matches(v)).count();
            lat.push(t.elapsed());
        }
    }
    report(
        "domain evaluation",
        locals.len() * 5,
        start.elapsed(),
        lat,
        "records",
    );
    assert_eq!(
        matched,
        5 * locals
            .iter()
            .filter(|v| v["customer"] == json!(true))
            .count()
    );

    match peak_rss_mib() {
        Some(mib) => println!("peak RSS                     {mib:.1} MiB"),
        None => println!("peak RSS                     (not available on this platform)"),
    }
}
