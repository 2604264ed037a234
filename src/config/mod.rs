//! Configuration: `recsync.toml` and `mappings/*.toml` compiled into `Settings` and a
//! validated `Plan`. Every error is collected and rendered like rustc.

pub mod diag;
pub mod kinds;
pub mod kit;
pub mod mappings;
pub mod reader;
pub mod render;
pub mod settings;
pub mod source;

pub use diag::{Diagnostic, Diagnostics, Span};
pub use kinds::Kinds;
pub use settings::{ApiKey, LogFormat, Overrides, Scope, Settings};
pub use source::{Env, ProcessEnv, Sources};

use crate::domain::Plan;
use std::path::{Path, PathBuf};

/// A failed load: the diagnostics and the text they point into.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub sources: Sources,
    pub diagnostics: Diagnostics,
}

impl LoadError {
    pub fn render(&self) -> String {
        self.diagnostics.render(&self.sources)
    }

    pub fn summary(&self) -> Vec<String> {
        self.diagnostics.summary(&self.sources)
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for LoadError {}

/// Where to read from.
#[derive(Debug, Clone, Default)]
pub struct ConfigPaths {
    /// `recsync.toml`; `None` uses `./recsync.toml` if it exists.
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
}

/// A successful load.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub plan: Plan,
    /// The mapping files that were read, in order.
    pub files: Vec<PathBuf>,
}

/// Reads and compiles the settings file and every mapping file.
/// `kinds` is the registry of connector kinds (`connectors::KINDS`).
pub fn load(paths: &ConfigPaths, env: &dyn Env, kinds: &Kinds) -> Result<Loaded, LoadError> {
    let mut sources = Sources::default();
    let mut diags = Diagnostics::default();
    let config_path = paths.config.clone().or_else(|| {
        let default = PathBuf::from("recsync.toml");
        default.exists().then_some(default)
    });
    let settings_table = match &config_path {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => {
                let id = sources.add(p.display().to_string(), text.clone());
                source::parse_file(id, &text, env, &mut diags).map(|t| (id, t))
            }
            Err(e) => return Err(io_error(sources, p, &e)),
        },
    };
    let settings = settings::compile(
        settings_table.as_ref().map(|(i, t)| (*i, t)),
        env,
        &paths.overrides,
        &mut diags,
    );
    let (plan, files) =
        match load_mappings_into(&settings.mappings, env, kinds, &mut sources, &mut diags) {
            Ok(x) => x,
            Err(e) => return Err(io_error(sources, &settings.mappings, &e)),
        };
    if let Some(plan) = &plan {
        check_scopes(settings_table.as_ref().map(|(_, t)| t), plan, &mut diags);
    }
    finish(sources, diags, plan).map(|plan| Loaded {
        settings,
        plan,
        files,
    })
}

/// What `discover` needs: the parts of the configuration that compiled, whatever mistakes other
/// parts hold (a sync not written yet, an API key scoped to it). The mistakes come back beside
/// the plan, for the command to report when the part it needs is not in it. A file that cannot
/// be read stops it.
pub fn load_lenient(
    paths: &ConfigPaths,
    env: &dyn Env,
    kinds: &Kinds,
) -> Result<(Plan, Option<LoadError>), LoadError> {
    let mut sources = Sources::default();
    let mut diags = Diagnostics::default();
    let config_path = paths.config.clone().or_else(|| {
        let default = PathBuf::from("recsync.toml");
        default.exists().then_some(default)
    });
    let settings_table = match &config_path {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => {
                let id = sources.add(p.display().to_string(), text.clone());
                source::parse_file(id, &text, env, &mut diags).map(|t| (id, t))
            }
            Err(e) => return Err(io_error(sources, p, &e)),
        },
    };
    let settings = settings::compile(
        settings_table.as_ref().map(|(i, t)| (*i, t)),
        env,
        &paths.overrides,
        &mut diags,
    );
    let dir = &settings.mappings;
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(list) => list
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        Err(e) => return Err(io_error(sources, dir, &e)),
    };
    files.sort();
    let mut tables = Vec::new();
    for p in &files {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => return Err(io_error(sources, p, &e)),
        };
        let id = sources.add(p.display().to_string(), text.clone());
        if let Some(t) = source::parse_file(id, &text, env, &mut diags) {
            tables.push(t);
        }
    }
    let (mut plan, unsound) = mappings::compile_lenient(&tables, kinds, &mut diags);
    check_scopes(settings_table.as_ref().map(|(_, t)| t), &plan, &mut diags);
    for name in unsound {
        plan.web_services.remove(&name);
    }
    let errors = (!diags.is_empty()).then(|| {
        diags.sort();
        LoadError {
            sources,
            diagnostics: diags,
        }
    });
    Ok((plan, errors))
}

/// What the read-only commands need: the database to read, found as `serve` would find it
/// (flag, `RECSYNC_DATABASE_URL`, `recsync.toml`, default), whatever else the configuration
/// holds. Errors elsewhere (an invalid mapping, an unset `${VAR}` of another key) do not stop
/// it; an error in `database_url` itself does.
pub struct DatabaseOnly {
    pub settings: Settings,
    /// Whether the default database was absent and the demo's was taken instead.
    pub demo: bool,
}

pub fn load_database(paths: &ConfigPaths, env: &dyn Env) -> Result<DatabaseOnly, LoadError> {
    let mut sources = Sources::default();
    let mut parse_diags = Diagnostics::default();
    let config_path = paths.config.clone().or_else(|| {
        let default = PathBuf::from("recsync.toml");
        default.exists().then_some(default)
    });
    let table = match &config_path {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => {
                let id = sources.add(p.display().to_string(), text.clone());
                match source::parse_file(id, &text, env, &mut parse_diags) {
                    Some(t) => Some((id, t)),
                    None => {
                        return Err(LoadError {
                            sources,
                            diagnostics: parse_diags,
                        });
                    }
                }
            }
            Err(e) => return Err(io_error(sources, p, &e)),
        },
    };
    // Only the `database_url` entry is compiled, and only the diagnostics about it count.
    let entry: Option<(usize, source::Table)> = table.map(|(id, t)| {
        (
            id,
            t.into_iter()
                .filter(|(k, _)| k.name == "database_url")
                .collect(),
        )
    });
    let mut diags = Diagnostics::default();
    for d in parse_diags.items {
        let inside = entry.as_ref().is_some_and(|(_, t)| {
            t.iter().any(|(_, item)| {
                item.span.file == d.span.file
                    && item.span.range.start <= d.span.range.start
                    && d.span.range.end <= item.span.range.end
            })
        });
        if inside {
            diags.push(d);
        }
    }
    let mut settings = settings::compile(
        entry.as_ref().map(|(i, t)| (*i, t)),
        env,
        &paths.overrides,
        &mut diags,
    );
    if !diags.is_empty() {
        diags.sort();
        return Err(LoadError {
            sources,
            diagnostics: diags,
        });
    }
    // `recsync demo` keeps its data in recsync-demo.db; run from the demo's folder with nothing
    // configured, the readers find it there.
    use secrecy::ExposeSecret;
    let configured = config_path.is_some()
        || paths.overrides.database_url.is_some()
        || env.var("RECSYNC_DATABASE_URL").is_some();
    let demo = !configured
        && settings.database_url.expose_secret() == "sqlite://recsync.db"
        && !Path::new("recsync.db").exists()
        && Path::new("recsync-demo.db").exists();
    if demo {
        settings.database_url = secrecy::SecretString::from("sqlite://recsync-demo.db");
    }
    Ok(DatabaseOnly { settings, demo })
}

/// Reads and compiles just the mapping folder (hot reload uses this).
pub fn load_mappings(
    dir: &Path,
    env: &dyn Env,
    kinds: &Kinds,
) -> Result<(Plan, Vec<PathBuf>), LoadError> {
    let mut sources = Sources::default();
    let mut diags = Diagnostics::default();
    match load_mappings_into(dir, env, kinds, &mut sources, &mut diags) {
        Ok((plan, files)) => finish(sources, diags, plan).map(|p| (p, files)),
        Err(e) => Err(io_error(sources, dir, &e)),
    }
}

/// Compiles mapping text already in memory: `(path, text)` pairs.
pub fn compile_texts(
    files: &[(&str, &str)],
    env: &dyn Env,
    kinds: &Kinds,
) -> Result<Plan, LoadError> {
    let mut sources = Sources::default();
    let mut diags = Diagnostics::default();
    let mut tables = Vec::new();
    for (path, text) in files {
        let id = sources.add(*path, *text);
        if let Some(t) = source::parse_file(id, text, env, &mut diags) {
            tables.push(t);
        }
    }
    let plan = mappings::compile(&tables, kinds, &mut diags);
    finish(sources, diags, plan)
}

fn finish(sources: Sources, mut diags: Diagnostics, plan: Option<Plan>) -> Result<Plan, LoadError> {
    match plan {
        Some(plan) if diags.is_empty() => Ok(plan),
        _ => {
            diags.sort();
            Err(LoadError {
                sources,
                diagnostics: diags,
            })
        }
    }
}

fn load_mappings_into(
    dir: &Path,
    env: &dyn Env,
    kinds: &Kinds,
    sources: &mut Sources,
    diags: &mut Diagnostics,
) -> std::io::Result<(Option<Plan>, Vec<PathBuf>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut tables = Vec::new();
    for p in &files {
        let text = std::fs::read_to_string(p)?;
        let id = sources.add(p.display().to_string(), text.clone());
        if let Some(t) = source::parse_file(id, &text, env, diags) {
            tables.push(t);
        }
    }
    let before = diags.len();
    let plan = mappings::compile(&tables, kinds, diags);
    Ok((
        plan.filter(|_| diags.len() == before && diags.is_empty()),
        files,
    ))
}

fn check_scopes(table: Option<&source::Table>, plan: &Plan, diags: &mut Diagnostics) {
    let Some(t) = table else { return };
    let Some((_, item)) = reader::entry(t, "api_keys") else {
        return;
    };
    let source::Node::Array(keys) = &item.node else {
        return;
    };
    for k in keys {
        let source::Node::Table(kt) = &k.node else {
            continue;
        };
        let Some((_, scopes)) = reader::entry(kt, "scopes") else {
            continue;
        };
        let source::Node::Array(scopes) = &scopes.node else {
            continue;
        };
        for s in scopes {
            if let source::Node::Str { value, .. } = &s.node
                && let Some(Scope::Sync(code)) = Scope::parse(value)
                && !plan.syncs.contains_key(&code)
            {
                let codes: Vec<&str> = plan.syncs.keys().map(String::as_str).collect();
                diags.push(reader::unknown_name("sync", &code, s.span.clone(), &codes));
            }
        }
    }
}

fn io_error(sources: Sources, path: &Path, e: &std::io::Error) -> LoadError {
    let mut diags = Diagnostics::default();
    diags.push(Diagnostic::error(
        format!("cannot read `{}`: {e}", path.display()),
        Span::nowhere(),
        "",
    ));
    LoadError {
        sources,
        diagnostics: diags,
    }
}
