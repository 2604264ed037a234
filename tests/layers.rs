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
    check(
        "connectors",
        &["domain", "config", "crash", "metrics", "telemetry"],
    );
    check(
        "engine",
        &[
            "domain",
            "config",
            "store",
            "connectors",
            "crash",
            "metrics",
            "telemetry",
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
            "telemetry",
        ],
    );
}

/// The fakes and the reference peer are a crate of their own that knows nothing of recsync:
/// they answer as the real systems do, not as recsync expects.
#[test]
fn the_fakes_know_nothing_of_recsync() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/fakes");
    let mut wrong = Vec::new();
    for (file, text) in sources(&dir.join("src")) {
        if text.contains("recsync::") {
            wrong.push(file);
        }
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap_or("");
    assert!(
        !deps
            .lines()
            .any(|l| l.trim_start().starts_with("recsync ")
                || l.trim_start().starts_with("recsync=")),
        "crates/fakes depends on recsync"
    );
    assert!(wrong.is_empty(), "fakes naming recsync: {wrong:?}");
}

/// The connector kinds: every folder under `src/connectors/` with a `config.rs`.
fn kind_folders() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/connectors");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.rs").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    out.sort();
    out
}

/// The type names a kind's folder declares in `spec.rs` and `config.rs`.
fn kind_types(kind: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/connectors")
        .join(kind);
    let mut out = Vec::new();
    for file in ["spec.rs", "config.rs"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        for line in text.lines() {
            for lead in ["pub struct ", "pub enum ", "pub const "] {
                if let Some(rest) = line.strip_prefix(lead) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Each kind is in the registry, under its folder's name, and nothing else is.
#[test]
fn every_kind_folder_is_registered_and_the_registry_names_only_them() {
    let folders = kind_folders();
    assert!(folders.len() >= 4, "{folders:?}");
    let mut registered: Vec<String> = recsync::connectors::KINDS
        .iter()
        .map(|k| k.name().to_string())
        .collect();
    registered.sort();
    assert_eq!(
        registered, folders,
        "the registry and the kind folders differ"
    );
    // The registry is the one place outside a folder that names the kind's configuration.
    for kind in &folders {
        let needle = format!("{kind}::config::");
        for (file, text) in src("") {
            let inside = file.contains(&format!("/connectors/{kind}/"));
            let registry = file.ends_with("/connectors/mod.rs");
            if !inside && !registry && text.contains(&needle) {
                panic!("{file} names {needle}: add the kind to the registry only");
            }
        }
    }
}

/// The engine, the domain, the store, the HTTP layer and the configuration's own compiler
/// name no kind: not its folder, not its types, not its name as a string.
#[test]
fn no_layer_but_the_connectors_names_a_kind() {
    let mut wrong = Vec::new();
    for kind in kind_folders() {
        let mut needles = vec![
            format!("connectors::{kind}"),
            format!("\"{kind}\""),
            format!("ServiceKind"),
            format!("ServiceSpec"),
        ];
        // Its types that carry its name (`OdooService`, `HttpResource`) and its constants.
        needles.extend(kind_types(&kind).into_iter().filter(|t| {
            t.to_lowercase().contains(&kind) || t.chars().all(|c| c.is_uppercase() || c == '_')
        }));
        for module in ["engine", "domain", "store", "http", "config"] {
            for (file, text) in src(module) {
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    // A URL scheme is not a kind.
                    let code = code.replace("\"http\" | \"https\"", "");
                    for needle in &needles {
                        let at = code.match_indices(needle.as_str()).any(|(i, m)| {
                            let before = code[..i].chars().last();
                            let after = code[i + m.len()..].chars().next();
                            let word = |c: Option<char>| {
                                c.is_some_and(|c| c.is_alphanumeric() || c == '_')
                            };
                            !word(before) && !word(after)
                        });
                        if at {
                            wrong.push(format!("{file}:{}: names {needle}", n + 1));
                        }
                    }
                }
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

/// The sibling files a file of `module` names: `super::x` and `crate::<module>::x` paths,
/// grouped ones included, where `x` is one of `siblings`.
fn sibling_imports(text: &str, module: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let long = format!("crate::{module}::");
    for prefix in ["super::", long.as_str()] {
        for (i, _) in text.match_indices(prefix) {
            // `crate::engine::` also ends with `engine::`, not `super::`: no double count.
            let rest = &text[i + prefix.len()..];
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect()
                    })
                    .collect()
            } else {
                vec![
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                ]
            };
            out.extend(names.into_iter().filter(|n| siblings.contains(n)));
        }
    }
    out
}

/// A circle among `graph`'s nodes, if there is one.
fn circle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_files_of_a_module_import_each_other_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for module in [
        "domain",
        "config",
        "store",
        "connectors",
        "engine",
        "http",
        "cli",
    ] {
        let dir = root.join(module);
        let mut files = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name == "mod" {
                continue;
            }
            let text = if path.is_dir() {
                sources(&path)
                    .into_iter()
                    .map(|(_, t)| t)
                    .collect::<Vec<_>>()
                    .join("\n")
            } else if path.extension().is_some_and(|e| e == "rs") {
                std::fs::read_to_string(&path).unwrap()
            } else {
                continue;
            };
            files.insert(name, text);
        }
        let siblings: BTreeSet<String> = files.keys().cloned().collect();
        let graph = files
            .iter()
            .map(|(name, text)| {
                let mut deps = sibling_imports(text, module, &siblings);
                deps.remove(name);
                (name.clone(), deps)
            })
            .collect();
        if let Some(c) = circle(&graph) {
            found.push(format!("src/{module}: {}", c.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_circle_finder_finds_a_circle_and_no_false_one() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        circle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(circle(&graph(&[("a", "b"), ("a", "c"), ("b", "c")])), None);
    let siblings: BTreeSet<String> = ["run", "guard"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        sibling_imports(
            "use super::{guard::X, Ctx};\nuse crate::engine::run::Y;",
            "engine",
            &siblings
        )
        .into_iter()
        .collect::<Vec<_>>(),
        ["guard", "run"]
    );
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    for dir in ["src", "crates"] {
        for (file, text) in sources(&root.join(dir)) {
            let n = text.lines().count();
            if n > 1000 {
                long.push(format!("{file}: {n} lines"));
            }
        }
    }
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}
