//! `recsync plan <CODE>`: what a run of one sync would do, written nowhere.

use super::*;
use crate::engine::{SidePlan, SyncPlan};
use secrecy::ExposeSecret;
use serde_json::Value;

/// `recsync plan CODE [--full] [--json]`; with `--mappings DIR`, under the configuration in
/// that folder (an edit not yet saved where `serve` reads it), against the current data.
pub(super) async fn plan(g: &GlobalArgs, code: &str, full: bool, as_json: bool) -> ExitCode {
    let loaded = match demo(g) {
        Some(l) => l,
        None => match load(g, None) {
            Ok(mut l) => {
                // Run from the demo's folder with an edited mapping folder: the demo's data.
                if let Ok(only) = config::load_database(&paths(g, None), &ProcessEnv)
                    && only.demo
                {
                    l.settings.database_url = only.settings.database_url;
                }
                l
            }
            Err(code) => return code,
        },
    };
    // A plan is of the current data: a database that is not there is not created.
    if let Some(path) = sqlite_file(loaded.settings.database_url.expose_secret())
        && !std::path::Path::new(&path).exists()
    {
        eprintln!(
            "error: no database at {path} yet: a plan reads the current data and creates nothing. `recsync migrate` creates it empty (a plan then shows what a first run would do), as `recsync serve` does when it starts; if the data is elsewhere, give --database-url"
        );
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
    crate::telemetry::init(
        loaded.settings.log_format,
        loaded.settings.otlp_endpoint.as_deref(),
    );
    // The engine alone: no writer, no heartbeat, no workers, no binding registered. A plan
    // only reads.
    let store =
        match crate::store::Store::connect(loaded.settings.database_url.expose_secret()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "error: failed to open the database {}: {e}",
                    loaded.settings.database_display()
                );
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
    if let Err(e) = store.migrate().await {
        eprintln!("error: failed to apply the database migrations: {e}");
        return ExitCode::FAILURE;
    }
    let configuration = g.mappings.as_ref().map(|m| m.display().to_string());
    let engine = std::sync::Arc::new(crate::engine::Engine::new(
        store,
        loaded.plan,
        crate::engine::EngineOptions::from_settings(&loaded.settings),
    ));
    let edited = configuration.map(|folder| (engine.plan(), folder));
    let result = engine.plan_run(code, full, edited).await;
    engine.store.close().await;
    match result {
        Ok(p) if as_json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&p).expect("a plan serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(p) => {
            print!("{}", render(&p));
            ExitCode::SUCCESS
        }
        Err(e @ crate::engine::PlanError::Service(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The plan as text: per side, the counts and the samples.
pub fn render(p: &SyncPlan) -> String {
    let mut out = format!(
        "Plan for {} (configuration: {}{}). Nothing was written and nothing was confirmed.\n",
        p.sync,
        p.configuration,
        if p.full { "; a full run" } else { "" }
    );
    side(&mut out, "Here (local records)", &p.local);
    side(&mut out, "There (the external system)", &p.external);
    if let Some(r) = &p.reconcile {
        out.push_str(&format!(
            "Reconciliation would find: {} missing, {} extra, {} different.\n",
            r.get("missing").unwrap_or(&0),
            r.get("extra").unwrap_or(&0),
            r.get("different").unwrap_or(&0)
        ));
    }
    for h in &p.holds {
        out.push_str(&format!(
            "Held for approval: {} deletes {} ({} linked): {}.\n",
            h.deletes,
            if h.side == "local" { "here" } else { "there" },
            h.linked,
            h.reason
        ));
    }
    round_trips(&mut out, &p.round_trip);
    for n in &p.notes {
        out.push_str(&format!("Note: {n}.\n"));
    }
    out
}

/// The two-way transformed fields: which values do not come back as they went out.
pub fn round_trips(out: &mut String, trips: &[crate::engine::RoundTrip]) {
    for r in trips {
        if r.checked == 0 {
            out.push_str(&format!(
                "Round trip of {} <-> {}: no value to check.\n",
                r.field, r.external
            ));
            continue;
        }
        if r.lossy == 0 {
            out.push_str(&format!(
                "Round trip of {} <-> {}: all {} value(s) come back equal.\n",
                r.field, r.external, r.checked
            ));
            continue;
        }
        out.push_str(&format!(
            "Round trip of {} <-> {}: {} of {} value(s) do not come back equal, so they would change or flip-flop between the systems (to_external `{}`, to_local `{}`):\n",
            r.field, r.external, r.lossy, r.checked, r.to_external, r.to_local
        ));
        for s in &r.samples {
            let who = match (s.get("local_id"), s.get("external_id")) {
                (Some(id), _) => format!("#{id}"),
                (_, Some(id)) => format!("external {}", text(id)),
                _ => String::new(),
            };
            let back = match s.get("error").and_then(Value::as_str) {
                Some(e) => format!("fails: {e}"),
                None => text(&s["back"]),
            };
            out.push_str(&format!(
                "  {who}  {} -> sent {} -> back {back}\n",
                text(&s["value"]),
                text(&s["sent"])
            ));
        }
        if r.lossy as usize > r.samples.len() {
            out.push_str(&format!(
                "  ... and {} more\n",
                r.lossy as usize - r.samples.len()
            ));
        }
    }
}

fn side(out: &mut String, title: &str, s: &SidePlan) {
    let counts: Vec<String> = s
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out.push_str(&format!(
        "{title}: {}\n",
        if counts.is_empty() {
            "nothing to do".to_string()
        } else {
            counts.join(", ")
        }
    ));
    for (kind, samples) in &s.samples {
        if kind == "unchanged" {
            continue;
        }
        for v in samples {
            out.push_str(&format!("  {kind:<9} {}\n", describe(v)));
        }
        let n = s.count(kind) as usize;
        if n > samples.len() {
            out.push_str(&format!("  {kind:<9} ... and {} more\n", n - samples.len()));
        }
    }
}

/// One sample on one line.
fn describe(v: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(id) = v.get("local_id").filter(|x| !x.is_null()) {
        parts.push(format!("#{id}"));
    }
    if let Some(id) = v.get("external_id").filter(|x| !x.is_null()) {
        parts.push(format!("external {}", text(id)));
    }
    if let Some(t) = v
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        parts.push(format!("\"{t}\""));
    }
    if let Some(Value::Object(changes)) = v.get("changes") {
        let c: Vec<String> = changes
            .iter()
            .map(|(f, ch)| format!("{f}: {} -> {}", text(&ch["from"]), text(&ch["to"])))
            .collect();
        parts.push(c.join("; "));
    }
    if let Some(Value::Object(values)) = v.get("values") {
        let c: Vec<String> = values
            .iter()
            .map(|(f, x)| format!("{f}={}", text(x)))
            .collect();
        parts.push(c.join(", "));
    }
    if let Some(f) = v.get("field").and_then(Value::as_str) {
        parts.push(format!(
            "{f}: local {} / external {}, {} wins",
            text(&v["local"]),
            text(&v["external"]),
            text(&v["winner"])
        ));
    }
    if let Some(on) = v.get("match_on") {
        parts.push(format!("equal {}", text(on)));
    }
    if let Some(c) = v.get("candidates") {
        parts.push(format!("candidates {}", text(c)));
    }
    for k in ["reason", "error"] {
        if let Some(r) = v.get(k).and_then(Value::as_str) {
            parts.push(r.to_string());
        }
    }
    parts.join("  ")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// Run from the demo's folder (its database there, nothing configured): the demo's own
/// configuration, as `recsync demo` runs it.
fn demo(g: &GlobalArgs) -> Option<config::Loaded> {
    if g.mappings.is_some() || std::env::var_os("RECSYNC_MAPPINGS").is_some() {
        return None;
    }
    let only = config::load_database(&paths(g, None), &ProcessEnv).ok()?;
    if !only.demo {
        return None;
    }
    let plan = config::compile_texts(
        &[("mappings/demo.toml", super::DEMO_MAPPING)],
        &ProcessEnv,
        crate::connectors::KINDS,
    )
    .ok()?;
    Some(config::Loaded {
        settings: only.settings,
        plan,
        files: Vec::new(),
    })
}

/// The file of a `sqlite://` URL (not `:memory:`).
pub(super) fn sqlite_file(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.to_string())
}
