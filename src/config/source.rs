//! Configuration text as a spanned tree: every key and value keeps its file and byte range,
//! and `${VAR}` / `${VAR:-default}` are interpolated here, marking the strings as secrets.

use super::diag::{Diagnostic, Diagnostics, Span};
use toml::de::{DeTable, DeValue};

/// One configuration file's text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as shown in diagnostics.
    pub path: String,
    pub text: String,
}

/// All files read for one load; a [`Span`] refers to them by index.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) -> usize {
        self.files.push(SourceFile {
            path: path.into(),
            text: text.into(),
        });
        self.files.len() - 1
    }
}

/// A value with its place in the source.
#[derive(Debug, Clone)]
pub struct Item {
    pub span: Span,
    pub node: Node,
}

/// A key with its place in the source.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

pub type Table = Vec<(Key, Item)>;

#[derive(Debug, Clone)]
pub enum Node {
    /// `secret` is true when any part came from the environment.
    Str {
        value: String,
        secret: bool,
    },
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Item>),
    Table(Table),
}

impl Node {
    /// The TOML type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::Str { .. } => "a string",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Bool(_) => "a boolean",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }
}

/// Where environment variables are read from (a map in tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Parses one file into a table; syntax errors and interpolation errors go to `diags`.
pub fn parse_file(
    file: usize,
    text: &str,
    env: &dyn Env,
    diags: &mut Diagnostics,
) -> Option<Table> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // A table header given twice is one mistake: the keys under the second header are not
        // reported again as duplicates of their own.
        let mut twice: Vec<usize> = Vec::new();
        for e in errors {
            let mut range = e.span().unwrap_or(0..0);
            if e.message().starts_with("duplicate key") {
                let header = header_line(text, range.start);
                if header == Some(line_start(text, range.start)) {
                    twice.push(range.start);
                } else if header.is_some_and(|h| twice.iter().any(|t| line_start(text, *t) == h)) {
                    continue;
                }
            }
            // Point at where the problem starts rather than underlining several lines.
            if text.get(range.clone()).is_some_and(|t| t.contains('\n')) {
                range = range.start..range.start;
            }
            let msg = e.message().trim().trim_end_matches('.').to_string();
            let (title, label) = match msg.split_once('\n') {
                Some((a, b)) => (a.to_string(), b.trim().to_string()),
                None => (msg, String::new()),
            };
            diags.push(Diagnostic::error(
                format!("invalid TOML: {title}"),
                Span::new(file, range),
                label,
            ));
        }
        return None;
    }
    let span = doc.span();
    Some(convert_table(file, doc.into_inner(), span, env, diags))
}

/// Where the line holding `at` starts.
fn line_start(text: &str, at: usize) -> usize {
    text.get(..at)
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1)
}

/// Where the table header that `at` falls under starts (the last line up to `at` that opens
/// with `[`), if any.
fn header_line(text: &str, at: usize) -> Option<usize> {
    let mut start = line_start(text, at);
    loop {
        if text[start..].trim_start().starts_with('[') {
            return Some(start);
        }
        if start == 0 {
            return None;
        }
        start = line_start(text, start - 1);
    }
}

fn convert_table(
    file: usize,
    t: DeTable<'_>,
    _span: std::ops::Range<usize>,
    env: &dyn Env,
    diags: &mut Diagnostics,
) -> Table {
    t.into_iter()
        .map(|(k, v)| {
            let key = Key {
                name: k.get_ref().to_string(),
                span: Span::new(file, k.span()),
            };
            (key, convert(file, v, env, diags))
        })
        .collect()
}

fn convert(
    file: usize,
    v: toml::Spanned<DeValue<'_>>,
    env: &dyn Env,
    diags: &mut Diagnostics,
) -> Item {
    let range = v.span();
    let span = Span::new(file, range.clone());
    let node = match v.into_inner() {
        DeValue::String(s) => interpolate(&s, span.clone(), env, diags),
        DeValue::Integer(i) => match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(n) => Node::Int(n),
            Err(_) => {
                diags.push(Diagnostic::error(
                    "integer out of range",
                    span.clone(),
                    "does not fit in 64 bits",
                ));
                Node::Int(0)
            }
        },
        DeValue::Float(f) => Node::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Node::Bool(b),
        DeValue::Datetime(d) => Node::Datetime(d.to_string()),
        DeValue::Array(a) => Node::Array(
            a.into_iter()
                .map(|x| convert(file, x, env, diags))
                .collect(),
        ),
        DeValue::Table(t) => Node::Table(convert_table(file, t, range, env, diags)),
    };
    Item { span, node }
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
fn interpolate(s: &str, span: Span, env: &dyn Env, diags: &mut Diagnostics) -> Node {
    if !s.contains('$') {
        return Node::Str {
            value: s.to_string(),
            secret: false,
        };
    }
    let mut out = String::new();
    let mut secret = false;
    let mut rest: &str = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            diags.push(Diagnostic::error(
                "unclosed `${` in string",
                span.clone(),
                "add the closing `}`",
            ));
            return Node::Str {
                value: String::new(),
                secret: true,
            };
        };
        let inner = &body[..end];
        rest = &body[end + 1..];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            diags.push(Diagnostic::error(
                format!("invalid variable name `{name}` in `${{...}}`"),
                span.clone(),
                "use letters, digits and `_`",
            ));
            return Node::Str {
                value: String::new(),
                secret: true,
            };
        }
        secret = true;
        match (env.var(name), default) {
            (Some(v), _) => {
                diags.add_secret(&v);
                out.push_str(&v);
            }
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                diags.push(
                    Diagnostic::error(
                        format!("environment variable `{name}` is not set"),
                        span.clone(),
                        "used here",
                    )
                    .with_help(format!(
                        "set `{name}`, or give a default with `${{{name}:-...}}`"
                    )),
                );
                return Node::Str {
                    value: String::new(),
                    secret: true,
                };
            }
        }
    }
    out.push_str(rest);
    Node::Str { value: out, secret }
}
