//! Diagnostics rendered like rustc: a title, the file, line and column, and a caret under the
//! offending text. All of a load's diagnostics are collected and shown together.

use super::source::Sources;
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use std::ops::Range;

/// A byte range in one of the loaded files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: usize,
    pub range: Range<usize>,
}

impl Span {
    pub fn new(file: usize, range: Range<usize>) -> Self {
        Span { file, range }
    }

    /// For errors with no place in a file (environment variables, unreadable paths).
    pub fn nowhere() -> Self {
        Span {
            file: usize::MAX,
            range: 0..0,
        }
    }

    pub fn is_nowhere(&self) -> bool {
        self.file == usize::MAX
    }
}

/// One error, pointing at the offending text.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    pub span: Span,
    pub label: String,
    /// Other places involved, such as the first declaration of a duplicate.
    pub related: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            span,
            label: label.into(),
            related: vec![],
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }
}

/// Every error of one load, plus the values read from the environment, which are masked
/// wherever a message might repeat them.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
    secrets: Vec<String>,
    /// Fields (model, field) whose declaration was already reported: a reference to one is
    /// not reported again as an unknown field, so one mistake gives one error.
    broken: std::collections::HashSet<(String, String)>,
}

impl Diagnostics {
    /// Notes a field whose declaration failed (its error is already pushed).
    pub fn mark_broken(&mut self, model: &str, field: &str) {
        self.broken.insert((model.to_string(), field.to_string()));
    }

    /// Was this field declared, though wrongly? Then references to it are not errors too.
    pub fn is_broken(&self, model: &str, field: &str) -> bool {
        self.broken
            .contains(&(model.to_string(), field.to_string()))
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// Remembers a value that came from the environment.
    pub fn add_secret(&mut self, value: &str) {
        if value.len() >= 3 && !self.secrets.iter().any(|s| s == value) {
            self.secrets.push(value.to_string());
        }
    }

    fn mask(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "[secret]"))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Sorts by file and position, so output follows the files.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            (a.span.file, a.span.range.start).cmp(&(b.span.file, b.span.range.start))
        });
    }

    /// Renders every diagnostic, plain text, separated by blank lines, with a summary line.
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&self.mask(&render_one(d, sources)));
            out.push_str("\n\n");
        }
        let n = self.items.len();
        out.push_str(&format!(
            "error: configuration has {n} error{}",
            if n == 1 { "" } else { "s" }
        ));
        out
    }

    /// Just the titles with `file:line:col`, one per line (for logs and the API).
    pub fn summary(&self, sources: &Sources) -> Vec<String> {
        self.items
            .iter()
            .map(|d| {
                if d.span.is_nowhere() {
                    return self.mask(&d.message);
                }
                let (path, line, col) = position(sources, &d.span);
                self.mask(&format!("{path}:{line}:{col}: {}", d.message))
            })
            .collect()
    }
}

/// `(path, line, column)` of a span's start, 1-based, columns in characters.
pub fn position(sources: &Sources, span: &Span) -> (String, usize, usize) {
    let file = &sources.files[span.file];
    let start = span.range.start.min(file.text.len());
    let before = &file.text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (file.path.clone(), line, col)
}

fn render_one<'a>(d: &'a Diagnostic, sources: &'a Sources) -> String {
    if d.span.is_nowhere() {
        let mut group = Group::with_title(Level::ERROR.primary_title(d.message.as_str()));
        if let Some(help) = &d.help {
            group = group.element(Level::HELP.message(help.as_str()));
        }
        return Renderer::plain().render(&[group]).to_string();
    }
    let snippet = |span: &Span,
                   label: &'a str,
                   primary: bool|
     -> Snippet<'a, annotate_snippets::Annotation<'a>> {
        let file = &sources.files[span.file];
        let kind = if primary {
            AnnotationKind::Primary
        } else {
            AnnotationKind::Context
        };
        let mut range = span.range.clone();
        // Point at least one character, so the caret is visible at the end of a file.
        if range.is_empty() {
            let text = file.text.as_str();
            let at = range.start.min(text.len());
            match text[at..].chars().next() {
                Some(c) if c != '\n' => range = at..at + c.len_utf8(),
                _ => {
                    if let Some((i, _)) = text[..at].char_indices().next_back() {
                        range = i..at;
                    }
                }
            }
        }
        Snippet::source(file.text.as_str())
            .path(file.path.as_str())
            .fold(true)
            .annotation(kind.span(range).label(label))
    };
    let mut group = Level::ERROR
        .primary_title(d.message.as_str())
        .element(snippet(&d.span, &d.label, true));
    for (span, label) in &d.related {
        group = group.element(snippet(span, label, false));
    }
    if let Some(help) = &d.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    let report: Vec<Group<'_>> = vec![group];
    Renderer::plain().render(&report).to_string()
}
