//! The import rule of `docs/architecture.md`, checked on the source: each module imports only
//! what is before it in the flow `domain -> config -> store -> connectors -> engine -> http`,
//! the engine knows no connector by kind, a connector never reaches the store, and HTTP reads
//! through the store's read-only view.

use std::collections::BTreeSet;
use std::path::Path;

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

fn src(module: &str) -> Vec<(String, String)> {
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join(module),
    )
}

/// The crate modules a file names: `crate::x` paths, `use crate::{x, ...}` groups included.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

fn check(module: &str, allowed: &[&str]) {
    let mut wrong = Vec::new();
    for (file, text) in src(module) {
        for m in crate_modules(&text) {
            if m != module && !allowed.contains(&m.as_str()) {
                wrong.push(format!("{file} imports crate::{m}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "import rule broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn each_module_imports_only_what_is_before_it_in_the_flow() {
    check("domain", &[]);
    check("config", &["domain"]);
    check("store", &["domain", "crash"]);
    check("connectors", &["domain", "crash", "metrics"]);
    check(
        "engine",
        &[
            "domain",
            "config",
            "store",
            "connectors",
            "crash",
            "metrics",
        ],
    );
    check(
        "http",
        &[
            "domain",
            "config",
            "store",
            "connectors",
            "engine",
            "audit",
            "crash",
            "metrics",
        ],
    );
    check("peer", &["domain", "connectors"]);
}

#[test]
fn the_engine_knows_no_connector_by_kind() {
    let mut wrong = Vec::new();
    for (file, text) in src("engine") {
        for needle in [
            "connectors::rest",
            "ServiceSpec",
            "ServiceKind",
            "connectors::dropbox::Dropbox",
        ] {
            if text.contains(needle) {
                wrong.push(format!("{file} names {needle}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn http_reads_the_store_only_through_the_read_only_view() {
    let mut wrong = Vec::new();
    for (file, text) in src("http") {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let names_store = code.match_indices("store::Store").any(|(i, m)| {
                !code[i + m.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if code.contains(".store.") || code.contains(".store,") || names_store {
                wrong.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_import_scanner_sees_grouped_and_plain_paths() {
    let found = crate_modules("use crate::{store::X, engine};\nlet a = crate::http::f();");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["engine", "http", "store"]
    );
}
